//! The files of a recording: its JSON (CONTRACT §3), a whole recording
//! written as a pair, the growing `.part` (plain or sealed) and its sealed
//! copy, and the spool-file writer they share.

use super::*;

/// The recording JSON of CONTRACT §3 for a call the engine recorded to its
/// end (the document [`RecordingDir`] writes).
pub fn recording_json(
    meta: &CallMeta,
    id: &str,
    ctx: &RecordingContext,
    audio_bytes: u64,
    sha256: &str,
) -> Value {
    RecordingDoc::of_call(
        meta,
        id,
        &ctx.agent_id,
        ctx.source,
        DocAudio::wav(meta.sample_rate, audio_bytes, sha256.to_string()),
    )
    .to_value()
}

/// The only writer of `<id>.json` files (sealed when `seal` is given).
pub(super) fn write_json(dir: &Path, doc: &RecordingDoc, seal: Option<&Keyring>) -> io::Result<()> {
    write_json_value(dir, &doc.recording_id, &doc.to_value(), seal)
}

/// [`write_json`] of a document already made a value (a stop's end note
/// completed by recovery).
pub(super) fn write_json_value(
    dir: &Path,
    id: &str,
    doc: &serde_json::Value,
    seal: Option<&Keyring>,
) -> io::Result<()> {
    let tmp = dir.join(format!(".{id}.json.tmp"));
    let written = (|| {
        let mut text = serde_json::to_vec_pretty(doc)?;
        text.push(b'\n');
        let f = write_spool_file(create_private_file(&tmp)?, &text, seal)?;
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
/// WAV in a temp file, fsynced, hashed, renamed; then `doc`, its `audio`
/// and `duration_ms` filled in from what was written, by the one JSON
/// writer; then the directory fsynced. On an error nothing is left
/// (neither temp file nor WAV). Returns the pair and the WAV's size.
///
/// `channels` holds one slice per WAV channel: two (`[left, right]`, the
/// shorter padded with silence) for a two-party recording, or one for a
/// mono mix (CONTRACT §3 `mixed_mono`: a 1-channel WAV, never a mix beside
/// a silent channel). Anything else is an error.
pub fn write_whole(
    dir: &Path,
    rate: u32,
    channels: &[&[i16]],
    mut doc: RecordingDoc,
    seal: Option<&Keyring>,
) -> io::Result<(WrittenRecording, u64)> {
    use pbx_core::audio::wav::canonical_header;
    let nch = channels.len();
    if !(1..=2).contains(&nch) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a recording has 1 or 2 channels, not {nch}"),
        ));
    }
    create_private_dir(dir)?;
    let id = doc.recording_id.clone();
    let frames = channels.iter().map(|c| c.len()).max().unwrap_or(0);
    let data_len = u32::try_from(frames * nch * 2)
        .ok()
        .filter(|&n| n < u32::MAX - 64)
        .ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "recording too long for a WAV")
        })?;
    let part = dir.join(format!(".{id}{WHOLE_TMP}"));
    let wav_path = dir.join(format!("{id}.wav"));
    let json_path = dir.join(format!("{id}.json"));
    let wav = (|| -> io::Result<(u64, String)> {
        let f = create_private_file(&part)?;
        let out = io::BufWriter::with_capacity(64 * 1024, f);
        // The plaintext (what the JSON's bytes and sha256 describe) through
        // a hasher, into the file or its sealing writer.
        let mut w = HashingWriter::new(SpoolWriter::new(out, seal)?);
        w.write_all(&canonical_header(rate, nch as u16, data_len))?;
        let mut buf = Vec::with_capacity(16384);
        let mut i = 0;
        while i < frames {
            buf.clear();
            let end = (i + 4096).min(frames);
            for k in i..end {
                for c in channels {
                    buf.extend_from_slice(&c.get(k).copied().unwrap_or(0).to_le_bytes());
                }
            }
            w.write_all(&buf)?;
            i = end;
        }
        let (inner, h) = w.finish();
        let mut bw = inner.finish()?;
        bw.flush()?;
        let file = bw.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
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
    doc.audio.channels = nch as u16;
    doc.duration_ms = (frames as u64 * 1000 / u64::from(rate.max(1))) as i64;
    if let Err(e) = write_json(dir, &doc, seal) {
        let _ = fs::remove_file(&wav_path);
        return Err(e);
    }
    // The JSON is in place (the pair may already be taken for upload): a
    // failed directory sync no longer undoes it, which would leave a JSON
    // without its WAV.
    if let Err(e) = sync_dir(dir) {
        tracing::warn!(recording = %id, "recording written, but its directory could not be synced: {e}");
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

/// Writes `bytes` as the whole content of the spool file `f`: as they are,
/// or sealed with the current key. Returns the file (not synced).
pub(crate) fn write_spool_file(f: File, bytes: &[u8], seal: Option<&Keyring>) -> io::Result<File> {
    let mut w = SpoolWriter::new(io::BufWriter::new(f), seal)?;
    w.write_all(bytes)?;
    w.finish()?.into_inner().map_err(|e| e.into_error())
}

/// The `.part` WAV of a call in progress.
pub(super) enum PartWriter {
    /// A plain WAV whose header is patched at the end.
    Plain(WavWriter<File>),
    /// Sealed record by record (each `flush` one record, one `write()`); its
    /// header keeps the size placeholder: [`seal_part`] makes the final WAV.
    Sealed(crypt::SealedWriter<File>),
}

impl PartWriter {
    /// Starts the `.part` with its WAV header, on its way to the kernel.
    pub(super) fn new(f: File, rate: u32, seal: Option<&Keyring>) -> io::Result<Self> {
        use pbx_core::audio::wav::{canonical_header, SIZE_PLACEHOLDER};
        match seal {
            None => {
                let mut w = WavWriter::new(f, rate, 2)?;
                w.flush()?;
                Ok(PartWriter::Plain(w))
            }
            Some(k) => {
                let mut w = crypt::SealedWriter::new(f, k.current(), crypt::Layout::Records)?;
                w.write_all(&canonical_header(rate, 2, SIZE_PLACEHOLDER))?;
                w.flush()?;
                Ok(PartWriter::Sealed(w))
            }
        }
    }

    pub(super) fn write_samples(&mut self, frames: &[i16]) -> io::Result<()> {
        match self {
            PartWriter::Plain(w) => w.write_samples(frames),
            PartWriter::Sealed(w) => pbx_core::audio::wav::write_le(w, frames),
        }
    }

    /// Writes `frames` and hands them to the kernel before returning,
    /// keeping no buffer between chunks for a plain `.part` (a sealed one
    /// seals them as one record).
    pub(super) fn write_through(&mut self, frames: &[i16]) -> io::Result<()> {
        if let PartWriter::Plain(w) = self {
            return w.write_samples_through(frames);
        }
        self.write_samples(frames)?;
        self.flush()
    }

    pub(super) fn flush(&mut self) -> io::Result<()> {
        match self {
            PartWriter::Plain(w) => w.flush(),
            PartWriter::Sealed(w) => w.flush(),
        }
    }

    /// A plain `.part` with its header patched; a sealed one flushed.
    pub(super) fn finalize_plain(self) -> io::Result<File> {
        match self {
            PartWriter::Plain(w) => w.finalize(),
            PartWriter::Sealed(mut w) => {
                w.flush()?;
                w.get_ref().try_clone()
            }
        }
    }
}

/// Seals the finished WAV of a sealed `.part` (what the crash or the end
/// left: its authentic records, whole frames only) into `out` with its true
/// header, fsynced. Returns the plaintext's length and hex SHA-256. An
/// error (no key for it, no WAV header in it) leaves `part` untouched.
pub(crate) fn seal_part(part: &Path, out: &Path, keys: &Keyring) -> io::Result<(u64, String)> {
    seal_part_counted(part, out, keys).map(|(h, _)| h)
}

/// [`seal_part`], also saying how many damaged records of the `.part`
/// became silence, and their bytes ([`crate::spoolfile::crypt::SealedReader::damaged`]).
///
/// The `.part` is read once ([`OpenMode::Checked`]): each record is
/// decrypted once, as the copy comes to it, where opening it in
/// [`OpenMode::Recover`] decrypts every record to decide what to keep
/// before the copy decrypts them all again. When every record
/// authenticates, Recover keeps them all and reads them as they are: the
/// same WAV. Anything else (a record that does not authenticate: a torn or
/// damaged one; any error at all) throws that copy away and makes the WAV
/// again from the `.part` opened in Recover, exactly as before.
pub(crate) fn seal_part_counted(
    part: &Path,
    out: &Path,
    keys: &Keyring,
) -> io::Result<((u64, String), (usize, u64))> {
    let once = open_recording(part, Some(keys), OpenMode::Checked)
        .and_then(|r| seal_plaintext(r, out, keys, true));
    if let Ok(h) = once {
        return Ok((h, (0, 0)));
    }
    // Nothing of the first try is left: as if it had not been made.
    let _ = fs::remove_file(out);
    seal_part_recovered(part, out, keys)
}

/// [`seal_part_counted`] the way it went before the part was read once:
/// opened in [`OpenMode::Recover`] (every record decrypted to decide what
/// is kept), then copied (decrypted again). What a part that does not read
/// whole in [`OpenMode::Checked`] takes.
pub(super) fn seal_part_recovered(
    part: &Path,
    out: &Path,
    keys: &Keyring,
) -> io::Result<((u64, String), (usize, u64))> {
    let r = open_recording(part, Some(keys), OpenMode::Recover)?;
    let damaged = r.damaged();
    let h = seal_plaintext(r, out, keys, false)?;
    Ok((h, damaged))
}

/// The finished two-channel WAV at `wav` made a one-channel WAV of its
/// left channel, in place (a temp file renamed over it), sealed again when
/// `keys`: a mixed stream's recording (CONTRACT §3 `mixed_mono`). Its
/// length and hex SHA-256.
pub(crate) fn wav_to_mono(wav: &Path, keys: Option<&Keyring>) -> io::Result<(u64, String)> {
    use pbx_core::audio::wav::{canonical_header, parse_wav_header};
    let mut r = open_recording(wav, keys, OpenMode::Strict)?;
    let mut head = [0u8; 44];
    r.read_exact(&mut head)?;
    let info = parse_wav_header(&head)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    if info.channels == 1 {
        // Made mono already (a recovery after a crash between the two).
        drop(r);
        return hash_recording(wav, keys);
    }
    let frames = info.data_len / 4;
    let tmp = wav.with_extension("wav.mono-tmp");
    let out = (|| -> io::Result<(u64, String)> {
        let f = create_private_file(&tmp)?;
        let mut w = HashingWriter::new(SpoolWriter::new(
            io::BufWriter::with_capacity(256 * 1024, f),
            keys,
        )?);
        let data = u32::try_from(frames * 2).map_err(|_| io::Error::other("WAV too long"))?;
        w.write_all(&canonical_header(info.sample_rate, 1, data))?;
        let (mut stereo, mut mono) = (vec![0u8; 64 * 1024], Vec::with_capacity(32 * 1024));
        let mut left = frames * 4;
        while left > 0 {
            let n = (left as usize).min(stereo.len());
            r.read_exact(&mut stereo[..n])?;
            mono.clear();
            for f in stereo[..n].chunks_exact(4) {
                mono.extend_from_slice(&f[..2]);
            }
            w.write_all(&mono)?;
            left -= n as u64;
        }
        let (inner, h) = w.finish();
        let file = inner.finish()?.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(h)
    })();
    match out {
        Ok(h) => {
            fs::rename(&tmp, wav)?;
            Ok(h)
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// The WAV of the plaintext of a `.part` (`r`) sealed into `out` with its
/// true header, fsynced; its length and hex SHA-256. `check`: every record
/// of `r` must authenticate ([`RecordingReader::check_rest`]), those after
/// the audio copied too.
fn seal_plaintext(
    mut r: RecordingReader,
    out: &Path,
    keys: &Keyring,
    check: bool,
) -> io::Result<(u64, String)> {
    use pbx_core::audio::wav::{canonical_header, parse_wav_header};
    let total = r.len();
    let mut head = [0u8; 44];
    if total < 44 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "no WAV header reached the disk",
        ));
    }
    r.read_exact(&mut head)?;
    let info = parse_wav_header(&head)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    let frame = u64::from(info.block_align.max(1));
    // A WAV holds at most 4 GiB: a longer part keeps its first 4 GiB.
    let data = ((total - 44) / frame * frame).min((u64::from(u32::MAX) - 36) / frame * frame);
    let data32 = u32::try_from(data).map_err(|_| io::Error::other("WAV too long"))?;
    let f = create_private_file(out)?;
    let mut w = HashingWriter::new(SpoolWriter::new(
        io::BufWriter::with_capacity(256 * 1024, f),
        Some(keys),
    )?);
    w.write_all(&canonical_header(info.sample_rate, info.channels, data32))?;
    io::copy(&mut (&mut r).take(data), &mut w)?;
    if check {
        // The records after the audio copied (a part frame, what is past
        // 4 GiB, empty ones) decide the length too.
        r.check_rest()?;
    }
    let (inner, h) = w.finish();
    let file = inner.finish()?.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(h)
}
