//! What the engine knows about a call when its recording ends.
//!
//! The shell turns a [`CallMeta`] into the recording JSON of CONTRACT §3 (adding
//! what only it knows: agent id, source, file size and hash).

use serde::Serialize;

use crate::Timestamp;

/// Handle of one call inside a [`super::CallEngine`]; unique for the engine's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct CallKey(pub u64);

/// Which party of the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Party {
    Caller,
    Callee,
}

impl Party {
    pub fn other(self) -> Party {
        match self {
            Party::Caller => Party::Callee,
            Party::Callee => Party::Caller,
        }
    }
    /// Output channel: 0 = caller, 1 = callee (CONTRACT §3).
    pub fn channel(self) -> usize {
        match self {
            Party::Caller => 0,
            Party::Callee => 1,
        }
    }
}

/// A SIP party as shown in the recording.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PartyInfo {
    pub number: String,
    pub name: String,
    pub uri: String,
}

/// Why a call (and its recording) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    Bye,
    Cancel,
    /// The INVITE got a final failure response (early media may have been recorded).
    Rejected,
    RtpTimeout,
    /// The capture ended with the call still up.
    CaptureEnd,
    /// The daemon shut down with the call up.
    Shutdown,
    /// The same Call-ID started a new call.
    Replaced,
    /// The SIPREC server's 200 to the INVITE was never acknowledged: the
    /// session was hung up after 32 s (RFC 3261 Timer H).
    AckTimeout,
}

impl EndReason {
    /// Whether the recording was cut before the call really ended.
    pub fn is_cut(self) -> bool {
        matches!(self, EndReason::CaptureEnd | EndReason::Shutdown)
    }
}

/// One RFC 4733 digit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dtmf {
    pub channel: usize,
    pub digit: String,
    pub at_ms: i64,
    pub duration_ms: i64,
}

/// What paused a recording (CONTRACT §3 `pauses[].by`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PauseBy {
    /// A DTMF sequence (`recording.pause_dtmf`), RFC 4733 or in-band.
    Dtmf,
    /// The control API (`POST /v1/calls/{id}/pause`).
    Api,
    /// A SIP header (`X-Recording-Pause: yes`) on an in-dialog request.
    Sip,
}

impl PauseBy {
    pub fn as_str(self) -> &'static str {
        match self {
            PauseBy::Dtmf => "dtmf",
            PauseBy::Api => "api",
            PauseBy::Sip => "sip",
        }
    }
}

/// A stretch where recording was paused: both channels are exact zeros for
/// the frames `[from_ms * rate / 1000, to_ms * rate / 1000)` of the WAV; the
/// timeline goes on (see `call::pause`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Pause {
    pub from_ms: i64,
    pub to_ms: i64,
    pub by: PauseBy,
}

/// Per-channel statistics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ChannelMeta {
    pub index: usize,
    pub party: String,
    /// First audio codec heard on this leg ("" if the leg never sent audio).
    pub codec: String,
    /// Every codec heard, in order of first use.
    pub codecs: Vec<String>,
    /// RTP packets received (excluding duplicates).
    pub packets: u64,
    /// Packets missing from the sequence-number ranges.
    pub lost: u64,
    pub duplicates: u64,
    /// Packets that came too late for their place on the timeline.
    pub late: u64,
    pub ssrcs: Vec<u32>,
    pub dtmf_packets: u64,
    pub comfort_noise_packets: u64,
    /// Segments after the first: SSRC changes and timestamp breaks (hold
    /// without timestamps, restarts, jumps) where the leg was placed anew.
    pub reanchors: u32,
    /// Offset corrections (taken in gaps or spread over audio at 0.4 %).
    pub timing_corrections: u32,
    /// Their total, in samples.
    pub corrected_samples: u64,
    /// Sender clock drift against the capture clock that was followed by
    /// resampling, in ppm (0: none, or below 100 ppm).
    pub drift_ppm: i32,
    /// How much of the channel was interpolated (drift followed, corrections
    /// spread), in ms; the rest is the decoded audio bit for bit.
    pub resampled_ms: u64,
    /// The last (at most 16) corrections: where (ms on the timeline), by how
    /// many samples (positive: later), and whether spread over audio.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub timing_log: Vec<TimingCorrection>,
}

/// One entry of [`ChannelMeta::timing_log`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TimingCorrection {
    pub at_ms: i64,
    pub samples: i32,
    pub spread: bool,
}

/// Everything the engine knows when a recording ends.
#[derive(Debug, Clone, Serialize)]
pub struct CallMeta {
    pub key: CallKey,
    /// File-name-safe unique id (see [`recording_id`]), as given at `begin`.
    pub recording_id: String,
    /// The SIP Call-ID of the dialog the media came with (for SIPREC: the
    /// recording session's INVITE).
    pub call_id: String,
    /// SIPREC: how the SRC's metadata names the recorded call: its Call-ID
    /// (`callData/callid`), else its Session-ID (`sipSessionID`, RFC 7989).
    pub recorded_call_id: Option<String>,
    pub from: PartyInfo,
    pub to: PartyInfo,
    /// Whether the caller is known from an initial INVITE (false when the
    /// capture started mid-call).
    pub caller_known: bool,
    pub started_at: Timestamp,
    pub answered_at: Option<Timestamp>,
    pub ended_at: Timestamp,
    /// Arrival of the first RTP packet: time zero of the WAV.
    pub media_started_at: Timestamp,
    pub sample_rate: u32,
    /// Stereo frames written.
    pub frames: u64,
    pub channels: [ChannelMeta; 2],
    /// RFC 4733 digits, without those inside `pauses` and those of the
    /// pause and resume sequences.
    pub dtmf: Vec<Dtmf>,
    /// Stretches where recording was paused, in order.
    pub pauses: Vec<Pause>,
    pub end_reason: EndReason,
    pub warnings: Vec<String>,
    /// Identifiers the PBX gave the call, from SIP headers
    /// ([`super::ids`]): `asterisk_uniqueid`, `cisco_guid`, `avaya_ucid`, ….
    pub ids: std::collections::BTreeMap<String, String>,
    /// Where the caller's and the callee's signalling came from (the
    /// opening INVITE's source and destination); `None` for SIPREC sessions
    /// and calls seen mid-way.
    pub signalling: Option<[std::net::IpAddr; 2]>,
    /// One stream carried both parties (a SIPREC session with a single
    /// audio stream, the SRC's mix): the recording is its one channel
    /// (CONTRACT §3 `mixed_mono`), channel 0 here; channel 1 is empty.
    pub mixed_mono: bool,
}

impl CallMeta {
    pub fn duration_ms(&self) -> i64 {
        (self.frames as i64) * 1000 / i64::from(self.sample_rate.max(1))
    }
}

/// File-name-safe unique id: `YYYYMMDDTHHMMSSZ-<16 hex>`, from the time
/// media started and a hash of the signalling Call-ID (never the raw Call-ID).
pub fn recording_id(call_id: &str, at: Timestamp) -> String {
    // FNV-1a 64 over the Call-ID and the start time: stable across runs, so the
    // same call imported twice gets the same id (and the cloud's idempotency
    // key recognises it).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in call_id
        .as_bytes()
        .iter()
        .chain(at.as_micros().to_le_bytes().iter())
    {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{}-{:016x}", at.to_compact(), h)
}

/// What a sink learns when a recording starts.
#[derive(Debug, Clone, Serialize)]
pub struct RecordingStart {
    pub call_id: String,
    pub sample_rate: u32,
    pub media_started_at: Timestamp,
    pub recording_id: String,
    /// What is known of the call when recording starts (for recovery after a crash).
    pub from: PartyInfo,
    pub to: PartyInfo,
    pub started_at: Timestamp,
    pub answered_at: Option<Timestamp>,
    /// Identifiers the PBX gave the call, as far as known.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub ids: std::collections::BTreeMap<String, String>,
    /// The caller's and the callee's signalling addresses (see [`CallMeta`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signalling: Option<[std::net::IpAddr; 2]>,
    /// The call's one stream is a mix of both parties, as far as known
    /// now ([`CallMeta::mixed_mono`]): a recording completed after a crash
    /// is made mono too.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub mixed_mono: bool,
}

/// Where the engine's recordings go. Implemented by the shell (files) and by
/// tests (memory). Calls for one key always come as `begin`, `audio`*, `end`.
pub trait RecordingSink {
    fn begin(&mut self, call: CallKey, start: &RecordingStart);
    /// Interleaved stereo frames (L, R, L, R, ...), in order.
    fn audio(&mut self, call: CallKey, frames: &[i16]);
    fn end(&mut self, call: CallKey, meta: CallMeta);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recording_id_is_file_safe_and_stable() {
        let id = recording_id("a/b\\..\0c@host", Timestamp::from_secs(1_795_576_576));
        assert!(id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        assert_eq!(
            id,
            recording_id("a/b\\..\0c@host", Timestamp::from_secs(1_795_576_576))
        );
        assert_ne!(
            id,
            recording_id("a/b\\..\0c@host", Timestamp::from_secs(1_795_576_577))
        );
        assert!(id.starts_with("20261125T031616Z-"));
    }
}
