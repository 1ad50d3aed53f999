//! Crash recovery: what a crash or power loss cut off in a spool directory
//! becomes complete recording pairs at the next start.

use super::*;

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
    recover_spool(dir, ctx).map(|r| r.ids)
}

/// What a recovery did.
#[derive(Debug, Default)]
pub struct Recovery {
    /// The ids of the recordings completed.
    pub ids: Vec<String>,
    /// Files whose recovery failed (an I/O error, a file that cannot be
    /// opened): left as they are for a later try ([`recover_again`]).
    pub left: Vec<PathBuf>,
}

/// [`recover`], also naming the files left for a later try.
pub fn recover_spool(dir: &Path, ctx: &RecordingContext) -> io::Result<Recovery> {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    Ok(recover_entries(dir, entries, ctx))
}

/// Tries again exactly `left` (files an earlier recovery of `dir` could not
/// complete), and nothing else: the daemon calls this while recording, when
/// the `.part`s of calls in progress are in the same directory (their names
/// are never those of files left by an earlier process). Files gone since
/// are dropped from the list.
pub fn recover_again(dir: &Path, left: &[PathBuf], ctx: &RecordingContext) -> Recovery {
    let mut entries: Vec<PathBuf> = left
        .iter()
        .filter(|p| fs::symlink_metadata(p).is_ok())
        .cloned()
        .collect();
    entries.sort();
    entries.dedup();
    recover_entries(dir, entries, ctx)
}

fn recover_entries(dir: &Path, entries: Vec<PathBuf>, ctx: &RecordingContext) -> Recovery {
    let mut done = Recovery::default();
    // Calls whose audio began: an answer sidecar of theirs is stale. (Read
    // from every start sidecar in the directory; only read.)
    let keys = ctx.seal.as_deref();
    let began: HashSet<String> = fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_else(|_| entries.clone())
        .iter()
        .filter(|p| sidecar_id(p, START_SUFFIX).is_some())
        .filter_map(|p| read_recording(p, keys).ok())
        .filter_map(|b| serde_json::from_slice::<Value>(&b).ok())
        .filter_map(|v| v["call_id"].as_str().map(str::to_string))
        .collect();
    for p in entries {
        // One recording that cannot be completed (a sealed file without its
        // key, a read error) is reported and left as it is for a later
        // try: the others are still completed.
        match recover_entry(dir, &p, ctx, &began) {
            Ok(Some(id)) => done.ids.push(id),
            Ok(None) => {}
            Err(e) => {
                let file = p.file_name().map(|n| n.to_string_lossy().into_owned());
                tracing::error!(
                    file,
                    "cannot complete a recording cut off by a crash (left as it is, tried again later): {e}"
                );
                done.left.push(p);
            }
        }
    }
    done
}

/// When the daemon tries the files a recovery left again: 1 min after the
/// start's recovery, then twice as long after each failed try, at most
/// every 16 min.
pub fn recovery_retry_delay(tries: u32) -> std::time::Duration {
    std::time::Duration::from_secs(60 << tries.min(4))
}

/// [`recover`] for one file of the spool: the id it completed, if any.
fn recover_entry(
    dir: &Path,
    p: &Path,
    ctx: &RecordingContext,
    began: &HashSet<String>,
) -> io::Result<Option<String>> {
    let keys = ctx.seal.as_deref();
    let Some(name) = p.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
        return Ok(None);
    };
    if name.starts_with('.') && (name.ends_with(".json.tmp") || name.ends_with(".wav.tmp")) {
        // The JSON never got renamed: its WAV is complete (renamed first) or
        // still a .part; either way the JSON is rebuilt below or from the pair.
        let _ = fs::remove_file(p);
        return Ok(None);
    }
    if let Some(id) = sidecar_id(p, ANSWER_SUFFIX) {
        if keys.is_none() && crypt::is_sealed(p)? {
            // Sealed (encryption at rest) and no key now: left as it is for
            // a start with the key (a missing key destroys nothing).
            tracing::error!(%id, "an encrypted answered-call note needs spool.encryption_key_file: left as it is");
            return Ok(None);
        }
        let call_id: Option<String> = read_recording(p, keys)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| v["call_id"].as_str().map(str::to_string));
        let stale =
            call_id.is_some_and(|c| began.contains(&c)) || dir.join(format!("{id}.json")).exists();
        if stale {
            let _ = fs::remove_file(p);
            return Ok(None);
        }
        if dir.join(format!("{id}.wav")).is_file() {
            // Its empty WAV renamed in, then the crash before the JSON: cut
            // (its note says why) or made whole.
            complete_renamed(dir, &id, ctx, p, "crash", WARN_SAVING)?;
            return Ok(Some(id));
        }
        complete_answered(dir, &id, ctx, p, "crash", true, WARN_NO_AUDIO, None)?;
        return Ok(Some(id));
    }
    // A cut recording's note, or a stop's end note: read with its `.part`
    // (below), or with its WAV renamed in while that has no JSON; else
    // left over.
    let note = name
        .strip_prefix('.')
        .and_then(|n| n.strip_suffix(CUT_SUFFIX))
        .map(|id| (id.to_string(), WARN_CUT))
        .or_else(|| sidecar_id(p, END_SUFFIX).map(|id| (id, WARN_SAVING)));
    if let Some((id, warning)) = note {
        let json = dir.join(format!("{id}.json")).exists();
        let wav = dir.join(format!("{id}.wav")).exists();
        let part = dir.join(format!(".{id}.wav.part")).exists();
        let sidecar = dir.join(format!(".{id}{START_SUFFIX}"));
        if json || (!wav && !part) {
            let _ = fs::remove_file(p);
        } else if wav && !part && !sidecar.exists() {
            // Its WAV renamed in, then the JSON failed or the crash, and no
            // start sidecar to complete it with (its write failed, or a
            // source without one): completed from the WAV and the note.
            complete_renamed(dir, &id, ctx, &sidecar, "crash", warning)?;
            return Ok(Some(id));
        }
        return Ok(None);
    }
    if let Some(id) = sidecar_id(p, START_SUFFIX) {
        if keys.is_none() && crypt::is_sealed(p)? {
            // As an answered note: sealed and no key now, everything of
            // this call is left for a start with the key.
            tracing::error!(%id, "an encrypted recording's start note needs spool.encryption_key_file: left as it is");
            return Ok(None);
        }
        // A finished WAV without its JSON: renamed, then the crash.
        let wav_path = dir.join(format!("{id}.wav"));
        let part = dir.join(format!(".{id}.wav.part"));
        if part.exists() {
            return Ok(None); // completed with its .part below
        }
        let json_there = dir.join(format!("{id}.json")).exists();
        if wav_path.is_file() && !json_there {
            complete_renamed(dir, &id, ctx, p, "crash", WARN_SAVING)?;
            return Ok(Some(id));
        }
        if !json_there && !wav_path.exists() && ctx.min_duration.is_zero() {
            // The call's audio file was never created (a full disk when
            // it began; its answered note gave way to this sidecar), then
            // the crash: the call still leaves a recording, an empty one.
            // (With a min_duration a lone sidecar may be a call discarded
            // as too short just before the crash: removed.)
            complete_answered(dir, &id, ctx, p, "crash", true, WARN_NO_AUDIO, None)?;
            return Ok(Some(id));
        }
        // The pair is complete (crash before the sidecar's removal), or
        // the recording was discarded.
        let _ = fs::remove_file(p);
        return Ok(None);
    }
    let Some(id) = name
        .strip_prefix('.')
        .and_then(|n| n.strip_suffix(".wav.part"))
        .map(str::to_string)
    else {
        return Ok(None);
    };
    complete_part(dir, &id, ctx, p, "crash", WARN_CUT)
}

/// Completes the recording whose audio stopped at what its
/// `.<id>.wav.part` holds (a crash cut it off, or the file system refused a
/// write): a valid WAV of the whole frames that reached the disk (a partial
/// frame at its end is cut off; a file without even its header becomes an
/// empty recording when its start sidecar says what it was), renamed to
/// `<id>.wav`, and its JSON from the start sidecar, `"truncated": true`,
/// `end_reason` = `reason`, with `warning`. `None` when there was nothing
/// to keep (removed) or a sealed one cannot be opened (left as it is).
pub(super) fn complete_part(
    dir: &Path,
    id: &str,
    ctx: &RecordingContext,
    p: &Path,
    reason: &str,
    warning: &str,
) -> io::Result<Option<String>> {
    use pbx_core::audio::wav::{canonical_header, repair_wav};
    use std::os::unix::fs::FileExt;
    let keys = ctx.seal.as_deref();
    let sidecar = dir.join(format!(".{id}{START_SUFFIX}"));
    if crypt::is_sealed(p)? {
        return recover_sealed_part(dir, id, ctx, p, &sidecar, reason, warning);
    }
    let mut f = OpenOptions::new().read(true).write(true).open(p)?;
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
        // Reading or writing failed (an I/O error; rewriting the header
        // needs room on a copy-on-write file system): nothing is decided,
        // the files stay for a later try (never an empty recording made
        // of one whose audio is on disk).
        Err(pbx_core::audio::wav::WavError::Io(e)) => return Err(e),
        Err(_) if sidecar.exists() => {
            // The call had begun but not even the header reached the
            // disk (power loss): an empty recording of it.
            let sj = read_json_file(&sidecar, keys);
            let rate = wav_rate(&sj);
            f.set_len(0)?;
            f.write_all_at(&canonical_header(rate, 2, 0), 0)?;
        }
        Err(_) => {
            // Nothing to say what it was: nothing to keep.
            drop(f);
            fs::remove_file(p)?;
            return Ok(None);
        }
    }
    f.sync_all()?;
    drop(f);
    // Left by a stop with its end note: whole, not cut (the note stays
    // until the JSON is written, and says so after a crash in between);
    // left by a write error's salvage, its note says it is cut.
    if !has_end_note(dir, id) {
        write_cut_note(dir, id, reason, warning)?;
    }
    fs::rename(p, dir.join(format!("{id}.wav")))?;
    complete_json(dir, id, ctx, &sidecar, true, reason, warning, None)?;
    Ok(Some(id.to_string()))
}

/// Suffix of the end note a stop leaves beside a recording it had no time
/// to finish (`.<id>.end.json`: its JSON but for the WAV's size and hash).
const END_SUFFIX: &str = ".end.json";

fn end_note_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!(".{id}{END_SUFFIX}"))
}

pub(super) fn has_end_note(dir: &Path, id: &str) -> bool {
    end_note_path(dir, id).is_file()
}

/// Whether a cut recording's note is there (its WAV, renamed in, is not
/// whole).
pub(super) fn has_cut_note(dir: &Path, id: &str) -> bool {
    dir.join(format!(".{id}{CUT_SUFFIX}")).is_file()
}

/// Removes the end note of a recording that turned out to have nothing
/// on disk.
pub(super) fn remove_end_note(dir: &Path, id: &str) {
    let _ = fs::remove_file(end_note_path(dir, id));
}

/// Writes (and fsyncs) the end note of a recording left by a stop:
/// `doc`, the recording's JSON but for its audio's size and hash, sealed
/// with the spool's key when there is one (it holds the call's numbers),
/// then the directory.
pub(super) fn write_end_note(
    dir: &Path,
    id: &str,
    doc: &Value,
    seal: Option<&Keyring>,
) -> io::Result<()> {
    let p = end_note_path(dir, id);
    let written = (|| {
        let f = write_spool_file(create_private_file(&p)?, &serde_json::to_vec(doc)?, seal)?;
        f.sync_all()?;
        sync_dir(dir)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&p);
    }
    written
}

/// Suffix of a cut recording's note (`.<id>.cut`).
const CUT_SUFFIX: &str = ".cut";

/// Written (and durable) before a cut recording's WAV is renamed in, gone
/// with its JSON: a crash between the two leaves a WAV without JSON that
/// is still known to be cut, why, and what to say ([`complete_renamed`]).
/// Fixed texts only (no call data): kept plain.
fn write_cut_note(dir: &Path, id: &str, reason: &str, warning: &str) -> io::Result<()> {
    let p = dir.join(format!(".{id}{CUT_SUFFIX}"));
    let bytes = serde_json::to_vec(&json!({"reason": reason, "warning": warning}))?;
    let mut f = create_private_file(&p)?;
    let written = f.write_all(&bytes).and_then(|()| f.sync_all());
    if let Err(e) = written {
        let _ = fs::remove_file(&p);
        return Err(e);
    }
    sync_dir(dir)
}

/// The JSON of a WAV renamed in whose JSON was never written: cut (its
/// note says why: `truncated: true`) or complete, renamed by the finish
/// (`truncated: false`, `reason` and `warning` given here).
pub(super) fn complete_renamed(
    dir: &Path,
    id: &str,
    ctx: &RecordingContext,
    sidecar: &Path,
    reason: &str,
    warning: &str,
) -> io::Result<()> {
    let note = fs::read(dir.join(format!(".{id}{CUT_SUFFIX}")))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
    match note {
        Some(n) => {
            let text = |k: &str, or: &str| n[k].as_str().unwrap_or(or).to_string();
            let (r, w) = (text("reason", reason), text("warning", WARN_CUT));
            complete_json(dir, id, ctx, sidecar, true, &r, &w, None)
        }
        None => complete_json(dir, id, ctx, sidecar, false, reason, warning, None),
    }
}

/// A sealed `.<id>.wav.part` (encryption at rest) after a crash: sealed
/// anew as `<id>.wav` from its authentic records with its true header
/// ([`seal_part`]), then its JSON. Without a key that opens it, it is left
/// as it is (reported; a later start with the key completes it).
fn recover_sealed_part(
    dir: &Path,
    id: &str,
    ctx: &RecordingContext,
    part: &Path,
    sidecar: &Path,
    reason: &str,
    warning: &str,
) -> io::Result<Option<String>> {
    let wav = dir.join(format!("{id}.wav"));
    let json = dir.join(format!("{id}.json"));
    if wav.is_file() {
        // The WAV was renamed in before the crash: complete (or cut, as
        // its note says). The `.part` goes once the JSON is there (one that
        // cannot be removed does not keep the recording from its JSON).
        if json.exists() {
            let _ = fs::remove_file(part);
            return Ok(None);
        }
        complete_renamed(dir, id, ctx, sidecar, reason, WARN_SAVING)?;
        let _ = fs::remove_file(part);
        return Ok(Some(id.to_string()));
    }
    let Some(keys) = ctx.seal.as_deref() else {
        tracing::error!(%id, "an encrypted recording cut off by a crash needs spool.encryption_key_file: left as it is");
        return Ok(None);
    };
    let tmp = dir.join(format!(".{id}.wav.tmp"));
    let mut damage = None;
    match seal_part_counted(part, &tmp, keys) {
        Ok((_, (0, _))) => {}
        Ok((_, (records, bytes))) => {
            // Records damaged in the middle of the `.part`: silence in
            // their place, the audio after them kept in place.
            DAMAGED_RECORDS.fetch_add(records as u64, std::sync::atomic::Ordering::Relaxed);
            let rate = wav_rate(&read_json_file(sidecar, Some(keys)));
            let ms = bytes * 1000 / (u64::from(rate) * 4);
            tracing::warn!(%id, records, ms, "an encrypted recording cut off by a crash had damaged records: silence in their place, the audio after them kept");
            damage = Some(format!("{records} damaged record(s) on disk ({ms} ms of audio) could not be decrypted and were replaced by silence of the same length"));
        }
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            // Left as it is (`Ok(None)` would say nothing is on disk, and
            // a caller would remove the `.part`).
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        // Not "no header": the disk is full (the copy needs the room of
        // the whole recording), an I/O error. The files stay for a later
        // try; the audio on disk is never replaced by an empty recording.
        Err(e)
            if !matches!(
                e.kind(),
                io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
            ) =>
        {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        Err(_) if sidecar.exists() => {
            // Not even the header reached the disk: an empty recording.
            let _ = fs::remove_file(&tmp);
            let rate = wav_rate(&read_json_file(sidecar, Some(keys)));
            let f = write_spool_file(
                create_private_file(&tmp)?,
                &pbx_core::audio::wav::canonical_header(rate, 2, 0),
                Some(keys),
            )?;
            f.sync_all()?;
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            tracing::warn!(%id, "an encrypted .part without audio or notes removed: {e}");
            fs::remove_file(part)?;
            return Ok(None);
        }
    }
    let warning = match &damage {
        Some(d) => format!("{warning}; {d}"),
        None => warning.to_string(),
    };
    if damage.is_some() {
        // Not whole after all: a cut recording, whatever its note said.
        remove_end_note(dir, id);
    }
    if !has_end_note(dir, id) {
        write_cut_note(dir, id, reason, &warning)?;
    }
    fs::rename(&tmp, &wav)?;
    complete_json(dir, id, ctx, sidecar, true, reason, &warning, None)?;
    let _ = fs::remove_file(part);
    Ok(Some(id.to_string()))
}

/// Records of sealed `.part`s that recovery found damaged in the middle
/// (followed by authentic ones) and replaced by silence, since the start.
pub static DAMAGED_RECORDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub(super) const WARN_CUT: &str = "the daemon stopped while recording this call; the audio that reached the disk was kept; its packet counts were lost";
pub(super) const WARN_SAVING: &str = "the daemon stopped while saving this recording: the audio is complete; the call's end details and packet counts were lost";
pub(super) const WARN_NO_AUDIO: &str =
    "the daemon stopped after answering this call, before any of its audio was written";

/// Whether the file starts with the 44-byte header our writer makes (data
/// chunk right after `fmt `), so the data ends at 44 + its size.
pub(super) fn header_is_canonical(f: &mut File) -> bool {
    use std::io::{Seek, SeekFrom};
    let mut h = [0u8; 44];
    let ok = f.seek(SeekFrom::Start(0)).is_ok() && f.read_exact(&mut h).is_ok();
    ok && &h[12..16] == b"fmt " && h[16..20] == 16u32.to_le_bytes() && &h[36..40] == b"data"
}

pub(super) fn read_json_file(p: &Path, keys: Option<&Keyring>) -> Value {
    read_recording(p, keys)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null)
}

/// The WAV rate a sidecar names (8000 or 16000; 8000 when it does not say).
pub(super) fn wav_rate(sj: &Value) -> u32 {
    match sj["sample_rate"].as_u64() {
        Some(16000) => 16000,
        _ => 8000,
    }
}

/// An answered call without audio as a recording pair: an empty 2-channel
/// WAV (header only, fsynced, renamed) and its JSON from the answer sidecar
/// (then removed), `end_reason` = `reason`. A `truncated` one (cut by a
/// crash or a stop) leaves its cut note before the WAV is renamed in, as
/// the other completions do: a crash between the WAV and the JSON still
/// makes it a cut recording, with its reason and warning (without the
/// note, recovery takes a WAV without JSON for one renamed in whole).
/// `ended_at`: when the call ended, when known (its BYE, the stop).
#[allow(clippy::too_many_arguments)]
pub(super) fn complete_answered(
    dir: &Path,
    id: &str,
    ctx: &RecordingContext,
    sidecar: &Path,
    reason: &str,
    truncated: bool,
    warning: &str,
    ended_at: Option<Timestamp>,
) -> io::Result<()> {
    use pbx_core::audio::wav::canonical_header;
    let wav = dir.join(format!("{id}.wav"));
    if !wav.exists() {
        let tmp = dir.join(format!(".{id}.wav.tmp"));
        let keys = ctx.seal.as_deref();
        let header = canonical_header(wav_rate(&read_json_file(sidecar, keys)), 2, 0);
        let f = write_spool_file(create_private_file(&tmp)?, &header, keys)?;
        f.sync_all()?;
        drop(f);
        if truncated {
            if let Err(e) = write_cut_note(dir, id, reason, warning) {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        }
        fs::rename(&tmp, &wav)?;
    }
    complete_json(dir, id, ctx, sidecar, truncated, reason, warning, ended_at)
}

/// The rate of the 2-channel WAV at `wav_path` (`bytes` long) and its
/// length in ms, from its header (8000 Hz and 44 bytes when unreadable).
fn wav_length(wav_path: &Path, keys: Option<&Keyring>, bytes: u64) -> io::Result<(u32, i64)> {
    use pbx_core::audio::wav::parse_wav_header;
    let mut head = Vec::with_capacity(64);
    open_recording(wav_path, keys, OpenMode::Strict)?
        .take(64)
        .read_to_end(&mut head)?;
    let info = parse_wav_header(&head).ok();
    let rate = info.as_ref().map(|i| i.sample_rate).unwrap_or(8000);
    let header = info.as_ref().map(|i| i.data_offset).unwrap_or(44);
    // (Two channels, or one: a mixed stream's.)
    let frame = info.as_ref().map_or(4, |i| u64::from(i.block_align.max(1)));
    let frames = bytes.saturating_sub(header) / frame;
    Ok((rate, (frames * 1000 / u64::from(rate.max(1))) as i64))
}

/// The size and hash of a recovered recording's WAV, made mono first for
/// a mixed stream's (`mixed`), as its finish would have.
fn finished_wav(wav: &Path, keys: Option<&Keyring>, mixed: bool) -> io::Result<(u64, String)> {
    if mixed {
        super::files::wav_to_mono(wav, keys)
    } else {
        hash_recording(wav, keys)
    }
}

/// Writes `<id>.json` for the complete `<id>.wav` of a call whose end was
/// never recorded, from its sidecar (then removed). `ended_at`: when the
/// call ended, when the caller knows it (else taken from the audio).
#[allow(clippy::too_many_arguments)]
pub(super) fn complete_json(
    dir: &Path,
    id: &str,
    ctx: &RecordingContext,
    sidecar: &Path,
    truncated: bool,
    reason: &str,
    warning: &str,
    ended_at: Option<Timestamp>,
) -> io::Result<()> {
    let wav_path = dir.join(format!("{id}.wav"));
    let keys = ctx.seal.as_deref();
    let note = end_note_path(dir, id);
    if let Some(mut doc) = Some(read_json_file(&note, keys)).filter(Value::is_object) {
        // Left by a stop, or by a write error's salvage: the JSON the
        // finish would have written, with the WAV's size and hash (a mixed
        // stream's WAV made mono, as the finish would have).
        let mixed = doc["mixed_mono"] == true;
        let (bytes, sha) = finished_wav(&wav_path, keys, mixed)?;
        // (A note damaged on disk must not take recovery down, nor name
        // another recording.)
        if !doc["audio"].is_object() {
            doc["audio"] = Value::Object(Default::default());
        }
        if mixed {
            doc["audio"]["channels"] = 1.into();
        }
        doc["recording_id"] = id.into();
        if doc["truncated"] == true {
            // Left by a write error's salvage: only the audio that reached
            // the disk, as long as it is.
            let (rate, ms) = wav_length(&wav_path, keys, bytes)?;
            doc["duration_ms"] = ms.into();
            doc["audio"]["sample_rate"] = rate.into();
        }
        doc["audio"]["bytes"] = bytes.into();
        doc["audio"]["sha256"] = sha.into();
        write_json_value(dir, id, &doc, keys)?;
        let _ = fs::remove_file(sidecar);
        let _ = fs::remove_file(dir.join(format!(".{id}{CUT_SUFFIX}")));
        let _ = fs::remove_file(&note);
        return sync_dir(dir);
    }
    let sj = read_json_file(sidecar, keys);
    // A mixed stream's recording (known when it began): mono, as its
    // finish would have made it.
    let mixed = sj["mixed_mono"] == true;
    let (bytes, sha) = finished_wav(&wav_path, keys, mixed)?;
    let (rate, duration_ms) = wav_length(&wav_path, keys, bytes)?;
    let time = |k: &str| sj[k].as_str().and_then(Timestamp::parse_rfc3339);
    // The end the caller knows (a call without audio ends when its BYE
    // came, not when it was answered); else the end of the audio kept on
    // the call's timeline; else when the file was last written.
    let ended_at = ended_at
        .or_else(|| {
            time("media_started_at")
                .or_else(|| time("answered_at"))
                .or_else(|| time("started_at"))
                .map(|t| t.add_micros(duration_ms * 1000))
        })
        .or_else(|| {
            let m = fs::metadata(&wav_path).and_then(|m| m.modified()).ok()?;
            let us = m.duration_since(std::time::UNIX_EPOCH).ok()?.as_micros();
            Some(Timestamp::from_micros(i64::try_from(us).ok()?))
        });
    let text = |k: &str, default: &str| sj[k].as_str().unwrap_or(default).to_string();
    let string = |k: &str| sj[k].as_str().map(str::to_string);
    let party = |k: &str| serde_json::from_value::<DocParty>(sj[k].clone()).ok();
    let mut doc = RecordingDoc {
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
        audio: DocAudio {
            channels: if mixed { 1 } else { 2 },
            ..DocAudio::wav(rate, bytes, sha)
        },
        channels: if mixed {
            DocChannels::mixed("")
        } else {
            DocChannels::summary(["", ""])
        },
        dtmf: Vec::new(),
        truncated,
        warnings: vec![warning.to_string()],
        call: Some(CallFields {
            recorded_call_id: string("recorded_call_id"),
            media_started_at: time("media_started_at"),
            end_reason: reason.to_string(),
            caller_known: None,
            pauses: None,
            mixed_mono: mixed,
        }),
        folder: None,
        ids: doc::call_ids(
            &serde_json::from_value(sj["ids"].clone()).unwrap_or_default(),
            sj["recorded_call_id"].as_str(),
        ),
        roles: None,
    };
    doc.assign_roles_with(
        &ctx.roles,
        serde_json::from_value(sj["signalling"].clone()).ok(),
    );
    write_json(dir, &doc, keys)?;
    let _ = fs::remove_file(sidecar);
    let _ = fs::remove_file(dir.join(format!(".{id}{CUT_SUFFIX}")));
    sync_dir(dir)
}
