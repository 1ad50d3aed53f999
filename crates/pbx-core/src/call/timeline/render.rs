//! Rendering a leg (see the parent module, "Rendering: corrections that
//! cannot be heard"): segments handed over, the applied offset following
//! the envelope, corrections taken in quiet places or spread, drift
//! followed by interpolation.

use super::*;

/// Returned tails detached at one position of the render at most.
const MAX_DETACH: u32 = 4;

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

impl LegTimeline {
    /// Write the leg's samples for timeline positions `[rendered(), to)`
    /// into `out` (exactly `to - rendered()` samples; silence where the leg
    /// has nothing).
    pub fn render(&mut self, to: i64, out: &mut Vec<i16>) {
        // Returned tails detached at this position (bounded: segments whose
        // places interleave could hand chunks back and forth for ever, an
        // endless loop found by the call_engine fuzz target).
        let mut detached = (self.pos, 0u32);
        while self.pos < to {
            // Drop segments that are finished and superseded.
            let Some(cur) = self.segs.front() else {
                let n = (to - self.pos) as usize;
                out.resize(out.len() + n, 0);
                self.pos = to;
                return;
            };
            if !cur.started {
                // The leg's first stream, beginning after time zero (a
                // party that starts sending later): its place is fixed
                // when its first sample is due, not at the first render
                // after its first packet, by then the hold-back window's
                // packets have settled its envelope. (Fixed from the first
                // packets alone, first packets 30 ms late put 2.5 s of the
                // leg 30 ms late, then cut 30 ms of its talk.) The
                // envelope only falls with more packets, so its place now
                // is the latest it can be: until then, silence.
                if !self.any_started {
                    if let Some(p) = cur.first_u().map(|u| cur.place(u).floor() as i64) {
                        if p >= to {
                            out.resize(out.len() + (to - self.pos) as usize, 0);
                            self.pos = to;
                            return;
                        }
                    }
                }
                self.start_front();
                continue;
            }
            let mut limit = to;
            if self.segs.len() > 1 {
                let switch = self.switch_point();
                if detached.0 != self.pos {
                    detached = (self.pos, 0);
                }
                if switch <= self.pos && detached.1 < MAX_DETACH && self.detach_return() {
                    detached.1 += 1;
                    continue;
                }
                if switch <= self.pos {
                    let h_prev = self.segs[0].env.hysteresis();
                    let slack = self.segs[1].env.seam_slack(self.segs[0].env.jitter_typ);
                    // Both sent at once (a clean link), or one stream whose
                    // delay fell: the overlap is kept, never cut.
                    let keep_both =
                        !self.segs[1].supersedes && (self.segs[0].env.clean() || self.continues());
                    if let Some(old) = self.segs.pop_front() {
                        self.cut(old);
                    }
                    self.start_front_at(self.pos, (h_prev, slack), keep_both);
                    continue;
                }
                limit = limit.min(switch);
            }
            self.render_front(limit, out);
        }
    }

    /// Chunks of the front segment that lie after the end of the next
    /// one's audio: the front's stream came back after another took over
    /// for a while (a short switch to another source and back, the same
    /// SSRC again). They become a segment of their own after the other;
    /// the hand-over to it would cut them.
    /// Called at the hand-over (the other's end is known by then: it is
    /// the window behind the newest arrival). Returns whether it did.
    fn detach_return(&mut self) -> bool {
        let (cur, next) = (&self.segs[0], &self.segs[1]);
        let (Some(end), Some(last)) = (next.last_end(), cur.chunks.back()) else {
            return false;
        };
        let h = cur.env.hysteresis().max(next.env.hysteresis());
        let next_end = next.place(end) - h;
        if cur.place(last.u) < next_end || next.first_u().is_none() {
            return false;
        }
        // (The first chunk at or after the other's end: places need not
        // grow with the chunks' order, so no binary search; and there is
        // one, the last, so the tail is never empty.)
        let Some(k) = cur.chunks.iter().position(|c| cur.place(c.u) >= next_end) else {
            return false;
        };
        self.split(0, k, true);
        true
    }

    /// Whether the next segment goes on where the front one's audio ends
    /// in the sender's own numbering: split from it, its first sample at
    /// or after the front's last, and the sender's gap between them (lost
    /// packets) no longer than their places overlap. One stream, whose
    /// packets began to arrive earlier than before (its delay fell, a
    /// queue on the way drained): its audio cannot overlap itself, so the
    /// next starts after the front, whatever their places say, and neither
    /// is cut. (A timestamp jump is no such gap: the places tell.)
    fn continues(&self) -> bool {
        let (cur, next) = (&self.segs[0], &self.segs[1]);
        let h = next.env.hysteresis().max(cur.env.hysteresis()).ceil() as i64;
        let (Some(e), Some(u)) = (cur.last_end(), next.first_u()) else {
            return false;
        };
        let overlap = (cur.place(e) - next.place(u)).round() as i64;
        // (A front of a packet or two, placed by itself, is no stream whose
        // delay fell: one packet came late, the next ones are in place.)
        let long = cur.env.span() >= (CONFIRM_MS as f64 * self.ms) as i64;
        cur.lineage == next.lineage && long && u + h >= e && u - e <= overlap.max(0) + h
    }

    /// Where the front segment hands over to the next one.
    fn switch_point(&self) -> i64 {
        let cur = &self.segs[0];
        let next = &self.segs[1];
        // (Its decoder's start, before the sender's first sample, may
        // overlap the end of the current: cut, it moves nothing.)
        let Some(nu) = next.first_uts() else {
            // The next segment has no audio yet: keep rendering the current.
            return i64::MAX;
        };
        let start = next.place(nu).round() as i64;
        let cur_end = cur.last_end().map(|e| cur.place(e).round() as i64);
        // Within what the estimate can tell apart, the new stream continues
        // the old one seamlessly (a new SSRC mid-talkspurt).
        let h = next.env.seam_tolerance().max(cur.env.hysteresis()).ceil() as i64;
        let late = h + next.env.seam_slack(cur.env.jitter_typ).ceil() as i64;
        match cur_end {
            Some(end) if end - start <= h && start - end <= late => end,
            // The signalling moved the leg to the next stream: it starts at
            // its place, whatever the old one still sent (beyond what the
            // estimate tells apart: within it, the old one's last packet
            // is kept whole, as for any seamless change).
            Some(end) if next.supersedes && end > start => start,
            Some(end) if end > start => {
                if end - start <= (MAX_OVERLAP_MS as f64 * self.ms) as i64 || self.continues() {
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
        self.start_front_at(pos, (0.0, 0.0), false);
    }

    /// The front segment begins; its first sample goes to its envelope's
    /// place, or to `at` if that is already written (the first segment of
    /// the leg: what falls before time zero is cut instead).
    /// `prev`: the previous segment's hysteresis, and how much later than
    /// it ended this one's place may lie beyond it and still be taken to
    /// go on from there ([`Envelope::seam_slack`]).
    fn start_front_at(&mut self, at: i64, prev: (f64, f64), keep_both: bool) {
        let (h_prev, slack) = prev;
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
        // A leg's first segment holds every packet so far: whether their
        // delays have a hard floor is told by them ([`Envelope::soft`]).
        if first {
            let mut d: Vec<i64> = seg.chunks.iter().map(Chunk::d).collect();
            let told = soft_delays(&mut d, seg.env.ms);
            if let Some(soft) = told {
                seg.env.soft = soft;
            }
            // Not told soft by these (a few seconds at most, fewer than a
            // probe's packets): told by more, unless they spread under a
            // hard floor's 2 ms.
            d.sort_unstable();
            let spread = d.get(d.len() / 2).zip(d.first()).map_or(0, |(m, l)| m - l);
            if told != Some(true)
                && d.len() < PROBE_LEN
                && spread as f64 >= SOFT_SPREAD_MS * seg.env.ms
            {
                if let Some(c) = seg.chunks.front() {
                    let mut probe = Probe::new(c.d());
                    for c in seg.chunks.iter() {
                        probe.push(c.d(), seg.env.ms);
                    }
                    self.probe = Some(probe);
                }
            }
        }
        // Never earlier than the evidence: the envelope is an upper bound of
        // the sender's true offset (every packet's delay is >= 0).
        let want = seg.target(u).unwrap_or((at - u) as f64).round();
        if first {
            seg.a = want;
            return;
        }
        let seamless = (at - seg.first_uts().unwrap_or(u)) as f64;
        let h = seg.env.seam_tolerance().max(h_prev);
        let a = if seamless - want <= h && want - seamless <= h + slack {
            seamless
        } else {
            want.max(seamless)
        };
        seg.a = a;
        // Started later than its place (overlap with the previous segment):
        // taken up in a quiet place or spread over the audio, if it matters.
        if a - want > h || want - a > h + slack {
            seg.pending = want - a;
            seg.pending_since = at;
            // On a clean link the overlap is real (both streams sent at
            // once), and one stream going on cannot overlap itself: neither
            // is cut. Otherwise, through jitter, it is as likely the first
            // estimate of the new stream's place: corrected at once.
            if keep_both {
                seg.pending_overlap = want - a;
            }
        }
    }

    /// Render the front (started) segment up to `limit`.
    fn render_front(&mut self, limit: i64, out: &mut Vec<i16>) {
        let ms = self.ms;
        // A correction this large is a step, not spread (samples).
        let step_min = MAX_SPREAD_MS as f64 * ms;
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
            if let Some(t) = seg.env.target((self.pos as f64 - seg.a).floor() as i64) {
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
            if let Some(t) = seg.env.target(u_now) {
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
                    } else if k <= -step_min && seg.pending > -step_min {
                        // Grown into a step back: its wait for a quiet
                        // place (below) starts now.
                        seg.pending_since = self.pos;
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
        // (Not the overlap with the previous segment: starting after it
        // kept both; a step would cut the start of this one after all.)
        // Nor a step back found by the estimate once settled (the delay
        // fell: a queue on the way drained, the packets coming earlier and
        // earlier, each within the jitter of the one before): taken at
        // once it would cut as much talk, so it waits for a quiet place
        // like the overlap.
        if seg.pending == 0.0 {
            seg.pending_overlap = 0.0;
        }
        let overlap = seg.pending * seg.pending_overlap > 0.0
            && seg.pending.abs() <= seg.pending_overlap.abs() + seg.env.hysteresis();
        let large = seg.pending.abs() >= step_min;
        let cuts = large && seg.pending < 0.0 && settled && !seg.pending_forced;
        if large && !overlap && !cuts {
            let k = seg.pending.round();
            take_step(seg, k, self.pos, &mut self.stats, &mut self.log);
            seg.pending_forced = false;
        }
        if seg.slew_left == 0.0 && settled {
            let waited = self.pos - seg.pending_since >= (SLEW_AFTER_MS as f64 * ms) as i64;
            // No quiet place came in time for a step back, or an overlap
            // kept whole larger than those spread (MAX_OVERLAP_MS; at 1 in
            // 256, 250 ms would bend a minute of audio): taken as a step
            // after all, the leg in place again.
            if waited && (cuts && !overlap || seg.pending.abs() > MAX_OVERLAP_MS as f64 * ms) {
                let k = seg.pending.round();
                take_step(seg, k, self.pos, &mut self.stats, &mut self.log);
                seg.pending_forced = false;
            }
            // No quiet place came in time: spread it over the audio.
            if seg.pending != 0.0 && waited {
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
                let mut jump = 0.0;
                if seg.pending != 0.0 {
                    let (need, into) = quiet_len(seg.pending, ms);
                    // From within the quiet run already copied: its middle
                    // may lie at once (the copied samples are gone from
                    // the chunks; missing counts as quiet, as they were).
                    let back = seg.quiet_run.min(into);
                    let from = ui - back;
                    let search_to = ui + (limit - self.pos);
                    // A step back is taken in parts where the quiet is
                    // shorter than it (each part skips only quiet), and
                    // never beyond the newest audio that came or the
                    // render limit (up to which nothing can come any
                    // more): what may still come is no quiet.
                    let found = if seg.pending <= -step_min {
                        let margin = (QUIET_MARGIN_MS as f64 * ms) as i64;
                        let least = margin + step_min as i64;
                        let came = seg.last_end().unwrap_or(i64::MIN).max(search_to);
                        find_quiet(&seg.chunks, from, search_to, least).and_then(|q| {
                            let run = quiet_len_at(&seg.chunks, q, need.min(came - q));
                            (run >= least)
                                .then(|| (q, into, seg.pending.max((margin - run) as f64)))
                        })
                    } else {
                        find_quiet(&seg.chunks, from, search_to, need)
                            .map(|q| (q, into, seg.pending.round()))
                    };
                    if let Some((q, into, k)) = found {
                        // Jump where the quiet run allows (its middle for
                        // a step forward).
                        let at = q + into + seg.a as i64;
                        if at < limit {
                            to = at.max(self.pos);
                            jump_at = Some(to);
                            jump = k;
                        }
                    }
                }
                let start = out.len();
                copy_exact(
                    &mut seg.chunks,
                    &mut self.spare,
                    self.pos - seg.a as i64,
                    to - self.pos,
                    out,
                );
                let copied = &out[start..];
                let loud = last_loud(copied);
                seg.quiet_run = match loud {
                    None => seg.quiet_run + copied.len() as i64,
                    Some(i) => (copied.len() - 1 - i) as i64,
                };
                self.pos = to;
                if jump_at == Some(self.pos) {
                    let rest = seg.pending - jump;
                    take_step(seg, jump, self.pos, &mut self.stats, &mut self.log);
                    if rest.abs() >= 1.0 {
                        // A part taken: the rest waits for the next quiet
                        // place, its time for one counted again.
                        seg.pending = rest;
                        seg.pending_since = self.pos;
                    }
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
                let (need, into) = quiet_len(seg.pending, ms);
                if find_quiet(&seg.chunks, ui - into, ui - into + 1, need).is_some() {
                    let k = seg.pending;
                    take_step(seg, k, self.pos, &mut self.stats, &mut self.log);
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
            let v = acc.round().clamp(-32768.0, 32767.0) as i16;
            out.push(v);
            seg.quiet_run = if v.unsigned_abs() > QUIET_LEVEL {
                0
            } else {
                seg.quiet_run + 1
            };
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
                        self.spare.put(c.into_samples());
                        dropped += 1;
                    }
                }
                hint = hint.saturating_sub(dropped);
            }
        }
    }
}

/// Take the pending correction as one step of `k` samples at render
/// position `at` (in a quiet place, or one too large to spread), noted.
fn take_step(
    seg: &mut Segment,
    k: f64,
    at: i64,
    stats: &mut TimelineStats,
    log: &mut VecDeque<Correction>,
) {
    seg.a += k;
    seg.pending = 0.0;
    LegTimeline::note(
        stats,
        log,
        Correction {
            at,
            samples: k,
            spread: false,
        },
    );
}

/// Length of quiet audio (samples) needed to take a correction of `k`, and
/// where in it the correction goes. A step forward (silence inserted) goes
/// in the middle of quiet twice its size; a step back (audio skipped) skips
/// only quiet, the margin's half left on each side (asking twice its size
/// there would leave a large one, 250 ms after a queue drained, waiting in
/// talk with pauses of 300 ms until it is cut after all).
fn quiet_len(k: f64, ms: f64) -> (i64, i64) {
    let margin = (QUIET_MARGIN_MS as f64 * ms) as i64;
    let size = k.abs().ceil() as i64;
    if k < 0.0 {
        (size + margin, margin / 2)
    } else {
        (2 * size + margin, size + margin / 2)
    }
}

/// First `u` in `[from, to)` where `need` samples from `u` on are all quiet
/// (below [`QUIET_LEVEL`]) or missing.
fn find_quiet(chunks: &VecDeque<Chunk>, from: i64, to: i64, need: i64) -> Option<i64> {
    let mut hint = 0usize;
    let mut start = from;
    loop {
        match first_loud(chunks, start, start + need, &mut hint) {
            None => return Some(start),
            Some(k) if k + 1 >= to => return None,
            Some(k) => start = k + 1,
        }
    }
}

/// How many samples from `u` on, up to `n`, are quiet (below
/// [`QUIET_LEVEL`]) or missing.
fn quiet_len_at(chunks: &VecDeque<Chunk>, u: i64, n: i64) -> i64 {
    let n = n.max(0);
    first_loud(chunks, u, u + n, &mut 0).map_or(n, |k| k - u)
}

/// The first position in `[from, to)` whose sample, as [`sample`] reads
/// it, is louder than [`QUIET_LEVEL`]. Where no chunk covers the positions
/// (silence) it skips to the next chunk: a search as long as a step
/// (hours, once a timestamp no arrival supported made one) costs what the
/// audio held costs, not what the positions number.
fn first_loud(chunks: &VecDeque<Chunk>, from: i64, to: i64, hint: &mut usize) -> Option<i64> {
    let mut u = from;
    while u < to {
        // The chunk `sample` reads at `u` (the same walk from the hint).
        let mut i = (*hint).min(chunks.len());
        while i > 0 && chunks[i - 1].end() > u {
            i -= 1;
        }
        while chunks.get(i).is_some_and(|c| c.end() <= u) {
            i += 1;
        }
        *hint = i;
        let c = chunks.get(i)?;
        if c.u > u {
            // No chunk before it reaches here: silence up to it.
            u = c.u;
        } else if c.pcm().get((u - c.u) as usize).unsigned_abs() > QUIET_LEVEL {
            return Some(u);
        } else {
            u += 1;
        }
    }
    None
}

/// The index of the last sample of `s` louder than [`QUIET_LEVEL`] (what
/// `s.iter().rposition(..)` gives), looked for 16 samples at a time: a
/// quiet leg's copy is scanned whole, every chunk.
fn last_loud(s: &[i16]) -> Option<usize> {
    let loud = |x: &i16| x.unsigned_abs() > QUIET_LEVEL;
    let mut blocks = s.rchunks_exact(16);
    let mut end = s.len();
    for b in &mut blocks {
        // (The largest magnitude of 16: no branch per sample.)
        if b.iter().fold(0u16, |m, x| m.max(x.unsigned_abs())) > QUIET_LEVEL {
            return b.iter().rposition(loud).map(|i| end - 16 + i);
        }
        end -= 16;
    }
    blocks.remainder().iter().rposition(loud)
}

/// Copy `n` source samples from `u` (silence where no chunk covers them),
/// dropping chunks that are left behind.
fn copy_exact(
    chunks: &mut VecDeque<Chunk>,
    spare: &mut Spare,
    mut u: i64,
    mut n: i64,
    out: &mut Vec<i16>,
) {
    while n > 0 {
        while chunks.front().is_some_and(|c| c.end() <= u) {
            if let Some(c) = chunks.pop_front() {
                spare.put(c.into_samples());
            }
        }
        match chunks.front() {
            Some(c) if c.u <= u => {
                let off = (u - c.u) as usize;
                let m = ((c.end() - u).min(n)) as usize;
                c.pcm().extend_into(off, m, out);
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
            return c.pcm().get((u - c.u) as usize);
        }
        return 0;
    }
    *hint = i;
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `rposition` gives, for every length around the blocks of 16
    /// and the loud sample anywhere (or nowhere; the level itself is quiet).
    #[test]
    fn last_loud_is_rposition() {
        let want = |s: &[i16]| s.iter().rposition(|x| x.unsigned_abs() > QUIET_LEVEL);
        for len in 0..70usize {
            let quiet: Vec<i16> = (0..len)
                .map(|i| [0, 128, -128, 5, -100][i % 5] as i16)
                .collect();
            assert_eq!(last_loud(&quiet), want(&quiet), "{len}");
            for at in 0..len {
                for v in [129i16, -129, i16::MIN, i16::MAX] {
                    let mut s = quiet.clone();
                    s[at] = v;
                    assert_eq!(last_loud(&s), Some(at), "{len} {at}");
                    if at > 0 {
                        s[at - 1] = v;
                        assert_eq!(last_loud(&s), want(&s), "{len} {at}");
                    }
                }
            }
        }
    }

    /// The skipping search finds what reading every position finds, on
    /// chunks that overlap, leave gaps and hold loud samples anywhere.
    #[test]
    fn quiet_search_matches_reading_every_sample() {
        fn naive_len(chunks: &VecDeque<Chunk>, u: i64, n: i64) -> i64 {
            let mut hint = 0usize;
            (0..n.max(0))
                .find(|i| sample(chunks, u + i, &mut hint).unsigned_abs() > QUIET_LEVEL)
                .unwrap_or(n.max(0))
        }
        fn naive_find(chunks: &VecDeque<Chunk>, from: i64, to: i64, need: i64) -> Option<i64> {
            let mut hint = 0usize;
            let mut run_start = from;
            let mut u = from;
            while u < to + need {
                if sample(chunks, u, &mut hint).unsigned_abs() > QUIET_LEVEL {
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
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |m: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % m
        };
        let mut spare = super::super::samples::Spare::default();
        for _ in 0..3000 {
            let mut chunks = VecDeque::new();
            let mut u = next(20) as i64;
            for _ in 0..next(6) {
                let len = 1 + next(40) as usize;
                let pcm: Vec<i16> = (0..len)
                    .map(|_| {
                        if next(8) == 0 {
                            2000
                        } else {
                            next(200) as i16 - 100
                        }
                    })
                    .collect();
                let c = Chunk::new(u, 0, 0, Flag::Normal, spare.samples(PacketAudio::Pcm(&pcm)));
                chunks.push_back(c);
                // Overlapping the next, or a gap before it.
                u += next(60) as i64 - 10;
                u = u.max(chunks.back().map_or(0, |c: &Chunk| c.u));
            }
            let from = next(80) as i64 - 10;
            let to = from + next(100) as i64;
            let need = 1 + next(30) as i64;
            assert_eq!(
                find_quiet(&chunks, from, to, need),
                naive_find(&chunks, from, to, need)
            );
            assert_eq!(
                quiet_len_at(&chunks, from, need),
                naive_len(&chunks, from, need)
            );
        }
    }
}
