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
//! - A call ends on BYE (after lingering one jitter window for stragglers),
//!   CANCEL, a failure answer, `rtp_timeout` of media silence, or [`CallEngine::finish`].
//!
//! Malformed packets are counted in [`EngineStats`] and dropped; nothing here
//! panics on input.

use std::collections::{HashMap, VecDeque};

use rustc_hash::FxHashMap;
use std::net::SocketAddr;

use crate::audio::codec::{new_decoder, Codec, Decoder};
use crate::call::meta::{
    recording_id, CallKey, CallMeta, ChannelMeta, Dtmf, EndReason, Party, PartyInfo, RecordingSink,
    RecordingStart,
};
use crate::call::timeline::{LegTimeline, Packet};
use crate::capture::LinkType;
use crate::net::{NetDecoder, NetLimits, Segment, Transport};
use crate::rtp::{event_to_digit, is_rtcp, parse_rtp, parse_telephone_event};
use crate::sip::message::{looks_like_sip, parse_message, Method, NameAddr, SipMessage, StartLine};
use crate::sip::sdp::{parse_sdp, SessionDescription};
use crate::sip::siprec::{assign_streams, is_siprec_request, siprec_parts};
use crate::sip::stream::SipStreamFramer;
use crate::Timestamp;

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
        }
    }
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
    pub frames_undecodable: u64,
    pub sip_messages: u64,
    pub sip_malformed: u64,
    pub sip_retransmissions: u64,
    pub sdp_malformed: u64,
    pub rtp_packets: u64,
    pub rtp_malformed: u64,
    pub rtp_unmatched: u64,
    pub rtp_duplicate_flow: u64,
    pub rtcp_packets: u64,
    pub udp_other: u64,
    pub tcp_other: u64,
    pub calls_seen: u64,
    pub calls_recorded: u64,
    pub calls_without_media: u64,
    pub calls_evicted: u64,
}

const TCP_FRAMERS_MAX: usize = 4096;
const DTMF_MAX: usize = 4096;
const WARNINGS_MAX: usize = 32;
/// A second flow on a leg takes over once the active one has been quiet this long
/// (relayed copies of a stream interleave, a replaced stream stops).
const FLOW_QUIET_US: i64 = 60_000;
const HOUSEKEEPING_US: i64 = 1_000_000;

/// Receive addresses and payload-type map announced by one side.
#[derive(Debug, Default, Clone)]
struct SideMedia {
    endpoints: Vec<SocketAddr>,
    pt_map: FxHashMap<u8, Codec>,
    /// First audio codec of the latest SDP of this side.
    preferred: Option<Codec>,
}

#[derive(Debug, Default, Clone, Copy)]
struct SeqStats {
    base: u64,
    max: u64,
    last: u16,
    started: bool,
    received: u64,
    duplicates: u64,
    window: [u64; 8], // bitmap of the 512 sequence numbers below `max`
}

/// What a sequence number was, relative to those seen before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SeqUpdate {
    /// Beyond the highest so far.
    Newest,
    /// Older than the highest, not seen before (reordered).
    Older,
    Duplicate,
}

impl SeqStats {
    fn update(&mut self, seq: u16) -> SeqUpdate {
        if !self.started {
            self.started = true;
            self.base = 1 << 32 | u64::from(seq);
            self.max = self.base;
            self.last = seq;
            self.received = 1;
            self.window = [0; 8];
            self.window[0] = 1;
            return SeqUpdate::Newest;
        }
        self.last = seq;
        let ext = (self.max as i64 + i64::from(seq.wrapping_sub(self.max as u16) as i16)) as u64;
        if ext > self.max {
            let shift = ext - self.max;
            self.shift_window(shift);
            self.max = ext;
            self.set_bit(0);
            self.received += 1;
            SeqUpdate::Newest
        } else {
            let back = self.max - ext;
            if back >= 512 {
                // Too old to tell; count it as received (a very late packet).
                self.received += 1;
                if ext < self.base {
                    self.base = ext;
                }
                return SeqUpdate::Older;
            }
            if self.bit(back) {
                self.duplicates += 1;
                SeqUpdate::Duplicate
            } else {
                self.set_bit(back);
                self.received += 1;
                if ext < self.base {
                    self.base = ext;
                }
                SeqUpdate::Older
            }
        }
    }
    fn bit(&self, back: u64) -> bool {
        self.window[(back / 64) as usize] >> (back % 64) & 1 == 1
    }
    fn set_bit(&mut self, back: u64) {
        self.window[(back / 64) as usize] |= 1 << (back % 64);
    }
    fn shift_window(&mut self, n: u64) {
        if n >= 512 {
            self.window = [0; 8];
            return;
        }
        let words = (n / 64) as usize;
        let bits = n % 64;
        let old = self.window;
        for i in 0..8 {
            let mut v = 0u64;
            if i >= words {
                v = old[i - words] << bits;
                if bits > 0 && i > words {
                    v |= old[i - words - 1] >> (64 - bits);
                }
            }
            self.window[i] = v;
        }
    }
    fn lost(&self) -> u64 {
        if !self.started {
            return 0;
        }
        (self.max - self.base + 1).saturating_sub(self.received)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Flow {
    src: SocketAddr,
    dst: SocketAddr,
    ssrc: u32,
    /// Matched by its destination (an SDP receive address) rather than its source.
    by_dst: bool,
}

struct ActiveDecoder {
    pt: u8,
    codec: Codec,
    decoder: Option<Box<dyn Decoder>>,
}

struct DtmfState {
    ssrc: u32,
    ts: u32,
    index: usize,
}

struct Leg {
    party: Party,
    timeline: LegTimeline,
    order: DecodeOrder,
    decoder: Option<ActiveDecoder>,
    flow: Option<(Flow, Timestamp)>,
    seq: FxHashMap<u32, SeqStats>,
    meta: ChannelMeta,
    dtmf: Option<DtmfState>,
    warned_codecs: Vec<u8>,
}

impl Leg {
    fn new(party: Party, rate: u32, hold_back: i64) -> Self {
        Leg {
            party,
            timeline: LegTimeline::new(rate, hold_back),
            order: DecodeOrder::default(),
            decoder: None,
            flow: None,
            seq: FxHashMap::default(),
            meta: ChannelMeta {
                index: party.channel(),
                party: match party {
                    Party::Caller => "caller".into(),
                    Party::Callee => "callee".into(),
                },
                ..ChannelMeta::default()
            },
            dtmf: None,
            warned_codecs: Vec::new(),
        }
    }
}

struct Media {
    t0: Timestamp,
    rate: u32,
    legs: [Leg; 2],
    /// Frames handed to the sink (the next timeline position to render).
    frames_out: u64,
    /// Timeline position of frame 0 (<= 0): set when the first audio is
    /// written. Negative when the call's first packet was itself late: its
    /// place on the envelope is before its arrival, and time zero moves there
    /// (by at most the jitter window) so that none of its audio is cut.
    origin: Option<i64>,
    /// The jitter window this call started with (a reload changing
    /// `jitter_ms` applies to new calls: the mixer is sized for this one).
    jitter_ms: u32,
}

enum CallState {
    Setup,
    Answered,
    /// BYE / CANCEL / failure seen at this time; finalised one jitter window later.
    Ending(Timestamp, EndReason),
}

struct Call {
    key: CallKey,
    call_id: String,
    caller_tag: Option<String>,
    caller: NameAddr,
    callee: NameAddr,
    caller_known: bool,
    initial_cseq: Option<u32>,
    started_at: Timestamp,
    answered_at: Option<Timestamp>,
    last_sip: Timestamp,
    last_rtp: Timestamp,
    state: CallState,
    sides: [SideMedia; 2],
    media: Option<Media>,
    seen_msgs: VecDeque<(u32, String, u16, String)>,
    dtmf: Vec<Dtmf>,
    warnings: Vec<String>,
    /// ZRTP was seen on the call's media: the audio is encrypted.
    zrtp: bool,
    /// The SDP negotiated SRTP (RTP/SAVP…), which this engine does not
    /// decrypt: how its keys were exchanged.
    srtp: Option<&'static str>,
    /// SIPREC recording session: the party of each SDP m-line.
    siprec: Option<Vec<Option<Party>>>,
    /// SIPREC: the recorded call's parties and Call-ID from the metadata.
    rec_caller: Option<NameAddr>,
    rec_callee: Option<NameAddr>,
    recorded_call_id: Option<String>,
}

impl Call {
    fn side_of_sender(&self, msg: &SipMessage) -> Party {
        // In requests From is the sender; in responses From is still the
        // request's sender, so the responder is the other party.
        let from_is_caller = match (&self.caller_tag, &msg.from.tag) {
            (Some(c), Some(t)) => c == t,
            _ => msg.from.uri == self.caller.uri,
        };
        let requester = if from_is_caller {
            Party::Caller
        } else {
            Party::Callee
        };
        if msg.is_request() {
            requester
        } else {
            requester.other()
        }
    }
}

/// Everything but the network decoder (so the decoder's callback can borrow it).
struct Tracker {
    cfg: EngineConfig,
    // Per-packet lookups use a fast hash: the keys are our own (call keys)
    // or addresses taken from SDP, not chosen freely by each packet.
    calls: FxHashMap<CallKey, Call>,
    by_call_id: HashMap<String, CallKey>,
    endpoints: FxHashMap<SocketAddr, (CallKey, Party)>,
    framers: HashMap<(SocketAddr, SocketAddr), (SipStreamFramer, Timestamp)>,
    stats: EngineStats,
    next_key: u64,
    now: Timestamp,
    last_housekeeping: Timestamp,
    scratch: Vec<i16>,
    out: Vec<i16>,
}

impl Tracker {
    fn new(cfg: EngineConfig) -> Self {
        Tracker {
            cfg,
            calls: FxHashMap::default(),
            by_call_id: HashMap::new(),
            endpoints: FxHashMap::default(),
            framers: HashMap::new(),
            stats: EngineStats::default(),
            next_key: 1,
            now: Timestamp::ZERO,
            last_housekeeping: Timestamp::ZERO,
            scratch: Vec::with_capacity(4096),
            out: Vec::with_capacity(16384),
        }
    }

    fn handle_segment(&mut self, seg: &Segment<'_>, sink: &mut dyn RecordingSink) {
        self.advance(seg.ts, sink);
        match seg.transport {
            Transport::Udp => self.handle_udp(seg.ts, seg.src, seg.dst, seg.payload, sink),
            Transport::Tcp => self.handle_tcp(seg, sink),
        }
    }

    fn handle_timeout(&mut self, now: Timestamp, sink: &mut dyn RecordingSink) {
        if now > self.now {
            self.now = now;
        }
        self.housekeeping(sink);
    }

    fn finish(&mut self, reason: EndReason, sink: &mut dyn RecordingSink) {
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

    fn advance(&mut self, ts: Timestamp, sink: &mut dyn RecordingSink) {
        if ts > self.now {
            self.now = ts;
        }
        if self.now.micros_since(self.last_housekeeping) >= HOUSEKEEPING_US {
            self.housekeeping(sink);
        }
    }

    fn housekeeping(&mut self, sink: &mut dyn RecordingSink) {
        self.last_housekeeping = self.now;
        let now = self.now;
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
                (_, Some(_)) if now.micros_since(c.last_rtp) >= self.cfg.rtp_timeout_us => {
                    done.push((*k, EndReason::RtpTimeout))
                }
                (_, None) if now.micros_since(c.last_sip) >= self.cfg.setup_timeout_us => {
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
    }

    fn handle_udp(
        &mut self,
        ts: Timestamp,
        src: SocketAddr,
        dst: SocketAddr,
        payload: &[u8],
        sink: &mut dyn RecordingSink,
    ) {
        if looks_like_sip(payload) {
            match parse_message(payload) {
                Ok(msg) => self.handle_sip(ts, src, dst, msg, sink),
                Err(_) => self.stats.sip_malformed += 1,
            }
            return;
        }
        if is_rtcp(payload) {
            self.stats.rtcp_packets += 1;
            return;
        }
        if payload.len() >= 12 && payload[0] >> 6 == 2 {
            self.handle_rtp(ts, src, dst, payload, sink);
            return;
        }
        // ZRTP (RFC 6189) on a call's media addresses: its audio will be SRTP
        // with keys we never see.
        if payload.len() >= 12 && payload[0] & 0xf0 == 0x10 && &payload[4..8] == b"ZRTP" {
            let hit = self
                .endpoints
                .get(&dst)
                .or_else(|| self.endpoints.get(&src));
            if let Some((k, _)) = hit {
                if let Some(call) = self.calls.get_mut(k) {
                    if !call.zrtp {
                        call.zrtp = true;
                        push_warning(
                            &mut call.warnings,
                            "the parties negotiated ZRTP: their audio is encrypted end to end and cannot be recorded; the channels are silent from then on".into(),
                        );
                    }
                }
            }
            self.stats.udp_other += 1;
            return;
        }
        self.stats.udp_other += 1;
    }

    fn handle_tcp(&mut self, seg: &Segment<'_>, sink: &mut dyn RecordingSink) {
        let key = (seg.src, seg.dst);
        if !self.framers.contains_key(&key) {
            if !looks_like_sip(seg.payload) {
                self.stats.tcp_other += 1;
                return;
            }
            if self.framers.len() >= TCP_FRAMERS_MAX {
                // Drop the least recently used stream.
                if let Some(old) = self
                    .framers
                    .iter()
                    .min_by_key(|(_, (_, t))| *t)
                    .map(|(k, _)| *k)
                {
                    self.framers.remove(&old);
                }
            }
            self.framers.insert(key, (SipStreamFramer::new(), seg.ts));
        }
        let mut msgs = Vec::new();
        if let Some((framer, last)) = self.framers.get_mut(&key) {
            *last = seg.ts;
            if seg.tcp_gap {
                framer.gap();
            }
            framer.push(seg.payload);
            while let Some(m) = framer.next_message() {
                msgs.push(m);
            }
        }
        for m in msgs {
            match m
                .map_err(|_| ())
                .and_then(|b| parse_message(&b).map_err(|_| ()))
            {
                Ok(msg) => self.handle_sip(seg.ts, seg.src, seg.dst, msg, sink),
                Err(()) => self.stats.sip_malformed += 1,
            }
        }
    }

    // ---------------------------------------------------------------- SIP

    fn handle_sip(
        &mut self,
        ts: Timestamp,
        _src: SocketAddr,
        _dst: SocketAddr,
        msg: SipMessage,
        sink: &mut dyn RecordingSink,
    ) {
        self.stats.sip_messages += 1;
        if msg.call_id.is_empty() {
            self.stats.sip_malformed += 1;
            return;
        }
        let is_invite = matches!(msg.method(), Some(Method::Invite));
        let mut key = self.by_call_id.get(&msg.call_id).copied();

        // A new initial INVITE for a Call-ID whose call has ended: a new call.
        if let (Some(k), true) = (key, is_invite && msg.to.tag.is_none()) {
            let replace = self.calls.get(&k).is_some_and(|c| {
                matches!(c.state, CallState::Ending(..))
                    && c.initial_cseq.is_some_and(|s| msg.cseq > s)
            });
            if replace {
                self.finalize(k, EndReason::Replaced, sink);
                key = None;
            }
        }

        let key = match key {
            Some(k) => k,
            None => {
                // Only an INVITE opens a call.
                if !is_invite {
                    return;
                }
                self.open_call(ts, &msg, sink)
            }
        };
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        call.last_sip = ts;

        // Retransmission detection: same CSeq, method, status and branch.
        let sig = (
            msg.cseq,
            format!("{:?}", msg.cseq_method),
            msg.status().unwrap_or(0),
            msg.via_branch.clone().unwrap_or_default(),
        );
        if call.seen_msgs.contains(&sig) {
            self.stats.sip_retransmissions += 1;
            return;
        }
        if call.seen_msgs.len() >= 64 {
            call.seen_msgs.pop_front();
        }
        call.seen_msgs.push_back(sig);

        // A new INVITE without To-tag on a call still being set up is the
        // retry after an authentication challenge (401/407): same call.
        if is_invite && msg.to.tag.is_none() && matches!(call.state, CallState::Setup) {
            call.initial_cseq = Some(msg.cseq);
        }
        let side = call.side_of_sender(&msg);
        let sdp_body = sdp_of(&msg);
        match &msg.start {
            StartLine::Request { method, .. } => match method {
                Method::Invite | Method::Ack | Method::Update | Method::Prack => {}
                Method::Bye if !matches!(call.state, CallState::Ending(..)) => {
                    call.state = CallState::Ending(ts, EndReason::Bye);
                }
                Method::Cancel
                    if !matches!(call.state, CallState::Ending(..))
                        && call.answered_at.is_none() =>
                {
                    call.state = CallState::Ending(ts, EndReason::Cancel);
                }
                _ => {}
            },
            StartLine::Response { code, .. } => {
                let code = *code;
                if msg.cseq_method == Method::Invite {
                    if (200..300).contains(&code) {
                        if call.answered_at.is_none() {
                            call.answered_at = Some(ts);
                        }
                        if matches!(call.state, CallState::Setup) {
                            call.state = CallState::Answered;
                        }
                        if call.callee.tag.is_none() {
                            call.callee.tag = msg.to.tag.clone();
                        }
                    } else if code >= 300
                        && code != 401
                        && code != 407
                        && call.answered_at.is_none()
                        && call.initial_cseq == Some(msg.cseq)
                        && !matches!(call.state, CallState::Ending(..))
                    {
                        let r = if code == 487 {
                            EndReason::Cancel
                        } else {
                            EndReason::Rejected
                        };
                        call.state = CallState::Ending(ts, r);
                    }
                }
            }
        }
        let is_siprec_offer = msg.is_request()
            && matches!(msg.method(), Some(Method::Invite | Method::Update))
            && (msg
                .content_type
                .as_deref()
                .is_some_and(|c| c.to_ascii_lowercase().starts_with("multipart/"))
                || (sdp_body.is_some() && (self.cfg.siprec_server || is_siprec_request(&msg))));
        if is_siprec_offer {
            if let Some(sdp) = self.apply_siprec_metadata(key, &msg) {
                self.apply_sdp(key, side, &sdp, true);
                return;
            }
        }
        if let Some(body) = sdp_body {
            match parse_sdp(&body) {
                Ok(sdp) => self.apply_sdp(key, side, &sdp, msg.is_request()),
                Err(_) => self.stats.sdp_malformed += 1,
            }
        }
    }

    fn open_call(
        &mut self,
        ts: Timestamp,
        msg: &SipMessage,
        sink: &mut dyn RecordingSink,
    ) -> CallKey {
        if self.calls.len() >= self.cfg.max_calls {
            // Forget the oldest call without media; if all have media, end the oldest.
            let victim = self
                .calls
                .values()
                .filter(|c| c.media.is_none())
                .min_by_key(|c| c.last_sip)
                .or_else(|| self.calls.values().min_by_key(|c| c.last_rtp))
                .map(|c| c.key);
            if let Some(v) = victim {
                self.stats.calls_evicted += 1;
                self.finalize(v, EndReason::RtpTimeout, sink);
            }
        }
        let key = CallKey(self.next_key);
        self.next_key += 1;
        self.stats.calls_seen += 1;
        let initial = msg.to.tag.is_none();
        let call = Call {
            key,
            call_id: msg.call_id.clone(),
            caller_tag: msg.from.tag.clone(),
            caller: msg.from.clone(),
            callee: msg.to.clone(),
            caller_known: initial,
            initial_cseq: Some(msg.cseq),
            started_at: ts,
            answered_at: if initial { None } else { Some(ts) },
            last_sip: ts,
            last_rtp: ts,
            state: if initial {
                CallState::Setup
            } else {
                CallState::Answered
            },
            sides: [SideMedia::default(), SideMedia::default()],
            media: None,
            seen_msgs: VecDeque::new(),
            dtmf: Vec::new(),
            zrtp: false,
            srtp: None,
            siprec: None,
            rec_caller: None,
            rec_callee: None,
            recorded_call_id: None,
            warnings: if initial {
                Vec::new()
            } else {
                vec![
                    "capture started mid-call: caller/callee taken from the first re-INVITE seen"
                        .into(),
                ]
            },
        };
        self.calls.insert(key, call);
        self.by_call_id.insert(msg.call_id.clone(), key);
        key
    }

    /// Register the media an SDP body announces. For a normal call the body
    /// says where `side` receives. For a SIPREC recording session each m-line
    /// carries one party's voice (from the metadata): the SRC's offer lines
    /// are where that voice comes from, the SRS's answer lines where it goes.
    fn apply_sdp(&mut self, key: CallKey, side: Party, sdp: &SessionDescription, is_request: bool) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let siprec = call.siprec.clone();
        let mut first_audio: Option<Codec> = None;
        for (i, m) in sdp.media.iter().enumerate() {
            if !m.media.eq_ignore_ascii_case("audio") {
                continue;
            }
            // SRTP seen from outside (sniffing, captures): the engine has no
            // decryption, so the audio would be noise. The SIPREC server's
            // sockets decrypt before the engine and are not affected.
            if !self.cfg.siprec_server
                && m.port != 0
                && m.proto.to_ascii_uppercase().contains("SAVP")
                && call.srtp.is_none()
            {
                let how = if !m.crypto.is_empty() {
                    "SDES keys (a=crypto), which pbx-edge does not apply when sniffing or importing"
                } else if m
                    .attributes
                    .iter()
                    .any(|(n, _)| n.eq_ignore_ascii_case("fingerprint"))
                    || sdp
                        .attributes
                        .iter()
                        .any(|(n, _)| n.eq_ignore_ascii_case("fingerprint"))
                {
                    "DTLS-SRTP, whose keys never appear on the wire"
                } else {
                    "keys exchanged outside the SDP"
                };
                call.srtp = Some(how);
                push_warning(
                    &mut call.warnings,
                    format!("the parties negotiated SRTP ({}) with {how}: their audio is encrypted and cannot be recorded here; the channels are silent", m.proto),
                );
            }
            // (who this line's packets belong to as registered side)
            let reg_side = match &siprec {
                Some(parties) => match parties.get(i).copied().flatten() {
                    Some(p) if is_request => p,
                    Some(p) => p.other(),
                    None => continue,
                },
                None => side,
            };
            for pt in &m.formats {
                let codec = m
                    .rtpmap(*pt)
                    .map(|r| Codec::from_rtpmap(&r.encoding, r.clock_rate, r.channels))
                    .or_else(|| Codec::from_static_pt(*pt));
                if let Some(c) = codec {
                    if first_audio.is_none() && c.is_audio() {
                        first_audio = Some(c.clone());
                    }
                    if siprec.is_some() {
                        // Both parties' streams use the session's payload numbers.
                        call.sides[0].pt_map.insert(*pt, c.clone());
                        call.sides[1].pt_map.insert(*pt, c);
                    } else {
                        call.sides[side.channel()].pt_map.insert(*pt, c);
                    }
                }
            }
            let s = &mut call.sides[reg_side.channel()];
            if m.port == 0 {
                continue;
            }
            if let Some(addr) = m.effective_connection(sdp) {
                if addr.is_unspecified() {
                    continue; // RFC 2543 hold: no address
                }
                let ep = SocketAddr::new(addr, m.port);
                if !s.endpoints.contains(&ep) {
                    if s.endpoints.len() >= 16 {
                        s.endpoints.remove(0);
                    }
                    s.endpoints.push(ep);
                }
                self.endpoints.insert(ep, (key, reg_side));
            }
        }
        if first_audio.is_some() {
            call.sides[side.channel()].preferred = first_audio;
        }
        // New SDP may bring new streams (re-INVITE, transfer): let them take over at once.
        if let Some(media) = call.media.as_mut() {
            for leg in &mut media.legs {
                leg.flow = None;
            }
        }
    }

    /// A SIPREC INVITE / UPDATE: which m-line is whose voice, and who the
    /// recorded call's parties are (CONTRACT §3: the first participant that
    /// sends a stream is the caller).
    fn apply_siprec_metadata(
        &mut self,
        key: CallKey,
        msg: &SipMessage,
    ) -> Option<SessionDescription> {
        let (sdp, session) = siprec_parts(msg).ok()?;
        let call = self.calls.get_mut(&key)?;
        let Some(session) = session else {
            if call.siprec.is_some() {
                return None; // the metadata's assignment stays
            }
            // No metadata (yet: RFC 7866 lets it come in a later request):
            // the audio m-lines in order, the first the caller's. Metadata
            // arriving later replaces this.
            let mut next = [Party::Caller, Party::Callee].into_iter();
            let parties = sdp
                .media
                .iter()
                .map(|m| {
                    m.media
                        .eq_ignore_ascii_case("audio")
                        .then(|| next.next())
                        .flatten()
                })
                .collect();
            push_warning(
                &mut call.warnings,
                "SIPREC offer without metadata: channel 0 is the first audio stream of the SDP, channel 1 the second".to_string(),
            );
            call.siprec = Some(parties);
            return Some(sdp);
        };
        match assign_streams(&sdp, &session) {
            Ok(assign) => {
                let n = sdp.media.len();
                let mut parties = vec![None; n];
                for a in &assign {
                    if let Some(slot) = parties.get_mut(a.m_line) {
                        *slot = a.party;
                    }
                    if let Some(w) = &a.warning {
                        push_warning(&mut call.warnings, w.clone());
                    }
                }
                call.siprec = Some(parties);
                for (party, slot) in [(Party::Caller, 0usize), (Party::Callee, 1usize)] {
                    let pid = assign
                        .iter()
                        .find(|a| a.party == Some(party))
                        .and_then(|a| a.participant.clone());
                    if let Some(p) =
                        pid.and_then(|id| session.participants.iter().find(|p| p.id == id))
                    {
                        let na = NameAddr {
                            display_name: p.name.clone(),
                            uri: p.aor.clone().unwrap_or_default(),
                            user: p.number.clone(),
                            host: None,
                            tag: None,
                        };
                        if slot == 0 {
                            call.rec_caller = Some(na);
                        } else {
                            call.rec_callee = Some(na);
                        }
                    }
                }
                if let Some(cid) = &session.call_id_hint {
                    call.recorded_call_id = Some(cid.clone());
                }
            }
            Err(e) => {
                push_warning(
                    &mut call.warnings,
                    format!("SIPREC metadata not usable: {e}"),
                );
            }
        }
        Some(sdp)
    }

    // ---------------------------------------------------------------- RTP

    fn handle_rtp(
        &mut self,
        ts: Timestamp,
        src: SocketAddr,
        dst: SocketAddr,
        payload: &[u8],
        sink: &mut dyn RecordingSink,
    ) {
        let (key, speaker, by_dst) = match self.endpoints.get(&dst) {
            Some((k, receiver)) => (*k, receiver.other(), true),
            None => match self.endpoints.get(&src) {
                Some((k, sender)) => (*k, *sender, false),
                None => {
                    self.stats.rtp_unmatched += 1;
                    return;
                }
            },
        };
        let rtp = match parse_rtp(payload) {
            Ok(r) => r,
            Err(_) => {
                self.stats.rtp_malformed += 1;
                return;
            }
        };
        self.stats.rtp_packets += 1;
        let jitter_ms = self.cfg.jitter_ms;
        let policy = self.cfg.sample_rate;
        let Some(call) = self.calls.get_mut(&key) else {
            self.stats.rtp_unmatched += 1;
            return;
        };
        let call_jitter = call.media.as_ref().map_or(jitter_ms, |m| m.jitter_ms);
        if matches!(call.state, CallState::Ending(at, _) if ts.micros_since(at) > i64::from(call_jitter) * 1000)
        {
            return;
        }
        // Codec of this packet: the receiver's map first (the sender uses the
        // payload numbers the receiver announced), then the sender's, then static.
        let codec = call.sides[speaker.other().channel()]
            .pt_map
            .get(&rtp.payload_type)
            .or_else(|| call.sides[speaker.channel()].pt_map.get(&rtp.payload_type))
            .cloned()
            .or_else(|| Codec::from_static_pt(rtp.payload_type));

        if call.media.is_none() {
            let wide = codec.as_ref().is_some_and(|c| c.is_wideband())
                || call
                    .sides
                    .iter()
                    .any(|s| s.preferred.as_ref().is_some_and(|c| c.is_wideband()));
            let rate = match policy {
                SampleRatePolicy::Fixed(r) => r,
                SampleRatePolicy::Auto => {
                    if wide {
                        16000
                    } else {
                        8000
                    }
                }
            };
            let hold_back = i64::from(rate) * i64::from(jitter_ms) / 1000;
            call.media = Some(Media {
                t0: ts,
                rate,
                legs: [
                    Leg::new(Party::Caller, rate, hold_back),
                    Leg::new(Party::Callee, rate, hold_back),
                ],
                frames_out: 0,
                origin: None,
                jitter_ms,
            });
            let start = RecordingStart {
                call_id: call.call_id.clone(),
                sample_rate: rate,
                media_started_at: ts,
                recording_id: recording_id(&call.call_id, ts),
                from: party_info(call.rec_caller.as_ref().unwrap_or(&call.caller)),
                to: party_info(call.rec_callee.as_ref().unwrap_or(&call.callee)),
                started_at: call.started_at.min(ts),
                answered_at: call.answered_at,
            };
            sink.begin(key, &start);
        }
        call.last_rtp = ts;
        let Some(media) = call.media.as_mut() else {
            return;
        };
        let rate = media.rate;
        let arrival_pos =
            (i128::from(ts.micros_since(media.t0)) * i128::from(rate) / 1_000_000) as i64;
        let leg = &mut media.legs[speaker.channel()];

        // One active flow per leg: a flow sent to an announced receive address
        // beats one only recognised by its source; otherwise a new flow takes
        // over when the active one has gone quiet.
        let flow = Flow {
            src,
            dst,
            ssrc: rtp.ssrc,
            by_dst,
        };
        let active_flow = match leg.flow {
            None => true,
            Some((active, last)) => {
                // The same path with a new SSRC is the sender's new stream
                // (transfer, restart): it takes over at once. A relayed copy
                // of the stream comes by another path.
                active == flow
                    || (active.src == flow.src && active.dst == flow.dst)
                    || (flow.by_dst && !active.by_dst)
                    || ts.micros_since(last) >= FLOW_QUIET_US
            }
        };
        let seq_update = if active_flow {
            leg.flow = Some((flow, ts));
            let u = leg.seq.entry(rtp.ssrc).or_default().update(rtp.sequence);
            if u == SeqUpdate::Duplicate {
                leg.meta.duplicates += 1;
                return;
            }
            leg.meta.packets += 1;
            if !leg.meta.ssrcs.contains(&rtp.ssrc) && leg.meta.ssrcs.len() < 64 {
                leg.meta.ssrcs.push(rtp.ssrc);
            }
            Some(u)
        } else {
            None
        };

        // DTMF first: digits count from any flow of the leg (a relayed copy of
        // the same digit is recognised by digit and start time).
        if let Some(Codec::TelephoneEvent { rate: ev_rate }) = &codec {
            leg.meta.dtmf_packets += 1;
            let Ok(ev) = parse_telephone_event(rtp.payload) else {
                return;
            };
            let ev_rate = i64::from((*ev_rate).max(1));
            let dur_ms = i64::from(ev.duration) * 1000 / ev_rate;
            let ch = leg.party.channel();
            match &leg.dtmf {
                Some(d) if d.ssrc == rtp.ssrc && d.ts == rtp.timestamp => {
                    if let Some(e) = call.dtmf.get_mut(d.index) {
                        e.duration_ms = e.duration_ms.max(dur_ms);
                    }
                }
                _ => {
                    let Some(digit) = event_to_digit(ev.event) else {
                        return;
                    };
                    let at_ms = (arrival_pos * 1000 / i64::from(rate) - dur_ms).max(0);
                    let digit = digit.to_string();
                    let copy = call.dtmf.iter().position(|e| {
                        e.channel == ch && e.digit == digit && (e.at_ms - at_ms).abs() < 150
                    });
                    let index = match copy {
                        Some(i) => i,
                        None if call.dtmf.len() < DTMF_MAX => {
                            call.dtmf.push(Dtmf {
                                channel: ch,
                                digit,
                                at_ms,
                                duration_ms: dur_ms,
                            });
                            call.dtmf.len() - 1
                        }
                        None => return,
                    };
                    leg.dtmf = Some(DtmfState {
                        ssrc: rtp.ssrc,
                        ts: rtp.timestamp,
                        index,
                    });
                }
            }
            return;
        }

        let Some(seq_update) = seq_update else {
            self.stats.rtp_duplicate_flow += 1;
            return;
        };

        let Some(codec) = codec else {
            if !leg.warned_codecs.contains(&rtp.payload_type) {
                leg.warned_codecs.push(rtp.payload_type);
                let w = format!(
                    "channel {}: payload type {} is not in the SDP and not static: that audio is silence",
                    leg.party.channel(),
                    rtp.payload_type
                );
                push_warning(&mut call.warnings, w);
            }
            return;
        };
        // Encrypted (ZRTP, or SRTP negotiated in the SDP): decoding would
        // give noise; the channel stays silent (the warning says why).
        if call.zrtp || call.srtp.is_some() {
            return;
        }
        // Comfort noise is silence on the recording.
        if codec == Codec::ComfortNoise {
            leg.meta.comfort_noise_packets += 1;
            return;
        }
        let pkt = InPacket {
            arrival: arrival_pos,
            ssrc: rtp.ssrc,
            seq: rtp.sequence,
            ts: rtp.timestamp,
            pt: rtp.payload_type,
            newest: seq_update == SeqUpdate::Newest,
        };
        let mut ctx = DecodeCtx {
            rate,
            warnings: &mut call.warnings,
            scratch: &mut self.scratch,
            stats: &mut self.stats,
        };
        // Decoders keep state (ADPCM, LPC, resampler history): packets are
        // decoded in sequence order, held back briefly when one is missing.
        if leg.order.offer(&pkt, &codec, rtp.payload) {
            decode_and_place(leg, &mut ctx, &pkt, &codec, rtp.payload);
        }
        let wait = order_wait(rate, media.jitter_ms);
        while let Some(h) = leg.order.pop_ready(arrival_pos, wait) {
            decode_and_place(leg, &mut ctx, &h.pkt, &h.codec, &h.payload);
            leg.order.recycle(h);
        }
        self.flush_call(key, sink, false);
    }

    /// Write out everything older than the jitter window (or all, at the end).
    fn flush_call(&mut self, key: CallKey, sink: &mut dyn RecordingSink, all: bool) {
        let now = self.now;
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let Some(media) = call.media.as_mut() else {
            return;
        };
        let rate = i64::from(media.rate);
        let now_pos =
            (i128::from(now.micros_since(media.t0)) * i128::from(rate) / 1_000_000) as i64;
        // Packets held for decoding order whose wait is over (all, at the end).
        let wait = order_wait(media.rate, media.jitter_ms);
        let mut ctx = DecodeCtx {
            rate: media.rate,
            warnings: &mut call.warnings,
            scratch: &mut self.scratch,
            stats: &mut self.stats,
        };
        for leg in &mut media.legs {
            if all {
                leg.order.release_all();
            }
            while let Some(h) = leg.order.pop_ready(now_pos, wait) {
                decode_and_place(leg, &mut ctx, &h.pkt, &h.codec, &h.payload);
                leg.order.recycle(h);
            }
        }
        let hold_back = rate * i64::from(media.jitter_ms) / 1000;
        let origin = match media.origin {
            Some(o) => o,
            None => {
                let o = media
                    .legs
                    .iter()
                    .filter_map(|l| l.timeline.audio_start())
                    .min()
                    .unwrap_or(0)
                    .clamp(-hold_back, 0);
                // Time zero is fixed once every leg's first audio is placed
                // well (a jittery leg's first packets are late by chance:
                // fixing it by them would shift the whole call), at the
                // latest when the hold-back window would otherwise fill.
                let settled = media.legs.iter().all(|l| l.timeline.start_settled());
                let waited = now_pos - hold_back - o;
                if !all && (waited < rate / 10 || (!settled && waited < 3 * rate)) {
                    return;
                }
                media.origin = Some(o);
                for l in &mut media.legs {
                    l.timeline.set_start(o);
                }
                o
            }
        };
        let flushed = origin + media.frames_out as i64;
        let target = if all {
            media
                .legs
                .iter_mut()
                .map(|l| l.timeline.end_position(now_pos))
                .max()
                .unwrap_or(flushed)
        } else {
            let horizon = now_pos - rate * i64::from(media.jitter_ms) / 1000;
            // Nothing to write before the next 40 ms chunk (see below): the
            // usual case, checked before asking the legs.
            if horizon < flushed + rate / 25 {
                return;
            }
            // Never beyond the last audio either leg holds: silence after the
            // end of the media is only written if media resumes (a call whose
            // BYE never comes must not end with rtp_timeout of silence).
            let end = media
                .legs
                .iter()
                .filter_map(|l| l.timeline.audio_end())
                .max()
                .unwrap_or(flushed);
            let mut t = horizon.min(end);
            for l in &mut media.legs {
                t = t.min(l.timeline.ready_until(now_pos, false));
            }
            // Write in chunks of at least 40 ms: what a crash can lose is the
            // jitter window plus this (docs/durability.md).
            if t < flushed + rate / 25 {
                return;
            }
            t
        };
        // In pieces of at most a second, so a long pause resumed costs no
        // more memory than a second of audio.
        let mut at = flushed;
        while at < target {
            let to = (at + rate).min(target);
            let n = (to - at) as usize;
            self.out.clear();
            self.out.resize(n * 2, 0);
            for (ch, leg) in media.legs.iter_mut().enumerate() {
                self.scratch.clear();
                leg.timeline.render(to, &mut self.scratch);
                for (slot, s) in self.out.iter_mut().skip(ch).step_by(2).zip(&self.scratch) {
                    *slot = *s;
                }
            }
            media.frames_out += n as u64;
            sink.audio(key, &self.out);
            at = to;
        }
    }

    fn finalize(&mut self, key: CallKey, reason: EndReason, sink: &mut dyn RecordingSink) {
        self.flush_call(key, sink, true);
        let Some(call) = self.calls.remove(&key) else {
            return;
        };
        if self.by_call_id.get(&call.call_id) == Some(&key) {
            self.by_call_id.remove(&call.call_id);
        }
        for s in &call.sides {
            for ep in &s.endpoints {
                if self.endpoints.get(ep).is_some_and(|(k, _)| *k == key) {
                    self.endpoints.remove(ep);
                }
            }
        }
        let Some(media) = call.media else {
            self.stats.calls_without_media += 1;
            return;
        };
        self.stats.calls_recorded += 1;
        let rate = media.rate;
        let origin_us = media.origin.unwrap_or(0) * 1_000_000 / i64::from(rate.max(1));
        let ended_at = match call.state {
            CallState::Ending(at, _) => at.max(call.last_rtp),
            _ => call.last_rtp.max(call.last_sip),
        };
        let mut channels: [ChannelMeta; 2] = Default::default();
        for (i, leg) in media.legs.into_iter().enumerate() {
            let mut m = leg.meta;
            m.lost = leg.seq.values().map(SeqStats::lost).sum();
            self.stats.rtp_lost += m.lost;
            m.duplicates += leg.seq.values().map(|s| s.duplicates).sum::<u64>();
            let st = leg.timeline.stats();
            m.reanchors = st.breaks;
            m.late += st.late;
            m.timing_corrections = st.corrections;
            m.corrected_samples = st.corrected_samples;
            m.drift_ppm = st.drift_ppm;
            m.resampled_ms = st.resampled_samples * 1000 / u64::from(rate.max(1));
            m.timing_log = leg
                .timeline
                .corrections()
                .map(|c| crate::call::meta::TimingCorrection {
                    at_ms: c.at * 1000 / i64::from(rate),
                    samples: c.samples.round() as i32,
                    spread: c.spread,
                })
                .collect();
            channels[i] = m;
        }
        let mut warnings = call.warnings;
        for (i, c) in channels.iter().enumerate() {
            if c.packets == 0 {
                warnings.push(format!(
                    "channel {i} ({}): no RTP was received from this party; the channel is silent",
                    c.party
                ));
            }
        }
        let meta = CallMeta {
            key,
            recording_id: recording_id(&call.call_id, media.t0),
            call_id: call.call_id,
            recorded_call_id: call.recorded_call_id,
            from: party_info(call.rec_caller.as_ref().unwrap_or(&call.caller)),
            to: party_info(call.rec_callee.as_ref().unwrap_or(&call.callee)),
            caller_known: call.caller_known,
            started_at: call.started_at.min(media.t0),
            answered_at: call.answered_at,
            ended_at,
            media_started_at: media.t0.add_micros(origin_us),
            sample_rate: rate,
            frames: media.frames_out,
            channels,
            dtmf: dtmf_on_timeline(call.dtmf, origin_us),
            end_reason: reason,
            warnings,
        };
        sink.end(key, meta);
    }
}

/// One RTP packet on its way to the decoder.
#[derive(Debug, Clone, Copy)]
struct InPacket {
    arrival: i64,
    ssrc: u32,
    seq: u16,
    ts: u32,
    pt: u8,
    newest: bool,
}

/// A packet held until the ones before it arrive.
struct Held {
    pkt: InPacket,
    codec: Codec,
    payload: Vec<u8>,
    /// Due now: no more waiting for the packets before it.
    released: bool,
}

/// Puts a leg's packets in sequence order for the decoder. A packet that
/// follows the last one released goes straight through (no copy); one after
/// a gap waits until the gap fills or until it has waited `wait` samples of
/// arrival time (then the missing ones are lost); one older than the last
/// released is decoded at once (it is late; its place on the timeline is
/// still found by its timestamp).
#[derive(Default)]
struct DecodeOrder {
    /// SSRC and next expected sequence number.
    next: Option<(u32, u16)>,
    held: Vec<Held>,
    spare: Vec<Vec<u8>>,
}

const ORDER_HELD_MAX: usize = 64;

impl DecodeOrder {
    /// Whether `pkt` is to be decoded now; otherwise it is held.
    fn offer(&mut self, pkt: &InPacket, codec: &Codec, payload: &[u8]) -> bool {
        let Some((ssrc, next)) = self.next else {
            self.next = Some((pkt.ssrc, pkt.seq.wrapping_add(1)));
            return true;
        };
        if ssrc != pkt.ssrc {
            // A new stream: what the old one left waiting goes first.
            self.release_all();
            self.next = Some((pkt.ssrc, pkt.seq.wrapping_add(1)));
            return true;
        }
        let ahead = pkt.seq.wrapping_sub(next) as i16;
        if ahead == 0 {
            self.next = Some((ssrc, next.wrapping_add(1)));
            return true;
        }
        if !(0..=50).contains(&ahead) || self.held.len() >= ORDER_HELD_MAX {
            // Late (its successor went already), or a jump no wait explains.
            if ahead > 0 {
                self.release_all();
                self.next = Some((ssrc, pkt.seq.wrapping_add(1)));
            }
            return true;
        }
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(payload);
        self.held.push(Held {
            pkt: *pkt,
            codec: codec.clone(),
            payload: buf,
            released: false,
        });
        false
    }

    /// Mark every held packet ready (they come out of `pop_ready` in order).
    fn release_all(&mut self) {
        for h in &mut self.held {
            h.released = true;
        }
    }

    /// The next packet to decode: the expected one if held, else the
    /// oldest held once it has waited `wait` (or was released).
    fn pop_ready(&mut self, now: i64, wait: i64) -> Option<Held> {
        let (ssrc, next) = self.next?;
        if self.held.is_empty() {
            return None;
        }
        let by_seq = |h: &Held| h.pkt.seq.wrapping_sub(next) as i16;
        let i = match self
            .held
            .iter()
            .position(|h| h.pkt.ssrc == ssrc && by_seq(h) == 0)
        {
            Some(i) => i,
            None => {
                let (i, h) = self
                    .held
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, h)| (h.pkt.ssrc != ssrc, by_seq(h)))?;
                let waited = h.released || now.saturating_sub(h.pkt.arrival) >= wait;
                if !waited && !self.held.iter().any(|h| h.released) {
                    return None;
                }
                i
            }
        };
        let h = self.held.swap_remove(i);
        if h.pkt.ssrc == ssrc {
            self.next = Some((ssrc, h.pkt.seq.wrapping_add(1)));
        }
        Some(h)
    }

    fn recycle(&mut self, h: Held) {
        if self.spare.len() < 8 {
            self.spare.push(h.payload);
        }
    }
}

/// How long a packet after a gap waits for the missing ones: half the
/// jitter window, at most 120 ms (output samples).
fn order_wait(rate: u32, jitter_ms: u32) -> i64 {
    i64::from(rate) * i64::from(jitter_ms.min(240)) / 2000
}

struct DecodeCtx<'a> {
    rate: u32,
    warnings: &'a mut Vec<String>,
    scratch: &'a mut Vec<i16>,
    stats: &'a mut EngineStats,
}

/// Decode one packet of `leg` (choosing the decoder for its payload type)
/// and hand the PCM to the leg's timeline.
fn decode_and_place(
    leg: &mut Leg,
    ctx: &mut DecodeCtx<'_>,
    pkt: &InPacket,
    codec: &Codec,
    payload: &[u8],
) {
    let rate = ctx.rate;
    let need_new = leg
        .decoder
        .as_ref()
        .is_none_or(|d| d.pt != pkt.pt || d.codec != *codec);
    if need_new {
        let dec = new_decoder(codec, rate);
        if dec.is_none() && !leg.warned_codecs.contains(&pkt.pt) {
            leg.warned_codecs.push(pkt.pt);
            let w = format!(
                "channel {}: codec {} (payload type {}) cannot be decoded: that audio is silence",
                leg.party.channel(),
                codec.name(),
                pkt.pt
            );
            push_warning(ctx.warnings, w);
        }
        if dec.is_some() {
            if leg.meta.codec.is_empty() {
                leg.meta.codec = codec.name().to_string();
            }
            if codec.is_wideband() && rate < 16000 {
                let w = format!(
                    "channel {}: wideband {} recorded at {} Hz (the call started narrowband)",
                    leg.party.channel(),
                    codec.name(),
                    rate
                );
                push_warning(ctx.warnings, w);
            }
        } else if leg.meta.codec.is_empty() {
            leg.meta.codec = codec.name().to_string();
        }
        if !leg.meta.codecs.iter().any(|c| c == codec.name()) {
            leg.meta.codecs.push(codec.name().to_string());
        }
        leg.decoder = Some(ActiveDecoder {
            pt: pkt.pt,
            codec: codec.clone(),
            decoder: dec,
        });
    }
    let Some(dec) = leg.decoder.as_mut().and_then(|d| d.decoder.as_mut()) else {
        return;
    };
    ctx.scratch.clear();
    if dec.decode(payload, ctx.scratch).is_err() {
        ctx.stats.rtp_malformed += 1;
        return;
    }
    leg.timeline.insert(&Packet {
        arrival: pkt.arrival,
        ssrc: pkt.ssrc,
        ts: pkt.ts,
        clock_rate: codec.rtp_clock_rate(),
        newest: pkt.newest,
        // Resampling decoders delay their output by a known amount.
        delay: dec.delay_samples() as i64,
        pcm: ctx.scratch,
    });
}

/// The sans-IO call engine. See the module documentation.
pub struct CallEngine {
    net: NetDecoder,
    t: Tracker,
}

impl CallEngine {
    pub fn new(cfg: EngineConfig) -> Self {
        CallEngine {
            net: NetDecoder::new(cfg.net.clone()),
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

    /// Feed one captured link-layer frame.
    pub fn handle_frame(
        &mut self,
        ts: Timestamp,
        link: LinkType,
        frame: &[u8],
        sink: &mut dyn RecordingSink,
    ) {
        self.t.stats.frames += 1;
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

    /// Let time pass without packets (the daemon calls this on a timer).
    pub fn handle_timeout(&mut self, now: Timestamp, sink: &mut dyn RecordingSink) {
        self.t.handle_timeout(now, sink)
    }

    /// End every call (end of capture, shutdown) and write out all audio.
    pub fn finish(&mut self, reason: EndReason, sink: &mut dyn RecordingSink) {
        self.t.finish(reason, sink)
    }
}

/// DTMF times are taken on the arrival clock (0 = the first packet's
/// arrival); frame 0 may lie before it (see `Media::origin`).
fn dtmf_on_timeline(mut dtmf: Vec<Dtmf>, origin_us: i64) -> Vec<Dtmf> {
    for d in &mut dtmf {
        d.at_ms -= origin_us / 1000;
    }
    dtmf
}

fn push_warning(warnings: &mut Vec<String>, w: String) {
    if warnings.len() < WARNINGS_MAX && !warnings.contains(&w) {
        warnings.push(w);
    }
}

fn party_info(n: &NameAddr) -> PartyInfo {
    PartyInfo {
        number: n.user.clone().unwrap_or_default(),
        name: n.display_name.clone().unwrap_or_default(),
        uri: n.uri.clone(),
    }
}

/// The SDP text carried by a message, if any (plain `application/sdp`, or the
/// SDP part of a multipart body).
fn sdp_of(msg: &SipMessage) -> Option<String> {
    if msg.body.is_empty() {
        return None;
    }
    let ct = msg.content_type.as_deref().unwrap_or("application/sdp");
    let body = String::from_utf8_lossy(&msg.body);
    if ct.starts_with("application/sdp") {
        return Some(body.into_owned());
    }
    if ct.starts_with("multipart/") {
        // Minimal: find the SDP inside (SIPREC bodies are handled by the SIPREC source).
        let start = body.find("\nv=0")?;
        let rest = &body[start + 1..];
        let end = rest.find("\n--").map(|e| e + 1).unwrap_or(rest.len());
        return Some(rest[..end].to_string());
    }
    None
}
