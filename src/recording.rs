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
use pbx_core::time::Timestamp;
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
    part: PathBuf,
    /// Audio bytes written since the last flush to the OS.
    unflushed: u64,
    /// Flush after this many audio bytes (about one second of audio), so a
    /// crash of the process loses at most that much.
    flush_every: u64,
    wav: Option<WavWriter<BufWriter<File>>>,
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

    /// New settings (a configuration reload): recordings that begin from now
    /// on carry them; recordings already open keep the context they began with.
    pub fn set_context(&mut self, ctx: RecordingContext) {
        self.ctx = ctx;
    }

    /// Write recordings that begin from now on into `dir` (created 0700);
    /// open ones finish where they began. On an error nothing changes.
    pub fn set_dir(&mut self, dir: &Path) -> io::Result<()> {
        if dir != self.dir {
            create_private_dir(dir)?;
            self.dir = dir.to_path_buf();
        }
        Ok(())
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
        let mut buf = wav.finalize()?;
        buf.flush()?;
        let file = buf.into_inner().map_err(|e| e.into_error())?;
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
        let doc = recording_json(meta, &rec.id, &rec.ctx, bytes, &sha);
        write_json(&rec.dir, &rec.id, &doc)?;
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
        let sidecar = self.dir.join(format!(".{}.start.json", start.recording_id));
        if let Ok(mut f) = create_private_file(&sidecar) {
            let mut v = serde_json::to_value(start).unwrap_or(Value::Null);
            if let Some(o) = v.as_object_mut() {
                o.insert("source".into(), self.ctx.source.into());
                o.insert("agent_id".into(), self.ctx.agent_id.clone().into());
            }
            let _ = serde_json::to_writer(&mut f, &v);
        }
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
                unflushed: 0,
                flush_every: u64::from(start.sample_rate) * 4,
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
                let mut res = w.write_samples(frames);
                rec.unflushed += frames.len() as u64 * 2;
                if res.is_ok() && rec.unflushed >= rec.flush_every {
                    rec.unflushed = 0;
                    res = w.flush();
                }
                if let Err(e) = res {
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
        let dir = rec.dir.clone();
        match self.finish_files(rec, &meta) {
            Ok(Some(w)) => {
                self.counters.written += 1;
                self.written.push(w);
            }
            Ok(None) => {
                let _ = fs::remove_file(dir.join(format!(".{id}.start.json")));
                self.counters.too_short += 1
            }
            Err(e) => {
                let _ = fs::remove_file(&part);
                let _ = fs::remove_file(dir.join(format!(".{id}.start.json")));
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
        "recorded_call_id": meta.recorded_call_id,
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

/// `<id>.json` in `dir`, durably and atomically: a temp file, fsynced, then
/// renamed (the caller fsyncs the directory).
fn write_json(dir: &Path, id: &str, doc: &Value) -> io::Result<()> {
    let tmp = dir.join(format!(".{id}.json.tmp"));
    {
        let mut f = create_private_file(&tmp)?;
        serde_json::to_writer_pretty(&mut f, doc)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join(format!("{id}.json")))
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

/// Complete the recordings a crash (or power loss) cut off in `dir`: every
/// `.<id>.wav.part` gets a valid WAV header for the audio that reached the disk,
/// becomes `<id>.wav`, and gets a `<id>.json` from what was known when the call
/// started (its source, ids, parties and times, kept in the start sidecar),
/// with `"truncated": true` and `"end_reason": "crash"`; `ended_at` is the end
/// of the audio kept. A `<id>.wav` whose JSON never got written (a crash
/// between the two renames: the WAV is complete) gets its JSON the same way,
/// with `"truncated": false`. `ctx` names the source and agent of sidecars
/// without them. Returns the ids recovered. Left-over temp files of finished
/// recordings are removed.
pub fn recover(dir: &Path, ctx: &RecordingContext) -> io::Result<Vec<String>> {
    use pbx_core::audio::wav::repair_wav;
    let mut recovered = Vec::new();
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        let Some(name) = p.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
            continue;
        };
        if name.starts_with('.') && name.ends_with(".json.tmp") {
            // The JSON never got renamed: its WAV is complete (renamed first) or
            // still a .part; either way the JSON is rebuilt below or from the pair.
            let _ = fs::remove_file(&p);
            continue;
        }
        if let Some(id) = name
            .strip_suffix(".start.json")
            .and_then(|n| n.strip_prefix('.'))
        {
            // A finished WAV without its JSON: renamed, then the crash.
            let wav_path = dir.join(format!("{id}.wav"));
            let part = dir.join(format!(".{id}.wav.part"));
            if part.exists() {
                continue; // completed with its .part below
            }
            if wav_path.is_file() && !dir.join(format!("{id}.json")).exists() {
                complete_json(dir, id, ctx, &p, false)?;
                recovered.push(id.to_string());
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
        let sidecar = dir.join(format!(".{id}.start.json"));
        let mut f = OpenOptions::new().read(true).write(true).open(&p)?;
        let len = f.metadata()?.len();
        if repair_wav(&mut f, len).is_err() {
            // Not even a header reached the disk: nothing to keep.
            drop(f);
            fs::remove_file(&p)?;
            let _ = fs::remove_file(&sidecar);
            continue;
        }
        f.sync_all()?;
        drop(f);
        fs::rename(&p, dir.join(format!("{id}.wav")))?;
        complete_json(dir, &id, ctx, &sidecar, true)?;
        recovered.push(id);
    }
    Ok(recovered)
}

/// Writes `<id>.json` for the complete `<id>.wav` of a call whose end was
/// never recorded, from its start sidecar (then removed).
fn complete_json(
    dir: &Path,
    id: &str,
    ctx: &RecordingContext,
    sidecar: &Path,
    truncated: bool,
) -> io::Result<()> {
    use pbx_core::audio::wav::parse_wav_header;
    let wav_path = dir.join(format!("{id}.wav"));
    let sj: Value = fs::read(sidecar)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
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
        .or_else(|| time("started_at"))
        .map(|t| t.add_micros(duration_ms * 1000))
        .or_else(|| {
            let m = fs::metadata(&wav_path).and_then(|m| m.modified()).ok()?;
            let us = m.duration_since(std::time::UNIX_EPOCH).ok()?.as_micros();
            Some(Timestamp::from_micros(i64::try_from(us).ok()?))
        })
        .map(Timestamp::to_rfc3339);
    let text =
        |k: &str, default: &str| -> Value { sj[k].as_str().unwrap_or(default).to_string().into() };
    let channel = |index: usize, party: &str| json!({"index": index, "party": party, "codec": "", "packets": 0, "lost": 0});
    let warning = if truncated {
        "the daemon stopped while recording this call; the audio that reached the disk was kept; its packet counts were lost"
    } else {
        "the daemon stopped while saving this recording: the audio is complete; the call's end details and packet counts were lost"
    };
    let doc = json!({
        "schema": SCHEMA,
        "recording_id": id,
        "agent_id": text("agent_id", &ctx.agent_id),
        "source": text("source", ctx.source),
        "call_id": sj["call_id"],
        "from": sj["from"],
        "to": sj["to"],
        "direction": "unknown",
        "started_at": sj["started_at"],
        "answered_at": sj["answered_at"],
        "ended_at": ended_at,
        "media_started_at": sj["media_started_at"],
        "duration_ms": duration_ms,
        "audio": {"format": "wav", "sample_rate": rate, "channels": 2, "bytes": bytes, "sha256": sha},
        "channels": [channel(0, "caller"), channel(1, "callee")],
        "dtmf": [],
        "end_reason": "crash",
        "truncated": truncated,
        "warnings": [warning],
    });
    write_json(dir, id, &doc)?;
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
}
