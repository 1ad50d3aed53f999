//! SDES key parameters (`a=crypto` from an SDP) and SRTP packets from the
//! network: a key that is not usable is refused (never a panic), and
//! decrypting any bytes with any key never panics; a packet that does not
//! authenticate yields nothing (no noise is ever passed on as audio).
#![no_main]
use libfuzzer_sys::fuzz_target;
use pbx_edge::srtp::{parse_key_params, SrtpStream};

const KEY: &str = "inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^20|1:4";

fuzz_target!(|data: &[u8]| {
    let cut = data.iter().position(|b| *b == 0).unwrap_or(data.len());
    let params = String::from_utf8_lossy(&data[..cut]);
    if let Some((k, s)) = parse_key_params(&params) {
        assert_eq!((k.len(), s.len()), (16, 14));
    }
    let packets = data.get(cut + 1..).unwrap_or(&[]);
    for suite in ["AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32"] {
        for key in [params.as_ref(), KEY] {
            if let Some(mut s) = SrtpStream::new(suite, key) {
                for p in packets.split(|b| *b == 0xff) {
                    if let Some(plain) = s.decrypt(p) {
                        assert!(plain.len() < p.len());
                    }
                }
            }
        }
    }
});
