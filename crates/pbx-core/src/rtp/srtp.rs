//! SRTP with SDES keys (RFC 4568 `a=crypto`, RFC 3711): each party's SDP
//! says the key it encrypts what it sends with; a stream is decrypted with
//! its sender's key (the webrtc-rs SRTP implementation: AES-CM with
//! HMAC-SHA1 80/32, rollover counter tracked per SSRC).
//!
//! In: a suite name and `inline:` key parameters, then SRTP packets. Out:
//! the plain RTP packet, or `None` when it does not authenticate (or its
//! header does not fit in it: the library panics on those, so they never
//! reach it). Used by the call engine for sniffed and imported calls and by
//! the SIPREC server's media sockets (which make their answer's own key:
//! the shell has the random source).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use webrtc_srtp::context::Context;
use webrtc_srtp::option::srtp_replay_protection;
use webrtc_srtp::protection_profile::ProtectionProfile;

/// Crypto suites we take, best first.
pub const SUITES: [&str; 2] = ["AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32"];

fn profile(suite: &str) -> Option<ProtectionProfile> {
    match suite {
        "AES_CM_128_HMAC_SHA1_80" => Some(ProtectionProfile::Aes128CmHmacSha1_80),
        "AES_CM_128_HMAC_SHA1_32" => Some(ProtectionProfile::Aes128CmHmacSha1_32),
        _ => None,
    }
}

/// Master key and salt from `inline:<base64>[|lifetime][|MKI:len]`.
pub fn parse_key_params(key_params: &str) -> Option<(Vec<u8>, Vec<u8>)> {
    let inline = key_params.trim().strip_prefix("inline:")?;
    mki_len(inline)?;
    let b64 = inline.split('|').next()?;
    let raw = STANDARD.decode(b64.trim()).ok()?;
    if raw.len() != 30 {
        return None;
    }
    Some((raw[..16].to_vec(), raw[16..].to_vec()))
}

/// Whether pbx-edge can decrypt with an `a=crypto` line of `suite` and
/// these key parameters.
pub fn usable(suite: &str, key_params: &str) -> bool {
    SUITES.contains(&suite) && parse_key_params(key_params).is_some()
}

/// The MKI's length in bytes (RFC 4568 6.1: `|<value>:<length>`, 1-128
/// bytes; 0 without one); None when malformed.
fn mki_len(inline: &str) -> Option<usize> {
    match inline.split('|').skip(1).find(|f| f.contains(':')) {
        None => Some(0),
        Some(f) => {
            let (value, len) = f.split_once(':')?;
            let len: usize = len.trim().parse().ok()?;
            (value.trim().parse::<u128>().is_ok() && (1..=128).contains(&len)).then_some(len)
        }
    }
}

/// Decrypts one SRTP stream.
pub struct SrtpStream {
    ctx: Context,
    /// Length of the authentication tag at the end of each packet.
    tag: usize,
    /// Length of the MKI before the tag (RFC 3711 3.1: not authenticated),
    /// 0 without one. A sender that announces one but does not send it
    /// is decrypted too.
    mki: usize,
    /// The last packet that decrypted carried the MKI: the next is tried
    /// that way first (one authentication a packet, not two).
    mki_sent: bool,
}

impl SrtpStream {
    /// For `suite` with the offered `key_params`; None if not usable.
    pub fn new(suite: &str, key_params: &str) -> Option<SrtpStream> {
        Self::with_replay_check(suite, key_params, true)
    }

    /// As [`SrtpStream::new`], without SRTP's own replay check: for captured
    /// traffic, where the call engine tells duplicates from retransmissions
    /// itself and counts them.
    pub fn for_capture(suite: &str, key_params: &str) -> Option<SrtpStream> {
        Self::with_replay_check(suite, key_params, false)
    }

    fn with_replay_check(suite: &str, key_params: &str, replay: bool) -> Option<SrtpStream> {
        let p = profile(suite)?;
        let (key, salt) = parse_key_params(key_params)?;
        let tag = match p {
            ProtectionProfile::Aes128CmHmacSha1_32 => 4,
            _ => 10,
        };
        let replay = replay.then(|| srtp_replay_protection(1024));
        let ctx = Context::new(&key, &salt, p, replay, None).ok()?;
        let mki = mki_len(key_params.trim().strip_prefix("inline:")?)?;
        Some(SrtpStream {
            ctx,
            tag,
            mki,
            mki_sent: true,
        })
    }

    /// The plain RTP packet, or None when authentication fails (or a replay)
    /// or the packet's RTP header does not fit in it (its CSRC list or
    /// header extension runs past the end: the SRTP library panics on those,
    /// so they never reach it).
    pub fn decrypt(&mut self, packet: &[u8]) -> Option<Vec<u8>> {
        if self.mki == 0 {
            return self.decrypt_plain(packet);
        }
        // Tried the way the last packet decrypted first, then the other.
        for with_mki in [self.mki_sent, !self.mki_sent] {
            let p = if with_mki {
                self.decrypt_without_mki(packet)
            } else {
                self.decrypt_plain(packet)
            };
            if p.is_some() {
                self.mki_sent = with_mki;
                return p;
            }
        }
        None
    }

    /// The MKI lies between the encrypted payload and the tag: the packet
    /// without it is what the tag authenticates.
    fn decrypt_without_mki(&mut self, packet: &[u8]) -> Option<Vec<u8>> {
        let cut = packet
            .len()
            .checked_sub(self.tag + self.mki)
            .filter(|c| *c >= 12)?;
        let mut without = Vec::with_capacity(packet.len() - self.mki);
        without.extend_from_slice(&packet[..cut]);
        without.extend_from_slice(&packet[cut + self.mki..]);
        self.decrypt_plain(&without)
    }

    fn decrypt_plain(&mut self, packet: &[u8]) -> Option<Vec<u8>> {
        let body = packet.get(..packet.len().checked_sub(self.tag)?)?;
        if !rtp_header_fits(body) {
            return None;
        }
        // The library has panicked on malformed packets before: one packet
        // must never take the media thread down.
        let ctx = &mut self.ctx;
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            ctx.decrypt_rtp(packet).ok().map(|b| b.to_vec())
        }))
        .ok()
        .flatten()
    }
}

/// Whether `p` holds a whole RTP header: version 2, the fixed 12 bytes,
/// the CSRC list and, when the X bit is set, the extension with the length
/// it states.
fn rtp_header_fits(p: &[u8]) -> bool {
    let Some(&first) = p.first() else {
        return false;
    };
    if p.len() < 12 || first >> 6 != 2 {
        return false;
    }
    let mut end = 12 + 4 * usize::from(first & 0x0f);
    if first & 0x10 != 0 {
        let Some(ext) = p.get(end..end + 4) else {
            return false;
        };
        let profile = u16::from_be_bytes([ext[0], ext[1]]);
        let start = end + 4;
        end = start + 4 * usize::from(u16::from_be_bytes([ext[2], ext[3]]));
        if p.len() < end || !extension_elements_fit(profile, p.get(start..end).unwrap_or(&[])) {
            return false;
        }
    }
    p.len() >= end
}

/// Whether the RFC 8285 elements of a one-byte (0xBEDE) or two-byte
/// (0x1000) header extension each end inside it, as the SRTP library's
/// header parser assumes (it panics past the end of the packet otherwise).
fn extension_elements_fit(profile: u16, ext: &[u8]) -> bool {
    let mut i = 0;
    while i < ext.len() {
        let b = ext[i];
        if b == 0 {
            i += 1;
            continue;
        }
        match profile {
            0xBEDE => {
                if b >> 4 == 15 {
                    return true;
                }
                i += 1 + usize::from(b & 0x0f) + 1;
            }
            0x1000 => {
                let Some(&len) = ext.get(i + 1) else {
                    return false;
                };
                i += 2 + usize::from(len);
            }
            _ => return true,
        }
    }
    i <= ext.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A master key + salt for a test (different each call).
    fn new_key() -> String {
        use std::sync::atomic::{AtomicU8, Ordering};
        static N: AtomicU8 = AtomicU8::new(1);
        let n = N.fetch_add(1, Ordering::Relaxed);
        STANDARD.encode(std::array::from_fn::<u8, 30, _>(|i| {
            n.wrapping_mul(31).wrapping_add(i as u8)
        }))
    }

    /// Found by the `srtp` fuzz target: a packet whose header extension
    /// (or CSRC list) runs past its end made the SRTP library panic
    /// ("advance out of bounds") in the media thread; now it is refused.
    #[test]
    fn a_header_longer_than_its_packet_is_refused_not_a_panic() {
        let key = new_key();
        let params = format!("inline:{key}");
        let mut s = SrtpStream::new("AES_CM_128_HMAC_SHA1_80", &params).unwrap();
        // X bit, extension of 0xffff words, 30 bytes of packet.
        let mut p = vec![
            0x90, 0, 0, 1, 0, 0, 0, 160, 0, 0, 0, 7, 0xbe, 0xde, 0xff, 0xff,
        ];
        p.extend_from_slice(&[0u8; 14]);
        assert_eq!(s.decrypt(&p), None);
        // 15 CSRCs announced in a 20-byte packet.
        let mut q = vec![0x8f, 0, 0, 2, 0, 0, 1, 64, 0, 0, 0, 7];
        q.extend_from_slice(&[0u8; 8]);
        assert_eq!(s.decrypt(&q), None);
        // The fuzzer's own input (params, then packets split at 0xff), in
        // the fuzz target's loop: the key is not usable, so the built-in one.
        let input = "DEAAEgAAAAAAAAAAJgwvKoUM/xAAAJAAegwMDAwMDBAAAAwMDLOzs7Ozs7Ozs7Ozs7Ozs7Ozs7OzDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMCgwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDACOhQz/DAwMEAAAkAAMDAwMekgMDAwMDAwMDAwMEAwgAAAAjgAAKgA=";
        let input = STANDARD.decode(input).unwrap();
        let cut = input.iter().position(|b| *b == 0).unwrap();
        let fuzz_key = "inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^20|1:4";
        for suite in ["AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32"] {
            let mut s = SrtpStream::new(suite, fuzz_key).unwrap();
            for found in input[cut + 1..].split(|b| *b == 0xff) {
                assert_eq!(s.decrypt(found), None);
            }
        }
        // The second one: the header fits the packet but not without its tag.
        let input = STANDARD.decode("CgwL+HQHAAAAAAAAAAAAAP+AowA4AAAAOgAnAAAAAP7/ALL/srIr7jJ4AQAAAAAAOwAAAAAAAAAoEAAAAQ0AADoAAAAAAACyeAEAAADDAAB4eHh4eHh4eHgAOngAAAAAALJ4AQAAAAAA//+AowA4AAAAAAAAAAAA//+AowBgNgAAAAAA//+AgwA3AAAACAAAw6MAIwAAAIoKjgAAAP4LfgoKDAv4dAAAAP+AowA4AAAAOgAAAAAA/v8Asv+ysisyeAEAAAAAADsAAAAAAAAAKBAAAAcNAAA6AAAAAAAAsngBAAAAwwACeHh4eHh4eHh4ADp4AAAAAACyeAEAAAAAAP//gKMAOAAAAAAAAAAAAP//gKMAYDYAAAAAAP//gIMANwAAAAgAAMOjACMAAACKCo4AAAD+C34KCg==").unwrap();
        let cut = input.iter().position(|b| *b == 0).unwrap();
        for suite in ["AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32"] {
            let mut s = SrtpStream::new(suite, fuzz_key).unwrap();
            for found in input[cut + 1..].split(|b| *b == 0xff) {
                assert_eq!(s.decrypt(found), None);
            }
        }
        // The third one: an RFC 8285 element longer than what is left of
        // the packet ("advance out of bounds: the len is 8 but advancing
        // by 13").
        let input = STANDARD.decode("CgwL+HQAAAD/gKMAOAAAADoAAAAAAP7/ALL/srIrMngBAAAAAAA7AAAAAAAAACgQAAAB+A0AADr4dAAAAP+AowA4AAAAOgAAAAAA/v8Asv+ysngAAAAAALJ4AQAAAAAA//+AowA4AAAAAAAAAAAAAAAA/v8Asv+ysisyeAEAAAAAADsAAAAAAAAAKBAAAAENAAA6AAAAAAAAsngBAAAAwwAAeHh4eHh4eHh4ADp4AAAAAACyeAEAAAAAAP+jCgr/CoAKCgoAAAAAAAAAAAD//4CjAGA2AAAAAAD//4CDADcAAAAIAADDowAgAAAAigqOAAAA/gt+Cgo=").unwrap();
        let cut = input.iter().position(|b| *b == 0).unwrap();
        for suite in ["AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32"] {
            let mut s = SrtpStream::new(suite, fuzz_key).unwrap();
            for found in input[cut + 1..].split(|b| *b == 0xff) {
                assert_eq!(s.decrypt(found), None);
            }
        }
        assert!(!rtp_header_fits(&[]));
        assert!(rtp_header_fits(&[0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1]));
        // One-byte extension (one word) whose element claims 16 bytes.
        let mut e = vec![0x90, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0xbe, 0xde, 0, 1];
        e.extend_from_slice(&[0x1f, 1, 2, 3]);
        assert!(!rtp_header_fits(&e));
        e[16] = 0x12; // id 1, 3 bytes: fits
        assert!(rtp_header_fits(&e));
        // Two-byte extension whose length byte is missing or too large.
        let mut t = vec![0x90, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0x10, 0, 0, 1];
        t.extend_from_slice(&[0, 0, 0, 7]);
        assert!(!rtp_header_fits(&t));
        t[16..20].copy_from_slice(&[5, 2, 9, 9]); // id 5, 2 bytes: fits
        assert!(rtp_header_fits(&t));
        t[17] = 3; // 3 bytes: one past the end
        assert!(!rtp_header_fits(&t));
    }

    /// A packet with a valid RFC 8285 one-byte header extension still
    /// decrypts (the element check refuses only what runs past the end).
    #[test]
    fn header_extensions_that_fit_still_decrypt() {
        let key = new_key();
        let params = format!("inline:{key}");
        let (k, s) = parse_key_params(&params).unwrap();
        let mut enc =
            Context::new(&k, &s, ProtectionProfile::Aes128CmHmacSha1_80, None, None).unwrap();
        let mut dec = SrtpStream::new("AES_CM_128_HMAC_SHA1_80", &params).unwrap();
        let mut rtp = vec![0x90, 0, 0, 1, 0, 0, 0, 160, 0, 0, 0x12, 0x34];
        // 0xBEDE, one word: element id 1 with 1 byte (audio level), padding.
        rtp.extend_from_slice(&[0xbe, 0xde, 0, 1, 0x10, 0x2a, 0, 0]);
        rtp.extend_from_slice(&[0x55; 160]);
        let cipher = enc.encrypt_rtp(&rtp).unwrap();
        assert_eq!(dec.decrypt(&cipher).unwrap(), rtp);
    }

    #[test]
    fn round_trip_with_webrtc_encryption() {
        let key = new_key();
        let params = format!("inline:{key}|2^20|1:4");
        let (k, s) = parse_key_params(&params).unwrap();
        let mut enc =
            Context::new(&k, &s, ProtectionProfile::Aes128CmHmacSha1_80, None, None).unwrap();
        let mut dec = SrtpStream::new("AES_CM_128_HMAC_SHA1_80", &params).unwrap();
        let mut rtp = vec![0x80, 0, 0, 1, 0, 0, 0, 160, 0, 0, 0x12, 0x34];
        rtp.extend_from_slice(&[0x55; 160]);
        let cipher = enc.encrypt_rtp(&rtp).unwrap();
        assert_ne!(&cipher[12..172], &rtp[12..]);
        assert_eq!(dec.decrypt(&cipher).unwrap(), rtp);
        // tampering fails authentication
        let mut bad = cipher.to_vec();
        bad[20] ^= 1;
        assert!(dec.decrypt(&bad).is_none());
    }

    /// A sender that puts the MKI its key announces (`|1:4`) in every
    /// packet, between the payload and the tag (RFC 3711 3.1): decrypted.
    /// Before, every packet failed to authenticate (the stream silent).
    #[test]
    fn packets_carrying_an_mki_are_decrypted() {
        let key = new_key();
        let params = format!("inline:{key}|2^31|1:4");
        let (k, s) = parse_key_params(&params).unwrap();
        let mut enc =
            Context::new(&k, &s, ProtectionProfile::Aes128CmHmacSha1_80, None, None).unwrap();
        let mut dec = SrtpStream::new("AES_CM_128_HMAC_SHA1_80", &params).unwrap();
        for seq in 1..4u8 {
            let mut rtp = vec![0x80, 0, 0, seq, 0, 0, 0, 160, 0, 0, 0x12, 0x34];
            rtp.extend_from_slice(&[0x55 + seq; 160]);
            let cipher = enc.encrypt_rtp(&rtp).unwrap();
            let tag_at = cipher.len() - 10;
            let mut with_mki = cipher[..tag_at].to_vec();
            with_mki.extend_from_slice(&[0, 0, 0, 1]);
            with_mki.extend_from_slice(&cipher[tag_at..]);
            assert_eq!(dec.decrypt(&with_mki).unwrap(), rtp);
        }
        // Without the MKI, then with it again: each decrypted.
        for (seq, mki) in [(4u8, false), (5, true), (6, false)] {
            let mut rtp = vec![0x80, 0, 0, seq, 0, 0, 0, 160, 0, 0, 0x12, 0x34];
            rtp.extend_from_slice(&[0x55 + seq; 160]);
            let cipher = enc.encrypt_rtp(&rtp).unwrap().to_vec();
            let sent = if mki {
                let tag_at = cipher.len() - 10;
                [&cipher[..tag_at], &[0, 0, 0, 1], &cipher[tag_at..]].concat()
            } else {
                cipher
            };
            assert_eq!(dec.decrypt(&sent).unwrap(), rtp, "seq {seq}");
        }
        assert!(parse_key_params(&format!("inline:{key}|2^31|1:0")).is_none());
        assert!(parse_key_params(&format!("inline:{key}|x:4")).is_none());
    }

    #[test]
    fn bad_keys_are_refused() {
        assert!(parse_key_params("inline:short").is_none());
        assert!(parse_key_params("nokey").is_none());
        assert!(SrtpStream::new("F8_128_HMAC_SHA1_80", &format!("inline:{}", new_key())).is_none());
    }
}
