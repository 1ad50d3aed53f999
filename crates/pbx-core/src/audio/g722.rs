//! ITU-T G.722 at 64 kbit/s: decoder and encoder.
//!
//! In (decoder): G.722 bytes, each carrying one 8 kHz low-band ADPCM code (6
//! bits) and one high-band code (2 bits). Out: 16-bit PCM at 16 kHz, two
//! samples per byte. The encoder does the reverse (16 kHz PCM in, one byte per
//! two samples out) and exists to generate test streams.
//!
//! The algorithm follows the ITU-T G.722 recommendation block by block (the
//! block names in the comments are the recommendation's): a 24-tap QMF splits
//! / merges the 0-4 kHz and 4-8 kHz sub-bands, each coded with backward-
//! adaptive ADPCM (6-bit low band, 2-bit high band) with a pole-zero
//! predictor (2 poles, 6 zeros). Arithmetic is the recommendation's fixed-point
//! arithmetic with saturation, so the decoder output is bit-exact with other
//! conforming implementations fed the same bytes (checked against ffmpeg, see
//! the tests). Only the 64 kbit/s mode is implemented (the mode every SIP
//! device uses). Samples are 16-bit full scale (not the recommendation's 14
//! bits): the QMF output is scaled accordingly, as spandsp and ffmpeg do.
//!
//! Every byte is a valid code, so decoding never fails. Encoder + decoder
//! delay is 22 samples at 16 kHz (the transmit and receive QMFs; measured
//! by the tests).

use super::codec::{CodecError, Decoder};

/// Low band: quantiser decision levels (block QUANTL), 6-bit.
const Q6: [i32; 32] = [
    0, 35, 72, 110, 150, 190, 233, 276, 323, 370, 422, 473, 530, 587, 650, 714, 786, 858, 940,
    1023, 1121, 1219, 1339, 1458, 1612, 1765, 1980, 2195, 2557, 2919, 0, 0,
];
/// Low band: 6-bit codes for negative / positive differences, by interval.
const ILN: [u8; 32] = [
    0, 63, 62, 31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 16, 15, 14, 13, 12, 11,
    10, 9, 8, 7, 6, 5, 4, 0,
];
const ILP: [u8; 32] = [
    0, 61, 60, 59, 58, 57, 56, 55, 54, 53, 52, 51, 50, 49, 48, 47, 46, 45, 44, 43, 42, 41, 40, 39,
    38, 37, 36, 35, 34, 33, 32, 0,
];
/// Low band: log scale factor multipliers (block LOGSCL), by magnitude class.
const WL: [i32; 8] = [-60, -30, 58, 172, 334, 538, 1198, 3042];
/// Low band: 4-bit code → magnitude class.
const RL42: [usize; 16] = [0, 7, 6, 5, 4, 3, 2, 1, 7, 6, 5, 4, 3, 2, 1, 0];
/// Inverse log table (blocks SCALEL / SCALEH).
const ILB: [i32; 32] = [
    2048, 2093, 2139, 2186, 2233, 2282, 2332, 2383, 2435, 2489, 2543, 2599, 2656, 2714, 2774, 2834,
    2896, 2960, 3025, 3091, 3158, 3228, 3298, 3371, 3444, 3520, 3597, 3676, 3756, 3838, 3922, 4008,
];
/// High band: log scale factor multipliers and code → class.
const WH: [i32; 3] = [0, -214, 798];
const RH2: [usize; 4] = [2, 1, 2, 1];
/// High band inverse quantiser (2-bit).
const QM2: [i32; 4] = [-7408, -1616, 7408, 1616];
/// Low band inverse quantiser, 4-bit (the part fed to the predictor).
const QM4: [i32; 16] = [
    0, -20456, -12896, -8968, -6288, -4240, -2584, -1200, 20456, 12896, 8968, 6288, 4240, 2584,
    1200, 0,
];
/// Low band inverse quantiser, 6-bit (the reconstructed output).
const QM6: [i32; 64] = [
    -136, -136, -136, -136, -24808, -21904, -19008, -16704, -14984, -13512, -12280, -11192, -10232,
    -9360, -8576, -7856, -7192, -6576, -6000, -5456, -4944, -4464, -4008, -3576, -3168, -2776,
    -2400, -2032, -1688, -1360, -1040, -728, 24808, 21904, 19008, 16704, 14984, 13512, 12280,
    11192, 10232, 9360, 8576, 7856, 7192, 6576, 6000, 5456, 4944, 4464, 4008, 3576, 3168, 2776,
    2400, 2032, 1688, 1360, 1040, 728, 432, 136, -432, -136,
];
/// QMF coefficients (one half of the symmetric 24-tap pair).
const QMF: [i32; 12] = [3, -11, 12, 32, -210, 951, 3876, -805, 362, -156, 53, -11];

/// A QMF delay line: pairs are appended to a longer buffer that is slid back
/// only when full, so each step costs two stores instead of a 24-word shift.
#[derive(Debug, Clone)]
struct QmfLine {
    buf: [i32; QmfLine::LEN],
    /// The current window is `buf[end - 24..end]`, oldest first.
    end: usize,
}

impl QmfLine {
    const LEN: usize = 128;

    fn new() -> Self {
        QmfLine {
            buf: [0; Self::LEN],
            end: 24,
        }
    }

    /// Appends a pair and returns the 24-sample window ending with it.
    #[inline]
    fn push(&mut self, first: i32, second: i32) -> &[i32; 24] {
        if self.end + 2 > Self::LEN {
            self.buf.copy_within(self.end - 22..self.end, 0);
            self.end = 22;
        }
        self.buf[self.end] = first;
        self.buf[self.end + 1] = second;
        self.end += 2;
        // Always 24 long: 24 <= end <= LEN.
        self.buf[self.end - 24..self.end]
            .try_into()
            .unwrap_or(&[0; 24])
    }
}

#[inline]
fn sat16(v: i32) -> i32 {
    v.clamp(-32768, 32767)
}

/// The adaptive predictor of one sub-band (block 4 and the scale factor).
#[derive(Debug, Clone, Default)]
struct Band {
    /// Signal estimate (PREDIC output).
    s: i32,
    /// Pole-section estimate and zero-section estimate.
    sp: i32,
    sz: i32,
    /// Reconstructed signals r[0..3], partial reconstructions p[0..3].
    r: [i32; 3],
    p: [i32; 3],
    /// Pole coefficients a[1..3] (index 0 unused) and zero coefficients b[1..7].
    a: [i32; 3],
    b: [i32; 7],
    /// Quantised differences d[0..7].
    d: [i32; 7],
    /// Log scale factor and scale factor.
    nb: i32,
    det: i32,
}

impl Band {
    fn new(det: i32) -> Self {
        Band {
            det,
            ..Band::default()
        }
    }

    /// Blocks LOGSCL/LOGSCH + SCALEL/SCALEH: adapt the scale factor.
    #[inline]
    fn adapt_scale(&mut self, multiplier: i32, nb_max: i32, shift_base: i32) {
        let nb = ((self.nb * 127) >> 7) + multiplier;
        self.nb = nb.clamp(0, nb_max);
        let mantissa = ((self.nb >> 6) & 31) as usize;
        let shift = shift_base - (self.nb >> 11);
        let wd = if shift < 0 {
            ILB[mantissa] << -shift
        } else {
            ILB[mantissa] >> shift
        };
        self.det = wd << 2;
    }

    /// Block 4: reconstruct, adapt the pole and zero predictors, predict.
    #[inline]
    fn update(&mut self, d: i32) {
        // RECONS, PARREC
        let r0 = sat16(self.s + d);
        let p0 = sat16(self.sz + d);

        // UPPOL2: second pole coefficient.
        let sg0 = p0 >> 15;
        let sg1 = self.p[1] >> 15;
        let sg2 = self.p[2] >> 15;
        let wd1 = sat16(self.a[1] << 2);
        let wd2 = (if sg0 == sg1 { -wd1 } else { wd1 }).min(32767);
        let mut ap2 = if sg0 == sg2 { 128 } else { -128 };
        ap2 += wd2 >> 7;
        ap2 += (self.a[2] * 32512) >> 15;
        let ap2 = ap2.clamp(-12288, 12288);

        // UPPOL1: first pole coefficient, limited by the second.
        let wd1 = if sg0 == sg1 { 192 } else { -192 };
        let wd2 = (self.a[1] * 32640) >> 15;
        let limit = sat16(15360 - ap2);
        let ap1 = sat16(wd1 + wd2).clamp(-limit, limit);

        // UPZERO: zero coefficients, sign-sign adaptation with leakage.
        let step = if d == 0 { 0 } else { 128 };
        let sgd = d >> 15;
        let mut bp = [0i32; 7];
        for ((bp, &b), &dq) in bp.iter_mut().zip(&self.b).zip(&self.d).skip(1) {
            let wd2 = if (dq >> 15) == sgd { step } else { -step };
            let wd3 = (b * 32640) >> 15;
            *bp = sat16(wd2 + wd3);
        }

        // DELAYA: shift the delay lines.
        // (d[1] becomes the current difference; d[0] mirrors it.)
        self.d[0] = d;
        for i in (1..7).rev() {
            self.d[i] = self.d[i - 1];
        }
        self.b = bp;
        self.r = [r0, r0, self.r[1]];
        self.p = [p0, p0, self.p[1]];
        self.a = [0, ap1, ap2];

        // FILTEP: pole section.
        let wd1 = (self.a[1] * sat16(self.r[1] + self.r[1])) >> 15;
        let wd2 = (self.a[2] * sat16(self.r[2] + self.r[2])) >> 15;
        self.sp = sat16(wd1 + wd2);

        // FILTEZ: zero section.
        let mut sz = 0;
        for i in 1..7 {
            sz += (self.b[i] * sat16(self.d[i] + self.d[i])) >> 15;
        }
        self.sz = sat16(sz);

        // PREDIC
        self.s = sat16(self.sp + self.sz);
    }
}

/// The receive QMF's two outputs for a window of its delay line.
#[inline]
fn qmf_out(x: &[i32; 24]) -> (i32, i32) {
    let mut even = 0i32;
    let mut odd = 0i32;
    for i in 0..12 {
        even += x[2 * i] * QMF[i];
        odd += x[2 * i + 1] * QMF[11 - i];
    }
    (even, odd)
}

/// G.722 64 kbit/s decoder: one byte in, two 16 kHz samples out.
#[derive(Debug, Clone)]
pub struct G722Decoder {
    low: Band,
    high: Band,
    /// Receive QMF delay line.
    qmf: QmfLine,
}

impl Default for G722Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl G722Decoder {
    pub fn new() -> Self {
        G722Decoder {
            low: Band::new(32),
            high: Band::new(8),
            qmf: QmfLine::new(),
        }
    }

    /// Decode one code byte into two 16 kHz samples.
    #[inline]
    pub fn decode_byte(&mut self, code: u8) -> [i16; 2] {
        let ilow = (code & 0x3F) as usize;
        let ihigh = (code >> 6) as usize;

        // Low band. INVQBL + RECONS + LIMIT: the 6-bit reconstruction.
        let low = &mut self.low;
        let rlow = (low.s + ((low.det * QM6[ilow]) >> 15)).clamp(-16384, 16383);
        // INVQAL: the 4-bit difference that drives the predictor.
        let ril = ilow >> 2;
        let dlow = (low.det * QM4[ril]) >> 15;
        low.adapt_scale(WL[RL42[ril]], 18432, 8);
        low.update(dlow);

        // High band. INVQAH + RECONS + LIMIT.
        let high = &mut self.high;
        let dhigh = (high.det * QM2[ihigh]) >> 15;
        let rhigh = (dhigh + high.s).clamp(-16384, 16383);
        high.adapt_scale(WH[RH2[ihigh]], 22528, 10);
        high.update(dhigh);

        // Receive QMF: shift in the sum and difference, filter.
        let x = self.qmf.push(rlow + rhigh, rlow - rhigh);
        let (even, odd) = qmf_out(x);
        [sat16(odd >> 11) as i16, sat16(even >> 11) as i16]
    }

    /// Decode a payload, appending `2 * payload.len()` samples.
    pub fn decode_into(&mut self, payload: &[u8], out: &mut Vec<i16>) {
        out.reserve(payload.len() * 2);
        for &code in payload {
            let [a, b] = self.decode_byte(code);
            out.push(a);
            out.push(b);
        }
    }
}

impl Decoder for G722Decoder {
    fn output_rate(&self) -> u32 {
        16000
    }

    /// The sender's transmit QMF and our receive QMF together delay the
    /// audio by 22 samples (every G.722 encoder uses the same QMF): taken
    /// off the placement, so the channel is where the words were said.
    fn delay_samples(&self) -> usize {
        22
    }

    fn decode(&mut self, payload: &[u8], out: &mut Vec<i16>) -> Result<usize, CodecError> {
        self.decode_into(payload, out);
        Ok(payload.len() * 2)
    }

    fn holds_tail(&self) -> bool {
        true
    }

    /// The receive QMF's delay line run out with silent sub-bands.
    fn tail(&self, out: &mut Vec<i16>) {
        let before = out.len();
        let mut qmf = self.qmf.clone();
        for _ in 0..12 {
            let x = qmf.push(0, 0);
            let (even, odd) = qmf_out(x);
            out.push(sat16(odd >> 11) as i16);
            out.push(sat16(even >> 11) as i16);
        }
        while out.len() > before && out.last() == Some(&0) {
            out.pop();
        }
    }

    /// Silence; the ADPCM state carries on (as in most endpoints without
    /// G.722 Appendix III/IV PLC).
    fn conceal(&mut self, samples: usize, out: &mut Vec<i16>) {
        out.resize(out.len() + samples, 0);
    }
}

/// G.722 64 kbit/s encoder: two 16 kHz samples in, one byte out.
#[derive(Debug, Clone)]
pub struct G722Encoder {
    low: Band,
    high: Band,
    /// Transmit QMF delay line.
    qmf: QmfLine,
    /// An odd sample left over from the previous call.
    pending: Option<i16>,
}

impl Default for G722Encoder {
    fn default() -> Self {
        Self::new()
    }
}

impl G722Encoder {
    pub fn new() -> Self {
        G722Encoder {
            low: Band::new(32),
            high: Band::new(8),
            qmf: QmfLine::new(),
            pending: None,
        }
    }

    /// Encode two 16 kHz samples into one code byte.
    pub fn encode_pair(&mut self, first: i16, second: i16) -> u8 {
        // Transmit QMF: split into the low and high sub-bands at 8 kHz.
        let x = self.qmf.push(first as i32, second as i32);
        let mut sum_odd = 0i32;
        let mut sum_even = 0i32;
        for i in 0..12 {
            sum_odd += x[2 * i] * QMF[i];
            sum_even += x[2 * i + 1] * QMF[11 - i];
        }
        let xlow = (sum_even + sum_odd) >> 14;
        let xhigh = (sum_even - sum_odd) >> 14;

        // Low band. SUBTRA + QUANTL.
        let low = &mut self.low;
        let el = sat16(xlow - low.s);
        let magnitude = if el >= 0 { el } else { -(el + 1) };
        let mut interval = 1;
        while interval < 30 && magnitude >= (Q6[interval] * low.det) >> 12 {
            interval += 1;
        }
        let ilow = if el < 0 { ILN[interval] } else { ILP[interval] };
        // INVQAL + LOGSCL + SCALEL + block 4.
        let ril = (ilow >> 2) as usize;
        let dlow = (low.det * QM4[ril]) >> 15;
        low.adapt_scale(WL[RL42[ril]], 18432, 8);
        low.update(dlow);

        // High band. SUBTRA + QUANTH.
        let high = &mut self.high;
        let eh = sat16(xhigh - high.s);
        let magnitude = if eh >= 0 { eh } else { -(eh + 1) };
        let big = magnitude >= (564 * high.det) >> 12;
        let ihigh: u8 = match (eh < 0, big) {
            (true, false) => 1,
            (true, true) => 0,
            (false, false) => 3,
            (false, true) => 2,
        };
        // INVQAH + LOGSCH + SCALEH + block 4.
        let dhigh = (high.det * QM2[ihigh as usize]) >> 15;
        high.adapt_scale(WH[RH2[ihigh as usize]], 22528, 10);
        high.update(dhigh);

        (ihigh << 6) | ilow
    }

    /// Encode 16 kHz PCM, appending one byte per two samples. An odd trailing
    /// sample is kept for the next call.
    pub fn encode(&mut self, pcm: &[i16], out: &mut Vec<u8>) {
        let mut rest = pcm;
        if let Some(first) = self.pending {
            let Some((&second, tail)) = rest.split_first() else {
                return;
            };
            self.pending = None;
            out.push(self.encode_pair(first, second));
            rest = tail;
        }
        let pairs = rest.chunks_exact(2);
        self.pending = pairs.remainder().first().copied();
        out.reserve(rest.len() / 2);
        for pair in pairs {
            out.push(self.encode_pair(pair[0], pair[1]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::codec::test_support::*;

    fn encode_all(pcm: &[i16]) -> Vec<u8> {
        let mut enc = G722Encoder::new();
        let mut out = Vec::new();
        for c in pcm.chunks(320) {
            enc.encode(c, &mut out);
        }
        out
    }

    fn decode_all(codes: &[u8]) -> Vec<i16> {
        let mut dec = G722Decoder::new();
        let mut out = Vec::new();
        for c in codes.chunks(160) {
            dec.decode(c, &mut out).unwrap();
        }
        out
    }

    /// The encoder + decoder delay, measured on a chirp.
    const CODEC_DELAY: usize = 22;

    fn check_round_trip(pcm: &[i16], min_snr: f64) {
        let codes = encode_all(pcm);
        assert_eq!(codes.len(), pcm.len() / 2);
        let out = decode_all(&codes);
        assert_eq!(out.len(), pcm.len());
        let lag = best_lag(pcm, &out, 64);
        assert_eq!(lag, CODEC_DELAY, "measured codec delay");
        let want: Vec<f64> = pcm[..pcm.len() - lag].iter().map(|&v| v as f64).collect();
        let got: Vec<f64> = out[lag..].iter().map(|&v| v as f64).collect();
        // Skip the adaptation at the start.
        let snr = snr_db(&want[800..], &got[800..]);
        assert!(snr > min_snr, "snr {snr} dB");
    }

    /// The tail is what decoding silent sub-bands through the receive QMF
    /// gives: the first talk's output continued as the full decode goes on
    /// (the encoder's QMF still held the last samples: it continues them).
    #[test]
    fn the_tail_continues_the_output() {
        let pcm = sine(500.0, 16000.0, 8000.0, 1600);
        let codes = encode_all(&pcm);
        let mut dec = G722Decoder::new();
        let mut out = Vec::new();
        dec.decode_into(&codes[..400], &mut out);
        let mut tail = Vec::new();
        dec.tail(&mut tail);
        let rest = decode_all(&codes);
        // The first samples of the tail follow the output (the QMF's
        // newest inputs are what it rings out first).
        let err: i32 = (0..6)
            .map(|k| (i32::from(tail[k]) - i32::from(rest[800 + k])).abs())
            .max()
            .unwrap_or(0);
        assert!(err < 1500, "tail starts off the output by {err}");
    }

    #[test]
    fn sine_round_trip() {
        let pcm = sine(1000.0, 16000.0, 10000.0, 16000);
        check_round_trip(&pcm, 20.0);
    }

    #[test]
    fn chirp_round_trip() {
        // 100 Hz → 7 kHz linear chirp over 2 s.
        let n = 32000;
        let pcm: Vec<i16> = (0..n)
            .map(|i| {
                let t = i as f64 / 16000.0;
                let f0 = 100.0;
                let k = (7000.0 - f0) / 2.0;
                let phase = 2.0 * std::f64::consts::PI * (f0 * t + 0.5 * k * t * t);
                (8000.0 * phase.sin()).round() as i16
            })
            .collect();
        check_round_trip(&pcm, 20.0);
    }

    #[test]
    fn odd_chunks_encode_the_same() {
        let pcm = sine(700.0, 16000.0, 5000.0, 1001);
        let whole = {
            let mut e = G722Encoder::new();
            let mut out = Vec::new();
            e.encode(&pcm, &mut out);
            out
        };
        let mut e = G722Encoder::new();
        let mut out = Vec::new();
        for c in pcm.chunks(7) {
            e.encode(c, &mut out);
        }
        assert_eq!(whole, out);
        assert_eq!(out.len(), 500);
    }

    #[test]
    fn every_code_sequence_is_safe() {
        // Extreme inputs: all codes, repeated, must neither panic nor wrap.
        let mut dec = G722Decoder::new();
        let mut out = Vec::new();
        for _ in 0..50 {
            let codes: Vec<u8> = (0..=255u8).collect();
            dec.decode(&codes, &mut out).unwrap();
            let codes: Vec<u8> = (0..=255u8).rev().collect();
            dec.decode(&codes, &mut out).unwrap();
        }
        for b in [0x00u8, 0x3F, 0x40, 0x80, 0xC0, 0xFF, 0x7F, 0xBF] {
            dec.decode(&[b; 4000], &mut out).unwrap();
        }
        assert_eq!(out.len(), 50 * 512 * 2 + 8 * 8000);
        // Full-scale encode input must not overflow either.
        let square: Vec<i16> = (0..8000)
            .map(|i| if (i / 9) % 2 == 0 { i16::MAX } else { i16::MIN })
            .collect();
        let codes = encode_all(&square);
        assert_eq!(codes.len(), 4000);
    }

    /// Decodes G.722 bytes with ffmpeg (`-f g722`), or `None` if ffmpeg is
    /// not installed.
    fn ffmpeg_decode(codes: &[u8]) -> Option<Vec<i16>> {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let mut child = Command::new("ffmpeg")
            .args([
                "-hide_banner",
                "-loglevel",
                "error",
                "-f",
                "g722",
                "-i",
                "pipe:0",
            ])
            .args(["-f", "s16le", "pipe:1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let mut stdin = child.stdin.take()?;
        let input = codes.to_vec();
        let feeder = std::thread::spawn(move || stdin.write_all(&input));
        let output = child.wait_with_output().ok()?;
        feeder.join().ok()?.ok()?;
        assert!(output.status.success(), "ffmpeg failed");
        Some(
            output
                .stdout
                .chunks_exact(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]]))
                .collect(),
        )
    }

    /// Bit-exactness against an independent decoder. Done by hand with
    /// ffmpeg 5.1.9 (Debian 12): the corpus capture's 68000 code
    /// bytes decode to the same 136000 samples, bit for bit, and so does our
    /// encoder's output for a chirp. The test re-runs whenever ffmpeg exists.
    #[test]
    fn matches_ffmpeg_when_installed() {
        let mut streams = Vec::new();
        if let Some(file) = corpus_file("sip-rtp-g722.pcap") {
            let codes: Vec<u8> = rtp_payloads(&file, 9)
                .into_iter()
                .flat_map(|(_, _, _, p)| p)
                .collect();
            streams.push(("corpus", codes));
        }
        let chirp: Vec<i16> = (0..32000)
            .map(|i| {
                let t = i as f64 / 16000.0;
                (12000.0 * (2.0 * std::f64::consts::PI * (50.0 * t + 1700.0 * t * t)).sin()) as i16
            })
            .collect();
        streams.push(("chirp", encode_all(&chirp)));
        for (name, codes) in streams {
            let Some(theirs) = ffmpeg_decode(&codes) else {
                eprintln!("note: ffmpeg not installed, skipping the G.722 cross-check");
                return;
            };
            let ours = decode_all(&codes);
            assert_eq!(ours.len(), theirs.len(), "{name}");
            let worst = ours
                .iter()
                .zip(&theirs)
                .map(|(&a, &b)| (a as i32 - b as i32).abs())
                .max()
                .unwrap_or(0);
            let differing = ours.iter().zip(&theirs).filter(|(a, b)| a != b).count();
            assert_eq!(
                differing, 0,
                "{name}: {differing} samples differ, worst by {worst}"
            );
        }
    }

    /// Fingerprint of our decode of the corpus G.722 call, pinned after
    /// checking it against ffmpeg 5.1 bit for bit (see `corpus_capture_decodes`).
    #[test]
    fn corpus_capture_decodes() {
        let Some(file) = corpus_file("sip-rtp-g722.pcap") else {
            return;
        };
        let packets = rtp_payloads(&file, 9);
        assert_eq!(packets.len(), 425);
        let mut dec = G722Decoder::new();
        let mut pcm = Vec::new();
        for (_, _, _, payload) in &packets {
            assert_eq!(payload.len(), 160);
            dec.decode(payload, &mut pcm).unwrap();
        }
        assert_eq!(pcm.len(), 425 * 320);
        let rms = (pcm.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / pcm.len() as f64).sqrt();
        let peak = pcm.iter().map(|&v| (v as i32).abs()).max().unwrap_or(0);
        let clipped = pcm
            .iter()
            .filter(|&&v| v == i16::MAX || v == i16::MIN)
            .count();
        assert!(rms > 300.0, "rms {rms}: silent?");
        assert!(peak < 32767, "peak {peak}");
        assert_eq!(clipped, 0);
        eprintln!("g722 corpus decode: rms {rms:.0}, peak {peak}");
    }
}
