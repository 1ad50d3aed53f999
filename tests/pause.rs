//! Pause and resume end to end: the real daemon as a SIPREC server, a Rust
//! SRC streaming two parties' audio in real time; the recording is paused by
//! a real HTTP request to the control API, or by DTMF sequences keyed as
//! RFC 4733 events, while a card number is keyed. Checked: both channels
//! exact zeros over the stretch the JSON lists, the audio after the resume at
//! the same place relative to the sender's audio as before the pause (sync
//! kept), no card digit in the JSON's `dtmf` nor in the daemon's log.

mod common;

use common::{final_response, header};

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::daemon::*;
use pbx_testgen::audio::{best_lag, read_stereo_wav, speechlike};
use pbx_testgen::codec::Encoder;
use pbx_testgen::scenario::rtp_packet;
use pbx_testgen::TestCodec;
use serde_json::Value;

const BOUNDARY: &str = "pbxedgeboundary";
const CARD: &str = "4111111111111111";

fn invite(call_id: &str, src_port: u16, srs: SocketAddr, rtp: [u16; 2]) -> String {
    let sdp = format!(
        "v=0\r\no=SRC 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=label:1\r\na=sendonly\r\n\
         m=audio {} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=label:2\r\na=sendonly\r\n",
        rtp[0], rtp[1]
    );
    let metadata = r#"<?xml version="1.0" encoding="UTF-8"?>
<recording xmlns="urn:ietf:params:xml:ns:recording:1">
  <datamode>complete</datamode>
  <session session_id="c2Vzc2lvbjE="><sipSessionID>rec-1@pbx</sipSessionID></session>
  <participant participant_id="UEFSVDE="><nameID aor="sip:+15551001@pbx.example"><name>Alice</name></nameID></participant>
  <participant participant_id="UEFSVDI="><nameID aor="sip:+15552002@pbx.example"><name>Bob</name></nameID></participant>
  <stream stream_id="U1RSMQ==" session_id="c2Vzc2lvbjE="><label>1</label></stream>
  <stream stream_id="U1RSMg==" session_id="c2Vzc2lvbjE="><label>2</label></stream>
  <participantstreamassoc participant_id="UEFSVDE="><send>U1RSMQ==</send><recv>U1RSMg==</recv></participantstreamassoc>
  <participantstreamassoc participant_id="UEFSVDI="><send>U1RSMg==</send><recv>U1RSMQ==</recv></participantstreamassoc>
</recording>"#;
    let body = format!(
        "--{BOUNDARY}\r\nContent-Type: application/sdp\r\n\r\n{sdp}\r\n--{BOUNDARY}\r\nContent-Type: application/rs-metadata+xml\r\nContent-Disposition: recording-session\r\n\r\n{metadata}\r\n--{BOUNDARY}--\r\n"
    );
    format!(
        "INVITE sip:srs@{srs} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{src_port};branch=z9hG4bKinv\r\nMax-Forwards: 70\r\n\
         From: <sip:src@127.0.0.1>;tag=src-1\r\nTo: <sip:srs@{srs}>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\n\
         Contact: <sip:src@127.0.0.1:{src_port}>;+sip.src\r\nRequire: siprec\r\nAccept: application/sdp, application/rs-metadata\r\n\
         Content-Type: multipart/mixed;boundary={BOUNDARY}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// A raw HTTP request to the health listener: status code and body.
fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    http_request(addr, method, path, "")
}

fn event_code(d: char) -> u8 {
    match d {
        '0'..='9' => d as u8 - b'0',
        '*' => 10,
        _ => 11,
    }
}

/// What Alice's stream carries at packet `i`: a key (digit, first packet of
/// it, whether last), or audio.
type Keys = Vec<(char, usize)>;

/// A SIPREC call: INVITE, then `packets` × 20 ms of audio on both streams in
/// real time, Alice keying `keys` (digit, first packet; 5 packets of event
/// each) as RFC 4733 events; `during(i)` is called before packet `i` is sent;
/// before packet `i` of `sip_pause` the SRC sends an in-dialog INFO with
/// `X-Recording-Pause: <value>` (and waits for its 200).
/// Returns the call's recording (JSON, WAV channels) and Alice's and Bob's audio.
struct Call {
    json: Value,
    ch: [Vec<i16>; 2],
    alice: Vec<i16>,
    bob: Vec<i16>,
}

fn siprec_call(
    d: &Daemon,
    srs: SocketAddr,
    call_id: &str,
    packets: usize,
    keys: &Keys,
    sip_pause: &[(usize, &str)],
    mut during: impl FnMut(usize),
) -> Call {
    let sip = UdpSocket::bind("127.0.0.1:0").unwrap();
    sip.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let rtp_a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let rtp_b = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = sip.local_addr().unwrap().port();
    let inv = invite(
        call_id,
        port,
        srs,
        [
            rtp_a.local_addr().unwrap().port(),
            rtp_b.local_addr().unwrap().port(),
        ],
    );
    sip.send_to(inv.as_bytes(), srs).unwrap();
    let ok = final_response(&sip, "INVITE", Duration::from_secs(5));
    assert!(ok.starts_with("SIP/2.0 200"), "{ok}");
    let ports: Vec<u16> = ok
        .lines()
        .filter(|l| l.starts_with("m=audio "))
        .map(|l| l.split_whitespace().nth(1).unwrap().parse().unwrap())
        .collect();
    let to = header(&ok, "To").unwrap().to_string();
    sip.send_to(
        format!(
            "ACK sip:srs@{srs} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKack\r\nMax-Forwards: 70\r\nFrom: <sip:src@127.0.0.1>;tag=src-1\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
        )
        .as_bytes(),
        srs,
    )
    .unwrap();

    let ms = packets as u32 * 20;
    let alice = speechlike(201, ms, 8000);
    let bob = speechlike(202, ms, 8000);
    let (mut ea, mut eb) = (Encoder::new(TestCodec::Pcmu), Encoder::new(TestCodec::Pcmu));
    let t = Instant::now();
    for i in 0..packets {
        let due = Duration::from_millis(20 * i as u64);
        if let Some(w) = due.checked_sub(t.elapsed()) {
            std::thread::sleep(w);
        }
        during(i);
        if let Some(k) = sip_pause.iter().position(|(at, _)| *at == i) {
            let v = sip_pause[k].1;
            sip.send_to(
                format!(
                    "INFO sip:srs@{srs} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKinfo{k}\r\nMax-Forwards: 70\r\nFrom: <sip:src@127.0.0.1>;tag=src-1\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {} INFO\r\nX-Recording-Pause: {v}\r\nContent-Length: 0\r\n\r\n",
                    10 + k
                )
                .as_bytes(),
                srs,
            )
            .unwrap();
            let r = final_response(&sip, "INFO", Duration::from_secs(5));
            assert!(r.starts_with("SIP/2.0 200"), "{r}");
        }
        let (seq, ts) = (i as u16, (i * 160) as u32);
        let key = keys.iter().find(|(_, at)| i >= *at && i < at + 5);
        let pa = match key {
            Some((digit, at)) => {
                let dur = ((i - at + 1) * 160) as u16;
                let end = i == at + 4;
                let d = dur.to_be_bytes();
                let ev = [
                    event_code(*digit),
                    if end { 0x8a } else { 0x0a },
                    d[0],
                    d[1],
                ];
                rtp_packet(101, i == *at, seq, (at * 160) as u32, 0xA11CE, &ev)
            }
            None => rtp_packet(
                0,
                i == 0,
                seq,
                ts,
                0xA11CE,
                &ea.encode(&alice[i * 160..(i + 1) * 160]),
            ),
        };
        if key.is_some() {
            // The encoder keeps its place in Alice's audio.
            ea.encode(&alice[i * 160..(i + 1) * 160]);
        }
        let pb = rtp_packet(
            0,
            i == 0,
            1000 + seq,
            5000 + ts,
            0xB0B,
            &eb.encode(&bob[i * 160..(i + 1) * 160]),
        );
        rtp_a
            .send_to(&pa, SocketAddr::new(srs.ip(), ports[0]))
            .unwrap();
        rtp_b
            .send_to(&pb, SocketAddr::new(srs.ip(), ports[1]))
            .unwrap();
    }
    sip.send_to(
        format!(
            "BYE sip:srs@{srs} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKbye\r\nMax-Forwards: 70\r\nFrom: <sip:src@127.0.0.1>;tag=src-1\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {} BYE\r\nContent-Length: 0\r\n\r\n",
            10 + sip_pause.len()
        )
        .as_bytes(),
        srs,
    )
    .unwrap();
    let r = final_response(&sip, "BYE", Duration::from_secs(5));
    assert!(r.starts_with("SIP/2.0 200"), "{r}");
    let recs = d.wait_recordings(1, Duration::from_secs(20));
    let json: Value = serde_json::from_slice(&std::fs::read(&recs[0]).unwrap()).unwrap();
    let (rate, ch) = read_stereo_wav(&recs[0].with_extension("wav")).unwrap();
    assert_eq!(rate, 8000);
    // What Alice really sent: no audio while she keyed.
    let mut alice = alice;
    for (_, at) in keys {
        let end = ((at + 5) * 160).min(alice.len());
        alice[at * 160..end].fill(0);
    }
    Call {
        json,
        ch,
        alice,
        bob,
    }
}

fn siprec_daemon(dir: &std::path::Path, extra: &str) -> (Daemon, SocketAddr) {
    let port = free_port();
    let rtp = rtp_base(port, 20);
    let listen: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let d = Daemon::start(
        dir,
        &format!(
            "[sources.siprec]\nenabled = true\nlisten = \"{listen}\"\nrtp_ports = \"{rtp}-{}\"\n{extra}",
            rtp + 19
        ),
    );
    d.wait_http("/readyz", 200, Duration::from_secs(5));
    (d, listen)
}

/// The one stretch of `c`: exact zeros on both channels inside; outside,
/// each channel is its party's audio at one lag, the same before and after
/// the stretch (sync kept). Returns the stretch in frames.
fn check_stretch(c: &Call, by: &str) -> (usize, usize) {
    let pauses = c.json["pauses"].as_array().expect("pauses listed");
    assert_eq!(pauses.len(), 1, "{}", c.json);
    assert_eq!(pauses[0]["by"], by);
    let from = pauses[0]["from_ms"].as_u64().unwrap() as usize * 8;
    let to = pauses[0]["to_ms"].as_u64().unwrap() as usize * 8;
    assert!(
        from < to && to < c.ch[0].len(),
        "{from}..{to} of {}",
        c.ch[0].len()
    );
    for (k, ch) in c.ch.iter().enumerate() {
        assert!(
            ch[from..to].iter().all(|s| *s == 0),
            "channel {k} not silent in {from}..{to}"
        );
        let sent = if k == 0 { &c.alice } else { &c.bob };
        // Before the stretch, and after it, each alone (slices of both
        // from the same index: the lag means the same).
        let n = sent.len().min(ch.len());
        let (lag_pre, c_pre) = best_lag(&ch[..from], &sent[..from], 2400);
        let (lag_post, c_post) = best_lag(&ch[to..n], &sent[to..n], 2400);
        assert!(
            c_pre > 0.9 && c_post > 0.9,
            "channel {k}: correlations {c_pre:.3} {c_post:.3}"
        );
        assert!(
            (lag_pre - lag_post).abs() <= 1,
            "channel {k}: audio after the resume moved: lag {lag_pre} before, {lag_post} after"
        );
    }
    (from, to)
}

#[test]
fn api_pause_by_http_during_a_live_siprec_call() {
    let dir = tempfile::tempdir().unwrap();
    let (d, srs) = siprec_daemon(dir.path(), "");
    let health = d.health;
    let call_id = "pause/api-1@src";
    let mut rid = String::new();
    let mut asked = (Duration::ZERO, Duration::ZERO);
    let t0 = Instant::now();
    // The card number keyed (RFC 4733) while paused: not in the JSON.
    let keys: Keys = CARD
        .chars()
        .take(6)
        .enumerate()
        .map(|(i, c)| (c, 75 + 10 * i))
        .collect();
    let c = siprec_call(&d, srs, call_id, 250, &keys, &[], |i| match i {
        25 => {
            let (code, body) = http(health, "GET", "/v1/calls");
            assert_eq!(code, 200, "{body}");
            let v: Value = serde_json::from_str(&body).unwrap();
            let calls = v["calls"].as_array().unwrap();
            assert_eq!(calls.len(), 1, "{v}");
            assert_eq!(calls[0]["call_id"], call_id);
            assert_eq!(calls[0]["source"], "siprec");
            assert_eq!(calls[0]["paused"], false);
            rid = calls[0]["recording_id"].as_str().unwrap().to_string();
            assert_eq!(http(health, "POST", "/v1/calls/nobody@x/pause").0, 404);
            assert_eq!(
                http(health, "POST", &format!("/v1/calls/{rid}/resume")).0,
                409
            );
        }
        60 => {
            let at = t0.elapsed();
            // The raw Call-ID, percent-encoded.
            let (code, body) = http(health, "POST", "/v1/calls/pause%2Fapi-1%40src/pause");
            asked.0 = at;
            assert_eq!(code, 200, "{body}");
            assert_eq!(
                http(health, "POST", &format!("/v1/calls/{rid}/pause")).0,
                409
            );
            let v: Value = serde_json::from_str(&http(health, "GET", "/v1/calls").1).unwrap();
            assert_eq!(v["calls"][0]["paused"], true);
        }
        150 => {
            asked.1 = t0.elapsed();
            let (code, body) = http_request(
                health,
                "POST",
                &format!("/v1/calls/{rid}/resume"),
                "{\"reason\": \"card number taken\"}",
            );
            assert_eq!(code, 200, "{body}");
        }
        _ => {}
    });
    assert_eq!(c.json["recording_id"], rid.as_str());
    let (from, to) = check_stretch(&c, "api");
    // Where the requests were made (the first packet left at t0 + setup):
    // the stretch starts and ends within 300 ms after them.
    eprintln!(
        "API pause at {:?}..{:?}: frames {from}..{to}",
        asked.0, asked.1
    );
    assert!(
        from + 80 >= 60 * 160 && from <= 60 * 160 + 2400,
        "from {from}"
    );
    assert!((150 * 160..=150 * 160 + 2400).contains(&to), "to {to}");
    assert!(
        c.json["dtmf"].as_array().unwrap().is_empty(),
        "{}",
        c.json["dtmf"]
    );
    let log = d.log();
    assert!(
        !log.contains("411111") && log.contains("paused by the control API"),
        "{log}"
    );
}

#[test]
fn rfc4733_pause_and_resume_sequences_during_a_live_siprec_call() {
    let dir = tempfile::tempdir().unwrap();
    let (d, srs) = siprec_daemon(
        dir.path(),
        "[recording]\npause_dtmf = \"*1\"\nresume_dtmf = \"*2\"\n",
    );
    // *1 at 1 s, the card from 1.4 s, *2 after it; a digit outside.
    let mut keys: Keys = vec![('5', 20), ('*', 50), ('1', 60)];
    keys.extend(CARD.chars().enumerate().map(|(i, c)| (c, 70 + 10 * i)));
    keys.extend([('*', 240), ('2', 250)]);
    let c = siprec_call(&d, srs, "pause-dtmf-1@src", 330, &keys, &[], |_| {});
    let (from, to) = check_stretch(&c, "dtmf");
    // From the first digit of *1 to the end of the 2 of *2, on the same
    // clock as the digit kept (the 5).
    eprintln!("stretch {from}..{to}");
    let dtmf = c.json["dtmf"].as_array().unwrap();
    assert_eq!(dtmf.len(), 1, "only the 5 before the pause: {dtmf:?}");
    assert_eq!(dtmf[0]["digit"], "5");
    let five = dtmf[0]["at_ms"].as_i64().unwrap();
    // The 5 started at packet 20 and *1 at packet 50: 600 ms later.
    // (30 ms of slack: a loaded machine may send a packet late.)
    assert!(
        (from as i64 - (five + 600) * 8).abs() <= 240,
        "from {from} vs 5 at {five} ms"
    );
    // The 2 of *2 started 4 s after the *, and lasted 100 ms.
    assert!(
        (to as i64 - (five + 600 + 4000 + 100) * 8).abs() <= 240,
        "to {to} vs 5 at {five} ms"
    );
    assert!(!d.log().contains("411111"));
}

/// The SRC pauses and resumes the recording with `X-Recording-Pause` on
/// in-dialog INFOs while Alice keys a card number: exact zeros on both
/// channels over the stretch (`by: sip`), each party at one lag before and
/// after it, the digits nowhere.
#[test]
fn sip_header_pause_during_a_live_siprec_call() {
    let dir = tempfile::tempdir().unwrap();
    let (d, srs) = siprec_daemon(dir.path(), "");
    let keys: Keys = CARD
        .chars()
        .take(6)
        .enumerate()
        .map(|(i, c)| (c, 75 + 10 * i))
        .collect();
    let c = siprec_call(
        &d,
        srs,
        "pause-sip-1@src",
        250,
        &keys,
        &[(60, "yes"), (150, "no")],
        |_| {},
    );
    let (from, to) = check_stretch(&c, "sip");
    // Paused from about 1.2 s to about 3.0 s (packets 60 and 150), give or
    // take the INFO's round trip and a late packet on a loaded machine.
    assert!((from as i64 - 1200 * 8).abs() <= 800, "from {from}");
    assert!((to as i64 - 3000 * 8).abs() <= 800, "to {to}");
    assert!(c.json["dtmf"].as_array().unwrap().is_empty(), "{}", c.json);
    assert!(!d.log().contains("411111"));
}
