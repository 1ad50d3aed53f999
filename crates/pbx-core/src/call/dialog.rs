//! Dialogs and SDP: SIP messages in, calls and their announced media out.
//!
//! In: parsed SIP messages (any direction) with their addresses. Out: a
//! [`Call`] per Call-ID with its parties, state and the receive addresses
//! and payload-type maps each side announced in SDP (offer or answer, in
//! INVITE, 18x, 2xx, ACK, UPDATE, PRACK), SIPREC stream → channel
//! assignments, and call ends (BYE, CANCEL, failure). Promises: the
//! INVITE's sender is the caller; retransmissions are counted once.

use std::collections::{BTreeMap, VecDeque};

use rustc_hash::FxHashMap;
use std::net::SocketAddr;

use super::side::Offered;
use crate::audio::codec::Codec;
use crate::call::meta::{CallKey, Dtmf, EndReason, Party, PartyInfo, PauseBy, RecordingSink};
use crate::call::pause::{PauseState, Trigger, SEQUENCE_GAP_MS};
use crate::sip::message::{Method, NameAddr, SipMessage, StartLine};
use crate::sip::sdp::{parse_sdp, Crypto, SessionDescription};
use crate::sip::siprec::{
    assign_streams, is_siprec_request, metadata_without_sdp, siprec_parts, RecordingSession,
    SiprecError,
};
use crate::Timestamp;

pub(super) use super::side::{SideMedia, SrtpRx};
use super::{engine::*, leg::*};

/// The header with which the SRC or PBX pauses (`yes`, `true`, `on`, `1`) or
/// resumes (`no`, `false`, `off`, `0`) a call's recording, on any request of
/// the dialog.
pub const PAUSE_HEADER: &str = "X-Recording-Pause";

/// A crypto line whose suite and key pbx-edge can use.
pub(super) fn usable(c: &Crypto) -> bool {
    crate::rtp::srtp::usable(&c.suite, &c.key_params)
}

/// The line a side encrypts with: the one whose tag the other side's
/// answer (one line) selected, else its only or first usable one.
pub(super) fn chosen<'a>(mine: &'a [Crypto], theirs: &[Crypto]) -> Option<&'a Crypto> {
    let selected = match theirs {
        [one] => Some(one.tag),
        _ => None,
    };
    mine.iter()
        .filter(|c| usable(c))
        .find(|c| Some(c.tag) == selected)
        .or_else(|| mine.iter().find(|c| usable(c)))
}

pub(super) struct Media {
    pub(super) t0: Timestamp,
    pub(super) rate: u32,
    pub(super) legs: [Leg; 2],
    /// Frames handed to the sink (the next timeline position to render).
    pub(super) frames_out: u64,
    /// Timeline position of frame 0 (<= 0): set when the first audio is
    /// written. Negative when the call's first packet was itself late: its
    /// place on the envelope is before its arrival, and time zero moves there
    /// (by at most the jitter window) so that none of its audio is cut.
    pub(super) origin: Option<i64>,
    /// The jitter window this call started with (a reload changing
    /// `jitter_ms` applies to new calls: the mixer is sized for this one).
    pub(super) jitter_ms: u32,
}

pub(super) enum CallState {
    Setup,
    Answered,
    /// BYE / CANCEL / failure seen at this time; finalised one jitter window later.
    Ending(Timestamp, EndReason),
}

pub(super) struct Call {
    pub(super) key: CallKey,
    pub(super) call_id: String,
    pub(super) caller_tag: Option<String>,
    pub(super) caller: NameAddr,
    pub(super) callee: NameAddr,
    pub(super) caller_known: bool,
    pub(super) initial_cseq: Option<u32>,
    pub(super) started_at: Timestamp,
    pub(super) answered_at: Option<Timestamp>,
    /// When its signalling last announced media addresses (an SDP).
    pub(super) last_announced: Timestamp,
    pub(super) last_sip: Timestamp,
    pub(super) last_rtp: Timestamp,
    pub(super) state: CallState,
    pub(super) sides: [SideMedia; 2],
    pub(super) media: Option<Media>,
    /// The last 64 SIP messages' signatures (see `handle_sip`).
    pub(super) seen_msgs: VecDeque<u64>,
    pub(super) dtmf: Vec<Dtmf>,
    pub(super) warnings: Vec<String>,
    /// ZRTP was seen on the call's media: the audio is encrypted.
    pub(super) zrtp: bool,
    /// The SDP negotiated SRTP (RTP/SAVP…), which this engine does not
    /// decrypt: how its keys were exchanged.
    pub(super) srtp: Option<&'static str>,
    /// SIPREC recording session: the party of each SDP m-line.
    pub(super) siprec: Option<Vec<Option<Party>>>,
    /// SIPREC: the metadata so far and the offer it was applied to.
    pub(super) siprec_state: Option<Box<SiprecState>>,
    /// SIPREC: the recorded call's parties and Call-ID from the metadata.
    pub(super) rec_caller: Option<NameAddr>,
    pub(super) rec_callee: Option<NameAddr>,
    pub(super) recorded_call_id: Option<String>,
    /// Pause/resume state (DTMF sequences, API, SIP header).
    pub(super) pause: PauseState,
    /// Identifiers the PBX gave the call (SIP headers, [`super::ids`]).
    pub(super) ids: BTreeMap<String, String>,
    /// Source and destination address of the INVITE that opened the call.
    pub(super) signalling: Option<[std::net::IpAddr; 2]>,
    /// The latest SDP of the dialog put every audio stream on hold
    /// (sendonly, recvonly, inactive, `c=0.0.0.0`): silence for a while is
    /// expected, and the media timeout is [`HOLD_TIMEOUT_US`].
    pub(super) on_hold: bool,
    /// When the dialog last came off hold: its media timeout counts from
    /// here or the last packet, whichever is later (a hold of an hour,
    /// then a resume whose media take a moment, is not a dead call).
    pub(super) resumed_at: Timestamp,
    /// The latest requests that may carry an offer ([`Offered`]): an
    /// answer's sender is the other party of its request's, whatever its
    /// From and To say (a UA that does not copy them into its response
    /// had its SDP taken for the other party's: that party's stream then
    /// recorded on the wrong channel).
    pub(super) offers: Vec<Offered>,
    /// Addresses its parties were seen sending from that nobody announced
    /// (a NAT's): `Tracker::latched` (at most [`LATCHED_MAX`]).
    pub(super) latched: Vec<SocketAddr>,
}

/// See [`Call::latched`].
pub(super) const LATCHED_MAX: usize = 4;

/// A SIPREC session's metadata so far, and the offer its streams were
/// last assigned against (a later request may carry metadata alone).
#[derive(Debug, Default)]
pub(super) struct SiprecState {
    /// Every metadata document so far, partial updates merged in.
    meta: Option<RecordingSession>,
    /// The last offer's m-lines (kind, port and label only).
    lines: SessionDescription,
    /// The m-lines' parties come from metadata (not the m-line order
    /// guess): a line keeps its party for the rest of the call.
    from_metadata: bool,
    /// Per m-line: the SRC's address from the offer and ours from the
    /// answer (metadata alone moves a line to its party here).
    eps: Vec<[Option<SocketAddr>; 2]>,
    /// An offer of the session had more than one audio m-line (taken or
    /// refused): not one mixed stream (see [`Call::siprec_mixed`]).
    several: bool,
    /// The metadata names exactly one participant sending the session's
    /// one stream: that party's voice, not a mix.
    one_sender: bool,
}

/// Other calls' claims on an address a later call announced too.
pub(super) type SharedEndpoints = FxHashMap<SocketAddr, Vec<(CallKey, Party)>>;

/// Most other calls kept for one address.
const SHARED_MAX: usize = 4;

/// `ep` is where `side` is reached: packets to it are the other party's.
/// The latest call to announce an address owns it; the calls that had it
/// before are kept beside it (see `Tracker::handle_rtp`). Returns whether
/// that is news (the address was not this side's of this call).
fn register_endpoint(
    endpoints: &mut FxHashMap<SocketAddr, (CallKey, Party)>,
    shared: &mut SharedEndpoints,
    announcements: &mut u32,
    s: &mut SideMedia,
    key: CallKey,
    ep: SocketAddr,
    side: Party,
) -> bool {
    let new = !s.knows(&ep) || endpoints.get(&ep) != Some(&(key, side));
    if !s.knows(&ep) {
        if s.endpoints.len() >= 16 {
            // The oldest goes from the call-wide map too (it would point
            // at this call after its end, and a later call's packets to it
            // would be lost).
            let (old, _) = s.endpoints.remove(0);
            unregister_endpoint(endpoints, shared, key, old);
        }
        *announcements = announcements.saturating_add(1);
        s.endpoints.push((ep, *announcements));
    }
    if let Some((k0, p0)) = endpoints.insert(ep, (key, side)) {
        if let Some(v) = shared.get_mut(&ep) {
            v.retain(|(k, _)| *k != key && *k != k0);
        }
        if k0 != key {
            let v = shared.entry(ep).or_default();
            if v.len() >= SHARED_MAX {
                v.remove(0);
            }
            v.push((k0, p0));
        }
        if shared.get(&ep).is_some_and(Vec::is_empty) {
            shared.remove(&ep);
        }
    }
    new
}

/// Call `key` no longer announces `ep`: the call that had it before (if
/// still in progress) owns it again.
pub(super) fn unregister_endpoint(
    endpoints: &mut FxHashMap<SocketAddr, (CallKey, Party)>,
    shared: &mut SharedEndpoints,
    key: CallKey,
    ep: SocketAddr,
) {
    if endpoints.get(&ep).is_some_and(|(k, _)| *k == key) {
        endpoints.remove(&ep);
        if let Some(prev) = shared.get_mut(&ep).and_then(Vec::pop) {
            endpoints.insert(ep, prev);
        }
    }
    if let Some(v) = shared.get_mut(&ep) {
        v.retain(|(k, _)| *k != key);
        if v.is_empty() {
            shared.remove(&ep);
        }
    }
}

/// The offer's m-lines as far as the channel rule reads them.
fn stream_lines(sdp: &SessionDescription) -> SessionDescription {
    SessionDescription {
        media: sdp
            .media
            .iter()
            .map(|m| crate::sip::sdp::MediaDescription {
                media: m.media.clone(),
                port: m.port,
                port_count: m.port_count,
                proto: String::new(),
                formats: Vec::new(),
                connection: None,
                rtpmaps: Vec::new(),
                fmtp: Vec::new(),
                direction: None,
                label: m.label.clone(),
                crypto: Vec::new(),
                rtcp_mux: false,
                ptime: None,
                attributes: Vec::new(),
            })
            .collect(),
        ..SessionDescription::default()
    }
}

/// How long a call on hold (by its SDP) may go without media before it
/// ends: holds of minutes are common, and the BYE or the resuming
/// re-INVITE ends or resumes it.
pub const HOLD_TIMEOUT_US: i64 = 3_600_000_000;

impl Call {
    /// Since when the call has been quiet, for its media timeout.
    pub(super) fn quiet_since(&self) -> Timestamp {
        self.last_rtp.max(self.resumed_at)
    }

    /// Its media timeout: `rtp_timeout_us`, or [`HOLD_TIMEOUT_US`] on hold.
    pub(super) fn media_timeout_us(&self, rtp_timeout_us: i64) -> i64 {
        if self.on_hold {
            rtp_timeout_us.max(HOLD_TIMEOUT_US)
        } else {
            rtp_timeout_us
        }
    }
}

/// Where a pause asked for before media started begins: before anything,
/// so it is put at the first frame written.
pub(super) const BEFORE_MEDIA: i64 = i64::MIN / 4;

impl Call {
    /// `ts` on the call's timeline (output samples since time zero).
    pub(super) fn position(&self, ts: Timestamp) -> i64 {
        match &self.media {
            Some(m) => crate::time::mul_div(ts.micros_since(m.t0), i64::from(m.rate), 1_000_000),
            None => BEFORE_MEDIA,
        }
    }
}

impl Call {
    /// A SIPREC session whose every offer had one audio stream, not said
    /// by the metadata to be one participant's: the SRC's mix of both
    /// parties (CONTRACT §3 `mixed_mono`). (A session that had two streams
    /// and dropped one, or refused one, keeps its two channels.)
    pub(super) fn siprec_mixed(&self) -> bool {
        let audio = |m: &&crate::sip::sdp::MediaDescription| {
            m.media.eq_ignore_ascii_case("audio") && !m.is_rejected()
        };
        self.siprec.is_some()
            && self.siprec_state.as_ref().is_some_and(|st| {
                !st.several && !st.one_sender && st.lines.media.iter().filter(audio).count() == 1
            })
    }
}

impl Tracker {
    // ---------------------------------------------------------------- SIP

    pub(super) fn handle_sip(
        &mut self,
        ts: Timestamp,
        src: SocketAddr,
        dst: SocketAddr,
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
                let k = self.open_call(ts, &msg, sink);
                if let Some(c) = self.calls.get_mut(&k) {
                    // Who sent the INVITE to whom (a trunk's address tells
                    // the direction, `[roles] trunks`).
                    c.signalling = Some([src.ip(), dst.ip()]);
                }
                k
            }
        };
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        call.last_sip = ts;

        // Retransmission detection: same CSeq, method, status and branch,
        // from the same sender to the same receiver (the same message
        // forwarded on another hop, seen by a capture on a proxy's host,
        // carries that hop's SDP: a relay's addresses), kept as an 8-byte
        // hash keyed as the Call-ID table is (SipHash with this process's
        // random keys: a sender cannot make two collide).
        let sig = std::hash::BuildHasher::hash_one(
            self.by_call_id.hasher(),
            (
                msg.cseq,
                &msg.cseq_method,
                msg.status().unwrap_or(0),
                msg.via_branch.as_deref().unwrap_or_default(),
                src,
                dst,
            ),
        );
        if call.seen_msgs.contains(&sig) {
            self.stats.sip_retransmissions += 1;
            return;
        }
        if call.seen_msgs.len() >= 64 {
            call.seen_msgs.pop_front();
        }
        call.seen_msgs.push_back(sig);
        if msg.is_request() {
            super::ids::collect(&msg, &mut call.ids);
        }

        // A new INVITE without To-tag on a call still being set up is the
        // retry after an authentication challenge (401/407): same call.
        if is_invite && msg.to.tag.is_none() && matches!(call.state, CallState::Setup) {
            call.initial_cseq = Some(msg.cseq);
        }
        // The SRC / PBX pausing the recording: `X-Recording-Pause: yes|no`
        // on any request of the dialog (re-INVITE, UPDATE, INFO...).
        if msg.is_request() {
            if let Some(v) = msg.header(PAUSE_HEADER) {
                let at = call.position(ts);
                match v.trim().to_ascii_lowercase().as_str() {
                    "yes" | "true" | "on" | "1" => {
                        call.pause.pause(at, PauseBy::Sip);
                    }
                    "no" | "false" | "off" | "0" => {
                        call.pause.resume(at);
                    }
                    _ => {}
                }
            }
        }
        let side = call.side_of_sender(&msg, (src, dst));
        call.note_offer(&msg, (src, dst), side);
        // A key pressed, sent as SIP INFO (many phones and PBXs send DTMF so
        // instead of RFC 4733): listed in `dtmf` and matched against the
        // pause and resume sequences as a digit of the sender's leg.
        if msg.method() == Some(&Method::Info) && call.media.is_some() {
            if let Some((digit, dur_ms)) = info_dtmf(&msg) {
                let at = call.position(ts);
                let rate = call.media.as_ref().map_or(8000, |m| i64::from(m.rate));
                let ch = side.channel();
                let at_ms = (at * 1000 / rate).max(0);
                if let Some(m) = call.media.as_mut() {
                    m.legs[ch].info_dtmf = true;
                }
                // The same key also sent as an RFC 4733 event (or the INFO
                // seen twice, on both sides of a proxy): counted once.
                let digit_s = digit.to_string();
                let copy = call.dtmf.iter().rev().take(8).any(|e| {
                    e.channel == ch && e.digit == digit_s && (e.at_ms - at_ms).abs() < 150
                });
                let index = if copy {
                    None
                } else if !call.pause.muting() && call.dtmf.len() < DTMF_MAX {
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
                let gap = SEQUENCE_GAP_MS * rate / 1000;
                let trigger = if copy {
                    None
                } else {
                    call.pause.digit(
                        ch,
                        digit,
                        at,
                        index,
                        &self.cfg.pause_dtmf,
                        &self.cfg.resume_dtmf,
                        gap,
                    )
                };
                match trigger {
                    Some(Trigger::Pause { from }) => {
                        call.pause.pause(from, PauseBy::Dtmf);
                    }
                    Some(Trigger::Resume) => {
                        call.pause.resume(at + dur_ms * rate / 1000);
                    }
                    None => {}
                }
            }
        }
        let sdp_body = sdp_of(&msg);
        match &msg.start {
            StartLine::Request { method, .. } => match method {
                Method::Invite | Method::Ack | Method::Update | Method::Prack => {}
                // A BYE of this call's dialog (not of another fork's: a
                // caller ends the extra dialogs of a forked INVITE).
                Method::Bye
                    if !matches!(call.state, CallState::Ending(..)) && call.in_dialog(&msg) =>
                {
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
                        // The answer the caller gets: a proxy that forks
                        // tries the next branch after one refuses it (seen
                        // sniffing beside the proxy, or in its HEP trace).
                        && call.signalling.is_none_or(|[caller, _]| dst.ip() == caller)
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
        if matches!(call.state, CallState::Ending(..)) {
            // Its linger ends at an exact time: a host sleeping on
            // `poll_timeout` wakes for it.
            self.wake_for(key);
        }
        // SIPREC: the recording server's own offers, requests that say so,
        // a call that is one already, or a multipart body with recording
        // metadata. Not any multipart body: SIP-I (SDP + ISUP) and NG911
        // (SDP + location) calls are ordinary calls, their SDP the sender's.
        let multipart = msg
            .content_type
            .as_deref()
            .is_some_and(|c| c.to_ascii_lowercase().starts_with("multipart/"));
        let siprec_call = self.calls.get(&key).is_some_and(|c| c.siprec.is_some());
        let says_siprec = self.cfg.siprec_server || is_siprec_request(&msg) || siprec_call;
        // (Metadata alone, RFC 7866 §9.1, updates a recording session.)
        let metadata_alone = siprec_call
            && msg.media_type().is_some_and(|t| {
                t.to_ascii_lowercase()
                    .starts_with("application/rs-metadata")
            });
        let is_siprec_offer = msg.is_request()
            && matches!(msg.method(), Some(Method::Invite | Method::Update))
            && ((multipart && (says_siprec || has_metadata_part(&msg.body)))
                || metadata_alone
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

    pub(super) fn open_call(
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
            last_announced: ts,
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
            siprec_state: None,
            rec_caller: None,
            rec_callee: None,
            recorded_call_id: None,
            pause: PauseState::default(),
            ids: BTreeMap::new(),
            signalling: None,
            on_hold: false,
            resumed_at: ts,
            offers: Vec::new(),
            latched: Vec::new(),
            warnings: if initial {
                Vec::new()
            } else {
                vec![
                    "capture started mid-call: caller/callee taken from the first re-INVITE seen"
                        .into(),
                ]
            },
        };
        self.calls.insert(key, Box::new(call));
        self.by_call_id.insert(msg.call_id.clone(), key);
        key
    }

    /// Register the media an SDP body announces. For a normal call the body
    /// says where `side` receives. For a SIPREC recording session each m-line
    /// carries one party's voice (from the metadata): the SRC's offer lines
    /// are where that voice comes from, the SRS's answer lines where it goes.
    pub(super) fn apply_sdp(
        &mut self,
        key: CallKey,
        side: Party,
        sdp: &SessionDescription,
        is_request: bool,
    ) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let siprec = call.siprec.clone();
        let was_on_hold = call.on_hold;
        if siprec.is_none() && !self.cfg.siprec_server {
            let mut audio = sdp
                .media
                .iter()
                .filter(|m| m.media.eq_ignore_ascii_case("audio") && !m.is_rejected())
                .peekable();
            call.on_hold = audio.peek().is_some() && audio.all(|m| m.is_on_hold(sdp));
        } else if is_request {
            // A SIPREC offer is always sendonly: its hold (a pause of the
            // recording, RFC 7866 §7.1.1.2) is an offer sending nothing.
            // Only the SRC's offer says so (our answer mirrors it).
            call.on_hold = crate::sip::siprec::offer_sends_nothing(sdp);
        }
        let resumed = was_on_hold && !call.on_hold;
        if resumed {
            call.resumed_at = self.now;
        }
        call.last_announced = self.now;
        // Off hold: the addresses announced again, after the hold's (a
        // PBX's hold music), are the latest again.
        let mut again: Vec<(Party, SocketAddr)> = Vec::new();
        let mut first_audio: Option<Codec> = None;
        // SIPREC: each m-line's first audio codec and its sender.
        let mut line_first: Vec<(usize, Party, Codec)> = Vec::new();
        let mut new_address = false;
        for (i, m) in sdp.media.iter().enumerate() {
            if !m.media.eq_ignore_ascii_case("audio") {
                continue;
            }
            // SRTP seen from outside (sniffing, captures): with SDES keys in
            // the SDP, what this side sends is decrypted with them; without
            // usable keys the audio would be noise, so the channels stay
            // silent and a warning says why. The SIPREC server's sockets
            // decrypt before the engine and are not affected.
            let savp = m.port != 0 && m.proto.to_ascii_uppercase().contains("SAVP");
            let keyed_side = match &siprec {
                Some(parties) => parties.get(i).copied().flatten().filter(|_| is_request),
                None => Some(side),
            };
            if !self.cfg.siprec_server && savp && m.crypto.iter().any(usable) {
                if let Some(ks) = keyed_side {
                    let s = &mut call.sides[ks.channel()];
                    if s.crypto != m.crypto {
                        s.crypto = m.crypto.clone();
                        s.srtp_rx = SrtpRx::default();
                    }
                }
            } else if !self.cfg.siprec_server && savp && call.srtp.is_none() {
                let how = if !m.crypto.is_empty() {
                    "SDES keys (a=crypto) of a suite pbx-edge cannot use (it takes AES_CM_128_HMAC_SHA1_80 and _32)"
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
            // (None: a SIPREC line nobody is known to send yet; its
            // addresses are kept for metadata that may name its sender.)
            let reg_side = match &siprec {
                Some(parties) => match parties.get(i).copied().flatten() {
                    Some(p) if is_request => Some(p),
                    Some(p) => Some(p.other()),
                    None => None,
                },
                None => Some(side),
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
                    if let (Some(parties), true) = (&siprec, c.is_audio()) {
                        if let Some(p) = parties.get(i).copied().flatten() {
                            if !line_first.iter().any(|(l, _, _)| *l == i) {
                                line_first.push((i, p, c.clone()));
                            }
                        }
                    }
                    if let Some(parties) = &siprec {
                        let party = parties.get(i).copied().flatten();
                        super::side::add_line_codec(&mut call.sides, party, *pt, c);
                    } else {
                        call.sides[side.channel()].pt_map.insert(*pt, c);
                    }
                }
            }
            if m.port == 0 {
                continue;
            }
            if let Some(addr) = m.effective_connection(sdp) {
                if addr.is_unspecified() {
                    continue; // RFC 2543 hold: no address
                }
                let ep = SocketAddr::new(addr, m.port);
                if let Some(reg_side) = reg_side {
                    if resumed {
                        again.push((reg_side, ep));
                    }
                    new_address |= register_endpoint(
                        &mut self.endpoints,
                        &mut self.shared,
                        &mut self.announcements,
                        &mut call.sides[reg_side.channel()],
                        key,
                        ep,
                        reg_side,
                    );
                }
                // A SIPREC line's addresses, for metadata that comes alone.
                if let (Some(_), Some(st)) = (&siprec, call.siprec_state.as_deref_mut()) {
                    if st.eps.len() <= i && i < crate::sip::siprec::MAX_STREAMS {
                        st.eps.resize(i + 1, [None; 2]);
                    }
                    if let Some(slot) = st.eps.get_mut(i) {
                        slot[usize::from(!is_request)] = Some(ep);
                    }
                }
            }
        }
        if !line_first.is_empty() {
            // SIPREC: each party's stream's first codec (the sample rate
            // is "auto"'s wideband if either is).
            for (_, p, c) in line_first {
                call.sides[p.channel()].preferred = Some(c);
            }
        } else if first_audio.is_some() {
            call.sides[side.channel()].preferred = first_audio;
        }
        for (side, ep) in again {
            call.sides[side.channel()].announce_again(ep, &mut self.announcements);
        }
        // New SDP may bring new streams (re-INVITE, transfer): let them
        // take over at once. Not an SDP that only repeats the addresses
        // (a re-INVITE through a relay seen on both its sides): the
        // relayed copy, 1 ms behind, would take over from the sender's
        // own stream at every such re-INVITE, its first packet the audio
        // just written.
        if let (true, Some(media)) = (new_address || siprec.is_some(), call.media.as_mut()) {
            for leg in &mut media.legs {
                leg.flow = None;
            }
        }
    }

    /// A SIPREC INVITE / UPDATE: which m-line is whose voice, and who the
    /// recorded call's parties are (CONTRACT §3: the first participant that
    /// sends a stream is the caller).
    pub(super) fn apply_siprec_metadata(
        &mut self,
        key: CallKey,
        msg: &SipMessage,
    ) -> Option<SessionDescription> {
        let (sdp, session) = match siprec_parts(msg) {
            Ok((sdp, session)) => (Some(sdp), session),
            // Metadata alone (RFC 7866 §9.1): applied to the offer in force.
            Err(SiprecError::NoSdp) => (None, metadata_without_sdp(msg).ok().flatten()),
            Err(_) => return None,
        };
        let call = self.calls.get_mut(&key)?;
        let state = call.siprec_state.get_or_insert_with(Box::default);
        let previous = std::mem::take(&mut state.lines);
        state.lines = sdp.as_ref().map_or_else(|| previous.clone(), stream_lines);
        let audio_lines = state
            .lines
            .media
            .iter()
            .filter(|m| m.media.eq_ignore_ascii_case("audio"));
        state.several |= audio_lines.count() > 1;
        let Some(session) = session else {
            if call.siprec.is_some() || sdp.is_none() {
                return sdp; // the metadata's assignment stays
            }
            // No metadata (yet: RFC 7866 lets it come in a later request):
            // the audio m-lines in order, the first the caller's. Metadata
            // arriving later replaces this.
            let mut next = [Party::Caller, Party::Callee].into_iter();
            let parties = state
                .lines
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
            return sdp;
        };
        // A partial update is merged into what is known (RFC 7865 §6.1).
        let merged = match state.meta.take() {
            Some(mut m) => {
                m.update(session);
                m
            }
            None => session,
        };
        match assign_streams(&state.lines, &merged) {
            Ok(assign) => {
                let n = state.lines.media.len();
                let mut parties = vec![None; n];
                for a in &assign {
                    if let Some(slot) = parties.get_mut(a.m_line) {
                        *slot = a.party;
                    }
                    if let Some(w) = &a.warning {
                        push_warning(&mut call.warnings, w.clone());
                    }
                }
                // The channels never swap mid-call: a stream whose party
                // metadata decided keeps it (a later document may name its
                // participants in another order, or a transferred party
                // first); only new streams are placed by the new document.
                // So does a stream placed by the SDP's order once its audio
                // is recording (metadata first sent after the media began:
                // RFC 7866 allows it): the metadata then names who is on
                // each channel, not which channel each is on.
                let late = !state.from_metadata && call.media.is_some();
                if late {
                    push_warning(
                        &mut call.warnings,
                        "SIPREC metadata came after the media began: the channels stay as the SDP's order placed them, from/to name who is on each".to_string(),
                    );
                }
                if state.from_metadata || late {
                    if let Some(old) = &call.siprec {
                        for (i, slot) in parties.iter_mut().enumerate() {
                            let same_stream = previous.media.get(i).is_some_and(|m| {
                                m.label == state.lines.media[i].label && m.port != 0
                            });
                            if let Some(p) = old.get(i).copied().flatten().filter(|_| same_stream) {
                                *slot = Some(p);
                            }
                        }
                    }
                }
                state.from_metadata = true;
                // One stream (the SRC's mix): the callee is the participant
                // the metadata names after the one sending it.
                let mixed = assign.len() == 1;
                let sender = assign.first().and_then(|a| a.participant.clone());
                state.one_sender = mixed
                    && assign[0].stream.as_ref().is_some_and(|sid| {
                        merged
                            .participants
                            .iter()
                            .filter(|p| p.send.contains(sid))
                            .count()
                            == 1
                    });
                for (party, slot) in [(Party::Caller, 0usize), (Party::Callee, 1usize)] {
                    // Who speaks on the channel now (the sender of its stream).
                    let pid = assign
                        .iter()
                        .find(|a| parties.get(a.m_line).copied().flatten() == Some(party))
                        .and_then(|a| a.participant.clone())
                        .or_else(|| {
                            let other = merged
                                .participants
                                .iter()
                                .find(|p| Some(&p.id) != sender.as_ref());
                            other.filter(|_| mixed && slot == 1).map(|p| p.id.clone())
                        });
                    if let Some(p) =
                        pid.and_then(|id| merged.participants.iter().find(|p| p.id == id))
                    {
                        let known = if slot == 0 {
                            &mut call.rec_caller
                        } else {
                            &mut call.rec_callee
                        };
                        // The parties are the ones first named (a transfer
                        // does not rename the call's caller or callee).
                        if known.is_none() {
                            *known = Some(NameAddr {
                                display_name: p.name.clone(),
                                uri: p.aor.clone().unwrap_or_default(),
                                user: p.number.clone(),
                                host: None,
                                tag: None,
                            });
                        }
                    }
                }
                if sdp.is_none() {
                    // No offer comes to apply this: the lines' addresses
                    // go to their parties now.
                    for (i, eps) in state.eps.iter().enumerate() {
                        let Some(p) = parties.get(i).copied().flatten() else {
                            continue;
                        };
                        for (ep, side) in eps.iter().zip([p, p.other()]) {
                            if let Some(ep) = ep {
                                register_endpoint(
                                    &mut self.endpoints,
                                    &mut self.shared,
                                    &mut self.announcements,
                                    &mut call.sides[side.channel()],
                                    key,
                                    *ep,
                                    side,
                                );
                            }
                        }
                    }
                }
                call.siprec = Some(parties);
                if let Some(cid) = &merged.call_id_hint {
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
        state.meta = Some(merged);
        sdp
    }
}

/// The key an INFO request carries: `application/dtmf-relay` (`Signal=5`,
/// `Duration=160` in ms) or `application/dtmf` (the key alone); RFC 4733
/// event numbers 10-15 stand for `*`, `#`, `A`-`D`. The duration is 0 when
/// not given.
pub(super) fn info_dtmf(msg: &SipMessage) -> Option<(char, i64)> {
    let ct = msg.media_type()?.to_ascii_lowercase();
    let body = std::str::from_utf8(&msg.body).ok()?;
    let key = |v: &str| -> Option<char> {
        let v = v.trim();
        match v.parse::<u8>() {
            Ok(n @ 0..=9) => char::from_digit(u32::from(n), 10),
            Ok(n @ 10..=15) => Some(['*', '#', 'A', 'B', 'C', 'D'][usize::from(n - 10)]),
            Ok(_) => None,
            Err(_) => {
                let mut c = v.chars();
                let k = c.next()?.to_ascii_uppercase();
                (c.next().is_none() && matches!(k, '*' | '#' | 'A'..='D')).then_some(k)
            }
        }
    };
    match ct.as_str() {
        "application/dtmf-relay" => {
            let mut digit = None;
            let mut dur = 0i64;
            for line in body.lines() {
                let Some((name, value)) = line.split_once('=') else {
                    continue;
                };
                match name.trim().to_ascii_lowercase().as_str() {
                    "signal" => digit = key(value),
                    "duration" => dur = value.trim().parse::<i64>().unwrap_or(0).clamp(0, 10_000),
                    _ => {}
                }
            }
            Some((digit?, dur))
        }
        "application/dtmf" => Some((key(body)?, 0)),
        _ => None,
    }
}

pub(super) fn party_info(n: &NameAddr) -> PartyInfo {
    PartyInfo {
        number: n.user.clone().unwrap_or_default(),
        name: n.display_name.clone().unwrap_or_default(),
        uri: n.uri.clone(),
    }
}

/// The SDP text carried by a message, if any (plain `application/sdp`, or the
/// SDP part of a multipart body).
/// Whether a multipart body holds a recording-metadata part
/// (`application/rs-metadata+xml`, or the older `application/rs-metadata`).
fn has_metadata_part(body: &[u8]) -> bool {
    body.windows(11)
        .any(|w| w.eq_ignore_ascii_case(b"rs-metadata"))
}

pub(super) fn sdp_of(msg: &SipMessage) -> Option<String> {
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
