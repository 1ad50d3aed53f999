//! Streaming sample-rate conversion between 8000 and 16000 Hz.
//!
//! In: mono 16-bit PCM in chunks of any size. Out: the same signal at the
//! other rate (or unchanged, for identity), appended to a caller's `Vec`.
//! State is carried between calls, so splitting the input differently gives
//! bit-identical output.
//!
//! Both directions use one linear-phase half-band FIR (Kaiser-windowed sinc,
//! 81 taps of which 41 are non-zero, β = 7.86): the pass band is flat to
//! ±0.001 dB below 3.5 kHz and the stop band is below -75 dB above 4.5 kHz, so
//! upsampling leaves no image of telephone-band speech and downsampling lets
//! no alias fold back into it. Upsampling is polyphase: every other output is
//! an input sample, the others a 40-tap dot product; downsampling computes
//! only the kept outputs. Dot products run over contiguous slices with eight
//! accumulators so they vectorise. Input is processed in blocks through one
//! work buffer allocated in `new`; nothing is allocated per call beyond
//! `out`'s growth.
//!
//! Delay ([`Resampler::delay`], in output samples): 40 when upsampling
//! (2.5 ms), 19 when downsampling (2.375 ms; the filter is centred on even
//! input samples so the delay is whole). An up-then-down round trip delays by
//! 39 samples at 8 kHz and otherwise returns the input within rounding.

use std::sync::OnceLock;

/// Non-zero half-band taps on one side of the centre.
const K: usize = 20;
/// History kept between blocks: the downsampler's window is `4K - 1` input
/// samples (padded to `4K`), the upsampler's `2K`.
const HIST: usize = 4 * K;
/// Input samples per block of work.
const BLOCK: usize = 512;

/// Errors from [`Resampler::new`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResampleError {
    #[error("unsupported sample-rate conversion {from} Hz -> {to} Hz")]
    Unsupported { from: u32, to: u32 },
}

/// The odd taps of the half-band filter, `h[c ± (2k+1)]` for `k` in `0..K`,
/// normalised so that `0.5 + 2·Σ = 1` (unity gain at DC).
fn taps() -> &'static [f32; K] {
    static TAPS: OnceLock<[f32; K]> = OnceLock::new();
    TAPS.get_or_init(|| {
        // Kaiser window over the 4K+1 taps (offsets -2K..=2K).
        let beta = 0.1102 * (80.0 - 8.7);
        let i0 = |x: f64| {
            // Power series of the zeroth-order modified Bessel function.
            let (mut sum, mut term, mut k) = (1.0f64, 1.0f64, 1.0f64);
            while term > 1e-12 * sum {
                term *= (x / (2.0 * k)) * (x / (2.0 * k));
                sum += term;
                k += 1.0;
            }
            sum
        };
        let half_len = (2 * K) as f64;
        let mut raw = [0f64; K];
        for (k, tap) in raw.iter_mut().enumerate() {
            let offset = (2 * k + 1) as f64;
            let x = offset / 2.0;
            let sinc = (std::f64::consts::PI * x).sin() / (std::f64::consts::PI * x);
            let r = offset / half_len;
            let window = i0(beta * (1.0 - r * r).max(0.0).sqrt()) / i0(beta);
            *tap = 0.5 * sinc * window;
        }
        let sum: f64 = raw.iter().sum();
        let scale = 0.25 / sum;
        let mut out = [0f32; K];
        for (o, r) in out.iter_mut().zip(raw) {
            *o = (r * scale) as f32;
        }
        out
    })
}

/// The taps laid out for contiguous dot products.
struct Kernels {
    /// Interpolation phase of the upsampler (gain 2): input samples
    /// `t-2K+1 ..= t` give the output half-way between `t-K` and `t-K+1`.
    up: [f32; 2 * K],
    /// The whole filter for the downsampler, zeros included, with one leading
    /// zero so the length is a multiple of 8: samples `n-4K+1 ..= n`.
    down: [f32; 4 * K],
}

fn kernels() -> &'static Kernels {
    static KERNELS: OnceLock<Kernels> = OnceLock::new();
    KERNELS.get_or_init(|| {
        let a = taps();
        let mut up = [0f32; 2 * K];
        let mut down = [0f32; 4 * K];
        for k in 0..K {
            up[K - 1 - k] = 2.0 * a[k];
            up[K + k] = 2.0 * a[k];
            // Centre at index 2K (x[n-2K+1]); odd offsets ±(2k+1).
            down[2 * K - (2 * k + 1)] = a[k];
            down[2 * K + (2 * k + 1)] = a[k];
        }
        down[2 * K] = 0.5;
        Kernels { up, down }
    })
}

/// Dot product of two equal-length slices whose length is a multiple of 8,
/// with eight independent accumulators (vectorisable).
#[inline]
fn dot(x: &[f32], h: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    for (xs, hs) in x.chunks_exact(8).zip(h.chunks_exact(8)) {
        for ((a, &xv), &hv) in acc.iter_mut().zip(xs).zip(hs) {
            *a += xv * hv;
        }
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

#[inline]
fn to_i16(v: f32) -> i16 {
    // Round half away from zero; `as` saturates out-of-range values.
    (if v >= 0.0 { v + 0.5 } else { v - 0.5 }) as i16
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Identity,
    Up,
    Down,
}

/// A streaming 8000 <-> 16000 Hz (or identity) resampler.
#[derive(Clone)]
pub struct Resampler {
    mode: Mode,
    input_rate: u32,
    output_rate: u32,
    kernels: &'static Kernels,
    /// `[history (HIST) | current block (≤ BLOCK)]`, as f32.
    work: Box<[f32]>,
    /// Downsampling: whether the next input sample has an odd index.
    odd: bool,
    /// The history is all zeros (silence fast path).
    silent: bool,
}

impl std::fmt::Debug for Resampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resampler")
            .field("input_rate", &self.input_rate)
            .field("output_rate", &self.output_rate)
            .finish_non_exhaustive()
    }
}

impl Resampler {
    /// Supported: 8000 -> 16000, 16000 -> 8000, and `r -> r` for any `r > 0`.
    pub fn new(input_rate: u32, output_rate: u32) -> Result<Self, ResampleError> {
        let mode = match (input_rate, output_rate) {
            (a, b) if a == b && a > 0 => Mode::Identity,
            (8000, 16000) => Mode::Up,
            (16000, 8000) => Mode::Down,
            (from, to) => return Err(ResampleError::Unsupported { from, to }),
        };
        let work_len = if mode == Mode::Identity {
            0
        } else {
            HIST + BLOCK
        };
        Ok(Resampler {
            mode,
            input_rate,
            output_rate,
            kernels: kernels(),
            work: vec![0.0; work_len].into_boxed_slice(),
            odd: false,
            silent: true,
        })
    }

    pub fn input_rate(&self) -> u32 {
        self.input_rate
    }

    pub fn output_rate(&self) -> u32 {
        self.output_rate
    }

    /// Group delay in output samples (see the module docs).
    pub fn delay(&self) -> usize {
        match self.mode {
            Mode::Identity => 0,
            Mode::Up => 2 * K,
            Mode::Down => K - 1,
        }
    }

    /// Forget all history (as after `new`).
    pub fn reset(&mut self) {
        self.work.fill(0.0);
        self.odd = false;
        self.silent = true;
    }

    /// Convert `input`, appending the output to `out`.
    pub fn process(&mut self, input: &[i16], out: &mut Vec<i16>) {
        match self.mode {
            Mode::Identity => out.extend_from_slice(input),
            Mode::Up => {
                for block in input.chunks(BLOCK) {
                    self.load(block);
                    let h = &self.kernels.up;
                    let start = out.len();
                    out.resize(start + 2 * block.len(), 0);
                    // Input j of the block is work[HIST + j]; the upsampler
                    // looks back 2K samples.
                    let base = HIST - 2 * K;
                    let windows = self.work[base + 1..].windows(2 * K);
                    let centres = &self.work[base + K..];
                    for ((pair, window), &even) in
                        out[start..].chunks_exact_mut(2).zip(windows).zip(centres)
                    {
                        pair[0] = to_i16(even);
                        pair[1] = to_i16(dot(window, h));
                    }
                    self.keep_history(block.len());
                }
            }
            Mode::Down => {
                for block in input.chunks(BLOCK) {
                    self.load(block);
                    let h = &self.kernels.down;
                    // Outputs fall on the odd-indexed inputs: input j of the
                    // block (work[HIST + j]) ends the window work[j + 1..].
                    let first = if self.odd { 0 } else { 1 };
                    let count = (block.len() + 1 - first) / 2;
                    let start = out.len();
                    out.resize(start + count, 0);
                    let windows = self.work[first + 1..].windows(HIST).step_by(2);
                    for (o, window) in out[start..].iter_mut().zip(windows) {
                        *o = to_i16(dot(window, h));
                    }
                    self.odd ^= block.len() % 2 == 1;
                    self.keep_history(block.len());
                }
            }
        }
    }

    /// Copies a block (≤ BLOCK samples) behind the history.
    #[inline]
    fn load(&mut self, block: &[i16]) {
        for (w, &x) in self.work[HIST..HIST + block.len()].iter_mut().zip(block) {
            *w = x as f32;
        }
    }

    /// Slides the last HIST samples to the front.
    #[inline]
    fn keep_history(&mut self, n: usize) {
        self.work.copy_within(n..n + HIST, 0);
        self.silent = self.work[..HIST].iter().all(|&v| v == 0.0);
    }

    /// What `process` would append for `input` followed by silence until the
    /// history has drained, trailing zeros left off; `self` unchanged.
    pub fn tail(&self, input: &[i16], out: &mut Vec<i16>) {
        let before = out.len();
        if self.mode == Mode::Identity {
            out.extend_from_slice(input);
        } else if !self.silent || input.iter().any(|&x| x != 0) {
            let mut r = self.clone();
            r.process(input, out);
            r.process(&[0; HIST], out);
        }
        while out.len() > before && out.last() == Some(&0) {
            out.pop();
        }
    }

    /// Same as `process` on `n` zero samples, but once the history has
    /// drained it costs nothing per sample (long gaps, hold).
    pub fn process_silence(&mut self, n: usize, out: &mut Vec<i16>) {
        const ZEROS: [i16; HIST] = [0; HIST];
        let mut left = n;
        // Push real zeros until the history is all zeros (one step of HIST).
        if left > 0 && !self.silent && self.mode != Mode::Identity {
            let step = left.min(HIST);
            self.process(&ZEROS[..step], out);
            left -= step;
        }
        if left == 0 {
            return;
        }
        // The history is all zeros: the output is zeros and only the phase moves.
        let produced = match self.mode {
            Mode::Identity => left,
            Mode::Up => 2 * left,
            Mode::Down => {
                let first_odd = usize::from(self.odd);
                self.odd ^= left % 2 == 1;
                (left + first_odd) / 2
            }
        };
        out.resize(out.len() + produced, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::codec::test_support::{goertzel_power, sine, snr_db};

    fn run(r: &mut Resampler, input: &[i16], chunk: usize) -> Vec<i16> {
        let mut out = Vec::new();
        for c in input.chunks(chunk.max(1)) {
            r.process(c, &mut out);
        }
        out
    }

    #[test]
    fn supported_pairs() {
        assert!(Resampler::new(8000, 16000).is_ok());
        assert!(Resampler::new(16000, 8000).is_ok());
        assert!(Resampler::new(48000, 48000).is_ok());
        assert_eq!(
            Resampler::new(8000, 48000).err(),
            Some(ResampleError::Unsupported {
                from: 8000,
                to: 48000
            })
        );
        assert!(Resampler::new(0, 0).is_err());
    }

    #[test]
    fn filter_is_a_unity_gain_half_band() {
        let t = taps();
        let dc: f64 = 0.5 + 2.0 * t.iter().map(|&v| v as f64).sum::<f64>();
        assert!((dc - 1.0).abs() < 1e-6, "dc gain {dc}");
        // Frequency response of the full filter at 16 kHz.
        let response = |f: f64| {
            let w = 2.0 * std::f64::consts::PI * f / 16000.0;
            0.5 + t
                .iter()
                .enumerate()
                .map(|(k, &v)| 2.0 * v as f64 * (w * (2 * k + 1) as f64).cos())
                .sum::<f64>()
        };
        for f in [0.0, 300.0, 1000.0, 3000.0, 3500.0] {
            let g = response(f);
            assert!((g - 1.0).abs() < 2e-4, "passband gain {g} at {f} Hz");
        }
        for f in [4500.0, 5000.0, 6000.0, 7000.0, 8000.0] {
            let db = 20.0 * response(f).abs().log10();
            assert!(db < -75.0, "stopband {db} dB at {f} Hz");
        }
    }

    #[test]
    fn identity_copies() {
        let mut r = Resampler::new(8000, 8000).unwrap();
        let mut out = vec![9];
        r.process(&[1, 2, 3], &mut out);
        assert_eq!(out, vec![9, 1, 2, 3]);
        assert_eq!(r.delay(), 0);
    }

    #[test]
    fn up_then_down_round_trip() {
        let input = sine(1000.0, 8000.0, 12000.0, 8000);
        let mut up = Resampler::new(8000, 16000).unwrap();
        let mut down = Resampler::new(16000, 8000).unwrap();
        let wide = run(&mut up, &input, 160);
        assert_eq!(wide.len(), 16000);
        let back = run(&mut down, &wide, 320);
        assert_eq!(back.len(), 8000);
        let delay = up.delay() / 2 + down.delay();
        assert_eq!(delay, 39);
        let want: Vec<f64> = input[..8000 - delay].iter().map(|&v| v as f64).collect();
        let got: Vec<f64> = back[delay..].iter().map(|&v| v as f64).collect();
        let snr = snr_db(&want[100..], &got[100..]);
        assert!(snr > 40.0, "round-trip SNR {snr} dB");
        // And it is in fact far better than required.
        assert!(snr > 70.0, "round-trip SNR {snr} dB");
    }

    #[test]
    fn upsampled_tone_is_delayed_by_the_reported_delay() {
        let input = sine(1000.0, 8000.0, 10000.0, 1600);
        let mut up = Resampler::new(8000, 16000).unwrap();
        let out = run(&mut up, &input, 37);
        let d = up.delay();
        let want = sine(1000.0, 16000.0, 10000.0, 3200 - d);
        let want: Vec<f64> = want.iter().map(|&v| v as f64).collect();
        let got: Vec<f64> = out[d..].iter().map(|&v| v as f64).collect();
        let snr = snr_db(&want[200..], &got[200..]);
        assert!(snr > 60.0, "snr {snr}");
    }

    #[test]
    fn no_image_when_upsampling_3500_hz() {
        let input = sine(3500.0, 8000.0, 16000.0, 8000);
        let mut up = Resampler::new(8000, 16000).unwrap();
        let out = run(&mut up, &input, 160);
        let steady = &out[200..];
        let tone = goertzel_power(steady, 16000.0, 3500.0);
        let image = goertzel_power(steady, 16000.0, 4500.0);
        let db = 10.0 * (image / tone).log10();
        assert!(db < -50.0, "image at 4.5 kHz is {db} dB");
    }

    #[test]
    fn downsampling_rejects_6_khz() {
        let input = sine(6000.0, 16000.0, 16000.0, 16000);
        let reference = sine(1000.0, 16000.0, 16000.0, 16000);
        let mut down = Resampler::new(16000, 8000).unwrap();
        let out = run(&mut down, &input, 320);
        let mut down = Resampler::new(16000, 8000).unwrap();
        let out_ref = run(&mut down, &reference, 320);
        let energy = |x: &[i16]| x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>();
        // 6 kHz would alias to 2 kHz; measure all that is left.
        let db = 10.0 * (energy(&out[100..]) / energy(&out_ref[100..])).log10();
        assert!(db < -50.0, "6 kHz leaks at {db} dB");
    }

    #[test]
    fn chunking_does_not_matter() {
        let input: Vec<i16> = (0..3001)
            .map(|i| ((i * 7919) % 20000 - 10000) as i16)
            .collect();
        for (from, to) in [(8000, 16000), (16000, 8000)] {
            let whole = run(&mut Resampler::new(from, to).unwrap(), &input, input.len());
            for chunk in [1, 2, 3, 159, 160, 161] {
                let parts = run(&mut Resampler::new(from, to).unwrap(), &input, chunk);
                assert_eq!(whole, parts, "{from}->{to} chunk {chunk}");
            }
        }
    }

    #[test]
    fn silence_fast_path_matches_slow_path() {
        let input = sine(440.0, 16000.0, 9000.0, 333);
        for (from, to) in [(8000, 16000), (16000, 8000), (8000, 8000)] {
            for n in [0, 1, 5, 79, 80, 81, 1001] {
                let mut a = Resampler::new(from, to).unwrap();
                let mut b = Resampler::new(from, to).unwrap();
                let mut out_a = Vec::new();
                let mut out_b = Vec::new();
                a.process(&input, &mut out_a);
                b.process(&input, &mut out_b);
                a.process(&vec![0; n], &mut out_a);
                b.process_silence(n, &mut out_b);
                a.process(&input, &mut out_a);
                b.process(&input, &mut out_b);
                assert_eq!(out_a, out_b, "{from}->{to} n={n}");
            }
        }
    }

    /// The tail is what processing silence would append.
    #[test]
    fn tail_and_skip_match_processing_silence() {
        for (from, to) in [(8000, 16000), (16000, 8000)] {
            let input = sine(440.0, f64::from(from), 8000.0, 333);
            let mut r = Resampler::new(from, to).unwrap();
            let mut out = Vec::new();
            r.process(&input, &mut out);
            let mut tail = Vec::new();
            r.tail(&[], &mut tail);
            let mut zeros = Vec::new();
            let mut r2 = r.clone();
            r2.process(&[0; 200], &mut zeros);
            let nz = zeros.iter().rposition(|&v| v != 0).map_or(0, |i| i + 1);
            assert_eq!(tail, zeros[..nz], "{from} -> {to}");
            assert!(!tail.is_empty());
        }
    }

    #[test]
    fn reset_forgets() {
        let mut r = Resampler::new(8000, 16000).unwrap();
        let mut out = Vec::new();
        r.process(&[30000; 50], &mut out);
        r.reset();
        out.clear();
        r.process(&[0; 50], &mut out);
        assert!(out.iter().all(|&v| v == 0));
    }

    #[test]
    fn full_scale_saturates_instead_of_wrapping() {
        // Gibbs overshoot on a full-scale square wave must clip, not wrap.
        let square: Vec<i16> = (0..800)
            .map(|i| {
                if (i / 20) % 2 == 0 {
                    i16::MAX
                } else {
                    i16::MIN
                }
            })
            .collect();
        let mut up = Resampler::new(8000, 16000).unwrap();
        let out = run(&mut up, &square, 160);
        // Where the input is a long run of MAX, the output is near MAX.
        for (i, w) in out.windows(2).enumerate().skip(100) {
            let jump = (w[0] as i32 - w[1] as i32).abs();
            assert!(jump < 40000, "wrap at {i}: {:?}", w);
        }
    }
}
