//! The audio tap: where a recording's audio goes besides its file (the live
//! stream, `crate::stream`), and the one reader of a recording being written.
//!
//! In: [`RecordingDir`](super::RecordingDir) calls [`AudioTap::begin`] when a
//! recording's file is created, [`CallTap::audio`] after each chunk is
//! written to the file (so what a tap is told about is already readable with
//! [`RecordingFile::read_frames`]), and [`CallTap::end`] once the pair is
//! durable (or the recording was discarded).
//! Out: nothing back: a tap must return at once and never block the engine
//! (it hands the chunk on through a bounded queue or drops it; the file
//! still holds it).
//!
//! Promises: [`RecordingFile::read_frames`] is the only code that reads a
//! recording's audio while it is written (or just after it was renamed to
//! its final name), through [`super::open_recording`], so encrypted spools
//! (`spool.encryption_key_file`) stream like plain ones.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use crate::spoolfile::RecordingReader;

use pbx_core::audio::wav::HEADER_LEN;
use serde_json::Value;

/// A recording's audio file: `.<id>.wav.part` while written, `<id>.wav`
/// after the pair is complete.
#[derive(Clone)]
pub struct RecordingFile {
    pub part: PathBuf,
    pub wav: PathBuf,
    /// The spool's keys when it is encrypted at rest.
    pub keys: Option<Arc<super::Keyring>>,
    /// The `.part` held open once it exists ([`RecordingFile::hold`]; shared
    /// by the clones): read through it, the audio outlives the rename to
    /// `<id>.wav` and the removal of a delivered pair (`spool.retention =
    /// "0s"` removes it as soon as the cloud has it, while a stream may
    /// still be catching up).
    held: Arc<OnceLock<File>>,
    /// The reader of the held `.part`, kept between reads (shared by the
    /// clones): a sealed one keeps its record index and the record in hand,
    /// so a stream catching up decrypts each record once instead of the
    /// whole part again at every read.
    reader: Arc<Mutex<Option<RecordingReader>>>,
}

impl std::fmt::Debug for RecordingFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordingFile")
            .field("part", &self.part)
            .field("wav", &self.wav)
            .field("sealed", &self.keys.is_some())
            .finish()
    }
}

impl RecordingFile {
    pub fn new(part: PathBuf, wav: PathBuf, keys: Option<Arc<super::Keyring>>) -> Self {
        RecordingFile {
            part,
            wav,
            keys,
            held: Arc::default(),
            reader: Arc::default(),
        }
    }

    /// Hold the `.part` open from now on (once: later calls do nothing).
    /// Call it once audio was written (the file exists); cheap, one
    /// `open()`. An error (the file already gone) leaves reads by name.
    pub fn hold(&self) {
        if self.held.get().is_none() {
            // (The WAV if the part was renamed already: a call that ended.)
            if let Ok(f) = File::open(&self.part).or_else(|_| File::open(&self.wav)) {
                let _ = self.held.set(f);
            }
        }
    }

    /// Up to `max` stereo sample frames (interleaved L, R) from frame `from`
    /// on; fewer at the end of what is written. Reads the held `.part`
    /// ([`RecordingFile::hold`]), else the `.part` file, or the finished WAV
    /// when the part was already renamed.
    pub fn read_frames(&self, from: u64, max: usize) -> io::Result<Vec<i16>> {
        let keys = self.keys.as_deref();
        if let Some(f) = self.held.get() {
            // (A sealed `.part` read as it stands: its authentic records,
            // the same plaintext as the sealed WAV made from it.)
            let mut kept = self.reader.lock().unwrap_or_else(|e| e.into_inner());
            let r = match kept.as_mut() {
                Some(r) => {
                    r.refresh()?;
                    r
                }
                None => kept.insert(crate::spoolfile::open_recording_file(
                    f.try_clone()?,
                    &self.part,
                    keys,
                    super::OpenMode::Follow,
                )?),
            };
            return read_frames_from(r, from, max);
        }
        let mut f = match super::open_recording(&self.part, keys, super::OpenMode::Recover) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                super::open_recording(&self.wav, keys, super::OpenMode::Strict)?
            }
            Err(e) => return Err(e),
        };
        read_frames_from(&mut f, from, max)
    }
}

/// [`RecordingFile::read_frames`] from `f`.
fn read_frames_from(f: &mut RecordingReader, from: u64, max: usize) -> io::Result<Vec<i16>> {
    f.seek(SeekFrom::Start(HEADER_LEN + from * 4))?;
    let mut buf = vec![0u8; max * 4];
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(r) => n += r,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    // Whole frames only (a write may be under way).
    let n = n - n % 4;
    Ok(buf[..n]
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect())
}

/// What a tap learns when a recording begins.
#[derive(Debug, Clone)]
pub struct TapBegin {
    pub recording_id: String,
    pub sample_rate: u32,
    /// The recording's metadata as known so far (CONTRACT §3 fields).
    pub meta: Value,
    pub file: RecordingFile,
}

/// How a recording ended, for a tap.
#[derive(Debug, Clone)]
pub enum TapEnd {
    /// The pair is durable: `frames` sample frames, `meta` = its JSON.
    Written { frames: u64, meta: Value },
    /// No recording was kept (shorter than `min_duration`, a write error):
    /// the file is gone.
    Discarded { frames: u64, reason: String },
}

/// Gets every recording's audio (a live stream). Shared by the recording
/// directories of every source.
pub trait AudioTap: Send + Sync + std::fmt::Debug {
    /// A recording begins; `None`: this one is not tapped.
    fn begin(&self, rec: TapBegin) -> Option<Box<dyn CallTap>>;
}

/// One recording's tap.
pub trait CallTap: Send {
    /// `frames` (interleaved stereo) are written to the file at sample-frame
    /// offset `at`. Must not block.
    fn audio(&mut self, at: u64, frames: &[i16]);
    /// The recording ended.
    fn end(self: Box<Self>, end: TapEnd);
}
