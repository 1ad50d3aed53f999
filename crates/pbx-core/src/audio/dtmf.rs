//! In-band DTMF detection: a Goertzel detector for the Q.23 tone pairs.
//!
//! In: a leg's mono PCM (16-bit, at the recording rate: 8000 or 16000 Hz, any
//! rate from 4000 Hz up works) in consecutive pieces, each with the position
//! of its first sample on the caller's timeline. Out: [`ToneEvent`]s, a
//! digit's onset once it has been present long enough and its end, both as
//! positions on that timeline.
//!
//! How a block is judged (blocks of 25.6 ms, Hann window, half-overlapping,
//! so a digit is judged every 12.8 ms):
//! - the strongest of the four low-group and of the four high-group
//!   frequencies are taken, and each one's real frequency is measured (the
//!   Goertzel power at ±2 % and ±4 % around it, parabola through the log
//!   powers): a tone more than [`MAX_DEVIATION`] (2.5 %) off its nominal
//!   frequency is refused (Q.24: accept ±1.5 %, refuse beyond ±3.5 %);
//! - each tone must be at least [`MIN_LEVEL_DBM0`] (-36 dBm0);
//! - twist (high tone level minus low tone level) within -8 dB..+4 dB (the
//!   high tone may be up to 8 dB weaker, as lines attenuate it, and up to 4 dB
//!   stronger);
//! - the other three frequencies of each group are at least 10 dB below the
//!   strongest (one tone per group);
//! - the two tones carry at least [`MIN_TONE_SHARE`] of the block's energy:
//!   speech, music and noise spread their energy; this is the talk-off guard.
//!
//! A digit starts after two consecutive blocks agree. Measured over every
//! alignment to the blocks (tests): tones of 36 ms and more are always
//! accepted, of 20 ms and less never, 24-32 ms sometimes (Q.24: accept from
//! 40 ms, refuse below about 23 ms). It ends after two blocks without it, a
//! block with the same digit at relaxed limits (6 dB lower level, half the
//! share) keeping it going, so a dropout of 10 ms does not split a digit while
//! a 40 ms pause between two digits separates them.
//!
//! Positions: a digit's `start` is the start of the first of its agreeing
//! blocks (at most a block before the tone really started), its `end` the end
//! of its last agreeing block (at most a block after the tone stopped).
//! Nothing here allocates after [`DtmfDetector::new`]; memory is two blocks
//! of samples and the window.

use std::f64::consts::PI;

/// The low-group (row) frequencies, Hz.
pub const LOW: [f64; 4] = [697.0, 770.0, 852.0, 941.0];
/// The high-group (column) frequencies, Hz.
pub const HIGH: [f64; 4] = [1209.0, 1336.0, 1477.0, 1633.0];
const KEYS: [[char; 4]; 4] = [
    ['1', '2', '3', 'A'],
    ['4', '5', '6', 'B'],
    ['7', '8', '9', 'C'],
    ['*', '0', '#', 'D'],
];

/// Largest frequency deviation accepted, as a fraction of the nominal frequency.
pub const MAX_DEVIATION: f64 = 0.025;
/// Weakest tone accepted, dBm0 (each of the two).
pub const MIN_LEVEL_DBM0: f64 = -36.0;
/// Share of the block's energy the two tones must carry.
pub const MIN_TONE_SHARE: f64 = 0.7;
/// Twist limits: high-group level minus low-group level, dB.
pub const TWIST_HIGH_WEAKER_DB: f64 = 8.0;
pub const TWIST_HIGH_STRONGER_DB: f64 = 4.0;
/// The other frequencies of a group are at least this much weaker, dB.
const GROUP_PURITY_DB: f64 = 10.0;
/// Consecutive agreeing blocks that make a digit.
const ONSET_BLOCKS: u32 = 2;
/// Consecutive blocks without the digit that end it.
const RELEASE_BLOCKS: u32 = 2;
/// Amplitude of a 0 dBm0 sine in 16-bit linear PCM decoded from G.711 (the
/// codec's full-scale sine is +3.17 dBm0).
pub const DBM0_AMPLITUDE: f64 = 22_706.0;

/// What the detector reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToneEvent {
    /// A digit has been present long enough: it began at `start`; the
    /// detector knew it at `known_at` (the end of the block that decided).
    Digit {
        digit: char,
        start: i64,
        known_at: i64,
    },
    /// The digit that began last ended at `end`.
    End { digit: char, end: i64 },
}

/// What one block holds.
#[derive(Debug, Clone, Copy)]
struct Measure {
    digit: char,
    /// Tone powers (mean square) of the low and high tones found.
    low: f64,
    high: f64,
    /// Their frequency deviation (fraction of nominal).
    low_dev: f64,
    high_dev: f64,
    /// Strongest other frequency of each group over its tone (power ratio).
    low_other: f64,
    high_other: f64,
    /// Mean square of the block.
    total: f64,
}

impl Measure {
    fn passes(&self, relaxed: bool) -> bool {
        let min_level = amplitude_power(MIN_LEVEL_DBM0 - if relaxed { 6.0 } else { 0.0 });
        let share = MIN_TONE_SHARE * if relaxed { 0.5 } else { 1.0 };
        let twist_db = 10.0 * (self.high / self.low).log10();
        let purity = 10f64.powf(-GROUP_PURITY_DB / 10.0);
        self.low >= min_level
            && self.high >= min_level
            && (-TWIST_HIGH_WEAKER_DB..=TWIST_HIGH_STRONGER_DB).contains(&twist_db)
            && self.low_dev.abs() <= MAX_DEVIATION
            && self.high_dev.abs() <= MAX_DEVIATION
            && self.low_other <= purity
            && self.high_other <= purity
            && self.low + self.high >= share * self.total
    }
}

/// Mean-square power of a sine at `dbm0`.
fn amplitude_power(dbm0: f64) -> f64 {
    let a = DBM0_AMPLITUDE * 10f64.powf(dbm0 / 20.0);
    a * a / 2.0
}

/// A Goertzel DTMF detector for one leg. See the module documentation.
#[derive(Debug, Clone)]
pub struct DtmfDetector {
    rate: u32,
    n: usize,
    hop: usize,
    window: Vec<f64>,
    window_sum: f64,
    window_sq: f64,
    /// The last `n` samples (ring).
    ring: Vec<f64>,
    filled: usize,
    head: usize,
    since_block: usize,
    /// Position of the next sample expected.
    next_pos: Option<i64>,
    /// Digit seen in the last blocks, how many, and where its first block began.
    candidate: Option<(char, u32, i64)>,
    /// The digit sounding: which, blocks missed since, end of its last block.
    active: Option<(char, u32, i64)>,
    block: Vec<f64>,
}

impl DtmfDetector {
    pub fn new(rate: u32) -> Self {
        let rate = rate.max(4000);
        // 205 samples at 8000 Hz (25.6 ms): the classic block, bins 39 Hz apart.
        let n = (rate as usize * 205).div_ceil(8000);
        let window: Vec<f64> = (0..n)
            .map(|i| 0.5 - 0.5 * (2.0 * PI * (i as f64 + 0.5) / n as f64).cos())
            .collect();
        let window_sum = window.iter().sum();
        let window_sq = window.iter().map(|w| w * w).sum();
        DtmfDetector {
            rate,
            n,
            hop: n / 2,
            window,
            window_sum,
            window_sq,
            ring: vec![0.0; n],
            filled: 0,
            head: 0,
            since_block: 0,
            next_pos: None,
            candidate: None,
            active: None,
            block: vec![0.0; n],
        }
    }

    /// Block length in samples.
    pub fn block_len(&self) -> usize {
        self.n
    }

    /// Feed `pcm` whose first sample is at `pos`; events go to `out` in order.
    /// A piece that does not follow the previous one starts afresh (a digit
    /// sounding is ended where the previous piece stopped).
    pub fn process(&mut self, pos: i64, pcm: &[i16], out: &mut Vec<ToneEvent>) {
        if self.next_pos.is_some_and(|p| p != pos) {
            self.reset(out);
        }
        let mut p = pos;
        for &s in pcm {
            self.ring[self.head] = f64::from(s);
            self.head = (self.head + 1) % self.n;
            self.filled = (self.filled + 1).min(self.n);
            self.since_block += 1;
            p += 1;
            if self.filled == self.n && self.since_block >= self.hop {
                self.since_block = 0;
                self.judge(p, out);
            }
        }
        self.next_pos = Some(p);
    }

    /// End what is sounding (the input stops or jumps).
    pub fn reset(&mut self, out: &mut Vec<ToneEvent>) {
        if let Some((digit, _, end)) = self.active.take() {
            out.push(ToneEvent::End { digit, end });
        }
        self.candidate = None;
        self.filled = 0;
        self.head = 0;
        self.since_block = 0;
        self.next_pos = None;
    }

    /// Judge the block that ends at `end` (exclusive).
    fn judge(&mut self, end: i64, out: &mut Vec<ToneEvent>) {
        let start = end - self.n as i64;
        let m = self.measure();
        match self.active {
            Some((digit, missed, last_end)) => {
                if m.is_some_and(|m| m.digit == digit && m.passes(true)) {
                    self.active = Some((digit, 0, end));
                } else if missed + 1 >= RELEASE_BLOCKS {
                    self.active = None;
                    out.push(ToneEvent::End {
                        digit,
                        end: last_end,
                    });
                    self.candidate = m
                        .filter(|m| m.digit != digit && m.passes(false))
                        .map(|m| (m.digit, 1, start));
                } else {
                    self.active = Some((digit, missed + 1, last_end));
                }
            }
            None => {
                let strict = m.filter(|m| m.passes(false)).map(|m| m.digit);
                self.candidate = match (strict, self.candidate) {
                    (Some(d), Some((c, k, s))) if c == d => Some((d, k + 1, s)),
                    (Some(d), _) => Some((d, 1, start)),
                    (None, _) => None,
                };
                if let Some((digit, k, s)) = self.candidate {
                    if k >= ONSET_BLOCKS {
                        self.candidate = None;
                        self.active = Some((digit, 0, end));
                        out.push(ToneEvent::Digit {
                            digit,
                            start: s,
                            known_at: end,
                        });
                    }
                }
            }
        }
    }

    /// The block's measure, if it holds anything like a tone pair.
    fn measure(&mut self) -> Option<Measure> {
        let n = self.n;
        for i in 0..n {
            self.block[i] = self.ring[(self.head + i) % n] * self.window[i];
        }
        let total = self.block.iter().map(|x| x * x).sum::<f64>() / self.window_sq;
        if total < amplitude_power(MIN_LEVEL_DBM0 - 6.0) {
            return None;
        }
        let (li, low, low_other) = self.strongest(&LOW);
        let (hi, high, high_other) = self.strongest(&HIGH);
        // Cheap refusals before the frequency measurement.
        if (low + high) < 0.25 * MIN_TONE_SHARE * total {
            return None;
        }
        let (low_dev, low) = self.deviation(LOW[li]).unwrap_or((1.0, low));
        let (high_dev, high) = self.deviation(HIGH[hi]).unwrap_or((1.0, high));
        Some(Measure {
            digit: KEYS[li][hi],
            low,
            high,
            low_dev,
            high_dev,
            low_other,
            high_other,
            total,
        })
    }

    /// Strongest frequency of a group: its index, power, and the strongest
    /// other one's power over it.
    fn strongest(&self, group: &[f64; 4]) -> (usize, f64, f64) {
        let p: [f64; 4] = std::array::from_fn(|i| self.power(group[i]));
        let (i, best) = p
            .iter()
            .copied()
            .enumerate()
            .fold((0, f64::MIN), |a, (i, v)| if v > a.1 { (i, v) } else { a });
        let other = p
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, v)| *v)
            .fold(0.0, f64::max);
        (i, best, if best > 0.0 { other / best } else { 1.0 })
    }

    /// Where the tone near `nominal` really is: its deviation (fraction of
    /// nominal) and its power there.
    fn deviation(&self, nominal: f64) -> Option<(f64, f64)> {
        const STEPS: [f64; 5] = [-0.04, -0.02, 0.0, 0.02, 0.04];
        let p: [f64; 5] = std::array::from_fn(|i| self.power(nominal * (1.0 + STEPS[i])));
        let k = (0..5).fold(0, |a, i| if p[i] > p[a] { i } else { a });
        // A peak at the edge lies beyond ±4 %.
        if k == 0 || k == 4 {
            return Some((STEPS[k] * 1.5, p[k]));
        }
        let (a, b, c) = (
            p[k - 1].max(1e-9).ln(),
            p[k].max(1e-9).ln(),
            p[k + 1].max(1e-9).ln(),
        );
        let denom = a - 2.0 * b + c;
        let shift = if denom < 0.0 {
            (0.5 * (a - c) / denom).clamp(-0.5, 0.5)
        } else {
            0.0
        };
        let dev = STEPS[k] + shift * 0.02;
        Some((dev, self.power(nominal * (1.0 + dev)).max(p[k])))
    }

    /// Mean-square power of the (windowed) block's component at `freq`.
    fn power(&self, freq: f64) -> f64 {
        let w = 2.0 * PI * freq / f64::from(self.rate);
        let coeff = 2.0 * w.cos();
        let (mut s1, mut s2) = (0.0f64, 0.0f64);
        for &x in &self.block {
            let s0 = x + coeff * s1 - s2;
            s2 = s1;
            s1 = s0;
        }
        let mag2 = s1 * s1 + s2 * s2 - coeff * s1 * s2;
        // A sine of amplitude A gives |X| = A/2 * sum(window): power A^2/2.
        let amp = 2.0 * mag2.max(0.0).sqrt() / self.window_sum;
        amp * amp / 2.0
    }
}

#[cfg(test)]
mod tests;
