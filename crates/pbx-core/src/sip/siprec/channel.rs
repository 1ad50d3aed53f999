//! The channel rule (CONTRACT §3): SDP offer + metadata → which m-line
//! carries whose voice.
//!
//! In: a [`SessionDescription`] and a [`RecordingSession`]. Out: one
//! [`StreamAssignment`] per m-line. Promises: decided from the metadata
//! only, never from packet arrival (see the parent module's "Channel
//! rule"); label mismatches and order-based guesses are said in the
//! assignment.

use super::*;

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
