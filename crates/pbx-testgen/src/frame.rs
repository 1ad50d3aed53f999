//! Building link-layer frames: Ethernet (with optional 802.1Q / QinQ tags),
//! Linux cooked v1/v2, raw IP; IPv4 (with fragmentation) and IPv6; UDP and TCP.

use std::net::{IpAddr, SocketAddr};

use crate::pcap::Link;

/// How frames are wrapped.
#[derive(Debug, Clone, Default)]
pub struct Framing {
    /// VLAN ids, outermost first (two = QinQ).
    pub vlans: Vec<u16>,
    /// Largest IPv4/IPv6 packet; bigger UDP datagrams are fragmented.
    pub mtu: Option<usize>,
}

fn checksum16(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in data.chunks(2) {
        let v = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += u32::from(v);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn ipv4_header(
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    payload_len: usize,
    id: u16,
    frag: u16,
) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[0] = 0x45;
    let total = (20 + payload_len) as u16;
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[4..6].copy_from_slice(&id.to_be_bytes());
    h[6..8].copy_from_slice(&frag.to_be_bytes());
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&src);
    h[16..20].copy_from_slice(&dst);
    let c = checksum16(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

/// IP packets (one, or several fragments) carrying `l4` with protocol `proto`.
pub fn ip_packets(
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    l4: &[u8],
    id: u16,
    mtu: Option<usize>,
) -> Vec<Vec<u8>> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let max = mtu.unwrap_or(65_535).max(68) - 20;
            if l4.len() <= max {
                let mut p = ipv4_header(s.octets(), d.octets(), proto, l4.len(), id, 0x4000);
                p.extend_from_slice(l4);
                return vec![p];
            }
            let step = max / 8 * 8;
            let mut out = Vec::new();
            let mut off = 0;
            while off < l4.len() {
                let end = (off + step).min(l4.len());
                let more = end < l4.len();
                let frag = ((off / 8) as u16) | if more { 0x2000 } else { 0 };
                let mut p = ipv4_header(s.octets(), d.octets(), proto, end - off, id, frag);
                p.extend_from_slice(&l4[off..end]);
                out.push(p);
                off = end;
            }
            out
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let max = mtu.unwrap_or(65_535 + 40).max(1280) - 40;
            let hdr = |next: u8, len: usize| {
                let mut h = vec![0u8; 40];
                h[0] = 0x60;
                h[4..6].copy_from_slice(&(len as u16).to_be_bytes());
                h[6] = next;
                h[7] = 64;
                h[8..24].copy_from_slice(&s.octets());
                h[24..40].copy_from_slice(&d.octets());
                h
            };
            if l4.len() <= max {
                let mut p = hdr(proto, l4.len());
                p.extend_from_slice(l4);
                return vec![p];
            }
            let step = (max - 8) / 8 * 8;
            let mut out = Vec::new();
            let mut off = 0;
            while off < l4.len() {
                let end = (off + step).min(l4.len());
                let more = end < l4.len();
                let mut p = hdr(44, 8 + end - off);
                p.push(proto);
                p.push(0);
                let fo = ((off / 8) as u16) << 3 | u16::from(more);
                p.extend_from_slice(&fo.to_be_bytes());
                p.extend_from_slice(&u32::from(id).to_be_bytes());
                p.extend_from_slice(&l4[off..end]);
                out.push(p);
                off = end;
            }
            out
        }
        _ => Vec::new(),
    }
}

/// A UDP header + payload (checksum left 0: allowed for IPv4, and captures
/// with offloaded checksums look the same).
pub fn udp(src: u16, dst: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::with_capacity(8 + payload.len());
    u.extend_from_slice(&src.to_be_bytes());
    u.extend_from_slice(&dst.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&0u16.to_be_bytes());
    u.extend_from_slice(payload);
    u
}

/// A TCP header (no options) + payload.
pub fn tcp(src: u16, dst: u16, seq: u32, ack: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&src.to_be_bytes());
    t[2..4].copy_from_slice(&dst.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&ack.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&65535u16.to_be_bytes());
    t.extend_from_slice(payload);
    t
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

/// Wrap an IP packet in the link layer.
pub fn link_frame(link: Link, framing: &Framing, ip: &[u8]) -> Vec<u8> {
    let v6 = ip.first().is_some_and(|b| b >> 4 == 6);
    let ethertype: u16 = if v6 { 0x86dd } else { 0x0800 };
    let mut f = Vec::with_capacity(ip.len() + 24);
    match link {
        Link::Ethernet => {
            f.extend_from_slice(&[0x00, 0x11, 0x22, 0x33, 0x44, 0x55]);
            f.extend_from_slice(&[0x00, 0x66, 0x77, 0x88, 0x99, 0xaa]);
            for (i, v) in framing.vlans.iter().enumerate() {
                let tpid: u16 = if i == 0 && framing.vlans.len() > 1 {
                    0x88a8
                } else {
                    0x8100
                };
                f.extend_from_slice(&tpid.to_be_bytes());
                f.extend_from_slice(&(v & 0x0fff).to_be_bytes());
            }
            f.extend_from_slice(&ethertype.to_be_bytes());
        }
        Link::LinuxSll => {
            f.extend_from_slice(&0u16.to_be_bytes()); // packet type: to us
            f.extend_from_slice(&1u16.to_be_bytes()); // ARPHRD_ETHER
            f.extend_from_slice(&6u16.to_be_bytes());
            f.extend_from_slice(&[0x00, 0x66, 0x77, 0x88, 0x99, 0xaa, 0, 0]);
            f.extend_from_slice(&ethertype.to_be_bytes());
        }
        Link::LinuxSll2 => {
            f.extend_from_slice(&ethertype.to_be_bytes());
            f.extend_from_slice(&0u16.to_be_bytes()); // reserved
            f.extend_from_slice(&2u32.to_be_bytes()); // interface index
            f.extend_from_slice(&1u16.to_be_bytes()); // ARPHRD_ETHER
            f.push(0); // packet type
            f.push(6);
            f.extend_from_slice(&[0x00, 0x66, 0x77, 0x88, 0x99, 0xaa, 0, 0]);
        }
        Link::RawIp => {}
    }
    f.extend_from_slice(ip);
    f
}

/// Frames for one UDP datagram (several if it is fragmented).
pub fn udp_frames(
    link: Link,
    framing: &Framing,
    src: SocketAddr,
    dst: SocketAddr,
    payload: &[u8],
    ip_id: u16,
) -> Vec<Vec<u8>> {
    let l4 = udp(src.port(), dst.port(), payload);
    ip_packets(src.ip(), dst.ip(), 17, &l4, ip_id, framing.mtu)
        .iter()
        .map(|p| link_frame(link, framing, p))
        .collect()
}

/// One frame for a TCP segment.
#[allow(clippy::too_many_arguments)]
pub fn tcp_frame(
    link: Link,
    framing: &Framing,
    src: SocketAddr,
    dst: SocketAddr,
    seq: u32,
    ack: u32,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let l4 = tcp(src.port(), dst.port(), seq, ack, flags, payload);
    let p = ip_packets(src.ip(), dst.ip(), 6, &l4, 0, None);
    link_frame(link, framing, &p[0])
}
