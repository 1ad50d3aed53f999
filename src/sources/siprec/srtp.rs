//! SRTP for the SIPREC server: the decryption is pbx-core's
//! ([`pbx_core::rtp::srtp`], shared with sniffed and imported calls); the
//! shell adds the fresh key of our own that an SDES answer must carry (the
//! random source is the shell's), though we never send media.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

pub use pbx_core::rtp::srtp::{parse_key_params, usable, SrtpStream, SUITES};

/// A fresh base64 master key + salt (30 bytes) for our answer.
pub fn new_key() -> String {
    let mut k = [0u8; 30];
    // A failing system RNG leaves zeros; the key is never used to send media.
    let _ = getrandom::fill(&mut k);
    STANDARD.encode(k)
}
