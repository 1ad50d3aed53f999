//! A hostile mix of datagrams offered to one SIPREC stream's admission:
//! never panics; every datagram is admitted, rejected (counted) or still
//! held, none twice; nothing from a host other than the SRC's signalling
//! host or its announced address is ever admitted.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pbx_core::time::Timestamp;
use pbx_edge::admission::{Admission, RejectCounts, StreamOrigin};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

const HOSTS: [IpAddr; 4] = [
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9)),
    IpAddr::V4(Ipv4Addr::UNSPECIFIED),
];

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let origin = StreamOrigin {
        announced_ip: (data[0] & 4 != 0).then_some(HOSTS[(data[0] & 3) as usize]),
        announced_port: if data[0] & 8 != 0 { 4000 } else { 9 },
        signalling: HOSTS[0],
    };
    let mut adm = if data[1] % 8 == 0 {
        Admission::retired()
    } else {
        Admission::new(origin)
    };
    let allowed = |a: SocketAddr| a.ip() == HOSTS[0] || Some(a.ip()) == origin.announced_ip;
    let mut rejected = RejectCounts::default();
    let mut offered = 0u64;
    let mut admitted = 0u64;
    let mut ts = 0i64;
    // Records: [host/port byte, time step, length, bytes...].
    let mut rest = &data[2..];
    while rest.len() >= 3 {
        let (h, step, len) = (rest[0], rest[1], rest[2] as usize);
        let body = &rest[3..3 + len.min(rest.len() - 3)];
        rest = &rest[3 + body.len()..];
        let src = SocketAddr::new(HOSTS[(h & 3) as usize], 4000 + u16::from((h >> 2) & 3));
        ts += i64::from(step) * 1000;
        offered += 1;
        adm.offer(
            Timestamp::from_micros(ts),
            src,
            body,
            &mut rejected,
            &mut |_, from, _| {
                assert!(allowed(from), "admitted from {from}");
                admitted += 1;
            },
        );
        assert_eq!(admitted + rejected.total() + adm.held() as u64, offered);
    }
});
