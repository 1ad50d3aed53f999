//! The control API against an engine answering on its own thread.

use std::net::SocketAddr;
use std::sync::mpsc as std_mpsc;
use std::thread;

use pbx_core::call::{CallKey, CallMeta, EngineConfig, RecordingStart};
use pbx_core::net::{Segment, Transport};

use super::*;

struct Discard;
impl RecordingSink for Discard {
    fn begin(&mut self, _: CallKey, _: &RecordingStart) {}
    fn audio(&mut self, _: CallKey, _: &[i16]) {}
    fn end(&mut self, _: CallKey, _: CallMeta) {}
}

const T0: i64 = 1_790_000_000_000_000;
const CALL_ID: &str = "ctl/1@10.0.0.1";

fn seg(engine: &mut CallEngine, at_ms: i64, src: &str, dst: &str, data: &[u8]) {
    let src: SocketAddr = src.parse().unwrap();
    let dst: SocketAddr = dst.parse().unwrap();
    engine.handle_segment(
        &Segment {
            ts: Timestamp::from_micros(T0 + at_ms * 1000),
            src,
            dst,
            transport: Transport::Udp,
            payload: data,
            tcp_gap: false,
        },
        &mut Discard,
    );
}

fn invite() -> Vec<u8> {
    let body = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n";
    format!(
        "INVITE sip:2@10.0.0.2 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-1\r\n\
         From: <sip:1@10.0.0.1>;tag=a\r\nTo: <sip:2@10.0.0.2>\r\nCall-ID: {CALL_ID}\r\nCSeq: 1 INVITE\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn rtp(k: u16) -> Vec<u8> {
    let mut p = vec![0x80, 0];
    p.extend_from_slice(&k.to_be_bytes());
    p.extend_from_slice(&(u32::from(k) * 160).to_be_bytes());
    p.extend_from_slice(&7u32.to_be_bytes());
    p.extend_from_slice(&[0x55; 160]);
    p
}

/// An engine thread with one call in progress (media started), serving
/// `controls` until `stop` is dropped.
fn engine_thread(
    controls: &Controls,
    source: &str,
) -> (std_mpsc::Sender<()>, thread::JoinHandle<()>) {
    let (tx, rx) = std_mpsc::channel::<ControlRequest>();
    let tx = Mutex::new(tx);
    controls.register(source, move |r| tx.lock().unwrap().send(r).is_ok());
    let (stop_tx, stop_rx) = std_mpsc::channel::<()>();
    let h = thread::spawn(move || {
        let mut engine = CallEngine::new(EngineConfig::default());
        seg(&mut engine, 0, "10.0.0.1:5060", "10.0.0.2:5060", &invite());
        for k in 0..10 {
            seg(
                &mut engine,
                100 + i64::from(k) * 20,
                "10.0.0.2:50000",
                "10.0.0.1:40000",
                &rtp(k),
            );
        }
        let mut t = 400;
        while let Err(std_mpsc::RecvTimeoutError::Timeout) =
            stop_rx.recv_timeout(Duration::from_millis(5))
        {
            t += 5;
            while let Ok(req) = rx.try_recv() {
                let now = Timestamp::from_micros(T0 + t * 1000);
                answer(&mut engine, req, Some(now), &mut Discard);
            }
        }
    });
    (stop_tx, h)
}

fn body(a: &ApiAnswer) -> serde_json::Value {
    serde_json::from_str(&a.body).unwrap()
}

#[tokio::test]
async fn list_pause_resume_with_404_and_409() {
    let controls = Controls::new();
    let (stop, h) = engine_thread(&controls, "sniff");
    let list = controls.http("GET", "/v1/calls").await.unwrap();
    assert_eq!(list.code, 200);
    let v = body(&list);
    let calls = v["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1, "{v}");
    assert_eq!(calls[0]["call_id"], CALL_ID);
    assert_eq!(calls[0]["source"], "sniff");
    assert_eq!(calls[0]["paused"], false);
    assert!(calls[0]["started_at"]
        .as_str()
        .unwrap()
        .starts_with("2026-"));
    let rid = calls[0]["recording_id"].as_str().unwrap().to_string();

    // The raw Call-ID percent-encoded ('/' and '@'), or the recording id.
    let a = controls
        .http("POST", "/v1/calls/ctl%2F1%4010.0.0.1/pause")
        .await
        .unwrap();
    assert_eq!(a.code, 200, "{}", a.body);
    assert_eq!(body(&a)["recording_id"], rid.as_str());
    assert_eq!(body(&a)["paused"], true);
    let again = controls
        .http("POST", &format!("/v1/calls/{rid}/pause"))
        .await
        .unwrap();
    assert_eq!(again.code, 409, "{}", again.body);
    let v = body(&controls.http("GET", "/v1/calls").await.unwrap());
    assert_eq!(v["calls"][0]["paused"], true);
    let r = controls
        .http("POST", &format!("/v1/calls/{rid}/resume"))
        .await
        .unwrap();
    assert_eq!(r.code, 200, "{}", r.body);
    let r = controls
        .http("POST", &format!("/v1/calls/{rid}/resume"))
        .await
        .unwrap();
    assert_eq!(r.code, 409);
    assert_eq!(
        controls
            .http("POST", "/v1/calls/unknown@x/pause")
            .await
            .unwrap()
            .code,
        404
    );
    assert_eq!(
        controls
            .http("GET", "/v1/calls/x/pause")
            .await
            .unwrap()
            .code,
        405
    );
    assert_eq!(controls.http("POST", "/v1/calls").await.unwrap().code, 405);
    assert_eq!(
        controls
            .http("POST", "/v1/calls/%zz/pause")
            .await
            .unwrap()
            .code,
        404
    );
    assert!(controls.http("GET", "/v1/calls/x/other").await.is_none());
    assert!(controls.http("GET", "/status").await.is_none());

    // An engine that stopped is dropped; none left: no calls, 404.
    drop(stop);
    h.join().unwrap();
    let v = body(&controls.http("GET", "/v1/calls").await.unwrap());
    assert_eq!(v["calls"].as_array().unwrap().len(), 0);
    assert_eq!(
        controls
            .http("POST", &format!("/v1/calls/{rid}/pause"))
            .await
            .unwrap()
            .code,
        404
    );
}

#[test]
fn percent_decoding() {
    assert_eq!(percent_decode("a%40b%2Fc").as_deref(), Some("a@b/c"));
    assert_eq!(percent_decode("%4"), None);
    assert_eq!(percent_decode("%0a"), None);
    assert_eq!(percent_decode("%C3%A9").as_deref(), Some("é"));
}

/// An engine whose queue is full (the request dropped) or that does not
/// answer in time: 503, not "no such call" (the call may be in that engine,
/// and the request may still take effect), and no incomplete list.
#[tokio::test]
async fn an_engine_that_does_not_answer_gives_503_not_404() {
    let controls = Controls::new();
    // A full queue: the request is taken and dropped (its reply with it).
    controls.register("siprec", |r: ControlRequest| {
        drop(r);
        true
    });
    let a = controls
        .http("POST", "/v1/calls/somebody%40x/pause")
        .await
        .unwrap();
    assert_eq!(a.code, 503, "{}", a.body);
    assert!(a.body.contains("did not answer"), "{}", a.body);
    let l = controls.http("GET", "/v1/calls").await.unwrap();
    assert_eq!(l.code, 503, "{}", l.body);
    // Without an engine at all: nobody has the call.
    let none = Controls::new();
    let a = none
        .http("POST", "/v1/calls/somebody%40x/pause")
        .await
        .unwrap();
    assert_eq!(a.code, 404, "{}", a.body);
}

/// The control API takes loopback (IPv4, IPv6, IPv4-mapped) and the
/// networks of `health.control_allow`; anyone else is refused (403 in the
/// health server).
#[test]
fn the_control_api_takes_loopback_and_allowed_networks_only() {
    let c = Controls::new();
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    for local in ["127.0.0.1", "127.8.9.1", "::1", "::ffff:127.0.0.1"] {
        assert!(c.allows(ip(local)), "{local}");
    }
    for other in ["192.0.2.7", "10.1.2.3", "2001:db8::1", "::ffff:10.1.2.3"] {
        assert!(!c.allows(ip(other)), "{other}");
    }
    c.set_allow(&["10.1.2.0/24".parse().unwrap()]);
    assert!(c.allows(ip("10.1.2.3")));
    assert!(c.allows(ip("::ffff:10.1.2.3")));
    assert!(!c.allows(ip("10.1.3.1")));
    // A clone (the health server's) sees a reload.
    let served = c.clone();
    c.set_allow(&[]);
    assert!(!served.allows(ip("10.1.2.3")));
}
