//! Leg timeline: where one leg's audio belongs on the call's timeline, and that
//! leg's contiguous PCM for any stretch of it.
//!
//! In: every decoded packet of the leg ([`LegTimeline::insert`]) with its
//! arrival position on the capture clock (output samples since the call's time
//! zero), SSRC, RTP timestamp and clock rate, and whether its sequence number
//! is the newest so far. Out: [`LegTimeline::render`] hands out the leg's PCM
//! for consecutive stretches of the timeline, once, in order.
//!
//! # The model
//!
//! For every packet, `d = arrival - u` (arrival position minus the sender's
//! sample position `u`, from the RTP timestamp) is the sender's clock offset
//! plus the network delay of that packet. Network delay is never negative:
//! jitter only ever *adds* to it. So the sender's true offset is the **lower
//! envelope** of `d`: the packets the network delayed least say where the
//! audio belongs; every other packet is merely late and finds its place by
//! its timestamp. The envelope is estimated from the minima of `d` per quarter
//! second ([`Envelope`]):
//!
//! - its **slope** is the drift of the sender's clock against the capture
//!   clock, fitted on up to 40 s of minima (the lower convex hull edge under
//!   their centroid: the line under every point that is closest to them,
//!   Moon/Skelly/Towsley's estimator) once they span 10 s;
//! - its **value** at `u` is the smallest `d_b + slope·(u - u_b) + c·|u - u_b|`
//!   over the minima of the 8 s around `u`, where `c` is what the slope may
//!   still be wrong by. This is the tightest upper bound of the true offset
//!   that the points allow, and it uses the packets *after* `u` too: audio is
//!   only rendered a hold-back window after it arrived, so a first packet that
//!   was itself late is known to be late before anything is written.
//!
//! # Rendering: corrections that cannot be heard
//!
//! The leg's samples go out at `pos = u + a`, `a` the applied offset. While `a`
//! is a whole number and the sender's clock does not drift, samples are copied
//! bit for bit. `a` follows the envelope:
//!
//! - a sender clock that drifts by 100 ppm or more is followed continuously:
//!   the leg is resampled at the drift rate (8-tap windowed-sinc interpolation),
//!   so there is no step at all;
//! - a remaining difference of more than [`HYSTERESIS_MS`] between `a` and the
//!   envelope is taken up where the leg is silent (a gap between talkspurts,
//!   loss, hold) when such a gap comes within 200 ms; otherwise it is spread
//!   over the audio at 1 sample in 256 (0.4 % speed, inaudible) by the same
//!   interpolation. No block of samples is ever dropped or repeated in speech.
//!
//! # Segments: when arrival and timestamps really disagree
//!
//! A leg is a sequence of segments, each with its own envelope: a new SSRC or
//! clock rate starts one, and so does a packet whose residual `d - envelope`
//! says the timestamps no longer describe the timing:
//!
//! - more than the hold-back window late, on the newest sequence number: the
//!   sender paused without advancing its timestamps (hold), or restarted them.
//!   Such a packet could not be placed by its timestamp anyway (its place is
//!   already written): a new segment starts with it;
//! - more than [`BREAK_MS`] (or 1.5 times the jitter seen) late: a candidate.
//!   It is confirmed when no later packet of the leg fits the old envelope for
//!   [`CONFIRM_MS`]; one that does shows it was jitter. Rendering waits at the
//!   candidate until it is decided (at most the hold-back window);
//! - more than [`BREAK_MS`] early, once the leg is being rendered: the
//!   timestamps jumped further than the real pause. Confirmed by the packets
//!   after it (all early too), otherwise dropped as a stray.
//!
//! A new segment starts at its own envelope's place; if that overlaps the end
//! of the previous segment by up to 60 ms it starts after it instead (and the
//! difference is taken up as above), so no audio of either is cut.
//!
//! Everything is in output samples; nothing here reads a clock.

use std::collections::VecDeque;

/// Residual beyond which a packet is a candidate segment break.
pub const BREAK_MS: i64 = 30;
/// How long a late candidate must stay unexplained by jitter.
pub const CONFIRM_MS: i64 = 300;
/// Smallest offset error that is corrected.
pub const HYSTERESIS_MS: f64 = 1.0;
/// Drift that is followed by continuous resampling (below: by corrections,
/// one per hysteresis' worth, which keeps such legs bit-exact between them).
const DRIFT_ON: f64 = 50e-6;
/// Speed of a correction spread over audio: 1 sample in 256.
const SLEW: f64 = 1.0 / 256.0;
/// A correction at least this large is a step taken at once, not spread.
const MAX_SPREAD_MS: i64 = 20;
/// A due correction waits this long for a quiet place before it is spread.
const SLEW_AFTER_MS: i64 = 2000;
/// Samples at or below this level count as quiet (-48 dBFS).
const QUIET_LEVEL: u16 = 128;
/// Quiet audio needed around a correction, beyond twice its size.
const QUIET_MARGIN_MS: i64 = 4;
/// Overlap of consecutive segments resolved by starting the later one later.
const MAX_OVERLAP_MS: i64 = 60;
/// Envelope buckets: 250 ms each, 40 s kept, ±8 s used for the value.
const BUCKETS_PER_S: i64 = 4;
const MAX_BUCKETS: usize = 160;
const NEAR_BUCKETS: i64 = 32;
/// Slope uncertainty before the slope is known, and its floor.
const C_MAX: f64 = 1.5e-3;
const C_MIN: f64 = 5e-6;
/// The envelope's line is fitted once its minima span this long.
const FIT_SPAN_MS: i64 = 3000;
/// Without a followed drift, the envelope is the least delay within this
/// much of the place asked about.
const FLAT_WINDOW_MS: i64 = 10_000;
/// A line is fitted from this span on, and used before [`FIT_SPAN_MS`] only
/// if its slope is already significant (a clean link that drifts).
const FIT_MIN_MS: i64 = 1000;
/// Largest drift believed (beyond: the fit is not used).
const DRIFT_MAX: f64 = 5e-3;

/// One packet for [`LegTimeline::insert`].
#[derive(Debug, Clone, Copy)]
pub struct Packet<'a> {
    /// Arrival on the timeline (output samples since time zero).
    pub arrival: i64,
    pub ssrc: u32,
    pub ts: u32,
    /// RTP clock rate of the payload.
    pub clock_rate: u32,
    /// Whether its sequence number is the highest of its SSRC so far.
    pub newest: bool,
    /// Decoder delay (output samples) to take off the position.
    pub delay: i64,
    /// Decoded PCM at the output rate; empty for packets that only carry
    /// timing (comfort noise).
    pub pcm: &'a [i16],
}

/// What the timeline did, for the recording's JSON and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TimelineStats {
    /// Segments after the first (SSRC changes, confirmed breaks).
    pub breaks: u32,
    /// Packets that came after their place was written (dropped).
    pub late: u64,
    /// Early stray packets dropped (timestamp far ahead, not confirmed).
    pub strays: u64,
    /// Offset corrections made (in gaps or spread over audio).
    pub corrections: u32,
    /// Total size of those corrections, in samples.
    pub corrected_samples: u64,
    /// Sender clock drift followed by resampling, in ppm (last value).
    pub drift_ppm: i32,
    /// Audio samples cut because they overlapped a later segment or fell
    /// before time zero.
    pub cut_samples: u64,
    /// Samples rendered by interpolation (drift followed, corrections
    /// spread); every other sample is the decoded one, bit for bit.
    pub resampled_samples: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flag {
    Normal,
    /// Later than the envelope by more than the break threshold.
    Late,
    /// Earlier than the envelope by more than the break threshold.
    Early,
}

#[derive(Debug)]
struct Chunk {
    /// Source position of the first PCM sample.
    u: i64,
    /// Source position the RTP timestamp names (`u` + decoder delay).
    uts: i64,
    /// Arrival minus `uts`.
    d: i64,
    arrival: i64,
    flag: Flag,
    pcm: Vec<i16>,
}

impl Chunk {
    fn end(&self) -> i64 {
        self.u + self.pcm.len() as i64
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    idx: i64,
    u: i64,
    d: i64,
    /// Packets that fell in the bucket (how many the minimum is the least of).
    n: u32,
}

/// A line `d = d0 + slope·(u - u0)`.
#[derive(Debug, Clone, Copy)]
struct Line {
    u0: i64,
    d0: f64,
    slope: f64,
    /// How far the slope may be off (per sample).
    uncertainty: f64,
    /// Whether the minima lie along it (a drift), not beside it (a step).
    linear: bool,
}

impl Line {
    fn at(&self, u: i64) -> f64 {
        self.d0 + self.slope * (u - self.u0) as f64
    }
}

/// Buckets either side of a bucket in its window ([`FLAT_WINDOW_MS`]).
const NEAR_WINDOW: i64 = FLAT_WINDOW_MS * BUCKETS_PER_S / 1000;

/// A window minimum remembered by [`Envelope::at`].
#[derive(Debug, Clone, Copy)]
struct Cached {
    valid: bool,
    /// [`Envelope::gen`] when computed (the line it is relative to).
    gen: u64,
    /// The bucket of the `u` asked for.
    idx: i64,
    following: bool,
    v: f64,
}

impl Cached {
    const NONE: Cached = Cached {
        valid: false,
        gen: 0,
        idx: 0,
        following: false,
        v: 0.0,
    };
}

/// Lower envelope of `d = arrival - u` for one segment.
#[derive(Debug, Clone)]
struct Envelope {
    bucket_len: i64,
    ms: f64,
    buckets: VecDeque<Bucket>,
    /// The fitted envelope, once the minima span [`FIT_SPAN_MS`].
    line: Option<Line>,
    /// Largest residual of normal packets lately (decays): the worst
    /// jitter seen, for telling breaks from jitter.
    jitter: f64,
    /// Twice the running median residual: the typical jitter (a uniform
    /// delay of 0..J gives J), not moved by a few very late packets.
    jitter_typ: f64,
    residuals: u32,
    /// Whether the segment follows the line's slope (by resampling).
    following: bool,
    /// Fits in a row whose slope was significant (before following).
    significant_fits: u32,
    /// The fit counter when `update_drift` last looked.
    fits: u32,
    seen_fits: u32,
    /// Bumped whenever the line or `following` change.
    gen: u64,
    /// The window minima last computed, one slot for even and one for odd
    /// buckets (the newest packet and the render point are often in
    /// neighbouring buckets). Every packet asks for the envelope; a new or
    /// lowered minimum updates them, so they are computed again only when
    /// the line changes or a minimum leaves the window.
    cache: [std::cell::Cell<Cached>; 2],
}

impl Envelope {
    fn new(rate: u32) -> Self {
        Envelope {
            bucket_len: (i64::from(rate) / BUCKETS_PER_S).max(1),
            ms: f64::from(rate) / 1000.0,
            buckets: VecDeque::new(),
            line: None,
            jitter: 0.0,
            jitter_typ: 0.0,
            residuals: 0,
            following: false,
            significant_fits: 0,
            fits: 0,
            seen_fits: 0,
            gen: 1,
            cache: [const { std::cell::Cell::new(Cached::NONE) }; 2],
        }
    }

    fn add(&mut self, u: i64, d: i64) {
        let idx = u.div_euclid(self.bucket_len);
        let mut refit = false;
        let mut changed = true;
        match self.buckets.back() {
            None => self.buckets.push_back(Bucket { idx, u, d, n: 1 }),
            Some(last) if idx > last.idx => {
                self.buckets.push_back(Bucket { idx, u, d, n: 1 });
                if self.buckets.len() > MAX_BUCKETS {
                    if let Some(old) = self.buckets.pop_front() {
                        self.cache_forget(old.idx);
                    }
                }
                refit = true;
            }
            Some(_) => {
                if let Some(b) = self.buckets.iter_mut().rev().find(|b| b.idx == idx) {
                    b.n = b.n.saturating_add(1);
                    if d < b.d {
                        b.u = u;
                        b.d = d;
                    } else {
                        changed = false;
                    }
                } else if self.buckets.front().is_some_and(|f| idx > f.idx) {
                    let at = self.buckets.partition_point(|b| b.idx < idx);
                    self.buckets.insert(at, Bucket { idx, u, d, n: 1 });
                } else {
                    changed = false;
                }
            }
        }
        if changed {
            self.cache_offer(Bucket { idx, u, d, n: 1 });
        }
        // A point under the fitted line is news now, not at the next bucket.
        if refit || self.line.is_some_and(|l| (d as f64) < l.at(u) - 0.5) {
            self.fit();
        }
    }

    fn span(&self) -> i64 {
        match (self.buckets.front(), self.buckets.back()) {
            (Some(a), Some(b)) => b.u - a.u,
            _ => 0,
        }
    }

    /// The envelope line: its slope from the lowest minimum of each half of
    /// the window (far apart, and each the least delayed of many packets),
    /// its height the lowest that keeps it under every minimum. How well the
    /// slope is known: the spread of the few lowest minima in each half (how
    /// sharply the envelope is pinned) over the distance between the two.
    fn fit(&mut self) {
        let span = self.span();
        if span < (FIT_MIN_MS as f64 * self.ms) as i64 || self.buckets.len() < 4 {
            return;
        }
        let mid = self.buckets[0].u + span / 2;
        let jitter_typ = self.jitter_typ;
        let ms = self.ms;
        let all: &[Bucket] = self.buckets.make_contiguous();
        let split = all.partition_point(|b| b.u < mid);
        let (first, second) = all.split_at(split);
        let (Some(p1), Some(p2)) = (lowest(first), lowest(second)) else {
            return;
        };
        let du = (p2.u - p1.u) as f64;
        if du <= 0.0 {
            return;
        }
        let slope = (p2.d - p1.d) as f64 / du;
        if slope.abs() > DRIFT_MAX {
            return;
        }
        let pin = (pin_gap(first) + pin_gap(second)) / 2.0;
        // However sharp the pins look, the least of n delays spread over J
        // lies about J/(n+1) above the true floor, give or take as much:
        // the two halves' lowest points are that uncertain (with heavy
        // jitter and few packets, chance must not pass for a drift).
        let packets = |h: &[Bucket]| h.iter().map(|b| f64::from(b.n)).sum::<f64>();
        let floor = jitter_typ.max(self.jitter)
            * (1.0 / (packets(first) + 1.0)).hypot(1.0 / (packets(second) + 1.0));
        let uncertainty = ((pin.max(floor) + 0.05 * ms) / du).max(C_MIN);
        let u0 = p1.u;
        let d0 = all
            .iter()
            .map(|b| b.d as f64 - slope * (b.u - u0) as f64)
            .fold(f64::INFINITY, f64::min);
        // A drift is a straight line: the lowest minimum of every quarter of
        // the window lies on it. A step in the delay (a route change) makes
        // the halves' lowest points tilt a line too, but leaves a quarter
        // well above it: not a drift.
        let quarter = (span / 4).max(1);
        let start = all[0].u;
        let mut lo_q = [f64::INFINITY; 4];
        for b in all {
            if let Some(lo) = lo_q.get_mut(((b.u - start) / quarter) as usize) {
                *lo = lo.min(b.d as f64 - (d0 + slope * (b.u - u0) as f64));
            }
        }
        let linear = !lo_q
            .iter()
            .any(|lo| lo.is_finite() && *lo > 1.0 + 2.0 * pin + jitter_typ / 8.0);
        self.fits = self.fits.wrapping_add(1);
        self.gen += 1;
        self.line = Some(Line {
            u0,
            d0,
            slope,
            uncertainty,
            linear,
        });
    }

    /// The envelope's value at bucket `i`'s point before a line is fitted:
    /// the smallest `d + c·|Δu|` over the minima around it.
    fn cone_at_bucket(&self, i: usize) -> f64 {
        let b = self.buckets[i];
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
    fn near(&self, idx: i64) -> impl Iterator<Item = &Bucket> {
        let lo = self.buckets.partition_point(|b| b.idx < idx - NEAR_WINDOW);
        let hi = self.buckets.partition_point(|b| b.idx <= idx + NEAR_WINDOW);
        self.buckets.range(lo..hi.max(lo))
    }

    /// A new or lowered minimum `b`: the cached window minima around it
    /// take it in.
    fn cache_offer(&self, b: Bucket) {
        for slot in &self.cache {
            let mut c = slot.get();
            if c.valid && (c.idx - b.idx).abs() <= NEAR_WINDOW {
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
    fn cache_forget(&self, idx: i64) {
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
    fn at(&self, u: i64) -> Option<f64> {
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
        let (a, b) = (self.buckets[i - 1], self.buckets[i]);
        let (ea, eb) = (self.cone_at_bucket(i - 1), self.cone_at_bucket(i));
        let f = (u - a.u) as f64 / ((b.u - a.u) as f64).max(1.0);
        Some(ea + (eb - ea) * f)
    }

    /// Whether the line's slope is known well enough to start following it,
    /// or (while followed) still clearly more than noise.
    fn slope_significant(&self, l: &Line) -> bool {
        let unc = l
            .uncertainty
            .max(0.25 * self.ms / self.span().max(1) as f64);
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
    fn clean(&self) -> bool {
        self.residuals >= 50 && self.jitter_typ <= self.ms
    }

    /// Decide whether the sender's drift is followed; its slope if so.
    fn update_drift(&mut self) -> Option<f64> {
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
    fn hysteresis(&self) -> f64 {
        (self.jitter_typ / 8.0).clamp(HYSTERESIS_MS * self.ms, 3.0 * HYSTERESIS_MS * self.ms)
    }

    /// The sender's drift, when it is known well and large enough to follow.
    fn note_residual(&mut self, r: f64) {
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
    }

    /// Residual beyond which a packet is a break candidate.
    fn break_limit(&self) -> f64 {
        (BREAK_MS as f64 * self.ms).max(1.5 * self.jitter)
    }
}

/// One stretch of a leg whose RTP timestamps run on one clock.
#[derive(Debug)]
struct Segment {
    ssrc: u32,
    clock_rate: u32,
    last_ts: u32,
    last_ext: i64,
    env: Envelope,
    chunks: VecDeque<Chunk>,
    /// Whether rendering has reached this segment.
    started: bool,
    /// Applied offset: source sample `u` goes out at `u + a`.
    a: f64,
    /// Correction still to spread (signed samples).
    slew_left: f64,
    /// Followed drift (offset change per output sample).
    drift: f64,
    /// A correction waiting for a quiet place.
    pending: f64,
    pending_since: i64,
    /// The pending correction is made even if it shrinks below the
    /// hysteresis (the one when drift following starts).
    pending_forced: bool,
    /// Newest arrival seen on this segment.
    newest_arrival: i64,
    /// One past the last source sample ever queued (chunks go as rendered).
    max_end: Option<i64>,
}

impl Segment {
    fn new(rate: u32, ssrc: u32, ts: u32, clock_rate: u32) -> Self {
        Segment {
            ssrc,
            clock_rate,
            last_ts: ts,
            last_ext: 0,
            env: Envelope::new(rate),
            chunks: VecDeque::new(),
            started: false,
            a: 0.0,
            slew_left: 0.0,
            drift: 0.0,
            pending: 0.0,
            pending_since: 0,
            pending_forced: false,
            newest_arrival: i64::MIN,
            max_end: None,
        }
    }

    fn extend(&mut self, ts: u32) -> i64 {
        let delta = i64::from(ts.wrapping_sub(self.last_ts) as i32);
        let ext = self.last_ext + delta;
        if delta > 0 {
            self.last_ts = ts;
            self.last_ext = ext;
        }
        ext
    }

    fn first_u(&self) -> Option<i64> {
        self.chunks.front().map(|c| c.u)
    }

    fn last_end(&self) -> Option<i64> {
        self.max_end
    }

    /// Where source sample `u` goes: by the applied offset once rendering,
    /// else by the envelope.
    fn place(&self, u: i64) -> f64 {
        if self.started {
            u as f64 + self.a
        } else {
            u as f64 + self.env.at(u).unwrap_or(0.0)
        }
    }

    fn insert_chunk(&mut self, c: Chunk, pool: &mut Vec<Vec<i16>>) {
        self.max_end = Some(self.max_end.map_or(c.end(), |e| e.max(c.end())));
        // Keep chunks sorted by u; a chunk at the same place replaces it.
        // Most packets come in order: they go at the back.
        if self.chunks.back().is_none_or(|x| x.u < c.u) {
            self.chunks.push_back(c);
            return;
        }
        let at = self.chunks.partition_point(|x| x.u < c.u);
        if at < self.chunks.len() && self.chunks[at].u == c.u {
            if let Some(old) = self.chunks.get_mut(at) {
                let prev = std::mem::replace(old, c);
                pool.push(prev.pcm);
            }
            return;
        }
        self.chunks.insert(at, c);
    }
}

/// 8-tap Lanczos (a = 4) interpolation weights for 256 fractional phases.
fn lanczos_table() -> &'static [[f32; 8]; 257] {
    use std::sync::OnceLock;
    static T: OnceLock<Box<[[f32; 8]; 257]>> = OnceLock::new();
    T.get_or_init(|| {
        let mut t = Box::new([[0f32; 8]; 257]);
        for (p, row) in t.iter_mut().enumerate() {
            let frac = p as f64 / 256.0;
            let mut sum = 0.0;
            let mut w = [0f64; 8];
            for (j, wj) in w.iter_mut().enumerate() {
                // taps at offsets -3..=4 from floor(U)
                let x = (j as f64 - 3.0) - frac;
                *wj = if x.abs() < 1e-9 {
                    1.0
                } else if x.abs() >= 4.0 {
                    0.0
                } else {
                    let px = std::f64::consts::PI * x;
                    4.0 * px.sin() * (px / 4.0).sin() / (px * px)
                };
                sum += *wj;
            }
            for (j, v) in row.iter_mut().enumerate() {
                *v = (w[j] / sum) as f32;
            }
        }
        t
    })
}

/// One leg's timeline. See the module documentation.
#[derive(Debug)]
pub struct LegTimeline {
    rate: u32,
    ms: f64,
    hold_back: i64,
    segs: VecDeque<Segment>,
    /// Next timeline position to render.
    pos: i64,
    pool: Vec<Vec<i16>>,
    stats: TimelineStats,
    any_started: bool,
    log: VecDeque<Correction>,
    /// Whether a break candidate may be waiting (cleared by a scan that
    /// finds none): most packets then cost no scan of the queue.
    maybe_flagged: bool,
}

/// One offset correction, for diagnostics ([`LegTimeline::corrections`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Correction {
    /// Timeline position where it was made (a jump) or began (a slew).
    pub at: i64,
    /// Samples: positive moves the leg later.
    pub samples: f64,
    /// Spread over audio (true) or taken at once in a quiet place.
    pub spread: bool,
}

impl LegTimeline {
    /// `rate`: output sample rate; `hold_back`: the jitter window in samples.
    pub fn new(rate: u32, hold_back: i64) -> Self {
        LegTimeline {
            rate,
            ms: f64::from(rate) / 1000.0,
            hold_back: hold_back.max(1),
            segs: VecDeque::new(),
            pos: 0,
            pool: Vec::new(),
            stats: TimelineStats::default(),
            any_started: false,
            log: VecDeque::new(),
            maybe_flagged: false,
        }
    }

    pub fn stats(&self) -> TimelineStats {
        self.stats
    }

    /// The last corrections made (at most 16).
    pub fn corrections(&self) -> impl Iterator<Item = &Correction> {
        self.log.iter()
    }

    fn note(stats: &mut TimelineStats, log: &mut VecDeque<Correction>, c: Correction) {
        stats.corrections += 1;
        stats.corrected_samples += c.samples.abs().round() as u64;
        if log.len() >= 16 {
            log.pop_front();
        }
        log.push_back(c);
    }

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
        let Some(least) = seg.chunks.iter().map(|c| c.d).min() else {
            return false;
        };
        let mut over: Vec<i64> = seg.chunks.iter().map(|c| c.d - least).collect();
        let n = over.len();
        if n < 4 {
            return false;
        }
        let (_, median, _) = over.select_nth_unstable(n / 2);
        let spread = 2.0 * *median as f64;
        spread / (n as f64 + 1.0) <= HYSTERESIS_MS * self.ms
    }

    /// Where rendering begins (frame 0 of the recording; before any render).
    pub fn set_start(&mut self, pos: i64) {
        if !self.any_started {
            self.pos = pos;
        }
    }

    /// Next position [`render`](Self::render) will write.
    pub fn rendered(&self) -> i64 {
        self.pos
    }

    fn samples_of(&self, ext: i64, clock_rate: u32) -> i64 {
        (i128::from(ext) * i128::from(self.rate) / i128::from(clock_rate.max(1))) as i64
    }

    fn new_segment(&mut self, p: &Packet<'_>) {
        self.segs
            .push_back(Segment::new(self.rate, p.ssrc, p.ts, p.clock_rate));
        if self.segs.len() > 1 {
            self.stats.breaks += 1;
        }
        // Bound memory: a leg flapping between SSRCs keeps only a few.
        while self.segs.len() > 8 {
            if let Some(s) = self.segs.pop_front() {
                self.recycle(s);
            }
        }
    }

    fn recycle(&mut self, s: Segment) {
        for c in s.chunks {
            self.stats.cut_samples += c.pcm.len() as u64;
            self.pool.push(c.pcm);
        }
    }

    /// Take one packet.
    pub fn insert(&mut self, p: &Packet<'_>) {
        let same = |s: &Segment| s.ssrc == p.ssrc && s.clock_rate == p.clock_rate;
        if !self.segs.back().is_some_and(same) {
            // A straggler of an earlier segment of this SSRC, or a new stream.
            if let Some(i) = self.segs.iter().rposition(same) {
                // Reordered across the change (or a late duplicate): its own
                // segment takes it while that stream was alive a moment ago.
                if !p.newest
                    || p.arrival.saturating_sub(self.segs[i].newest_arrival) < self.hold_back
                {
                    self.insert_into(i, p, true);
                    return;
                }
            }
            self.new_segment(p);
        }
        let i = self.segs.len() - 1;
        self.insert_into(i, p, false);
    }

    fn insert_into(&mut self, i: usize, p: &Packet<'_>, straggler: bool) {
        let hold_back = self.hold_back as f64;
        let early_limit = BREAK_MS as f64 * self.ms;
        let ext = self.segs[i].extend(p.ts);
        // The offset is measured on the timestamp's own position; the PCM
        // starts `delay` earlier (the decoder's output lags its input).
        let u_ts = self.samples_of(ext, p.clock_rate);
        let d = p.arrival - u_ts;
        let u = u_ts - p.delay;
        let seg = &mut self.segs[i];
        seg.newest_arrival = seg.newest_arrival.max(p.arrival);
        let r = seg.env.at(u_ts).map(|e| d as f64 - e);
        let limit = seg.env.break_limit();
        let flag = match r {
            // Its place is long written: the timestamps stopped describing
            // the timing (hold without timestamps, restart). New segment.
            Some(r) if r > hold_back && p.newest && !straggler => {
                self.new_segment(p);
                let j = self.segs.len() - 1;
                self.insert_into(j, p, true);
                return;
            }
            Some(r) if r > limit && p.newest => Flag::Late,
            // Before rendering began, earlier packets just tighten the
            // envelope (the first ones were late); only a jump beyond any
            // delay the window could hide is suspect.
            Some(r) if r < -early_limit && seg.started => Flag::Early,
            Some(r) if r < -hold_back => Flag::Early,
            _ => Flag::Normal,
        };
        if flag == Flag::Normal {
            seg.env.add(u_ts, d);
            if let Some(r) = r {
                seg.env.note_residual(r);
            }
        }
        if p.pcm.is_empty() {
            return;
        }
        // Already written: too late for its place.
        let placed_end = seg.place(u + p.pcm.len() as i64);
        if seg.started && placed_end <= self.pos as f64 {
            self.stats.late += 1;
            return;
        }
        self.maybe_flagged |= flag != Flag::Normal;
        let c = self.chunk(u, u_ts, d, p.arrival, flag, p.pcm);
        self.segs[i].insert_chunk(c, &mut self.pool);
    }

    fn chunk(&mut self, u: i64, uts: i64, d: i64, arrival: i64, flag: Flag, pcm: &[i16]) -> Chunk {
        let mut v = self.pool.pop().unwrap_or_default();
        v.clear();
        v.extend_from_slice(pcm);
        Chunk {
            u,
            uts,
            d,
            arrival,
            flag,
            pcm: v,
        }
    }

    /// Timeline position just past the last audio this leg holds, if any.
    pub fn audio_end(&self) -> Option<i64> {
        self.segs
            .iter()
            .filter_map(|s| s.last_end().map(|e| s.place(e).ceil() as i64))
            .max()
    }

    /// Timeline position of the sender's first packet on this leg (by the
    /// envelope; the decoder's own delay, pre-roll before it, not counted).
    pub fn audio_start(&self) -> Option<i64> {
        let s = self.segs.front()?;
        s.chunks.front().map(|c| s.place(c.uts).floor() as i64)
    }

    /// Decide break candidates as far as `now` (arrival position) allows and
    /// return how far this leg can be rendered (`i64::MAX`: no limit).
    /// With `force`, undecided candidates are decided on what is there.
    pub fn ready_until(&mut self, now: i64, force: bool) -> i64 {
        if !self.maybe_flagged && !force {
            return i64::MAX;
        }
        let confirm = (CONFIRM_MS as f64 * self.ms) as i64;
        let early_lim = -(BREAK_MS as f64 * self.ms);
        let mut i = 0;
        while i < self.segs.len() {
            let Some(k) = self.segs[i]
                .chunks
                .iter()
                .position(|c| c.flag != Flag::Normal)
            else {
                i += 1;
                continue;
            };
            let seg = &self.segs[i];
            let c = &seg.chunks[k];
            let later = seg.chunks.iter().skip(k + 1);
            match c.flag {
                Flag::Late => {
                    // Residuals of this packet and the ones after it.
                    let limit = seg.env.break_limit();
                    let rs: Vec<f64> = std::iter::once(c)
                        .chain(later)
                        .filter_map(|x| seg.env.at(x.uts).map(|e| x.d as f64 - e))
                        .collect();
                    let lo = rs.iter().copied().fold(f64::INFINITY, f64::min);
                    let hi = rs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    // Jitter if a later packet fits the old envelope; a real
                    // shift moves every later packet by about the same.
                    // (and if the jitter seen since has grown past it).
                    let jitter = rs[0] <= limit
                        || lo <= limit / 2.0
                        || (rs.len() >= 4 && hi - lo >= lo / 2.0);
                    if jitter {
                        self.clear_flag(i, k);
                    } else if force || now - c.arrival >= confirm {
                        if rs.len() >= 4 {
                            self.split(i, k);
                            i += 1;
                        } else {
                            self.clear_flag(i, k);
                        }
                    } else {
                        return seg.place(c.u).floor() as i64;
                    }
                }
                Flag::Early => {
                    let mut n_early = 0;
                    let mut n_fit = 0;
                    for x in later {
                        match seg.env.at(x.uts).map(|e| x.d as f64 - e) {
                            Some(r) if r < early_lim / 2.0 => n_early += 1,
                            _ => n_fit += 1,
                        }
                    }
                    if n_fit > 0 {
                        // A stray: timestamp far ahead, the stream goes on as before.
                        let c = self.segs[i].chunks.remove(k);
                        if let Some(c) = c {
                            self.stats.strays += 1;
                            self.pool.push(c.pcm);
                        }
                    } else if n_early >= 2 || force || now - c.arrival >= confirm {
                        self.split(i, k);
                        i += 1;
                    } else {
                        // Early chunks lie ahead of the rendering in any case;
                        // wait only if rendering would pass them.
                        return seg.place(c.u).floor() as i64;
                    }
                }
                Flag::Normal => {}
            }
        }
        // Every candidate decided.
        self.maybe_flagged = false;
        i64::MAX
    }

    fn clear_flag(&mut self, i: usize, k: usize) {
        let seg = &mut self.segs[i];
        if let Some(c) = seg.chunks.get_mut(k) {
            c.flag = Flag::Normal;
            let (u, d) = (c.uts, c.d);
            // It was jitter: it counts towards the jitter seen.
            if let Some(e) = seg.env.at(u) {
                seg.env.note_residual(d as f64 - e);
            }
            seg.env.add(u, d);
        }
    }

    /// Chunks `k..` of segment `i` become a new segment after it.
    fn split(&mut self, i: usize, k: usize) {
        let tail: VecDeque<Chunk> = self.segs[i].chunks.split_off(k);
        let (ssrc, clock_rate) = (self.segs[i].ssrc, self.segs[i].clock_rate);
        let mut s = Segment::new(self.rate, ssrc, 0, clock_rate);
        // The old segment's timestamp extension goes on in the new one.
        s.last_ts = self.segs[i].last_ts;
        s.last_ext = self.segs[i].last_ext;
        s.newest_arrival = self.segs[i].newest_arrival;
        for mut c in tail {
            c.flag = Flag::Normal;
            s.env.add(c.uts, c.d);
            s.max_end = Some(s.max_end.map_or(c.end(), |e| e.max(c.end())));
            s.chunks.push_back(c);
        }
        self.segs[i].max_end = self.segs[i].chunks.iter().map(Chunk::end).max();
        self.segs.insert(i + 1, s);
        self.stats.breaks += 1;
    }

    /// Write the leg's samples for timeline positions `[rendered(), to)`
    /// into `out` (exactly `to - rendered()` samples; silence where the leg
    /// has nothing).
    pub fn render(&mut self, to: i64, out: &mut Vec<i16>) {
        while self.pos < to {
            // Drop segments that are finished and superseded.
            let Some(cur) = self.segs.front() else {
                let n = (to - self.pos) as usize;
                out.resize(out.len() + n, 0);
                self.pos = to;
                return;
            };
            if !cur.started {
                self.start_front();
                continue;
            }
            let mut limit = to;
            if self.segs.len() > 1 {
                let switch = self.switch_point();
                if switch <= self.pos {
                    let h_prev = self.segs[0].env.hysteresis();
                    if let Some(old) = self.segs.pop_front() {
                        self.recycle(old);
                    }
                    self.start_front_at(self.pos, h_prev);
                    continue;
                }
                limit = limit.min(switch);
            }
            self.render_front(limit, out);
        }
    }

    /// Where the front segment hands over to the next one.
    fn switch_point(&self) -> i64 {
        let cur = &self.segs[0];
        let next = &self.segs[1];
        let Some(nu) = next.first_u() else {
            // The next segment has no audio yet: keep rendering the current.
            return i64::MAX;
        };
        let start = next.place(nu).round() as i64;
        let cur_end = cur.last_end().map(|e| cur.place(e).round() as i64);
        // Within what the estimate can tell apart, the new stream continues
        // the old one seamlessly (a new SSRC mid-talkspurt).
        let h = next.env.hysteresis().max(cur.env.hysteresis()).ceil() as i64;
        match cur_end {
            Some(end) if (end - start).abs() <= h => end,
            Some(end) if end > start => {
                if end - start <= (MAX_OVERLAP_MS as f64 * self.ms) as i64 {
                    end
                } else {
                    start
                }
            }
            _ => start,
        }
    }

    fn start_front(&mut self) {
        let pos = self.pos;
        self.start_front_at(pos, 0.0);
    }

    /// The front segment begins; its first sample goes to its envelope's
    /// place, or to `at` if that is already written (the first segment of
    /// the leg: what falls before time zero is cut instead).
    fn start_front_at(&mut self, at: i64, h_prev: f64) {
        let first = !self.any_started;
        self.any_started = true;
        let Some(seg) = self.segs.front_mut() else {
            return;
        };
        seg.started = true;
        let u = seg
            .first_u()
            .or_else(|| seg.env.buckets.back().map(|b| b.u))
            .unwrap_or(0);
        // Never earlier than the evidence: the envelope is an upper bound of
        // the sender's true offset (every packet's delay is >= 0).
        let want = seg.env.at(u).unwrap_or((at - u) as f64).round();
        if first {
            seg.a = want;
            return;
        }
        let seamless = (at - u) as f64;
        let h = seg.env.hysteresis().max(h_prev);
        let a = if (want - seamless).abs() <= h {
            seamless
        } else {
            want.max(seamless)
        };
        seg.a = a;
        // Started later than its place (overlap with the previous segment):
        // taken up in a quiet place or spread over the audio, if it matters.
        if (want - a).abs() > h {
            seg.pending = want - a;
            seg.pending_since = at;
        }
    }

    /// Render the front (started) segment up to `limit`.
    fn render_front(&mut self, limit: i64, out: &mut Vec<i16>) {
        let ms = self.ms;
        let Some(seg) = self.segs.front_mut() else {
            return;
        };
        // Follow drift once it is known, significant and large enough.
        let was_following = seg.drift != 0.0;
        seg.drift = seg.env.update_drift().unwrap_or(0.0);
        // When following starts on a clean link (in the first seconds), what
        // the leg drifted while the drift was learnt is taken up at once,
        // not left to build up to the hysteresis later in the call.
        let starts_following = !was_following && seg.drift != 0.0 && seg.env.clean();
        // When following stops, the offset is left between two samples:
        // brought back to a whole one (in a quiet place, or spread), so the
        // leg is copied bit for bit again.
        if was_following && seg.drift == 0.0 && seg.a.fract() != 0.0 && seg.slew_left == 0.0 {
            if let Some(t) = seg.env.at((self.pos as f64 - seg.a).floor() as i64) {
                seg.pending = t.round() - seg.a;
                seg.pending_since = self.pos;
                seg.pending_forced = true;
            }
        }
        self.stats.drift_ppm = (seg.drift * 1e6).round() as i32;
        // The correction due here.
        // Through jitter, the first seconds' estimate is the least delay of
        // few packets: it is not chased (it would swing back and forth);
        // the placement stays until the envelope spans FIT_SPAN_MS.
        let settled = seg.env.clean() || seg.env.span() >= (FIT_SPAN_MS as f64 * ms) as i64;
        if seg.slew_left == 0.0 && settled {
            let u_now = (self.pos as f64 - seg.a).floor() as i64;
            if let Some(t) = seg.env.at(u_now) {
                let k = if seg.drift == 0.0 {
                    t.round() - seg.a
                } else {
                    t - seg.a
                };
                let h = if starts_following || seg.pending_forced {
                    seg.env.hysteresis() / 2.0
                } else {
                    seg.env.hysteresis()
                };
                // A correction is started beyond the hysteresis and, once
                // due, kept until it is made.
                let keep = if seg.pending_forced { 0.0 } else { h / 2.0 };
                if seg.pending_forced && k.abs() < 1e-9 {
                    seg.pending = 0.0;
                    seg.pending_forced = false;
                } else if k.abs() >= h || (seg.pending != 0.0 && k.abs() >= keep) {
                    if seg.pending == 0.0 {
                        seg.pending_since = self.pos;
                        seg.pending_forced = starts_following;
                    }
                    seg.pending = k;
                } else {
                    seg.pending = 0.0;
                    seg.pending_forced = false;
                }
            }
        }
        // A step this large is a discontinuity, not the estimate moving: it
        // is taken at once (spreading it would bend seconds of audio), also
        // before the estimate has settled (a step found as following stops).
        if seg.pending.abs() >= MAX_SPREAD_MS as f64 * ms {
            let k = seg.pending.round();
            seg.a += k;
            seg.pending = 0.0;
            seg.pending_forced = false;
            let c = Correction {
                at: self.pos,
                samples: k,
                spread: false,
            };
            Self::note(&mut self.stats, &mut self.log, c);
        }
        if seg.slew_left == 0.0 && settled {
            // No quiet place came in time: spread it over the audio.
            if seg.pending != 0.0
                && self.pos - seg.pending_since >= (SLEW_AFTER_MS as f64 * ms) as i64
            {
                seg.slew_left = seg.pending;
                seg.pending = 0.0;
                let c = Correction {
                    at: self.pos,
                    samples: seg.slew_left,
                    spread: true,
                };
                Self::note(&mut self.stats, &mut self.log, c);
            }
        }
        let table = lanczos_table();
        let mut hint = 0usize;
        let mut next_quiet_check = self.pos;
        while self.pos < limit {
            let exact = seg.drift == 0.0 && seg.slew_left == 0.0 && seg.a.fract() == 0.0;
            if exact {
                let ui = self.pos - seg.a as i64;
                let mut to = limit;
                let mut jump_at = None;
                if seg.pending != 0.0 {
                    let need = quiet_len(seg.pending, ms);
                    if let Some(q) = find_quiet(&seg.chunks, ui, ui + (limit - self.pos), need) {
                        // Jump in the middle of the quiet run.
                        let mid = q + need / 2;
                        let at = mid + seg.a as i64;
                        if at < limit {
                            to = at.max(self.pos);
                            jump_at = Some(to);
                        }
                    }
                }
                copy_exact(
                    &mut seg.chunks,
                    &mut self.pool,
                    self.pos - seg.a as i64,
                    to - self.pos,
                    out,
                );
                self.pos = to;
                if jump_at == Some(self.pos) {
                    let k = seg.pending.round();
                    seg.a += k;
                    seg.pending = 0.0;
                    let c = Correction {
                        at: self.pos,
                        samples: k,
                        spread: false,
                    };
                    Self::note(&mut self.stats, &mut self.log, c);
                }
                hint = 0;
                continue;
            }
            // Interpolated: drift followed and/or a correction spread.
            if seg.drift == 0.0
                && seg.slew_left == 0.0
                && seg.pending == 0.0
                && self.pos >= next_quiet_check
            {
                // A fraction left from following drift: dropped where the
                // leg has no audio at all.
                next_quiet_check = self.pos + 64;
                let ui = (self.pos as f64 - seg.a).floor() as i64;
                if !seg.chunks.iter().any(|c| c.u < ui + 8 && c.end() > ui - 8) {
                    seg.a = seg.a.round();
                    continue;
                }
            }
            if seg.pending != 0.0 && seg.slew_left == 0.0 && self.pos >= next_quiet_check {
                next_quiet_check = self.pos + 64;
                let ui = (self.pos as f64 - seg.a).floor() as i64;
                let need = quiet_len(seg.pending, ms);
                if find_quiet(&seg.chunks, ui - need / 2, ui - need / 2 + 1, need).is_some() {
                    let k = seg.pending;
                    seg.a += k;
                    seg.pending = 0.0;
                    let c = Correction {
                        at: self.pos,
                        samples: k,
                        spread: false,
                    };
                    Self::note(&mut self.stats, &mut self.log, c);
                }
            }
            let uf = self.pos as f64 - seg.a;
            let base = uf.floor();
            let frac = uf - base;
            let base = base as i64;
            let w = &table[(frac * 256.0).round() as usize];
            let mut acc = 0f32;
            for (j, wj) in w.iter().enumerate() {
                let s = sample(&seg.chunks, base - 3 + j as i64, &mut hint);
                acc += f32::from(s) * wj;
            }
            out.push(acc.round().clamp(-32768.0, 32767.0) as i16);
            self.pos += 1;
            self.stats.resampled_samples += 1;
            let mut step = seg.drift;
            if seg.slew_left != 0.0 {
                let s = SLEW.min(seg.slew_left.abs()).copysign(seg.slew_left);
                step += s;
                seg.slew_left -= s;
                if seg.slew_left.abs() < 1e-9 {
                    seg.slew_left = 0.0;
                    if seg.drift == 0.0 {
                        seg.a = (seg.a + step).round();
                        continue;
                    }
                }
            }
            seg.a += step;
            if hint > 2 {
                // Drop chunks well behind the read position.
                let ui = (self.pos as f64 - seg.a).floor() as i64 - 4;
                let mut dropped = 0;
                while seg.chunks.front().is_some_and(|c| c.end() <= ui) {
                    if let Some(c) = seg.chunks.pop_front() {
                        self.pool.push(c.pcm);
                        dropped += 1;
                    }
                }
                hint = hint.saturating_sub(dropped);
            }
        }
    }

    /// Render everything the leg holds (end of the call). Returns the end.
    pub fn end_position(&mut self, now: i64) -> i64 {
        self.ready_until(now, true);
        self.audio_end().unwrap_or(self.pos).max(self.pos)
    }
}

/// Length of quiet audio (samples) needed to take a correction of `k`.
fn quiet_len(k: f64, ms: f64) -> i64 {
    (2.0 * k.abs().ceil() + QUIET_MARGIN_MS as f64 * ms) as i64
}

/// First `u` in `[from, to)` where `need` samples from `u` on are all quiet
/// (below [`QUIET_LEVEL`]) or missing.
fn find_quiet(chunks: &VecDeque<Chunk>, from: i64, to: i64, need: i64) -> Option<i64> {
    let mut hint = 0usize;
    let mut run_start = from;
    let mut u = from;
    let end = to + need;
    while u < end {
        let s = sample(chunks, u, &mut hint);
        if s.unsigned_abs() > QUIET_LEVEL {
            run_start = u + 1;
            if run_start >= to {
                return None;
            }
        } else if u + 1 - run_start >= need {
            return Some(run_start);
        }
        u += 1;
    }
    None
}

/// Copy `n` source samples from `u` (silence where no chunk covers them),
/// dropping chunks that are left behind.
fn copy_exact(
    chunks: &mut VecDeque<Chunk>,
    pool: &mut Vec<Vec<i16>>,
    mut u: i64,
    mut n: i64,
    out: &mut Vec<i16>,
) {
    while n > 0 {
        while chunks.front().is_some_and(|c| c.end() <= u) {
            if let Some(c) = chunks.pop_front() {
                pool.push(c.pcm);
            }
        }
        match chunks.front() {
            Some(c) if c.u <= u => {
                let off = (u - c.u) as usize;
                let m = ((c.end() - u).min(n)) as usize;
                out.extend_from_slice(&c.pcm[off..off + m]);
                u += m as i64;
                n -= m as i64;
            }
            next => {
                let gap = next.map_or(n, |c| (c.u - u).min(n));
                out.resize(out.len() + gap as usize, 0);
                u += gap;
                n -= gap;
            }
        }
    }
}

/// The bucket with the smallest `d`.
fn lowest(b: &[Bucket]) -> Option<Bucket> {
    b.iter().copied().min_by_key(|b| b.d)
}

/// How sharply the lowest minimum pins the envelope: how far the next
/// lowest lies above it (about the spread of the least delays; 0 with one).
fn pin_gap(b: &[Bucket]) -> f64 {
    let mut lo = [i64::MAX; 2];
    for x in b {
        if x.d < lo[0] {
            lo[1] = lo[0];
            lo[0] = x.d;
        } else if x.d < lo[1] {
            lo[1] = x.d;
        }
    }
    if lo[1] == i64::MAX {
        return 0.0;
    }
    (lo[1] - lo[0]) as f64
}

/// Sample at source position `u` (0 where no chunk covers it). `hint` is
/// the chunk index to start looking at; positions are read in increasing order.
fn sample(chunks: &VecDeque<Chunk>, u: i64, hint: &mut usize) -> i16 {
    let mut i = (*hint).min(chunks.len());
    while i > 0 && chunks[i - 1].end() > u {
        i -= 1;
    }
    while i < chunks.len() {
        let c = &chunks[i];
        if c.end() <= u {
            i += 1;
            continue;
        }
        *hint = i;
        if c.u <= u {
            return c.pcm[(u - c.u) as usize];
        }
        return 0;
    }
    *hint = i;
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcm(n: usize, seed: i64) -> Vec<i16> {
        (0..n as i64)
            .map(|i| (((i + seed) * 7919 % 20000) - 10000) as i16)
            .collect()
    }

    #[test]
    fn late_starting_leg_clean() {
        let mut t = LegTimeline::new(8000, 4000);
        let mut out = Vec::new();
        let start = 24_160i64;
        for k in 0..400i64 {
            let p = pcm(160, k * 160);
            let arrival = start + k * 160;
            t.insert(&Packet {
                arrival,
                ssrc: 5,
                ts: 1000 + (k as u32) * 160,
                clock_rate: 8000,
                newest: true,
                delay: 0,
                pcm: &p,
            });
            let h = arrival - 4000;
            if h > t.rendered() + 800 {
                t.render(h, &mut out);
            }
        }
        let end = t.end_position(start + 400 * 160);
        t.render(end, &mut out);
        eprintln!(
            "stats {:?} first {:?}",
            t.stats(),
            out.iter().position(|s| *s != 0)
        );
        assert_eq!(out.len() as i64, start + 400 * 160);
        let first = out.iter().position(|s| *s != 0).unwrap();
        assert_eq!(first as i64, start, "{:?}", t.stats());
    }
}

#[cfg(test)]
mod start_tests {
    use super::*;

    fn feed(t: &mut LegTimeline, k: i64, late: i64) {
        let pcm = [100i16; 160];
        t.insert(&Packet {
            arrival: k * 160 + late,
            ssrc: 1,
            ts: (k as u32) * 160,
            clock_rate: 8000,
            newest: true,
            delay: 0,
            pcm: &pcm,
        });
    }

    /// A clean link knows its floor after a few packets, also when one
    /// packet was held up 300 ms (a stall of a loaded capture host: in the
    /// crash test, time zero then waited for seconds and a SIGKILL took
    /// the whole start of the call).
    #[test]
    fn a_clean_link_with_one_stall_settles_at_once() {
        let mut t = LegTimeline::new(8000, 4000);
        for k in 0..3 {
            feed(&mut t, k, 0);
        }
        assert!(!t.start_settled(), "not on three packets");
        feed(&mut t, 3, 2400);
        for k in 4..8 {
            feed(&mut t, k, 0);
        }
        assert!(t.start_settled());
    }

    /// With 80 ms of jitter the floor is known within 1 ms only after
    /// about 80 packets.
    #[test]
    fn heavy_jitter_settles_after_enough_packets() {
        let mut t = LegTimeline::new(8000, 4000);
        let mut x = 12345u64;
        let mut late = || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 33) % 640) as i64
        };
        for k in 0..30 {
            feed(&mut t, k, late());
        }
        assert!(!t.start_settled());
        for k in 30..110 {
            feed(&mut t, k, late());
        }
        assert!(t.start_settled());
    }
}

#[cfg(test)]
mod drift_tests {
    use super::*;

    /// A clean link whose sender clock is 800 ppm slow: followed by
    /// resampling, no correction after the first seconds, even when the
    /// envelope's window starts sliding.
    #[test]
    fn steady_drift_needs_no_correction() {
        let mut t = LegTimeline::new(8000, 4000);
        let mut out = Vec::new();
        let pcm: Vec<i16> = (0..160).map(|i| 1000 + i as i16).collect();
        for k in 0..3500i64 {
            let send = k * 160 + k * 160 * 800 / 1_000_000;
            t.insert(&Packet {
                arrival: send,
                ssrc: 1,
                ts: (k as u32) * 160,
                clock_rate: 8000,
                newest: true,
                delay: 0,
                pcm: &pcm,
            });
            let h = send - 4000;
            if h > t.rendered() + 800 {
                t.render(h, &mut out);
            }
        }
        // At most the one taking up what drifted while the drift was learnt,
        // in the first seconds.
        let late: Vec<_> = t.corrections().filter(|c| c.at > 5 * 8000).collect();
        assert!(late.is_empty(), "{late:?}");
        assert!(t.stats().corrections <= 1, "{:?}", t.stats());
    }
}

#[cfg(test)]
mod slew_tests {
    use super::*;

    /// A 6-sample correction in continuous loud audio is spread at 1 sample
    /// in 256: about 1,536 samples of interpolated audio, then bit-exact.
    #[test]
    fn a_spread_correction_takes_256_samples_per_sample() {
        let mut t = LegTimeline::new(8000, 4000);
        let mut out = Vec::new();
        let pcm: Vec<i16> = (0..160).map(|i| 5000 + (i as i16) * 10).collect();
        // The first 3 s arrive 6 samples later than the rest: the envelope
        // drops by 6 once the later packets come.
        for k in 0..1500i64 {
            let late = if k < 150 { 6 } else { 0 };
            let arrival = k * 160 + late;
            t.insert(&Packet {
                arrival,
                ssrc: 1,
                ts: (k as u32) * 160,
                clock_rate: 8000,
                newest: true,
                delay: 0,
                pcm: &pcm,
            });
            let h = arrival - 4000;
            if h > t.rendered() + 800 {
                t.render(h, &mut out);
            }
        }
        let end = t.end_position(1500 * 160);
        t.render(end, &mut out);
        let log: Vec<_> = t.corrections().copied().collect();
        // Count samples that differ from the pattern at any whole offset.
        let inexact = out
            .iter()
            .filter(|s| **s != 0 && (**s - 5000) % 10 != 0)
            .count();
        assert!(
            inexact <= 6 * 256 + 16,
            "{inexact} inexact samples; {log:?}"
        );
    }
}
