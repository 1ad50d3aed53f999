//! Test audio: tones, speech-like noise bursts, espeak-ng speech; and the
//! measurements the ground-truth tests make on recordings.

use std::path::Path;
use std::process::Command;

use crate::scenario::Rng;

/// A sine tone.
pub fn tone(freq: f64, ms: u32, rate: u32, amplitude: f64) -> Vec<i16> {
    let n = (u64::from(ms) * u64::from(rate) / 1000) as usize;
    (0..n)
        .map(|i| {
            (amplitude * (2.0 * std::f64::consts::PI * freq * i as f64 / f64::from(rate)).sin())
                as i16
        })
        .collect()
}

/// Speech-like test signal: bursts (150-900 ms) of band-limited noise with a
/// varying pitch-like tone, separated by pauses (100-600 ms) of silence. Every
/// seed gives a different, non-periodic signal, which makes cross-correlation
/// alignment unambiguous.
pub fn speechlike(seed: u64, ms: u32, rate: u32) -> Vec<i16> {
    let n = (u64::from(ms) * u64::from(rate) / 1000) as usize;
    let mut out = vec![0i16; n];
    let mut rng = Rng::new(seed);
    let mut i = 0usize;
    let mut lp = 0.0f64;
    while i < n {
        let burst = ((150.0 + rng.unit() * 750.0) * f64::from(rate) / 1000.0) as usize;
        let f0 = 100.0 + rng.unit() * 200.0;
        let amp = 3000.0 + rng.unit() * 7000.0;
        for k in 0..burst.min(n - i) {
            let env = (std::f64::consts::PI * k as f64 / burst as f64).sin();
            let noise = rng.unit() * 2.0 - 1.0;
            lp = 0.7 * lp + 0.3 * noise;
            let t = (i + k) as f64 / f64::from(rate);
            let voiced = (2.0 * std::f64::consts::PI * f0 * t).sin() * 0.6
                + (2.0 * std::f64::consts::PI * 2.0 * f0 * t).sin() * 0.3;
            out[i + k] = (amp * env * (voiced + lp * 0.8)).clamp(-32000.0, 32000.0) as i16;
        }
        i += burst;
        let pause = ((100.0 + rng.unit() * 500.0) * f64::from(rate) / 1000.0) as usize;
        i += pause;
    }
    out
}

/// Speech from espeak-ng at `rate` (8000 or 16000), via sox for the rate
/// change. `None` when the tools are missing.
pub fn espeak(text: &str, voice: &str, rate: u32, tmp: &Path) -> Option<Vec<i16>> {
    let wav = tmp.join(format!(
        "espeak-{}-{rate}.wav",
        voice.replace(['/', ' '], "_")
    ));
    let raw = tmp.join(format!(
        "espeak-{}-{rate}.raw",
        voice.replace(['/', ' '], "_")
    ));
    let ok = Command::new("espeak-ng")
        .args(["-v", voice, "-w"])
        .arg(&wav)
        .arg(text)
        .status()
        .ok()?
        .success();
    if !ok {
        return None;
    }
    let ok = Command::new("sox")
        .arg(&wav)
        .args([
            "-r",
            &rate.to_string(),
            "-c",
            "1",
            "-b",
            "16",
            "-e",
            "signed-integer",
            "-t",
            "raw",
        ])
        .arg(&raw)
        .status()
        .ok()?
        .success();
    if !ok {
        return None;
    }
    let bytes = std::fs::read(&raw).ok()?;
    Some(
        bytes
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]))
            .collect(),
    )
}

/// A two-channel WAV (16-bit PCM) as (rate, [left, right]).
pub fn read_stereo_wav(path: &Path) -> std::io::Result<(u32, [Vec<i16>; 2])> {
    let bytes = std::fs::read(path)?;
    let info = pbx_core::audio::wav::parse_wav_header(&bytes)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
    if info.channels != 2 || info.bits_per_sample != 16 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not 16-bit stereo",
        ));
    }
    let start = info.data_offset as usize;
    let end = (start + info.data_len as usize).min(bytes.len());
    let mut l = Vec::new();
    let mut r = Vec::new();
    for fr in bytes[start..end].chunks_exact(4) {
        l.push(i16::from_le_bytes([fr[0], fr[1]]));
        r.push(i16::from_le_bytes([fr[2], fr[3]]));
    }
    Ok((info.sample_rate, [l, r]))
}

/// A one-channel WAV (16-bit PCM) as (rate, samples); an error for any other
/// channel count.
pub fn read_mono_wav(path: &Path) -> std::io::Result<(u32, Vec<i16>)> {
    let bytes = std::fs::read(path)?;
    let info = pbx_core::audio::wav::parse_wav_header(&bytes)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
    if info.channels != 1 || info.bits_per_sample != 16 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not 16-bit mono: {} channels", info.channels),
        ));
    }
    let start = info.data_offset as usize;
    let end = (start + info.data_len as usize).min(bytes.len());
    Ok((
        info.sample_rate,
        bytes[start..end]
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]))
            .collect(),
    ))
}

/// Normalised cross-correlation of `a` against `b` shifted by `lag` samples
/// (positive lag: `a` is late).
pub fn correlation_at(a: &[i16], b: &[i16], lag: i64) -> f64 {
    let (mut sab, mut saa, mut sbb) = (0f64, 0f64, 0f64);
    for (i, x) in a.iter().enumerate() {
        let j = i as i64 - lag;
        if j < 0 || j as usize >= b.len() {
            continue;
        }
        let y = f64::from(b[j as usize]);
        let x = f64::from(*x);
        sab += x * y;
        saa += x * x;
        sbb += y * y;
    }
    if saa == 0.0 || sbb == 0.0 {
        return 0.0;
    }
    sab / (saa.sqrt() * sbb.sqrt())
}

/// The lag in -max..=max with the highest correlation, and that correlation.
/// Coarse-to-fine: every 4th lag, then refined.
pub fn best_lag(a: &[i16], b: &[i16], max: i64) -> (i64, f64) {
    let mut best = (0i64, f64::MIN);
    let mut lag = -max;
    while lag <= max {
        let c = correlation_at(a, b, lag);
        if c > best.1 {
            best = (lag, c);
        }
        lag += 4;
    }
    let (center, _) = best;
    for lag in center - 4..=center + 4 {
        let c = correlation_at(a, b, lag);
        if c > best.1 {
            best = (lag, c);
        }
    }
    best
}

/// Root-mean-square level.
pub fn rms(x: &[i16]) -> f64 {
    if x.is_empty() {
        return 0.0;
    }
    (x.iter().map(|s| f64::from(*s).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
}

/// Naive 2:1 decimation by averaging (for comparing a 16 kHz truth with an
/// 8 kHz recording in tests; the correlation measure tolerates it).
pub fn halve(x: &[i16]) -> Vec<i16> {
    x.chunks(2)
        .map(|c| ((i32::from(c[0]) + i32::from(*c.get(1).unwrap_or(&c[0]))) / 2) as i16)
        .collect()
}
