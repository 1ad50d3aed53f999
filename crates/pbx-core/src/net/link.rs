//! Link layer: a frame of a given [`LinkType`] → the IP packet inside it.
//!
//! Written by hand (a few fixed offsets each) so every link type takes the same
//! path and nothing allocates: Ethernet II with any number of 802.1Q / 802.1ad /
//! QinQ tags (0x8100, 0x88a8, 0x9100, 0x9200), MPLS label stacks, PPPoE
//! sessions, Linux cooked v1 (SLL) and v2 (SLL2), BSD Null / OpenBSD Loop
//! (AF family in either byte order) and raw IP.

use super::NetError;
use crate::capture::LinkType;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum L3<'a> {
    V4(&'a [u8]),
    V6(&'a [u8]),
    NotIp,
}

const ETH_IPV4: u16 = 0x0800;
const ETH_IPV6: u16 = 0x86dd;
const ETH_VLAN: u16 = 0x8100;
const ETH_QINQ: u16 = 0x88a8;
const ETH_QINQ_OLD: u16 = 0x9100;
const ETH_QINQ_OLD2: u16 = 0x9200;
const ETH_MPLS: u16 = 0x8847;
const ETH_MPLS_MC: u16 = 0x8848;
const ETH_PPPOE: u16 = 0x8864;

/// ARPHRD_NETLINK: SLL frames whose "protocol" is a netlink family.
const ARPHRD_NETLINK: u16 = 824;

/// At most this many stacked tags / labels before the frame is called malformed.
const MAX_TAGS: usize = 16;

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Finds the IP packet in `frame`.
pub(super) fn network_layer(link: LinkType, frame: &[u8]) -> Result<L3<'_>, NetError> {
    match link {
        LinkType::Ethernet => {
            let et = be16(frame, 12).ok_or(NetError::Truncated { layer: "ethernet" })?;
            ethertype(et, frame.get(14..).unwrap_or(&[]))
        }
        LinkType::LinuxSll => {
            let hatype = be16(frame, 2).ok_or(NetError::Truncated { layer: "sll" })?;
            let proto = be16(frame, 14).ok_or(NetError::Truncated { layer: "sll" })?;
            if hatype == ARPHRD_NETLINK {
                return Ok(L3::NotIp);
            }
            ethertype(proto, frame.get(16..).unwrap_or(&[]))
        }
        LinkType::LinuxSll2 => {
            if frame.len() < 20 {
                return Err(NetError::Truncated { layer: "sll2" });
            }
            let proto = be16(frame, 0).unwrap_or(0);
            let hatype = be16(frame, 8).unwrap_or(0);
            if hatype == ARPHRD_NETLINK {
                return Ok(L3::NotIp);
            }
            ethertype(proto, frame.get(20..).unwrap_or(&[]))
        }
        LinkType::Null | LinkType::Loop => {
            let b: [u8; 4] = frame
                .get(..4)
                .and_then(|s| s.try_into().ok())
                .ok_or(NetError::Truncated { layer: "loopback" })?;
            // The family is small: whichever byte order gives a small number is it.
            let le = u32::from_le_bytes(b);
            let af = if le <= 0xffff {
                le
            } else {
                u32::from_be_bytes(b)
            };
            let rest = frame.get(4..).unwrap_or(&[]);
            Ok(match af {
                2 => L3::V4(rest),
                // AF_INET6: Linux 10, NetBSD/OpenBSD/BSDI 24, FreeBSD 28, Darwin 30.
                10 | 24 | 28 | 30 => L3::V6(rest),
                _ => L3::NotIp,
            })
        }
        LinkType::RawIp => by_version(frame, "raw ip"),
        LinkType::Ipv4 => Ok(L3::V4(frame)),
        LinkType::Ipv6 => Ok(L3::V6(frame)),
        LinkType::Other(n) => Err(NetError::Unsupported {
            what: "link type",
            value: n,
        }),
    }
}

/// Raw IP: the version nibble decides.
pub(super) fn by_version<'a>(data: &'a [u8], layer: &'static str) -> Result<L3<'a>, NetError> {
    match data.first().map(|b| b >> 4) {
        Some(4) => Ok(L3::V4(data)),
        Some(6) => Ok(L3::V6(data)),
        Some(_) => Err(NetError::Malformed {
            layer,
            reason: "IP version is neither 4 nor 6",
        }),
        None => Err(NetError::Truncated { layer }),
    }
}

/// Follows VLAN tags, MPLS labels and PPPoE down to IP.
fn ethertype(mut et: u16, mut rest: &[u8]) -> Result<L3<'_>, NetError> {
    for _ in 0..MAX_TAGS {
        match et {
            ETH_IPV4 => return Ok(L3::V4(rest)),
            ETH_IPV6 => return Ok(L3::V6(rest)),
            ETH_VLAN | ETH_QINQ | ETH_QINQ_OLD | ETH_QINQ_OLD2 => {
                et = be16(rest, 2).ok_or(NetError::Truncated { layer: "vlan" })?;
                rest = rest.get(4..).unwrap_or(&[]);
            }
            ETH_MPLS | ETH_MPLS_MC => return mpls(rest),
            ETH_PPPOE => {
                // version/type, code, session id, length, then the PPP protocol.
                let proto = be16(rest, 6).ok_or(NetError::Truncated { layer: "pppoe" })?;
                let inner = rest.get(8..).unwrap_or(&[]);
                return Ok(match proto {
                    0x0021 => L3::V4(inner),
                    0x0057 => L3::V6(inner),
                    _ => L3::NotIp,
                });
            }
            _ => return Ok(L3::NotIp),
        }
    }
    Err(NetError::Malformed {
        layer: "vlan",
        reason: "too many stacked tags",
    })
}

/// Skips an MPLS label stack; what follows is IP if its version nibble says so.
fn mpls(mut rest: &[u8]) -> Result<L3<'_>, NetError> {
    for _ in 0..MAX_TAGS {
        let bottom = rest.get(2).ok_or(NetError::Truncated { layer: "mpls" })? & 1 == 1;
        rest = rest.get(4..).unwrap_or(&[]);
        if bottom {
            return match rest.first().map(|b| b >> 4) {
                Some(4) => Ok(L3::V4(rest)),
                Some(6) => Ok(L3::V6(rest)),
                _ => Ok(L3::NotIp),
            };
        }
    }
    Err(NetError::Malformed {
        layer: "mpls",
        reason: "label stack too deep",
    })
}
