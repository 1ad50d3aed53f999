use super::conn::MAX_UNWRITTEN;
use super::*;
use crate::sources::siprec::media::{BatchSink, DatagramBatch, MediaCounters, MediaReceiver};
use crate::sources::siprec::ports::PortPool;

/// Drops what it is given (no datagram is sent in these tests).
struct Nowhere;
impl BatchSink for Nowhere {
    fn deliver(&mut self, _: DatagramBatch) -> bool {
        true
    }
}

/// An SDP offer with one PCMU line per entry, on that port (0: removed).
fn offer(lines: &[u16]) -> SessionDescription {
    let mut t =
        String::from("v=0\r\no=src 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n");
    for (i, p) in lines.iter().enumerate() {
        t.push_str(&format!(
            "m=audio {p} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=label:{i}\r\na=sendonly\r\n"
        ));
    }
    pbx_core::sip::sdp::parse_sdp(&t).expect("offer parses")
}

fn session() -> Session {
    Session {
        ports: Vec::new(),
        last_rtp: Arc::default(),
        version: 1,
        line_ports: Vec::new(),
        line_keys: Vec::new(),
        peer: "127.0.0.1:5060".parse().unwrap(),
        sdp: String::new(),
        held: false,
    }
}

/// Re-offers that remove a stream, are refused, or find the pool used up
/// leave no port behind: every port is the session's or back in the pool
/// (before, a removed stream kept its port for the call's life, and a
/// refused re-offer or one short of ports left ports open that the next
/// offer did not reuse).
#[test]
fn re_offers_leave_no_port_behind() {
    let (media, _recycler) =
        MediaReceiver::start(Nowhere, Arc::new(MediaCounters::default())).expect("media thread");
    // 10 even ports, from a range nothing else here uses.
    let base = 40_000 + (std::process::id() % 1000) as u16 * 20;
    let pool = Arc::new(std::sync::Mutex::new(PortPool::new(base..=base + 19)));
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    let mut rtp = RtpPorts::new(pool.clone(), media.control(), ip, Instant::now());
    let free = || pool.lock().unwrap().available();
    let peer: SocketAddr = "127.0.0.1:5060".parse().unwrap();
    let mut s = session();

    assert!(answer_for(&offer(&[7000, 7002]), &mut s, &mut rtp, ip, peer).is_ok());
    assert_eq!((s.ports.len(), free()), (2, 8));
    let first = s.line_ports.clone();
    // The second stream removed: its port goes back.
    assert!(answer_for(&offer(&[7000, 0]), &mut s, &mut rtp, ip, peer).is_ok());
    assert_eq!((s.ports.len(), free()), (1, 9));
    assert_eq!(s.line_ports, vec![first[0], 0]);
    // Nothing usable: refused, the session as it was.
    assert_eq!(
        answer_for(&offer(&[0, 0]), &mut s, &mut rtp, ip, peer),
        Err(NoAnswer::NotAcceptable)
    );
    assert_eq!((s.ports.len(), free()), (1, 9));
    assert_eq!(s.line_ports, vec![first[0], 0]);
    // Back, on a fresh port; the kept line keeps its port.
    assert!(answer_for(&offer(&[7000, 7002]), &mut s, &mut rtp, ip, peer).is_ok());
    assert_eq!((s.ports.len(), free()), (2, 8));
    assert_eq!(s.line_ports[0], first[0]);
    // Short of ports (another call holds 7 of the 8 left): refused 503,
    // what it opened closed again.
    let mut other = session();
    let seven = [1u16; 7].map(|_| 7100);
    assert!(answer_for(&offer(&seven), &mut other, &mut rtp, ip, peer).is_ok());
    assert_eq!(free(), 1);
    let before = s.line_ports.clone();
    assert_eq!(
        answer_for(
            &offer(&[7000, 7002, 7004, 7006]),
            &mut s,
            &mut rtp,
            ip,
            peer
        ),
        Err(NoAnswer::NoPorts)
    );
    assert_eq!((s.ports.len(), free()), (2, 1));
    assert_eq!(s.line_ports, before);
    release(other, &mut rtp);
    release(s, &mut rtp);
    assert_eq!(free(), 10);
}

/// One connection's tasks over an in-memory stream of `buf` bytes each way:
/// its writer, the far end, and what the SIP task hears.
fn connection(buf: usize) -> (ConnWriter, tokio::io::DuplexStream, mpsc::Receiver<SipIn>) {
    let (ours, theirs) = tokio::io::duplex(buf);
    let (tx, rx) = mpsc::channel(16);
    let peer: SocketAddr = "192.0.2.7:5061".parse().unwrap();
    let conn = ConnConfig {
        idle_timeout: Duration::from_secs(60),
        message_timeout: Duration::from_secs(60),
        counters: Arc::default(),
        busy: BusyPeers::default(),
    };
    let slot = ConnLimits::default().acquire(peer.ip()).unwrap();
    let (writer, reader) = stream_tasks(ours, peer, uas::Transport::Tcp, tx, conn, slot);
    tokio::spawn(reader);
    (writer, theirs, rx)
}

/// A burst to a peer that reads (the BYEs of 300 calls at a stop) is
/// written whole and in order (before, a queue of 64 messages dropped what
/// did not fit).
#[tokio::test]
async fn a_burst_to_a_peer_that_reads_is_written_whole() {
    use tokio::io::AsyncReadExt;
    let (writer, mut theirs, _rx) = connection(4096);
    let msg = |i: usize| format!("BYE sip:{i:05}@x SIP/2.0\r\n{}\r\n\r\n", "v".repeat(560));
    let mut want = Vec::new();
    for i in 0..300 {
        assert!(writer.send(msg(i).into_bytes()));
        want.extend_from_slice(msg(i).as_bytes());
    }
    let mut got = vec![0u8; want.len()];
    tokio::time::timeout(Duration::from_secs(10), theirs.read_exact(&mut got))
        .await
        .expect("all written")
        .unwrap();
    assert!(got == want, "every message, in order");
}

/// A peer that does not read: once a MiB waits for it, the connection is
/// closed as a whole (its reader too: the SIP task hears it closed, the
/// peer must open a new one), not left open with answers going nowhere.
#[tokio::test]
async fn a_peer_that_does_not_read_has_its_connection_closed() {
    let (writer, _theirs, mut rx) = connection(4096);
    let msg = vec![b'x'; 1000];
    let sent = (0..2 * MAX_UNWRITTEN / 1000)
        .take_while(|_| writer.send(msg.clone()))
        .count();
    assert!(
        (MAX_UNWRITTEN / 1000..MAX_UNWRITTEN / 1000 + 10).contains(&sent),
        "{sent} messages queued"
    );
    let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("the reader ends")
        .expect("an event");
    assert!(matches!(
        ev,
        SipIn::Conn {
            ev: ConnEvent::Closed,
            ..
        }
    ));
    assert!(!writer.send(msg), "nothing more is taken");
}

/// An IPv4 SRC reaching a dual-stack listener (`[::]`) is seen as
/// `::ffff:a.b.c.d`; the media address offered to it is the IPv4 one (it
/// was `c=IN IP6 ::ffff:127.0.0.1`, which IPv4-only SBCs refuse).
#[test]
fn a_v4_peer_of_a_dual_stack_listener_gets_a_v4_media_address() {
    if std::net::UdpSocket::bind("[::]:0").is_err() {
        return; // no IPv6 on this machine
    }
    let peer: SocketAddr = "[::ffff:127.0.0.1]:5060".parse().unwrap();
    assert_eq!(
        media_ip("::".parse().unwrap(), peer),
        "127.0.0.1".parse::<IpAddr>().unwrap()
    );
    assert_eq!(
        media_ip("::ffff:127.0.0.1".parse().unwrap(), peer),
        "127.0.0.1".parse::<IpAddr>().unwrap()
    );
}

/// A call answered and hung up without audio still says what the INVITE
/// told: the PBX's ids from its headers, and the rate the recording would
/// have had (`auto`: 16000 for a stream answered with G.722; a fixed
/// `recording.sample_rate` as set). Before, its recording had only
/// `recorded_call_id` and was 8000 Hz whatever the codec.
#[test]
fn a_call_without_audio_keeps_the_invites_ids_and_rate() {
    use crate::recording::{RecordingContext, RecordingDir, RoleRules};
    use pbx_core::call::SampleRatePolicy;
    let sdp = |codec: &str| {
        format!(
            "v=0\r\no=x 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
             m=audio 4000 RTP/AVP {codec}\r\na=label:1\r\na=sendonly\r\n\
             m=audio 4002 RTP/AVP {codec}\r\na=label:2\r\na=sendonly\r\n"
        )
    };
    let invite = |codec: &str| {
        let body = sdp(codec);
        pbx_core::sip::parse_message(
            format!(
                "INVITE sip:srs@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\n\
                 From: <sip:src@127.0.0.1>;tag=src\r\nTo: <sip:srs@127.0.0.1>\r\n\
                 Call-ID: g@src\r\nCSeq: 1 INVITE\r\nCisco-Guid: 1234567890-0987654321-1111111111-2222222222\r\n\
                 Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .unwrap()
    };
    let dialog = DialogId {
        call_id: "g@src".into(),
        local_tag: "srs".into(),
        remote_tag: "src".into(),
    };
    let at = Timestamp::parse_rfc3339("2026-12-03T10:00:00.000Z").unwrap();
    let answer = |codec: &str| sdp(codec).replace("sendonly", "recvonly");
    let rate = |codec: &str, policy| {
        answered_call(&dialog, &invite(codec), &answer(codec), policy, at, at).sample_rate
    };
    assert_eq!(rate("9", SampleRatePolicy::Auto), Some(16000));
    assert_eq!(rate("0", SampleRatePolicy::Auto), Some(8000));
    assert_eq!(rate("9", SampleRatePolicy::Fixed(8000)), Some(8000));
    assert_eq!(rate("0", SampleRatePolicy::Fixed(16000)), Some(16000));

    let call = answered_call(
        &dialog,
        &invite("9"),
        &answer("9"),
        SampleRatePolicy::Auto,
        at,
        at,
    );
    let d = tempfile::tempdir().unwrap();
    let ctx = RecordingContext {
        agent_id: "agent-a".into(),
        source: "siprec",
        min_duration: Duration::ZERO,
        seal: None,
        tap: None,
        roles: RoleRules::default(),
    };
    let mut out = RecordingDir::new(d.path(), ctx).unwrap();
    let id = out.answered_calls().answered(&call).unwrap();
    assert!(out.end_answered("g@src", "bye", at.add_micros(20_000_000)));
    let j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.path().join(format!("{id}.json"))).unwrap())
            .unwrap();
    assert_eq!(
        j["ids"]["cisco_guid"], "1234567890-0987654321-1111111111-2222222222",
        "{j}"
    );
    assert_eq!(j["audio"]["sample_rate"], 16000, "{j}");
    let wav = std::fs::read(d.path().join(format!("{id}.wav"))).unwrap();
    let info = pbx_core::audio::wav::parse_wav_header(&wav).unwrap();
    assert_eq!((info.channels, info.sample_rate), (2, 16000));
}
