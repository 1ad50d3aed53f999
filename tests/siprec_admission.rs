//! SIPREC media admission and RTP port reuse, end to end with real sockets on
//! loopback (issue 11, defect 1):
//! - packets sent from another port of the SRC's host right after the 200 OK
//!   (and again mid-call) never reach the recording; they are counted;
//! - an SRC behind NAT (its SDP names an address we never hear from) is
//!   latched on its signalling host and recorded whole, while a stream from
//!   another host aimed at the same ports is kept out;
//! - a port freed by a call is not handed out to the next call, and after a
//!   SIGKILL and restart the new call gets none of the killed call's ports:
//!   the SBC's streams for the killed call are counted, not recorded.

mod common;

use common::{header, is_final_response};

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::daemon::*;
use pbx_testgen::audio::{best_lag, rms, speechlike, tone};
use pbx_testgen::codec::Encoder;
use pbx_testgen::scenario::rtp_packet;
use pbx_testgen::TestCodec;
use serde_json::Value;

const BOUNDARY: &str = "pbxedgeboundary";

/// The SRC's SIP side (UDP on 127.0.0.1).
struct Src {
    sock: UdpSocket,
    srs: SocketAddr,
}

impl Src {
    fn new(srs: SocketAddr) -> Src {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        Src { sock, srs }
    }
    fn port(&self) -> u16 {
        self.sock.local_addr().unwrap().port()
    }
    fn send(&self, msg: &str) {
        self.sock.send_to(msg.as_bytes(), self.srs).unwrap();
    }
    /// The final response to `method` of `call_id`.
    fn final_response(&self, method: &str, call_id: &str) -> String {
        let t = Instant::now();
        let mut b = vec![0u8; 65536];
        while t.elapsed() < Duration::from_secs(10) {
            let Ok((n, _)) = self.sock.recv_from(&mut b) else {
                continue;
            };
            let m = String::from_utf8_lossy(&b[..n]).into_owned();
            if is_final_response(&m, method) && header(&m, "Call-ID") == Some(call_id) {
                return m;
            }
        }
        panic!("no final response to {method} of {call_id}");
    }
}

/// Answered RTP ports, in m-line order.
fn answer_ports(resp: &str) -> Vec<u16> {
    resp.lines()
        .filter(|l| l.starts_with("m=audio "))
        .map(|l| l.split_whitespace().nth(1).unwrap().parse().unwrap())
        .collect()
}

/// A two-stream SIPREC INVITE: m-line 0 is Alice's stream (label 1), m-line
/// 1 Bob's (label 2), announced at `c_ip` (media-level `c=` lines) and the
/// given ports.
fn invite(call_id: &str, src: &Src, c_ip: [&str; 2], rtp: [u16; 2]) -> String {
    let srs = src.srs;
    let sdp = format!(
        "v=0\r\no=SRC 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 {}\r\nt=0 0\r\n\
         m=audio {} RTP/AVP 0\r\nc=IN IP4 {}\r\na=rtpmap:0 PCMU/8000\r\na=label:1\r\na=sendonly\r\n\
         m=audio {} RTP/AVP 0\r\nc=IN IP4 {}\r\na=rtpmap:0 PCMU/8000\r\na=label:2\r\na=sendonly\r\n",
        c_ip[0], rtp[0], c_ip[0], rtp[1], c_ip[1]
    );
    let meta = r#"<?xml version="1.0" encoding="UTF-8"?>
<recording xmlns="urn:ietf:params:xml:ns:recording:1">
  <datamode>complete</datamode>
  <session session_id="c2Vzc2lvbjE="><sipSessionID>admission</sipSessionID></session>
  <participant participant_id="UEFSVDE="><nameID aor="sip:alice@pbx.example"><name>Alice</name></nameID></participant>
  <participant participant_id="UEFSVDI="><nameID aor="sip:bob@pbx.example"><name>Bob</name></nameID></participant>
  <stream stream_id="U1RSMQ==" session_id="c2Vzc2lvbjE="><label>1</label></stream>
  <stream stream_id="U1RSMg==" session_id="c2Vzc2lvbjE="><label>2</label></stream>
  <participantstreamassoc participant_id="UEFSVDE="><send>U1RSMQ==</send><recv>U1RSMg==</recv></participantstreamassoc>
  <participantstreamassoc participant_id="UEFSVDI="><send>U1RSMg==</send><recv>U1RSMQ==</recv></participantstreamassoc>
</recording>"#;
    let body = format!(
        "--{BOUNDARY}\r\nContent-Type: application/sdp\r\n\r\n{sdp}\r\n--{BOUNDARY}\r\nContent-Type: application/rs-metadata+xml\r\nContent-Disposition: recording-session\r\n\r\n{meta}\r\n--{BOUNDARY}--\r\n"
    );
    let p = src.port();
    format!(
        "INVITE sip:srs@{srs} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{p};branch=z9hG4bK-{call_id}\r\nMax-Forwards: 70\r\n\
         From: <sip:src@127.0.0.1>;tag=src-{call_id}\r\nTo: <sip:srs@{srs}>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\n\
         Contact: <sip:src@127.0.0.1:{p}>;+sip.src\r\nRequire: siprec\r\nAccept: application/sdp, application/rs-metadata\r\n\
         Content-Type: multipart/mixed;boundary={BOUNDARY}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// INVITE, 200 OK, ACK: the answered ports and the BYE to send later.
fn start_call(src: &Src, call_id: &str, c_ip: [&str; 2], rtp: [u16; 2]) -> (Vec<u16>, String) {
    src.send(&invite(call_id, src, c_ip, rtp));
    let ok = src.final_response("INVITE", call_id);
    assert!(ok.starts_with("SIP/2.0 200"), "{ok}");
    let to = header(&ok, "To").unwrap().to_string();
    let (p, srs) = (src.port(), src.srs);
    src.send(&format!(
        "ACK sip:srs@{srs} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{p};branch=z9hG4bKack-{call_id}\r\nMax-Forwards: 70\r\nFrom: <sip:src@127.0.0.1>;tag=src-{call_id}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
    ));
    let bye = format!(
        "BYE sip:srs@{srs} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{p};branch=z9hG4bKbye-{call_id}\r\nMax-Forwards: 70\r\nFrom: <sip:src@127.0.0.1>;tag=src-{call_id}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    );
    (answer_ports(&ok), bye)
}

/// One RTP stream: PCMU packets of `audio` (20 ms each) with this SSRC.
struct Stream {
    sock: UdpSocket,
    to: SocketAddr,
    ssrc: u32,
    seq: u16,
    enc: Encoder,
    audio: Vec<i16>,
    next: usize,
}

impl Stream {
    fn new(sock: UdpSocket, to: SocketAddr, ssrc: u32, seq: u16, audio: Vec<i16>) -> Stream {
        Stream {
            sock,
            to,
            ssrc,
            seq,
            enc: Encoder::new(TestCodec::Pcmu),
            audio,
            next: 0,
        }
    }
    fn from(ip: &str, to: SocketAddr, ssrc: u32, seq: u16, audio: Vec<i16>) -> Stream {
        Stream::new(
            UdpSocket::bind(format!("{ip}:0")).unwrap(),
            to,
            ssrc,
            seq,
            audio,
        )
    }
    fn port(&self) -> u16 {
        self.sock.local_addr().unwrap().port()
    }
    /// Send the next 20 ms (false when the audio is all sent).
    fn send_next(&mut self) -> bool {
        let i = self.next;
        if (i + 1) * 160 > self.audio.len() {
            return false;
        }
        let pkt = rtp_packet(
            0,
            i == 0,
            self.seq.wrapping_add(i as u16),
            (i * 160) as u32,
            self.ssrc,
            &self.enc.encode(&self.audio[i * 160..(i + 1) * 160]),
        );
        let _ = self.sock.send_to(&pkt, self.to);
        self.next += 1;
        true
    }
}

/// Send every stream's packets, 20 ms apart in real time, `ticks` of them
/// (or until all audio is sent); `each` runs before every tick.
fn play(streams: &mut [&mut Stream], ticks: usize, mut each: impl FnMut(usize)) {
    let t = Instant::now();
    for i in 0..ticks {
        let due = Duration::from_millis(20 * i as u64);
        if let Some(w) = due.checked_sub(t.elapsed()) {
            std::thread::sleep(w);
        }
        each(i);
        let mut any = false;
        for s in streams.iter_mut() {
            any |= s.send_next();
        }
        if !any {
            break;
        }
    }
}

/// A SIPREC daemon on 127.0.0.1 with `rtp_ports` = `rtp`.
fn daemon(dir: &std::path::Path, rtp: (u16, u16)) -> (Daemon, SocketAddr) {
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let d = Daemon::start(
        dir,
        &format!(
            "[sources.siprec]\nenabled = true\nlisten = \"{listen}\"\nrtp_ports = \"{}-{}\"\n",
            rtp.0, rtp.1
        ),
    );
    d.wait_http("/readyz", 200, Duration::from_secs(10));
    (d, listen)
}

/// A range of 40 RTP ports for this test (above the ephemeral range).
fn rtp_range() -> (u16, u16) {
    let base = 61_000 + (free_port() % 100) * 40;
    (base, base + 39)
}

/// `pbx_edge_rtp_rejected_total{reason=...,source="siprec"}`.
fn rejected(d: &Daemon, reason: &str) -> u64 {
    let m = d.get("/metrics").map(|r| r.1).unwrap_or_default();
    let line = format!("pbx_edge_rtp_rejected_total{{reason=\"{reason}\",source=\"siprec\"}} ");
    m.lines()
        .find_map(|l| l.strip_prefix(line.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Wait until the counter of `reason` is at least `n`; its value.
fn wait_rejected(d: &Daemon, reason: &str, n: u64) -> u64 {
    let t = Instant::now();
    loop {
        let v = rejected(d, reason);
        if v >= n || t.elapsed() > Duration::from_secs(10) {
            return v;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_recording_of(d: &Daemon, call_id: &str) -> (Value, std::path::PathBuf) {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(30) {
        for p in d.recordings() {
            let Ok(bytes) = std::fs::read(&p) else {
                continue;
            };
            let Ok(j) = serde_json::from_slice::<Value>(&bytes) else {
                continue;
            };
            if j["call_id"] == call_id {
                return (j, p);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no recording of {call_id}; log:\n{}", d.log());
}

/// Each channel holds exactly its stream: every packet, one SSRC, the
/// sender's audio from time zero on (lag within a few ms), no cross-talk.
fn assert_only(j: &Value, json: &std::path::Path, want: [(&[i16], u32); 2], packets: u64) {
    let (rate, ch) = pbx_testgen::audio::read_stereo_wav(&json.with_extension("wav")).unwrap();
    assert_eq!(rate, 8000);
    for (i, (audio, ssrc)) in want.iter().enumerate() {
        let c = &j["channels"][i];
        assert_eq!(c["packets"], packets, "channel {i}: {j}");
        assert_eq!(c["ssrcs"], serde_json::json!([ssrc]), "channel {i}: {j}");
        let (lag, corr) = best_lag(&ch[i], audio, 1600);
        assert!(
            corr > 0.95,
            "channel {i}: correlation {corr:.3} at lag {lag}"
        );
        assert!(lag.abs() <= 80, "channel {i} starts {lag} samples off");
        let (_, x) = best_lag(&ch[i], want[1 - i].0, 1600);
        assert!(x < 0.2, "channel {i}: cross-talk {x:.3}");
        assert!(rms(&ch[i]) > 100.0);
    }
}

#[test]
fn packets_from_another_port_of_the_src_host_never_reach_the_recording() {
    let dir = tempfile::tempdir().unwrap();
    let (d, srs) = daemon(dir.path(), rtp_range());
    let src = Src::new(srs);
    let (alice, bob) = (speechlike(301, 3000, 8000), speechlike(302, 3000, 8000));
    let sa = UdpSocket::bind("127.0.0.1:0").unwrap();
    let sb = UdpSocket::bind("127.0.0.1:0").unwrap();
    let announced = [
        sa.local_addr().unwrap().port(),
        sb.local_addr().unwrap().port(),
    ];
    let call_id = "inject-1@src";
    let (ports, bye) = start_call(&src, call_id, ["127.0.0.1"; 2], announced);
    assert_eq!(ports.len(), 2);
    let to = |k: usize| SocketAddr::new(srs.ip(), ports[k]);
    let mut real_a = Stream::new(sa, to(0), 0xA11CE, 100, alice.clone());
    let mut real_b = Stream::new(sb, to(1), 0xB0B, 5000, bob.clone());
    // The attacker: another UDP port on the SRC's host, right after the
    // 200 OK, a loud tone in sequence on both streams' ports...
    let loud = tone(1000.0, 3000, 8000, 12000.0);
    let mut inj_a = Stream::from("127.0.0.1", to(0), 0xBAD1, 1, loud.clone());
    let inj_b_sock = inj_a.sock.try_clone().unwrap();
    let mut inj_b = Stream::new(inj_b_sock, to(1), 0xBAD2, 1, loud);
    assert!(inj_a.port() != announced[0] && inj_a.port() != announced[1]);
    play(&mut [&mut inj_a, &mut inj_b], 5, |_| {});
    // ...then the real streams, with five more injected packets mid-call.
    play(&mut [&mut real_a, &mut real_b], 150, |i| {
        if (70..75).contains(&i) {
            inj_a.send_next();
            inj_b.send_next();
        }
    });
    src.send(&bye);
    let r = src.final_response("BYE", call_id);
    assert!(r.starts_with("SIP/2.0 200"), "{r}");
    let (j, path) = wait_recording_of(&d, call_id);
    assert_only(&j, &path, [(&alice, 0xA11CE), (&bob, 0xB0B)], 150);
    // Every injected packet was counted, none for another reason.
    assert_eq!(
        wait_rejected(&d, "source", 20),
        20,
        "{:?}",
        d.get("/metrics")
    );
    assert_eq!(rejected(&d, "ssrc"), 0);
}

#[test]
fn an_src_behind_nat_is_latched_on_its_signalling_host_and_another_host_is_kept_out() {
    nat_call(false);
}

/// One stream announced where it comes from, the other behind NAT: the
/// latched one (held back while latching) stays in place on the timeline.
#[test]
fn a_latched_stream_beside_an_announced_one_keeps_its_place() {
    nat_call(true);
}

fn nat_call(alice_announced: bool) {
    let dir = tempfile::tempdir().unwrap();
    let (d, srs) = daemon(dir.path(), rtp_range());
    let src = Src::new(srs);
    let (alice, bob) = (speechlike(401, 3000, 8000), speechlike(402, 3000, 8000));
    let call_id = "nat-1@src";
    let sa = UdpSocket::bind("127.0.0.1:0").unwrap();
    let sb = UdpSocket::bind("127.0.0.1:0").unwrap();
    // The SDP names the SRC's private address; its packets come from
    // elsewhere on the host it signals from (its NAT's public side).
    let (c_a, port_a) = if alice_announced {
        ("127.0.0.1", sa.local_addr().unwrap().port())
    } else {
        ("10.255.0.1", 40000)
    };
    let (ports, bye) = start_call(&src, call_id, [c_a, "10.255.0.1"], [port_a, 40002]);
    let to = |k: usize| SocketAddr::new(srs.ip(), ports[k]);
    let mut real_a = Stream::new(sa, to(0), 0xA11CE, 100, alice.clone());
    let mut real_b = Stream::new(sb, to(1), 0xB0B, 5000, bob.clone());
    // Another host sends to the same ports, from before the real streams
    // begin until the end of the call.
    let noise = tone(700.0, 3400, 8000, 12000.0);
    let foreign = |k: usize, ssrc: u32| {
        let s = UdpSocket::bind("127.0.0.2:0").ok()?;
        Some(Stream::new(s, to(k), ssrc, 1, noise.clone()))
    };
    let (Some(mut fa), Some(mut fb)) = (foreign(0, 0xF00A), foreign(1, 0xF00B)) else {
        panic!("127.0.0.2 is not usable on this machine");
    };
    play(&mut [&mut fa, &mut fb], 10, |_| {});
    play(&mut [&mut real_a, &mut real_b], 150, |_| {
        fa.send_next();
        fb.send_next();
    });
    src.send(&bye);
    let r = src.final_response("BYE", call_id);
    assert!(r.starts_with("SIP/2.0 200"), "{r}");
    let (j, path) = wait_recording_of(&d, call_id);
    // Latched, and nothing of the stream lost to the latching.
    assert_only(&j, &path, [(&alice, 0xA11CE), (&bob, 0xB0B)], 150);
    assert!(j["duration_ms"].as_i64().unwrap() >= 2900, "{j}");
    // The foreign packets: 2 x 160 sent, all counted.
    assert_eq!(
        wait_rejected(&d, "source", 320),
        320,
        "{:?}",
        d.get("/metrics")
    );
}

#[test]
fn ports_of_an_ended_call_or_of_a_run_killed_are_not_given_to_the_next_call() {
    let dir = tempfile::tempdir().unwrap();
    let range = rtp_range();
    let (mut d, srs) = daemon(dir.path(), range);
    let src = Src::new(srs);
    // A call in progress when the daemon is killed (the run's first call).
    let (killed, _) = start_call(&src, "killed@src", ["127.0.0.1"; 2], [40000, 40002]);
    let old_audio = speechlike(501, 6000, 8000);
    let to = |p: u16| SocketAddr::new(srs.ip(), p);
    let mut old_a = Stream::from("127.0.0.1", to(killed[0]), 0x01D, 1, old_audio.clone());
    let mut old_b = Stream::from("127.0.0.1", to(killed[1]), 0x01E, 1, old_audio);
    // Half a second of it, then the kill.
    play(&mut [&mut old_a, &mut old_b], 25, |_| {});
    d.signal(libc::SIGKILL);
    let _ = d.wait_exit(Duration::from_secs(10));
    drop(d);

    // Restart on the same spool; the SBC goes on sending the killed call's
    // streams while a new call comes in.
    let d = {
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let d = Daemon::start(
            dir.path(),
            &format!(
                "[sources.siprec]\nenabled = true\nlisten = \"{listen}\"\nrtp_ports = \"{}-{}\"\n",
                range.0, range.1
            ),
        );
        d.wait_http("/readyz", 200, Duration::from_secs(10));
        (d, listen)
    };
    let (d, srs2) = d;
    let src2 = Src::new(srs2);
    let (alice, bob) = (speechlike(601, 3000, 8000), speechlike(602, 3000, 8000));
    let sa = UdpSocket::bind("127.0.0.1:0").unwrap();
    let sb = UdpSocket::bind("127.0.0.1:0").unwrap();
    let announced = [
        sa.local_addr().unwrap().port(),
        sb.local_addr().unwrap().port(),
    ];
    let (new, bye) = start_call(&src2, "after-restart@src", ["127.0.0.1"; 2], announced);
    assert!(
        new.iter().all(|p| !killed.contains(p)),
        "the killed call's ports {killed:?} were given to a new call after the restart: {new:?}"
    );
    let mut a = Stream::new(
        sa,
        SocketAddr::new(srs2.ip(), new[0]),
        0xA11CE,
        1,
        alice.clone(),
    );
    let mut b = Stream::new(
        sb,
        SocketAddr::new(srs2.ip(), new[1]),
        0xB0B,
        1,
        bob.clone(),
    );
    play(&mut [&mut a, &mut b, &mut old_a, &mut old_b], 150, |_| {});
    src2.send(&bye);
    assert!(src2
        .final_response("BYE", "after-restart@src")
        .starts_with("SIP/2.0 200"));
    let (j, path) = wait_recording_of(&d, "after-restart@src");
    assert_only(&j, &path, [(&alice, 0xA11CE), (&bob, 0xB0B)], 150);
    // The next call gets other ports than the one that just ended.
    let (next, bye) = start_call(&src2, "next@src", ["127.0.0.1"; 2], [40000, 40002]);
    src2.send(&bye);
    assert!(src2
        .final_response("BYE", "next@src")
        .starts_with("SIP/2.0 200"));
    assert!(
        next.iter().all(|p| !new.contains(p)),
        "ports {new:?} given again at once: {next:?}"
    );
    // The killed call's streams landed on ports kept closed to new calls,
    // and were counted there.
    let n = wait_rejected(&d, "unknown_port", 100);
    assert!(n >= 100, "unknown_port {n}; log:\n{}", d.log());
}
