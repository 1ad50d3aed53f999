//! Adversarial timing tests, third round: sender and network behaviours
//! none of the earlier rounds exercise (a sender whose clock changes its
//! rate mid-call, a congestion episode on a drifting leg, the marker bit on
//! every packet), each against ground truth (the audio each party sent,
//! placed where it was said) or the same call without the behaviour.
//!
//! Run: `cargo test --release -p pbx-testgen --test timing_adversarial3`.

use pbx_testgen::CallTruth;

mod common;
use common::*;

/// Lags (ms) of channel `ch`'s 250 ms pieces of talk from `from_ms` to
/// `to_ms` against the truth: (ms, lag, correlation).
fn piece_lags(
    rec: &Recorded,
    truth: &CallTruth,
    ch: usize,
    from_ms: u32,
    to_ms: u32,
) -> Vec<(u32, f64, f64)> {
    let per_ms = rec.rate as usize / 1000;
    let mut out = Vec::new();
    for at in (from_ms..to_ms).step_by(250) {
        let a = at as usize * per_ms;
        if a + 250 * per_ms > truth.expected[ch].len() {
            break;
        }
        if pbx_testgen::audio::rms(&truth.expected[ch][a..a + 250 * per_ms]) > 300.0 {
            let (l, c) = lag_at(&rec.ch[ch], &truth.expected[ch], rec.rate, at, 250, 60);
            out.push((at, l, c));
        }
    }
    out
}

/// A sender whose clock changes its rate mid-call, its SSRC, sequence
/// numbers and timestamps going on: a call handed from an IVR on a
/// server's clock to an agent's ATA behind an SBC that keeps them, or an
/// oscillator disciplined mid-call. Caller only, 120 s, the change at 40 s,
/// with and without jitter on both legs. In 250 ms pieces of talk against
/// where each was said: within 2 ms before the change (from 12 s: the first
/// drift learnt), within 6.5 ms while the new one is learnt (40-50 s),
/// within 2.5 ms from 50 s on; no 5 ms of talk lost (found within 10 ms);
/// the callee within 2 ms (its time zero's estimate through the jitter).
///
/// Before 2026-12-07 the old slope was kept until the window's halves both
/// lay after the change, and a rising floor's window minimum lagged it by
/// 10 s: 9-13 ms off after 50 s, back within 2 ms only at 64-78 s.
#[test]
fn drift_changes_mid_call() {
    let mut errs: Vec<String> = Vec::new();
    for (from, to, jitter) in [
        (0, 1000, 0),
        (0, 1000, 20),
        (500, -500, 0),
        (500, -500, 20),
        (-300, 300, 40),
        (2000, 0, 20),
    ] {
        let name = format!("drift {from:+} -> {to:+} ppm at 40 s, jitter {jitter}");
        let mut c = call(&format!("dc{from}{to}@t"), 120, 430);
        c.caller_leg.impair.drift_ppm = from;
        c.caller_leg.impair.drift_change = Some((40_000, to));
        both(&mut c, |i| i.jitter_ms = jitter);
        let (truth, rec) = record(&c);
        let pieces = piece_lags(&rec, &truth, 0, 12_000, 120_000);
        for (a, b, tol) in [
            (12_000, 40_000, 2.0),
            (40_000, 50_000, 6.5),
            (50_000, 120_000, 2.5),
        ] {
            let off: Vec<_> = pieces
                .iter()
                .filter(|p| p.0 >= a && p.0 < b && (p.1.abs() > tol || p.2 < 0.9))
                .collect();
            if !off.is_empty() {
                errs.push(format!(
                    "{name}: pieces off by more than {tol} ms (ms, lag, corr): {off:?}"
                ));
            }
        }
        let lost = lost_blocks(&rec.ch[0], &truth.expected[0], 8000, 0, 120_000, 80);
        if !lost.is_empty() {
            errs.push(format!(
                "{name}: {} blocks of 5 ms lost: {lost:?}",
                lost.len()
            ));
        }
        let moved = windows_off(&rec.ch[1], &truth.expected[1], 8000, 0, 2.0);
        if !moved.is_empty() {
            errs.push(format!("{name}: the callee moved: {moved:?}"));
        }
        let worst = |a: u32, b: u32| {
            pieces
                .iter()
                .filter(|p| p.0 >= a && p.0 < b)
                .fold(0.0, |m: f64, p| m.max(p.1.abs()))
        };
        let last_off = pieces.iter().filter(|p| p.1.abs() > 2.0).map(|p| p.0).max();
        println!(
            "{name}: worst {:.2} ms before the change, {:.2} ms at 40-50 s, {:.2} ms after; last piece over 2 ms at {last_off:?} ms; drift followed {} ppm, corrections {:?}",
            worst(12_000, 40_000),
            worst(40_000, 50_000),
            worst(50_000, 120_000),
            rec.meta.channels[0].drift_ppm,
            rec.meta.channels[0].timing_log
        );
    }
    assert!(errs.is_empty(), "{errs:#?}");
}

/// A queue on the way of a leg whose sender's clock drifts (its drift
/// followed when the queue fills): the delay rises by X for seconds, then
/// the queue drains at once. Outside the episode and the 3 s after it
/// every 250 ms piece of talk is within 2.5 ms of where it was said (within
/// the episode the leg lies X later, as after a pause: the doc's "A
/// congestion episode on one leg"), no 5 ms of talk lost from 3 s after
/// it (found within 10 ms).
///
/// Before 2026-12-07, the drain's first low minima in the newer half of
/// the window tilted its line to -3,500 +- 1,900 ppm, which was followed
/// (500 ppm sender, 300 ms for 5 s: 17.5 ms off 4.5 s after the drain, 68
/// blocks lost; the drift then dropped for 10 s, 6.5 ms off).
#[test]
fn a_congestion_episode_on_a_drifting_leg() {
    let mut errs: Vec<String> = Vec::new();
    for (drift, (at, len, extra), ramp, jitter) in [
        (500, (20_000, 5_000, 300), 0, 0),
        (-500, (20_000, 5_000, 300), 0, 0),
        (800, (20_000, 3_000, 100), 0, 20),
        (-300, (20_000, 5_000, 200), 1_000, 0),
        (500, (25_000, 8_000, 150), 0, 20),
    ] {
        let name =
            format!("drift {drift:+} ppm, {extra} ms for {len} ms (ramp {ramp}), jitter {jitter}");
        let mut c = call(&format!("cg{drift}{extra}@t"), 60, 431);
        c.caller_leg.impair.drift_ppm = drift;
        c.caller_leg.impair.congestion = Some((at, len, extra));
        c.caller_leg.impair.congestion_ramp_ms = ramp;
        both(&mut c, |i| i.jitter_ms = jitter);
        let (truth, rec) = record(&c);
        let settled = at + len + 3_000;
        let off: Vec<_> = piece_lags(&rec, &truth, 0, 12_000, 60_000)
            .into_iter()
            .filter(|p| (p.0 + 250 < at || p.0 >= settled) && (p.1.abs() > 2.5 || p.2 < 0.9))
            .collect();
        if !off.is_empty() {
            errs.push(format!("{name}: pieces off (ms, lag, corr): {off:?}"));
        }
        let lost = lost_blocks(&rec.ch[0], &truth.expected[0], 8000, settled, 60_000, 80);
        if !lost.is_empty() {
            errs.push(format!(
                "{name}: {} blocks of 5 ms lost: {lost:?}",
                lost.len()
            ));
        }
        println!(
            "{name}: drift followed {} ppm, corrections {:?}",
            rec.meta.channels[0].drift_ppm, rec.meta.channels[0].timing_log
        );
    }
    assert!(errs.is_empty(), "{errs:#?}");
}

/// A sender that sets the marker bit on every packet (not only at a talk
/// spurt's start; some devices do): each packet next in the decoding order
/// is then a "spurt start" that could start a segment of its own
/// (`timeline::Packet::restart`). Through jitter, silence suppression with
/// a stalled link, a timestamp jump and a hold whose timestamps stop, the
/// recording is sample for sample that of the same call without it.
#[test]
fn the_marker_bit_on_every_packet_changes_nothing() {
    use pbx_testgen::scenario::{Hold, Impairments};
    type Case = (&'static str, fn(&mut Impairments));
    let cases: [Case; 4] = [
        ("jitter 30", |i| i.jitter_ms = 30),
        ("silence suppression, a 700 ms stall at 20 s", |i| {
            i.silence_suppression_rms = Some(50.0);
            i.stall = Some((20_000, 700));
        }),
        ("timestamps +20 s at 30 s, jitter 20", |i| {
            i.jitter_ms = 20;
            i.ts_jump = Some((30_000, 160_000, true));
        }),
        ("a hold of 5 s whose timestamps stop, jitter 10", |i| {
            i.jitter_ms = 10;
            i.hold = Some(Hold {
                from_ms: 20_000,
                to_ms: 25_000,
                timestamps_continue: false,
                signal: false,
            });
        }),
    ];
    for (name, f) in cases {
        let mut without = call("mk@t", 45, 431);
        both(&mut without, f);
        let mut with = without.clone();
        both(&mut with, |i| i.marker_always = true);
        let (_, a) = record(&with);
        let (_, b) = record(&without);
        for ch in 0..2 {
            assert_same(&format!("marker on every packet, {name}"), &a, &b, ch, 0);
        }
    }
}

/// A leg's start through 30 ms of jitter, both legs from the start: every
/// 250 ms piece of talk of its first 6 s within 2 ms of where it was said.
///
/// Failed until 2026-12-07 (ninth session): the callee of this draw was
/// placed 3.5 ms late (2.4 ms through 20 ms of jitter) until a correction
/// at 2.78 s: time zero was fixed once each leg's least delay lay on
/// average 1 ms above its floor (about 30 packets here), and the least
/// delay of its first 25 packets lay 3.5 ms above it (a 4.5 % chance);
/// corrections wait through the first seconds of a jittery link. Time zero
/// now waits until that mean is a quarter millisecond.
#[test]
fn a_legs_start_through_jitter_is_in_place_from_the_first_second() {
    let mut c = call("st@t", 10, 431);
    both(&mut c, |i| i.jitter_ms = 30);
    let (truth, rec) = record(&c);
    for ch in 0..2 {
        let off: Vec<_> = piece_lags(&rec, &truth, ch, 0, 6_000)
            .into_iter()
            .filter(|p| p.1.abs() > 2.0 || p.2 < 0.9)
            .collect();
        assert!(
            off.is_empty(),
            "ch{ch}: pieces off (ms, lag, corr): {off:?}; corrections {:?}",
            rec.meta.channels[ch].timing_log
        );
    }
}

/// Leg starts through jitter, many draws: 40 calls (both legs from the
/// start, 8 s) through each of 20, 40 and 60 ms of jitter on both legs,
/// 240 leg starts. Each leg's worst 250 ms piece of talk of its first 6 s:
/// none more than 3.5 ms from where it was said, at most 1 in 40 more
/// than 2 ms. (Time zero fixed on a mean of 1 ms above the floor, until
/// 2026-12-07: 18 of these 240 beyond 2 ms, the worst 7.9 ms. Now three:
/// seed 413's caller through 20 and 40 ms, 2.5 and 3.4 ms late until a
/// correction at 2.8 s, its first 500 ms of packets all late by an eighth
/// of the jitter or more, which only packets seconds later show, further
/// than an unknown drift lets them count at the start (1,500 ppm); and
/// seed 414's callee through 40 ms: time zero fixed by the caller's start
/// 2.3 ms above its floor, the callee corrected to its own at 4.2 s, the
/// caller (within the 3 ms hysteresis of 40 ms) only at 13 s.)
#[test]
fn leg_starts_through_jitter_many_draws() {
    let over2 = start_draws("sts@t", 8, 0, 3.5);
    assert!(over2.len() <= 6, "more than 2 ms off: {over2:?}");
}

/// Legs that start after time zero (the callee 4 s after the caller),
/// through 20, 40 and 60 ms of jitter on both legs, 40 calls each: every
/// 250 ms piece of talk of the callee's first 6 s and the caller's within
/// 4 ms of where it was said, at most 1 in 20 legs more than 2 ms off.
/// (Until 2026-12-07 such a leg was placed by its first half second of
/// packets: 29 of these 240 legs more than 2 ms off, the worst 11.6 ms
/// through 60 ms, 6.6 through 40. Now the call waits for its least delay
/// as at time zero: 9, the worst 4.0 ms.)
#[test]
fn legs_starting_after_time_zero_through_jitter_many_draws() {
    let over2 = start_draws("stl@t", 12, 4_000, 4.0);
    assert!(over2.len() <= 12, "more than 2 ms off: {over2:?}");
}

/// Calls of seeds 400-439 through 20, 40 and 60 ms of jitter on both legs,
/// the callee starting `callee_ms` after the caller: each leg's worst
/// 250 ms piece of talk of its first 6 s, asserted within `max_ms` of
/// where it was said (and found); returns the legs more than 2 ms off
/// (jitter, seed, channel, ms).
fn start_draws(id: &str, secs: u32, callee_ms: u32, max_ms: f64) -> Vec<(u32, u64, usize, f64)> {
    let mut over2 = Vec::new();
    for jitter in [20u32, 40, 60] {
        for seed in 400..440u64 {
            let mut c = call(id, secs, seed);
            c.callee_leg.start_ms = callee_ms;
            both(&mut c, |i| i.jitter_ms = jitter);
            let (truth, rec) = record(&c);
            for ch in 0..2 {
                let from = if ch == 0 { 0 } else { callee_ms };
                let worst = piece_lags(&rec, &truth, ch, from, from + 6_000)
                    .into_iter()
                    .map(|p| {
                        assert!(
                            p.2 >= 0.9,
                            "jitter {jitter} seed {seed} ch{ch}: piece {p:?}"
                        );
                        p.1.abs()
                    })
                    .fold(0.0, f64::max);
                assert!(
                    worst <= max_ms,
                    "jitter {jitter} seed {seed} ch{ch}: {worst} ms off; corrections {:?}",
                    rec.meta.channels[ch].timing_log
                );
                if worst > 2.0 {
                    over2.push((jitter, seed, ch, worst));
                }
            }
        }
    }
    over2
}

/// One leg's 250 ms pieces of talk against where each was said, allowing
/// one offset for the whole channel (its median lag: where time zero
/// fell): the pieces more than `tol_ms` off it (ms, lag, median), and the
/// 5 ms blocks of talk not found within 12.5 ms.
fn off_own_median(
    rec: &Recorded,
    truth: &CallTruth,
    ch: usize,
    tol_ms: f64,
) -> (Vec<(u32, f64, f64)>, usize, f64) {
    let secs = truth.expected[ch].len() as u32 / rec.rate;
    let ps = piece_lags(rec, truth, ch, 0, secs * 1000);
    let mut lags: Vec<f64> = ps.iter().map(|p| p.1).collect();
    lags.sort_by(f64::total_cmp);
    let med = lags.get(lags.len() / 2).copied().unwrap_or(0.0);
    let off = ps
        .into_iter()
        .filter(|p| (p.1 - med).abs() > tol_ms || p.2 < 0.9)
        .map(|p| (p.0, p.1, med))
        .collect();
    let lost = lost_blocks(
        &rec.ch[ch],
        &truth.expected[ch],
        rec.rate,
        0,
        (secs - 1) * 1000,
        100,
    );
    (off, lost.len(), med)
}

/// Runs [`off_own_median`] over calls of 60 s, seeds 500-503, each leg
/// impaired by `f`; panics with every leg's figures if any piece is more
/// than 2 ms off its channel's median or any talk is lost.
fn in_place_through(name: &str, f: impl Fn(&mut pbx_testgen::Impairments) + Copy) {
    let mut errs = Vec::new();
    for seed in 500..504u64 {
        let mut c = call("soft@t", 60, seed);
        both(&mut c, f);
        let (truth, rec) = record(&c);
        for ch in 0..2 {
            let (off, lost, _) = off_own_median(&rec, &truth, ch, 2.0);
            if !off.is_empty() || lost > 0 {
                let worst = off.iter().map(|p| (p.1 - p.2).abs()).fold(0.0, f64::max);
                errs.push(format!(
                    "seed {seed} ch{ch}: {} pieces off (worst {worst:.2} ms), {lost} blocks lost, drift {} ppm, corrections {:?}",
                    off.len(),
                    rec.meta.channels[ch].drift_ppm,
                    rec.meta.channels[ch].timing_log
                ));
            }
        }
    }
    assert!(errs.is_empty(), "{name}:\n{}", errs.join("\n"));
}

/// Delay that wanders: a queue on a busy uplink whose depth walks between
/// 0 and 20 ms over seconds (`Impairments::jitter_walk_ms`), touching its
/// floor only now and then, on both legs of 60 s calls. Every 250 ms piece
/// of talk within 2 ms of its channel's own offset, no talk lost.
///
/// Fails (found 2026-12-07, ninth session; not fixed): the leg follows the
/// floor of each 10 s window, which rises when the queue stays up: over
/// seeds 500-515, 473 of 5,743 pieces more than 2 ms off (8 %), the worst
/// 23 ms, 412 blocks of 5 ms of talk not found within 12.5 ms (40 ms of
/// walk: 534 pieces, 27 ms, 725 blocks). Uniform jitter of the same size,
/// each packet's drawn afresh: none off, nothing lost. Since the fits'
/// uncertainty counts the minima's scatter (same day): 254 pieces, the
/// worst 15.4 ms, 69 blocks (40 ms: 331, 25.8 ms, 132). Soft floors
/// placed by a quantile (tenth session) leave a walk as it was (its
/// packets' delays each close to the one before: a hard floor).
#[test]
#[ignore = "defect: a wandering queueing delay moves the legs back and forth (8 % of pieces more than 2 ms off through 20 ms)"]
fn a_wandering_queue_delay_keeps_each_leg_in_place() {
    in_place_through("wandering delay up to 20 ms", |i| i.jitter_walk_ms = 20);
}

/// Normally distributed jitter, as `netem delay 20ms 5ms distribution
/// normal` makes it (`Impairments::jitter_normal_ms`): no floor the delays
/// pile up against, the least delay seen falling further the more packets
/// come. Every 250 ms piece of talk within 2 ms of its channel's own
/// offset, no talk lost.
///
/// Fails (found 2026-12-07, ninth session; not fixed): the least delay of
/// each window moves with chance, and the envelope follows it: over seeds
/// 500-515, with a deviation of 5 ms, 1,785 of 5,743 pieces more than 2 ms
/// off (31 %), the worst 10.4 ms, 150 blocks lost; with 10 ms, 2,784 (48 %),
/// the worst 32 ms, drifts of 68-204 ppm followed that are not there;
/// 2 ms: 304 (5 %), the worst 9.9 ms. Since the fits' uncertainty counts
/// the minima's scatter (same day), no drift is followed that is not
/// there: at 5 ms 1,485 pieces (26 %), the worst 14.4 ms, none lost; at
/// 10 ms 2,614, 881 blocks; at 2 ms 252. Since a soft floor is told
/// apart and placed by a low quantile of its minima (tenth session;
/// `normally_distributed_jitter_is_placed_by_a_low_quantile` keeps it):
/// at 5 ms 390 (6.8 %), the worst 6.0 ms; at 10 ms 497, 116 blocks; at
/// 2 ms 200. Since a first stream not told soft by its start is told by
/// its first 256 packets (eleventh session): 288 (5.0 %), the worst
/// 4.9 ms; 10 ms 418; 2 ms 60. Left: a 20 s window's quantile moving
/// beyond the hysteresis (docs/timing.md).
#[test]
#[ignore = "defect: normally distributed jitter (no delay floor) still moves some legs (7 % of pieces more than 2 ms off at 5 ms)"]
fn normally_distributed_jitter_keeps_each_leg_in_place() {
    in_place_through("normal jitter, 5 ms", |i| i.jitter_normal_ms = 5);
}

/// Normally distributed jitter of 5 ms on both legs, as `netem delay 20ms
/// 5ms distribution normal` makes it, what the soft-floor placement
/// (2026-12-07, tenth session) mended, kept from coming back: over seeds
/// 500-507 (60 s calls), pieces of 250 ms more than 2 ms off their
/// channel's own median at most 6 % (measured: 4.1 %, 7.6 % before the
/// first streams' probe of the eleventh session; before, 26 % over 16
/// seeds), none more than 6 ms off it (measured 4.9), no 5 ms block of
/// talk lost, and each call's two channels placed alike: their medians
/// within 3 ms of each other (measured 2.6; before, 5.25 over 16 seeds).
#[test]
fn normally_distributed_jitter_is_placed_by_a_low_quantile() {
    soft_figures("soft@t", |i| i.jitter_normal_ms = 5).assert_within(0.06, 6.0);
}

/// Over seeds 500-507 (60 s calls, both legs impaired by `f`): every
/// channel's pieces off its own median by more than 2 ms, the worst, the
/// 5 ms blocks of talk lost, and each call's two medians apart.
#[derive(Debug, Default)]
struct SoftFigures {
    pieces: usize,
    off: usize,
    worst: f64,
    lost: usize,
    apart: Vec<(u64, f64)>,
}

impl SoftFigures {
    fn share(&self) -> f64 {
        self.off as f64 / self.pieces.max(1) as f64
    }

    /// At most `share` of the pieces more than 2 ms off their channel's
    /// median, none more than `worst` ms, no talk lost, and each call's
    /// channels' medians within 3 ms of each other.
    fn assert_within(&self, share: f64, worst: f64) {
        assert!(self.share() <= share, "{self:?}: pieces more than 2 ms off");
        assert!(
            self.worst <= worst,
            "{self:?}: a piece that far off its median"
        );
        assert_eq!(self.lost, 0, "{self:?}: blocks of talk lost");
        for (seed, d) in &self.apart {
            assert!(
                d.abs() <= 3.0,
                "seed {seed}: channels' medians {d} ms apart"
            );
        }
    }
}

fn soft_figures(id: &str, f: impl Fn(&mut pbx_testgen::Impairments) + Copy) -> SoftFigures {
    let mut out = SoftFigures::default();
    for seed in 500..508u64 {
        let mut c = call(id, 60, seed);
        both(&mut c, f);
        let (truth, rec) = record(&c);
        let mut medians = [0.0; 2];
        for (ch, median) in medians.iter_mut().enumerate() {
            out.pieces += piece_lags(&rec, &truth, ch, 0, 60_000).len();
            let (o, l, med) = off_own_median(&rec, &truth, ch, 2.0);
            out.off += o.len();
            out.worst = o
                .iter()
                .map(|p| (p.1 - p.2).abs())
                .fold(out.worst, f64::max);
            out.lost += l;
            *median = med;
        }
        out.apart.push((seed, medians[0] - medians[1]));
    }
    eprintln!("{out:?}: {:.3} of the pieces off", out.share());
    out
}

/// A new stream (a new SSRC: a transfer, a re-INVITE to another media
/// server) at 30 s on both legs of 60 s calls, through normally
/// distributed jitter of 5 ms on the same path: it goes on where the old
/// one was placed. Over seeds 500-507: pieces of 250 ms more than 2 ms off
/// their channel's median at most 5 % (measured 2.7 %, 6.2 % before the
/// first streams' probe; before 2026-12-07, eleventh session, 26.0 %: the
/// new stream began as a hard floor placed by its first packets' least
/// delay, 3-6 ms late, and was corrected down seconds later), none more
/// than 6.5 ms off (5.25; before 9.6), no 5 ms block of talk lost, the
/// channels' medians within 3 ms.
#[test]
fn a_new_stream_through_normal_jitter_goes_on_in_place() {
    soft_figures("soft-ssrc@t", |i| {
        i.jitter_normal_ms = 5;
        i.ssrc_change_at_ms = Some(30_000);
    })
    .assert_within(0.05, 6.5);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
        cases: 8,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0xd21f_7c4a),
        ..proptest::prelude::ProptestConfig::default()
    })]
    /// A drift that changes mid-call among other impairments on both legs
    /// (jitter, duplicates, silence suppression): outside the first 12 s
    /// and the 10 s after the change (each drift being learnt), every 250 ms
    /// piece of talk within 4 ms of where it was said. (Not checked here:
    /// 5 ms blocks of talk not found by correlation. Two draws had one such
    /// block each: one beside a one-sample gap the truth leaves under drift
    /// (its packets at their send times, rounded), the recording continuous
    /// and the truth's samples after the gap one later (correlation 0.892
    /// at lag 0: the measure's); one at a lost packet's edge, not traced.)
    #[test]
    fn drift_changes_among_random_impairments(
        seed in 100u64..10_000,
        jitter in proptest::sample::select(vec![0u32, 10, 20, 40]),
        from in -800i32..800,
        to in -800i32..800,
        at in 15_000u32..45_000,
        dup in 0.0f64..0.05,
        dtx in proptest::prelude::any::<bool>(),
    ) {
        let mut c = call("pd@t", 75, seed);
        c.caller_leg.impair.drift_ppm = from;
        c.caller_leg.impair.drift_change = Some((at, to));
        both(&mut c, |i| {
            i.jitter_ms = jitter;
            i.duplicate = dup;
            if dtx {
                i.silence_suppression_rms = Some(50.0);
            }
        });
        let (truth, rec) = record(&c);
        let name = format!("seed {seed} jitter {jitter} drift {from:+} -> {to:+} at {at} ms, duplicates {dup:.3}, dtx {dtx}");
        for ch in 0..2 {
            let off: Vec<_> = piece_lags(&rec, &truth, ch, 12_000, 75_000)
                .into_iter()
                .filter(|p| (ch == 1 || p.0 + 250 < at || p.0 >= at + 10_000) && (p.1.abs() > 4.0 || p.2 < 0.9))
                .collect();
            proptest::prop_assert!(off.is_empty(), "{name} ch{ch}: pieces off (ms, lag, corr): {off:?}; corrections {:?}", rec.meta.channels[ch].timing_log);
        }
    }
}

/// A new SSRC mid-talk (the caller's, at 12.01 s) through 60 ms of
/// uniform jitter on both legs: the new stream's first place is the least
/// delay of the few packets the hold-back window gave it, a few ms above
/// its floor by chance, and 3 of 16 such streams (seeds 700-715) were
/// placed 4-6 ms late for 2.5-4.5 s, until their envelopes settled. Now
/// they go on where the old stream ended (`Envelope::seam_slack`): every
/// 250 ms piece of talk of both channels, the whole call, within 2 ms of
/// where it was said (ground truth).
#[test]
fn a_new_ssrc_mid_talk_through_jitter_goes_on_in_place() {
    let mut off = Vec::new();
    for seed in [700u64, 705, 714, 701] {
        let mut c = call("ssrc-seam@t", 30, seed);
        c.caller_leg.audio = pbx_testgen::audio::speechlike(seed * 3, 30_000, 8000);
        c.caller_leg.impair.ssrc_change_at_ms = Some(12_010);
        both(&mut c, |i| i.jitter_ms = 60);
        let (truth, rec) = record(&c);
        for ch in 0..2 {
            for (at, lag, corr) in piece_lags(&rec, &truth, ch, 0, 30_000) {
                if lag.abs() > 2.0 || corr < 0.9 {
                    off.push((seed, ch, at, lag, corr));
                }
            }
        }
    }
    assert!(
        off.is_empty(),
        "pieces off (seed, ch, ms, lag, corr): {off:?}"
    );
}
