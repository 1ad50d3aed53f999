//! Fuzz `parse_sdp` and the per-media helpers.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pbx_core::sip::sdp::parse_sdp;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(s) = parse_sdp(&text) {
        for m in &s.media {
            let _ = m.effective_direction(&s);
            let _ = m.effective_connection(&s);
            let _ = m.is_on_hold(&s);
            for pt in &m.formats {
                assert!(*pt <= 127);
                let _ = m.codec(*pt);
            }
        }
    }
});
