//! Fuzz RTP/RTCP classification and parsing, RFC 4733 events, and the
//! sequence/timestamp trackers fed from the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pbx_core::rtp::{
    event_to_digit, is_probably_rtp, is_rtcp, parse_rtp, parse_telephone_event, SeqTracker,
    TsUnwrapper,
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
    for c in data.chunks_exact(6) {
        let ext = seq.update(u16::from_be_bytes([c[0], c[1]]));
        assert!(ext <= seq.max_extended().max(ext));
        let _ = ts.unwrap(u32::from_be_bytes([c[2], c[3], c[4], c[5]]));
    }
    let _ = (seq.lost(), seq.expected());
});
