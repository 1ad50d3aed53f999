//! Frames → one `NetDecoder`, so fragment and TCP reassembly state carries over
//! between frames. Input layout: the first byte picks the link type, the rest is
//! cut into frames: each frame is preceded by a 2-byte big-endian length (the
//! last one takes whatever is left) and followed by nothing. Timestamps advance
//! by a step taken from the length bytes so that timeouts fire too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pbx_core::capture::LinkType;
use pbx_core::net::{NetDecoder, NetLimits};
use pbx_core::Timestamp;

const LINKS: [LinkType; 9] = [
    LinkType::Ethernet,
    LinkType::LinuxSll,
    LinkType::LinuxSll2,
    LinkType::RawIp,
    LinkType::Ipv4,
    LinkType::Ipv6,
    LinkType::Null,
    LinkType::Loop,
    LinkType::Other(147),
];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, mut rest)) = data.split_first() else {
        return;
    };
    let link = LINKS[usize::from(sel) % LINKS.len()];
    // Small limits so eviction paths run on small inputs.
    let mut dec = NetDecoder::new(NetLimits {
        max_frag_sets: 4,
        max_frag_bytes: 8 * 1024,
        max_tcp_flows: 4,
        max_tcp_ooo_bytes: 512,
        max_tcp_ooo_total: 1024,
        ..NetLimits::default()
    });
    let mut ts = Timestamp::from_secs(1_700_000_000);
    let mut delivered = 0usize;
    let mut sink = |s: &pbx_core::net::Segment<'_>| {
        delivered += s.payload.len();
    };
    while !rest.is_empty() {
        let (frame, tail) = match rest {
            [a, b, tail @ ..] => {
                let n = usize::from(u16::from_be_bytes([*a, *b])).min(tail.len());
                ts = ts.add_micros(i64::from(*a) * 50_000);
                tail.split_at(n)
            }
            _ => (rest, &[][..]),
        };
        let _ = dec.decode(ts, link, frame, &mut sink);
        rest = tail;
    }
    dec.finish(&mut sink);
    assert_eq!(dec.tcp_buffered_bytes(), 0);
    assert_eq!(dec.tcp_flows(), 0);
    // Every delivered byte came from the input.
    assert!(delivered <= data.len());
});
