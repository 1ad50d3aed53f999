//! Ground-truth placement through the public [`CallEngine`] API, packet by
//! packet.
//!
//! Every RTP packet of these calls carries one constant G.711 value (a
//! different one for each packet of a leg; the caller's all negative, the
//! callee's all positive), and the test knows the capture time of its first
//! sample on the true clock. The recording must then have, for every packet
//! that got through in time, exactly that value over exactly its length at
//! `(capture time - frame 0) * rate` (within `tol` samples: 0 where the
//! design promises bit-exact placement); silence where a packet was lost or
//! came too late; nothing else anywhere (no repeated or shifted audio, none
//! of the other leg's); and both channels ending with the media.
//!
//! The correlation suite (`crates/pbx-testgen/tests/timing.rs`) measures
//! 1 s windows within 5 ms; these tests pin single packets to samples.

use pbx_core::audio::g711::ulaw_to_linear;
use pbx_core::audio::g722::{G722Decoder, G722Encoder};
use pbx_core::call::EndReason;
use pbx_core::Timestamp;

mod common;
use common::plan::*;
use common::*;

/// A plain callee: `secs` of 20 ms packets from 10 ms after the media start.
fn plain_callee(secs: i64) -> Vec<Tx> {
    let mut b = Sender::new(1, 7000, 90_000);
    b.talk(MEDIA_US + 10_000, (secs * 50) as usize);
    b.out
}

// ------------------------------------------------------------ tests

#[test]
fn baseline_clean_call_is_exact() {
    let mut a = Sender::new(0, 100, 1000);
    a.talk(MEDIA_US, 250);
    let mut txs = a.out;
    txs.extend(plain_callee(5));
    check("baseline", &txs, 0);
}

/// The 16-bit sequence number and the 32-bit timestamp wrap on the same
/// packet of the caller, which is lost with its neighbours while the packets
/// around them are reordered; on the callee they wrap 30 packets apart, the
/// timestamp inside a reversed run of eight, the sequence on a lost packet.
/// Every packet that came is where it was said, sample-exact; corrupted
/// copies of packets from before the wrap, arriving after it, are not
/// recorded.
#[test]
fn wraps_inside_loss_and_reordering() {
    // Caller: packet 100 has sequence 0 and timestamp 0.
    let mut a = Sender::new(0, 65535 - 99, 0u32.wrapping_sub(100 * 160));
    a.talk(MEDIA_US, 250);
    for k in [99, 100, 101] {
        a.out[k].expect = false;
        a.out[k].arrive_us = i64::MAX / 2;
    }
    for (k, late_ms) in [(96, 90), (97, 70), (98, 60), (102, 30), (103, 5)] {
        a.out[k].arrive_us += late_ms * 1000;
    }
    // Callee: the timestamp wraps at packet 120, the sequence at 150.
    let mut b = Sender::new(1, 65535 - 149, 0u32.wrapping_sub(120 * 160));
    b.talk(MEDIA_US + 10_000, 250);
    for k in 116..124 {
        b.out[k].arrive_us += (124 - k as i64) * 25_000;
    }
    b.out[150].expect = false;
    b.out[150].arrive_us = i64::MAX / 2;
    b.out[151].arrive_us += 45_000;
    // Corrupted copies of packets before the wrap, arriving after it (and
    // one of the wrapping packet's neighbour that was lost): not recorded.
    let mut dups = Vec::new();
    for (k, after_ms) in [(97, 200), (98, 150), (102, 100), (95, 400)] {
        let mut d = a.out[k].clone();
        d.payload.fill(ubyte(0, 4242));
        d.arrive_us = a.out[k].sent_us + after_ms * 1000;
        d.expect = false;
        dups.push(d);
    }
    let txs: Vec<Tx> = a
        .out
        .into_iter()
        .chain(b.out)
        .chain(dups)
        .filter(|t| t.arrive_us < i64::MAX / 2)
        .collect();
    // (lost packets are left out; they still must be silence: nothing
    // covers their place)
    check("wraps", &txs, 0);
}

/// Late packets beyond any jitter window (the newer ones came 300-2000 ms
/// before them) are silence at their place and move nothing; within the
/// window (300 ms of 500) they are placed exactly. Duplicates with another
/// payload (a corrupted copy, 40 ms and 1.5 s after the original) do not
/// overwrite it: the first copy of a sequence number/timestamp is the one
/// recorded.
#[test]
fn late_bursts_and_duplicates_with_other_payloads() {
    let mut a = Sender::new(0, 3000, 77_777);
    a.talk(MEDIA_US, 500);
    for k in 100..105 {
        a.out[k].arrive_us += 300_000; // within the window: placed
    }
    for (from, late_ms) in [(200, 700), (300, 1200), (400, 2000)] {
        for k in from..from + 8 {
            a.out[k].arrive_us += late_ms * 1000;
            a.out[k].expect = false;
        }
    }
    let mut dups = Vec::new();
    for (k, after_ms) in [(150, 40), (160, 1500), (170, 0)] {
        let mut d = a.out[k].clone();
        d.payload.fill(ubyte(0, 9999));
        d.arrive_us += after_ms * 1000 + 1;
        d.expect = false;
        dups.push(d);
    }
    let mut b = Sender::new(1, 100, 0);
    b.talk(MEDIA_US + 10_000, 500);
    // The callee's burst arrives late as well, 900 ms.
    for k in 250..260 {
        b.out[k].arrive_us += 900_000;
        b.out[k].expect = false;
    }
    let txs: Vec<Tx> = a.out.into_iter().chain(dups).chain(b.out).collect();
    check("late+dups", &txs, 0);
}

fn dtmf_packets(s: &mut Sender, start_us: i64, ms: i64, end_repeats: usize, same_seq_end: bool) {
    let ts0 = s.ts;
    let steps = ms / 20;
    for i in 1..=steps {
        let end = i == steps;
        let n = if end { end_repeats } else { 1 };
        for r in 0..n {
            let dur = (i * 160) as u16;
            s.out.push(Tx {
                leg: s.leg,
                sent_us: start_us + i * 20_000,
                arrive_us: start_us + i * 20_000 + r as i64 * 2_000,
                stamp_us: None,
                seq: s.seq,
                ts: ts0,
                ssrc: s.ssrc,
                pt: 101,
                marker: i == 1,
                payload: dtmf(5, end, dur),
                expect: false,
                slack: 0,
                path: None,
                raw: None,
            });
            if !(end && same_seq_end && r + 1 < n) {
                s.seq = s.seq.wrapping_add(1);
            }
        }
    }
}

/// RFC 4733 events on the audio's SSRC (one sequence space, the event's
/// timestamp held at its start, the end packet sent three times): the
/// caller's audio stops during the key (as most phones do), the callee's
/// goes on beside it (as some gateways do). No audio moves, the key's
/// stretch of the caller is silence.
#[test]
fn dtmf_events_interleaved_with_audio_move_nothing() {
    let mut a = Sender::new(0, 500, 4242);
    let t = a.talk(MEDIA_US, 100);
    // 400 ms key: audio stops, timestamps go on underneath.
    dtmf_packets(&mut a, t, 400, 3, false);
    a.ts = a.ts.wrapping_add(400 * 8);
    let t = a.talk(t + 400_000, 100);
    // A key of 1 s with the end packets on one sequence number.
    dtmf_packets(&mut a, t, 1000, 3, true);
    a.ts = a.ts.wrapping_add(1000 * 8);
    a.talk(t + 1_000_000, 100);
    let mut b = Sender::new(1, 9000, 1_000_000);
    let mut at = MEDIA_US + 10_000;
    for k in 0..300 {
        if k == 80 || k == 200 {
            // Events between the audio packets of the same SSRC.
            let ts = b.ts;
            for i in 1..=20i64 {
                b.audio(at, 160, 0, 0);
                let end = i == 20;
                for r in 0..if end { 3 } else { 1 } {
                    b.out.push(Tx {
                        leg: 1,
                        sent_us: at + 1_000,
                        arrive_us: at + 1_000 + r * 1_000,
                        stamp_us: None,
                        seq: b.seq,
                        ts,
                        ssrc: b.ssrc,
                        pt: 101,
                        marker: i == 1,
                        payload: dtmf(1, end, (i * 160) as u16),
                        expect: false,
                        slack: 0,
                        path: None,
                        raw: None,
                    });
                    b.seq = b.seq.wrapping_add(1);
                }
                at += 20_000;
            }
        }
        b.audio(at, 160, 0, 0);
        at += 20_000;
    }
    let txs: Vec<Tx> = a.out.into_iter().chain(b.out).collect();
    check("dtmf", &txs, 0);
}

/// The packet time changes mid-call (20 → 30 → 10 → 20 ms) on the caller;
/// the callee switches PCMU → PCMA → PCMU mid-stream, once across a lost
/// packet. Sample-exact.
#[test]
fn ptime_and_payload_type_changes_mid_call() {
    let mut a = Sender::new(0, 10, 160_000);
    let mut t = MEDIA_US;
    for (ms, n) in [(20, 50), (30, 40), (10, 120), (20, 50)] {
        for _ in 0..n {
            a.audio(t, ms as usize * 8, 0, 0);
            t += ms * 1000;
        }
    }
    let mut b = Sender::new(1, 20, 33);
    let mut t = MEDIA_US + 10_000;
    for (pt, n, ms) in [
        (0, 50, 20),
        (8, 50, 20),
        (0, 30, 30),
        (8, 60, 10),
        (0, 50, 20),
    ] {
        for _ in 0..n {
            b.audio(t, ms * 8, pt, 0);
            t += ms as i64 * 1000;
        }
    }
    // The first PCMA packet after the second switch is lost.
    let lost = b
        .out
        .iter()
        .position(|x| x.pt == 8 && x.payload.len() == 80)
        .expect("switch");
    b.out.remove(lost);
    let txs: Vec<Tx> = a.out.into_iter().chain(b.out).collect();
    check("ptime/pt", &txs, 0);
}

/// Silence suppression: the caller's talkspurts are 0.3, 1 and 5 s apart
/// with the timestamps advancing (marker bit on some, not on others); the
/// callee's sender pauses its clock instead (timestamps do not advance over
/// gaps of 0.3, 0.8 and 3 s). After every gap the audio lands at its capture
/// time: exact for the caller; the callee's placed by when it arrived
/// (within 2 samples).
#[test]
fn silence_suppression_with_and_without_timestamps_advancing() {
    let mut a = Sender::new(0, 40_000, 1);
    let mut t = a.talk(MEDIA_US, 100);
    for (gap_ms, marker) in [(300, true), (1000, false), (5000, true), (300, false)] {
        t += gap_ms * 1000;
        a.ts = a.ts.wrapping_add(gap_ms as u32 * 8);
        let first = a.out.len();
        t = a.talk(t, 60);
        a.out[first].marker = marker;
    }
    let mut b = Sender::new(1, 60_000, 2_000_000_000);
    let mut t = b.talk(MEDIA_US + 10_000, 100);
    for gap_ms in [300, 800, 3000] {
        t += gap_ms * 1000;
        let first = b.out.len();
        t = b.talk(t, 100);
        b.out[first].marker = true;
    }
    b.talk(t, 100);
    let txs: Vec<Tx> = a.out.into_iter().chain(b.out).collect();
    check("dtx", &txs, 2);
}

/// The callee's timestamps step back by less than a packet at 3 s (5, 10,
/// 20 ms; the numbers and the sending go on: two streams spliced under one
/// numbering), with and without the marker bit. Its audio goes on where
/// it was said: nothing cut, nothing early. Before, the packet after the
/// step lay the step early, over the end of the one before (cut), and the
/// leg stayed that early for 10 s (until the envelope's minimum forgot the
/// old delay).
#[test]
fn timestamps_stepping_back_by_less_than_a_packet_cut_nothing() {
    for back_ms in [5u32, 10, 20] {
        for marker in [false, true] {
            let mut a = Sender::new(0, 100, 1000);
            a.talk(MEDIA_US, 300);
            let mut b = Sender::new(1, 7000, 90_000);
            let t = b.talk(MEDIA_US + 10_000, 150);
            b.ts = b.ts.wrapping_sub(back_ms * 8);
            let i = b.out.len();
            b.talk(t, 150);
            b.out[i].marker = marker;
            let txs: Vec<Tx> = a.out.into_iter().chain(b.out).collect();
            check(&format!("ts back {back_ms} ms, marker {marker}"), &txs, 0);
        }
    }
}

/// A sender whose every packet's timestamp advances less than its audio
/// (120 ticks for 160 samples: broken): each packet's audio begins inside
/// the one before's. A few such steps start segments of their own; then
/// the packets are taken as they come (bounded: not a segment a packet).
#[test]
fn timestamps_advancing_less_than_the_audio_every_packet_stay_bounded() {
    let mut a = Sender::new(0, 100, 1000);
    a.talk(MEDIA_US, 250);
    let mut b = Sender::new(1, 7000, 90_000);
    for k in 0..250 {
        b.audio(MEDIA_US + 10_000 + k * 20_000, 160, 0, 0);
        b.ts = b.ts.wrapping_sub(40);
    }
    let txs: Vec<Tx> = a.out.into_iter().chain(b.out).collect();
    let (c0, c1, meta) = record(&txs);
    assert!(meta.channels[1].reanchors <= 24, "{:?}", meta.channels[1]);
    assert_eq!(meta.channels[1].packets, 250);
    assert!(c1.iter().filter(|x| **x != 0).count() > 250 * 100);
    assert_eq!(c0.len(), c1.len());
}

/// The caller's stream changes SSRC at 3 s (new source: random sequence
/// and timestamp) and goes back to the old SSRC at 6 s, whose timestamps
/// advanced meanwhile. Placed where they were said, sample-exact.
#[test]
fn ssrc_change_and_back() {
    let mut a = Sender::new(0, 1, 1);
    let t = a.talk(MEDIA_US, 150);
    let (old_seq, old_ts) = (a.seq, a.ts);
    a.ssrc = 0xdead_beef;
    a.seq = 51_234;
    a.ts = 0x9e37_79b9;
    let t = a.talk(t, 150);
    a.ssrc = SSRC[0];
    a.seq = old_seq;
    a.ts = old_ts.wrapping_add(150 * 160);
    a.talk(t, 150);
    let txs: Vec<Tx> = a.out.into_iter().chain(plain_callee(10)).collect();
    check("ssrc", &txs, 0);
}

/// The callee's stream switches for `away_ms` to another source (another
/// SSRC, random numbers) and back to the old SSRC, whose clock ran on
/// meanwhile (`clock_ran`) or stood still: both sources' audio where it
/// was said (within 2 samples).
fn switch_back(away_ms: i64, clock_ran: bool) {
    let mut b = Sender::new(1, 1, 1);
    let t = b.talk(MEDIA_US + 10_000, 200);
    let (old_seq, old_ts) = (b.seq, b.ts);
    b.ssrc = 0x0bad_cafe;
    b.seq = 7;
    b.ts = 0xffff_ff00;
    let t = b.talk(t, (away_ms / 20) as usize);
    b.ssrc = SSRC[1];
    b.seq = old_seq;
    b.ts = if clock_ran {
        old_ts.wrapping_add(away_ms as u32 * 8)
    } else {
        old_ts
    };
    b.talk(t, 200);
    let mut a = Sender::new(0, 1, 1);
    a.talk(MEDIA_US, 400 + (away_ms / 20) as usize);
    let txs: Vec<Tx> = a.out.into_iter().chain(b.out).collect();
    check(
        &format!("away {away_ms} ms, clock ran {clock_ran}"),
        &txs,
        2,
    );
}

/// A short switch to another source and back (an announcement, a media
/// server, an SBC's source switch), within the jitter window and beyond.
#[test]
fn ssrc_switch_away_and_back_within_the_window() {
    for (away, ran) in [
        (1000, false),
        (1000, true),
        (300, true),
        (300, false),
        (100, false),
        (100, true),
    ] {
        switch_back(away, ran);
    }
}

/// The callee starts 5 s after the caller (late answer), the caller stops
/// 10 s before the end; then a call whose callee never sends.
#[test]
fn legs_starting_late_ending_early_or_never() {
    let mut a = Sender::new(0, 1, 1);
    a.talk(MEDIA_US, 500);
    let mut b = Sender::new(1, 1, 1);
    b.talk(MEDIA_US + 5_000_000 + 10_000, 1000);
    let txs: Vec<Tx> = a.out.iter().cloned().chain(b.out).collect();
    check("late start, early end", &txs, 0);
    check("one leg only", &a.out, 0);
}

/// Capture timestamps that go back a little (a multi-queue NIC stamps
/// packets out of order by up to 300 µs): nothing moves by more than the
/// 300 µs (2.4 samples).
#[test]
fn capture_stamps_going_back_slightly() {
    let mut a = Sender::new(0, 1, 1);
    a.talk(MEDIA_US, 500);
    let mut b = Sender::new(1, 1, 1);
    b.talk(MEDIA_US + 10_000, 500);
    let mut txs: Vec<Tx> = a.out.into_iter().chain(b.out).collect();
    let mut x = 0x1234_5678u64;
    for t in txs.iter_mut() {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        if (x >> 60) < 5 {
            t.stamp_us = Some(t.arrive_us - ((x >> 20) % 300) as i64);
        }
    }
    check("stamps back", &txs, 3);
}

/// Where the boundary between two packets of different value lies in `ch`
/// (the crossing of their mid value, to a fraction of a sample), searched
/// within `±w` of `near`.
fn boundary(ch: &[i16], near: f64, w: i64, v0: i16, v1: i16) -> Option<f64> {
    let mid = (f64::from(v0) + f64::from(v1)) / 2.0;
    let up = v1 > v0;
    let c = near.round() as i64;
    let mut best: Option<f64> = None;
    for i in (c - w).max(1)..(c + w).min(ch.len() as i64) {
        let (x0, x1) = (f64::from(ch[i as usize - 1]), f64::from(ch[i as usize]));
        let crosses = if up {
            x0 < mid && x1 >= mid
        } else {
            x0 > mid && x1 <= mid
        };
        if crosses {
            let at = i as f64 - 1.0 + (mid - x0) / (x1 - x0);
            if best.is_none_or(|b| (b - near).abs() > (at - near).abs()) {
                best = Some(at);
            }
        }
    }
    best
}

/// A sender clock `ppm` fast (negative: slow) for ten minutes on the
/// caller, the callee exact: every packet boundary of the caller after the
/// first 10 s (the drift is being learnt) within `tol` samples of its
/// capture time, to the very end; the callee bit-exact throughout. Returns
/// the worst error of the caller (samples).
fn drift_case(ppm: f64, tol: f64) -> f64 {
    drift_case_with_pauses(ppm, tol, false)
}

/// [`drift_case`]; with `pauses`, the caller's sender stops for 2 s every
/// 12 s (silence suppression, its timestamps advancing).
fn drift_case_with_pauses(ppm: f64, tol: f64, pauses: bool) -> f64 {
    let n = 30_000; // 10 min
    let e = ppm * 1e-6;
    let mut a = Sender::new(0, 1, 1);
    for k in 0..n {
        // The sender's 20 ms last 20/(1+e) ms of true time.
        let sent = MEDIA_US + (k as f64 * 20_000.0 / (1.0 + e)).round() as i64;
        let i = a.audio(sent, 160, 0, 0);
        if pauses && k % 600 >= 500 {
            a.out[i].expect = false;
        }
    }
    a.out.retain(|t| t.expect);
    let mut b = Sender::new(1, 1, 1);
    b.talk(MEDIA_US + 10_000, n);
    let txs: Vec<Tx> = a.out.iter().cloned().chain(b.out.iter().cloned()).collect();
    let (c0, c1, meta) = record(&txs);
    let frame0 = meta
        .media_started_at
        .micros_since(Timestamp::from_micros(0));
    // The callee: exact.
    for (k, t) in b.out.iter().enumerate() {
        let p = ((t.sent_us - frame0) * 8 / 1000) as usize;
        let v = value_of(t);
        assert!(
            c1.get(p..p + 160)
                .is_some_and(|s| s.iter().all(|x| *x == v)),
            "{ppm} ppm: callee packet {k} not exact at {p}"
        );
    }
    let mut worst = 0.0f64;
    let mut worst_at = 0;
    let mut last_err = 0.0;
    for k in 500..a.out.len() {
        if a.out[k].ts.wrapping_sub(a.out[k - 1].ts) != 160 {
            continue;
        }
        let want = (a.out[k].sent_us - frame0) as f64 * 8.0 / 1000.0;
        let (v0, v1) = (value_of(&a.out[k - 1]), value_of(&a.out[k]));
        if (f64::from(v0) - f64::from(v1)).abs() < 500.0 {
            continue;
        }
        let got = boundary(&c0, want, 40, v0, v1).unwrap_or_else(|| {
            panic!("{ppm} ppm: boundary of caller packet {k} not found near {want}")
        });
        let err = got - want;
        last_err = err;
        if err.abs() > worst.abs() {
            worst = err;
            worst_at = k;
        }
    }
    let c = &meta.channels[0];
    eprintln!(
        "{ppm:+} ppm: worst {worst:+.2} samples at packet {worst_at}, at the end {last_err:+.2}; drift {} ppm, corrections {} ({} samples), segments +{}, frames {} (c0 {})",
        c.drift_ppm, c.timing_corrections, c.corrected_samples, c.reanchors, meta.frames, c0.len()
    );
    assert!(
        worst.abs() <= tol,
        "{ppm} ppm: caller packet {worst_at} off by {worst:+.2} samples (end: {last_err:+.2})"
    );
    // Nothing of the callee in the caller's channel and the other way (the
    // interpolation rings a few samples across a step, a packet is 160).
    let run = |c: &[i16], sign: i16| {
        c.split(|x| x.signum() != sign)
            .map(|r| r.len())
            .max()
            .unwrap_or(0)
    };
    assert!(run(&c0, 1) < 16, "{ppm} ppm: callee audio in channel 0");
    assert!(run(&c1, -1) == 0, "{ppm} ppm: caller audio in channel 1");
    worst
}

/// ±200 and ±1000 ppm: within 1 ms (the design's hysteresis: a larger
/// difference is corrected) at every packet after the first 10 s, to the
/// end of ten minutes.
#[test]
fn sender_clock_drift_ten_minutes_per_packet() {
    for ppm in [200.0, -200.0, 1000.0, -1000.0] {
        drift_case(ppm, 8.0);
    }
}

/// Where each packet of `leg` is in `ch` (its value's run, searched from
/// the previous packet's place on), as offsets from its capture time.
fn shifts(ch: &[i16], txs: &[Tx], leg: usize, frame0: i64, jump: i64) -> Vec<i64> {
    let mut from = 0usize;
    let mut out = Vec::new();
    for t in txs.iter().filter(|t| t.leg == leg) {
        let v = value_of(t);
        let n = t.payload.len();
        // (Nearly all of its samples: a correction spread over the audio
        // interpolates them, a few at its edges ring.)
        let close =
            |x: i16| (i32::from(x) - i32::from(v)).abs() <= (i32::from(v).abs() / 50).max(8);
        let fit = |s: usize| ch[s..s + n].iter().filter(|x| close(**x)).count();
        let last = ch.len().saturating_sub(n);
        let at = (from..=last)
            .find(|s| fit(*s) >= n - 16)
            .map(|s| (s..=(s + 16).min(last)).max_by_key(|s| (fit(*s), usize::MAX - s)).unwrap_or(s))
            .unwrap_or_else(|| {
                let p = ((t.sent_us - frame0) * 8 / 1000) as usize;
                panic!(
                    "leg {leg}: packet seq {} ({v}) missing after {from} (its place {p}; there: {:?}, length {})",
                    t.seq,
                    &ch[p.min(ch.len())..(p + 4).min(ch.len())],
                    ch.len()
                )
            });
        let shift = at as i64 - (t.sent_us - frame0) * 8 / 1000;
        if let Some(prev) = out.last() {
            assert!(
                (shift - prev).abs() <= jump,
                "leg {leg}: packet seq {} moved from {prev} to {shift}",
                t.seq
            );
        }
        out.push(shift);
        // (A spread correction renders a packet a little shorter.)
        from = at + n - 8;
    }
    out
}

/// The same with the sender pausing 2 s every 12 s (its timestamps
/// advancing): drift is followed across the pauses.
#[test]
fn sender_clock_drift_with_pauses_per_packet() {
    for ppm in [1000.0, -1000.0] {
        drift_case_with_pauses(ppm, 8.0, true);
    }
}

/// The capture clock steps (both legs at once) by `step_ms` 5 s into the
/// call: no audio is lost or repeated, and both legs move by the same, so
/// they stay in sync with each other.
fn clock_step(step_ms: i64, frames: bool) -> (Vec<i16>, Vec<i16>, i64, Vec<Tx>) {
    let mut a = Sender::new(0, 1, 1);
    a.talk(MEDIA_US, 500);
    let mut b = Sender::new(1, 1, 1);
    b.talk(MEDIA_US + 10_000, 500);
    let step_at = MEDIA_US + 5_000_000;
    let txs: Vec<Tx> = a
        .out
        .into_iter()
        .chain(b.out)
        .map(|mut t| {
            if t.arrive_us >= step_at {
                t.stamp_us = Some(t.arrive_us + step_ms * 1000);
            }
            t
        })
        .collect();
    let (c0, c1, meta) = if frames {
        record_frames(&txs)
    } else {
        record(&txs)
    };
    assert_eq!(meta.end_reason, EndReason::Bye, "step {step_ms} ms");
    let frame0 = meta
        .media_started_at
        .micros_since(Timestamp::from_micros(0));
    (c0, c1, frame0, txs)
}

/// Steps forward by 0.1, 2 and 20 s (below the RTP timeout) and back by
/// 50 ms: nothing is lost or repeated, and both legs move alike (by the
/// step forward: the audio is placed by the capture clock; back: the audio
/// after the step starts after the audio before it, and is brought to its
/// new place by a correction spread over it, nothing cut).
#[test]
fn capture_clock_steps_keep_the_legs_together() {
    for (step, frames) in [100, 2000, 20_000, -50]
        .into_iter()
        .flat_map(|s| [(s, false), (s, true)])
    {
        let (c0, c1, frame0, txs) = clock_step(step, frames);
        let jump = step.abs() * 8 + 160;
        // Every packet is there, in order (`shifts` finds each after the
        // one before), none twice (the length is the call's, give or take
        // the step).
        let s0 = shifts(&c0, &txs, 0, frame0, jump);
        let s1 = shifts(&c1, &txs, 1, frame0, jump);
        let len = 500 * 160 + 80 + step.max(0) * 8;
        assert!(
            (c0.len() as i64 - len).abs() <= 160,
            "step {step} ms: {} frames for {len}",
            c0.len()
        );
        assert!(
            s0[..250].iter().chain(&s1[..250]).all(|s| *s == 0),
            "step {step} ms: audio before the step moved"
        );
        for k in 250..500 {
            assert!(
                (s0[k] - s1[k]).abs() <= 2,
                "step {step} ms: packet {k} shifted {} on the caller, {} on the callee",
                s0[k],
                s1[k]
            );
            if step > 0 {
                assert_eq!(s0[k], step * 8, "step {step} ms: packet {k}");
            }
        }
    }
}

/// The capturing host's clock set back by more than the jitter window
/// ([`pbx_core::call::CLOCK_STEP_BACK_US`]): the stamps after the step go
/// on from those before it, so nothing is cut and nothing moves, on either
/// leg (before, the audio after a step back of X overlapped the audio
/// before it and up to X of both legs was cut; a step of an hour held the
/// call's rendering for the hour).
#[test]
fn capture_clock_step_back_cuts_nothing() {
    for step in [-600, -2000, -3_600_000] {
        let (c0, c1, frame0, txs) = clock_step(step, true);
        let s0 = shifts(&c0, &txs, 0, frame0, 2);
        let s1 = shifts(&c1, &txs, 1, frame0, 2);
        assert!(
            s0.iter().chain(&s1).all(|s| s.abs() <= 2),
            "step {step} ms: packets moved (caller {:?}, callee {:?})",
            (s0.iter().min(), s0.iter().max()),
            (s1.iter().min(), s1.iter().max())
        );
        let len = 500 * 160 + 80;
        assert!(
            (c0.len() as i64 - len).abs() <= 160,
            "step {step} ms: {} frames for {len}",
            c0.len()
        );
    }
}

/// Known limit (left as designed): a step back within the jitter window
/// (the frames might be reordered that much) but by more than the 60 ms a
/// new segment may overlap the previous one cuts audio around the step (as
/// much as the step, at most), on both legs alike: the legs stay in step
/// with each other.
#[test]
fn capture_clock_step_back_within_the_window_cuts_both_legs_alike() {
    for (step, frames) in [(-100, false), (-400, false), (-100, true), (-400, true)] {
        let (c0, c1, _, _) = clock_step(step, frames);
        let nz = |c: &[i16]| c.iter().filter(|x| **x != 0).count() as i64;
        let (l0, l1) = (500 * 160 - nz(&c0), 500 * 160 - nz(&c1));
        eprintln!("step {step} ms: caller lost {l0} samples, callee {l1}");
        assert!((l0 - l1).abs() <= 160, "step {step} ms: lost {l0} vs {l1}");
        assert!(l0 <= -step * 8 + 160, "step {step} ms: lost {l0}");
    }
}

/// A new source takes over `overlap_ms` before the old one's last packet
/// (both sent at once for a moment: a PBX bridging from an announcement to
/// the phone). Nothing of either is cut: the new stream starts after the
/// old one's end and is brought to its place in the first quiet place
/// (a 200 ms pause 1 s in); before it, it lies up to the overlap late.
fn overlap(overlap_ms: i64) {
    let mut a = Sender::new(0, 1, 1);
    let t = a.talk(MEDIA_US, 200);
    a.ssrc = 0x5555_0000;
    a.seq = 30_000;
    a.ts = 123_456_789;
    let first_new = a.out.len();
    let mut t = a.talk(t - overlap_ms * 1000, 50);
    // A pause in the talk (200 ms of quiet packets), then the new source
    // goes on.
    let q = a.out.len();
    for _ in 0..10 {
        let i = a.audio(t, 160, 0, 0);
        a.out[i].payload.fill(0xff);
        a.out[i].expect = false;
        t += 20_000;
    }
    a.talk(t, 150);
    for x in &mut a.out[first_new..q] {
        x.slack = overlap_ms * 8;
    }
    let txs: Vec<Tx> = a.out.into_iter().chain(plain_callee(8)).collect();
    check(&format!("overlap {overlap_ms} ms"), &txs, 0);
}

/// Overlaps of 10, 20, 40 and 60 ms (the most a new segment may overlap
/// the previous one and still start after it).
#[test]
fn a_new_source_overlapping_the_old_cuts_nothing() {
    for ms in [10, 20, 40, 60] {
        overlap(ms);
    }
}

/// G.722 (RTP clock 8 kHz, audio 16 kHz) on the caller, PCMU on the callee,
/// the G.722 packets reordered by up to 60 ms: the call is recorded at
/// 16 kHz; the caller's channel is the sender's G.722 decoded, bit for bit,
/// with the codec's 22-sample delay taken off (sample `j` of the sender's
/// audio at its capture time); the callee's packet boundaries within 2
/// samples of theirs (upsampled, so found by their crossing).
#[test]
fn g722_is_placed_at_16_khz_exactly() {
    let n = 250;
    // The sender's audio: a chirp-like tone, loud, at 16 kHz.
    let pcm: Vec<i16> = (0..n * 320)
        .map(|i| {
            let t = i as f64 / 16000.0;
            (9000.0 * (2.0 * std::f64::consts::PI * (300.0 + 40.0 * t) * t).sin()) as i16
        })
        .collect();
    let mut enc = G722Encoder::new();
    let mut a = Sender::new(0, 65_500, 0xffff_f000);
    let mut delays = 0x9e37_79b9u32;
    for k in 0..n {
        let mut payload = Vec::new();
        enc.encode(&pcm[k * 320..(k + 1) * 320], &mut payload);
        assert_eq!(payload.len(), 160);
        delays = delays.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let delay = if k == 0 {
            0
        } else {
            i64::from(delays >> 26) * 1000
        };
        let i = a.audio(MEDIA_US + k as i64 * 20_000, 160, 9, delay);
        a.out[i].payload = payload;
    }
    // What any G.722 decoder makes of the stream, in order.
    let mut dec = G722Decoder::new();
    let mut want = Vec::new();
    for t in &a.out {
        dec.decode_into(&t.payload, &mut want);
    }
    let mut b = Sender::new(1, 1, 1);
    b.talk(MEDIA_US + 10_000, n);
    let txs: Vec<Tx> = a.out.iter().cloned().chain(b.out.iter().cloned()).collect();
    let (c0, c1, meta) = record_with(&txs, &[9, 0, 101]);
    assert_eq!(meta.sample_rate, 16000);
    let frame0 = meta
        .media_started_at
        .micros_since(Timestamp::from_micros(0));
    let start = (MEDIA_US - frame0) * 16 / 1000;
    // Sample j of the decoded stream (22 late) belongs at start + j - 22.
    let mut bad = Vec::new();
    for (j, w) in want.iter().enumerate().skip(22) {
        let p = start + j as i64 - 22;
        if c0.get(p as usize) != Some(w) {
            bad.push((j, p, c0.get(p as usize).copied(), *w));
        }
    }
    assert!(
        bad.is_empty(),
        "G.722 not bit-exact at its place: {} samples, first {:?} (frame0 offset {start})",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
    let mut worst = 0.0f64;
    for k in 1..n {
        let at = (b.out[k].sent_us - frame0) as f64 * 16.0 / 1000.0;
        let (v0, v1) = (value_of(&b.out[k - 1]), value_of(&b.out[k]));
        if (f64::from(v0) - f64::from(v1)).abs() < 500.0 {
            continue;
        }
        let got = boundary(&c1, at, 40, v0, v1).expect("callee boundary");
        worst = worst.max((got - at).abs());
    }
    assert!(
        worst <= 2.0,
        "callee boundaries off by up to {worst:.2} samples"
    );
}

/// RFC 4733 packets interleaved with the audio on its SSRC (their
/// timestamp held at the event's start) while audio packets around them
/// are reordered behind them and duplicated with another payload (a
/// corrupted copy): the reordered ones are placed exactly, the corrupted
/// copies are not recorded (the first copy of a packet is the one kept).
#[test]
fn reordering_and_corrupt_duplicates_around_dtmf_events() {
    let mut b = Sender::new(1, 65_530, 0xffff_ff00);
    let mut at = MEDIA_US + 10_000;
    let mut dups = Vec::new();
    for k in 0..300 {
        let i = b.audio(at, 160, 0, 0);
        if (100..140).contains(&k) {
            // An event packet after every audio packet, its timestamp at
            // the event's start; every third audio packet 30 ms late (behind
            // the next event packet and audio packet), every fifth copied
            // with garbage 25 ms later.
            if k % 3 == 0 {
                b.out[i].arrive_us += 30_000;
            }
            if k % 5 == 0 {
                let mut d = b.out[i].clone();
                d.payload.fill(ubyte(1, 777));
                d.arrive_us = b.out[i].arrive_us + 25_000;
                d.expect = false;
                dups.push(d);
            }
            let start_ts = 0xffff_ff00u32.wrapping_add(100 * 160);
            let dur = ((k - 99) * 160) as u16;
            let end = k == 139;
            for r in 0..if end { 3 } else { 1 } {
                b.out.push(Tx {
                    leg: 1,
                    sent_us: at + 1_000,
                    arrive_us: at + 1_000 + r * 1_000,
                    stamp_us: None,
                    seq: b.seq,
                    ts: start_ts,
                    ssrc: b.ssrc,
                    pt: 101,
                    marker: k == 100,
                    payload: dtmf(7, end, dur),
                    expect: false,
                    slack: 0,
                    path: None,
                    raw: None,
                });
                b.seq = b.seq.wrapping_add(1);
            }
        }
        at += 20_000;
    }
    let mut a = Sender::new(0, 1, 1);
    a.talk(MEDIA_US, 300);
    let txs: Vec<Tx> = a.out.into_iter().chain(b.out).chain(dups).collect();
    check("dtmf reorder dups", &txs, 0);
}

/// Known limit: the capture clock steps forward by an hour in the middle of
/// the call (a host whose clock is set by NTP after boot). The engine takes
/// the hour without packets for a media timeout and ends the call with
/// `RtpTimeout`: everything after the step is lost. Telling a capture clock
/// step from real silence would need a clock-step detector in the engine.
#[test]
#[ignore = "known limit: a capture clock step beyond rtp_timeout ends the call"]
fn capture_clock_step_forward_by_an_hour_keeps_the_call() {
    let (c0, c1, _, _) = clock_step(3_600_000, true);
    let nz = |c: &[i16]| c.iter().filter(|x| **x != 0).count();
    assert_eq!(nz(&c0), 500 * 160, "caller audio after the step lost");
    assert_eq!(nz(&c1), 500 * 160, "callee audio after the step lost");
}

// ------------------------------------------------------------ signalling mid-call

/// A re-INVITE (a transfer, Asterisk's re-INVITE after which its RTP
/// engine goes on with the same SSRC, the sequence +1 and the timestamp
/// jumped by a random amount): on the caller at 3 s with the marker bit, on
/// the callee at 5 s without it, and again on both at 8 s (backwards jumps,
/// one of half a second). Real time runs on without a gap: every packet
/// where it was said (within 2 samples), nothing doubled or cut.
#[test]
fn reinvite_with_same_ssrc_and_jumped_timestamps() {
    for (jumps, marker) in [
        ([0x5a5a_1234u32, 0x8000_0321], true),
        ([0x5a5a_1234, 0x8000_0321], false),
        ([2400, 0u32.wrapping_sub(4000)], true),
        ([0u32.wrapping_sub(4000), 2400], false),
        ([160 * 9, 0u32.wrapping_sub(160 * 3)], false),
    ] {
        let d = Dialog::new("placement@10.0.0.1");
        let pts = [0, 8, 101];
        let offer = sdp("10.0.0.1", 40000, &pts, "sendrecv");
        let answer = sdp("10.0.0.2", 50000, &pts, "sendrecv");
        let mut sig = setup(&d, &offer, &answer);
        sig.extend(reinvite(&d, MEDIA_US + 2_990_000, 2, true, &offer, &answer));
        sig.extend(reinvite(
            &d,
            MEDIA_US + 4_990_000,
            2,
            false,
            &answer,
            &offer,
        ));
        sig.extend(reinvite(&d, MEDIA_US + 7_990_000, 3, true, &offer, &answer));
        let mut a = Sender::new(0, 100, 1000);
        let mut b = Sender::new(1, 7000, 90_000);
        // (sender, packets before its jump, the jump, marker on the next)
        let mut ta = MEDIA_US;
        for (n, jump) in [(150, Some(jumps[0])), (250, Some(jumps[1])), (100, None)] {
            ta = a.talk(ta, n);
            if let Some(j) = jump {
                a.ts = a.ts.wrapping_add(j);
                let i = a.audio(ta, 160, 0, 0);
                a.out[i].marker = marker;
                ta += 20_000;
            }
        }
        let mut tb = MEDIA_US + 10_000;
        for (n, jump) in [(250, Some(jumps[1])), (150, Some(jumps[0])), (100, None)] {
            tb = b.talk(tb, n);
            if let Some(j) = jump {
                b.ts = b.ts.wrapping_add(j);
            }
        }
        let txs: Vec<Tx> = a.out.into_iter().chain(b.out).collect();
        let rec = record_sig(&txs, sig, &d);
        check_rec(
            &format!("re-INVITE jumps {jumps:?} marker {marker}"),
            &txs,
            2,
            rec,
        );
    }
}

// ------------------------------------------------------------ payload framing, CN

/// An RTP datagram with CSRCs, a header extension (`ext_words` words of
/// RFC 8285 one-byte elements) and `pad` padding bytes.
fn rtp_framed(t: &Tx, csrcs: &[u32], ext_words: usize, pad: u8) -> Vec<u8> {
    let mut p = vec![
        0x80 | if pad > 0 { 0x20 } else { 0 }
            | if ext_words > 0 { 0x10 } else { 0 }
            | csrcs.len() as u8,
        t.pt | if t.marker { 0x80 } else { 0 },
    ];
    p.extend_from_slice(&t.seq.to_be_bytes());
    p.extend_from_slice(&t.ts.to_be_bytes());
    p.extend_from_slice(&t.ssrc.to_be_bytes());
    for c in csrcs {
        p.extend_from_slice(&c.to_be_bytes());
    }
    if ext_words > 0 {
        p.extend_from_slice(&[0xbe, 0xde]);
        p.extend_from_slice(&(ext_words as u16).to_be_bytes());
        // id 1 (audio level), len 1; the rest padding zeros.
        let mut e = vec![0u8; ext_words * 4];
        e[0] = 0x10;
        e[1] = 0x7f;
        p.extend_from_slice(&e);
    }
    p.extend_from_slice(&t.payload);
    if pad > 0 {
        p.extend(std::iter::repeat_n(0x55u8, usize::from(pad) - 1));
        p.push(pad);
    }
    p
}

/// Padding (P bit, up to 255 bytes, the pad bytes loud values of the
/// other party), header extensions (X bit, RFC 8285 one-byte form, 1 and 3
/// words) and CSRC lists (1 to 15), alone and together, on every packet of
/// both legs: each packet's payload read exactly (sample-exact).
#[test]
fn padding_extensions_and_csrcs_are_not_audio() {
    let mut a = Sender::new(0, 100, 1000);
    a.talk(MEDIA_US, 250);
    let mut b = Sender::new(1, 7000, 90_000);
    b.talk(MEDIA_US + 10_000, 250);
    let other = [ubyte(1, 3), ubyte(0, 3)];
    for (i, t) in a.out.iter_mut().chain(b.out.iter_mut()).enumerate() {
        let csrcs: Vec<u32> = (0..(i % 16) as u32).map(|c| 0x0c00_0000 + c).collect();
        let pad = [0u8, 4, 1, 255, 13][i % 5];
        let mut raw = rtp_framed(t, &csrcs, [0, 1, 3][i % 3], pad);
        // (Padding bytes that would be heard if read as audio.)
        let n = raw.len();
        if pad > 1 {
            for x in &mut raw[n - usize::from(pad)..n - 1] {
                *x = other[t.leg];
            }
        }
        t.raw = Some(raw);
    }
    let txs: Vec<Tx> = a.out.into_iter().chain(b.out).collect();
    check("padding/extension/csrc", &txs, 0);
}

/// Comfort noise (RFC 3389, PT 13) between talkspurts: the caller sends
/// one CN packet at the start of each silence and then one every 100 ms
/// (timestamps at the audio's pace), the callee one at the start and then
/// irregularly with timestamps at another pace (16 kHz-like, and one not
/// advancing) and sequence numbers shared with the audio. The silences are
/// silent, the speech after them at its place (sample-exact).
#[test]
fn comfort_noise_between_talkspurts() {
    let cn = |s: &mut Sender, at: i64, ts: u32| {
        s.out.push(Tx {
            leg: s.leg,
            sent_us: at,
            arrive_us: at,
            stamp_us: None,
            seq: s.seq,
            ts,
            ssrc: s.ssrc,
            pt: 13,
            marker: false,
            payload: vec![0x40],
            expect: false,
            slack: 0,
            path: None,
            raw: None,
        });
        s.seq = s.seq.wrapping_add(1);
    };
    let mut a = Sender::new(0, 65_000, 0xffff_0000);
    let mut t = a.talk(MEDIA_US, 100);
    for gap_ms in [400i64, 1000, 3000, 120] {
        let ts0 = a.ts;
        for k in 0..(gap_ms / 100).max(1) {
            cn(&mut a, t + k * 100_000, ts0.wrapping_add(k as u32 * 800));
        }
        t += gap_ms * 1000;
        a.ts = ts0.wrapping_add(gap_ms as u32 * 8);
        let i = a.out.len();
        t = a.talk(t, 80);
        a.out[i].marker = true;
    }
    let mut b = Sender::new(1, 10, 5);
    let mut t = b.talk(MEDIA_US + 10_000, 120);
    for (gap_ms, pace) in [(700i64, 16u32), (2000, 0), (300, 3)] {
        let ts0 = b.ts;
        for (k, at_ms) in [0i64, 37, 250, 260, 600].iter().enumerate() {
            if *at_ms < gap_ms {
                cn(
                    &mut b,
                    t + at_ms * 1000,
                    ts0.wrapping_add(k as u32 * pace * 50),
                );
            }
        }
        t += gap_ms * 1000;
        b.ts = ts0.wrapping_add(gap_ms as u32 * 8);
        let i = b.out.len();
        t = b.talk(t, 90);
        b.out[i].marker = true;
    }
    let txs: Vec<Tx> = a.out.into_iter().chain(b.out).collect();
    let rec = record_with(&txs, &[0, 8, 13, 101]);
    check_rec("comfort noise", &txs, 0, rec);
}

// ------------------------------------------------------------ loss with an SSRC change

/// The caller loses 1.5 s (its timestamps and sequence run on) while the
/// callee's stream changes SSRC (new random numbers) in the middle of the
/// loss; then a 1 s loss on the callee across which the caller changes
/// SSRC. Silence over the losses, the rest exact.
#[test]
fn loss_burst_while_the_other_leg_changes_ssrc() {
    let mut a = Sender::new(0, 1000, 77);
    let t = a.talk(MEDIA_US, 200);
    let lost = a.out.len();
    let t = a.talk(t, 75);
    for x in &mut a.out[lost..] {
        x.expect = false;
    }
    let t = a.talk(t, 200);
    a.ssrc = 0x5151_5151;
    a.seq = 9;
    a.ts = 0x7000_0000;
    a.talk(t, 200);
    let mut b = Sender::new(1, 30_000, 0xfff0_0000);
    let t = b.talk(MEDIA_US + 10_000, 235);
    b.ssrc = 0x0bad_f00d;
    b.seq = 65_535;
    b.ts = 0x1234_5678;
    let t = b.talk(t, 200);
    let lost = b.out.len();
    let t = b.talk(t, 50);
    for x in &mut b.out[lost..] {
        x.expect = false;
    }
    b.talk(t, 190);
    a.out.retain(|x| x.expect);
    b.out.retain(|x| x.expect);
    let txs: Vec<Tx> = a.out.into_iter().chain(b.out).collect();
    check("loss + ssrc change", &txs, 0);
}

// ------------------------------------------------------------ early media, forking

/// Early media: the answering branch's 183 with SDP (PCMU at
/// 10.0.0.2:50000), its ringback and announcement for 2 s, then its 200 OK
/// with another SDP (PCMA at port 52000) and the talk from there; with
/// `fork`, a second branch (another To-tag, 10.0.0.3:51000) sends early
/// media too at the same time and is cancelled at the answer. The callee
/// channel holds the answering branch's audio only, each packet at its
/// place (sample-exact), the other branch's nowhere.
fn early_media(fork: bool) {
    let d = Dialog::new("early@10.0.0.1");
    let mut da = Dialog::new("early@10.0.0.1");
    da.to_tag = "other-branch".into();
    let offer = sdp("10.0.0.1", 40000, &[0, 8, 101], "sendrecv");
    let early_b = sdp("10.0.0.2", 50000, &[0, 101], "sendrecv");
    let early_a = sdp("10.0.0.3", 51000, &[0, 101], "sendrecv");
    let answer = sdp("10.0.0.2", 52000, &[8, 101], "sendrecv");
    let answer_at = MEDIA_US + 2_000_000;
    let mut sig = vec![
        sip(T0_US, true, d.request("INVITE", 1, true, Some(&offer))),
        sip(
            T0_US + 500_000,
            false,
            d.response(183, "Session Progress", 1, "INVITE", true, Some(&early_b)),
        ),
        sip(
            answer_at,
            false,
            d.response(200, "OK", 1, "INVITE", true, Some(&answer)),
        ),
        sip(answer_at + 10_000, true, d.request("ACK", 1, true, None)),
    ];
    let (b_early, b_talk) = (callee_rtp(), v4(10, 0, 0, 2, 52000));
    let a_early = v4(10, 0, 0, 3, 51000);
    // The caller talks to the early address, then to the answer's.
    let mut c = Sender::new(0, 100, 1000);
    c.talk(MEDIA_US, 300);
    for x in &mut c.out {
        let to = if x.sent_us < answer_at + 20_000 {
            b_early
        } else {
            b_talk
        };
        x.path = Some((caller_rtp(), to));
    }
    let mut b = Sender::new(1, 7000, 90_000);
    let t = b.talk(MEDIA_US + 10_000, 100);
    for x in &mut b.out {
        x.path = Some((b_early, caller_rtp()));
    }
    let first = b.out.len();
    let mut t = t;
    for _ in 0..200 {
        b.audio(t, 160, 8, 0);
        t += 20_000;
    }
    for x in &mut b.out[first..] {
        x.path = Some((b_talk, caller_rtp()));
    }
    let mut txs: Vec<Tx> = c.out.into_iter().chain(b.out).collect();
    if fork {
        sig.push(sip(
            T0_US + 400_000,
            false,
            da.response(183, "Session Progress", 1, "INVITE", true, Some(&early_a)),
        ));
        sig.push(sip(
            answer_at + 5_000,
            true,
            d.request("CANCEL", 1, true, None),
        ));
        // Its audio: quiet positive values no packet of the plan has.
        let quiet = (0u8..=255)
            .find(|x| (300..900).contains(&ulaw_to_linear(*x)))
            .expect("a quiet value");
        let mut a = Sender::new(1, 500, 4000);
        a.ssrc = 0x4444_0000;
        // (From before the answering branch's first packet to the answer.)
        a.talk(MEDIA_US + 5_000, 100);
        for x in &mut a.out {
            x.payload = vec![quiet; 160];
            x.expect = false;
            x.path = Some((a_early, caller_rtp()));
        }
        txs.extend(a.out);
    }
    sig.sort_by_key(|s| s.0);
    let rec = record_sig(&txs, sig, &d);
    check_rec(&format!("early media, fork {fork}"), &txs, 0, rec);
}

#[test]
fn early_media_then_answer_with_other_sdp() {
    early_media(false);
}

/// Known limit: while two branches send early media, the channel follows
/// the first that came (the other is taken for a copy); which one answers
/// is known only at the 200 OK, seconds after the early audio was written.
/// Fails: the other branch's ringback is in the callee channel until the
/// answer, the answering branch's early audio is missing.
#[test]
#[ignore = "known limit: early media of a forked INVITE follows the first branch heard, not the one that answers"]
fn forked_early_media_only_the_answering_branch() {
    early_media(true);
}

// ------------------------------------------------------------ media relay

/// `msg` as forwarded by a proxy: its own Via on top.
fn via_proxy(msg: Vec<u8>, n: u32) -> Vec<u8> {
    let s = String::from_utf8(msg).expect("text");
    let at = s.find("Via:").expect("a Via");
    format!(
        "{}Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-proxy-{n}\r\n{}",
        &s[..at],
        &s[at..]
    )
    .into_bytes()
}

/// Symmetric RTP through a media relay (192.0.2.10) beside a proxy: the
/// caller sees the callee at relay port 30000, the callee the caller at
/// relay port 30002. With `both_sides` the capture sees the signalling and
/// the media on both sides of the relay (every packet twice, the relayed
/// copy 1 ms later under the relay's own SSRC and numbers); otherwise only
/// the callee's side (relay ↔ callee). The relay takes a new SSRC, sequence
/// and timestamp base for its copies at every re-INVITE (3 s and 6 s).
/// Each party's audio in its own channel at its place (sample-exact).
fn relay(both_sides: bool) {
    let d = Dialog::new("relay@10.0.0.1");
    let proxy = v4(192, 0, 2, 10, 5060);
    let (r_caller, r_callee) = (v4(192, 0, 2, 10, 30000), v4(192, 0, 2, 10, 30002));
    let pts = [0, 8, 101];
    let offer = sdp("10.0.0.1", 40000, &pts, "sendrecv");
    let offer_r = sdp("192.0.2.10", 30002, &pts, "sendrecv");
    let answer = sdp("10.0.0.2", 50000, &pts, "sendrecv");
    let answer_r = sdp("192.0.2.10", 30000, &pts, "sendrecv");
    let mut sig: Vec<Wire> = Vec::new();
    let reinvites = [MEDIA_US + 2_990_000, MEDIA_US + 5_990_000];
    for (n, at) in [T0_US].into_iter().chain(reinvites).enumerate() {
        let cseq = n as u32 + 1;
        let ans_at = if n == 0 { at + 1_000_000 } else { at + 20_000 };
        if both_sides {
            sig.push((
                at,
                caller_sip(),
                proxy,
                d.request("INVITE", cseq, true, Some(&offer)),
            ));
            sig.push((
                ans_at + 1000,
                proxy,
                caller_sip(),
                d.response(200, "OK", cseq, "INVITE", true, Some(&answer_r)),
            ));
            sig.push((
                ans_at + 10_000,
                caller_sip(),
                proxy,
                d.request("ACK", cseq, true, None),
            ));
        }
        sig.push((
            at + 1000,
            proxy,
            callee_sip(),
            via_proxy(d.request("INVITE", cseq, true, Some(&offer_r)), cseq),
        ));
        sig.push((
            ans_at,
            callee_sip(),
            proxy,
            via_proxy(
                d.response(200, "OK", cseq, "INVITE", true, Some(&answer)),
                cseq,
            ),
        ));
        sig.push((
            ans_at + 11_000,
            proxy,
            callee_sip(),
            via_proxy(d.request("ACK", cseq, true, None), 100 + cseq),
        ));
    }
    sig.sort_by_key(|s| s.0);
    let mut a = Sender::new(0, 100, 1000);
    a.talk(MEDIA_US, 450);
    let mut b = Sender::new(1, 7000, 90_000);
    b.talk(MEDIA_US + 10_000, 450);
    let mut txs = Vec::new();
    // (The caller's voice: caller → relay 30000, relayed 30002 → callee;
    // the callee's: callee → relay 30002, relayed 30000 → caller.)
    for (s, direct_path, copy_path) in [
        (&mut a, (caller_rtp(), r_caller), (r_callee, callee_rtp())),
        (&mut b, (callee_rtp(), r_callee), (r_caller, caller_rtp())),
    ] {
        for x in &s.out {
            let mut direct = x.clone();
            direct.path = Some(direct_path);
            // The relay's numbering for this stretch.
            let part = reinvites.iter().filter(|r| x.sent_us > **r).count() as u32;
            let mut copy = x.clone();
            copy.ssrc = 0x7e1a_0000 + part * 0x101 + s.leg as u32;
            copy.seq = x.seq.wrapping_add(part as u16 * 12_345);
            copy.ts = x.ts.wrapping_add(part.wrapping_mul(0x3c6e_f372));
            copy.arrive_us += 1000;
            copy.path = Some(copy_path);
            copy.raw = Some(rtp(
                0,
                copy.marker,
                copy.seq,
                copy.ts,
                copy.ssrc,
                &copy.payload,
            ));
            if both_sides {
                txs.push(direct);
                // (Not where the audio is counted: the plan's pt 96.)
                copy.expect = false;
                copy.pt = 96;
                txs.push(copy);
            } else if s.leg == 0 {
                // Seen leaving the relay only: captured 1 ms later.
                copy.sent_us += 1000;
                txs.push(copy);
            } else {
                txs.push(direct);
            }
        }
    }
    let rec = record_sig(&txs, sig, &d);
    check_rec(&format!("relay, both sides {both_sides}"), &txs, 0, rec);
}

#[test]
fn symmetric_rtp_through_a_relay_rewriting_ssrcs() {
    relay(false);
    relay(true);
}

// ------------------------------------------------------------ opposite drifts

/// Both senders' clocks drift for ten minutes, in opposite directions
/// (`ppm` and `-ppm`): every packet boundary of both legs after the first
/// 10 s within 1 ms (8 samples, the design's hysteresis) of its capture
/// time to the very end, so the legs stay within 2 ms of each other;
/// neither party's audio in the other's channel.
#[test]
fn both_legs_drifting_apart_ten_minutes() {
    let ppm = 300.0;
    let n = 30_000;
    let mut s = [Sender::new(0, 1, 1), Sender::new(1, 40_000, 0xfff0_0000)];
    for (leg, e) in [(0usize, ppm * 1e-6), (1, -ppm * 1e-6)] {
        let start = MEDIA_US + leg as i64 * 10_000;
        for k in 0..n {
            let sent = start + (k as f64 * 20_000.0 / (1.0 + e)).round() as i64;
            s[leg].audio(sent, 160, 0, 0);
        }
    }
    let txs: Vec<Tx> = s.iter().flat_map(|x| x.out.iter().cloned()).collect();
    let (c0, c1, meta) = record(&txs);
    let frame0 = meta
        .media_started_at
        .micros_since(Timestamp::from_micros(0));
    for (leg, ch) in [&c0, &c1].into_iter().enumerate() {
        let out = &s[leg].out;
        let mut worst = 0.0f64;
        let mut worst_at = 0;
        for k in 500..out.len() {
            let want = (out[k].sent_us - frame0) as f64 * 8.0 / 1000.0;
            let (v0, v1) = (value_of(&out[k - 1]), value_of(&out[k]));
            if (f64::from(v0) - f64::from(v1)).abs() < 500.0 {
                continue;
            }
            let got = boundary(ch, want, 40, v0, v1).unwrap_or_else(|| {
                panic!("leg {leg}: boundary of packet {k} not found near {want}")
            });
            if (got - want).abs() > worst.abs() {
                worst = got - want;
                worst_at = k;
            }
        }
        let c = &meta.channels[leg];
        eprintln!(
            "leg {leg}: worst {worst:+.2} at packet {worst_at}; drift {} ppm, corrections {}",
            c.drift_ppm, c.timing_corrections
        );
        assert!(
            worst.abs() <= 8.0,
            "leg {leg}: packet {worst_at} off by {worst:+.2}"
        );
        let sign = if leg == 0 { 1 } else { -1 };
        let run = ch
            .split(|x| x.signum() != sign)
            .map(|r| r.len())
            .max()
            .unwrap_or(0);
        assert!(
            run < 16,
            "leg {leg}: the other party's audio in this channel"
        );
    }
}

/// A re-INVITE at 3 s changes the caller's codec PCMU → G.722 (the same
/// SSRC, the sequence +1, the timestamp jumped at random). The output rate
/// is chosen at the first packet (narrowband here: 8 kHz, a warning says
/// the wideband audio is recorded at 8 kHz). The PCMU part sample-exact;
/// the G.722 part is what the engine's own G.722→8 kHz decoder makes of the
/// stream, bit for bit, at its capture time (within 2 samples); the callee
/// exact throughout.
#[test]
fn reinvite_changing_codec_to_g722() {
    use pbx_core::audio::codec::{new_decoder, Codec};
    let d = Dialog::new("placement@10.0.0.1");
    let nb = [0, 8, 101];
    let wb = [9, 0, 101];
    let mut sig = setup(
        &d,
        &sdp("10.0.0.1", 40000, &nb, "sendrecv"),
        &sdp("10.0.0.2", 50000, &nb, "sendrecv"),
    );
    sig.extend(reinvite(
        &d,
        MEDIA_US + 2_990_000,
        2,
        true,
        &sdp("10.0.0.1", 40000, &wb, "sendrecv"),
        &sdp("10.0.0.2", 50000, &wb, "sendrecv"),
    ));
    let mut a = Sender::new(0, 100, 1000);
    let t = a.talk(MEDIA_US, 150);
    a.ts = a.ts.wrapping_add(0x2545_f491);
    let n = 150;
    let pcm: Vec<i16> = (0..n * 320)
        .map(|i| {
            let t = i as f64 / 16000.0;
            (9000.0 * (2.0 * std::f64::consts::PI * (300.0 + 40.0 * t) * t).sin()) as i16
        })
        .collect();
    let mut enc = G722Encoder::new();
    let first = a.out.len();
    for k in 0..n {
        let mut payload = Vec::new();
        enc.encode(&pcm[k * 320..(k + 1) * 320], &mut payload);
        let i = a.audio(t + k as i64 * 20_000, 160, 9, 0);
        a.out[i].payload = payload;
    }
    a.out[first].marker = true;
    let mut b = Sender::new(1, 7000, 90_000);
    b.talk(MEDIA_US + 10_000, 300);
    let txs: Vec<Tx> = a.out.iter().cloned().chain(b.out.iter().cloned()).collect();
    let (c0, c1, meta) = record_sig(&txs, sig, &d);
    assert_eq!(meta.sample_rate, 8000);
    assert!(
        meta.warnings.iter().any(|w| w.contains("wideband")),
        "{:?}",
        meta.warnings
    );
    let frame0 = meta
        .media_started_at
        .micros_since(Timestamp::from_micros(0));
    // The PCMU parts: exact (the G.722 packets are checked below).
    let narrow: Vec<Tx> = txs.iter().filter(|t| t.pt != 9).cloned().collect();
    let mut c0n = c0.clone();
    let start = (t - frame0) * 8 / 1000;
    for x in c0n.iter_mut().skip(start as usize) {
        *x = 0;
    }
    check_rec("PCMU part", &narrow, 0, (c0n, c1, meta.clone()));
    let mut dec = new_decoder(&Codec::G722, 8000).expect("G.722 at 8 kHz");
    let mut want = Vec::new();
    for x in &a.out[first..] {
        dec.decode(&x.payload, &mut want).expect("decodes");
    }
    let delay = dec.delay_samples() as i64;
    let fits = |shift: i64| {
        want.iter()
            .enumerate()
            .skip(delay as usize)
            .filter(|(j, w)| c0.get((start + *j as i64 - delay + shift) as usize) != Some(*w))
            .count()
    };
    let best = (-40..=40).min_by_key(|s| (fits(*s), s.abs())).unwrap_or(0);
    assert!(
        best.abs() <= 2 && fits(best) == 0,
        "G.722 after the re-INVITE {best} samples off its place ({} samples differ there, {} at 0; delay {delay})",
        fits(best),
        fits(0)
    );
}

// ------------------------------------------------------------ Opus

/// Opus (48 kHz RTP clock, recorded at 16 kHz) with frames of 20, 10, 40
/// and 60 ms in turn for 3 s, then 2 s of DTX (a 20 ms packet every 400 ms,
/// the timestamps at real time), then 2 s of talk with an RFC 4733 key
/// (telephone-event/48000) among the audio packets. Every packet's decoded
/// audio (the engine's own decoder on the same packets in order) where its
/// timestamp says, less the decoder's stated delay, within 2 samples;
/// silence between the DTX packets; the key at its time and length.
#[cfg(all(feature = "bundled-opus", not(feature = "system-opus")))]
#[test]
fn opus_variable_frames_dtx_and_48k_events() {
    use pbx_core::audio::codec::{new_decoder, Codec};
    use pbx_core::audio::opus::bundled::RawEncoder;
    let d = Dialog::new("opus@10.0.0.1");
    let with_ev = |ip: &str, port: u16| {
        sdp(ip, port, &[111, 0, 101], "sendrecv")
            .replace(" 111 0 101\r\n", " 111 0 102\r\n")
            .replace(
                "a=rtpmap:101 telephone-event/8000\r\n",
                "a=rtpmap:102 telephone-event/48000\r\n",
            )
            .replace("a=fmtp:101", "a=fmtp:102")
    };
    let sig = setup(&d, &with_ev("10.0.0.1", 40000), &with_ev("10.0.0.2", 50000));
    let mut enc = RawEncoder::new(16000, 32000).expect("encoder");
    let tone = |i: usize| {
        let t = i as f64 / 16000.0;
        (8000.0 * (2.0 * std::f64::consts::PI * (250.0 + 60.0 * t) * t).sin()) as i16
    };
    let mut buf = vec![0u8; 1500];
    let mut a = Sender::new(0, 65_500, 0xffff_0000);
    let mut at = 0usize; // 16 kHz samples since the media start
    let mut frame = |a: &mut Sender, at: usize, ms: usize, silent: bool| {
        let pcm: Vec<i16> = (at..at + ms * 16)
            .map(|i| if silent { 0 } else { tone(i) })
            .collect();
        let n = enc.encode(&pcm, &mut buf).expect("encodes");
        let i = a.audio(MEDIA_US + at as i64 * 1000 / 16, ms * 8, 111, 0);
        a.out[i].payload = buf[..n].to_vec();
        // (48 kHz clock: `audio` advanced it at 8 kHz.)
        a.ts = a.ts.wrapping_add(ms as u32 * 40);
    };
    let sizes = [20, 10, 40, 60];
    let mut k = 0;
    while at < 3 * 16000 {
        let ms = sizes[k % 4];
        frame(&mut a, at, ms, false);
        at += ms * 16;
        k += 1;
    }
    // DTX: one packet every 400 ms, the clock running.
    for _ in 0..5 {
        frame(&mut a, at, 20, true);
        at += 20 * 16;
        a.ts = a.ts.wrapping_add(380 * 48);
        at += 380 * 16;
    }
    // Talk again with a key pressed 500 ms in, for 200 ms.
    let key_at = at + 500 * 16;
    let key_ts = a.ts.wrapping_add(500 * 48);
    while at < key_at + 1500 * 16 {
        frame(&mut a, at, 20, false);
        at += 20 * 16;
        if at > key_at && at <= key_at + 200 * 16 && (at - key_at) % (40 * 16) == 0 {
            let dur = ((at - key_at) * 3) as u16;
            let end = at == key_at + 200 * 16;
            for _ in 0..if end { 3 } else { 1 } {
                let i = a.audio(MEDIA_US + at as i64 * 1000 / 16, 4, 102, 0);
                a.ts = a.ts.wrapping_sub(4);
                let x = &mut a.out[i];
                x.ts = key_ts;
                x.payload = dtmf(5, end, dur);
                x.expect = false;
            }
        }
    }
    let txs = a.out.clone();
    let (c0, c1, meta) = record_sig(&txs, sig, &d);
    assert_eq!(meta.sample_rate, 16000);
    assert!(
        c1.iter().all(|x| *x == 0),
        "nothing of the caller in channel 1"
    );
    let frame0 = meta
        .media_started_at
        .micros_since(Timestamp::from_micros(0));
    // The reference: each packet decoded in order, at its place.
    let mut dec = new_decoder(&Codec::Opus, 16000).expect("opus");
    let delay = dec.delay_samples() as i64;
    let mut want = vec![0i16; c0.len() + 2000];
    let mut out = Vec::new();
    for x in txs.iter().filter(|x| x.pt == 111) {
        out.clear();
        dec.decode(&x.payload, &mut out).expect("decodes");
        let p = (x.sent_us - frame0) * 16 / 1000 - delay;
        for (j, s) in out.iter().enumerate() {
            if let Some(w) = usize::try_from(p + j as i64)
                .ok()
                .and_then(|q| want.get_mut(q))
            {
                *w = *s;
            }
        }
    }
    let bad = |shift: i64| {
        (0..c0.len() as i64)
            .filter(|i| {
                want.get((i - shift).max(0) as usize).copied().unwrap_or(0) != c0[*i as usize]
            })
            .count()
    };
    let best = (-40..=40).min_by_key(|s| (bad(*s), s.abs())).unwrap_or(0);
    assert!(
        best.abs() <= 2 && bad(best) == 0,
        "opus: best shift {best} with {} samples differing ({} at 0; {} frames)",
        bad(best),
        bad(0),
        c0.len()
    );
    let key = meta.dtmf.iter().find(|k| k.digit == "5").expect("the key");
    let at_ms = (MEDIA_US + key_at as i64 * 1000 / 16 - frame0) / 1000;
    assert!(
        (key.at_ms - at_ms).abs() <= 1 && (key.duration_ms - 200).abs() <= 5,
        "key {key:?}, pressed at {at_ms} ms for 200 ms"
    );
}

/// A congestion episode on the caller's leg: from packet 1000 to 1499
/// (10 s) every packet takes `step_ms` longer on the way, then the queue
/// is gone and they arrive on time again; `jitter_ms` of uniform jitter
/// throughout. 600 ms of quiet 30 packets after the episode. Timestamps
/// and sequence numbers run on.
///
/// Seen from the arrivals alone, the start of the episode is a sender
/// that paused without advancing its timestamps: the leg moves `step_ms`
/// later (at most; `slack`). Its end is the same stream's packets coming
/// earlier than their place: they go on after the audio already placed,
/// nothing of it is cut (until 2026-12-06, an episode over 60 ms lost its
/// last `step_ms` of audio), and the leg is back at its place by the quiet.
fn congestion_episode(step_ms: i64, jitter_ms: i64, seed: u64, quiet: bool) -> Vec<Tx> {
    let mut a = Sender::new(0, 40_000, 7);
    let mut x = seed;
    for i in 0..2_500i64 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let j = if jitter_ms > 0 {
            ((x >> 33) % (jitter_ms as u64 * 1000)) as i64
        } else {
            0
        };
        let queue = if (1000..1500).contains(&i) {
            step_ms * 1000
        } else {
            0
        };
        let k = a.audio(MEDIA_US + i * 20_000, 160, 0, queue + j);
        if quiet && (1530..1560).contains(&i) {
            a.out[k].payload.fill(0xff);
            a.out[k].expect = false;
        }
        if (1000..1530).contains(&i) {
            a.out[k].slack = step_ms * 8;
        }
    }
    let mut b = Sender::new(1, 9, 9);
    b.talk(MEDIA_US + 10_000, 2_500);
    a.out.into_iter().chain(b.out).collect()
}

#[test]
fn a_congestion_episode_on_one_leg_cuts_nothing() {
    for (step, jitter) in [(40, 0), (80, 0), (120, 0), (250, 0), (80, 10), (200, 15)] {
        let name = format!("congestion of {step} ms, jitter {jitter} ms");
        check(
            &name,
            &congestion_episode(step, jitter, 0x5eed ^ step as u64, true),
            jitter as usize * 8,
        );
    }
}

/// The same episode in talk that never pauses: the overlap kept at its end
/// finds no quiet place, and is taken as a step once it has waited for one
/// (SLEW_AFTER_MS): at most the step's worth of audio is cut there, and from
/// then on every packet is in place, sample for sample (spread at 1 in 256,
/// 250 ms would have bent the rest of the call).
#[test]
fn a_congestion_episode_in_endless_talk_is_in_place_again_after_two_seconds() {
    for step in [80i64, 250] {
        let txs = congestion_episode(step, 0, 0x5eed ^ step as u64, false);
        let (c0, _, meta) = record(&txs);
        let frame0 = meta
            .media_started_at
            .micros_since(Timestamp::from_micros(0));
        let at = |t: &Tx, s: i64| {
            let n = t.payload.len();
            s >= 0
                && s as usize + n <= c0.len()
                && c0[s as usize..s as usize + n]
                    .iter()
                    .all(|x| *x == value_of(t))
        };
        let (mut missing, mut off) = (0, Vec::new());
        for (i, t) in txs.iter().enumerate().filter(|(_, t)| t.leg == 0) {
            let p = (t.sent_us - frame0) * 8 / 1000;
            // (The overlap is known once the queue has drained: `step` after
            // the episode's end; it waits two seconds from there.)
            if i as i64 >= 1500 + step / 20 + 3 + 100 {
                if !at(t, p) {
                    off.push(i);
                }
            } else if i >= 1500 && !(p..=p + step * 8).any(|s| at(t, s)) {
                missing += 1;
            } else if i < 1000 && !at(t, p) {
                off.push(i);
            }
        }
        assert!(off.is_empty(), "step {step}: packets not in place: {off:?}");
        assert!(
            missing <= step / 20 + 1,
            "step {step}: {missing} packets lost"
        );
    }
}
