//! Recording metadata (RFC 7865 and the field dialects listed in the
//! parent module) → [`RecordingSession`].
//!
//! In: the metadata XML, as a [`super::xml::Tree`]. Out: participants
//! (name, number, AoR, which streams they send and receive), streams
//! (id, label) and the session's call ids. Promises: never panics; more
//! than [`super::MAX_PARTICIPANTS`] participants or [`super::MAX_STREAMS`]
//! streams is refused; numbers are taken from the AoR user part only.

use super::*;

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
                    // Room for one more, not a doubling: the metadata is
                    // kept for the whole call.
                    rs.streams.reserve_exact(1);
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
pub(super) fn participant_entry<'a>(
    participants: &'a mut Vec<Participant>,
    id: &str,
) -> Result<&'a mut Participant, SiprecError> {
    let pos = match participants.iter().position(|p| p.id == id) {
        Some(pos) => pos,
        None => {
            if participants.len() >= MAX_PARTICIPANTS {
                return Err(SiprecError::TooManyParticipants);
            }
            participants.reserve_exact(1);
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

pub(super) fn fill_participant(tree: &Tree, idx: usize, el: &Element, p: &mut Participant) {
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
pub(super) fn add_assoc(tree: &Tree, idx: usize, p: &mut Participant) -> Result<(), SiprecError> {
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
        list.reserve_exact(1);
        list.push(id);
    }
    Ok(())
}

/// `sip:` prepended to a bare `user@host` (Sonus writes AORs without scheme).
pub(super) fn normalize_aor(aor: &str) -> String {
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

pub(super) fn percent_decode_lossy(s: &str) -> String {
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
