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
        peer: "127.0.0.1:5060".parse().unwrap(),
        sdp: String::new(),
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
