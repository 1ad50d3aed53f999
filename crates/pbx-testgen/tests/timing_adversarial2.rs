//! Adversarial timing tests, second round: sender behaviours that neither
//! `timing.rs`, `timing_adversarial.rs` nor the placement tests exercise
//! (timestamps restarted at every talk spurt, one SSRC on both legs, a cheap
//! ATA's 2,000 ppm clock with 10 ms packets, a mid-call PCMU <-> G.722
//! switch in a 16 kHz recording), each checked against ground truth: the
//! audio each party sent, placed where it was said, and (where nothing but
//! the behaviour differs) the recording of the same call without it, sample
//! for sample.
//!
//! Run: `cargo test --release -p pbx-testgen --test timing_adversarial2`.
//! Tests marked `#[ignore = "defect: ..."]` reproduce defects found here
//! (run them with `-- --ignored`).

use pbx_testgen::audio::speechlike;
use pbx_testgen::{CallSpec, CallTruth, TestCodec};

mod common;
use common::*;

// ------------------------------------------------------------ tests

/// Random talk spurts (whole packets) over `total_ms`: lengths `len`
/// (ms, min..max), pauses `pause` (ms, min..max).
fn random_spurts(seed: u64, total_ms: u32, len: (u32, u32), pause: (u32, u32)) -> Vec<(u32, u32)> {
    let mut rng = pbx_testgen::scenario::Rng::new(seed);
    let mut out = Vec::new();
    let mut t = 400u32;
    while t + 20 < total_ms - 500 {
        let l = len.0 + (rng.unit() * f64::from((len.1 - len.0) / 20 + 1)) as u32 * 20;
        let l = l.min(total_ms - 500 - t);
        out.push((t, l));
        t += l + pause.0 + (rng.unit() * f64::from((pause.1 - pause.0) / 20 + 1)) as u32 * 20;
    }
    out
}

// ------------------------------------------------------------ tests

/// A DTX caller (`spurts` of `len` ms between pauses of `pause` ms, random)
/// whose sender restarts its timestamps at every talk spurt, and the same
/// call from a sender whose clock runs on.
fn restart_call(k: u64, len: (u32, u32), pause: (u32, u32)) -> CallSpec {
    let pattern = random_spurts(400 + k, 60_000, len, pause);
    let mut c = call(&format!("ts-restart{k}@t"), 60, 400 + k);
    c.caller_leg.audio = spurts(60_000, 8000, 400 + k, &pattern);
    c.caller_leg.impair.silence_suppression_rms = Some(50.0);
    c
}

/// A DTX sender that starts its timestamps afresh (a random value) at
/// every talk spurt while its SSRC and sequence numbers go on and the
/// marker bit is set (some gateways do): spurts of 60 ms (a "yes") to
/// 1.5 s between pauses of 0.1-2 s. On a clean link the first packet of
/// each spurt comes when it was sent, so the recording must be that of the
/// same call from a sender whose clock ran on, sample for sample.
#[test]
fn timestamps_restarting_at_every_talk_spurt() {
    let mut c = restart_call(0, (60, 1500), (100, 2000));
    let (truth, plain) = record(&c);
    c.caller_leg.impair.ts_restart_each_spurt = true;
    let (_, rec) = record(&c);
    let name = "ts restart per spurt";
    let lost = lost_blocks(&rec.ch[0], &truth.expected[0], 8000, 0, 60_000, 16);
    assert!(lost.is_empty(), "{name}: talk lost at {lost:?} ms");
    check_rec(name, &truth, &rec, 1.0, [0, 0]);
    for ch in 0..2 {
        assert_same(name, &rec, &plain, ch, 0);
    }
}

/// The same with short spurts (60-200 ms) between short pauses
/// (100-400 ms), on a clean link: sample for sample the call whose
/// sender's clock ran on.
///
/// Failed until 2026-12-07 (seed 401, 60 s): 68 blocks of 5 ms of talk
/// lost, 3 packets dropped as late, a -800 sample correction at 12.5 s
/// (a spurt taken for a forward jump was split off and placed after the
/// segment taking the stream, which then took the next spurt's packets on
/// its own timestamps); 464 blocks and 102 packets before that day (a
/// restart still held when the next spurt restarted again was held with
/// it). Now the marker bit on the packet right after the newest, its
/// timestamp a window or more from the stream's place, starts a segment
/// at once (`timeline::Packet::restart`).
#[test]
fn timestamps_restarting_at_every_short_talk_spurt() {
    let mut errors = Vec::new();
    let mut c = restart_call(1, (60, 200), (100, 400));
    let (truth, plain) = record(&c);
    c.caller_leg.impair.ts_restart_each_spurt = true;
    let (_, rec) = record(&c);
    let lost = lost_blocks(&rec.ch[0], &truth.expected[0], 8000, 0, 60_000, 16);
    let m = &rec.meta.channels[0];
    if !lost.is_empty() || differ(&rec.ch[0], &plain.ch[0], 8000).is_some() {
        errors.push(format!(
            "60 s: {} blocks of 5 ms lost (first {:?}), {} late, segments+{}, corrections {:?}",
            lost.len(),
            &lost[..lost.len().min(8)],
            m.late,
            m.reanchors,
            m.timing_log
        ));
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

/// A restart held when the next spurt restarts again starts its segment
/// then: the 20 short spurts of seed 401 from 4.34 s to 12.4 s, each
/// with timestamps afresh, lose nothing (44 blocks of 5 ms and 11 packets
/// before 2026-12-07).
#[test]
fn timestamps_restarting_at_every_short_talk_spurt_in_14_s() {
    restart_short_spurts().unwrap();
}

/// The 20 short spurts of seed 401 from 4.34 s to 12.58 s in a 14 s call.
fn restart_short_spurts() -> Result<(), String> {
    let full = random_spurts(401, 60_000, (60, 200), (100, 400));
    let pattern: Vec<(u32, u32)> = full
        .iter()
        .copied()
        .filter(|s| (4_340..=12_400).contains(&s.0))
        .collect();
    let mut c = call("ts-restart-short@t", 14, 401);
    c.caller_leg.audio = spurts(14_000, 8000, 401, &pattern);
    c.caller_leg.impair.silence_suppression_rms = Some(50.0);
    c.caller_leg.impair.ts_restart_each_spurt = true;
    let (truth, rec) = record(&c);
    let lost = lost_blocks(&rec.ch[0], &truth.expected[0], 8000, 0, 14_000, 16);
    let m = &rec.meta.channels[0];
    if lost.is_empty() && m.late == 0 {
        Ok(())
    } else {
        Err(format!(
            "14 s, {} spurts: {} blocks of 5 ms lost (first {:?}), {} late",
            pattern.len(),
            lost.len(),
            &lost[..lost.len().min(8)],
            m.late
        ))
    }
}

/// A DTX sender whose clock stops while it is silent, once (a pause of
/// `pause` ms after which the timestamps go on where they stopped: they
/// step back by the pause, within the 500 ms window), then a short answer
/// (180 ms, "yes"), a pause, and then normal talk of 1 s spurts. The
/// documented price (docs/timing.md): the short spurt may lie early by the
/// pause; "the first spurt long enough moves the leg". Checked: every 1 s
/// spurt after it within 1 ms of its place.
///
/// Failed for part of 2026-12-06 (after the short-spurt rule of
/// `decide_flags`, before its last change): the short spurt's late
/// candidate, too short to tell, was cleared as jitter, its 200-500 ms
/// residual counted as jitter seen and put in the envelope; the break
/// limit (1.5 times the worst jitter seen) was then beyond the pause, and
/// the 1 s spurts after it stayed early by the whole pause for 8 s (3.38,
/// 5.38, 7.38 and 9.38 s), then were moved back and forth by alternating
/// corrections at 11.40 s. Now such a spurt is placed by its timestamps
/// without counting as jitter or in the envelope, and the next spurt,
/// as late and long enough, moves the leg.
#[test]
fn clock_pause_then_a_short_spurt_moves_only_that_spurt() {
    let mut errors = Vec::new();
    for pause in [200u32, 400, 500] {
        // Spurts: 0.4-1.4 s; (pause of 1.6 s, the sender's clock stopped
        // for its last `pause` ms) 3.0-3.18 s; then 1 s every 2 s.
        let mut pattern = vec![(400u32, 1000u32), (3000, 180)];
        pattern.extend((0..8).map(|k| (3_380 + k * 2000, 1000)));
        let mut c = call("clock-pause@t", 20, 440);
        c.caller_leg.audio = spurts(20_000, 8000, 440, &pattern);
        c.caller_leg.impair.silence_suppression_rms = Some(50.0);
        c.caller_leg.impair.ts_jump = Some((3000, -(pause as i32) * 8, true));
        let (truth, rec) = record(&c);
        for &(at, len) in &pattern[2..] {
            let (lag, cc) = lag_at(&rec.ch[0], &truth.expected[0], 8000, at, len, 600);
            if lag.abs() > 1.0 || cc < 0.99 {
                errors.push(format!(
                    "pause {pause} ms: the spurt at {at} ms lies at {lag:+.3} ms (corr {cc:.3}); segments+{}, corrections {:?}",
                    rec.meta.channels[0].reanchors, rec.meta.channels[0].timing_log
                ));
            }
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

/// One of the [`RESTARTING`] calls through jitter: the 5 ms blocks of
/// talk it lost (searched within 5 ms of their place) and the packets it
/// dropped as late, as an error.
fn restarting_through_jitter_error(k: usize) -> Option<String> {
    let (len, pause, (truth, rec)) = restarting_through_jitter(k);
    let name = format!("ts restart per spurt {len:?} / {pause:?}, jitter 30");
    let lost = lost_blocks(&rec.ch[0], &truth.expected[0], 8000, 0, 60_000, 40);
    let late = rec.meta.channels[0].late;
    (!lost.is_empty() || late > 0).then(|| {
        format!(
            "{name}: {} blocks of 5 ms lost (first {:?}), {late} packets late, recording {} samples for {} of truth, corrections {:?}",
            lost.len(),
            &lost[..lost.len().min(12)],
            rec.ch[0].len(),
            truth.expected[0].len(),
            rec.meta.channels[0].timing_log
        )
    })
}

/// The same through 30 ms of jitter: no 5 ms block of talk lost, no
/// packet dropped as late, every spurt within 5 ms of its place (a
/// timestamp jump through jitter may lie up to 3.5 ms late:
/// docs/timing.md). Two spurts (`restart_two_spurts`, seeds 404 and 405),
/// and 60 s of spurts of 60-1500 ms between pauses of 0.1-2 s.
///
/// Failed until 2026-12-07, when a spurt's first packet (the marker bit,
/// next in the decoding order) with its timestamp a window or more from
/// the stream's place began to start a segment at once: seed 405 lost the
/// first 96 ms of its second spurt (placed 101 ms late, then a step back
/// cut it), the 60 s call 73 blocks of 5 ms with corrections of -686 and
/// -157 samples and 2 packets dropped as late.
#[test]
fn timestamps_restarting_at_every_talk_spurt_through_jitter() {
    let mut errors = Vec::new();
    for seed in [404, 405] {
        if let Err(e) = restart_two_spurts(seed) {
            errors.push(e);
        }
    }
    errors.extend(restarting_through_jitter_error(0));
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

/// The same with short spurts (60-200 ms between pauses of 0.1-0.4 s).
///
/// Fails: 525 blocks of 5 ms lost in 60 s, none dropped as late (766 and 3
/// before the marker bit started segments, 2026-12-07); the first lost
/// from 1.58 s on, not traced yet.
#[test]
#[ignore = "defect: timestamps restarted at every short spurt (60-200 ms) through 30 ms of jitter: 525 blocks of 5 ms lost in 60 s"]
fn timestamps_restarting_at_every_short_talk_spurt_through_jitter() {
    if let Some(e) = restarting_through_jitter_error(1) {
        panic!("{e}");
    }
}

/// What of the above holds: seed 404's restart is recorded whole, and
/// over 60 s of random spurts restarting their timestamps through jitter
/// no correction is larger than the 500 ms window. Before 2026-12-07 a
/// packet reordered behind a restart went into the old numbering's
/// segment at its own numbering's place, hours away; a segment not
/// started yet began there and its first step (-746,162,767 and
/// -1,187,384,572 samples, in the recording's timing log) took it back.
/// (Forward, such a step rendered hours of silence.)
#[test]
fn timestamps_restarting_through_jitter_never_step_beyond_the_window() {
    restart_two_spurts(404).unwrap();
    for (len, pause, (_, rec)) in (0..RESTARTING.len()).map(restarting_through_jitter) {
        let log = &rec.meta.channels[0].timing_log;
        assert!(
            log.iter().all(|c| c.samples.abs() <= 4000),
            "spurts {len:?} / {pause:?}: corrections {log:?}"
        );
    }
}

type Spurts = (u32, u32);

/// Spurt lengths and pauses (ms) of the 60 s calls restarting their
/// timestamps through jitter: long spurts and short ones.
const RESTARTING: [(Spurts, Spurts); 2] = [((60, 1500), (100, 2000)), ((60, 200), (100, 400))];

/// 60 s of DTX talk restarting its timestamps at every spurt, both legs
/// through 30 ms of jitter, recorded: [`RESTARTING`]`[k]`.
fn restarting_through_jitter(k: usize) -> (Spurts, Spurts, (CallTruth, Recorded)) {
    let (len, pause) = RESTARTING[k];
    let mut c = restart_call(k as u64, len, pause);
    both(&mut c, |i| i.jitter_ms = 30);
    c.caller_leg.impair.ts_restart_each_spurt = true;
    (len, pause, record(&c))
}

/// Two spurts, the second after a timestamp restart, both legs through
/// 30 ms of jitter (see above).
fn restart_two_spurts(seed: u64) -> Result<(), String> {
    let pattern = vec![(400u32, 1000u32), (6940, 1420)];
    let mut c = call("ts-restart-min@t", 10, seed);
    c.caller_leg.audio = spurts(10_000, 8000, 400, &pattern);
    c.caller_leg.impair.silence_suppression_rms = Some(50.0);
    both(&mut c, |i| i.jitter_ms = 30);
    c.caller_leg.impair.ts_restart_each_spurt = true;
    let (truth, rec) = record(&c);
    let lost = lost_blocks(&rec.ch[0], &truth.expected[0], 8000, 0, 10_000, 40);
    let (lag, cc) = lag_at(&rec.ch[0], &truth.expected[0], 8000, 7100, 500, 300);
    let m = &rec.meta.channels[0];
    if lost.is_empty() && m.late == 0 && lag.abs() <= 5.0 {
        Ok(())
    } else {
        Err(format!(
            "seed {seed}: 5 ms blocks lost at {lost:?} ms, {} late, the spurt at lag {lag:+.3} ms (corr {cc:.3}), segments+{}, corrections {:?}",
            m.late, m.reanchors, m.timing_log
        ))
    }
}

/// Both legs under the same SSRC (a PBX or B2BUA that gives its two
/// outgoing streams one SSRC), also with the same first sequence number
/// and timestamp: on a clean link the recording of the same call with
/// distinct SSRCs, sample for sample. Through jitter, reordering and
/// duplicates: every window in place, no cross-talk.
#[test]
fn both_legs_with_the_same_ssrc() {
    for same_numbers in [false, true] {
        let mut c = call("same-ssrc@t", 30, 410);
        if same_numbers {
            both(&mut c, |i| i.rtp_start = Some((1000, 160_000)));
        }
        let (_, plain) = record(&c);
        both(&mut c, |i| i.ssrc = Some(0x1234_5678));
        let name = format!("same SSRC, same numbers {same_numbers}");
        let (truth, rec) = record(&c);
        check_rec(&name, &truth, &rec, 1.0, [0, 0]);
        for ch in 0..2 {
            assert_same(&name, &rec, &plain, ch, 0);
        }
        both(&mut c, |i| {
            i.jitter_ms = 30;
            i.reorder = 0.02;
            i.duplicate = 0.05;
        });
        check_share(&format!("{name}, jitter, reorder, dups"), &c, 0.99, [0, 0]);
    }
}

/// The same SSRC, first sequence number and timestamp on both legs, the
/// same codec (PCMU), and talk in turns with silence suppression: a leg's
/// packets never fill the other's pauses; sample for sample the call with
/// distinct SSRCs.
#[test]
fn same_ssrc_same_codec_turn_taking_with_dtx() {
    let pattern: Vec<(u32, u32)> = (0..12).map(|k| (500 + k * 2500, 1000)).collect();
    let answers: Vec<(u32, u32)> = pattern.iter().map(|(a, l)| (a + 1200, *l)).collect();
    let mut c = call("same-ssrc-dtx@t", 30, 411);
    c.callee_leg.codec = None;
    c.caller_leg.audio = spurts(30_000, 8000, 411, &pattern);
    c.callee_leg.audio = spurts(30_000, 8000, 412, &answers);
    both(&mut c, |i| i.silence_suppression_rms = Some(50.0));
    let (_, plain) = record(&c);
    both(&mut c, |i| {
        i.ssrc = Some(0x0bad_cafe);
        i.rtp_start = Some((7, 4242));
    });
    let (truth, rec) = record(&c);
    check_rec("same SSRC, PCMU both, DTX", &truth, &rec, 1.0, [0, 0]);
    for ch in 0..2 {
        assert_same("same SSRC, PCMU both, DTX", &rec, &plain, ch, 0);
    }
}

/// A cheap ATA: its clock `ppm` off, 10 ms packets, 40 ms of jitter on
/// both legs, five minutes.
fn ata_call(ppm: i32, ptime: u32, secs: u32) -> CallSpec {
    let mut c = call(&format!("ata{ppm}@t"), secs, 420);
    c.ptime_ms = ptime;
    c.caller_leg.impair.drift_ppm = ppm;
    both(&mut c, |i| i.jitter_ms = 40);
    c
}

/// A cheap ATA whose clock is 2,000 ppm off (either way), 10 ms packets,
/// 40 ms of jitter on both legs, five minutes: from 10 s on (the drift
/// learnt), every 1 s window within 2 ms of its place and no 5 ms block of
/// talk lost; the other leg untouched.
#[test]
fn cheap_ata_2000_ppm_10_ms_packets_jitter_40_five_minutes() {
    for ppm in [2000, -2000] {
        let c = ata_call(ppm, 10, 300);
        let (truth, rec) = record(&c);
        let name = format!("ATA {ppm:+} ppm, 10 ms, jitter 40, 5 min");
        println!(
            "{name}: drift followed {} ppm, corrections {:?}",
            rec.meta.channels[0].drift_ppm, rec.meta.channels[0].timing_log
        );
        for ch in 0..2 {
            let from = if ch == 0 { 10 } else { 0 };
            let off = windows_off(&rec.ch[ch], &truth.expected[ch], 8000, from, 2.0);
            assert!(
                off.is_empty(),
                "{name} ch{ch}: windows off by more than 2 ms: {off:?}"
            );
            let lost = lost_blocks(
                &rec.ch[ch],
                &truth.expected[ch],
                8000,
                from as u32 * 1000,
                300_000,
                24,
            );
            assert!(
                lost.is_empty(),
                "{name} ch{ch}: {} blocks of 5 ms of talk lost: {:?}",
                lost.len(),
                &lost[..lost.len().min(20)]
            );
        }
        // The exact callee is where it was said, but for the whole call's
        // time zero: fixed 1.6 s in (once the start's least delays are known
        // within a quarter millisecond through this jitter), from the
        // caller's start, which a clock 2,000 ppm off moves by more than
        // the 1,500 ppm an unknown drift is allowed there: by at most
        // 0.5 ms, the same throughout.
        let all = windows_off(&rec.ch[1], &truth.expected[1], 8000, 0, -1.0);
        assert!(
            all.iter()
                .all(|w| w.1 == all[0].1 && w.1.abs() <= 0.5 && w.2 > 0.999),
            "{name}: the exact callee moved: {all:?}"
        );
    }
}

/// While the drift is learnt: the timing suite allows a drifting leg 10 ms
/// off in its first seconds. A 2,000 ppm ATA (10 ms packets, 40 ms of
/// jitter on both legs) is measured in 250 ms pieces of its first 12 s.
///
/// Fails: the lag grows 2 ms a second until the first correction at
/// 6,287 ms (91 samples): -10.25 ms at 5.25 s, -11.75 ms at 6.25 s. With
/// 20 ms packets (else the same) the correction comes at 4,327 ms (worst
/// -7.9 ms), through 20 ms of jitter at 4,244 ms; 1,000 ppm with 10 ms
/// packets is corrected at 6,281 ms too (-5.75 ms). Twice the packets
/// should pin the envelope sooner, not 2 s later (a guess: the drift fit
/// or the first correction's quiet-place search count in packets, not in
/// time; `timeline/envelope.rs`).
#[test]
#[ignore = "defect (mild): a 2,000 ppm sender with 10 ms packets through 40 ms of jitter is 11.75 ms off at 6.25 s before its first correction (20 ms packets: corrected 2 s sooner)"]
fn cheap_ata_2000_ppm_while_the_drift_is_learnt() {
    let c = ata_call(2000, 10, 30);
    let (truth, rec) = record(&c);
    let mut off = Vec::new();
    for at in (0..12_000).step_by(250) {
        let a = at as usize * 8;
        if pbx_testgen::audio::rms(&truth.expected[0][a..a + 2000]) > 300.0 {
            let (l, cc) = lag_at(&rec.ch[0], &truth.expected[0], 8000, at, 250, 60);
            if l.abs() > 10.0 {
                off.push((at, l, cc));
            }
        }
    }
    assert!(
        off.is_empty(),
        "250 ms pieces more than 10 ms off (ms, lag ms, corr): {off:?}; corrections {:?}",
        rec.meta.channels[0].timing_log
    );
}

/// A 16 kHz call (the caller G.722) whose callee switches codec at 20 s
/// (`from` -> `to`: PCMU -> G.722, G.722 -> PCMU or PCMU -> PCMA), its SSRC
/// and timestamps going on. Returns the callee's 5 ms blocks of talk lost
/// (not found within 2 ms of their place) and checks every 1 s window:
/// within a sample (0.0625 ms) of its place on a clean link, within 2 ms
/// through 30 ms of jitter and 5 % reordering (the switch's packets out of
/// order around it); the caller untouched, no cross-talk.
fn codec_switch(from: TestCodec, to: TestCodec, jitter: u32) -> Vec<u32> {
    let base = speechlike(431, 40_000, 8000);
    let mut c = CallSpec::simple(
        "switch@t",
        TestCodec::G722,
        speechlike(430, 40_000, 16000),
        Vec::new(),
    );
    c.seed = 43;
    c.callee_leg.codec = Some(from);
    c.callee_leg.audio = if from.audio_rate() == 16000 {
        // Narrowband sound at 16 kHz: every other sample is the 8 kHz one.
        base.iter().flat_map(|s| [*s, *s]).collect()
    } else {
        base
    };
    c.callee_leg.impair.codec_change = Some((20_000, to));
    c.callee_leg.impair.jitter_ms = jitter;
    c.callee_leg.impair.reorder = if jitter > 0 { 0.05 } else { 0.0 };
    let name = format!(
        "callee {} -> {} at 20 s, jitter {jitter}",
        from.name(),
        to.name()
    );
    let (truth, rec) = record(&c);
    assert_eq!(rec.rate, 16000);
    // The truth resampled as a correct recorder would (the narrowband
    // side), and with each sample twice (what G.722 was given): each
    // window and block is judged by the one that fits it better.
    let t = truth_at_rate(&truth, 1, truth.rate);
    let tol = if jitter == 0 { 0.0625 } else { 2.0 };
    let off_a = windows_off(&rec.ch[1], &t, 16000, 0, tol);
    let off_b = windows_off(&rec.ch[1], &truth.expected[1], 16000, 0, tol);
    let off: Vec<_> = off_a
        .iter()
        .filter(|a| off_b.iter().any(|b| b.0 == a.0))
        .collect();
    assert!(
        off.is_empty(),
        "{name}: windows off by more than {tol} ms: {off:?}"
    );
    let off0 = windows_off(&rec.ch[0], &truth.expected[0], 16000, 0, tol);
    assert!(off0.is_empty(), "{name} ch0: {off0:?}");
    for ch in 0..2 {
        let other = truth_at_rate(&truth, 1 - ch, truth.rate);
        let n = rec.ch[ch].len().min(other.len());
        let x = corr(&rec.ch[ch][..n], &other[..n]);
        assert!(x.abs() < 0.1, "{name} channel {ch}: cross-talk {x:.3}");
    }
    // (The whole call: the first packets swapped by jitter are decoded in
    // order, the last decoder's tail is placed at the end.)
    let lost_a = lost_blocks(&rec.ch[1], &t, 16000, 0, 40_000, 32);
    let lost_b = lost_blocks(&rec.ch[1], &truth.expected[1], 16000, 0, 40_000, 32);
    let lost: Vec<u32> = lost_a.into_iter().filter(|a| lost_b.contains(a)).collect();
    println!("{name}: 5 ms blocks lost at {lost:?} ms");
    lost
}

const SWITCHES: [(TestCodec, TestCodec); 3] = [
    (TestCodec::Pcmu, TestCodec::G722),
    (TestCodec::G722, TestCodec::Pcmu),
    (TestCodec::Pcmu, TestCodec::Pcma),
];

/// Every window in place across a mid-call codec switch (blocks lost at
/// the switch itself are the next test's).
#[test]
fn codec_switch_in_a_16_khz_call_keeps_the_leg_in_place() {
    for (from, to) in SWITCHES {
        for jitter in [0, 30] {
            let lost = codec_switch(from, to, jitter);
            assert!(
                lost.iter().all(|b| (19_990..20_000).contains(b)),
                "{} -> {}, jitter {jitter}: talk lost away from the switch at {lost:?} ms",
                from.name(),
                to.name()
            );
        }
    }
}

/// Nothing lost at the switch, nor at the call's end.
///
/// Failed before 2026-12-07, on a clean link as through jitter: the
/// decoder was replaced at the payload type change without the old one's
/// last output (its filters' delay: 40 samples of the 8 -> 16 kHz
/// resampler, 11 of G.722's receive QMF), and the new one's start-up from
/// a zero state was placed over the old codec's last audio (PCMU -> G.722:
/// 19,997.50-20,000.00 ms silent; the 5 ms block before the switch lost in
/// every case); likewise the last 22-40 samples of every such call. Now
/// the old decoder's tail is added into the new one's first output
/// (`call::tail`), and placed after the last packet at the end.
#[test]
fn codec_switch_in_a_16_khz_call_loses_nothing() {
    let mut errors = Vec::new();
    for (from, to) in SWITCHES {
        for jitter in [0, 30] {
            let lost = codec_switch(from, to, jitter);
            if !lost.is_empty() {
                errors.push(format!(
                    "{} -> {}, jitter {jitter}: 5 ms blocks lost at {lost:?} ms",
                    from.name(),
                    to.name()
                ));
            }
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

/// A leg that starts after time zero (1 s after the caller) whose first
/// packet comes 25 or 45 ms late, after its second (and third): nothing
/// else differs and every packet is within the window, so the recording
/// must be that of the same call without the late packet, sample for
/// sample. For an 8 kHz G.711 leg in an 8 kHz call it is
/// (`a_leg_starting_after_time_zero_is_placed_by_its_envelope` covers the
/// placement); here the decoders keep state: G.722, and PCMU resampled to
/// 16 kHz.
///
/// Failed before 2026-12-07: the stream's first packet to arrive was
/// decoded first (there was no gap before it to wait for), its predecessor
/// after it (G.722, 25 ms late: 4,199 samples differed from 998.6 to
/// 1,350.6 ms, the ADPCM state wrong for 350 ms; PCMU at 16 kHz: 167
/// samples, the resampler's history spliced). A stream's first packet now
/// waits for its predecessors like one after a gap (`call::seq`).
#[test]
fn first_packets_swapped_at_a_stream_start_decode_in_order() {
    let mut errors = Vec::new();
    for (codec, late) in [
        (TestCodec::G722, 25u32),
        (TestCodec::G722, 45),
        (TestCodec::Pcmu, 25),
    ] {
        let mut c = CallSpec::simple(
            "swap@t",
            TestCodec::G722,
            speechlike(430, 10_000, 16000),
            speechlike(431, 10_000, codec.audio_rate()),
        );
        c.seed = 44;
        c.callee_leg.codec = Some(codec);
        c.callee_leg.start_ms = 1000;
        let (_, plain) = record(&c);
        c.callee_leg.impair.late_first_ms = late;
        c.callee_leg.impair.late_first_packets = 1;
        let (_, rec) = record(&c);
        assert_same("swap", &rec, &plain, 0, 0);
        if let Some((n, first, last)) = differ(&rec.ch[1], &plain.ch[1], 16000) {
            errors.push(format!(
                "{} first packet {late} ms late: {n} samples differ, {first:.3}-{last:.3} ms",
                codec.name()
            ));
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

/// The same ATA (±2,000 ppm, 10 ms packets, 40 ms of jitter) mostly
/// listening: talk spurts of 0.3-1 s between pauses of 0.5-2.5 s, silence
/// suppressed, three minutes. From 15 s on every window within 3 ms of
/// its place (the hysteresis through 40 ms of jitter is an eighth of it,
/// at most 3 ms; measured: worst 2.9 ms at -2,000 ppm, followed at
/// -1,944 ppm; 0.9 ms at +2,000 ppm, followed at +2,008 ppm).
#[test]
fn cheap_ata_2000_ppm_mostly_silent() {
    for ppm in [2000, -2000] {
        let mut rng = pbx_testgen::scenario::Rng::new(350);
        let mut pattern = Vec::new();
        let mut t = 300u32;
        while t < 178_000 {
            let len = 300 + (rng.unit() * 35.0) as u32 * 20;
            pattern.push((t, len.min(179_000 - t)));
            t += len + 500 + (rng.unit() * 100.0) as u32 * 20;
        }
        let mut c = ata_call(ppm, 10, 180);
        c.caller_leg.audio = spurts(180_000, 8000, 350, &pattern);
        c.caller_leg.impair.silence_suppression_rms = Some(50.0);
        let (truth, rec) = record(&c);
        let name = format!("ATA {ppm:+} ppm, DTX, 10 ms, jitter 40");
        check_rec(&name, &truth, &rec, 0.99, [15, 0]);
        let off = windows_off(&rec.ch[0], &truth.expected[0], 8000, 15, 3.0);
        assert!(
            off.is_empty(),
            "{name}: windows off by more than 3 ms: {off:?}"
        );
    }
}

/// RMS of `a - b` over `[from, to)` (samples; clipped to both).
fn rms_diff(a: &[i16], b: &[i16], from: usize, to: usize) -> f64 {
    let to = to.min(a.len()).min(b.len());
    if from >= to {
        return 0.0;
    }
    let d: Vec<i16> = (from..to)
        .map(|k| (i32::from(a[k]) - i32::from(b[k])).clamp(-32768, 32767) as i16)
        .collect();
    pbx_testgen::audio::rms(&d)
}

/// A G.722 leg, and a PCMU one resampled to 16 kHz, talking in spurts
/// with silence suppression: the last samples of each spurt (what the
/// decoder's filters still held after its last packet) are where they
/// were said, and nothing of a spurt lands before the next one. Judged
/// against the truth sample for sample: the error in the 2 ms around each
/// spurt's end, and in the 2 ms before each spurt's start (silence in the
/// truth), against the talk's level.
///
/// Before 2026-12-07 each spurt's last 1.4 ms (G.722's receive QMF) or
/// 2.5 ms (the resampler) came out only with the next spurt's first
/// packet, just before it: the error at a spurt's end was 1.19 (G.722) and
/// 1.62 (PCMU) of the talk's level (now 0.10 and 0.025), the error's RMS in
/// the 2 ms before a PCMU spurt 3,157 (now 4). G.722's 2 ms before a spurt
/// still hold the burst of a decoder starting the spurt in the last one's
/// ADPCM state (RMS 4,259; decoding the left-out silence as the encoder
/// did removed it here, but made talk under a 300 RMS threshold worse in
/// `g722_sender_counting_at_16_khz`: not done).
#[test]
fn talk_spurts_end_where_they_were_said_through_a_filtering_decoder() {
    let mut rng = pbx_testgen::scenario::Rng::new(77);
    let mut pattern = Vec::new();
    let mut t = 400u32;
    while t < 19_000 {
        let len = 200 + (rng.unit() * 30.0) as u32 * 20;
        pattern.push((t, len.min(19_500 - t)));
        t += len + 300 + (rng.unit() * 30.0) as u32 * 20;
    }
    let mut errors = Vec::new();
    for codec in [TestCodec::G722, TestCodec::Pcmu] {
        let mut c = CallSpec::simple(
            "spurts@t",
            TestCodec::G722,
            speechlike(440, 20_000, 16000),
            Vec::new(),
        );
        c.seed = 45;
        c.callee_leg.codec = Some(codec);
        c.callee_leg.audio = spurts(20_000, codec.audio_rate(), 441, &pattern);
        c.callee_leg.impair.silence_suppression_rms = Some(50.0);
        let (truth, rec) = record(&c);
        assert_eq!(rec.rate, 16000);
        let want = truth_at_rate(&truth, 1, 16000);
        let got = &rec.ch[1];
        let hold = if codec == TestCodec::G722 { 12 } else { 0 };
        let per_ms = 16usize;
        let (mut floor, mut level, mut end_err, mut before) = (0f64, 0f64, 0f64, 0f64);
        for &(s, len) in &pattern {
            let (s, e) = (s as usize * per_ms, (s + len) as usize * per_ms);
            let mid = (s + e) / 2;
            floor = floor.max(rms_diff(got, &want, mid - 80, mid + 80));
            level = level.max(pbx_testgen::audio::rms(&want[e - 160..e]));
            let talk = pbx_testgen::audio::rms(&want[e - 160..e]).max(1.0);
            // (G.722: the talk's last 11 samples were still in the
            // sender's transmit QMF when it stopped sending: never sent.)
            let ee =
                rms_diff(got, &want, e - 32, e - hold).max(rms_diff(got, &want, e, e + 32)) / talk;
            end_err = end_err.max(ee);
            before = before.max(rms_diff(got, &want, s - 32, s));
        }
        println!(
            "{}: codec error mid-spurt {floor:.0} (talk {level:.0}); worst at a spurt's end {end_err:.3} of the talk; worst RMS in the 2 ms before a spurt {before:.0}",
            codec.name()
        );
        if end_err > 0.1 {
            errors.push(format!(
                "{}: error at a spurt's end {end_err:.3} of the talk's level",
                codec.name()
            ));
        }
        // (Not for G.722: its decoder begins each spurt in the last one's
        // ADPCM state, the sender's encoder in the state the silence it
        // did not send left; see docs/timing.md.)
        if codec != TestCodec::G722 && before > floor.max(50.0) {
            errors.push(format!(
                "{}: error RMS {before:.0} in the 2 ms before a spurt (codec's own {floor:.0})",
                codec.name()
            ));
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}
