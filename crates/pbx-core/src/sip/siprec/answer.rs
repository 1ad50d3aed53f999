//! The SRS's SDP answer.
//!
//! In: the SDP offer. Out: the answer text: `a=recvonly` (or `inactive`
//! for held streams), one codec per stream from the codecs the recorder
//! decodes, labels kept, SDES crypto echoed with a fresh key, refused
//! m-lines answered with port 0. Promises: deterministic for a given offer
//! and seed.

use std::fmt::Write as _;

use super::*;
use crate::audio::codec::Codec;

/// The SRS's SDP answer to `offer` (RFC 3264, RFC 7866 §7.1.1):
///
/// - m-line *i* is answered on `ports[i]` with `a=recvonly` (`a=inactive`
///   when the offer will not send on it: inactive or recvonly) and the first
///   codec of the offer's list that the recorder decodes (PCMU, PCMA, G722,
///   opus, GSM, L16 at 8/16 kHz), plus the offered telephone-event (same clock rate preferred);
///   `a=label` is kept.
/// - `m=<media> 0` (rejected) for an m-line that is not audio, has no
///   supported codec, was itself rejected, has no port given (missing or 0
///   in `ports`), or is SRTP without a usable key.
/// - SDES (RFC 4568): `crypto[i] = Some((suite, key))` answers with the
///   offered `a=crypto` line of that suite (same tag) and the caller's fresh
///   key (`inline:<key>`, with or without the `inline:` prefix given). An
///   `RTP/SAVP(F)` m-line without such a pair is rejected; an `RTP/AVP`
///   line with optional crypto lines is answered in the clear when no pair
///   is given.
///
/// `o=` uses a sess-id derived from the offer's (stable across re-INVITEs
/// of the same call) and `session_version`, which the caller increments for
/// every new answer in the dialog.
pub fn answer_sdp(
    offer: &SessionDescription,
    local_ip: IpAddr,
    ports: &[u16],
    crypto: &[Option<(&str, &str)>],
    session_version: u64,
) -> String {
    let ip_kind = if local_ip.is_ipv6() { "IP6" } else { "IP4" };
    let sess_id = fnv1a(offer.origin_session.as_deref().unwrap_or("pbx-edge")) >> 1;
    let mut s = String::new();
    let _ = write!(
        s,
        "v=0\r\no=pbx-edge {sess_id} {session_version} IN {ip_kind} {local_ip}\r\ns=pbx-edge\r\nc=IN {ip_kind} {local_ip}\r\nt=0 0\r\n"
    );
    for (i, m) in offer.media.iter().enumerate() {
        let port = ports.get(i).copied().unwrap_or(0);
        let crypto_in = crypto.get(i).copied().flatten();
        // RFC 3264 6.1: a stream the SRC will not send on (hold with
        // a=inactive, or recvonly) is answered inactive, else recvonly.
        let receives = matches!(
            m.effective_direction(offer),
            Direction::SendRecv | Direction::SendOnly
        );
        match answer_media(m, port, crypto_in, receives) {
            Some(text) => s.push_str(&text),
            None => s.push_str(&rejected_media(m)),
        }
    }
    s
}

/// Whether an SRC's offer sends no audio at all: every audio m-line not
/// rejected is inactive or recvonly (or `c=0.0.0.0`), and there is one. A
/// paused recording session (RFC 7866 §7.1.1.2: the SRC puts its streams
/// inactive while it pauses, for a card number or a hold) is silent by
/// design, not a media failure: no media timeout ends it.
pub fn offer_sends_nothing(offer: &SessionDescription) -> bool {
    let mut audio = offer
        .media
        .iter()
        .filter(|m| m.media.eq_ignore_ascii_case("audio") && !m.is_rejected())
        .peekable();
    audio.peek().is_some()
        && audio.all(|m| {
            matches!(
                m.effective_direction(offer),
                Direction::Inactive | Direction::RecvOnly
            )
        })
}

/// The first codec of `m`'s offer list that the recorder decodes, if any: a
/// line without one is rejected in the answer (and gets no RTP port).
pub fn decodable_codec(m: &MediaDescription) -> Option<RtpMap> {
    m.formats.iter().find_map(|pt| {
        let map = m.codec(*pt)?;
        Codec::from_rtpmap(&map.encoding, map.clock_rate, map.channels)
            .is_decodable()
            .then_some(map)
    })
}

pub(super) fn answer_media(
    m: &MediaDescription,
    port: u16,
    crypto: Option<(&str, &str)>,
    receives: bool,
) -> Option<String> {
    if port == 0 || m.is_rejected() || !m.media.eq_ignore_ascii_case("audio") {
        return None;
    }
    if !m.proto.to_ascii_uppercase().starts_with("RTP/") {
        return None;
    }
    let codec = decodable_codec(m)?;
    let te = m
        .rtpmaps
        .iter()
        .filter(|r| r.is("telephone-event") && m.formats.contains(&r.pt))
        .min_by_key(|r| u8::from(r.clock_rate != codec.clock_rate));
    // SDES: answer the offered line of the caller's suite with its key.
    // RTP/SAVP(F) without a usable key is refused; RTP/AVP with optional
    // a=crypto lines (best-effort SRTP) may also be answered in the clear.
    let offered = crypto.and_then(|(suite, key)| {
        let c = m
            .crypto
            .iter()
            .find(|c| c.suite.eq_ignore_ascii_case(suite))?;
        Some((c, key.strip_prefix("inline:").unwrap_or(key)))
    });
    let crypto_line = offered
        .filter(|(_, key)| !key.trim().is_empty())
        .map(|(c, key)| format!("a=crypto:{} {} inline:{}\r\n", c.tag, c.suite, key.trim()));
    if m.proto.to_ascii_uppercase().contains("SAVP") && crypto_line.is_none() {
        return None;
    }
    let mut s = String::new();
    let _ = write!(s, "m=audio {port} {} {}", m.proto, codec.pt);
    if let Some(te) = te {
        let _ = write!(s, " {}", te.pt);
    }
    s.push_str("\r\n");
    let _ = write!(
        s,
        "a=rtpmap:{} {}/{}",
        codec.pt, codec.encoding, codec.clock_rate
    );
    if let Some(ch) = codec.channels {
        let _ = write!(s, "/{ch}");
    } else if codec.is("opus") {
        s.push_str("/2");
    }
    s.push_str("\r\n");
    if let Some(f) = m.fmtp(codec.pt) {
        let _ = write!(s, "a=fmtp:{} {}\r\n", codec.pt, f);
    }
    if let Some(te) = te {
        let _ = write!(
            s,
            "a=rtpmap:{} telephone-event/{}\r\n",
            te.pt, te.clock_rate
        );
        if let Some(f) = m.fmtp(te.pt) {
            let _ = write!(s, "a=fmtp:{} {}\r\n", te.pt, f);
        }
    }
    if let Some(l) = &m.label {
        let _ = write!(s, "a=label:{l}\r\n");
    }
    if let Some(c) = crypto_line {
        s.push_str(&c);
    }
    s.push_str(if receives {
        "a=recvonly\r\n"
    } else {
        "a=inactive\r\n"
    });
    Some(s)
}

pub(super) fn rejected_media(m: &MediaDescription) -> String {
    let fmt = match m.formats.first() {
        Some(pt) => pt.to_string(),
        None if m.proto.eq_ignore_ascii_case("udptl") => "t38".to_string(),
        None => "0".to_string(),
    };
    let media = if m.media.is_empty() {
        "audio"
    } else {
        &m.media
    };
    let proto = if m.proto.is_empty() {
        "RTP/AVP"
    } else {
        &m.proto
    };
    let mut s = format!("m={media} 0 {proto} {fmt}\r\n");
    if let Some(l) = &m.label {
        let _ = write!(s, "a=label:{l}\r\n");
    }
    s
}

pub(super) fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
