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
//! Where the delays have no hard floor to pile up against (normally
//! distributed jitter: the least delay keeps falling as packets come, and
//! each window's least moves by chance), the leg is placed by a low
//! quantile of the minima instead ([`Envelope`]'s `soft`, told by the
//! shape of the delays' lower tail).
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
//!   envelope is taken up where the leg is quiet (a gap between talkspurts,
//!   loss, hold, audio below -48 dBFS) when such a place comes within
//!   [`SLEW_AFTER_MS`]; otherwise it is spread over the audio at 1 sample in
//!   256 (0.4 % speed, inaudible) by the same interpolation. A step forward
//!   of [`MAX_SPREAD_MS`] or more is taken at once (silence inserted); a step
//!   back that large (the delay fell) waits for quiet too, taken in parts
//!   where the quiet is shorter, and the rest as a step only if no quiet
//!   comes for [`SLEW_AFTER_MS`]. No block of samples is ever dropped
//!   or repeated in speech but for that step back in talk that never pauses.
//!
//! # Segments: when arrival and timestamps really disagree
//!
//! A leg is a sequence of segments, each with its own envelope: a new SSRC or
//! clock rate starts one, and so does a packet whose residual `d - envelope`
//! says the timestamps no longer describe the timing:
//!
//! - more than the hold-back window late, on the newest sequence number: the
//!   sender paused without advancing its timestamps (hold) or restarted
//!   them, or the link stalled and now delivers what queued behind it. Such
//!   a packet cannot be placed by its timestamp (its place is written), so
//!   it is held, with the ones after it, until the next packets tell which:
//!   one that fits the envelope again shows a stall (the held packets were
//!   only late: dropped, and the segment goes on exactly where it was);
//!   packets that stay as late for [`RESUME_MS`] (at most half the window)
//!   show a hold or a restart: a new segment starts with them;
//! - more than [`BREAK_MS`] (or 1.5 times the jitter seen) late: a candidate.
//!   It is confirmed when no later packet of the leg fits the old envelope for
//!   [`CONFIRM_MS`]; one that does shows it was jitter. Rendering waits at the
//!   candidate until it is decided (at most the hold-back window);
//! - more than [`BREAK_MS`] early, once the leg is being rendered: the
//!   timestamps jumped further than the real pause. Judged by the packets
//!   that *arrived* after it (by timestamp, the packets after a stray lie
//!   before it): a majority early too confirms the jump, a majority that
//!   fits the old envelope makes it a stray, dropped. A split segment's
//!   chunks are judged again against its own envelope, so a stray among
//!   them never stretches it.
//!
//! A new segment starts at its own envelope's place; if that overlaps the end
//! of the previous segment by up to 60 ms, or it is the same stream going on
//! (its delay fell: a queue drained), it starts after it instead (and the
//! difference is taken up as above), so no audio of either is cut. (An
//! overlap of over 60 ms that finds no quiet place in 2 s is then a step.)
//!
//! Everything is in output samples; nothing here reads a clock.

use std::collections::VecDeque;

use crate::audio::g711::{expansion, Law};

mod buckets;
mod chunk;
use chunk::*;
mod envelope;
use envelope::*;
mod held;
use held::*;
mod probe;
mod render;
mod samples;
use probe::*;
mod start;
pub use samples::PacketAudio;
use samples::*;

/// Residual beyond which a packet is a candidate segment break.
pub const BREAK_MS: i64 = 30;
/// How long a late candidate must stay unexplained by jitter.
pub const CONFIRM_MS: i64 = 300;
/// How long packets more than the window late are held before they start
/// a new segment (at most half the window): the time a stalled link takes
/// to deliver its queue.
pub const RESUME_MS: i64 = 250;
/// Packets held so at most (the oldest are dropped beyond).
const HELD_MAX: usize = 64;
/// Smallest offset error that is corrected.
pub const HYSTERESIS_MS: f64 = 1.0;
/// Time zero waits until each leg's least delay lies, on average, no more
/// than this above its floor (spread / (n + 1) for n packets whose delays
/// spread over J). The chance that it lies more than x above is about
/// exp(-x / this): 0.03 % for 2 ms, where a mean of 1 ms left one start in
/// 20 through 30 ms of jitter 3.5 ms late for seconds.
const START_BIAS_MS: f64 = 0.25;
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
    /// Its own audio in RTP ticks (a decoder's tail merged into its output
    /// not counted); 0 when not known.
    pub ticks: u32,
    /// Whether its sequence number is the highest of its SSRC so far.
    pub newest: bool,
    /// The marker bit on the packet right after the newest (a talk
    /// spurt's start with the numbering going on): if its timestamp does
    /// not fit the stream's place by more than the window, the sender
    /// started its timestamps afresh, and the packet starts a segment at
    /// once (instead of being held or taken for a jump to confirm).
    pub restart: bool,
    /// Decoder delay (output samples) to take off the position.
    pub delay: i64,
    /// Its audio at the output rate; empty for packets that only carry
    /// timing (comfort noise).
    pub pcm: PacketAudio<'a>,
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

/// One stretch of a leg whose RTP timestamps run on one clock.
#[derive(Debug)]
struct Segment {
    ssrc: u32,
    clock_rate: u32,
    /// Shared by a segment and those split from it ([`LegTimeline::split`]):
    /// their `u` count on one sender clock, so where one's audio ends the
    /// next one's may be seen to begin.
    lineage: u32,
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
    /// This segment's overlap with the previous one (it started after it
    /// by this much, negative): while the pending correction is no larger,
    /// it is taken up in a quiet place or spread, never as a step (that
    /// would cut what starting after the previous one kept).
    pending_overlap: f64,
    /// Quiet samples at the end of what was copied of this segment: a
    /// correction may be taken in the middle of a quiet run that began in
    /// an earlier render (rendering goes a packet or so at a time).
    quiet_run: i64,
    /// Newest arrival seen on this segment.
    newest_arrival: i64,
    /// Timestamp of the last newest packet not far ahead of the envelope
    /// (a stray's does not count).
    newest_ts: Option<u32>,
    /// Where that packet's own audio ends: its timestamp plus its ticks
    /// (not known: None).
    newest_end: Option<u32>,
    /// One past the last source sample ever queued (chunks go as rendered).
    max_end: Option<i64>,
    /// The stream the signalling moved the leg to: it takes over at its
    /// place, the previous segment cut there (two sources sending at once
    /// for a moment, e.g. the ringback's last packets after the phone's
    /// first). Otherwise an overlap keeps both (one stream whose delay fell,
    /// or a clean link's), the new one starting after the old.
    supersedes: bool,
}

impl Segment {
    fn new(rate: u32, ssrc: u32, ts: u32, clock_rate: u32, lineage: u32) -> Self {
        Segment {
            ssrc,
            clock_rate,
            lineage,
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
            pending_overlap: 0.0,
            quiet_run: 0,
            newest_arrival: i64::MIN,
            newest_ts: None,
            newest_end: None,
            max_end: None,
            supersedes: false,
        }
    }

    /// `ts` extended to 64 bits: the value nearest the newest so far
    /// (within ±2^31 ticks).
    fn ext_of(&self, ts: u32) -> i64 {
        self.last_ext + i64::from(ts.wrapping_sub(self.last_ts) as i32)
    }

    /// `ts`, extended to `ext` ([`Self::ext_of`]), is the newest so far if
    /// it lies ahead.
    fn advance(&mut self, ts: u32, ext: i64) {
        if ext > self.last_ext {
            self.last_ts = ts;
            self.last_ext = ext;
        }
    }

    fn first_u(&self) -> Option<i64> {
        self.chunks.front().map(|c| c.u)
    }

    /// Where the sender's first sample is (its timestamp's position): a
    /// decoder's delay puts its first output samples before it, the
    /// filters' start, no audio of the sender.
    fn first_uts(&self) -> Option<i64> {
        self.chunks.front().map(Chunk::uts)
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
            u as f64 + self.target(u).unwrap_or(0.0)
        }
    }

    /// The offset for `u` before rendering ([`Envelope::target`]); a new
    /// stream on a soft leg is placed by its packets' median delay less
    /// the previous stream's median over its placement
    /// ([`Envelope::soft_gap`]): its least delays so far lie well above
    /// where its target will settle (the least of two packets through a
    /// deviation of 5 ms: 9 ms above), its median is known sooner. Never
    /// above its least delay, nor, from 8 packets on, below it by more
    /// than the median is above it (a clean path's packets spread
    /// nothing); fewer (a short talk spurt starts it) cannot tell.
    fn target(&self, u: i64) -> Option<f64> {
        let t = self.env.target(u);
        if !self.env.soft || self.env.soft_gap <= 0.0 || self.chunks.is_empty() {
            return t;
        }
        let mut d = [0i64; 64];
        let n = self.chunks.len().min(d.len());
        for (x, c) in d.iter_mut().zip(self.chunks.iter()) {
            *x = c.d();
        }
        let d = &mut d[..n];
        d.sort_unstable();
        let least = d[0] as f64;
        let median = (d[(n - 1) / 2] + d[n / 2]) as f64 / 2.0;
        let floor = if n >= 8 {
            least - (median - least)
        } else {
            f64::NEG_INFINITY
        };
        Some((median - self.env.soft_gap).clamp(floor, least))
    }

    /// A chunk ending at `end` was dropped: the segment's end is that of
    /// the audio it still holds or has rendered (`pos`: the render position).
    fn forget_end(&mut self, end: i64, pos: i64) {
        if self.max_end.is_some_and(|m| m > end) {
            return;
        }
        let rendered = self.started.then(|| (pos as f64 - self.a).floor() as i64);
        self.max_end = self
            .chunks
            .iter()
            .filter(|c| c.flag != Flag::Early)
            .map(Chunk::end)
            .chain(rendered)
            .max();
    }

    fn insert_chunk(&mut self, c: Chunk, spare: &mut Spare) {
        // An early candidate (timestamp far ahead) does not extend the
        // segment until it is confirmed (split): a stray must not make the
        // recording run on to where its timestamp points.
        if c.flag != Flag::Early {
            self.max_end = Some(self.max_end.map_or(c.end(), |e| e.max(c.end())));
        }
        room_for_one(&mut self.chunks);
        // Keep chunks sorted by u; a chunk at the same place replaces it.
        // Most packets come in order: they go at the back.
        if self.chunks.back().is_none_or(|x| x.u < c.u) {
            self.chunks.push_back(c);
            return;
        }
        let at = self.chunks.partition_point(|x| x.u < c.u);
        if at < self.chunks.len() && self.chunks[at].u == c.u {
            if let Some(old) = self.chunks.get_mut(at) {
                spare.put(std::mem::replace(old, c).into_samples());
            }
            return;
        }
        self.chunks.insert(at, c);
    }
}

/// Room for one more chunk in a segment's queue, grown a quarter at a
/// time and given back when a burst has passed. A leg holds the window's
/// packets, 25-30 of 20 ms for the default window: doubling (the queue's
/// own growth) went to 64 slots as soon as the engine fell a little behind
/// and kept them (49 a leg on average at 500 calls).
fn room_for_one(chunks: &mut VecDeque<Chunk>) {
    let (len, cap) = (chunks.len(), chunks.capacity());
    if len == cap {
        chunks.reserve_exact((cap / 4).max(8));
    } else if cap >= 64 && len < cap / 4 {
        chunks.shrink_to(len * 2);
    }
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
    spare: Spare,
    stats: TimelineStats,
    any_started: bool,
    log: VecDeque<Correction>,
    /// Whether a break candidate may be waiting (cleared by a scan that
    /// finds none): most packets then cost no scan of the queue.
    maybe_flagged: bool,
    /// Newest packets of the last segment more than the window late, in
    /// arrival order, until it is known why (see the module documentation).
    held: Vec<Held>,
    /// Lineages handed out ([`Segment::lineage`]).
    lineages: u32,
    /// The first stream's delays since its start, while its shape is not
    /// told ([`Probe`]).
    probe: Option<Box<Probe>>,
    /// Segments started by a timestamp stepping back into the audio before
    /// it (see `insert_into`): a sender whose every packet does that (its
    /// timestamps advance less than its audio) gets no more than
    /// [`MAX_OVERLAP_RESTARTS`] of them.
    overlap_restarts: u8,
    /// The SSRC of a stream the signalling moved the leg to
    /// ([`LegTimeline::supersede_with`]), until its segment begins.
    supersede: Option<u32>,
}

/// See [`LegTimeline::overlap_restarts`].
const MAX_OVERLAP_RESTARTS: u8 = 16;

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
            spare: Spare::default(),
            stats: TimelineStats::default(),
            any_started: false,
            log: VecDeque::new(),
            maybe_flagged: false,
            held: Vec::new(),
            lineages: 0,
            probe: None,
            overlap_restarts: 0,
            supersede: None,
        }
    }

    /// The leg's sender was moved by the signalling to the stream `ssrc`
    /// (the phone's answer after a media server's early media, a
    /// re-INVITE's new port, back from hold music): its segment, when it
    /// begins, supersedes the one before from its first sample (what the
    /// old stream still sent after it is cut, [`Segment::supersedes`]).
    pub fn supersede_with(&mut self, ssrc: u32) {
        self.supersede = Some(ssrc);
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

    /// Next position [`render`](Self::render) will write.
    pub fn rendered(&self) -> i64 {
        self.pos
    }

    /// Where the sender's sample of RTP timestamp `ts` lies on the arrival
    /// timeline: placed as the newest segment of its stream (`ssrc`,
    /// `clock_rate`) places its audio; `None` without one. (An RFC 4733
    /// event's timestamp is its start, on its stream's clock: the digit
    /// then lies where it was pressed against the audio around it.)
    pub fn position_of(&self, ssrc: u32, ts: u32, clock_rate: u32) -> Option<i64> {
        let seg = self
            .segs
            .iter()
            .rev()
            .find(|s| s.ssrc == ssrc && s.clock_rate == clock_rate)?;
        let u = self.samples_of(seg.ext_of(ts), clock_rate);
        let pos = seg.place(u);
        pos.is_finite().then_some(pos.round() as i64)
    }

    fn samples_of(&self, ext: i64, clock_rate: u32) -> i64 {
        crate::time::mul_div(ext, i64::from(self.rate), i64::from(clock_rate.max(1)))
    }

    fn new_segment(&mut self, p: &Packet<'_>) {
        // The first stream's probe is of that stream only.
        self.probe = None;
        // Grown one at a time: most legs have one segment, and a queue's
        // first allocation would hold four (a kilobyte a leg for nothing).
        self.segs.reserve_exact(1);
        self.lineages = self.lineages.wrapping_add(1);
        let mut s = Segment::new(self.rate, p.ssrc, p.ts, p.clock_rate, self.lineages);
        if self.supersede == Some(p.ssrc) {
            self.supersede = None;
            s.supersedes = !self.segs.is_empty();
        }
        if let Some(prev) = self.segs.back() {
            // A new stream on the leg (a re-INVITE, a transfer) comes the
            // same way to the capture: its delays' shape is the path's.
            s.env.soft = prev.env.soft;
            s.env.soft_spread = prev.env.soft_spread;
            s.env.soft_gap = prev.env.median_gap();
        }
        self.segs.push_back(s);
        if self.segs.len() > 1 {
            self.stats.breaks += 1;
        }
        // Bound memory: a leg flapping between SSRCs keeps only a few.
        while self.segs.len() > 8 {
            if let Some(s) = self.segs.pop_front() {
                self.cut(s);
            }
        }
    }

    /// A segment goes with the audio it still holds (counted as cut).
    fn cut(&mut self, s: Segment) {
        for c in s.chunks {
            self.stats.cut_samples += c.pcm().len() as u64;
        }
    }

    /// Take one packet.
    pub fn insert(&mut self, p: &Packet<'_>) {
        let same = |s: &Segment| s.ssrc == p.ssrc && s.clock_rate == p.clock_rate;
        if !p.newest && self.segs.len() > 1 {
            // A packet reordered across a timestamp jump of its SSRC (the
            // jump split the stream): it belongs to the segment whose
            // timestamps it continues, not to the newest one (where it
            // would start that segment a whole jump early).
            let nearest = self
                .segs
                .iter()
                .enumerate()
                .filter(|(_, s)| same(s))
                .min_by_key(|(_, s)| (p.ts.wrapping_sub(s.last_ts) as i32).unsigned_abs())
                .map(|(i, _)| i);
            if let Some(i) = nearest.filter(|i| *i + 1 < self.segs.len()) {
                self.insert_into(i, p, true);
                return;
            }
        }
        if !self.segs.back().is_some_and(same) {
            // A straggler of an earlier segment of this SSRC, or a new stream.
            if let Some(i) = self.segs.iter().rposition(same) {
                // Reordered across the change (or a late duplicate): its own
                // segment takes it while that stream was alive a moment ago.
                // (The old stream back after a short switch away lands here
                // too: what lies after the other is moved behind it before
                // the hand-over, see `render`.)
                if !p.newest
                    || p.arrival.saturating_sub(self.segs[i].newest_arrival) < self.hold_back
                {
                    self.insert_into(i, p, true);
                    return;
                }
            }
            if !p.newest {
                // A straggler of a stream whose audio is all written (its
                // segment is gone): too late for its place. As a segment of
                // its own it would end the stream that took over where it
                // arrived.
                self.stats.late += 1;
                return;
            }
            // Held packets of the old stream are decided before it ends.
            self.resolve_held(None);
            self.new_segment(p);
        }
        let i = self.segs.len() - 1;
        self.insert_into(i, p, false);
    }

    /// A decoder's tail (`call::tail`): the audio its filters held after
    /// the packet ending at `p.ts`, placed right after it in the segment of
    /// its stream. It says nothing of the timing (no envelope, no flags)
    /// and takes no audio's place: the stream's next packet, if it follows
    /// at once, replaces it (the same place).
    pub fn insert_tail(&mut self, p: &Packet<'_>) {
        let Some(i) = self
            .segs
            .iter()
            .rposition(|s| s.ssrc == p.ssrc && s.clock_rate == p.clock_rate)
        else {
            return;
        };
        let seg = &self.segs[i];
        let ext = seg.last_ext + i64::from(p.ts.wrapping_sub(seg.last_ts) as i32);
        let u = self.samples_of(ext, p.clock_rate) - p.delay;
        let seg = &self.segs[i];
        let taken = seg.chunks.iter().rev().any(|c| c.u == u);
        if p.pcm.len() == 0 || taken {
            return;
        }
        if seg.started && seg.place(u + p.pcm.len() as i64) <= self.pos as f64 {
            return;
        }
        let c = Chunk::new(
            u,
            p.delay,
            p.arrival,
            Flag::Normal,
            self.spare.samples(p.pcm),
        );
        self.segs[i].insert_chunk(c, &mut self.spare);
    }

    /// `p` starts a segment of its own at once (the held packets of the
    /// old one decided first), placed by its arrival as any stream's start.
    fn restart_with(&mut self, p: &Packet<'_>) {
        self.resolve_held(None);
        self.new_segment(p);
        let j = self.segs.len() - 1;
        self.insert_into(j, p, false);
    }

    fn insert_into(&mut self, i: usize, p: &Packet<'_>, straggler: bool) {
        let hold_back = self.hold_back as f64;
        let early_limit = BREAK_MS as f64 * self.ms;
        // A newest packet whose timestamp goes back: the sender restarted
        // its timestamps (a re-INVITE: Asterisk goes on with the sequence
        // and a new random timestamp) by less than the window, so its
        // audio's places collide with audio not yet written.
        let ext = self.segs[i].ext_of(p.ts);
        // The offset is measured on the timestamp's own position; the PCM
        // starts `delay` earlier (the decoder's output lags its input).
        let u_ts = self.samples_of(ext, p.clock_rate);
        let d = p.arrival - u_ts;
        let u = u_ts - p.delay;
        // A newest packet whose audio would begin more than a millisecond
        // inside the newest one's (its timestamp stepped back by less than
        // a packet: two streams spliced under one numbering). No network
        // does that (it moves arrivals, not timestamps), and the sender's
        // time did not go back: a segment of its own at once, placed by
        // its arrival, as a restart. (Placed at its timestamp, it cut the
        // end of the packet before, and the leg lay that much early until
        // the envelope's minimum forgot the old delay, 10 s later.)
        let backwards = p.newest
            && !straggler
            && self.segs[i]
                .newest_ts
                .is_some_and(|t| (p.ts.wrapping_sub(t) as i32) < 0);
        let ms_ticks = (p.clock_rate / 1000).max(1) as i32;
        let overlaps = p.newest
            && !straggler
            && !backwards
            && self.overlap_restarts < MAX_OVERLAP_RESTARTS
            && self.segs[i]
                .newest_end
                .is_some_and(|e| (p.ts.wrapping_sub(e) as i32) < -ms_ticks);
        if overlaps {
            self.overlap_restarts += 1;
            return self.restart_with(p);
        }
        let r = self.segs[i].env.at(u_ts).map(|e| d as f64 - e);
        if p.restart && p.newest && !straggler {
            let back = ext < self.segs[i].last_ext;
            // Ahead of the stream's place by more than the window (more
            // sender time than passed), or behind it with the timestamp
            // gone back: no pause or stall of the link explains it (a
            // stalled link, or a hold whose timestamps stopped, leaves the
            // timestamps going forward, less than the time that passed:
            // those are told apart as before, from the packets after).
            if r.is_some_and(|r| r < -hold_back || r > hold_back && back) {
                // A talk spurt whose timestamps start afresh (the marker
                // bit on the packet right after the newest): a segment of
                // its own at once, placed by its arrival as any stream's
                // start. (Held as late for the wait that tells a restart
                // from a stalled link, or taken for a jump to confirm, such
                // spurts shorter than that wait were lost.) The old
                // segment's timestamp extension is left as it was for its
                // stragglers.
                return self.restart_with(p);
            }
        }
        self.segs[i].advance(p.ts, ext);
        let limit = self.segs[i].env.break_limit();
        // As late as the packets held (the ones after a restart).
        let joins_held =
            !self.held.is_empty() && self.held.iter().all(|h| ((h.d - d).abs() as f64) <= limit);
        let seg = &mut self.segs[i];
        if !p.newest && r.is_some_and(|r| r > hold_back) {
            // A reordered packet this far behind the segment's envelope is
            // not of its numbering (nor any jitter's): one of a new
            // numbering whose first packets are held goes with them;
            // anything else is dropped. (Inserted, it lay at its own
            // numbering's place in this segment: one not started yet began
            // there, hours back, its first step taking it forward again.
            // One far ahead is a break candidate, `Flag::Early`.)
            if joins_held {
                self.hold(p, d);
            } else {
                self.stats.late += 1;
            }
            return;
        }
        seg.newest_arrival = seg.newest_arrival.max(p.arrival);
        let flag = match r {
            // Its place is long written: the timestamps stopped describing
            // the timing (hold without timestamps, restart), or the link
            // stalled. Held until the packets after it tell which. So is
            // a late one whose timestamp went back (its place is not
            // written yet, but its audio would replace what is there), and
            // the ones after it as late.
            Some(r)
                if (r > hold_back || (r > limit && (backwards || joins_held)))
                    && p.newest
                    && !straggler =>
            {
                // Another restart before the held ones were decided (talk
                // spurts shorter than the wait, each with timestamps
                // afresh): more than a window apart from the last held,
                // it is no queue draining; the held ones, late by the same,
                // were a restart and start their segment now. (Kept
                // together, the two were not late by the same and went as
                // late, whole spurts.)
                let restart_before = self
                    .held
                    .last()
                    .is_some_and(|h| (h.d - d).abs() > self.hold_back)
                    && self.consistent(&self.held);
                if restart_before {
                    self.resolve_held(Some(true));
                    self.insert(p);
                } else {
                    self.hold(p, d);
                }
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
        // A packet more than the window late (a duplicate or a reordered
        // one, not the newest) is dropped below: it says nothing about the
        // envelope or the jitter either (one such outlier from a stalled
        // link would make the jitter seen seconds, and stop drift following
        // for tens of seconds).
        let beyond = r.is_some_and(|r| r > hold_back);
        if p.newest && !straggler && flag != Flag::Early {
            seg.newest_ts = Some(p.ts);
            seg.newest_end = (p.ticks != 0).then(|| p.ts.wrapping_add(p.ticks));
        }
        if flag == Flag::Normal && !beyond {
            seg.env.add(u_ts, d);
            if let Some(r) = r {
                seg.env.note_residual(r);
            }
            if let Some(probe) = self.probe.as_mut().filter(|_| i == 0) {
                if let Some(soft) = probe.push(d, self.ms) {
                    self.probe = None;
                    let env = &mut self.segs[0].env;
                    if soft && !env.soft {
                        env.soft = true;
                        env.gen += 1;
                    }
                }
            }
        }
        if p.newest && !straggler && !self.held.is_empty() && flag == Flag::Normal {
            // The newest packet is within the window again: the link had
            // stalled, the held packets were its queue, merely late.
            self.resolve_held(Some(false));
        }
        let seg = &mut self.segs[i];
        if p.pcm.len() == 0 {
            return;
        }
        // Already written: too late for its place.
        let placed_end = seg.place(u + p.pcm.len() as i64);
        if seg.started && placed_end <= self.pos as f64 {
            self.stats.late += 1;
            return;
        }
        self.maybe_flagged |= flag != Flag::Normal;
        let c = Chunk::new(u, p.delay, p.arrival, flag, self.spare.samples(p.pcm));
        self.segs[i].insert_chunk(c, &mut self.spare);
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
        s.chunks.front().map(|c| s.place(c.uts()).floor() as i64)
    }

    /// Decide break candidates as far as `now` (arrival position) allows and
    /// return how far this leg can be rendered (`i64::MAX`: no limit).
    /// With `force`, undecided candidates are decided on what is there.
    pub fn ready_until(&mut self, now: i64, force: bool) -> i64 {
        let held = self.decide_held(now, force);
        let limit = held.min(self.decide_flags(now, force));
        if force {
            return limit;
        }
        limit.min(self.start_wait(now))
    }

    /// Decide the flagged chunks (break candidates); see [`Self::ready_until`].
    fn decide_flags(&mut self, now: i64, force: bool) -> i64 {
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
            match c.flag {
                Flag::Late => {
                    // Residuals of this packet and the ones after it.
                    let limit = seg.env.break_limit();
                    let rs: Vec<f64> = std::iter::once(c)
                        .chain(seg.chunks.iter().skip(k + 1))
                        .filter_map(|x| seg.env.at(x.uts()).map(|e| x.d() as f64 - e))
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
                        // A shift stays: the late packets span CONFIRM_MS
                        // of the sender's audio, not only of waiting. A talk
                        // spurt that ends in silence suppression while the
                        // link was slow gives no more evidence than itself:
                        // its 100 ms of packets, 60 ms late through a delay
                        // spike, were placed 60 ms late. By its timestamps,
                        // as jitter. (A pause without timestamps shorter
                        // than the window, then a short spurt and silence:
                        // the spurt lies that much early; the next spurt
                        // long enough moves the leg.)
                        let span = seg.chunks.back().map_or(0, Chunk::end) - c.u;
                        if rs.len() >= 4 && (force || span >= confirm) {
                            self.split(i, k, true);
                            i += 1;
                        } else if rs.len() >= 4 {
                            // Too short to tell a shift from a spike: placed
                            // by its timestamps, but neither counted as
                            // jitter nor in the envelope. (Counted, a clock
                            // paused 200-500 ms raised the jitter seen past
                            // the pause: the spurts after it were never
                            // candidates again and lay early by the pause
                            // for 8 s.) The next spurt as late, if long
                            // enough, moves the leg.
                            for x in self.segs[i].chunks.iter_mut().skip(k) {
                                if x.flag == Flag::Late {
                                    x.flag = Flag::Normal;
                                }
                            }
                        } else {
                            self.clear_flag(i, k);
                        }
                    } else {
                        return seg.place(c.u).floor() as i64;
                    }
                }
                Flag::Early => {
                    // What the packets that came after it say: the stream
                    // goes on where it was (a stray: a corrupted or injected
                    // timestamp) or from the new place (the timestamps
                    // jumped). Judged by arrival, not by timestamp: the
                    // packets after a stray lie *before* it by timestamp.
                    // A packet sent before the jump and reordered behind it
                    // fits too, so it takes a majority of two or more.
                    //
                    // The same stream coming earlier by `ahead` (its delay
                    // fell: a queue on the way drained) has packets sent
                    // before it still on the way for up to `ahead`; they
                    // fit, and may outnumber it at first. The stream goes
                    // on as before only if packets that fit still come
                    // after that. (A packet further ahead than CONFIRM_MS
                    // is no drained queue: judged at once, as before.)
                    let ahead = seg
                        .env
                        .at(c.uts())
                        .map_or(0.0, |e| e - c.d() as f64)
                        .max(0.0) as i64;
                    let ahead = if ahead > confirm { 0 } else { ahead };
                    let mut n_early = 0;
                    let mut n_fit = 0;
                    let mut fit_after_queue = false;
                    for (j, x) in seg.chunks.iter().enumerate() {
                        if j == k || x.arrival <= c.arrival {
                            continue;
                        }
                        match seg.env.at(x.uts()).map(|e| x.d() as f64 - e) {
                            Some(r) if r < early_lim / 2.0 => n_early += 1,
                            _ => {
                                n_fit += 1;
                                fit_after_queue |= x.arrival > c.arrival + ahead;
                            }
                        }
                    }
                    // Nothing came after it yet (a pause in the talk):
                    // waiting costs nothing, its place lies ahead anyway.
                    // At the end, a lone packet far ahead is not kept.
                    let waited = now - c.arrival >= confirm && n_fit + n_early > 0;
                    if n_fit > n_early && (n_fit >= 2 && fit_after_queue || waited)
                        || force && n_early <= n_fit
                    {
                        // A stray: the stream goes on as before.
                        let c = self.segs[i].chunks.remove(k);
                        if let Some(c) = c {
                            self.stats.strays += 1;
                            let pos = self.pos;
                            self.segs[i].forget_end(c.end(), pos);
                            self.spare.put(c.into_samples());
                        }
                    } else if n_early > n_fit && (n_early >= 2 || waited || force) {
                        // (A source switched behind the SSRC may have a
                        // clock of its own: its drift is learnt afresh.)
                        self.split(i, k, false);
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
            let (u, d) = (c.uts(), c.d());
            // It was jitter: it counts towards the jitter seen.
            if let Some(e) = seg.env.at(u) {
                seg.env.note_residual(d as f64 - e);
            }
            seg.env.add(u, d);
        }
    }

    /// Chunks `k..` of segment `i` become a new segment after it.
    fn split(&mut self, i: usize, k: usize, same_clock: bool) {
        // (The first stream's probe is of its first stretch only.)
        self.probe = None;
        let tail: VecDeque<Chunk> = self.segs[i].chunks.split_off(k);
        let (ssrc, clock_rate) = (self.segs[i].ssrc, self.segs[i].clock_rate);
        let mut s = Segment::new(self.rate, ssrc, 0, clock_rate, self.segs[i].lineage);
        // The same stream on the same path: its delays' shape goes on.
        s.env.soft = self.segs[i].env.soft;
        s.env.soft_spread = self.segs[i].env.soft_spread;
        if same_clock {
            // The delay rose or the stream overlapped itself: the same
            // sender's clock goes on, and so does its drift.
            s.env.inherit_drift(&self.segs[i].env);
        }
        // The old segment's timestamp extension goes on in the new one.
        s.last_ts = self.segs[i].last_ts;
        s.last_ext = self.segs[i].last_ext;
        s.newest_arrival = self.segs[i].newest_arrival;
        // The chunks after the candidate are judged again against the new
        // segment's envelope: one far ahead of it (a stray among them) is a
        // candidate of its own, never a reason to stretch the segment.
        let early_limit = BREAK_MS as f64 * self.ms;
        for mut c in tail {
            let r = s.env.at(c.uts()).map(|e| c.d() as f64 - e);
            if r.is_some_and(|r| r < -early_limit) {
                c.flag = Flag::Early;
                self.maybe_flagged = true;
            } else {
                c.flag = Flag::Normal;
                s.env.add(c.uts(), c.d());
                s.max_end = Some(s.max_end.map_or(c.end(), |e| e.max(c.end())));
            }
            room_for_one(&mut s.chunks);
            s.chunks.push_back(c);
        }
        self.segs[i].max_end = self.segs[i]
            .chunks
            .iter()
            .filter(|c| c.flag != Flag::Early)
            .map(Chunk::end)
            .max();
        // Segments stay in the order of their places: a stream that took
        // over from this one for a while (another SSRC) and ended before
        // the tail's audio goes first (the tail is the old stream back
        // after a switch away and back: the other's audio is not cut).
        let tail_at = s.first_u().map(|u| s.place(u));
        let mut at = i + 1;
        while let (Some(t), Some(next)) = (tail_at, self.segs.get(at)) {
            let next_end = next.last_end().map(|e| next.place(e));
            let h = next.env.hysteresis();
            if next.started || next_end.is_none_or(|e| e > t + h) {
                break;
            }
            at += 1;
        }
        self.segs.reserve_exact(1);
        self.segs.insert(at, s);
        self.stats.breaks += 1;
    }

    /// Render everything the leg holds (end of the call). Returns the end.
    pub fn end_position(&mut self, now: i64) -> i64 {
        self.ready_until(now, true);
        self.audio_end().unwrap_or(self.pos).max(self.pos)
    }
}

#[cfg(test)]
mod tests;
