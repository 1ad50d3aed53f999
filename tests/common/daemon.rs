//! Running the real daemon in tests, and replaying generated calls as real UDP
//! packets on the loopback interface.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pbx_testgen::scenario::TimedFrame;

/// A port free for both TCP and UDP on 127.0.0.1, from 30000-32699: below
/// the kernel's ephemeral ports (32768 on), so no socket bound to port 0
/// anywhere (another test's client, a peer) can take it between this check
/// and the daemon's bind (one did: "Address already in use" for seconds),
/// and above the RTP ranges of [`rtp_base`] and the default config
/// (20000-29999). Each call of a test process tries the next port.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Test processes started one after another begin apart.
    let start = std::process::id().wrapping_mul(7919);
    loop {
        let p = 30_000 + (start.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed)) % 2_700) as u16;
        let free = std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()
            && UdpSocket::bind(("127.0.0.1", p)).is_ok();
        if free {
            return p;
        }
    }
}

/// First port of a range of `span` RTP ports for a test daemon, picked by
/// `seed` (a free port), in 10000-29999: a port the test binds with port
/// 0, or `free_port`, can never fall inside it (the daemon refuses a listen
/// port inside its RTP range).
#[allow(dead_code)]
pub fn rtp_base(seed: u16, span: u16) -> u16 {
    let slots = 20_000 / span.max(1);
    10_000 + (seed % slots) * span
}

pub struct Daemon {
    pub child: Child,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub health: SocketAddr,
    pub spool: PathBuf,
}

impl Daemon {
    /// Start `pbx-edge run` with `extra` TOML appended to a config that puts
    /// the spool and health endpoint in private places.
    pub fn start(dir: &Path, extra: &str) -> Daemon {
        let health: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let spool = dir.join("spool");
        let config = dir.join("pbx-edge.toml");
        std::fs::write(&config, Self::config_text(&spool, health, extra)).unwrap();
        let log = std::fs::File::create(dir.join("daemon.log")).unwrap();
        let child = Command::new(super::bin())
            .arg("run")
            .arg("--config")
            .arg(&config)
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start pbx-edge run");
        let d = Daemon {
            child,
            dir: dir.to_path_buf(),
            config,
            health,
            spool,
        };
        d.wait_http("/healthz", 200, Duration::from_secs(10));
        d
    }

    pub fn config_text(spool: &Path, health: SocketAddr, extra: &str) -> String {
        format!(
            "[spool]\ndir = \"{}\"\n[health]\nlisten = \"{health}\"\n{extra}\n",
            spool.display()
        )
    }

    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        pbx_edge::health::get(self.health, path).ok()
    }

    /// A POST without a body (the control API): status code and body.
    pub fn post(&self, path: &str) -> (u16, String) {
        http_request(self.health, "POST", path, "")
    }

    pub fn wait_http(&self, path: &str, code: u16, max: Duration) {
        let t = Instant::now();
        while t.elapsed() < max {
            if let Some((c, _)) = self.get(path) {
                if c == code {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "daemon did not answer {code} on {path}; log:\n{}",
            self.log()
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Wait for the process to exit; its status code.
    pub fn wait_exit(&mut self, max: Duration) -> Option<i32> {
        let t = Instant::now();
        while t.elapsed() < max {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// JSON files in the spool.
    pub fn recordings(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&self.spool)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        v.retain(|p| {
            p.extension().is_some_and(|e| e == "json")
                && !p.file_name().unwrap().to_string_lossy().starts_with('.')
        });
        v.sort();
        v
    }

    pub fn wait_recordings(&self, n: usize, max: Duration) -> Vec<PathBuf> {
        let t = Instant::now();
        while t.elapsed() < max {
            let r = self.recordings();
            if r.len() >= n {
                return r;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("expected {n} recordings in the spool; log:\n{}", self.log());
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether this process may open AF_PACKET sockets (CAP_NET_RAW).
pub fn can_sniff() -> bool {
    // SAFETY: plain socket(2); closed right away.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, 0) };
    if fd < 0 {
        eprintln!("note: no CAP_NET_RAW here; sniffing test skipped");
        return false;
    }
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    true
}

/// UDP (src, dst, payload) of an Ethernet/IPv4/UDP frame made by pbx-testgen.
fn udp_of(frame: &[u8]) -> Option<(SocketAddr, SocketAddr, &[u8])> {
    let ip = frame.get(14..)?;
    if ip.first()? >> 4 != 4 || *ip.get(9)? != 17 {
        return None;
    }
    let ihl = usize::from(ip[0] & 15) * 4;
    let src = std::net::Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = std::net::Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let udp = ip.get(ihl..)?;
    let sp = u16::from_be_bytes([udp[0], udp[1]]);
    let dp = u16::from_be_bytes([udp[2], udp[3]]);
    Some((
        SocketAddr::new(src.into(), sp),
        SocketAddr::new(dst.into(), dp),
        udp.get(8..)?,
    ))
}

/// Send the UDP datagrams of `frames` for real, from sockets bound to their
/// source addresses, at the pace of their time stamps. Stops before frames
/// later than `until_ns` after the first one, if given.
///
/// Returns, for each destination, how late its first datagram went out at
/// most (a busy machine may run something else just before or after a
/// send): the clock of a recorded leg starts on its first packet.
pub fn replay(frames: &[TimedFrame], until_ns: Option<i64>) -> HashMap<SocketAddr, Duration> {
    let mut socks: HashMap<SocketAddr, UdpSocket> = HashMap::new();
    let mut first_late: HashMap<SocketAddr, Duration> = HashMap::new();
    let Some(first) = frames.first().map(|f| f.0) else {
        return first_late;
    };
    let start = Instant::now();
    for (ts, f) in frames {
        let rel = ts - first;
        if until_ns.is_some_and(|u| rel > u) {
            break;
        }
        let Some((src, dst, payload)) = udp_of(f) else {
            continue;
        };
        let due = Duration::from_nanos(rel as u64);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        let s = socks
            .entry(src)
            .or_insert_with(|| UdpSocket::bind(src).unwrap_or_else(|e| panic!("bind {src}: {e}")));
        let _ = s.send_to(payload, dst);
        first_late
            .entry(dst)
            .or_insert_with(|| start.elapsed().saturating_sub(due));
    }
    first_late
}

/// A raw HTTP/1.1 request to the health listener at `addr` (one request per
/// connection, as it serves them): status code (0 when no answer came) and
/// body.
pub fn http_request(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .expect("connect to health.listen");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}
