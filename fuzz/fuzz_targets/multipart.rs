//! A SIPREC body: first line the Content-Type, the rest the body. Splitting
//! never panics, stays within its limits, and every part's body is a
//! piece of the input.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pbx_core::sip::multipart::{boundary, split_multipart, MAX_PARTS, MAX_PART_HEADERS};

fuzz_target!(|data: &[u8]| {
    let cut = data.iter().position(|b| *b == b'\n').unwrap_or(data.len());
    let ct = String::from_utf8_lossy(&data[..cut]);
    let body = data.get(cut + 1..).unwrap_or(&[]);
    let _ = boundary(&ct);
    if let Ok(parts) = split_multipart(&ct, body) {
        assert!(!parts.is_empty() && parts.len() <= MAX_PARTS);
        let mut total = 0;
        for p in &parts {
            assert!(p.headers.len() <= MAX_PART_HEADERS);
            assert!(p.body.len() <= body.len());
            let _ = p.header("content-type");
            total += p.body.len();
        }
        assert!(total <= body.len());
    }
});
