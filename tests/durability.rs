//! Crash durability and spool self-repair, end to end (docs/durability.md).
//!
//! - SIGKILL while SIPREC calls are open: after the restart every answered
//!   call has a recording (an answered call without audio an empty one),
//!   the ones cut say so, audio lost per call is within the stated window
//!   (the engine's hold-back `recording.jitter`, 500 ms, plus 200 ms),
//!   measured against the audio sent before the kill; a call whose BYE got
//!   its 200 before the kill is complete.
//! - A corrupt `spool.db`: `/readyz` says why while it is rebuilt; every
//!   pair on disk is delivered once, delivered ones are not sent again,
//!   `pbx-edge spool list` works.
//! - Torture: the daemon SIGKILLed 20 times at random moments while calls
//!   arrive and a faulty cloud answers; the same oracle for every call, and
//!   every pair delivered exactly once with its sha256, no corrupt WAV.

mod common;

use common::{header, is_final_response};

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::daemon::*;
use common::receiver::{RandomFaults, Receiver, ReceiverOptions};
use pbx_testgen::audio::speechlike;
use pbx_testgen::codec::Encoder;
use pbx_testgen::scenario::rtp_packet;
use pbx_testgen::TestCodec;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The stated window: `recording.jitter` (default 500 ms) + 200 ms.
const WINDOW_MS: i64 = 700;

const BOUNDARY: &str = "durabilityboundary";

fn metadata(call_id: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<recording xmlns="urn:ietf:params:xml:ns:recording:1">
  <datamode>complete</datamode>
  <session session_id="c2Vzc2lvbjE="><sipSessionID>{call_id}-orig</sipSessionID></session>
  <participant participant_id="UEFSVDE="><nameID aor="sip:+15551001@pbx.example"><name>Alice</name></nameID></participant>
  <participant participant_id="UEFSVDI="><nameID aor="sip:+15552002@pbx.example"><name>Bob</name></nameID></participant>
  <stream stream_id="U1RSMQ==" session_id="c2Vzc2lvbjE="><label>1</label></stream>
  <stream stream_id="U1RSMg==" session_id="c2Vzc2lvbjE="><label>2</label></stream>
  <participantstreamassoc participant_id="UEFSVDE="><send>U1RSMQ==</send><recv>U1RSMg==</recv></participantstreamassoc>
  <participantstreamassoc participant_id="UEFSVDI="><send>U1RSMg==</send><recv>U1RSMQ==</recv></participantstreamassoc>
</recording>"#
    )
}

/// One SIPREC session seen from the SRC, over its own UDP socket.
struct SrcCall {
    call_id: String,
    sock: UdpSocket,
    srs: SocketAddr,
    to: String,
    ports: [u16; 2],
}

impl SrcCall {
    /// INVITE (not retransmitted) and, on 200, ACK. `None` when no 200 came
    /// within `max` (the daemon was killed, or refused).
    fn place(srs: SocketAddr, call_id: &str, max: Duration) -> Option<SrcCall> {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let port = sock.local_addr().unwrap().port();
        let sdp = "v=0\r\no=SRC 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
             m=audio 40100 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=label:1\r\na=sendonly\r\n\
             m=audio 40102 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=label:2\r\na=sendonly\r\n";
        let body = format!(
            "--{BOUNDARY}\r\nContent-Type: application/sdp\r\n\r\n{sdp}\r\n--{BOUNDARY}\r\nContent-Type: application/rs-metadata+xml\r\nContent-Disposition: recording-session\r\n\r\n{}\r\n--{BOUNDARY}--\r\n",
            metadata(call_id)
        );
        let invite = format!(
            "INVITE sip:srs@{srs} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKi{call_id}\r\nMax-Forwards: 70\r\n\
             From: <sip:src@127.0.0.1>;tag=src-{call_id}\r\nTo: <sip:srs@{srs}>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\n\
             Contact: <sip:src@127.0.0.1:{port}>;+sip.src\r\nRequire: siprec\r\n\
             Content-Type: multipart/mixed;boundary={BOUNDARY}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        sock.send_to(invite.as_bytes(), srs).unwrap();
        let ok = final_response(&sock, "INVITE", max)?;
        if !ok.starts_with("SIP/2.0 200") {
            return None;
        }
        let to = header(&ok, "To")?.to_string();
        let ports: Vec<u16> = ok
            .lines()
            .filter(|l| l.starts_with("m=audio "))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
            .collect();
        let call = SrcCall {
            call_id: call_id.to_string(),
            sock,
            srs,
            to,
            ports: [*ports.first()?, *ports.get(1)?],
        };
        call.send(&format!(
            "ACK sip:srs@{srs} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKa{call_id}\r\nMax-Forwards: 70\r\nFrom: <sip:src@127.0.0.1>;tag=src-{call_id}\r\nTo: {}\r\nCall-ID: {call_id}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
            call.to
        ));
        Some(call)
    }

    fn send(&self, msg: &str) {
        let _ = self.sock.send_to(msg.as_bytes(), self.srs);
    }

    /// BYE (retransmitted every 500 ms, as a UDP UAC does) until its 200;
    /// how long the 200 took, `None` if none came within `max`.
    fn bye(&self, max: Duration) -> Option<Duration> {
        let port = self.sock.local_addr().unwrap().port();
        let bye = format!(
            "BYE sip:srs@{} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKb{}\r\nMax-Forwards: 70\r\nFrom: <sip:src@127.0.0.1>;tag=src-{}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
            self.srs, self.call_id, self.call_id, self.to, self.call_id
        );
        let t = Instant::now();
        let mut next = t;
        while t.elapsed() < max {
            if Instant::now() >= next {
                self.send(&bye);
                next += Duration::from_millis(500);
            }
            if let Some(m) = recv(&self.sock) {
                if m.starts_with("SIP/2.0 200") && m.contains(" BYE\r\n") {
                    return Some(t.elapsed());
                }
            }
        }
        None
    }
}

fn recv(sock: &UdpSocket) -> Option<String> {
    let mut b = vec![0u8; 65536];
    let (n, _) = sock.recv_from(&mut b).ok()?;
    Some(String::from_utf8_lossy(&b[..n]).into_owned())
}

fn final_response(sock: &UdpSocket, method: &str, max: Duration) -> Option<String> {
    let t = Instant::now();
    while t.elapsed() < max {
        if let Some(m) = recv(sock) {
            if is_final_response(&m, method) {
                return Some(m);
            }
        }
    }
    None
}

/// RTP on both streams of a call: 20 ms PCMU packets in real time, until
/// `ms` of audio or `stop`. `sent` counts the 20 ms frames sent so far.
struct Media {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Media {
    fn start(ports: [u16; 2], ms: usize, seed: u64) -> Media {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let (st, se) = (stop.clone(), sent.clone());
        let thread = std::thread::spawn(move || {
            let socks: Vec<UdpSocket> = ports
                .iter()
                .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
                .collect();
            let audio: Vec<Vec<i16>> = (0..2)
                .map(|k| speechlike(seed * 2 + k, ms as u32 + 20, 8000))
                .collect();
            let mut enc = [Encoder::new(TestCodec::Pcmu), Encoder::new(TestCodec::Pcmu)];
            let t = Instant::now();
            for i in 0..ms / 20 {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let due = Duration::from_millis(20 * i as u64);
                if let Some(w) = due.checked_sub(t.elapsed()) {
                    std::thread::sleep(w);
                }
                if st.load(Ordering::SeqCst) {
                    break;
                }
                for k in 0..2 {
                    let pkt = rtp_packet(
                        0,
                        i == 0,
                        i as u16,
                        (i * 160) as u32,
                        0x7000 + seed as u32 * 2 + k as u32,
                        &enc[k].encode(&audio[k][i * 160..(i + 1) * 160]),
                    );
                    let _ = socks[k].send_to(&pkt, SocketAddr::from(([127, 0, 0, 1], ports[k])));
                }
                se.fetch_add(1, Ordering::SeqCst);
            }
        });
        Media {
            stop,
            sent,
            thread: Some(thread),
        }
    }

    fn sent_ms(&self) -> i64 {
        self.sent.load(Ordering::SeqCst) as i64 * 20
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    fn join(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Media {
    fn drop(&mut self) {
        self.stop();
    }
}

fn siprec_config(listen: SocketAddr, rtp: u16, extra: &str) -> String {
    format!(
        "[sources.siprec]\nenabled = true\nlisten = \"{listen}\"\nrtp_ports = \"{rtp}-{}\"\n{extra}",
        rtp + 39
    )
}

fn listen_and_rtp() -> (SocketAddr, u16) {
    let port = free_port();
    let rtp = rtp_base(port, 40);
    (format!("127.0.0.1:{port}").parse().unwrap(), rtp)
}

/// Wait until the SIGKILLed process is gone.
fn reap(d: &mut Daemon) {
    assert!(d.wait_exit(Duration::from_secs(10)).is_none(), "killed");
}

/// A WAV checked to be whole: RIFF, PCM 16-bit, 2 channels, the data chunk
/// exactly to the end of the file. Its duration in ms.
fn wav_ms(bytes: &[u8]) -> i64 {
    let info = pbx_core::audio::wav::parse_wav_header(bytes).expect("a WAV header");
    assert_eq!((info.channels, info.bits_per_sample), (2, 16), "{info:?}");
    assert_eq!(info.data_offset, 44);
    let data = u32::from_le_bytes(bytes[40..44].try_into().unwrap()) as usize;
    let riff = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as usize;
    assert_eq!(data + 44, bytes.len(), "data chunk size = rest of the file");
    assert_eq!(riff + 8, bytes.len(), "RIFF size = file size - 8");
    (data / 4) as i64 * 1000 / i64::from(info.sample_rate)
}

fn json_of(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// Recordings in the spool by call id: (JSON, WAV bytes).
fn spool_by_call(d: &Daemon) -> BTreeMap<String, Vec<(Value, Vec<u8>)>> {
    let mut out: BTreeMap<String, Vec<(Value, Vec<u8>)>> = BTreeMap::new();
    for p in d.recordings() {
        let j = json_of(&p);
        let wav = std::fs::read(p.with_extension("wav")).unwrap();
        out.entry(j["call_id"].as_str().unwrap().to_string())
            .or_default()
            .push((j, wav));
    }
    out
}

// ---------------------------------------------------------------------------
// SIGKILL while SIPREC calls are open
// ---------------------------------------------------------------------------

#[test]
fn sigkill_during_siprec_calls_loses_at_most_the_stated_window() {
    let dir = tempfile::tempdir().unwrap();
    let (listen, rtp) = listen_and_rtp();
    let config = siprec_config(listen, rtp, "");
    let mut d = Daemon::start(dir.path(), &config);
    d.wait_http("/readyz", 200, Duration::from_secs(10));
    let place = |id: &str| {
        SrcCall::place(listen, id, Duration::from_secs(5))
            .unwrap_or_else(|| panic!("{id} answered"))
    };
    let long = place("long@kill");
    let _quiet = place("quiet@kill");
    let done = place("done@kill");
    let short = place("short@kill");
    let mut m_long = Media::start(long.ports, 30_000, 1);
    let mut m_done = Media::start(done.ports, 1500, 2);
    m_done.join();
    // Answered once its recording is on disk.
    let bye_took = done.bye(Duration::from_secs(10)).expect("200 to BYE");
    // A short call: half a second of media when the daemon dies.
    let mut m_short = Media::start(short.ports, 800, 3);
    while m_short.sent_ms() < 500 {
        std::thread::sleep(Duration::from_millis(5));
    }
    d.signal(libc::SIGKILL);
    // Read right after the signal: what was sent before the kill (at most
    // one packet more).
    let (sent_long, sent_short) = (m_long.sent_ms(), m_short.sent_ms());
    reap(&mut d);
    m_long.stop();
    m_short.stop();
    assert!(
        d.recordings().len() <= 1,
        "only the finished call is a pair"
    );
    drop(d);

    let d = Daemon::start(dir.path(), &config);
    d.wait_recordings(4, Duration::from_secs(10));
    let recs = spool_by_call(&d);
    assert_eq!(recs.len(), 4, "{:?}", recs.keys());
    let one = |c: &str| {
        let v = &recs[c];
        assert_eq!(v.len(), 1, "one recording of {c}");
        (v[0].0.clone(), wav_ms(&v[0].1))
    };
    let mut report = Vec::new();
    for (call, sent) in [("long@kill", sent_long), ("short@kill", sent_short)] {
        let (j, ms) = one(call);
        assert_eq!(j["truncated"], true, "{j}");
        assert_eq!(j["end_reason"], "crash", "{j}");
        assert_eq!(j["duration_ms"], ms, "{j}");
        let lost = sent - ms;
        report.push(format!(
            "{call}: sent {sent} ms, kept {ms} ms, lost {lost} ms"
        ));
        assert!(
            lost <= WINDOW_MS,
            "{call}: {lost} ms lost (sent {sent}, kept {ms}), window {WINDOW_MS} ms"
        );
        assert_eq!(j["from"]["number"], "+15551001", "{j}");
    }
    let (j, ms) = one("quiet@kill");
    assert_eq!((ms, j["truncated"].clone()), (0, true.into()), "{j}");
    assert_eq!(j["end_reason"], "crash");
    assert_eq!(j["from"]["name"], "Alice", "{j}");
    assert_eq!(j["recorded_call_id"], "quiet@kill-orig", "{j}");
    let (j, ms) = one("done@kill");
    assert_eq!(j["truncated"], false, "{j}");
    assert_eq!(j["end_reason"], "bye", "{j}");
    assert!(ms >= 1500 - 100, "complete: {ms} ms of 1500");
    eprintln!(
        "durability: {}; BYE answered after {bye_took:?} (the pair was durable)",
        report.join("; ")
    );
}

// ---------------------------------------------------------------------------
// Spool self-repair
// ---------------------------------------------------------------------------

/// A pair as the recorder writes it; its WAV's sha256.
fn write_pair(dir: &Path, id: &str, frames: usize, seed: u64) -> String {
    let mut rng = fastrand::Rng::with_seed(seed);
    let data = (frames * 4) as u32;
    let mut wav = pbx_core::audio::wav::canonical_header(8000, 2, data).to_vec();
    wav.extend((0..data).map(|_| rng.u8(..)));
    let sha = hex::encode(Sha256::digest(&wav));
    std::fs::write(dir.join(format!("{id}.wav")), &wav).unwrap();
    let doc = serde_json::json!({
        "schema": "pbx-edge.recording/1", "recording_id": id, "agent_id": "t",
        "source": "siprec", "call_id": format!("{id}@test"),
        "from": {"number": "", "name": ""}, "to": {"number": "", "name": ""},
        "direction": "unknown", "started_at": "2026-01-01T00:00:00Z", "answered_at": null,
        "ended_at": "2026-01-01T00:01:00Z", "duration_ms": frames as i64 / 8,
        "audio": {"format": "wav", "sample_rate": 8000, "channels": 2,
                  "bytes": wav.len(), "sha256": sha},
        "channels": [], "dtmf": [],
    });
    let tmp = dir.join(format!(".{id}.json.tmp"));
    std::fs::write(&tmp, serde_json::to_vec(&doc).unwrap()).unwrap();
    std::fs::rename(&tmp, dir.join(format!("{id}.json"))).unwrap();
    sha
}

fn wait_until(what: &str, max: Duration, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < max, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// In process, deterministic: the delivery task has not run yet (a
/// current-thread runtime) and readiness already says the queue is corrupt
/// and being rebuilt; once rebuilt it is ready and says it was rebuilt.
#[test]
fn readyz_says_why_while_the_spool_database_is_rebuilt() {
    use pbx_edge::delivery::{self, DeliverySettings};
    use pbx_edge::status::{readiness, Status};
    let d = tempfile::tempdir().unwrap();
    write_pair(d.path(), "r1", 800, 1);
    std::fs::write(d.path().join("spool.db"), b"this is no database at all").unwrap();
    let status = Arc::new(Mutex::new(Status::default()));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let h = delivery::start_with(DeliverySettings::new(d.path()), status.clone()).unwrap();
        let (ready, parts) = readiness(&status.lock().unwrap());
        assert!(!ready);
        let why = &parts["spool.queue"];
        assert!(
            why.contains("corrupt") && why.contains("rebuilding"),
            "{why}"
        );
        let t = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let st = status.lock().unwrap().cloud.clone();
            if st.spool_error.is_none() && st.spool_repairs == 1 {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(10), "not rebuilt: {st:?}");
        }
        let (_, parts) = readiness(&status.lock().unwrap());
        assert!(parts["spool.queue"].starts_with("ok (rebuilt"), "{parts:?}");
        assert!(parts["spool.queue"].contains("corrupt"), "{parts:?}");
        h.shutdown().await;
    });
}

#[test]
fn corrupt_spool_db_is_rebuilt_and_every_pair_delivered_once() {
    let rx = Receiver::start(ReceiverOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    let config = format!(
        "[sources.siprec]\nenabled = false\n[cloud]\nurl = \"{}\"\n",
        rx.url
    );
    let mut want = BTreeMap::new();
    for i in 0..4 {
        want.insert(
            format!("first-{i}"),
            write_pair(&spool, &format!("first-{i}"), 4000, i),
        );
    }
    let mut d = start_with_retention(dir.path(), &config);
    wait_until("the first 4 delivered", Duration::from_secs(30), || {
        rx.lock().calls.len() == 4
    });
    // Stopped; the queue's WAL went into the database file on the way out.
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(10)), Some(0));
    drop(d);
    for i in 0..3 {
        want.insert(
            format!("later-{i}"),
            write_pair(&spool, &format!("later-{i}"), 4000, 10 + i),
        );
    }
    // Garbage over the queue database.
    assert!(!spool.join("spool.db-wal").exists());
    std::fs::write(spool.join("spool.db"), vec![0x42u8; 64 * 1024]).unwrap();
    let d = start_with_retention(dir.path(), &config);
    wait_until("all 7 delivered", Duration::from_secs(30), || {
        rx.lock().calls.len() == 7
    });
    d.wait_http("/readyz", 200, Duration::from_secs(10));
    let (_, ready) = d.get("/readyz").unwrap();
    assert!(ready.contains("ok (rebuilt"), "{ready}\n{}", d.log());
    assert!(ready.contains("corrupt"), "{ready}");
    let (_, metrics) = d.get("/metrics").unwrap();
    assert!(
        metrics.contains("pbx_edge_spool_repairs_total 1"),
        "{metrics}"
    );
    assert!(d.log().contains("moved aside to"), "{}", d.log());
    let st = rx.lock();
    for (id, sha) in &want {
        let c = st
            .calls
            .get(id)
            .unwrap_or_else(|| panic!("{id} not delivered"));
        assert_eq!(&c.sha256, sha);
        assert_eq!(c.posts, 1, "{id} posted {} times", c.posts);
    }
    assert_eq!(st.count("POST", "/v1/calls", 201), 7, "no re-send");
    drop(st);
    let aside: Vec<String> = std::fs::read_dir(&spool)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("spool.db.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    // `spool list` works (while the daemon runs).
    let out = std::process::Command::new(common::bin())
        .args(["spool", "list", "--config"])
        .arg(&d.config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("7 recordings: 7 delivered"), "{text}");
}

/// Delivery that cannot start (another process holds the spool's delivery
/// lock, as `pbx-edge spool` does for a moment) is no silent stall: /readyz
/// says why, and it starts as soon as the lock is free.
#[test]
fn delivery_that_cannot_start_says_why_and_starts_when_it_can() {
    use std::os::fd::AsRawFd;
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    let lock = std::fs::File::create(spool.join(".delivery.lock")).unwrap();
    // SAFETY: flock on a descriptor we own.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    let d = Daemon::start(dir.path(), "[sources.siprec]\nenabled = false\n");
    wait_until("/readyz to say why", Duration::from_secs(10), || {
        d.get("/readyz").is_some_and(|(c, b)| {
            c == 503 && b.contains("delivery not started") && b.contains("already delivers")
        })
    });
    drop(lock);
    d.wait_http("/readyz", 200, Duration::from_secs(10));
    assert!(d.log().contains("delivery started"), "{}", d.log());
}

/// The daemon with `extra`, delivered recordings kept an hour.
fn start_with_retention(dir: &Path, extra: &str) -> Daemon {
    let health: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cfg = dir.join("pbx-edge.toml");
    let text = Daemon::config_text(&dir.join("spool"), health, extra).replacen(
        "[spool]\n",
        "[spool]\nretention = \"1h\"\n",
        1,
    );
    std::fs::write(&cfg, text).unwrap();
    start_existing(dir, &cfg)
}

/// Start `pbx-edge run` with a config file already written.
fn start_existing(dir: &Path, config: &Path) -> Daemon {
    let text = std::fs::read_to_string(config).unwrap();
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
    let child = std::process::Command::new(common::bin())
        .arg("run")
        .arg("--config")
        .arg(config)
        .env_remove("NOTIFY_SOCKET")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let d = Daemon {
        child,
        dir: dir.to_path_buf(),
        config: config.to_path_buf(),
        health,
        spool: dir.join("spool"),
    };
    d.wait_http("/healthz", 200, Duration::from_secs(10));
    d
}

// ---------------------------------------------------------------------------
// Torture
// ---------------------------------------------------------------------------

/// What the test knows of one call.
#[derive(Debug, Default)]
struct CallTruth {
    /// Audio sent before the kill (ms).
    sent_ms: i64,
    /// The BYE got its 200 before the kill.
    bye_answered: bool,
    /// Media had ended (all of it sent) before the kill.
    media_done: bool,
}

#[test]
fn crash_torture_sigkills_while_siprec_calls_arrive_and_the_cloud_fails() {
    const KILLS: usize = 20;
    let rx = Receiver::start(ReceiverOptions {
        random: Some(RandomFaults {
            seed: 0xd0_5eed,
            p_5xx: 0.08,
            p_429: 0.03,
            p_reset: 0.05,
            p_slow: 0.05,
            slow: Duration::from_millis(300),
        }),
        ..ReceiverOptions::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let (listen, rtp) = listen_and_rtp();
    let config = siprec_config(
        listen,
        rtp,
        &format!("[cloud]\nurl = \"{}\"\nmax_parallel = 3\n", rx.url),
    );
    let mut rng = fastrand::Rng::with_seed(0x70_2700);
    let mut truth: BTreeMap<String, CallTruth> = BTreeMap::new();
    let t0 = Instant::now();
    let mut seed = 100u64;
    for kill_no in 0..KILLS {
        let mut d = Daemon::start(dir.path(), &config);
        // Calls start at once (not waiting for /readyz: calls may arrive
        // while the spool is still being recovered).
        let kill_at = Instant::now() + Duration::from_millis(rng.u64(400..3000));
        let mut live: Vec<(String, SrcCall, Media, Option<Instant>)> = Vec::new();
        let mut n = 0;
        while Instant::now() < kill_at {
            // A new call now and then (at most 4 at a time).
            if live.len() < 4 && rng.f64() < 0.3 {
                let id = format!("k{kill_no:02}-c{n}@torture");
                n += 1;
                if let Some(c) = SrcCall::place(listen, &id, Duration::from_millis(1500)) {
                    seed += 1;
                    let ms = [0, 200, 600, 1200, 2500, 5000][rng.usize(..6)];
                    let m = Media::start(c.ports, ms, seed);
                    // Some calls are hung up when their media ends.
                    let bye = (rng.f64() < 0.5)
                        .then(|| Instant::now() + Duration::from_millis(ms as u64 + 20));
                    truth.insert(id.clone(), CallTruth::default());
                    live.push((id, c, m, bye));
                }
            }
            // BYEs that are due: wait for their 200 (the daemon may die
            // first).
            for (id, c, m, bye) in live.iter_mut() {
                if bye.is_some_and(|b| Instant::now() >= b) {
                    *bye = None;
                    m.join();
                    let left = kill_at.saturating_duration_since(Instant::now());
                    if c.bye(left).is_some() && Instant::now() < kill_at {
                        truth.get_mut(id.as_str()).unwrap().bye_answered = true;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        d.signal(libc::SIGKILL);
        for (id, _, m, _) in live.iter_mut() {
            let t = truth.get_mut(id.as_str()).unwrap();
            t.sent_ms = m.sent_ms();
            t.media_done = m.thread.as_ref().is_none_or(|h| h.is_finished());
        }
        for (_, _, m, _) in live.iter_mut() {
            m.stop();
        }
        reap(&mut d);
    }
    let kills_done = Instant::now();
    // The last start: everything recovered and delivered.
    let d = Daemon::start(dir.path(), &config);
    wait_until(
        "every recording delivered",
        Duration::from_secs(150),
        || {
            let left = std::fs::read_dir(&d.spool)
                .map(|rd| {
                    rd.flatten()
                        .any(|e| e.file_name().to_string_lossy().ends_with(".json"))
                })
                .unwrap_or(true);
            !left
        },
    );
    let st = rx.lock();
    assert!(st.conflicts.is_empty(), "{:?}", st.conflicts);
    let mut by_call: BTreeMap<String, Vec<(String, Value, PathBuf, String)>> = BTreeMap::new();
    for (rid, c) in &st.calls {
        let cid = c.json["call_id"].as_str().unwrap_or("").to_string();
        by_call.entry(cid).or_default().push((
            rid.clone(),
            c.json.clone(),
            c.audio.clone(),
            c.sha256.clone(),
        ));
    }
    let (mut worst, mut cut, mut complete, mut empty) = (0i64, 0, 0, 0);
    let answered = truth.len();
    for (id, t) in &truth {
        let recs = by_call
            .get(id)
            .unwrap_or_else(|| panic!("answered call {id} has no recording ({t:?})"));
        assert_eq!(recs.len(), 1, "{id}: one recording, got {recs:?}");
        let (_, j, audio, sha) = &recs[0];
        let bytes = std::fs::read(audio).unwrap();
        assert_eq!(&hex::encode(Sha256::digest(&bytes)), sha);
        assert_eq!(j["audio"]["sha256"], sha.as_str());
        let ms = wav_ms(&bytes);
        if ms == 0 {
            empty += 1;
        }
        if t.bye_answered {
            assert_eq!(
                j["truncated"], false,
                "{id}: BYE answered, so complete: {j}"
            );
            assert!(ms >= t.sent_ms - 100, "{id}: {ms} ms of {} sent", t.sent_ms);
            complete += 1;
        } else if j["truncated"] == true {
            let lost = t.sent_ms - ms;
            worst = worst.max(lost);
            assert!(
                lost <= WINDOW_MS,
                "{id}: {lost} ms lost (sent {}, kept {ms}), window {WINDOW_MS}: {j}",
                t.sent_ms
            );
            cut += 1;
        } else {
            // Finished (BYE seen) before the kill, its 200 not yet back.
            assert!(ms >= t.sent_ms - 100, "{id}: {ms} ms of {} sent", t.sent_ms);
            complete += 1;
        }
    }
    let extra: Vec<&String> = by_call.keys().filter(|c| !truth.contains_key(*c)).collect();
    let reposts: u32 = st.calls.values().map(|c| c.posts - 1).sum();
    eprintln!(
        "torture: {KILLS} SIGKILLs in {:?}, {answered} calls answered ({cut} cut, {complete} complete, {empty} without audio), worst loss {worst} ms (window {WINDOW_MS} ms), {} recordings delivered ({} of calls never answered), {reposts} duplicate posts, {} requests, drained in {:?}",
        kills_done - t0,
        st.calls.len(),
        extra.len(),
        st.log.len(),
        kills_done.elapsed()
    );
}

// ---------------------------------------------------------------------------
// The spool's disk fills up while a call records
// ---------------------------------------------------------------------------

/// The spool's file system fills up in the middle of a SIPREC call (a real
/// tmpfs, filled by another file). The call's audio up to then is kept: the
/// recording cannot be finished while the disk is full, its BYE is still
/// answered, and once space returns the running daemon makes the recording
/// from what reached the disk: whole, `truncated`, its end reason the BYE,
/// a warning naming the error, and as long as the audio sent before the
/// disk filled (give or take the hold-back window).
#[test]
fn a_disk_filling_up_mid_call_keeps_the_audio_and_completes_it_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let Some(fs) = common::Tmpfs::mount(&dir.path().join("mnt"), "80m") else {
        return;
    };
    let mnt = fs.path().to_path_buf();
    std::fs::create_dir(mnt.join("spool")).unwrap();
    std::os::unix::fs::symlink(mnt.join("spool"), dir.path().join("spool")).unwrap();
    let (listen, rtp) = listen_and_rtp();
    let mut d = Daemon::start(dir.path(), &siprec_config(listen, rtp, ""));
    d.wait_http("/readyz", 200, Duration::from_secs(10));
    let call = SrcCall::place(listen, "full@disk", Duration::from_secs(5)).expect("answered");
    let mut media = Media::start(call.ports, 6_000, 9);
    while media.sent_ms() < 2_000 {
        std::thread::sleep(Duration::from_millis(5));
    }
    // Fill the file system.
    let filler = mnt.join("filler");
    common::fill_up(&filler);
    let full_at = media.sent_ms();
    media.join();
    let sent = media.sent_ms();
    // The BYE is answered although the pair cannot be written.
    call.bye(Duration::from_secs(20)).expect("200 to the BYE");
    std::thread::sleep(Duration::from_secs(1));
    assert!(d.recordings().is_empty(), "no room for the JSON yet");
    let spool = mnt.join("spool");
    let files: Vec<String> = std::fs::read_dir(&spool)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    // The audio written is kept: its `.part`, or the WAV made of it.
    assert_eq!(
        files
            .iter()
            .filter(|n| n.ends_with(".wav.part") || n.ends_with(".wav"))
            .count(),
        1,
        "{files:?}\n{}",
        d.log()
    );
    // Space returns: the daemon completes the recording (it tries every 10 s).
    std::fs::remove_file(&filler).unwrap();
    let recs = d.wait_recordings(1, Duration::from_secs(30));
    let j = json_of(&recs[0]);
    let wav = std::fs::read(recs[0].with_extension("wav")).unwrap();
    let ms = wav_ms(&wav);
    assert_eq!(j["call_id"], "full@disk", "{j}");
    assert_eq!(
        (j["truncated"].clone(), j["end_reason"].clone()),
        (true.into(), "bye".into()),
        "{j}"
    );
    assert_eq!(j["duration_ms"], ms, "{j}");
    assert!(j["warnings"].to_string().contains("refused a write"), "{j}");
    // What was written before the disk filled: the audio sent up to then,
    // less what the engine still held back (its window) when it did.
    assert!(
        ms <= full_at + 100 && ms >= full_at - WINDOW_MS - 300,
        "kept {ms} ms; the disk filled after {full_at} ms of {sent} ms sent"
    );
    assert!(
        d.log()
            .contains("recording completed from what reached the disk"),
        "{}",
        d.log()
    );
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(10)), Some(0));
    eprintln!("disk full: {sent} ms sent, the disk full after {full_at} ms, {ms} ms kept");
}

/// A recording the start's recovery cannot complete (its `.part` cannot
/// be read: a directory in its place, as tests may run as root, whom
/// permissions do not stop) is tried again while the daemon runs, after a
/// minute: once the error is gone it is completed, without a restart.
#[test]
fn a_recovery_that_failed_at_start_is_tried_again_while_running() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let part = spool.join(".late1.wav.part");
    std::fs::create_dir(&part).unwrap();
    let d = Daemon::start(dir.path(), "");
    d.wait_http("/readyz", 200, Duration::from_secs(10));
    let status = |d: &Daemon| -> Value {
        serde_json::from_str(&d.get("/status").map(|r| r.1).unwrap_or_default()).unwrap_or_default()
    };
    assert_eq!(status(&d)["spool"]["recovery_pending"], 1, "{}", d.log());
    assert!(d.log().contains("tried again in 60 s"), "{}", d.log());
    // The error goes: the audio is readable now.
    std::fs::remove_dir(&part).unwrap();
    let mut bytes = pbx_core::audio::wav::canonical_header(8000, 2, 0).to_vec();
    bytes.extend(std::iter::repeat_n(0x11u8, 8000 * 4));
    std::fs::write(&part, &bytes).unwrap();
    let t = Instant::now();
    while !spool.join("late1.json").exists() {
        assert!(
            t.elapsed() < Duration::from_secs(180),
            "not tried again; log:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let j: Value =
        serde_json::from_slice(&std::fs::read(spool.join("late1.json")).unwrap()).unwrap();
    assert_eq!(j["truncated"], true, "{j}");
    assert_eq!(j["duration_ms"], 1000, "{j}");
    let t = Instant::now();
    while status(&d)["spool"]["repaired_later"] != 1 {
        assert!(t.elapsed() < Duration::from_secs(30), "{}", status(&d));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(status(&d)["spool"]["recovery_pending"], 0);
}
