//! Telling a leg's delays soft from more packets than its start held
//! (see the parent module and docs/timing.md, "Soft floors").

use super::envelope::{quantile, soft_delays};

/// A leg's first stream that its first packets did not tell soft (they
/// tell a normal delay in about 19 starts of 20): the delays of its first
/// [`PROBE_LEN`] packets tell it in 99 of 100, seconds before 20 s of
/// minima would ([`super::envelope::Envelope::update_soft`]), and before its least delay,
/// falling as packets come, has moved it.
#[derive(Debug)]
pub(super) struct Probe {
    /// Delays less the first one's (samples), in the order they came.
    d: [i16; PROBE_LEN],
    n: usize,
    base: i64,
}

/// Packets a [`Probe`] takes (5 s of 20 ms packets).
pub(super) const PROBE_LEN: usize = 256;

impl Probe {
    pub(super) fn new(base: i64) -> Box<Self> {
        Box::new(Probe {
            d: [0; PROBE_LEN],
            n: 0,
            base,
        })
    }

    /// Takes one delay; once full, whether they tell a soft floor.
    pub(super) fn push(&mut self, d: i64, ms: f64) -> Option<bool> {
        if self.n < PROBE_LEN {
            self.d[self.n] = (d - self.base).clamp(i64::from(i16::MIN), i64::from(i16::MAX)) as i16;
            self.n += 1;
        }
        if self.n < PROBE_LEN {
            return None;
        }
        // A sender's drift tilts them (300 ppm: 1.5 ms over 5 s), and a
        // tilted hard floor thins out like a soft one: taken out by the
        // halves' lowest tenths.
        let half = PROBE_LEN / 2;
        let tenth = |v: &[i16]| {
            let mut v: Vec<f64> = v.iter().map(|x| f64::from(*x)).collect();
            quantile(&mut v, 0.1)
        };
        let slope = (tenth(&self.d[half..]) - tenth(&self.d[..half])) / half as f64;
        let mut v: Vec<i64> = self
            .d
            .iter()
            .enumerate()
            .map(|(i, x)| (f64::from(*x) - slope * i as f64).round() as i64)
            .collect();
        Some(soft_delays(&mut v, ms) == Some(true))
    }
}
