//! Property tests of the call engine through its public API only.
//!
//! A synthetic call (SIP text and RTP packets built here) goes into
//! [`CallEngine::handle_segment`] as UDP segments; a checking sink verifies the
//! recording protocol and keeps what the engine wrote. Properties:
//!
//! - reordering (any arrival order a 0-200 ms network delay per packet
//!   produces), duplicates and loss do not move audio: every packet that got
//!   through is at the place it has in a clean run, lost ones are silence, and
//!   the length stays within a packet of the clean run;
//! - a two-hour G.711 call yields two hours of frames and does not grow the
//!   process's memory (`two_hour_call_memory_is_bounded`; the tests of this
//!   file run one at a time so the RSS it measures is its own);
//! - a call whose BYE never comes ends by `rtp_timeout` on `handle_timeout`.
//!
//! `write_call_engine_seeds` (ignored) writes the fuzz corpus seeds of
//! `fuzz/fuzz_targets/call_engine.rs` in its record format.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;

use pbx_core::call::{
    CallEngine, CallKey, CallMeta, EndReason, EngineConfig, RecordingSink, RecordingStart,
};
use pbx_core::net::{Segment, Transport};
use pbx_core::Timestamp;
use proptest::prelude::*;

/// Tests of this binary run one at a time, so the RSS measurement of the
/// long-call test sees only its own allocations.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

mod common;
use common::*;

// ------------------------------------------------------------ sinks

#[derive(Default)]
struct Rec {
    rate: u32,
    t0: Timestamp,
    frames: u64,
    /// Interleaved stereo, if the sink keeps audio.
    audio: Vec<i16>,
    meta: Option<CallMeta>,
}

/// Checks the protocol (`begin` once, `audio` between, `end` once, even
/// lengths, `meta.frames` = frames written) and keeps what was written.
#[derive(Default)]
struct CheckingSink {
    keep_audio: bool,
    calls: HashMap<CallKey, Rec>,
    order: Vec<CallKey>,
}

impl CheckingSink {
    fn keeping_audio() -> Self {
        CheckingSink {
            keep_audio: true,
            ..Default::default()
        }
    }
    fn only(&self) -> &Rec {
        assert_eq!(self.order.len(), 1, "expected exactly one recording");
        &self.calls[&self.order[0]]
    }
}

impl RecordingSink for CheckingSink {
    fn begin(&mut self, call: CallKey, start: &RecordingStart) {
        assert!(!self.calls.contains_key(&call), "begin twice for {call:?}");
        self.order.push(call);
        self.calls.insert(
            call,
            Rec {
                rate: start.sample_rate,
                t0: start.media_started_at,
                ..Default::default()
            },
        );
    }
    fn audio(&mut self, call: CallKey, frames: &[i16]) {
        assert_eq!(frames.len() % 2, 0, "odd interleaved length");
        let keep = self.keep_audio;
        let r = self.calls.get_mut(&call).expect("audio before begin");
        assert!(r.meta.is_none(), "audio after end");
        r.frames += (frames.len() / 2) as u64;
        if keep {
            r.audio.extend_from_slice(frames);
        }
    }
    fn end(&mut self, call: CallKey, meta: CallMeta) {
        let r = self.calls.get_mut(&call).expect("end before begin");
        assert!(r.meta.is_none(), "end twice");
        assert_eq!(meta.frames, r.frames, "meta.frames vs frames written");
        assert_eq!(meta.sample_rate, r.rate);
        assert_eq!(meta.media_started_at, r.t0);
        r.meta = Some(meta);
    }
}

// ------------------------------------------------------------ driving the engine

/// A packet (SIP or RTP) with its arrival time.
#[derive(Clone)]
struct Pkt {
    at_us: i64,
    src: SocketAddr,
    dst: SocketAddr,
    data: Vec<u8>,
}

const T0_US: i64 = 1_790_000_000_000_000;

fn feed(engine: &mut CallEngine, sink: &mut dyn RecordingSink, pkts: &[Pkt]) {
    for p in pkts {
        let seg = Segment {
            ts: Timestamp::from_micros(p.at_us),
            src: p.src,
            dst: p.dst,
            transport: Transport::Udp,
            payload: &p.data,
            tcp_gap: false,
        };
        engine.handle_segment(&seg, sink);
    }
}

/// INVITE / 180 / 200 / ACK; media may start at `T0_US + 1_020_000`.
fn setup_packets(d: &Dialog) -> Vec<Pkt> {
    let offer = sdp("10.0.0.1", 40000, &[0, 8, 101], "sendrecv");
    let answer = sdp("10.0.0.2", 50000, &[0, 101], "sendrecv");
    let a2b = |at_ms: i64, data: Vec<u8>| Pkt {
        at_us: T0_US + at_ms * 1000,
        src: caller_sip(),
        dst: callee_sip(),
        data,
    };
    let b2a = |at_ms: i64, data: Vec<u8>| Pkt {
        at_us: T0_US + at_ms * 1000,
        src: callee_sip(),
        dst: caller_sip(),
        data,
    };
    vec![
        a2b(0, d.request("INVITE", 1, true, Some(&offer))),
        b2a(50, d.response(180, "Ringing", 1, "INVITE", true, None)),
        b2a(
            1000,
            d.response(200, "OK", 1, "INVITE", true, Some(&answer)),
        ),
        a2b(1010, d.request("ACK", 1, true, None)),
    ]
}

/// A SIP message the caller sends the callee at `at_us`.
fn a2b(at_us: i64, data: Vec<u8>) -> Pkt {
    Pkt {
        at_us,
        src: caller_sip(),
        dst: callee_sip(),
        data,
    }
}

/// A SIP message the callee sends the caller at `at_us`.
fn b2a(at_us: i64, data: Vec<u8>) -> Pkt {
    Pkt {
        at_us,
        src: callee_sip(),
        dst: caller_sip(),
        data,
    }
}

/// The μ-law byte packet `k` of a leg carries: distinct, never silence.
fn payload_byte(leg: usize, k: usize) -> u8 {
    // 0x01..=0x7e decode to distinct negative values, 0x80..=0xfe to positive.
    if leg == 0 {
        1 + (k % 120) as u8
    } else {
        0x81 + (k % 120) as u8
    }
}

const MEDIA_START_US: i64 = T0_US + 1_020_000;
const PACKET_US: i64 = 20_000;
/// The callee's packets are sent 10 ms after the caller's.
const LEG_OFFSET_US: i64 = 10_000;

/// Nominal send time of packet `k` of `leg`.
fn send_time(leg: usize, k: usize) -> i64 {
    MEDIA_START_US + k as i64 * PACKET_US + if leg == 1 { LEG_OFFSET_US } else { 0 }
}

fn leg_packet(leg: usize, k: usize) -> Vec<u8> {
    let ssrc = if leg == 0 { 0x1111_0000 } else { 0x2222_0000 };
    rtp(
        0,
        k == 0,
        (1000 + k) as u16,
        (5000 + k * 160) as u32,
        ssrc,
        &[payload_byte(leg, k); 160],
    )
}

fn leg_addrs(leg: usize) -> (SocketAddr, SocketAddr) {
    if leg == 0 {
        (caller_rtp(), callee_rtp())
    } else {
        (callee_rtp(), caller_rtp())
    }
}

/// What happens to one RTP packet on the way.
#[derive(Debug, Clone, Copy)]
struct Fate {
    delay_us: i64,
    lost: bool,
    /// Delay of a duplicate copy (after the original's send time), if any.
    dup_delay_us: Option<i64>,
}

const CLEAN: Fate = Fate {
    delay_us: 0,
    lost: false,
    dup_delay_us: None,
};

/// A whole call: setup, `n` packets per leg with their fates, BYE and 200.
/// Packets are sorted by arrival (stable, so equal times keep send order).
fn call_packets(n: usize, fates: &[[Fate; 2]]) -> Vec<Pkt> {
    let d = Dialog::new("props-call@10.0.0.1");
    let mut pkts = setup_packets(&d);
    let mut media = Vec::new();
    for k in 0..n {
        for leg in 0..2 {
            let f = fates.get(k).map(|f| f[leg]).unwrap_or(CLEAN);
            let (src, dst) = leg_addrs(leg);
            let data = leg_packet(leg, k);
            let sent = send_time(leg, k);
            if let Some(dd) = f.dup_delay_us {
                media.push(Pkt {
                    at_us: sent + dd,
                    src,
                    dst,
                    data: data.clone(),
                });
            }
            if !f.lost {
                media.push(Pkt {
                    at_us: sent + f.delay_us,
                    src,
                    dst,
                    data,
                });
            }
        }
    }
    media.sort_by_key(|p| p.at_us);
    pkts.extend(media);
    let bye_at = send_time(1, n) + 300_000;
    pkts.push(Pkt {
        at_us: bye_at,
        src: caller_sip(),
        dst: callee_sip(),
        data: d.request("BYE", 2, true, None),
    });
    pkts.push(Pkt {
        at_us: bye_at + 20_000,
        src: callee_sip(),
        dst: caller_sip(),
        data: d.response(200, "OK", 2, "BYE", true, None),
    });
    pkts
}

fn run(pkts: &[Pkt]) -> CheckingSink {
    let mut engine = CallEngine::new(EngineConfig::default());
    let mut sink = CheckingSink::keeping_audio();
    feed(&mut engine, &mut sink, pkts);
    engine.finish(EndReason::CaptureEnd, &mut sink);
    assert_eq!(engine.active_calls(), 0);
    sink
}

fn channel(audio: &[i16], ch: usize) -> Vec<i16> {
    audio.iter().skip(ch).step_by(2).copied().collect()
}

/// Where packet `k` of `leg` lands on the clean timeline (time zero is the
/// caller's first packet).
fn clean_pos(leg: usize, k: usize) -> usize {
    k * 160 + if leg == 1 { 80 } else { 0 }
}

#[test]
fn clean_call_is_exact() {
    let _g = serial();
    let n = 150;
    let sink = run(&call_packets(n, &[]));
    let r = sink.only();
    let meta = r.meta.as_ref().expect("ended");
    assert_eq!(meta.end_reason, EndReason::Bye);
    assert_eq!(r.rate, 8000);
    assert_eq!(r.frames, (n * 160 + 80) as u64);
    for leg in 0..2 {
        let ch = channel(&r.audio, leg);
        assert_eq!(meta.channels[leg].packets, n as u64);
        assert_eq!(meta.channels[leg].lost, 0);
        assert_eq!(meta.channels[leg].codec, "PCMU");
        for k in 0..n {
            let p = clean_pos(leg, k);
            let first = ch[p];
            assert_ne!(first, 0, "leg {leg} packet {k}");
            assert!(
                ch[p..p + 160].iter().all(|s| *s == first),
                "leg {leg} packet {k} not in place"
            );
        }
        // the callee's first 10 ms are silence
        if leg == 1 {
            assert!(ch[..80].iter().all(|s| *s == 0));
        }
    }
}

fn fate_strategy() -> impl Strategy<Value = Fate> {
    (
        0i64..200_000,
        prop::bool::weighted(0.1),
        prop::option::weighted(0.1, 0i64..200_000),
    )
        .prop_map(|(delay_us, lost, dup_delay_us)| Fate {
            delay_us,
            lost,
            dup_delay_us,
        })
}

proptest! {
    // A fixed seed: CI must not depend on the draw. This seed draws a call
    // of 4.8 s with 0-200 ms jitter whose lowest delays happened to tilt
    // by 1000 ppm: it was once taken for a drift and resampled (fixed: the
    // envelope's slope is as uncertain as the least of n delays spread over
    // the jitter). Seeds 2, 4, 5, 6 and 0x1234_5678 pass too.
    #![proptest_config(ProptestConfig {
        cases: 96,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x5eed_0001),
        ..ProptestConfig::default()
    })]

    /// (a) Each packet is delayed by 0-200 ms (so arrival order is any
    /// permutation within a 200 ms window), some are lost, some duplicated.
    /// The first packet of each leg arrives undelayed (it sets time zero and
    /// the leg's anchor: a delayed first packet shifts the whole timeline by
    /// design) and the last packet of each leg is not lost (a lost tail is
    /// unknowable). Then: no panic; every packet that got through sits exactly
    /// where it sits in the clean run, lost ones are silence; the length is
    /// within one packet of the clean run.
    #[test]
    fn reorder_duplicates_and_loss_keep_audio_in_place(
        fates in prop::collection::vec([fate_strategy(), fate_strategy()], 60..250),
    ) {
        let _g = serial();
        let n = fates.len();
        let mut fates = fates;
        for f in fates[0].iter_mut() {
            f.delay_us = 0;
            f.lost = false;
        }
        for f in fates[n - 1].iter_mut() {
            f.lost = false;
        }
        let clean = run(&call_packets(n, &[]));
        let got = run(&call_packets(n, &fates));
        let (c, g) = (clean.only(), got.only());
        prop_assert!(
            (g.frames as i64 - c.frames as i64).abs() <= 160,
            "length {} vs clean {}", g.frames, c.frames
        );
        let meta = g.meta.as_ref().expect("ended");
        prop_assert_eq!(meta.end_reason, EndReason::Bye);
        for leg in 0..2 {
            let (cc, gc) = (channel(&c.audio, leg), channel(&g.audio, leg));
            let mut lost = 0u64;
            for (k, f) in fates.iter().enumerate() {
                let p = clean_pos(leg, k);
                let want: &[i16] = &cc[p..p + 160];
                let got_k = gc.get(p..p + 160).unwrap_or(&[]);
                let f = f[leg];
                if f.lost && f.dup_delay_us.is_none() {
                    lost += 1;
                    prop_assert!(
                        got_k.iter().all(|s| *s == 0),
                        "leg {} packet {} was lost but is not silence", leg, k
                    );
                } else {
                    prop_assert_eq!(got_k, want, "leg {} packet {} misplaced", leg, k);
                }
            }
            prop_assert_eq!(meta.channels[leg].lost, lost, "leg {} lost count", leg);
            prop_assert_eq!(meta.channels[leg].packets, n as u64 - lost);
            prop_assert_eq!(meta.channels[leg].late, 0);
        }
    }
}

// ------------------------------------------------------------ (b) two hours

fn rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = s.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// A sink that only counts.
#[derive(Default)]
struct CountingSink {
    begins: u32,
    frames: u64,
    ends: Vec<CallMeta>,
}

impl RecordingSink for CountingSink {
    fn begin(&mut self, _call: CallKey, _start: &RecordingStart) {
        self.begins += 1;
    }
    fn audio(&mut self, _call: CallKey, frames: &[i16]) {
        assert_eq!(frames.len() % 2, 0);
        self.frames += (frames.len() / 2) as u64;
    }
    fn end(&mut self, _call: CallKey, meta: CallMeta) {
        self.ends.push(meta);
    }
}

/// (b) A two-hour PCMU call (360,000 packets of 20 ms per leg, the timer
/// ticking every second): the sink gets two hours of frames (± a packet) and
/// the process's resident memory grows by less than 20 MB from the first
/// minute to the end (the engine has no accessor for its buffered samples).
///
/// Takes ~11 s in a debug build (720,000 packets), so it runs with the
/// others.
#[test]
fn two_hour_call_memory_is_bounded() {
    let _g = serial();
    const PACKETS: usize = 360_000;
    let d = Dialog::new("two-hours@10.0.0.1");
    let mut engine = CallEngine::new(EngineConfig::default());
    let mut count = CountingSink::default();
    feed(&mut engine, &mut count, &setup_packets(&d));
    let mut pkt = rtp(0, false, 0, 0, 0, &[0u8; 160]);
    let mut baseline = None;
    let mut peak = 0u64;
    for k in 0..PACKETS {
        for leg in 0..2 {
            let ssrc: u32 = if leg == 0 { 0x1111_0000 } else { 0x2222_0000 };
            let seq = (k as u16).wrapping_add(1000);
            let ts = (k as u32).wrapping_mul(160).wrapping_add(0xffff_0000);
            pkt[2..4].copy_from_slice(&seq.to_be_bytes());
            pkt[4..8].copy_from_slice(&ts.to_be_bytes());
            pkt[8..12].copy_from_slice(&ssrc.to_be_bytes());
            pkt[12..].fill(payload_byte(leg, k));
            let (src, dst) = leg_addrs(leg);
            let seg = Segment {
                ts: Timestamp::from_micros(send_time(leg, k)),
                src,
                dst,
                transport: Transport::Udp,
                payload: &pkt,
                tcp_gap: false,
            };
            engine.handle_segment(&seg, &mut count);
        }
        if k % 50 == 0 {
            engine.handle_timeout(Timestamp::from_micros(send_time(1, k)), &mut count);
        }
        if k == 3000 {
            baseline = rss_bytes();
        }
        if k % 30_000 == 0 {
            if let Some(r) = rss_bytes() {
                peak = peak.max(r);
            }
        }
    }
    let bye = send_time(1, PACKETS) + 100_000;
    feed(
        &mut engine,
        &mut count,
        &[Pkt {
            at_us: bye,
            src: caller_sip(),
            dst: callee_sip(),
            data: d.request("BYE", 2, true, None),
        }],
    );
    engine.handle_timeout(Timestamp::from_micros(bye + 1_000_000), &mut count);
    if let Some(r) = rss_bytes() {
        peak = peak.max(r);
    }
    assert_eq!(engine.active_calls(), 0, "BYE ended the call");
    assert_eq!(count.begins, 1);
    assert_eq!(count.ends.len(), 1);
    let meta = &count.ends[0];
    assert_eq!(meta.end_reason, EndReason::Bye);
    let want = (PACKETS * 160 + 80) as i64;
    assert!(
        (count.frames as i64 - want).abs() <= 160,
        "frames {} vs two hours {want}",
        count.frames
    );
    assert_eq!(meta.frames, count.frames);
    for c in &meta.channels {
        assert_eq!(c.packets, PACKETS as u64);
        assert_eq!(c.lost, 0);
        assert_eq!(c.late, 0);
    }
    eprintln!("two-hour call: rss first minute {:?} peak {peak}", baseline);
    if let Some(b) = baseline {
        let growth = peak.saturating_sub(b);
        assert!(
            growth < 20 * 1024 * 1024,
            "RSS grew {growth} bytes over two hours"
        );
    } else {
        eprintln!("note: /proc/self/statm unavailable, memory not measured");
    }
}

// ------------------------------------------------------------ (c) missing BYE

/// (c) Media stops and no BYE comes: the timer ends the call with
/// `RtpTimeout` once `rtp_timeout` (30 s) has passed since the last packet,
/// not before; a running call with the timer ticking is never ended.
#[test]
fn missing_bye_ends_by_rtp_timeout() {
    let _g = serial();
    let n = 250; // 5 s
    let d = Dialog::new("no-bye@10.0.0.1");
    let mut engine = CallEngine::new(EngineConfig::default());
    let mut sink = CheckingSink::keeping_audio();
    feed(&mut engine, &mut sink, &setup_packets(&d));
    for k in 0..n {
        let mut pkts = Vec::new();
        for leg in 0..2 {
            let (src, dst) = leg_addrs(leg);
            pkts.push(Pkt {
                at_us: send_time(leg, k),
                src,
                dst,
                data: leg_packet(leg, k),
            });
        }
        feed(&mut engine, &mut sink, &pkts);
        if k % 50 == 49 {
            engine.handle_timeout(Timestamp::from_micros(send_time(1, k)), &mut sink);
            assert_eq!(engine.active_calls(), 1, "ended while media flows");
        }
    }
    let last_rtp = send_time(1, n - 1);
    let cfg = EngineConfig::default();
    let mut ended_at_tick = None;
    let mut t = last_rtp;
    while t < last_rtp + 60_000_000 {
        t += 500_000;
        engine.handle_timeout(Timestamp::from_micros(t), &mut sink);
        if sink.only().meta.is_some() {
            ended_at_tick = Some(t);
            break;
        }
    }
    let tick = ended_at_tick.expect("call never ended without BYE");
    assert!(
        tick - last_rtp >= cfg.rtp_timeout_us,
        "ended {} us after media stopped, before rtp_timeout",
        tick - last_rtp
    );
    assert!(
        tick - last_rtp < cfg.rtp_timeout_us + 1_000_000,
        "ended {} us after media stopped",
        tick - last_rtp
    );
    assert_eq!(engine.active_calls(), 0);
    let r = sink.only();
    let meta = r.meta.as_ref().expect("ended");
    assert_eq!(meta.end_reason, EndReason::RtpTimeout);
    assert!(!meta.end_reason.is_cut());
    assert_eq!(meta.ended_at, Timestamp::from_micros(last_rtp));
    // All the media is there; what comes after it is silence (see
    // `missing_bye_recording_has_no_trailing_timeout_silence`).
    assert!(r.frames >= (n * 160 + 80) as u64);
    let ch = [channel(&r.audio, 0), channel(&r.audio, 1)];
    for (leg, c) in ch.iter().enumerate() {
        for k in 0..n {
            let p = clean_pos(leg, k);
            assert!(c[p..p + 160].iter().all(|s| *s == c[p] && *s != 0));
        }
        assert!(c[n * 160 + 80..].iter().all(|s| *s == 0));
    }
    // Nothing more after the end, even when time moves on.
    engine.handle_timeout(Timestamp::from_micros(t + 100_000_000), &mut sink);
    engine.finish(EndReason::CaptureEnd, &mut sink);
    assert_eq!(sink.order.len(), 1);
}

/// A host that sleeps until `poll_timeout` (as the daemon's sources do):
/// nothing to wait for while idle; while the call runs it is woken at most
/// 200 ms apart; the BYE's linger ends exactly at its deadline; the
/// recording is the same as one fed without any timer; afterwards the
/// engine again has nothing to wait for.
#[test]
fn poll_timeout_wakes_only_when_needed() {
    let _g = serial();
    let pkts = call_packets(150, &[]);
    let mut engine = CallEngine::new(EngineConfig::default());
    assert_eq!(engine.poll_timeout(), None, "an idle engine needs no timer");
    let mut sink = CheckingSink::keeping_audio();
    let mut wakes: Vec<i64> = Vec::new();
    let mut ended_at = None;
    fn host_until(
        engine: &mut CallEngine,
        sink: &mut CheckingSink,
        until: i64,
        wakes: &mut Vec<i64>,
        ended_at: &mut Option<i64>,
    ) {
        while let Some(d) = engine.poll_timeout() {
            if d.as_micros() > until {
                break;
            }
            wakes.push(d.as_micros());
            engine.handle_timeout(d, sink);
            if ended_at.is_none() && sink.order.len() == 1 && sink.only().meta.is_some() {
                *ended_at = Some(d.as_micros());
            }
            assert!(wakes.len() < 10_000, "woken without end");
        }
    }
    for p in &pkts {
        host_until(&mut engine, &mut sink, p.at_us, &mut wakes, &mut ended_at);
        feed(&mut engine, &mut sink, std::slice::from_ref(p));
        let d = engine
            .poll_timeout()
            .expect("a call in progress needs time");
        assert!(
            d.as_micros() <= p.at_us.max(wakes.last().copied().unwrap_or(0)) + 1_000_000,
            "deadline {} us after the packet",
            d.as_micros() - p.at_us
        );
    }
    host_until(&mut engine, &mut sink, i64::MAX, &mut wakes, &mut ended_at);
    assert_eq!(engine.active_calls(), 0);
    assert_eq!(engine.poll_timeout(), None, "nothing left to wait for");
    // The BYE is the second-to-last packet; its linger is one jitter window.
    let bye = pkts[pkts.len() - 2].at_us;
    let jitter_us = i64::from(EngineConfig::default().jitter_ms) * 1000;
    assert_eq!(ended_at, Some(bye + jitter_us), "ended at the linger's end");
    // While media flowed, wakes came at most 200 ms apart (after the first).
    for w in wakes.windows(2) {
        assert!(w[1] - w[0] <= 200_000 || w[1] == bye + jitter_us);
    }
    let plain = run(&pkts);
    let (a, b) = (sink.only(), plain.only());
    assert_eq!(a.frames, b.frames);
    assert!(a.audio == b.audio, "a timer changed the recording");
    assert_eq!(
        a.meta.as_ref().map(|m| m.end_reason),
        b.meta.as_ref().map(|m| m.end_reason)
    );
}

// ------------------------------------------------------------ fuzz seeds

/// One record of the `call_engine` fuzz target's input.
fn record(op: u8, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(payload.len()).expect("record fits");
    let mut r = vec![op];
    r.extend_from_slice(&len.to_be_bytes());
    r.extend_from_slice(payload);
    r
}

/// Kinds and variants, see fuzz/fuzz_targets/call_engine.rs.
fn sip_a2b(p: &[u8]) -> Vec<u8> {
    record((1 << 2) << 3, p) // src 0 (10.0.0.1), dst 1 (10.0.0.2)
}
fn sip_b2a(p: &[u8]) -> Vec<u8> {
    record(1 << 3, p)
}
fn rtp_rec(pair: u8, p: &[u8]) -> Vec<u8> {
    record(1 | pair << 3, p)
}
fn burst(pair: u8, pt: u8, count: u8, step_ms: u8, ssrc_sel: u8, audio: &[u8]) -> Vec<u8> {
    let mut p = vec![pt, count, step_ms, ssrc_sel];
    p.extend_from_slice(audio);
    record(2 | pair << 3, &p)
}
fn frame_rec(link: u8, p: &[u8]) -> Vec<u8> {
    record(3 | link << 3, p)
}
fn wait_ms(ms: u32) -> Vec<u8> {
    record(4, &ms.to_be_bytes())
}
fn clock_back_ms(ms: u32) -> Vec<u8> {
    record(4 | 1 << 3, &ms.to_be_bytes())
}
fn sip_tcp_a2b(p: &[u8]) -> Vec<u8> {
    record(5 | (1 << 2) << 3, p)
}
fn finish_rec() -> Vec<u8> {
    record(7, &[])
}
/// Finish, then go on with an engine configured by `variant` (bits 0-1
/// `max_calls` 100000/1/2/8, bits 2-3 `jitter_ms` 500/0/100/2000, bit 4 fixed
/// 16 kHz).
fn reconfigure(variant: u8) -> Vec<u8> {
    record(7 | variant << 3, &[])
}

/// Ethernet / IPv4 / UDP frame.
fn eth_udp(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src.ip(), dst.ip()) else {
        panic!("v4 only");
    };
    let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00];
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0x12, 0x34, 0x40, 0x00, 64, 17, 0, 0]);
    ip.extend_from_slice(&s.octets());
    ip.extend_from_slice(&d.octets());
    let mut sum: u32 = ip
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&src.port().to_be_bytes());
    f.extend_from_slice(&dst.port().to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

/// Interleaved RTP records of both legs: `n` packets each, starting at `k0`.
fn rtp_both(pt: u8, k0: usize, n: usize, pairs: (u8, u8), payload: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for k in k0..k0 + n {
        let ts = (k * 160) as u32;
        out.push(rtp_rec(
            pairs.0,
            &rtp(pt, false, k as u16, ts, 0x1111_0000, payload),
        ));
        out.push(rtp_rec(
            pairs.1,
            &rtp(
                pt,
                false,
                k as u16,
                ts.wrapping_add(7),
                0x2222_0000,
                payload,
            ),
        ));
    }
    out
}

fn seeds() -> Vec<(&'static str, Vec<Vec<u8>>)> {
    let d = Dialog::new("seed-call@10.0.0.1");
    let offer = sdp("10.0.0.1", 40000, &[0, 8, 9, 101], "sendrecv");
    let answer = sdp("10.0.0.2", 50000, &[0, 8, 9, 101], "sendrecv");
    let setup = vec![
        sip_a2b(&d.request("INVITE", 1, true, Some(&offer))),
        sip_b2a(&d.response(100, "Trying", 1, "INVITE", true, None)),
        sip_b2a(&d.response(180, "Ringing", 1, "INVITE", true, None)),
        sip_b2a(&d.response(200, "OK", 1, "INVITE", true, Some(&answer))),
        sip_a2b(&d.request("ACK", 1, true, None)),
    ];
    let pcmu = [0x55u8; 160];
    let pcma = [0xd5u8; 160];
    let g722 = [0x3cu8; 160];
    let mut out = Vec::new();

    // 1. The full call: PCMU, PCMA, G.722, DTMF, CN, re-INVITE to sendonly
    //    on new ports, BYE.
    let mut full = setup.clone();
    full.extend(rtp_both(0, 0, 12, (0, 1), &pcmu));
    full.extend(rtp_both(8, 12, 4, (0, 1), &pcma));
    full.extend(rtp_both(9, 16, 4, (0, 1), &g722));
    for (i, end) in [(0u16, false), (1, false), (2, false), (3, true), (3, true)] {
        full.push(rtp_rec(
            0,
            &rtp(
                101,
                i == 0,
                20 + i,
                20 * 160,
                0x1111_0000,
                &dtmf(5, end, 160 * (i + 1)),
            ),
        ));
    }
    full.push(rtp_rec(
        1,
        &rtp(13, false, 24, 24 * 160, 0x2222_0000, &[40]),
    ));
    let hold = sdp("10.0.0.1", 40002, &[0, 101], "sendonly");
    let held = sdp("10.0.0.2", 50002, &[0, 101], "recvonly");
    full.push(sip_a2b(&d.request("INVITE", 2, true, Some(&hold))));
    full.push(sip_b2a(&d.response(
        200,
        "OK",
        2,
        "INVITE",
        true,
        Some(&held),
    )));
    full.push(sip_a2b(&d.request("ACK", 2, true, None)));
    full.extend(rtp_both(0, 30, 6, (2, 3), &pcmu));
    full.push(sip_a2b(&d.request("BYE", 3, true, None)));
    full.push(sip_b2a(&d.response(200, "OK", 3, "BYE", true, None)));
    out.push(("seed-full-call", full));

    // 2. Bursts (long streams from few bytes), then silence until rtp_timeout.
    let mut long = setup.clone();
    long.push(burst(0, 0, 200, 20, 0, &pcmu));
    long.push(burst(1, 0, 200, 20, 0, &pcmu));
    long.push(burst(0, 0, 50, 20, 1, &pcmu)); // new SSRC
    long.push(wait_ms(31_000));
    out.push(("seed-bursts-timeout", long));

    // 3. Early media then CANCEL / 487.
    let early = sdp("10.0.0.2", 50000, &[0], "sendrecv");
    out.push((
        "seed-cancel",
        vec![
            sip_a2b(&d.request("INVITE", 1, true, Some(&offer))),
            sip_b2a(&d.response(183, "Session Progress", 1, "INVITE", true, Some(&early))),
            rtp_rec(1, &rtp(0, true, 1, 0, 0x2222_0000, &pcmu)),
            rtp_rec(1, &rtp(0, false, 2, 160, 0x2222_0000, &pcmu)),
            sip_a2b(&d.request("CANCEL", 1, true, None)),
            sip_b2a(&d.response(200, "OK", 1, "CANCEL", true, None)),
            sip_b2a(&d.response(487, "Request Terminated", 1, "INVITE", true, None)),
            sip_a2b(&d.request("ACK", 1, true, None)),
        ],
    ));

    // 4. Rejected.
    out.push((
        "seed-rejected",
        vec![
            sip_a2b(&d.request("INVITE", 1, true, Some(&offer))),
            sip_b2a(&d.response(486, "Busy Here", 1, "INVITE", true, None)),
        ],
    ));

    // 5. SIP over TCP, the INVITE in two segments.
    let inv = d.request("INVITE", 1, true, Some(&offer));
    let (a, b) = inv.split_at(inv.len() / 2);
    let mut tcp = vec![sip_tcp_a2b(a), sip_tcp_a2b(b)];
    tcp.push(sip_b2a(&d.response(
        200,
        "OK",
        1,
        "INVITE",
        true,
        Some(&answer),
    )));
    tcp.extend(rtp_both(0, 0, 5, (0, 1), &pcmu));
    out.push(("seed-tcp", tcp));

    // 6. The same call as raw Ethernet frames.
    let mut frames = vec![
        frame_rec(
            0,
            &eth_udp(
                caller_sip(),
                callee_sip(),
                &d.request("INVITE", 1, true, Some(&offer)),
            ),
        ),
        frame_rec(
            0,
            &eth_udp(
                callee_sip(),
                caller_sip(),
                &d.response(200, "OK", 1, "INVITE", true, Some(&answer)),
            ),
        ),
    ];
    for k in 0..5u16 {
        frames.push(frame_rec(
            0,
            &eth_udp(
                caller_rtp(),
                callee_rtp(),
                &rtp(0, false, k, u32::from(k) * 160, 0x1111_0000, &pcmu),
            ),
        ));
        frames.push(frame_rec(
            0,
            &eth_udp(
                callee_rtp(),
                caller_rtp(),
                &rtp(0, false, k, u32::from(k) * 160, 0x2222_0000, &pcmu),
            ),
        ));
    }
    frames.push(frame_rec(
        0,
        &eth_udp(caller_sip(), callee_sip(), &d.request("BYE", 2, true, None)),
    ));
    out.push(("seed-frames", frames));

    // 7. Mid-call pickup (re-INVITE with To-tag first), a relay's copy, a
    //    NATed sender, a clock step back, finish mid-input, then a new call.
    let mut mid = vec![sip_a2b(&d.request("INVITE", 5, true, Some(&offer)))];
    mid.push(sip_b2a(&d.response(
        200,
        "OK",
        5,
        "INVITE",
        true,
        Some(&answer),
    )));
    mid.extend(rtp_both(0, 0, 4, (0, 4), &pcmu));
    mid.extend(rtp_both(0, 4, 4, (6, 5), &pcmu));
    mid.push(clock_back_ms(100));
    mid.extend(rtp_both(0, 8, 4, (0, 1), &pcmu));
    mid.push(finish_rec());
    mid.extend(setup.clone());
    mid.push(burst(1, 8, 20, 20, 0, &pcma));
    out.push(("seed-midcall-relay", mid));

    // 8. Wideband: G.722 and Opus offered, 16 kHz recording.
    let d2 = Dialog::new("seed-wide@10.0.0.1");
    let wide_offer = sdp("10.0.0.1", 40000, &[9, 111, 0, 101], "sendrecv");
    let wide_answer = sdp("10.0.0.2", 50000, &[9, 111, 101], "sendrecv");
    let mut wide = vec![
        sip_a2b(&d2.request("INVITE", 1, true, Some(&wide_offer))),
        sip_b2a(&d2.response(200, "OK", 1, "INVITE", true, Some(&wide_answer))),
        sip_a2b(&d2.request("ACK", 1, true, None)),
    ];
    wide.extend(rtp_both(9, 0, 6, (0, 1), &g722));
    // an Opus frame (TOC: CELT FB 20 ms, one frame) with a little data
    let opus = [0xfcu8, 0xff, 0xfe];
    wide.extend(rtp_both(111, 0, 4, (0, 1), &opus));
    wide.push(sip_b2a(&d2.request("BYE", 2, false, None)));
    out.push(("seed-wideband", wide));

    // 9. One call at most, no jitter window: a second INVITE evicts the
    //    first call while it has media; then 16 kHz fixed with 2 s jitter.
    let d3 = Dialog::new("seed-second@10.0.0.2");
    let mut evict = vec![reconfigure(1 | 1 << 2)];
    evict.extend(setup.clone());
    evict.extend(rtp_both(0, 0, 5, (0, 1), &pcmu));
    evict.push(sip_a2b(&d3.request("INVITE", 1, true, Some(&hold))));
    evict.push(sip_b2a(&d3.response(
        200,
        "OK",
        1,
        "INVITE",
        true,
        Some(&held),
    )));
    evict.extend(rtp_both(0, 0, 5, (2, 3), &pcmu));
    evict.push(reconfigure(3 << 2 | 16));
    evict.extend(setup.clone());
    evict.extend(rtp_both(0, 0, 10, (0, 1), &pcmu));
    out.push(("seed-config-evict", evict));
    out
}

/// Writes the seed corpus of the `call_engine` fuzz target.
/// `cargo test -p pbx-core --test engine_props -- --ignored write_call_engine_seeds`
#[test]
#[ignore = "writes fuzz/corpus/call_engine seeds"]
fn write_call_engine_seeds() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/call_engine");
    std::fs::create_dir_all(&dir).expect("create corpus dir");
    for (name, recs) in seeds() {
        std::fs::write(dir.join(name), recs.concat()).expect("write seed");
    }
}

/// The seeds are real calls: each one that carries media gives a recording.
#[test]
fn seeds_are_parsed_by_the_engine() {
    let _g = serial();
    let d = Dialog::new("seed-call@10.0.0.1");
    let offer = d.request(
        "INVITE",
        1,
        true,
        Some(&sdp("10.0.0.1", 40000, &[0], "sendrecv")),
    );
    let msg = pbx_core::sip::message::parse_message(&offer).expect("INVITE parses");
    assert_eq!(msg.call_id, "seed-call@10.0.0.1");
    assert!(
        pbx_core::sip::sdp::parse_sdp(&sdp("10.0.0.1", 40000, &[0, 8, 9, 101], "sendonly")).is_ok()
    );
    // The full-call seed, replayed the way the fuzz target does: SIP and
    // RTP at 10 ms steps.
    let (_, full) = seeds().into_iter().next().expect("seeds");
    let mut engine = CallEngine::new(EngineConfig::default());
    let mut sink = CheckingSink::default();
    let mut t = T0_US;
    for r in &full {
        t += 10_000;
        let op = r[0];
        let payload = &r[3..];
        let (src, dst) = match (op & 7, op >> 3) {
            (0, 4) => (caller_sip(), callee_sip()),
            (0, _) => (callee_sip(), caller_sip()),
            (1, 0) => (caller_rtp(), callee_rtp()),
            (1, 1) => (callee_rtp(), caller_rtp()),
            (1, 2) => (v4(10, 0, 0, 1, 40002), v4(10, 0, 0, 2, 50002)),
            (1, _) => (v4(10, 0, 0, 2, 50002), v4(10, 0, 0, 1, 40002)),
            _ => unreachable!("only SIP and RTP in the full-call seed"),
        };
        feed(
            &mut engine,
            &mut sink,
            &[Pkt {
                at_us: t,
                src,
                dst,
                data: payload.to_vec(),
            }],
        );
    }
    engine.finish(EndReason::CaptureEnd, &mut sink);
    let meta = sink.only().meta.as_ref().expect("ended");
    assert_eq!(meta.end_reason, EndReason::Bye);
    assert_eq!(engine.stats().sip_malformed, 0);
    assert_eq!(engine.stats().sdp_malformed, 0);
    assert_eq!(engine.stats().rtp_unmatched, 0);
    assert_eq!(meta.dtmf.len(), 1, "{:?}", meta.dtmf);
    assert_eq!(meta.dtmf[0].digit, "5");
    assert_eq!(meta.channels[0].codecs, ["PCMU", "PCMA", "G722"]);
    assert!(meta.channels[1].comfort_noise_packets >= 1);
}

/// Runs a call whose media stops after `n` packets per leg and whose BYE never
/// comes, ticking the timer every 500 ms until it ends. Returns the sink.
fn call_without_bye(n: usize) -> CheckingSink {
    let d = Dialog::new("no-bye@10.0.0.1");
    let mut engine = CallEngine::new(EngineConfig::default());
    let mut sink = CheckingSink::default();
    let mut pkts = setup_packets(&d);
    for k in 0..n {
        for leg in 0..2 {
            let (src, dst) = leg_addrs(leg);
            pkts.push(Pkt {
                at_us: send_time(leg, k),
                src,
                dst,
                data: leg_packet(leg, k),
            });
        }
    }
    feed(&mut engine, &mut sink, &pkts);
    let mut t = send_time(1, n - 1);
    while engine.active_calls() > 0 && t < send_time(1, n) + 120_000_000 {
        t += 500_000;
        engine.handle_timeout(Timestamp::from_micros(t), &mut sink);
    }
    sink
}

/// A call that lost its BYE is recorded with `rtp_timeout` (30 s) of silence
/// after its last packet: while waiting for the timeout, `handle_timeout`
/// flushes the timeline up to `now - jitter`, so by the time the call ends
/// the silence is already written. `meta.frames` (hence `duration_ms`) then
/// says 35 s for a 5 s call, while `meta.ended_at` says 5 s.
/// Expected: the recording ends within the jitter window (+ a 100 ms chunk)
/// of the last media, like a call ended by BYE.
#[test]
fn missing_bye_recording_has_no_trailing_timeout_silence() {
    let _g = serial();
    let n = 250;
    let sink = call_without_bye(n);
    let r = sink.only();
    let meta = r.meta.as_ref().expect("ended");
    assert_eq!(meta.end_reason, EndReason::RtpTimeout);
    let media = (n * 160 + 80) as u64;
    let span_ms = meta.ended_at.micros_since(meta.media_started_at) / 1000;
    assert!(
        r.frames <= media + 8000 * 6 / 10,
        "{} frames ({} ms) for {} ms of media; ended_at - media_started_at = {span_ms} ms",
        r.frames,
        meta.duration_ms(),
        media / 8,
    );
}

// ------------------------------------------------------- SRTP without keys

/// A sniffed or imported call that negotiated SRTP whose keys pbx-edge
/// cannot use (SDES of a suite it does not take, or DTLS-SRTP) is recorded
/// as silence as long as its packets with a warning naming why, never as
/// the noise its encrypted payloads decode to. (Usable SDES keys:
/// decrypted, see below.)
#[test]
fn srtp_negotiated_in_the_sdp_is_silence_with_a_warning_not_noise() {
    let _g = serial();
    for (keys, why) in [
        (
            "a=crypto:1 AES_256_CM_HMAC_SHA1_80 inline:aSBrbm93IGFsbCB5b3VyIGxpdHRsZSBzZWNyZXRzIGFuZCBtb3JlIGJ5dGVz\r\n",
            "SDES",
        ),
        ("a=fingerprint:sha-256 AA:BB:CC\r\n", "DTLS-SRTP"),
    ] {
        let d = Dialog::new("srtp@10.0.0.1");
        let mut pkts = setup_packets(&d);
        // The same dialog, but its SDP says RTP/SAVP with keys.
        for p in pkts.iter_mut() {
            let text = String::from_utf8_lossy(&p.data).into_owned();
            if let Some(body_at) = text.find("\r\n\r\nv=0") {
                let body = text[body_at + 4..]
                    .replace("RTP/AVP", "RTP/SAVP")
                    .replace("a=ptime:20\r\n", &format!("a=ptime:20\r\n{keys}"));
                let head = text[..body_at]
                    .lines()
                    .map(|l| {
                        if l.to_ascii_lowercase().starts_with("content-length") {
                            format!("Content-Length: {}", body.len())
                        } else {
                            l.to_string()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("\r\n");
                p.data = format!("{head}\r\n\r\n{body}").into_bytes();
            }
        }
        let mut media = Vec::new();
        for k in 0..100 {
            for leg in 0..2 {
                let (src, dst) = leg_addrs(leg);
                // "Encrypted" payloads: bytes that decode to loud noise.
                let noise: Vec<u8> = (0..160).map(|i| ((i * 37 + k * 11 + leg) % 256) as u8).collect();
                let ssrc = if leg == 0 { 0x1111_0000 } else { 0x2222_0000 };
                media.push(Pkt {
                    at_us: send_time(leg, k),
                    src,
                    dst,
                    data: rtp(0, k == 0, (1000 + k) as u16, (5000 + k * 160) as u32, ssrc, &noise),
                });
            }
        }
        media.sort_by_key(|p| p.at_us);
        pkts.extend(media);
        let sink = run(&pkts);
        let r = sink.only();
        let meta = r.meta.as_ref().expect("ended");
        assert!(r.audio.iter().all(|s| *s == 0), "{why}: the channels must be silent");
        // As long as its packets (100 of 20 ms): not an empty recording.
        assert!(
            r.audio.len() >= 2 * 8000 * 19 / 10,
            "{why}: {} samples",
            r.audio.len()
        );
        let w = meta.warnings.join(" | ");
        assert!(w.contains("SRTP") && w.contains(why), "{why}: warnings: {w}");
        assert_eq!(meta.channels[0].packets, 100, "the packets are counted");
    }
}

// ------------------------------------------------------------ SRTP (SDES)

/// A sniffed or imported call whose parties negotiated SRTP with SDES keys
/// in the SDP (RFC 4568): each side's packets are decrypted with the key
/// that side announced (the offer has two lines, the answer selects tag 2,
/// so the caller encrypts with its tag-2 line), and the channels are bit
/// for bit the clean call's. A packet that does not authenticate (sent with
/// another key) is dropped and counted, never decoded as noise.
#[test]
fn srtp_with_sdes_keys_is_decrypted_per_sender() {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use webrtc_srtp::context::Context;
    use webrtc_srtp::protection_profile::ProtectionProfile;

    let _g = serial();
    let n = 100;
    let key = |b: u8| -> ([u8; 16], [u8; 14], String) {
        let raw: [u8; 30] = std::array::from_fn(|i| b.wrapping_add(i as u8 * 7));
        let (k, s) = raw.split_at(16);
        (
            k.try_into().unwrap(),
            s.try_into().unwrap(),
            format!("inline:{}", STANDARD.encode(raw)),
        )
    };
    let (caller_unused, caller_k32, callee_k32) = (key(1), key(2), key(3));
    let savp = |sdp: String, lines: &[(u32, &str, &str)]| {
        let mut s = sdp.replace("RTP/AVP", "RTP/SAVP");
        for (tag, suite, params) in lines {
            s.push_str(&format!("a=crypto:{tag} {suite} {params}\r\n"));
        }
        s
    };
    let offer = savp(
        sdp("10.0.0.1", 40000, &[0, 8, 101], "sendrecv"),
        &[
            (1, "AES_CM_128_HMAC_SHA1_80", &caller_unused.2),
            (2, "AES_CM_128_HMAC_SHA1_32", &caller_k32.2),
        ],
    );
    let answer = savp(
        sdp("10.0.0.2", 50000, &[0, 101], "sendrecv"),
        &[(2, "AES_CM_128_HMAC_SHA1_32", &callee_k32.2)],
    );
    let d = Dialog::new("srtp-call@10.0.0.1");
    let plain = call_packets(n, &[]);
    let mut enc: [Context; 2] = [&caller_k32, &callee_k32].map(|k| {
        Context::new(
            &k.0,
            &k.1,
            ProtectionProfile::Aes128CmHmacSha1_32,
            None,
            None,
        )
        .unwrap()
    });
    let mut forger = Context::new(
        &caller_unused.0,
        &caller_unused.1,
        ProtectionProfile::Aes128CmHmacSha1_32,
        None,
        None,
    )
    .unwrap();
    let mut pkts = Vec::new();
    for p in &plain {
        let leg = if p.src == caller_rtp() {
            Some(0)
        } else if p.src == callee_rtp() {
            Some(1)
        } else {
            None
        };
        let data = match leg {
            Some(l) => enc[l].encrypt_rtp(&p.data).unwrap().to_vec(),
            // SIP: the same dialog, with the SRTP offer and answer.
            None => {
                let text = String::from_utf8_lossy(&p.data).to_string();
                if text.starts_with("INVITE") {
                    d.request("INVITE", 1, true, Some(&offer))
                } else if text.starts_with("SIP/2.0 200") && text.contains("INVITE") {
                    d.response(200, "OK", 1, "INVITE", true, Some(&answer))
                } else {
                    p.data.clone()
                }
            }
        };
        pkts.push(Pkt {
            at_us: p.at_us,
            src: p.src,
            dst: p.dst,
            data,
        });
    }
    // A forged copy of the caller's packet 50 (the offer's unused key).
    let forged = forger.encrypt_rtp(&leg_packet(0, 50)).unwrap().to_vec();
    let at = pkts
        .iter()
        .position(|p| p.at_us > send_time(0, 50) + 5_000)
        .unwrap();
    pkts.insert(
        at,
        Pkt {
            at_us: send_time(0, 50) + 5_000,
            src: caller_rtp(),
            dst: callee_rtp(),
            data: forged,
        },
    );
    let mut engine = CallEngine::new(EngineConfig::default());
    let mut sink = CheckingSink::keeping_audio();
    feed(&mut engine, &mut sink, &pkts);
    engine.finish(EndReason::CaptureEnd, &mut sink);
    assert_eq!(engine.stats().srtp_failures, 1);
    let clean = run(&plain);
    let (c, g) = (clean.only(), sink.only());
    let meta = g.meta.as_ref().expect("ended");
    assert!(meta.warnings.is_empty(), "{:?}", meta.warnings);
    for leg in 0..2 {
        assert_eq!(meta.channels[leg].packets, n as u64, "leg {leg}");
        assert_eq!(
            channel(&g.audio, leg),
            channel(&c.audio, leg),
            "leg {leg} differs from the clean call"
        );
    }
}

/// The answer of one branch of a forking proxy, seen beside the proxy (or
/// in its HEP trace): a failure the proxy does not pass on to the caller
/// (it tries the next branch) ends nothing; the call answered by the next
/// branch is recorded whole. Before, the 486 ended the call and the 200
/// found none.
#[test]
fn a_branch_refused_behind_a_forking_proxy_does_not_end_the_call() {
    let _g = serial();
    let n = 100;
    let d = Dialog::new("props-call@10.0.0.1");
    let mut pkts = call_packets(n, &[]);
    // A branch behind the proxy (10.0.0.2) refuses at 30 ms.
    pkts.insert(
        1,
        Pkt {
            at_us: T0_US + 30_000,
            src: v4(10, 0, 0, 3, 5060),
            dst: callee_sip(),
            data: d.response(486, "Busy Here", 1, "INVITE", true, None),
        },
    );
    assert_whole_call(&run(&pkts), n);
}

/// A forked INVITE answered twice: the caller hangs up the extra dialog
/// (a BYE with the other answer's tag) and talks on in the first. The BYE
/// of the other dialog does not end the call (it cut the recording there).
#[test]
fn a_bye_to_another_fork_of_the_call_does_not_end_it() {
    let _g = serial();
    let n = 100;
    let other = Dialog {
        to_tag: "other-fork".into(),
        ..Dialog::new("props-call@10.0.0.1")
    };
    let mut pkts = call_packets(n, &[]);
    let at = |ms: i64| T0_US + ms * 1000;
    let answer = sdp("10.0.0.3", 52000, &[0], "sendrecv");
    let extra = [
        Pkt {
            at_us: at(1005),
            src: v4(10, 0, 0, 3, 5060),
            dst: caller_sip(),
            data: other.response(200, "OK", 1, "INVITE", true, Some(&answer)),
        },
        Pkt {
            at_us: at(1200),
            src: caller_sip(),
            dst: v4(10, 0, 0, 3, 5060),
            // (CSeq 3: another branch than the real BYE's in this helper)
            data: other.request("BYE", 3, true, None),
        },
    ];
    for p in extra {
        let i = pkts.iter().position(|q| q.at_us > p.at_us).unwrap();
        pkts.insert(i, p);
    }
    assert_whole_call(&run(&pkts), n);
}

/// The call of [`call_packets`] recorded whole: ended by its BYE, every
/// packet of both legs, to its end.
fn assert_whole_call(sink: &CheckingSink, n: usize) {
    let r = sink.only();
    let meta = r.meta.as_ref().expect("ended");
    assert_eq!(meta.end_reason, EndReason::Bye);
    assert_eq!(r.frames, (n * 160 + 80) as u64, "recorded to the end");
    assert_eq!(meta.channels[0].packets, n as u64);
    assert_eq!(meta.channels[1].packets, n as u64);
}

/// A SIP-I call (the INVITE's body is SDP + ISUP, multipart/mixed), as a
/// trunk to the PSTN sends it: an ordinary call, its SDP the sender's.
/// The callee moves its media with a re-INVITE mid-call: each party's
/// audio stays on its own channel, sample for sample. (Such a call was
/// taken for SIPREC by its multipart body before cb16a613; this case kept
/// its channels then too: a guard, not a reproduction.)
#[test]
fn a_sip_i_call_with_a_multipart_invite_keeps_its_channels() {
    let _g = serial();
    let n = 100;
    let half = 50;
    let d = Dialog::new("sipi-call@10.0.0.1");
    let offer = sdp("10.0.0.1", 40000, &[0, 101], "sendrecv");
    let body = format!(
        "--b1\r\nContent-Type: application/sdp\r\n\r\n{offer}\r\n--b1\r\n\
         Content-Type: application/ISUP;version=itu-t92+\r\n\
         Content-Disposition: signal;handling=optional\r\n\r\n\
         \x01\x00\x49\x00\x00\x03\x02\x00\x07\x04\x10\x00\x33\x63\r\n--b1--\r\n"
    );
    let invite = String::from_utf8(d.request("INVITE", 1, true, Some(&body)))
        .unwrap()
        .replace(
            "Content-Type: application/sdp",
            "Content-Type: multipart/mixed;boundary=b1",
        );
    let at = |ms: i64| T0_US + ms * 1000;
    let answer = sdp("10.0.0.2", 50000, &[0, 101], "sendrecv");
    let mut pkts = vec![
        a2b(at(0), invite.into_bytes()),
        b2a(
            at(1000),
            d.response(200, "OK", 1, "INVITE", true, Some(&answer)),
        ),
        a2b(at(1010), d.request("ACK", 1, true, None)),
    ];
    let moved = v4(10, 0, 0, 2, 50002);
    let mut media = Vec::new();
    for k in 0..n {
        for leg in 0..2 {
            let (mut src, mut dst) = leg_addrs(leg);
            if k >= half {
                if leg == 1 {
                    src = moved;
                } else {
                    dst = moved;
                }
            }
            media.push(Pkt {
                at_us: send_time(leg, k),
                src,
                dst,
                data: leg_packet(leg, k),
            });
        }
    }
    pkts.extend(media);
    // The callee's re-INVITE moves its media to 50002, between packets.
    let re_at = send_time(0, half) - 5_000;
    let moved_sdp = sdp("10.0.0.2", 50002, &[0, 101], "sendrecv");
    let again = sdp("10.0.0.1", 40000, &[0, 101], "sendrecv");
    let re = [
        // (the callee's own CSeq; 7 keeps this helper's branches apart)
        b2a(
            re_at - 3_000,
            d.request("INVITE", 7, false, Some(&moved_sdp)),
        ),
        a2b(
            re_at - 2_000,
            d.response(200, "OK", 7, "INVITE", false, Some(&again)),
        ),
        b2a(re_at - 1_000, d.request("ACK", 7, false, None)),
    ];
    for p in re {
        let i = pkts.iter().position(|q| q.at_us > p.at_us).unwrap();
        pkts.insert(i, p);
    }
    let bye_at = send_time(1, n) + 300_000;
    pkts.extend(hang_up(&d, bye_at, 2));
    let sink = run(&pkts);
    let r = sink.only();
    let meta = r.meta.as_ref().expect("ended");
    assert_eq!(meta.channels[0].packets, n as u64, "{meta:?}");
    assert_eq!(meta.channels[1].packets, n as u64, "{meta:?}");
    for leg in 0..2 {
        let ch = channel(&r.audio, leg);
        for k in 0..n {
            let p = clean_pos(leg, k);
            let want = pbx_core::audio::g711::ulaw_to_linear(payload_byte(leg, k));
            assert!(
                ch[p..p + 160].iter().all(|s| *s == want),
                "leg {leg} packet {k}: {:?}",
                &ch[p..p + 4]
            );
        }
    }
}

/// A hold of 40 s (both streams inactive by the re-INVITE's SDP, no media
/// at all), longer than the 30 s media timeout, then a resume: one
/// recording of the whole call, the hold as silence in its place (before,
/// the call ended 30 s into the hold and the resume opened a second call,
/// its caller whoever sent the resume).
#[test]
fn a_hold_longer_than_the_media_timeout_keeps_the_call() {
    let _g = serial();
    let n = 100;
    let hold_us: i64 = 40_000_000;
    let d = Dialog::new("hold-call@10.0.0.1");
    let mut pkts = setup_packets(&d);
    let media = |pkts: &mut Vec<Pkt>, ks: std::ops::Range<usize>, shift: i64| {
        for k in ks {
            for leg in 0..2 {
                let (src, dst) = leg_addrs(leg);
                pkts.push(Pkt {
                    at_us: send_time(leg, k) + shift,
                    src,
                    dst,
                    data: leg_packet(leg, k + (shift / PACKET_US) as usize),
                });
            }
        }
    };
    media(&mut pkts, 0..n, 0);
    // The callee holds: inactive both ways, no packet for 40 s.
    let t = send_time(1, n);
    let inactive_b = sdp("10.0.0.2", 50000, &[0, 101], "inactive");
    let inactive_a = sdp("10.0.0.1", 40000, &[0, 101], "inactive");
    pkts.push(b2a(t, d.request("INVITE", 7, false, Some(&inactive_b))));
    pkts.push(a2b(
        t + 5_000,
        d.response(200, "OK", 7, "INVITE", false, Some(&inactive_a)),
    ));
    pkts.push(b2a(t + 10_000, d.request("ACK", 7, false, None)));
    // Resumed: sendrecv again, media goes on 40 s later.
    let r = t + hold_us;
    let sendrecv_b = sdp("10.0.0.2", 50000, &[0, 101], "sendrecv");
    let sendrecv_a = sdp("10.0.0.1", 40000, &[0, 101], "sendrecv");
    pkts.push(b2a(r, d.request("INVITE", 8, false, Some(&sendrecv_b))));
    pkts.push(a2b(
        r + 5_000,
        d.response(200, "OK", 8, "INVITE", false, Some(&sendrecv_a)),
    ));
    pkts.push(b2a(r + 10_000, d.request("ACK", 8, false, None)));
    // Packets n.. carry on as if sent through (their timestamps too).
    media(&mut pkts, n..2 * n, hold_us);
    let end = send_time(1, 2 * n) + hold_us + 300_000;
    pkts.extend(hang_up(&d, end, 2));
    let sink = run(&pkts);
    let r = sink.only();
    let meta = r.meta.as_ref().expect("ended");
    assert_eq!(meta.end_reason, EndReason::Bye);
    assert_eq!(meta.channels[0].packets, 2 * n as u64);
    assert_eq!(meta.channels[1].packets, 2 * n as u64);
    let hold_frames = (hold_us / 125) as usize;
    for leg in 0..2 {
        let ch = channel(&r.audio, leg);
        for k in [0, n - 1, n, 2 * n - 1] {
            let at = clean_pos(leg, k) + if k >= n { hold_frames } else { 0 };
            let want = pbx_core::audio::g711::ulaw_to_linear(payload_byte(
                leg,
                k + if k >= n {
                    (hold_us / PACKET_US) as usize
                } else {
                    0
                },
            ));
            assert!(
                ch[at..at + 160].iter().all(|s| *s == want),
                "leg {leg} packet {k}"
            );
        }
        // The hold is silence.
        let quiet = clean_pos(leg, n) + 160..clean_pos(leg, n) + hold_frames - 160;
        assert!(ch[quiet].iter().all(|s| *s == 0), "leg {leg}");
    }
}

/// SIP over TCP seen from the middle of the connection (a capture started
/// during a long-lived trunk): the caller's first segment begins with the
/// tail of an earlier message, then the INVITE. The stream is followed from
/// its next start line: the call is recorded as the clean one over UDP is
/// (before, no framer was made for a stream whose first segment did not
/// begin with a start line, and nothing of it was ever read).
#[test]
fn sip_over_tcp_seen_from_the_middle_of_the_connection() {
    let _g = serial();
    let udp = run(&call_packets(50, &[]));
    let mut engine = CallEngine::new(EngineConfig::default());
    let mut sink = CheckingSink::keeping_audio();
    let mut first_a2b = true;
    for p in call_packets(50, &[]) {
        let sip = p.src.port() == caller_sip().port() || p.src.port() == callee_sip().port();
        let mut data = p.data.clone();
        if sip && p.src == caller_sip() && first_a2b {
            first_a2b = false;
            let mut d = Vec::new();
            d.extend_from_slice(b"x-earlier: tail of a message\r\nContent-Length: 0\r\n\r\n");
            d.extend_from_slice(&p.data);
            data = d;
        }
        let seg = Segment {
            ts: Timestamp::from_micros(p.at_us),
            src: p.src,
            dst: p.dst,
            transport: if sip { Transport::Tcp } else { Transport::Udp },
            payload: &data,
            tcp_gap: false,
        };
        engine.handle_segment(&seg, &mut sink);
    }
    engine.finish(EndReason::CaptureEnd, &mut sink);
    assert_eq!(sink.order.len(), 1, "one recording");
    let (a, b) = (&udp.calls[&udp.order[0]], &sink.calls[&sink.order[0]]);
    assert_eq!(a.audio, b.audio, "the same audio as over UDP");
}

/// SIP over TCP whose connection's first segment ends inside the INVITE's
/// request line (a small first segment, an IPv6 request line longer than
/// it): the stream is followed from its first byte, the next segment
/// completing the INVITE; the call is recorded as over UDP. Before, the
/// first segment was taken for another protocol, the INVITE lost with it,
/// and the call with the INVITE.
#[test]
fn sip_over_tcp_whose_first_segment_ends_inside_the_request_line() {
    let _g = serial();
    let udp = run(&call_packets(50, &[]));
    for cut in [1usize, 3, 6, 7, 12, 20, 30, 36] {
        let mut engine = CallEngine::new(EngineConfig::default());
        let mut sink = CheckingSink::keeping_audio();
        let mut first_a2b = true;
        for p in call_packets(50, &[]) {
            let sip = p.src.port() == caller_sip().port() || p.src.port() == callee_sip().port();
            let parts: Vec<&[u8]> = if sip && p.src == caller_sip() && first_a2b {
                first_a2b = false;
                vec![&p.data[..cut], &p.data[cut..]]
            } else {
                vec![&p.data[..]]
            };
            for (i, part) in parts.into_iter().enumerate() {
                let seg = Segment {
                    ts: Timestamp::from_micros(p.at_us + i as i64),
                    src: p.src,
                    dst: p.dst,
                    transport: if sip { Transport::Tcp } else { Transport::Udp },
                    payload: part,
                    tcp_gap: false,
                };
                engine.handle_segment(&seg, &mut sink);
            }
        }
        engine.finish(EndReason::CaptureEnd, &mut sink);
        assert_eq!(sink.order.len(), 1, "cut at {cut}: one recording");
        let (a, b) = (&udp.calls[&udp.order[0]], &sink.calls[&sink.order[0]]);
        assert_eq!(a.audio, b.audio, "cut at {cut}: the same audio as over UDP");
    }
}

/// An HTTP request on the same host whose body holds SIP text (a log
/// shipped to a log server: the call's own BYE, and an INVITE of another
/// call announcing the same RTP addresses), in several segments: never read
/// as SIP, the call recorded as without it. Found by a re-audit (both the
/// session's base and its new build): the logged BYE ended the real call
/// mid-way, the logged INVITE made a phantom recording of its audio.
#[test]
fn sip_text_inside_an_http_stream_is_not_sip() {
    // The first segment with the whole header and the body's start, or
    // cut inside the request line ("POST /lo"): a prefix of a SIP
    // request line too, until its line end says otherwise.
    for cut in [None, Some(8)] {
        http_stream_with_sip_text(cut);
    }
}

fn http_stream_with_sip_text(cut: Option<usize>) {
    let _g = serial();
    let clean = run(&call_packets(400, &[]));
    let pkts = call_packets(400, &[]);
    let d = Dialog::new("props-call@10.0.0.1");
    let offer = sdp("10.0.0.1", 40000, &[0, 101], "sendrecv");
    let logged = [
        d.request("BYE", 5, true, None),
        Dialog::new("phantom@10.0.0.9").request("INVITE", 1, true, Some(&offer)),
    ]
    .concat();
    let head = format!(
        "POST /logs HTTP/1.1\r\nHost: logs.example\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
        logged.len()
    );
    let (client, server) = (v4(10, 0, 0, 1, 45000), v4(10, 0, 0, 50, 8080));
    let mid = pkts[pkts.len() / 4].at_us;
    let mut engine = CallEngine::new(EngineConfig::default());
    let mut sink = CheckingSink::keeping_audio();
    let mut http_sent = false;
    for p in &pkts {
        if !http_sent && p.at_us >= mid {
            http_sent = true;
            let all = [head.as_bytes(), &logged].concat();
            let at = cut.unwrap_or(head.len() + 100);
            let parts: [&[u8]; 2] = [&all[..at], &all[at..]];
            for (i, part) in parts.into_iter().enumerate() {
                let seg = Segment {
                    ts: Timestamp::from_micros(p.at_us + i as i64),
                    src: client,
                    dst: server,
                    transport: Transport::Tcp,
                    payload: part,
                    tcp_gap: false,
                };
                engine.handle_segment(&seg, &mut sink);
            }
        }
        feed(&mut engine, &mut sink, std::slice::from_ref(p));
    }
    engine.finish(EndReason::CaptureEnd, &mut sink);
    assert_eq!(sink.order.len(), 1, "no phantom recording");
    let (a, b) = (&clean.calls[&clean.order[0]], &sink.calls[&sink.order[0]]);
    assert_eq!(
        a.audio, b.audio,
        "the call whole, as without the HTTP stream"
    );
}

/// A B2BUA (Asterisk, FreeSWITCH) with direct media, sniffed: its two
/// dialogs of one conversation (the caller's with the PBX, the PBX's with
/// the callee) both announce the phones' own addresses, and the RTP flows
/// between the phones. Each dialog's recording gets both parties, as the
/// clean single dialog does (before, the second dialog took the addresses
/// over and the first recorded nothing). A lingering call whose address a
/// new call took keeps none of the new call's packets (it knows only one
/// end of the new flow): covered by the engine's other tests.
#[test]
fn a_b2buas_two_dialogs_with_direct_media_both_record_the_conversation() {
    let _g = serial();
    let single = run(&call_packets(50, &[]));
    let reference = &single.calls[&single.order[0]];
    let mut pkts = Vec::new();
    for (i, call_id) in ["leg-a@pbx", "leg-b@pbx"].iter().enumerate() {
        let d = Dialog::new(call_id);
        for mut p in setup_packets(&d) {
            p.at_us += i as i64 * 1000;
            pkts.push(p);
        }
    }
    let mut media = Vec::new();
    for k in 0..50 {
        for leg in 0..2 {
            let (src, dst) = leg_addrs(leg);
            media.push(Pkt {
                at_us: send_time(leg, k),
                src,
                dst,
                data: leg_packet(leg, k),
            });
        }
    }
    media.sort_by_key(|p| p.at_us);
    pkts.extend(media);
    let bye_at = send_time(1, 50) + 300_000;
    for call_id in ["leg-a@pbx", "leg-b@pbx"] {
        let d = Dialog::new(call_id);
        pkts.extend(hang_up(&d, bye_at, 2));
    }
    let sink = run(&pkts);
    assert_eq!(sink.order.len(), 2, "a recording of each dialog");
    for k in &sink.order {
        let r = &sink.calls[k];
        let meta = r.meta.as_ref().unwrap();
        assert_eq!(
            (meta.channels[0].packets, meta.channels[1].packets),
            (50, 50),
            "{}",
            meta.call_id
        );
        assert_eq!(
            r.audio, reference.audio,
            "{}: the conversation",
            meta.call_id
        );
    }
}

/// The other side of sharing an address: a call hung up and lingering for
/// its stragglers whose callee's address a new call announces at once (the
/// phone's next call, another caller) gets none of the new call's packets:
/// it knows only one end of the new flow.
#[test]
fn a_lingering_call_gets_nothing_of_a_new_call_on_its_address() {
    let _g = serial();
    let mut pkts = call_packets(50, &[]);
    let bye_at = pkts.iter().map(|p| p.at_us).max().unwrap();
    let d = Dialog::new("next-call@10.0.0.3");
    let offer = sdp("10.0.0.3", 60000, &[0], "sendrecv");
    let answer = sdp("10.0.0.2", 50000, &[0], "sendrecv");
    pkts.push(a2b(
        bye_at + 1000,
        d.request("INVITE", 1, true, Some(&offer)),
    ));
    pkts.push(b2a(
        bye_at + 2000,
        d.response(200, "OK", 1, "INVITE", true, Some(&answer)),
    ));
    let new_caller: SocketAddr = "10.0.0.3:60000".parse().unwrap();
    let (_, callee) = leg_addrs(0);
    for k in 0..20 {
        pkts.push(Pkt {
            at_us: bye_at + 3000 + k as i64 * PACKET_US,
            src: new_caller,
            dst: callee,
            data: rtp(0, k == 0, k as u16, (k * 160) as u32, 0x3333, &[0x55; 160]),
        });
    }
    let sink = run(&pkts);
    assert_eq!(sink.order.len(), 2);
    let first = sink.calls[&sink.order[0]].meta.as_ref().unwrap();
    let next = sink.calls[&sink.order[1]].meta.as_ref().unwrap();
    assert_eq!(
        (first.channels[0].packets, first.channels[1].packets),
        (50, 50)
    );
    assert_eq!(next.channels[0].packets, 20);
}

/// A call whose BYE the capture missed, then the same two phones (the same
/// two RTP addresses, fixed ports per phone) in a new call a second later:
/// the new call announced both ends of the flow, and the old one, still
/// waiting for its media timeout, knew both ends too. The new call's
/// packets are the new call's only (before, the old recording took them
/// all: the second conversation in two recordings, the first one's end
/// stretched to the second's).
#[test]
fn a_call_without_bye_gets_nothing_of_the_next_call_on_the_same_two_addresses() {
    let _g = serial();
    let mut pkts: Vec<Pkt> = call_packets(50, &[]);
    // (The first call's BYE and its answer missed.)
    pkts.retain(|p| !p.data.starts_with(b"BYE") && !p.data.windows(7).any(|w| w == b" 2 BYE\r"));
    let end = pkts.iter().map(|p| p.at_us).max().unwrap();
    let d = Dialog::new("next-call@10.0.0.1");
    for mut p in setup_packets(&d) {
        p.at_us += end + 1_000_000 - T0_US;
        pkts.push(p);
    }
    let start = end + 1_000_000 + 1_020_000;
    for k in 0..30 {
        for leg in 0..2 {
            let (src, dst) = leg_addrs(leg);
            let ssrc = if leg == 0 { 0x5555_0000 } else { 0x6666_0000 };
            pkts.push(Pkt {
                at_us: start + k as i64 * PACKET_US + leg as i64 * LEG_OFFSET_US,
                src,
                dst,
                data: rtp(
                    0,
                    k == 0,
                    (20 + k) as u16,
                    (k * 160) as u32,
                    ssrc,
                    &[0x55; 160],
                ),
            });
        }
    }
    let bye_at = start + 31 * PACKET_US;
    pkts.extend(hang_up(&d, bye_at, 2));
    let sink = run(&pkts);
    assert_eq!(sink.order.len(), 2);
    let first = &sink.calls[&sink.order[0]];
    let next = &sink.calls[&sink.order[1]];
    let (fm, nm) = (first.meta.as_ref().unwrap(), next.meta.as_ref().unwrap());
    assert_eq!(fm.call_id, "props-call@10.0.0.1");
    assert_eq!(
        (fm.channels[0].packets, fm.channels[1].packets),
        (50, 50),
        "the first call's packets only"
    );
    assert!(
        !first
            .audio
            .iter()
            .any(|s| *s == pbx_core::audio::g711::ulaw_to_linear(0x55)),
        "none of the next call's audio in the first call's recording"
    );
    assert!(
        fm.frames <= 50 * 160 + 80 + 160,
        "the first recording ends with its media: {} frames",
        fm.frames
    );
    assert_eq!((nm.channels[0].packets, nm.channels[1].packets), (30, 30));
}

/// The B2BUA's two dialogs of [`a_b2buas_two_dialogs_with_direct_media_both_record_the_conversation`],
/// and then a session refresh (a re-INVITE of the second dialog repeating
/// both addresses: that dialog announced both ends last). The first dialog
/// was set up with the second (its INVITE before the other's answer): it
/// goes on recording the conversation.
#[test]
fn a_b2buas_dialogs_keep_recording_after_one_refreshes_its_session() {
    let _g = serial();
    let mut pkts = Vec::new();
    let dialogs = ["leg-a@pbx", "leg-b@pbx"].map(Dialog::new);
    for (i, d) in dialogs.iter().enumerate() {
        for mut p in setup_packets(d) {
            p.at_us += i as i64 * 1000;
            pkts.push(p);
        }
    }
    let refresh_at = send_time(0, 20) - 5_000;
    let offer = sdp("10.0.0.1", 40000, &[0, 8, 101], "sendrecv");
    let answer = sdp("10.0.0.2", 50000, &[0, 101], "sendrecv");
    pkts.push(a2b(
        refresh_at,
        dialogs[1].request("INVITE", 2, true, Some(&offer)),
    ));
    pkts.push(b2a(
        refresh_at + 2_000,
        dialogs[1].response(200, "OK", 2, "INVITE", true, Some(&answer)),
    ));
    pkts.push(a2b(
        refresh_at + 3_000,
        dialogs[1].request("ACK", 2, true, None),
    ));
    for k in 0..50 {
        for leg in 0..2 {
            let (src, dst) = leg_addrs(leg);
            pkts.push(Pkt {
                at_us: send_time(leg, k),
                src,
                dst,
                data: leg_packet(leg, k),
            });
        }
    }
    pkts.sort_by_key(|p| p.at_us);
    let bye_at = send_time(1, 50) + 300_000;
    for d in &dialogs {
        pkts.extend(hang_up(d, bye_at, 3));
    }
    let sink = run(&pkts);
    assert_eq!(sink.order.len(), 2, "a recording of each dialog");
    for k in &sink.order {
        let meta = sink.calls[k].meta.as_ref().unwrap();
        assert_eq!(
            (meta.channels[0].packets, meta.channels[1].packets),
            (50, 50),
            "{}",
            meta.call_id
        );
    }
}

/// Each copy of a packet is counted once in `duplicates` (before, twice:
/// once as it was dropped, once more from the sequence numbers' tracker);
/// a packet captured twice at once (forwarded by the capturing host) is
/// not counted at all.
#[test]
fn each_duplicate_is_counted_once_and_a_capture_copy_not_at_all() {
    let _g = serial();
    let dup = Fate {
        dup_delay_us: Some(5_000),
        ..CLEAN
    };
    let fates: Vec<[Fate; 2]> = (0..50)
        .map(|k| {
            if k % 5 == 0 {
                [dup, CLEAN]
            } else {
                [CLEAN, dup]
            }
        })
        .collect();
    let rec = run(&call_packets(50, &fates));
    let meta = rec.calls[&rec.order[0]].meta.as_ref().unwrap();
    assert_eq!(
        (meta.channels[0].duplicates, meta.channels[1].duplicates),
        (10, 40)
    );
    assert_eq!(
        (meta.channels[0].packets, meta.channels[1].packets),
        (50, 50)
    );
    // Every packet captured twice 50 µs apart (sniffing `any` on a host
    // that forwards them: seen coming in and going out): one packet each,
    // no duplicate.
    let forwarded = Fate {
        dup_delay_us: Some(50),
        ..CLEAN
    };
    let rec = run(&call_packets(50, &vec![[forwarded, forwarded]; 50]));
    let once = run(&call_packets(50, &[]));
    let (c, o) = (&rec.calls[&rec.order[0]], &once.calls[&once.order[0]]);
    let meta = c.meta.as_ref().unwrap();
    assert_eq!(
        (meta.channels[0].duplicates, meta.channels[1].duplicates),
        (0, 0)
    );
    assert_eq!(
        (meta.channels[0].packets, meta.channels[1].packets),
        (50, 50)
    );
    assert_eq!(c.audio, o.audio);
}

/// Packets that come after their place was written (2 s late, beyond the
/// 500 ms window) are dropped, counted in the channel's `late` and in the
/// engine's `rtp_late` (the `pbx_edge_rtp_packets_late_total` metric).
#[test]
fn packets_later_than_the_window_are_counted_late() {
    let _g = serial();
    let late = Fate {
        delay_us: 2_000_000,
        ..CLEAN
    };
    let fates: Vec<[Fate; 2]> = (0..100)
        .map(|k| {
            if k == 40 || k == 60 {
                [late, CLEAN]
            } else {
                [CLEAN, CLEAN]
            }
        })
        .collect();
    let mut engine = CallEngine::new(EngineConfig::default());
    let mut sink = CheckingSink::keeping_audio();
    feed(&mut engine, &mut sink, &call_packets(100, &fates));
    engine.finish(EndReason::CaptureEnd, &mut sink);
    let meta = sink.calls[&sink.order[0]].meta.as_ref().unwrap();
    assert_eq!((meta.channels[0].late, meta.channels[1].late), (2, 0));
    assert_eq!(engine.stats().rtp_late, 2);
}

/// The caller's BYE in dialog `d` at `at_us`, and its 200 OK 20 ms later.
fn hang_up(d: &Dialog, at_us: i64, cseq: u32) -> [Pkt; 2] {
    [
        a2b(at_us, d.request("BYE", cseq, true, None)),
        b2a(
            at_us + 20_000,
            d.response(200, "OK", cseq, "BYE", true, None),
        ),
    ]
}

/// An INVITE with `offer` at `at_ms` (by the caller of dialog `d`, or the
/// callee), its 200 OK with `answer` `answer_ms` later, and the ACK.
fn exchange(
    d: &Dialog,
    at_ms: i64,
    answer_ms: i64,
    cseq: u32,
    by_caller: bool,
    offer: &str,
    answer: &str,
) -> Vec<Pkt> {
    let us = |m: i64| T0_US + m * 1000;
    type Message = fn(i64, Vec<u8>) -> Pkt;
    let (req, resp): (Message, Message) = if by_caller { (a2b, b2a) } else { (b2a, a2b) };
    vec![
        req(us(at_ms), d.request("INVITE", cseq, by_caller, Some(offer))),
        resp(
            us(at_ms + answer_ms),
            d.response(200, "OK", cseq, "INVITE", by_caller, Some(answer)),
        ),
        req(
            us(at_ms + answer_ms + 10),
            d.request("ACK", cseq, by_caller, None),
        ),
    ]
}

/// The recording of `call_id` in `sink`.
fn recording_of<'a>(sink: &'a CheckingSink, call_id: &str) -> &'a Rec {
    sink.order
        .iter()
        .map(|k| &sink.calls[k])
        .find(|r| r.meta.as_ref().is_some_and(|m| m.call_id == call_id))
        .unwrap_or_else(|| panic!("no recording of {call_id}"))
}

/// A queue: the PBX answers the caller itself (its IVR, the PBX's media
/// address), dials the agent later with the caller's address (direct
/// media), then re-INVITEs the caller with the agent's (and, with
/// `refresh`, the agent again with the caller's: that dialog then
/// announced both ends last). Both dialogs record the conversation: the
/// caller's also its IVR part. (A rule for lingering calls that took
/// "set up together" for "the same conversation" lost the caller's
/// dialog's whole conversation, or the agent's recording.)
#[test]
fn a_queue_call_handed_to_an_agent_with_direct_media_is_in_both_dialogs() {
    for refresh in [false, true] {
        let _g = serial();
        let (c1, c2) = (
            Dialog::new("queue-caller@pbx"),
            Dialog::new("queue-agent@pbx"),
        );
        let a_sdp = sdp("10.0.0.1", 40000, &[0], "sendrecv");
        let pbx_sdp = sdp("10.0.0.9", 30000, &[0], "sendrecv");
        let b_sdp = sdp("10.0.0.2", 50000, &[0], "sendrecv");
        let (a, pbx, b): (SocketAddr, SocketAddr, SocketAddr) = (
            "10.0.0.1:40000".parse().unwrap(),
            "10.0.0.9:30000".parse().unwrap(),
            "10.0.0.2:50000".parse().unwrap(),
        );
        let ms = |m: i64| T0_US + m * 1000;
        let mut pkts = exchange(&c1, 0, 100, 1, true, &a_sdp, &pbx_sdp);
        // The agent dialled 2 s after the caller was answered; then the
        // caller talks to the agent (and, with `refresh`, the agent's
        // dialog is re-INVITEd).
        pkts.extend(exchange(&c2, 2000, 500, 1, true, &a_sdp, &b_sdp));
        pkts.extend(exchange(&c1, 2520, 10, 2, false, &b_sdp, &a_sdp));
        if refresh {
            pkts.extend(exchange(&c2, 2600, 10, 2, true, &a_sdp, &b_sdp));
        }
        // The IVR part (0.2-2.5 s), then the conversation (2.6-4.6 s).
        let mut media = Vec::new();
        for k in 0..115u16 {
            let at = ms(200) + i64::from(k) * PACKET_US;
            media.push((at, a, pbx, 0x1111_0000, k));
            media.push((at + 5_000, pbx, a, 0x9999_0000, k));
        }
        for k in 0..100u16 {
            let at = ms(2700) + i64::from(k) * PACKET_US;
            media.push((at, a, b, 0x1111_0000, 115 + k));
            media.push((at + 5_000, b, a, 0x2222_0000, k));
        }
        for (at, src, dst, ssrc, k) in media {
            let byte = if ssrc == 0x2222_0000 { 0x90 } else { 0x20 } + (k % 8) as u8;
            pkts.push(Pkt {
                at_us: at,
                src,
                dst,
                data: rtp(0, false, k, u32::from(k) * 160, ssrc, &[byte; 160]),
            });
        }
        pkts.sort_by_key(|p| p.at_us);
        let end = ms(5000);
        pkts.extend(hang_up(&c1, end, 3));
        pkts.extend(hang_up(&c2, end, 3));
        let sink = run(&pkts);
        let meta = |id: &str| recording_of(&sink, id).meta.clone().unwrap();
        let (m1, m2) = (meta("queue-caller@pbx"), meta("queue-agent@pbx"));
        assert_eq!(
            (m1.channels[0].packets, m1.channels[1].packets),
            (215, 215),
            "the caller's dialog: its IVR part and the conversation (refresh {refresh})"
        );
        assert_eq!(
            (m2.channels[0].packets, m2.channels[1].packets),
            (100, 100),
            "the agent's dialog: the conversation (refresh {refresh})"
        );
    }
}

/// A B2BUA's blind transfer with direct media: the caller's dialog and the
/// first agent's, set up together, then a third dialog to the new agent
/// (the caller's address), the caller re-INVITEd with the new agent's,
/// and the first agent's dialog hung up (its BYE seen or not). Each dialog
/// records its own part: the third the caller and the new agent, the first
/// the whole conversation, the second nothing of the new agent.
#[test]
fn a_blind_transfer_with_direct_media_records_each_dialogs_part() {
    for second_bye in [true, false] {
        let _g = serial();
        let [c1, c2, c3] =
            ["xfer-caller@pbx", "xfer-first@pbx", "xfer-second@pbx"].map(Dialog::new);
        let (a_sdp, b_sdp, c_sdp) = (
            sdp("10.0.0.1", 40000, &[0], "sendrecv"),
            sdp("10.0.0.2", 50000, &[0], "sendrecv"),
            sdp("10.0.0.3", 60000, &[0], "sendrecv"),
        );
        let (a, b, c): (SocketAddr, SocketAddr, SocketAddr) = (
            "10.0.0.1:40000".parse().unwrap(),
            "10.0.0.2:50000".parse().unwrap(),
            "10.0.0.3:60000".parse().unwrap(),
        );
        let ms = |m: i64| T0_US + m * 1000;
        // The caller's dialog and the first agent's set up together.
        let mut pkts = exchange(&c1, 0, 510, 1, true, &a_sdp, &b_sdp);
        pkts.extend(exchange(&c2, 10, 490, 1, true, &a_sdp, &b_sdp));
        // The transfer at 2 s.
        pkts.extend(exchange(&c3, 2000, 300, 1, true, &a_sdp, &c_sdp));
        pkts.extend(exchange(&c1, 2320, 10, 2, false, &c_sdp, &a_sdp));
        if second_bye {
            pkts.push(a2b(ms(2350), c2.request("BYE", 2, true, None)));
            pkts.push(b2a(ms(2360), c2.response(200, "OK", 2, "BYE", true, None)));
        }
        // A and B 0.6-2.3 s; A sends to C once re-INVITEd (2.34 s), C
        // talks from 2.4 s.
        let mut media = Vec::new();
        for k in 0..185u16 {
            let at = ms(600) + i64::from(k) * PACKET_US;
            let other = if k < 87 { b } else { c };
            media.push((at, a, other, 0x1111_0000, k));
            if k < 85 {
                media.push((at + 5_000, b, a, 0x2222_0000, k));
            } else if k >= 90 {
                media.push((at + 5_000, c, a, 0x3333_0000, k));
            }
        }
        for (at, src, dst, ssrc, k) in media {
            let byte = match ssrc {
                0x2222_0000 => 0x90,
                0x3333_0000 => 0xc0,
                _ => 0x20,
            } + (k % 8) as u8;
            pkts.push(Pkt {
                at_us: at,
                src,
                dst,
                data: rtp(0, false, k, u32::from(k) * 160, ssrc, &[byte; 160]),
            });
        }
        pkts.sort_by_key(|p| p.at_us);
        let end = ms(5000);
        for d in [&c1, &c3] {
            pkts.extend(hang_up(d, end, 3));
        }
        let sink = run(&pkts);
        let rec = |id: &str| recording_of(&sink, id);
        let c_values: Vec<i16> = (0..8)
            .map(|i| pbx_core::audio::g711::ulaw_to_linear(0xc0 + i))
            .collect();
        let has_c = |r: &Rec| r.audio.iter().any(|s| c_values.contains(s));
        let (r1, r2, r3) = (
            rec("xfer-caller@pbx"),
            rec("xfer-first@pbx"),
            rec("xfer-second@pbx"),
        );
        let packets = |r: &Rec| {
            let m = r.meta.as_ref().unwrap();
            (m.channels[0].packets, m.channels[1].packets)
        };
        assert_eq!(
            packets(r1),
            (185, 180),
            "the caller's dialog (BYE {second_bye})"
        );
        assert_eq!(
            packets(r3),
            (98, 95),
            "the new agent's dialog (BYE {second_bye})"
        );
        assert!(has_c(r1) && has_c(r3));
        assert!(
            !has_c(r2),
            "the new agent in the first agent's dialog (BYE {second_bye})"
        );
    }
}
