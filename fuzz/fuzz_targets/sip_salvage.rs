//! Any bytes as a SIP request that `parse_message` may refuse (too large,
//! too many headers or Vias, a malformed field): `salvage_request` never
//! panics and keeps only bounded values, and the refusal built for the error
//! is a valid 4xx/5xx with a Warning text that cannot break the header.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pbx_core::sip::limits::Refusal;
use pbx_core::sip::message::{parse_message, salvage_request, MAX_SALVAGED_VALUE, MAX_VIAS};

fuzz_target!(|data: &[u8]| {
    if let Err(e) = parse_message(data) {
        if let Some(r) = Refusal::for_sip_error(&e) {
            assert!((400..600).contains(&r.code));
            let w = r.warning_value();
            let inner = &w["399 pbx-edge \"".len()..w.len() - 1];
            assert!(!inner.contains('"') && !inner.contains('\\'), "{w:?}");
            assert!(
                w.bytes().all(|b| b == b' ' || b.is_ascii_graphic()),
                "{w:?}"
            );
        }
    }
    if let Some(m) = salvage_request(data) {
        let vias = m
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("via"))
            .count();
        assert!(vias <= MAX_VIAS);
        assert!(m.headers.iter().all(|(_, v)| v.len() <= MAX_SALVAGED_VALUE));
        assert!(m.body.is_empty());
        assert!(m.header("call-id").is_some());
    }
});
