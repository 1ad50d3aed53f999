//! Unit tests of the timeline (the ground-truth suite is
//! `crates/pbx-testgen/tests/timing.rs`).

mod placement_tests {
    use super::super::*;

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
                ticks: 0,
                newest: true,
                restart: false,
                delay: 0,
                pcm: PacketAudio::Pcm(&p),
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

mod start_tests {
    use super::super::*;

    fn feed(t: &mut LegTimeline, k: i64, late: i64) {
        let pcm = [100i16; 160];
        t.insert(&Packet {
            arrival: k * 160 + late,
            ssrc: 1,
            ts: (k as u32) * 160,
            clock_rate: 8000,
            ticks: 0,
            newest: true,
            restart: false,
            delay: 0,
            pcm: PacketAudio::Pcm(&pcm),
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

    /// A leg whose first packet comes after time zero, through 20 ms of
    /// jitter: the render waits short of its first sample (by the spread
    /// of its delays) until its floor is known, then goes on; on a clean
    /// link it does not wait at all; and never longer than 3 s after its
    /// first packet.
    #[test]
    fn a_leg_starting_later_holds_the_render_until_its_floor_is_known() {
        let jittery = |k: i64| ((k * 7919) % 160 + 160) % 160;
        // Time zero at 0; the leg's first packet (sent at 8000) arrives
        // 8000 + its delay later: 1 s into the call.
        let mut t = LegTimeline::new(8000, 4000);
        t.set_start(0);
        for k in 50..60 {
            feed(&mut t, k, jittery(k));
        }
        let now = 60 * 160 + 160;
        let wait = t.ready_until(now, false);
        assert!(wait <= 50 * 160, "held short of its first sample: {wait}");
        assert!(wait > 50 * 160 - 200, "by no more than its spread: {wait}");
        assert_eq!(t.ready_until(now, true), i64::MAX, "not at the end");
        for k in 60..200 {
            feed(&mut t, k, jittery(k));
        }
        assert_eq!(t.ready_until(200 * 160, false), i64::MAX, "settled");
        // A clean link: no wait.
        let mut t = LegTimeline::new(8000, 4000);
        t.set_start(0);
        for k in 50..56 {
            feed(&mut t, k, 0);
        }
        assert_eq!(t.ready_until(56 * 160, false), i64::MAX);
        // A leg of three packets never settles: released 3 s after the first.
        let mut t = LegTimeline::new(8000, 4000);
        t.set_start(0);
        for k in 50..53 {
            feed(&mut t, k, jittery(k));
        }
        assert!(t.ready_until(50 * 160 + 23_000, false) < i64::MAX);
        assert_eq!(t.ready_until(50 * 160 + 24_200, false), i64::MAX);
    }

    /// With 20 ms of jitter the floor is known within a quarter of a
    /// millisecond on average only after about 80 packets; with 80 ms, only
    /// once their minima span 3 s.
    #[test]
    fn heavy_jitter_settles_after_enough_packets() {
        for (jitter, not_yet, settled) in [(160, 50, 110), (640, 140, 170)] {
            let mut t = LegTimeline::new(8000, 4000);
            let mut x = 12345u64;
            let mut late = || {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 33) % jitter) as i64
            };
            for k in 0..not_yet {
                feed(&mut t, k, late());
            }
            assert!(
                !t.start_settled(),
                "jitter {jitter}: not on {not_yet} packets"
            );
            for k in not_yet..settled {
                feed(&mut t, k, late());
            }
            assert!(t.start_settled(), "jitter {jitter}: on {settled} packets");
        }
    }
}

mod drift_tests {
    use super::super::*;

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
                ticks: 0,
                newest: true,
                restart: false,
                delay: 0,
                pcm: PacketAudio::Pcm(&pcm),
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

mod slew_tests {
    use super::super::*;

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
                ticks: 0,
                newest: true,
                restart: false,
                delay: 0,
                pcm: PacketAudio::Pcm(&pcm),
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

mod stray_tests {
    use super::super::*;

    fn feed(t: &mut LegTimeline, ts: u32, arrival: i64) {
        let pcm = [1000i16; 160];
        t.insert(&Packet {
            arrival,
            ssrc: 7,
            ts,
            clock_rate: 8000,
            ticks: 0,
            newest: true,
            restart: false,
            delay: 0,
            pcm: PacketAudio::Pcm(&pcm),
        });
    }

    /// A packet whose timestamp lies hours ahead, nothing after it yet: it
    /// is undecided, and the leg's end stays at its real audio (found by
    /// fuzzing: the end was the stray's place, and the engine rendered
    /// days of silence up to it, 20 s of CPU for one input).
    #[test]
    fn an_undecided_stray_does_not_extend_the_leg() {
        let mut t = LegTimeline::new(8000, 4000);
        for k in 0..50 {
            feed(&mut t, (k as u32) * 160, k * 160);
        }
        let end = t.audio_end().expect("audio");
        assert_eq!(end, 50 * 160);
        feed(&mut t, 1_600_000_000, 50 * 160);
        assert_eq!(t.audio_end(), Some(end), "a stray moved the end");
        // The stream goes on: the stray is dropped, the end follows the audio.
        for k in 51..60 {
            feed(&mut t, (k as u32) * 160, k * 160);
        }
        assert_eq!(t.ready_until(60 * 160, false), i64::MAX);
        assert_eq!(t.stats().strays, 1);
        assert_eq!(t.audio_end(), Some(60 * 160));
        // At the end of the call a lone stray is not kept either.
        feed(&mut t, 1_700_000_000, 60 * 160);
        assert_eq!(t.end_position(61 * 160), 60 * 160);
        assert_eq!(t.stats().strays, 2);
    }
}

/// Packets more than the window late on the newest sequence number: held
/// until the packets after them tell a stall from a hold.
mod held_tests {
    use super::super::*;

    /// 20 ms packets of 8 kHz audio, each sample its own index (so any
    /// misplacement shows), arriving `late` samples after their time.
    fn feed(t: &mut LegTimeline, out: &mut Vec<i16>, ts_k: i64, arrival: i64) {
        let pcm: Vec<i16> = (0..160)
            .map(|i| ((ts_k * 160 + i) % 30_000 + 1) as i16)
            .collect();
        t.insert(&Packet {
            arrival,
            ssrc: 9,
            ts: (ts_k as u32).wrapping_mul(160),
            clock_rate: 8000,
            ticks: 0,
            newest: true,
            restart: false,
            delay: 0,
            pcm: PacketAudio::Pcm(&pcm),
        });
        let h = (arrival - 4000).min(t.ready_until(arrival, false));
        if h > t.rendered() + 320 {
            t.render(h, out);
        }
    }

    /// A hold without timestamps (5 s of nothing, then the timestamps go on
    /// from where they stopped) that ends 100 ms before the call does: the
    /// packets after it are still undecided at the end, and kept there.
    #[test]
    fn a_resume_at_the_very_end_is_kept() {
        let mut t = LegTimeline::new(8000, 4000);
        let mut out = Vec::new();
        for k in 0..100 {
            feed(&mut t, &mut out, k, k * 160);
        }
        // 5 s later, the timestamps go on from packet 100.
        for j in 0..5 {
            let k = 100 + j;
            feed(&mut t, &mut out, k, k * 160 + 40_000);
        }
        let end = t.end_position(105 * 160 + 40_000);
        t.render(end, &mut out);
        assert_eq!(t.stats().breaks, 1, "{:?}", t.stats());
        // The 5 packets after the hold are there, at their arrival.
        let at = (100 * 160 + 40_000) as usize;
        assert_eq!(out.len(), at + 5 * 160);
        assert_eq!(out[at], 100 * 160 + 1);
        assert_eq!(t.stats().late, 0);
    }

    /// A stall of 1.2 s whose queue then drains at once: what was too late
    /// is dropped (counted), the rest lands where it belongs, and the leg
    /// goes on as one segment without any correction.
    #[test]
    fn a_drained_stall_is_one_segment_and_exact() {
        let mut t = LegTimeline::new(8000, 4000);
        let mut out = Vec::new();
        let stall = 50..110; // packets sent in the stall
        let drained = 110 * 160;
        let mut q = 0;
        for k in 0..200 {
            let arrival = if stall.contains(&k) {
                q += 1;
                drained + q
            } else {
                k * 160
            };
            // What comes while the queue drains waits behind it.
            let arrival = arrival.max(if k >= 110 { drained + q } else { 0 });
            feed(&mut t, &mut out, k, arrival);
        }
        let end = t.end_position(200 * 160);
        t.render(end, &mut out);
        let s = t.stats();
        assert_eq!((s.breaks, s.corrections), (0, 0), "{s:?}");
        // Packets that came more than the 500 ms window late (those sent
        // up to about 1.2 - 0.5 s into the stall) are lost, and only those:
        // silence there, every other sample exactly in place.
        let lost = (50..110)
            .filter(|k| drained + (k - 49) - k * 160 > 4000)
            .count();
        assert!((34..=38).contains(&lost), "{lost}");
        assert_eq!(s.late, lost as u64, "{s:?}");
        for (i, x) in out.iter().enumerate() {
            let k = i as i64 / 160;
            let want = ((i as i64) % 30_000 + 1) as i16;
            if (50..50 + lost as i64).contains(&k) {
                assert_eq!(*x, 0, "sample {i} (packet {k}) was too late");
            } else {
                assert_eq!(*x, want, "sample {i} (packet {k})");
            }
        }
    }
}

mod straggler_tests {
    use super::super::*;

    /// Sample value of stream `ssrc` at position `pos`: tells where each
    /// sample of the output came from.
    fn value(ssrc: u32, pos: i64) -> i16 {
        (ssrc as i64 * 1000 + pos / 160 % 500) as i16
    }

    /// Render as the engine does: 500 ms behind `pos`, no further than the
    /// timeline's flags are decided.
    fn render_behind(t: &mut LegTimeline, pos: i64, out: &mut Vec<i16>) {
        let h = (pos - 4000).min(t.ready_until(pos, false));
        if h > t.rendered() + 800 {
            t.render(h, out);
        }
    }

    fn packet(t: &mut LegTimeline, ssrc: u32, at: i64, ts: u32, arrival: i64, newest: bool) {
        let pcm: Vec<i16> = (0..160).map(|i| value(ssrc, at + i)).collect();
        t.insert(&Packet {
            arrival,
            ssrc,
            ts,
            clock_rate: 8000,
            ticks: 0,
            newest,
            restart: false,
            delay: 0,
            pcm: PacketAudio::Pcm(&pcm),
        });
    }

    /// An SSRC change on a clean link (A for 2 s, then B), and one packet
    /// of A reordered by more than a second, arriving after A's audio is
    /// all written: it is late, and B's audio stays where it was said (it
    /// became a segment of its own that ended B where it arrived: about
    /// 0.5 s of B lost, A's 20 ms written in its place).
    #[test]
    fn a_straggler_of_a_stream_already_written_is_late() {
        let mut t = LegTimeline::new(8000, 4000);
        let mut out = Vec::new();
        let end = 6 * 8000i64;
        for k in 0..end / 160 {
            let pos = k * 160;
            if pos < 16_000 {
                packet(&mut t, 1, pos, 5000 + pos as u32, pos, true);
            } else {
                packet(&mut t, 2, pos, 90_000 + pos as u32, pos, true);
            }
            if pos == 32_000 {
                // A's packet at 1.5 s, 2.5 s late (not the newest of A).
                packet(&mut t, 1, 12_000, 5000 + 12_000, pos, false);
            }
            render_behind(&mut t, pos, &mut out);
        }
        let last = t.end_position(end);
        t.render(last, &mut out);
        assert_eq!(out.len() as i64, end, "{:?}", t.stats());
        let wrong: Vec<usize> = (0..out.len())
            .filter(|&i| {
                let ssrc = if i < 16_000 { 1 } else { 2 };
                out[i] != value(ssrc, i as i64)
            })
            .collect();
        assert!(
            wrong.is_empty(),
            "{} samples not where they were said, first at {:?}; {:?}",
            wrong.len(),
            wrong.first(),
            t.stats()
        );
        assert_eq!(t.stats().late, 1);
    }

    /// The timestamps jump 20 s ahead under the same SSRC at 2 s (a source
    /// switched behind it), and the last packet before the jump is
    /// reordered 100 ms behind the packets after it: it belongs to the
    /// stream before the jump, and the audio after the jump stays where it
    /// was said.
    #[test]
    fn a_packet_reordered_across_a_timestamp_jump_stays_with_its_stream() {
        let mut t = LegTimeline::new(8000, 4000);
        let mut out = Vec::new();
        let end = 6 * 8000i64;
        let jump = 160_000u32;
        let ts_of = |pos: i64| 5000 + pos as u32 + if pos >= 16_000 { jump } else { 0 };
        for k in 0..end / 160 {
            let pos = k * 160;
            if pos == 16_000 - 160 {
                continue; // comes later
            }
            packet(&mut t, 1, pos, ts_of(pos), pos, true);
            if pos == 16_000 + 640 {
                let late = 16_000 - 160;
                packet(&mut t, 1, late, ts_of(late), pos, false);
            }
            render_behind(&mut t, pos, &mut out);
        }
        let last = t.end_position(end);
        t.render(last, &mut out);
        let wrong: Vec<usize> = (0..out.len().min(end as usize))
            .filter(|&i| out[i] != value(1, i as i64))
            .collect();
        assert_eq!(out.len() as i64, end, "{:?}", t.stats());
        assert!(
            wrong.is_empty(),
            "{} samples not where they were said, first at {:?}; {:?}",
            wrong.len(),
            wrong.first(),
            t.stats()
        );
    }
}

mod soft_floor_tests {
    use super::super::envelope::{quantile, soft_delays, Envelope};
    use super::super::{LegTimeline, Packet, PacketAudio};

    /// xorshift64*, uniform in [0, 1).
    struct Rng(u64);
    impl Rng {
        fn unit(&mut self) -> f64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
        }
        fn normal(&mut self) -> f64 {
            let (a, b) = (self.unit().max(1e-300), self.unit());
            (-2.0 * a.ln()).sqrt() * (2.0 * std::f64::consts::PI * b).cos()
        }
    }

    /// Delays (samples at 8 kHz) of `n` consecutive packets.
    fn draws(n: usize, rng: &mut Rng, f: impl Fn(&mut Rng) -> f64) -> Vec<i64> {
        (0..n).map(|_| f(rng).round() as i64).collect()
    }

    #[test]
    fn packets_tell_a_normal_delay_from_a_hard_floor() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut uniform_soft, mut normal_soft) = (0, 0);
        for _ in 0..500 {
            // 40 ms of uniform jitter, or a deviation of 5 ms around 20 ms.
            let mut u = draws(150, &mut rng, |r| 320.0 * r.unit());
            uniform_soft += usize::from(soft_delays(&mut u, 8.0) == Some(true));
            let mut n = draws(150, &mut rng, |r| 160.0 + 40.0 * r.normal());
            normal_soft += usize::from(soft_delays(&mut n, 8.0) == Some(true));
        }
        // (Expected: about 1 in 200, and 19 in 20.)
        assert!(
            uniform_soft <= 8,
            "uniform taken for soft {uniform_soft} of 500"
        );
        assert!(
            normal_soft >= 450,
            "normal taken for soft {normal_soft} of 500"
        );
        // Too few packets to tell; a spread under 2 ms is a floor.
        let mut few = draws(39, &mut rng, |r| 160.0 + 40.0 * r.normal());
        assert_eq!(soft_delays(&mut few, 8.0), None);
        let mut narrow = draws(150, &mut rng, |r| 40.0 + 2.0 * r.normal());
        assert_eq!(soft_delays(&mut narrow, 8.0), Some(false));
    }

    #[test]
    fn a_queue_that_wanders_is_no_soft_floor() {
        // Each packet's delay a step of at most 2.5 ms from the one before,
        // between 0 and 20 ms: from its first seconds its lowest tenth can
        // lie anywhere, its floor is hard.
        let mut rng = Rng(7);
        let mut soft = 0;
        for _ in 0..200 {
            let mut q = 160.0 * rng.unit();
            let mut d: Vec<i64> = (0..150)
                .map(|_| {
                    q = (q + (2.0 * rng.unit() - 1.0) * 20.0).abs();
                    if q > 160.0 {
                        q = 320.0 - q;
                    }
                    q.round() as i64
                })
                .collect();
            soft += usize::from(soft_delays(&mut d, 8.0) == Some(true));
        }
        assert_eq!(soft, 0, "wandering queue taken for soft {soft} of 200");
    }

    #[test]
    fn quantile_interpolates_between_ranks() {
        let mut v = [5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(quantile(&mut v, 0.0), 1.0);
        assert_eq!(quantile(&mut v, 1.0), 5.0);
        assert_eq!(quantile(&mut v, 0.5), 3.0);
        assert!((quantile(&mut v, 0.1) - 1.4).abs() < 1e-12);
        assert_eq!(quantile(&mut [7.0], 0.1), 7.0);
    }

    /// An envelope fed 60 s of packets (20 ms, 8 kHz) delayed by `f`.
    fn fed(f: impl Fn(&mut Rng) -> f64) -> Envelope {
        let mut rng = Rng(0x1234_5678);
        let mut env = Envelope::new(8000);
        for k in 0..3000i64 {
            let u = k * 160;
            env.add(u, f(&mut rng).round() as i64);
        }
        env
    }

    #[test]
    fn minima_tell_a_normal_delay_from_a_hard_floor() {
        // Not told by the first packets (soft starts false here): the
        // minima of 20 s and more tell it.
        let normal = fed(|r| 160.0 + 40.0 * r.normal());
        assert!(normal.soft);
        let uniform = fed(|r| 320.0 * r.unit());
        assert!(!uniform.soft);
        // Soft: placed by the lowest tenth of the minima around, between
        // the least and the median of them; the hysteresis grows with
        // their spread.
        let u = 2999 * 160;
        let (at, target) = (normal.at(u).unwrap(), normal.target(u).unwrap());
        assert!(target > at + 8.0, "target {target} at {at}");
        assert!(target < 160.0 - 40.0, "target {target}");
        assert!(normal.hysteresis() > uniform.hysteresis());
        // A hard floor is placed by its least delay, as before.
        assert_eq!(uniform.target(u), uniform.at(u));
    }

    /// A leg whose first stream comes through normally distributed jitter
    /// (20 +- 5 ms) for 30 s, then a new SSRC (a transfer) from the next
    /// sample on, through `second` (samples of delay for a packet): the
    /// output positions of the sample at 25 s and at 30.5 s, 33 s and 45 s,
    /// and whether the first stream was taken for soft when the second came.
    fn seam(seed: u64, second: impl Fn(&mut Rng) -> f64) -> ([i64; 4], bool) {
        let mut rng = Rng(0x5eed_0000 + seed);
        // (send sample, arrival, ssrc, ts)
        let mut pkts: Vec<(i64, i64, u32, u32)> = Vec::new();
        for k in 0..3000i64 {
            let s = k * 160;
            let (ssrc, ts, d) = if k < 1500 {
                (1, 1000 + s as u32, (160.0 + 40.0 * rng.normal()).max(0.0))
            } else {
                (2, 700_000 + (s as u32 - 240_000), second(&mut rng))
            };
            pkts.push((s, s + d.round() as i64 + 480, ssrc, ts));
        }
        let mut soft = false;
        let (_, out) = play(&mut pkts, true, |t, ssrc, first| {
            if ssrc == 2 && first {
                soft = t.segs.back().is_some_and(|g| g.env.soft);
            }
        });
        let at = [200_000i64, 244_000, 264_000, 360_000].map(|s| {
            let want: Vec<i16> = (s..s + 160).map(value).collect();
            (s..s + 800)
                .find(|&i| out.get(i as usize..i as usize + 160) == Some(&want[..]))
                .map_or(i64::MIN, |i| i - s)
        });
        (at, soft)
    }

    #[test]
    fn a_new_stream_on_a_soft_leg_continues_in_place() {
        // The same path: the new stream goes on where the old one was
        // placed, within the hysteresis, from its first packets on.
        // (Told soft by its first packets or its minima: most draws.)
        let mut told = 0;
        for seed in 1..=12 {
            let ([old, a, b, c], soft) = seam(seed, |r| (160.0 + 40.0 * r.normal()).max(0.0));
            assert!(old > 480, "old stream at {old}");
            if !soft {
                continue;
            }
            told += 1;
            // (At 45 s its own quantile places it: within the minima's
            // spread, about 4 ms here.)
            for (at, x, tol) in [("30.5 s", a, 24), ("33 s", b, 24), ("45 s", c, 32)] {
                assert!(
                    (x - old).abs() <= tol,
                    "seed {seed}: new stream {x} at {at}, old {old}"
                );
            }
        }
        assert!(told >= 9, "{told} of 12 first streams taken for soft");
        // A clean path (a fixed 20 ms): placed by its own delay, never
        // before it, not by the previous stream's spread.
        let ([old, a, b, c], soft) = seam(1, |_| 160.0);
        assert!(soft);
        assert!(old < 480 + 160 - 40, "old stream at {old}");
        for (at, x) in [("30.5 s", a), ("33 s", b), ("45 s", c)] {
            assert_eq!(x, 480 + 160, "new stream at {at}");
        }
    }

    /// A leg's first stream fed `f` (samples of delay at a send sample)
    /// for `secs` seconds of 20 ms packets, in the order they arrive,
    /// rendered as it goes.
    fn leg(seed: u64, secs: i64, f: impl Fn(&mut Rng, i64) -> f64) -> LegTimeline {
        let mut rng = Rng(0xabcd_0000 + seed);
        let mut pkts: Vec<(i64, i64, u32, u32)> = (0..secs * 50)
            .map(|k| {
                let s = k * 160;
                let d = f(&mut rng, s).round().max(0.0) as i64;
                (s, s + d + 480, 1, 1000 + s as u32)
            })
            .collect();
        play(&mut pkts, false, |_, _, _| {}).0
    }

    /// The sample value at send sample `s` (a sequence that repeats every
    /// 2.5 s: any 20 ms of it is found where it went).
    fn value(s: i64) -> i16 {
        ((s * 7919 % 20000) - 10000) as i16
    }

    /// Feeds 20 ms packets (send sample, arrival, SSRC, timestamp) to a
    /// leg in the order they arrive, rendering as it goes (and to the end
    /// with `finish`); `look` sees the timeline before each packet, with
    /// its SSRC and whether it is that SSRC's first.
    fn play(
        pkts: &mut [(i64, i64, u32, u32)],
        finish: bool,
        mut look: impl FnMut(&LegTimeline, u32, bool),
    ) -> (LegTimeline, Vec<i16>) {
        pkts.sort_by_key(|p| p.1);
        let mut t = LegTimeline::new(8000, 4000);
        let mut out = Vec::new();
        let mut newest: std::collections::HashMap<u32, u32> = Default::default();
        for &(s, arrival, ssrc, ts) in pkts.iter() {
            look(&t, ssrc, !newest.contains_key(&ssrc));
            let pcm: Vec<i16> = (s..s + 160).map(value).collect();
            let n = newest.entry(ssrc).or_insert(ts);
            let is_newest = ts >= *n;
            *n = (*n).max(ts);
            t.insert(&Packet {
                arrival,
                ssrc,
                ts,
                clock_rate: 8000,
                ticks: 0,
                newest: is_newest,
                restart: false,
                delay: 0,
                pcm: PacketAudio::Pcm(&pcm),
            });
            if arrival - 4000 > t.rendered() + 800 {
                t.render(arrival - 4000, &mut out);
            }
        }
        if finish {
            let end = t.end_position(pkts.last().map_or(0, |p| p.1) + 4000);
            t.render(end, &mut out);
        }
        (t, out)
    }

    #[test]
    fn the_first_seconds_tell_a_soft_leg_its_start_did_not() {
        // A deviation of 2 ms: the start settles after a few packets, too
        // few to tell; its first 256 tell it (20 s of minima would be
        // needed otherwise: 10 s here).
        let mut told = 0;
        for seed in 0..12 {
            let t = leg(seed, 10, |r, _| 160.0 + 16.0 * r.normal());
            told += usize::from(t.segs[0].env.soft);
            assert!(t.probe.is_none(), "seed {seed}: the probe kept");
        }
        assert!(told >= 11, "told soft {told} of 12");
        // Uniform delays, also tilted by a sender's drift of 300 ppm (3 ms
        // over the 10 s), and a clean link (no probe at all): never.
        for seed in 0..12 {
            for (name, t) in [
                ("uniform", leg(seed, 10, |r, _| 160.0 * r.unit())),
                (
                    "uniform, 300 ppm",
                    leg(seed, 10, |r, s| 160.0 * r.unit() + 0.0003 * s as f64),
                ),
                ("clean", leg(seed, 10, |_, _| 80.0)),
            ] {
                assert!(!t.segs[0].env.soft, "seed {seed}: {name} taken for soft");
            }
        }
        let t = leg(0, 1, |_, _| 80.0);
        assert!(t.any_started && t.probe.is_none(), "a clean link's probe");
    }
}
