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
//!   memory: every chunk the engine hands over (at least 40 ms of audio, at
//!   most its hold-back window `recording.jitter` behind real time) is passed
//!   to the kernel with one `write()` before [`RecordingSink::audio`] returns,
//!   and the WAV header is on disk as soon as the recording's file exists.
//!   The kernel's page cache survives the death of the process (SIGKILL, a
//!   panic, the OOM killer), so a crash of pbx-edge loses only what the
//!   engine still held: at most the hold-back window plus one chunk
//!   (docs/durability.md). One exception: live sources create the files off
//!   the engine thread ([`opener`]); until a recording's `.part` is open, its
//!   first audio waits in memory (at most [`WAITING_MAX_S`] seconds, then
//!   the engine waits for the file).
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
//! - A write error (disk full, an I/O error) does not stop other calls, and
//!   does not lose what was written: the recording stops there, and the audio
//!   that reached the disk becomes the recording, marked truncated, with a
//!   warning naming the error ([`salvage`]); when even that cannot be
//!   written, its files stay for crash recovery at the next start.
//! - Encryption at rest (`RecordingContext::seal`, from
//!   `spool.encryption_key_file`): every file written here (`.part`, WAV,
//!   JSON, sidecars) is sealed ([`crypt`]): the `.part` record by record (one
//!   record per `audio` chunk, so the crash windows above hold), the finished
//!   WAV sealed anew with its true header, the JSON whole. The JSON's
//!   `audio.bytes`/`sha256` always describe the plaintext WAV (what the cloud
//!   receives). [`open_recording`] is the one way to read any of these files,
//!   sealed or not (a live reader of a `.part` uses [`OpenMode::Follow`],
//!   kept open between reads).
//! - A mono mix ([`write_whole`] with one channel) is a 1-channel WAV.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use pbx_core::audio::wav::WavWriter;
use pbx_core::call::{CallKey, CallMeta, PartyInfo, RecordingSink, RecordingStart};
use pbx_core::time::Timestamp;
use serde_json::{json, Value};

pub mod doc;
pub use crate::spoolfile::{crypt, flac};
pub use crate::spoolfile::{
    hash_file, hash_file_pair, hash_recording, open_recording, read_recording, HashingWriter,
    Keyring, OpenMode, RecordingReader, SpoolWriter,
};
pub use crate::sys::{create_private_dir, create_private_file, sync_dir};
pub use doc::{
    CallFields, ChannelSummary, DocAudio, DocChannels, DocParty, FolderFields, RecordingDoc, SCHEMA,
};

mod answered;
pub use answered::*;
mod finish;
use finish::*;
mod finisher;
mod opener;
mod sync;
pub use sync::*;
mod recover;
pub use recover::*;
mod files;
pub use files::*;
pub mod roles;
pub use roles::{ChannelRole, RoleRules};
pub mod tap;
pub use tap::{AudioTap, CallTap, RecordingFile, TapBegin, TapEnd};

/// What every recording of one run shares.
#[derive(Debug, Clone)]
pub struct RecordingContext {
    pub agent_id: String,
    /// "siprec" | "sniff" | "pcap" | "folder"
    pub source: &'static str,
    /// Calls shorter than this are discarded.
    pub min_duration: Duration,
    /// Encryption at rest (`spool.encryption_key_file`): every file written
    /// (`.part`, WAV, JSON, sidecars) is sealed with the current key
    /// ([`crypt`]); `None`: plain files.
    pub seal: Option<Arc<Keyring>>,
    /// Gets each recording's audio as it is written (the live stream);
    /// `None`: nothing besides the file.
    pub tap: Option<Arc<dyn AudioTap>>,
    /// Who is who (`[roles]`).
    pub roles: RoleRules,
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
pub(crate) fn apply_settings(
    engine: &mut pbx_core::call::CallEngine,
    out: &mut RecordingDir,
    s: RecordingSettings,
) {
    // Calls answered from now on without audio take their rate from it.
    out.answered.set_rate_policy(s.engine.sample_rate);
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

impl RecordingCounters {
    /// A recording of `bytes` written (counted in [`TOTALS`] too).
    pub(crate) fn wrote(&mut self, bytes: u64) {
        self.written += 1;
        self.bytes += bytes;
        TOTALS.wrote(bytes);
    }

    /// A recording that could not be written (counted in [`TOTALS`] too).
    pub(crate) fn failed_one(&mut self) {
        self.failed += 1;
        TOTALS.failed();
    }
}

/// Recordings written and failed, and their bytes, by every source of this
/// process since it started (`pbx_edge_recordings_written_total`,
/// `..._failed_total`, `pbx_edge_bytes_written_total`). A source's own
/// counters ([`RecordingCounters`]) start again at zero with each instance
/// (a source restarted by a reload, a SIPREC listener replaced) and its
/// status entry goes when it ends: a sum over the entries would go
/// backwards. These never do.
#[derive(Debug)]
pub struct RecordingTotals {
    written: AtomicU64,
    failed: AtomicU64,
    bytes: AtomicU64,
}

/// This process's [`RecordingTotals`].
pub static TOTALS: RecordingTotals = RecordingTotals {
    written: AtomicU64::new(0),
    failed: AtomicU64::new(0),
    bytes: AtomicU64::new(0),
};

impl RecordingTotals {
    pub(crate) fn wrote(&self, bytes: u64) {
        self.written.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    /// Recordings written, recordings failed, bytes written.
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.written.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }
}

struct OpenRecording {
    id: String,
    /// The SIP Call-ID of the call (for [`RecordingDir::take_closed`]).
    call_id: String,
    part: PathBuf,
    /// Unbuffered below the writer's own conversion buffer: every `audio`
    /// call ends in one `write()` (see the module doc).
    wav: Option<PartWriter>,
    error: Option<io::Error>,
    /// The context when the call began: a reload changes it for new calls
    /// only (agent id, min_duration). Shared by the calls that began
    /// under it.
    ctx: Arc<RecordingContext>,
    /// The directory it is written in (a reload may move new ones elsewhere).
    dir: PathBuf,
    /// Sample frames written so far.
    frames: u64,
    tap: Option<Box<dyn CallTap>>,
    /// While its files are being created ([`opener`]): the audio handed
    /// over meanwhile, written as soon as the `.part` is open.
    waiting: Option<Vec<i16>>,
    /// The tap's start, told once the `.part` is open.
    tap_begin: Option<TapBegin>,
    /// The WAV's sample rate.
    rate: u32,
    /// Its plain `.part` finalized (header patched) and fsynced, `wav`
    /// taken ([`finish_pair`]).
    finalized: bool,
    /// Its WAV's length and SHA-256, computed with another's
    /// ([`finish_pair`]).
    hashed: Option<(u64, String)>,
}

/// The most audio a recording keeps in memory while its file is being
/// created, in seconds: past it the engine waits for the file.
const WAITING_MAX_S: usize = 4;

/// Writes recordings into one directory.
pub struct RecordingDir {
    dir: PathBuf,
    ctx: Arc<RecordingContext>,
    /// Boxed: the table's spare room then costs a pointer a slot, not a
    /// recording's state.
    open: HashMap<CallKey, Box<OpenRecording>>,
    /// The latest recordings written (at most 1024).
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
    /// Whether every `audio` call ends in a `write()` (live sources: what a
    /// crash of the process leaves is in the page cache). Off for imports,
    /// which can be run again: audio then goes out in 64 KiB writes.
    write_through: bool,
    /// Finishes ended recordings off this thread (live sources,
    /// [`RecordingDir::finish_in_background`]); `None`: in [`RecordingSink::end`].
    finisher: Option<finisher::Finisher>,
    /// Creates recordings' files off this thread (live sources, with the
    /// finisher); `None`: in [`RecordingSink::begin`].
    opener: Option<opener::Opener>,
    /// Recordings left unfinished by a write error, and when they are next
    /// tried ([`STRANDED_RETRY`]).
    stranded: Vec<Stranded>,
    retry_at: Option<std::time::Instant>,
    /// Finish ended recordings two at a time ([`RecordingDir::finish_in_pairs`],
    /// imports): the one ended first waits here for the next.
    pairs: bool,
    held: Option<Box<finisher::Job>>,
}

/// The most recent recordings and errors a [`RecordingDir`] keeps for its
/// owner to read (a daemon runs for months: these must not grow).
const KEEP_WRITTEN: usize = 1024;
const KEEP_ERRORS: usize = 10_000;

impl RecordingDir {
    fn remember(&mut self, w: WrittenRecording) {
        if self.written.len() >= KEEP_WRITTEN {
            self.written.remove(0);
        }
        self.written.push(w);
    }

    fn error(&mut self, e: String) {
        if self.errors.len() < KEEP_ERRORS {
            self.errors.push(e);
        }
    }

    /// Opens (and creates, mode 0700) `dir`.
    pub fn new(dir: &Path, ctx: RecordingContext) -> io::Result<Self> {
        create_private_dir(dir)?;
        Ok(RecordingDir {
            dir: dir.to_path_buf(),
            answered: AnsweredCalls::new(dir, &ctx),
            ctx: Arc::new(ctx),
            open: HashMap::new(),
            written: Vec::new(),
            counters: RecordingCounters::default(),
            errors: Vec::new(),
            closed: Vec::new(),
            track_closed: false,
            write_through: true,
            finisher: None,
            opener: None,
            stranded: Vec::new(),
            retry_at: None,
            pairs: false,
            held: None,
        })
    }

    /// Finish ended recordings (without a finisher) two at a time: their
    /// WAVs are hashed together, about twice as fast as one after the
    /// other ([`finish_pair`]). A recording that ends waits, its `.part`
    /// as it is, for the next one to end; [`Self::finish_held`] finishes
    /// the last. For imports: their recordings appear a call later, and a
    /// crash leaves one more `.part` to a rerun.
    pub(crate) fn finish_in_pairs(&mut self, on: bool) {
        self.pairs = on;
        if !on {
            self.finish_held();
        }
    }

    /// Finishes the recording waiting for a pair ([`Self::finish_in_pairs`]),
    /// if any: at the end of the input.
    pub(crate) fn finish_held(&mut self) {
        if let Some(job) = self.held.take() {
            let done = finish_recording(job.rec, &job.meta);
            self.complete(done);
        }
    }

    /// Finish ended recordings on worker threads ([`finisher`]) instead of
    /// in [`RecordingSink::end`]: their results (counters, [`Self::take_closed`])
    /// arrive with [`Self::collect`]. If the threads cannot start, recordings
    /// go on being finished in `end`.
    /// Their files are created off this thread too ([`opener`]).
    pub(crate) fn finish_in_background(&mut self) {
        if self.finisher.is_none() {
            match finisher::Finisher::new(finisher::WORKERS) {
                Ok(f) => self.finisher = Some(f),
                Err(e) => tracing::warn!("recordings are finished on the engine thread: {e}"),
            }
        }
        if self.opener.is_none() {
            match opener::Opener::new() {
                Ok(o) => self.opener = Some(o),
                Err(e) => tracing::warn!("recordings' files are created on the engine thread: {e}"),
            }
        }
    }

    /// Takes in the files the opener has created, or (`wait_for`) waits
    /// until that recording's are: their waiting audio is written.
    fn take_opened(&mut self, wait_for: Option<CallKey>) {
        loop {
            let block =
                wait_for.is_some_and(|k| self.open.get(&k).is_some_and(|r| r.waiting.is_some()));
            let Some(o) = self.opener.as_mut().and_then(|op| op.try_opened(block)) else {
                break;
            };
            if let Some(rec) = self.open.get_mut(&o.key) {
                attach(rec, o.writer, self.write_through);
            }
        }
        // The opener gone with jobs pending: those recordings never open.
        if let Some(rec) = wait_for.and_then(|k| self.open.get_mut(&k)) {
            if rec.waiting.is_some() {
                attach(
                    rec,
                    Err(io::Error::other("the recording's file was never created")),
                    self.write_through,
                );
            }
        }
    }

    /// Takes in the recordings the finisher has finished since the last
    /// call (counted, remembered, their Call-IDs closed). True if any.
    pub(crate) fn collect(&mut self) -> bool {
        self.take_opened(None);
        let mut any = false;
        while let Some(d) = self.finisher.as_mut().and_then(|f| f.try_done(false)) {
            self.complete(d);
            any = true;
        }
        any | self.retry_stranded()
    }

    /// How long until recordings left unfinished by a write error are tried
    /// again; `None`: there are none.
    pub(crate) fn stranded_retry(&self) -> Option<Duration> {
        self.retry_at
            .map(|t| t.saturating_duration_since(std::time::Instant::now()))
    }

    /// Tries the stranded recordings again when due; true if any became a
    /// recording.
    fn retry_stranded(&mut self) -> bool {
        if self.stranded_retry().is_none_or(|d| !d.is_zero()) {
            return false;
        }
        let mut any = false;
        for s in std::mem::take(&mut self.stranded) {
            match salvage(&s) {
                Ok(Some((w, _, bytes))) => {
                    tracing::info!(id = %s.id, "recording completed from what reached the disk before a write error");
                    self.counters.wrote(bytes);
                    self.remember(w);
                    any = true;
                }
                Ok(None) => {}
                Err(_) => self.stranded.push(s),
            }
        }
        self.retry_at =
            (!self.stranded.is_empty()).then(|| std::time::Instant::now() + STRANDED_RETRY);
        any
    }

    /// Recordings being finished (or their files created) in the
    /// background, not collected yet.
    pub(crate) fn finishing(&self) -> usize {
        self.finisher.as_ref().map_or(0, |f| f.pending())
            + self.opener.as_ref().map_or(0, |o| o.pending())
    }

    /// [`Self::wait_finished`] at a stop, within `budget`: what is not
    /// finished by then is left durable for the next start
    /// ([`defer_recording`]: its `.part` fsynced, its end details in a
    /// note; recovery finishes it as the finish would have), so a stop with
    /// hundreds of long calls (an encrypted spool seals each anew) ends in
    /// time. Recordings being finished at the deadline are finished.
    pub(crate) fn wait_finished_within(&mut self, budget: Duration) {
        let deadline = std::time::Instant::now() + budget;
        loop {
            let Some(f) = self.finisher.as_mut() else {
                return;
            };
            if f.pending() == 0 {
                return;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                f.defer_rest();
                self.wait_finished();
                return;
            }
            match f.try_done_within(left) {
                Ok(d) => self.complete(d),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                // No worker left to answer: waiting on would only spin.
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    self.wait_finished();
                    return;
                }
            }
        }
    }

    /// Waits until every recording handed to the finisher is finished, and
    /// takes them in (a stop, the end of input).
    pub(crate) fn wait_finished(&mut self) {
        while let Some(d) = self.finisher.as_mut().and_then(|f| f.try_done(true)) {
            self.complete(d);
        }
    }

    /// Counts a finished recording and reports its Call-ID closed.
    fn complete(&mut self, d: Done) {
        if let Some(s) = d.stranded {
            self.stranded.push(s);
            self.retry_at
                .get_or_insert_with(|| std::time::Instant::now() + STRANDED_RETRY);
        }
        match d.outcome {
            Outcome::Written(w, bytes) => {
                self.counters.wrote(bytes);
                self.remember(w);
            }
            Outcome::TooShort => self.counters.too_short += 1,
            Outcome::Deferred => {
                tracing::warn!(id = %d.id, "recording: the stop ran out of time to finish it; its audio and end details are on disk, the next start finishes it");
            }
            Outcome::Failed(e) => {
                self.counters.failed_one();
                self.error(format!("recording {}: {e}", d.id));
            }
        }
        self.closed_call(&d.call_id);
    }

    /// Whether each `audio` call is written through to the file at once
    /// (the default, for live sources) or buffered in 64 KiB writes (for
    /// imports, which lose nothing to a crash that a rerun cannot redo).
    pub(crate) fn set_write_through(&mut self, on: bool) {
        self.write_through = on;
    }

    /// New settings (a configuration reload): recordings that begin from now
    /// on carry them; recordings already open keep the context they began with.
    pub(crate) fn set_context(&mut self, ctx: RecordingContext) {
        self.answered.set_context(&ctx);
        self.ctx = Arc::new(ctx);
    }

    /// Write recordings that begin from now on into `dir` (created 0700);
    /// open ones finish where they began. On an error nothing changes.
    pub(crate) fn set_dir(&mut self, dir: &Path) -> io::Result<()> {
        if dir != self.dir {
            create_private_dir(dir)?;
            self.dir = dir.to_path_buf();
            self.answered.set_dir(dir);
        }
        Ok(())
    }

    /// The handle the signalling side records answered calls with (see
    /// [`AnsweredCalls`]); it follows this directory's settings.
    pub(crate) fn answered_calls(&self) -> AnsweredCalls {
        self.answered.clone()
    }

    /// Whether a recording of the call with this SIP Call-ID is open or
    /// being finished (its pair not durable yet).
    pub(crate) fn is_recording(&self, call_id: &str) -> bool {
        self.finisher.as_ref().is_some_and(|f| f.has(call_id))
            || self.open.values().any(|r| r.call_id == call_id)
    }

    /// Keep the Call-IDs of recordings that end for [`RecordingDir::take_closed`]
    /// (the SIPREC source, which drains them; others never ask).
    pub(crate) fn track_closed(&mut self, on: bool) {
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
        self.collect();
        std::mem::take(&mut self.closed)
    }

    /// Turn the calls still answered without audio into recordings of their
    /// own (an empty WAV, `truncated`, `end_reason` = `reason`, ended `at`
    /// the stop): what a stop does with calls whose media never came.
    pub(crate) fn finish_answered(&mut self, reason: &str, at: Timestamp) {
        for (call_id, sidecar) in self.answered.take_all() {
            self.write_answered(&call_id, &sidecar, reason, true, at);
        }
    }

    /// The call with this Call-ID ended (`reason`: `bye`, `rtp_timeout`)
    /// `at` that time: if its audio never began, it becomes a recording of
    /// its own, an empty WAV, not truncated (unless `min_duration` discards
    /// it). Whether such a recording was made.
    pub fn end_answered(&mut self, call_id: &str, reason: &str, at: Timestamp) -> bool {
        let Some(sidecar) = self.answered.take(call_id) else {
            return false;
        };
        if !self.ctx.min_duration.is_zero() {
            let _ = fs::remove_file(&sidecar);
            self.counters.too_short += 1;
            self.closed_call(call_id);
            return false;
        }
        self.write_answered(call_id, &sidecar, reason, false, at)
    }

    fn write_answered(
        &mut self,
        call_id: &str,
        sidecar: &Path,
        reason: &str,
        cut: bool,
        at: Timestamp,
    ) -> bool {
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
        let made = match complete_answered(
            &dir,
            &id,
            &self.ctx,
            sidecar,
            reason,
            cut,
            warning,
            Some(at),
        ) {
            Ok(()) => {
                let wav = dir.join(format!("{id}.wav"));
                self.counters
                    .wrote(fs::metadata(&wav).map(|m| m.len()).unwrap_or(0));
                self.remember(WrittenRecording {
                    json: dir.join(format!("{id}.json")),
                    wav,
                    id,
                    duration_ms: 0,
                });
                true
            }
            Err(e) => {
                self.counters.failed_one();
                self.error(format!("recording {id}: {e}"));
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
        let part = self.dir.join(format!(".{}.wav.part", start.recording_id));
        let tap_begin = self.ctx.tap.as_ref().map(|_| TapBegin {
            recording_id: start.recording_id.clone(),
            sample_rate: start.sample_rate,
            meta: start_meta(&v, &self.ctx.roles),
            file: RecordingFile::new(
                part.clone(),
                self.dir.join(format!("{}.wav", start.recording_id)),
                self.ctx.seal.clone(),
            ),
        });
        let job = Box::new(opener::OpenJob {
            key: call,
            sidecar,
            sidecar_doc: v,
            part: part.clone(),
            dir: self.dir.clone(),
            sample_rate: start.sample_rate,
            seal: self.ctx.seal.clone(),
            call_id: start.call_id.clone(),
            answered: self.answered.clone(),
        });
        let mut rec = OpenRecording {
            id: start.recording_id.clone(),
            call_id: start.call_id.clone(),
            part,
            wav: None,
            error: None,
            ctx: self.ctx.clone(),
            dir: self.dir.clone(),
            frames: 0,
            tap: None,
            waiting: Some(Vec::new()),
            tap_begin,
            rate: start.sample_rate,
            finalized: false,
            hashed: None,
        };
        // Off this thread when it can be; else here.
        let opened = match self.opener.as_mut() {
            Some(o) => o.submit(job).err().map(|j| (*j).run()),
            None => Some((*job).run()),
        };
        if let Some(o) = opened {
            attach(&mut rec, o.writer, self.write_through);
        }
        self.open.insert(call, Box::new(rec));
    }

    fn audio(&mut self, call: CallKey, frames: &[i16]) {
        let Some(rec) = self.open.get_mut(&call) else {
            return;
        };
        if let Some(w) = rec.waiting.as_mut() {
            w.extend_from_slice(frames);
            let max = WAITING_MAX_S * rec.rate as usize * 2;
            if w.len() > max {
                self.take_opened(Some(call));
            }
            return;
        }
        write_audio(rec, frames, self.write_through);
    }

    fn end(&mut self, call: CallKey, meta: CallMeta) {
        // Its files first, if they are still being created.
        if self.open.get(&call).is_some_and(|r| r.waiting.is_some()) {
            self.take_opened(Some(call));
        }
        let Some(rec) = self.open.remove(&call) else {
            return;
        };
        let rec = *rec;
        // Its answered note, if its start sidecar could not replace it: it
        // goes once the recording has audio on disk to stand for the call;
        // with nothing written, it stays and becomes the call's (empty)
        // recording when the call is settled ([`Self::end_answered`]).
        if rec.wav.is_some() {
            self.answered.forget(&rec.call_id);
        }
        let job = Box::new(finisher::Job { rec, meta });
        let job = match self.finisher.as_mut() {
            Some(f) => match f.submit(job) {
                Ok(()) => return,
                Err(job) => job,
            },
            None => job,
        };
        if self.pairs && pairable(&job) {
            match self.held.take() {
                None => self.held = Some(job),
                Some(first) => {
                    let [a, b] = finish_pair(*first, *job);
                    self.complete(a);
                    self.complete(b);
                }
            }
            return;
        }
        let done = finish_recording(job.rec, &job.meta);
        self.complete(done);
    }
}

impl Drop for RecordingDir {
    /// A recording waiting for a pair ([`RecordingDir::finish_in_pairs`])
    /// is finished, not left as a `.part`.
    fn drop(&mut self) {
        self.finish_held();
    }
}

/// The `.part` of `rec` is open (or could not be): the tap is told, and the
/// audio that waited for it is written.
fn attach(rec: &mut OpenRecording, writer: io::Result<PartWriter>, write_through: bool) {
    match writer {
        Ok(w) => rec.wav = Some(w),
        Err(e) => rec.error = Some(e),
    }
    if let (Some(t), Some(b), None) = (&rec.ctx.tap, rec.tap_begin.take(), &rec.error) {
        rec.tap = t.begin(b);
    }
    rec.tap_begin = None;
    if let Some(waiting) = rec.waiting.take() {
        if !waiting.is_empty() {
            write_audio(rec, &waiting, write_through);
        }
    }
}

/// Writes a chunk of `rec`'s audio: through to the kernel at once
/// (`write_through`, live sources: the page cache is safe from a crash of
/// the process) before the engine goes on, or buffered (imports).
fn write_audio(rec: &mut OpenRecording, frames: &[i16], write_through: bool) {
    if rec.error.is_some() {
        return;
    }
    let Some(w) = rec.wav.as_mut() else {
        return;
    };
    let res = if write_through {
        w.write_through(frames)
    } else {
        w.write_samples(frames)
    };
    if let Err(e) = res {
        rec.error = Some(e);
    } else {
        // In the file now (the tap may read it from there).
        if let Some(t) = rec.tap.as_mut() {
            t.audio(rec.frames, frames);
        }
        rec.frames += (frames.len() / 2) as u64;
    }
    if write_through {
        mark_unsynced(&rec.dir);
    }
}

/// The metadata known when a recording begins, in CONTRACT §3's shape (for
/// the live stream's `start`), from the start sidecar's value.
fn start_meta(sidecar: &Value, roles: &RoleRules) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("schema".into(), SCHEMA.into());
    for k in [
        "recording_id",
        "agent_id",
        "source",
        "call_id",
        "from",
        "to",
        "started_at",
        "answered_at",
        "media_started_at",
    ] {
        if let Some(v) = sidecar.get(k) {
            m.insert(k.into(), v.clone());
        }
    }
    let party = |k: &str| serde_json::from_value::<DocParty>(sidecar[k].clone()).ok();
    let (from, to) = (party("from"), party("to"));
    let signalling = serde_json::from_value(sidecar["signalling"].clone()).ok();
    let (direction, roles) = roles.classify_with(from.as_ref(), to.as_ref(), "unknown", signalling);
    m.insert("direction".into(), direction.into());
    let channels: Vec<Value> = roles
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let party = ["caller", "callee"][i];
            let mut c = json!({"index": i, "party": party, "role": r.role});
            if let Some(e) = &r.extension {
                c["extension"] = e.clone().into();
            }
            c
        })
        .collect();
    m.insert("channels".into(), channels.into());
    let ids = doc::call_ids(
        &serde_json::from_value(sidecar["ids"].clone()).unwrap_or_default(),
        None,
    );
    if !ids.is_empty() {
        m.insert("ids".into(), serde_json::to_value(ids).unwrap_or_default());
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests;
