//! How a recording ends: its pair finished and made durable
//! ([`finish_recording`], on the engine thread or a [`super::finisher`]
//! worker), left whole for the next start when a stop runs out of time
//! ([`defer_recording`]), or kept as far as it reached the disk after a
//! write error ([`salvage`]).

use super::*;

/// A recording whose call ended while a stop ran out of time
/// ([`RecordingDir::wait_finished_within`]): its `.part` made durable as it
/// is (a plain one gets its true header), and beside it an end note
/// (`.<id>.end.json`, sealed with the spool's key) holding the JSON it
/// would have had but for the WAV's size and hash. The next start's
/// recovery finishes the pair from the two, `truncated: false` and the
/// call's own end details. One that failed to write, never opened or is
/// too short is finished at once (nothing to hash); one whose note cannot
/// be written is left to recovery as a crash would leave it.
pub(super) fn defer_recording(mut rec: OpenRecording, meta: &CallMeta) -> Done {
    let short = (meta.duration_ms() as u128) < rec.ctx.min_duration.as_millis();
    if rec.error.is_some() || rec.wav.is_none() || short {
        return finish_recording(rec, meta);
    }
    let frames = rec.frames;
    let tap = rec.tap.take();
    let written = (|| -> io::Result<()> {
        if let Some(w) = rec.wav.take() {
            w.finalize_plain()?.sync_all()?;
        }
        let doc = end_doc(&rec.id, &rec.ctx, meta);
        recover::write_end_note(&rec.dir, &rec.id, &doc, rec.ctx.seal.as_deref())
    })();
    if let Err(e) = written {
        tracing::error!(id = %rec.id, "recording: cannot leave it for the next start ({e}); recovery completes it as after a crash");
    }
    if let Some(t) = tap {
        t.end(TapEnd::Discarded {
            frames,
            reason:
                "the daemon stopped before this recording was finished; the next start finishes it"
                    .into(),
        });
    }
    Done {
        call_id: rec.call_id,
        id: rec.id,
        outcome: Outcome::Deferred,
        stranded: None,
    }
}

/// The JSON of the call's recording with `audio`: what the finish writes,
/// and (the audio's size and hash not known yet) an end note's
/// ([`recover::write_end_note`]).
pub(super) fn call_doc(
    id: &str,
    ctx: &RecordingContext,
    meta: &CallMeta,
    audio: DocAudio,
) -> Value {
    let mut doc = RecordingDoc::of_call(meta, id, &ctx.agent_id, ctx.source, audio);
    doc.assign_roles_with(&ctx.roles, meta.signalling);
    doc.to_value()
}

/// [`call_doc`] for an end note: its audio's size and hash to come.
pub(super) fn end_doc(id: &str, ctx: &RecordingContext, meta: &CallMeta) -> Value {
    call_doc(
        id,
        ctx,
        meta,
        DocAudio::wav(meta.sample_rate, 0, String::new()),
    )
}

/// A recording finished by [`finish_recording`].
pub(super) struct Done {
    pub(super) call_id: String,
    pub(super) id: String,
    pub(super) outcome: Outcome,
    /// Files left after a write error, to be completed once the spool
    /// takes writes again.
    pub(super) stranded: Option<Stranded>,
}

/// A recording whose files could not be finished after a write error (a
/// full disk): [`salvage`] is tried again every [`STRANDED_RETRY`] while
/// the daemon runs, and crash recovery completes it at the next start.
pub(super) struct Stranded {
    pub(super) dir: PathBuf,
    pub(super) id: String,
    pub(super) ctx: Arc<RecordingContext>,
    pub(super) reason: String,
    pub(super) error: String,
    /// The call's JSON from its [`CallMeta`] ([`end_doc`]): its codecs,
    /// packet counts, DTMF and pauses, which the start note lacks.
    pub(super) doc: Value,
}

/// How often stranded recordings are tried again.
pub(crate) const STRANDED_RETRY: Duration = Duration::from_secs(10);

pub(super) enum Outcome {
    /// The pair is durable; the WAV's size.
    Written(WrittenRecording, u64),
    /// Shorter than `min_duration`: removed.
    TooShort,
    /// Not written (the error); what was left is removed.
    Failed(String),
    /// A stop ran out of time: the `.part` is durable and its end note
    /// beside it; the next start's recovery finishes the pair
    /// ([`defer_recording`]).
    Deferred,
}

/// Finishes a recording whose call ended: the pair made durable (or
/// removed when too short), its start sidecar gone, its tap told. After a
/// write error, what reached the disk is kept ([`salvage`]).
/// The one way a recording ends, on the engine thread or a
/// [`finisher`] worker.
pub(super) fn finish_recording(mut rec: OpenRecording, meta: &CallMeta) -> Done {
    let part = rec.part.clone();
    let id = rec.id.clone();
    let dir = rec.dir.clone();
    let call_id = rec.call_id.clone();
    let tap = rec.tap.take();
    let frames = rec.frames;
    let ctx = rec.ctx.clone();
    // A write failed (a full disk, an I/O error): what reached the disk is
    // the recording, marked truncated; when even that cannot be written,
    // the files stay, tried again later.
    let mut stranded = None;
    let finished = match finish_files(rec, meta) {
        Err(e) => {
            let doc = end_doc(&id, &ctx, meta);
            let s = Stranded {
                dir: dir.clone(),
                id: id.clone(),
                ctx,
                reason: doc::end_reason_name(meta),
                error: e.to_string(),
                doc,
            };
            match salvage(&s) {
                Ok(Some(w)) => {
                    tracing::error!(%id, "recording: {e}; the audio that reached the disk was kept, marked truncated");
                    Ok(Some(w))
                }
                Ok(None) => Err(e),
                Err(e2) => {
                    stranded = Some(s);
                    Err(io::Error::new(
                        e.kind(),
                        format!("{e}; what reached the disk is kept, to be completed when the spool takes writes again ({e2})"),
                    ))
                }
            }
        }
        r => r,
    };
    let (outcome, tap_end) = match finished {
        Ok(Some((w, doc, bytes))) => {
            // The WAV's own length: after a write error, what was salvaged
            // from the disk may hold a chunk the tap was never told about
            // (a stream reads it from the file).
            let a = &doc["audio"];
            let frames = match (
                a["format"].as_str(),
                a["channels"].as_u64(),
                a["bytes"].as_u64(),
            ) {
                (Some("wav"), Some(c @ 1..=2), Some(b)) => {
                    b.saturating_sub(pbx_core::audio::wav::HEADER_LEN) / (2 * c)
                }
                _ => frames,
            };
            (
                Outcome::Written(w, bytes),
                TapEnd::Written { frames, meta: doc },
            )
        }
        Ok(None) => {
            let _ = fs::remove_file(dir.join(format!(".{id}{START_SUFFIX}")));
            (
                Outcome::TooShort,
                TapEnd::Discarded {
                    frames,
                    reason: "shorter than recording.min_duration".into(),
                },
            )
        }
        Err(e) => {
            // Nothing on disk to keep, unless kept to be completed later.
            if stranded.is_none() {
                let _ = fs::remove_file(&part);
                let _ = fs::remove_file(dir.join(format!(".{id}{START_SUFFIX}")));
            }
            (
                Outcome::Failed(e.to_string()),
                TapEnd::Discarded {
                    frames,
                    reason: "the recording could not be written".into(),
                },
            )
        }
    };
    if let Some(t) = tap {
        t.end(tap_end);
    }
    Done {
        call_id,
        id,
        outcome,
        stranded,
    }
}

/// The recording of a call whose files could not be finished (`s.error`: a
/// write refused while recording, or while finishing): the audio that reached the
/// disk becomes the recording, as crash recovery makes it ([`recover`]) but
/// with the call's own end reason, `"truncated": true` and a warning naming
/// the error. A recording whose `.part` never opened becomes an empty one
/// (an answered call always leaves a recording). `Ok(None)`: nothing of it
/// is on disk. An error leaves the files as they are, for recovery at the
/// next start.
///
/// Its JSON is the call's own ([`Stranded::doc`]: codecs, packet counts,
/// DTMF, pauses), left first as its end note (as a stop leaves one) for the
/// completion to write with the WAV's size and hash, and for recovery to
/// find if the daemon dies in between; without room for the note, it is
/// made from the start note as after a crash.
pub(super) fn salvage(s: &Stranded) -> io::Result<Option<(WrittenRecording, Value, u64)>> {
    let (dir, id, ctx) = (&s.dir, &s.id, &s.ctx);
    let part = dir.join(format!(".{id}.wav.part"));
    let wav = dir.join(format!("{id}.wav"));
    let json = dir.join(format!("{id}.json"));
    let sidecar = dir.join(format!(".{id}{START_SUFFIX}"));
    let reason = &s.reason;
    let warning = format!(
        "the spool refused a write while recording this call ({}): the audio that reached the disk was kept, the rest is missing",
        s.error
    );
    let keys = ctx.seal.as_deref();
    // Left once (a retry finds the first try's note). A WAV renamed in by
    // the finish is whole: the note is the JSON the finish failed to write
    // (one renamed in by a first try's completion has its cut note).
    let leave_note = || {
        if recover::has_end_note(dir, id) {
            return;
        }
        let mut doc = s.doc.clone();
        if !wav.is_file() || recover::has_cut_note(dir, id) {
            doc["truncated"] = true.into();
            if let Some(w) = doc["warnings"].as_array_mut() {
                w.push(warning.clone().into());
            }
        }
        if let Err(e) = recover::write_end_note(dir, id, &doc, keys) {
            tracing::warn!(%id, "recording: its end details could not be kept ({e}); its JSON is made from its start note");
        }
    };
    if part.is_file() {
        leave_note();
        if complete_part(dir, id, ctx, &part, reason, &warning)?.is_none() {
            recover::remove_end_note(dir, id);
            return Ok(None);
        }
    } else if wav.is_file() && !json.exists() {
        // Renamed in by the finish (complete), or by a cut's completion
        // (its note says so).
        let saving = format!(
            "the spool refused a write while saving this recording ({}): the audio is complete; the call's end details and packet counts were lost",
            s.error
        );
        leave_note();
        complete_renamed(dir, id, ctx, &sidecar, reason, &saving)?;
    } else if sidecar.is_file() && !json.exists() {
        leave_note();
        complete_answered(dir, id, ctx, &sidecar, reason, true, &warning, None)?;
    } else {
        return Ok(None);
    }
    let doc = read_json_file(&json, keys);
    let bytes = doc["audio"]["bytes"].as_u64().unwrap_or(0);
    let duration_ms = doc["duration_ms"].as_i64().unwrap_or(0);
    Ok(Some((
        WrittenRecording {
            id: id.clone(),
            wav,
            json,
            duration_ms,
        },
        doc,
        bytes,
    )))
}

/// Whether an ended recording can be finished with another
/// ([`finish_pair`]): a plain `.part` written without error, long enough
/// to be kept.
pub(super) fn pairable(job: &finisher::Job) -> bool {
    let rec = &job.rec;
    let short = (job.meta.duration_ms() as u128) < rec.ctx.min_duration.as_millis();
    rec.error.is_none()
        && rec.ctx.seal.is_none()
        && matches!(rec.wav, Some(PartWriter::Plain(_)))
        && !short
}

/// Finishes two ended recordings ([`pairable`]) as [`finish_recording`]
/// finishes each, but for their WAVs being hashed together
/// ([`hash_file_pair`]): both `.part`s are finalized and fsynced first. A
/// finalize that fails is that recording's write error (as in
/// [`finish_files`]); a pair hash that fails leaves each to be hashed
/// alone.
pub(super) fn finish_pair(a: finisher::Job, b: finisher::Job) -> [Done; 2] {
    let (mut a, mut b) = (a, b);
    let ready_a = finalize_part(&mut a.rec);
    let ready_b = finalize_part(&mut b.rec);
    if ready_a && ready_b {
        if let Ok([ha, hb]) = hash_file_pair(&a.rec.part, &b.rec.part) {
            a.rec.hashed = Some(ha);
            b.rec.hashed = Some(hb);
        }
    }
    [
        finish_recording(a.rec, &a.meta),
        finish_recording(b.rec, &b.meta),
    ]
}

/// A plain `.part`'s header patched and the file fsynced (what
/// [`finish_files`] does first); an error becomes the recording's.
fn finalize_part(rec: &mut OpenRecording) -> bool {
    let Some(PartWriter::Plain(_)) = rec.wav else {
        return false;
    };
    let Some(w) = rec.wav.take() else {
        return false;
    };
    match w.finalize_plain().and_then(|f| f.sync_all()) {
        Ok(()) => {
            rec.finalized = true;
            true
        }
        Err(e) => {
            rec.error = Some(e);
            false
        }
    }
}

/// The pair written, its JSON and the WAV's size, or `None` when too short.
pub(super) fn finish_files(
    rec: OpenRecording,
    meta: &CallMeta,
) -> io::Result<Option<(WrittenRecording, Value, u64)>> {
    if let Some(e) = rec.error {
        return Err(e);
    }
    // (`None` once finalized for [`finish_pair`].)
    let wav = match rec.wav {
        None if !rec.finalized => return Err(io::Error::other("recording was never opened")),
        w => w,
    };
    let wav_path = rec.dir.join(format!("{}.wav", rec.id));
    let json_path = rec.dir.join(format!("{}.json", rec.id));
    let short = (meta.duration_ms() as u128) < rec.ctx.min_duration.as_millis();
    let (bytes, sha) = match (wav, rec.ctx.seal.as_deref()) {
        (Some(PartWriter::Sealed(mut w)), Some(keys)) => {
            // The `.part` is sealed record by record; the finished WAV
            // gets its true header, so it is sealed anew (fixed chunks)
            // from the `.part`'s plaintext, then the `.part` goes.
            w.flush()?;
            drop(w);
            if short {
                fs::remove_file(&rec.part)?;
                return Ok(None);
            }
            let tmp = rec.dir.join(format!(".{}.wav.tmp", rec.id));
            let h = match seal_part(&rec.part, &tmp, keys) {
                Ok(h) => h,
                Err(e) => {
                    let _ = fs::remove_file(&tmp);
                    return Err(e);
                }
            };
            fs::rename(&tmp, &wav_path)?;
            // (The `.part` goes once the JSON is written.)
            h
        }
        (w, _) => {
            if let Some(w) = w {
                let file = w.finalize_plain()?;
                file.sync_all()?;
                drop(file);
            }
            if short {
                fs::remove_file(&rec.part)?;
                return Ok(None);
            }
            let h = match rec.hashed {
                Some(h) => h,
                None => hash_file(&rec.part)?,
            };
            fs::rename(&rec.part, &wav_path)?;
            h
        }
    };
    let mut audio = DocAudio::wav(meta.sample_rate, bytes, sha);
    if meta.mixed_mono {
        // One stream carried both parties: its channel alone.
        let (bytes, sha) = files::wav_to_mono(&wav_path, rec.ctx.seal.as_deref())?;
        audio = DocAudio::wav(meta.sample_rate, bytes, sha);
        audio.channels = 1;
    }
    let doc = call_doc(&rec.id, &rec.ctx, meta, audio);
    write_json_value(&rec.dir, &rec.id, &doc, rec.ctx.seal.as_deref())?;
    let _ = fs::remove_file(rec.dir.join(format!(".{}.start.json", rec.id)));
    if rec.part.exists() {
        // A sealed recording's `.part`, copied into its WAV: one that cannot
        // be removed is removed at the next start (the JSON is there).
        let _ = fs::remove_file(&rec.part);
    }
    sync_dir(&rec.dir)?;
    Ok(Some((
        WrittenRecording {
            id: rec.id,
            wav: wav_path,
            json: json_path,
            duration_ms: meta.duration_ms(),
        },
        doc,
        bytes,
    )))
}
