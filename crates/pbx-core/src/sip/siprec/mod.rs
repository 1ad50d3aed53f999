//! SIPREC for a recording server (SRS, RFC 7866): the body of a recording
//! INVITE in, who is on which recorded stream out, plus the SDP answer.
//!
//! - [`siprec_parts`]: a SIPREC request ([`SipMessage`]) → its SDP offer and,
//!   when present, its recording metadata. Accepts `multipart/mixed` with
//!   `application/rs-metadata+xml` or the older `application/rs-metadata`
//!   (or any part with `Content-Disposition: recording-session`); vendor
//!   extra parts (Cisco `application/gtd`, ...) are ignored. A plain
//!   `application/sdp` body (re-INVITE without metadata) gives `None`.
//! - [`parse_metadata`]: the metadata XML (RFC 7865) → [`RecordingSession`].
//!   Namespace-agnostic (only local names count, compared ASCII
//!   case-insensitively, so `tns:participant`, `dataMode`/`datamode` all
//!   work) and tolerant of the dialects seen in the field: RFC 7865
//!   (`participantstreamassoc` with `send`/`recv`), the old draft / Acme
//!   Packet form (`send`/`recv` inside `participant`, `id=` attributes),
//!   Sonus/Ribbon `callData` (`fromhdr`, `tohdr`, `callid`) in `group`,
//!   Cisco `sipSessionID`.
//! - [`assign_streams`]: SDP offer + metadata → which m-line carries whose
//!   voice ([`StreamAssignment`]), decided from the metadata only, never from
//!   which packet arrives first (CONTRACT §3).
//! - [`answer_sdp`]: the SRS's SDP answer (`a=recvonly`, one codec per
//!   stream, labels kept, SDES crypto echoed with a fresh key).
//!
//! Promises: never panics on any input; metadata over [`MAX_METADATA_LEN`]
//! bytes, with more than [`MAX_PARTICIPANTS`] participants or
//! [`MAX_STREAMS`] streams, nested deeper than [`MAX_DEPTH`] or with more
//! than [`MAX_ELEMENTS`] elements is refused; a document type declaration
//! (`<!DOCTYPE`, where entity definitions live) is refused outright, so no
//! entity is ever expanded (only the five predefined XML entities and
//! character references are decoded).
//!
//! ## Channel rule (CONTRACT §3)
//! Channel 0 (caller) carries the streams sent by the *first participant in
//! metadata order that sends a stream* (`participantstreamassoc/send` or
//! `participant/send`); every other sending participant goes to channel 1
//! (callee). With more than two senders (a conference) the first stays the
//! caller and all others go to the callee channel, which records one stream
//! at a time (the engine keeps one flow a channel: another sender's stream
//! takes over when the one recorded has been quiet for 60 ms; they are not
//! mixed: a known limit, see docs/siprec.md). A stream nobody
//! sends is an unknown leg (`party: None`). Only when the metadata carries no
//! send association at all (drachtio's test template) is the party guessed
//! from order, i-th stream ↔ i-th participant, as drachtio's own SRS does;
//! the assignment then says so ([`PartyBasis::ParticipantOrder`] and a
//! warning).
//!
//! SDP m-lines are tied to metadata streams by `a=label` ↔ `<label>`. When a
//! label does not match (drachtio's template: SDP `a_leg`/`b_leg`, metadata
//! `1`/`2`), the m-line falls back to the metadata stream at the same
//! position, with a warning in the assignment.
//!
//! Layout: this file holds the public types and limits; `xml` the bounded
//! element tree, `metadata` the dialects → [`RecordingSession`], `body`
//! the multipart extraction, `channel` the channel rule, `answer` the SDP
//! answer.

use std::borrow::Cow;
use std::net::IpAddr;

use quick_xml::events::Event;
use quick_xml::{Reader, XmlVersion};

use super::message::{uri_user_host, SipMessage};
use super::multipart::{MultipartError, Part};
use super::sdp::{parse_sdp, Direction, MediaDescription, RtpMap, SdpError, SessionDescription};
use crate::call::Party;

mod answer;
mod body;
mod channel;
mod metadata;
#[cfg(test)]
mod tests;
mod xml;

pub use answer::{answer_sdp, decodable_codec, offer_sends_nothing};
pub use body::{is_siprec_request, metadata_without_sdp, parts_to_siprec, siprec_parts};
pub use channel::{assign_streams, PartyBasis, StreamAssignment, StreamMatch};
pub use metadata::{number_of, parse_metadata};
use xml::*;

/// Largest metadata document accepted, in bytes.
pub const MAX_METADATA_LEN: usize = 256 * 1024;
/// Most participants accepted in one metadata document.
pub const MAX_PARTICIPANTS: usize = 64;
/// Most streams accepted in one metadata document.
pub const MAX_STREAMS: usize = 64;
/// Deepest element nesting accepted.
pub const MAX_DEPTH: usize = 32;
/// Most XML elements accepted in one document.
pub const MAX_ELEMENTS: usize = 8192;

/// Why SIPREC input was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SiprecError {
    #[error("metadata of {0} bytes exceeds the {MAX_METADATA_LEN}-byte limit")]
    TooLarge(usize),
    #[error("malformed metadata XML: {0}")]
    Xml(String),
    #[error("metadata carries a document type declaration (refused: no entity expansion)")]
    DtdRefused,
    #[error("metadata nests elements deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("metadata has more than {MAX_ELEMENTS} elements")]
    TooManyElements,
    #[error("metadata root element is <{0}>, not <recording>")]
    NotRecording(String),
    #[error("metadata has no root element")]
    Empty,
    #[error("more than {MAX_PARTICIPANTS} participants")]
    TooManyParticipants,
    #[error("more than {MAX_STREAMS} streams")]
    TooManyStreams,
    #[error("a participant lists more than {MAX_STREAMS} send or recv streams")]
    TooManyAssociations,
    #[error("multipart body: {0}")]
    Multipart(#[from] MultipartError),
    #[error("no SDP in the request")]
    NoSdp,
    #[error("SDP: {0}")]
    Sdp(#[from] SdpError),
    #[error("the SDP has no audio stream to record")]
    NoAudio,
}

/// One recording session as the metadata describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordingSession {
    /// `<session session_id=...>` (or `id=`) of the first session.
    pub session_id: Option<String>,
    /// In metadata order (the order decides the caller, see the module doc).
    pub participants: Vec<Participant>,
    /// In metadata order.
    pub streams: Vec<StreamInfo>,
    /// The original call's Call-ID when the SRC tells it: Sonus/Ribbon
    /// `callData/callid`, else Cisco's `session/sipSessionID`.
    pub call_id_hint: Option<String>,
    /// Sonus/Ribbon `callData/fromhdr`: the original From header.
    pub from_hdr: Option<String>,
    /// Sonus/Ribbon `callData/tohdr`: the original To header.
    pub to_hdr: Option<String>,
    /// `<group group_id=...>`.
    pub group_id: Option<String>,
    /// When the communication session was tied to the recording:
    /// `sessionrecordingassoc/associate-time`, else the session's
    /// `associate-time`, else its `start-time`; as written.
    pub associate_time: Option<String>,
    /// `<datamode>`: `complete` or `partial` (a partial update only carries
    /// what changed).
    pub data_mode: Option<String>,
}

/// One participant of the recorded call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Participant {
    /// `participant_id` (or `id`) attribute; `_N` (N = position) when absent.
    pub id: String,
    /// Display name (`nameID/name`), trimmed; `None` when empty.
    pub name: Option<String>,
    /// Address of record, e.g. `sip:+15551234@host` or `tel:+1555`;
    /// `sip:` is prepended when the SRC wrote a bare `user@host` (Sonus).
    pub aor: Option<String>,
    /// User part of the AOR when it is a phone number: digits with an
    /// optional leading `+` (visual separators `-.()` dropped).
    pub number: Option<String>,
    /// Ids of the streams this participant sends (its voice).
    pub send: Vec<String>,
    /// Ids of the streams this participant receives.
    pub recv: Vec<String>,
}

/// One recorded stream as the metadata describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamInfo {
    /// `stream_id` (or `id`) attribute.
    pub id: String,
    /// `<label>`: ties the stream to the SDP m-line with the same `a=label`.
    pub label: String,
    /// `session_id` (or `session`) attribute.
    pub session: Option<String>,
}

impl RecordingSession {
    /// The participant with that id.
    pub fn participant(&self, id: &str) -> Option<&Participant> {
        self.participants.iter().find(|p| p.id == id)
    }

    /// The stream with that id.
    pub fn stream(&self, id: &str) -> Option<&StreamInfo> {
        self.streams.iter().find(|s| s.id == id)
    }

    /// Whether the document is a partial update (`<datamode>partial`, RFC
    /// 7865 §6.1: it carries only what changed).
    pub fn is_partial(&self) -> bool {
        self.data_mode
            .as_deref()
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("partial"))
    }

    /// Takes in a later metadata document of the same recording session: a
    /// complete one replaces this, a partial one is merged into it (RFC
    /// 7866 §9): participants and streams by id (what the update gives
    /// replaces, what it does not stays; new ones are added after the
    /// known ones, so the metadata order that decides the caller is
    /// kept), and a stream the update says a participant sends is no
    /// longer sent by anyone else (a transfer moves a stream to its new
    /// party). Never grows past [`MAX_PARTICIPANTS`] / [`MAX_STREAMS`].
    pub fn update(&mut self, update: RecordingSession) {
        if !update.is_partial() {
            *self = update;
            return;
        }
        // An id the parser made up for an element without one (`_N`, by
        // position) names nothing across documents: such a participant or
        // stream of the update is a new one, not the known one at N.
        let made_up = |id: &str| {
            id.strip_prefix('_')
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        };
        for mut p in update.participants {
            if made_up(&p.id) {
                p.id = format!("_{}", self.participants.len());
            }
            if !p.send.is_empty() {
                for other in self.participants.iter_mut().filter(|o| o.id != p.id) {
                    other.send.retain(|s| !p.send.contains(s));
                }
            }
            let room = self.participants.len() < MAX_PARTICIPANTS;
            match self.participants.iter_mut().find(|o| o.id == p.id) {
                Some(o) => {
                    o.name = p.name.or(o.name.take());
                    o.aor = p.aor.or(o.aor.take());
                    o.number = p.number.or(o.number.take());
                    if !p.send.is_empty() {
                        o.send = p.send;
                    }
                    if !p.recv.is_empty() {
                        o.recv = p.recv;
                    }
                }
                None if room => self.participants.push(p),
                None => {}
            }
        }
        for mut st in update.streams {
            if made_up(&st.id) {
                st.id = format!("_{}", self.streams.len());
            }
            let room = self.streams.len() < MAX_STREAMS;
            match self.streams.iter_mut().find(|o| o.id == st.id) {
                Some(o) => {
                    if !st.label.is_empty() {
                        o.label = st.label;
                    }
                    o.session = st.session.or(o.session.take());
                }
                None if room => self.streams.push(st),
                None => {}
            }
        }
        let keep = |new: Option<String>, old: &mut Option<String>| {
            if new.is_some() {
                *old = new;
            }
        };
        keep(update.session_id, &mut self.session_id);
        keep(update.call_id_hint, &mut self.call_id_hint);
        keep(update.from_hdr, &mut self.from_hdr);
        keep(update.to_hdr, &mut self.to_hdr);
        keep(update.group_id, &mut self.group_id);
        keep(update.associate_time, &mut self.associate_time);
    }
}
