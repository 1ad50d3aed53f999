//! Tunnels: mirrored traffic that arrives wrapped → the frame or packet inside.
//!
//! In: the payload of an outer IP packet (GRE, IP-in-IP) or UDP datagram
//! (VXLAN). Out: what it carries — an Ethernet frame (VXLAN, GRE transparent
//! Ethernet bridging, ERSPAN I/II/III) or an IP packet (GRE, IP-in-IP,
//! ERSPAN III with frame type IP) — for the decoder to take apart as if it
//! had been captured directly. Written from the RFCs and the ERSPAN draft:
//! - VXLAN, RFC 7348: 8-byte header, flags `0x08` (I), reserved bits zero;
//!   UDP port 4789 (IANA) or 8472 (the Linux kernel's old default).
//! - GRE, RFC 2784 / 2890: version 0 only (version 1 is PPTP's); optional
//!   checksum, key and sequence number words; protocol types IPv4 0x0800,
//!   IPv6 0x86DD, Transparent Ethernet Bridging 0x6558, ERSPAN 0x88BE (type I
//!   without a sequence number, type II with one: an 8-byte header) and
//!   0x22EB (type III: a 12-byte header, 8 more with the O bit).
//! - IP-in-IP, RFC 2003 / 2473: protocol 4 (IPv4) or 41 (IPv6).
//!
//! Promises: pure functions over the bytes given, no allocation, never a
//! panic; a header that does not fit is `Truncated`, one that says something
//! impossible is `Malformed`, a GRE protocol type that carries no IP is
//! `NotIp` (counted by the caller, like ARP on a plain link).

use super::NetError;

/// UDP ports VXLAN arrives on.
pub(super) const VXLAN_PORTS: [u16; 2] = [4789, 8472];
/// IP protocol numbers of the tunnels handled here.
pub(super) const PROTO_IPIP: u8 = 4;
pub(super) const PROTO_IPV6_IN_IP: u8 = 41;
pub(super) const PROTO_GRE: u8 = 47;
/// Nested tunnels followed at most (a tunnel in a tunnel in a tunnel...).
pub(super) const MAX_DEPTH: u8 = 4;

/// What a tunnel carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Inner<'a> {
    /// An Ethernet frame (with its 14-byte header).
    Ethernet(&'a [u8]),
    /// An IP packet (the version nibble tells which).
    Ip(&'a [u8]),
    /// Something that is not IP (PPP, keepalives, ...).
    NotIp,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// The Ethernet frame inside a VXLAN datagram's payload, if it is one: an
/// RTP or SIP datagram on the same port never starts with these 8 bytes
/// (flags exactly 0x08, the reserved bytes zero).
pub(super) fn vxlan(payload: &[u8]) -> Option<&[u8]> {
    let h = payload.get(..8)?;
    let valid = h[0] == 0x08 && h[1..4] == [0, 0, 0] && h[7] == 0;
    valid.then(|| payload.get(8..).unwrap_or(&[]))
}

/// The payload of a GRE packet.
pub(super) fn gre(data: &[u8]) -> Result<Inner<'_>, NetError> {
    let truncated = NetError::Truncated { layer: "gre" };
    let flags = be16(data, 0).ok_or(truncated.clone())?;
    let proto = be16(data, 2).ok_or(truncated.clone())?;
    if flags & 0x0007 != 0 {
        return Err(NetError::Unsupported {
            what: "GRE version",
            value: u32::from(flags & 0x0007),
        });
    }
    let checksum = flags & 0x8000 != 0;
    let key = flags & 0x2000 != 0;
    let seq = flags & 0x1000 != 0;
    let len = 4 + 4 * (usize::from(checksum) + usize::from(key) + usize::from(seq));
    let rest = data.get(len..).ok_or(truncated)?;
    Ok(match proto {
        0x0800 | 0x86dd => Inner::Ip(rest),
        0x6558 => Inner::Ethernet(rest),
        // ERSPAN type I has no sequence number and no header of its own;
        // type II has both.
        0x88be if !seq => Inner::Ethernet(rest),
        0x88be => erspan2(rest)?,
        0x22eb => erspan3(rest)?,
        _ => Inner::NotIp,
    })
}

/// ERSPAN type II: version 1 in the first nibble, 8 bytes, then Ethernet.
fn erspan2(h: &[u8]) -> Result<Inner<'_>, NetError> {
    let first = *h.first().ok_or(NetError::Truncated { layer: "erspan" })?;
    if first >> 4 != 1 {
        return Err(NetError::Malformed {
            layer: "erspan",
            reason: "type II header without version 1",
        });
    }
    Ok(Inner::Ethernet(
        h.get(8..).ok_or(NetError::Truncated { layer: "erspan" })?,
    ))
}

/// ERSPAN type III: version 2, 12 bytes (+8 with the O bit), then Ethernet
/// or, with frame type 2, IP.
fn erspan3(h: &[u8]) -> Result<Inner<'_>, NetError> {
    let truncated = NetError::Truncated { layer: "erspan" };
    let head = h.get(..12).ok_or(truncated.clone())?;
    if head[0] >> 4 != 2 {
        return Err(NetError::Malformed {
            layer: "erspan",
            reason: "type III header without version 2",
        });
    }
    // Byte 10: P (1) FT (5) HwID high (2); byte 11: HwID low (4) D Gra (2) O.
    let frame_type = (head[10] >> 2) & 0x1f;
    let platform = head[11] & 0x01 != 0;
    let rest = h
        .get(12 + if platform { 8 } else { 0 }..)
        .ok_or(truncated)?;
    Ok(match frame_type {
        0 => Inner::Ethernet(rest),
        2 => Inner::Ip(rest),
        _ => Inner::NotIp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vxlan_header_is_recognised_and_rtp_is_not() {
        let mut p = vec![0x08, 0, 0, 0, 0, 0x12, 0x34, 0];
        p.extend_from_slice(b"frame");
        assert_eq!(vxlan(&p), Some(&b"frame"[..]));
        // RTP (version 2) and SIP on the same port are not VXLAN.
        assert_eq!(vxlan(&[0x80, 0, 0, 1, 0, 0, 0, 0, 1]), None);
        assert_eq!(vxlan(b"INVITE sip:a@b SIP/2.0"), None);
        // Reserved bits set, or too short.
        assert_eq!(vxlan(&[0x08, 1, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(vxlan(&[0x08, 0, 0]), None);
    }

    #[test]
    fn gre_options_and_protocols() {
        // Plain GRE carrying IPv4.
        assert_eq!(
            gre(&[0, 0, 0x08, 0, 0x45, 1]).unwrap(),
            Inner::Ip(&[0x45, 1][..])
        );
        // Checksum + key + sequence: 12 more bytes; transparent Ethernet.
        let mut p = vec![0xb0, 0, 0x65, 0x58];
        p.extend_from_slice(&[0; 12]);
        p.extend_from_slice(b"eth");
        assert_eq!(gre(&p).unwrap(), Inner::Ethernet(&b"eth"[..]));
        // Version 1 (PPTP) is not ours; PPP inside is not IP.
        assert!(matches!(
            gre(&[0x30, 0x01, 0x88, 0x0b]),
            Err(NetError::Unsupported { .. })
        ));
        assert_eq!(gre(&[0, 0, 0x88, 0x0b]).unwrap(), Inner::NotIp);
        // Options announced but cut off.
        assert!(matches!(
            gre(&[0x80, 0, 0x08, 0]),
            Err(NetError::Truncated { .. })
        ));
        assert!(matches!(gre(&[0]), Err(NetError::Truncated { .. })));
    }

    #[test]
    fn erspan_types_one_two_and_three() {
        // Type I: 0x88BE without a sequence number.
        assert_eq!(
            gre(&[0, 0, 0x88, 0xbe, 9]).unwrap(),
            Inner::Ethernet(&[9][..])
        );
        // Type II: sequence number, then 8 bytes of version 1.
        let mut p = vec![0x10, 0, 0x88, 0xbe, 0, 0, 0, 7];
        p.extend_from_slice(&[0x10, 0x05, 0, 0x01, 0, 0, 0, 0]);
        p.push(9);
        assert_eq!(gre(&p).unwrap(), Inner::Ethernet(&[9][..]));
        p[8] = 0x20;
        assert!(matches!(gre(&p), Err(NetError::Malformed { .. })));
        // Type III, Ethernet frame type, no platform subheader.
        let mut p = vec![0x10, 0, 0x22, 0xeb, 0, 0, 0, 7];
        p.extend_from_slice(&[0x20, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
        p.push(9);
        assert_eq!(gre(&p).unwrap(), Inner::Ethernet(&[9][..]));
        // ... with the O bit: 8 bytes of platform subheader more.
        p[8 + 11] = 0x01;
        p.splice(20..20, [0u8; 8]);
        assert_eq!(gre(&p).unwrap(), Inner::Ethernet(&[9][..]));
        // ... frame type 2: IP.
        p[8 + 10] = 2 << 2;
        assert_eq!(gre(&p).unwrap(), Inner::Ip(&[9][..]));
        // Cut inside the header.
        assert!(matches!(gre(&p[..14]), Err(NetError::Truncated { .. })));
    }
}
