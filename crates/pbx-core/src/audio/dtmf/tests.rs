//! The detector against ITU-T Q.24 reception limits, on tones built here
//! (and, where espeak-ng and sox are installed, on synthetic speech).

use super::*;
use crate::audio::g711;

const RATE: u32 = 8000;

fn freqs(digit: char) -> (f64, f64) {
    for (r, row) in KEYS.iter().enumerate() {
        for (c, d) in row.iter().enumerate() {
            if *d == digit {
                return (LOW[r], HIGH[c]);
            }
        }
    }
    panic!("not a digit: {digit}");
}

/// Append a tone pair: levels in dBm0, frequencies scaled by (1 + dev).
#[allow(clippy::too_many_arguments)]
fn tone(
    out: &mut Vec<f64>,
    rate: u32,
    digit: char,
    ms: u32,
    low_dbm0: f64,
    high_dbm0: f64,
    low_dev: f64,
    high_dev: f64,
) {
    let (fl, fh) = freqs(digit);
    let (fl, fh) = (fl * (1.0 + low_dev), fh * (1.0 + high_dev));
    let al = DBM0_AMPLITUDE * 10f64.powf(low_dbm0 / 20.0);
    let ah = DBM0_AMPLITUDE * 10f64.powf(high_dbm0 / 20.0);
    let n = (rate * ms / 1000) as usize;
    let r = f64::from(rate);
    let k0 = out.len();
    for i in 0..n {
        let t = (k0 + i) as f64 / r;
        out.push(al * (2.0 * PI * fl * t).sin() + ah * (2.0 * PI * fh * t).sin());
    }
}

fn silence(out: &mut Vec<f64>, rate: u32, ms: u32) {
    out.extend(std::iter::repeat_n(0.0, (rate * ms / 1000) as usize));
}

fn pcm(x: &[f64]) -> Vec<i16> {
    x.iter()
        .map(|v| v.round().clamp(-32768.0, 32767.0) as i16)
        .collect()
}

/// Digits found (onsets) and all events, fed in 20 ms pieces from position 1000.
fn detect_at(rate: u32, x: &[i16]) -> (String, Vec<ToneEvent>) {
    let mut d = DtmfDetector::new(rate);
    let mut ev = Vec::new();
    let piece = (rate / 50) as usize;
    for (i, c) in x.chunks(piece).enumerate() {
        d.process(1000 + (i * piece) as i64, c, &mut ev);
    }
    d.reset(&mut ev);
    let digits = ev
        .iter()
        .filter_map(|e| match e {
            ToneEvent::Digit { digit, .. } => Some(*digit),
            _ => None,
        })
        .collect();
    (digits, ev)
}

fn detect(x: &[i16]) -> String {
    detect_at(RATE, x).0
}

fn one(digit: char, ms: u32, low: f64, high: f64, ldev: f64, hdev: f64) -> String {
    let mut x = Vec::new();
    silence(&mut x, RATE, 60);
    tone(&mut x, RATE, digit, ms, low, high, ldev, hdev);
    silence(&mut x, RATE, 100);
    detect(&pcm(&x))
}

/// Deterministic white noise (xorshift), uniform in ±amp.
fn noise(n: usize, amp: f64, seed: u64) -> Vec<f64> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * amp
        })
        .collect()
}

const ALL: &str = "123A456B789C*0#D";

#[test]
fn every_digit_is_found_in_order_with_its_place() {
    let mut x = Vec::new();
    let mut truth = Vec::new();
    silence(&mut x, RATE, 100);
    for d in ALL.chars() {
        truth.push((d, x.len() as i64 + 1000, x.len() as i64 + 1000 + 640));
        tone(&mut x, RATE, d, 80, -10.0, -10.0, 0.0, 0.0);
        silence(&mut x, RATE, 60);
    }
    let (digits, ev) = detect_at(RATE, &pcm(&x));
    assert_eq!(digits, ALL);
    let block = 205;
    let mut k = 0;
    for e in &ev {
        match *e {
            ToneEvent::Digit {
                digit,
                start,
                known_at,
            } => {
                let (d, s, _) = truth[k];
                assert_eq!(digit, d);
                assert!(
                    start >= s - block && start <= s + block,
                    "{digit}: start {start} truth {s}"
                );
                assert!(
                    known_at >= s + 200 && known_at <= s + 500,
                    "{digit}: known at {known_at}, {s}"
                );
            }
            ToneEvent::End { digit, end } => {
                let (d, _, e) = truth[k];
                assert_eq!(digit, d);
                assert!(
                    end >= e - block && end <= e + block,
                    "{digit}: end {end} truth {e}"
                );
                k += 1;
            }
        }
    }
    assert_eq!(k, 16, "every digit ended");
}

#[test]
fn g711_coded_tones_are_found_at_16k_too() {
    for (rate, law) in [(8000, 'u'), (8000, 'a'), (16000, 'u')] {
        let mut x = Vec::new();
        silence(&mut x, rate, 50);
        for d in "5*9#".chars() {
            tone(&mut x, rate, d, 70, -12.0, -14.0, 0.0, 0.0);
            silence(&mut x, rate, 50);
        }
        let coded: Vec<i16> = pcm(&x)
            .into_iter()
            .map(|s| match law {
                'u' => g711::ulaw_to_linear(g711::linear_to_ulaw(s)),
                _ => g711::alaw_to_linear(g711::linear_to_alaw(s)),
            })
            .collect();
        assert_eq!(detect_at(rate, &coded).0, "5*9#", "{rate} {law}-law");
    }
}

#[test]
fn frequency_deviation_q24_accept_1_5_percent_refuse_3_5_percent() {
    for d in ALL.chars() {
        for dev in [-0.015, 0.015] {
            assert_eq!(
                one(d, 80, -10.0, -10.0, dev, 0.0),
                d.to_string(),
                "{d} low {dev}"
            );
            assert_eq!(
                one(d, 80, -10.0, -10.0, 0.0, dev),
                d.to_string(),
                "{d} high {dev}"
            );
            assert_eq!(
                one(d, 80, -10.0, -10.0, dev, dev),
                d.to_string(),
                "{d} both {dev}"
            );
        }
        for dev in [-0.035, 0.035] {
            assert_eq!(one(d, 80, -10.0, -10.0, dev, 0.0), "", "{d} low {dev}");
            assert_eq!(one(d, 80, -10.0, -10.0, 0.0, dev), "", "{d} high {dev}");
        }
    }
}

#[test]
fn twist_high_8_db_weaker_to_4_db_stronger() {
    for d in ALL.chars() {
        assert_eq!(
            one(d, 80, -6.0, -13.5, 0.0, 0.0),
            d.to_string(),
            "{d} -7.5 dB"
        );
        assert_eq!(
            one(d, 80, -10.0, -6.5, 0.0, 0.0),
            d.to_string(),
            "{d} +3.5 dB"
        );
        assert_eq!(one(d, 80, -6.0, -16.5, 0.0, 0.0), "", "{d} -10.5 dB");
        assert_eq!(one(d, 80, -12.0, -6.0, 0.0, 0.0), "", "{d} +6 dB");
    }
}

#[test]
fn level_accepts_minus_30_dbm0_refuses_minus_45() {
    for d in ALL.chars() {
        assert_eq!(one(d, 80, -30.0, -30.0, 0.0, 0.0), d.to_string(), "{d}");
        assert_eq!(
            one(d, 80, 0.0, 0.0, 0.0, 0.0),
            d.to_string(),
            "{d} at 0 dBm0"
        );
        assert_eq!(one(d, 80, -45.0, -45.0, 0.0, 0.0), "", "{d}");
    }
}

#[test]
fn duration_40_ms_accepted_20_ms_refused_at_every_alignment() {
    // Shift the tone across a whole block so every alignment to the
    // detector's blocks is tried.
    let mut shortest_accepted = u32::MAX;
    let mut longest_refused = 0;
    for shift in 0..26u32 {
        for ms in [16u32, 20, 24, 28, 32, 36, 40, 45, 50] {
            let mut x = Vec::new();
            silence(&mut x, RATE, 40);
            x.extend(std::iter::repeat_n(0.0, (shift * 8) as usize));
            tone(&mut x, RATE, '0', ms, -10.0, -10.0, 0.0, 0.0);
            silence(&mut x, RATE, 100);
            let found = detect(&pcm(&x)) == "0";
            if found {
                shortest_accepted = shortest_accepted.min(ms);
            } else {
                longest_refused = longest_refused.max(ms);
            }
            if std::env::var("DTMF_TABLE").is_ok() {
                eprintln!("{ms} ms shift {shift}: {found}");
                continue;
            }
            if ms >= 40 {
                assert!(found, "{ms} ms at shift {shift} refused");
            }
            if ms <= 20 {
                assert!(!found, "{ms} ms at shift {shift} accepted");
            }
        }
    }
    eprintln!(
        "duration: shortest accepted {shortest_accepted} ms, longest refused {longest_refused} ms"
    );
}

#[test]
fn a_10_ms_dropout_does_not_split_a_digit_a_40_ms_pause_does() {
    let mut x = Vec::new();
    silence(&mut x, RATE, 50);
    tone(&mut x, RATE, '7', 100, -10.0, -10.0, 0.0, 0.0);
    silence(&mut x, RATE, 10);
    tone(&mut x, RATE, '7', 100, -10.0, -10.0, 0.0, 0.0);
    silence(&mut x, RATE, 100);
    assert_eq!(detect(&pcm(&x)), "7");

    let mut x = Vec::new();
    silence(&mut x, RATE, 50);
    tone(&mut x, RATE, '7', 50, -10.0, -10.0, 0.0, 0.0);
    silence(&mut x, RATE, 40);
    tone(&mut x, RATE, '7', 50, -10.0, -10.0, 0.0, 0.0);
    silence(&mut x, RATE, 100);
    assert_eq!(detect(&pcm(&x)), "77");
}

#[test]
fn digits_are_found_in_noise_at_15_db_snr() {
    let mut x = Vec::new();
    silence(&mut x, RATE, 50);
    for d in ALL.chars() {
        tone(&mut x, RATE, d, 60, -15.0, -15.0, 0.0, 0.0);
        silence(&mut x, RATE, 60);
    }
    // Two tones at -15 dBm0 each: -12 dBm0 together; noise 15 dB below.
    let rms = DBM0_AMPLITUDE / 2f64.sqrt() * 10f64.powf(-27.0 / 20.0);
    let amp = rms * 3f64.sqrt();
    let n = noise(x.len(), amp, 7);
    let y: Vec<f64> = x.iter().zip(&n).map(|(a, b)| a + b).collect();
    assert_eq!(detect(&pcm(&y)), ALL);
}

/// Speech-like sound: a voiced source (harmonics of a wandering F0) through
/// moving formants, plus fricative noise; no DTMF in it.
fn synthetic_speech(seconds: u32, seed: u64) -> Vec<i16> {
    let r = f64::from(RATE);
    let n = (RATE * seconds) as usize;
    let hiss = noise(n, 3000.0, seed);
    let mut out = Vec::with_capacity(n);
    let mut phase = 0.0f64;
    for (i, h) in hiss.iter().enumerate() {
        let t = i as f64 / r;
        let f0 = 90.0
            + 160.0 * (0.5 + 0.5 * (2.0 * PI * 0.7 * t + (seed as f64)).sin())
            + 30.0 * (2.0 * PI * 5.3 * t).sin();
        phase += 2.0 * PI * f0 / r;
        let f1 = 500.0 + 300.0 * (2.0 * PI * 1.9 * t).sin();
        let f2 = 1500.0 + 700.0 * (2.0 * PI * 1.3 * t + 1.0).sin();
        let mut v = 0.0;
        let mut k = 1.0;
        while k * f0 < 3400.0 {
            let f = k * f0;
            let g = (-((f - f1) / 150.0).powi(2)).exp()
                + 0.6 * (-((f - f2) / 200.0).powi(2)).exp()
                + 0.05;
            v += g * (k * phase).sin();
            k += 1.0;
        }
        let syllable = (0.5 + 0.5 * (2.0 * PI * 3.0 * t).sin()).powi(2);
        let voiced = if (t * 2.1).fract() < 0.8 { 1.0 } else { 0.0 };
        out.push(
            (6000.0 * syllable * voiced * v + (1.0 - voiced) * h).clamp(-32000.0, 32000.0) as i16,
        );
    }
    out
}

#[test]
fn no_talk_off_on_synthetic_speech() {
    for seed in 1..=5u64 {
        assert_eq!(detect(&synthetic_speech(20, seed)), "", "seed {seed}");
    }
}

#[test]
fn no_talk_off_on_espeak_ng_speech() {
    use std::process::{Command, Stdio};
    let text = "Hello, thank you for calling. Your call may be recorded for quality and training. \
        Please say or key in your account number, then press the pound key. \
        One two three four five six seven eight nine zero. Ninety nine, eighty eight, seventy seven. \
        The quick brown fox jumps over the lazy dog while the telephone keeps ringing loudly.";
    let mut all = Vec::new();
    for voice in ["en", "en-us", "de", "fr", "es"] {
        for pitch in ["30", "50", "80"] {
            let Ok(wav) = Command::new("espeak-ng")
                .args(["-v", voice, "-p", pitch, "-s", "160", "--stdout", text])
                .stderr(Stdio::null())
                .output()
            else {
                eprintln!("espeak-ng not installed: skipped");
                return;
            };
            let mut sox = match Command::new("sox")
                .args([
                    "-t", "wav", "-", "-t", "raw", "-r", "8000", "-e", "signed", "-b", "16", "-c",
                    "1", "-",
                ])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
            {
                Ok(s) => s,
                Err(_) => {
                    eprintln!("sox not installed: skipped");
                    return;
                }
            };
            let mut stdin = sox.stdin.take().unwrap();
            let data = wav.stdout;
            let writer = std::thread::spawn(move || {
                use std::io::Write;
                let _ = stdin.write_all(&data);
            });
            let raw = sox.wait_with_output().unwrap().stdout;
            writer.join().unwrap();
            let x: Vec<i16> = raw
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]))
                .collect();
            // Loud (peaks near full scale) and through mu-law, as on a call.
            let peak = x
                .iter()
                .map(|s| i32::from(*s).abs())
                .max()
                .unwrap_or(1)
                .max(1);
            let x: Vec<i16> = x
                .iter()
                .map(|s| {
                    g711::ulaw_to_linear(g711::linear_to_ulaw(
                        (i32::from(*s) * 30000 / peak) as i16,
                    ))
                })
                .collect();
            all.extend_from_slice(&x);
        }
    }
    let seconds = all.len() / RATE as usize;
    assert!(seconds > 60, "{seconds} s of speech");
    let (digits, _) = detect_at(RATE, &all);
    eprintln!(
        "talk-off: {} detections in {seconds} s of espeak-ng speech",
        digits.len()
    );
    assert_eq!(digits, "", "talk-off in {seconds} s of speech");
}
