//! # hep: HEP (Homer Encapsulation Protocol) packets → segments for the engine
//!
//! In: the bytes of one HEP packet as a capture agent sends it (heplify,
//! Kamailio / OpenSIPS `siptrace`, FreeSWITCH and Asterisk `res_hep`): over
//! UDP one per datagram, over TCP back to back ([`frame_len`] cuts them).
//! Out: a [`HepPacket`]: the original packet's addresses, transport, capture
//! time and payload (a SIP message, an RTP packet), which
//! [`HepPacket::segment`] turns into the [`Segment`] the call engine takes
//! from any other source.
//!
//! Versions: HEPv3 (`HEP3`, chunks: RFC-like spec of the sipcapture
//! project) and HEPv2 / HEPv1 (a fixed binary header; v1 without the
//! timestamp). Chunks of other vendors and unknown chunk types are skipped;
//! a compressed payload (chunk 16) is refused as unsupported.
//!
//! Promises: a pure function over the bytes given, no allocation, never a
//! panic; lengths are checked before every read; an error names what is
//! wrong so the source can count it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::net::{Segment, Transport};
use crate::Timestamp;

/// The HEP protocol type of a SIP payload.
pub const PROTO_SIP: u8 = 1;
/// The HEP protocol type of an RTP payload.
pub const PROTO_RTP: u8 = 4;
/// The HEP protocol type of an RTCP payload.
pub const PROTO_RTCP: u8 = 5;

/// The largest HEP packet accepted (a UDP datagram's worth).
pub const MAX_PACKET: usize = 65_535;

/// One decoded HEP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HepPacket<'a> {
    /// 1, 2 or 3.
    pub version: u8,
    /// When the agent captured the packet (v2, v3); v1 has none.
    pub ts: Option<Timestamp>,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub transport: Transport,
    /// [`PROTO_SIP`], [`PROTO_RTP`], ...; 0 when not given (v1, v2).
    pub proto_type: u8,
    /// The capture agent's id (chunk 12; v2's capture id).
    pub agent_id: Option<u32>,
    /// The authentication key (chunk 14), if the agent sent one.
    pub auth_key: Option<&'a [u8]>,
    /// The captured packet's payload (above UDP / TCP).
    pub payload: &'a [u8],
}

/// How far after its arrival a HEP packet's capture time may be.
pub const MAX_AHEAD_US: i64 = 5_000_000;
/// How far before its arrival a HEP packet's capture time may be (an agent
/// that batches, a queue after an outage).
pub const MAX_BEHIND_US: i64 = 300_000_000;

impl<'a> HepPacket<'a> {
    /// The packet as a segment for the engine: its capture time, or
    /// `received` when it has none or it is implausible: more than
    /// [`MAX_AHEAD_US`] after `received` or [`MAX_BEHIND_US`] before it (an
    /// agent without a set clock, a forged packet). The engine's clock only
    /// goes forward: one packet dated hours ahead would have timed out
    /// every call in progress.
    pub fn segment(&self, received: Timestamp) -> Segment<'a> {
        let plausible = |t: &Timestamp| {
            t.micros_since(received) <= MAX_AHEAD_US && received.micros_since(*t) <= MAX_BEHIND_US
        };
        Segment {
            ts: self.ts.filter(plausible).unwrap_or(received),
            src: self.src,
            dst: self.dst,
            transport: self.transport,
            payload: self.payload,
            tcp_gap: false,
        }
    }
}

/// Why bytes are not a usable HEP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HepError {
    #[error("not a HEP packet")]
    NotHep,
    #[error("HEP packet cut short")]
    Truncated,
    #[error("malformed HEP packet: {0}")]
    Malformed(&'static str),
    #[error("unsupported in HEP: {0}")]
    Unsupported(&'static str),
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Length of the HEP packet at the start of a TCP stream's bytes: `None`
/// while its header is not all there; an error when the bytes cannot be
/// the start of a HEP packet (the stream is then out of step: close it).
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, HepError> {
    if buf.len() < 6 {
        if !b"HEP3".starts_with(buf.get(..buf.len().min(4)).unwrap_or_default())
            && !matches!(buf.first(), Some(1 | 2))
        {
            return Err(HepError::NotHep);
        }
        return Ok(None);
    }
    if buf.starts_with(b"HEP3") {
        let len = usize::from(be16(buf, 4).unwrap_or(0));
        if len < 6 {
            return Err(HepError::Malformed("total length shorter than the header"));
        }
        return Ok(Some(len));
    }
    Err(HepError::NotHep)
}

/// Decodes one HEP packet (`buf` holds exactly it, or more: v3 stops at its
/// stated length).
pub fn parse(buf: &[u8]) -> Result<HepPacket<'_>, HepError> {
    if buf.starts_with(b"HEP3") {
        return parse_v3(buf);
    }
    match buf.first() {
        Some(1 | 2) => parse_v12(buf),
        Some(_) => Err(HepError::NotHep),
        None => Err(HepError::Truncated),
    }
}

fn transport_of(proto: u8) -> Result<Transport, HepError> {
    match proto {
        17 => Ok(Transport::Udp),
        6 => Ok(Transport::Tcp),
        _ => Err(HepError::Unsupported(
            "an IP protocol other than UDP or TCP",
        )),
    }
}

fn parse_v3(buf: &[u8]) -> Result<HepPacket<'_>, HepError> {
    let total = usize::from(be16(buf, 4).ok_or(HepError::Truncated)?);
    if total < 6 {
        return Err(HepError::Malformed("total length shorter than the header"));
    }
    let buf = buf.get(..total).ok_or(HepError::Truncated)?;
    let mut at = 6;
    let (mut family, mut proto) = (None, None);
    let (mut src4, mut dst4, mut src6, mut dst6) = (None, None, None, None);
    let (mut sport, mut dport) = (None, None);
    let (mut secs, mut usecs) = (None, None);
    let (mut proto_type, mut agent_id, mut auth_key, mut payload) = (0, None, None, None);
    while at < buf.len() {
        let vendor = be16(buf, at).ok_or(HepError::Truncated)?;
        let kind = be16(buf, at + 2).ok_or(HepError::Truncated)?;
        let len = usize::from(be16(buf, at + 4).ok_or(HepError::Truncated)?);
        if len < 6 {
            return Err(HepError::Malformed("chunk shorter than its header"));
        }
        let value = buf.get(at + 6..at + len).ok_or(HepError::Truncated)?;
        at += len;
        if vendor != 0 {
            continue;
        }
        let byte = || {
            value
                .first()
                .copied()
                .ok_or(HepError::Malformed("empty chunk"))
        };
        let addr4 = || -> Result<Ipv4Addr, HepError> {
            let b: [u8; 4] = value
                .try_into()
                .map_err(|_| HepError::Malformed("IPv4 address not 4 bytes"))?;
            Ok(Ipv4Addr::from(b))
        };
        let addr6 = || -> Result<Ipv6Addr, HepError> {
            let b: [u8; 16] = value
                .try_into()
                .map_err(|_| HepError::Malformed("IPv6 address not 16 bytes"))?;
            Ok(Ipv6Addr::from(b))
        };
        let port = || be16(value, 0).ok_or(HepError::Malformed("port not 2 bytes"));
        let word = || be32(value, 0).ok_or(HepError::Malformed("number not 4 bytes"));
        match kind {
            1 => family = Some(byte()?),
            2 => proto = Some(byte()?),
            3 => src4 = Some(addr4()?),
            4 => dst4 = Some(addr4()?),
            5 => src6 = Some(addr6()?),
            6 => dst6 = Some(addr6()?),
            7 => sport = Some(port()?),
            8 => dport = Some(port()?),
            9 => secs = Some(word()?),
            10 => usecs = Some(word()?),
            11 => proto_type = byte()?,
            12 => agent_id = Some(word()?),
            14 => auth_key = Some(value),
            15 => payload = Some(value),
            16 => return Err(HepError::Unsupported("a compressed payload")),
            _ => {}
        }
    }
    let (src, dst) = match family {
        Some(2) => (
            IpAddr::V4(src4.ok_or(HepError::Malformed("no IPv4 source"))?),
            IpAddr::V4(dst4.ok_or(HepError::Malformed("no IPv4 destination"))?),
        ),
        Some(10) => (
            IpAddr::V6(src6.ok_or(HepError::Malformed("no IPv6 source"))?),
            IpAddr::V6(dst6.ok_or(HepError::Malformed("no IPv6 destination"))?),
        ),
        Some(_) => {
            return Err(HepError::Unsupported(
                "an address family other than IPv4 or IPv6",
            ))
        }
        None => return Err(HepError::Malformed("no address family")),
    };
    let transport = transport_of(proto.ok_or(HepError::Malformed("no IP protocol"))?)?;
    let ts = match (secs, usecs) {
        (Some(s), u) => Some(Timestamp::from_micros(
            i64::from(s) * 1_000_000 + i64::from(u.unwrap_or(0).min(999_999)),
        )),
        (None, _) => None,
    };
    Ok(HepPacket {
        version: 3,
        ts,
        src: SocketAddr::new(src, sport.ok_or(HepError::Malformed("no source port"))?),
        dst: SocketAddr::new(
            dst,
            dport.ok_or(HepError::Malformed("no destination port"))?,
        ),
        transport,
        proto_type,
        agent_id,
        auth_key,
        payload: payload.ok_or(HepError::Malformed("no payload"))?,
    })
}

/// HEPv1 / v2: version, header length, family, protocol, ports (network
/// order), addresses; v2 adds seconds, microseconds and a capture id
/// (little-endian, as the agents write them).
fn parse_v12(buf: &[u8]) -> Result<HepPacket<'_>, HepError> {
    let version = buf[0];
    let hlen = usize::from(*buf.get(1).ok_or(HepError::Truncated)?);
    let family = *buf.get(2).ok_or(HepError::Truncated)?;
    let proto = *buf.get(3).ok_or(HepError::Truncated)?;
    let sport = be16(buf, 4).ok_or(HepError::Truncated)?;
    let dport = be16(buf, 6).ok_or(HepError::Truncated)?;
    let (src, dst, mut at) = match family {
        2 => {
            let s: [u8; 4] = buf
                .get(8..12)
                .ok_or(HepError::Truncated)?
                .try_into()
                .unwrap_or_default();
            let d: [u8; 4] = buf
                .get(12..16)
                .ok_or(HepError::Truncated)?
                .try_into()
                .unwrap_or_default();
            (IpAddr::from(s), IpAddr::from(d), 16)
        }
        10 => {
            let s: [u8; 16] = buf
                .get(8..24)
                .ok_or(HepError::Truncated)?
                .try_into()
                .unwrap_or_default();
            let d: [u8; 16] = buf
                .get(24..40)
                .ok_or(HepError::Truncated)?
                .try_into()
                .unwrap_or_default();
            (IpAddr::from(s), IpAddr::from(d), 40)
        }
        _ => return Err(HepError::NotHep),
    };
    if hlen != at {
        return Err(HepError::NotHep);
    }
    let (mut ts, mut agent_id) = (None, None);
    if version == 2 {
        let secs = le32(buf, at).ok_or(HepError::Truncated)?;
        let usecs = le32(buf, at + 4).ok_or(HepError::Truncated)?;
        let id = u16::from_le_bytes([
            *buf.get(at + 8).ok_or(HepError::Truncated)?,
            *buf.get(at + 9).ok_or(HepError::Truncated)?,
        ]);
        at += 12;
        ts = Some(Timestamp::from_micros(
            i64::from(secs) * 1_000_000 + i64::from(usecs.min(999_999)),
        ));
        agent_id = Some(u32::from(id));
    }
    Ok(HepPacket {
        version,
        ts,
        src: SocketAddr::new(src, sport),
        dst: SocketAddr::new(dst, dport),
        transport: transport_of(proto)?,
        proto_type: 0,
        agent_id,
        auth_key: None,
        payload: buf.get(at..).ok_or(HepError::Truncated)?,
    })
}

/// Encodes a HEPv3 packet (for tests, benchmarks and the fuzz corpus; the
/// daemon only receives).
pub fn encode_v3(p: &HepPacket<'_>) -> Vec<u8> {
    let mut out = b"HEP3\0\0".to_vec();
    let mut chunk = |kind: u16, value: &[u8]| {
        out.extend(0u16.to_be_bytes());
        out.extend(kind.to_be_bytes());
        out.extend(((6 + value.len()) as u16).to_be_bytes());
        out.extend_from_slice(value);
    };
    let (family, s, d): (u8, Vec<u8>, Vec<u8>) = match (p.src.ip(), p.dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (2, s.octets().to_vec(), d.octets().to_vec()),
        (s, d) => {
            let v6 = |a: IpAddr| match a {
                IpAddr::V4(a) => a.to_ipv6_mapped().octets().to_vec(),
                IpAddr::V6(a) => a.octets().to_vec(),
            };
            (10, v6(s), v6(d))
        }
    };
    chunk(1, &[family]);
    chunk(
        2,
        &[match p.transport {
            Transport::Udp => 17,
            Transport::Tcp => 6,
        }],
    );
    let (ks, kd) = if family == 2 { (3, 4) } else { (5, 6) };
    chunk(ks, &s);
    chunk(kd, &d);
    chunk(7, &p.src.port().to_be_bytes());
    chunk(8, &p.dst.port().to_be_bytes());
    if let Some(ts) = p.ts {
        let us = ts.as_micros();
        chunk(9, &(us.div_euclid(1_000_000) as u32).to_be_bytes());
        chunk(10, &(us.rem_euclid(1_000_000) as u32).to_be_bytes());
    }
    chunk(11, &[p.proto_type]);
    if let Some(id) = p.agent_id {
        chunk(12, &id.to_be_bytes());
    }
    if let Some(k) = p.auth_key {
        chunk(14, k);
    }
    chunk(15, p.payload);
    let len = out.len() as u16;
    out[4..6].copy_from_slice(&len.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A capture time far from the arrival (ahead, or long before) is not
    /// believed: the arrival stands in for it.
    #[test]
    fn an_implausible_capture_time_gives_way_to_the_arrival() {
        let p = sample(b"x");
        let t = p.ts.unwrap();
        // Within the bounds: the agent's time.
        for rx in [t.add_micros(-4_000_000), t, t.add_micros(299_000_000)] {
            assert_eq!(p.segment(rx).ts, t);
        }
        // Hours ahead of the arrival, or an hour behind it: the arrival.
        for rx in [t.add_micros(-3_600_000_000), t.add_micros(3_600_000_000)] {
            assert_eq!(p.segment(rx).ts, rx);
        }
    }

    fn sample<'a>(payload: &'a [u8]) -> HepPacket<'a> {
        HepPacket {
            version: 3,
            ts: Some(Timestamp::from_micros(1_764_800_000_123_456)),
            src: "10.0.0.1:40000".parse().unwrap(),
            dst: "10.0.0.2:50000".parse().unwrap(),
            transport: Transport::Udp,
            proto_type: PROTO_RTP,
            agent_id: Some(2001),
            auth_key: Some(b"secret"),
            payload,
        }
    }

    #[test]
    fn v3_round_trip_v4_and_v6() {
        let p = sample(b"\x80\x00rtp");
        let bytes = encode_v3(&p);
        assert_eq!(frame_len(&bytes), Ok(Some(bytes.len())));
        assert_eq!(parse(&bytes), Ok(p));
        let mut q = sample(b"INVITE");
        q.src = "[2001:db8::1]:5060".parse().unwrap();
        q.dst = "[2001:db8::2]:5060".parse().unwrap();
        q.transport = Transport::Tcp;
        q.proto_type = PROTO_SIP;
        let bytes = encode_v3(&q);
        assert_eq!(parse(&bytes), Ok(q));
        // Back to back on a TCP stream: the first one's length cuts it.
        let mut two = bytes.clone();
        two.extend(encode_v3(&p));
        let n = frame_len(&two).unwrap().unwrap();
        assert_eq!(parse(&two[..n]), Ok(q));
        assert_eq!(parse(&two[n..]), Ok(p));
    }

    #[test]
    fn segment_takes_the_capture_time_or_the_arrival() {
        let p = sample(b"x");
        let now = p.ts.unwrap().add_micros(1_500);
        assert_eq!(p.segment(now).ts, p.ts.unwrap());
        let q = HepPacket { ts: None, ..p };
        assert_eq!(q.segment(now).ts, now);
        assert_eq!(q.segment(now).payload, b"x");
    }

    #[test]
    fn unknown_and_vendor_chunks_are_skipped() {
        let p = sample(b"pay");
        let mut bytes = encode_v3(&p);
        // A vendor chunk (vendor 0x0033) and an unknown generic one (99).
        for (vendor, kind) in [(0x33u16, 1u16), (0, 99)] {
            bytes.extend(vendor.to_be_bytes());
            bytes.extend(kind.to_be_bytes());
            bytes.extend(9u16.to_be_bytes());
            bytes.extend([1, 2, 3]);
        }
        let len = bytes.len() as u16;
        bytes[4..6].copy_from_slice(&len.to_be_bytes());
        assert_eq!(parse(&bytes), Ok(p));
    }

    #[test]
    fn broken_packets_are_errors_not_panics() {
        let good = encode_v3(&sample(b"pay"));
        assert_eq!(parse(b""), Err(HepError::Truncated));
        assert_eq!(parse(b"GET / HTTP/1.1"), Err(HepError::NotHep));
        assert_eq!(parse(&good[..good.len() - 1]), Err(HepError::Truncated));
        let mut short = good.clone();
        short[4..6].copy_from_slice(&3u16.to_be_bytes());
        assert!(matches!(parse(&short), Err(HepError::Malformed(_))));
        // A chunk claiming less than its own header.
        let mut bad = good.clone();
        bad[10..12].copy_from_slice(&2u16.to_be_bytes());
        assert!(matches!(parse(&bad), Err(HepError::Malformed(_))));
        // Every prefix: an error, never a panic.
        for n in 0..good.len() {
            assert!(parse(&good[..n]).is_err(), "{n}");
        }
        assert_eq!(frame_len(b"HE"), Ok(None));
        assert_eq!(frame_len(b"XYZ"), Err(HepError::NotHep));
    }

    #[test]
    fn v2_with_timestamp_and_v1_without() {
        let mut v2 = vec![2u8, 16, 2, 17];
        v2.extend(5060u16.to_be_bytes());
        v2.extend(5080u16.to_be_bytes());
        v2.extend([10, 0, 0, 1, 10, 0, 0, 2]);
        v2.extend(1_700_000_000u32.to_le_bytes());
        v2.extend(250_000u32.to_le_bytes());
        v2.extend(7u16.to_le_bytes());
        v2.extend([0, 0]);
        v2.extend(b"OPTIONS sip:x SIP/2.0");
        let p = parse(&v2).unwrap();
        assert_eq!(p.version, 2);
        assert_eq!(p.ts, Some(Timestamp::from_micros(1_700_000_000_250_000)));
        assert_eq!(p.agent_id, Some(7));
        assert_eq!(p.src, "10.0.0.1:5060".parse().unwrap());
        assert_eq!(p.payload, b"OPTIONS sip:x SIP/2.0");
        let mut v1 = v2[..16].to_vec();
        v1[0] = 1;
        v1.extend(b"SIP");
        let p = parse(&v1).unwrap();
        assert_eq!((p.version, p.ts, p.payload), (1, None, &b"SIP"[..]));
    }
}
