//! The call engine: captured frames (or UDP datagrams) and time in, recordings out.
//!
//! In: link-layer frames with their arrival time ([`CallEngine::handle_frame`]),
//! or already-decoded transport segments ([`CallEngine::handle_segment`]), and
//! the passage of time ([`CallEngine::handle_timeout`]). Out: calls on a
//! [`RecordingSink`]: `begin`, interleaved stereo PCM in order, `end` with the
//! call's [`CallMeta`].
//!
//! How a call is followed:
//! - **SIP** (UDP or TCP) is grouped by Call-ID. The sender of the initial
//!   INVITE (no To-tag) is the caller; every later request or response is put on
//!   the caller's or the callee's side by its From-tag. Each SDP body (offer or
//!   answer, in INVITE, 18x, 2xx, ACK, UPDATE, PRACK) says where *its sender*
//!   receives media and with which payload-type map; those addresses are
//!   registered for the call. Retransmissions are recognised and counted once.
//! - **RTP** is matched to a call by its destination (a registered receive
//!   address: the packet is what the *other* party said) or, failing that, by
//!   its source (symmetric RTP: parties send from where they receive, which
//!   also finds streams whose announced address a NAT rewrote). RTCP is ignored.
//! - Each leg keeps one active flow (source, destination, SSRC): a second copy
//!   of the same audio (a media relay seen on both sides) is ignored while the
//!   active flow is alive; a new SSRC (transfer, media server) takes over when
//!   the old one has gone quiet.
//! - Time zero is the arrival of the first RTP packet of the call; each leg's
//!   [`LegTimeline`] places its audio on that timeline by the lower envelope
//!   of arrival against RTP timestamps (jitter only delays; see its module),
//!   holding back `jitter` of audio so reordered packets find their place and
//!   a late first packet is known to be late before anything is written. The
//!   two legs are rendered together and interleaved: PCM is handed to the
//!   sink as soon as it is older than that window, so memory does not grow
//!   with call length.
//! - A call's recording can be paused ([`CallEngine::pause`], DTMF sequences
//!   from [`EngineConfig::pause_dtmf`], `X-Recording-Pause` on a request of
//!   its dialog): the mixer writes exact zeros on both channels over the
//!   paused stretches, the timeline going on; see [`super::pause`].
//! - A call ends on BYE (after lingering one jitter window for stragglers),
//!   CANCEL, a failure answer, `rtp_timeout` of media silence, or [`CallEngine::finish`].
//!
//! Malformed packets are counted in [`EngineStats`] and dropped; nothing here
//! panics on input.

use std::collections::HashMap;

use rustc_hash::FxHashMap;
use std::net::SocketAddr;

use serde::Serialize;

use crate::call::meta::{recording_id, CallKey, EndReason, Party, PauseBy, RecordingSink};
use crate::capture::LinkType;
use crate::net::{NetDecoder, NetLimits, Segment, Transport};
use crate::sip::stream::SipStreamFramer;
use crate::Timestamp;

use super::dialog::*;

/// Output sample-rate policy (`recording.sample_rate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleRatePolicy {
    /// 8000 for narrowband calls, 16000 if a leg is wideband when media starts.
    Auto,
    Fixed(u32),
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub sample_rate: SampleRatePolicy,
    /// Jitter / reorder window: audio is held this long before it is written.
    pub jitter_ms: u32,
    /// A call whose media stopped this long ends.
    pub rtp_timeout_us: i64,
    /// A call that never carried media is forgotten after this long without SIP.
    pub setup_timeout_us: i64,
    /// Most calls tracked at once (SIP-only dialogs included); beyond, the oldest
    /// call without media is forgotten.
    pub max_calls: usize,
    pub net: NetLimits,
    /// Every INVITE is a SIPREC recording session (the SIPREC server's
    /// engine), also without `Require: siprec` / `+sip.src` or metadata.
    pub siprec_server: bool,
    /// DTMF sequence that pauses a call's recording (`recording.pause_dtmf`,
    /// e.g. `*1`; empty: none). See [`super::pause`].
    pub pause_dtmf: String,
    /// DTMF sequence that resumes it (`recording.resume_dtmf`).
    pub resume_dtmf: String,
    /// Calls (by SIP Call-ID) recorded at 16000 Hz from their start under
    /// [`SampleRatePolicy::Auto`] although they start narrowband: an
    /// import's second reading of the calls that turned wideband after
    /// their rate was fixed ([`CallEngine::take_narrowed`]).
    pub wideband_calls: std::collections::HashSet<String>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            sample_rate: SampleRatePolicy::Auto,
            jitter_ms: 500,
            rtp_timeout_us: 30_000_000,
            setup_timeout_us: 300_000_000,
            max_calls: 100_000,
            net: NetLimits::default(),
            siprec_server: false,
            pause_dtmf: String::new(),
            resume_dtmf: String::new(),
            wideband_calls: Default::default(),
        }
    }
}

/// A finished recording that heard a wideband codec below 16000 Hz
/// ([`CallEngine::take_narrowed`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Narrowed {
    pub call_id: String,
    pub recording_id: String,
}

/// A call in progress, as the control API lists it (`GET /v1/calls`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallInProgress {
    pub key: CallKey,
    /// The SIP Call-ID (for SIPREC: the recording session's).
    pub call_id: String,
    /// Set once media started (the id its recording will have).
    pub recording_id: Option<String>,
    pub started_at: Timestamp,
    pub media_started_at: Option<Timestamp>,
    pub paused: bool,
}

/// Why [`CallEngine::pause`] or [`CallEngine::resume`] did nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PauseError {
    #[error("no call in progress has that Call-ID or recording id")]
    UnknownCall,
    #[error("the call's recording is already paused")]
    AlreadyPaused,
    #[error("the call's recording is not paused")]
    NotPaused,
}

/// Counters of what the engine saw and what it could not use.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EngineStats {
    /// Link-layer frames fed with `handle_frame` (captures, sniffing).
    pub frames: u64,
    /// Datagrams and TCP pieces fed directly with `handle_segment` (the
    /// SIPREC server's sockets).
    pub segments: u64,
    /// RTP packets missing from the sequence ranges of finished recordings
    /// (the sum of their channels' `lost`).
    pub rtp_lost: u64,
    /// RTP packets of finished recordings that came after their place was
    /// written (the sum of their channels' `late`): dropped, not placed.
    pub rtp_late: u64,
    pub frames_undecodable: u64,
    pub sip_messages: u64,
    pub sip_malformed: u64,
    pub sip_retransmissions: u64,
    pub sdp_malformed: u64,
    pub rtp_packets: u64,
    pub rtp_malformed: u64,
    pub rtp_unmatched: u64,
    pub rtp_duplicate_flow: u64,
    /// SRTP packets of sniffed or imported calls that did not authenticate
    /// with their sender's SDES key (dropped, never decoded as audio).
    pub srtp_failures: u64,
    pub rtcp_packets: u64,
    pub udp_other: u64,
    pub tcp_other: u64,
    pub calls_seen: u64,
    pub calls_recorded: u64,
    pub calls_without_media: u64,
    pub calls_evicted: u64,
    /// Times a capture's clock stepped back ([`CallEngine::handle_frame`]):
    /// the time after each step was moved on to continue from before it.
    pub capture_clock_steps_back: u64,
}

pub(super) const TCP_FRAMERS_MAX: usize = 4096;
pub(super) const DTMF_MAX: usize = 4096;
pub(super) const WARNINGS_MAX: usize = 32;
/// A second flow on a leg takes over once the active one has been quiet this long
/// (relayed copies of a stream interleave, a replaced stream stops).
pub(super) const FLOW_QUIET_US: i64 = 60_000;
pub(super) const HOUSEKEEPING_US: i64 = 1_000_000;
/// While calls are in progress, time must reach the engine at least this
/// often (renders the legs that fell silent, notices timeouts):
/// [`CallEngine::poll_timeout`] asks for it.
pub(super) const FLUSH_TICK_US: i64 = 200_000;

/// Everything but the network decoder (so the decoder's callback can borrow it).
pub(super) struct Tracker {
    pub(super) cfg: EngineConfig,
    // Per-packet lookups use a fast hash: the keys are our own (call keys)
    // or addresses taken from SDP, not chosen freely by each packet. Each
    // call's state is boxed: the table's spare slots (up to half of them
    // after it grows) then cost a pointer, not a whole call's state.
    pub(super) calls: FxHashMap<CallKey, Box<Call>>,
    pub(super) by_call_id: HashMap<String, CallKey>,
    pub(super) endpoints: FxHashMap<SocketAddr, (CallKey, Party)>,
    /// Where a party is reached though nobody announced it: the source of
    /// its stream to an address the other party announced (symmetric RTP
    /// behind a NAT: the other party answers to where the packets came
    /// from, from a port of its own that it may not have announced
    /// either). Asked only for packets neither of whose addresses was
    /// announced; the latest call to be seen sending from one has it.
    pub(super) latched: FxHashMap<SocketAddr, (CallKey, Party)>,
    /// Calls that announced an address a later call took too (a B2BUA's
    /// two dialogs with direct media): see `Tracker::handle_rtp`.
    pub(super) shared: super::dialog::SharedEndpoints,
    /// How many times a side announced an address it had not announced
    /// before: the order of announcements (see `Leg::announced_before`).
    pub(super) announcements: u32,
    pub(super) framers: HashMap<(SocketAddr, SocketAddr), (SipStreamFramer, Timestamp)>,
    /// TCP streams whose first line named another protocol (`HTTP/1.1`,
    /// `RTSP/1.0`): never read as SIP, even where their content holds SIP
    /// text (a log shipped over HTTP made a phantom call, or ended a real
    /// one). At most [`TCP_FRAMERS_MAX`], forgotten all at once beyond.
    pub(super) not_sip: rustc_hash::FxHashSet<(SocketAddr, SocketAddr)>,
    /// A TCP stream's first bytes cut inside its first line (at most 1 KiB
    /// each: `may_begin_sip`), until the line's end says what it is.
    pub(super) first_lines: FxHashMap<(SocketAddr, SocketAddr), Vec<u8>>,
    pub(super) stats: EngineStats,
    pub(super) next_key: u64,
    pub(super) now: Timestamp,
    /// Set by a host whose media come on another path than the rest
    /// ([`CallEngine::set_horizon`]): nothing is rendered past it.
    pub(super) horizon: Option<Timestamp>,
    pub(super) last_housekeeping: Timestamp,
    /// The earliest exact deadline known (a call's linger after BYE, a
    /// timeout, an idle TCP framer): recomputed by housekeeping, moved
    /// earlier by the events that create one.
    pub(super) wake: Option<Timestamp>,
    pub(super) scratch: Vec<i16>,
    /// The second leg's rendered samples (the first's in `scratch`), until
    /// both are interleaved into `out`.
    pub(super) scratch2: Vec<i16>,
    pub(super) out: Vec<i16>,
    /// In-band DTMF found while rendering (leg, event).
    pub(super) tones: Vec<(usize, crate::audio::dtmf::ToneEvent)>,
    /// Finished recordings that heard a wideband codec below 16000 Hz
    /// ([`CallEngine::take_narrowed`]).
    pub(super) narrowed: Vec<Narrowed>,
}

impl Tracker {
    pub(super) fn new(cfg: EngineConfig) -> Self {
        Tracker {
            cfg,
            calls: FxHashMap::default(),
            by_call_id: HashMap::new(),
            endpoints: FxHashMap::default(),
            latched: FxHashMap::default(),
            shared: FxHashMap::default(),
            announcements: 0,
            framers: HashMap::new(),
            not_sip: Default::default(),
            first_lines: FxHashMap::default(),
            stats: EngineStats::default(),
            next_key: 1,
            now: Timestamp::ZERO,
            horizon: None,
            last_housekeeping: Timestamp::ZERO,
            wake: None,
            scratch: Vec::with_capacity(4096),
            scratch2: Vec::with_capacity(4096),
            out: Vec::with_capacity(16384),
            tones: Vec::new(),
            narrowed: Vec::new(),
        }
    }

    /// The calls in progress an id names: the one whose SIP Call-ID or
    /// recording id it is, else every one whose recorded call (SIPREC
    /// metadata) or PBX identifiers (`ids`: linkedid, UCID, Cisco GUID...)
    /// it is: a desktop application knows the PBX's id, not the recording
    /// session's, and a PBX bridging two legs has a recording of each
    /// (both must be paused for a card number).
    pub(super) fn find_calls(&self, id: &str) -> Vec<CallKey> {
        if let Some(k) = self.find_call(id) {
            return vec![k];
        }
        let mut v: Vec<CallKey> = self
            .calls
            .values()
            .filter(|c| !matches!(c.state, CallState::Ending(..)))
            .filter(|c| {
                c.recorded_call_id.as_deref() == Some(id) || c.ids.values().any(|x| x == id)
            })
            .map(|c| c.key)
            .collect();
        v.sort();
        v
    }

    /// A call in progress by its SIP Call-ID or its recording id.
    pub(super) fn find_call(&self, id: &str) -> Option<CallKey> {
        let live = |k: &CallKey| {
            self.calls
                .get(k)
                .is_some_and(|c| !matches!(c.state, CallState::Ending(..)))
        };
        if let Some(k) = self.by_call_id.get(id).filter(|k| live(k)) {
            return Some(*k);
        }
        self.calls
            .values()
            .filter(|c| !matches!(c.state, CallState::Ending(..)))
            .find(|c| {
                c.media
                    .as_ref()
                    .is_some_and(|m| recording_id(&c.call_id, m.t0) == id)
            })
            .map(|c| c.key)
    }

    pub(super) fn handle_segment(&mut self, seg: &Segment<'_>, sink: &mut dyn RecordingSink) {
        self.advance(seg.ts, sink);
        match seg.transport {
            Transport::Udp => self.handle_udp(seg.ts, seg.src, seg.dst, seg.payload, sink),
            Transport::Tcp => self.handle_tcp(seg, sink),
        }
    }

    pub(super) fn handle_timeout(&mut self, now: Timestamp, sink: &mut dyn RecordingSink) {
        if now > self.now {
            self.now = now;
        }
        self.housekeeping(sink);
    }

    pub(super) fn finish(&mut self, reason: EndReason, sink: &mut dyn RecordingSink) {
        let mut keys: Vec<CallKey> = self.calls.keys().copied().collect();
        keys.sort();
        for k in keys {
            let r = match self.calls.get(&k).map(|c| &c.state) {
                Some(CallState::Ending(_, r)) => *r,
                _ => reason,
            };
            self.finalize(k, r, sink);
        }
        self.framers.clear();
    }

    pub(super) fn advance(&mut self, ts: Timestamp, sink: &mut dyn RecordingSink) {
        if ts > self.now {
            self.now = ts;
        }
        if self.now.micros_since(self.last_housekeeping) >= HOUSEKEEPING_US {
            self.housekeeping(sink);
        }
    }

    /// The time calls are rendered, lingered and timed out by: the latest
    /// time the engine was given, but never past the host's horizon.
    pub(super) fn clock(&self) -> Timestamp {
        match self.horizon {
            Some(h) if h < self.now => h,
            _ => self.now,
        }
    }

    pub(super) fn housekeeping(&mut self, sink: &mut dyn RecordingSink) {
        self.last_housekeeping = self.now;
        let now = self.clock();
        let linger = i64::from(self.cfg.jitter_ms) * 1000;
        let mut done: Vec<(CallKey, EndReason)> = Vec::new();
        let mut forget: Vec<CallKey> = Vec::new();
        for (k, c) in &self.calls {
            match (&c.state, &c.media) {
                (CallState::Ending(at, r), m)
                    if now.micros_since(*at)
                        >= m.as_ref().map_or(linger, |m| i64::from(m.jitter_ms) * 1000) =>
                {
                    done.push((*k, *r))
                }
                (_, Some(_))
                    if now.micros_since(c.quiet_since())
                        >= c.media_timeout_us(self.cfg.rtp_timeout_us) =>
                {
                    done.push((*k, EndReason::RtpTimeout))
                }
                (_, None)
                    if now.micros_since(c.last_sip)
                        >= c.media_timeout_us(self.cfg.setup_timeout_us) =>
                {
                    // (A call on hold from its start, e.g. a SIPREC session
                    // paused from its INVITE, waits as a held call does.)
                    forget.push(*k)
                }
                _ => {}
            }
        }
        done.sort_by_key(|d| d.0);
        for (k, r) in done {
            self.finalize(k, r, sink);
        }
        for k in forget {
            self.finalize(k, EndReason::RtpTimeout, sink);
        }
        // Flush every recording up to now - jitter.
        let keys: Vec<CallKey> = self
            .calls
            .iter()
            .filter(|(_, c)| c.media.is_some())
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            self.flush_call(k, sink, false);
        }
        let idle = self.cfg.setup_timeout_us;
        self.framers
            .retain(|_, (_, last)| now.micros_since(*last) < idle);
        self.wake = self
            .calls
            .values()
            .map(|c| self.deadline_of(c))
            .chain(self.framers.values().map(|(_, last)| last.add_micros(idle)))
            .min();
    }

    /// When call `c` next needs time without packets: the end of its
    /// linger after BYE, or its media or set-up timeout.
    pub(super) fn deadline_of(&self, c: &Call) -> Timestamp {
        match (&c.state, &c.media) {
            (CallState::Ending(at, _), m) => at.add_micros(
                m.as_ref()
                    .map_or(i64::from(self.cfg.jitter_ms), |m| i64::from(m.jitter_ms))
                    * 1000,
            ),
            (_, Some(_)) => c
                .quiet_since()
                .add_micros(c.media_timeout_us(self.cfg.rtp_timeout_us)),
            (_, None) => c
                .last_sip
                .add_micros(c.media_timeout_us(self.cfg.setup_timeout_us)),
        }
    }

    /// Call `key` may have a new, earlier deadline (it began, or is ending).
    pub(super) fn wake_for(&mut self, key: CallKey) {
        if let Some(d) = self.calls.get(&key).map(|c| self.deadline_of(c)) {
            self.wake = Some(self.wake.map_or(d, |w| w.min(d)));
        }
    }

    pub(super) fn poll_timeout(&self) -> Option<Timestamp> {
        let tick =
            (!self.calls.is_empty()).then(|| self.last_housekeeping.add_micros(FLUSH_TICK_US));
        match (self.wake, tick) {
            (Some(w), Some(t)) => Some(w.min(t)),
            (w, t) => w.or(t),
        }
    }
}

/// A capture's frames come in the order they were captured, so their
/// stamps go back only by what a multi-queue NIC or a capture of several
/// interfaces reorders. Farther back than the jitter window (and at least
/// this), the capturing host's clock was set back (NTP stepping it): frames
/// reordered that far would be late for their place anyway, while a step
/// of X cut X of every call's audio (or held every call for X).
pub const CLOCK_STEP_BACK_US: i64 = 500_000;

/// The clock of a capture's frames, made to run on where the capturing
/// host's clock was stepped back: every stamp after a step is moved by it,
/// so the audio on both sides of the step stays continuous (placed by the
/// raw stamps, the audio after a step back of X overlapped the audio
/// before it, and X of both legs was cut; a step of minutes held every
/// call's rendering until the clock caught up). Times in the recordings
/// after a step carry the clock as it ran before it.
#[derive(Debug)]
struct CaptureClock {
    /// A stamp farther back than this is a step.
    step: i64,
    /// The latest stamp given out.
    latest: Option<Timestamp>,
    /// The time between the last two frames that moved the clock on.
    gap: i64,
    /// Added to every raw stamp: the sum of the steps back seen.
    offset: i64,
}

impl CaptureClock {
    fn new(jitter_ms: u32) -> Self {
        CaptureClock {
            step: (i64::from(jitter_ms) * 1000).max(CLOCK_STEP_BACK_US),
            latest: None,
            gap: 0,
            offset: 0,
        }
    }

    /// A frame's stamp on the continued clock.
    fn stamp(&mut self, raw: Timestamp, steps: &mut u64) -> Timestamp {
        let t = raw.add_micros(self.offset);
        let Some(latest) = self.latest else {
            self.latest = Some(t);
            return t;
        };
        let back = latest.micros_since(t);
        if back > self.step {
            // The frame after the step follows the one before it as
            // closely as the frames before did (the time between them is
            // not known: the clock moved in between).
            let at = latest.add_micros(self.gap.clamp(0, self.step));
            self.offset = self.offset.saturating_add(at.micros_since(t));
            self.latest = Some(at);
            *steps += 1;
            return at;
        }
        if back < 0 {
            self.gap = -back;
            self.latest = Some(t);
        }
        t
    }

    /// A time of the host's own clock (a timer) on the continued clock.
    fn now(&self, raw: Timestamp) -> Timestamp {
        raw.add_micros(self.offset)
    }

    /// A time of the continued clock on the host's own clock.
    fn raw(&self, t: Timestamp) -> Timestamp {
        t.add_micros(self.offset.saturating_neg())
    }
}

/// The sans-IO call engine. See the module documentation.
pub struct CallEngine {
    net: NetDecoder,
    t: Tracker,
    clock: CaptureClock,
}

impl CallEngine {
    pub fn new(cfg: EngineConfig) -> Self {
        CallEngine {
            net: NetDecoder::new(cfg.net.clone()),
            clock: CaptureClock::new(cfg.jitter_ms),
            t: Tracker::new(cfg),
        }
    }

    pub fn stats(&self) -> &EngineStats {
        &self.t.stats
    }

    /// New settings (a configuration reload). Calls whose media has started
    /// keep their sample rate and jitter window; new calls take the new ones.
    /// `rtp_timeout_us`, `setup_timeout_us` and `max_calls` apply to every
    /// call from now on. The network decoder keeps its limits (`net`) and
    /// the engine its role (`siprec_server`).
    pub fn set_config(&mut self, cfg: EngineConfig) {
        // The network limits and the engine's role (a SIPREC server's) stay.
        let net = self.t.cfg.net.clone();
        let siprec_server = self.t.cfg.siprec_server;
        // (the DTMF sequences apply to every call from now on)
        self.t.cfg = EngineConfig {
            net,
            siprec_server,
            ..cfg
        };
    }

    /// The settings in use.
    pub fn config(&self) -> &EngineConfig {
        &self.t.cfg
    }

    /// The recordings finished since the last call whose rate was fixed
    /// below 16000 Hz when their media started and which then heard a
    /// wideband codec (a re-INVITE from G.711 to G.722 or Opus): that
    /// audio was recorded narrowband. Under [`SampleRatePolicy::Auto`] an
    /// import reads its captures again with these calls in
    /// [`EngineConfig::wideband_calls`].
    pub fn take_narrowed(&mut self) -> Vec<Narrowed> {
        std::mem::take(&mut self.t.narrowed)
    }

    pub fn net_stats(&self) -> &crate::net::NetStats {
        self.net.stats()
    }

    /// Calls currently tracked (with or without media).
    pub fn active_calls(&self) -> usize {
        self.t.calls.len()
    }

    /// Calls currently recording.
    pub fn recording_calls(&self) -> usize {
        self.t.calls.values().filter(|c| c.media.is_some()).count()
    }

    /// Feed one captured link-layer frame, frames in the order they were
    /// captured. A stamp more than the jitter window (at least
    /// [`CLOCK_STEP_BACK_US`]) before one fed
    /// earlier is a step back of the capturing host's clock: from there on
    /// the stamps are moved on by the step (see [`EngineStats::capture_clock_steps_back`]),
    /// and so are the times given to [`Self::handle_timeout`] and those
    /// [`Self::poll_timeout`] returns.
    pub fn handle_frame(
        &mut self,
        ts: Timestamp,
        link: LinkType,
        frame: &[u8],
        sink: &mut dyn RecordingSink,
    ) {
        self.t.stats.frames += 1;
        let ts = self
            .clock
            .stamp(ts, &mut self.t.stats.capture_clock_steps_back);
        let t = &mut self.t;
        if self
            .net
            .decode(ts, link, frame, &mut |s: &Segment<'_>| {
                t.handle_segment(s, sink)
            })
            .is_err()
        {
            self.t.stats.frames_undecodable += 1;
        }
    }

    /// Feed one UDP datagram or a piece of a TCP stream.
    pub fn handle_segment(&mut self, seg: &Segment<'_>, sink: &mut dyn RecordingSink) {
        self.t.stats.segments += 1;
        self.t.handle_segment(seg, sink)
    }

    /// When the engine next needs [`CallEngine::handle_timeout`], on the
    /// clock of the timestamps it is fed (as str0m's `poll_output` returns
    /// its next deadline): `None` while it has nothing to wait for (no call
    /// in progress, no half-read SIP stream), so a host may sleep until
    /// input arrives. While calls are in progress the deadline is at most
    /// 200 ms after the last time the engine looked at every call (legs
    /// that fell silent are rendered, timeouts noticed); a BYE's linger
    /// ends exactly at its deadline. A deadline in the past means now.
    /// Calling `handle_timeout` earlier or more often is harmless.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.t.poll_timeout().map(|t| self.clock.raw(t))
    }

    /// How far the media are known to be complete, for a host that reads
    /// media on another path than signalling and its clock (a live SIPREC
    /// server: a receive thread hands over each round's datagrams, while
    /// SIP messages and timers carry the wall clock). Every datagram that
    /// arrived before `h` has been given to the engine; nothing is rendered,
    /// lingered or timed out past it, so media still queued on their way
    /// (the engine or the receive path falling behind under load) are not
    /// made late by a clock that ran ahead of them. `None`: no limit (the
    /// receive path is idle with nothing pending, or the input is one
    /// ordered stream, as a capture is).
    pub fn set_horizon(&mut self, h: Option<Timestamp>) {
        self.t.horizon = h.map(|h| self.clock.now(h));
    }

    /// Let time pass without packets (the daemon calls this on a timer).
    pub fn handle_timeout(&mut self, now: Timestamp, sink: &mut dyn RecordingSink) {
        let now = self.clock.now(now);
        // The network layer's timers too (a quiet live interface: TCP
        // holes skipped, idle flows and stale fragments dropped).
        let t = &mut self.t;
        self.net
            .expire(now, &mut |s: &Segment<'_>| t.handle_segment(s, sink));
        self.t.handle_timeout(now, sink)
    }

    /// Whether the call with this SIP Call-ID has been hung up (BYE) and is
    /// still lingering for its stragglers: media arriving now still joins
    /// it, and may still begin its recording.
    pub fn is_ending(&self, call_id: &str) -> bool {
        self.t
            .by_call_id
            .get(call_id)
            .and_then(|k| self.t.calls.get(k))
            .is_some_and(|c| matches!(c.state, CallState::Ending(..)))
    }

    /// The call with this SIP Call-ID was hung up at `at` (`reason`) by
    /// signalling the engine did not see (a SIPREC server's SIP side ended
    /// the dialog, and the BYE itself never reached the engine): it ends as
    /// if the engine had seen the BYE, after lingering one jitter window
    /// for its stragglers. False if no such call is in progress (none, or
    /// ending already).
    pub fn hang_up(&mut self, call_id: &str, at: Timestamp, reason: EndReason) -> bool {
        let Some(&key) = self.t.by_call_id.get(call_id) else {
            return false;
        };
        let Some(call) = self.t.calls.get_mut(&key) else {
            return false;
        };
        if matches!(call.state, CallState::Ending(..)) {
            return false;
        }
        call.state = CallState::Ending(self.clock.now(at).max(self.t.now), reason);
        self.t.wake_for(key);
        true
    }

    /// Why the call `call_id` ended is `reason`: a call ending already
    /// (lingering for late media) takes it in place of the one it had (a
    /// SIPREC session whose 200 was never acknowledged: the BYE the server
    /// sent ended it, its reason is the missing ACK); one still up is hung
    /// up with it. False if there is no such call.
    pub fn end_with(&mut self, call_id: &str, at: Timestamp, reason: EndReason) -> bool {
        let Some(call) = self
            .t
            .by_call_id
            .get(call_id)
            .and_then(|k| self.t.calls.get_mut(k))
        else {
            return false;
        };
        if let CallState::Ending(since, _) = call.state {
            call.state = CallState::Ending(since, reason);
            return true;
        }
        self.hang_up(call_id, at, reason)
    }

    /// The calls in progress (not yet ending), in the order they began.
    pub fn calls_in_progress(&self) -> Vec<CallInProgress> {
        let mut v: Vec<CallInProgress> = self
            .t
            .calls
            .values()
            .filter(|c| !matches!(c.state, CallState::Ending(..)))
            .map(|c| CallInProgress {
                key: c.key,
                call_id: c.call_id.clone(),
                recording_id: c.media.as_ref().map(|m| recording_id(&c.call_id, m.t0)),
                started_at: c
                    .media
                    .as_ref()
                    .map_or(c.started_at, |m| c.started_at.min(m.t0)),
                media_started_at: c.media.as_ref().map(|m| m.t0),
                paused: c.pause.is_paused(),
            })
            .collect();
        v.sort_by_key(|c| c.key);
        v
    }

    /// Pause the recording of the call whose SIP Call-ID or recording id is
    /// `call`, from now (the latest time the engine was given): both channels
    /// are silence from there until [`CallEngine::resume`]; the timeline goes
    /// on. A call whose media has not started yet is paused from its start.
    ///
    /// `call` may also be the recorded call's id (SIPREC metadata) or one of
    /// the PBX's identifiers of it (`ids`): every call in progress it names
    /// is paused (the first one's key is returned).
    pub fn pause(&mut self, call: &str, by: PauseBy) -> Result<CallKey, PauseError> {
        let keys = self.t.find_calls(call);
        let now = self.t.now;
        let mut done = None;
        for key in &keys {
            if let Some(c) = self.t.calls.get_mut(key) {
                let at = c.position(now);
                if c.pause.pause(at, by) {
                    done = done.or(Some(*key));
                }
            }
        }
        match (done, keys.is_empty()) {
            (Some(k), _) => Ok(k),
            (None, true) => Err(PauseError::UnknownCall),
            (None, false) => Err(PauseError::AlreadyPaused),
        }
    }

    /// Resume the recording of a paused call, from now. `by` is what asked
    /// (for symmetry with [`CallEngine::pause`]; the stretch keeps who paused it).
    pub fn resume(&mut self, call: &str, by: PauseBy) -> Result<CallKey, PauseError> {
        let _ = by;
        let keys = self.t.find_calls(call);
        let now = self.t.now;
        let mut done = None;
        for key in &keys {
            if let Some(c) = self.t.calls.get_mut(key) {
                let at = c.position(now);
                if c.pause.is_paused() && c.pause.resume(at) {
                    done = done.or(Some(*key));
                }
            }
        }
        match (done, keys.is_empty()) {
            (Some(k), _) => Ok(k),
            (None, true) => Err(PauseError::UnknownCall),
            (None, false) => Err(PauseError::NotPaused),
        }
    }

    /// End every call (end of capture, shutdown) and write out all audio.
    /// TCP bytes still held behind a hole are delivered first (the hole
    /// skipped): the BYE after a lost segment at the end of a capture.
    pub fn finish(&mut self, reason: EndReason, sink: &mut dyn RecordingSink) {
        let t = &mut self.t;
        self.net
            .finish(&mut |s: &Segment<'_>| t.handle_segment(s, sink));
        self.t.finish(reason, sink)
    }
}

pub(super) fn push_warning(warnings: &mut Vec<String>, w: String) {
    if warnings.len() < WARNINGS_MAX && !warnings.contains(&w) {
        warnings.push(w);
    }
}
