//! Fuzz RTP/RTCP classification and parsing, RFC 4733 events, and the
//! sequence/timestamp trackers fed from the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pbx_core::rtp::{
    event_to_digit, is_probably_rtp, is_rtcp, parse_rtp, parse_telephone_event, SeqTracker,
    SeqUpdate, TsUnwrapper,
};

fuzz_target!(|data: &[u8]| {
    let _ = is_rtcp(data);
    let _ = is_probably_rtp(data);
    if let Ok(p) = parse_rtp(data) {
        assert!(p.payload.len() + 12 <= data.len());
        let _ = p.csrcs().count();
        if let Ok(e) = parse_telephone_event(p.payload) {
            let _ = event_to_digit(e.event);
        }
    }
    let _ = parse_telephone_event(data);
    let mut seq = SeqTracker::new();
    let mut ts = TsUnwrapper::new();
    let mut fed = 0u64;
    for c in data.chunks_exact(6) {
        let before = seq.max_extended();
        let u = seq.update(u16::from_be_bytes([c[0], c[1]]));
        fed += 1;
        // Only a newest packet moves the highest extended number, and only up.
        let after = seq.max_extended();
        match (u, before) {
            (SeqUpdate::Newest, Some(b)) => assert!(after > Some(b)),
            (_, Some(_)) => assert_eq!(after, before),
            (_, None) => assert!(after.is_some()),
        }
        let _ = ts.unwrap(u32::from_be_bytes([c[2], c[3], c[4], c[5]]));
    }
    assert_eq!(seq.received() + seq.duplicates(), fed);
    let _ = seq.lost();
});
