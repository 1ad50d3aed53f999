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
//! sequence with fewer than that many packets of the locked SSRC in between
//! (an SBC changing SSRC on a transfer: the old stops, the new starts, the
//! old one's last packets may be overtaken by the new one's first; nothing
//! is lost); a new SSRC interleaved with the locked one is rejected
//! (`ssrc`). A new SSRC is
//! never accepted from another address. RTCP (rtcp-mux) and datagrams that
//! are not RTP are admitted only from the locked address (the engine ignores
//! or counts them). A port whose stream has ended ([`Admission::retire`],
//! half a second after the BYE: `media::RETIRE_GRACE_US`) rejects
//! everything (`unknown_port`): late packets after a call, streams of calls
//! a restart killed. It remembers the sources it heard (the ended
//! stream's first); if the port is given to a new stream before they stopped
//! (a small `rtp_ports`), they are never latched for it
//! ([`Admission::excluding`]) and still count as `unknown_port`: an SBC
//! still sending an ended call's stream cannot win the new call's latch.
//!
//! A re-offer announcing another address for the stream starts over
//! ([`Admission::set_origin`]), the old source's packets admitted until
//! another source is latched or announced; one announcing the same keeps
//! the lock. A
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
    /// A packet of the locked SSRC held behind a change in progress (to
    /// keep the source's arrival order): admitted whatever the change's
    /// fate.
    locked: bool,
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
    /// A new SSRC of a locked source: packets of the locked SSRC that came
    /// since its run began (the old stream's last ones, overtaken by the
    /// new one's first), and whether packets of the run came after them.
    interleaved: u32,
    resumed: bool,
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
            interleaved: 0,
            resumed: false,
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
        self.push(ts, bytes, false, reason, rejected);
    }

    fn push(
        &mut self,
        ts: Timestamp,
        bytes: &[u8],
        locked: bool,
        reason: Reason,
        rejected: &mut RejectCounts,
    ) {
        self.held.push_back(Held {
            ts,
            bytes: bytes.to_vec(),
            locked,
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

    /// A change of SSRC that was not one: its packets rejected, the locked
    /// stream's held behind it admitted, in their order.
    fn abandon(
        self,
        rejected: &mut RejectCounts,
        out: &mut impl FnMut(Timestamp, SocketAddr, &[u8]),
    ) {
        let src = self.src;
        for h in self.held {
            if h.locked {
                out(h.ts, src, &h.bytes);
            } else {
                rejected.add(Reason::Ssrc, 1);
            }
        }
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
        /// Boxed: rare, and a port's state stays small.
        switch: Option<Box<Candidate>>,
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
    /// The newest RTP packet admitted: (source, SSRC, sequence number).
    newest: Option<Ended>,
    /// Retired: the streams heard (the ended one's, and late ones since),
    /// each at its newest sequence number. A stream: those of the port's
    /// previous streams; a packet that continues one (same source and
    /// SSRC, the next [`CONTINUES`] sequence numbers) is `unknown_port`,
    /// even from the announced address.
    ended: Vec<Ended>,
    /// A locked stream: the RTP refused lately from one other source
    /// (counted `source` when refused), kept for [`STRAY_KEEP_US`] in
    /// case a re-offer names that source ([`Admission::set_origin`]): an
    /// SRC that moves a stream to another port the moment it has our 200
    /// sends its first packets before the media thread has the new
    /// origin, and they were lost. Released, in order, ahead of the first
    /// packet the new origin admits.
    stray: Option<Box<Candidate>>,
    /// Learning again after a re-offer moved the stream: the source it was
    /// locked to before, whose packets are admitted until another source
    /// takes the stream (an SRC goes on sending from the old address until
    /// it has our answer, or a moment longer: its packets were held as a
    /// candidate and refused when the new address won, up to 100 ms lost).
    moved_from: Option<SocketAddr>,
}

/// How long refused packets of another source are kept for a re-offer
/// that names it ([`Admission::stray`]).
const STRAY_KEEP_US: i64 = 500_000;
/// The most packets, and bytes, kept of another source (a port flooded
/// from elsewhere holds no more).
const STRAY_MAX: usize = 8;
const STRAY_MAX_BYTES: usize = 2048;

/// An RTP stream heard on a port: its source, SSRC and newest sequence
/// number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    src: SocketAddr,
    ssrc: u32,
    seq: u16,
}

impl Ended {
    /// `seq` of this stream: its newest if ahead.
    fn advance(&mut self, seq: u16) {
        if (seq.wrapping_sub(self.seq) as i16) > 0 {
            self.seq = seq;
        }
    }
}

/// How many sequence numbers after an ended stream's newest still
/// continue it ([`Admission::excluding`]): 2 s of 20 ms packets.
const CONTINUES: u16 = 100;

/// Notes RTP packet `bytes` from `src` in `list` (at most [`MAX_STALE`]
/// streams), each stream at its newest sequence number.
fn note_stream(list: &mut Vec<Ended>, src: SocketAddr, bytes: &[u8]) {
    let Some((ssrc, seq)) = rtp_fields(bytes) else {
        return;
    };
    if let Some(e) = list.iter_mut().find(|e| e.src == src && e.ssrc == ssrc) {
        e.advance(seq);
    } else if list.len() < MAX_STALE {
        list.push(Ended { src, ssrc, seq });
    }
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
            newest: None,
            ended: Vec::new(),
            stray: None,
            moved_from: None,
        }
    }

    /// A port that carries no stream: every datagram is `unknown_port`.
    pub fn retired() -> Admission {
        Admission {
            origin: None,
            state: State::Retired,
            stale: Vec::new(),
            newest: None,
            ended: Vec::new(),
            stray: None,
            moved_from: None,
        }
    }

    /// Admit everything (no SRC to check against: tests of the receive path).
    pub fn unrestricted() -> Admission {
        Admission {
            origin: None,
            state: State::Unrestricted,
            stale: Vec::new(),
            newest: None,
            ended: Vec::new(),
            stray: None,
            moved_from: None,
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
        self.moved_from = match self.state {
            State::Locked { src, .. } => Some(src),
            State::Learning(_) => self.moved_from,
            _ => None,
        };
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
        self.ended = self.newest.take().into_iter().collect();
        self.stray = None;
        self.moved_from = None;
    }

    /// Retired: the streams heard on the port (its last stream's first),
    /// to keep their continuation out of the port's next stream.
    pub fn ended_streams(&self) -> &[Ended] {
        match self.state {
            State::Retired => &self.ended,
            _ => &[],
        }
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
    ///
    /// And packets that continue a stream `ended` on the port (same source
    /// and SSRC, the sequence numbers right after its newest) are
    /// `unknown_port` even from the announced address: an SRC that sends
    /// every stream from one port (SIPp) still sending the ended call's
    /// when the port came back early (a small `rtp_ports`) put 60 ms of the
    /// ended call at the start of the new one, shifting all of it.
    pub fn excluding(mut self, stale: &[SocketAddr], ended: &[Ended]) -> Admission {
        self.stale = stale.iter().take(MAX_STALE).copied().collect();
        self.ended = ended.iter().take(MAX_STALE).copied().collect();
        self
    }

    /// Whether RTP packet `bytes` from `src` continues an ended stream of
    /// the port (noted as its newest then).
    fn continues_ended(&mut self, src: SocketAddr, bytes: &[u8]) -> bool {
        if self.ended.is_empty() {
            return false;
        }
        let Some((ssrc, seq)) = rtp_fields(bytes) else {
            return false;
        };
        let Some(e) = self
            .ended
            .iter_mut()
            .find(|e| e.src == src && e.ssrc == ssrc)
        else {
            return false;
        };
        match seq.wrapping_sub(e.seq) {
            0 => true,
            1..=CONTINUES => {
                e.seq = seq;
                true
            }
            _ => false,
        }
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
        if matches!(self.state, State::Retired) || self.origin.is_none() {
            note_stream(&mut self.ended, src, bytes);
        } else if self.continues_ended(src, bytes) {
            return rejected.add(Reason::UnknownPort, 1);
        }
        let mut newest = self.newest.take();
        self.admit(ts, src, bytes, rejected, &mut |ts, src, b: &[u8]| {
            if let Some((ssrc, seq)) = rtp_fields(b) {
                newest = Some(match newest {
                    Some(mut e) if e.src == src && e.ssrc == ssrc => {
                        e.advance(seq);
                        e
                    }
                    _ => Ended { src, ssrc, seq },
                });
            }
            out(ts, src, b)
        });
        self.newest = newest;
    }

    /// [`Admission::offer`]'s rule.
    fn admit(
        &mut self,
        ts: Timestamp,
        src: SocketAddr,
        bytes: &[u8],
        rejected: &mut RejectCounts,
        out: &mut impl FnMut(Timestamp, SocketAddr, &[u8]),
    ) {
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
                self.moved_from = None;
                self.state = State::Locked {
                    src,
                    ssrc: fields.map(|f| f.0),
                    switch: None,
                };
                // Its packets refused just before (the new origin came
                // after them), in order; no older than STRAY_KEEP_US.
                if let Some(mut c) = self.stray.take().filter(|c| c.src == src) {
                    c.held.retain(|h| ts.micros_since(h.ts) <= STRAY_KEEP_US);
                    c.release(out);
                }
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
                    if let Some((p_ssrc, seq)) = fields {
                        let same = self
                            .stray
                            .as_mut()
                            .is_some_and(|c| c.src == src && c.extend(p_ssrc, seq, ts));
                        if !same {
                            self.stray = Some(Box::new(Candidate::new(src, p_ssrc, seq, ts)));
                        }
                        if let Some(c) = self.stray.as_mut() {
                            // (Counted below, when refused; not again when
                            // the bounds drop it.)
                            c.hold(ts, bytes, Reason::Source, &mut RejectCounts::default());
                            while c.held.len() > STRAY_MAX || c.held_bytes > STRAY_MAX_BYTES {
                                if let Some(h) = c.held.pop_front() {
                                    c.held_bytes -= h.bytes.len();
                                }
                            }
                        }
                    }
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
                        // The locked SSRC goes on: a change in progress was
                        // not one. But one or two of its packets in one
                        // block are the old stream's last, overtaken by the
                        // new one's first (before, the new stream's first
                        // packets went): the change goes on. (Two streams
                        // taking turns are not a change.)
                        // (Held behind it meanwhile: the source's packets
                        // reach the engine in the order they came.)
                        if let Some(c) = switch.as_mut() {
                            c.interleaved += 1;
                            if !c.resumed && c.interleaved < SSRC_QUORUM {
                                return c.push(ts, bytes, true, Reason::Ssrc, rejected);
                            }
                            if let Some(c) = switch.take() {
                                c.abandon(rejected, out);
                            }
                        }
                        out(ts, src, bytes)
                    }
                    Some(_) => {
                        let extended = switch.as_mut().is_some_and(|c| c.extend(p_ssrc, seq, ts));
                        if !extended {
                            if let Some(old) = switch.take() {
                                old.abandon(rejected, out);
                            }
                        }
                        let c = switch
                            .get_or_insert_with(|| Box::new(Candidate::new(src, p_ssrc, seq, ts)));
                        c.resumed |= c.interleaved > 0;
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
                if self.moved_from == Some(src) {
                    // The stream's old source, until another takes it.
                    return out(ts, src, bytes);
                }
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
                    self.moved_from = None;
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
mod tests;
