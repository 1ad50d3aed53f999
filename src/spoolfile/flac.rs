//! FLAC for the uplink (`cloud.audio_format = "flac"`, CONTRACT §3/§4).
//!
//! In: a spooled recording's WAV (16-bit PCM, 1 or 2 channels, as this
//! crate writes it), read through any [`Read`] (plain or decrypting).
//! Out: a FLAC stream (`fLaC`, one STREAMINFO block, fixed 4096-sample
//! frames) written to any [`Write`], with its size and SHA-256.
//!
//! Promises:
//! - Lossless: the FLAC decodes to exactly the WAV's samples and channels
//!   (tested against sox/libFLAC); STREAMINFO carries the total sample
//!   count and the MD5 of the samples, so `flac -t` verifies it.
//! - Deterministic: the same WAV always gives the same bytes (the encoder
//!   is single-threaded and keeps no state between runs), so a tus upload
//!   resumed after a restart sends the same bytes even if the file kept
//!   beside the WAV was lost and encoded again.
//! - Memory does not grow with the call: two passes over the WAV (the first
//!   only hashes the samples for STREAMINFO's MD5), frames written as they
//!   are encoded, so the output needs no seeking (it may be an encrypting
//!   writer). STREAMINFO's min/max frame sizes are 0 ("unknown", allowed by
//!   the FLAC format).

use std::io::{self, Read, Write};

use flacenc::bitsink::ByteSink;
use flacenc::component::{BitRepr, Stream};
use flacenc::error::Verify;
use flacenc::source::{Context, Fill, FrameBuf};
use sha2::{Digest, Sha256};

/// Samples per channel in each FLAC frame (flacenc's and `flac -5`'s default).
pub const BLOCK_SIZE: usize = 4096;

/// What [`encode_wav`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlacInfo {
    pub bytes: u64,
    /// Hex SHA-256 of the FLAC bytes.
    pub sha256: String,
    pub sample_rate: u32,
    pub channels: u16,
    /// Samples per channel.
    pub frames: u64,
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// The WAV's header: (rate, channels, data bytes), the reader left at the
/// first data byte. Only 16-bit PCM with 1 or 2 channels is accepted.
fn read_wav_header<R: Read>(r: &mut R) -> io::Result<(u32, u16, u64)> {
    // Our WAVs have a 44-byte header; others may carry more chunks first.
    let mut head = Vec::with_capacity(44);
    let mut buf = [0u8; 512];
    loop {
        match pbx_core::audio::wav::parse_wav_header(&head) {
            Ok(info) => {
                if info.bits_per_sample != 16 || !(1..=2).contains(&info.channels) {
                    return Err(bad(format!(
                        "FLAC: {} channels of {} bits; 16-bit mono or stereo only",
                        info.channels, info.bits_per_sample
                    )));
                }
                let off = info.data_offset as usize;
                if head.len() > off {
                    return Err(bad("FLAC: read past the WAV header"));
                }
                // Read exactly up to the data: `head` grew one byte at a time
                // near the end, see below.
                return Ok((info.sample_rate, info.channels, info.data_len));
            }
            Err(pbx_core::audio::wav::WavError::Truncated { .. }) if head.len() < 64 * 1024 => {
                // Grow by what the parser still needs at least: one byte past
                // 44 at a time keeps the reader exactly at the data.
                let want = if head.len() < 44 { 44 - head.len() } else { 1 };
                let n = r.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(bad("FLAC: the WAV ends inside its header"));
                }
                head.extend_from_slice(&buf[..n]);
            }
            Err(e) => return Err(bad(format!("FLAC: not a WAV: {e}"))),
        }
    }
}

/// Reads up to `block` frames of `channels` interleaved s16le samples into
/// `out` (as i32), at most `left` data bytes; returns the frames read.
fn read_block<R: Read>(
    r: &mut R,
    channels: usize,
    block: usize,
    left: &mut u64,
    bytes: &mut Vec<u8>,
    out: &mut Vec<i32>,
) -> io::Result<usize> {
    let frame_bytes = 2 * channels;
    let want = ((block * frame_bytes) as u64).min(*left - *left % frame_bytes as u64) as usize;
    bytes.resize(want, 0);
    let mut got = 0;
    while got < want {
        let n = r.read(&mut bytes[got..want])?;
        if n == 0 {
            break;
        }
        got += n;
    }
    let whole = got - got % frame_bytes;
    *left -= got as u64;
    out.clear();
    out.extend(
        bytes[..whole]
            .chunks_exact(2)
            .map(|c| i32::from(i16::from_le_bytes([c[0], c[1]]))),
    );
    Ok(whole / frame_bytes)
}

/// Encodes the WAV that `open` gives (called twice: once to hash the
/// samples, once to encode them) as FLAC into `out`.
pub fn encode_wav<R: Read, W: Write>(
    mut open: impl FnMut() -> io::Result<R>,
    out: &mut W,
) -> io::Result<FlacInfo> {
    // Pass 1: the MD5 of the samples and their count, for STREAMINFO.
    let mut r = open()?;
    let (rate, channels, data_len) = read_wav_header(&mut r)?;
    let ch = usize::from(channels);
    let mut md5 = md5::Md5::new();
    let mut frames = 0u64;
    let (mut left, mut bytes, mut samples) = (data_len, Vec::new(), Vec::new());
    loop {
        let n = read_block(&mut r, ch, BLOCK_SIZE, &mut left, &mut bytes, &mut samples)?;
        if n == 0 {
            break;
        }
        md5.update(&bytes[..n * 2 * ch]);
        frames += n as u64;
    }
    drop(r);

    let config = flacenc::config::Encoder::default()
        .into_verified()
        .map_err(|e| io::Error::other(format!("FLAC config: {e:?}")))?;
    let flac_err = |e: &dyn std::fmt::Debug| io::Error::other(format!("FLAC: {e:?}"));
    let mut stream = Stream::new(rate as usize, ch, 16).map_err(|e| flac_err(&e))?;
    {
        let info = stream.stream_info_mut();
        info.set_block_sizes(BLOCK_SIZE, BLOCK_SIZE)
            .map_err(|e| flac_err(&e))?;
        info.set_total_samples(frames as usize);
        info.set_md5_digest(&md5.finalize().into());
    }
    let mut hasher = Sha256::new();
    let mut written = 0u64;
    let mut sink = ByteSink::new();
    let mut emit = |sink: &mut ByteSink, out: &mut W| -> io::Result<()> {
        let b = sink.as_slice();
        hasher.update(b);
        written += b.len() as u64;
        out.write_all(b)?;
        sink.clear();
        Ok(())
    };
    // The header: `fLaC` + STREAMINFO (no frames in `stream`).
    stream.write(&mut sink).map_err(|e| flac_err(&e))?;
    emit(&mut sink, out)?;

    // Pass 2: the frames, as they are encoded.
    let mut r = open()?;
    let (rate2, channels2, data_len2) = read_wav_header(&mut r)?;
    if (rate2, channels2, data_len2) != (rate, channels, data_len) {
        return Err(bad("FLAC: the WAV changed while it was encoded"));
    }
    let mut fb = (
        FrameBuf::with_size(ch, BLOCK_SIZE).map_err(|e| flac_err(&e))?,
        Context::new(16, ch),
    );
    let mut left = data_len;
    let mut done = 0u64;
    loop {
        let n = read_block(&mut r, ch, BLOCK_SIZE, &mut left, &mut bytes, &mut samples)?;
        if n == 0 {
            break;
        }
        fb.fill_interleaved(&samples).map_err(|e| flac_err(&e))?;
        let number = fb.1.current_frame_number().unwrap_or(0);
        let frame = flacenc::encode_fixed_size_frame(&config, &fb.0, number, stream.stream_info())
            .map_err(|e| flac_err(&e))?;
        frame.write(&mut sink).map_err(|e| flac_err(&e))?;
        emit(&mut sink, out)?;
        done += n as u64;
    }
    if done != frames {
        return Err(bad("FLAC: the WAV changed while it was encoded"));
    }
    out.flush()?;
    Ok(FlacInfo {
        bytes: written,
        sha256: hex::encode(hasher.finalize()),
        sample_rate: rate,
        channels,
        frames,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pbx_core::audio::wav::canonical_header;

    fn wav(rate: u32, ch: u16, samples: &[i16]) -> Vec<u8> {
        let mut v = canonical_header(rate, ch, (samples.len() * 2) as u32).to_vec();
        for s in samples {
            v.extend_from_slice(&s.to_le_bytes());
        }
        v
    }

    fn encode(w: &[u8]) -> io::Result<(Vec<u8>, FlacInfo)> {
        let mut out = Vec::new();
        let info = encode_wav(|| Ok(io::Cursor::new(w.to_vec())), &mut out)?;
        Ok((out, info))
    }

    #[test]
    fn encoding_is_deterministic_and_described() {
        let x: Vec<i16> = (0..20_000)
            .map(|i| ((i as f64 * 0.05).sin() * 8000.0) as i16)
            .collect();
        let w = wav(8000, 2, &x);
        let (a, ia) = encode(&w).unwrap();
        let (b, _) = encode(&w).unwrap();
        assert_eq!(a, b, "same WAV, same FLAC");
        assert_eq!(&a[..4], b"fLaC");
        assert_eq!(ia.bytes, a.len() as u64);
        assert_eq!(ia.sha256, hex::encode(Sha256::digest(&a)));
        assert_eq!((ia.sample_rate, ia.channels, ia.frames), (8000, 2, 10_000));
        assert!(a.len() < w.len() / 2, "{} vs {}", a.len(), w.len());
    }

    #[test]
    fn empty_odd_and_refused_wavs() {
        // An empty recording is a valid FLAC of 0 samples.
        let (a, i) = encode(&wav(16000, 1, &[])).unwrap();
        assert_eq!(i.frames, 0);
        assert_eq!(a.len(), 42);
        // A trailing half frame is not audio.
        let mut w = wav(8000, 2, &[1, 2, 3]);
        w[40..44].copy_from_slice(&6u32.to_le_bytes());
        assert_eq!(encode(&w).unwrap().1.frames, 1);
        assert!(encode(b"not a wav at all, no").is_err());
        let mut w8 = wav(8000, 1, &[0; 10]);
        w8[34] = 8; // 8-bit
        assert!(encode(&w8).is_err());
    }
}
