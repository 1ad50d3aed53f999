//! Per-leg RTP: packets in, PCM on the call's timeline out to the sink.
//!
//! In: RTP packets matched to a call (by destination, else by source).
//! Out: decoded audio placed on each leg's [`LegTimeline`], DTMF events (also
//! matched against the pause/resume sequences), and on flush the interleaved
//! PCM handed to the [`RecordingSink`], muted over paused stretches (in-band
//! DTMF is looked for in it first, see [`super::pause`]); on finalize the
//! call's [`CallMeta`] with its `pauses`. Promises: one active flow per leg (a
//! relayed copy is ignored, a new SSRC takes over once the old one is
//! quiet); audio older than the jitter window is written, so memory does
//! not grow with call length.

use std::net::SocketAddr;

use crate::audio::codec::{Codec, Decoder};
use crate::audio::dtmf::{DtmfDetector, ToneEvent};
use crate::call::meta::{
    recording_id, CallKey, CallMeta, ChannelMeta, Dtmf, EndReason, Party, PartyInfo, PauseBy,
    RecordingSink, RecordingStart,
};
use crate::call::pause::{Trigger, SEQUENCE_GAP_MS};
use crate::call::tail::LastOut;
use crate::call::timeline::LegTimeline;
use crate::call::tsclock::TsClock;
use crate::rtp::srtp::SrtpStream;
use crate::rtp::{event_to_digit, parse_rtp, parse_telephone_event, SeqTracker, SeqUpdate};
use crate::Timestamp;

use super::decode::{decode_and_place, place_silence, DecodeCtx};
use super::{dialog::*, engine::*, seq::*};

/// SSRCs whose sequence numbers a leg follows at once.
const MAX_SSRCS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Flow {
    pub(super) src: SocketAddr,
    pub(super) dst: SocketAddr,
    pub(super) ssrc: u32,
    /// Matched by its destination (an SDP receive address) rather than its source.
    pub(super) by_dst: bool,
}

pub(super) struct ActiveDecoder {
    pub(super) pt: u8,
    pub(super) codec: Codec,
    pub(super) decoder: Option<Box<dyn Decoder>>,
}

pub(super) struct DtmfState {
    pub(super) ssrc: u32,
    pub(super) ts: u32,
    /// Its entry in the call's `dtmf` (none while paused).
    pub(super) index: Option<usize>,
    pub(super) digit: char,
    /// Start on the timeline (arrival of its first packet less its duration).
    pub(super) start: i64,
}

/// A packet captured twice this close together is one packet seen on two
/// interfaces (see the duplicates' count in `Tracker::rtp_for`).
const CAPTURE_COPY_US: i64 = 2_000;

/// A latched address takes packets while its call had media this recently.
const LATCH_FRESH_US: i64 = 1_000_000;

pub(super) struct Leg {
    pub(super) party: Party,
    pub(super) timeline: LegTimeline,
    pub(super) order: DecodeOrder,
    pub(super) decoder: Option<ActiveDecoder>,
    pub(super) flow: Option<(Flow, Timestamp)>,
    /// The count of addresses announced (`Tracker::announcements`) when
    /// the leg's first flow began, or when the signalling last moved it: a
    /// flow from a source announced later than that, and later than the
    /// active flow's addresses, is where the signalling moved the sender.
    pub(super) announced_before: Option<u32>,
    pub(super) seq: SsrcSeqs,
    pub(super) jumps: JumpLog,
    pub(super) meta: ChannelMeta,
    pub(super) dtmf: Option<DtmfState>,
    pub(super) warned_codecs: Vec<u8>,
    /// In-band DTMF detector on the rendered audio (G.711 legs of calls
    /// without telephone-events, when pause/resume sequences are set).
    /// Boxed: only calls with pause sequences use it (a leg's state
    /// stays small otherwise).
    pub(super) inband: Option<Box<DtmfDetector>>,
    /// The leg's party has sent a key as SIP INFO: its keys are signalled,
    /// not listened for in the audio.
    pub(super) info_dtmf: bool,
    /// Its stream's timestamps read at half when they step twice its audio
    /// ([`TsClock`]).
    pub(super) ts_clock: TsClock,
    /// The last packet decoded while its decoder holds a tail
    /// ([`super::tail`]).
    pub(super) last_out: Option<LastOut>,
    /// A wideband codec was decoded below 16000 Hz (the rate was fixed
    /// when the call's media started narrowband).
    pub(super) narrowed: bool,
}

impl Leg {
    pub(super) fn new(party: Party, rate: u32, hold_back: i64) -> Self {
        Leg {
            party,
            timeline: LegTimeline::new(rate, hold_back),
            order: DecodeOrder::default(),
            decoder: None,
            flow: None,
            announced_before: None,
            seq: SsrcSeqs::default(),
            jumps: JumpLog::default(),
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
            inband: None,
            info_dtmf: false,
            ts_clock: TsClock::default(),
            last_out: None,
            narrowed: false,
        }
    }

    /// Place the decoder's tail after the last packet if the next one is
    /// overdue (`overdue`: the arrival position after which it is) or
    /// `now` (the end).
    pub(super) fn place_tail_if_idle(&mut self, now_pos: i64, overdue: i64, now: bool) {
        let Some(last) = self.last_out.as_mut() else {
            return;
        };
        if last.placed || !(now || now_pos.saturating_sub(last.arrival_end) >= overdue) {
            return;
        }
        let mut tail = Vec::new();
        if let Some(dec) = self.decoder.as_ref().and_then(|d| d.decoder.as_ref()) {
            dec.tail(&mut tail);
        }
        last.place(&mut self.timeline, &tail);
    }
}

impl Tracker {
    // ---------------------------------------------------------------- RTP

    pub(super) fn handle_rtp(
        &mut self,
        ts: Timestamp,
        src: SocketAddr,
        dst: SocketAddr,
        payload: &[u8],
        sink: &mut dyn RecordingSink,
    ) {
        let (mut key, mut speaker, by_dst) = match self.endpoints.get(&dst) {
            Some((k, receiver)) => (*k, receiver.other(), true),
            None => match self.endpoints.get(&src) {
                Some((k, sender)) => (*k, *sender, false),
                // Neither address announced: to where a party was seen
                // sending from (a NAT's address, latched), while its call
                // goes on (no BYE, media within the last second: a call
                // whose BYE the capture missed gets nothing of a later
                // call on that address).
                None => match self
                    .latched
                    .get(&dst)
                    .filter(|(k, _)| self.latch_alive(*k, ts))
                {
                    Some((k, receiver)) => (*k, receiver.other(), false),
                    None => {
                        self.stats.rtp_unmatched += 1;
                        return;
                    }
                },
            },
        };
        // (Only an address another call announced too can be another
        // call's: most packets skip the look-up.)
        if by_dst && self.shared.contains_key(&dst) {
            if let Some(owner) = self.source_announcer(key, src, dst) {
                (key, speaker) = owner;
            }
        }
        self.rtp_for(key, speaker, by_dst, ts, src, dst, payload, sink);
        // Another call announced the same address (a B2BUA's two dialogs
        // of one conversation when the media flow directly between the
        // phones): it gets the packet too if it announced both ends of
        // this flow, and is still one of the conversation's dialogs: it
        // is the latest to announce one of the two ends, or its
        // signalling announced media since the call that took the address
        // began (each dialog of a B2BUA passes on the other's address:
        // set up together, a queue's agent dialled after the IVR
        // answered, a transfer's third dialog). A lingering call (its BYE
        // not seen) whose two addresses a later call took, the same two
        // phones or ports again, is neither: the later call's audio is
        // not its.
        if self.shared.is_empty() {
            return;
        }
        let at = if by_dst { dst } else { src };
        let others: Vec<(CallKey, Party)> = self
            .shared
            .get(&at)
            .map(|v| v.iter().copied().filter(|(k, _)| *k != key).collect())
            .unwrap_or_default();
        for (k, side) in others {
            let owns = |ep: &SocketAddr| self.endpoints.get(ep).is_some_and(|(o, _)| *o == k);
            let both = self.calls.get(&k).is_some_and(|c| {
                c.sides.iter().any(|s| s.knows(&src))
                    && c.sides.iter().any(|s| s.knows(&dst))
                    && (owns(&src)
                        || owns(&dst)
                        || self
                            .calls
                            .get(&key)
                            .is_some_and(|o| c.last_announced >= o.started_at))
            });
            if both {
                let speaker = if by_dst { side.other() } else { side };
                self.rtp_for(k, speaker, by_dst, ts, src, dst, payload, sink);
            }
        }
    }

    /// Whether call `key`'s latched addresses still take packets: no BYE
    /// (or CANCEL) seen, and media within [`LATCH_FRESH_US`].
    fn latch_alive(&self, key: CallKey, ts: Timestamp) -> bool {
        self.calls.get(&key).is_some_and(|c| {
            !matches!(c.state, CallState::Ending(..))
                && ts.micros_since(c.last_rtp) <= LATCH_FRESH_US
        })
    }

    /// A packet to `dst` (whose latest call is `key`) from `src`, which
    /// `key` does not know: when the call that announced `src` knows `dst`
    /// too, the packet is that call's, sent by the other party than the
    /// one `dst` reaches (a B2BUA dialling an agent with the caller's
    /// address while its own IVR still talks to the caller: the IVR's
    /// audio is not the agent's).
    fn source_announcer(
        &self,
        key: CallKey,
        src: SocketAddr,
        dst: SocketAddr,
    ) -> Option<(CallKey, Party)> {
        let (k2, _) = self.endpoints.get(&src).filter(|(k2, _)| *k2 != key)?;
        let call = self.calls.get(&key)?;
        if call.sides.iter().any(|s| s.knows(&src)) {
            return None;
        }
        let other = self.calls.get(k2)?;
        [Party::Caller, Party::Callee]
            .into_iter()
            .find(|p| other.sides[p.channel()].knows(&dst))
            .map(|receiver| (*k2, receiver.other()))
    }

    /// One RTP packet of call `key`, sent by `speaker`.
    #[allow(clippy::too_many_arguments)]
    fn rtp_for(
        &mut self,
        key: CallKey,
        speaker: Party,
        by_dst: bool,
        ts: Timestamp,
        src: SocketAddr,
        dst: SocketAddr,
        payload: &[u8],
        sink: &mut dyn RecordingSink,
    ) {
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
        let announcements = self.announcements;
        let Some(call) = self.calls.get_mut(&key) else {
            self.stats.rtp_unmatched += 1;
            return;
        };
        // SRTP with SDES keys from the sender's SDP: decrypted here, so
        // everything below sees plain RTP. A packet that does not
        // authenticate is counted and dropped, never decoded as noise.
        let plain;
        let rtp = if !self.cfg.siprec_server && !call.sides[speaker.channel()].crypto.is_empty() {
            let sp = speaker.channel();
            if call.sides[sp].srtp_rx.0.is_none() {
                let made = chosen(&call.sides[sp].crypto, &call.sides[1 - sp].crypto)
                    .and_then(|c| SrtpStream::for_capture(&c.suite, &c.key_params));
                call.sides[sp].srtp_rx = SrtpRx(made.map(Box::new));
            }
            let Some(decrypted) = call.sides[sp]
                .srtp_rx
                .0
                .as_mut()
                .and_then(|s| s.decrypt(payload))
            else {
                self.stats.srtp_failures += 1;
                return;
            };
            plain = decrypted;
            match parse_rtp(&plain) {
                Ok(r) => r,
                Err(_) => {
                    self.stats.rtp_malformed += 1;
                    return;
                }
            }
        } else {
            rtp
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
                    if wide || self.cfg.wideband_calls.contains(&call.call_id) {
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
                from: recorded_party(call, Party::Caller),
                to: recorded_party(call, Party::Callee),
                started_at: call.started_at.min(ts),
                answered_at: call.answered_at,
                ids: call.ids.clone(),
                signalling: caller_sides(call.siprec.is_some(), call.caller_known, call.signalling),
                mixed_mono: call.siprec_mixed(),
            };
            sink.begin(key, &start);
        }
        call.last_rtp = ts;
        let Some(media) = call.media.as_mut() else {
            return;
        };
        let rate = media.rate;
        let arrival_pos =
            crate::time::mul_div(ts.micros_since(media.t0), i64::from(rate), 1_000_000);
        let leg = &mut media.legs[speaker.channel()];
        // When the flow's addresses were announced: its sender's side's
        // source, its receiver's side's destination (0: not announced).
        let sides = &call.sides;
        let announced = |f: &Flow| {
            let from = sides[speaker.channel()].announced(&f.src).unwrap_or(0);
            let to = sides[speaker.other().channel()]
                .announced(&f.dst)
                .unwrap_or(0);
            from.max(to)
        };

        let mut moved = false;
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
                    // The same stream sent on to another address (the
                    // answer's SDP after early media's, a re-INVITE):
                    // packets still in flight to the old one are its
                    // audio too. (A copy would repeat its sequence numbers.)
                    || (active.src == flow.src && active.ssrc == flow.ssrc)
                    // The same stream to the same address from another
                    // source port (the SRC moved it by a re-INVITE, a NAT
                    // rebound it), its numbers going on: it, moved, at
                    // once (a copy would repeat its numbers; waiting for
                    // the old source to go quiet lost its first 40 ms).
                    || (active.dst == flow.dst
                        && active.ssrc == flow.ssrc
                        && leg.seq.continues(rtp.ssrc, rtp.sequence))
                    || (flow.by_dst && !active.by_dst)
                    || ts.micros_since(last) >= FLOW_QUIET_US
                    // The signalling moved the sender (a re-INVITE's new
                    // port, the phone's answer after early media from a
                    // media server): its flow from the newly announced
                    // source is the leg's from its first packet, as the
                    // old one may still send its last. Once per
                    // announcement (a relay's copy of the stream, sent
                    // to an announced address, may then take it back as
                    // before). A relayed copy's source was announced
                    // before the media began, or with the active flow's.
                    || {
                        let from = sides[speaker.channel()].announced(&flow.src).unwrap_or(0);
                        moved = from > leg.announced_before.unwrap_or(u32::MAX)
                            && from > announced(&active);
                        moved
                    }
            }
        };
        if leg.announced_before.is_none() || moved {
            leg.announced_before = Some(announcements);
        }
        if moved && leg.flow.is_some_and(|(f, _)| f.ssrc != rtp.ssrc) {
            leg.timeline.supersede_with(rtp.ssrc);
        }
        let seq_update = if active_flow {
            // The SSRC of the flow already active was listed when it became
            // active: only a new one is looked for in the list (kept off
            // the path of every packet: the list is one more cache miss).
            let known_ssrc = leg.flow.is_some_and(|(f, _)| f.ssrc == rtp.ssrc);
            // When the leg's packet before this one came.
            let prev_at = leg.flow.map(|(_, t)| t);
            // A new source sending to an announced address, itself not
            // announced: where its party is reached (latched).
            if by_dst
                && leg.flow.is_none_or(|(f, _)| f.src != src)
                && call.latched.len() < LATCHED_MAX
                && !call.latched.contains(&src)
                && !self.endpoints.contains_key(&src)
            {
                call.latched.push(src);
                self.latched.insert(src, (key, speaker));
            }
            leg.flow = Some((flow, ts));
            let tracker = leg.seq.entry(rtp.ssrc);
            let mut u = tracker.update(rtp.sequence);
            if u != SeqUpdate::Newest && leg.jumps.restarts(rtp.ssrc, rtp.sequence, rtp.timestamp) {
                // A new numbering under the same SSRC (its first packet
                // came just before, taken for a very late one): this one
                // is its newest, and the numbers before it are not awaited.
                u = tracker.restart(rtp.sequence);
                leg.order.restart(rtp.ssrc, rtp.sequence);
            }
            if leg.seq.len() > MAX_SSRCS {
                // A new SSRC on every packet (hostile, or broken): the
                // sequence state of another one goes (it counts as new if
                // it comes again); memory stays bounded for the call's life.
                leg.seq.forget_one_other_than(rtp.ssrc);
            }
            // RFC 4733 events share the audio's sequence numbers, but their
            // timestamp stays at the event's start: they say nothing of
            // whether the audio's timestamps follow from its numbers (taken
            // as the stream's last packet, every audio packet reordered
            // behind one, and every corrupted duplicate, looked like a new
            // numbering: the duplicate replaced the packet it copied).
            let event = matches!(codec, Some(Codec::TelephoneEvent { .. }));
            match u {
                SeqUpdate::Newest if event => {}
                SeqUpdate::Newest => leg.jumps.newest(rtp.ssrc, rtp.sequence, rtp.timestamp),
                // (A "duplicate" whose timestamp does not follow is a
                // packet of a new numbering until the restart is confirmed:
                // its place is found by its timestamp.)
                SeqUpdate::Duplicate
                    if !leg.jumps.differs(rtp.ssrc, rtp.sequence, rtp.timestamp)
                        && leg.jumps.follows(rtp.ssrc, rtp.sequence, rtp.timestamp) =>
                {
                    // The newest packet captured again at once is the
                    // capture's copy, not the network's duplicate: a host
                    // forwarding it (a bridge, a router) is sniffed on
                    // `any` as it comes in and as it goes out.
                    let newest = leg.seq.entry(rtp.ssrc).max_extended();
                    let copy = newest.is_some_and(|m| m as u16 == rtp.sequence)
                        && prev_at.is_some_and(|t| ts.micros_since(t) <= CAPTURE_COPY_US);
                    if !copy {
                        leg.meta.duplicates += 1;
                    }
                    return;
                }
                _ => {}
            }
            leg.meta.packets += 1;
            if !known_ssrc && !leg.meta.ssrcs.contains(&rtp.ssrc) && leg.meta.ssrcs.len() < 64 {
                leg.meta.ssrcs.push(rtp.ssrc);
            }
            Some(u)
        } else {
            None
        };

        // DTMF first: digits count from any flow of the leg (a relayed copy of
        // the same digit is recognised by digit and start time). They also
        // drive the pause/resume sequences (`call::pause`); while paused
        // none is kept.
        if let Some(Codec::TelephoneEvent { rate: ev_rate }) = &codec {
            leg.meta.dtmf_packets += 1;
            let Ok(ev) = parse_telephone_event(rtp.payload) else {
                return;
            };
            let ev_rate = i64::from((*ev_rate).max(1));
            let dur_ms = i64::from(ev.duration) * 1000 / ev_rate;
            let dur_pos = i64::from(ev.duration) * i64::from(rate) / ev_rate;
            let ch = leg.party.channel();
            match &leg.dtmf {
                // (The same digit: a different event at the same timestamp
                // is a new key.)
                Some(d)
                    if d.ssrc == rtp.ssrc
                        && d.ts == rtp.timestamp
                        && event_to_digit(ev.event) == Some(d.digit) =>
                {
                    if let Some(e) = d.index.and_then(|i| call.dtmf.get_mut(i)) {
                        e.duration_ms = e.duration_ms.max(dur_ms);
                    }
                    call.pause
                        .digit_goes_on(ch, d.start + dur_pos, arrival_pos, ev.end);
                }
                _ => {
                    let Some(digit) = event_to_digit(ev.event) else {
                        return;
                    };
                    // Where its timestamp (the key's start) places it
                    // against the leg's audio; else by its arrival less
                    // the time it has lasted (by the first packet's
                    // duration, which senders count differently: one
                    // 20 ms early).
                    let start = leg
                        .timeline
                        .position_of(rtp.ssrc, rtp.timestamp, ev_rate as u32)
                        .filter(|p| (p - (arrival_pos - dur_pos)).abs() <= i64::from(rate))
                        .unwrap_or(arrival_pos - dur_pos);
                    // (To the nearest millisecond: a key placed a sample
                    // before its 6 s was listed at 5999.)
                    let at_ms = ((start * 1000 + i64::from(rate) / 2) / i64::from(rate)).max(0);
                    let digit_s = digit.to_string();
                    let near = i64::from(rate) * 150 / 1000;
                    let copy = call.dtmf.iter().position(|e| {
                        e.channel == ch && e.digit == digit_s && (e.at_ms - at_ms).abs() < 150
                    });
                    let copy_of_last = leg
                        .dtmf
                        .as_ref()
                        .is_some_and(|d| d.digit == digit && (d.start - start).abs() < near);
                    if copy.is_some() || copy_of_last {
                        let (index, start) = match (&leg.dtmf, copy) {
                            (_, Some(i)) => (Some(i), start),
                            (Some(d), None) => (d.index, d.start),
                            (None, None) => (None, start),
                        };
                        leg.dtmf = Some(DtmfState {
                            ssrc: rtp.ssrc,
                            ts: rtp.timestamp,
                            index,
                            digit,
                            start,
                        });
                        return;
                    }
                    call.pause.digit_began(ch, start);
                    let index = if !call.pause.muting() && call.dtmf.len() < DTMF_MAX {
                        call.dtmf.push(Dtmf {
                            channel: ch,
                            digit: digit_s,
                            at_ms,
                            duration_ms: dur_ms,
                        });
                        Some(call.dtmf.len() - 1)
                    } else {
                        None
                    };
                    leg.dtmf = Some(DtmfState {
                        ssrc: rtp.ssrc,
                        ts: rtp.timestamp,
                        index,
                        digit,
                        start,
                    });
                    let gap = SEQUENCE_GAP_MS * i64::from(rate) / 1000;
                    match call.pause.digit(
                        ch,
                        digit,
                        start,
                        index,
                        &self.cfg.pause_dtmf,
                        &self.cfg.resume_dtmf,
                        gap,
                    ) {
                        Some(Trigger::Pause { from }) => {
                            call.pause.pause(from, PauseBy::Dtmf);
                        }
                        Some(Trigger::Resume) => {
                            call.pause
                                .resume_after_digit(ch, start + dur_pos, arrival_pos);
                            if ev.end {
                                call.pause
                                    .digit_goes_on(ch, start + dur_pos, arrival_pos, true);
                            }
                        }
                        None => {}
                    }
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
        // give noise; the channel stays silent (the warning says why), as
        // long as its packets.
        let encrypted = call.zrtp || call.srtp.is_some();
        // Comfort noise is silence on the recording.
        if codec == Codec::ComfortNoise {
            leg.meta.comfort_noise_packets += 1;
            return;
        }
        let mut pkt = InPacket {
            arrival: arrival_pos,
            ssrc: rtp.ssrc,
            seq: rtp.sequence,
            ts: rtp.timestamp,
            pt: rtp.payload_type,
            newest: seq_update == SeqUpdate::Newest,
            marker: rtp.marker,
            restart: false,
        };
        let mut ctx = DecodeCtx {
            rate,
            warnings: &mut call.warnings,
            scratch: &mut self.scratch,
            stats: &mut self.stats,
        };
        if encrypted {
            place_silence(leg, &mut ctx, &pkt, &codec, &[]);
            self.flush_call(key, sink, false);
            return;
        }
        // Decoders keep state (ADPCM, LPC, resampler history): packets are
        // decoded in sequence order, held back briefly when one is missing.
        if leg.order.offer(&mut pkt, &codec, rtp.payload) {
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
    pub(super) fn flush_call(&mut self, key: CallKey, sink: &mut dyn RecordingSink, all: bool) {
        let now = self.clock();
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let Some(media) = call.media.as_mut() else {
            return;
        };
        let rate = i64::from(media.rate);
        let now_pos = crate::time::mul_div(now.micros_since(media.t0), rate, 1_000_000);
        // A resume waiting for the end of an RFC 4733 digit whose end packets
        // never came: the digit ended where it was last known to.
        let quiet = (rate / 4).min(rate * i64::from(media.jitter_ms) / 2000);
        call.pause.settle(now_pos, if all { 0 } else { quiet });
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
            // A decoder's tail after the last packet once the next one is
            // later than the decoding order would wait for it.
            leg.place_tail_if_idle(now_pos, wait, all);
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
                // (Whether the legs are settled is asked only when it decides:
                // it takes a median of the packets held, every packet.)
                let waited = now_pos - hold_back - o;
                if !all
                    && (waited < rate / 10
                        || (waited < 3 * rate
                            && !media.legs.iter().all(|l| l.timeline.start_settled())))
                {
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
            // Audio is placed no later than it arrived, plus its own
            // length: nothing of a recording lies a second past the last
            // packet seen. (A backstop: a timestamp no arrival supports must
            // not run a recording on for hours.)
            let latest = now_pos.max(flushed) + rate;
            media
                .legs
                .iter_mut()
                .map(|l| l.timeline.end_position(now_pos))
                .max()
                .unwrap_or(flushed)
                .min(latest)
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
        // In-band DTMF is looked for in what is rendered (exact places on the
        // timeline) on G.711 legs, when the call has no telephone-events and
        // pause/resume sequences are set.
        let sequences = !self.cfg.pause_dtmf.is_empty() || !self.cfg.resume_dtmf.is_empty();
        // Per leg, below: a leg is listened to for tones until it has sent
        // an RFC 4733 event (an offer listing telephone-event says nothing
        // of what its answer kept, nor of what the other party sends: a
        // card number keyed as tones on such a call went unmuted). A leg
        // sending both hears a digit twice, which matches no more sequences.
        let inband = sequences;
        let gap = SEQUENCE_GAP_MS * rate / 1000;
        // In pieces of at most a second, so a long pause resumed costs no
        // more memory than a second of audio.
        let mut at = flushed;
        while at < target {
            let to = (at + rate).min(target);
            let n = (to - at) as usize;
            self.tones.clear();
            for (ch, leg) in media.legs.iter_mut().enumerate() {
                let rendered = if ch == 0 {
                    &mut self.scratch
                } else {
                    &mut self.scratch2
                };
                rendered.clear();
                leg.timeline.render(to, rendered);
                let g711 = leg
                    .decoder
                    .as_ref()
                    .is_some_and(|d| matches!(d.codec, Codec::Pcmu | Codec::Pcma));
                if inband && g711 && leg.meta.dtmf_packets == 0 && !leg.info_dtmf {
                    let mut found = Vec::new();
                    leg.inband
                        .get_or_insert_with(|| Box::new(DtmfDetector::new(media.rate)))
                        .process(at, rendered, &mut found);
                    self.tones.extend(found.into_iter().map(|e| (ch, e)));
                } else {
                    leg.inband = None;
                }
            }
            interleave(&mut self.out, n, &self.scratch, &self.scratch2);
            // Tones of both legs in the order they were decided.
            self.tones.sort_by_key(|(_, e)| match e {
                ToneEvent::Digit { known_at, .. } => *known_at,
                ToneEvent::End { end, .. } => *end,
            });
            for (ch, e) in self.tones.drain(..) {
                match e {
                    ToneEvent::Digit {
                        digit,
                        start,
                        known_at,
                    } => match call.pause.digit(
                        ch,
                        digit,
                        start,
                        None,
                        &self.cfg.pause_dtmf,
                        &self.cfg.resume_dtmf,
                        gap,
                    ) {
                        Some(Trigger::Pause { from }) => {
                            call.pause.pause(from.max(at), PauseBy::Dtmf);
                        }
                        Some(Trigger::Resume) => {
                            call.pause.resume_after_digit(ch, known_at, i64::MAX);
                        }
                        None => {}
                    },
                    ToneEvent::End { end, .. } => call.pause.digit_goes_on(ch, end, end, true),
                }
            }
            call.pause.fix(origin, media.rate, at);
            call.pause.mute(at, &mut self.out);
            media.frames_out += n as u64;
            sink.audio(key, &self.out);
            at = to;
        }
    }

    pub(super) fn finalize(
        &mut self,
        key: CallKey,
        reason: EndReason,
        sink: &mut dyn RecordingSink,
    ) {
        self.flush_call(key, sink, true);
        let Some(call) = self.calls.remove(&key) else {
            return;
        };
        if self.by_call_id.get(&call.call_id) == Some(&key) {
            self.by_call_id.remove(&call.call_id);
        }
        for s in &call.sides {
            for (ep, _) in &s.endpoints {
                unregister_endpoint(&mut self.endpoints, &mut self.shared, key, *ep);
            }
        }
        for ep in &call.latched {
            if self.latched.get(ep).is_some_and(|(k, _)| *k == key) {
                self.latched.remove(ep);
            }
        }
        let mixed_mono = call.siprec_mixed();
        let (from, to) = (
            recorded_party(&call, Party::Caller),
            recorded_party(&call, Party::Callee),
        );
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
        if media.legs.iter().any(|l| l.narrowed) {
            self.narrowed.push(super::engine::Narrowed {
                call_id: call.call_id.clone(),
                recording_id: recording_id(&call.call_id, media.t0),
            });
        }
        let mut channels: [ChannelMeta; 2] = Default::default();
        for (i, leg) in media.legs.into_iter().enumerate() {
            let mut m = leg.meta;
            m.lost = leg.seq.values().map(SeqTracker::lost).sum();
            self.stats.rtp_lost += m.lost;
            // (`meta.duplicates` counts the copies dropped as they came; the
            // sequence trackers saw the same ones: counted once.)
            let st = leg.timeline.stats();
            m.reanchors = st.breaks;
            m.late += st.late;
            self.stats.rtp_late += m.late;
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
        let signalling = caller_sides(call.siprec.is_some(), call.caller_known, call.signalling);
        let mut warnings = call.warnings;
        for (i, c) in channels
            .iter()
            .enumerate()
            .take(if mixed_mono { 1 } else { 2 })
        {
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
            from,
            to,
            caller_known: call.caller_known,
            started_at: call.started_at.min(media.t0),
            answered_at: call.answered_at,
            ended_at,
            media_started_at: media.t0.add_micros(origin_us),
            sample_rate: rate,
            frames: media.frames_out,
            channels,
            dtmf: dtmf_on_timeline(
                call.dtmf
                    .into_iter()
                    .enumerate()
                    .filter(|(i, d)| !call.pause.hides(*i, d.at_ms * i64::from(rate) / 1000))
                    .map(|(_, d)| d)
                    .collect(),
                origin_us,
            ),
            pauses: call
                .pause
                .meta(media.origin.unwrap_or(0), rate, media.frames_out),
            end_reason: reason,
            warnings,
            signalling,
            ids: call.ids,
            mixed_mono,
        };
        sink.end(key, meta);
    }
}

/// Who a recording names as its caller or callee: for SIPREC, the
/// metadata's participant (unknown without one: the recording session's
/// From and To are the SRC and us, not the parties); else the dialog's.
fn recorded_party(call: &Call, party: Party) -> PartyInfo {
    let (rec, dialog) = match party {
        Party::Caller => (&call.rec_caller, &call.caller),
        Party::Callee => (&call.rec_callee, &call.callee),
    };
    match (rec, call.siprec.is_some()) {
        (Some(n), _) => party_info(n),
        (None, true) => PartyInfo::default(),
        (None, false) => party_info(dialog),
    }
}

/// DTMF times on the WAV's clock (taken on the arrival clock; frame 0 may lie before it, `Media::origin`).
pub(super) fn dtmf_on_timeline(mut dtmf: Vec<Dtmf>, origin_us: i64) -> Vec<Dtmf> {
    for d in &mut dtmf {
        d.at_ms -= (origin_us + 500).div_euclid(1000);
    }
    dtmf
}

/// The addresses of the caller's and the callee's signalling, when the call
/// was seen from its INVITE and is not a SIPREC session (whose INVITE comes
/// from the recording client, not from a party).
fn caller_sides(
    siprec: bool,
    caller_known: bool,
    signalling: Option<[std::net::IpAddr; 2]>,
) -> Option<[std::net::IpAddr; 2]> {
    if siprec || !caller_known {
        return None;
    }
    signalling
}

/// `n` stereo frames into `out` (cleared): `left` and `right` side by
/// side, silence where either has fewer than `n` samples (a leg renders
/// exactly `n`: both are written in one pass then).
fn interleave(out: &mut Vec<i16>, n: usize, left: &[i16], right: &[i16]) {
    out.clear();
    out.resize(n * 2, 0);
    if left.len() == n && right.len() == n {
        for (frame, (l, r)) in out.chunks_exact_mut(2).zip(left.iter().zip(right)) {
            frame[0] = *l;
            frame[1] = *r;
        }
        return;
    }
    for (ch, samples) in [left, right].into_iter().enumerate() {
        for (frame, s) in out.chunks_exact_mut(2).zip(samples) {
            frame[ch] = *s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::interleave;

    /// Both legs of `n` samples side by side; a leg short of `n` (or
    /// longer) leaves silence (or is cut) as writing each leg on its own did.
    #[test]
    fn interleave_puts_the_legs_side_by_side() {
        let mut out = vec![9i16; 3];
        interleave(&mut out, 3, &[1, 2, 3], &[-1, -2, -3]);
        assert_eq!(out, [1, -1, 2, -2, 3, -3]);
        interleave(&mut out, 3, &[1], &[-1, -2, -3, -4]);
        assert_eq!(out, [1, -1, 0, -2, 0, -3]);
        interleave(&mut out, 2, &[], &[7, 8]);
        assert_eq!(out, [0, 7, 0, 8]);
        interleave(&mut out, 0, &[1], &[2]);
        assert!(out.is_empty());
    }
}
