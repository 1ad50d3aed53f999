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
//! caller and *all* others are mixed on the callee channel. A stream nobody
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

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::IpAddr;

use quick_xml::events::Event;
use quick_xml::{Reader, XmlVersion};

use super::message::{uri_user_host, SipMessage};
use super::multipart::{MultipartError, Part};
use super::sdp::{parse_sdp, Direction, MediaDescription, RtpMap, SdpError, SessionDescription};
use crate::call::Party;

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
}

// ---------------------------------------------------------------------------
// A tiny element tree (bounded), then the SIPREC interpretation on top.

struct Element {
    /// Local name as written (prefix dropped).
    name: String,
    /// Attributes by local name.
    attrs: Vec<(String, String)>,
    /// Concatenated character data directly inside the element.
    text: String,
    children: Vec<usize>,
}

struct Tree {
    elements: Vec<Element>,
}

impl Tree {
    fn get(&self, idx: usize) -> Option<&Element> {
        self.elements.get(idx)
    }

    fn children(&self, idx: usize) -> impl Iterator<Item = (usize, &Element)> + '_ {
        self.get(idx)
            .map(|e| e.children.as_slice())
            .unwrap_or_default()
            .iter()
            .filter_map(move |c| self.get(*c).map(|e| (*c, e)))
    }

    /// Direct children with that local name.
    fn named<'a>(
        &'a self,
        idx: usize,
        name: &'a str,
    ) -> impl Iterator<Item = (usize, &'a Element)> + 'a {
        self.children(idx)
            .filter(move |(_, e)| e.name.eq_ignore_ascii_case(name))
    }

    fn first(&self, idx: usize, name: &str) -> Option<(usize, &Element)> {
        self.children(idx)
            .find(|(_, e)| e.name.eq_ignore_ascii_case(name))
    }

    /// Trimmed text of the first direct child with that name; `None` when
    /// absent or blank.
    fn child_text(&self, idx: usize, name: &str) -> Option<String> {
        self.first(idx, name).and_then(|(_, e)| non_empty(&e.text))
    }

    /// First element with that name anywhere below `idx` (depth first).
    fn descendant(&self, idx: usize, name: &str) -> Option<usize> {
        let mut stack: Vec<usize> = vec![idx];
        while let Some(i) = stack.pop() {
            let Some(e) = self.get(i) else { continue };
            if i != idx && e.name.eq_ignore_ascii_case(name) {
                return Some(i);
            }
            stack.extend(e.children.iter().rev());
        }
        None
    }
}

impl Element {
    /// First attribute whose local name is one of `names`, trimmed, non-empty.
    fn attr(&self, names: &[&str]) -> Option<String> {
        names.iter().find_map(|n| {
            self.attrs
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .and_then(|(_, v)| non_empty(v))
        })
    }
}

fn non_empty(s: &str) -> Option<String> {
    let t = s.trim();
    (!t.is_empty()).then(|| t.to_string())
}

fn local(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

fn xml_err(e: impl std::fmt::Display) -> SiprecError {
    SiprecError::Xml(e.to_string())
}

fn build_tree(xml: &[u8]) -> Result<Tree, SiprecError> {
    let mut reader = Reader::from_reader(xml);
    reader.config_mut().check_end_names = true;
    let mut elements: Vec<Element> = Vec::new();
    let mut stack: Vec<usize> = Vec::new();
    let mut root_done = false;
    loop {
        let event = reader.read_event().map_err(xml_err)?;
        let (start, empty) = match &event {
            Event::Start(s) => (Some(s), false),
            Event::Empty(s) => (Some(s), true),
            _ => (None, false),
        };
        if let Some(s) = start {
            if root_done && stack.is_empty() {
                // A second root element: not XML; keep the first document.
                if empty {
                    continue;
                }
                break;
            }
            if elements.len() >= MAX_ELEMENTS {
                return Err(SiprecError::TooManyElements);
            }
            if stack.len() >= MAX_DEPTH {
                return Err(SiprecError::TooDeep);
            }
            let mut attrs = Vec::new();
            for a in s.attributes() {
                let a = a.map_err(xml_err)?;
                let value = a
                    .normalized_value(XmlVersion::Implicit1_0)
                    .map_err(xml_err)?;
                attrs.push((local(a.key.local_name().as_ref()), value.into_owned()));
            }
            let idx = elements.len();
            elements.push(Element {
                name: local(s.local_name().as_ref()),
                attrs,
                text: String::new(),
                children: Vec::new(),
            });
            if let Some(parent) = stack.last().and_then(|p| elements.get_mut(*p)) {
                parent.children.push(idx);
            }
            if empty {
                if stack.is_empty() {
                    root_done = true;
                }
            } else {
                stack.push(idx);
            }
            continue;
        }
        match event {
            Event::End(_) => {
                stack.pop();
                if stack.is_empty() {
                    root_done = true;
                }
            }
            Event::Text(t) => {
                let text = t.xml10_content().map_err(xml_err)?;
                append_text(&mut elements, &stack, &text);
            }
            Event::CData(c) => {
                let text = c.decode().map_err(xml_err)?;
                append_text(&mut elements, &stack, &text);
            }
            Event::GeneralRef(r) => {
                let resolved: Cow<'_, str> = match r.resolve_char_ref().map_err(xml_err)? {
                    Some(ch) => Cow::Owned(ch.to_string()),
                    None => {
                        let name = r.decode().map_err(xml_err)?;
                        match quick_xml::escape::resolve_predefined_entity(&name) {
                            Some(s) => Cow::Borrowed(s),
                            None => {
                                return Err(SiprecError::Xml(format!("undefined entity &{name};")))
                            }
                        }
                    }
                };
                append_text(&mut elements, &stack, &resolved);
            }
            Event::DocType(_) => return Err(SiprecError::DtdRefused),
            Event::Eof => break,
            // XML declaration, processing instructions, comments.
            _ => {}
        }
    }
    if !stack.is_empty() {
        return Err(SiprecError::Xml("document ends inside an element".into()));
    }
    if elements.is_empty() {
        return Err(SiprecError::Empty);
    }
    Ok(Tree { elements })
}

fn append_text(elements: &mut [Element], stack: &[usize], text: &str) {
    if let Some(e) = stack.last().and_then(|i| elements.get_mut(*i)) {
        e.text.push_str(text);
    }
}

/// Parses SIPREC recording metadata (RFC 7865 and the dialects listed in the
/// module doc).
pub fn parse_metadata(xml: &[u8]) -> Result<RecordingSession, SiprecError> {
    if xml.len() > MAX_METADATA_LEN {
        return Err(SiprecError::TooLarge(xml.len()));
    }
    let tree = build_tree(xml)?;
    let root = 0usize;
    let root_name = tree.get(root).map(|e| e.name.clone()).unwrap_or_default();
    if !root_name.eq_ignore_ascii_case("recording") {
        return Err(SiprecError::NotRecording(root_name));
    }

    let mut rs = RecordingSession {
        data_mode: tree.child_text(root, "datamode"),
        ..RecordingSession::default()
    };

    // Session, group, association times.
    let mut session_assoc_time = None;
    let mut session_time = None;
    let mut sip_session_id = None;
    if let Some((si, s)) = tree.first(root, "session") {
        rs.session_id = s.attr(&["session_id", "id"]);
        sip_session_id = tree.child_text(si, "sipSessionID");
        session_time = tree
            .child_text(si, "associate-time")
            .or_else(|| tree.child_text(si, "start-time"));
    }
    if let Some((ai, a)) = tree.first(root, "sessionrecordingassoc") {
        session_assoc_time = tree.child_text(ai, "associate-time");
        if rs.session_id.is_none() {
            rs.session_id = a.attr(&["session_id", "id"]);
        }
    }
    rs.associate_time = session_assoc_time.or(session_time);
    if let Some((_, g)) = tree.first(root, "group") {
        rs.group_id = g.attr(&["group_id", "id"]);
    }
    if let Some(cd) = tree.descendant(root, "callData") {
        rs.from_hdr = tree.child_text(cd, "fromhdr");
        rs.to_hdr = tree.child_text(cd, "tohdr");
        rs.call_id_hint = tree.child_text(cd, "callid");
    }
    if rs.call_id_hint.is_none() {
        rs.call_id_hint = sip_session_id;
    }

    // Participants and streams, in document order.
    for (ci, c) in tree.children(root) {
        if c.name.eq_ignore_ascii_case("participant") {
            let id = c
                .attr(&["participant_id", "id"])
                .unwrap_or_else(|| format!("_{}", rs.participants.len()));
            let p = participant_entry(&mut rs.participants, &id)?;
            fill_participant(&tree, ci, c, p);
            add_assoc(&tree, ci, p)?;
        } else if c.name.eq_ignore_ascii_case("stream") {
            let id = c
                .attr(&["stream_id", "id"])
                .unwrap_or_else(|| format!("_{}", rs.streams.len()));
            let label = tree.child_text(ci, "label");
            let session = c.attr(&["session_id", "session"]);
            match rs.streams.iter_mut().find(|s| s.id == id) {
                Some(s) => {
                    if let Some(l) = label {
                        s.label = l;
                    }
                    if session.is_some() {
                        s.session = session;
                    }
                }
                None => {
                    if rs.streams.len() >= MAX_STREAMS {
                        return Err(SiprecError::TooManyStreams);
                    }
                    rs.streams.push(StreamInfo {
                        id,
                        label: label.unwrap_or_default(),
                        session,
                    });
                }
            }
        }
    }
    // Stream associations (RFC 7865 §6.4): may name participants declared
    // anywhere (or, in a partial update, not at all).
    for (ci, c) in tree.named(root, "participantstreamassoc") {
        let Some(id) = c.attr(&["participant_id", "id"]) else {
            continue;
        };
        let p = participant_entry(&mut rs.participants, &id)?;
        add_assoc(&tree, ci, p)?;
    }
    Ok(rs)
}

/// The participant with that id, created at the end when new.
fn participant_entry<'a>(
    participants: &'a mut Vec<Participant>,
    id: &str,
) -> Result<&'a mut Participant, SiprecError> {
    let pos = match participants.iter().position(|p| p.id == id) {
        Some(pos) => pos,
        None => {
            if participants.len() >= MAX_PARTICIPANTS {
                return Err(SiprecError::TooManyParticipants);
            }
            participants.push(Participant {
                id: id.to_string(),
                ..Participant::default()
            });
            participants.len() - 1
        }
    };
    participants
        .get_mut(pos)
        .ok_or(SiprecError::TooManyParticipants)
}

fn fill_participant(tree: &Tree, idx: usize, el: &Element, p: &mut Participant) {
    // nameID@aor (RFC 7865), or an <aor> element / aor attribute (drafts).
    let mut aor = None;
    let mut name = None;
    for (ni, n) in tree.named(idx, "nameID") {
        if aor.is_none() {
            aor = n.attr(&["aor"]).or_else(|| tree.child_text(ni, "aor"));
        }
        if name.is_none() {
            name = tree.child_text(ni, "name");
        }
    }
    let aor = aor
        .or_else(|| tree.child_text(idx, "aor"))
        .or_else(|| el.attr(&["aor"]));
    let name = name.or_else(|| tree.child_text(idx, "name"));
    if let Some(a) = aor {
        let a = normalize_aor(&a);
        p.number = number_of(&a);
        p.aor = Some(a);
    }
    if name.is_some() {
        p.name = name;
    }
}

/// `send`/`recv` children of `idx` appended to the participant (no
/// duplicates).
fn add_assoc(tree: &Tree, idx: usize, p: &mut Participant) -> Result<(), SiprecError> {
    for (_, c) in tree.children(idx) {
        let list = if c.name.eq_ignore_ascii_case("send") {
            &mut p.send
        } else if c.name.eq_ignore_ascii_case("recv") {
            &mut p.recv
        } else {
            continue;
        };
        let Some(id) = non_empty(&c.text) else {
            continue;
        };
        if list.contains(&id) {
            continue;
        }
        if list.len() >= MAX_STREAMS {
            return Err(SiprecError::TooManyAssociations);
        }
        list.push(id);
    }
    Ok(())
}

/// `sip:` prepended to a bare `user@host` (Sonus writes AORs without scheme).
fn normalize_aor(aor: &str) -> String {
    let a = aor.trim();
    let a = a
        .strip_prefix('<')
        .and_then(|x| x.strip_suffix('>'))
        .unwrap_or(a);
    let has_scheme = ["sip:", "sips:", "tel:", "urn:"].iter().any(|s| {
        a.get(..s.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(s))
    });
    if has_scheme {
        a.to_string()
    } else {
        format!("sip:{a}")
    }
}

/// The phone number in an AOR's user part: digits with an optional leading
/// `+`, visual separators (`-`, `.`, `(`, `)`, space) dropped; `None` when
/// the user part is not a number (`sip:ASBCE@...`).
pub fn number_of(aor: &str) -> Option<String> {
    let (user, _) = uri_user_host(aor);
    let user = user?;
    let user = user.split(';').next().unwrap_or_default();
    let user = percent_decode_lossy(user);
    let mut out = String::new();
    for (i, ch) in user.trim().chars().enumerate() {
        match ch {
            '0'..='9' => out.push(ch),
            '+' if i == 0 => out.push(ch),
            '-' | '.' | '(' | ')' | ' ' => {}
            _ => return None,
        }
    }
    out.chars().any(|c| c.is_ascii_digit()).then_some(out)
}

fn percent_decode_lossy(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------
// Splitting a SIPREC request.

/// Is this part the recording metadata?
fn is_metadata_part(p: &Part) -> bool {
    let mt = p.media_type().unwrap_or_default();
    if mt.eq_ignore_ascii_case("application/rs-metadata+xml")
        || mt.eq_ignore_ascii_case("application/rs-metadata")
    {
        return true;
    }
    let disposition = p
        .header("Content-Disposition")
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim();
    disposition.eq_ignore_ascii_case("recording-session") && mt.ends_with("xml")
}

/// The SDP offer and recording metadata of a SIPREC request (INVITE,
/// re-INVITE or UPDATE). `Ok((sdp, None))` when the body is plain SDP or the
/// multipart body has no metadata part. A metadata part that does not parse
/// is an error (the caller may still use `msg.sdp()` and record without it).
pub fn siprec_parts(
    msg: &SipMessage,
) -> Result<(SessionDescription, Option<RecordingSession>), SiprecError> {
    let media_type = msg.media_type().unwrap_or_default().to_ascii_lowercase();
    if media_type.starts_with("multipart/") {
        let ct = msg.content_type.as_deref().unwrap_or_default();
        let parts = super::multipart::split_multipart(ct, &msg.body)?;
        return parts_to_siprec(&parts);
    }
    if media_type == "application/sdp" {
        let sdp = parse_sdp(&String::from_utf8_lossy(&msg.body))?;
        return Ok((sdp, None));
    }
    Err(SiprecError::NoSdp)
}

/// [`siprec_parts`] on already split parts (e.g. from
/// [`super::multipart::split_multipart`]).
pub fn parts_to_siprec(
    parts: &[Part],
) -> Result<(SessionDescription, Option<RecordingSession>), SiprecError> {
    let sdp_part = parts
        .iter()
        .find(|p| {
            p.media_type()
                .is_some_and(|t| t.eq_ignore_ascii_case("application/sdp"))
        })
        .ok_or(SiprecError::NoSdp)?;
    let sdp = parse_sdp(&String::from_utf8_lossy(&sdp_part.body))?;
    let meta = match parts.iter().find(|p| is_metadata_part(p)) {
        Some(p) => Some(parse_metadata(&p.body)?),
        None => None,
    };
    Ok((sdp, meta))
}

/// Does the request look like RFC 7866 asks a recording INVITE to look:
/// `siprec` in Require (or Supported) and `+sip.src` on the Contact? The
/// shell may accept requests without (drachtio's template has neither).
pub fn is_siprec_request(msg: &SipMessage) -> bool {
    let tag = |name: &str| {
        msg.headers_named(name).any(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("siprec"))
        })
    };
    let src = msg.headers_named("Contact").any(|v| {
        v.split(';')
            .skip(1)
            .any(|p| p.trim().to_ascii_lowercase().starts_with("+sip.src"))
    });
    (tag("Require") || tag("Supported")) && src
}

// ---------------------------------------------------------------------------
// Streams → channels.

/// How an m-line was tied to a metadata stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamMatch {
    /// `a=label` equals the stream's `<label>`.
    Label,
    /// Labels did not match; the metadata stream at the same position.
    Position,
    /// No metadata stream for this m-line.
    None,
}

/// How the party of a stream was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartyBasis {
    /// A participant sends the stream (`send` association): authoritative.
    Send,
    /// The metadata has no send association at all: guessed from order
    /// (i-th stream ↔ i-th participant, first participant = caller).
    ParticipantOrder,
    /// Nobody is known to send it: `party` is `None`.
    Unknown,
}

/// Which recorded stream carries whose voice, decided from metadata only
/// (never from which packet arrives first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamAssignment {
    /// Index of the m-line in the SDP offer (all m-lines count).
    pub m_line: usize,
    /// The m-line's `a=label`.
    pub label: Option<String>,
    /// `Some(Caller)` → channel 0, `Some(Callee)` → channel 1, `None` = unknown leg.
    pub party: Option<Party>,
    /// Id of the participant whose voice it is.
    pub participant: Option<String>,
    /// Id of the metadata stream.
    pub stream: Option<String>,
    pub matched_by: StreamMatch,
    pub basis: PartyBasis,
    /// Set when something was guessed or did not match; for the log.
    pub warning: Option<String>,
}

/// Ties every recordable m-line of the offer (audio, port ≠ 0) to a party.
/// Rules in the module doc. Errors only when the SDP has no such m-line.
pub fn assign_streams(
    sdp: &SessionDescription,
    session: &RecordingSession,
) -> Result<Vec<StreamAssignment>, SiprecError> {
    let lines: Vec<(usize, &MediaDescription)> = sdp
        .media
        .iter()
        .enumerate()
        .filter(|(_, m)| m.media.eq_ignore_ascii_case("audio") && !m.is_rejected())
        .collect();
    if lines.is_empty() {
        return Err(SiprecError::NoAudio);
    }

    // m-line → metadata stream index: labels first, then position.
    let mut chosen: Vec<(Option<usize>, StreamMatch)> = lines
        .iter()
        .map(|(_, m)| {
            let by_label = m.label.as_deref().and_then(|l| {
                session
                    .streams
                    .iter()
                    .position(|s| !s.label.is_empty() && s.label == l.trim())
            });
            match by_label {
                Some(i) => (Some(i), StreamMatch::Label),
                None => (None, StreamMatch::None),
            }
        })
        .collect();
    let claimed: Vec<usize> = chosen.iter().filter_map(|(s, _)| *s).collect();
    for (k, (m_line, _)) in lines.iter().enumerate() {
        let Some(slot) = chosen.get_mut(k) else {
            continue;
        };
        if slot.0.is_some() {
            continue;
        }
        // The metadata stream at the m-line's position (SDP and metadata both
        // list every stream), else at its position among audio lines.
        let candidates = [*m_line, k];
        if let Some(i) = candidates
            .iter()
            .copied()
            .find(|i| *i < session.streams.len() && !claimed.contains(i))
        {
            *slot = (Some(i), StreamMatch::Position);
        }
    }

    // Who sends what.
    let senders: Vec<&Participant> = session
        .participants
        .iter()
        .filter(|p| p.send.iter().any(|s| session.stream(s).is_some()))
        .collect();
    let any_send = session.participants.iter().any(|p| !p.send.is_empty());
    let caller_id = senders.first().map(|p| p.id.as_str());

    let mut out = Vec::with_capacity(lines.len());
    for ((m_line, m), (stream_idx, matched_by)) in lines.iter().zip(chosen) {
        let stream = stream_idx.and_then(|i| session.streams.get(i));
        let mut warnings: Vec<String> = Vec::new();
        match (matched_by, stream) {
            (StreamMatch::Position, Some(s)) => warnings.push(format!(
                "SDP label {:?} matches no metadata stream; m-line {} taken as metadata stream {:?} (label {:?}) by position",
                m.label.as_deref().unwrap_or(""),
                m_line,
                s.id,
                s.label
            )),
            (StreamMatch::None, _) => warnings.push(format!(
                "m-line {} (label {:?}) matches no metadata stream",
                m_line,
                m.label.as_deref().unwrap_or("")
            )),
            _ => {}
        }
        let (party, participant, basis) = match stream {
            Some(s) => {
                let sender = session.participants.iter().find(|p| p.send.contains(&s.id));
                match sender {
                    Some(p) => {
                        let party = if Some(p.id.as_str()) == caller_id {
                            Party::Caller
                        } else {
                            Party::Callee
                        };
                        (Some(party), Some(p.id.clone()), PartyBasis::Send)
                    }
                    None if !any_send => {
                        let idx = stream_idx.unwrap_or(usize::MAX);
                        match session.participants.get(idx) {
                            Some(p) => {
                                warnings.push(format!(
                                    "metadata has no send associations; stream {:?} guessed as participant {:?} by order",
                                    s.id, p.id
                                ));
                                let party = if idx == 0 {
                                    Party::Caller
                                } else {
                                    Party::Callee
                                };
                                (
                                    Some(party),
                                    Some(p.id.clone()),
                                    PartyBasis::ParticipantOrder,
                                )
                            }
                            None => {
                                warnings
                                    .push(format!("nobody sends stream {:?}: unknown leg", s.id));
                                (None, None, PartyBasis::Unknown)
                            }
                        }
                    }
                    None => {
                        warnings.push(format!("nobody sends stream {:?}: unknown leg", s.id));
                        (None, None, PartyBasis::Unknown)
                    }
                }
            }
            None => (None, None, PartyBasis::Unknown),
        };
        out.push(StreamAssignment {
            m_line: *m_line,
            label: m.label.clone(),
            party,
            participant,
            stream: stream.map(|s| s.id.clone()),
            matched_by,
            basis,
            warning: (!warnings.is_empty()).then(|| warnings.join("; ")),
        });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// The SDP answer.

/// Codecs the recorder decodes, by encoding name.
const SUPPORTED: [&str; 5] = ["PCMU", "PCMA", "G722", "opus", "GSM"];

/// The SRS's SDP answer to `offer` (RFC 3264, RFC 7866 §7.1.1):
///
/// - m-line *i* is answered on `ports[i]` with `a=recvonly` (`a=inactive`
///   when the offer will not send on it: inactive or recvonly) and the first
///   codec of the offer's list that the recorder decodes (PCMU, PCMA, G722,
///   opus, GSM, L16 at 8/16 kHz), plus the offered telephone-event (same clock rate preferred);
///   `a=label` is kept.
/// - `m=<media> 0` (rejected) for an m-line that is not audio, has no
///   supported codec, was itself rejected, has no port given (missing or 0
///   in `ports`), or is SRTP without a usable key.
/// - SDES (RFC 4568): `crypto[i] = Some((suite, key))` answers with the
///   offered `a=crypto` line of that suite (same tag) and the caller's fresh
///   key (`inline:<key>`, with or without the `inline:` prefix given). An
///   `RTP/SAVP(F)` m-line without such a pair is rejected; an `RTP/AVP`
///   line with optional crypto lines is answered in the clear when no pair
///   is given.
///
/// `o=` uses a sess-id derived from the offer's (stable across re-INVITEs
/// of the same call) and `session_version`, which the caller increments for
/// every new answer in the dialog.
pub fn answer_sdp(
    offer: &SessionDescription,
    local_ip: IpAddr,
    ports: &[u16],
    crypto: &[Option<(&str, &str)>],
    session_version: u64,
) -> String {
    let ip_kind = if local_ip.is_ipv6() { "IP6" } else { "IP4" };
    let sess_id = fnv1a(offer.origin_session.as_deref().unwrap_or("pbx-edge")) >> 1;
    let mut s = String::new();
    let _ = write!(
        s,
        "v=0\r\no=pbx-edge {sess_id} {session_version} IN {ip_kind} {local_ip}\r\ns=pbx-edge\r\nc=IN {ip_kind} {local_ip}\r\nt=0 0\r\n"
    );
    for (i, m) in offer.media.iter().enumerate() {
        let port = ports.get(i).copied().unwrap_or(0);
        let crypto_in = crypto.get(i).copied().flatten();
        // RFC 3264 6.1: a stream the SRC will not send on (hold with
        // a=inactive, or recvonly) is answered inactive, else recvonly.
        let receives = matches!(
            m.effective_direction(offer),
            Direction::SendRecv | Direction::SendOnly
        );
        match answer_media(m, port, crypto_in, receives) {
            Some(text) => s.push_str(&text),
            None => s.push_str(&rejected_media(m)),
        }
    }
    s
}

/// The first codec of `m`'s offer list that the recorder decodes, if any: a
/// line without one is rejected in the answer (and gets no RTP port).
pub fn decodable_codec(m: &MediaDescription) -> Option<RtpMap> {
    m.formats.iter().find_map(|pt| {
        let map = m.codec(*pt)?;
        // L16 only where its decoder goes (8/16 kHz, mono or stereo).
        let l16 = map.is("L16")
            && matches!(map.clock_rate, 8000 | 16000)
            && matches!(map.channels, None | Some(1) | Some(2));
        (l16 || SUPPORTED.iter().any(|n| map.is(n))).then_some(map)
    })
}

fn answer_media(
    m: &MediaDescription,
    port: u16,
    crypto: Option<(&str, &str)>,
    receives: bool,
) -> Option<String> {
    if port == 0 || m.is_rejected() || !m.media.eq_ignore_ascii_case("audio") {
        return None;
    }
    if !m.proto.to_ascii_uppercase().starts_with("RTP/") {
        return None;
    }
    let codec = decodable_codec(m)?;
    let te = m
        .rtpmaps
        .iter()
        .filter(|r| r.is("telephone-event") && m.formats.contains(&r.pt))
        .min_by_key(|r| u8::from(r.clock_rate != codec.clock_rate));
    // SDES: answer the offered line of the caller's suite with its key.
    // RTP/SAVP(F) without a usable key is refused; RTP/AVP with optional
    // a=crypto lines (best-effort SRTP) may also be answered in the clear.
    let offered = crypto.and_then(|(suite, key)| {
        let c = m
            .crypto
            .iter()
            .find(|c| c.suite.eq_ignore_ascii_case(suite))?;
        Some((c, key.strip_prefix("inline:").unwrap_or(key)))
    });
    let crypto_line = offered
        .filter(|(_, key)| !key.trim().is_empty())
        .map(|(c, key)| format!("a=crypto:{} {} inline:{}\r\n", c.tag, c.suite, key.trim()));
    if m.proto.to_ascii_uppercase().contains("SAVP") && crypto_line.is_none() {
        return None;
    }
    let mut s = String::new();
    let _ = write!(s, "m=audio {port} {} {}", m.proto, codec.pt);
    if let Some(te) = te {
        let _ = write!(s, " {}", te.pt);
    }
    s.push_str("\r\n");
    let _ = write!(
        s,
        "a=rtpmap:{} {}/{}",
        codec.pt, codec.encoding, codec.clock_rate
    );
    if let Some(ch) = codec.channels {
        let _ = write!(s, "/{ch}");
    } else if codec.is("opus") {
        s.push_str("/2");
    }
    s.push_str("\r\n");
    if let Some(f) = m.fmtp(codec.pt) {
        let _ = write!(s, "a=fmtp:{} {}\r\n", codec.pt, f);
    }
    if let Some(te) = te {
        let _ = write!(
            s,
            "a=rtpmap:{} telephone-event/{}\r\n",
            te.pt, te.clock_rate
        );
        if let Some(f) = m.fmtp(te.pt) {
            let _ = write!(s, "a=fmtp:{} {}\r\n", te.pt, f);
        }
    }
    if let Some(l) = &m.label {
        let _ = write!(s, "a=label:{l}\r\n");
    }
    if let Some(c) = crypto_line {
        s.push_str(&c);
    }
    s.push_str(if receives {
        "a=recvonly\r\n"
    } else {
        "a=inactive\r\n"
    });
    Some(s)
}

fn rejected_media(m: &MediaDescription) -> String {
    let fmt = match m.formats.first() {
        Some(pt) => pt.to_string(),
        None if m.proto.eq_ignore_ascii_case("udptl") => "t38".to_string(),
        None => "0".to_string(),
    };
    let media = if m.media.is_empty() {
        "audio"
    } else {
        &m.media
    };
    let proto = if m.proto.is_empty() {
        "RTP/AVP"
    } else {
        &m.proto
    };
    let mut s = format!("m={media} 0 {proto} {fmt}\r\n");
    if let Some(l) = &m.label {
        let _ = write!(s, "a=label:{l}\r\n");
    }
    s
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::parse_message;
    use crate::sip::multipart::split_multipart;
    use crate::sip::sdp::Direction;
    use crate::sip::test_support::corpus_dir;
    use std::path::PathBuf;

    fn siprec_file(name: &str) -> Option<Vec<u8>> {
        let path: PathBuf = corpus_dir()?.join("siprec").join(name);
        match std::fs::read(&path) {
            Ok(b) => Some(b),
            Err(_) => {
                eprintln!("note: {} missing, test skipped", path.display());
                None
            }
        }
    }

    /// A body-only corpus file (blank line, then `--boundary`): its parts.
    fn body_parts(name: &str, boundary: &str) -> Option<Vec<Part>> {
        let body = siprec_file(name)?;
        let ct = format!("multipart/mixed;boundary={boundary}");
        Some(split_multipart(&ct, &body).expect("multipart splits"))
    }

    /// Expected participant: (id, aor, name, number, send, recv).
    type P<'a> = (
        &'a str,
        Option<&'a str>,
        Option<&'a str>,
        Option<&'a str>,
        &'a [&'a str],
        &'a [&'a str],
    );

    fn check_participants(rs: &RecordingSession, want: &[P<'_>]) {
        assert_eq!(rs.participants.len(), want.len(), "{:#?}", rs.participants);
        for (p, w) in rs.participants.iter().zip(want) {
            assert_eq!(p.id, w.0);
            assert_eq!(p.aor.as_deref(), w.1, "aor of {}", p.id);
            assert_eq!(p.name.as_deref(), w.2, "name of {}", p.id);
            assert_eq!(p.number.as_deref(), w.3, "number of {}", p.id);
            assert_eq!(p.send, w.4, "send of {}", p.id);
            assert_eq!(p.recv, w.5, "recv of {}", p.id);
        }
    }

    fn check_streams(rs: &RecordingSession, want: &[(&str, &str)]) {
        let got: Vec<(&str, &str)> = rs
            .streams
            .iter()
            .map(|s| (s.id.as_str(), s.label.as_str()))
            .collect();
        assert_eq!(got, want);
    }

    /// Expected assignment per m-line: (m_line, party, participant, basis, match).
    type A<'a> = (
        usize,
        Option<Party>,
        Option<&'a str>,
        PartyBasis,
        StreamMatch,
    );

    fn check_assign(a: &[StreamAssignment], want: &[A<'_>]) {
        assert_eq!(a.len(), want.len(), "{a:#?}");
        for (x, w) in a.iter().zip(want) {
            assert_eq!(x.m_line, w.0);
            assert_eq!(x.party, w.1, "party of m-line {}", x.m_line);
            assert_eq!(x.participant.as_deref(), w.2);
            assert_eq!(x.basis, w.3);
            assert_eq!(x.matched_by, w.4);
            assert_eq!(
                x.warning.is_some(),
                w.3 != PartyBasis::Send || w.4 != StreamMatch::Label,
                "{x:?}"
            );
        }
    }

    const C: Option<Party> = Some(Party::Caller);
    const E: Option<Party> = Some(Party::Callee);

    #[test]
    fn cisco_cube_full_invite() {
        let Some(bytes) = siprec_file("invite_cisco_cube_media_proxy.txt") else {
            return;
        };
        let msg = parse_message(&bytes).expect("INVITE parses");
        assert!(is_siprec_request(&msg));
        let (sdp, meta) = siprec_parts(&msg).expect("siprec parts");
        let rs = meta.expect("metadata present");
        assert_eq!(sdp.media.len(), 2);
        assert_eq!(rs.session_id.as_deref(), Some("sPVtz01IEeqC3dJj6Y+AJA=="));
        assert_eq!(
            rs.call_id_hint.as_deref(),
            Some("0e0960d88013509f86e7ad2d78da208a;remote=4d0de1325c205fa08f77d8d31c1b3a6f")
        );
        assert_eq!(
            rs.associate_time.as_deref(),
            Some("2020-02-13T03:35:19.008Z")
        );
        assert_eq!(rs.data_mode.as_deref(), Some("complete"));
        check_participants(
            &rs,
            &[
                (
                    "sPVtz01IEeqC3tJj6Y+AJA==",
                    Some("sip:3478@8.41.17.71"),
                    None,
                    Some("3478"),
                    &["sPgFxk1IEeqC49Jj6Y+AJA=="],
                    &["sPgFxk1IEeqC5NJj6Y+AJA=="],
                ),
                (
                    "sPVtz01IEeqC39Jj6Y+AJA==",
                    Some("sip:98765@8.41.17.71"),
                    None,
                    Some("98765"),
                    &["sPgFxk1IEeqC5NJj6Y+AJA=="],
                    &["sPgFxk1IEeqC49Jj6Y+AJA=="],
                ),
            ],
        );
        check_streams(
            &rs,
            &[
                ("sPgFxk1IEeqC49Jj6Y+AJA==", "1"),
                ("sPgFxk1IEeqC5NJj6Y+AJA==", "2"),
            ],
        );
        let a = assign_streams(&sdp, &rs).unwrap();
        check_assign(
            &a,
            &[
                (
                    0,
                    C,
                    Some("sPVtz01IEeqC3tJj6Y+AJA=="),
                    PartyBasis::Send,
                    StreamMatch::Label,
                ),
                (
                    1,
                    E,
                    Some("sPVtz01IEeqC39Jj6Y+AJA=="),
                    PartyBasis::Send,
                    StreamMatch::Label,
                ),
            ],
        );
    }

    /// Resolves the SIPp keywords of drachtio's template the way SIPp would.
    fn resolve_sipp(template: &str) -> String {
        let t = template
            .replace("[remote_port]", "5060")
            .replace("[transport]", "UDP")
            .replace("[local_ip_type]", "4")
            .replace("[local_ip]", "192.0.2.10")
            .replace("[local_port]", "5061")
            .replace("[branch]", "z9hG4bK-1-0")
            .replace("[pid]", "77")
            .replace("[call_number]", "1")
            .replace("[call_id]", "1-77@192.0.2.10")
            .replace("[auto_media_port]", "6000");
        let body_len = t.split_once("\n\n").map(|(_, b)| b.len()).unwrap_or(0);
        t.replace("[len]", &body_len.to_string())
    }

    fn check_drachtio_template(text: &str) {
        let msg = parse_message(resolve_sipp(text).as_bytes()).expect("INVITE parses");
        // No Require: siprec, no +sip.src: not RFC 7866, accepted anyway.
        assert!(!is_siprec_request(&msg));
        let (sdp, meta) = siprec_parts(&msg).expect("siprec parts");
        let rs = meta.expect("application/rs-metadata accepted");
        assert_eq!(rs.session_id.as_deref(), Some("XoM2pKdFR8C3eX33qJKcww=="));
        assert_eq!(rs.call_id_hint.as_deref(), Some("hvij5wK4Wx"));
        check_participants(
            &rs,
            &[
                (
                    "omFyWlFETEyFz/KXNLe4iQ==",
                    Some("sip:6001@localhost"),
                    None,
                    Some("6001"),
                    &[],
                    &[],
                ),
                (
                    "fLbZzLMgRXGp+F5w0hOt6w==",
                    Some("sip:101@localhost"),
                    None,
                    Some("101"),
                    &[],
                    &[],
                ),
            ],
        );
        check_streams(
            &rs,
            &[
                ("1LiAtnDVR9m469/0L4bwCA==", "1"),
                ("WJgj5uxeRH+nwUah02dWqg==", "2"),
            ],
        );
        assert_eq!(sdp.media[0].label.as_deref(), Some("a_leg"));
        let a = assign_streams(&sdp, &rs).unwrap();
        check_assign(
            &a,
            &[
                (
                    0,
                    C,
                    Some("omFyWlFETEyFz/KXNLe4iQ=="),
                    PartyBasis::ParticipantOrder,
                    StreamMatch::Position,
                ),
                (
                    1,
                    E,
                    Some("fLbZzLMgRXGp+F5w0hOt6w=="),
                    PartyBasis::ParticipantOrder,
                    StreamMatch::Position,
                ),
            ],
        );
        assert_eq!(a[0].stream.as_deref(), Some("1LiAtnDVR9m469/0L4bwCA=="));
        let w = a[0].warning.as_deref().unwrap();
        assert!(w.contains("a_leg") && w.contains("position"), "{w}");
    }

    #[test]
    fn drachtio_sipp_template_labels_mismatch() {
        let Some(bytes) = siprec_file("invite_drachtio_sipp_template.txt") else {
            return;
        };
        check_drachtio_template(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn drachtio_sipp_scenario_file() {
        let Some(bytes) = siprec_file("drachtio_uac_siprec_pcap.sipp.xml") else {
            return;
        };
        // The scenario itself is XML with a DOCTYPE: refused, never expanded.
        assert_eq!(parse_metadata(&bytes), Err(SiprecError::DtdRefused));
        // Its first <send> is the template's INVITE, 6 spaces indented.
        let text = String::from_utf8_lossy(&bytes);
        let cdata = text
            .split("<![CDATA[")
            .nth(1)
            .and_then(|s| s.split("]]>").next())
            .unwrap();
        let dedented: Vec<&str> = cdata
            .lines()
            .map(|l| l.strip_prefix("      ").unwrap_or(l))
            .collect();
        let invite = dedented.join("\n");
        check_drachtio_template(invite.trim_start_matches('\n'));
    }

    #[test]
    fn acme_body_send_inside_participant() {
        let Some(parts) = body_parts("body_drachtio_acme-siprec-offer.txt", "unique-boundary-1")
        else {
            return;
        };
        let (sdp, meta) = parts_to_siprec(&parts).unwrap();
        let rs = meta.unwrap();
        assert_eq!(rs.session_id.as_deref(), Some("AavRXwIIQj1Q39eJulTipQ=="));
        assert_eq!(rs.associate_time.as_deref(), Some("2019-03-09T16:50:20"));
        check_participants(
            &rs,
            &[
                (
                    "fSD3PFErSjNTHLDiXCELjw==",
                    Some("sip:9000@192.168.50.102"),
                    Some("9000"),
                    Some("9000"),
                    &["Q4O8SGLQSilXHUGQX2zd8Q=="],
                    &[],
                ),
                (
                    "EbccNyypRlFYXTm4iw8hxw==",
                    Some("sip:1002@192.168.50.10"),
                    Some("1002"),
                    Some("1002"),
                    &["l1NyQy8ORSlouUj2G3UE/A=="],
                    &[],
                ),
            ],
        );
        check_streams(
            &rs,
            &[
                ("Q4O8SGLQSilXHUGQX2zd8Q==", "16777227"),
                ("l1NyQy8ORSlouUj2G3UE/A==", "16777228"),
            ],
        );
        assert_eq!(
            rs.streams[0].session.as_deref(),
            Some("AavRXwIIQj1Q39eJulTipQ==")
        );
        let a = assign_streams(&sdp, &rs).unwrap();
        check_assign(
            &a,
            &[
                (
                    0,
                    C,
                    Some("fSD3PFErSjNTHLDiXCELjw=="),
                    PartyBasis::Send,
                    StreamMatch::Label,
                ),
                (
                    1,
                    E,
                    Some("EbccNyypRlFYXTm4iw8hxw=="),
                    PartyBasis::Send,
                    StreamMatch::Label,
                ),
            ],
        );
    }

    #[test]
    fn cisco_body_with_gtd_part() {
        let Some(parts) = body_parts("body_drachtio_cisco-siprec-offer.txt", "uniqueBoundary")
        else {
            return;
        };
        assert_eq!(parts.len(), 3);
        let (sdp, meta) = parts_to_siprec(&parts).unwrap();
        let rs = meta.unwrap();
        assert_eq!(rs.session_id.as_deref(), Some("kQNhKFdEEeeJ9tD/VsPGWA=="));
        assert_eq!(
            rs.call_id_hint.as_deref(),
            Some("e9fffff2020a598b86962867715db0cf;remote=cd0f7093d62c5f0697098fd69a4aa57b")
        );
        check_participants(
            &rs,
            &[
                (
                    "kQNhKFdEEeeJ99D/VsPGWA==",
                    Some("sip:7301@35.162.237.204"),
                    None,
                    Some("7301"),
                    &["kQOH5VdEEeeJ/ND/VsPGWA=="],
                    &["kQOH5VdEEeeJ/dD/VsPGWA=="],
                ),
                (
                    "kQNhKFdEEeeJ+ND/VsPGWA==",
                    Some("sip:7300@35.162.237.204"),
                    Some("7300"),
                    Some("7300"),
                    &["kQOH5VdEEeeJ/dD/VsPGWA=="],
                    &["kQOH5VdEEeeJ/ND/VsPGWA=="],
                ),
            ],
        );
        check_streams(
            &rs,
            &[
                ("kQOH5VdEEeeJ/ND/VsPGWA==", "1"),
                ("kQOH5VdEEeeJ/dD/VsPGWA==", "2"),
            ],
        );
        let a = assign_streams(&sdp, &rs).unwrap();
        check_assign(
            &a,
            &[
                (
                    0,
                    C,
                    Some("kQNhKFdEEeeJ99D/VsPGWA=="),
                    PartyBasis::Send,
                    StreamMatch::Label,
                ),
                (
                    1,
                    E,
                    Some("kQNhKFdEEeeJ+ND/VsPGWA=="),
                    PartyBasis::Send,
                    StreamMatch::Label,
                ),
            ],
        );
    }

    #[test]
    fn sonus_tns_prefix_calldata_and_crossed_labels() {
        let Some(parts) = body_parts(
            "body_drachtio_sonus-siprec-offer.txt",
            "sonus-content-delim",
        ) else {
            return;
        };
        let (sdp, meta) = parts_to_siprec(&parts).unwrap();
        let rs = meta.unwrap();
        assert_eq!(rs.group_id.as_deref(), Some("MTQ3YzA3YzAtNjdkNy0xMA=="));
        assert_eq!(rs.session_id.as_deref(), Some("MTQ3YzA3YzEtNjdkNy0xMA=="));
        assert_eq!(
            rs.call_id_hint.as_deref(),
            Some("2da553f7-a48b-1235-d6a2-5254003a4988")
        );
        assert_eq!(
            rs.from_hdr.as_deref(),
            Some("\"Extension 8500\" <sip:2249888500@172.16.198.55>;tag=SerryvK5ej0jc")
        );
        assert_eq!(
            rs.to_hdr.as_deref(),
            Some("<sip:2249888012@172.16.195.72>;tag=gK00801b2d")
        );
        assert_eq!(rs.associate_time.as_deref(), Some("1970-05-13T03:29:05Z"));
        check_participants(
            &rs,
            &[
                (
                    "MTQ3YzA3YzItNjdkNy0xMA==",
                    Some("sip:2249888500@172.16.198.55"),
                    Some("Extension 8500"),
                    Some("2249888500"),
                    &["MTQ3YzA3YzUtNjdkNy0xMA=="],
                    &["MTQ3YzA3YzQtNjdkNy0xMA=="],
                ),
                (
                    "MTQ3YzA3YzMtNjdkNy0xMA==",
                    Some("sip:2249888012@172.16.195.72"),
                    None,
                    Some("2249888012"),
                    &["MTQ3YzA3YzQtNjdkNy0xMA=="],
                    &["MTQ3YzA3YzUtNjdkNy0xMA=="],
                ),
            ],
        );
        check_streams(
            &rs,
            &[
                ("MTQ3YzA3YzQtNjdkNy0xMA==", "1"),
                ("MTQ3YzA3YzUtNjdkNy0xMA==", "2"),
            ],
        );
        // The caller (first participant, "Extension 8500" = fromhdr) sends the
        // stream labelled 2, i.e. the *second* m-line: order says nothing.
        let a = assign_streams(&sdp, &rs).unwrap();
        check_assign(
            &a,
            &[
                (
                    0,
                    E,
                    Some("MTQ3YzA3YzMtNjdkNy0xMA=="),
                    PartyBasis::Send,
                    StreamMatch::Label,
                ),
                (
                    1,
                    C,
                    Some("MTQ3YzA3YzItNjdkNy0xMA=="),
                    PartyBasis::Send,
                    StreamMatch::Label,
                ),
            ],
        );
    }

    #[test]
    fn broadworks_datamode_capitalised() {
        let Some(parts) = body_parts("body_drachtio_broadworks-offer-2.txt", "foobar") else {
            return;
        };
        let (sdp, meta) = parts_to_siprec(&parts).unwrap();
        let rs = meta.unwrap();
        assert_eq!(rs.data_mode.as_deref(), Some("complete"));
        assert_eq!(rs.session_id.as_deref(), Some("00FA0800705D4C5DCAAC41"));
        assert_eq!(rs.associate_time.as_deref(), Some("2019-11-12T15:57:37"));
        check_participants(
            &rs,
            &[
                (
                    "9a2de728ba0bc348db1e",
                    Some("sip:9878942259@212.188.68.145"),
                    None,
                    Some("9878942259"),
                    &["e6988909e02ca808ec0a"],
                    &[],
                ),
                (
                    "abcdef12345678901234",
                    Some("sip:ASBCE@asbce.com"),
                    None,
                    None,
                    &["261ddd3615629f108092"],
                    &[],
                ),
            ],
        );
        check_streams(
            &rs,
            &[
                ("e6988909e02ca808ec0a", "10"),
                ("261ddd3615629f108092", "20"),
            ],
        );
        let a = assign_streams(&sdp, &rs).unwrap();
        check_assign(
            &a,
            &[
                (
                    0,
                    C,
                    Some("9a2de728ba0bc348db1e"),
                    PartyBasis::Send,
                    StreamMatch::Label,
                ),
                (
                    1,
                    E,
                    Some("abcdef12345678901234"),
                    PartyBasis::Send,
                    StreamMatch::Label,
                ),
            ],
        );
        // The answer keeps PCMA + telephone-event PT 97 and the labels.
        let ans = answer_sdp(&sdp, "10.0.0.5".parse().unwrap(), &[20000, 20002], &[], 1);
        let parsed = parse_sdp(&ans).unwrap();
        assert_eq!(parsed.media[0].formats, vec![8, 97]);
        assert_eq!(parsed.media[0].telephone_event_pt(), Some(97));
        assert_eq!(parsed.media[1].label.as_deref(), Some("20"));
    }

    #[test]
    fn every_corpus_file_is_handled() {
        // Each file either yields metadata or a clean error: no panic.
        let Some(dir) = corpus_dir() else { return };
        let Ok(entries) = std::fs::read_dir(dir.join("siprec")) else {
            return;
        };
        let mut seen = 0;
        for e in entries.flatten() {
            let bytes = std::fs::read(e.path()).unwrap();
            let _ = parse_metadata(&bytes);
            if let Ok(msg) = parse_message(&bytes) {
                let _ = siprec_parts(&msg);
            }
            seen += 1;
        }
        assert!(seen >= 7, "expected the 7 SIPREC corpus files, saw {seen}");
    }

    // -- metadata edge cases ------------------------------------------------

    #[test]
    fn dtd_and_entities_refused() {
        let bomb = br#"<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>
<recording xmlns="urn:ietf:params:xml:ns:recording:1"><datamode>&lol2;</datamode></recording>"#;
        assert_eq!(parse_metadata(bomb), Err(SiprecError::DtdRefused));
        let xxe =
            br#"<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><recording>&x;</recording>"#;
        assert_eq!(parse_metadata(xxe), Err(SiprecError::DtdRefused));
        // An entity never declared (no DTD) is an error, not an expansion.
        let undefined = br#"<recording><datamode>&x;</datamode></recording>"#;
        assert!(matches!(
            parse_metadata(undefined),
            Err(SiprecError::Xml(_))
        ));
        // Predefined entities and character references are decoded.
        let ok = br#"<recording><participant id="p&amp;1"><nameID aor="sip:1@h"><name>A &lt;&#66;&#x43;&gt;</name></nameID></participant></recording>"#;
        let rs = parse_metadata(ok).unwrap();
        assert_eq!(rs.participants[0].id, "p&1");
        assert_eq!(rs.participants[0].name.as_deref(), Some("A <BC>"));
    }

    #[test]
    fn limits() {
        let big = vec![b' '; MAX_METADATA_LEN + 1];
        assert_eq!(
            parse_metadata(&big),
            Err(SiprecError::TooLarge(MAX_METADATA_LEN + 1))
        );
        let mut many = String::from("<recording>");
        for i in 0..=MAX_PARTICIPANTS {
            let _ = write!(many, "<participant participant_id=\"p{i}\"/>");
        }
        many.push_str("</recording>");
        assert_eq!(
            parse_metadata(many.as_bytes()),
            Err(SiprecError::TooManyParticipants)
        );
        let mut streams = String::from("<recording>");
        for i in 0..=MAX_STREAMS {
            let _ = write!(
                streams,
                "<stream stream_id=\"s{i}\"><label>{i}</label></stream>"
            );
        }
        streams.push_str("</recording>");
        assert_eq!(
            parse_metadata(streams.as_bytes()),
            Err(SiprecError::TooManyStreams)
        );
        let deep = format!(
            "<recording>{}{}</recording>",
            "<a>".repeat(40),
            "</a>".repeat(40)
        );
        assert_eq!(parse_metadata(deep.as_bytes()), Err(SiprecError::TooDeep));
        assert!(matches!(
            parse_metadata(b"<recording><participant>"),
            Err(SiprecError::Xml(_))
        ));
        assert_eq!(
            parse_metadata(b"<other/>"),
            Err(SiprecError::NotRecording("other".into()))
        );
        assert_eq!(parse_metadata(b"  "), Err(SiprecError::Empty));
        assert!(matches!(
            parse_metadata(b"<recording></participant></recording>"),
            Err(SiprecError::Xml(_))
        ));
    }

    #[test]
    fn old_draft_aor_element_and_tel_numbers() {
        let xml = br#"<recording xmlns='urn:ietf:params:xml:ns:recording'>
  <participant id="a"><aor>tel:+1-555-123-4567;phone-context=x</aor><name>Alice</name>
    <send>s1</send><recv>s2</recv></participant>
  <participant id="b"><nameID aor="sip:+44%2020@example.com"/><send>s2</send></participant>
  <stream id="s1"><label>L1</label></stream>
  <stream id="s2"><label>L2</label></stream>
</recording>"#;
        let rs = parse_metadata(xml).unwrap();
        let a = &rs.participants[0];
        assert_eq!(
            a.aor.as_deref(),
            Some("tel:+1-555-123-4567;phone-context=x")
        );
        assert_eq!(a.number.as_deref(), Some("+15551234567"));
        assert_eq!(a.name.as_deref(), Some("Alice"));
        assert_eq!(a.send, vec!["s1"]);
        assert_eq!(a.recv, vec!["s2"]);
        assert_eq!(rs.participants[1].number.as_deref(), Some("+4420"));
        assert_eq!(number_of("sip:alice@example.com"), None);
        assert_eq!(number_of("sip:1001@pbx"), Some("1001".into()));
    }

    #[test]
    fn assoc_for_undeclared_participant_and_duplicates_merge() {
        let xml = br#"<recording>
  <participant participant_id="p1"><nameID aor="sip:1@h"/></participant>
  <stream stream_id="s1"><label>1</label></stream>
  <participantstreamassoc participant_id="p2"><send>s1</send></participantstreamassoc>
  <participantstreamassoc participant_id="p1"><send>s9</send><send>s9</send></participantstreamassoc>
  <participant participant_id="p1"><nameID aor="sip:1@h"><name>One</name></nameID></participant>
</recording>"#;
        let rs = parse_metadata(xml).unwrap();
        assert_eq!(rs.participants.len(), 2);
        assert_eq!(rs.participants[0].name.as_deref(), Some("One"));
        assert_eq!(rs.participants[0].send, vec!["s9"]);
        assert_eq!(rs.participants[1].id, "p2");
        assert_eq!(rs.participants[1].send, vec!["s1"]);
    }

    fn sdp_with_labels(labels: &[&str]) -> SessionDescription {
        let mut s = String::from(
            "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n",
        );
        for (i, l) in labels.iter().enumerate() {
            let _ = write!(
                s,
                "m=audio {} RTP/AVP 0\r\na=sendonly\r\na=label:{l}\r\n",
                4000 + 2 * i
            );
        }
        parse_sdp(&s).unwrap()
    }

    #[test]
    fn conference_first_sender_is_caller_all_others_callee() {
        let xml = br#"<recording>
  <participant participant_id="silent"><nameID aor="sip:0@h"/></participant>
  <participant participant_id="b"/><participant participant_id="a"/><participant participant_id="c"/>
  <stream stream_id="sa"><label>1</label></stream>
  <stream stream_id="sb"><label>2</label></stream>
  <stream stream_id="sc"><label>3</label></stream>
  <stream stream_id="sx"><label>4</label></stream>
  <participantstreamassoc participant_id="a"><send>sa</send></participantstreamassoc>
  <participantstreamassoc participant_id="b"><send>sb</send></participantstreamassoc>
  <participantstreamassoc participant_id="c"><send>sc</send></participantstreamassoc>
</recording>"#;
        let rs = parse_metadata(xml).unwrap();
        let sdp = sdp_with_labels(&["1", "2", "3", "4"]);
        let a = assign_streams(&sdp, &rs).unwrap();
        // "b" is the first *sending* participant in metadata order.
        let parties: Vec<Option<Party>> = a.iter().map(|x| x.party).collect();
        assert_eq!(parties, vec![E, C, E, None]);
        assert_eq!(a[3].basis, PartyBasis::Unknown);
        assert!(a[3].warning.as_deref().unwrap().contains("unknown leg"));
    }

    #[test]
    fn partial_label_match_and_unmatched_lines() {
        let xml = br#"<recording>
  <participant participant_id="a"><send>s1</send></participant>
  <participant participant_id="b"><send>s2</send></participant>
  <stream stream_id="s1"><label>x</label></stream>
  <stream stream_id="s2"><label>y</label></stream>
</recording>"#;
        let rs = parse_metadata(xml).unwrap();
        // The second line's label matches s1. The first line's fallback is
        // the stream at its own position (0 = s1), already claimed: it stays
        // unmatched rather than guessing further.
        let sdp = sdp_with_labels(&["zzz", "x"]);
        let a = assign_streams(&sdp, &rs).unwrap();
        assert_eq!(a[1].party, C);
        assert_eq!(a[1].matched_by, StreamMatch::Label);
        assert_eq!(a[0].matched_by, StreamMatch::None);
        assert_eq!(a[0].party, None);
        // Swapped labels: decided by label, not order.
        let sdp = sdp_with_labels(&["y", "x"]);
        let a = assign_streams(&sdp, &rs).unwrap();
        assert_eq!((a[0].party, a[1].party), (E, C));
        // No audio at all.
        let none = parse_sdp("v=0\r\nm=audio 0 RTP/AVP 0\r\n").unwrap();
        assert_eq!(assign_streams(&none, &rs), Err(SiprecError::NoAudio));
    }

    #[test]
    fn siprec_parts_variants() {
        let plain = "INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\nContent-Type: application/sdp\r\n\r\nv=0\r\nm=audio 4000 RTP/AVP 0\r\n";
        let msg = parse_message(plain.as_bytes()).unwrap();
        let (sdp, meta) = siprec_parts(&msg).unwrap();
        assert_eq!(sdp.media.len(), 1);
        assert!(meta.is_none());
        let no_body = "BYE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:a@b>;tag=2\r\nCall-ID: c1\r\nCSeq: 2 BYE\r\n\r\n";
        let msg = parse_message(no_body.as_bytes()).unwrap();
        assert_eq!(siprec_parts(&msg), Err(SiprecError::NoSdp));
        // Metadata found by disposition even with a generic XML type.
        let mp = "INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\nContent-Type: multipart/mixed;boundary=B\r\n\r\n--B\r\nContent-Type: application/sdp\r\n\r\nv=0\r\nm=audio 4000 RTP/AVP 0\r\n\r\n--B\r\nContent-Type: application/xml\r\nContent-Disposition: recording-session\r\n\r\n<recording><stream id='s'><label>1</label></stream></recording>\r\n--B--\r\n";
        let msg = parse_message(mp.as_bytes()).unwrap();
        let (_, meta) = siprec_parts(&msg).unwrap();
        assert_eq!(meta.unwrap().streams[0].label, "1");
    }

    // -- SDP answer ---------------------------------------------------------

    #[test]
    fn answer_sdp_takes_gsm() {
        let offer = parse_sdp(
            "v=0\r\no=SRC 42 7 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
             m=audio 4000 RTP/AVP 18 3\r\na=label:1\r\na=sendonly\r\n",
        )
        .unwrap();
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        let a = parse_sdp(&answer_sdp(&offer, ip, &[30000], &[], 1)).unwrap();
        assert_eq!(
            (a.media[0].port, a.media[0].formats.clone()),
            (30000, vec![3])
        );
    }

    #[test]
    fn held_streams_are_answered_inactive() {
        // RFC 3264 6.1: inactive → inactive; recvonly (the SRC will not
        // send) → inactive; sendonly or no attribute → recvonly; a
        // session-level a=inactive holds every line without its own.
        let offer = parse_sdp(
            "v=0\r\no=SRC 1 2 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\na=inactive\r\n\
             m=audio 4000 RTP/AVP 0\r\na=inactive\r\n\
             m=audio 4002 RTP/AVP 0\r\na=recvonly\r\n\
             m=audio 4004 RTP/AVP 0\r\na=sendonly\r\n\
             m=audio 4006 RTP/AVP 0\r\n",
        )
        .unwrap();
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        let a = parse_sdp(&answer_sdp(&offer, ip, &[1, 2, 3, 4], &[], 1)).unwrap();
        let dirs: Vec<_> = a.media.iter().map(|m| m.direction).collect();
        use Direction::*;
        assert_eq!(
            dirs,
            vec![
                Some(Inactive),
                Some(Inactive),
                Some(RecvOnly),
                Some(Inactive)
            ]
        );
        assert!(
            a.media.iter().all(|m| !m.is_rejected()),
            "held, not removed"
        );
        // L16 where the decoder goes (8/16 kHz), not at 44.1 kHz.
        let offer = parse_sdp(
            "v=0\r\no=SRC 1 2 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
             m=audio 4000 RTP/AVP 96\r\na=rtpmap:96 L16/16000\r\n\
             m=audio 4002 RTP/AVP 97\r\na=rtpmap:97 L16/44100/2\r\n",
        )
        .unwrap();
        let a = parse_sdp(&answer_sdp(&offer, ip, &[1, 2], &[], 1)).unwrap();
        assert_eq!(a.media[0].formats, vec![96]);
        assert!(!a.media[0].is_rejected() && a.media[1].is_rejected());
    }

    #[test]
    fn answer_sdp_recvonly_ports_codecs() {
        let offer = parse_sdp(
            "v=0\r\no=SRC 42 7 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
             m=audio 4000 RTP/AVP 18 8 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=label:1\r\na=sendonly\r\n\
             m=audio 4002 RTP/AVP 111 0 102 101\r\na=rtpmap:111 opus/48000/2\r\na=fmtp:111 useinbandfec=1\r\na=rtpmap:102 telephone-event/48000\r\na=rtpmap:101 telephone-event/8000\r\na=label:2\r\na=sendonly\r\n\
             m=video 4004 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=label:3\r\n\
             m=audio 4006 RTP/AVP 18\r\na=label:4\r\n\
             m=audio 4008 RTP/AVP 0\r\na=label:5\r\n",
        )
        .unwrap();
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        let ans = answer_sdp(&offer, ip, &[30000, 30002, 30004, 30006], &[], 3);
        let a = parse_sdp(&ans).expect("answer parses");
        assert_eq!(a.origin_version, Some(3));
        assert_eq!(a.connection, Some(ip));
        assert_eq!(
            a.media.len(),
            offer.media.len(),
            "one answer line per offer line"
        );
        // 1: G.729 skipped, PCMA chosen, te kept.
        let m = &a.media[0];
        assert_eq!((m.port, m.formats.clone()), (30000, vec![8, 101]));
        assert_eq!(m.direction, Some(Direction::RecvOnly));
        assert_eq!(m.label.as_deref(), Some("1"));
        assert_eq!(m.fmtp(101), Some("0-16"));
        // 2: opus with the 48 kHz telephone-event.
        let m = &a.media[1];
        assert_eq!((m.port, m.formats.clone()), (30002, vec![111, 102]));
        assert!(m.rtpmap(111).unwrap().is("opus"));
        assert_eq!(m.rtpmap(111).unwrap().channels, Some(2));
        assert_eq!(m.fmtp(111), Some("useinbandfec=1"));
        assert_eq!(m.direction, Some(Direction::RecvOnly));
        // 3: video rejected; 4: G.729 only, rejected; 5: no port given.
        assert!(a.media[2].is_rejected());
        assert_eq!(a.media[2].media, "video");
        assert!(a.media[3].is_rejected());
        assert!(a.media[4].is_rejected());
        assert_eq!(a.media[4].label.as_deref(), Some("5"));
        // The sess-id stays when the same offer is answered again.
        let again = parse_sdp(&answer_sdp(&offer, ip, &[1, 2], &[], 4)).unwrap();
        assert_eq!(again.origin_session, a.origin_session);
        assert_eq!(again.origin_version, Some(4));
    }

    #[test]
    fn answer_sdp_sdes() {
        let offer = parse_sdp(
            "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
             m=audio 4000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^20|1:32\r\na=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:NzB4d1BINUAvLEw6UzF3WSJ+PSdFcGdUJShpX1Zj\r\na=label:1\r\n\
             m=audio 4002 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\na=label:2\r\n\
             m=audio 4004 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\na=label:3\r\n\
             m=audio 4006 RTP/AVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\na=label:4\r\n",
        )
        .unwrap();
        let ip: IpAddr = "2001:db8::5".parse().unwrap();
        let key = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNk";
        let ans = answer_sdp(
            &offer,
            ip,
            &[40000, 40002, 40004, 40006],
            &[
                Some(("AES_CM_128_HMAC_SHA1_32", key)),
                None,
                Some(("F8_128_HMAC_SHA1_80", key)),
            ],
            1,
        );
        assert!(ans.contains("c=IN IP6 2001:db8::5"));
        let a = parse_sdp(&ans).unwrap();
        let m = &a.media[0];
        assert_eq!(m.proto, "RTP/SAVP");
        assert_eq!(m.crypto.len(), 1);
        assert_eq!(m.crypto[0].tag, 2);
        assert_eq!(m.crypto[0].suite, "AES_CM_128_HMAC_SHA1_32");
        assert_eq!(m.crypto[0].key_params, format!("inline:{key}"));
        assert_eq!(m.direction, Some(Direction::RecvOnly));
        // No key given, or a suite that was not offered: rejected.
        assert!(a.media[1].is_rejected());
        assert!(a.media[2].is_rejected());
        // Best-effort SRTP offered in RTP/AVP: answered in the clear.
        assert_eq!((a.media[3].port, a.media[3].crypto.len()), (40006, 0));
        assert_eq!(a.media[3].proto, "RTP/AVP");
    }

    proptest::proptest! {
        #[test]
        fn metadata_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
            let _ = parse_metadata(&bytes);
        }

        #[test]
        fn metadata_from_xml_pieces(pieces in proptest::collection::vec(0usize..16, 0..64)) {
            const P: [&str; 16] = [
                "<recording>", "</recording>", "<participant participant_id='p'>", "</participant>",
                "<stream stream_id='s'>", "</stream>", "<label>1</label>", "<send>s</send>",
                "<participantstreamassoc id='p'>", "</participantstreamassoc>", "&amp;", "&#0;",
                "<nameID aor='sip:1@h'/>", "<![CDATA[x]]>", "<!DOCTYPE x>", "<tns:recording xmlns:tns='u'>",
            ];
            let doc: String = pieces.iter().map(|i| P[*i]).collect();
            if let Ok(rs) = parse_metadata(doc.as_bytes()) {
                proptest::prop_assert!(rs.participants.len() <= MAX_PARTICIPANTS);
                let sdp = sdp_with_labels(&["1", "2"]);
                let _ = assign_streams(&sdp, &rs);
            }
        }
    }
}
