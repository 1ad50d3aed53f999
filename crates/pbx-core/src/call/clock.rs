//! Leg clock: where on the call's timeline each RTP packet of one leg belongs.
//!
//! In: for every packet of the leg, its arrival position (arrival time since the
//! call's time zero, in output samples), SSRC, RTP timestamp and RTP clock rate.
//! Out: the timeline position (output samples) of the packet's first sample.
//!
//! RTP timestamps say how long the audio is; arrival times say when it happened.
//! The clock anchors an SSRC's timestamps on the arrival of its first packet and
//! then follows the timestamps, so network jitter does not move audio around and
//! silence suppression (timestamp jumps) lands where it should. It re-anchors on
//! arrival time when the two really disagree:
//!
//! - a new SSRC or a new RTP clock rate (transfer, media server, re-INVITE);
//! - a packet newer than any before whose timestamp places it more than
//!   `late_limit` behind its arrival (the sender paused, e.g. hold, without
//!   advancing its timestamps);
//! - a packet placed more than `ahead_limit` ahead of its arrival (a timestamp
//!   jump larger than the real pause);
//! - a packet that arrives more than `early_limit` *earlier* than its timestamp
//!   says: jitter only ever delays packets, so the anchor packet itself was
//!   delayed (or the sender's clock runs fast); the anchor moves back at once;
//! - slow drift: over every `window`, the smallest deviation between arrival and
//!   timestamp position (the least-delayed packet tells the true offset; jitter
//!   only ever adds delay) is computed, and if it is later than `tolerance` or
//!   earlier than `fine_tolerance` the anchor moves by it. A sender clock a few hundred ppm off, or a
//!   first packet that itself was delayed, is corrected this way while jitter
//!   bursts of tens of milliseconds never trigger a re-anchor.

/// Tuning of a [`LegClock`], in output samples and microseconds.
#[derive(Debug, Clone, Copy)]
pub struct ClockParams {
    /// Output sample rate (8000 or 16000).
    pub rate: u32,
    /// New packets later than this (samples) behind their arrival re-anchor.
    pub late_limit: i64,
    /// Packets more than this (samples) ahead of their arrival re-anchor.
    pub ahead_limit: i64,
    /// Lateness (samples) of a whole window's least-delayed packet beyond which
    /// the anchor moves forward at the end of the window.
    pub tolerance: i64,
    /// Earliness (samples) of a whole window's least-delayed packet beyond
    /// which the anchor moves back at the end of the window.
    pub fine_tolerance: i64,
    /// A single packet this much (samples) earlier than its timestamp says
    /// moves the anchor back at once.
    pub early_limit: i64,
    /// Length of a drift window, in samples of arrival time.
    pub window: i64,
}

impl ClockParams {
    /// Defaults for a jitter window of `hold_back_ms`.
    pub fn new(rate: u32, hold_back_ms: u32) -> Self {
        let ms = |m: i64| m * i64::from(rate) / 1000;
        ClockParams {
            rate,
            late_limit: ms(i64::from(hold_back_ms)),
            ahead_limit: ms(500),
            tolerance: ms(30),
            fine_tolerance: ms(2),
            early_limit: ms(10),
            window: ms(5000),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Anchor {
    ssrc: u32,
    clock_rate: u32,
    /// Extended timestamp of the anchor point.
    ext_ts: i64,
    /// Timeline position of the anchor point.
    pos: i64,
    last_ts: u32,
    last_ext: i64,
    highest_ext: i64,
}

/// Why a packet was (re-)anchored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reanchor {
    /// First packet, new SSRC or new clock rate.
    NewStream,
    /// Timestamps fell behind arrival (pause without timestamp jump).
    Late,
    /// Timestamps ran ahead of arrival.
    Ahead,
    /// Slow drift corrected by the window rule (by this many samples).
    Drift(i64),
}

/// Where a packet goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// Timeline position (output samples) of the packet's first sample.
    pub pos: i64,
    /// Whether this packet moved the anchor.
    pub reanchor: Option<Reanchor>,
}

#[derive(Debug, Clone)]
pub struct LegClock {
    p: ClockParams,
    anchor: Option<Anchor>,
    win_start: i64,
    win_min: i64,
    /// Whether the first (short) window since the last anchor has passed.
    settled: bool,
    /// A small backward correction waiting for a gap in the stream (applying
    /// it mid-talk would overwrite the end of the previous packet).
    pending: i64,
    pending_since: i64,
    /// Smallest timestamp step seen (one packet), in RTP units.
    min_step: i64,
    reanchors: u32,
}

impl LegClock {
    pub fn new(p: ClockParams) -> Self {
        LegClock {
            p,
            anchor: None,
            win_start: 0,
            win_min: i64::MAX,
            settled: false,
            pending: 0,
            pending_since: 0,
            min_step: i64::MAX,
            reanchors: 0,
        }
    }

    /// How many times the clock re-anchored after the first packet.
    pub fn reanchors(&self) -> u32 {
        self.reanchors
    }

    fn ts_to_samples(&self, dts: i64, clock_rate: u32) -> i64 {
        (i128::from(dts) * i128::from(self.p.rate) / i128::from(clock_rate.max(1))) as i64
    }

    fn start(&mut self, arrival_pos: i64, ssrc: u32, ts: u32, clock_rate: u32) {
        let ext = i64::from(ts);
        self.anchor = Some(Anchor {
            ssrc,
            clock_rate,
            ext_ts: ext,
            pos: arrival_pos,
            last_ts: ts,
            last_ext: ext,
            highest_ext: ext,
        });
        self.win_start = arrival_pos;
        self.win_min = i64::MAX;
        self.settled = false;
        self.pending = 0;
    }

    /// Place one packet that is the newest of its stream by sequence number.
    pub fn place(&mut self, arrival_pos: i64, ssrc: u32, ts: u32, clock_rate: u32) -> Placement {
        self.place_seq(arrival_pos, ssrc, ts, clock_rate, true)
    }

    /// Place one packet. `arrival_pos` is its arrival time on the timeline;
    /// `seq_newest` says whether its sequence number is the highest so far (a
    /// timestamp far behind on the next sequence number is a restart, not a
    /// very late packet).
    pub fn place_seq(
        &mut self,
        arrival_pos: i64,
        ssrc: u32,
        ts: u32,
        clock_rate: u32,
        seq_newest: bool,
    ) -> Placement {
        let Some(a) = self.anchor.as_mut() else {
            self.start(arrival_pos, ssrc, ts, clock_rate);
            return Placement {
                pos: arrival_pos,
                reanchor: Some(Reanchor::NewStream),
            };
        };
        if a.ssrc != ssrc || a.clock_rate != clock_rate {
            self.reanchors += 1;
            self.start(arrival_pos, ssrc, ts, clock_rate);
            return Placement {
                pos: arrival_pos,
                reanchor: Some(Reanchor::NewStream),
            };
        }
        // Extend the 32-bit timestamp relative to the last one seen.
        let delta = i64::from(ts.wrapping_sub(a.last_ts) as i32);
        let ext = a.last_ext + delta;
        a.last_ts = ts;
        a.last_ext = ext;
        let step = ext - a.highest_ext;
        let is_new = ext > a.highest_ext;
        if is_new {
            a.highest_ext = ext;
        }
        // A pending backward correction is applied where the stream has a gap
        // (silence suppression, comfort noise, loss) so no audio is overwritten,
        // or after 10 s at the latest.
        let mut applied = None;
        if self.pending != 0
            && seq_newest
            && (step >= 2 * self.min_step
                || arrival_pos - self.pending_since > 10 * i64::from(self.p.rate))
        {
            a.pos += self.pending;
            applied = Some(Reanchor::Drift(self.pending));
            self.pending = 0;
            self.reanchors += 1;
        }
        if step > 0 {
            self.min_step = self.min_step.min(step);
        }
        let (a_pos, a_ext) = (a.pos, a.ext_ts);
        let ts_pos = a_pos + self.ts_to_samples(ext - a_ext, clock_rate);
        let dev = arrival_pos - ts_pos;
        if ((is_new || seq_newest) && dev > self.p.late_limit) || dev < -self.p.ahead_limit {
            self.reanchors += 1;
            self.start(arrival_pos, ssrc, ts, clock_rate);
            return Placement {
                pos: arrival_pos,
                reanchor: Some(if dev > 0 {
                    Reanchor::Late
                } else {
                    Reanchor::Ahead
                }),
            };
        }
        // A packet can arrive late (jitter), never early: one that arrives
        // clearly earlier than its timestamp says shows the anchor itself was a
        // delayed packet (or the sender's clock runs fast). Correct at once.
        if dev < -self.p.early_limit {
            if let Some(a) = self.anchor.as_mut() {
                a.pos += dev;
            }
            self.reanchors += 1;
            self.win_start = arrival_pos;
            self.win_min = i64::MAX;
            return Placement {
                pos: arrival_pos,
                reanchor: Some(Reanchor::Drift(dev)),
            };
        }
        self.win_min = self.win_min.min(dev);
        let mut reanchor = applied;
        // The first window after an anchor is short, so a first packet that
        // was itself delayed is corrected within a second.
        let window = if self.settled {
            self.p.window
        } else {
            self.p.window / 5
        };
        if arrival_pos - self.win_start >= window {
            // While settling, small earliness is corrected too (it is the
            // anchor's own delay); afterwards only real drift is.
            let early = if self.settled {
                self.p.early_limit
            } else {
                self.p.fine_tolerance
            };
            self.settled = true;
            let shift = self.win_min;
            if shift > self.p.tolerance {
                // Later than the timestamps say: move forward (silence fills).
                if let Some(a) = self.anchor.as_mut() {
                    a.pos += shift;
                }
                self.reanchors += 1;
                reanchor = Some(Reanchor::Drift(shift));
            } else if shift < -early && self.pending == 0 {
                // Earlier: move back at the next gap.
                self.pending = shift;
                self.pending_since = arrival_pos;
            }
            self.win_start = arrival_pos;
            self.win_min = i64::MAX;
        }
        Placement {
            pos: ts_pos,
            reanchor,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn params() -> ClockParams {
        ClockParams::new(8000, 500)
    }

    #[test]
    fn follows_timestamps_through_jitter() {
        let mut c = LegClock::new(params());
        let mut ts = 1000u32;
        for n in 0..1000i64 {
            let jitter = (n * 37 % 11) * 40; // 0..400 samples = up to 50 ms
            let p = c.place(n * 160 + jitter, 7, ts, 8000);
            assert_eq!(p.pos, n * 160, "packet {n}");
            ts = ts.wrapping_add(160);
        }
        assert_eq!(c.reanchors(), 0);
    }

    #[test]
    fn timestamp_wrap_is_continuous() {
        let mut c = LegClock::new(params());
        let mut ts = u32::MAX - 800;
        for n in 0..20i64 {
            assert_eq!(c.place(n * 160, 1, ts, 8000).pos, n * 160);
            ts = ts.wrapping_add(160);
        }
    }

    #[test]
    fn silence_suppression_jump_lands_in_place() {
        let mut c = LegClock::new(params());
        c.place(0, 1, 0, 8000);
        // 3 s of silence, timestamps jump accordingly
        let p = c.place(24_000, 1, 24_000, 8000);
        assert_eq!(p.pos, 24_000);
        assert_eq!(p.reanchor, None);
    }

    #[test]
    fn pause_without_timestamp_jump_reanchors_on_arrival() {
        let mut c = LegClock::new(params());
        c.place(0, 1, 0, 8000);
        c.place(160, 1, 160, 8000);
        // hold for 10 s, timestamps continue as if nothing happened
        let p = c.place(80_160, 1, 320, 8000);
        assert_eq!(p.pos, 80_160);
        assert_eq!(p.reanchor, Some(Reanchor::Late));
        assert_eq!(c.place(80_320, 1, 480, 8000).pos, 80_320);
    }

    #[test]
    fn reordered_old_packet_does_not_reanchor() {
        let mut c = LegClock::new(params());
        c.place(0, 1, 0, 8000);
        c.place(160, 1, 160, 8000);
        c.place(320, 1, 320, 8000);
        // a packet from long ago arrives very late: stays at its timestamp position
        let p = c.place_seq(20_000, 1, 160, 8000, false);
        assert_eq!(p.pos, 160);
        assert_eq!(p.reanchor, None);
    }

    #[test]
    fn timestamp_restart_on_the_next_sequence_number_reanchors() {
        let mut c = LegClock::new(params());
        c.place(0, 1, 347_040, 8000);
        c.place(160, 1, 347_200, 8000);
        // same SSRC, next sequence number, timestamp back to 0
        let p = c.place_seq(320, 1, 0, 8000, true);
        assert_eq!(p.pos, 320);
        assert_eq!(p.reanchor, Some(Reanchor::Late));
        assert_eq!(c.place(480, 1, 160, 8000).pos, 480);
    }

    #[test]
    fn small_backward_correction_waits_for_a_gap() {
        let mut c = LegClock::new(params());
        // The first packet was 6 ms late: every later one is 48 samples early.
        c.place(48, 1, 0, 8000);
        let mut ts = 0u32;
        let mut pos = 0i64;
        let mut moved_at = None;
        for n in 1..600i64 {
            ts = ts.wrapping_add(160);
            pos += 160;
            // a gap of 10 packets (silence suppression) from packet 300
            if (300..310).contains(&n) {
                continue;
            }
            let p = c.place(pos, 1, ts, 8000);
            if let Some(Reanchor::Drift(s)) = p.reanchor {
                moved_at.get_or_insert((n, s));
            }
        }
        let (n, s) = moved_at.expect("corrected");
        assert_eq!(n, 310, "applied at the first packet after the gap");
        assert_eq!(s, -48);
        assert_eq!(
            c.place(pos + 160, 1, ts.wrapping_add(160), 8000).pos,
            pos + 160
        );
    }

    #[test]
    fn ssrc_change_reanchors() {
        let mut c = LegClock::new(params());
        c.place(0, 1, 0, 8000);
        let p = c.place(1600, 2, 999_999, 8000);
        assert_eq!(p.pos, 1600);
        assert_eq!(p.reanchor, Some(Reanchor::NewStream));
        assert_eq!(c.place(1760, 2, 1_000_159, 8000).pos, 1760);
    }

    #[test]
    fn forward_timestamp_jump_beyond_real_time_reanchors() {
        let mut c = LegClock::new(params());
        c.place(0, 1, 0, 8000);
        let p = c.place(160, 1, 160 + 80_000, 8000);
        assert_eq!(p.reanchor, Some(Reanchor::Ahead));
        assert_eq!(p.pos, 160);
    }

    #[test]
    fn wideband_clock_mapping() {
        // Opus: 48 kHz RTP clock, 16 kHz output
        let mut c = LegClock::new(ClockParams::new(16000, 500));
        c.place(0, 1, 0, 48000);
        assert_eq!(c.place(320, 1, 960, 48000).pos, 320);
    }

    proptest! {
        /// A sender whose clock is off by up to ±500 ppm, over an hour, with
        /// jitter up to 60 ms: every packet stays within tolerance + one drift
        /// step of where its arrival says it belongs, and jitter alone never
        /// causes more re-anchors than drift needs.
        #[test]
        fn drift_stays_bounded(ppm in -500i64..500, seed in any::<u64>()) {
            let p = params();
            let mut c = LegClock::new(p);
            let mut rng = seed;
            let mut worst = 0i64;
            let packets = 180_000i64; // one hour of 20 ms packets
            let mut settled_reanchors = 0;
            for n in 0..packets {
                rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let jitter = ((rng >> 33) % 480) as i64; // 0..60 ms
                let true_pos = n * 160 * (1_000_000 + ppm) / 1_000_000;
                let ts = (n as u32).wrapping_mul(160);
                let pl = c.place(true_pos + jitter, 3, ts, 8000);
                if n > 250 { worst = worst.max((pl.pos - true_pos).abs()); }
                if n == 1500 { settled_reanchors = c.reanchors(); }
            }
            // tolerance 30 ms + one window's drift (5 s * 500 ppm = 2.5 ms) + jitter slack
            prop_assert!(worst <= p.tolerance + 40 + 480, "worst {worst}");
            // After the first 30 s, re-anchors happen only as often as the drift needs.
            let step = if ppm > 0 { p.tolerance } else { p.early_limit };
            let needed = (packets * 160 * ppm.abs() / 1_000_000) / step + 2;
            let steady = i64::from(c.reanchors() - settled_reanchors);
            prop_assert!(steady <= needed, "steady re-anchors {steady}, needed {needed}");
        }
    }
}
