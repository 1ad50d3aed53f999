//! The bundled Opus decoder (libopus built from `libopus/`) against the
//! system's libopus (`libopus.so.0`, loaded at run time so the two do not
//! clash at link time), sample for sample. Skipped with a message when the
//! system has no libopus0 (`.ci/run` installs it).
//!
//! Streams: SILK narrowband and wideband, hybrid and CELT (fullband), each
//! encoded by both encoders from a voiced, speech-like signal with noise
//! and pauses, decoded at 8, 16 and 48 kHz, every 9th packet lost: PLC,
//! and every other loss rebuilt from the next packet's FEC.
//!
//! Measured tolerance (bundled: a later revision of libopus than Debian
//! 12's 1.3.1, portable C without SIMD; Debian's: SSE with run-time
//! detection). Without loss: SILK-only streams decode identically; where
//! CELT runs (hybrid, fullband) float rounding differs by at most 1 LSB in
//! a few samples ([`MAX_LSB`]). With loss, the concealment (PLC, FEC)
//! differs between the revisions and the decoder states drift apart for a
//! while after it: measured whole-stream agreement 42-89 dB SNR, asserted
//! at least [`MIN_LOSSY_SNR_DB`].

#![cfg(all(feature = "bundled-opus", not(feature = "system-opus")))]

use std::ffi::{c_int, c_void};

use pbx_core::audio::opus::bundled;

/// Largest difference allowed in a sample of a lossless stream, in LSB of
/// 16-bit PCM.
const MAX_LSB: i32 = 1;
/// Least agreement (signal to difference, whole stream) with loss.
const MIN_LOSSY_SNR_DB: f64 = 20.0;

type CreateDec = unsafe extern "C" fn(i32, c_int, *mut c_int) -> *mut c_void;
type Decode = unsafe extern "C" fn(*mut c_void, *const u8, i32, *mut i16, c_int, c_int) -> c_int;
type CreateEnc = unsafe extern "C" fn(i32, c_int, c_int, *mut c_int) -> *mut c_void;
type Encode = unsafe extern "C" fn(*mut c_void, *const i16, c_int, *mut u8, i32) -> i32;
type Ctl = unsafe extern "C" fn(*mut c_void, c_int, ...) -> c_int;
type Destroy = unsafe extern "C" fn(*mut c_void);

/// The system's libopus, loaded at run time.
struct System {
    _lib: libloading::Library,
    create_dec: CreateDec,
    decode: Decode,
    destroy_dec: Destroy,
    create_enc: CreateEnc,
    encode: Encode,
    ctl: Ctl,
    destroy_enc: Destroy,
}

impl System {
    fn load() -> Option<System> {
        // SAFETY: loading libopus runs no initialisers with side effects.
        let lib = unsafe { libloading::Library::new("libopus.so.0") }.ok()?;
        // SAFETY: the symbols have these C signatures (opus.h, 1.x).
        unsafe {
            Some(System {
                create_dec: *lib.get::<CreateDec>(b"opus_decoder_create\0").ok()?,
                decode: *lib.get::<Decode>(b"opus_decode\0").ok()?,
                destroy_dec: *lib.get::<Destroy>(b"opus_decoder_destroy\0").ok()?,
                create_enc: *lib.get::<CreateEnc>(b"opus_encoder_create\0").ok()?,
                encode: *lib.get::<Encode>(b"opus_encode\0").ok()?,
                ctl: *lib.get::<Ctl>(b"opus_encoder_ctl\0").ok()?,
                destroy_enc: *lib.get::<Destroy>(b"opus_encoder_destroy\0").ok()?,
                _lib: lib,
            })
        }
    }

    fn packets(&self, c: &Case, pcm: &[i16]) -> Vec<Vec<u8>> {
        let mut err = 0;
        // SAFETY: the C API used as documented; states created and
        // destroyed here, buffers valid for the lengths given.
        unsafe {
            let st = (self.create_enc)(c.rate as i32, 1, 2048, &mut err);
            assert!(!st.is_null() && err == 0);
            assert_eq!((self.ctl)(st, 4002, c.bitrate), 0);
            if c.fec {
                assert_eq!((self.ctl)(st, 4012, 1 as c_int), 0);
                assert_eq!((self.ctl)(st, 4014, 20 as c_int), 0);
            }
            let mut buf = vec![0u8; 1500];
            let out = pcm
                .chunks_exact(c.rate as usize / 50)
                .map(|f| {
                    let n = (self.encode)(st, f.as_ptr(), f.len() as c_int, buf.as_mut_ptr(), 1500);
                    assert!(n > 0);
                    buf[..n as usize].to_vec()
                })
                .collect();
            (self.destroy_enc)(st);
            out
        }
    }
}

/// A speech-like test signal: a voiced source (harmonics of a gliding
/// pitch) with formant-ish amplitude changes, noise bursts and pauses.
fn signal(rate: u32, seconds: usize) -> Vec<i16> {
    let n = rate as usize * seconds;
    let mut seed = 0x1234_5678u32;
    let mut noise = move || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        (seed as f64 / u32::MAX as f64) * 2.0 - 1.0
    };
    let mut phase = 0.0f64;
    (0..n)
        .map(|i| {
            let t = i as f64 / rate as f64;
            let syllable = (t * 4.0).fract();
            let f0 = 110.0 + 40.0 * (t * 1.3).sin();
            phase += f0 / rate as f64;
            let mut v = 0.0;
            for h in 1..20 {
                let f = f0 * h as f64;
                if f > rate as f64 / 2.0 {
                    break;
                }
                let formant = 1.0 / (1.0 + ((f - 700.0 - 300.0 * (t * 2.0).sin()) / 300.0).powi(2));
                v += formant * (2.0 * std::f64::consts::PI * phase * h as f64).sin();
            }
            let voiced = if syllable < 0.6 { 1.0 } else { 0.0 };
            let hiss = if (0.6..0.75).contains(&syllable) {
                0.3
            } else {
                0.0
            };
            let pause = if (t as usize) % 3 == 2 { 0.0 } else { 1.0 };
            ((v * voiced * 6000.0 + noise() * hiss * 8000.0) * pause) as i16
        })
        .collect()
}

struct Case {
    rate: u32,
    bitrate: i32,
    fec: bool,
}

fn packets_bundled(c: &Case, pcm: &[i16]) -> Vec<Vec<u8>> {
    let mut enc = bundled::RawEncoder::new(c.rate, c.bitrate).unwrap();
    if c.fec {
        enc.set_fec(20).unwrap();
    }
    let mut buf = vec![0u8; 1500];
    pcm.chunks_exact(c.rate as usize / 50)
        .map(|f| {
            let n = enc.encode(f, &mut buf).unwrap();
            buf[..n].to_vec()
        })
        .collect()
}

/// Decode `packets` at `rate`, losing every 9th (PLC; every other loss
/// rebuilt from the next packet's FEC), through either backend.
fn decode_with(
    lossy: bool,
    rate: u32,
    packets: &[Vec<u8>],
    mut decode: impl FnMut(&[u8], &mut [i16], bool) -> Result<usize, String>,
) -> Vec<i16> {
    let frame = rate as usize / 50;
    let mut out = Vec::new();
    let mut buf = vec![0i16; frame];
    let mut losses = 0;
    for (i, p) in packets.iter().enumerate() {
        if lossy && i % 9 == 4 {
            losses += 1;
            if losses % 2 == 0 {
                // Rebuilt from the next packet's FEC (or PLC if none).
                let next = packets.get(i + 1).map(Vec::as_slice).unwrap_or(&[]);
                let n = decode(next, &mut buf, !next.is_empty()).unwrap();
                out.extend_from_slice(&buf[..n]);
            } else {
                let n = decode(&[], &mut buf, false).unwrap();
                out.extend_from_slice(&buf[..n]);
            }
            continue;
        }
        let n = decode(p, &mut buf, false).unwrap();
        out.extend_from_slice(&buf[..n]);
    }
    out
}

#[test]
fn bundled_decoder_matches_system_libopus() {
    let Some(sys) = System::load() else {
        eprintln!("skipped: no libopus.so.0 on this system (apt-get install libopus0)");
        return;
    };
    eprintln!("comparing {} with the system's libopus.so.0", bundled::NAME);
    let mut worst = 0;
    let mut worst_lossy_snr = f64::INFINITY;
    let cases = [
        // SILK narrowband, SILK wideband, hybrid (SWB/FB), CELT fullband.
        Case {
            rate: 8000,
            bitrate: 8000,
            fec: false,
        },
        Case {
            rate: 16000,
            bitrate: 16000,
            fec: true,
        },
        Case {
            rate: 48000,
            bitrate: 32000,
            fec: true,
        },
        Case {
            rate: 48000,
            bitrate: 96000,
            fec: false,
        },
    ];
    let mut total = 0usize;
    for c in &cases {
        let pcm = signal(c.rate, 6);
        for (enc_name, packets) in [
            ("system encoder", sys.packets(c, &pcm)),
            ("bundled encoder", packets_bundled(c, &pcm)),
        ] {
            for (out_rate, lossy) in [8000u32, 16000, 48000]
                .into_iter()
                .flat_map(|r| [(r, false), (r, true)])
            {
                let mut a = bundled::RawDecoder::new(out_rate).unwrap();
                let mut err = 0;
                // SAFETY: documented C API; the state is destroyed below.
                let b = unsafe { (sys.create_dec)(out_rate as i32, 1, &mut err) };
                assert!(!b.is_null() && err == 0);
                let x = decode_with(lossy, out_rate, &packets, |d, o, f| a.decode(d, o, f));
                let y = decode_with(lossy, out_rate, &packets, |d, o, f| {
                    let ptr = if d.is_empty() {
                        std::ptr::null()
                    } else {
                        d.as_ptr()
                    };
                    // SAFETY: b is live, d and o valid for their lengths.
                    let n = unsafe {
                        (sys.decode)(
                            b,
                            ptr,
                            d.len() as i32,
                            o.as_mut_ptr(),
                            o.len() as c_int,
                            c_int::from(f),
                        )
                    };
                    usize::try_from(n).map_err(|_| format!("opus error {n}"))
                });
                // SAFETY: created above, destroyed once.
                unsafe { (sys.destroy_dec)(b) };
                assert_eq!(x.len(), y.len());
                let differing = x.iter().zip(&y).filter(|(p, q)| p != q).count();
                let (mut max_diff, mut err, mut energy) = (0, 0.0f64, 0.0f64);
                for (&p, &q) in x.iter().zip(&y) {
                    let d = i32::from(p) - i32::from(q);
                    max_diff = max_diff.max(d.abs());
                    err += f64::from(d).powi(2);
                    energy += f64::from(q).powi(2);
                }
                let snr = 10.0 * (energy.max(1.0) / err.max(1.0)).log10();
                if let Some(i) = x.iter().zip(&y).position(|(p, q)| p != q) {
                    let frame = out_rate as usize / 50;
                    eprintln!(
                        "first difference at sample {i} (packet {}): {:?} vs {:?}",
                        i / frame,
                        &x[i..(i + 8).min(x.len())],
                        &y[i..(i + 8).min(y.len())]
                    );
                }
                let rms = (y.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>()
                    / y.len().max(1) as f64)
                    .sqrt();
                eprintln!(
                    "{} Hz {} bit/s fec {} ({enc_name}) decoded at {out_rate}: {} samples, rms {rms:.0}, \
                     loss {lossy}: {differing} differ, max |diff| {max_diff}, SNR {snr:.1} dB",
                    c.rate,
                    c.bitrate,
                    c.fec,
                    x.len()
                );
                assert!(rms > 100.0, "the decoded stream is silent");
                if lossy {
                    assert!(snr >= MIN_LOSSY_SNR_DB, "with loss: SNR {snr:.1} dB");
                    worst_lossy_snr = worst_lossy_snr.min(snr);
                } else {
                    if c.rate <= 16000 {
                        assert_eq!(max_diff, 0, "a SILK-only stream must decode identically");
                    }
                    assert!(
                        max_diff <= MAX_LSB,
                        "bundled and system libopus differ by {max_diff}"
                    );
                    worst = worst.max(max_diff);
                }
                total += x.len();
            }
        }
    }
    eprintln!(
        "{total} samples compared: received frames differ by at most {worst} LSB; \
         with loss, the streams agree with an SNR of at least {worst_lossy_snr:.1} dB"
    );
}
