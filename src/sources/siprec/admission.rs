//! Media admission for SIPREC streams: which datagrams arriving on one of our
//! RTP ports are the SRC's stream, and which are someone else's.
//!
//! In: every datagram read on a stream's port (arrival time, source address,
//! bytes, already SRTP-decrypted), and the stream's [`StreamOrigin`] from the
//! SRC's SDP (the connection address and port it announces for the stream)
//! and SIP signalling (the host the INVITE came from). Out: the datagrams
//! admitted, in arrival order, each with its original arrival time; every
//! other datagram is counted in [`RejectCounts`] by reason and goes nowhere.
//! Pure: no sockets, no clock (times come with the datagrams); one
//! [`Admission`] per port, kept by the media receive thread
//! ([`crate::sources::siprec::media`]), so the rule costs a few comparisons per datagram.
//!
//! The rule (the first that applies):
//! 1. **The announced address** (the `c=` address and the `m=` port of the
//!    stream's line, when the SDP gives a usable one: not `0.0.0.0`, not
//!    multicast, port not 0 or 9) is admitted from its first packet and locks
//!    the stream onto that address. Once it has sent, nothing else is
//!    admitted (a stream latched under rule 2 gives way to it).
//! 2. **Latching** (NAT, or an SRC that sends from another port than it
//!    announces): while no source is locked, RTP from the SRC's signalling
//!    host or from the announced host (another port) is *held*, per source,
//!    until one source has sent a run of [`QUORUM`] packets of one SSRC in
//!    sequence (gaps of at most [`MAX_SEQ_GAP`]) spanning at least
//!    [`LATCH_WAIT_US`] of arrival time. That source is then locked and its
//!    held packets are released in order with their arrival times (nothing
//!    of the stream is lost, it reaches the engine up to that long later);
//!    the other candidates' held packets are rejected (`source`). The wait
//!    gives the announced address, which always wins, time to show up: a few
//!    packets sent from another port right after the 200 OK never get in.
//! 3. Anything else is rejected: another host, another port once a source is
//!    locked, a non-RTP datagram from a source not locked (`source`).
//!
//! Once locked, the stream's SSRC is locked too: a packet of another SSRC
//! from the locked address is held until [`SSRC_QUORUM`] of them have come in
//! sequence with no packet of the locked SSRC in between (an SBC changing
//! SSRC on a transfer: the old stops, the new starts, nothing is lost); a new
//! SSRC interleaved with the locked one is rejected (`ssrc`). A new SSRC is
//! never accepted from another address. RTCP (rtcp-mux) and datagrams that
//! are not RTP are admitted only from the locked address (the engine ignores
//! or counts them). A port whose stream has ended ([`Admission::retire`])
//! rejects everything (`unknown_port`): late packets after a BYE, streams of
//! calls a restart killed. It remembers the sources it heard (the ended
//! stream's first); if the port is given to a new stream before they stopped
//! (a small `rtp_ports`), they are never latched for it
//! ([`Admission::excluding`]) and still count as `unknown_port`: an SBC
//! still sending an ended call's stream cannot win the new call's latch.
//!
//! A re-offer announcing another address for the stream starts over
//! ([`Admission::set_origin`]); one announcing the same keeps the lock. A
//! source, once locked, is not given up because it goes quiet (hold): only the
//! announced address or a new offer can move the stream.
//!
//! Memory: at most [`MAX_CANDIDATES`] sources are held at once, each at most
//! [`MAX_HELD`] packets and [`MAX_HELD_BYTES`] bytes (beyond, its oldest held
//! packet is rejected); a locked stream holds nothing but an SSRC change in
//! progress (same bounds).

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};

use pbx_core::rtp::is_rtcp;
use pbx_core::Timestamp;

/// Packets of one SSRC, in sequence, a source needs to be latched.
pub const QUORUM: u32 = 5;

/// Arrival time the run of a latching source must span (µs): the announced
/// address has this long to show up and win.
pub const LATCH_WAIT_US: i64 = 100_000;

/// Packets of a new SSRC, in sequence, that move a locked stream to it.
pub const SSRC_QUORUM: u32 = 3;

/// Largest forward step of the sequence number that keeps a run going (lost
/// packets); a larger jump, or a step back beyond [`MAX_SEQ_BEHIND`], starts
/// the run again.
pub const MAX_SEQ_GAP: u16 = 4;

/// A packet up to this many sequence numbers behind the newest of its run is
/// reordered: held (the engine puts it in place), not counted towards the run.
pub const MAX_SEQ_BEHIND: u16 = 16;

/// Sources held at once while learning.
pub const MAX_CANDIDATES: usize = 4;

/// Packets held per source.
pub const MAX_HELD: usize = 32;

/// Bytes held per source.
pub const MAX_HELD_BYTES: usize = 16 * 1024;

/// A candidate silent this long (µs) makes room for a new one.
const CANDIDATE_STALE_US: i64 = 1_000_000;

/// Sources remembered per retired port (see [`Admission::excluding`]).
const MAX_STALE: usize = 8;

/// Why a datagram was not admitted (the `reason` label of
/// `pbx_edge_rtp_rejected_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// From an address that is not (or no longer can be) the stream's source.
    Source,
    /// From the stream's source, but of an SSRC interleaved with the locked one.
    Ssrc,
    /// To a port that carries no stream (any more).
    UnknownPort,
}

impl Reason {
    pub fn label(self) -> &'static str {
        match self {
            Reason::Source => "source",
            Reason::Ssrc => "ssrc",
            Reason::UnknownPort => "unknown_port",
        }
    }
}

/// Datagrams rejected, by reason.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RejectCounts {
    pub source: u64,
    pub ssrc: u64,
    pub unknown_port: u64,
}

impl RejectCounts {
    fn add(&mut self, r: Reason, n: u64) {
        match r {
            Reason::Source => self.source += n,
            Reason::Ssrc => self.ssrc += n,
            Reason::UnknownPort => self.unknown_port += n,
        }
    }

    pub fn total(&self) -> u64 {
        self.source + self.ssrc + self.unknown_port
    }
}

/// Where a stream is allowed to come from, as the SRC said it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamOrigin {
    /// The stream's `c=` address (media or session level), if any.
    pub announced_ip: Option<IpAddr>,
    /// The stream's `m=` port.
    pub announced_port: u16,
    /// The host the SRC's SIP came from.
    pub signalling: IpAddr,
}

impl StreamOrigin {
    /// The announced address, when it names one unicast address and a real
    /// port (port 9, "discard", is what SDPs write when they mean none).
    pub fn announced(&self) -> Option<SocketAddr> {
        let ip = self.announced_ip.map(|ip| ip.to_canonical())?;
        let usable_ip = !ip.is_unspecified()
            && !ip.is_multicast()
            && ip != IpAddr::V4(std::net::Ipv4Addr::BROADCAST);
        let usable_port = self.announced_port != 0 && self.announced_port != 9;
        (usable_ip && usable_port).then_some(SocketAddr::new(ip, self.announced_port))
    }

    /// Whether a source on `ip` may be latched (rule 2).
    fn may_latch(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip == self.signalling.to_canonical()
            || self
                .announced_ip
                .is_some_and(|a| !a.is_unspecified() && a.to_canonical() == ip)
    }
}

/// One held datagram.
#[derive(Debug, Clone)]
struct Held {
    ts: Timestamp,
    bytes: Vec<u8>,
}

/// A source (or, once locked, a new SSRC of the source) waiting for its quorum.
#[derive(Debug)]
struct Candidate {
    src: SocketAddr,
    ssrc: u32,
    newest_seq: u16,
    /// Packets of the run in sequence so far.
    run: u32,
    first_ts: Timestamp,
    last_ts: Timestamp,
    held: VecDeque<Held>,
    held_bytes: usize,
}

impl Candidate {
    fn new(src: SocketAddr, ssrc: u32, seq: u16, ts: Timestamp) -> Candidate {
        Candidate {
            src,
            ssrc,
            newest_seq: seq,
            run: 1,
            first_ts: ts,
            last_ts: ts,
            held: VecDeque::new(),
            held_bytes: 0,
        }
    }

    /// Take `seq` of `ssrc` into the run; false when it breaks the run (the
    /// caller starts a new one).
    fn extend(&mut self, ssrc: u32, seq: u16, ts: Timestamp) -> bool {
        if ssrc != self.ssrc {
            return false;
        }
        let ahead = seq.wrapping_sub(self.newest_seq);
        let behind = self.newest_seq.wrapping_sub(seq);
        if (1..=MAX_SEQ_GAP).contains(&ahead) {
            self.newest_seq = seq;
            self.run += 1;
        } else if behind > MAX_SEQ_BEHIND {
            return false;
        }
        self.last_ts = ts;
        true
    }

    /// Hold a packet; the oldest held ones go (counted) beyond the bounds.
    fn hold(&mut self, ts: Timestamp, bytes: &[u8], reason: Reason, rejected: &mut RejectCounts) {
        self.held.push_back(Held {
            ts,
            bytes: bytes.to_vec(),
        });
        self.held_bytes += bytes.len();
        while self.held.len() > MAX_HELD || self.held_bytes > MAX_HELD_BYTES {
            if let Some(h) = self.held.pop_front() {
                self.held_bytes -= h.bytes.len();
                rejected.add(reason, 1);
            }
        }
    }

    fn reject_all(self, reason: Reason, rejected: &mut RejectCounts) {
        rejected.add(reason, self.held.len() as u64);
    }

    fn release(self, out: &mut impl FnMut(Timestamp, SocketAddr, &[u8])) {
        let src = self.src;
        for h in self.held {
            out(h.ts, src, &h.bytes);
        }
    }
}

#[derive(Debug)]
enum State {
    /// No source yet: candidates collect their runs.
    Learning(Vec<Candidate>),
    Locked {
        src: SocketAddr,
        /// The locked SSRC; None only while the announced address has sent
        /// nothing but RTCP or non-RTP datagrams (its first RTP packet locks it).
        ssrc: Option<u32>,
        /// A new SSRC of the source waiting for its quorum.
        switch: Option<Candidate>,
    },
    /// Not a stream (any more): everything is `unknown_port`.
    Retired,
    /// No rule: everything is admitted (tests of the receive path).
    Unrestricted,
}

/// The admission state of one RTP port. See the module docs for the rule.
#[derive(Debug)]
pub struct Admission {
    origin: Option<StreamOrigin>,
    state: State,
    /// Retired: the sources heard (the ended stream's, and whatever came
    /// since). A stream: sources of the port's previous stream, never
    /// latched (their packets are `unknown_port`).
    stale: Vec<SocketAddr>,
}

/// The RTP header fields admission looks at; None when not RTP (or RTCP).
fn rtp_fields(bytes: &[u8]) -> Option<(u32, u16)> {
    if bytes.len() < 12 || bytes[0] >> 6 != 2 || is_rtcp(bytes) {
        return None;
    }
    let seq = u16::from_be_bytes([bytes[2], bytes[3]]);
    let ssrc = u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    Some((ssrc, seq))
}

impl Admission {
    /// A stream from `origin`.
    pub fn new(origin: StreamOrigin) -> Admission {
        Admission {
            origin: Some(origin),
            state: State::Learning(Vec::new()),
            stale: Vec::new(),
        }
    }

    /// A port that carries no stream: every datagram is `unknown_port`.
    pub fn retired() -> Admission {
        Admission {
            origin: None,
            state: State::Retired,
            stale: Vec::new(),
        }
    }

    /// Admit everything (no SRC to check against: tests of the receive path).
    pub fn unrestricted() -> Admission {
        Admission {
            origin: None,
            state: State::Unrestricted,
            stale: Vec::new(),
        }
    }

    /// The SRC re-offered the stream. Another announced address (or
    /// signalling host) starts the learning over; the same keeps the lock.
    /// Packets held so far are rejected when the learning starts over.
    pub fn set_origin(&mut self, origin: StreamOrigin, rejected: &mut RejectCounts) {
        let same = self.origin.is_some_and(|o| {
            o.announced() == origin.announced() && o.signalling == origin.signalling
        });
        self.origin = Some(origin);
        if same && matches!(self.state, State::Learning(_) | State::Locked { .. }) {
            return;
        }
        self.reject_held(Reason::Source, rejected);
        self.state = State::Learning(Vec::new());
    }

    /// The stream ended: from now on every datagram is `unknown_port`;
    /// packets still held are rejected (`source`).
    pub fn retire(&mut self, rejected: &mut RejectCounts) {
        let locked = self.locked();
        self.reject_held(Reason::Source, rejected);
        self.origin = None;
        self.state = State::Retired;
        self.stale = locked.into_iter().collect();
    }

    /// Retired: the sources heard on the port (its last stream's source
    /// first), to keep out of the port's next stream.
    pub fn stale_sources(&self) -> &[SocketAddr] {
        match self.state {
            State::Retired => &self.stale,
            _ => &[],
        }
    }

    /// A stream on a port that was retired: packets from `stale` (streams
    /// that went to the port before, e.g. an SBC still sending the ended
    /// call's stream) are never latched; they count as `unknown_port`. The
    /// announced address is still taken from them (rule 1).
    pub fn excluding(mut self, stale: &[SocketAddr]) -> Admission {
        self.stale = stale.iter().take(MAX_STALE).copied().collect();
        self
    }

    /// Whether a source is locked.
    pub fn locked(&self) -> Option<SocketAddr> {
        match self.state {
            State::Locked { src, .. } => Some(src),
            _ => None,
        }
    }

    /// Packets held now (waiting for a quorum).
    pub fn held(&self) -> usize {
        match &self.state {
            State::Learning(c) => c.iter().map(|c| c.held.len()).sum(),
            State::Locked {
                switch: Some(s), ..
            } => s.held.len(),
            _ => 0,
        }
    }

    fn reject_held(&mut self, reason: Reason, rejected: &mut RejectCounts) {
        match std::mem::replace(&mut self.state, State::Retired) {
            State::Learning(cands) => {
                for c in cands {
                    c.reject_all(reason, rejected);
                }
            }
            State::Locked {
                switch: Some(s), ..
            } => s.reject_all(Reason::Ssrc, rejected),
            _ => {}
        }
    }

    /// One datagram from `src` at `ts`: `out` gets every datagram admitted
    /// by it (held ones released first, in their order, then this one, each
    /// with its own arrival time); what is rejected is counted in `rejected`.
    pub fn offer(
        &mut self,
        ts: Timestamp,
        src: SocketAddr,
        bytes: &[u8],
        rejected: &mut RejectCounts,
        out: &mut impl FnMut(Timestamp, SocketAddr, &[u8]),
    ) {
        let src = SocketAddr::new(src.ip().to_canonical(), src.port());
        let origin = match (&self.state, self.origin) {
            (State::Unrestricted, _) => return out(ts, src, bytes),
            (State::Retired, _) | (_, None) => {
                if self.stale.len() < MAX_STALE && !self.stale.contains(&src) {
                    self.stale.push(src);
                }
                return rejected.add(Reason::UnknownPort, 1);
            }
            (_, Some(o)) => o,
        };
        if self.stale.contains(&src) && origin.announced() != Some(src) {
            return rejected.add(Reason::UnknownPort, 1);
        }
        let fields = rtp_fields(bytes);
        // Rule 1: the announced address wins over everything.
        if origin.announced() == Some(src) {
            let keep = matches!(self.state, State::Locked { src: s, .. } if s == src);
            if !keep {
                self.reject_held(Reason::Source, rejected);
                self.state = State::Locked {
                    src,
                    ssrc: fields.map(|f| f.0),
                    switch: None,
                };
                return out(ts, src, bytes);
            }
        }
        match &mut self.state {
            State::Locked {
                src: locked,
                ssrc,
                switch,
                ..
            } => {
                if src != *locked {
                    return rejected.add(Reason::Source, 1);
                }
                let Some((p_ssrc, seq)) = fields else {
                    // RTCP or not RTP, from the source: the engine decides.
                    return out(ts, src, bytes);
                };
                match *ssrc {
                    None => {
                        *ssrc = Some(p_ssrc);
                        out(ts, src, bytes)
                    }
                    Some(s) if s == p_ssrc => {
                        // The locked SSRC goes on: a change in progress was not one.
                        if let Some(c) = switch.take() {
                            c.reject_all(Reason::Ssrc, rejected);
                        }
                        out(ts, src, bytes)
                    }
                    Some(_) => {
                        let extended = switch.as_mut().is_some_and(|c| c.extend(p_ssrc, seq, ts));
                        if !extended {
                            if let Some(old) = switch.take() {
                                old.reject_all(Reason::Ssrc, rejected);
                            }
                        }
                        let c = switch.get_or_insert_with(|| Candidate::new(src, p_ssrc, seq, ts));
                        c.hold(ts, bytes, Reason::Ssrc, rejected);
                        if c.run >= SSRC_QUORUM {
                            *ssrc = Some(p_ssrc);
                            if let Some(c) = switch.take() {
                                c.release(out);
                            }
                        }
                    }
                }
            }
            State::Learning(cands) => {
                let Some((p_ssrc, seq)) = fields else {
                    return rejected.add(Reason::Source, 1);
                };
                if !origin.may_latch(src.ip()) {
                    return rejected.add(Reason::Source, 1);
                }
                let k = match cands.iter().position(|c| c.src == src) {
                    Some(k) => {
                        if !cands[k].extend(p_ssrc, seq, ts) {
                            let old = std::mem::replace(
                                &mut cands[k],
                                Candidate::new(src, p_ssrc, seq, ts),
                            );
                            old.reject_all(Reason::Source, rejected);
                        }
                        k
                    }
                    None => {
                        if cands.len() >= MAX_CANDIDATES {
                            // Room only by forgetting one gone silent.
                            let stale = cands
                                .iter()
                                .position(|c| ts.micros_since(c.last_ts) > CANDIDATE_STALE_US);
                            match stale {
                                Some(i) => {
                                    cands.swap_remove(i).reject_all(Reason::Source, rejected)
                                }
                                None => return rejected.add(Reason::Source, 1),
                            }
                        }
                        cands.push(Candidate::new(src, p_ssrc, seq, ts));
                        cands.len() - 1
                    }
                };
                let c = &mut cands[k];
                c.hold(ts, bytes, Reason::Source, rejected);
                if c.run >= QUORUM && ts.micros_since(c.first_ts) >= LATCH_WAIT_US {
                    let winner = cands.swap_remove(k);
                    for other in cands.drain(..) {
                        other.reject_all(Reason::Source, rejected);
                    }
                    let ssrc = winner.ssrc;
                    winner.release(out);
                    self.state = State::Locked {
                        src,
                        ssrc: Some(ssrc),
                        switch: None,
                    };
                }
            }
            State::Retired | State::Unrestricted => unreachable!("handled above"),
        }
    }
}

/// What `/status` shows of the refusals.
impl From<RejectCounts> for crate::status::RtpRejected {
    fn from(r: RejectCounts) -> Self {
        crate::status::RtpRejected {
            source: r.source,
            ssrc: r.ssrc,
            unknown_port: r.unknown_port,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtp(ssrc: u32, seq: u16) -> Vec<u8> {
        let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
        p[8..12].copy_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(&[0xff; 160]);
        p
    }

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    const SRC_HOST: &str = "192.0.2.10";

    /// The SRC signals from 192.0.2.10 and announces 192.0.2.10:4000.
    fn origin() -> StreamOrigin {
        StreamOrigin {
            announced_ip: Some(SRC_HOST.parse().unwrap()),
            announced_port: 4000,
            signalling: SRC_HOST.parse().unwrap(),
        }
    }

    /// Feeds datagrams; records what is admitted.
    struct Run {
        adm: Admission,
        rejected: RejectCounts,
        admitted: Vec<(Timestamp, SocketAddr, u32, u16)>,
    }

    impl Run {
        fn new(adm: Admission) -> Run {
            Run {
                adm,
                rejected: RejectCounts::default(),
                admitted: Vec::new(),
            }
        }
        fn send(&mut self, ms: i64, src: &str, ssrc: u32, seq: u16) {
            self.send_bytes(ms, src, &rtp(ssrc, seq));
        }
        fn send_bytes(&mut self, ms: i64, src: &str, bytes: &[u8]) {
            let admitted = &mut self.admitted;
            self.adm.offer(
                Timestamp::from_micros(ms * 1000),
                a(src),
                bytes,
                &mut self.rejected,
                &mut |ts, s, b| {
                    let (ssrc, seq) = rtp_fields(b).unwrap_or((0, 0));
                    admitted.push((ts, s, ssrc, seq));
                },
            );
        }
        fn seqs_from(&self, src: &str) -> Vec<u16> {
            self.admitted
                .iter()
                .filter(|x| x.1 == a(src))
                .map(|x| x.3)
                .collect()
        }
    }

    #[test]
    fn the_announced_address_is_admitted_from_its_first_packet() {
        let mut r = Run::new(Admission::new(origin()));
        r.send(0, "192.0.2.10:4000", 7, 100);
        assert_eq!(r.admitted.len(), 1);
        assert_eq!(r.adm.locked(), Some(a("192.0.2.10:4000")));
        for i in 1..50 {
            r.send(i * 20, "192.0.2.10:4000", 7, 100 + i as u16);
        }
        assert_eq!(r.admitted.len(), 50);
        assert_eq!(r.rejected.total(), 0);
    }

    #[test]
    fn packets_from_another_port_of_the_src_host_right_after_the_answer_never_get_in() {
        let mut r = Run::new(Admission::new(origin()));
        // Five injected packets in sequence, paced like audio, before the real stream.
        for i in 0..5 {
            r.send(i * 20, "192.0.2.10:5555", 0xBAD, 1 + i as u16);
        }
        assert!(r.admitted.is_empty());
        assert_eq!(r.adm.held(), 5);
        for i in 0..100 {
            r.send(100 + i * 20, "192.0.2.10:4000", 0x600D, 500 + i as u16);
        }
        // More injection during the call.
        for i in 5..50 {
            r.send(100 + i * 20, "192.0.2.10:5555", 0xBAD, 1 + i as u16);
        }
        assert_eq!(r.seqs_from("192.0.2.10:5555"), Vec::<u16>::new());
        assert_eq!(r.seqs_from("192.0.2.10:4000").len(), 100);
        assert_eq!(r.rejected.source, 50);
        assert_eq!(r.rejected.total(), 50);
    }

    #[test]
    fn another_host_is_never_admitted() {
        let mut r = Run::new(Admission::new(origin()));
        for i in 0..100 {
            r.send(i * 20, "198.51.100.7:4000", 1, i as u16);
        }
        assert!(r.admitted.is_empty());
        assert_eq!(r.rejected.source, 100);
        assert_eq!(r.adm.held(), 0);
    }

    #[test]
    fn a_source_on_the_signalling_host_latches_after_the_quorum_and_loses_nothing() {
        // Behind NAT: the SDP names a private address we never see.
        let o = StreamOrigin {
            announced_ip: Some("10.1.1.1".parse().unwrap()),
            announced_port: 4000,
            signalling: SRC_HOST.parse().unwrap(),
        };
        let mut r = Run::new(Admission::new(o));
        let mut latched_at = None;
        for i in 0..50 {
            r.send(i * 20, "192.0.2.10:31000", 9, 1000 + i as u16);
            if latched_at.is_none() && !r.admitted.is_empty() {
                latched_at = Some(i);
            }
        }
        // 100 ms of arrival time: the 6th packet (at 100 ms) latches.
        assert_eq!(latched_at, Some(5));
        assert_eq!(
            r.seqs_from("192.0.2.10:31000"),
            (1000..1050).collect::<Vec<_>>()
        );
        // Released with their own arrival times, in order.
        let ts: Vec<i64> = r.admitted.iter().map(|x| x.0.as_micros()).collect();
        assert_eq!(ts, (0..50).map(|i| i * 20_000).collect::<Vec<_>>());
        assert_eq!(r.rejected.total(), 0);
        // Then locked: another port of the same host is rejected.
        r.send(1000, "192.0.2.10:31002", 9, 1050);
        assert_eq!(r.rejected.source, 1);
    }

    #[test]
    fn a_short_burst_never_latches_and_a_broken_run_starts_again() {
        let o = StreamOrigin {
            announced_ip: None,
            announced_port: 0,
            signalling: SRC_HOST.parse().unwrap(),
        };
        let mut r = Run::new(Admission::new(o));
        // 20 packets in 10 ms: a quorum of packets but not of time.
        for i in 0..20 {
            r.send(i / 2, "192.0.2.10:31000", 9, i as u16);
        }
        assert!(r.admitted.is_empty());
        // A jump in sequence numbers starts the run again: the 20 held are gone.
        r.send(300, "192.0.2.10:31000", 9, 5000);
        assert_eq!(r.rejected.source, 20);
        assert!(r.admitted.is_empty());
        // A new SSRC does too.
        r.send(320, "192.0.2.10:31000", 10, 5001);
        assert_eq!(r.rejected.source, 21);
        for i in 1..=10 {
            r.send(320 + i * 20, "192.0.2.10:31000", 10, 5001 + i as u16);
        }
        assert_eq!(r.admitted.len(), 11);
        assert!(r.admitted.iter().all(|x| x.2 == 10));
    }

    #[test]
    fn the_announced_address_takes_over_from_a_latched_source() {
        let mut r = Run::new(Admission::new(origin()));
        for i in 0..20 {
            r.send(i * 20, "192.0.2.10:6000", 1, i as u16);
        }
        assert_eq!(r.admitted.len(), 20);
        r.send(400, "192.0.2.10:4000", 2, 100);
        r.send(410, "192.0.2.10:6000", 1, 20);
        r.send(420, "192.0.2.10:4000", 2, 101);
        assert_eq!(r.seqs_from("192.0.2.10:4000"), vec![100, 101]);
        assert_eq!(r.adm.locked(), Some(a("192.0.2.10:4000")));
        assert_eq!(r.rejected.source, 1);
    }

    #[test]
    fn of_two_candidates_the_first_to_reach_the_quorum_wins() {
        let o = StreamOrigin {
            announced_ip: Some("0.0.0.0".parse().unwrap()),
            announced_port: 4000,
            signalling: SRC_HOST.parse().unwrap(),
        };
        assert_eq!(o.announced(), None);
        let mut r = Run::new(Admission::new(o));
        for i in 0..3 {
            r.send(i * 20, "192.0.2.10:7000", 1, i as u16);
        }
        for i in 0..30 {
            r.send(100 + i * 20, "192.0.2.10:7002", 2, i as u16);
        }
        assert_eq!(r.seqs_from("192.0.2.10:7000"), Vec::<u16>::new());
        assert_eq!(r.seqs_from("192.0.2.10:7002").len(), 30);
        assert_eq!(r.rejected.source, 3);
    }

    #[test]
    fn an_ssrc_change_from_the_locked_source_is_followed_without_loss() {
        let mut r = Run::new(Admission::new(origin()));
        for i in 0..10 {
            r.send(i * 20, "192.0.2.10:4000", 1, i as u16);
        }
        // Transfer: a new SSRC, the old one stops.
        for i in 0..10 {
            r.send(200 + i * 20, "192.0.2.10:4000", 2, 9000 + i as u16);
        }
        let ssrcs: Vec<u32> = r.admitted.iter().map(|x| x.2).collect();
        assert_eq!(ssrcs, [[1u32; 10], [2u32; 10]].concat());
        assert_eq!(r.rejected.total(), 0);
        // The old SSRC is no longer the stream's.
        r.send(400, "192.0.2.10:4000", 1, 10);
        r.send(420, "192.0.2.10:4000", 1, 11);
        r.send(440, "192.0.2.10:4000", 2, 9010);
        assert_eq!(r.rejected.ssrc, 2);
        assert_eq!(r.admitted.len(), 21);
    }

    #[test]
    fn an_ssrc_interleaved_with_the_locked_one_is_rejected() {
        let mut r = Run::new(Admission::new(origin()));
        for i in 0..100u16 {
            r.send(i64::from(i) * 20, "192.0.2.10:4000", 1, i);
            // A spoofed stream with the source's address, every other packet.
            if i % 2 == 0 {
                r.send(i64::from(i) * 20 + 5, "192.0.2.10:4000", 66, 7000 + i / 2);
            }
        }
        assert!(r.admitted.iter().all(|x| x.2 == 1));
        assert_eq!(r.admitted.len(), 100);
        assert_eq!(r.rejected.ssrc, 50);
    }

    #[test]
    fn rtcp_and_non_rtp_only_from_the_locked_source() {
        let mut r = Run::new(Admission::new(origin()));
        let rtcp = [0x80u8, 200, 0, 6, 0, 0, 0, 1, 0, 0, 0, 0];
        r.send_bytes(0, "192.0.2.10:5000", &rtcp);
        r.send_bytes(0, "192.0.2.10:5000", b"garbage");
        assert_eq!(r.rejected.source, 2);
        r.send(10, "192.0.2.10:4000", 1, 1);
        r.send_bytes(20, "192.0.2.10:4000", &rtcp);
        r.send_bytes(30, "192.0.2.10:4000", b"garbage");
        assert_eq!(r.admitted.len(), 3);
    }

    #[test]
    fn a_retired_port_admits_nothing() {
        let mut r = Run::new(Admission::retired());
        for i in 0..10 {
            r.send(i * 20, "192.0.2.10:4000", 1, i as u16);
        }
        assert!(r.admitted.is_empty());
        assert_eq!(r.rejected.unknown_port, 10);
    }

    #[test]
    fn the_stream_of_a_retired_port_is_kept_out_of_its_next_stream() {
        // NAT: an ended call's stream from the SRC's host, still flowing
        // when the port is given to a new call whose stream comes from
        // another port of the same host.
        let nat = StreamOrigin {
            announced_ip: Some("10.1.1.1".parse().unwrap()),
            announced_port: 4000,
            signalling: SRC_HOST.parse().unwrap(),
        };
        let mut r = Run::new(Admission::new(nat));
        for i in 0..20 {
            r.send(i * 20, "192.0.2.10:31000", 1, i as u16);
        }
        assert_eq!(r.adm.locked(), Some(a("192.0.2.10:31000")));
        let mut rej = RejectCounts::default();
        r.adm.retire(&mut rej);
        r.send(400, "192.0.2.10:31002", 2, 1);
        let stale = r.adm.stale_sources().to_vec();
        assert_eq!(stale, vec![a("192.0.2.10:31000"), a("192.0.2.10:31002")]);
        // The new call: the old stream goes on, the new one starts later.
        let mut r2 = Run::new(Admission::new(nat).excluding(&stale));
        for i in 0..50 {
            r2.send(1000 + i * 20, "192.0.2.10:31000", 1, 20 + i as u16);
            if i >= 5 {
                r2.send(1000 + i * 20 + 5, "192.0.2.10:32000", 3, i as u16);
            }
        }
        assert_eq!(r2.adm.locked(), Some(a("192.0.2.10:32000")));
        assert!(r2.admitted.iter().all(|x| x.1 == a("192.0.2.10:32000")));
        assert_eq!(r2.admitted.len(), 45);
        assert_eq!(r2.rejected.unknown_port, 50);
        // The announced address is taken even if it was heard before.
        let o = origin();
        let mut r3 = Run::new(Admission::new(o).excluding(&[a("192.0.2.10:4000")]));
        r3.send(0, "192.0.2.10:4000", 1, 1);
        assert_eq!(r3.admitted.len(), 1);
    }

    #[test]
    fn a_new_offer_with_another_address_starts_over_the_same_keeps_the_lock() {
        let mut r = Run::new(Admission::new(origin()));
        r.send(0, "192.0.2.10:4000", 1, 1);
        let mut rej = RejectCounts::default();
        r.adm.set_origin(origin(), &mut rej);
        assert_eq!(r.adm.locked(), Some(a("192.0.2.10:4000")));
        let moved = StreamOrigin {
            announced_port: 4100,
            ..origin()
        };
        r.adm.set_origin(moved, &mut rej);
        assert_eq!(r.adm.locked(), None);
        r.send(20, "192.0.2.10:4000", 1, 2);
        r.send(40, "192.0.2.10:4100", 1, 3);
        assert_eq!(r.seqs_from("192.0.2.10:4100"), vec![3]);
        assert_eq!(r.adm.locked(), Some(a("192.0.2.10:4100")));
        // The packet from the old address was held as a candidate, then rejected.
        assert_eq!(r.rejected.source, 1);
    }

    #[test]
    fn held_packets_are_bounded() {
        let o = StreamOrigin {
            announced_ip: None,
            announced_port: 0,
            signalling: SRC_HOST.parse().unwrap(),
        };
        let mut r = Run::new(Admission::new(o));
        // A flood of in-sequence packets in no time, from many ports.
        for port in 0..10u16 {
            for i in 0..1000u16 {
                r.send(0, &format!("192.0.2.10:{}", 10_000 + port), 1, i);
            }
        }
        assert!(r.adm.held() <= MAX_CANDIDATES * MAX_HELD);
        assert!(r.admitted.is_empty());
        assert_eq!(r.rejected.source + r.adm.held() as u64, 10_000);
    }

    #[test]
    fn ipv4_mapped_sources_match_ipv4_announcements() {
        let mut r = Run::new(Admission::new(origin()));
        r.send(0, "[::ffff:192.0.2.10]:4000", 1, 1);
        assert_eq!(r.admitted.len(), 1);
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        /// Who sends: 0 the announced address, 1-2 other ports of the SRC's
        /// host, 3 another host.
        const SOURCES: [&str; 4] = [
            "192.0.2.10:4000",
            "192.0.2.10:5000",
            "192.0.2.10:5002",
            "198.51.100.9:4000",
        ];

        #[derive(Debug, Clone)]
        struct Dgram {
            gap_ms: i64,
            src: usize,
            ssrc: u32,
            seq_step: u16,
            kind: u8,
        }

        fn dgram() -> impl Strategy<Value = Dgram> {
            (0i64..60, 0usize..4, 1u32..4, 0u16..8, 0u8..10).prop_map(
                |(gap_ms, src, ssrc, seq_step, kind)| Dgram {
                    gap_ms,
                    src,
                    ssrc,
                    seq_step,
                    kind,
                },
            )
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// Whatever arrives: every datagram is admitted once, rejected
            /// or still held (nothing lost, nothing doubled); nothing from
            /// another host gets in; once the announced address is in,
            /// nothing else is; held memory stays bounded; each source's
            /// datagrams reach the engine in arrival order with their own
            /// arrival times.
            #[test]
            fn admission_invariants(dgrams in proptest::collection::vec(dgram(), 1..400), nat in any::<bool>()) {
                let origin = StreamOrigin {
                    announced_ip: Some(if nat { "10.1.1.1" } else { SRC_HOST }.parse().unwrap()),
                    announced_port: 4000,
                    signalling: SRC_HOST.parse().unwrap(),
                };
                let mut adm = Admission::new(origin);
                let mut rejected = RejectCounts::default();
                let mut admitted: Vec<(Timestamp, SocketAddr, Vec<u8>)> = Vec::new();
                let mut offered: Vec<(Timestamp, SocketAddr, Vec<u8>)> = Vec::new();
                let mut seqs = [0u16; 4];
                let mut t = 0i64;
                let mut announced_in_at = None;
                for (i, d) in dgrams.iter().enumerate() {
                    t += d.gap_ms * 1000;
                    seqs[d.src] = seqs[d.src].wrapping_add(d.seq_step);
                    let mut bytes = match d.kind {
                        0 => vec![0x80, 200, 0, 1, 0, 0, 0, 1],
                        1 => b"not rtp at all".to_vec(),
                        _ => rtp(d.ssrc, seqs[d.src]),
                    };
                    // Unique payload: which datagram this is.
                    bytes.extend_from_slice(&(i as u32).to_be_bytes());
                    let src = a(SOURCES[d.src]);
                    let ts = Timestamp::from_micros(t);
                    offered.push((ts, src, bytes.clone()));
                    adm.offer(ts, src, &bytes, &mut rejected, &mut |ts, s, b| {
                        admitted.push((ts, s, b.to_vec()))
                    });
                    prop_assert!(adm.held() <= MAX_CANDIDATES * MAX_HELD);
                    if !nat && announced_in_at.is_none()
                        && admitted.iter().any(|x| x.1 == a(SOURCES[0]))
                    {
                        announced_in_at = Some(admitted.len());
                    }
                }
                prop_assert_eq!(
                    admitted.len() as u64 + rejected.total() + adm.held() as u64,
                    offered.len() as u64
                );
                prop_assert_eq!(rejected.unknown_port, 0);
                prop_assert!(admitted.iter().all(|x| x.1 != a(SOURCES[3])));
                if let Some(k) = announced_in_at {
                    prop_assert!(admitted[k..].iter().all(|x| x.1 == a(SOURCES[0])));
                }
                // Each admitted datagram was offered, once, with its time;
                // the RTP of each source in arrival order (RTCP and other
                // datagrams of the locked source pass at once, also while
                // packets of a new SSRC are held).
                let mut last_index = [None::<usize>; 4];
                let mut seen = std::collections::HashSet::new();
                for (ts, src, b) in &admitted {
                    let idx = u32::from_be_bytes(b[b.len() - 4..].try_into().unwrap()) as usize;
                    prop_assert_eq!(&offered[idx], &(*ts, *src, b.clone()));
                    prop_assert!(seen.insert(idx), "datagram {} admitted twice", idx);
                    if dgrams[idx].kind < 2 {
                        continue;
                    }
                    let s = SOURCES.iter().position(|x| a(x) == *src).unwrap();
                    prop_assert!(last_index[s].is_none_or(|l| l < idx), "order of {}", src);
                    last_index[s] = Some(idx);
                }
            }
        }
    }

    #[test]
    fn reordered_packets_in_a_run_are_held_not_lost() {
        let o = StreamOrigin {
            announced_ip: None,
            announced_port: 0,
            signalling: SRC_HOST.parse().unwrap(),
        };
        let mut r = Run::new(Admission::new(o));
        let seqs = [1u16, 3, 2, 4, 5, 6, 8, 7, 9, 10, 11, 12];
        for (i, s) in seqs.iter().enumerate() {
            r.send(i as i64 * 20, "192.0.2.10:31000", 5, *s);
        }
        assert_eq!(r.seqs_from("192.0.2.10:31000"), seqs.to_vec());
    }
}
