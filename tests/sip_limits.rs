//! Every request answered: the SIPREC server against oversized, heavy and
//! hostile SIP over UDP, TCP and TLS (issue 11, defect 4). Each request that
//! used to get no answer (the SBC retransmitting into silence) now gets
//! 513 / 400 / 488 with a Warning naming the limit; a TCP connection that
//! announces an impossible Content-Length is answered and closed; idle and
//! trickling connections are closed (not one with a call in progress);
//! answers to junk are rate-limited per source; everything is counted in
//! `pbx_edge_sip_rejected_total`.

mod common;

use common::header;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use common::daemon::*;
use common::receiver::TestPki;

/// A request; `vias` extra Via headers after ours, `extra` more header lines.
#[allow(clippy::too_many_arguments)]
fn request(
    method: &str,
    call_id: &str,
    via: &str,
    vias: usize,
    extra: &str,
    content_type: &str,
    body: &str,
) -> String {
    let mut m =
        format!("{method} sip:srs@127.0.0.1 SIP/2.0\r\nVia: {via};branch=z9hG4bK{call_id}\r\n");
    for i in 0..vias {
        m.push_str(&format!(
            "Via: SIP/2.0/UDP 10.0.{}.{}:5060;branch=z9hG4bKp{i}\r\n",
            i / 250,
            i % 250
        ));
    }
    m.push_str(&format!(
        "Max-Forwards: 70\r\nFrom: <sip:src@127.0.0.1>;tag=src-{call_id}\r\nTo: <sip:srs@127.0.0.1>\r\n\
         Call-ID: {call_id}\r\nCSeq: 1 {method}\r\nContact: <sip:src@127.0.0.1>;+sip.src\r\n{extra}"
    ));
    if !content_type.is_empty() {
        m.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    m.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    m
}

const SDP_HEAD: &str =
    "v=0\r\no=SRC 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n";

fn sdp() -> String {
    format!("{SDP_HEAD}m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendonly\r\n")
}

fn multipart(sdp: &str, metadata: &str) -> (String, String) {
    (
        "multipart/mixed;boundary=BB".into(),
        format!(
            "--BB\r\nContent-Type: application/sdp\r\n\r\n{sdp}\r\n--BB\r\n\
             Content-Type: application/rs-metadata+xml\r\nContent-Disposition: recording-session\r\n\r\n\
             {metadata}\r\n--BB--\r\n"
        ),
    )
}

fn status_of(resp: &str) -> u16 {
    resp.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// The final answer must be `code reason`, for this Call-ID, with a
/// Warning saying `warning`.
fn check(resp: &str, call_id: &str, code: u16, reason: &str, warning: &str) {
    assert!(
        resp.starts_with(&format!("SIP/2.0 {code} {reason}\r\n")),
        "{call_id}: {resp}"
    );
    assert_eq!(header(resp, "Call-ID"), Some(call_id), "{resp}");
    let w = header(resp, "Warning").unwrap_or_else(|| panic!("no Warning: {resp}"));
    assert!(
        w.starts_with("399 pbx-edge \"") && w.contains(warning),
        "{call_id}: Warning {w:?} should say {warning:?}"
    );
}

struct Udp {
    sock: UdpSocket,
    srs: SocketAddr,
}

impl Udp {
    fn new(srs: SocketAddr) -> Udp {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        Udp { sock, srs }
    }
    fn via(&self) -> String {
        format!("SIP/2.0/UDP {}", self.sock.local_addr().unwrap())
    }
    fn send(&self, m: &str) {
        assert!(m.len() < 65_000, "fits a datagram: {}", m.len());
        self.sock.send_to(m.as_bytes(), self.srs).unwrap();
    }
    /// The final answer for `call_id` (retransmitting the request while
    /// waiting, as an SBC would).
    fn ask(&self, m: &str, call_id: &str) -> String {
        self.send(m);
        let t = Instant::now();
        let mut last_send = Instant::now();
        let mut b = vec![0u8; 65_536];
        while t.elapsed() < Duration::from_secs(20) {
            if last_send.elapsed() > Duration::from_secs(2) {
                self.send(m);
                last_send = Instant::now();
            }
            if let Ok(n) = self.sock.recv(&mut b) {
                let r = String::from_utf8_lossy(&b[..n]).into_owned();
                if status_of(&r) >= 200 && header(&r, "Call-ID") == Some(call_id) {
                    return r;
                }
            }
        }
        panic!("no final answer for {call_id}");
    }
}

/// A SIP connection (TCP, or TLS over it) read message by message.
struct Conn<S: Read + Write> {
    s: S,
    buf: Vec<u8>,
    via: String,
}

fn tcp(srs: SocketAddr) -> Conn<TcpStream> {
    let s = TcpStream::connect(srs).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let via = format!("SIP/2.0/TCP {}", s.local_addr().unwrap());
    Conn {
        s,
        buf: Vec::new(),
        via,
    }
}

type TlsStream =
    tokio_rustls::rustls::StreamOwned<tokio_rustls::rustls::ClientConnection, TcpStream>;

fn tls(srs: SocketAddr, ca_pem: &str) -> Conn<TlsStream> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let conn = rustls::ClientConnection::new(
        std::sync::Arc::new(cfg),
        ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    let sock = TcpStream::connect(srs).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let via = format!("SIP/2.0/TLS {}", sock.local_addr().unwrap());
    let mut s = rustls::StreamOwned::new(conn, sock);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).unwrap();
    }
    Conn {
        s,
        buf: Vec::new(),
        via,
    }
}

impl<S: Read + Write> Conn<S> {
    /// Sends (a refused message may be cut off by the server: a broken
    /// pipe on our side is not an error here).
    fn send(&mut self, m: &[u8]) {
        let _ = self.s.write_all(m).and_then(|_| self.s.flush());
    }
    /// The next message; `None` at the end of the stream.
    fn recv(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                let len: usize = header(&head, "Content-Length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if self.buf.len() >= end + 4 + len {
                    let m: Vec<u8> = self.buf.drain(..end + 4 + len).collect();
                    return Some(String::from_utf8_lossy(&m).into_owned());
                }
            }
            let mut chunk = [0u8; 16_384];
            match self.s.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
    fn ask(&mut self, m: &str, call_id: &str) -> String {
        self.send(m.as_bytes());
        self.final_for(call_id)
    }
    fn final_for(&mut self, call_id: &str) -> String {
        while let Some(r) = self.recv() {
            if status_of(&r) >= 200 && header(&r, "Call-ID") == Some(call_id) {
                return r;
            }
        }
        panic!("connection ended without a final answer for {call_id}");
    }
    /// The server closes the connection (nothing more than `allowed`
    /// messages before the end).
    fn expect_closed(&mut self) {
        let t = Instant::now();
        while let Some(m) = self.recv() {
            assert!(t.elapsed() < Duration::from_secs(30), "still open: {m}");
        }
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out + &format!("-----END {label}-----\n")
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
    d.wait_http("/readyz", 200, Duration::from_secs(10));
    (d, listen)
}

/// `pbx_edge_sip_rejected_total{source="siprec",reason=...}`.
fn rejected(d: &Daemon, reason: &str) -> u64 {
    let metrics = d.get("/metrics").map(|(_, m)| m).unwrap_or_default();
    let key = format!("pbx_edge_sip_rejected_total{{source=\"siprec\",reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Waits (generously) until the counter reaches `at_least`.
fn wait_rejected(d: &Daemon, reason: &str, at_least: u64) {
    let t = Instant::now();
    while rejected(d, reason) < at_least {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{reason}: {} < {at_least}\n{}",
            rejected(d, reason),
            d.get("/metrics").map(|(_, m)| m).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The heavy requests of the issue, as (label, request, expected answer).
fn heavy(via: &str) -> Vec<(String, String, u16, &'static str, String)> {
    let mut out = Vec::new();
    // A 100 KiB header.
    let id = "big-header";
    out.push((
        id.to_string(),
        request(
            "INVITE",
            id,
            via,
            0,
            &format!("X-Big: {}\r\n", "a".repeat(100 * 1024)),
            "application/sdp",
            &sdp(),
        ),
        513,
        "Message Too Large",
        "exceeds the 65536-byte limit".to_string(),
    ));
    // 10,000 Via headers.
    let id = "ten-thousand-vias";
    out.push((
        id.to_string(),
        request("INVITE", id, via, 10_000, "", "application/sdp", &sdp()),
        513,
        "Message Too Large",
        "exceeds the 65536-byte limit".to_string(),
    ));
    // An SDP with 5,000 m-lines.
    let id = "five-thousand-m-lines";
    let body = format!("{SDP_HEAD}{}", "m=audio 0 RTP/AVP 0\r\n".repeat(5000));
    out.push((
        id.to_string(),
        request("INVITE", id, via, 0, "", "application/sdp", &body),
        513,
        "Message Too Large",
        "exceeds the 65536-byte limit".to_string(),
    ));
    // A 700 KB metadata body.
    let id = "metadata-700kb";
    let meta = format!(
        "<recording xmlns=\"urn:ietf:params:xml:ns:recording:1\">{}</recording>",
        "<x/>".repeat(175_000)
    );
    let (ct, body) = multipart(&sdp(), &meta);
    assert!(body.len() > 700_000);
    out.push((
        id.to_string(),
        request("INVITE", id, via, 0, "", &ct, &body),
        513,
        "Message Too Large",
        "exceeds the 65536-byte limit".to_string(),
    ));
    out
}

/// What fits a datagram but is over a limit.
fn heavy_datagrams(via: &str) -> Vec<(String, String, u16, &'static str, String)> {
    let mut out = Vec::new();
    let id = "thousand-vias";
    out.push((
        id.to_string(),
        request("INVITE", id, via, 1000, "", "application/sdp", &sdp()),
        400,
        "Too Many Via Headers",
        "Via values, more than the 70 accepted".to_string(),
    ));
    // A 50 KB message of 1,000 headers.
    let id = "fifty-kb";
    let pad: String = (0..1000)
        .map(|i| format!("X-Pad-{i:04}: {}\r\n", "p".repeat(36)))
        .collect();
    let m = request("INVITE", id, via, 0, &pad, "application/sdp", &sdp());
    assert!(m.len() > 50_000 && m.len() < 60_000, "{}", m.len());
    out.push((
        id.to_string(),
        m,
        400,
        "Too Many Headers",
        "more than 256 header fields".to_string(),
    ));
    // 2,500 m-lines (still within 64 KiB).
    let id = "many-m-lines";
    let body = format!("{SDP_HEAD}{}", "m=audio 0 RTP/AVP 0\r\n".repeat(2500));
    out.push((
        id.to_string(),
        request("INVITE", id, via, 0, "", "application/sdp", &body),
        488,
        "Not Acceptable Here",
        "more than 64 media sections".to_string(),
    ));
    // Metadata with 1,500 participants.
    let id = "many-participants";
    let meta = format!(
        "<recording xmlns=\"urn:ietf:params:xml:ns:recording:1\">{}</recording>",
        (0..1500)
            .map(|i| format!("<participant participant_id=\"p{i}\"/>"))
            .collect::<String>()
    );
    let (ct, body) = multipart(&sdp(), &meta);
    out.push((
        id.to_string(),
        request("INVITE", id, via, 0, "", &ct, &body),
        488,
        "Not Acceptable Here",
        "more than 64 participants".to_string(),
    ));
    out
}

#[test]
fn oversized_and_heavy_requests_are_answered_over_udp_tcp_and_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new("limits");
    let (cert, key) = (dir.path().join("srs.crt"), dir.path().join("srs.key"));
    std::fs::write(&cert, pem("CERTIFICATE", &pki.server_chain[0])).unwrap();
    std::fs::write(&key, pem("PRIVATE KEY", &pki.server_key_der)).unwrap();
    let tls_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (d, srs) = siprec_daemon(
        dir.path(),
        &format!(
            "tls_listen = \"{tls_addr}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            cert.display(),
            key.display()
        ),
    );

    // UDP: what fits a datagram.
    let udp = Udp::new(srs);
    for (id, m, code, reason, warning) in heavy_datagrams(&udp.via()) {
        let r = udp.ask(&m, &id);
        check(&r, &id, code, reason, &warning);
        if code == 400 {
            // Answered from what the request had: our Via first, not 1,000.
            assert!(r.matches("\r\nVia: ").count() <= 70, "{r}");
            assert!(r.len() < m.len() / 4, "no amplification: {}", r.len());
        }
    }
    // Too broken to address an answer (no Via): counted, dropped.
    let no_via = request("OPTIONS", "no-via", &udp.via(), 0, "", "", "")
        .replace(&format!("Via: {};branch=z9hG4bKno-via\r\n", udp.via()), "")
        .replace("Max-Forwards: 70\r\n", &"X-H: 1\r\n".repeat(300));
    udp.send(&no_via);
    wait_rejected(&d, "unanswerable", 1);

    // TCP: one connection takes all the heavy requests; each is answered and
    // the connection stays in step (an OPTIONS after them gets its 200).
    let mut c = tcp(srs);
    let via = c.via.clone();
    for (id, m, code, reason, warning) in heavy(&via).into_iter().chain(heavy_datagrams(&via)) {
        let r = c.ask(&m, &id);
        check(&r, &id, code, reason, &warning);
    }
    let r = c.ask(
        &request("OPTIONS", "still-in-step", &via, 0, "", "", ""),
        "still-in-step",
    );
    assert_eq!(status_of(&r), 200, "{r}");

    // An impossible Content-Length: answered 513, then the connection closes.
    let mut c = tcp(srs);
    let m = request(
        "INVITE",
        "two-gigabytes",
        &c.via.clone(),
        0,
        "",
        "application/sdp",
        "",
    )
    .replace("Content-Length: 0", "Content-Length: 2000000000");
    c.send(m.as_bytes());
    c.send(&vec![b'x'; 200_000]);
    let r = c.final_for("two-gigabytes");
    check(&r, "two-gigabytes", 513, "Message Too Large", "2000000");
    c.expect_closed();
    // A Content-Length that is not a number: the framing is lost, 400, closed.
    let mut c = tcp(srs);
    let m = request("OPTIONS", "bad-length", &c.via.clone(), 0, "", "", "")
        .replace("Content-Length: 0", "Content-Length: lots");
    let r = c.ask(&m, "bad-length");
    check(
        &r,
        "bad-length",
        400,
        "Bad Content-Length",
        "Content-Length",
    );
    c.expect_closed();

    // TLS: the same answers.
    let mut c = tls(tls_addr, &pki.ca_pem);
    let via = c.via.clone();
    for (id, m, code, reason, warning) in heavy(&via)
        .into_iter()
        .take(2)
        .chain(heavy_datagrams(&via).into_iter().take(1))
    {
        let r = c.ask(&m, &id);
        check(&r, &id, code, reason, &warning);
    }
    let mut c = tls(tls_addr, &pki.ca_pem);
    let m = request(
        "INVITE",
        "tls-two-gigabytes",
        &c.via.clone(),
        0,
        "",
        "application/sdp",
        "",
    )
    .replace("Content-Length: 0", "Content-Length: 2000000000");
    let r = c.ask(&m, "tls-two-gigabytes");
    check(&r, "tls-two-gigabytes", 513, "Message Too Large", "2000000");
    c.expect_closed();

    // Counted by reason.
    wait_rejected(&d, "too_large", 4 + 1 + 2 + 1);
    wait_rejected(&d, "too_many_vias", 3);
    wait_rejected(&d, "too_many_headers", 2);
    wait_rejected(&d, "sdp_limit", 2);
    wait_rejected(&d, "metadata_limit", 2);
    wait_rejected(&d, "bad_content_length", 1);
    // No call was taken for any of them. The engine sees each rejected
    // INVITE and then its final answer, and /status is a snapshot taken
    // every 200 ms: on a loaded machine it may still show the last one for
    // a moment, so wait for it to settle (20 s at most).
    let t = Instant::now();
    loop {
        let status: serde_json::Value = serde_json::from_str(&d.get("/status").unwrap().1).unwrap();
        if status["sources"]["siprec"]["active_calls"] == 0 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "a rejected request left a call: {status}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // ... and none left a recording.
    let recordings: Vec<_> = std::fs::read_dir(dir.path().join("spool"))
        .map(|r| r.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        !recordings
            .iter()
            .any(|n| n.to_string_lossy().ends_with(".wav")),
        "{recordings:?}"
    );
}

#[test]
fn answers_to_junk_are_rate_limited_per_source_and_good_requests_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let (d, srs) = siprec_daemon(dir.path(), "");
    let udp = Udp::new(srs);
    let pad: String = (0..300).map(|i| format!("X-{i}: v\r\n")).collect();
    let sent = 400;
    for i in 0..sent {
        let id = format!("junk-{i}");
        udp.send(&request("OPTIONS", &id, &udp.via(), 0, &pad, "", ""));
    }
    // Count the answers until they stop coming.
    let mut answered = 0;
    let mut b = vec![0u8; 65_536];
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_secs(3) {
        if let Ok(n) = udp.sock.recv(&mut b) {
            if b[..n].starts_with(b"SIP/2.0 400 Too Many Headers") {
                answered += 1;
            }
            quiet_since = Instant::now();
        }
    }
    assert!(answered >= 100, "the burst is answered: {answered}");
    assert!(
        answered < sent,
        "not every junk message is answered: {answered}"
    );
    // Every answer counted by its reason, the rest as rate-limited.
    wait_rejected(&d, "rate_limited", 1);
    wait_rejected(&d, "too_many_headers", answered as u64);
    // A request that parses is never held back.
    let r = udp.ask(
        &request("OPTIONS", "good", &udp.via(), 0, "", "", ""),
        "good",
    );
    assert_eq!(status_of(&r), 200, "{r}");
}

#[test]
fn idle_and_trickling_connections_are_closed_but_not_one_carrying_a_call() {
    let dir = tempfile::tempdir().unwrap();
    let (d, srs) = siprec_daemon(
        dir.path(),
        "tcp_idle_timeout = \"1s\"\ntcp_message_timeout = \"2s\"\n",
    );
    // A call over TCP: INVITE, 200, ACK; then quiet for longer than the idle
    // timeout; its BYE still comes over the same connection.
    let mut call = tcp(srs);
    let via = call.via.clone();
    let r = call.ask(
        &request("INVITE", "tcp-call", &via, 0, "", "application/sdp", &sdp()),
        "tcp-call",
    );
    assert_eq!(status_of(&r), 200, "{r}");
    let to = header(&r, "To").unwrap().to_string();
    call.send(
        format!(
            "ACK sip:srs@127.0.0.1 SIP/2.0\r\nVia: {via};branch=z9hG4bKack\r\nFrom: <sip:src@127.0.0.1>;tag=src-tcp-call\r\n\
             To: {to}\r\nCall-ID: tcp-call\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
        )
        .as_bytes(),
    );

    // An idle connection: closed.
    let mut idle = tcp(srs);
    idle.expect_closed();
    wait_rejected(&d, "tcp_idle", 1);

    // One that trickles a message a byte at a time: cut off.
    let mut slow = tcp(srs);
    slow.s
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let m = request("OPTIONS", "slow", &slow.via.clone(), 0, "", "", "");
    let t = Instant::now();
    let mut closed = false;
    for b in m.as_bytes().iter().cycle() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "a trickle kept its connection"
        );
        if slow.s.write_all(&[*b]).is_err() {
            closed = true;
            break;
        }
        let mut x = [0u8; 512];
        match slow.s.read(&mut x) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(_) => panic!("the trickled message was answered"),
            Err(_) => {} // timeout: keep trickling
        }
    }
    assert!(closed);
    wait_rejected(&d, "tcp_slow", 1);

    // The call's connection outlived the idle timeout many times over.
    let r = call.ask(
        &format!(
            "BYE sip:srs@127.0.0.1 SIP/2.0\r\nVia: {via};branch=z9hG4bKbye\r\nFrom: <sip:src@127.0.0.1>;tag=src-tcp-call\r\n\
             To: {to}\r\nCall-ID: tcp-call\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
        ),
        "tcp-call",
    );
    assert!(r.starts_with("SIP/2.0 200"), "{r}");
}
