//! The recording document: `<id>.json` (CONTRACT §3) as one typed value.
//!
//! In: what a source knows of a finished call (the engine's [`CallMeta`], a
//! crash sidecar, or a folder conversion's file name and CDR row).
//! Out: [`RecordingDoc`], serialised by `write_json` (in [`super`]) only.
//!
//! Promises:
//! - Every recording, whatever its source, carries the CONTRACT §3 fields
//!   (`schema` … `dtmf`) with the same types; what only some sources know
//!   is grouped in optional parts: [`CallFields`] (live calls: end reason,
//!   media start, recorded Call-ID) and [`FolderFields`] (PBX files: CDR,
//!   DID, mono mix, source files). A part a source does not know is absent
//!   from the file, never filled with guesses.
//! - Keys are written in sorted order (the document goes through
//!   `serde_json::Value`), as they always were.

use std::collections::BTreeMap;

use pbx_core::call::meta::{ChannelMeta, Dtmf};
use pbx_core::call::{CallMeta, PartyInfo, Pause};
use pbx_core::time::Timestamp;
use serde::{Deserialize, Serialize};

use super::roles::{ChannelRole, RoleRules};

/// The recording JSON schema version (CONTRACT §3).
pub const SCHEMA: &str = "pbx-edge.recording/1";

/// `<id>.json` of a recording pair.
#[derive(Debug, Clone, Serialize)]
pub struct RecordingDoc {
    pub schema: &'static str,
    pub recording_id: String,
    pub agent_id: String,
    /// "siprec" | "sniff" | "pcap" | "folder"
    pub source: String,
    /// The SIP Call-ID, or the PBX's unique id for folder sources; null
    /// only for a crash recording whose start sidecar was lost.
    pub call_id: Option<String>,
    /// null only for a crash recording whose start sidecar was lost.
    pub from: Option<DocParty>,
    pub to: Option<DocParty>,
    /// "inbound" | "outbound" | "internal" | "unknown"
    pub direction: String,
    pub started_at: Option<Timestamp>,
    pub answered_at: Option<Timestamp>,
    pub ended_at: Option<Timestamp>,
    pub duration_ms: i64,
    pub audio: DocAudio,
    pub channels: DocChannels,
    pub dtmf: Vec<Dtmf>,
    /// The call was cut off (a crash, a stop): the audio kept is complete
    /// up to where it ends.
    pub truncated: bool,
    pub warnings: Vec<String>,
    /// Known for calls recorded live (engine and crash recovery).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub call: Option<CallFields>,
    /// Known for recordings converted from a PBX's files.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub folder: Option<FolderFields>,
    /// Identifiers the PBX gave the call (`asterisk_uniqueid`, `cisco_guid`,
    /// `avaya_ucid`, `recorded_call_id`, …); absent when none is known.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub ids: BTreeMap<String, String>,
    /// Who is who ([`RecordingDoc::assign_roles`]), written into
    /// `channels[i].role` / `.extension`.
    #[serde(skip)]
    pub roles: Option<[ChannelRole; 2]>,
}

/// A party of the call (`from`, `to`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocParty {
    pub number: String,
    /// Written `""` when unknown (CONTRACT §3 shows a string, as live
    /// calls without a display name write it).
    #[serde(serialize_with = "name_or_empty")]
    pub name: Option<String>,
    /// The SIP URI (live calls only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
}

fn name_or_empty<S: serde::Serializer>(name: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(name.as_deref().unwrap_or(""))
}

impl From<&PartyInfo> for DocParty {
    fn from(p: &PartyInfo) -> Self {
        DocParty {
            number: p.number.clone(),
            name: Some(p.name.clone()),
            uri: Some(p.uri.clone()),
        }
    }
}

/// `audio`: the WAV of the pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DocAudio {
    pub format: &'static str,
    pub sample_rate: u32,
    pub channels: u16,
    pub bytes: u64,
    pub sha256: String,
}

impl DocAudio {
    /// A two-channel WAV of `bytes` bytes with this hash.
    pub fn wav(sample_rate: u32, bytes: u64, sha256: String) -> Self {
        DocAudio {
            format: "wav",
            sample_rate,
            channels: 2,
            bytes,
            sha256,
        }
    }
}

/// `channels`: the engine's measured statistics, or the summary a source
/// without packets gives (codec only, zero counts).
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum DocChannels {
    Measured(Vec<ChannelMeta>),
    Summary(Vec<ChannelSummary>),
}

impl DocChannels {
    /// Caller on channel 0, callee on 1, with these codecs and no packets.
    pub fn summary(codecs: [&str; 2]) -> Self {
        DocChannels::Summary(vec![
            ChannelSummary::new(0, "caller", codecs[0]),
            ChannelSummary::new(1, "callee", codecs[1]),
        ])
    }

    /// The one channel of a mono mix (CONTRACT §3 `mixed_mono`): both
    /// parties, `party: "mixed"`.
    pub fn mixed(codec: &str) -> Self {
        DocChannels::Summary(vec![ChannelSummary::new(0, "mixed", codec)])
    }
}

/// One entry of `channels` without packet statistics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChannelSummary {
    pub index: usize,
    pub party: &'static str,
    pub codec: String,
    pub packets: u64,
    pub lost: u64,
}

impl ChannelSummary {
    fn new(index: usize, party: &'static str, codec: &str) -> Self {
        ChannelSummary {
            index,
            party,
            codec: codec.to_string(),
            packets: 0,
            lost: 0,
        }
    }
}

/// The fields of a call recorded live.
#[derive(Debug, Clone, Serialize)]
pub struct CallFields {
    /// The recorded call's own Call-ID (SIPREC metadata), null if unknown.
    pub recorded_call_id: Option<String>,
    /// Time zero of the WAV (first RTP packet), null if unknown.
    pub media_started_at: Option<Timestamp>,
    /// `bye`, `rtp_timeout`, `crash`, ... (the engine's `EndReason`).
    pub end_reason: String,
    /// Whether the caller was told by signalling (absent after a crash).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller_known: Option<bool>,
    /// Stretches where recording was paused (CONTRACT §3 `pauses`): both
    /// channels exact zeros there, the timeline kept. Absent after a crash
    /// (the audio on disk was muted before it was written; where is not known).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pauses: Option<Vec<Pause>>,
    /// The WAV has one channel: the one stream carried both parties (a
    /// SIPREC session's single, mixed stream; CONTRACT §3). Absent otherwise.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub mixed_mono: bool,
}

/// The fields of a recording converted from a PBX's files.
#[derive(Debug, Clone, Serialize)]
pub struct FolderFields {
    /// The WAV has one channel holding a mix of both parties
    /// (`audio.channels: 1`, `channels` lists one entry, party `mixed`).
    pub mixed_mono: bool,
    /// The CDR's disposition (null without a CDR row).
    pub disposition: Option<String>,
    /// The dialled DID (null when the CDR has none).
    pub did: Option<String>,
    /// Whether a CDR row was found for the recording.
    pub cdr: bool,
    /// The recording type of the file name (`in`, `out`, `external`, ...).
    pub pbx_type: Option<String>,
    /// The PBX files the recording was made from.
    pub source_files: Vec<String>,
    /// Split legs of different lengths: by how much (ms) the shorter one
    /// was padded with silence (at its start or end: `leg_align`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub legs_differ_ms: Option<u64>,
    /// How split legs of different lengths were lined up: `"end"`, `"start"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leg_align: Option<&'static str>,
}

impl RecordingDoc {
    /// The document of a call the engine recorded to its end.
    pub(crate) fn of_call(
        meta: &CallMeta,
        id: &str,
        agent_id: &str,
        source: &str,
        audio: DocAudio,
    ) -> Self {
        RecordingDoc {
            schema: SCHEMA,
            recording_id: id.to_string(),
            agent_id: agent_id.to_string(),
            source: source.to_string(),
            call_id: Some(meta.call_id.clone()),
            from: Some((&meta.from).into()),
            to: Some((&meta.to).into()),
            direction: "unknown".into(),
            started_at: Some(meta.started_at),
            answered_at: meta.answered_at,
            ended_at: Some(meta.ended_at),
            duration_ms: meta.duration_ms(),
            audio,
            channels: DocChannels::Measured(if meta.mixed_mono {
                let mut ch = meta.channels[0].clone();
                ch.party = "mixed".into();
                vec![ch]
            } else {
                meta.channels.to_vec()
            }),
            dtmf: meta.dtmf.clone(),
            truncated: meta.end_reason.is_cut(),
            warnings: meta.warnings.clone(),
            call: Some(CallFields {
                recorded_call_id: meta.recorded_call_id.clone(),
                media_started_at: Some(meta.media_started_at),
                end_reason: end_reason_name(meta),
                caller_known: Some(meta.caller_known),
                pauses: Some(meta.pauses.clone()),
                mixed_mono: meta.mixed_mono,
            }),
            folder: None,
            ids: call_ids(&meta.ids, meta.recorded_call_id.as_deref()),
            roles: None,
        }
    }

    /// Set the direction (when the source did not know it) and each
    /// channel's role from the parties ([`RoleRules::classify`]). A mono
    /// mix gets the direction only: its channel is not a party.
    pub fn assign_roles(&mut self, rules: &RoleRules) {
        self.assign_roles_with(rules, None);
    }

    /// [`RecordingDoc::assign_roles`] knowing the signalling addresses of
    /// the caller's and the callee's side (for `[roles] trunks`).
    pub fn assign_roles_with(
        &mut self,
        rules: &RoleRules,
        signalling: Option<[std::net::IpAddr; 2]>,
    ) {
        let (direction, roles) = rules.classify_with(
            self.from.as_ref(),
            self.to.as_ref(),
            &self.direction,
            signalling,
        );
        self.direction = direction;
        let mixed = self.folder.as_ref().is_some_and(|f| f.mixed_mono)
            || self.call.as_ref().is_some_and(|c| c.mixed_mono);
        if !mixed {
            self.roles = Some(roles);
        }
    }

    /// The JSON value written to `<id>.json`.
    pub(crate) fn to_value(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        if let (Some(roles), Some(chs)) = (
            &self.roles,
            v.get_mut("channels").and_then(|c| c.as_array_mut()),
        ) {
            for (ch, r) in chs.iter_mut().zip(roles) {
                if let Some(o) = ch.as_object_mut() {
                    o.insert("role".into(), r.role.into());
                    if let Some(e) = &r.extension {
                        o.insert("extension".into(), e.clone().into());
                    }
                }
            }
        }
        v
    }
}

/// `ids` of a live call: the PBX's identifiers and the recorded call's
/// Call-ID (SIPREC).
pub(crate) fn call_ids(
    ids: &BTreeMap<String, String>,
    recorded_call_id: Option<&str>,
) -> BTreeMap<String, String> {
    let mut out = ids.clone();
    if let Some(r) = recorded_call_id.filter(|r| !r.is_empty()) {
        out.insert("recorded_call_id".into(), r.to_string());
    }
    out
}

pub(crate) fn end_reason_name(meta: &CallMeta) -> String {
    match serde_json::to_value(meta.end_reason) {
        Ok(serde_json::Value::String(s)) => s,
        _ => "unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> RecordingDoc {
        RecordingDoc {
            schema: SCHEMA,
            recording_id: "r".into(),
            agent_id: "a".into(),
            source: "folder".into(),
            call_id: Some("c".into()),
            from: Some(DocParty {
                number: "1".into(),
                name: None,
                uri: None,
            }),
            to: None,
            direction: "inbound".into(),
            started_at: Timestamp::parse_rfc3339("2026-12-03T10:00:00.000Z"),
            answered_at: None,
            ended_at: None,
            duration_ms: 5,
            audio: DocAudio::wav(8000, 44, "ab".into()),
            channels: DocChannels::summary(["PCMU", "L16"]),
            dtmf: Vec::new(),
            truncated: false,
            warnings: vec!["w".into()],
            call: None,
            folder: None,
            ids: BTreeMap::new(),
            roles: None,
        }
    }

    #[test]
    fn a_part_a_source_does_not_know_is_absent_and_contract_fields_always_there() {
        let v = doc().to_value();
        for k in [
            "schema",
            "recording_id",
            "agent_id",
            "source",
            "call_id",
            "from",
            "to",
            "direction",
            "started_at",
            "answered_at",
            "ended_at",
            "duration_ms",
            "audio",
            "channels",
            "dtmf",
        ] {
            assert!(v.get(k).is_some(), "{k} missing in {v}");
        }
        for k in ["end_reason", "media_started_at", "cdr", "did", "mixed_mono"] {
            assert!(v.get(k).is_none(), "{k} present in {v}");
        }
        assert!(v["from"].get("uri").is_none());
        assert_eq!(v["from"]["name"], "", "a string, empty when unknown");
        assert_eq!(v["channels"][1]["codec"], "L16");
        assert_eq!(v["channels"][1]["party"], "callee");
        assert_eq!(v["audio"]["channels"], 2);
    }

    #[test]
    fn optional_parts_are_flattened_into_the_document() {
        let mut d = doc();
        d.folder = Some(FolderFields {
            mixed_mono: true,
            disposition: None,
            did: Some("555".into()),
            cdr: true,
            pbx_type: None,
            source_files: vec!["/x.wav".into()],
            legs_differ_ms: None,
            leg_align: None,
        });
        d.call = Some(CallFields {
            recorded_call_id: None,
            media_started_at: None,
            end_reason: "crash".into(),
            caller_known: None,
            pauses: None,
            mixed_mono: false,
        });
        let v = d.to_value();
        assert_eq!(v["did"], "555");
        assert_eq!(v["mixed_mono"], true);
        assert!(v.get("disposition").is_some_and(|x| x.is_null()));
        assert_eq!(v["end_reason"], "crash");
        assert!(v.get("recorded_call_id").is_some_and(|x| x.is_null()));
        assert!(v.get("caller_known").is_none());
    }
}
