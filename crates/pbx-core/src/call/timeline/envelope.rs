//! The lower envelope of one segment (see the parent module): per quarter
//! second the least-delayed packet's `d = arrival - u`, the line fitted
//! through them (drift), the window minimum a packet is placed by, the
//! jitter seen, whether the drift is followed, and whether the delays have
//! a hard floor at all (if not, a low quantile places the leg instead).

use super::buckets::BucketQueue;
use super::*;

/// One quarter second's least-delayed packet. Its bucket number is
/// `u.div_euclid(bucket_len)` (not stored; [`BucketQueue`] keeps the rest
/// in 8 bytes a bucket, 160 of them per leg in a long call).
#[derive(Debug, Clone, Copy)]
pub(super) struct Bucket {
    pub(super) u: i64,
    pub(super) d: i64,
    /// Packets that fell in the bucket (how many the minimum is the least of).
    pub(super) n: u32,
}

/// A line `d = d0 + slope·(u - u0)`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Line {
    pub(super) u0: i64,
    pub(super) d0: f64,
    pub(super) slope: f64,
    /// How far the slope may be off (per sample).
    pub(super) uncertainty: f64,
    /// Whether the minima lie along it (a drift), not beside it (a step).
    pub(super) linear: bool,
}

impl Line {
    pub(super) fn at(&self, u: i64) -> f64 {
        self.d0 + self.slope * (u - self.u0) as f64
    }
}

/// Buckets either side of a bucket in its window ([`FLAT_WINDOW_MS`]).
pub(super) const NEAR_WINDOW: i64 = FLAT_WINDOW_MS * BUCKETS_PER_S / 1000;

/// The most [`Envelope::seam_slack`] gives.
const MAX_SEAM_SLACK_MS: f64 = 10.0;

/// Buckets between two looks at [`Envelope::soft`] (2.5 s).
const SOFT_CHECK_BUCKETS: i64 = 10;
/// [`Envelope::target`] of a soft floor: this quantile of the window's
/// minima with at least [`SOFT_MIN_PACKETS`] packets each.
const SOFT_QUANTILE: f64 = 0.1;
const SOFT_MIN_PACKETS: u32 = 4;
/// Minima spread less than this (lowest to median) are a hard floor
/// whatever their shape.
pub(super) const SOFT_SPREAD_MS: f64 = 2.0;
/// Offset errors of a soft floor within this much of the minima's spread
/// ([`Envelope::soft_spread`]) are left alone.
const SOFT_HYSTERESIS: f64 = 0.6;

/// The `p` quantile of `v` (reordered), interpolated between ranks.
pub(super) fn quantile(v: &mut [f64], p: f64) -> f64 {
    v.sort_unstable_by(f64::total_cmp);
    let x = p * (v.len() - 1) as f64;
    let i = x.floor() as usize;
    let f = x - i as f64;
    match (v.get(i), v.get(i + 1)) {
        (Some(a), Some(b)) => a + f * (b - a),
        (Some(a), None) => *a,
        _ => 0.0,
    }
}

/// Whether the delays of consecutive packets `d` (in the order they were
/// sent; reordered here) thin out towards their least instead of piling
/// up against it, once there are enough of them to tell: the lowest tenth
/// lies about 1.0 of the way from the least to the median where they are
/// normally distributed (the least of 150 at 2.6 deviations below the
/// mean, the tenth at 1.3), 0.23 where they are uniform (above 0.6: one
/// start in 200). Not where each packet's delay is close to the one
/// before (a queue that wanders for seconds: how low it gets is not told
/// by a few seconds of it, and its floor is hard).
pub(super) fn soft_delays(d: &mut [i64], ms: f64) -> Option<bool> {
    let n = d.len();
    if n < 40 {
        return None;
    }
    let step = d
        .windows(2)
        .map(|w| (w[1] - w[0]).abs() as f64)
        .sum::<f64>()
        / (n - 1) as f64;
    d.sort_unstable();
    let (lo, q10, q50) = (d[0] as f64, d[n / 10] as f64, d[n / 2] as f64);
    if q50 - lo < SOFT_SPREAD_MS * ms {
        return Some(false);
    }
    // Independent normal delays: a step of 1.13 deviations on average, the
    // tenth to the median 1.28.
    Some((q10 - lo) / (q50 - q10).max(1e-9) > 0.6 && step > 0.5 * (q50 - q10))
}

/// A window minimum remembered by [`Envelope::at`].
#[derive(Debug, Clone, Copy)]
pub(super) struct Cached {
    pub(super) valid: bool,
    /// [`Envelope::gen`] when computed (the line it is relative to).
    pub(super) gen: u64,
    /// The bucket of the `u` asked for.
    pub(super) idx: i64,
    pub(super) following: bool,
    pub(super) v: f64,
}

impl Cached {
    pub(super) const NONE: Cached = Cached {
        valid: false,
        gen: 0,
        idx: 0,
        following: false,
        v: 0.0,
    };
}

/// Lower envelope of `d = arrival - u` for one segment.
#[derive(Debug, Clone)]
pub(super) struct Envelope {
    pub(super) bucket_len: i64,
    pub(super) ms: f64,
    pub(super) buckets: BucketQueue,
    /// The fitted envelope, once the minima span [`FIT_SPAN_MS`].
    pub(super) line: Option<Line>,
    /// Largest residual of normal packets lately (decays): the worst
    /// jitter seen, for telling breaks from jitter.
    pub(super) jitter: f64,
    /// Twice the running median residual: the typical jitter (a uniform
    /// delay of 0..J gives J), not moved by a few very late packets.
    pub(super) jitter_typ: f64,
    /// Running 95th percentile of the residuals (steps of a millisecond
    /// up, a twentieth of that down): how widely most packets' delays
    /// spread, for how well the envelope's floor is known. Unlike the worst
    /// jitter it is not made seconds by one stall of the link or a few
    /// very late packets (which stopped drift following for tens of
    /// seconds after a stall).
    pub(super) jitter_hi: f64,
    pub(super) residuals: u32,
    /// Whether the least delays thin out towards their floor instead of
    /// piling up against it ([`Envelope::update_soft`], [`soft_delays`]):
    /// then the leg is placed by a low quantile of the window's minima
    /// ([`Envelope::target`]).
    pub(super) soft: bool,
    /// The minima's spread from their lowest tenth to their median (when
    /// soft): a window's low quantile moves by chance by about a fifth of
    /// it either way.
    pub(super) soft_spread: f64,
    /// A new stream on a soft leg: the previous stream's median delay over
    /// its placement ([`Envelope::median_gap`]; 0: none), by which its first
    /// packets' median places it ([`Envelope::target`] needs seconds of
    /// minima).
    pub(super) soft_gap: f64,
    /// Bumped whenever a minimum is added or lowered.
    pub(super) version: u64,
    /// The last [`Envelope::target`]: (gen, version, bucket, value).
    pub(super) target_cache: std::cell::Cell<(u64, u64, i64, f64)>,
    /// Whether the segment follows the line's slope (by resampling).
    pub(super) following: bool,
    /// Fits in a row whose slope was significant (before following).
    pub(super) significant_fits: u32,
    /// Checks in a row whose newest minima showed a changed drift
    /// ([`Envelope::drift_changed`]).
    pub(super) changed_checks: u32,
    /// New buckets since the last such check (one a second).
    pub(super) since_check: u8,
    /// The drift of the segment this one was split from (same sender's
    /// clock): slope and uncertainty, taken as the line at the first
    /// minimum ([`Envelope::inherit_drift`]).
    pub(super) inherited: Option<(f64, f64)>,
    /// Whether the line is that inherited one (no fit of its own yet).
    pub(super) line_inherited: bool,
    /// The fit counter when `update_drift` last looked.
    pub(super) fits: u32,
    pub(super) seen_fits: u32,
    /// Bumped whenever the line or `following` change.
    pub(super) gen: u64,
    /// The window minima last computed, one slot for even and one for odd
    /// buckets (the newest packet and the render point are often in
    /// neighbouring buckets). Every packet asks for the envelope; a new or
    /// lowered minimum updates them, so they are computed again only when
    /// the line changes or a minimum leaves the window.
    pub(super) cache: [std::cell::Cell<Cached>; 2],
}

impl Envelope {
    pub(super) fn new(rate: u32) -> Self {
        Envelope {
            bucket_len: (i64::from(rate) / BUCKETS_PER_S).max(1),
            ms: f64::from(rate) / 1000.0,
            buckets: BucketQueue::new(),
            line: None,
            jitter: 0.0,
            jitter_typ: 0.0,
            jitter_hi: 0.0,
            residuals: 0,
            soft: false,
            soft_spread: 0.0,
            soft_gap: 0.0,
            version: 0,
            target_cache: std::cell::Cell::new((0, 0, i64::MIN, 0.0)),
            following: false,
            significant_fits: 0,
            changed_checks: 0,
            since_check: 0,
            inherited: None,
            line_inherited: false,
            fits: 0,
            seen_fits: 0,
            gen: 1,
            cache: [const { std::cell::Cell::new(Cached::NONE) }; 2],
        }
    }

    pub(super) fn add(&mut self, u: i64, d: i64) {
        let len = self.bucket_len;
        let idx = u.div_euclid(len);
        let bidx = |b: &Bucket| b.u.div_euclid(len);
        let mut refit = false;
        let mut changed = true;
        match self.buckets.back() {
            None => self.buckets.push_back(Bucket { u, d, n: 1 }),
            Some(last) if idx > bidx(&last) => {
                // The oldest goes before the newest comes, so the queue
                // never holds more than MAX_BUCKETS; it grows in steps of a
                // few seconds up to them (memory follows the call's length
                // up to 40 s, then stays flat).
                if self.buckets.len() >= MAX_BUCKETS {
                    if let Some(old) = self.buckets.pop_front() {
                        self.cache_forget(bidx(&old));
                    }
                }
                self.buckets.push_back(Bucket { u, d, n: 1 });
                refit = true;
                self.since_check = self.since_check.saturating_add(1);
            }
            Some(_) => {
                let n = self.buckets.len();
                let found = self.buckets.iter().rev().position(|b| bidx(&b) == idx);
                if let Some(i) = found.map(|k| n - 1 - k) {
                    let mut b = self.buckets.get(i);
                    b.n = b.n.saturating_add(1);
                    if d < b.d {
                        b.u = u;
                        b.d = d;
                    } else {
                        changed = false;
                    }
                    self.buckets.set(i, b);
                } else if self.buckets.front().is_some_and(|f| idx > bidx(&f)) {
                    let at = self.buckets.partition_point(|b| b.u < idx * len);
                    self.buckets.insert(at, Bucket { u, d, n: 1 });
                } else {
                    changed = false;
                }
            }
        }
        // (Set only on a new segment, before its first minimum.)
        if let Some((slope, uncertainty)) = self.inherited.take() {
            self.line = Some(Line {
                u0: u,
                d0: d as f64,
                slope,
                uncertainty,
                linear: true,
            });
            self.line_inherited = true;
            self.following = true;
            self.gen += 1;
        }
        if changed {
            self.version += 1;
            self.cache_offer(Bucket { u, d, n: 1 });
        }
        // A point under the fitted line is news now, not at the next bucket.
        if refit || self.line.is_some_and(|l| (d as f64) < l.at(u) - 0.5) {
            self.fit();
        }
        if refit && idx.rem_euclid(SOFT_CHECK_BUCKETS) == 0 {
            self.update_soft();
        }
    }

    pub(super) fn span(&self) -> i64 {
        match (self.buckets.front(), self.buckets.back()) {
            (Some(a), Some(b)) => b.u - a.u,
            _ => 0,
        }
    }

    /// The envelope line ([`Envelope::line_over`] the whole window), after
    /// letting go of the minima from before a change of the sender's drift
    /// ([`Envelope::drift_changed`]).
    pub(super) fn fit(&mut self) {
        let Some(mut line) = self.line_over(0, self.buckets.len()) else {
            return;
        };
        let mut changed = false;
        if self.since_check >= BUCKETS_PER_S as u8 {
            self.since_check = 0;
            changed = self.check_drift_change(&mut line);
        }
        // While a drift is followed, a fit far less certain than the line in
        // force and within its own uncertainty of it does not replace it:
        // its slope would be followed. (A queue draining at once puts its
        // first low minima in the newer half: a slope of -3,500 +- 1,900
        // ppm was followed for 5.7 s against the sender's 500 +- 70, then
        // the drift dropped for 10 s: 17.5 ms off.)
        if let (false, true, Some(old)) = (changed, self.following, self.line) {
            if line.uncertainty > 4.0 * old.uncertainty
                && (line.slope - old.slope).abs() <= 3.0 * line.uncertainty
            {
                return;
            }
        }
        self.fits = self.fits.wrapping_add(1);
        self.gen += 1;
        self.line = Some(line);
        self.line_inherited = false;
    }

    /// A segment split from `from` (the same sender's clock, its delay
    /// risen or the stream overlapping itself) follows the drift `from`
    /// followed from its first minimum, until fits of its own know better
    /// ([`Envelope::fit`]). Learnt afresh, a 800 ppm sender through a
    /// 100 ms congestion of 3 s was not followed for 12 s after it (the
    /// episode's step in the new segment's minima is no line): 7.5 ms off.
    pub(super) fn inherit_drift(&mut self, from: &Envelope) {
        if let (true, Some(l)) = (from.following, from.line) {
            self.inherited = Some((l.slope, l.uncertainty));
        }
    }

    /// Once a second: after a change of the sender's drift
    /// ([`Envelope::drift_changed`]) the minima from before it are let go
    /// and `line` is fitted again through the rest (true then).
    fn check_drift_change(&mut self, line: &mut Line) -> bool {
        let Some(from) = self.drift_changed(line) else {
            return false;
        };
        while self.buckets.front().is_some_and(|b| b.u < from) {
            if let Some(old) = self.buckets.pop_front() {
                self.cache_forget(old.u.div_euclid(self.bucket_len));
            }
        }
        self.significant_fits = 0;
        if let Some(l) = self.line_over(0, self.buckets.len()) {
            *line = l;
        }
        true
    }

    /// The line through the minima `lo..hi`: its slope from the lowest
    /// minimum of each half (far apart, and each the least delayed of many
    /// packets), its height the lowest that keeps it under every minimum.
    /// How well the slope is known: the spread of the few lowest minima in
    /// each half (how sharply the envelope is pinned) over the distance
    /// between the two.
    fn line_over(&self, lo: usize, hi: usize) -> Option<Line> {
        if hi < lo + 4 {
            return None;
        }
        let all = &self.buckets;
        let (start, span) = (all.get(lo).u, all.get(hi - 1).u - all.get(lo).u);
        if span < (FIT_MIN_MS as f64 * self.ms) as i64 {
            return None;
        }
        let mid = start + span / 2;
        let jitter_typ = self.jitter_typ;
        let ms = self.ms;
        let split = all.partition_point(|b| b.u < mid).clamp(lo, hi);
        let (first, second) = (all.range(lo..split), all.range(split..hi));
        let (h1, h2) = (Half::of(first)?, Half::of(second)?);
        let (p1, p2) = (h1.lowest, h2.lowest);
        let du = (p2.u - p1.u) as f64;
        if du <= 0.0 {
            return None;
        }
        let slope = (p2.d - p1.d) as f64 / du;
        if slope.abs() > DRIFT_MAX {
            return None;
        }
        let pin = (h1.pin_gap + h2.pin_gap) / 2.0;
        // However sharp the pins look, the least of n delays spread over J
        // lies about J/(n+1) above the true floor, give or take as much:
        // the two halves' lowest points are that uncertain (with heavy
        // jitter and few packets, chance must not pass for a drift).
        let floor = jitter_typ.max(self.jitter_hi)
            * (1.0 / (h1.packets + 1.0)).hypot(1.0 / (h2.packets + 1.0));
        let u0 = p1.u;
        // The line's height (the lowest that keeps it under every minimum)
        // and, in the same pass, the lowest minimum of every quarter of the
        // range relative to the line. A drift is a straight line: each
        // quarter's lowest lies on it. A step in the delay (a route change)
        // makes the halves' lowest points tilt a line too, but leaves a
        // quarter well above it: not a drift.
        let quarter = (span / 4).max(1);
        let mut next = start + quarter;
        let mut q = 0usize;
        let mut lo_q = [f64::INFINITY; 4];
        let mut d0 = f64::INFINITY;
        for b in all.range(lo..hi) {
            let r = b.d as f64 - slope * (b.u - u0) as f64;
            d0 = d0.min(r);
            // The buckets are sorted: quarters are crossed in order.
            while q < 4 && b.u >= next {
                q += 1;
                next += quarter;
            }
            if let Some(lo) = lo_q.get_mut(q) {
                *lo = lo.min(r);
            }
        }
        let linear = !lo_q
            .iter()
            .any(|lo| lo.is_finite() && lo - d0 > 1.0 + 2.0 * pin + jitter_typ / 8.0);
        // Where the least delays pile up against a floor, each quarter's
        // lowest lies on the line, within J/(n+1) of its packets. Where they
        // do not (a queue whose depth wanders for seconds, normally
        // distributed jitter: the least delay of each stretch moves by
        // chance), the quarters' lowest scatter about it, and the halves'
        // lowest points are as uncertain as that scatter beyond chance.
        let per_quarter = (h1.packets + h2.packets) / 4.0 + 1.0;
        let scatter = lo_q
            .iter()
            .filter(|lo| lo.is_finite())
            .map(|lo| lo - d0 - 3.0 * floor.max(jitter_typ / per_quarter))
            .fold(0.0, f64::max);
        let uncertainty = ((pin.max(floor).max(scatter) + 0.05 * ms) / du).max(C_MIN);
        Some(Line {
            u0,
            d0,
            slope,
            uncertainty,
            linear,
        })
    }

    /// Whether the sender's drift changed: the newest 2, 4, 8 or 16 s of
    /// minima lie along a line of their own whose slope differs from the
    /// line through the minima before them by at least [`DRIFT_ON`] and
    /// three times its uncertainty, and which at the newest minimum lies
    /// further from that older line's extension than the hysteresis and the
    /// extension's own uncertainty, twice in a row (at once on a clean
    /// link). Then the minima from before them are let go (returned: from
    /// where to keep): the window's halves straddling the change would take
    /// the old slope for tens of seconds, and the window minimum of a rising
    /// floor lags it by [`FLAT_WINDOW_MS`] (a call handed from an IVR on a
    /// server's clock to an ATA 1,000 ppm off behind an SBC that keeps the
    /// SSRC and timestamps: 12 ms off before the first correction). A step
    /// in the delay is no line (a congestion, a route change).
    fn drift_changed(&mut self, line: &Line) -> Option<i64> {
        let (front, back) = (self.buckets.front()?.u, self.buckets.back()?.u);
        let n = self.buckets.len();
        let mut found = None;
        for secs in [2, 4, 8, 16] {
            let from = back - (secs as f64 * 1000.0 * self.ms) as i64;
            if from <= front {
                break;
            }
            let lo = self.buckets.partition_point(|b| b.u < from);
            // The newest minima first (few, and most often along the whole
            // window's line: then the older ones need no line of their own).
            let Some(recent) = self.line_over(lo, n) else {
                continue;
            };
            if !recent.linear || (recent.slope - line.slope).abs() <= 2.0 * recent.uncertainty {
                continue;
            }
            let Some(older) = self.line_over(0, lo) else {
                continue;
            };
            let diff = (recent.slope - older.slope).abs();
            let apart = (recent.at(back) - older.at(back)).abs();
            let reach = 3.0 * older.uncertainty * (back - older.u0) as f64;
            if diff >= DRIFT_ON
                && diff > 3.0 * recent.uncertainty
                && apart > self.hysteresis() + reach
            {
                found = Some(from);
                break;
            }
        }
        if found.is_none() {
            self.changed_checks = 0;
            return None;
        }
        self.changed_checks += 1;
        if self.clean() || self.changed_checks >= 2 {
            self.changed_checks = 0;
            return found;
        }
        None
    }

    /// The envelope's value at bucket `i`'s point before a line is fitted:
    /// the smallest `d + c·|Δu|` over the minima around it.
    pub(super) fn cone_at_bucket(&self, i: usize) -> f64 {
        let b = self.buckets.get(i);
        let lo = i.saturating_sub(NEAR_BUCKETS as usize);
        let hi = (i + NEAR_BUCKETS as usize + 1).min(self.buckets.len());
        let mut best = b.d as f64;
        for o in self.buckets.range(lo..hi) {
            let du = (b.u - o.u) as f64;
            best = best.min(o.d as f64 + C_MAX * du.abs());
        }
        best
    }

    /// The minima of the buckets within [`FLAT_WINDOW_MS`] of bucket `idx`
    /// (the buckets are sorted).
    pub(super) fn near(&self, idx: i64) -> impl Iterator<Item = Bucket> + '_ {
        // By position: a bucket's number is below `k` iff its `u` is below
        // bucket `k`'s first sample.
        let len = self.bucket_len;
        let lo = self
            .buckets
            .partition_point(|b| b.u < (idx - NEAR_WINDOW) * len);
        let hi = self
            .buckets
            .partition_point(|b| b.u < (idx + NEAR_WINDOW + 1) * len);
        self.buckets.range(lo..hi.max(lo))
    }

    /// A new or lowered minimum `b`: the cached window minima around it
    /// take it in.
    pub(super) fn cache_offer(&self, b: Bucket) {
        for slot in &self.cache {
            let mut c = slot.get();
            if c.valid && (c.idx - b.u.div_euclid(self.bucket_len)).abs() <= NEAR_WINDOW {
                let v = match (c.following, self.line) {
                    (false, _) => b.d as f64,
                    (true, Some(l)) => b.d as f64 - l.at(b.u),
                    (true, None) => f64::NEG_INFINITY,
                };
                c.v = c.v.min(v);
                c.valid = v.is_finite();
                slot.set(c);
            }
        }
    }

    /// Minimum `idx` left the window: the cached minima around it are void.
    pub(super) fn cache_forget(&self, idx: i64) {
        for slot in &self.cache {
            let c = slot.get();
            if (c.idx - idx).abs() <= NEAR_WINDOW {
                slot.set(Cached::NONE);
            }
        }
    }

    /// The envelope's value at `u` (samples of offset): the fitted line while
    /// the sender's drift is followed; else, once the minima span
    /// [`FIT_SPAN_MS`], the lowest minimum of the window (a flat envelope:
    /// more data only lowers it, so it never swings back); before that, the
    /// cone estimate interpolated between the minima around `u`.
    pub(super) fn at(&self, u: i64) -> Option<f64> {
        let idx = u.div_euclid(self.bucket_len);
        let slot = &self.cache[(idx & 1) as usize];
        let cached = |following: bool| {
            let c = slot.get();
            let current = c.valid && c.idx == idx && c.following == following;
            (current && (!following || c.gen == self.gen)).then_some(c.v)
        };
        let keep = |following: bool, v: f64| {
            slot.set(Cached {
                valid: true,
                gen: self.gen,
                idx,
                following,
                v,
            })
        };
        if let (Some(l), true) = (self.line, self.following) {
            // The line's slope, its height from the minima near `u` (a small
            // slope error has no lever arm over the whole window).
            let lift = cached(true).unwrap_or_else(|| {
                match self
                    .near(idx)
                    .map(|b| b.d as f64 - l.at(b.u))
                    .reduce(f64::min)
                {
                    Some(v) => {
                        keep(true, v);
                        v
                    }
                    None => 0.0,
                }
            });
            return Some(l.at(u) + lift);
        }
        let n = self.buckets.len();
        if n == 0 {
            return None;
        }
        if self.span() >= (FIT_SPAN_MS as f64 * self.ms) as i64 {
            // The last FLAT_WINDOW_MS only: a drift too small to follow
            // must not leave the minimum behind by the whole window's worth.
            if let Some(v) = cached(false) {
                return Some(v);
            }
            if let Some(v) = self.near(idx).map(|b| b.d as f64).reduce(f64::min) {
                keep(false, v);
                return Some(v);
            }
            // No minimum near `u`: the window's lowest (not cached).
            return self.buckets.iter().map(|b| b.d as f64).reduce(f64::min);
        }
        let i = self.buckets.partition_point(|b| b.u <= u);
        if i == 0 {
            return Some(self.cone_at_bucket(0));
        }
        if i == n {
            return Some(self.cone_at_bucket(n - 1));
        }
        let (a, b) = (self.buckets.get(i - 1), self.buckets.get(i));
        let (ea, eb) = (self.cone_at_bucket(i - 1), self.cone_at_bucket(i));
        let f = (u - a.u) as f64 / ((b.u - a.u) as f64).max(1.0);
        Some(ea + (eb - ea) * f)
    }

    /// Where the leg's audio is placed at `u`: [`Envelope::at`], but where
    /// the delays have no hard floor ([`Envelope::soft`]), a low quantile of
    /// the minima around `u` instead of the least: the least of a window
    /// moves by chance, and the leg would with it.
    pub(super) fn target(&self, u: i64) -> Option<f64> {
        if !self.soft {
            return self.at(u);
        }
        let idx = u.div_euclid(self.bucket_len);
        let (gen, version, at, v) = self.target_cache.get();
        if (gen, version, at) == (self.gen, self.version, idx) {
            return Some(v);
        }
        let line = self.line.filter(|_| self.following);
        let mut vals = [0.0f64; MAX_BUCKETS];
        let mut m = 0;
        let tilted = !self.following
            && self.line.is_some_and(|l| {
                l.slope.abs() > (self.soft_spread / (self.span() / 2).max(1) as f64).max(DRIFT_ON)
            });
        let w = if tilted { NEAR_WINDOW } else { 2 * NEAR_WINDOW };
        let (lo, hi) = (idx - w, idx + w);
        for b in self
            .buckets
            .iter()
            .filter(|b| (lo..=hi).contains(&b.u.div_euclid(self.bucket_len)))
        {
            if b.n >= SOFT_MIN_PACKETS && m < vals.len() {
                vals[m] = b.d as f64 - line.map_or(0.0, |l| l.at(b.u));
                m += 1;
            }
        }
        if m < 4 {
            return self.at(u);
        }
        let v = quantile(&mut vals[..m], SOFT_QUANTILE) + line.map_or(0.0, |l| l.at(u));
        self.target_cache.set((self.gen, self.version, idx, v));
        Some(v)
    }

    /// How far the typical packet's delay lies above the placement
    /// ([`Envelope::target`]) at the newest minimum, on a soft floor whose
    /// packets are known well enough (0 otherwise): the running median of
    /// the residuals over the least delay, less the target's height over it.
    pub(super) fn median_gap(&self) -> f64 {
        let Some(u) = self.buckets.back().map(|b| b.u) else {
            return 0.0;
        };
        if !self.soft || self.residuals < 200 {
            return 0.0;
        }
        match (self.at(u), self.target(u)) {
            (Some(at), Some(t)) => (at + self.jitter_typ / 2.0 - t).max(0.0),
            _ => 0.0,
        }
    }

    /// The minima kept with at least [`SOFT_MIN_PACKETS`] packets each,
    /// relative to `line` if any, sorted into `out`; how many.
    fn sorted_minima(&self, line: Option<Line>, out: &mut [f64; MAX_BUCKETS]) -> usize {
        let mut m = 0;
        for b in self.buckets.iter() {
            if b.n >= SOFT_MIN_PACKETS && m < out.len() {
                out[m] = b.d as f64 - line.map_or(0.0, |l| l.at(b.u));
                m += 1;
            }
        }
        out[..m].sort_unstable_by(f64::total_cmp);
        m
    }

    /// [`Envelope::soft`] and [`Envelope::soft_spread`] from the minima
    /// kept, once 20 s of them have enough packets each and no drift is
    /// followed: where the least delays pile up against a floor, the
    /// lowest tenth of the minima lies much closer to the lowest than to
    /// the median (a uniform or exponential delay: about 0.18 of the way);
    /// where they thin out towards it (normally distributed jitter), about
    /// 1.1 of it.
    fn update_soft(&mut self) {
        // A clean link's minima spread under a millisecond: a hard floor,
        // told without sorting them (most legs, every 2.5 s).
        if self.clean() {
            if self.soft {
                self.soft = false;
                self.gen += 1;
            }
            return;
        }
        let mut vals = [0.0f64; MAX_BUCKETS];
        let m = self.sorted_minima(self.line.filter(|_| self.following), &mut vals);
        if m < 12 {
            return;
        }
        let (lo, q10, q50) = (vals[0], vals[m / 10], vals[m / 2]);
        // The spread about the line, followed or not: a drift not (yet)
        // followed is no spread of the delays.
        self.soft_spread = if let (Some(l), false) = (self.line, self.following) {
            let mut rel = [0.0f64; MAX_BUCKETS];
            let k = self.sorted_minima(Some(l), &mut rel);
            rel[k / 2] - rel[k / 10]
        } else {
            q50 - q10
        };
        // Fewer than 20 s of minima cannot tell the shapes apart (the
        // first segment was told by its first packets), nor can minima
        // relative to a line: a slope off by a little, or a drift that
        // changed, spreads them as the lack of a floor does.
        if m < 80 || self.following {
            return;
        }
        let was = self.soft;
        let t = (q10 - lo) / (q50 - q10).max(1e-9);
        // Only clear shapes change what the first packets told: simulated,
        // a uniform delay's 80 minima never lay above 0.8 in 5,000
        // windows, a normal one's below 0.2 in 4 of 10,000.
        if q50 - lo < SOFT_SPREAD_MS * self.ms || t < 0.2 {
            self.soft = false;
        } else if t > 0.8 {
            self.soft = true;
        }
        if self.soft != was {
            self.gen += 1;
        }
    }

    /// Whether the line's slope is known well enough to start following it,
    /// or (while followed) still clearly more than noise.
    pub(super) fn slope_significant(&self, l: &Line) -> bool {
        // An inherited line's uncertainty is its own fits' (over their span).
        let unc = if self.line_inherited {
            l.uncertainty
        } else {
            l.uncertainty
                .max(0.25 * self.ms / self.span().max(1) as f64)
        };
        // Without a hard floor, each half's lowest minimum is as uncertain
        // as the minima's spread ([`Envelope::soft_spread`]): chance tilts
        // the line by that much over half the span.
        let unc = if self.soft {
            unc.max(self.soft_spread / (self.span() / 2).max(1) as f64)
        } else {
            unc
        };
        if self.following {
            l.slope.abs() > unc && l.slope.abs() >= DRIFT_ON / 2.0
        } else if !l.linear {
            false
        } else {
            // A clean link (its lowest minima within a sample) is trusted
            // from FIT_MIN_MS, a jittery one from FIT_SPAN_MS.
            let need = if self.clean() {
                FIT_MIN_MS
            } else {
                FIT_SPAN_MS
            };
            self.span() >= (need as f64 * self.ms) as i64
                && l.slope.abs() >= DRIFT_ON
                && l.slope.abs() > 3.0 * unc
        }
    }

    /// A link without jitter to speak of (typically under 1 ms, over 50
    /// packets at least): its envelope is exact, its slope trusted early.
    pub(super) fn clean(&self) -> bool {
        self.residuals >= 50 && self.jitter_typ <= self.ms
    }

    /// Decide whether the sender's drift is followed; its slope if so.
    pub(super) fn update_drift(&mut self) -> Option<f64> {
        let l = self.line?;
        let was = self.following;
        if self.following {
            self.following = self.slope_significant(&l);
        } else if self.seen_fits == self.fits {
            // No new fit since the last look.
        } else if self.slope_significant(&l) {
            // Chance can make a jittery envelope look tilted for a moment;
            // real drift stays significant: 8 more significant fits than
            // not (2 s at least; a clean link's envelope is exact: at once).
            self.significant_fits += 1;
            self.following = self.clean() || self.significant_fits >= 8;
        } else {
            self.significant_fits = self.significant_fits.saturating_sub(1);
        }
        self.seen_fits = self.fits;
        if self.following != was {
            self.gen += 1;
        }
        self.following.then_some(l.slope)
    }

    /// Offset errors smaller than this are left alone: the estimate itself
    /// wanders by about an eighth of the jitter, and a correction is a lag
    /// change (however quiet its place), so it is made only when it matters.
    pub(super) fn hysteresis(&self) -> f64 {
        let h =
            (self.jitter_typ / 8.0).clamp(HYSTERESIS_MS * self.ms, 3.0 * HYSTERESIS_MS * self.ms);
        if self.soft {
            h.max(SOFT_HYSTERESIS * self.soft_spread)
        } else {
            h
        }
    }

    /// How far a new stream's first place may lie from where the previous
    /// one's audio ends and still be taken to continue it: the
    /// hysteresis; for a new stream on a soft leg, placed by its first
    /// packets' median ([`Envelope::soft_gap`], uncertain by about the
    /// minima's spread), at least that spread.
    pub(super) fn seam_tolerance(&self) -> f64 {
        if self.soft && self.soft_gap > 0.0 {
            self.hysteresis().max(self.soft_spread)
        } else {
            self.hysteresis()
        }
    }

    /// How much later than where the previous stream's audio ends a new
    /// stream's first place may lie, beyond the seam tolerance, and still
    /// be taken to go on from there: on a hard floor, until its minima
    /// span [`FIT_SPAN_MS`], three times how far the least of its packets
    /// lies above its floor on average through the path's jitter
    /// (`path_jitter`, the previous stream's typical jitter), at most
    /// [`MAX_SEAM_SLACK_MS`]. Its place is the least delay of the packets
    /// the hold-back window gave it (about 25): through 60 ms of jitter
    /// 2.3 ms above the floor on average, more than 3 ms one stream in
    /// four, and a new SSRC mid-talk through 60 ms of jitter was placed
    /// 4-6 ms late for 2.5-4.5 s (3 streams of 16), until its envelope
    /// settled. A stream that does lie later is moved there once it has.
    pub(super) fn seam_slack(&self, path_jitter: f64) -> f64 {
        if self.soft || self.span() >= (FIT_SPAN_MS as f64 * self.ms) as i64 {
            return 0.0;
        }
        let n: f64 = self.buckets.iter().map(|b| f64::from(b.n)).sum();
        (3.0 * path_jitter / (n + 1.0)).min(MAX_SEAM_SLACK_MS * self.ms)
    }

    /// The sender's drift, when it is known well and large enough to follow.
    pub(super) fn note_residual(&mut self, r: f64) {
        // Decays by half in about 10 s of packets (20 ms each).
        let r = r.max(0.0);
        self.jitter = (self.jitter * 0.9986).max(r);
        // Running median (a step of 1/16 ms towards each residual; exact
        // enough, and a few very late packets do not move it).
        self.residuals = self.residuals.saturating_add(1);
        let median = self.jitter_typ / 2.0;
        let step = self.ms / 16.0 * if self.residuals < 64 { 8.0 } else { 1.0 };
        let median = if r > median {
            (median + step).min(r)
        } else {
            (median - step).max(r)
        };
        self.jitter_typ = 2.0 * median;
        let s = self.ms;
        self.jitter_hi = if r > self.jitter_hi {
            self.jitter_hi + 0.95 * s
        } else {
            (self.jitter_hi - 0.05 * s).max(0.0)
        };
    }

    /// Residual beyond which a packet is a break candidate.
    pub(super) fn break_limit(&self) -> f64 {
        (BREAK_MS as f64 * self.ms).max(1.5 * self.jitter)
    }
}

/// What a fit needs of each half of the window, in one pass.
struct Half {
    /// The bucket with the smallest `d` (the first of equals).
    lowest: Bucket,
    /// How sharply the lowest minimum pins the envelope: how far the next
    /// lowest lies above it (about the spread of the least delays; 0 with
    /// one).
    pin_gap: f64,
    /// Packets that fell in the half's buckets.
    packets: f64,
}

impl Half {
    fn of(mut b: impl Iterator<Item = Bucket>) -> Option<Half> {
        let first = b.next()?;
        let mut lowest = first;
        let mut second = i64::MAX;
        let mut packets = f64::from(first.n);
        for x in b {
            packets += f64::from(x.n);
            if x.d < lowest.d {
                second = lowest.d;
                lowest = x;
            } else if x.d < second {
                second = x.d;
            }
        }
        let pin_gap = if second == i64::MAX {
            0.0
        } else {
            (second - lowest.d) as f64
        };
        Some(Half {
            lowest,
            pin_gap,
            packets,
        })
    }
}
