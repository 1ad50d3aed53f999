//! WAV (RIFF/WAVE, PCM s16le) writing, header parsing and crash repair.
//!
//! In: interleaved 16-bit samples (the writer), or the first bytes of a WAV
//! file (the parser), or a WAV file whose writer died (repair). Out: a
//! canonical 44-byte-header PCM WAV on any `Write + Seek` the shell provides
//! (this module opens no files), a [`WavInfo`], or a fixed header.
//!
//! ## File layout and recovery rules
//!
//! [`WavWriter`] writes the canonical header (`RIFF`, `WAVE`, a 16-byte
//! `fmt ` chunk, `data`) with both size fields set to the placeholder
//! `0xFFFFFFFF` ("until end of file"), then only appends samples. The data
//! chunk is always the last chunk, so a file cut off by a crash at any byte
//! after the header is recoverable: [`repair_wav`] sets the sizes from the file
//! length (dropping a partial last frame). Even unrepaired, such a file is
//! readable: ffmpeg reads it to its end and reports the right duration; sox
//! reads it to its end with a "premature EOF" warning (and `soxi` shows a
//! bogus 37-hour length).
//! [`WavWriter::finalize`] patches the real sizes.
//!
//! Size limit: RIFF sizes are 32-bit. The writer refuses (with
//! `io::ErrorKind::FileTooLarge`, writing nothing of that call) any sample
//! that would make the data chunk exceed [`MAX_DATA_BYTES`] (4 GiB minus the
//! header, rounded down to whole frames), instead of silently wrapping.
//! That is 37 hours of 16 kHz stereo.
//!
//! [`parse_wav_header`] walks RIFF chunks (`fmt `, `LIST`, `fact`, ... up to
//! `data`) within the given bytes only, with odd-size padding and
//! `WAVE_FORMAT_EXTENSIBLE`; it never reads past its input or allocates from
//! declared sizes, and errors instead of panicking on any input.

use std::io::{self, Read, Seek, SeekFrom, Write};

/// Size of the canonical header [`WavWriter`] writes.
pub const HEADER_LEN: u64 = 44;
/// The "unknown length" value written in place of both sizes until finalize.
pub const SIZE_PLACEHOLDER: u32 = 0xFFFF_FFFF;
/// The largest data chunk (bytes) the writer will produce: the RIFF size
/// (`36 + data`) must stay below the placeholder value. Rounded down to
/// whole frames of the largest frame we write (8 bytes).
pub const MAX_DATA_BYTES: u64 = (0xFFFF_FFFE - 36) / 8 * 8;

/// `WAVE_FORMAT_PCM`.
pub const FORMAT_PCM: u16 = 1;
/// `WAVE_FORMAT_EXTENSIBLE`.
pub const FORMAT_EXTENSIBLE: u16 = 0xFFFE;

/// How many bytes of the start of a file [`repair_wav`] reads for the header.
const REPAIR_HEADER_MAX: u64 = 64 * 1024;
/// Chunk walk bound for [`parse_wav_header`].
const MAX_CHUNKS: usize = 256;
/// Bytes buffered before the writer hands them to `W`.
const WRITE_BUF: usize = 64 * 1024;
/// The stack buffer [`write_le`] converts through on a big-endian machine: a
/// 100 ms chunk of 16 kHz stereo (6.4 KB) in one `write()`.
#[cfg(target_endian = "big")]
const THROUGH_BUF: usize = 8 * 1024;

/// The samples' bytes as a WAV holds them (16-bit little-endian): on a
/// little-endian machine, the samples' own memory.
#[cfg(target_endian = "little")]
fn le_bytes(samples: &[i16]) -> &[u8] {
    // SAFETY: an `i16` is two initialized bytes with no padding, `u8` has
    // alignment 1, and the length covers exactly the slice's memory, which
    // stays borrowed for the result's lifetime.
    unsafe {
        std::slice::from_raw_parts(
            samples.as_ptr().cast::<u8>(),
            std::mem::size_of_val(samples),
        )
    }
}

/// Appends `samples` to `buf` as 16-bit little-endian bytes: one copy, no
/// zeroing first (the import's WAV writes: 3 % of its CPU went to
/// `resize` and the byte-by-byte copy, BENCHMARKS.md).
pub fn extend_le(buf: &mut Vec<u8>, samples: &[i16]) {
    #[cfg(target_endian = "little")]
    buf.extend_from_slice(le_bytes(samples));
    #[cfg(target_endian = "big")]
    {
        buf.reserve(samples.len() * 2);
        for s in samples {
            buf.extend_from_slice(&s.to_le_bytes());
        }
    }
}

/// Writes `samples` to `w` as 16-bit little-endian bytes, with no copy on
/// a little-endian machine.
pub fn write_le(w: &mut impl Write, samples: &[i16]) -> io::Result<()> {
    #[cfg(target_endian = "little")]
    {
        w.write_all(le_bytes(samples))
    }
    #[cfg(target_endian = "big")]
    {
        let mut stack = [0u8; THROUGH_BUF];
        for chunk in samples.chunks(THROUGH_BUF / 2) {
            let out = &mut stack[..chunk.len() * 2];
            for (d, s) in out.chunks_exact_mut(2).zip(chunk) {
                d.copy_from_slice(&s.to_le_bytes());
            }
            w.write_all(out)?;
        }
        Ok(())
    }
}

/// Errors from parsing and repair.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WavError {
    #[error("not a RIFF/WAVE file")]
    NotWave,
    #[error("RF64 / BW64 files are not supported")]
    Rf64,
    #[error("header truncated: need more than {have} bytes")]
    Truncated { have: usize },
    #[error("no fmt chunk before the data chunk")]
    MissingFmt,
    #[error("bad fmt chunk: {0}")]
    BadFmt(&'static str),
    #[error("no data chunk within the first {0} chunks")]
    TooManyChunks(usize),
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
}

/// What a WAV header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WavInfo {
    pub sample_rate: u32,
    pub channels: u16,
    pub bits_per_sample: u16,
    /// `wFormatTag`: 1 = PCM, 3 = float, 6/7 = A-/μ-law, 0xFFFE = extensible.
    pub format: u16,
    /// For `WAVE_FORMAT_EXTENSIBLE`, the format tag in the sub-format GUID
    /// (1 = PCM); `None` otherwise.
    pub sub_format: Option<u16>,
    /// Bytes per frame (all channels), as declared.
    pub block_align: u16,
    /// Offset of the first audio byte.
    pub data_offset: u64,
    /// Data chunk size as declared (may be the 0xFFFFFFFF placeholder, or
    /// more than the file holds: see [`WavInfo::audio_len`]).
    pub data_len: u64,
}

impl WavInfo {
    /// PCM in effect (plain or extensible with a PCM sub-format).
    pub fn is_pcm(&self) -> bool {
        self.format == FORMAT_PCM
            || (self.format == FORMAT_EXTENSIBLE && self.sub_format == Some(FORMAT_PCM))
    }

    /// Audio bytes actually usable in a file of `file_len` bytes: the declared
    /// size clamped to what the file holds, in whole frames.
    pub fn audio_len(&self, file_len: u64) -> u64 {
        let available = file_len.saturating_sub(self.data_offset);
        let len = self.data_len.min(available);
        let align = u64::from(self.block_align.max(1));
        len / align * align
    }
}

/// Streaming WAV writer: header first, samples appended, sizes patched at the
/// end (see the module docs for the crash-recovery rules).
pub struct WavWriter<W: Write + Seek> {
    /// `None` only after `finalize` took it.
    inner: Option<W>,
    /// Stream position of the RIFF header (where `new` found the writer).
    start: u64,
    channels: u16,
    buf: Vec<u8>,
    data_bytes: u64,
    limit: u64,
}

impl<W: Write + Seek> std::fmt::Debug for WavWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WavWriter")
            .field("channels", &self.channels)
            .field("data_bytes", &self.data_bytes)
            .finish_non_exhaustive()
    }
}

/// The canonical 44-byte header for 16-bit PCM.
pub fn canonical_header(sample_rate: u32, channels: u16, data_len: u32) -> [u8; 44] {
    let block_align = channels.saturating_mul(2);
    let byte_rate = sample_rate.saturating_mul(u32::from(block_align));
    let riff_len = if data_len == SIZE_PLACEHOLDER {
        SIZE_PLACEHOLDER
    } else {
        data_len.saturating_add(36)
    };
    let mut h = [0u8; 44];
    h[0..4].copy_from_slice(b"RIFF");
    h[4..8].copy_from_slice(&riff_len.to_le_bytes());
    h[8..12].copy_from_slice(b"WAVE");
    h[12..16].copy_from_slice(b"fmt ");
    h[16..20].copy_from_slice(&16u32.to_le_bytes());
    h[20..22].copy_from_slice(&FORMAT_PCM.to_le_bytes());
    h[22..24].copy_from_slice(&channels.to_le_bytes());
    h[24..28].copy_from_slice(&sample_rate.to_le_bytes());
    h[28..32].copy_from_slice(&byte_rate.to_le_bytes());
    h[32..34].copy_from_slice(&block_align.to_le_bytes());
    h[34..36].copy_from_slice(&16u16.to_le_bytes());
    h[36..40].copy_from_slice(b"data");
    h[40..44].copy_from_slice(&data_len.to_le_bytes());
    h
}

impl<W: Write + Seek> WavWriter<W> {
    /// Writes the header (sizes = placeholder) at `w`'s current position.
    /// `channels` must be 1..=4 and `sample_rate` non-zero.
    pub fn new(mut w: W, sample_rate: u32, channels: u16) -> io::Result<Self> {
        if !(1..=4).contains(&channels) || sample_rate == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("unsupported WAV layout: {channels} channels at {sample_rate} Hz"),
            ));
        }
        let start = w.stream_position()?;
        w.write_all(&canonical_header(sample_rate, channels, SIZE_PLACEHOLDER))?;
        let frame = u64::from(channels) * 2;
        Ok(WavWriter {
            inner: Some(w),
            start,
            channels,
            // Grown to what is written between flushes (at most
            // WRITE_BUF): a recording flushed after every chunk (the
            // daemon's write-through) holds one chunk, not 64 KiB.
            buf: Vec::new(),
            data_bytes: 0,
            limit: MAX_DATA_BYTES / frame * frame,
        })
    }

    /// Appends interleaved samples (buffered). A slice that would push the
    /// data chunk past the 4 GiB limit is refused whole with
    /// `ErrorKind::FileTooLarge`; so is one that is not whole frames.
    pub fn write_samples(&mut self, interleaved: &[i16]) -> io::Result<()> {
        let bytes = self.accept(interleaved)?;
        for chunk in interleaved.chunks(WRITE_BUF / 2) {
            if self.buf.len() + chunk.len() * 2 > WRITE_BUF {
                self.flush_buf()?;
            }
            extend_le(&mut self.buf, chunk);
        }
        self.data_bytes += bytes;
        Ok(())
    }

    /// Appends interleaved samples and hands them to `W` at once (after
    /// anything buffered before): nothing is kept between calls. For a
    /// writer flushed after every chunk (the daemon's recordings, written
    /// through), whose own buffer would otherwise stay allocated for the
    /// recording's life, one per call in progress. Refuses what
    /// [`Self::write_samples`] refuses.
    pub fn write_samples_through(&mut self, interleaved: &[i16]) -> io::Result<()> {
        let bytes = self.accept(interleaved)?;
        self.flush_buf()?;
        self.buf = Vec::new();
        let w = self.inner.as_mut().ok_or_else(taken)?;
        write_le(w, interleaved)?;
        self.data_bytes += bytes;
        Ok(())
    }

    /// Checks that `interleaved` is whole frames and fits under the 4 GiB
    /// limit; its length in bytes.
    fn accept(&self, interleaved: &[i16]) -> io::Result<u64> {
        if interleaved.len() % usize::from(self.channels) != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "sample count is not a multiple of the channel count",
            ));
        }
        let bytes = interleaved.len() as u64 * 2;
        if self.data_bytes + bytes > self.limit {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                "WAV data chunk would exceed 4 GiB",
            ));
        }
        Ok(bytes)
    }

    /// Audio bytes accepted so far (buffered or written).
    pub fn data_bytes(&self) -> u64 {
        self.data_bytes
    }

    fn flush_buf(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let w = self.inner.as_mut().ok_or_else(taken)?;
        w.write_all(&self.buf)?;
        self.buf.clear();
        Ok(())
    }

    /// Hands buffered samples to `W` and flushes it (the header keeps its
    /// placeholder sizes; durability beyond that is the shell's `sync`).
    pub fn flush(&mut self) -> io::Result<()> {
        self.flush_buf()?;
        self.inner.as_mut().ok_or_else(taken)?.flush()
    }

    /// Writes the remaining samples, patches the RIFF and data sizes, flushes,
    /// and returns `W` positioned at the end of the file.
    pub fn finalize(mut self) -> io::Result<W> {
        self.flush_buf()?;
        let mut w = self.inner.take().ok_or_else(taken)?;
        // data_bytes <= limit < 2^32 - 36, so both fit.
        let data = u32::try_from(self.data_bytes).map_err(|_| too_large())?;
        let riff = data.checked_add(36).ok_or_else(too_large)?;
        let end = w.stream_position()?;
        w.seek(SeekFrom::Start(self.start + 4))?;
        w.write_all(&riff.to_le_bytes())?;
        w.seek(SeekFrom::Start(self.start + 40))?;
        w.write_all(&data.to_le_bytes())?;
        w.seek(SeekFrom::Start(end))?;
        w.flush()?;
        Ok(w)
    }

    #[cfg(test)]
    fn set_limit(&mut self, limit: u64) {
        self.limit = limit;
    }
}

impl<W: Write + Seek> Drop for WavWriter<W> {
    /// Dropped without `finalize` (an error path): buffered samples are still
    /// written, the sizes stay placeholders, and the file is what a crash
    /// would leave, repairable with [`repair_wav`].
    fn drop(&mut self) {
        if self.inner.is_some() {
            let _ = self.flush_buf();
        }
    }
}

fn taken() -> io::Error {
    io::Error::other("WAV writer already finalized")
}

fn too_large() -> io::Error {
    io::Error::new(io::ErrorKind::FileTooLarge, "WAV data chunk exceeds 4 GiB")
}

fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

/// Parses the header of a WAV file from its first bytes (read, say, 64 KiB:
/// everything up to the start of the `data` chunk body must be present).
pub fn parse_wav_header(bytes: &[u8]) -> Result<WavInfo, WavError> {
    let have = bytes.len();
    let truncated = WavError::Truncated { have };
    let magic = bytes.get(0..4).ok_or(WavError::Truncated { have })?;
    match magic {
        b"RIFF" => {}
        b"RF64" | b"BW64" => return Err(WavError::Rf64),
        _ => return Err(WavError::NotWave),
    }
    if bytes.get(8..12).ok_or(WavError::Truncated { have })? != b"WAVE" {
        return Err(WavError::NotWave);
    }
    let mut at: usize = 12;
    let mut fmt: Option<WavInfo> = None;
    for _ in 0..MAX_CHUNKS {
        let id = bytes.get(at..at + 4).ok_or(WavError::Truncated { have })?;
        let size = le_u32(bytes, at + 4).ok_or(WavError::Truncated { have })?;
        let body = at + 8;
        if id == b"data" {
            let mut info = fmt.ok_or(WavError::MissingFmt)?;
            info.data_offset = body as u64;
            info.data_len = u64::from(size);
            return Ok(info);
        }
        if id == b"fmt " {
            let body_bytes = bytes
                .get(body..body.saturating_add(size as usize))
                .ok_or(WavError::Truncated { have })?;
            fmt = Some(parse_fmt(body_bytes)?);
        }
        // Chunks are word-aligned: odd sizes carry a pad byte.
        let padded = u64::from(size) + u64::from(size & 1);
        let next = body as u64 + padded;
        if next > have as u64 {
            return Err(truncated);
        }
        at = next as usize;
    }
    Err(WavError::TooManyChunks(MAX_CHUNKS))
}

fn parse_fmt(b: &[u8]) -> Result<WavInfo, WavError> {
    if b.len() < 16 {
        return Err(WavError::BadFmt("fmt chunk shorter than 16 bytes"));
    }
    let field16 = |at| le_u16(b, at).ok_or(WavError::BadFmt("short fmt chunk"));
    let format = field16(0)?;
    let channels = field16(2)?;
    let sample_rate = le_u32(b, 4).ok_or(WavError::BadFmt("short fmt chunk"))?;
    let block_align = field16(12)?;
    let bits_per_sample = field16(14)?;
    if channels == 0 {
        return Err(WavError::BadFmt("zero channels"));
    }
    if sample_rate == 0 {
        return Err(WavError::BadFmt("zero sample rate"));
    }
    if block_align == 0 {
        return Err(WavError::BadFmt("zero block align"));
    }
    let sub_format = if format == FORMAT_EXTENSIBLE {
        // cbSize(2) validBits(2) channelMask(4) GUID(16): the GUID's first two
        // bytes are the format tag.
        if b.len() < 40 {
            return Err(WavError::BadFmt(
                "extensible fmt chunk shorter than 40 bytes",
            ));
        }
        Some(field16(24)?)
    } else {
        None
    };
    Ok(WavInfo {
        sample_rate,
        channels,
        bits_per_sample,
        format,
        sub_format,
        block_align,
        data_offset: 0,
        data_len: 0,
    })
}

/// Repair a WAV whose writer died: sets RIFF and data sizes from the actual
/// file length (excluding a partial last frame, which stays in the file as
/// up to `block_align - 1` trailing bytes outside the data chunk; a caller
/// holding a `File` may `set_len` it away). Assumes, as [`WavWriter`]
/// guarantees, that the data chunk is the last chunk. Returns the audio byte
/// count. Files over 4 GiB are clamped to the largest size RIFF can declare.
pub fn repair_wav<F: Read + Write + Seek>(f: &mut F, file_len: u64) -> Result<u64, WavError> {
    let head_len = file_len.min(REPAIR_HEADER_MAX) as usize;
    let mut head = vec![0u8; head_len];
    f.seek(SeekFrom::Start(0))?;
    f.read_exact(&mut head)?;
    let info = parse_wav_header(&head)?;
    let align = u64::from(info.block_align.max(1));
    let available = file_len.saturating_sub(info.data_offset);
    // RIFF size = data_offset - 8 + data (+ pad byte) must fit in 32 bits.
    let max_data = (u64::from(u32::MAX) - 1 - (info.data_offset - 8)) / align * align;
    let audio = (available / align * align).min(max_data);
    let riff = info.data_offset - 8 + audio + (audio & 1);
    let riff = u32::try_from(riff).map_err(|_| WavError::Io(too_large()))?;
    let data = u32::try_from(audio).map_err(|_| WavError::Io(too_large()))?;
    f.seek(SeekFrom::Start(4))?;
    f.write_all(&riff.to_le_bytes())?;
    f.seek(SeekFrom::Start(info.data_offset - 4))?;
    f.write_all(&data.to_le_bytes())?;
    f.flush()?;
    Ok(audio)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Cursor;

    fn write_wav(rate: u32, channels: u16, samples: &[i16], finalize: bool) -> Vec<u8> {
        let mut w = WavWriter::new(Cursor::new(Vec::new()), rate, channels).unwrap();
        w.write_samples(samples).unwrap();
        if finalize {
            w.finalize().unwrap().into_inner()
        } else {
            // Simulate the writer dying: flush what it had, never patch.
            w.flush().unwrap();
            let inner = w.inner.take().unwrap();
            inner.into_inner()
        }
    }

    #[test]
    fn header_bytes_are_exact() {
        let file = write_wav(8000, 2, &[], false);
        let expected: [u8; 44] = [
            b'R', b'I', b'F', b'F', 0xFF, 0xFF, 0xFF, 0xFF, b'W', b'A', b'V', b'E', b'f', b'm',
            b't', b' ', 16, 0, 0, 0, 1, 0, 2, 0, 0x40, 0x1F, 0, 0, 0x00, 0x7D, 0, 0, 4, 0, 16, 0,
            b'd', b'a', b't', b'a', 0xFF, 0xFF, 0xFF, 0xFF,
        ];
        assert_eq!(file, expected);
        let file = write_wav(16000, 2, &[1, -2, 3, -4], true);
        assert_eq!(&file[0..4], b"RIFF");
        assert_eq!(le_u32(&file, 4), Some(36 + 8));
        assert_eq!(le_u32(&file, 24), Some(16000));
        assert_eq!(le_u32(&file, 28), Some(64000));
        assert_eq!(le_u32(&file, 40), Some(8));
        assert_eq!(&file[44..], &[1, 0, 0xFE, 0xFF, 3, 0, 0xFC, 0xFF]);
    }

    #[test]
    fn finalize_sizes() {
        let samples: Vec<i16> = (0..100_001 * 2).map(|i| i as i16).collect();
        let file = write_wav(8000, 2, &samples, true);
        assert_eq!(file.len(), 44 + samples.len() * 2);
        let info = parse_wav_header(&file).unwrap();
        assert_eq!(
            info,
            WavInfo {
                sample_rate: 8000,
                channels: 2,
                bits_per_sample: 16,
                format: 1,
                sub_format: None,
                block_align: 4,
                data_offset: 44,
                data_len: samples.len() as u64 * 2,
            }
        );
        assert_eq!(le_u32(&file, 4), Some(file.len() as u32 - 8));
        assert!(info.is_pcm());
    }

    #[test]
    fn writer_at_an_offset_patches_relative_to_its_start() {
        let mut c = Cursor::new(vec![0xAA; 10]);
        c.set_position(10);
        let mut w = WavWriter::new(c, 8000, 1).unwrap();
        w.write_samples(&[5, 6, 7]).unwrap();
        assert_eq!(w.data_bytes(), 6);
        let c = w.finalize().unwrap();
        assert_eq!(c.position(), 10 + 44 + 6);
        let v = c.into_inner();
        assert_eq!(&v[..10], &[0xAA; 10]);
        let info = parse_wav_header(&v[10..]).unwrap();
        assert_eq!(info.data_len, 6);
    }

    #[test]
    fn rejects_partial_frames_and_bad_layouts() {
        let mut w = WavWriter::new(Cursor::new(Vec::new()), 8000, 2).unwrap();
        assert!(w.write_samples(&[1, 2, 3]).is_err());
        assert_eq!(w.data_bytes(), 0);
        assert!(WavWriter::new(Cursor::new(Vec::new()), 8000, 0).is_err());
        assert!(WavWriter::new(Cursor::new(Vec::new()), 0, 2).is_err());
    }

    /// Written through (no buffer kept) or buffered, mixed in any order and
    /// in chunks of any size (past the stack buffer too): the same bytes;
    /// what goes through is in `W` when the call returns; the same refusals.
    #[test]
    fn writing_through_makes_the_same_file() {
        let samples: Vec<i16> = (0..30_011 * 2).map(|i| (i * 7919) as i16).collect();
        let mut plain = WavWriter::new(Cursor::new(Vec::new()), 16000, 2).unwrap();
        plain.write_samples(&samples).unwrap();
        let want = plain.finalize().unwrap().into_inner();
        // The samples as 16-bit little-endian, in order.
        let le: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
        assert_eq!(want[44..], le[..]);
        let mut w = WavWriter::new(Cursor::new(Vec::new()), 16000, 2).unwrap();
        let (mut at, mut n, mut through) = (0, 2, true);
        while at < samples.len() {
            let end = (at + n).min(samples.len());
            if through {
                w.write_samples_through(&samples[at..end]).unwrap();
                assert_eq!(
                    w.inner.as_ref().unwrap().get_ref().len() as u64,
                    44 + w.data_bytes()
                );
                assert_eq!(w.buf.capacity(), 0);
            } else {
                w.write_samples(&samples[at..end]).unwrap();
            }
            at = end;
            n = ((n * 3 % 9001) & !1) + 2;
            through = !through;
        }
        assert!(w.write_samples_through(&[1, 2, 3]).is_err());
        w.set_limit(w.data_bytes());
        let err = w.write_samples_through(&[1, 2]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::FileTooLarge);
        assert_eq!(w.finalize().unwrap().into_inner(), want);
    }

    #[test]
    fn refuses_to_wrap_at_4_gib() {
        let mut w = WavWriter::new(Cursor::new(Vec::new()), 8000, 2).unwrap();
        assert!(w.limit <= MAX_DATA_BYTES && MAX_DATA_BYTES + 36 < u64::from(u32::MAX));
        assert_eq!(w.limit % 4, 0);
        // Pretend most of the 4 GiB is already written.
        w.set_limit(16);
        w.write_samples(&[1; 8]).unwrap();
        let err = w.write_samples(&[1, 2]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::FileTooLarge);
        assert_eq!(w.data_bytes(), 16);
        let v = w.finalize().unwrap().into_inner();
        assert_eq!(parse_wav_header(&v).unwrap().data_len, 16);
        // And the real limit is what a RIFF size can hold.
        let w = WavWriter::new(Cursor::new(Vec::new()), 8000, 2).unwrap();
        assert_eq!(w.limit, MAX_DATA_BYTES);
        assert!(u32::try_from(MAX_DATA_BYTES + 36).is_ok());
    }

    #[test]
    fn dropped_writer_leaves_a_repairable_file() {
        let samples: Vec<i16> = (0..5000).map(|i| (i * 3) as i16).collect();
        let full = write_wav(16000, 2, &samples, false);
        assert_eq!(full.len(), 44 + 10000);
        // Cut at every kind of place: inside a frame, between frames, right
        // after the header.
        for cut in [44, 45, 46, 47, 48, 49, 1001, 1002, 1003, 5555, full.len()] {
            let mut f = Cursor::new(full[..cut].to_vec());
            let audio = repair_wav(&mut f, cut as u64).unwrap();
            assert_eq!(audio, (cut as u64 - 44) / 4 * 4, "cut {cut}");
            let v = f.into_inner();
            let info = parse_wav_header(&v).unwrap();
            assert_eq!(info.data_len, audio);
            assert_eq!(u64::from(le_u32(&v, 4).unwrap()), 36 + audio);
            assert_eq!(info.audio_len(v.len() as u64), audio);
            // The audio bytes are untouched.
            assert_eq!(&v[44..44 + audio as usize], &full[44..44 + audio as usize]);
        }
        // Cut inside the header: an error, not a panic.
        for cut in [0, 3, 12, 20, 43] {
            let mut f = Cursor::new(full[..cut].to_vec());
            assert!(repair_wav(&mut f, cut as u64).is_err(), "cut {cut}");
        }
    }

    #[test]
    fn repair_is_idempotent_on_good_files() {
        let full = write_wav(8000, 1, &[1, 2, 3, 4, 5], true);
        let mut f = Cursor::new(full.clone());
        assert_eq!(repair_wav(&mut f, full.len() as u64).unwrap(), 10);
        assert_eq!(f.into_inner(), full);
    }

    /// A header as other writers make it: LIST before data, odd-sized chunk
    /// with its pad byte, extensible format.
    fn foreign_header(odd: bool) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(b"RIFF\0\0\0\0WAVE");
        v.extend_from_slice(b"fmt ");
        v.extend_from_slice(&40u32.to_le_bytes());
        v.extend_from_slice(&FORMAT_EXTENSIBLE.to_le_bytes());
        v.extend_from_slice(&2u16.to_le_bytes());
        v.extend_from_slice(&16000u32.to_le_bytes());
        v.extend_from_slice(&64000u32.to_le_bytes());
        v.extend_from_slice(&4u16.to_le_bytes());
        v.extend_from_slice(&16u16.to_le_bytes());
        v.extend_from_slice(&22u16.to_le_bytes()); // cbSize
        v.extend_from_slice(&16u16.to_le_bytes()); // valid bits
        v.extend_from_slice(&3u32.to_le_bytes()); // channel mask
        v.extend_from_slice(&[
            1, 0, 0, 0, 0, 0, 0x10, 0, 0x80, 0, 0, 0xAA, 0, 0x38, 0x9B, 0x71,
        ]);
        v.extend_from_slice(b"LIST");
        let list: &[u8] = if odd { b"INFOISFT\x01\0\0\0A" } else { b"INFO" };
        v.extend_from_slice(&(list.len() as u32).to_le_bytes());
        v.extend_from_slice(list);
        if list.len() % 2 == 1 {
            v.push(0);
        }
        v.extend_from_slice(b"fact");
        v.extend_from_slice(&4u32.to_le_bytes());
        v.extend_from_slice(&100u32.to_le_bytes());
        v.extend_from_slice(b"data");
        v.extend_from_slice(&400u32.to_le_bytes());
        v
    }

    #[test]
    fn parses_foreign_headers() {
        for odd in [false, true] {
            let h = foreign_header(odd);
            let info = parse_wav_header(&h).unwrap();
            assert_eq!(info.format, FORMAT_EXTENSIBLE);
            assert_eq!(info.sub_format, Some(1));
            assert!(info.is_pcm());
            assert_eq!(info.channels, 2);
            assert_eq!(info.sample_rate, 16000);
            assert_eq!(info.bits_per_sample, 16);
            assert_eq!(info.data_offset, h.len() as u64);
            assert_eq!(info.data_len, 400);
            assert_eq!(info.audio_len(h.len() as u64 + 100), 100);
            // Every truncation is an error, never a panic.
            for cut in 0..h.len() {
                assert!(parse_wav_header(&h[..cut]).is_err(), "cut {cut}");
            }
        }
    }

    #[test]
    fn rejects_non_wave() {
        assert!(matches!(
            parse_wav_header(b"RIFX\0\0\0\0WAVE"),
            Err(WavError::NotWave)
        ));
        assert!(matches!(
            parse_wav_header(b"RIFF\0\0\0\0AVI "),
            Err(WavError::NotWave)
        ));
        assert!(matches!(
            parse_wav_header(b"RF64\0\0\0\0WAVE"),
            Err(WavError::Rf64)
        ));
        let mut no_fmt = b"RIFF\0\0\0\0WAVEdata\0\0\0\0".to_vec();
        assert!(matches!(
            parse_wav_header(&no_fmt),
            Err(WavError::MissingFmt)
        ));
        no_fmt.truncate(12);
        assert!(matches!(
            parse_wav_header(&no_fmt),
            Err(WavError::Truncated { .. })
        ));
        let mut zero_channels = canonical_header(8000, 2, 0);
        zero_channels[22] = 0;
        assert!(matches!(
            parse_wav_header(&zero_channels),
            Err(WavError::BadFmt(_))
        ));
    }

    #[test]
    fn chunk_walk_is_bounded() {
        let mut v = b"RIFF\0\0\0\0WAVE".to_vec();
        for _ in 0..1000 {
            v.extend_from_slice(b"junk\0\0\0\0");
        }
        assert!(matches!(
            parse_wav_header(&v),
            Err(WavError::TooManyChunks(_))
        ));
        // A huge declared chunk size: truncated, no allocation, no overflow.
        let mut v = b"RIFF\0\0\0\0WAVEjunk".to_vec();
        v.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            parse_wav_header(&v),
            Err(WavError::Truncated { .. })
        ));
    }

    /// If sox is installed, it must accept our files: finalized, repaired
    /// after a cut, and unfinished (placeholder sizes).
    #[test]
    fn sox_accepts_our_files() {
        use std::process::Command;
        if Command::new("soxi").arg("--version").output().is_err() {
            eprintln!("note: sox not installed, skipping the soxi check");
            return;
        }
        let samples: Vec<i16> = (0..16000).map(|i| ((i * 37) % 2000) as i16).collect();
        let finalized = write_wav(8000, 2, &samples, true);
        let unfinished = write_wav(8000, 2, &samples, false);
        let mut repaired = Cursor::new(unfinished[..20011].to_vec());
        let audio = repair_wav(&mut repaired, 20011).unwrap();
        let repaired = repaired.into_inner();
        let dir = std::env::temp_dir();
        for (name, bytes, frames) in [
            ("final", &finalized, 8000u64),
            ("repaired", &repaired, audio / 4),
            ("unfinished", &unfinished, 8000),
        ] {
            let path = dir.join(format!("pbx-core-wav-{}-{name}.wav", std::process::id()));
            std::fs::write(&path, bytes).unwrap();
            let out = Command::new("soxi").arg("-s").arg(&path).output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
            let stderr = String::from_utf8_lossy(&out.stderr).to_string();
            let _ = std::fs::remove_file(&path);
            assert!(
                out.status.success(),
                "soxi rejected the {name} file: {stderr}"
            );
            if name != "unfinished" {
                assert_eq!(text, frames.to_string(), "{name}: {stderr}");
            }
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_wav_header(&bytes);
            let mut f = Cursor::new(bytes.clone());
            let _ = repair_wav(&mut f, bytes.len() as u64);
        }

        #[test]
        fn mutated_headers_never_panic(
            pos in 0usize..60,
            val in any::<u8>(),
            cut in 0usize..80,
        ) {
            let mut v = foreign_header(true);
            v.extend_from_slice(&[0; 16]);
            if let Some(b) = v.get_mut(pos) { *b = val; }
            v.truncate(cut.max(1) + 40);
            let _ = parse_wav_header(&v);
            let len = v.len() as u64;
            let _ = repair_wav(&mut Cursor::new(v), len);
        }

        #[test]
        fn any_cut_repairs(n in 0usize..400, cut_extra in 0usize..1600) {
            let samples: Vec<i16> = (0..n as i16 * 2).collect();
            let full = write_wav(8000, 2, &samples, false);
            let cut = (44 + cut_extra).min(full.len());
            let mut f = Cursor::new(full[..cut].to_vec());
            let audio = repair_wav(&mut f, cut as u64).unwrap();
            prop_assert_eq!(audio % 4, 0);
            prop_assert!(audio as usize + 44 <= cut);
            let v = f.into_inner();
            prop_assert_eq!(parse_wav_header(&v).unwrap().data_len, audio);
        }
    }
}
