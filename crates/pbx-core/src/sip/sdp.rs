//! SDP (RFC 4566 / RFC 8866) for the call engine: the text of one session
//! description in, a [`SessionDescription`] out with what a recorder needs per
//! media stream: where media goes (port, connection address), which payload
//! types mean which codec (rtpmap, fmtp, static RFC 3551 types), which way it
//! flows (direction, RFC 2543 hold), SIPREC labels and SDES crypto lines.
//!
//! Tolerant where devices differ: CRLF or LF line ends, trailing spaces,
//! unknown or malformed lines we do not need are ignored, `m=audio 0` is a
//! rejected stream (kept, see [`MediaDescription::is_rejected`]), a TTL or
//! address count after the connection address (`c=IN IP4 224.2.1.1/127`) is
//! dropped, non-IP connection addresses (FQDNs) read as `None`.
//!
//! Strict where it matters: media ports must be numbers that fit 16 bits,
//! RTP payload types in `m=` and `a=rtpmap` must be 0..=127 and rtpmap clock
//! rates numbers; otherwise the whole SDP is refused with an [`SdpError`]
//! rather than giving the engine a codec table it would misread.
//!
//! Bounded: at most [`MAX_SDP_LEN`] bytes of text and [`MAX_MEDIA`] media
//! sections; never panics.

use std::net::IpAddr;

/// Largest SDP accepted, in bytes.
pub const MAX_SDP_LEN: usize = 64 * 1024;
/// Most `m=` sections accepted.
pub const MAX_MEDIA: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SdpError {
    #[error("SDP of {0} bytes exceeds the {MAX_SDP_LEN}-byte limit")]
    TooLarge(usize),
    #[error("not an SDP (no v= or m= line)")]
    NotSdp,
    #[error("more than {MAX_MEDIA} media sections")]
    TooManyMedia,
    #[error("line {line}: malformed m= line: {reason}")]
    BadMedia { line: usize, reason: &'static str },
    #[error("line {line}: malformed a=rtpmap: {reason}")]
    BadRtpmap { line: usize, reason: &'static str },
}

/// Media direction attribute (RFC 3264 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    fn from_attr(name: &str) -> Option<Direction> {
        match name.to_ascii_lowercase().as_str() {
            "sendrecv" => Some(Direction::SendRecv),
            "sendonly" => Some(Direction::SendOnly),
            "recvonly" => Some(Direction::RecvOnly),
            "inactive" => Some(Direction::Inactive),
            _ => None,
        }
    }

    /// Does the SDP's author send media?
    pub fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }

    /// Does the SDP's author want to receive media?
    pub fn receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }
}

/// `a=rtpmap:<pt> <encoding>/<clock>[/<channels>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpMap {
    pub pt: u8,
    /// Encoding name as written (compare with [`RtpMap::is`]).
    pub encoding: String,
    /// The RTP clock rate as declared (G.722 says 8000, Opus 48000).
    pub clock_rate: u32,
    pub channels: Option<u8>,
}

impl RtpMap {
    /// Case-insensitive encoding-name check: `map.is("telephone-event")`.
    pub fn is(&self, encoding: &str) -> bool {
        self.encoding.eq_ignore_ascii_case(encoding)
    }
}

/// The static payload types of RFC 3551 §6 that carry audio (plus CN), as
/// an rtpmap would state them.
pub fn static_rtpmap(pt: u8) -> Option<RtpMap> {
    let (encoding, clock_rate) = match pt {
        0 => ("PCMU", 8000),
        3 => ("GSM", 8000),
        4 => ("G723", 8000),
        5 => ("DVI4", 8000),
        6 => ("DVI4", 16000),
        7 => ("LPC", 8000),
        8 => ("PCMA", 8000),
        9 => ("G722", 8000),
        10 => ("L16", 44100),
        11 => ("L16", 44100),
        12 => ("QCELP", 8000),
        13 => ("CN", 8000),
        14 => ("MPA", 90000),
        15 => ("G728", 8000),
        16 => ("DVI4", 11025),
        17 => ("DVI4", 22050),
        18 => ("G729", 8000),
        _ => return None,
    };
    Some(RtpMap {
        pt,
        encoding: encoding.to_string(),
        clock_rate,
        channels: if pt == 10 { Some(2) } else { None },
    })
}

/// `a=crypto:<tag> <suite> <key-params> [<session-params>]` (RFC 4568).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crypto {
    pub tag: u32,
    pub suite: String,
    /// e.g. `inline:base64key|2^20|1:32` (several key params stay joined by `;`).
    pub key_params: String,
    pub session_params: Vec<String>,
}

/// One `m=` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaDescription {
    /// `audio`, `video`, `image`, ...
    pub media: String,
    /// 0 = rejected / disabled stream.
    pub port: u16,
    /// `m=audio 49170/2 ...` → 2; 1 when absent.
    pub port_count: u16,
    /// `RTP/AVP`, `RTP/SAVP`, `udptl`, ...
    pub proto: String,
    /// Payload types in preference order; non-numeric formats (`t38`, `*`)
    /// are skipped.
    pub formats: Vec<u8>,
    /// Media-level `c=` address.
    pub connection: Option<IpAddr>,
    pub rtpmaps: Vec<RtpMap>,
    pub fmtp: Vec<(u8, String)>,
    /// Media-level direction attribute, `None` if absent.
    pub direction: Option<Direction>,
    /// `a=label:` (RFC 4574; SIPREC ties streams to metadata with it).
    pub label: Option<String>,
    pub crypto: Vec<Crypto>,
    pub rtcp_mux: bool,
    pub ptime: Option<u32>,
    /// Every media-level attribute in order (`a=name` or `a=name:value`),
    /// including the ones decoded above.
    pub attributes: Vec<(String, Option<String>)>,
}

/// One session description.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SessionDescription {
    /// `o=` sess-id.
    pub origin_session: Option<String>,
    /// `o=` sess-version (changes when the offer changes).
    pub origin_version: Option<u64>,
    pub origin_addr: Option<IpAddr>,
    /// Session-level `c=` address.
    pub connection: Option<IpAddr>,
    /// Session-level direction attribute.
    pub direction: Option<Direction>,
    pub media: Vec<MediaDescription>,
    /// `s=` line.
    pub session_name: Option<String>,
    /// Session-level attributes in order.
    pub attributes: Vec<(String, Option<String>)>,
}

impl MediaDescription {
    /// Media `c=` else session `c=`.
    pub fn effective_connection<'a>(&'a self, session: &'a SessionDescription) -> Option<IpAddr> {
        self.connection.or(session.connection)
    }

    /// Media attribute, else session attribute, else `SendRecv`. A rejected
    /// stream (port 0) and an unspecified connection address (`c=0.0.0.0` or
    /// `::`, RFC 2543-style hold) read as `Inactive`.
    pub fn effective_direction(&self, session: &SessionDescription) -> Direction {
        if self.is_rejected() {
            return Direction::Inactive;
        }
        if self
            .effective_connection(session)
            .is_some_and(|ip| ip.is_unspecified())
        {
            return Direction::Inactive;
        }
        self.direction
            .or(session.direction)
            .unwrap_or(Direction::SendRecv)
    }

    /// The explicit `a=rtpmap` for a payload type.
    pub fn rtpmap(&self, pt: u8) -> Option<&RtpMap> {
        self.rtpmaps.iter().find(|m| m.pt == pt)
    }

    /// The codec for a payload type: the explicit rtpmap, else the static
    /// RFC 3551 assignment.
    pub fn codec(&self, pt: u8) -> Option<RtpMap> {
        self.rtpmap(pt).cloned().or_else(|| static_rtpmap(pt))
    }

    /// `a=fmtp` parameters for a payload type.
    pub fn fmtp(&self, pt: u8) -> Option<&str> {
        self.fmtp
            .iter()
            .find(|(p, _)| *p == pt)
            .map(|(_, s)| s.as_str())
    }

    /// First payload type whose rtpmap is `telephone-event` (RFC 4733).
    pub fn telephone_event_pt(&self) -> Option<u8> {
        self.rtpmaps
            .iter()
            .find(|m| m.is("telephone-event"))
            .map(|m| m.pt)
    }

    /// `m=... 0 ...`: the stream is rejected or disabled.
    pub fn is_rejected(&self) -> bool {
        self.port == 0
    }

    /// The stream does not flow both ways for a hold reason: direction is
    /// sendonly, recvonly or inactive, or the connection address is
    /// 0.0.0.0/`::`. False for a rejected stream. (A SIPREC offer is always
    /// sendonly: do not ask this of it.)
    pub fn is_on_hold(&self, session: &SessionDescription) -> bool {
        !self.is_rejected() && self.effective_direction(session) != Direction::SendRecv
    }

    /// A media-level attribute's value (`None` if absent; `Some(None)` for a
    /// flag attribute).
    pub fn attribute(&self, name: &str) -> Option<Option<&str>> {
        self.attributes
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_deref())
    }
}

impl crate::sip::message::SipMessage {
    /// The message's SDP: the body when it is `application/sdp`, or the first
    /// `application/sdp` part of a multipart body (SIPREC). `None` when there
    /// is none.
    pub fn sdp(&self) -> Option<Result<SessionDescription, SdpError>> {
        let body = self.body_of_type("application/sdp")?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        Some(parse_sdp(&String::from_utf8_lossy(&body)))
    }
}

/// Parses one SDP (see the module doc for what is tolerated and what not).
pub fn parse_sdp(text: &str) -> Result<SessionDescription, SdpError> {
    if text.len() > MAX_SDP_LEN {
        return Err(SdpError::TooLarge(text.len()));
    }
    let mut session = SessionDescription::default();
    let mut saw_v = false;
    let mut current: Option<MediaDescription> = None;
    for (idx, raw_line) in text.split('\n').enumerate() {
        let line_no = idx + 1;
        let line = raw_line.trim();
        let Some((kind, value)) = line.split_once('=') else {
            continue;
        };
        let kind = kind.trim();
        if kind.len() != 1 {
            continue;
        }
        let value = value.trim();
        match kind {
            "v" => saw_v = true,
            "o" if current.is_none() => parse_origin(value, &mut session),
            "s" if current.is_none() => session.session_name = Some(value.to_string()),
            "c" => {
                let addr = parse_connection(value);
                match current.as_mut() {
                    Some(m) => {
                        if m.connection.is_none() {
                            m.connection = addr;
                        }
                    }
                    None => {
                        if session.connection.is_none() {
                            session.connection = addr;
                        }
                    }
                }
            }
            "m" => {
                if session.media.len() >= MAX_MEDIA {
                    return Err(SdpError::TooManyMedia);
                }
                if let Some(m) = current.take() {
                    session.media.push(m);
                }
                current = Some(parse_media_line(value, line_no)?);
            }
            "a" => {
                let (name, val) = match value.split_once(':') {
                    Some((n, v)) => (n.trim(), Some(v.trim())),
                    None => (value, None),
                };
                if name.is_empty() {
                    continue;
                }
                match current.as_mut() {
                    Some(m) => media_attribute(m, name, val, line_no)?,
                    None => {
                        if let Some(d) = Direction::from_attr(name) {
                            session.direction = Some(d);
                        }
                        session
                            .attributes
                            .push((name.to_string(), val.map(str::to_string)));
                    }
                }
            }
            _ => {}
        }
    }
    if let Some(m) = current.take() {
        if session.media.len() >= MAX_MEDIA {
            return Err(SdpError::TooManyMedia);
        }
        session.media.push(m);
    }
    if !saw_v && session.media.is_empty() {
        return Err(SdpError::NotSdp);
    }
    Ok(session)
}

/// `o=<username> <sess-id> <sess-version> <nettype> <addrtype> <address>`.
fn parse_origin(value: &str, session: &mut SessionDescription) {
    let parts: Vec<&str> = value.split_ascii_whitespace().collect();
    session.origin_session = parts.get(1).map(|s| s.to_string());
    session.origin_version = parts.get(2).and_then(|s| s.parse().ok());
    session.origin_addr = parts.get(5).and_then(|s| parse_ip(s));
}

/// `c=<nettype> <addrtype> <address>[/ttl][/count]`.
fn parse_connection(value: &str) -> Option<IpAddr> {
    let mut parts = value.split_ascii_whitespace();
    let _nettype = parts.next()?;
    let _addrtype = parts.next()?;
    parse_ip(parts.next()?)
}

fn parse_ip(s: &str) -> Option<IpAddr> {
    let addr = s.split('/').next()?;
    addr.parse().ok()
}

/// `m=<media> <port>[/<count>] <proto> <fmt> ...`.
fn parse_media_line(value: &str, line: usize) -> Result<MediaDescription, SdpError> {
    let bad = |reason| SdpError::BadMedia { line, reason };
    let mut parts = value.split_ascii_whitespace();
    let media = parts.next().ok_or(bad("no media type"))?.to_string();
    let port_field = parts.next().ok_or(bad("no port"))?;
    let (port_s, count_s) = match port_field.split_once('/') {
        Some((p, c)) => (p, Some(c)),
        None => (port_field, None),
    };
    let port: u16 = parse_decimal(port_s).ok_or(bad("port is not a 16-bit number"))?;
    let port_count: u16 = match count_s {
        Some(c) => parse_decimal(c)
            .filter(|n| *n > 0)
            .ok_or(bad("bad port count"))?,
        None => 1,
    };
    let proto = parts.next().ok_or(bad("no proto"))?.to_string();
    let is_rtp = proto.to_ascii_uppercase().contains("RTP");
    let mut formats = Vec::new();
    for f in parts {
        if f.bytes().all(|b| b.is_ascii_digit()) {
            match parse_decimal::<u8>(f).filter(|pt| *pt <= 127) {
                Some(pt) => formats.push(pt),
                None if is_rtp => return Err(bad("payload type out of 0..=127")),
                None => {}
            }
        }
    }
    Ok(MediaDescription {
        media,
        port,
        port_count,
        proto,
        formats,
        connection: None,
        rtpmaps: Vec::new(),
        fmtp: Vec::new(),
        direction: None,
        label: None,
        crypto: Vec::new(),
        rtcp_mux: false,
        ptime: None,
        attributes: Vec::new(),
    })
}

/// Plain decimal digits only (no sign, no spaces), fitting the type.
fn parse_decimal<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn media_attribute(
    m: &mut MediaDescription,
    name: &str,
    val: Option<&str>,
    line: usize,
) -> Result<(), SdpError> {
    let lname = name.to_ascii_lowercase();
    match (lname.as_str(), val) {
        ("rtpmap", Some(v)) => {
            let map = parse_rtpmap(v, line)?;
            if m.rtpmap(map.pt).is_none() {
                m.rtpmaps.push(map);
            }
        }
        ("fmtp", Some(v)) => {
            let (pt, params) = v.split_once(char::is_whitespace).unwrap_or((v, ""));
            if let Some(pt) = parse_decimal::<u8>(pt).filter(|p| *p <= 127) {
                m.fmtp.push((pt, params.trim().to_string()));
            }
        }
        ("label", Some(v)) => m.label = Some(v.to_string()),
        ("crypto", Some(v)) => {
            if let Some(c) = parse_crypto(v) {
                m.crypto.push(c);
            }
        }
        ("rtcp-mux", _) => m.rtcp_mux = true,
        ("ptime", Some(v)) => {
            let int = v.split('.').next().unwrap_or(v);
            m.ptime = parse_decimal(int);
        }
        _ => {
            if let Some(d) = Direction::from_attr(&lname) {
                m.direction = Some(d);
            }
        }
    }
    m.attributes
        .push((name.to_string(), val.map(str::to_string)));
    Ok(())
}

/// `<pt> <encoding>/<clock>[/<channels>]`.
fn parse_rtpmap(v: &str, line: usize) -> Result<RtpMap, SdpError> {
    let bad = |reason| SdpError::BadRtpmap { line, reason };
    let mut parts = v.split_ascii_whitespace();
    let pt: u8 = parts
        .next()
        .and_then(parse_decimal)
        .filter(|p: &u8| *p <= 127)
        .ok_or(bad("payload type out of 0..=127"))?;
    let enc = parts.next().ok_or(bad("no encoding"))?;
    let mut enc_parts = enc.split('/');
    let encoding = enc_parts
        .next()
        .filter(|e| !e.is_empty())
        .ok_or(bad("no encoding"))?;
    let clock_rate: u32 = enc_parts
        .next()
        .and_then(parse_decimal)
        .filter(|c| *c > 0)
        .ok_or(bad("clock rate is not a number"))?;
    let channels = enc_parts.next().and_then(parse_decimal::<u8>);
    Ok(RtpMap {
        pt,
        encoding: encoding.to_string(),
        clock_rate,
        channels,
    })
}

/// `<tag> <suite> <key-params> [<session-params>...]`.
fn parse_crypto(v: &str) -> Option<Crypto> {
    let mut parts = v.split_ascii_whitespace();
    let tag = parse_decimal(parts.next()?)?;
    let suite = parts.next()?.to_string();
    let key_params = parts.next()?.to_string();
    Some(Crypto {
        tag,
        suite,
        key_params,
        session_params: parts.map(str::to_string).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::parse_message;
    use crate::sip::test_support::*;
    use proptest::prelude::*;

    const OFFER: &str = "v=0\r\n\
o=- 3848902025 3848902026 IN IP4 192.168.1.10\r\n\
s=call \r\n\
c=IN IP4 192.168.1.10\r\n\
t=0 0\r\n\
a=sendrecv\r\n\
m=audio 49170 RTP/AVP 0 8 9 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:9 G722/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\n\
a=ptime:20\r\n\
a=rtcp-mux\r\n\
a=x-unknown\r\n\
m=video 0 RTP/AVP 96\r\n\
a=rtpmap:96 H264/90000\r\n\
m=image 5000 udptl t38\r\n\
c=IN IP4 10.0.0.5/127\r\n\
a=T38FaxVersion:0\r\n";

    #[test]
    fn parses_an_offer() {
        let s = parse_sdp(OFFER).unwrap();
        assert_eq!(s.origin_session.as_deref(), Some("3848902025"));
        assert_eq!(s.origin_version, Some(3848902026));
        assert_eq!(s.origin_addr, Some("192.168.1.10".parse().unwrap()));
        assert_eq!(s.connection, Some("192.168.1.10".parse().unwrap()));
        assert_eq!(s.session_name.as_deref(), Some("call"));
        assert_eq!(s.direction, Some(Direction::SendRecv));
        assert_eq!(s.media.len(), 3);

        let a = &s.media[0];
        assert_eq!(
            (a.media.as_str(), a.port, a.port_count),
            ("audio", 49170, 1)
        );
        assert_eq!(a.proto, "RTP/AVP");
        assert_eq!(a.formats, [0, 8, 9, 101]);
        assert_eq!(a.rtpmap(9).unwrap().clock_rate, 8000);
        assert!(a.rtpmap(8).is_none());
        assert_eq!(a.codec(8).unwrap().encoding, "PCMA");
        assert_eq!(a.telephone_event_pt(), Some(101));
        assert_eq!(a.fmtp(101), Some("0-16"));
        assert_eq!(a.ptime, Some(20));
        assert!(a.rtcp_mux);
        assert_eq!(a.direction, None);
        assert_eq!(a.effective_direction(&s), Direction::SendRecv);
        assert_eq!(a.effective_connection(&s), s.connection);
        assert!(!a.is_on_hold(&s));
        assert_eq!(a.attribute("x-unknown"), Some(None));
        assert_eq!(a.attribute("ptime"), Some(Some("20")));
        assert_eq!(a.attributes.len(), 7);

        let v = &s.media[1];
        assert!(v.is_rejected());
        assert_eq!(v.effective_direction(&s), Direction::Inactive);
        assert!(!v.is_on_hold(&s));

        let i = &s.media[2];
        assert_eq!(i.media, "image");
        assert!(i.formats.is_empty());
        assert_eq!(i.connection, Some("10.0.0.5".parse().unwrap()));
    }

    #[test]
    fn lf_only_and_trailing_spaces_give_the_same_result() {
        let lf = OFFER.replace("\r\n", "  \n");
        assert_eq!(parse_sdp(&lf).unwrap(), parse_sdp(OFFER).unwrap());
    }

    #[test]
    fn hold_forms() {
        let base = "v=0\r\no=- 1 2 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 1.2.3.4\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
        for (attr, dir) in [
            ("a=sendonly\r\n", Direction::SendOnly),
            ("a=recvonly\r\n", Direction::RecvOnly),
            ("a=inactive\r\n", Direction::Inactive),
        ] {
            let s = parse_sdp(&format!("{base}{attr}")).unwrap();
            assert_eq!(s.media[0].direction, Some(dir));
            assert_eq!(s.media[0].effective_direction(&s), dir);
            assert!(s.media[0].is_on_hold(&s));
        }
        // Session-level direction applies when the media has none.
        let s = parse_sdp(&base.replace("t=0 0\r\n", "t=0 0\r\na=sendonly\r\n")).unwrap();
        assert_eq!(s.media[0].direction, None);
        assert_eq!(s.media[0].effective_direction(&s), Direction::SendOnly);
        // Media-level wins over session-level.
        let s = parse_sdp(&format!(
            "{}a=recvonly\r\n",
            base.replace("t=0 0\r\n", "t=0 0\r\na=sendonly\r\n")
        ))
        .unwrap();
        assert_eq!(s.media[0].effective_direction(&s), Direction::RecvOnly);
        // RFC 2543 hold: c=0.0.0.0 (session or media level), also for IPv6.
        let s = parse_sdp(&base.replace("c=IN IP4 1.2.3.4", "c=IN IP4 0.0.0.0")).unwrap();
        assert_eq!(s.media[0].effective_direction(&s), Direction::Inactive);
        assert!(s.media[0].is_on_hold(&s));
        let s = parse_sdp(&format!("{base}c=IN IP6 ::\r\n")).unwrap();
        assert_eq!(s.media[0].effective_direction(&s), Direction::Inactive);
    }

    #[test]
    fn crypto_and_label() {
        let s = parse_sdp(
            "v=0\nm=audio 3000 RTP/SAVP 9 101\na=label:1\n\
a=crypto:1 AES_CM_128_HMAC_SHA1_32 inline:ui2NT4JoTRWffhBzCz3eQtsjT1pr8ILqh9ZWi+3J|2^20|1:32\n\
a=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:abc UNENCRYPTED_SRTCP\n\
a=crypto:x bad\n",
        )
        .unwrap();
        let m = &s.media[0];
        assert_eq!(m.label.as_deref(), Some("1"));
        assert_eq!(m.crypto.len(), 2);
        assert_eq!(m.crypto[0].tag, 1);
        assert_eq!(m.crypto[0].suite, "AES_CM_128_HMAC_SHA1_32");
        assert_eq!(
            m.crypto[0].key_params,
            "inline:ui2NT4JoTRWffhBzCz3eQtsjT1pr8ILqh9ZWi+3J|2^20|1:32"
        );
        assert_eq!(m.crypto[1].session_params, ["UNENCRYPTED_SRTCP"]);
    }

    #[test]
    fn opus_channels_and_port_count() {
        let s = parse_sdp("v=0\r\nm=audio 5000/2 RTP/AVP 111\r\na=rtpmap:111 opus/48000/2\r\n")
            .unwrap();
        let m = &s.media[0];
        assert_eq!(m.port_count, 2);
        let map = m.rtpmap(111).unwrap();
        assert!(map.is("OPUS"));
        assert_eq!((map.clock_rate, map.channels), (48000, Some(2)));
    }

    #[test]
    fn strict_where_it_matters() {
        let bad = |s: &str| parse_sdp(s).unwrap_err();
        assert!(matches!(
            bad("v=0\nm=audio 70000 RTP/AVP 0\n"),
            SdpError::BadMedia { line: 2, .. }
        ));
        assert!(matches!(
            bad("v=0\nm=audio -1 RTP/AVP 0\n"),
            SdpError::BadMedia { .. }
        ));
        assert!(matches!(
            bad("v=0\nm=audio [auto_media_port] RTP/AVP 0\n"),
            SdpError::BadMedia { .. }
        ));
        assert!(matches!(
            bad("v=0\nm=audio 4000 RTP/AVP 128\n"),
            SdpError::BadMedia { .. }
        ));
        assert!(matches!(
            bad("v=0\nm=audio 4000\n"),
            SdpError::BadMedia { .. }
        ));
        assert!(matches!(
            bad("v=0\nm=audio 4000 RTP/AVP 0\na=rtpmap:300 X/8000\n"),
            SdpError::BadRtpmap { line: 3, .. }
        ));
        assert!(matches!(
            bad("v=0\nm=audio 4000 RTP/AVP 96\na=rtpmap:96 opus/fast\n"),
            SdpError::BadRtpmap { .. }
        ));
        assert_eq!(bad(""), SdpError::NotSdp);
        assert_eq!(bad("hello\nworld"), SdpError::NotSdp);
        assert!(matches!(
            bad(&"v=0\n".repeat(20_000)),
            SdpError::TooLarge(_)
        ));
        assert_eq!(
            bad(&"m=audio 1 RTP/AVP 0\n".repeat(MAX_MEDIA + 1)),
            SdpError::TooManyMedia
        );
        // Non-RTP numeric formats out of the PT range are just skipped.
        let s = parse_sdp("v=0\nm=application 9 TCP/BFCP 1000\n").unwrap();
        assert!(s.media[0].formats.is_empty());
        // FQDN connection addresses read as None; unknown lines are ignored.
        let s =
            parse_sdp("v=0\nc=IN IP4 media.example.com\nzz\nx=1\nm=audio 4 RTP/AVP 0\n").unwrap();
        assert_eq!(s.connection, None);
    }

    fn check_corpus_sdp(label: &str, text: &str) -> SessionDescription {
        let s = parse_sdp(text).unwrap_or_else(|e| panic!("{label}: {e}\n{text}"));
        assert!(!s.media.is_empty(), "{label}: no media");
        for m in &s.media {
            if m.proto.to_ascii_uppercase().contains("RTP") && !m.is_rejected() {
                assert!(!m.formats.is_empty(), "{label}: no formats");
                assert!(m.effective_connection(&s).is_some(), "{label}: no c=");
                for pt in &m.formats {
                    assert!(m.codec(*pt).is_some() || *pt >= 96, "{label}: pt {pt}");
                }
            }
        }
        s
    }

    #[test]
    fn corpus_siprec_sdps() {
        let Some(dir) = corpus_dir() else { return };
        let mut n = 0;
        for entry in std::fs::read_dir(dir.join("siprec")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("txt") {
                continue;
            }
            let text = fill_sipp_template(&std::fs::read_to_string(&path).unwrap());
            let sdp = sdp_from_siprec_text(&text).expect("sdp part");
            let s = check_corpus_sdp(&path.display().to_string(), &sdp);
            // SIPREC offers: two labelled sendonly audio streams.
            assert_eq!(s.media.len(), 2, "{}", path.display());
            for m in &s.media {
                assert!(m.label.is_some(), "{}", path.display());
                assert_eq!(m.effective_direction(&s), Direction::SendOnly);
            }
            n += 1;
        }
        assert_eq!(n, 6);
    }

    /// The sloppy SDP of the SIPp SRTP scenario (indented lines, a tab after
    /// the key, a repeated proto token) still yields the verified key.
    #[test]
    fn corpus_sipp_srtp_scenario_sdp() {
        let Some(dir) = corpus_dir() else { return };
        let xml = std::fs::read_to_string(dir.join("srtp_g722_DTMF.sipp_scenario.xml")).unwrap();
        let start = xml.find("v=0").unwrap();
        let end = start + xml[start..].find("]]>").unwrap();
        let s = parse_sdp(&fill_sipp_template(&xml[start..end])).unwrap();
        let m = &s.media[0];
        assert_eq!(m.proto, "RTP/SAVP");
        assert_eq!(m.formats, [9, 101]);
        assert_eq!(m.codec(9).unwrap().encoding, "G722");
        assert_eq!(m.telephone_event_pt(), Some(101));
        assert_eq!(m.crypto.len(), 2);
        assert_eq!(m.crypto[0].suite, "AES_CM_128_HMAC_SHA1_32");
        assert_eq!(
            m.crypto[0].key_params,
            "inline:ui2NT4JoTRWffhBzCz3eQtsjT1pr8ILqh9ZWi+3J"
        );
    }

    #[test]
    fn corpus_capture_sdps() {
        let Some(dir) = corpus_dir() else { return };
        if !have_tshark() {
            return;
        }
        let mut n = 0;
        let mut t38 = 0;
        for name in UDP_SIP_CAPTURES {
            let file = dir.join(name);
            if !file.exists() {
                continue;
            }
            for (payload, _) in udp_sip_payloads(&file) {
                let msg = parse_message(&payload).unwrap();
                if msg.media_type() != Some("application/sdp") || msg.body.is_empty() {
                    assert!(msg.sdp().is_none());
                    continue;
                }
                let text = String::from_utf8_lossy(&msg.body);
                let s = check_corpus_sdp(name, &text);
                assert_eq!(msg.sdp().unwrap().unwrap(), s);
                t38 += s.media.iter().filter(|m| m.media == "image").count();
                n += 1;
            }
        }
        eprintln!("{n} corpus SDPs parsed ({t38} image/t38 streams)");
        assert!(n >= 50);
        assert!(t38 >= 1);
    }

    proptest! {
        #[test]
        fn never_panics(text in "(([vocmat]=)?[ -~]{0,40}\r?\n){0,30}") {
            let _ = parse_sdp(&text);
        }

        #[test]
        fn never_panics_on_mutated_offer(
            edits in proptest::collection::vec((0usize..OFFER.len(), proptest::char::range(' ', '~')), 0..6),
        ) {
            let mut chars: Vec<char> = OFFER.chars().collect();
            for (pos, c) in edits {
                if let Some(slot) = chars.get_mut(pos) { *slot = c; }
            }
            let text: String = chars.into_iter().collect();
            if let Ok(s) = parse_sdp(&text) {
                for m in &s.media {
                    prop_assert!(m.formats.iter().all(|pt| *pt <= 127));
                }
            }
        }
    }
}
