//! Recording files: the engine's calls become `<id>.wav` + `<id>.json` in a directory.
//!
//! The only writer of recording pairs: every source's `<id>.json` is a typed
//! [`RecordingDoc`] written by one function (temp file, fsync, rename).
//!
//! In: `begin` / `audio` / `end` calls from the engine ([`RecordingSink`]);
//! whole recordings converted from a PBX's files ([`write_whole`]).
//! Out: a recording pair per call (CONTRACT §3), files of mode 0600.
//!
//! Promises:
//! - Audio is written while the call runs (`.<id>.wav.part`), never held in
//!   memory: every chunk the engine hands over (at least 100 ms of audio, at
//!   most its hold-back window `recording.jitter` behind real time) is passed
//!   to the kernel with one `write()` before [`RecordingSink::audio`] returns,
//!   and the WAV header is on disk as soon as the recording begins. The kernel's
//!   page cache survives the death of the process (SIGKILL, a panic, the OOM
//!   killer), so a crash of pbx-edge loses only what the engine still held:
//!   at most the hold-back window plus one chunk (docs/durability.md).
//! - Power loss: the spool's file system is synced (`syncfs`) every
//!   [`SYNC_INTERVAL`] while recordings are written, so a power cut loses at
//!   most that much more; a finished pair is fsynced before it appears.
//! - An answered call leaves a trace before its `200 OK` goes out
//!   ([`AnsweredCalls`]: `.<id>.answer.json`), replaced by the recording's own
//!   start sidecar (`.<id>.start.json`) when its audio begins. A call that
//!   ends without any audio becomes a recording of its own (an empty, valid
//!   WAV and its metadata, [`RecordingDir::end_answered`]); after a crash
//!   [`recover`] turns every note left into one, marked truncated: an
//!   answered call always leaves a recording.
//! - A pair appears atomically and durably: the WAV is finalised, fsynced and
//!   renamed, the JSON is written to a temp file, fsynced and renamed last, then
//!   the directory is fsynced. A crash leaves either a `.part` (repairable) or a
//!   complete pair; the presence of `<id>.json` means `<id>.wav` is complete.
//!   [`RecordingDir::take_closed`] names the calls whose pair is durable (the
//!   SIPREC source answers a BYE only then).
//! - A folder conversion ([`write_whole`]) is written the same way, its WAV
//!   under [`WHOLE_TMP`] until renamed; it is excluded from crash
//!   completion on purpose (see [`WHOLE_TMP`]): it is converted again.
//! - A write error (disk full) does not stop other calls: the broken recording is
//!   removed, counted and reported.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use pbx_core::audio::wav::WavWriter;
use pbx_core::call::{CallKey, CallMeta, PartyInfo, RecordingSink, RecordingStart};
use pbx_core::time::Timestamp;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub mod doc;
pub use crate::sys::{create_private_dir, create_private_file, sync_dir};
pub use doc::{
    CallFields, ChannelSummary, DocAudio, DocChannels, DocParty, FolderFields, RecordingDoc, SCHEMA,
};

/// What every recording of one run shares.
#[derive(Debug, Clone)]
pub struct RecordingContext {
    pub agent_id: String,
    /// "siprec" | "sniff" | "pcap" | "folder"
    pub source: &'static str,
    /// Calls shorter than this are discarded.
    pub min_duration: Duration,
}

/// What a configuration reload changes for a running source without new
/// sockets: the engine settings and the recording context, for calls that
/// begin from now on.
#[derive(Debug, Clone)]
pub struct RecordingSettings {
    pub engine: pbx_core::call::EngineConfig,
    pub ctx: RecordingContext,
    pub dir: PathBuf,
}

/// Apply reloaded settings in a source's engine thread: calls in progress
/// keep their sample rate, jitter window, agent id, min_duration and
/// directory; `rtp_timeout` applies to them too.
pub fn apply_settings(
    engine: &mut pbx_core::call::CallEngine,
    out: &mut RecordingDir,
    s: RecordingSettings,
) {
    engine.set_config(s.engine);
    out.set_context(s.ctx);
    if let Err(e) = out.set_dir(&s.dir) {
        tracing::error!(
            "spool {}: {e}; new recordings stay in {}",
            s.dir.display(),
            out.dir().display()
        );
    }
}

/// A finished recording pair.
#[derive(Debug, Clone)]
pub struct WrittenRecording {
    pub id: String,
    pub wav: PathBuf,
    pub json: PathBuf,
    pub duration_ms: i64,
}

/// Counters of a [`RecordingDir`].
#[derive(Debug, Default, Clone)]
pub struct RecordingCounters {
    pub written: u64,
    pub too_short: u64,
    pub failed: u64,
    pub bytes: u64,
}

struct OpenRecording {
    id: String,
    /// The SIP Call-ID of the call (for [`RecordingDir::take_closed`]).
    call_id: String,
    part: PathBuf,
    /// Unbuffered below the writer's own conversion buffer: every `audio`
    /// call ends in one `write()` (see the module doc).
    wav: Option<WavWriter<File>>,
    error: Option<io::Error>,
    /// The context when the call began: a reload changes it for new calls
    /// only (agent id, min_duration).
    ctx: RecordingContext,
    /// The directory it is written in (a reload may move new ones elsewhere).
    dir: PathBuf,
}

/// Writes recordings into one directory.
pub struct RecordingDir {
    dir: PathBuf,
    ctx: RecordingContext,
    open: HashMap<CallKey, OpenRecording>,
    pub written: Vec<WrittenRecording>,
    pub counters: RecordingCounters,
    pub errors: Vec<String>,
    /// Calls answered whose audio has not begun (shared with the SIP side).
    answered: AnsweredCalls,
    /// Call-IDs whose recording ended (pair durable, discarded or failed)
    /// since the last [`RecordingDir::take_closed`]; kept only when asked
    /// for ([`RecordingDir::track_closed`]).
    closed: Vec<String>,
    track_closed: bool,
}

impl RecordingDir {
    /// Opens (and creates, mode 0700) `dir`.
    pub fn new(dir: &Path, ctx: RecordingContext) -> io::Result<Self> {
        create_private_dir(dir)?;
        Ok(RecordingDir {
            dir: dir.to_path_buf(),
            answered: AnsweredCalls::new(dir, &ctx),
            ctx,
            open: HashMap::new(),
            written: Vec::new(),
            counters: RecordingCounters::default(),
            errors: Vec::new(),
            closed: Vec::new(),
            track_closed: false,
        })
    }

    /// New settings (a configuration reload): recordings that begin from now
    /// on carry them; recordings already open keep the context they began with.
    pub fn set_context(&mut self, ctx: RecordingContext) {
        self.answered.set_context(&ctx);
        self.ctx = ctx;
    }

    /// Write recordings that begin from now on into `dir` (created 0700);
    /// open ones finish where they began. On an error nothing changes.
    pub fn set_dir(&mut self, dir: &Path) -> io::Result<()> {
        if dir != self.dir {
            create_private_dir(dir)?;
            self.dir = dir.to_path_buf();
            self.answered.set_dir(dir);
        }
        Ok(())
    }

    /// The handle the signalling side records answered calls with (see
    /// [`AnsweredCalls`]); it follows this directory's settings.
    pub fn answered_calls(&self) -> AnsweredCalls {
        self.answered.clone()
    }

    /// Whether a recording of the call with this SIP Call-ID is open.
    pub fn is_recording(&self, call_id: &str) -> bool {
        self.open.values().any(|r| r.call_id == call_id)
    }

    /// Keep the Call-IDs of recordings that end for [`RecordingDir::take_closed`]
    /// (the SIPREC source, which drains them; others never ask).
    pub fn track_closed(&mut self, on: bool) {
        self.track_closed = on;
        if !on {
            self.closed.clear();
        }
    }

    fn closed_call(&mut self, call_id: &str) {
        if self.track_closed {
            self.closed.push(call_id.to_string());
        }
    }

    /// The Call-IDs whose recording ended since the last call: their pair is
    /// durable on disk (files and directory fsynced), or there is none
    /// (shorter than `min_duration`, or a write error, counted).
    pub fn take_closed(&mut self) -> Vec<String> {
        std::mem::take(&mut self.closed)
    }

    /// Turn the calls still answered without audio into recordings of their
    /// own (an empty WAV, `truncated`, `end_reason` = `reason`): what a stop
    /// does with calls whose media never came.
    pub fn finish_answered(&mut self, reason: &str) {
        for (call_id, sidecar) in self.answered.take_all() {
            self.write_answered(&call_id, &sidecar, reason, true);
        }
    }

    /// The call with this Call-ID ended (`reason`: `bye`, `rtp_timeout`):
    /// if its audio never began, it becomes a recording of its own, an
    /// empty WAV, not truncated (unless `min_duration` discards it).
    /// Whether such a recording was made.
    pub fn end_answered(&mut self, call_id: &str, reason: &str) -> bool {
        let Some(sidecar) = self.answered.take(call_id) else {
            return false;
        };
        if !self.ctx.min_duration.is_zero() {
            let _ = fs::remove_file(&sidecar);
            self.counters.too_short += 1;
            self.closed_call(call_id);
            return false;
        }
        self.write_answered(call_id, &sidecar, reason, false)
    }

    fn write_answered(&mut self, call_id: &str, sidecar: &Path, reason: &str, cut: bool) -> bool {
        let (Some(dir), Some(id)) = (
            sidecar.parent().map(Path::to_path_buf),
            sidecar_id(sidecar, ANSWER_SUFFIX),
        ) else {
            return false;
        };
        let warning = if cut {
            "the daemon stopped after answering this call, before any of its audio arrived"
        } else {
            "no audio arrived for this call"
        };
        let made = match complete_answered(&dir, &id, &self.ctx, sidecar, reason, cut, warning) {
            Ok(()) => {
                self.counters.written += 1;
                let wav = dir.join(format!("{id}.wav"));
                self.counters.bytes += fs::metadata(&wav).map(|m| m.len()).unwrap_or(0);
                self.written.push(WrittenRecording {
                    json: dir.join(format!("{id}.json")),
                    wav,
                    id,
                    duration_ms: 0,
                });
                true
            }
            Err(e) => {
                self.counters.failed += 1;
                self.errors.push(format!("recording {id}: {e}"));
                false
            }
        };
        self.closed_call(call_id);
        made
    }

    /// Where new recordings go.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn finish_files(
        &mut self,
        rec: OpenRecording,
        meta: &CallMeta,
    ) -> io::Result<Option<WrittenRecording>> {
        if let Some(e) = rec.error {
            return Err(e);
        }
        let Some(wav) = rec.wav else {
            return Err(io::Error::other("recording was never opened"));
        };
        let file = wav.finalize()?;
        file.sync_all()?;
        drop(file);
        if (meta.duration_ms() as u128) < rec.ctx.min_duration.as_millis() {
            fs::remove_file(&rec.part)?;
            return Ok(None);
        }
        let (bytes, sha) = hash_file(&rec.part)?;
        let wav_path = rec.dir.join(format!("{}.wav", rec.id));
        let json_path = rec.dir.join(format!("{}.json", rec.id));
        fs::rename(&rec.part, &wav_path)?;
        let doc = RecordingDoc::of_call(
            meta,
            &rec.id,
            &rec.ctx.agent_id,
            rec.ctx.source,
            DocAudio::wav(meta.sample_rate, bytes, sha),
        );
        write_json(&rec.dir, &doc)?;
        let _ = fs::remove_file(rec.dir.join(format!(".{}.start.json", rec.id)));
        sync_dir(&rec.dir)?;
        self.counters.bytes += bytes;
        Ok(Some(WrittenRecording {
            id: rec.id,
            wav: wav_path,
            json: json_path,
            duration_ms: meta.duration_ms(),
        }))
    }
}

impl RecordingSink for RecordingDir {
    fn begin(&mut self, call: CallKey, start: &RecordingStart) {
        // What is known now, kept beside the growing WAV so that a recording cut
        // off by a crash can be completed at the next start.
        let sidecar = self
            .dir
            .join(format!(".{}{START_SUFFIX}", start.recording_id));
        let mut v = serde_json::to_value(start).unwrap_or(Value::Null);
        if let Some(o) = v.as_object_mut() {
            o.insert("source".into(), self.ctx.source.into());
            o.insert("agent_id".into(), self.ctx.agent_id.clone().into());
        }
        let _ = write_small_file(&sidecar, &v);
        let part = self.dir.join(format!(".{}.wav.part", start.recording_id));
        // The header goes to the kernel at once: a crash a moment later still
        // leaves a valid (empty) WAV.
        let opened = create_private_file(&part).and_then(|f| {
            let mut w = WavWriter::new(f, start.sample_rate, 2)?;
            w.flush()?;
            Ok(w)
        });
        let (wav, error) = match opened {
            Ok(w) => (Some(w), None),
            Err(e) => (None, Some(e)),
        };
        // The start sidecar now stands for the call.
        self.answered.forget(&start.call_id);
        mark_unsynced(&self.dir);
        self.open.insert(
            call,
            OpenRecording {
                id: start.recording_id.clone(),
                call_id: start.call_id.clone(),
                part,
                wav,
                error,
                ctx: self.ctx.clone(),
                dir: self.dir.clone(),
            },
        );
    }

    fn audio(&mut self, call: CallKey, frames: &[i16]) {
        if let Some(rec) = self.open.get_mut(&call) {
            if rec.error.is_some() {
                return;
            }
            if let Some(w) = rec.wav.as_mut() {
                // One write() per chunk: in the page cache, safe from a crash
                // of the process, before the engine goes on.
                if let Err(e) = w.write_samples(frames).and_then(|()| w.flush()) {
                    rec.error = Some(e);
                }
                mark_unsynced(&rec.dir);
            }
        }
    }

    fn end(&mut self, call: CallKey, meta: CallMeta) {
        let Some(rec) = self.open.remove(&call) else {
            return;
        };
        let part = rec.part.clone();
        let id = rec.id.clone();
        let dir = rec.dir.clone();
        let call_id = rec.call_id.clone();
        match self.finish_files(rec, &meta) {
            Ok(Some(w)) => {
                self.counters.written += 1;
                self.written.push(w);
            }
            Ok(None) => {
                let _ = fs::remove_file(dir.join(format!(".{id}{START_SUFFIX}")));
                self.counters.too_short += 1
            }
            Err(e) => {
                let _ = fs::remove_file(&part);
                let _ = fs::remove_file(dir.join(format!(".{id}{START_SUFFIX}")));
                self.counters.failed += 1;
                self.errors.push(format!("recording {id}: {e}"));
            }
        }
        self.closed_call(&call_id);
    }
}

// ---------------------------------------------------------------------------
// Answered calls
// ---------------------------------------------------------------------------

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
}

struct AnsweredState {
    dir: PathBuf,
    source: &'static str,
    agent_id: String,
    /// Call-ID -> its sidecar.
    by_call: HashMap<String, PathBuf>,
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
    fn new(dir: &Path, ctx: &RecordingContext) -> Self {
        AnsweredCalls(Arc::new(Mutex::new(AnsweredState {
            dir: dir.to_path_buf(),
            source: ctx.source,
            agent_id: ctx.agent_id.clone(),
            by_call: HashMap::new(),
        })))
    }

    fn set_dir(&self, dir: &Path) {
        if let Ok(mut g) = self.0.lock() {
            g.dir = dir.to_path_buf();
        }
    }

    fn set_context(&self, ctx: &RecordingContext) {
        if let Ok(mut g) = self.0.lock() {
            g.source = ctx.source;
            g.agent_id = ctx.agent_id.clone();
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
            "source": g.source,
            "agent_id": g.agent_id,
        });
        write_small_file(&path, &doc)?;
        mark_unsynced(&g.dir);
        if let Some(old) = g.by_call.insert(call.call_id.clone(), path.clone()) {
            if old != path {
                let _ = fs::remove_file(old);
            }
        }
        Ok(id)
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

    /// How many calls are answered without audio.
    pub fn len(&self) -> usize {
        self.0.lock().map(|g| g.by_call.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The sidecar of this call, no longer tracked (the caller uses it).
    fn take(&self, call_id: &str) -> Option<PathBuf> {
        self.0.lock().ok()?.by_call.remove(call_id)
    }

    fn take_all(&self) -> Vec<(String, PathBuf)> {
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
fn sidecar_id(path: &Path, suffix: &str) -> Option<String> {
    path.file_name()?
        .to_str()?
        .strip_prefix('.')?
        .strip_suffix(suffix)
        .map(str::to_string)
}

/// A small file (a sidecar) in one `write()`, mode 0600, not fsynced (the
/// next [`SYNC_INTERVAL`] sync or the pair's own fsyncs make it durable).
fn write_small_file(path: &Path, doc: &Value) -> io::Result<()> {
    let bytes = serde_json::to_vec(doc)?;
    create_private_file(path)?.write_all(&bytes)
}

// ---------------------------------------------------------------------------
// Syncing for power loss
// ---------------------------------------------------------------------------

/// How often the file system of a spool being written is synced: the
/// power-loss window beyond the engine's hold-back (docs/durability.md).
pub const SYNC_INTERVAL: Duration = Duration::from_secs(1);

struct Syncer {
    /// Directories written since the last round.
    dirty: Mutex<HashSet<PathBuf>>,
    /// File system syncs done (for tests and curiosity).
    syncs: AtomicU64,
}

static SYNCER: OnceLock<Syncer> = OnceLock::new();

fn syncer() -> &'static Syncer {
    SYNCER.get_or_init(|| {
        let spawned = std::thread::Builder::new()
            .name("spool-sync".into())
            .spawn(sync_loop);
        if let Err(e) = spawned {
            tracing::error!("cannot start the spool sync thread: {e}");
        }
        Syncer {
            dirty: Mutex::new(HashSet::new()),
            syncs: AtomicU64::new(0),
        }
    })
}

/// One thread per process: every [`SYNC_INTERVAL`], `syncfs` on each file
/// system a recording was written to since the last round. One system call
/// covers every open WAV, sidecar and directory entry there, whatever the
/// number of calls, and the engine threads never wait for a disk.
fn sync_loop() {
    loop {
        std::thread::sleep(SYNC_INTERVAL);
        let Some(s) = SYNCER.get() else { continue };
        let dirs: Vec<PathBuf> = s
            .dirty
            .lock()
            .map(|mut d| d.drain().collect())
            .unwrap_or_default();
        for d in dirs {
            if let Err(e) = sync_fs(&d) {
                tracing::debug!(dir = %d.display(), "syncfs: {e}");
            }
            s.syncs.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// `syncfs(2)` on the file system holding `dir`.
fn sync_fs(dir: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = File::open(dir)?;
    // SAFETY: syncfs on a descriptor we own.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Something was written in `dir`: sync its file system in the next round.
pub fn mark_unsynced(dir: &Path) {
    if let Ok(mut d) = syncer().dirty.lock() {
        if !d.contains(dir) {
            d.insert(dir.to_path_buf());
        }
    }
}

/// File system syncs done by this process so far.
pub fn fs_syncs() -> u64 {
    SYNCER.get().map_or(0, |s| s.syncs.load(Ordering::Relaxed))
}

/// The only writer of `<id>.json` files.
fn write_json(dir: &Path, doc: &RecordingDoc) -> io::Result<()> {
    let id = &doc.recording_id;
    let tmp = dir.join(format!(".{id}.json.tmp"));
    let written = (|| {
        let mut f = create_private_file(&tmp)?;
        serde_json::to_writer_pretty(&mut f, &doc.to_value())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, dir.join(format!("{id}.json")))
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// Suffix of the WAV of a recording being written whole by
/// [`write_whole`] (a folder conversion). Not `.wav.part`: [`recover`]
/// completes a `.part` as a crash recording, while a conversion cut off is
/// simply converted again from the PBX's files, which were not marked seen.
/// Not `.wav.tmp` either: the folder source removes these at its own start,
/// which a reload can bring while other sources write `.wav.tmp` files.
pub const WHOLE_TMP: &str = ".wav.folder-tmp";

/// Writes a recording whose audio is all known at once (a folder
/// conversion) as a pair, the same way the engine's recordings end: the
/// WAV (`left` on channel 0, `right` on channel 1, the shorter padded with
/// silence) in a temp file, fsynced, hashed, renamed; then `doc`, its
/// `audio` and `duration_ms` filled in from what was written, by the one
/// JSON writer; then the directory fsynced. On an error nothing is left
/// (neither temp file nor WAV). Returns the pair and the WAV's size.
pub fn write_whole(
    dir: &Path,
    rate: u32,
    left: &[i16],
    right: &[i16],
    mut doc: RecordingDoc,
) -> io::Result<(WrittenRecording, u64)> {
    create_private_dir(dir)?;
    let id = doc.recording_id.clone();
    let frames = left.len().max(right.len());
    let part = dir.join(format!(".{id}{WHOLE_TMP}"));
    let wav_path = dir.join(format!("{id}.wav"));
    let json_path = dir.join(format!("{id}.json"));
    let wav = (|| -> io::Result<(u64, String)> {
        let f = create_private_file(&part)?;
        let mut w = WavWriter::new(io::BufWriter::with_capacity(64 * 1024, f), rate, 2)?;
        let mut buf = Vec::with_capacity(8192);
        let mut i = 0;
        while i < frames {
            buf.clear();
            let end = (i + 4096).min(frames);
            for k in i..end {
                buf.push(left.get(k).copied().unwrap_or(0));
                buf.push(right.get(k).copied().unwrap_or(0));
            }
            w.write_samples(&buf)?;
            i = end;
        }
        let mut bw = w.finalize()?;
        bw.flush()?;
        let file = bw.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        let h = hash_file(&part)?;
        fs::rename(&part, &wav_path)?;
        Ok(h)
    })();
    let (bytes, sha) = match wav {
        Ok(v) => v,
        Err(e) => {
            let _ = fs::remove_file(&part);
            return Err(e);
        }
    };
    doc.audio = DocAudio::wav(rate, bytes, sha);
    doc.duration_ms = (frames as u64 * 1000 / u64::from(rate.max(1))) as i64;
    if let Err(e) = write_json(dir, &doc).and_then(|()| sync_dir(dir)) {
        let _ = fs::remove_file(&wav_path);
        return Err(e);
    }
    let duration_ms = doc.duration_ms;
    Ok((
        WrittenRecording {
            id,
            wav: wav_path,
            json: json_path,
            duration_ms,
        },
        bytes,
    ))
}

/// Length and hex SHA-256 of a file.
pub fn hash_file(path: &Path) -> io::Result<(u64, String)> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    loop {
        let r = f.read(&mut buf)?;
        if r == 0 {
            break;
        }
        h.update(&buf[..r]);
        n += r as u64;
    }
    Ok((n, hex::encode(h.finalize())))
}

/// Complete the recordings a crash (or power loss) cut off in `dir`: every
/// `.<id>.wav.part` gets a valid WAV header for the whole frames that reached
/// the disk (a partial frame at its end is cut off; a file without even its
/// header gets a fresh one: an empty recording), becomes `<id>.wav`, and gets
/// a `<id>.json` from what was known when the call started (its source, ids,
/// parties and times, kept in the start sidecar), with `"truncated": true` and
/// `"end_reason": "crash"`; `ended_at` is the end of the audio kept. A
/// `<id>.wav` whose JSON never got written (a crash between the two renames:
/// the WAV is complete) gets its JSON the same way, with `"truncated": false`.
/// A call answered whose audio had not begun (`.<id>.answer.json`) becomes
/// an empty recording (a 44-byte WAV) marked truncated, unless a recording
/// of the same Call-ID exists (its audio began). `ctx` names the source and
/// agent of sidecars without them. Returns the ids recovered. Left-over temp
/// files of finished recordings are removed.
pub fn recover(dir: &Path, ctx: &RecordingContext) -> io::Result<Vec<String>> {
    use pbx_core::audio::wav::{canonical_header, repair_wav};
    use std::os::unix::fs::FileExt;
    let mut recovered = Vec::new();
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    // Calls whose audio began: an answer sidecar of theirs is stale.
    let began: HashSet<String> = entries
        .iter()
        .filter(|p| sidecar_id(p, START_SUFFIX).is_some())
        .filter_map(|p| fs::read(p).ok())
        .filter_map(|b| serde_json::from_slice::<Value>(&b).ok())
        .filter_map(|v| v["call_id"].as_str().map(str::to_string))
        .collect();
    for p in entries {
        let Some(name) = p.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
            continue;
        };
        if name.starts_with('.') && (name.ends_with(".json.tmp") || name.ends_with(".wav.tmp")) {
            // The JSON never got renamed: its WAV is complete (renamed first) or
            // still a .part; either way the JSON is rebuilt below or from the pair.
            let _ = fs::remove_file(&p);
            continue;
        }
        if let Some(id) = sidecar_id(&p, ANSWER_SUFFIX) {
            let call_id: Option<String> = fs::read(&p)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .and_then(|v| v["call_id"].as_str().map(str::to_string));
            let stale = call_id.is_some_and(|c| began.contains(&c))
                || dir.join(format!("{id}.json")).exists();
            if stale {
                let _ = fs::remove_file(&p);
            } else {
                complete_answered(dir, &id, ctx, &p, "crash", true, WARN_NO_AUDIO)?;
                recovered.push(id);
            }
            continue;
        }
        if let Some(id) = sidecar_id(&p, START_SUFFIX) {
            // A finished WAV without its JSON: renamed, then the crash.
            let wav_path = dir.join(format!("{id}.wav"));
            let part = dir.join(format!(".{id}.wav.part"));
            if part.exists() {
                continue; // completed with its .part below
            }
            if wav_path.is_file() && !dir.join(format!("{id}.json")).exists() {
                complete_json(dir, &id, ctx, &p, false, "crash", WARN_SAVING)?;
                recovered.push(id);
            } else {
                // The pair is complete (crash before the sidecar's removal),
                // or the recording was discarded.
                let _ = fs::remove_file(&p);
            }
            continue;
        }
        let Some(id) = name
            .strip_prefix('.')
            .and_then(|n| n.strip_suffix(".wav.part"))
            .map(str::to_string)
        else {
            continue;
        };
        let sidecar = dir.join(format!(".{id}{START_SUFFIX}"));
        let mut f = OpenOptions::new().read(true).write(true).open(&p)?;
        let len = f.metadata()?.len();
        match repair_wav(&mut f, len) {
            Ok(audio) => {
                // Whole frames only: a write cut in the middle of a frame
                // leaves no stray bytes after the data chunk.
                let end = len.min(44 + audio).max(44);
                if end < len && header_is_canonical(&mut f) {
                    f.set_len(end)?;
                }
            }
            Err(_) if sidecar.exists() => {
                // The call had begun but not even the header reached the
                // disk (power loss): an empty recording of it.
                let sj = read_json_file(&sidecar);
                let rate = wav_rate(&sj);
                f.set_len(0)?;
                f.write_all_at(&canonical_header(rate, 2, 0), 0)?;
            }
            Err(_) => {
                // Nothing to say what it was: nothing to keep.
                drop(f);
                fs::remove_file(&p)?;
                continue;
            }
        }
        f.sync_all()?;
        drop(f);
        fs::rename(&p, dir.join(format!("{id}.wav")))?;
        complete_json(dir, &id, ctx, &sidecar, true, "crash", WARN_CUT)?;
        recovered.push(id);
    }
    Ok(recovered)
}

const WARN_CUT: &str = "the daemon stopped while recording this call; the audio that reached the disk was kept; its packet counts were lost";
const WARN_SAVING: &str = "the daemon stopped while saving this recording: the audio is complete; the call's end details and packet counts were lost";
const WARN_NO_AUDIO: &str =
    "the daemon stopped after answering this call, before any of its audio was written";

/// Whether the file starts with the 44-byte header our writer makes (data
/// chunk right after `fmt `), so the data ends at 44 + its size.
fn header_is_canonical(f: &mut File) -> bool {
    use std::io::{Seek, SeekFrom};
    let mut h = [0u8; 44];
    let ok = f.seek(SeekFrom::Start(0)).is_ok() && f.read_exact(&mut h).is_ok();
    ok && &h[12..16] == b"fmt " && h[16..20] == 16u32.to_le_bytes() && &h[36..40] == b"data"
}

fn read_json_file(p: &Path) -> Value {
    fs::read(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null)
}

/// The WAV rate a sidecar names (8000 or 16000; 8000 when it does not say).
fn wav_rate(sj: &Value) -> u32 {
    match sj["sample_rate"].as_u64() {
        Some(16000) => 16000,
        _ => 8000,
    }
}

/// An answered call without audio as a recording pair: an empty 2-channel
/// WAV (header only, fsynced, renamed) and its JSON from the answer sidecar
/// (then removed), `end_reason` = `reason`.
fn complete_answered(
    dir: &Path,
    id: &str,
    ctx: &RecordingContext,
    sidecar: &Path,
    reason: &str,
    truncated: bool,
    warning: &str,
) -> io::Result<()> {
    use pbx_core::audio::wav::canonical_header;
    let wav = dir.join(format!("{id}.wav"));
    if !wav.exists() {
        let tmp = dir.join(format!(".{id}.wav.tmp"));
        let mut f = create_private_file(&tmp)?;
        f.write_all(&canonical_header(wav_rate(&read_json_file(sidecar)), 2, 0))?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, &wav)?;
    }
    complete_json(dir, id, ctx, sidecar, truncated, reason, warning)
}

/// Writes `<id>.json` for the complete `<id>.wav` of a call whose end was
/// never recorded, from its sidecar (then removed).
fn complete_json(
    dir: &Path,
    id: &str,
    ctx: &RecordingContext,
    sidecar: &Path,
    truncated: bool,
    reason: &str,
    warning: &str,
) -> io::Result<()> {
    use pbx_core::audio::wav::parse_wav_header;
    let wav_path = dir.join(format!("{id}.wav"));
    let sj = read_json_file(sidecar);
    let mut head = vec![0u8; 64];
    let n = File::open(&wav_path)?.read(&mut head)?;
    head.truncate(n);
    let info = parse_wav_header(&head).ok();
    let rate = info.as_ref().map(|i| i.sample_rate).unwrap_or(8000);
    let (bytes, sha) = hash_file(&wav_path)?;
    let header = info.as_ref().map(|i| i.data_offset).unwrap_or(44);
    let frames = bytes.saturating_sub(header) / 4;
    let duration_ms = (frames * 1000 / u64::from(rate.max(1))) as i64;
    let time = |k: &str| sj[k].as_str().and_then(Timestamp::parse_rfc3339);
    // The end of the audio kept on the call's timeline; else when the file
    // was last written.
    let ended_at = time("media_started_at")
        .or_else(|| time("answered_at"))
        .or_else(|| time("started_at"))
        .map(|t| t.add_micros(duration_ms * 1000))
        .or_else(|| {
            let m = fs::metadata(&wav_path).and_then(|m| m.modified()).ok()?;
            let us = m.duration_since(std::time::UNIX_EPOCH).ok()?.as_micros();
            Some(Timestamp::from_micros(i64::try_from(us).ok()?))
        });
    let text = |k: &str, default: &str| sj[k].as_str().unwrap_or(default).to_string();
    let string = |k: &str| sj[k].as_str().map(str::to_string);
    let party = |k: &str| serde_json::from_value::<DocParty>(sj[k].clone()).ok();
    let doc = RecordingDoc {
        schema: SCHEMA,
        recording_id: id.to_string(),
        agent_id: text("agent_id", &ctx.agent_id),
        source: text("source", ctx.source),
        call_id: string("call_id"),
        from: party("from"),
        to: party("to"),
        direction: "unknown".into(),
        started_at: time("started_at"),
        answered_at: time("answered_at"),
        ended_at,
        duration_ms,
        audio: DocAudio::wav(rate, bytes, sha),
        channels: DocChannels::summary(["", ""]),
        dtmf: Vec::new(),
        truncated,
        warnings: vec![warning.to_string()],
        call: Some(CallFields {
            recorded_call_id: string("recorded_call_id"),
            media_started_at: time("media_started_at"),
            end_reason: reason.to_string(),
            caller_known: None,
        }),
        folder: None,
    };
    write_json(dir, &doc)?;
    let _ = fs::remove_file(sidecar);
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pbx_core::call::PartyInfo;

    fn start(id: &str) -> RecordingStart {
        RecordingStart {
            call_id: format!("{id}@src"),
            sample_rate: 8000,
            media_started_at: Timestamp::parse_rfc3339("2026-12-03T10:00:01.000Z").unwrap(),
            recording_id: id.to_string(),
            from: PartyInfo {
                number: "1001".into(),
                ..PartyInfo::default()
            },
            to: PartyInfo::default(),
            started_at: Timestamp::parse_rfc3339("2026-12-03T10:00:00.000Z").unwrap(),
            answered_at: None,
        }
    }

    fn ctx(source: &'static str) -> RecordingContext {
        RecordingContext {
            agent_id: "agent-a".into(),
            source,
            min_duration: Duration::ZERO,
        }
    }

    fn json_of(dir: &Path, id: &str) -> Value {
        serde_json::from_slice(&fs::read(dir.join(format!("{id}.json"))).unwrap()).unwrap()
    }

    /// A SIPREC call cut by a crash, recovered by a start that names another
    /// source: the sidecar's source, agent and times win, and every field of
    /// CONTRACT §3 is there with its type.
    #[test]
    fn crash_recovery_keeps_the_source_and_fills_every_contract_field() {
        let d = tempfile::tempdir().unwrap();
        let mut rd = RecordingDir::new(d.path(), ctx("siprec")).unwrap();
        rd.begin(CallKey(1), &start("r1"));
        // 2.5 s of stereo audio reaches the disk, then the process dies.
        for _ in 0..25 {
            rd.audio(CallKey(1), &[7i16; 1600]);
        }
        drop(rd);
        let ids = recover(d.path(), &ctx("sniff")).unwrap();
        assert_eq!(ids, vec!["r1".to_string()]);
        let j = json_of(d.path(), "r1");
        assert_eq!(j["source"], "siprec");
        assert_eq!(j["agent_id"], "agent-a");
        assert_eq!(j["call_id"], "r1@src");
        assert_eq!(j["from"]["number"], "1001");
        assert_eq!(
            (j["truncated"].clone(), j["end_reason"].clone()),
            (true.into(), "crash".into())
        );
        assert_eq!(j["duration_ms"], 2500);
        assert_eq!(j["ended_at"], "2026-12-03T10:00:03.500Z");
        assert_eq!(j["started_at"], "2026-12-03T10:00:00.000Z");
        assert!(j["answered_at"].is_null());
        for (i, party) in [(0, "caller"), (1, "callee")] {
            let c = &j["channels"][i];
            assert_eq!(c["party"], party);
            assert!(
                c["codec"].is_string() && c["packets"].is_u64() && c["lost"].is_u64(),
                "{c}"
            );
        }
        let wav = fs::read(d.path().join("r1.wav")).unwrap();
        assert_eq!(j["audio"]["bytes"], wav.len());
        assert_eq!(wav.len(), 44 + 20_000 * 4);
        assert!(!d.path().join(".r1.start.json").exists());
        // Done once: a second start finds nothing to do.
        assert!(recover(d.path(), &ctx("sniff")).unwrap().is_empty());
    }

    /// A crash between the WAV's rename and the JSON's: the WAV is complete,
    /// its JSON is written at the next start.
    #[test]
    fn wav_renamed_without_its_json_gets_one() {
        let d = tempfile::tempdir().unwrap();
        let mut rd = RecordingDir::new(d.path(), ctx("siprec")).unwrap();
        rd.begin(CallKey(1), &start("r2"));
        rd.audio(CallKey(1), &[3i16; 16_000]);
        drop(rd);
        // What finish_files had done before the crash: a finalised WAV.
        let part = d.path().join(".r2.wav.part");
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&part)
            .unwrap();
        let len = f.metadata().unwrap().len();
        pbx_core::audio::wav::repair_wav(&mut f, len).unwrap();
        drop(f);
        fs::rename(&part, d.path().join("r2.wav")).unwrap();
        let before = hash_file(&d.path().join("r2.wav")).unwrap();
        assert_eq!(
            recover(d.path(), &ctx("sniff")).unwrap(),
            vec!["r2".to_string()]
        );
        let j = json_of(d.path(), "r2");
        assert_eq!(j["source"], "siprec");
        assert_eq!(j["truncated"], false);
        assert_eq!(j["duration_ms"], 1000);
        assert_eq!(j["audio"]["sha256"], before.1.as_str());
        assert_eq!(
            hash_file(&d.path().join("r2.wav")).unwrap(),
            before,
            "WAV untouched"
        );
        // A finished pair is left alone, and its stray sidecar removed.
        fs::write(d.path().join(".r2.start.json"), b"{}").unwrap();
        assert!(recover(d.path(), &ctx("sniff")).unwrap().is_empty());
        assert!(!d.path().join(".r2.start.json").exists());
        assert_eq!(json_of(d.path(), "r2"), j);
    }

    fn answered(call_id: &str) -> AnsweredCall {
        AnsweredCall {
            call_id: call_id.to_string(),
            from: PartyInfo {
                number: "+15551001".into(),
                name: "Alice".into(),
                uri: "sip:+15551001@pbx".into(),
            },
            to: PartyInfo::default(),
            started_at: Timestamp::parse_rfc3339("2026-12-03T10:00:00.000Z").unwrap(),
            answered_at: Timestamp::parse_rfc3339("2026-12-03T10:00:00.250Z").unwrap(),
            recorded_call_id: Some("orig@pbx".into()),
            sample_rate: None,
        }
    }

    fn hidden_files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        v.sort();
        v
    }

    /// Every chunk the engine hands over is in the file (the page cache,
    /// which a SIGKILL does not touch) when `audio` returns; the header is
    /// there as soon as the recording begins.
    #[test]
    fn audio_reaches_the_file_before_audio_returns() {
        let d = tempfile::tempdir().unwrap();
        let mut rd = RecordingDir::new(d.path(), ctx("siprec")).unwrap();
        rd.begin(CallKey(1), &start("p1"));
        let part = d.path().join(".p1.wav.part");
        assert_eq!(fs::metadata(&part).unwrap().len(), 44, "header at once");
        // 100 ms of stereo audio at 8 kHz, then 20 ms more.
        rd.audio(CallKey(1), &[5i16; 1600]);
        assert_eq!(fs::metadata(&part).unwrap().len(), 44 + 3200);
        rd.audio(CallKey(1), &[6i16; 320]);
        assert_eq!(fs::metadata(&part).unwrap().len(), 44 + 3200 + 640);
        // What a crash leaves is what recovery keeps.
        std::mem::forget(rd);
        assert_eq!(recover(d.path(), &ctx("siprec")).unwrap(), vec!["p1"]);
        let j = json_of(d.path(), "p1");
        assert_eq!(j["duration_ms"], 120);
        assert_eq!(j["truncated"], true);
    }

    /// A call answered whose audio never began: after a crash, a recording
    /// of its own with an empty, valid 2-channel WAV, marked truncated.
    #[test]
    fn answered_call_without_audio_becomes_an_empty_recording_after_a_crash() {
        let d = tempfile::tempdir().unwrap();
        let rd = RecordingDir::new(d.path(), ctx("siprec")).unwrap();
        let id = rd.answered_calls().answered(&answered("a1@src")).unwrap();
        assert_eq!(rd.answered_calls().len(), 1);
        assert_eq!(
            hidden_files(d.path()),
            vec![format!(".{id}{ANSWER_SUFFIX}")]
        );
        std::mem::forget(rd);
        assert_eq!(recover(d.path(), &ctx("sniff")).unwrap(), vec![id.clone()]);
        let j = json_of(d.path(), &id);
        assert_eq!(j["call_id"], "a1@src");
        assert_eq!(j["source"], "siprec");
        assert_eq!(j["agent_id"], "agent-a");
        assert_eq!(j["recorded_call_id"], "orig@pbx");
        assert_eq!(j["from"]["number"], "+15551001");
        assert_eq!(
            (j["truncated"].clone(), j["end_reason"].clone()),
            (true.into(), "crash".into())
        );
        assert_eq!(j["duration_ms"], 0);
        assert_eq!(j["answered_at"], "2026-12-03T10:00:00.250Z");
        assert_eq!(j["ended_at"], "2026-12-03T10:00:00.250Z");
        let wav = fs::read(d.path().join(format!("{id}.wav"))).unwrap();
        let info = pbx_core::audio::wav::parse_wav_header(&wav).unwrap();
        assert_eq!((info.channels, info.sample_rate, wav.len()), (2, 8000, 44));
        assert_eq!(j["audio"]["bytes"], 44);
        assert_eq!(
            j["audio"]["sha256"],
            hash_file(&d.path().join(format!("{id}.wav"))).unwrap().1
        );
        assert!(hidden_files(d.path()).is_empty());
        assert!(recover(d.path(), &ctx("sniff")).unwrap().is_empty());
    }

    /// The answer note goes when the call's audio begins (the recording
    /// stands for the call) or when it ends without audio; a crash between
    /// the start sidecar and the note's removal still gives one recording.
    #[test]
    fn answered_note_gives_way_to_the_recording_or_goes_with_the_call() {
        let d = tempfile::tempdir().unwrap();
        let mut rd = RecordingDir::new(d.path(), ctx("siprec")).unwrap();
        let calls = rd.answered_calls();
        calls.answered(&answered("r3@src")).unwrap();
        rd.begin(CallKey(3), &start("r3"));
        assert!(calls.is_empty());
        assert_eq!(
            hidden_files(d.path()),
            vec![".r3.start.json", ".r3.wav.part"]
        );
        // Ended without audio: nothing stays.
        calls.answered(&answered("gone@src")).unwrap();
        calls.forget("gone@src");
        assert_eq!(hidden_files(d.path()).len(), 2);
        // A crash right after begin wrote its files but before the note
        // went: the note is stale, the recording is the call's one.
        let id = calls.answered(&answered("r3@src")).unwrap();
        std::mem::forget(rd);
        assert!(d.path().join(format!(".{id}{ANSWER_SUFFIX}")).exists());
        assert_eq!(recover(d.path(), &ctx("siprec")).unwrap(), vec!["r3"]);
        assert!(hidden_files(d.path()).is_empty());
        assert!(!d.path().join(format!("{id}.json")).exists());
    }

    fn meta_r4() -> CallMeta {
        let t0 = Timestamp::parse_rfc3339("2026-12-03T10:00:01.000Z").unwrap();
        CallMeta {
            key: CallKey(4),
            recording_id: "r4".into(),
            call_id: "r4@src".into(),
            recorded_call_id: None,
            from: PartyInfo::default(),
            to: PartyInfo::default(),
            caller_known: true,
            started_at: t0,
            answered_at: None,
            ended_at: t0.add_micros(100_000),
            media_started_at: t0,
            sample_rate: 8000,
            frames: 800,
            channels: Default::default(),
            dtmf: Vec::new(),
            end_reason: pbx_core::call::EndReason::Bye,
            warnings: Vec::new(),
        }
    }

    /// `take_closed` names a call once its pair is on disk; a stop turns
    /// calls answered without audio into recordings cut by shutdown.
    #[test]
    fn closed_calls_are_named_once_their_pair_is_durable() {
        let d = tempfile::tempdir().unwrap();
        let mut rd = RecordingDir::new(d.path(), ctx("siprec")).unwrap();
        rd.track_closed(true);
        rd.begin(CallKey(4), &start("r4"));
        rd.audio(CallKey(4), &[1i16; 1600]);
        assert!(rd.is_recording("r4@src"));
        assert!(rd.take_closed().is_empty());
        let meta = meta_r4();
        rd.end(CallKey(4), meta);
        assert!(!rd.is_recording("r4@src"));
        assert_eq!(rd.take_closed(), vec!["r4@src".to_string()]);
        assert!(d.path().join("r4.json").exists() && d.path().join("r4.wav").exists());
        assert!(rd.take_closed().is_empty());
        // A call that ends without audio is a recording of its own, whole.
        let id = rd
            .answered_calls()
            .answered(&answered("empty@src"))
            .unwrap();
        assert!(rd.end_answered("empty@src", "bye"));
        assert!(!rd.end_answered("empty@src", "bye"), "once");
        assert_eq!(rd.take_closed(), vec!["empty@src".to_string()]);
        let j = json_of(d.path(), &id);
        assert_eq!(
            (j["truncated"].clone(), j["end_reason"].clone()),
            (false.into(), "bye".into())
        );
        assert_eq!(
            fs::metadata(d.path().join(format!("{id}.wav")))
                .unwrap()
                .len(),
            44
        );
        // A call with audio: its note went when the audio began.
        rd.answered_calls().answered(&answered("r4b@src")).unwrap();
        rd.begin(
            CallKey(7),
            &RecordingStart {
                call_id: "r4b@src".into(),
                ..start("r4b")
            },
        );
        assert!(!rd.end_answered("r4b@src", "bye"));
        rd.end(
            CallKey(7),
            CallMeta {
                call_id: "r4b@src".into(),
                recording_id: "r4b".into(),
                key: CallKey(7),
                ..meta_r4()
            },
        );
        assert_eq!(rd.take_closed(), vec!["r4b@src".to_string()]);
        let id = rd
            .answered_calls()
            .answered(&answered("quiet@src"))
            .unwrap();
        rd.finish_answered("shutdown");
        assert_eq!(rd.take_closed(), vec!["quiet@src".to_string()]);
        let j = json_of(d.path(), &id);
        assert_eq!(
            (j["truncated"].clone(), j["end_reason"].clone()),
            (true.into(), "shutdown".into())
        );
        assert_eq!(rd.counters.written, 4);
        assert!(hidden_files(d.path()).is_empty());
    }

    /// A write cut in the middle of a frame: the stray bytes go, the WAV
    /// stays valid. A part that never got its header (power loss) but whose
    /// call is known: an empty recording, not nothing.
    #[test]
    fn parts_are_cut_to_whole_frames_and_headerless_ones_kept_empty() {
        let d = tempfile::tempdir().unwrap();
        let mut rd = RecordingDir::new(d.path(), ctx("siprec")).unwrap();
        rd.begin(CallKey(5), &start("r5"));
        rd.audio(CallKey(5), &[9i16; 800]);
        rd.begin(CallKey(6), &start("r6"));
        std::mem::forget(rd);
        let part5 = d.path().join(".r5.wav.part");
        let mut f = OpenOptions::new().append(true).open(&part5).unwrap();
        f.write_all(&[1, 2, 3]).unwrap();
        drop(f);
        fs::write(d.path().join(".r6.wav.part"), b"").unwrap();
        let mut ids = recover(d.path(), &ctx("siprec")).unwrap();
        ids.sort();
        assert_eq!(ids, vec!["r5", "r6"]);
        let w5 = fs::read(d.path().join("r5.wav")).unwrap();
        assert_eq!(w5.len(), 44 + 1600);
        assert_eq!(
            pbx_core::audio::wav::parse_wav_header(&w5)
                .unwrap()
                .audio_len(w5.len() as u64),
            1600
        );
        let w6 = fs::read(d.path().join("r6.wav")).unwrap();
        assert_eq!(w6.len(), 44);
        assert_eq!(json_of(d.path(), "r6")["call_id"], "r6@src");
    }

    /// The sync thread syncs a directory written to within a few intervals.
    #[test]
    fn a_whole_recording_is_written_as_a_pair_through_the_one_json_writer() {
        let d = tempfile::tempdir().unwrap();
        let mut doc = RecordingDoc::of_call(
            &meta_r4(),
            "w1",
            "edge",
            "folder",
            DocAudio::wav(8000, 0, String::new()),
        );
        doc.call = None;
        let left = vec![100i16; 8000];
        let right = vec![-100i16; 4000];
        let (w, bytes) = write_whole(d.path(), 8000, &left, &right, doc).unwrap();
        assert_eq!(w.duration_ms, 1000);
        assert_eq!(bytes, 44 + 8000 * 4);
        let (len, sha) = hash_file(&w.wav).unwrap();
        let j = json_of(d.path(), "w1");
        assert_eq!(j["audio"]["bytes"], len);
        assert_eq!(j["audio"]["sha256"], sha);
        assert_eq!(j["duration_ms"], 1000);
        assert!(j.get("end_reason").is_none(), "{j}");
        assert!(
            hidden_files(d.path()).is_empty(),
            "{:?}",
            hidden_files(d.path())
        );
        // A directory that cannot be written leaves nothing behind.
        let blocked = d.path().join("blocked");
        fs::write(&blocked, b"a file").unwrap();
        let doc = RecordingDoc::of_call(
            &meta_r4(),
            "w2",
            "edge",
            "folder",
            DocAudio::wav(8000, 0, String::new()),
        );
        assert!(write_whole(&blocked, 8000, &left, &right, doc).is_err());
        assert!(!d.path().join("w2.wav").exists());
    }

    #[test]
    fn written_directories_are_synced_in_the_background() {
        let d = tempfile::tempdir().unwrap();
        let before = fs_syncs();
        mark_unsynced(d.path());
        let t = std::time::Instant::now();
        while fs_syncs() == before {
            assert!(t.elapsed() < SYNC_INTERVAL * 20, "no sync");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
