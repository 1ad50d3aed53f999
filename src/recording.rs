//! Recording files: the engine's calls become `<id>.wav` + `<id>.json` in a directory.
//!
//! In: `begin` / `audio` / `end` calls from the engine ([`RecordingSink`]).
//! Out: a recording pair per call (CONTRACT §3), files of mode 0600.
//!
//! Promises:
//! - Audio is written while the call runs (`.<id>.wav.part`), never held in memory.
//! - A pair appears atomically and durably: the WAV is finalised, fsynced and
//!   renamed, the JSON is written to a temp file, fsynced and renamed last, then
//!   the directory is fsynced. A crash leaves either a `.part` (repairable) or a
//!   complete pair; the presence of `<id>.json` means `<id>.wav` is complete.
//! - A write error (disk full) does not stop other calls: the broken recording is
//!   removed, counted and reported.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pbx_core::audio::wav::WavWriter;
use pbx_core::call::{CallKey, CallMeta, RecordingSink, RecordingStart};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The recording JSON schema version (CONTRACT §3).
pub const SCHEMA: &str = "pbx-edge.recording/1";

/// What every recording of one run shares.
#[derive(Debug, Clone)]
pub struct RecordingContext {
    pub agent_id: String,
    /// "siprec" | "sniff" | "pcap" | "folder"
    pub source: &'static str,
    /// Calls shorter than this are discarded.
    pub min_duration: Duration,
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
    part: PathBuf,
    wav: Option<WavWriter<BufWriter<File>>>,
    error: Option<io::Error>,
}

/// Writes recordings into one directory.
pub struct RecordingDir {
    dir: PathBuf,
    ctx: RecordingContext,
    open: HashMap<CallKey, OpenRecording>,
    pub written: Vec<WrittenRecording>,
    pub counters: RecordingCounters,
    pub errors: Vec<String>,
}

impl RecordingDir {
    /// Opens (and creates, mode 0700) `dir`.
    pub fn new(dir: &Path, ctx: RecordingContext) -> io::Result<Self> {
        create_private_dir(dir)?;
        Ok(RecordingDir {
            dir: dir.to_path_buf(),
            ctx,
            open: HashMap::new(),
            written: Vec::new(),
            counters: RecordingCounters::default(),
            errors: Vec::new(),
        })
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
        let mut buf = wav.finalize()?;
        buf.flush()?;
        let file = buf.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        if (meta.duration_ms() as u128) < self.ctx.min_duration.as_millis() {
            fs::remove_file(&rec.part)?;
            return Ok(None);
        }
        let (bytes, sha) = hash_file(&rec.part)?;
        let wav_path = self.dir.join(format!("{}.wav", rec.id));
        let json_path = self.dir.join(format!("{}.json", rec.id));
        fs::rename(&rec.part, &wav_path)?;
        let doc = recording_json(meta, &rec.id, &self.ctx, bytes, &sha);
        let tmp = self.dir.join(format!(".{}.json.tmp", rec.id));
        {
            let mut f = create_private_file(&tmp)?;
            serde_json::to_writer_pretty(&mut f, &doc)?;
            f.write_all(b"\n")?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &json_path)?;
        sync_dir(&self.dir)?;
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
        let part = self.dir.join(format!(".{}.wav.part", start.recording_id));
        let opened = create_private_file(&part).and_then(|f| {
            WavWriter::new(BufWriter::with_capacity(64 * 1024, f), start.sample_rate, 2)
        });
        let (wav, error) = match opened {
            Ok(w) => (Some(w), None),
            Err(e) => (None, Some(e)),
        };
        self.open.insert(
            call,
            OpenRecording {
                id: start.recording_id.clone(),
                part,
                wav,
                error,
            },
        );
    }

    fn audio(&mut self, call: CallKey, frames: &[i16]) {
        if let Some(rec) = self.open.get_mut(&call) {
            if rec.error.is_some() {
                return;
            }
            if let Some(w) = rec.wav.as_mut() {
                if let Err(e) = w.write_samples(frames) {
                    rec.error = Some(e);
                }
            }
        }
    }

    fn end(&mut self, call: CallKey, meta: CallMeta) {
        let Some(rec) = self.open.remove(&call) else {
            return;
        };
        let part = rec.part.clone();
        let id = rec.id.clone();
        match self.finish_files(rec, &meta) {
            Ok(Some(w)) => {
                self.counters.written += 1;
                self.written.push(w);
            }
            Ok(None) => self.counters.too_short += 1,
            Err(e) => {
                let _ = fs::remove_file(&part);
                self.counters.failed += 1;
                self.errors.push(format!("recording {id}: {e}"));
            }
        }
    }
}

/// The recording JSON of CONTRACT §3, plus pbx-edge's own fields.
pub fn recording_json(
    meta: &CallMeta,
    id: &str,
    ctx: &RecordingContext,
    audio_bytes: u64,
    sha256: &str,
) -> Value {
    json!({
        "schema": SCHEMA,
        "recording_id": id,
        "agent_id": ctx.agent_id,
        "source": ctx.source,
        "call_id": meta.call_id,
        "from": {"number": meta.from.number, "name": meta.from.name, "uri": meta.from.uri},
        "to": {"number": meta.to.number, "name": meta.to.name, "uri": meta.to.uri},
        "direction": "unknown",
        "started_at": meta.started_at.to_rfc3339(),
        "answered_at": meta.answered_at.map(|t| t.to_rfc3339()),
        "ended_at": meta.ended_at.to_rfc3339(),
        "media_started_at": meta.media_started_at.to_rfc3339(),
        "duration_ms": meta.duration_ms(),
        "audio": {
            "format": "wav",
            "sample_rate": meta.sample_rate,
            "channels": 2,
            "bytes": audio_bytes,
            "sha256": sha256,
        },
        "channels": meta.channels,
        "dtmf": meta.dtmf,
        "end_reason": meta.end_reason,
        "truncated": meta.end_reason.is_cut(),
        "caller_known": meta.caller_known,
        "warnings": meta.warnings,
    })
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

/// Create a new file readable only by its owner (recordings hold personal data).
pub fn create_private_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

/// Create `dir` (and parents) with mode 0700 if it does not exist.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// fsync a directory so renames in it are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
