//! Fuzz SIPREC: `parse_metadata` on arbitrary bytes, and the SIPREC body
//! split (`parts_to_siprec` / `siprec_parts`) + `assign_streams` +
//! `answer_sdp` on arbitrary multipart bodies. Input layout for the second
//! half: first line = boundary, the rest = the multipart body.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pbx_core::sip::message::parse_message;
use pbx_core::sip::multipart::split_multipart;
use pbx_core::sip::siprec::{
    answer_sdp, assign_streams, parse_metadata, parts_to_siprec, siprec_parts, MAX_PARTICIPANTS,
    MAX_STREAMS,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(rs) = parse_metadata(data) {
        assert!(rs.participants.len() <= MAX_PARTICIPANTS);
        assert!(rs.streams.len() <= MAX_STREAMS);
    }
    let (boundary, body) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let ct = format!(
        "multipart/mixed;boundary={}",
        String::from_utf8_lossy(boundary).trim()
    );
    if let Ok(parts) = split_multipart(&ct, body) {
        if let Ok((sdp, meta)) = parts_to_siprec(&parts) {
            if let Some(rs) = meta {
                if let Ok(a) = assign_streams(&sdp, &rs) {
                    assert!(a.iter().all(|x| x.m_line < sdp.media.len()));
                }
            }
            let ports: Vec<u16> = (0..sdp.media.len()).map(|i| 20000 + 2 * i as u16).collect();
            let crypto = vec![Some(("AES_CM_128_HMAC_SHA1_80", "a2V5")); sdp.media.len()];
            let ans = answer_sdp(&sdp, [127, 0, 0, 1].into(), &ports, &crypto, 1);
            assert!(pbx_core::sip::sdp::parse_sdp(&ans).is_ok());
        }
    }
    if let Ok(msg) = parse_message(data) {
        let _ = siprec_parts(&msg);
    }
});
