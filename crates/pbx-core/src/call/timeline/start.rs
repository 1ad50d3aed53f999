//! When a leg's audio may fix time zero, and how long a leg that starts
//! later holds the call's render while its least delay is learnt (see the
//! parent module and docs/timing.md).

use super::envelope::soft_delays;
use super::*;

impl LegTimeline {
    /// Whether the leg's first audio is placed well enough to fix time zero
    /// by it: its envelope is the least of enough packets that the floor is
    /// known within a millisecond (the least of n delays spread over J lies
    /// about J/(n+1) above it), or spans [`FIT_SPAN_MS`]. A clean link
    /// knows it after a few packets; 80 ms of jitter takes about 1.6 s.
    pub fn start_settled(&self) -> bool {
        let Some(seg) = self.segs.front() else {
            return true;
        };
        if seg.env.span() >= (FIT_SPAN_MS as f64 * self.ms) as i64 {
            return true;
        }
        // Nothing is rendered before time zero: every packet so far is
        // held. Their spread: twice the median delay over the least one
        // (a uniform delay over J gives J). The typical spread, not the
        // worst delay: one stall of the network (or of a loaded capture
        // host) does not make the many small delays less telling.
        let n = seg.chunks.len();
        if n < 4 {
            return false;
        }
        let Some(least) = seg.chunks.iter().map(Chunk::d).min() else {
            return false;
        };
        let mut over: Vec<i64> = seg.chunks.iter().map(|c| c.d() - least).collect();
        // Delays without a hard floor: the least of them is no estimate
        // that settles, the leg is placed by a quantile of its minima, and
        // the more of them the start waits for (up to FIT_SPAN_MS), the
        // less that quantile moves later.
        if soft_delays(&mut over.clone(), self.ms) == Some(true) {
            return false;
        }
        let (_, median, _) = over.select_nth_unstable(n / 2);
        let spread = 2.0 * *median as f64;
        spread / (n as f64 + 1.0) <= START_BIAS_MS * self.ms
    }

    /// Where rendering begins (frame 0 of the recording; before any render).
    pub fn set_start(&mut self, pos: i64) {
        if !self.any_started {
            self.pos = pos;
        }
    }

    /// A leg whose first stream begins after time zero (a party that
    /// starts sending later) is placed when its first sample is due; as at
    /// time zero ([`Self::start_settled`]), the whole call waits for its
    /// least delay to be known well enough, up to [`FIT_SPAN_MS`] after its
    /// first packet: the render stops short of its first sample by the
    /// spread of its delays so far, as far as its place can still fall.
    /// (Placed by its first half second of packets, one such start in
    /// three through 60 ms of jitter was more than 2 ms late for seconds.)
    pub(super) fn start_wait(&self, now: i64) -> i64 {
        if self.any_started {
            return i64::MAX;
        }
        let Some(seg) = self.segs.front() else {
            return i64::MAX;
        };
        let Some(first) = seg.chunks.front() else {
            return i64::MAX;
        };
        let (mut lo, mut hi, mut since) = (i64::MAX, i64::MIN, i64::MAX);
        for c in &seg.chunks {
            lo = lo.min(c.d());
            hi = hi.max(c.d());
            since = since.min(c.arrival);
        }
        if now - since >= (FIT_SPAN_MS as f64 * self.ms) as i64 || self.start_settled() {
            return i64::MAX;
        }
        seg.place(first.u).floor() as i64 - (hi - lo)
    }
}
