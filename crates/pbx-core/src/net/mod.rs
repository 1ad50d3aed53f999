//! # net: link-layer frames → UDP datagrams and in-order TCP stream bytes
//!
//! In: one frame at a time with its capture timestamp and [`LinkType`] (from the
//! capture reader or a live socket). Out: [`Segment`]s through a callback — each
//! UDP datagram's payload once it is whole (after IPv4 / IPv6 reassembly), and
//! for TCP the next in-order bytes of each direction's stream, every byte once.
//!
//! The layers: Ethernet (with 802.1Q / QinQ tags, MPLS, PPPoE), Linux cooked v1
//! and v2, BSD loopback, raw IP → IPv4 (options, fragments) or IPv6 (extension
//! headers, Fragment header) → UDP or TCP. Mirrored traffic that arrives in a
//! tunnel (VXLAN, GRE, ERSPAN I/II/III, IP-in-IP: `tunnel`) is unwrapped and
//! decoded as if captured directly, up to four tunnels deep; the segments
//! carry the inner addresses. Header parsing of IP, UDP and TCP uses
//! `etherparse`; the link layer (`link`), fragment reassembly (`defrag`) and
//! TCP reassembly (`tcp`) are written here because they own state and limits.
//! UDP and TCP checksums are not verified: captures taken on the sending host
//! routinely show offload-garbled checksums.
//!
//! Promises:
//! - Sans-IO: time is the `ts` passed in; timeouts (fragments, TCP holes, idle
//!   flows) run on those timestamps, or on [`NetDecoder::expire`] for a quiet
//!   live source, and [`NetDecoder::finish`] flushes at the end of the input.
//! - A bad frame is counted in [`NetStats`] and reported as a [`NetError`] for
//!   that frame only; it never panics and never affects other frames.
//! - Memory is bounded by [`NetLimits`] whatever the input: pending fragment
//!   sets and bytes, TCP flows, out-of-order bytes per flow and in total.
//! - The fast path does not allocate: an unfragmented UDP datagram or an
//!   in-order TCP segment is handed out as a slice of the caller's frame.

mod defrag;
mod link;
mod tcp;
mod tunnel;

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use etherparse::{Ipv4HeaderSlice, Ipv6HeaderSlice, TcpHeaderSlice, UdpHeaderSlice};

use crate::capture::LinkType;
use crate::Timestamp;
use defrag::{Defragmenter, FragKey, Fragment};
use link::L3;
use tcp::{TcpFlags, TcpReassembler};
use tunnel::Inner;

/// The transport protocol of a [`Segment`]: what a capture shows. Not the
/// SIP transport of the live UAS ([`crate::sip::uas::Transport`], which has
/// TLS: decrypted by the shell, never seen here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
}

/// Transport payload handed to the consumer.
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    /// Capture time of the frame that completed this payload (never earlier
    /// than the previous delivery of the same TCP direction).
    pub ts: Timestamp,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub transport: Transport,
    /// UDP: the whole datagram payload (after IP reassembly). TCP: the next
    /// in-order bytes of the `src → dst` stream.
    pub payload: &'a [u8],
    /// TCP only: bytes were lost before this payload, or the stream was picked
    /// up in the middle; a stream parser must resynchronise.
    pub tcp_gap: bool,
}

/// Caps on the decoder's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetLimits {
    /// IP datagrams being reassembled at once.
    pub max_frag_sets: usize,
    /// Largest reassembled IP payload.
    pub max_datagram: usize,
    /// Bytes held in all fragment sets together.
    pub max_frag_bytes: usize,
    /// A datagram whose fragments have not all arrived after this is dropped.
    pub frag_timeout: Duration,
    /// TCP directions tracked at once.
    pub max_tcp_flows: usize,
    /// Out-of-order bytes buffered per TCP direction.
    pub max_tcp_ooo_bytes: usize,
    /// Out-of-order bytes buffered over all TCP directions.
    pub max_tcp_ooo_total: usize,
    /// A hole in a TCP stream not filled after this is skipped.
    pub tcp_hole_timeout: Duration,
    /// A TCP direction with no segment for this long is forgotten.
    pub tcp_idle_timeout: Duration,
    /// How long an ended (FIN / RST) direction is remembered, to recognise
    /// late retransmissions.
    pub tcp_closed_linger: Duration,
    /// A segment further than this from the expected sequence number restarts
    /// the stream there (with a gap).
    pub tcp_resync_window: u32,
}

impl Default for NetLimits {
    fn default() -> Self {
        NetLimits {
            max_frag_sets: 4096,
            max_datagram: 65_535,
            max_frag_bytes: 32 * 1024 * 1024,
            frag_timeout: Duration::from_secs(30),
            max_tcp_flows: 16_384,
            max_tcp_ooo_bytes: 256 * 1024,
            max_tcp_ooo_total: 64 * 1024 * 1024,
            tcp_hole_timeout: Duration::from_secs(2),
            tcp_idle_timeout: Duration::from_secs(300),
            tcp_closed_linger: Duration::from_secs(10),
            tcp_resync_window: 16 * 1024 * 1024,
        }
    }
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

impl NetLimits {
    fn frag_timeout_us(&self) -> i64 {
        micros(self.frag_timeout)
    }
    fn tcp_hole_timeout_us(&self) -> i64 {
        micros(self.tcp_hole_timeout)
    }
    fn tcp_idle_timeout_us(&self) -> i64 {
        micros(self.tcp_idle_timeout)
    }
    fn tcp_closed_linger_us(&self) -> i64 {
        micros(self.tcp_closed_linger)
    }
}

/// Counters. Every frame passed to [`NetDecoder::decode`] is counted in
/// `frames` and, if it goes nowhere, in exactly one of `not_ip`,
/// `not_udp_tcp`, `truncated`, `malformed` or `unsupported`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NetStats {
    pub frames: u64,
    /// ARP, LLDP, STP, ...
    pub not_ip: u64,
    /// ICMP, IGMP, SCTP, ESP, ...
    pub not_udp_tcp: u64,
    /// Frames cut short (by the snap length or in transit).
    pub truncated: u64,
    pub malformed: u64,
    /// Frames of a link type this decoder does not know.
    pub unsupported: u64,
    /// UDP datagrams delivered.
    pub udp_datagrams: u64,
    /// TCP segments seen.
    pub tcp_segments: u64,
    /// TCP stream bytes delivered.
    pub tcp_bytes: u64,
    /// IP fragments seen.
    pub fragments: u64,
    /// IP datagrams rebuilt from fragments.
    pub reassembled: u64,
    /// Fragment sets dropped because their time ran out.
    pub frag_timeouts: u64,
    /// Fragment sets dropped for contradictions or limits.
    pub frag_dropped: u64,
    /// TCP directions started.
    pub tcp_flows: u64,
    /// TCP directions forgotten after being idle.
    pub tcp_flows_expired: u64,
    /// TCP directions dropped or refused because the flow table was full.
    pub tcp_flows_evicted: u64,
    /// TCP segments buffered because they arrived ahead of the stream.
    pub tcp_out_of_order: u64,
    /// TCP segments whose bytes had all been delivered already.
    pub tcp_retransmits: u64,
    /// Holes skipped in TCP streams (including streams picked up mid-way).
    pub tcp_gaps: u64,
    /// Packets unwrapped from a tunnel (VXLAN, GRE, ERSPAN, IP-in-IP).
    pub tunnelled: u64,
}

/// Why one frame produced nothing. Never fatal for the decoder.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    #[error("frame ends inside the {layer} layer")]
    Truncated { layer: &'static str },
    #[error("unsupported {what} {value}")]
    Unsupported { what: &'static str, value: u32 },
    #[error("malformed {layer}: {reason}")]
    Malformed {
        layer: &'static str,
        reason: &'static str,
    },
}

/// Timer granularity for hole and fragment timeouts.
const HOLE_CHECK_US: i64 = 250_000;
/// Timer granularity for idle-flow expiry.
const IDLE_CHECK_US: i64 = 5_000_000;

/// Sans-IO decoder: frames in, [`Segment`]s out. See the module documentation.
#[derive(Debug)]
pub struct NetDecoder {
    limits: NetLimits,
    stats: NetStats,
    defrag: Defragmenter,
    tcp: TcpReassembler,
    next_hole_check: Option<Timestamp>,
    next_idle_check: Option<Timestamp>,
    /// Tunnels entered for the frame being decoded.
    depth: u8,
}

impl Default for NetDecoder {
    fn default() -> Self {
        NetDecoder::new(NetLimits::default())
    }
}

impl NetDecoder {
    pub fn new(limits: NetLimits) -> Self {
        NetDecoder {
            limits,
            stats: NetStats::default(),
            defrag: Defragmenter::default(),
            tcp: TcpReassembler::default(),
            next_hole_check: None,
            next_idle_check: None,
            depth: 0,
        }
    }

    pub fn limits(&self) -> &NetLimits {
        &self.limits
    }

    pub fn stats(&self) -> &NetStats {
        &self.stats
    }

    /// TCP directions currently tracked (including recently ended ones).
    pub fn tcp_flows(&self) -> usize {
        self.tcp.flow_count()
    }

    /// Out-of-order TCP bytes currently buffered.
    pub fn tcp_buffered_bytes(&self) -> usize {
        self.tcp.buffered_bytes()
    }

    /// IP datagrams currently being reassembled.
    pub fn pending_fragment_sets(&self) -> usize {
        self.defrag.pending()
    }

    /// Decodes one frame; calls `out` for every payload it completes (none, one,
    /// or several when it fills a TCP hole or runs a timer).
    pub fn decode(
        &mut self,
        ts: Timestamp,
        link: LinkType,
        frame: &[u8],
        out: &mut dyn FnMut(&Segment<'_>),
    ) -> Result<(), NetError> {
        self.stats.frames += 1;
        self.run_timers(ts, out);
        let result = match link::network_layer(link, frame) {
            Ok(L3::V4(p)) => self.ipv4(ts, p, out),
            Ok(L3::V6(p)) => self.ipv6(ts, p, out),
            Ok(L3::NotIp) => {
                self.stats.not_ip += 1;
                Ok(())
            }
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            match e {
                NetError::Truncated { .. } => self.stats.truncated += 1,
                NetError::Unsupported { .. } => self.stats.unsupported += 1,
                NetError::Malformed { .. } => self.stats.malformed += 1,
            }
        }
        result
    }

    /// Runs the timers up to `now` without a frame (for a quiet live source).
    pub fn expire(&mut self, now: Timestamp, out: &mut dyn FnMut(&Segment<'_>)) {
        self.defrag.expire(now, &self.limits, &mut self.stats);
        self.tcp
            .check_holes(now, &self.limits, &mut self.stats, out);
        self.tcp
            .expire_idle(now, &self.limits, &mut self.stats, out);
    }

    /// End of input: delivers every TCP byte still held (skipping holes, marked
    /// as gaps), forgets all flows and incomplete datagrams.
    pub fn finish(&mut self, out: &mut dyn FnMut(&Segment<'_>)) {
        self.tcp.finish(&self.limits, &mut self.stats, out);
        self.defrag.clear();
    }

    fn run_timers(&mut self, ts: Timestamp, out: &mut dyn FnMut(&Segment<'_>)) {
        let due = |next: Option<Timestamp>, every: i64| match next {
            None => true,
            // Also re-arm when time went far backwards (merged captures).
            Some(n) => ts >= n || n.micros_since(ts) > 2 * every,
        };
        if due(self.next_hole_check, HOLE_CHECK_US) {
            self.next_hole_check = Some(ts.add_micros(HOLE_CHECK_US));
            self.defrag.expire(ts, &self.limits, &mut self.stats);
            self.tcp.check_holes(ts, &self.limits, &mut self.stats, out);
        }
        if due(self.next_idle_check, IDLE_CHECK_US) {
            self.next_idle_check = Some(ts.add_micros(IDLE_CHECK_US));
            self.tcp.expire_idle(ts, &self.limits, &mut self.stats, out);
        }
    }

    fn ipv4(
        &mut self,
        ts: Timestamp,
        data: &[u8],
        out: &mut dyn FnMut(&Segment<'_>),
    ) -> Result<(), NetError> {
        use etherparse::err::ipv4::HeaderSliceError as E;
        let hdr = Ipv4HeaderSlice::from_slice(data).map_err(|e| match e {
            E::Len(_) => NetError::Truncated { layer: "ipv4" },
            E::Content(_) => NetError::Malformed {
                layer: "ipv4",
                reason: "bad version or header length",
            },
        })?;
        let hlen = hdr.slice().len();
        let total = usize::from(hdr.total_len());
        let packet = if total == 0 {
            // Segmentation offload on the capturing host: the length is unset.
            data
        } else if total < hlen {
            return Err(NetError::Malformed {
                layer: "ipv4",
                reason: "total length shorter than the header",
            });
        } else {
            // Shorter frames were cut by the snap length; longer ones carry padding.
            data.get(..total)
                .ok_or(NetError::Truncated { layer: "ipv4" })?
        };
        let payload = packet.get(hlen..).unwrap_or(&[]);
        let src = IpAddr::V4(hdr.source_addr());
        let dst = IpAddr::V4(hdr.destination_addr());
        let proto = hdr.protocol().0;
        if !matches!(
            proto,
            6 | 17 | tunnel::PROTO_GRE | tunnel::PROTO_IPIP | tunnel::PROTO_IPV6_IN_IP
        ) {
            self.stats.not_udp_tcp += 1;
            return Ok(());
        }
        let offset = usize::from(hdr.fragments_offset().value()) * 8;
        let more = hdr.more_fragments();
        if offset == 0 && !more {
            return self.transport(ts, src, dst, proto, payload, out);
        }
        self.stats.fragments += 1;
        let key = FragKey {
            src,
            dst,
            proto,
            id: u32::from(hdr.identification()),
        };
        let frag = Fragment {
            offset,
            more,
            data: payload,
            next: proto,
        };
        match self
            .defrag
            .add(ts, key, frag, &self.limits, &mut self.stats)
        {
            Some(whole) => {
                self.stats.reassembled += 1;
                self.transport(ts, src, dst, proto, &whole.data, out)
            }
            None => Ok(()),
        }
    }

    fn ipv6(
        &mut self,
        ts: Timestamp,
        data: &[u8],
        out: &mut dyn FnMut(&Segment<'_>),
    ) -> Result<(), NetError> {
        use etherparse::err::ipv6::HeaderSliceError as E;
        let hdr = Ipv6HeaderSlice::from_slice(data).map_err(|e| match e {
            E::Len(_) => NetError::Truncated { layer: "ipv6" },
            E::Content(_) => NetError::Malformed {
                layer: "ipv6",
                reason: "bad version",
            },
        })?;
        let plen = usize::from(hdr.payload_length());
        let rest = data.get(40..).unwrap_or(&[]);
        let payload = if plen == 0 {
            // Jumbogram or segmentation offload: the frame decides.
            rest
        } else {
            rest.get(..plen)
                .ok_or(NetError::Truncated { layer: "ipv6" })?
        };
        let src = IpAddr::V6(Ipv6Addr::from(hdr.source()));
        let dst = IpAddr::V6(Ipv6Addr::from(hdr.destination()));
        let (mut next, mut rest) = (hdr.next_header().0, payload);
        // Extension headers; atomic fragments (offset 0, no more) are transparent.
        for _ in 0..4 {
            let walked = ipv6_extensions(next, rest)?;
            let Some(frag) = walked.fragment else {
                return self.transport(ts, src, dst, walked.next, walked.rest, out);
            };
            if frag.offset == 0 && !frag.more {
                (next, rest) = (walked.next, walked.rest);
                continue;
            }
            self.stats.fragments += 1;
            let key = FragKey {
                src,
                dst,
                proto: 0,
                id: frag.id,
            };
            let fragment = Fragment {
                offset: frag.offset,
                more: frag.more,
                data: walked.rest,
                next: walked.next,
            };
            let Some(whole) = self
                .defrag
                .add(ts, key, fragment, &self.limits, &mut self.stats)
            else {
                return Ok(());
            };
            self.stats.reassembled += 1;
            let walked = ipv6_extensions(whole.next, &whole.data)?;
            if walked.fragment.is_some() {
                return Err(NetError::Malformed {
                    layer: "ipv6",
                    reason: "fragment header inside a reassembled datagram",
                });
            }
            return self.transport(ts, src, dst, walked.next, walked.rest, out);
        }
        Err(NetError::Malformed {
            layer: "ipv6",
            reason: "too many fragment headers",
        })
    }

    fn transport(
        &mut self,
        ts: Timestamp,
        src: IpAddr,
        dst: IpAddr,
        proto: u8,
        data: &[u8],
        out: &mut dyn FnMut(&Segment<'_>),
    ) -> Result<(), NetError> {
        match proto {
            17 => {
                let udp = UdpHeaderSlice::from_slice(data)
                    .map_err(|_| NetError::Truncated { layer: "udp" })?;
                let ulen = usize::from(udp.length());
                let payload = if ulen == 0 {
                    // Jumbogram / offload: the IP layer's length decides.
                    data.get(8..).unwrap_or(&[])
                } else if ulen < 8 {
                    return Err(NetError::Malformed {
                        layer: "udp",
                        reason: "length shorter than the header",
                    });
                } else {
                    data.get(8..ulen)
                        .ok_or(NetError::Truncated { layer: "udp" })?
                };
                if tunnel::VXLAN_PORTS.contains(&udp.destination_port()) {
                    if let Some(frame) = tunnel::vxlan(payload) {
                        return self.unwrap(ts, Inner::Ethernet(frame), out);
                    }
                }
                self.stats.udp_datagrams += 1;
                out(&Segment {
                    ts,
                    src: SocketAddr::new(src, udp.source_port()),
                    dst: SocketAddr::new(dst, udp.destination_port()),
                    transport: Transport::Udp,
                    payload,
                    tcp_gap: false,
                });
                Ok(())
            }
            6 => {
                use etherparse::err::tcp::HeaderSliceError as E;
                let tcp = TcpHeaderSlice::from_slice(data).map_err(|e| match e {
                    E::Len(_) => NetError::Truncated { layer: "tcp" },
                    E::Content(_) => NetError::Malformed {
                        layer: "tcp",
                        reason: "data offset shorter than the header",
                    },
                })?;
                let payload = data.get(tcp.slice().len()..).unwrap_or(&[]);
                self.stats.tcp_segments += 1;
                let flags = TcpFlags {
                    syn: tcp.syn(),
                    fin: tcp.fin(),
                    rst: tcp.rst(),
                };
                let key = (
                    SocketAddr::new(src, tcp.source_port()),
                    SocketAddr::new(dst, tcp.destination_port()),
                );
                self.tcp.segment(
                    ts,
                    key,
                    tcp.sequence_number(),
                    flags,
                    payload,
                    &self.limits,
                    &mut self.stats,
                    out,
                );
                Ok(())
            }
            tunnel::PROTO_GRE => {
                let inner = tunnel::gre(data)?;
                self.unwrap(ts, inner, out)
            }
            tunnel::PROTO_IPIP | tunnel::PROTO_IPV6_IN_IP => self.unwrap(ts, Inner::Ip(data), out),
            _ => {
                self.stats.not_udp_tcp += 1;
                Ok(())
            }
        }
    }

    /// Decodes what a tunnel carries, as if it had been captured directly.
    fn unwrap(
        &mut self,
        ts: Timestamp,
        inner: Inner<'_>,
        out: &mut dyn FnMut(&Segment<'_>),
    ) -> Result<(), NetError> {
        if self.depth >= tunnel::MAX_DEPTH {
            return Err(NetError::Malformed {
                layer: "tunnel",
                reason: "tunnels nested too deep",
            });
        }
        let l3 = match inner {
            Inner::Ethernet(frame) => link::network_layer(LinkType::Ethernet, frame)?,
            Inner::Ip(packet) => link::by_version(packet, "tunnel")?,
            Inner::NotIp => L3::NotIp,
        };
        self.stats.tunnelled += 1;
        self.depth += 1;
        let result = match l3 {
            L3::V4(p) => self.ipv4(ts, p, out),
            L3::V6(p) => self.ipv6(ts, p, out),
            L3::NotIp => {
                self.stats.not_ip += 1;
                Ok(())
            }
        };
        self.depth -= 1;
        result
    }
}

/// An IPv6 Fragment header.
struct FragHeader {
    offset: usize,
    more: bool,
    id: u32,
}

/// The result of walking IPv6 extension headers.
struct Walked<'a> {
    /// Next header after the last one walked.
    next: u8,
    /// What follows it (for a fragment: the fragmentable part).
    rest: &'a [u8],
    /// Set when the walk stopped at a Fragment header.
    fragment: Option<FragHeader>,
}

/// Walks IPv6 extension headers up to the upper-layer header, or up to and
/// including a Fragment header (what follows it belongs to the datagram).
fn ipv6_extensions(mut next: u8, mut rest: &[u8]) -> Result<Walked<'_>, NetError> {
    let truncated = NetError::Truncated {
        layer: "ipv6 extension",
    };
    for _ in 0..32 {
        match next {
            // Hop-by-hop, routing, destination options, mobility, HIP, shim6.
            0 | 43 | 60 | 135 | 139 | 140 => {
                let len = (usize::from(*rest.get(1).ok_or(truncated.clone())?) + 1) * 8;
                let n = *rest.first().ok_or(truncated.clone())?;
                rest = rest.get(len..).ok_or(truncated.clone())?;
                next = n;
            }
            // Authentication header: length in 4-octet units, minus 2.
            51 => {
                let len = (usize::from(*rest.get(1).ok_or(truncated.clone())?) + 2) * 4;
                let n = *rest.first().ok_or(truncated.clone())?;
                rest = rest.get(len..).ok_or(truncated.clone())?;
                next = n;
            }
            44 => {
                let h: [u8; 8] = rest
                    .get(..8)
                    .and_then(|s| s.try_into().ok())
                    .ok_or(truncated.clone())?;
                let n = h[0];
                let off_flags = u16::from_be_bytes([h[2], h[3]]);
                let id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                return Ok(Walked {
                    next: n,
                    rest: rest.get(8..).unwrap_or(&[]),
                    fragment: Some(FragHeader {
                        offset: usize::from(off_flags >> 3) * 8,
                        more: off_flags & 1 == 1,
                        id,
                    }),
                });
            }
            _ => {
                return Ok(Walked {
                    next,
                    rest,
                    fragment: None,
                })
            }
        }
    }
    Err(NetError::Malformed {
        layer: "ipv6 extension",
        reason: "too many extension headers",
    })
}

#[cfg(test)]
mod tests;
