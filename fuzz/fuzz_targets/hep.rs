//! HEP packets from capture agents (UDP datagrams, TCP streams): any bytes
//! give a packet or an error, never a panic; a packet's payload lies inside
//! the bytes; a v3 packet re-encoded parses to the same packet; the TCP
//! framer's length covers at least its header.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pbx_core::hep::{encode_v3, frame_len, parse};

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = parse(data) {
        assert!(p.payload.len() <= data.len());
        if p.version == 3 && p.src.is_ipv4() == p.dst.is_ipv4() {
            let again = encode_v3(&p);
            assert_eq!(parse(&again), Ok(p));
        }
    }
    if let Ok(Some(n)) = frame_len(data) {
        assert!(n >= 6);
    }
});
