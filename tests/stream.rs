//! The live stream (CONTRACT §5) end to end: the real daemon records SIPREC
//! calls (real SIP and RTP over loopback) and streams them to a WebSocket
//! receiver run by the test (tokio-tungstenite), which checks the
//! subprotocol and headers, keeps what it is sent and says what it holds.
//! The streamed samples are compared with the final WAV sample for sample.
//! Also: the receiver dropped mid-call (resumed from the offset it says it
//! holds), gone longer than `max_lag` (the recording whole, the stream
//! stopped incomplete), answering `error` (that call's stream ends), and
//! slow to answer one call (the other call's stream and both recordings
//! unaffected). The latency from packet to frame is measured and printed.
//! Who is who: the SIPREC participants' roles, the agent's extension and
//! the PBX's ids in the stream's `start` and in the recording.

mod common;

use common::{final_response, header};

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::daemon::*;
use futures_util::{SinkExt, StreamExt};
use pbx_testgen::audio::speechlike;
use pbx_testgen::codec::Encoder;
use pbx_testgen::scenario::rtp_packet;
use pbx_testgen::TestCodec;
use serde_json::Value;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;

const TOKEN: &str = "stream-token-123";

// ---------------------------------------------------------------------------
// The receiver
// ---------------------------------------------------------------------------

/// What the receiver keeps of one recording's stream.
#[derive(Debug, Default, Clone)]
struct Held {
    /// Interleaved stereo samples it holds, from frame 0.
    pcm: Vec<i16>,
    starts: Vec<Value>,
    stops: Vec<Value>,
    /// (when it arrived, offset, frames) of each binary message.
    msgs: Vec<(Instant, u64, u64)>,
    /// Offsets that did not continue what it held (gaps or repeats).
    violations: Vec<String>,
    connections: u32,
}

#[derive(Default)]
struct Behaviour {
    /// Drop the connection (no close frame) once this many frames are held,
    /// and keep only `hold_back` fewer (as if the last ones were lost).
    drop_at: Option<(u64, u64)>,
    /// Answer `error` to the start of every stream.
    refuse: bool,
    /// Answer the WebSocket upgrade 401 (a token it does not take).
    unauthorized: bool,
    /// Answer `ready` this late to calls whose recorded Call-ID contains
    /// this text.
    slow: Option<(String, Duration)>,
    /// Take this long over each audio message (a receiver slower than
    /// real time: the rest waits in the socket buffers).
    read_delay: Option<Duration>,
}

struct Receiver {
    addr: SocketAddr,
    held: Arc<Mutex<HashMap<String, Held>>>,
    /// Handshake problems (subprotocol, headers).
    bad_handshakes: Arc<Mutex<Vec<String>>>,
    /// While set, connections are refused and open ones cut.
    down: Arc<AtomicBool>,
    behaviour: Arc<Mutex<Behaviour>>,
    connections: Arc<AtomicU64>,
}

impl Receiver {
    fn start() -> Receiver {
        let std_l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_l.set_nonblocking(true).unwrap();
        let addr = std_l.local_addr().unwrap();
        let r = Receiver {
            addr,
            held: Arc::default(),
            bad_handshakes: Arc::default(),
            down: Arc::default(),
            behaviour: Arc::default(),
            connections: Arc::default(),
        };
        let (held, bad, down, beh, conns) = (
            r.held.clone(),
            r.bad_handshakes.clone(),
            r.down.clone(),
            r.behaviour.clone(),
            r.connections.clone(),
        );
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(std_l).unwrap();
                loop {
                    let Ok((sock, _)) = l.accept().await else {
                        continue;
                    };
                    if down.load(Ordering::SeqCst) {
                        drop(sock);
                        continue;
                    }
                    conns.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(serve(
                        sock,
                        held.clone(),
                        bad.clone(),
                        down.clone(),
                        beh.clone(),
                    ));
                }
            });
        });
        r
    }

    fn url(&self) -> String {
        format!("ws://{}/v1/stream", self.addr)
    }

    fn of(&self, recording_id: &str) -> Held {
        self.held
            .lock()
            .unwrap()
            .get(recording_id)
            .cloned()
            .unwrap_or_default()
    }

    /// Wait until the stream of `recording_id` got a `stop`.
    fn wait_stop(&self, recording_id: &str, max: Duration) -> Held {
        let t = Instant::now();
        while t.elapsed() < max {
            let h = self.of(recording_id);
            if !h.stops.is_empty() {
                return h;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "no stop for {recording_id}: {:?}",
            self.of(recording_id).starts
        );
    }
}

async fn serve(
    sock: tokio::net::TcpStream,
    held: Arc<Mutex<HashMap<String, Held>>>,
    bad: Arc<Mutex<Vec<String>>>,
    down: Arc<AtomicBool>,
    beh: Arc<Mutex<Behaviour>>,
) {
    let unauthorized = beh.lock().unwrap().unauthorized;
    #[allow(clippy::result_large_err)] // tungstenite's callback signature
    let check = move |req: &Request, mut resp: Response| {
        if unauthorized {
            let mut r = tokio_tungstenite::tungstenite::handshake::server::ErrorResponse::new(
                Some("token refused".into()),
            );
            *r.status_mut() = tokio_tungstenite::tungstenite::http::StatusCode::UNAUTHORIZED;
            return Err(r);
        }
        let h = req.headers();
        let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
        let mut problems = Vec::new();
        if !get("sec-websocket-protocol")
            .split(',')
            .any(|p| p.trim() == "pbx-edge.stream.v1")
        {
            problems.push(format!("subprotocol {:?}", get("sec-websocket-protocol")));
        }
        if get("authorization") != format!("Bearer {TOKEN}") {
            problems.push("authorization".to_string());
        }
        if !get("user-agent").starts_with("pbx-edge/") {
            problems.push(format!("user-agent {:?}", get("user-agent")));
        }
        if req.uri().path() != "/v1/stream" {
            problems.push(format!("path {}", req.uri().path()));
        }
        if !problems.is_empty() {
            bad.lock().unwrap().extend(problems);
        }
        resp.headers_mut().insert(
            "sec-websocket-protocol",
            "pbx-edge.stream.v1".parse().unwrap(),
        );
        Ok(resp)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(sock, check).await else {
        return;
    };
    let mut rec: Option<String> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        let m = tokio::select! {
            m = ws.next() => m,
            _ = tick.tick() => {
                if down.load(Ordering::SeqCst) {
                    return; // cut, no close frame
                }
                continue;
            }
        };
        let Some(Ok(m)) = m else { return };
        if down.load(Ordering::SeqCst) {
            return;
        }
        match m {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                let id = v["recording_id"].as_str().map(str::to_string);
                match v["type"].as_str().unwrap() {
                    "start" => {
                        let id = id.unwrap();
                        rec = Some(id.clone());
                        let (refuse, slow) = {
                            let b = beh.lock().unwrap();
                            let call = v["meta"]["call_id"].as_str().unwrap_or("").to_string();
                            let slow = b
                                .slow
                                .as_ref()
                                .filter(|(s, _)| call.contains(s.as_str()))
                                .map(|(_, d)| *d);
                            (b.refuse, slow)
                        };
                        let offset = {
                            let mut all = held.lock().unwrap();
                            let h = all.entry(id).or_default();
                            h.starts.push(v.clone());
                            h.connections += 1;
                            (h.pcm.len() / 2) as u64
                        };
                        if refuse {
                            let _ = ws
                                .send(Message::Text(
                                    r#"{"type":"error","reason":"no such account"}"#.into(),
                                ))
                                .await;
                            let _ = ws.close(None).await;
                            return;
                        }
                        if let Some(d) = slow {
                            tokio::time::sleep(d).await;
                        }
                        let ready = format!(r#"{{"type":"ready","offset":{offset}}}"#);
                        if ws.send(Message::Text(ready.into())).await.is_err() {
                            return;
                        }
                    }
                    "stop" => {
                        if let Some(id) = &rec {
                            held.lock()
                                .unwrap()
                                .entry(id.clone())
                                .or_default()
                                .stops
                                .push(v.clone());
                        }
                        let _ = ws.send(Message::Text(r#"{"type":"done"}"#.into())).await;
                        let _ = ws.close(None).await;
                        return;
                    }
                    other => panic!("unexpected message type {other}"),
                }
            }
            Message::Binary(b) => {
                let Some(id) = &rec else {
                    panic!("audio before start")
                };
                assert!(b.len() >= 8 && (b.len() - 8) % 4 == 0, "bad audio message");
                let offset = u64::from_be_bytes(b[..8].try_into().unwrap());
                let samples: Vec<i16> = b[8..]
                    .chunks_exact(2)
                    .map(|s| i16::from_le_bytes([s[0], s[1]]))
                    .collect();
                let mut cut = false;
                {
                    let mut all = held.lock().unwrap();
                    let h = all.entry(id.clone()).or_default();
                    let have = (h.pcm.len() / 2) as u64;
                    if offset != have {
                        h.violations
                            .push(format!("offset {offset} while holding {have}"));
                    }
                    if offset <= have {
                        let skip = ((have - offset) * 2) as usize;
                        if skip < samples.len() {
                            h.pcm.extend_from_slice(&samples[skip..]);
                        }
                    }
                    h.msgs
                        .push((Instant::now(), offset, (samples.len() / 2) as u64));
                    let mut b = beh.lock().unwrap();
                    if let Some((at, hold_back)) = b.drop_at {
                        let now = (h.pcm.len() / 2) as u64;
                        if now >= at {
                            b.drop_at = None;
                            let keep = now.saturating_sub(hold_back) as usize * 2;
                            h.pcm.truncate(keep);
                            cut = true;
                        }
                    }
                }
                if cut {
                    return; // the connection dropped, no close frame
                }
                let delay = beh.lock().unwrap().read_delay;
                if let Some(d) = delay {
                    tokio::time::sleep(d).await;
                }
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------
// SIPREC calls
// ---------------------------------------------------------------------------

const BOUNDARY: &str = "pbxedgeboundary";

/// The participants' AoR users: a call whose Call-ID starts `out-` is
/// extension 2002 calling +15551001, `int-` extension 1001 calling 2002;
/// any other, +15551001 calling extension 2002.
fn parties(call_id: &str) -> [&'static str; 2] {
    if call_id.starts_with("out-") {
        ["2002", "+15551001"]
    } else if call_id.starts_with("int-") {
        ["1001", "2002"]
    } else {
        ["+15551001", "2002"]
    }
}

fn invite(call_id: &str, src_port: u16, srs: SocketAddr) -> String {
    let [a, b] = parties(call_id);
    let sdp = "v=0\r\no=SRC 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio 40100 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=label:1\r\na=sendonly\r\n\
         m=audio 40102 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=label:2\r\na=sendonly\r\n";
    let md = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<recording xmlns="urn:ietf:params:xml:ns:recording:1">
  <datamode>complete</datamode>
  <session session_id="c2Vzc2lvbjE="><sipSessionID>rec-{call_id}</sipSessionID></session>
  <participant participant_id="UEFSVDE="><nameID aor="sip:{a}@pbx.example"><name>Alice</name></nameID></participant>
  <participant participant_id="UEFSVDI="><nameID aor="sip:{b}@pbx.example"><name>Bob</name></nameID></participant>
  <stream stream_id="U1RSMQ==" session_id="c2Vzc2lvbjE="><label>1</label></stream>
  <stream stream_id="U1RSMg==" session_id="c2Vzc2lvbjE="><label>2</label></stream>
  <participantstreamassoc participant_id="UEFSVDE="><send>U1RSMQ==</send><recv>U1RSMg==</recv></participantstreamassoc>
  <participantstreamassoc participant_id="UEFSVDI="><send>U1RSMg==</send><recv>U1RSMQ==</recv></participantstreamassoc>
</recording>"#
    );
    let body = format!(
        "--{BOUNDARY}\r\nContent-Type: application/sdp\r\n\r\n{sdp}\r\n--{BOUNDARY}\r\nContent-Type: application/rs-metadata+xml\r\nContent-Disposition: recording-session\r\n\r\n{md}\r\n--{BOUNDARY}--\r\n"
    );
    format!(
        "INVITE sip:srs@{srs} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{src_port};branch=z9hG4bK-{call_id}\r\nMax-Forwards: 70\r\n\
         From: <sip:src@127.0.0.1>;tag=src-{call_id}\r\nTo: <sip:srs@{srs}>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\n\
         Contact: <sip:src@127.0.0.1:{src_port}>;+sip.src\r\nRequire: siprec\r\nAccept: application/sdp, application/rs-metadata\r\n\
         X-Asterisk-Uniqueid: 1733300000.42\r\nUser-to-User: 00FA080019001038F725B3;encoding=hex\r\n\
         Content-Type: multipart/mixed;boundary={BOUNDARY}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// One SIPREC call from its own SIP socket: INVITE, ACK, `ms` of real-time
/// RTP on both streams, BYE. Returns when the BYE was answered, with the
/// instant the first RTP packet went out.
fn siprec_call(srs: SocketAddr, call_id: &str, ms: usize, seed: u64) -> Instant {
    siprec_call_ending(srs, call_id, ms, seed, true)
}

/// [`siprec_call`], hung up with a BYE or (`bye` false) left open.
fn siprec_call_ending(srs: SocketAddr, call_id: &str, ms: usize, seed: u64, bye: bool) -> Instant {
    let sip = UdpSocket::bind("127.0.0.1:0").unwrap();
    sip.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let port = sip.local_addr().unwrap().port();
    let final_to = |method: &str| final_response(&sip, method, Duration::from_secs(30));
    sip.send_to(invite(call_id, port, srs).as_bytes(), srs)
        .unwrap();
    let ok = final_to("INVITE");
    assert!(ok.starts_with("SIP/2.0 200"), "{ok}");
    let to = header(&ok, "To").unwrap().to_string();
    let ports: Vec<u16> = ok
        .lines()
        .filter(|l| l.starts_with("m=audio "))
        .map(|l| l.split_whitespace().nth(1).unwrap().parse().unwrap())
        .collect();
    sip.send_to(format!(
        "ACK sip:srs@{srs} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKack\r\nMax-Forwards: 70\r\nFrom: <sip:src@127.0.0.1>;tag=src-{call_id}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
    ).as_bytes(), srs).unwrap();
    let socks: Vec<UdpSocket> = ports
        .iter()
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let audio = [
        speechlike(seed, ms as u32, 8000),
        speechlike(seed + 1, ms as u32, 8000),
    ];
    let mut enc = [Encoder::new(TestCodec::Pcmu), Encoder::new(TestCodec::Pcmu)];
    let t0 = Instant::now();
    for i in 0..ms / 20 {
        let due = Duration::from_millis(20 * i as u64);
        if let Some(w) = due.checked_sub(t0.elapsed()) {
            std::thread::sleep(w);
        }
        for (k, (s, p)) in socks.iter().zip(&ports).enumerate() {
            let pkt = rtp_packet(
                0,
                i == 0,
                i as u16,
                (i * 160) as u32,
                0x7000 + k as u32,
                &enc[k].encode(&audio[k][i * 160..(i + 1) * 160]),
            );
            let _ = s.send_to(&pkt, SocketAddr::new(srs.ip(), *p));
        }
    }
    if !bye {
        return t0;
    }
    sip.send_to(format!(
        "BYE sip:srs@{srs} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKbye\r\nMax-Forwards: 70\r\nFrom: <sip:src@127.0.0.1>;tag=src-{call_id}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    ).as_bytes(), srs).unwrap();
    let bye = final_to("BYE");
    assert!(bye.starts_with("SIP/2.0 200"), "{bye}");
    t0
}

fn daemon(dir: &std::path::Path, url: &str, stream_extra: &str) -> (Daemon, SocketAddr) {
    let port = free_port();
    let rtp = rtp_base(port, 20);
    let listen: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let token = dir.join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let d = Daemon::start(
        dir,
        &format!(
            "[recording]\njitter = \"200ms\"\n[cloud]\ntoken_file = \"{}\"\n[stream]\nenabled = true\nurl = \"{}\"\n{stream_extra}\n[sources.siprec]\nenabled = true\nlisten = \"{listen}\"\nrtp_ports = \"{rtp}-{}\"\n",
            token.display(),
            url,
            rtp + 19
        ),
    );
    d.wait_http("/readyz", 200, Duration::from_secs(10));
    (d, listen)
}

/// The recording (JSON, WAV samples interleaved) of `call_id`.
fn recording_of(d: &Daemon, call_id: &str) -> (Value, Vec<i16>) {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(30) {
        for p in d.recordings() {
            let j: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            if j["call_id"] == call_id {
                let (_, ch) =
                    pbx_testgen::audio::read_stereo_wav(&p.with_extension("wav")).unwrap();
                let pcm = ch[0]
                    .iter()
                    .zip(&ch[1])
                    .flat_map(|(l, r)| [*l, *r])
                    .collect();
                return (j, pcm);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no recording of {call_id}; log:\n{}", d.log());
}

fn status(d: &Daemon) -> Value {
    serde_json::from_str(&d.get("/status").unwrap().1).unwrap()
}

/// Latency of each message from the packet that carried its last sample
/// (sent at `t0` + 20 ms · packet) to its arrival at the receiver, ms.
fn latencies(h: &Held, t0: Instant) -> Vec<f64> {
    let mut v: Vec<f64> = h
        .msgs
        .iter()
        .map(|(at, off, n)| {
            let last_packet = (off + n - 1) / 160;
            let sent = t0 + Duration::from_millis(20 * last_packet);
            at.saturating_duration_since(sent).as_secs_f64() * 1000.0
        })
        .collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v
}

fn pct(v: &[f64], p: f64) -> f64 {
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn assert_same_samples(streamed: &[i16], wav: &[i16]) {
    assert_eq!(
        streamed.len(),
        wav.len(),
        "streamed {} samples, the WAV has {}",
        streamed.len(),
        wav.len()
    );
    if let Some(i) = streamed.iter().zip(wav).position(|(a, b)| a != b) {
        panic!("streamed sample {i} differs from the WAV's");
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn streamed_audio_is_the_final_wav_sample_for_sample() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start();
    let (d, srs) = daemon(dir.path(), &rx.url(), "frame = \"100ms\"");
    let t0 = siprec_call(srs, "live-1@src", 3000, 11);
    let (j, wav) = recording_of(&d, "live-1@src");
    let id = j["recording_id"].as_str().unwrap();
    let h = rx.wait_stop(id, Duration::from_secs(20));
    assert!(
        rx.bad_handshakes.lock().unwrap().is_empty(),
        "{:?}",
        rx.bad_handshakes.lock().unwrap()
    );
    assert_eq!(h.connections, 1);
    assert!(h.violations.is_empty(), "{:?}", h.violations);
    // start: the metadata so far.
    let s = &h.starts[0];
    assert_eq!(s["resume"], false);
    assert_eq!(s["sample_rate"], 8000);
    assert_eq!(s["channels"], 2);
    assert_eq!(s["encoding"], "pcm_s16le");
    assert_eq!(s["meta"]["recording_id"], id);
    assert_eq!(s["meta"]["call_id"], "live-1@src");
    assert_eq!(s["meta"]["source"], "siprec");
    // Who is who, known at the start: Alice (+15551001, the first
    // participant) calls extension 2002 (Bob): inbound, Bob is the agent.
    assert_eq!(s["meta"]["direction"], "inbound");
    assert_eq!(s["meta"]["channels"][0]["role"], "customer");
    assert_eq!(s["meta"]["channels"][1]["role"], "agent");
    assert_eq!(s["meta"]["channels"][1]["extension"], "2002");
    assert_eq!(s["meta"]["ids"]["asterisk_uniqueid"], "1733300000.42");
    // ... and in the recording.
    assert_eq!(j["direction"], "inbound");
    assert_eq!(j["from"]["number"], "+15551001");
    assert_eq!(j["channels"][0]["role"], "customer");
    assert!(j["channels"][0].get("extension").is_none());
    assert_eq!(j["channels"][1]["role"], "agent");
    assert_eq!(j["channels"][1]["extension"], "2002");
    assert_eq!(j["ids"]["asterisk_uniqueid"], "1733300000.42");
    assert_eq!(j["ids"]["avaya_ucid"], "00025000160955721139");
    assert_eq!(j["ids"]["recorded_call_id"], "rec-live-1@src");
    // stop: complete, every frame, the final metadata (the JSON written).
    let stop = &h.stops[0];
    assert_eq!(stop["complete"], true, "{stop}");
    assert_eq!(stop["frames"].as_u64().unwrap(), (wav.len() / 2) as u64);
    assert_eq!(stop["meta"], j);
    assert!(
        wav.len() / 2 >= 2800 * 8,
        "a 3 s call recorded {} frames",
        wav.len() / 2
    );
    assert_same_samples(&h.pcm, &wav);
    // Each message about one frame (100 ms) long (CONTRACT §5): never
    // longer; shorter only for audio that waited a whole frame (the call
    // still running) and the last one.
    let sizes: Vec<u64> = h.msgs.iter().map(|m| m.2).collect();
    assert!(sizes.iter().all(|n| *n <= 800), "{sizes:?}");
    let short = sizes[..sizes.len() - 1]
        .iter()
        .filter(|n| **n < 800)
        .count();
    assert!(
        short * 10 <= sizes.len(),
        "{short} short messages: {sizes:?}"
    );
    let lat = latencies(&h, t0);
    eprintln!(
        "packet → frame at the receiver (recording.jitter 200 ms), {} messages: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        lat.len(),
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        pct(&lat, 1.0)
    );
    // /status is published once a second.
    let t = Instant::now();
    while status(&d)["stream"]["complete"] != 1 {
        assert!(t.elapsed() < Duration::from_secs(10), "{}", status(&d));
        std::thread::sleep(Duration::from_millis(50));
    }
    let st = status(&d);
    assert_eq!(st["stream"]["enabled"], true, "{st}");
    assert_eq!(st["stream"]["open"], 0, "{st}");
    assert!(
        st["stream"]["bytes"].as_u64().unwrap() >= (wav.len() * 2) as u64,
        "{st}"
    );
    let m = d.get("/metrics").unwrap().1;
    assert!(
        m.contains("pbx_edge_streams_total{outcome=\"complete\"} 1"),
        "{m}"
    );
}

#[test]
fn receiver_dropped_mid_call_is_resumed_from_the_offset_it_holds() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start();
    // After 1.5 s of audio the connection breaks and the receiver keeps
    // only what it had 0.3 s earlier.
    rx.behaviour.lock().unwrap().drop_at = Some((12_000, 2_400));
    let (d, srs) = daemon(dir.path(), &rx.url(), "");
    siprec_call(srs, "live-drop@src", 4000, 21);
    let (j, wav) = recording_of(&d, "live-drop@src");
    let id = j["recording_id"].as_str().unwrap();
    let h = rx.wait_stop(id, Duration::from_secs(20));
    assert!(h.connections >= 2, "{}", h.connections);
    assert_eq!(h.starts[0]["resume"], false);
    assert!(
        h.starts[1..].iter().all(|s| s["resume"] == true),
        "{:?}",
        h.starts
    );
    assert!(
        h.violations.is_empty(),
        "gaps or repeats: {:?}",
        h.violations
    );
    assert_eq!(h.stops[0]["complete"], true);
    assert_same_samples(&h.pcm, &wav);
    let t = Instant::now();
    while status(&d)["stream"]["reconnects"].as_u64().unwrap() < 1 {
        assert!(t.elapsed() < Duration::from_secs(10), "{}", status(&d));
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn receiver_gone_longer_than_max_lag_gets_an_incomplete_stop_and_the_recording_is_whole() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start();
    let (d, srs) = daemon(dir.path(), &rx.url(), "max_lag = \"1s\"");
    let down = rx.down.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(800));
        down.store(true, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(3500));
        down.store(false, Ordering::SeqCst);
    });
    siprec_call(srs, "live-gone@src", 4000, 31);
    t.join().unwrap();
    let (j, wav) = recording_of(&d, "live-gone@src");
    assert_eq!(j["truncated"], false);
    assert!(wav.len() / 2 >= 3800 * 8, "{} frames", wav.len() / 2);
    let id = j["recording_id"].as_str().unwrap();
    let h = rx.wait_stop(id, Duration::from_secs(30));
    let stop = &h.stops[0];
    assert_eq!(stop["complete"], false, "{stop}");
    assert!(h.starts.last().unwrap()["resume"] == true);
    // What it holds is the start of the recording, nothing else.
    assert!(h.pcm.len() < wav.len());
    assert_eq!(stop["frames"].as_u64().unwrap(), (h.pcm.len() / 2) as u64);
    assert_same_samples(&h.pcm, &wav[..h.pcm.len()]);
    assert!(h.violations.is_empty(), "{:?}", h.violations);
    let t = Instant::now();
    while status(&d)["stream"]["incomplete"] != 1 {
        assert!(t.elapsed() < Duration::from_secs(10), "{}", status(&d));
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A receiver four times slower than real time (0.4 s over each 100 ms
/// message): the audio waits in the socket buffers, and when the call
/// ends it still has most of it to read. Its stream is one connection to
/// the end, `stop` complete, the WAV sample for sample, no offset twice.
/// Before, `done` not coming within 10 s of `stop` broke the connection:
/// the daemon connected again and sent the rest once more, again and again
/// (3.4 times the WAV in 72 s, no complete stop).
#[test]
fn a_receiver_slower_than_real_time_gets_the_whole_stream_on_one_connection() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start();
    rx.behaviour.lock().unwrap().read_delay = Some(Duration::from_millis(400));
    let (d, srs) = daemon(dir.path(), &rx.url(), "frame = \"100ms\"");
    siprec_call(srs, "live-slowreader@src", 6000, 61);
    let (j, wav) = recording_of(&d, "live-slowreader@src");
    let id = j["recording_id"].as_str().unwrap();
    let h = rx.wait_stop(id, Duration::from_secs(60));
    assert_eq!(h.connections, 1, "{}", d.log());
    assert_eq!(h.stops[0]["complete"], true);
    assert!(h.violations.is_empty(), "{:?}", h.violations);
    assert_same_samples(&h.pcm, &wav);
    assert_eq!(status(&d)["stream"]["reconnects"], 0);
}

/// The same slow receiver with `max_lag` 2 s: the audio it has not taken
/// (sent, unacknowledged) counts as lag, so the stream is given up, with
/// `stop` complete: false on the same connection, what it holds the
/// recording's start. Before, the lag counted only audio not yet sent:
/// never more than a message for a receiver that reads at all.
#[test]
fn a_receiver_falling_behind_by_more_than_max_lag_gets_an_incomplete_stop() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start();
    rx.behaviour.lock().unwrap().read_delay = Some(Duration::from_millis(400));
    let (d, srs) = daemon(dir.path(), &rx.url(), "frame = \"100ms\"\nmax_lag = \"2s\"");
    siprec_call(srs, "live-behind@src", 6000, 62);
    let (j, wav) = recording_of(&d, "live-behind@src");
    let id = j["recording_id"].as_str().unwrap();
    let h = rx.wait_stop(id, Duration::from_secs(60));
    assert_eq!(h.connections, 1, "{:?}", h.starts);
    let stop = &h.stops[0];
    assert_eq!(stop["complete"], false, "{stop}");
    assert_eq!(stop["frames"].as_u64().unwrap(), (h.pcm.len() / 2) as u64);
    assert!(h.pcm.len() < wav.len());
    assert_same_samples(&h.pcm, &wav[..h.pcm.len()]);
    assert!(h.violations.is_empty(), "{:?}", h.violations);
}

/// A stream broken by a crash of the daemon (SIGKILL mid-call) is resumed
/// at the next start for the recording completed from what the crash left:
/// `start` with `"resume": true`, the rest from the offset the receiver
/// holds, `stop` complete with the WAV's frames; the receiver holds the
/// recovered WAV sample for sample (before: a prefix and no `stop`, ever).
#[test]
fn a_stream_broken_by_a_crash_is_resumed_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start();
    let (mut d, srs) = daemon(dir.path(), &rx.url(), "");
    // 2 s of media, then the call stays open while the daemon is killed.
    siprec_call_ending(srs, "live-crash@src", 2000, 33, false);
    std::thread::sleep(Duration::from_millis(600));
    let _ = d.child.kill();
    let _ = d.child.wait();
    let before = rx.connections.load(Ordering::SeqCst);
    assert_eq!(before, 1);
    let (d2, _) = daemon(dir.path(), &rx.url(), "");
    let (j, wav) = recording_of(&d2, "live-crash@src");
    assert_eq!(j["end_reason"], "crash", "{j}");
    let id = j["recording_id"].as_str().unwrap();
    let h = rx.wait_stop(id, Duration::from_secs(30));
    assert_eq!(h.starts.len(), 2, "{:?}", h.starts);
    assert_eq!(h.starts[0]["resume"], false);
    assert_eq!(h.starts[1]["resume"], true);
    let stop = &h.stops[0];
    assert_eq!(stop["complete"], true, "{stop}");
    assert_eq!(stop["frames"].as_u64().unwrap(), (wav.len() / 2) as u64);
    assert!(wav.len() / 2 >= 1500 * 8, "{} frames", wav.len() / 2);
    assert_same_samples(&h.pcm, &wav);
    assert!(h.violations.is_empty(), "{:?}", h.violations);
}

#[test]
fn receiver_error_ends_that_calls_stream_without_retries() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start();
    rx.behaviour.lock().unwrap().refuse = true;
    let (d, srs) = daemon(dir.path(), &rx.url(), "");
    siprec_call(srs, "live-refused@src", 2000, 41);
    let (j, wav) = recording_of(&d, "live-refused@src");
    assert!(wav.len() / 2 >= 1800 * 8);
    let id = j["recording_id"].as_str().unwrap();
    let t = Instant::now();
    while status(&d)["stream"]["refused"] != 1 {
        assert!(t.elapsed() < Duration::from_secs(10), "{}", status(&d));
        std::thread::sleep(Duration::from_millis(50));
    }
    // Never tried again.
    std::thread::sleep(Duration::from_secs(2));
    let h = rx.of(id);
    assert_eq!(h.connections, 1);
    assert!(h.stops.is_empty());
    assert_eq!(rx.connections.load(Ordering::SeqCst), 1);
    let (code, body) = d.get("/readyz").unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("no such account"), "{body}");
}

/// A receiver that refuses the token (401 on the upgrade) is not asked
/// again for that call (before, each call retried for its whole length and
/// 300 s after); the recording is whole.
#[test]
fn a_refused_token_ends_that_calls_stream_without_retries() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start();
    rx.behaviour.lock().unwrap().unauthorized = true;
    let (d, srs) = daemon(dir.path(), &rx.url(), "");
    siprec_call(srs, "live-401@src", 2000, 43);
    let (_, wav) = recording_of(&d, "live-401@src");
    assert!(wav.len() / 2 >= 1800 * 8);
    let t = Instant::now();
    while status(&d)["stream"]["refused"] != 1 {
        assert!(t.elapsed() < Duration::from_secs(10), "{}", status(&d));
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(rx.connections.load(Ordering::SeqCst), 1, "not tried again");
    // The audio after the refusal is not counted as dropped.
    assert_eq!(status(&d)["stream"]["dropped_chunks"], 0, "{}", status(&d));
    assert!(
        status(&d)["stream"].to_string().contains("HTTP 401"),
        "{}",
        status(&d)
    );
}

#[test]
fn a_slow_receiver_for_one_call_holds_back_neither_the_other_call_nor_the_recordings() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start();
    // The receiver answers the first call's start 3 s late: its queue
    // overflows and it catches up from the file.
    rx.behaviour.lock().unwrap().slow = Some(("slow".into(), Duration::from_secs(3)));
    let (d, srs) = daemon(dir.path(), &rx.url(), "");
    let slow = std::thread::spawn(move || siprec_call(srs, "live-slow@src", 5000, 51));
    let t0 = siprec_call(srs, "live-fast@src", 5000, 61);
    slow.join().unwrap();
    let (jf, wav_f) = recording_of(&d, "live-fast@src");
    let (js, wav_s) = recording_of(&d, "live-slow@src");
    assert!(wav_f.len() / 2 >= 4800 * 8 && wav_s.len() / 2 >= 4800 * 8);
    let hf = rx.wait_stop(
        jf["recording_id"].as_str().unwrap(),
        Duration::from_secs(20),
    );
    let hs = rx.wait_stop(
        js["recording_id"].as_str().unwrap(),
        Duration::from_secs(20),
    );
    assert_same_samples(&hf.pcm, &wav_f);
    assert_same_samples(&hs.pcm, &wav_s);
    assert!(hf.violations.is_empty() && hs.violations.is_empty());
    assert_eq!(hs.stops[0]["complete"], true);
    // The slow call's first audio came after its late ready, from the file.
    let t = Instant::now();
    while status(&d)["stream"]["dropped_chunks"].as_u64().unwrap() == 0 {
        assert!(t.elapsed() < Duration::from_secs(10), "{}", status(&d));
        std::thread::sleep(Duration::from_millis(50));
    }
    let lat = latencies(&hf, t0);
    eprintln!(
        "the other call while one receiver is slow: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        pct(&lat, 1.0)
    );
}

/// Who is who for SIPREC sessions of each direction (default `[roles]`:
/// 2-5 digit extensions), from the participants' AoRs: outbound (the
/// caller is the agent), internal (both are), inbound (the callee is).
#[test]
fn siprec_sessions_get_roles_for_each_direction() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start();
    let (d, srs) = daemon(dir.path(), &rx.url(), "");
    let calls: Vec<_> = ["out-1@src", "int-1@src", "in-1@src"]
        .into_iter()
        .enumerate()
        .map(|(i, c)| std::thread::spawn(move || siprec_call(srs, c, 1000, 70 + i as u64)))
        .collect();
    for c in calls {
        c.join().unwrap();
    }
    for (call, direction, roles, ext) in [
        (
            "out-1@src",
            "outbound",
            ["agent", "customer"],
            [Some("2002"), None],
        ),
        (
            "int-1@src",
            "internal",
            ["agent", "agent"],
            [Some("1001"), Some("2002")],
        ),
        (
            "in-1@src",
            "inbound",
            ["customer", "agent"],
            [None, Some("2002")],
        ),
    ] {
        let (j, _) = recording_of(&d, call);
        assert_eq!(j["direction"], direction, "{call}: {j}");
        for ch in 0..2 {
            assert_eq!(j["channels"][ch]["role"], roles[ch], "{call} channel {ch}");
            assert_eq!(
                j["channels"][ch]["extension"].as_str(),
                ext[ch],
                "{call} channel {ch}"
            );
        }
    }
}

/// The same call streamed to a receiver we did not write (Python's
/// `websockets`, tests/ws/stream_receiver.py): it accepts the subprotocol
/// and the token, and what it holds is the WAV, sample for sample.
#[test]
fn an_independent_python_receiver_holds_the_wav_sample_for_sample() {
    let py = "/usr/bin/python3";
    let ok = std::process::Command::new(py)
        .args(["-c", "import websockets"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipped: python3-websockets is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("received");
    std::fs::create_dir(&out).unwrap();
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ws/stream_receiver.py");
    let mut child = std::process::Command::new(py)
        .arg(&script)
        .arg(&out)
        .arg(TOKEN)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let _guard = Kill(child);
    let port: u16 = line.trim().parse().unwrap();
    let (d, srs) = daemon(dir.path(), &format!("ws://127.0.0.1:{port}/"), "");
    siprec_call(srs, "live-py@src", 2000, 71);
    let (j, wav) = recording_of(&d, "live-py@src");
    let id = j["recording_id"].as_str().unwrap();
    let log = out.join(format!("{id}.json"));
    let t = Instant::now();
    while !log.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no stop at the Python receiver; log:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let l: Value = serde_json::from_slice(&std::fs::read(&log).unwrap()).unwrap();
    assert_eq!(l["checks"]["subprotocol"], "pbx-edge.stream.v1", "{l}");
    assert_eq!(l["checks"]["authorization_ok"], true, "{l}");
    assert!(l["checks"]["user_agent"]
        .as_str()
        .unwrap()
        .starts_with("pbx-edge/"));
    assert_eq!(l["violations"], serde_json::json!([]));
    assert_eq!(l["stops"][0]["complete"], true);
    let pcm: Vec<i16> = std::fs::read(out.join(format!("{id}.pcm")))
        .unwrap()
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    assert_same_samples(&pcm, &wav);
}

/// Latency and memory with many calls streamed at once (run by hand:
/// `STREAM_CALLS=100 cargo test --release --test stream -- --ignored many`;
/// figures in BENCHMARKS.md).
#[test]
#[ignore]
fn many_concurrent_calls_latency_and_memory() {
    let n: usize = std::env::var("STREAM_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let ms: usize = std::env::var("STREAM_SECONDS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(10)
        * 1000;
    let streaming = std::env::var("STREAM_OFF").is_err();
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start();
    let port = free_port();
    let listen: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let d = Daemon::start(
        dir.path(),
        &format!(
            "[recording]\njitter = \"200ms\"\n[cloud]\ntoken_file = \"{}\"\n[stream]\nenabled = {streaming}\nurl = \"{}\"\n[sources.siprec]\nenabled = true\nlisten = \"{listen}\"\nrtp_ports = \"20000-29999\"\nmax_calls = 5000\n",
            token.display(),
            rx.url()
        ),
    );
    d.wait_http("/readyz", 200, Duration::from_secs(10));
    let rss = |pid: u32| -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        s.lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let pid = d.child.id();
    let before = rss(pid);
    let calls: Vec<_> = (0..n)
        .map(|i| {
            std::thread::sleep(Duration::from_millis(5));
            std::thread::spawn(move || {
                siprec_call(listen, &format!("many-{i}@src"), ms, 1000 + i as u64)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(ms as u64 / 2));
    let during = rss(pid);
    let t0s: Vec<Instant> = calls.into_iter().map(|c| c.join().unwrap()).collect();
    let mut lat = Vec::new();
    let mut complete = 0;
    for (i, t0) in t0s.iter().enumerate() {
        let (j, wav) = recording_of(&d, &format!("many-{i}@src"));
        if !streaming {
            continue;
        }
        let h = rx.wait_stop(j["recording_id"].as_str().unwrap(), Duration::from_secs(60));
        if h.stops[0]["complete"] == true {
            complete += 1;
        }
        assert_same_samples(&h.pcm, &wav);
        lat.extend(latencies(&h, *t0));
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    eprintln!(
        "{n} calls of {} s, streaming {streaming}: RSS before {before} KiB, mid-call {during} KiB ({:.0} KiB per call)",
        ms / 1000,
        (during.saturating_sub(before)) as f64 / n as f64
    );
    if streaming {
        eprintln!(
            "packet → frame (jitter 200 ms), {} messages: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; {complete}/{n} complete",
            lat.len(),
            pct(&lat, 0.5),
            pct(&lat, 0.99),
            pct(&lat, 1.0)
        );
    }
}

/// A call `[filter]` keeps on the machine (here its caller's number is
/// excluded) is not streamed live either: its audio never leaves the host
/// (before, it was streamed while it ran and only its upload was held
/// back). Another call is streamed as usual; the metric counts the one.
#[test]
fn a_call_the_filters_keep_on_the_machine_is_not_streamed() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start();
    let (d, srs) = daemon(
        dir.path(),
        &rx.url(),
        "[filter]\nexclude_numbers = [\"+1555*\"]\nkeep_filtered = true\n",
    );
    siprec_call(srs, "live-excluded@src", 1500, 51);
    siprec_call(srs, "int-kept@src", 1500, 52);
    let (excluded, _) = recording_of(&d, "live-excluded@src");
    let (kept, _) = recording_of(&d, "int-kept@src");
    let kept_id = kept["recording_id"].as_str().unwrap().to_string();
    let t = Instant::now();
    while rx.of(&kept_id).stops.is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the kept call was not streamed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let h = rx.of(excluded["recording_id"].as_str().unwrap());
    assert_eq!((h.connections, h.starts.len(), h.pcm.len()), (0, 0, 0));
    assert_eq!(status(&d)["stream"]["filtered"], 1, "{}", status(&d));
    let m = d.get("/metrics").unwrap().1;
    assert!(m.contains("pbx_edge_stream_filtered_total 1"), "{m}");
}
