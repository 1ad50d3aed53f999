//! The GSM 06.10 decoder against a real peer: sox (libgsm). Audio (espeak-ng
//! speech when installed, synthetic signals that drive the fixed-point
//! arithmetic into saturation, random frames) is encoded by sox to raw `.gsm`
//! and to WAV49, decoded by sox and by [`pbx_core::audio::gsm`]: the outputs
//! must be equal sample for sample. Skipped, with a note, without sox.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use pbx_core::audio::gsm::{
    decode_gsm, decode_gsm_with_stats, decode_wav49, decode_wav49_with_stats, GsmDecoder,
    FRAME_BYTES, FRAME_SAMPLES, WAV49_BLOCK_BYTES, WAVE_FORMAT_GSM610,
};
use pbx_core::audio::wav::parse_wav_header;

/// A scratch directory, removed on drop.
struct Tmp(PathBuf);

impl Tmp {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("pbx-gsm-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Tmp(p)
    }
    fn path(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn have_sox() -> bool {
    let ok = Command::new("sox")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("sox not available: GSM comparison against sox skipped");
    }
    ok
}

fn sox(args: &[&str], files: &[&Path]) {
    // Files are given as `{}` placeholders, in order.
    let mut it = files.iter();
    let mut cmd = Command::new("sox");
    cmd.arg("-V1");
    for a in args {
        if *a == "{}" {
            cmd.arg(it.next().unwrap());
        } else {
            cmd.arg(a);
        }
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "sox {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn write_raw(p: &Path, x: &[i16]) {
    let b: Vec<u8> = x.iter().flat_map(|s| s.to_le_bytes()).collect();
    std::fs::write(p, b).unwrap();
}

fn read_raw(p: &Path) -> Vec<i16> {
    std::fs::read(p)
        .unwrap()
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect()
}

const RAW_IN: [&str; 8] = ["-t", "raw", "-r", "8000", "-e", "signed", "-b", "16"];

/// sox's decoding of a `.gsm` or WAV49 file as s16 samples.
fn sox_decode(t: &Tmp, file: &Path) -> Vec<i16> {
    let out = t.path("sox-decoded.raw");
    sox(
        &["{}", "-t", "raw", "-e", "signed", "-b", "16", "{}"],
        &[file, &out],
    );
    read_raw(&out)
}

/// The data chunk of a WAV49 file, checked to be GSM 6.10 mono 8 kHz.
fn wav49_data(bytes: &[u8]) -> &[u8] {
    let info = parse_wav_header(bytes).unwrap();
    assert_eq!(info.format, WAVE_FORMAT_GSM610);
    assert_eq!(info.channels, 1);
    assert_eq!(info.sample_rate, 8000);
    assert_eq!(info.block_align, 65);
    let start = info.data_offset as usize;
    let len = info.audio_len(bytes.len() as u64) as usize;
    &bytes[start..start + len]
}

#[derive(Default)]
struct Tally {
    frames: usize,
    samples: usize,
    mismatches: usize,
}

impl Tally {
    fn compare(&mut self, what: &str, ours: &[i16], theirs: &[i16]) {
        assert_eq!(ours.len(), theirs.len(), "{what}: lengths differ");
        let bad = ours.iter().zip(theirs).filter(|(a, b)| a != b).count();
        if let Some(i) = ours.iter().zip(theirs).position(|(a, b)| a != b) {
            eprintln!(
                "{what}: first mismatch at sample {i} (frame {}): ours {} sox {}",
                i / FRAME_SAMPLES,
                ours[i],
                theirs[i]
            );
        }
        self.frames += ours.len() / FRAME_SAMPLES;
        self.samples += ours.len();
        self.mismatches += bad;
        eprintln!(
            "{what}: {} frames, {} samples, {bad} mismatching",
            ours.len() / FRAME_SAMPLES,
            ours.len()
        );
    }
}

/// Encodes `pcm` with sox to `.gsm` and WAV49, decodes both ways, compares.
fn round_trip(t: &Tmp, name: &str, pcm: &[i16], tally: &mut Tally) -> (Vec<i16>, Vec<i16>) {
    let input = t.path(&format!("{name}.raw"));
    write_raw(&input, pcm);
    let gsm = t.path(&format!("{name}.gsm"));
    let w49 = t.path(&format!("{name}-49.wav"));
    let mut a: Vec<&str> = RAW_IN.to_vec();
    a.extend(["-c", "1", "{}", "{}"]);
    sox(&a, &[&input, &gsm]);
    let mut a: Vec<&str> = RAW_IN.to_vec();
    a.extend(["-c", "1", "{}", "-e", "gsm-full-rate", "{}"]);
    sox(&a, &[&input, &w49]);

    let gsm_bytes = std::fs::read(&gsm).unwrap();
    let (ours, stats) = decode_gsm_with_stats(&gsm_bytes).unwrap();
    assert_eq!(stats.bad_frames, 0);
    assert_eq!(stats.trailing_bytes, 0);
    tally.compare(&format!("{name}.gsm"), &ours, &sox_decode(t, &gsm));

    let w49_bytes = std::fs::read(&w49).unwrap();
    let ours49 = decode_wav49(wav49_data(&w49_bytes)).unwrap();
    tally.compare(&format!("{name} WAV49"), &ours49, &sox_decode(t, &w49));
    (ours, ours49)
}

/// Deterministic xorshift noise.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn synthetic() -> Vec<(&'static str, Vec<i16>)> {
    let n = 8000 * 2;
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let noise_full: Vec<i16> = (0..n).map(|_| rng.next() as i16).collect();
    let noise_quiet: Vec<i16> = (0..n).map(|_| (rng.next() % 7) as i16 - 3).collect();
    let square: Vec<i16> = (0..n)
        .map(|i| if (i / 9) % 2 == 0 { 32767 } else { -32768 })
        .collect();
    let chirp: Vec<i16> = (0..n)
        .map(|i| {
            let t = i as f64 / 8000.0;
            let f = 50.0 + 1900.0 * t;
            (30000.0 * (2.0 * std::f64::consts::PI * f * t).sin()) as i16
        })
        .collect();
    let clicks: Vec<i16> = (0..n)
        .map(|i| match i % 400 {
            0 => 32767,
            1 => -32768,
            _ => 0,
        })
        .collect();
    // Bursts of loud and quiet tones with silence between.
    let bursts: Vec<i16> = (0..n)
        .map(|i| {
            let seg = i / 1200;
            if seg % 3 == 2 {
                0
            } else {
                let amp = if seg % 2 == 0 { 32000.0 } else { 300.0 };
                let f = 200.0 + 137.0 * seg as f64;
                (amp * (2.0 * std::f64::consts::PI * f * i as f64 / 8000.0).sin()) as i16
            }
        })
        .collect();
    vec![
        ("silence", vec![0; n]),
        ("noise-full", noise_full),
        ("noise-quiet", noise_quiet),
        ("square", square),
        ("chirp", chirp),
        ("clicks", clicks),
        ("bursts", bursts),
    ]
}

fn espeak(t: &Tmp) -> Option<Vec<i16>> {
    let wav = t.path("espeak.wav");
    let ok = Command::new("espeak-ng")
        .arg("-w")
        .arg(&wav)
        .arg(
            "Thank you for calling. Your call is important to us. \
             Please hold the line while we connect you to the next available agent.",
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("espeak-ng not available: speech input skipped");
        return None;
    }
    let raw = t.path("espeak.raw");
    sox(
        &[
            "{}", "-r", "8000", "-c", "1", "-b", "16", "-e", "signed", "-t", "raw", "{}",
        ],
        &[&wav, &raw],
    );
    Some(read_raw(&raw))
}

fn snr_db(reference: &[i16], decoded: &[i16]) -> f64 {
    let (mut sig, mut err) = (0.0f64, 0.0f64);
    for (&a, &b) in reference.iter().zip(decoded) {
        sig += f64::from(a).powi(2);
        err += (f64::from(a) - f64::from(b)).powi(2);
    }
    10.0 * (sig / err.max(1.0)).log10()
}

fn correlation(a: &[i16], b: &[i16]) -> f64 {
    let n = a.len().min(b.len());
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for i in 0..n {
        let (x, y) = (f64::from(a[i]), f64::from(b[i]));
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    ab / (aa * bb).sqrt().max(1.0)
}

#[test]
fn gsm_bit_exact_with_sox_on_speech_and_synthetic_signals() {
    if !have_sox() {
        return;
    }
    let t = Tmp::new("exact");
    let mut tally = Tally::default();
    if let Some(speech) = espeak(&t) {
        let (ours, ours49) = round_trip(&t, "speech", &speech, &mut tally);
        // Close to the original: GSM full rate on clean speech.
        let snr = snr_db(&speech, &ours);
        let c = correlation(&speech, &ours);
        let c49 = correlation(&speech, &ours49);
        eprintln!("speech: SNR {snr:.1} dB, correlation {c:.3} / WAV49 {c49:.3}");
        assert!(c > 0.9 && c49 > 0.9, "{c} {c49}");
        assert!(snr > 5.0, "{snr}");
    }
    for (name, pcm) in synthetic() {
        round_trip(&t, name, &pcm, &mut tally);
    }
    eprintln!(
        "total: {} frames, {} samples compared, {} mismatching",
        tally.frames, tally.samples, tally.mismatches
    );
    assert_eq!(tally.mismatches, 0);
    assert!(tally.frames > 1000);
}

#[test]
fn gsm_bit_exact_with_sox_on_random_frames() {
    // Arbitrary parameters (lags out of 40..=120, extreme gains and LARs)
    // reach corners real encoders never produce.
    if !have_sox() {
        return;
    }
    let t = Tmp::new("random");
    let mut tally = Tally::default();
    let mut rng = Rng(0xdead_beef_cafe_f00d);
    for round in 0..4 {
        let frames = 2000;
        let mut bytes: Vec<u8> = (0..frames * FRAME_BYTES)
            .map(|_| (rng.next() >> 24) as u8)
            .collect();
        for f in bytes.chunks_exact_mut(FRAME_BYTES) {
            f[0] = 0xD0 | (f[0] & 0x0F);
            if round == 1 {
                // Saturated: every parameter at its maximum.
                f[1..].fill(0xFF);
            }
        }
        let gsm = t.path("random.gsm");
        std::fs::write(&gsm, &bytes).unwrap();
        let ours = decode_gsm(&bytes).unwrap();
        tally.compare(
            &format!("random frames, round {round}"),
            &ours,
            &sox_decode(&t, &gsm),
        );

        // The same entropy as WAV49 blocks behind a header of our own.
        let blocks = &bytes[..bytes.len() / WAV49_BLOCK_BYTES * WAV49_BLOCK_BYTES];
        let w49 = t.path("random-49.wav");
        std::fs::write(&w49, wav49_file(blocks)).unwrap();
        let ours49 = decode_wav49(blocks).unwrap();
        tally.compare(
            &format!("random WAV49 blocks, round {round}"),
            &ours49,
            &sox_decode(&t, &w49),
        );
    }
    eprintln!(
        "total: {} frames, {} samples compared, {} mismatching",
        tally.frames, tally.samples, tally.mismatches
    );
    assert_eq!(tally.mismatches, 0);
}

/// A minimal WAV49 file around `data` (whole 65-byte blocks).
fn wav49_file(data: &[u8]) -> Vec<u8> {
    let blocks = (data.len() / WAV49_BLOCK_BYTES) as u32;
    let mut v = Vec::new();
    v.extend_from_slice(b"RIFF");
    v.extend_from_slice(&(4 + 28 + 12 + 8 + data.len() as u32).to_le_bytes());
    v.extend_from_slice(b"WAVEfmt ");
    v.extend_from_slice(&20u32.to_le_bytes());
    v.extend_from_slice(&WAVE_FORMAT_GSM610.to_le_bytes());
    v.extend_from_slice(&1u16.to_le_bytes()); // channels
    v.extend_from_slice(&8000u32.to_le_bytes());
    v.extend_from_slice(&1625u32.to_le_bytes()); // bytes per second
    v.extend_from_slice(&65u16.to_le_bytes()); // block align
    v.extend_from_slice(&0u16.to_le_bytes()); // bits per sample
    v.extend_from_slice(&2u16.to_le_bytes()); // cbSize
    v.extend_from_slice(&320u16.to_le_bytes()); // samples per block
    v.extend_from_slice(b"fact");
    v.extend_from_slice(&4u32.to_le_bytes());
    v.extend_from_slice(&(blocks * 320).to_le_bytes());
    v.extend_from_slice(b"data");
    v.extend_from_slice(&(data.len() as u32).to_le_bytes());
    v.extend_from_slice(data);
    v
}

#[test]
fn gsm_truncated_and_garbage_input_gives_errors_not_panics() {
    // Does not need sox: real-looking frames come from the decoder's own
    // unpacking rules (magic + arbitrary bits).
    let mut rng = Rng(42);
    let mut frame = [0u8; FRAME_BYTES];
    for b in frame.iter_mut() {
        *b = (rng.next() >> 16) as u8;
    }
    frame[0] = 0xD3;
    let mut dec = GsmDecoder::new();
    let mut out = [0i16; FRAME_SAMPLES];
    dec.decode_frame(&frame, &mut out).unwrap();

    // Truncated: errors for less than one frame, a report for a partial one.
    for n in 0..FRAME_BYTES {
        assert!(decode_gsm(&frame[..n]).is_err(), "{n}");
    }
    let mut two = frame.to_vec();
    two.extend_from_slice(&frame[..10]);
    let (pcm, st) = decode_gsm_with_stats(&two).unwrap();
    assert_eq!((pcm.len(), st.trailing_bytes), (160, 10));
    for n in 0..WAV49_BLOCK_BYTES {
        assert!(decode_wav49(&vec![0xA5; n]).is_err(), "{n}");
    }
    let (pcm, st) = decode_wav49_with_stats(&[0xA5; 100]).unwrap();
    assert_eq!((pcm.len(), st.trailing_bytes), (320, 35));

    // Garbage (a PCM WAV, text) is not GSM: the magic check refuses it.
    let text = b"RIFF....WAVEfmt this is certainly not a GSM file, just some text ".repeat(20);
    assert!(decode_gsm(&text).is_err());
    let mut rng = Rng(7);
    for len in (0..2000).step_by(37) {
        let junk: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let _ = decode_gsm(&junk);
        let _ = decode_wav49(&junk);
    }
}
