//! Scale-out behind a real SIP dispatcher (issue 18, docs/scale-out.md):
//! Kamailio (Debian's package) with `dispatcher` in front of three
//! `pbx-edge run` instances on loopback, each with its own `agent.id`, all
//! delivering to one test cloud.
//!
//! Kamailio hashes SIPREC INVITEs over the Call-ID (algorithm 0), probes the
//! instances with OPTIONS every second (`ds_probing_mode = 1`), and on a
//! timeout or a 503 marks the instance down and tries the next
//! (`failure_route`). The SRC is this test: SIPREC INVITEs with two PCMU
//! streams through Kamailio, RTP straight to the instance that answered, ACK
//! and BYE through Kamailio's record-route.
//!
//! 1. Throughput: a burst of short calls as fast as they are answered
//!    (calls/s the dispatcher and the three recorders sustained here).
//! 2. Failover: steady load; one instance SIGKILLed, later another drained
//!    with `pbx-edge drain`. New calls go to the others (none lost), the
//!    drained one finishes its calls, delivers its spool and exits 0; the
//!    killed one is started again on its spool, completes the calls the kill
//!    cut (marked truncated) and delivers them.
//! 3. Every answered call is delivered exactly once, by the instance that
//!    answered it (its `agent_id`).
//!
//! The figures are printed (`cargo test --test scale_out -- --nocapture`)
//! and written to `target/tmp/scale_out.txt`, which `.ci/run` shows.
//! Skipped with a message where kamailio or its dispatcher module is missing.

mod common;

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::daemon::*;
use common::receiver::{Receiver, ReceiverOptions};
use common::{bin, have};
use pbx_testgen::audio::speechlike;
use pbx_testgen::codec::Encoder;
use pbx_testgen::scenario::rtp_packet;
use pbx_testgen::TestCodec;

const BOUNDARY: &str = "scaleoutboundary";
/// Kamailio's transaction timeout (ms): how long an INVITE to a dead
/// instance waits before the next one is tried.
const FR_TIMER_MS: u64 = 1000;

fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    headers(msg, name).into_iter().next()
}

fn headers<'a>(msg: &'a str, name: &str) -> Vec<&'a str> {
    let head = msg.split("\r\n\r\n").next().unwrap_or("");
    head.lines()
        .filter(|l| {
            l.len() > name.len()
                && l[..name.len()].eq_ignore_ascii_case(name)
                && l.as_bytes()[name.len()] == b':'
        })
        .map(|l| l[name.len() + 1..].trim())
        .collect()
}

fn status_code(m: &str) -> u16 {
    m.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn recv(sock: &UdpSocket) -> Option<String> {
    let mut b = vec![0u8; 65536];
    let (n, _) = sock.recv_from(&mut b).ok()?;
    Some(String::from_utf8_lossy(&b[..n]).into_owned())
}

/// The final response to `method` (CSeq), within `max`.
fn final_response(sock: &UdpSocket, method: &str, max: Duration) -> Option<String> {
    let t = Instant::now();
    while t.elapsed() < max {
        if let Some(m) = recv(sock) {
            if m.starts_with("SIP/2.0")
                && status_code(&m) >= 200
                && header(&m, "CSeq").is_some_and(|c| c.ends_with(method))
            {
                return Some(m);
            }
        }
    }
    None
}

fn metadata(n: &str) -> String {
    format!(
        "<?xml version=\"1.0\"?><recording xmlns=\"urn:ietf:params:xml:ns:recording:1\"><datamode>complete</datamode>\
         <session session_id=\"s{n}\"/>\
         <participant participant_id=\"a{n}\"><nameID aor=\"sip:1001@pbx.example\"/></participant>\
         <participant participant_id=\"b{n}\"><nameID aor=\"sip:2002@pbx.example\"/></participant>\
         <stream stream_id=\"x{n}\" session_id=\"s{n}\"><label>1</label></stream>\
         <stream stream_id=\"y{n}\" session_id=\"s{n}\"><label>2</label></stream>\
         <participantstreamassoc participant_id=\"a{n}\"><send>x{n}</send></participantstreamassoc>\
         <participantstreamassoc participant_id=\"b{n}\"><send>y{n}</send></participantstreamassoc></recording>"
    )
}

/// What became of one call.
#[derive(Debug, Clone, Default)]
struct Outcome {
    call_id: String,
    /// Since the test's epoch: INVITE sent, final answer.
    invited_ms: u64,
    answered_ms: Option<u64>,
    /// The SIP port of the instance that answered (its Contact).
    answered_by: Option<u16>,
    /// The final status the SRC got for its INVITE (0: none).
    invite_status: u16,
    /// The BYE got its 200.
    bye_ok: bool,
    /// The BYE's final status (0: none).
    bye_status: u16,
}

/// An established SIPREC dialog seen from the SRC: requests go to `hop`
/// (the proxy, or the recorder itself), in-dialog ones with the route set.
struct Dialog {
    sock: UdpSocket,
    me: SocketAddr,
    hop: SocketAddr,
    rtp: Vec<UdpSocket>,
    seed: u64,
    call_id: String,
    from: String,
    to: String,
    target: String,
    route: String,
    /// The answer's media address and ports.
    media: (String, Vec<u16>),
    sdp: String,
    cseq: u32,
}

/// What the INVITE got: the final status, its Retry-After, the dialog on 200.
struct Invited {
    status: u16,
    retry_after: Option<String>,
    dialog: Option<Dialog>,
}

/// A SIPREC INVITE (two PCMU streams and metadata) to `hop`, retransmitted
/// as a UDP UAC does until a provisional answer; ACK on 200 (end to end,
/// with the route set) or on a failure (hop by hop).
fn invite(hop: SocketAddr, call_id: &str, seed: u64) -> Invited {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let me = sock.local_addr().unwrap();
    let rtp: Vec<UdpSocket> = (0..2)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let rp: Vec<u16> = rtp.iter().map(|s| s.local_addr().unwrap().port()).collect();
    let sdp = format!(
        "v=0\r\no=SRC 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=label:1\r\na=sendonly\r\n\
         m=audio {} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=label:2\r\na=sendonly\r\n",
        rp[0], rp[1]
    );
    let body = format!(
        "--{BOUNDARY}\r\nContent-Type: application/sdp\r\n\r\n{sdp}\r\n--{BOUNDARY}\r\nContent-Type: application/rs-metadata+xml\r\nContent-Disposition: recording-session\r\n\r\n{}\r\n--{BOUNDARY}--\r\n",
        metadata(&seed.to_string())
    );
    let from = format!("<sip:src@127.0.0.1>;tag=src-{seed}");
    let branch = format!("z9hG4bKinv{seed}x{}", me.port());
    let msg = format!(
        "INVITE sip:srs@{hop} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch={branch};rport\r\nMax-Forwards: 70\r\n\
         From: {from}\r\nTo: <sip:srs@{hop}>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\n\
         Contact: <sip:src@{me}>;+sip.src\r\nRequire: siprec\r\n\
         Content-Type: multipart/mixed;boundary={BOUNDARY}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let t = Instant::now();
    let mut next = t;
    let mut provisional = false;
    let resp = loop {
        if t.elapsed() > Duration::from_secs(15) {
            break None;
        }
        if !provisional && Instant::now() >= next {
            let _ = sock.send_to(msg.as_bytes(), hop);
            next += Duration::from_millis(500);
        }
        if let Some(m) = recv(&sock) {
            if !m.starts_with("SIP/2.0")
                || !header(&m, "CSeq").is_some_and(|c| c.ends_with("INVITE"))
            {
                continue;
            }
            if status_code(&m) < 200 {
                provisional = true;
            } else {
                break Some(m);
            }
        }
    };
    let Some(resp) = resp else {
        return Invited {
            status: 0,
            retry_after: None,
            dialog: None,
        };
    };
    let status = status_code(&resp);
    let retry_after = header(&resp, "Retry-After").map(str::to_string);
    let to = header(&resp, "To").unwrap_or("").to_string();
    if status != 200 {
        let ack = format!(
            "ACK sip:srs@{hop} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch={branch};rport\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
        );
        let _ = sock.send_to(ack.as_bytes(), hop);
        return Invited {
            status,
            retry_after,
            dialog: None,
        };
    }
    let target = header(&resp, "Contact")
        .unwrap_or("")
        .trim_start_matches('<')
        .split(['>', ';'])
        .next()
        .unwrap_or("")
        .to_string();
    // The route set: the Record-Route entries (one proxy: one entry).
    let rr: Vec<String> = headers(&resp, "Record-Route")
        .iter()
        .flat_map(|h| h.split(','))
        .map(|s| s.trim().to_string())
        .collect();
    let route = if rr.is_empty() {
        String::new()
    } else {
        format!("Route: {}\r\n", rr.join(", "))
    };
    let ports: Vec<u16> = resp
        .lines()
        .filter(|l| l.starts_with("m=audio "))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect();
    let media_ip = resp
        .lines()
        .find_map(|l| l.strip_prefix("c=IN IP4 "))
        .unwrap_or("127.0.0.1")
        .trim()
        .to_string();
    let d = Dialog {
        sock,
        me,
        hop,
        rtp,
        seed,
        call_id: call_id.to_string(),
        from,
        to,
        target,
        route,
        media: (media_ip, ports),
        sdp,
        cseq: 1,
    };
    let ack = d.in_dialog("ACK", 1, "");
    d.send(&ack);
    Invited {
        status,
        retry_after,
        dialog: Some(d),
    }
}

impl Dialog {
    /// The SIP port of the recorder that answered (its Contact).
    fn recorder_port(&self) -> Option<u16> {
        self.target.rsplit(':').next()?.parse().ok()
    }

    fn in_dialog(&self, method: &str, cseq: u32, sdp: &str) -> String {
        let body = if sdp.is_empty() {
            "Content-Length: 0\r\n\r\n".to_string()
        } else {
            format!(
                "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
                sdp.len()
            )
        };
        format!(
            "{method} {} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK{}{cseq}s{}x{};rport\r\nMax-Forwards: 70\r\n{}From: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {cseq} {method}\r\n{body}",
            self.target,
            self.me,
            method.to_ascii_lowercase(),
            self.seed,
            self.me.port(),
            self.route,
            self.from,
            self.to,
            self.call_id
        )
    }

    fn send(&self, m: &str) {
        let _ = self.sock.send_to(m.as_bytes(), self.hop);
    }

    /// An in-dialog request (re-INVITE with our SDP again, BYE, OPTIONS),
    /// retransmitted until its final answer: the status (0: none in `max`).
    fn request(&mut self, method: &str, max: Duration) -> u16 {
        self.cseq += 1;
        let sdp = if method == "INVITE" {
            self.sdp.replace("o=SRC 1 1", "o=SRC 1 2")
        } else {
            String::new()
        };
        let m = self.in_dialog(method, self.cseq, &sdp);
        let t = Instant::now();
        let mut next = t;
        let mut provisional = false;
        while t.elapsed() < max {
            if !provisional && Instant::now() >= next {
                self.send(&m);
                next += Duration::from_millis(500);
            }
            if let Some(r) = recv(&self.sock) {
                if r.starts_with("SIP/2.0")
                    && header(&r, "CSeq") == Some(&format!("{} {method}", self.cseq))
                {
                    let code = status_code(&r);
                    if code < 200 {
                        provisional = true;
                        continue;
                    }
                    if method == "INVITE" {
                        let ack = self.in_dialog("ACK", self.cseq, "");
                        self.send(&ack);
                    }
                    return code;
                }
            }
        }
        0
    }

    /// `ms` of RTP on both streams, in real time, from the offer's ports.
    fn media(&self, ms: u64) {
        let (ip, ports) = &self.media;
        let audio: Vec<Vec<i16>> = (0..2)
            .map(|k| speechlike(self.seed * 2 + k, ms as u32 + 20, 8000))
            .collect();
        let mut enc = [Encoder::new(TestCodec::Pcmu), Encoder::new(TestCodec::Pcmu)];
        let t = Instant::now();
        for i in 0..(ms / 20) as usize {
            let due = Duration::from_millis(20 * i as u64);
            if let Some(w) = due.checked_sub(t.elapsed()) {
                std::thread::sleep(w);
            }
            for k in 0..2.min(ports.len()) {
                let pkt = rtp_packet(
                    0,
                    i == 0,
                    i as u16,
                    (i * 160) as u32,
                    0x5c00_0000 + self.seed as u32 * 2 + k as u32,
                    &enc[k].encode(&audio[k][i * 160..(i + 1) * 160]),
                );
                let _ = self.rtp[k].send_to(&pkt, (ip.as_str(), ports[k]));
            }
        }
    }
}

/// One SIPREC call through the dispatcher: INVITE, ACK, `media_ms` of RTP on
/// both streams, BYE.
fn call(proxy: SocketAddr, call_id: &str, media_ms: u64, seed: u64, epoch: Instant) -> Outcome {
    let mut out = Outcome {
        call_id: call_id.to_string(),
        invited_ms: epoch.elapsed().as_millis() as u64,
        ..Outcome::default()
    };
    let inv = invite(proxy, call_id, seed);
    out.invite_status = inv.status;
    let Some(mut d) = inv.dialog else {
        return out;
    };
    out.answered_ms = Some(epoch.elapsed().as_millis() as u64);
    out.answered_by = d.recorder_port();
    d.media(media_ms);
    // The proxy answers 408 for a dead recorder.
    out.bye_status = d.request("BYE", Duration::from_secs(25));
    out.bye_ok = out.bye_status == 200;
    out
}

/// One pbx-edge instance of the pool.
struct Instance {
    name: &'static str,
    sip: SocketAddr,
    dir: PathBuf,
    daemon: Option<Daemon>,
}

fn instance_config(name: &str, sip: SocketAddr, rtp: u16, cloud: &str) -> String {
    format!(
        "[agent]\nid = \"{name}\"\n[sources.siprec]\nenabled = true\nlisten = \"{sip}\"\nrtp_ports = \"{rtp}-{}\"\nmax_calls = 400\n\
         [cloud]\nurl = \"{cloud}\"\nmax_parallel = 4\n",
        rtp + 999
    )
}

/// Start `pbx-edge run` on an existing config (a restart keeps the spool).
fn start_on(dir: &Path) -> Daemon {
    let d = spawn_on(dir);
    d.wait_http("/readyz", 200, Duration::from_secs(30));
    d
}

/// [`start_on`] without waiting for the daemon to be ready.
fn spawn_on(dir: &Path) -> Daemon {
    let config = dir.join("pbx-edge.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let health: SocketAddr = text
        .lines()
        .find_map(|l| l.strip_prefix("listen = \""))
        .and_then(|l| l.strip_suffix('"'))
        .unwrap()
        .parse()
        .unwrap();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("daemon.log"))
        .unwrap();
    let child = std::process::Command::new(bin())
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env_remove("NOTIFY_SOCKET")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    Daemon {
        child,
        dir: dir.to_path_buf(),
        config,
        health,
        spool: dir.join("spool"),
    }
}

/// Kamailio, killed with its process group when dropped.
struct Kamailio {
    child: std::process::Child,
    log: PathBuf,
    /// Its configuration file (unique to the test): whatever still runs
    /// with it after the group was killed is killed too.
    cfg: PathBuf,
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        // SAFETY: signalling the process group we created for our child.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
        // Kamailio's workers were seen to outlive the group kill (left
        // running after the tests); none may stay.
        let _ = std::process::Command::new("pkill")
            .arg("-9")
            .arg("-f")
            .arg(&self.cfg)
            .status();
    }
}

fn kamailio_modules() -> Option<&'static str> {
    [
        "/usr/lib/x86_64-linux-gnu/kamailio/modules",
        "/usr/lib/aarch64-linux-gnu/kamailio/modules",
        "/usr/lib/kamailio/modules",
    ]
    .into_iter()
    .find(|m| Path::new(m).join("dispatcher.so").exists())
}

/// The Kamailio configuration docs/scale-out.md shows, with this test's
/// addresses and module path.
fn kamailio_cfg(modules: &str, listen: SocketAddr, list: &Path) -> String {
    include_str!("../docs/scale-out/kamailio.cfg")
        .replace("MPATH", modules)
        .replace("LISTEN", &listen.to_string())
        .replace("DISPATCHER_LIST", &list.display().to_string())
        .replace("FR_TIMER", &FR_TIMER_MS.to_string())
}

fn start_kamailio(dir: &Path, listen: SocketAddr, pool: &[SocketAddr]) -> Option<Kamailio> {
    use std::os::unix::process::CommandExt;
    let modules = kamailio_modules()?;
    let list = dir.join("dispatcher.list");
    let mut text = String::from("# setid destination flags priority attributes\n");
    for (i, a) in pool.iter().enumerate() {
        text += &format!("1 sip:{a} 0 0 duid=edge{i}\n");
    }
    std::fs::write(&list, text).unwrap();
    let cfg = dir.join("kamailio.cfg");
    std::fs::write(&cfg, kamailio_cfg(modules, listen, &list)).unwrap();
    let log = dir.join("kamailio.log");
    let child = std::process::Command::new("kamailio")
        .arg("-f")
        .arg(&cfg)
        .args(["-DD", "-E", "-P"])
        .arg(dir.join("kamailio.pid"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .process_group(0)
        .spawn()
        .expect("start kamailio");
    Some(Kamailio { child, log, cfg })
}

/// Send an OPTIONS straight to `to`: its status and Retry-After.
fn probe(to: SocketAddr, n: u32) -> Option<(u16, Option<String>)> {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let me = sock.local_addr().unwrap();
    let m = format!(
        "OPTIONS sip:srs@{to} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKprobe{n}\r\nMax-Forwards: 70\r\n\
         From: <sip:test@127.0.0.1>;tag=p{n}\r\nTo: <sip:srs@{to}>\r\nCall-ID: probe-{n}@scale\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    for _ in 0..5 {
        sock.send_to(m.as_bytes(), to).ok()?;
        if let Some(r) = final_response(&sock, "OPTIONS", Duration::from_millis(400)) {
            return Some((
                status_code(&r),
                header(&r, "Retry-After").map(str::to_string),
            ));
        }
    }
    None
}

/// Where the figures go besides stdout: `target/tmp/scale_out.txt`, which
/// `.ci/run` prints after the tests (cargo hides a passing test's output).
fn figures() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("scale_out.txt")
}

/// One line of figures: printed and appended to [`figures`].
fn report(line: &str) {
    use std::io::Write;
    println!("{line}");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(figures())
    {
        let _ = writeln!(f, "{line}");
    }
}

fn wait_until(what: &str, max: Duration, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < max, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Run `calls` (call id, start offset, media ms) through the proxy, each in
/// its own thread, starting each at its offset from now.
fn run_calls(
    proxy: SocketAddr,
    calls: Vec<(String, Duration, u64)>,
    epoch: Instant,
    seed0: u64,
) -> Vec<std::thread::JoinHandle<Outcome>> {
    let start = Instant::now();
    let mut threads = Vec::new();
    for (i, (id, at, ms)) in calls.into_iter().enumerate() {
        if let Some(w) = at.checked_sub(start.elapsed()) {
            std::thread::sleep(w);
        }
        let seed = seed0 + i as u64;
        threads.push(std::thread::spawn(move || {
            call(proxy, &id, ms, seed, epoch)
        }));
    }
    threads
}

#[test]
fn dispatcher_spreads_calls_fails_over_a_killed_instance_and_drains_one() {
    let _ = std::fs::remove_file(figures());
    if !have("kamailio") {
        eprintln!("SKIPPED: kamailio is not installed (see .ci/run)");
        return;
    }
    if kamailio_modules().is_none() {
        eprintln!("SKIPPED: kamailio's dispatcher module is not installed");
        return;
    }
    let top = tempfile::tempdir().unwrap();
    let rx = Receiver::start(ReceiverOptions::default());
    let names = ["edge-a", "edge-b", "edge-c"];
    let mut pool: Vec<Instance> = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let dir = top.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let sip: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let rtp = 21_000 + 2000 * i as u16 + (free_port() % 8) * 100;
        let health: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        std::fs::write(
            dir.join("pbx-edge.toml"),
            Daemon::config_text(
                &dir.join("spool"),
                health,
                &instance_config(name, sip, rtp, &rx.url),
            )
            .replacen("[spool]\n", "[spool]\nretention = \"1h\"\n", 1),
        )
        .unwrap();
        let daemon = Some(start_on(&dir));
        pool.push(Instance {
            name,
            sip,
            dir,
            daemon,
        });
    }
    let by_port: BTreeMap<u16, usize> = pool
        .iter()
        .enumerate()
        .map(|(i, p)| (p.sip.port(), i))
        .collect();
    let proxy: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let kam = start_kamailio(
        top.path(),
        proxy,
        &pool.iter().map(|p| p.sip).collect::<Vec<_>>(),
    )
    .expect("dispatcher module checked above");
    // Kamailio is up when it answers an OPTIONS (its script answers 200).
    wait_until("kamailio answering", Duration::from_secs(20), || {
        probe(proxy, 0).is_some_and(|(c, _)| c == 200)
    });
    // The probes have found every instance up: one call per instance key.
    let kam_log = || std::fs::read_to_string(&kam.log).unwrap_or_default();
    std::thread::sleep(Duration::from_millis(2500));
    let epoch = Instant::now();

    // 1. Throughput: BURST short calls by WORKERS SRCs, each placing its
    //    next call as soon as the last one ended.
    const BURST: usize = 600;
    const WORKERS: usize = 150;
    let t_burst = Instant::now();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let next = next.clone();
            std::thread::spawn(move || {
                let mut done = Vec::new();
                loop {
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if n >= BURST {
                        return done;
                    }
                    let id = format!("burst-{n}@scale-out");
                    done.push(call(proxy, &id, 100, 10_000 + n as u64, epoch));
                }
            })
        })
        .collect();
    let burst: Vec<Outcome> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    let burst_s = t_burst.elapsed().as_secs_f64();
    let burst_answered = burst.iter().filter(|o| o.answered_by.is_some()).count();
    let setup_ms: Vec<u64> = burst
        .iter()
        .filter_map(|o| Some(o.answered_ms? - o.invited_ms))
        .collect();
    let mut per: BTreeMap<&str, usize> = BTreeMap::new();
    for o in &burst {
        if let Some(i) = o.answered_by.and_then(|p| by_port.get(&p)) {
            *per.entry(pool[*i].name).or_default() += 1;
        }
    }
    report(&format!(
        "scale_out burst: {burst_answered}/{BURST} calls answered in {burst_s:.1} s = {:.1} calls/s ({WORKERS} SRCs back to back, each call INVITE, ACK, 100 ms of RTP on two streams, BYE); setup median {} ms, max {} ms; per instance {per:?}",
        burst_answered as f64 / burst_s,
        {
            let mut s = setup_ms.clone();
            s.sort();
            s.get(s.len() / 2).copied().unwrap_or(0)
        },
        setup_ms.iter().max().copied().unwrap_or(0)
    ));
    assert_eq!(burst_answered, BURST, "kamailio log:\n{}", kam_log());
    let bad_bye: Vec<(&str, u16)> = burst
        .iter()
        .filter(|o| !o.bye_ok)
        .map(|o| (o.call_id.as_str(), o.bye_status))
        .collect();
    assert!(bad_bye.is_empty(), "BYE not answered 200: {bad_bye:?}");
    assert_eq!(
        per.len(),
        3,
        "the hash spreads calls over all three: {per:?}"
    );

    // 2. Steady load: a call every 150 ms for 12 s, 3 s of RTP each; edge-b
    //    SIGKILLed at 3 s, edge-c drained at 7 s.
    let (kill_at, drain_at) = (Duration::from_secs(3), Duration::from_secs(7));
    let load: Vec<(String, Duration, u64)> = (0..80)
        .map(|i| {
            (
                format!("load-{i}@scale-out"),
                Duration::from_millis(150 * i),
                3000,
            )
        })
        .collect();
    let load_start = Instant::now();
    let load_epoch_ms = epoch.elapsed().as_millis() as u64;
    // Watches, every 20 ms, when Kamailio reports a recorder down (its
    // dispatcher:dst-down event) and when the drained instance is gone.
    let stop_watch = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let stop = stop_watch.clone();
        let log = kam.log.clone();
        let c_health = pool[2].daemon.as_ref().unwrap().health;
        std::thread::spawn(move || {
            let mut down: BTreeMap<u16, u64> = BTreeMap::new();
            let mut c_gone: Option<u64> = None;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                // "recorder down: OPTIONS sip:H:P" (a probe failed) or
                // "recorder sip:H:P failed for ...: next" (an INVITE did).
                for l in text
                    .lines()
                    .filter(|l| l.contains("recorder down: ") || l.contains(" failed for "))
                {
                    let port = l
                        .split("sip:")
                        .nth(1)
                        .and_then(|r| r.split(':').nth(1))
                        .and_then(|p| {
                            p.chars()
                                .take_while(char::is_ascii_digit)
                                .collect::<String>()
                                .parse()
                                .ok()
                        });
                    if let Some(port) = port {
                        down.entry(port)
                            .or_insert_with(|| epoch.elapsed().as_millis() as u64);
                    }
                }
                if c_gone.is_none()
                    && std::net::TcpStream::connect_timeout(&c_health, Duration::from_millis(200))
                        .is_err()
                {
                    c_gone = Some(epoch.elapsed().as_millis() as u64);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (down, c_gone)
        })
    };
    // No recorder is down before the load.
    std::thread::sleep(Duration::from_millis(100));
    let runner = std::thread::spawn(move || run_calls(proxy, load, epoch, 20_000));
    std::thread::sleep(kill_at.saturating_sub(load_start.elapsed()));
    pool[1].daemon.as_mut().unwrap().signal(libc::SIGKILL);
    let killed_ms = epoch.elapsed().as_millis() as u64;
    // At once, before any probe can notice: 24 new calls, about a third of
    // them hashed to the dead instance.
    let rush: Vec<(String, Duration, u64)> = (0..24)
        .map(|i| (format!("rush-{i}@scale-out"), Duration::ZERO, 200))
        .collect();
    let rush = std::thread::spawn(move || run_calls(proxy, rush, epoch, 30_000));
    assert!(pool[1]
        .daemon
        .as_mut()
        .unwrap()
        .wait_exit(Duration::from_secs(10))
        .is_none());
    std::thread::sleep(drain_at.saturating_sub(load_start.elapsed()));
    let drain = std::process::Command::new(bin())
        .arg("drain")
        .arg("--config")
        .arg(pool[2].dir.join("pbx-edge.toml"))
        .output()
        .unwrap();
    let drained_ms = epoch.elapsed().as_millis() as u64;
    assert!(
        drain.status.success(),
        "pbx-edge drain: {}",
        String::from_utf8_lossy(&drain.stderr)
    );
    // While it drains: /readyz says so, a probe gets 503 + Retry-After.
    let c = pool[2].daemon.as_ref().unwrap();
    let (code, body) = c.get("/readyz").unwrap_or_default();
    assert!(
        code == 0 || (code == 503 && body.contains("draining")),
        "{code} {body}"
    );
    if let Some((code, retry)) = probe(pool[2].sip, 1) {
        assert_eq!(code, 503);
        assert!(retry.is_some());
    }
    let threads = runner.join().unwrap();
    let load: Vec<Outcome> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let rush: Vec<Outcome> = rush
        .join()
        .unwrap()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    // The drained instance exits 0 by itself once its calls ended and its
    // spool is delivered.
    let code = pool[2]
        .daemon
        .as_mut()
        .unwrap()
        .wait_exit(Duration::from_secs(60));
    let c_log = pool[2].daemon.as_ref().unwrap().log();
    assert_eq!(code, Some(0), "drained instance's log:\n{c_log}");
    assert!(c_log.contains("drained: the spool is delivered"), "{c_log}");
    std::thread::sleep(Duration::from_millis(300));
    stop_watch.store(true, std::sync::atomic::Ordering::Relaxed);
    let (down, c_gone) = watcher.join().unwrap();
    let b_down_ms = down.get(&pool[1].sip.port()).copied();
    let c_down_ms = down.get(&pool[2].sip.port()).copied();
    assert!(
        !down.contains_key(&pool[0].sip.port()),
        "edge-a marked down"
    );
    let b_down = b_down_ms.expect("kamailio never marked the killed instance down");
    let c_down = c_down_ms.unwrap_or_else(|| {
        panic!(
            "kamailio never marked the drained instance down:\n{}",
            kam_log()
                .lines()
                .filter(|l| l.contains("recorder"))
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    assert!(b_down >= killed_ms && c_down >= drained_ms);
    let c_gone = c_gone.expect("the drained instance did not exit");
    let mut per: BTreeMap<&str, usize> = BTreeMap::new();
    for o in &load {
        if let Some(i) = o.answered_by.and_then(|p| by_port.get(&p)) {
            *per.entry(pool[*i].name).or_default() += 1;
        }
    }
    let answered: Vec<&Outcome> = load.iter().filter(|o| o.answered_by.is_some()).collect();
    let lost: Vec<&Outcome> = load.iter().filter(|o| o.answered_by.is_none()).collect();
    let b_port = pool[1].sip.port();
    let c_port = pool[2].sip.port();
    // Cut by the kill: answered by edge-b, BYE not answered.
    let cut: Vec<&Outcome> = answered
        .iter()
        .filter(|o| o.answered_by == Some(b_port) && !o.bye_ok)
        .copied()
        .collect();
    // New calls after the kill: the slowest setup any SRC saw.
    let after_kill: Vec<&Outcome> = answered
        .iter()
        .filter(|o| o.invited_ms >= killed_ms)
        .copied()
        .collect();
    let setup = |o: &Outcome| o.answered_ms.unwrap() - o.invited_ms;
    let worst_after_kill = after_kill
        .iter()
        .copied()
        .chain(rush.iter())
        .map(setup)
        .max()
        .unwrap_or(0);
    let failover_ms = b_down - killed_ms;
    // The rush: every call answered, by the living; those first sent to the
    // dead instance waited for fr_timer, then went to the next.
    let rush_lost: Vec<&Outcome> = rush.iter().filter(|o| o.answered_by.is_none()).collect();
    assert!(rush_lost.is_empty(), "{rush_lost:?}\n{}", kam_log());
    assert!(rush
        .iter()
        .all(|o| o.answered_by != Some(b_port) && o.bye_ok));
    // Those Kamailio first sent to the dead instance: its failure_route
    // logged them.
    let klog = kam_log();
    let rerouted_setup: Vec<u64> = rush
        .iter()
        .filter(|o| klog.contains(&format!("failed for {}", o.call_id)))
        .map(setup)
        .collect();
    let rerouted = rerouted_setup.len();
    assert!(
        rerouted > 0,
        "no rush call was hashed to the killed instance: {:?}",
        rush.iter().map(setup).collect::<Vec<_>>()
    );
    let mut rush_per: BTreeMap<&str, usize> = BTreeMap::new();
    for o in &rush {
        if let Some(i) = o.answered_by.and_then(|p| by_port.get(&p)) {
            *rush_per.entry(pool[*i].name).or_default() += 1;
        }
    }
    report(&format!(
        "scale_out load: {} calls in {:.1} s, answered {} (per instance {per:?}), lost {}; edge-b SIGKILLed at +{} ms with {} calls in progress (cut); kamailio marked it down {failover_ms} ms after the kill (failover time); 24 calls sent at the kill: all answered ({rush_per:?}), {rerouted} of them first sent to edge-b and re-routed (setup {rerouted_setup:?} ms; fr_timer {FR_TIMER_MS} ms); slowest setup of any new call after the kill {worst_after_kill} ms; edge-c drained at +{} ms: marked down after {} ms, exited 0 after {} ms",
        load.len(),
        (epoch.elapsed().as_millis() as u64 - load_epoch_ms) as f64 / 1000.0,
        answered.len(),
        lost.len(),
        killed_ms - load_epoch_ms,
        cut.len(),
        drained_ms - load_epoch_ms,
        c_down - drained_ms,
        c_gone - drained_ms,
    ));
    assert!(
        lost.is_empty(),
        "calls lost: {lost:?}\nkamailio:\n{}",
        kam_log()
    );
    // After the kill nothing new goes to edge-b; after the drain nothing new
    // goes to edge-c.
    assert!(after_kill.iter().all(|o| o.answered_by != Some(b_port)));
    assert!(answered
        .iter()
        .filter(|o| o.invited_ms >= drained_ms + 100)
        .all(|o| o.answered_by != Some(c_port)));
    // edge-c's calls in progress when it drained all finished normally.
    assert!(answered
        .iter()
        .filter(|o| o.answered_by == Some(c_port))
        .all(|o| o.bye_ok));
    // Only calls in progress on the killed instance were cut.
    assert!(answered
        .iter()
        .filter(|o| o.answered_by != Some(b_port))
        .all(|o| o.bye_ok));
    assert!(failover_ms < 10_000, "failover took {failover_ms} ms");

    // The killed instance comes back on its spool: the cut calls are
    // completed (truncated) and delivered with the rest.
    pool[1].daemon = Some(start_on(&pool[1].dir.clone()));

    // 3. Every answered call delivered exactly once, by whoever answered it.
    let all: Vec<&Outcome> = burst.iter().chain(load.iter()).chain(rush.iter()).collect();
    let want: BTreeMap<&str, &str> = all
        .iter()
        .filter_map(|o| {
            let i = by_port.get(&o.answered_by?)?;
            Some((o.call_id.as_str(), pool[*i].name))
        })
        .collect();
    wait_until(
        "every answered call delivered",
        Duration::from_secs(120),
        || {
            let st = rx.lock();
            want.keys().all(|id| {
                st.calls
                    .values()
                    .any(|c| c.json["call_id"].as_str() == Some(*id))
            })
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    let st = rx.lock();
    assert!(st.conflicts.is_empty(), "{:?}", st.conflicts);
    let mut delivered: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for c in st.calls.values() {
        delivered
            .entry(c.json["call_id"].as_str().unwrap_or("").to_string())
            .or_default()
            .push(c.json.clone());
    }
    let mut per_agent: BTreeMap<String, usize> = BTreeMap::new();
    for (id, agent) in &want {
        let got = delivered.get(*id).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(
            got.len(),
            1,
            "{id}: delivered {} times: {:?}",
            got.len(),
            got.iter()
                .map(|j| (
                    j["recording_id"].clone(),
                    j["agent_id"].clone(),
                    j["end_reason"].clone(),
                    j["truncated"].clone(),
                    j["duration_ms"].clone(),
                    j["warnings"].clone()
                ))
                .collect::<Vec<_>>()
        );
        assert_eq!(got[0]["agent_id"], *agent, "{id}");
        *per_agent.entry(agent.to_string()).or_default() += 1;
    }
    for o in &cut {
        let j = &delivered[&o.call_id][0];
        assert_eq!(j["truncated"], true, "{}: {j}", o.call_id);
    }
    assert_eq!(
        delivered.len(),
        want.len(),
        "recordings of calls nobody answered"
    );
    report(&format!(
        "scale_out delivery: {} recordings delivered exactly once to one cloud (per agent.id {per_agent:?}), {} of them cut by the kill and completed truncated after the restart",
        want.len(),
        cut.len()
    ));
}

/// One instance with SIPREC on `sip` and the cloud at `cloud` ("" none).
fn single(dir: &Path, name: &str, cloud: &str) -> (Daemon, SocketAddr) {
    let sip: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let rtp = 27_000 + (free_port() % 20) * 100;
    let health: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cfg = if cloud.is_empty() {
        format!(
            "[agent]\nid = \"{name}\"\n[sources.siprec]\nenabled = true\nlisten = \"{sip}\"\nrtp_ports = \"{rtp}-{}\"\n",
            rtp + 99
        )
    } else {
        instance_config(name, sip, rtp, cloud)
    };
    std::fs::write(
        dir.join("pbx-edge.toml"),
        Daemon::config_text(&dir.join("spool"), health, &cfg),
    )
    .unwrap();
    (start_on(dir), sip)
}

fn metrics(d: &Daemon) -> String {
    d.get("/metrics").map(|r| r.1).unwrap_or_default()
}

/// `pbx-edge drain` on a daemon with a call in progress: OPTIONS and a new
/// INVITE get 503 + Retry-After, /readyz, /status and /metrics say
/// draining; the call in progress goes on (in-dialog OPTIONS, re-INVITE and
/// BYE answered 200, its recording complete), then the spool is delivered
/// and the daemon exits 0 by itself.
#[test]
fn drain_refuses_new_calls_finishes_the_call_delivers_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start(ReceiverOptions::default());
    let (mut d, sip) = single(dir.path(), "edge-drain", &rx.url);
    assert_eq!(probe(sip, 10), Some((200, None)));
    let mut call = invite(sip, "in-progress@drain", 1)
        .dialog
        .expect("answered");
    call.media(600);
    let out = std::process::Command::new(bin())
        .arg("drain")
        .arg("--config")
        .arg(dir.path().join("pbx-edge.toml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("draining"));
    // Draining: a probe and a new call are refused, with Retry-After.
    let (code, retry) = probe(sip, 11).expect("an answer to OPTIONS");
    assert_eq!(code, 503);
    assert_eq!(retry.as_deref(), Some("30"));
    let refused = invite(sip, "new@drain", 2);
    assert_eq!(refused.status, 503);
    assert_eq!(refused.retry_after.as_deref(), Some("30"));
    let (code, body) = d.get("/readyz").unwrap();
    assert_eq!(code, 503);
    assert!(body.contains("draining (calls)"), "{body}");
    // The request marks the daemon draining at once; its loop then fills
    // in the drain's progress (a moment later on a busy machine).
    let mut status = serde_json::Value::Null;
    wait_until(
        "the drain's progress in /status",
        Duration::from_secs(5),
        || {
            let (_, s) = d.get("/status").unwrap();
            status = serde_json::from_str(&s).unwrap();
            !status["drain"].is_null()
        },
    );
    assert_eq!(status["draining"], true);
    assert_eq!(status["drain"]["calls_in_progress"], 1, "{status}");
    assert!(metrics(&d).contains("pbx_edge_draining 1"));
    // The call in progress is still served.
    assert_eq!(call.request("OPTIONS", Duration::from_secs(5)), 200);
    assert_eq!(call.request("INVITE", Duration::from_secs(5)), 200);
    call.media(600);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        d.wait_exit(Duration::from_millis(10)),
        None,
        "exited with a call in progress"
    );
    assert_eq!(call.request("BYE", Duration::from_secs(10)), 200);
    let code = d.wait_exit(Duration::from_secs(60));
    let log = d.log();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("drained: the spool is delivered"), "{log}");
    let calls = rx.calls();
    let got: Vec<&serde_json::Value> = calls
        .values()
        .map(|c| &c.json)
        .filter(|j| j["call_id"] == "in-progress@drain")
        .collect();
    assert_eq!(got.len(), 1, "{calls:?}");
    assert_eq!(got[0]["truncated"], false);
    assert_eq!(got[0]["agent_id"], "edge-drain");
    assert!(!calls.values().any(|c| c.json["call_id"] == "new@drain"));
}

/// SIGUSR1 drains the same way; with no cloud configured the daemon exits 0
/// once its calls ended and says the recordings stay in the spool.
#[test]
fn sigusr1_drains_and_without_a_cloud_the_recordings_stay_in_the_spool() {
    let dir = tempfile::tempdir().unwrap();
    let (mut d, sip) = single(dir.path(), "edge-usr1", "");
    let mut call = invite(sip, "kept@drain", 3).dialog.expect("answered");
    call.media(400);
    d.signal(libc::SIGUSR1);
    wait_until("OPTIONS refused", Duration::from_secs(10), || {
        probe(sip, 20).is_some_and(|(c, _)| c == 503)
    });
    assert_eq!(call.request("BYE", Duration::from_secs(10)), 200);
    let code = d.wait_exit(Duration::from_secs(30));
    let log = d.log();
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("no cloud configured: 1 recordings stay in the spool"),
        "{log}"
    );
    assert_eq!(d.recordings().len(), 1);
}

/// While the spool database cannot be used (here: another process holds the
/// delivery lock, which /readyz reports as `spool.queue`), OPTIONS get 503
/// with Retry-After and `pbx_edge_spool_usable` is 0; as soon as it can,
/// 200 again.
#[test]
fn options_answer_503_while_the_spool_is_unusable() {
    use std::os::fd::AsRawFd;
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    let lock = std::fs::File::create(spool.join(".delivery.lock")).unwrap();
    // SAFETY: flock on a descriptor we own.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    let sip: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let rtp = 27_000 + (free_port() % 20) * 100;
    let d = Daemon::start(
        dir.path(),
        &format!(
            "[sources.siprec]\nenabled = true\nlisten = \"{sip}\"\nrtp_ports = \"{rtp}-{}\"\n",
            rtp + 99
        ),
    );
    wait_until("/readyz to name the spool", Duration::from_secs(10), || {
        d.get("/readyz")
            .is_some_and(|(c, b)| c == 503 && b.contains("spool.queue"))
    });
    let (code, retry) = probe(sip, 30).expect("an answer");
    assert_eq!((code, retry.as_deref()), (503, Some("30")));
    assert!(metrics(&d).contains("pbx_edge_spool_usable 0"));
    drop(lock);
    d.wait_http("/readyz", 200, Duration::from_secs(10));
    assert_eq!(probe(sip, 31), Some((200, None)));
    assert!(metrics(&d).contains("pbx_edge_spool_usable 1"));
    assert!(d
        .log()
        .contains("OPTIONS answered 503 while the spool is unusable"));
}

/// `POST /v1/drain` from an address other than loopback is refused (403)
/// and changes nothing, even with the health listener on all addresses;
/// `pbx-edge drain --wait` (from loopback) waits until the daemon exited.
/// Skipped where this host has no address but loopback.
#[test]
fn drain_is_taken_from_loopback_only() {
    // The address this host would use towards the outside (no packet sent).
    let own = UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect("192.0.2.1:9")?;
            s.local_addr()
        })
        .map(|a| a.ip());
    let Ok(own) = own.map_err(|_| ()).and_then(|ip| {
        if ip.is_loopback() || ip.is_unspecified() {
            Err(())
        } else {
            Ok(ip)
        }
    }) else {
        eprintln!("SKIPPED: no address but loopback on this host");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(dir.path(), "[sources.siprec]\nenabled = false\n");
    // Restart on all addresses (Daemon::start binds loopback).
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(15)), Some(0));
    // A port free on loopback may be taken on another address by the
    // other tests' sockets before the daemon binds it: then another one.
    let (mut d, port) = (0..5)
        .find_map(|_| {
            let port = free_port();
            let cfg = Daemon::config_text(
                &dir.path().join("spool"),
                format!("0.0.0.0:{port}").parse().unwrap(),
                "[sources.siprec]\nenabled = false\n",
            );
            std::fs::write(dir.path().join("pbx-edge.toml"), cfg).unwrap();
            let mut d = spawn_on(dir.path());
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(30) {
                if d.get("/readyz").is_some_and(|(c, _)| c == 200) {
                    return Some((d, port));
                }
                if d.wait_exit(Duration::from_millis(50)).is_some() {
                    let log = d.log();
                    assert!(log.contains("in use"), "the daemon exited: {log}");
                    std::fs::write(dir.path().join("daemon.log"), "").unwrap();
                    return None;
                }
            }
            panic!("daemon never ready: {}", d.log());
        })
        .expect("no free port in 5 tries");
    let outside = SocketAddr::new(own, port);
    let (code, _) = pbx_edge::health::post(outside, "/v1/drain").unwrap();
    assert_eq!(code, 403);
    let (_, status) = d.get("/status").unwrap();
    assert!(status.contains("\"draining\": false"), "{status}");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(d.wait_exit(Duration::from_millis(10)), None);
    // From loopback it is taken: `pbx-edge drain --wait` (health.listen is
    // 0.0.0.0: reached on 127.0.0.1) returns once the daemon has exited.
    let out = std::process::Command::new(bin())
        .arg("drain")
        .arg("--wait")
        .arg("--config")
        .arg(dir.path().join("pbx-edge.toml"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(said.contains("the daemon has exited"), "{said}");
    assert_eq!(d.wait_exit(Duration::from_secs(30)), Some(0), "{}", d.log());
}

/// A drain whose cloud answers 402 (uploads paused) does not wait for it:
/// once the call ended the daemon exits 0, says why, and the recording stays
/// in the spool for the next start.
#[test]
fn drain_with_a_cloud_that_answers_402_exits_and_keeps_the_recording() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start(ReceiverOptions::default());
    rx.lock().payment_required_until = Some(Instant::now() + Duration::from_secs(3600));
    let (mut d, sip) = single(dir.path(), "edge-402", &rx.url);
    let mut call = invite(sip, "unpaid@drain", 4).dialog.expect("answered");
    call.media(400);
    assert_eq!(call.request("BYE", Duration::from_secs(10)), 200);
    wait_until("uploads paused", Duration::from_secs(20), || {
        d.get("/status")
            .is_some_and(|(_, b)| b.contains("\"pause_kind\": \"payment\""))
    });
    d.signal(libc::SIGUSR1);
    let code = d.wait_exit(Duration::from_secs(30));
    let log = d.log();
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("uploads are paused") && log.contains("1 recordings stay in the spool"),
        "{log}"
    );
    assert_eq!(d.recordings().len(), 1);
    assert!(rx.calls().is_empty());
}
