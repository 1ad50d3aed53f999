//! Answered calls whose audio has not begun: a sidecar each, written before
//! the `200 OK` goes out, so that an answered call always leaves a
//! recording (module doc of [`super`]).

use super::*;
use pbx_core::call::SampleRatePolicy;

/// Suffix of the sidecar of an answered call whose audio has not begun.
pub const ANSWER_SUFFIX: &str = ".answer.json";
/// Suffix of the sidecar of a recording in progress.
pub const START_SUFFIX: &str = ".start.json";

/// What the signalling side knows of a call when it answers it.
#[derive(Debug, Clone, Default)]
pub struct AnsweredCall {
    /// The SIP Call-ID (the engine's `call_id` for the same call).
    pub call_id: String,
    /// The parties (from the SIPREC metadata, when it says).
    pub from: PartyInfo,
    pub to: PartyInfo,
    /// When the INVITE arrived and when it was answered.
    pub started_at: Timestamp,
    pub answered_at: Timestamp,
    /// The recorded call's own Call-ID, when the metadata names it.
    pub recorded_call_id: Option<String>,
    /// The WAV rate the recording will have, when known (else 8000).
    pub sample_rate: Option<u32>,
    /// Identifiers the PBX gave the call, from the INVITE's headers
    /// ([`pbx_core::call::ids`]), as a recording with audio has them.
    pub ids: std::collections::BTreeMap<String, String>,
}

pub(super) struct AnsweredState {
    pub(super) dir: PathBuf,
    pub(super) source: &'static str,
    pub(super) agent_id: String,
    /// Seals the sidecars (encryption at rest): they name the parties.
    pub(super) seal: Option<Arc<crypt::Keyring>>,
    /// Call-ID -> its sidecar.
    pub(super) by_call: HashMap<String, PathBuf>,
    /// `recording.sample_rate`, for the rate of a recording without audio
    /// (the signalling side decides it from the answer, as the engine
    /// would have from the media).
    pub(super) rate: SampleRatePolicy,
}

/// The calls answered (`200 OK` to the INVITE) whose audio has not begun:
/// each is a small sidecar `.<recording id>.answer.json` written (to the
/// page cache, before the answer is sent) by [`AnsweredCalls::answered`],
/// removed when its recording begins ([`RecordingDir`]'s `begin`) or when
/// the call ends without audio ([`AnsweredCalls::forget`]). One left behind
/// by a crash becomes an empty recording marked truncated ([`recover`]).
/// Shared by the SIP task (which answers) and the engine thread.
#[derive(Clone)]
pub struct AnsweredCalls(Arc<Mutex<AnsweredState>>);

impl std::fmt::Debug for AnsweredCalls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnsweredCalls").finish_non_exhaustive()
    }
}

impl AnsweredCalls {
    pub(super) fn new(dir: &Path, ctx: &RecordingContext) -> Self {
        AnsweredCalls(Arc::new(Mutex::new(AnsweredState {
            dir: dir.to_path_buf(),
            source: ctx.source,
            agent_id: ctx.agent_id.clone(),
            seal: ctx.seal.clone(),
            by_call: HashMap::new(),
            rate: SampleRatePolicy::Auto,
        })))
    }

    /// `recording.sample_rate` as configured (set at start and on reload).
    pub(crate) fn set_rate_policy(&self, rate: SampleRatePolicy) {
        if let Ok(mut g) = self.0.lock() {
            g.rate = rate;
        }
    }

    pub(crate) fn rate_policy(&self) -> SampleRatePolicy {
        self.0
            .lock()
            .map(|g| g.rate)
            .unwrap_or(SampleRatePolicy::Auto)
    }

    pub(super) fn set_dir(&self, dir: &Path) {
        if let Ok(mut g) = self.0.lock() {
            g.dir = dir.to_path_buf();
        }
    }

    pub(super) fn set_context(&self, ctx: &RecordingContext) {
        if let Ok(mut g) = self.0.lock() {
            g.source = ctx.source;
            g.agent_id = ctx.agent_id.clone();
            g.seal = ctx.seal.clone();
        }
    }

    /// Records that `call` was answered. Returns the recording id its
    /// sidecar carries (a recording of its own only if it never gets audio).
    pub fn answered(&self, call: &AnsweredCall) -> io::Result<String> {
        let id = pbx_core::call::meta::recording_id(&call.call_id, call.answered_at);
        let mut g = self
            .0
            .lock()
            .map_err(|_| io::Error::other("answered calls: lock poisoned"))?;
        let path = g.dir.join(format!(".{id}{ANSWER_SUFFIX}"));
        let doc = json!({
            "call_id": call.call_id,
            "recorded_call_id": call.recorded_call_id,
            "from": call.from,
            "to": call.to,
            "started_at": call.started_at,
            "answered_at": call.answered_at,
            "sample_rate": call.sample_rate,
            "ids": call.ids,
            "source": g.source,
            "agent_id": g.agent_id,
        });
        write_small_file(&path, &doc, g.seal.as_deref())?;
        mark_unsynced(&g.dir);
        if let Some(old) = g.by_call.insert(call.call_id.clone(), path.clone()) {
            if old != path {
                let _ = fs::remove_file(old);
            }
        }
        Ok(id)
    }

    /// The call's audio began and its start sidecar could not be written
    /// (a full disk): the note becomes that sidecar (`dest`, renamed: no
    /// room needed), so the recording's `.part` is not completed after a
    /// crash as a second, anonymous recording beside the note's.
    pub(super) fn move_to(&self, call_id: &str, dest: &Path) {
        if let Ok(mut g) = self.0.lock() {
            if let Some(p) = g.by_call.remove(call_id) {
                if fs::rename(&p, dest).is_err() {
                    g.by_call.insert(call_id.to_string(), p);
                }
            }
        }
    }

    /// The call's audio began or the call ended: its sidecar goes.
    pub fn forget(&self, call_id: &str) {
        let path = self
            .0
            .lock()
            .ok()
            .and_then(|mut g| g.by_call.remove(call_id));
        if let Some(p) = path {
            let _ = fs::remove_file(p);
        }
    }

    /// Holds the notes' lock (a test makes the opener wait with it).
    #[cfg(test)]
    pub(super) fn hold(&self) -> std::sync::MutexGuard<'_, AnsweredState> {
        self.0.lock().unwrap()
    }

    /// How many calls are answered without audio.
    pub fn len(&self) -> usize {
        self.0.lock().map(|g| g.by_call.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The sidecar of this call, no longer tracked (the caller uses it).
    pub(super) fn take(&self, call_id: &str) -> Option<PathBuf> {
        self.0.lock().ok()?.by_call.remove(call_id)
    }

    pub(super) fn take_all(&self) -> Vec<(String, PathBuf)> {
        let mut v: Vec<(String, PathBuf)> = self
            .0
            .lock()
            .map(|mut g| g.by_call.drain().collect())
            .unwrap_or_default();
        v.sort();
        v
    }
}

/// `<id>` of a hidden sidecar `.<id><suffix>`.
pub(super) fn sidecar_id(path: &Path, suffix: &str) -> Option<String> {
    path.file_name()?
        .to_str()?
        .strip_prefix('.')?
        .strip_suffix(suffix)
        .map(str::to_string)
}

/// A small file (a sidecar) in one `write()`, mode 0600, not fsynced (the
/// next [`SYNC_INTERVAL`] sync or the pair's own fsyncs make it durable).
/// Writes a small JSON file (a sidecar) in one go, sealed when `seal` is
/// given (not fsynced: the page cache is what a crash of the process keeps).
pub(super) fn write_small_file(
    path: &Path,
    doc: &Value,
    seal: Option<&crypt::Keyring>,
) -> io::Result<()> {
    let bytes = serde_json::to_vec(doc)?;
    // Written beside it and renamed over it: a crash mid-write leaves a
    // `.tmp` (removed at the next start), never an empty or torn note that
    // would stand for a call without saying which. (No fsync: the note's
    // durability comes with the directory sync that follows.)
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let written = write_spool_file(create_private_file(&tmp)?, &bytes, seal)
        .map(drop)
        .and_then(|()| fs::rename(&tmp, path));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}
