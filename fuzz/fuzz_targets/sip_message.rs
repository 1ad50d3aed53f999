//! Fuzz `parse_message` (rsip path and tolerant fallback) and `looks_like_sip`.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pbx_core::sip::message::{looks_like_sip, parse_message, parse_message_tolerant};

fuzz_target!(|data: &[u8]| {
    let _ = looks_like_sip(data);
    if let Ok(m) = parse_message(data) {
        let _ = m.header("call-id");
        let _ = m.media_type();
        assert!(m.headers.len() <= pbx_core::sip::message::MAX_HEADERS);
        assert!(m.body.len() <= data.len());
    }
    let _ = parse_message_tolerant(data);
});
