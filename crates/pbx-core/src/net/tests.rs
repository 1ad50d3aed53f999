//! Tests for the network decoder: frames built by hand (Ethernet, VLAN, QinQ,
//! MPLS, PPPoE, SLL, SLL2, loopback, raw IPv4 / IPv6 with extension headers), IP
//! fragments shuffled and duplicated, TCP segments out of order, repeated,
//! overlapping, wrapping, lost; proptests on reassembly; the shared corpus.

use super::*;
use proptest::prelude::*;
use std::net::{Ipv4Addr, SocketAddrV4};

// ----- packet builders ---------------------------------------------------------------

const A4: [u8; 4] = [10, 0, 0, 1];
const B4: [u8; 4] = [10, 0, 0, 2];
const A6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const B6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

const SYN: u8 = 0x02;
const FIN: u8 = 0x01;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;
const PSH: u8 = 0x08;

fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend(sport.to_be_bytes());
    v.extend(dport.to_be_bytes());
    v.extend(((8 + payload.len()) as u16).to_be_bytes());
    v.extend([0xde, 0xad]); // a wrong checksum: must not matter
    v.extend_from_slice(payload);
    v
}

fn tcp(sport: u16, dport: u16, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend(sport.to_be_bytes());
    v.extend(dport.to_be_bytes());
    v.extend(seq.to_be_bytes());
    v.extend(0u32.to_be_bytes()); // ack
    v.push(6 << 4); // data offset 6 words: one option word
    v.push(flags);
    v.extend(65535u16.to_be_bytes());
    v.extend([0, 0, 0, 0]); // checksum, urgent
    v.extend([1, 1, 1, 0]); // NOP NOP NOP EOL
    v.extend_from_slice(payload);
    v
}

/// IPv4 packet A4 → B4; `frag` = (offset in bytes, more fragments).
fn ipv4_frag(proto: u8, id: u16, frag: (usize, bool), body: &[u8]) -> Vec<u8> {
    ipv4_between(A4, B4, proto, id, frag, body)
}

fn ipv4_between(
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    id: u16,
    frag: (usize, bool),
    body: &[u8],
) -> Vec<u8> {
    let mut h =
        etherparse::Ipv4Header::new(body.len() as u16, 64, etherparse::IpNumber(proto), src, dst)
            .unwrap();
    h.identification = id;
    h.more_fragments = frag.1;
    h.dont_fragment = false;
    h.fragment_offset = etherparse::IpFragOffset::try_new((frag.0 / 8) as u16).unwrap();
    h.header_checksum = h.calc_header_checksum();
    let mut v = h.to_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

fn ipv4(proto: u8, body: &[u8]) -> Vec<u8> {
    ipv4_frag(proto, 1, (0, false), body)
}

/// IPv6 packet with raw extension-header bytes before `body`.
fn ipv6_ext(first_next: u8, ext_and_body: &[u8]) -> Vec<u8> {
    let mut v = vec![0x60, 0, 0, 0];
    v.extend((ext_and_body.len() as u16).to_be_bytes());
    v.push(first_next);
    v.push(64);
    v.extend(A6);
    v.extend(B6);
    v.extend_from_slice(ext_and_body);
    v
}

fn ipv6(next: u8, body: &[u8]) -> Vec<u8> {
    ipv6_ext(next, body)
}

fn ipv6_frag_header(next: u8, offset: usize, more: bool, id: u32) -> Vec<u8> {
    let mut v = vec![next, 0];
    v.extend((((offset / 8) as u16) << 3 | u16::from(more)).to_be_bytes());
    v.extend(id.to_be_bytes());
    v
}

fn eth(ethertype: u16, inner: &[u8]) -> Vec<u8> {
    let mut v = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
    v.extend(ethertype.to_be_bytes());
    v.extend_from_slice(inner);
    v
}

/// Ethernet with VLAN tags (outer first), then `ethertype`.
fn eth_tagged(tags: &[(u16, u16)], ethertype: u16, inner: &[u8]) -> Vec<u8> {
    let mut v = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
    for (tpid, vid) in tags {
        v.extend(tpid.to_be_bytes());
        v.extend(vid.to_be_bytes());
    }
    v.extend(ethertype.to_be_bytes());
    v.extend_from_slice(inner);
    v
}

fn eth4(ip: &[u8]) -> Vec<u8> {
    eth(0x0800, ip)
}

fn sll(proto: u16, inner: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0];
    v.extend(proto.to_be_bytes());
    v.extend_from_slice(inner);
    v
}

fn sll2(proto: u16, inner: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend(proto.to_be_bytes());
    v.extend([0, 0]); // reserved
    v.extend(3u32.to_be_bytes()); // ifindex
    v.extend(1u16.to_be_bytes()); // ARPHRD_ETHER
    v.push(0); // packet type
    v.push(6); // address length
    v.extend([2, 0, 0, 0, 0, 1, 0, 0]);
    v.extend_from_slice(inner);
    v
}

fn null(af: u32, big: bool, inner: &[u8]) -> Vec<u8> {
    let mut v = if big {
        af.to_be_bytes().to_vec()
    } else {
        af.to_le_bytes().to_vec()
    };
    v.extend_from_slice(inner);
    v
}

// ----- running the decoder ----------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
struct Out {
    ts: i64,
    src: SocketAddr,
    dst: SocketAddr,
    transport: Transport,
    payload: Vec<u8>,
    gap: bool,
}

fn collect(
    dec: &mut NetDecoder,
    ts: i64,
    link: LinkType,
    frame: &[u8],
) -> (Vec<Out>, Result<(), NetError>) {
    let mut v = Vec::new();
    let r = dec.decode(
        Timestamp::from_micros(ts),
        link,
        frame,
        &mut |s: &Segment<'_>| {
            v.push(Out {
                ts: s.ts.as_micros(),
                src: s.src,
                dst: s.dst,
                transport: s.transport,
                payload: s.payload.to_vec(),
                gap: s.tcp_gap,
            })
        },
    );
    (v, r)
}

fn one(link: LinkType, frame: &[u8]) -> Out {
    let mut dec = NetDecoder::default();
    let (v, r) = collect(&mut dec, 1, link, frame);
    assert_eq!(r, Ok(()));
    assert_eq!(v.len(), 1, "{v:?}");
    v.into_iter().next().unwrap()
}

fn sa4(ip: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port))
}

fn sa6(ip: [u8; 16], port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port)
}

// ----- link layers and UDP -----------------------------------------------------------------

#[test]
fn udp_over_every_link_type() {
    let u = udp(5060, 5080, b"OPTIONS sip:x SIP/2.0\r\n\r\n");
    let v4 = ipv4(17, &u);
    let v6 = ipv6(17, &u);
    let cases: Vec<(LinkType, Vec<u8>, bool)> = vec![
        (LinkType::Ethernet, eth4(&v4), false),
        (LinkType::Ethernet, eth(0x86dd, &v6), true),
        (
            LinkType::Ethernet,
            eth_tagged(&[(0x8100, 42)], 0x0800, &v4),
            false,
        ),
        (
            LinkType::Ethernet,
            eth_tagged(&[(0x88a8, 1), (0x8100, 2)], 0x0800, &v4),
            false,
        ),
        (
            LinkType::Ethernet,
            eth_tagged(&[(0x9100, 1), (0x8100, 2)], 0x86dd, &v6),
            true,
        ),
        (LinkType::LinuxSll, sll(0x0800, &v4), false),
        (LinkType::LinuxSll, sll(0x86dd, &v6), true),
        (LinkType::LinuxSll2, sll2(0x0800, &v4), false),
        (LinkType::LinuxSll2, sll2(0x86dd, &v6), true),
        (LinkType::Null, null(2, false, &v4), false),
        (LinkType::Null, null(2, true, &v4), false),
        (LinkType::Null, null(10, false, &v6), true),
        (LinkType::Null, null(24, true, &v6), true),
        (LinkType::Null, null(28, false, &v6), true),
        (LinkType::Null, null(30, false, &v6), true),
        (LinkType::Loop, null(2, true, &v4), false),
        (LinkType::Loop, null(24, true, &v6), true),
        (LinkType::RawIp, v4.clone(), false),
        (LinkType::RawIp, v6.clone(), true),
        (LinkType::Ipv4, v4.clone(), false),
        (LinkType::Ipv6, v6.clone(), true),
    ];
    for (link, frame, is6) in cases {
        let o = one(link, &frame);
        assert_eq!(o.transport, Transport::Udp);
        assert_eq!(o.payload, b"OPTIONS sip:x SIP/2.0\r\n\r\n", "{link:?}");
        assert!(!o.gap);
        if is6 {
            assert_eq!((o.src, o.dst), (sa6(A6, 5060), sa6(B6, 5080)), "{link:?}");
        } else {
            assert_eq!((o.src, o.dst), (sa4(A4, 5060), sa4(B4, 5080)), "{link:?}");
        }
    }
}

#[test]
fn mpls_and_pppoe() {
    let v4 = ipv4(17, &udp(1, 2, b"mpls"));
    let mut labels = vec![0, 0x10, 0x00, 64, 0, 0x20, 0x01, 64]; // two labels, bottom set on 2nd
    labels.extend(&v4);
    assert_eq!(
        one(LinkType::Ethernet, &eth(0x8847, &labels)).payload,
        b"mpls"
    );
    let mut pppoe = vec![0x11, 0, 0, 1];
    pppoe.extend(((v4.len() + 2) as u16).to_be_bytes());
    pppoe.extend(0x0021u16.to_be_bytes());
    pppoe.extend(&v4);
    assert_eq!(
        one(LinkType::Ethernet, &eth(0x8864, &pppoe)).payload,
        b"mpls"
    );
}

#[test]
fn udp_fast_path_borrows_the_frame() {
    let frame = eth4(&ipv4(17, &udp(1000, 2000, b"rtp payload")));
    let mut dec = NetDecoder::default();
    let range = frame.as_ptr_range();
    let mut hits = 0;
    dec.decode(
        Timestamp::from_micros(5),
        LinkType::Ethernet,
        &frame,
        &mut |s| {
            assert!(range.contains(&s.payload.as_ptr()));
            assert_eq!(s.ts.as_micros(), 5);
            hits += 1;
        },
    )
    .unwrap();
    assert_eq!(hits, 1);
    assert_eq!(dec.stats().udp_datagrams, 1);
}

#[test]
fn ethernet_padding_and_udp_length() {
    let mut frame = eth4(&ipv4(17, &udp(1, 2, b"ab")));
    frame.extend([0u8; 20]); // minimum-size padding after the IP packet
    assert_eq!(one(LinkType::Ethernet, &frame).payload, b"ab");
    // A UDP length shorter than the IP payload wins (trailing junk ignored).
    let mut u = udp(1, 2, b"abcdef");
    u[4..6].copy_from_slice(&10u16.to_be_bytes());
    assert_eq!(one(LinkType::RawIp, &ipv4(17, &u)).payload, b"ab");
}

#[test]
fn offloaded_zero_lengths_use_the_frame() {
    let mut v4 = ipv4(17, &udp(1, 2, b"tso"));
    v4[2..4].copy_from_slice(&[0, 0]); // IPv4 total length 0
    assert_eq!(one(LinkType::RawIp, &v4).payload, b"tso");
    let mut v6 = ipv6(17, &udp(1, 2, b"jumbo"));
    v6[4..6].copy_from_slice(&[0, 0]); // IPv6 payload length 0
    assert_eq!(one(LinkType::RawIp, &v6).payload, b"jumbo");
}

#[test]
fn errors_are_per_frame_and_counted() {
    let mut dec = NetDecoder::default();
    let good = eth4(&ipv4(17, &udp(1, 2, b"x")));
    let cut = &good[..good.len() - 1]; // snap length cut the datagram
    let cases: Vec<(LinkType, Vec<u8>, Result<(), NetError>)> = vec![
        (
            LinkType::Ethernet,
            good[..10].to_vec(),
            Err(NetError::Truncated { layer: "ethernet" }),
        ),
        (
            LinkType::Ethernet,
            cut.to_vec(),
            Err(NetError::Truncated { layer: "ipv4" }),
        ),
        (LinkType::Ethernet, eth(0x0806, &[0; 28]), Ok(())), // ARP
        (LinkType::Ethernet, eth4(&ipv4(1, &[8, 0, 0, 0])), Ok(())), // ICMP
        (
            LinkType::Ethernet,
            eth4(&ipv4(17, &[1, 2, 3])),
            Err(NetError::Truncated { layer: "udp" }),
        ),
        (
            LinkType::RawIp,
            vec![0x50, 0, 0],
            Err(NetError::Malformed {
                layer: "raw ip",
                reason: "IP version is neither 4 nor 6",
            }),
        ),
        (
            LinkType::RawIp,
            vec![],
            Err(NetError::Truncated { layer: "raw ip" }),
        ),
        (
            LinkType::Other(147),
            good.clone(),
            Err(NetError::Unsupported {
                what: "link type",
                value: 147,
            }),
        ),
        (
            LinkType::LinuxSll2,
            vec![0; 10],
            Err(NetError::Truncated { layer: "sll2" }),
        ),
        (
            LinkType::Ethernet,
            eth_tagged(&[(0x8100, 1); 20], 0x0800, &[]),
            Err(NetError::Malformed {
                layer: "vlan",
                reason: "too many stacked tags",
            }),
        ),
    ];
    for (link, frame, want) in &cases {
        let (out, r) = collect(&mut dec, 1, *link, frame);
        assert_eq!(&r, want, "{link:?} {frame:?}");
        assert!(out.is_empty());
    }
    // IPv4 header length field smaller than 5 words.
    let mut bad = ipv4(17, &udp(1, 2, b"x"));
    bad[0] = 0x44;
    assert!(matches!(
        collect(&mut dec, 1, LinkType::RawIp, &bad).1,
        Err(NetError::Malformed { layer: "ipv4", .. })
    ));
    let s = dec.stats();
    assert_eq!(s.frames, cases.len() as u64 + 1);
    assert_eq!(s.not_ip, 1);
    assert_eq!(s.not_udp_tcp, 1);
    assert_eq!(s.truncated, 5);
    assert_eq!(s.malformed, 3);
    assert_eq!(s.unsupported, 1);
    // Still works afterwards.
    assert_eq!(collect(&mut dec, 2, LinkType::Ethernet, &good).0.len(), 1);
}

#[test]
fn ipv6_extension_headers() {
    // Hop-by-hop (8 bytes) → destination options (16 bytes) → UDP.
    let mut ext = vec![60, 0, 1, 4, 0, 0, 0, 0];
    ext.extend([17, 1, 1, 12]);
    ext.extend([0; 12]);
    ext.extend(udp(7, 8, b"behind extensions"));
    let o = one(LinkType::RawIp, &ipv6_ext(0, &ext));
    assert_eq!(o.payload, b"behind extensions");
    assert_eq!(o.dst, sa6(B6, 8));
    // An atomic fragment (offset 0, no more fragments) is just a header.
    let mut ext = ipv6_frag_header(17, 0, false, 99);
    ext.extend(udp(7, 8, b"atomic"));
    assert_eq!(one(LinkType::RawIp, &ipv6_ext(44, &ext)).payload, b"atomic");
    // No next header.
    let mut dec = NetDecoder::default();
    assert_eq!(
        collect(&mut dec, 1, LinkType::RawIp, &ipv6(59, &[])).1,
        Ok(())
    );
    assert_eq!(dec.stats().not_udp_tcp, 1);
    // Truncated extension header.
    assert_eq!(
        collect(&mut dec, 1, LinkType::RawIp, &ipv6_ext(60, &[17, 3, 0, 0])).1,
        Err(NetError::Truncated {
            layer: "ipv6 extension"
        })
    );
}

// ----- IP fragments ------------------------------------------------------------------------

/// Splits `body` into IPv4 fragments of `size` bytes (a multiple of 8).
fn v4_fragments(proto: u8, id: u16, body: &[u8], size: usize) -> Vec<Vec<u8>> {
    let chunks: Vec<&[u8]> = body.chunks(size).collect();
    let n = chunks.len();
    chunks
        .iter()
        .enumerate()
        .map(|(i, c)| ipv4_frag(proto, id, (i * size, i + 1 < n), c))
        .collect()
}

/// IPv6 fragments; `unfrag` extension bytes precede the fragment header
/// (`first_next` names the first of them or 44).
fn v6_fragments(next: u8, id: u32, body: &[u8], size: usize) -> Vec<Vec<u8>> {
    let chunks: Vec<&[u8]> = body.chunks(size).collect();
    let n = chunks.len();
    chunks
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut ext = ipv6_frag_header(next, i * size, i + 1 < n, id);
            ext.extend_from_slice(c);
            ipv6_ext(44, &ext)
        })
        .collect()
}

fn feed(dec: &mut NetDecoder, frames: &[Vec<u8>], link: LinkType) -> Vec<Out> {
    let mut all = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        let (o, r) = collect(dec, 1_000 + i as i64, link, f);
        assert_eq!(r, Ok(()));
        all.extend(o);
    }
    all
}

#[test]
fn ipv4_fragments_any_order_with_duplicates_and_overlap() {
    let payload: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 251) as u8).collect();
    let dgram = udp(5060, 5060, &payload);
    let mut frags = v4_fragments(17, 77, &dgram, 1480);
    assert_eq!(frags.len(), 3);
    frags.reverse();
    frags.insert(1, frags[0].clone()); // duplicate
                                       // An overlapping fragment carrying the same bytes (offset 8, 1000 bytes).
    frags.push(ipv4_frag(17, 77, (8, true), &dgram[8..1008]));
    frags.swap(0, 2);
    let mut dec = NetDecoder::default();
    let out = feed(&mut dec, &frags, LinkType::RawIp);
    // Completed once; the later overlapping copy starts a new set that never completes.
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].payload, payload);
    assert_eq!(out[0].src, sa4(A4, 5060));
    assert_eq!(dec.stats().reassembled, 1);
    assert_eq!(dec.stats().fragments, frags.len() as u64);
}

#[test]
fn ipv4_fragment_overlap_before_completion() {
    let payload: Vec<u8> = (0..2000u32).map(|i| i as u8).collect();
    let dgram = udp(1, 2, &payload);
    let frags = vec![
        ipv4_frag(17, 5, (1000, false), &dgram[1000..]),
        ipv4_frag(17, 5, (0, true), &dgram[..600]),
        ipv4_frag(17, 5, (400, true), &dgram[400..1200]), // overlaps both
    ];
    let mut dec = NetDecoder::default();
    let out = feed(&mut dec, &frags, LinkType::RawIp);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].payload, payload);
}

#[test]
fn tcp_over_ipv4_fragments() {
    let mut dec = NetDecoder::default();
    let seg = tcp(5060, 5061, 1000, SYN, b"");
    assert_eq!(
        collect(&mut dec, 1, LinkType::RawIp, &ipv4(6, &seg)).1,
        Ok(())
    );
    let body: Vec<u8> = b"INVITE sip:a@b SIP/2.0\r\n".repeat(100);
    let seg = tcp(5060, 5061, 1001, ACK | PSH, &body);
    let mut frags = v4_fragments(6, 9, &seg, 504);
    frags.rotate_left(2);
    let out = feed(&mut dec, &frags, LinkType::RawIp);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].transport, Transport::Tcp);
    assert_eq!(out[0].payload, body);
}

#[test]
fn fragment_timeout_conflicts_and_limits() {
    let dgram = udp(1, 2, &[7u8; 2000]);
    let frags = v4_fragments(17, 1, &dgram, 1000);
    let mut dec = NetDecoder::default();
    // First fragment, then the last one 31 s later: the set has expired.
    assert!(collect(&mut dec, 0, LinkType::RawIp, &frags[0])
        .0
        .is_empty());
    assert_eq!(dec.pending_fragment_sets(), 1);
    assert!(collect(&mut dec, 31_000_000, LinkType::RawIp, &frags[2])
        .0
        .is_empty());
    assert_eq!(dec.stats().frag_timeouts, 1);
    assert!(collect(&mut dec, 31_000_001, LinkType::RawIp, &frags[1])
        .0
        .is_empty());

    // Two different "last" fragments: the set is dropped.
    let mut dec = NetDecoder::default();
    assert_eq!(
        collect(
            &mut dec,
            0,
            LinkType::RawIp,
            &ipv4_frag(17, 3, (1000, false), &[0; 100])
        )
        .1,
        Ok(())
    );
    assert_eq!(
        collect(
            &mut dec,
            0,
            LinkType::RawIp,
            &ipv4_frag(17, 3, (1000, false), &[0; 200])
        )
        .1,
        Ok(())
    );
    assert_eq!(dec.stats().frag_dropped, 1);
    assert_eq!(dec.pending_fragment_sets(), 0);

    // Beyond the largest datagram.
    assert_eq!(
        collect(
            &mut dec,
            0,
            LinkType::RawIp,
            &ipv4_frag(17, 4, (65_528, true), &[0; 16])
        )
        .1,
        Ok(())
    );
    assert_eq!(dec.stats().frag_dropped, 2);
    assert_eq!(dec.pending_fragment_sets(), 0);

    // The number of sets is capped; the oldest goes first.
    let mut dec = NetDecoder::new(NetLimits {
        max_frag_sets: 8,
        ..NetLimits::default()
    });
    for id in 0..100u16 {
        assert_eq!(
            collect(
                &mut dec,
                0,
                LinkType::RawIp,
                &ipv4_frag(17, id, (0, true), &[0; 8])
            )
            .1,
            Ok(())
        );
    }
    assert_eq!(dec.pending_fragment_sets(), 8);
    assert_eq!(dec.stats().frag_dropped, 92);
    // The newest set can still complete.
    let out = collect(
        &mut dec,
        0,
        LinkType::RawIp,
        &ipv4_frag(17, 99, (8, false), &[0; 8]),
    )
    .0;
    assert_eq!(out.len(), 1);

    // Bytes are capped too.
    let mut dec = NetDecoder::new(NetLimits {
        max_frag_bytes: 10_000,
        ..NetLimits::default()
    });
    for id in 0..50u16 {
        assert_eq!(
            collect(
                &mut dec,
                0,
                LinkType::RawIp,
                &ipv4_frag(17, id, (0, true), &[0; 1000])
            )
            .1,
            Ok(())
        );
    }
    assert!(dec.pending_fragment_sets() <= 10);
}

#[test]
fn ipv6_fragments_shuffled_with_extension_after_fragment_header() {
    // The fragmentable part starts with a destination options header.
    let payload: Vec<u8> = (0..5000u32).map(|i| (i % 253) as u8).collect();
    let mut fragmentable = vec![17, 0, 1, 4, 0, 0, 0, 0];
    fragmentable.extend(udp(5004, 5006, &payload));
    let mut frags = v6_fragments(60, 0xabcdef, &fragmentable, 1232);
    frags.swap(0, 3);
    frags.swap(1, 2);
    let dup = frags[2].clone();
    frags.insert(0, dup);
    let mut dec = NetDecoder::default();
    let out = feed(&mut dec, &frags, LinkType::RawIp);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].payload, payload);
    assert_eq!(out[0].src, sa6(A6, 5004));
    assert_eq!(dec.stats().reassembled, 1);
}

// ----- TCP ----------------------------------------------------------------------------------

struct Conn {
    dec: NetDecoder,
    ts: i64,
    out: Vec<Out>,
}

impl Conn {
    fn new(limits: NetLimits) -> Conn {
        Conn {
            dec: NetDecoder::new(limits),
            ts: 1_000_000,
            out: Vec::new(),
        }
    }

    fn send(&mut self, seq: u32, flags: u8, payload: &[u8]) {
        self.send_dir(false, seq, flags, payload);
    }

    fn send_dir(&mut self, reverse: bool, seq: u32, flags: u8, payload: &[u8]) {
        let (s, d) = if reverse {
            (5060, 40000)
        } else {
            (40000, 5060)
        };
        let seg = tcp(s, d, seq, flags, payload);
        let frame = if reverse {
            eth4(&ipv4_between(B4, A4, 6, 1, (0, false), &seg))
        } else {
            eth4(&ipv4(6, &seg))
        };
        self.ts += 1_000;
        let (o, r) = collect(&mut self.dec, self.ts, LinkType::Ethernet, &frame);
        assert_eq!(r, Ok(()));
        self.out.extend(o);
    }

    fn advance(&mut self, us: i64) {
        self.ts += us;
        let mut v = Vec::new();
        self.dec.expire(Timestamp::from_micros(self.ts), &mut |s| {
            v.push((s.payload.to_vec(), s.tcp_gap))
        });
        for (p, g) in v {
            self.out.push(Out {
                ts: self.ts,
                src: sa4(A4, 40000),
                dst: sa4(B4, 5060),
                transport: Transport::Tcp,
                payload: p,
                gap: g,
            });
        }
    }

    fn bytes(&self) -> Vec<u8> {
        self.out.iter().flat_map(|o| o.payload.clone()).collect()
    }

    fn gaps(&self) -> Vec<bool> {
        self.out.iter().map(|o| o.gap).collect()
    }
}

#[test]
fn tcp_in_order_from_syn() {
    let mut c = Conn::new(NetLimits::default());
    c.send(100, SYN, b"");
    c.send(101, ACK, b"hello ");
    c.send(107, ACK | PSH, b"world");
    assert_eq!(c.bytes(), b"hello world");
    assert_eq!(c.gaps(), vec![false, false]);
    assert_eq!(c.out[0].src, sa4(A4, 40000));
    assert_eq!(c.out[0].dst, sa4(B4, 5060));
    assert_eq!(c.out[0].transport, Transport::Tcp);
    // In-order TCP is borrowed too: nothing buffered.
    assert_eq!(c.dec.tcp_buffered_bytes(), 0);
}

#[test]
fn tcp_picked_up_mid_stream_is_a_gap_once() {
    let mut c = Conn::new(NetLimits::default());
    c.send(5000, ACK, b"");
    c.send(5000, ACK, b"INVITE");
    c.send(5006, ACK, b" sip:");
    assert_eq!(c.bytes(), b"INVITE sip:");
    assert_eq!(c.gaps(), vec![true, false]);
}

#[test]
fn tcp_out_of_order_duplicate_overlap() {
    let mut c = Conn::new(NetLimits::default());
    c.send(0, SYN, b"");
    c.send(11, ACK, b"klmno"); // ahead
    c.send(6, ACK, b"fghij"); // ahead
    c.send(6, ACK, b"fghij"); // duplicate of a buffered one
    c.send(1, ACK, b"abcde"); // fills the hole: releases both
    c.send(1, ACK, b"abcde"); // retransmission
    c.send(9, ACK, b"ijklmnopq"); // overlaps delivered bytes, adds "pq"
    c.send(20, ACK, b"t"); // ahead again
    c.send(16, ACK, b"pqrs"); // partly old
    assert_eq!(c.bytes(), b"abcdefghijklmnopqrst");
    assert!(c.gaps().iter().all(|g| !g));
    let s = c.dec.stats();
    assert_eq!(s.tcp_out_of_order, 3);
    assert_eq!(s.tcp_retransmits, 2);
    assert_eq!(c.dec.tcp_buffered_bytes(), 0);
}

#[test]
fn tcp_sequence_wraps() {
    let mut c = Conn::new(NetLimits::default());
    let isn = u32::MAX - 5;
    // Stream offset k is sequence number isn + 1 + k; offset 4 is u32::MAX, 5 is 0.
    let at = |k: u32| isn.wrapping_add(1).wrapping_add(k);
    c.send(isn, SYN, b"");
    c.send(at(6), ACK, b"6789"); // after the wrap, ahead
    c.send(at(0), ACK, b"012345"); // crosses the wrap
    c.send(at(4), ACK, b"45"); // old
    c.send(at(4), ACK, b"456789a"); // overlaps, adds "a"
    c.send(at(11), ACK, b"b");
    assert_eq!(c.bytes(), b"0123456789ab");
    assert!(c.gaps().iter().all(|g| !g));
    assert_eq!(at(5), 0);
}

#[test]
fn tcp_hole_times_out_into_a_gap() {
    let mut c = Conn::new(NetLimits::default());
    c.send(0, SYN, b"");
    c.send(1, ACK, b"aaaa");
    c.send(9, ACK, b"cccc"); // bytes 5..9 never arrive
    assert_eq!(c.bytes(), b"aaaa");
    c.advance(1_000_000);
    assert_eq!(c.bytes(), b"aaaa", "still waiting");
    c.advance(1_500_000);
    assert_eq!(c.bytes(), b"aaaacccc");
    assert_eq!(c.gaps(), vec![false, true]);
    // Late arrival of the missing bytes is old now.
    c.send(5, ACK, b"bbbb");
    c.send(13, ACK, b"dd");
    assert_eq!(c.bytes(), b"aaaaccccdd");
    assert_eq!(c.dec.stats().tcp_gaps, 1);
    // The timestamp of the flushed bytes is their arrival time, not later.
    assert!(c.out[1].ts < c.ts);
}

#[test]
fn tcp_hole_also_times_out_on_the_next_segment() {
    let mut c = Conn::new(NetLimits::default());
    c.send(0, SYN, b"");
    c.send(5, ACK, b"late");
    c.ts += 3_000_000;
    c.send(9, ACK, b"next");
    assert_eq!(c.bytes(), b"latenext");
    assert_eq!(c.gaps(), vec![true, false]);
}

#[test]
fn tcp_buffer_cap_forces_a_gap() {
    let mut c = Conn::new(NetLimits {
        max_tcp_ooo_bytes: 100,
        ..NetLimits::default()
    });
    c.send(0, SYN, b"");
    c.send(1, ACK, b"x"); // delivered
                          // Bytes 2..12 are lost; 12.. arrive in 40-byte segments.
    for i in 0..4u32 {
        c.send(12 + 40 * i, ACK, &[b'a' + i as u8; 40]);
    }
    // 3 segments (120 bytes) do not fit: the hole is given up when the third comes.
    let b = c.bytes();
    assert_eq!(b[0], b'x');
    assert_eq!(b.len(), 1 + 160);
    assert_eq!(c.gaps(), vec![false, true, false, false, false]);
    assert!(c.dec.tcp_buffered_bytes() <= 100);
}

#[test]
fn tcp_far_jump_resyncs() {
    let mut c = Conn::new(NetLimits::default());
    c.send(0, SYN, b"");
    c.send(1, ACK, b"old stream");
    c.send(1_000_000_000, ACK, b"new stream"); // ~1 GB ahead
    c.send(1_000_000_010, ACK, b"!");
    c.send(500, ACK, b"far behind now"); // ~1 GB behind: also a restart
    assert_eq!(c.bytes(), b"old streamnew stream!far behind now");
    assert_eq!(c.gaps(), vec![false, true, false, true]);
}

#[test]
fn tcp_fin_closes_and_retransmissions_after_are_ignored() {
    let mut c = Conn::new(NetLimits::default());
    c.send(0, SYN, b"");
    c.send(1, ACK, b"BYE");
    c.send(4, FIN | ACK, b"!");
    assert_eq!(c.bytes(), b"BYE!");
    c.send(1, ACK, b"BYE"); // retransmitted after close
    c.send(4, FIN | ACK, b"!");
    assert_eq!(c.bytes(), b"BYE!");
    assert_eq!(c.dec.tcp_flows(), 1, "a small closed record remains");
    c.advance(11_000_000);
    c.send_dir(true, 7, ACK, b""); // any frame runs timers; pure ACK starts nothing
    c.advance(1);
    assert_eq!(c.dec.tcp_flows(), 0, "the closed record lingers 10 s");
}

#[test]
fn tcp_fin_with_a_hole_waits_then_flushes() {
    let mut c = Conn::new(NetLimits::default());
    c.send(0, SYN, b"");
    c.send(6, FIN | ACK, b"world"); // "hello" still missing
    assert!(c.bytes().is_empty());
    c.send(1, ACK, b"hello"); // retransmission arrives after the FIN
    assert_eq!(c.bytes(), b"helloworld");
    assert!(c.gaps().iter().all(|g| !g));
}

#[test]
fn tcp_rst_flushes_with_gap() {
    let mut c = Conn::new(NetLimits::default());
    c.send(0, SYN, b"");
    c.send(1, ACK, b"ab");
    c.send(10, ACK, b"zz");
    c.send(12, RST, b"");
    assert_eq!(c.bytes(), b"abzz");
    assert_eq!(c.gaps(), vec![false, true]);
    assert_eq!(c.dec.tcp_buffered_bytes(), 0);
}

#[test]
fn tcp_new_syn_on_same_ports_starts_over() {
    let mut c = Conn::new(NetLimits::default());
    c.send(0, SYN, b"");
    c.send(1, ACK, b"first");
    c.send(0, SYN, b""); // retransmitted SYN: same stream
    c.send(6, ACK, b"!");
    c.send(90_000, SYN, b""); // a new connection
    c.send(90_001, ACK, b"second");
    assert_eq!(c.bytes(), b"first!second");
    assert_eq!(c.gaps(), vec![false, false, true]);
}

#[test]
fn tcp_directions_are_separate() {
    let mut c = Conn::new(NetLimits::default());
    c.send(0, SYN, b"");
    c.send_dir(true, 500, SYN | ACK, b"");
    c.send(1, ACK, b"INVITE");
    c.send_dir(true, 501, ACK, b"SIP/2.0 100");
    let fwd: Vec<u8> = c
        .out
        .iter()
        .filter(|o| o.src.port() == 40000)
        .flat_map(|o| o.payload.clone())
        .collect();
    let rev: Vec<u8> = c
        .out
        .iter()
        .filter(|o| o.src.port() == 5060)
        .flat_map(|o| o.payload.clone())
        .collect();
    assert_eq!(fwd, b"INVITE");
    assert_eq!(rev, b"SIP/2.0 100");
    assert_eq!(c.dec.tcp_flows(), 2);
}

#[test]
fn tcp_finish_flushes_everything() {
    let mut c = Conn::new(NetLimits::default());
    c.send(0, SYN, b"");
    c.send(3, ACK, b"cd");
    c.send(7, ACK, b"gh");
    let mut v = Vec::new();
    c.dec
        .finish(&mut |s| v.push((s.payload.to_vec(), s.tcp_gap)));
    assert_eq!(v, vec![(b"cd".to_vec(), true), (b"gh".to_vec(), true)]);
    assert_eq!(c.dec.tcp_flows(), 0);
    assert_eq!(c.dec.tcp_buffered_bytes(), 0);
}

#[test]
fn tcp_idle_flows_expire() {
    let mut c = Conn::new(NetLimits::default());
    c.send(0, SYN, b"");
    c.send(1, ACK, b"a");
    c.advance(301_000_000);
    assert_eq!(c.dec.tcp_flows(), 0);
    assert_eq!(c.dec.stats().tcp_flows_expired, 1);
}

#[test]
fn tcp_flow_table_is_capped() {
    let mut dec = NetDecoder::new(NetLimits {
        max_tcp_flows: 16,
        ..NetLimits::default()
    });
    for port in 0..1000u16 {
        let f = eth4(&ipv4(6, &tcp(port, 80, 1, ACK, b"data")));
        let (o, r) = collect(&mut dec, i64::from(port), LinkType::Ethernet, &f);
        assert_eq!(r, Ok(()));
        assert_eq!(o.len(), 1, "the newest flow always gets in");
        assert!(dec.tcp_flows() <= 16);
    }
    assert!(dec.stats().tcp_flows_evicted > 900);
}

#[test]
fn tcp_truncated_and_malformed_headers() {
    let mut dec = NetDecoder::default();
    let (_, r) = collect(&mut dec, 1, LinkType::RawIp, &ipv4(6, &[0; 10]));
    assert_eq!(r, Err(NetError::Truncated { layer: "tcp" }));
    let mut t = tcp(1, 2, 3, ACK, b"x");
    t[12] = 2 << 4; // data offset 2 words
    let (_, r) = collect(&mut dec, 1, LinkType::RawIp, &ipv4(6, &t));
    assert!(matches!(r, Err(NetError::Malformed { layer: "tcp", .. })));
}

// ----- properties ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn tcp_split_shuffle_duplicate_reassembles(
        data in proptest::collection::vec(any::<u8>(), 1..6000),
        cuts in proptest::collection::vec(1usize..700, 1..40),
        isn in prop_oneof![any::<u32>(), (u32::MAX - 3000)..=u32::MAX],
        order in proptest::collection::vec(any::<u32>(), 60),
        dups in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
    ) {
        // Split into segments at the given sizes (cycled).
        let mut segs: Vec<(u32, &[u8])> = Vec::new();
        let mut off = 0usize;
        let mut i = 0;
        while off < data.len() {
            let n = cuts[i % cuts.len()].min(data.len() - off);
            segs.push((isn.wrapping_add(1).wrapping_add(off as u32), &data[off..off + n]));
            off += n;
            i += 1;
        }
        for d in &dups {
            let s = segs[d.index(segs.len())];
            segs.push(s);
        }
        // Shuffle by sorting on random keys.
        let mut keyed: Vec<(u32, (u32, &[u8]))> = segs
            .iter()
            .enumerate()
            .map(|(i, s)| (order[i % order.len()].wrapping_mul(i as u32 + 1), *s))
            .collect();
        keyed.sort_by_key(|k| k.0);
        let mut dec = NetDecoder::default();
        let mut got = Vec::new();
        let mut gaps = 0;
        let mut sink = |s: &Segment<'_>| {
            got.extend_from_slice(s.payload);
            gaps += usize::from(s.tcp_gap);
        };
        let syn = eth4(&ipv4(6, &tcp(1, 2, isn, SYN, b"")));
        dec.decode(Timestamp::from_micros(0), LinkType::Ethernet, &syn, &mut sink).unwrap();
        for (n, (_, (seq, p))) in keyed.iter().enumerate() {
            let f = eth4(&ipv4(6, &tcp(1, 2, *seq, ACK, p)));
            dec.decode(Timestamp::from_micros(10 + n as i64), LinkType::Ethernet, &f, &mut sink).unwrap();
        }
        prop_assert_eq!(&got, &data);
        prop_assert_eq!(gaps, 0);
        prop_assert_eq!(dec.tcp_buffered_bytes(), 0);
    }

    #[test]
    fn udp_fragment_shuffle_reassembles(
        payload in proptest::collection::vec(any::<u8>(), 0..5000),
        size8 in 1usize..200,
        v6 in any::<bool>(),
        order in proptest::collection::vec(any::<u32>(), 1..700),
        dup in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let size = size8 * 8;
        let dgram = udp(4000, 4002, &payload);
        let mut frags = if v6 {
            v6_fragments(17, 0x1234_5678, &dgram, size)
        } else {
            v4_fragments(17, 0x4321, &dgram, size)
        };
        let whole = frags.len() == 1;
        if let Some(d) = dup {
            let f = frags[d.index(frags.len())].clone();
            frags.push(f);
        }
        let mut keyed: Vec<(u32, Vec<u8>)> = frags
            .into_iter()
            .enumerate()
            .map(|(i, f)| (order[i % order.len()] ^ (i as u32).wrapping_mul(2_654_435_761), f))
            .collect();
        keyed.sort_by_key(|k| k.0);
        let mut dec = NetDecoder::default();
        let mut got = Vec::new();
        for (_, f) in &keyed {
            dec.decode(Timestamp::from_micros(1), LinkType::RawIp, f, &mut |s| {
                got.push(s.payload.to_vec())
            })
            .unwrap();
        }
        if whole {
            // Not fragmented at all: every copy is a datagram.
            prop_assert_eq!(got, vec![payload; keyed.len()]);
        } else {
            // A duplicate arriving after completion starts a set that never completes.
            prop_assert_eq!(got, vec![payload]);
        }
    }

    #[test]
    fn arbitrary_frames_never_panic(
        frames in proptest::collection::vec((0u8..10, proptest::collection::vec(any::<u8>(), 0..200)), 1..30)
    ) {
        let mut dec = NetDecoder::new(NetLimits {
            max_tcp_flows: 4,
            max_frag_sets: 4,
            max_tcp_ooo_bytes: 64,
            ..NetLimits::default()
        });
        for (i, (l, f)) in frames.iter().enumerate() {
            let link = [
                LinkType::Ethernet, LinkType::LinuxSll, LinkType::LinuxSll2, LinkType::RawIp,
                LinkType::Ipv4, LinkType::Ipv6, LinkType::Null, LinkType::Loop,
                LinkType::Other(9), LinkType::RawIp,
            ][*l as usize];
            let _ = dec.decode(Timestamp::from_micros(i as i64 * 700_000), link, f, &mut |_| {});
        }
        dec.finish(&mut |_| {});
    }
}

// ----- the shared corpus ------------------------------------------------------------------

fn corpus(name: &str) -> Option<Vec<u8>> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/corpus")
        .join(name);
    match std::fs::read(&path) {
        Ok(b) => Some(b),
        Err(_) => {
            eprintln!("note: {} missing, corpus test skipped", path.display());
            None
        }
    }
}

/// Decodes a whole capture: every segment, and the decoder's stats.
fn decode_capture(bytes: &[u8]) -> (Vec<Out>, NetStats) {
    let mut reader = crate::capture::CaptureReader::new(std::io::Cursor::new(bytes)).unwrap();
    let mut dec = NetDecoder::default();
    let mut out = Vec::new();
    let mut push = |s: &Segment<'_>| {
        out.push(Out {
            ts: s.ts.as_micros(),
            src: s.src,
            dst: s.dst,
            transport: s.transport,
            payload: s.payload.to_vec(),
            gap: s.tcp_gap,
        })
    };
    while let Some(f) = reader.next_frame().unwrap() {
        let _ = dec.decode(f.ts, f.link, f.data, &mut push);
    }
    dec.finish(&mut push);
    (out, dec.stats().clone())
}

fn stream(out: &[Out], src: &str, dst: &str) -> Vec<u8> {
    out.iter()
        .filter(|o| {
            o.transport == Transport::Tcp && o.src.to_string() == src && o.dst.to_string() == dst
        })
        .flat_map(|o| o.payload.clone())
        .collect()
}

fn count(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

#[test]
fn corpus_sip_over_tcp() {
    let Some(bytes) = corpus("sip_ipv4_tcp.pcap") else {
        return;
    };
    let (out, stats) = decode_capture(&bytes);
    // tshark -r sip_ipv4_tcp.pcap -Y sip -T fields -e sip.Request-Line -e sip.Status-Line
    let caller = stream(&out, "10.33.6.100:64802", "10.33.6.101:5060");
    let callee = stream(&out, "10.33.6.101:5060", "10.33.6.100:64802");
    assert!(caller.starts_with(b"INVITE sip:201@10.33.6.101;user=phone SIP/2.0\r\n"));
    assert_eq!(
        count(
            &caller,
            b"ACK sip:201@10.33.6.101:5060;transport=tcp SIP/2.0\r\n"
        ),
        1
    );
    assert_eq!(count(&caller, b"SIP/2.0 200 OK\r\n"), 1);
    assert!(callee.starts_with(b"SIP/2.0 100 Trying\r\n"));
    assert_eq!(count(&callee, b"SIP/2.0 180 Ringing\r\n"), 1);
    assert_eq!(
        count(
            &callee,
            b"BYE sip:101@10.33.6.100:5060;transport=tcp SIP/2.0\r\n"
        ),
        1
    );
    assert!(out
        .iter()
        .filter(|o| o.transport == Transport::Tcp)
        .all(|o| !o.gap));
    // RTP and RTCP over UDP are there too.
    assert!(stats.udp_datagrams >= 66, "{stats:?}");
    assert_eq!(stats.malformed + stats.truncated + stats.unsupported, 0);
}

#[test]
fn corpus_sip_over_tcp_split_and_coalesced() {
    let Some(bytes) = corpus("sip_ipv4_tcp_fragmented.pcap") else {
        return;
    };
    let (out, stats) = decode_capture(&bytes);
    // tshark -r sip_ipv4_tcp_fragmented.pcap -d tcp.port==6060,sip -Y sip.Request-Line
    //   -T fields -e sip.Request-Line | awk '{print $1}' | sort | uniq -c
    // → 37 INVITE, 63 UPDATE, 37 ACK, 34 BYE, 5 PRACK, 5 OPTIONS, 2 CANCEL.
    let mut streams: std::collections::HashMap<(SocketAddr, SocketAddr), Vec<u8>> =
        std::collections::HashMap::new();
    for o in &out {
        streams
            .entry((o.src, o.dst))
            .or_default()
            .extend(&o.payload);
    }
    let starts = |m: &str| -> usize {
        streams
            .values()
            .map(|s| {
                count(s, format!("\n{m} sip:").as_bytes())
                    + usize::from(s.starts_with(format!("{m} sip:").as_bytes()))
            })
            .sum()
    };
    assert_eq!(starts("INVITE"), 37);
    assert_eq!(starts("UPDATE"), 63);
    assert_eq!(starts("BYE"), 34);
    assert_eq!(starts("CANCEL"), 2);
    let first = stream(&out, "10.186.207.1:37398", "10.186.205.131:6060");
    assert!(first.starts_with(b"INVITE sip:699818@10.186.205.131:6060;transport=tcp SIP/2.0\r\n"));
    // Picked up mid-stream: exactly one gap per direction (its first bytes), no others.
    let dirs: std::collections::HashSet<_> = out.iter().map(|o| (o.src, o.dst)).collect();
    assert_eq!(dirs.len(), 8);
    assert_eq!(out.iter().filter(|o| o.gap).count(), 8);
    assert_eq!(stats.tcp_gaps, 8);
    assert_eq!(stats.udp_datagrams, 0);
}

#[test]
fn corpus_linux_cooked_udp() {
    let Some(bytes) = corpus("opus-2013785496.pcap") else {
        return;
    };
    let (out, stats) = decode_capture(&bytes);
    // tshark -r opus-2013785496.pcap -T fields -e udp.srcport | sort | uniq -c → 765 × 4002
    assert_eq!(out.len(), 765);
    assert!(out
        .iter()
        .all(|o| o.transport == Transport::Udp && o.src.port() == 4002));
    assert_eq!(stats.frames, 765);
}

#[test]
fn corpus_every_file_decodes() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        eprintln!("note: {} missing, corpus test skipped", dir.display());
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !(name.ends_with(".pcap") || name.ends_with(".pcapng") || name.ends_with(".cap")) {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let (out, stats) = decode_capture(&bytes);
        eprintln!("{name}: {} segments, {stats:?}", out.len());
        assert!(stats.udp_datagrams > 0 || stats.tcp_bytes > 0, "{name}");
        assert_eq!(stats.unsupported, 0, "{name}");
    }
}

// ----- tunnels ---------------------------------------------------------------------------

const OUTER_A: [u8; 4] = [192, 168, 7, 1];
const OUTER_B: [u8; 4] = [192, 168, 7, 2];

/// An RTP-looking datagram between the inner hosts A and B.
fn inner_rtp() -> (Vec<u8>, Vec<u8>) {
    let rtp = vec![0x80, 0, 0, 1, 0, 0, 0, 160, 0, 0, 0, 7, 0xd5, 0xd5];
    (ipv4(17, &udp(40000, 50000, &rtp)), rtp)
}

fn outer4(proto: u8, body: &[u8]) -> Vec<u8> {
    eth4(&ipv4_between(OUTER_A, OUTER_B, proto, 9, (0, false), body))
}

fn vxlan(inner_frame: &[u8]) -> Vec<u8> {
    let mut v = vec![0x08, 0, 0, 0, 0, 0, 42, 0];
    v.extend_from_slice(inner_frame);
    v
}

fn gre(flags: u16, proto: u16, words: usize, inner: &[u8]) -> Vec<u8> {
    let mut v = flags.to_be_bytes().to_vec();
    v.extend(proto.to_be_bytes());
    v.extend(vec![0u8; 4 * words]);
    v.extend_from_slice(inner);
    v
}

fn expect_inner(frame: &[u8]) {
    let (_, rtp) = inner_rtp();
    let mut dec = NetDecoder::default();
    let (v, r) = collect(&mut dec, 1, LinkType::Ethernet, frame);
    assert_eq!(r, Ok(()));
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0].src, sa4(A4, 40000), "the inner addresses");
    assert_eq!(v[0].dst, sa4(B4, 50000));
    assert_eq!(v[0].payload, rtp);
    assert!(dec.stats().tunnelled >= 1);
}

#[test]
fn vxlan_gre_erspan_and_ip_in_ip_are_unwrapped() {
    let (ip, _) = inner_rtp();
    // VXLAN on 4789 and 8472.
    for port in [4789, 8472] {
        expect_inner(&outer4(17, &udp(33333, port, &vxlan(&eth4(&ip)))));
    }
    // GRE: IPv4 inside; with checksum, key and sequence; Ethernet inside.
    expect_inner(&outer4(47, &gre(0, 0x0800, 0, &ip)));
    expect_inner(&outer4(47, &gre(0xb000, 0x0800, 3, &ip)));
    expect_inner(&outer4(47, &gre(0x2000, 0x6558, 1, &eth4(&ip))));
    // ERSPAN I, II (sequence number + 8-byte header), III (12 bytes).
    expect_inner(&outer4(47, &gre(0, 0x88be, 0, &eth4(&ip))));
    let mut e2 = vec![0x10, 0x01, 0, 0x05, 0, 0, 0, 1];
    e2.extend(eth4(&ip));
    expect_inner(&outer4(47, &gre(0x1000, 0x88be, 1, &e2)));
    let mut e3 = vec![0x20, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0];
    e3.extend(eth4(&ip));
    expect_inner(&outer4(47, &gre(0x1000, 0x22eb, 1, &e3)));
    // IPv4 in IPv4, IPv4 in IPv6 (over GRE), VLAN-tagged inner frame.
    expect_inner(&outer4(4, &ip));
    expect_inner(&eth(0x86dd, &ipv6(47, &gre(0, 0x0800, 0, &ip))));
    expect_inner(&outer4(
        17,
        &udp(1, 4789, &vxlan(&eth_tagged(&[(0x8100, 12)], 0x0800, &ip))),
    ));
}

#[test]
fn tunnels_nest_four_deep_and_no_deeper() {
    let (ip, _) = inner_rtp();
    let mut p = ip;
    for _ in 0..4 {
        p = ipv4_between(OUTER_A, OUTER_B, 4, 9, (0, false), &p);
    }
    // Four IP-in-IP layers inside the captured packet: all unwrapped.
    expect_inner(&eth4(&p));
    let p5 = ipv4_between(OUTER_A, OUTER_B, 4, 9, (0, false), &p);
    let mut dec = NetDecoder::default();
    let (v, r) = collect(&mut dec, 1, LinkType::Ethernet, &eth4(&p5));
    assert!(v.is_empty());
    assert!(matches!(
        r,
        Err(NetError::Malformed {
            layer: "tunnel",
            ..
        })
    ));
    assert_eq!(dec.stats().malformed, 1);
}

#[test]
fn rtp_on_a_vxlan_port_and_broken_tunnels() {
    // RTP that happens to use port 4789 is RTP, not VXLAN.
    let rtp = [0x80u8, 0, 0, 1, 0, 0, 0, 160, 0, 0, 0, 7, 0xd5];
    let o = one(LinkType::Ethernet, &eth4(&ipv4(17, &udp(5000, 4789, &rtp))));
    assert_eq!(o.payload, rtp);
    assert_eq!(o.dst, sa4(B4, 4789));
    // Truncated GRE, PPTP's GRE, GRE carrying PPP: counted, never a panic.
    let mut dec = NetDecoder::default();
    let (_, r) = collect(&mut dec, 1, LinkType::Ethernet, &outer4(47, &[0x80, 0]));
    assert!(matches!(r, Err(NetError::Truncated { layer: "gre" })));
    let (_, r) = collect(
        &mut dec,
        2,
        LinkType::Ethernet,
        &outer4(47, &gre(0x3001, 0x880b, 2, &[])),
    );
    assert!(matches!(r, Err(NetError::Unsupported { .. })));
    let (v, r) = collect(
        &mut dec,
        3,
        LinkType::Ethernet,
        &outer4(47, &gre(0, 0x880b, 0, &[1])),
    );
    assert_eq!((v.len(), r), (0, Ok(())));
    assert_eq!(dec.stats().not_ip, 1);
    assert_eq!((dec.stats().truncated, dec.stats().unsupported), (1, 1));
}

proptest! {
    /// Any bytes inside any tunnel: never a panic, and whatever comes out
    /// came from inside the frame.
    #[test]
    fn any_bytes_in_a_tunnel_never_panic(
        body in prop::collection::vec(any::<u8>(), 0..200),
        kind in 0u8..5,
    ) {
        let frame = match kind {
            0 => outer4(17, &udp(1, 4789, &[&[0x08, 0, 0, 0, 0, 0, 0, 0][..], &body].concat())),
            1 => outer4(47, &body),
            2 => outer4(4, &body),
            3 => outer4(41, &body),
            _ => outer4(47, &gre(0x1000, 0x22eb, 1, &body)),
        };
        let mut dec = NetDecoder::default();
        let (v, _) = collect(&mut dec, 1, LinkType::Ethernet, &frame);
        for s in v {
            prop_assert!(s.payload.len() <= frame.len());
        }
    }
}
