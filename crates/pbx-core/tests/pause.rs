//! Pause and resume through the engine's public API, against ground truth.
//!
//! A synthetic call keys a card number between the pause and the resume
//! sequences (RFC 4733 events, or in-band tones on a G.711 call without
//! telephone-events), or is paused by the API or a SIP header. The same call
//! is also recorded without pausing: the paused WAV must equal it frame for
//! frame outside the stretches the JSON lists, be exact zeros on both
//! channels inside them (so audio after a resume is exactly where it belongs),
//! hold the card digits only inside a stretch (the detector finds none of
//! them in the paused WAV), and keep none of them in `dtmf`.

use std::net::SocketAddr;

use pbx_core::audio::dtmf::{DtmfDetector, ToneEvent, HIGH, LOW};
use pbx_core::audio::g711;
use pbx_core::call::{
    CallEngine, CallKey, CallMeta, EndReason, EngineConfig, PauseBy, RecordingSink, RecordingStart,
};
use pbx_core::net::{Segment, Transport};
use pbx_core::Timestamp;
use proptest::prelude::*;

mod common;
use common::*;

// ------------------------------------------------------------ the call

#[derive(Default, Clone)]
struct Rec {
    audio: Vec<i16>,
    meta: Option<CallMeta>,
}

#[derive(Default)]
struct Sink {
    rec: Rec,
    began: bool,
}

impl RecordingSink for Sink {
    fn begin(&mut self, _call: CallKey, start: &RecordingStart) {
        assert!(!self.began);
        assert_eq!(start.sample_rate, 8000);
        self.began = true;
    }
    fn audio(&mut self, _call: CallKey, frames: &[i16]) {
        self.rec.audio.extend_from_slice(frames);
    }
    fn end(&mut self, _call: CallKey, meta: CallMeta) {
        assert_eq!(meta.frames as usize * 2, self.rec.audio.len());
        self.rec.meta = Some(meta);
    }
}

const T0_US: i64 = 1_790_000_000_000_000;
const MEDIA_START_US: i64 = T0_US + 1_020_000;
const PACKET_US: i64 = 20_000;
const CALL_ID: &str = "pause-call@10.0.0.1";
const PAUSE: &str = "*1";
const RESUME: &str = "*2";
const CARD: &str = "4111111111111111";

/// A key pressed: on which leg, from which packet, for how many.
#[derive(Debug, Clone, Copy)]
struct Key {
    leg: usize,
    digit: char,
    at: usize,
    len: usize,
}

/// What happens besides the media.
#[derive(Debug, Clone, Copy)]
enum Act {
    /// The engine's API at the time of packet `k` (before it).
    Api(usize, bool),
    /// An INFO with `X-Recording-Pause` at the time of packet `k`.
    Sip(usize, bool),
    /// A key as SIP INFO (`application/dtmf-relay`, 100 ms) from leg `leg`
    /// at the time of packet `k`.
    Info(usize, usize, char),
}

#[derive(Debug, Clone)]
struct Plan {
    n: usize,
    /// Telephone-events negotiated: keys are RFC 4733; else in-band tones.
    te: bool,
    /// Without `te`: the offer lists telephone-event all the same and the
    /// answer drops it (the keys are in-band tones).
    offer_te: bool,
    keys: Vec<Key>,
    acts: Vec<Act>,
    /// Network delay of packet k (both legs), µs.
    delays: Vec<i64>,
}

enum Op {
    Pkt(i64, SocketAddr, SocketAddr, Vec<u8>),
    Api(i64, bool),
}

impl Op {
    fn at(&self) -> i64 {
        match self {
            Op::Pkt(t, ..) | Op::Api(t, _) => *t,
        }
    }
}

fn freqs(digit: char) -> (f64, f64) {
    const KEYS: [&str; 4] = ["123A", "456B", "789C", "*0#D"];
    for (r, row) in KEYS.iter().enumerate() {
        if let Some(c) = row.find(digit) {
            return (LOW[r], HIGH[c]);
        }
    }
    panic!("{digit}")
}

fn event_code(digit: char) -> u8 {
    match digit {
        '0'..='9' => digit as u8 - b'0',
        '*' => 10,
        '#' => 11,
        _ => 12 + (digit as u8 - b'A'),
    }
}

/// The caller's and the callee's voice: never silence, different per packet.
fn voice(leg: usize, k: usize) -> u8 {
    if leg == 0 {
        1 + (k % 120) as u8
    } else {
        0x81 + (k % 120) as u8
    }
}

fn packets(plan: &Plan) -> Vec<Op> {
    let d = Dialog::new(CALL_ID);
    let pts: &[u8] = if plan.te { &[0, 101] } else { &[0] };
    let offered: &[u8] = if plan.offer_te { &[0, 101] } else { pts };
    let offer = sdp("10.0.0.1", 40000, offered, "sendrecv");
    let answer = sdp("10.0.0.2", 50000, pts, "sendrecv");
    let t = |ms: i64| T0_US + ms * 1000;
    let mut ops = vec![
        Op::Pkt(
            t(0),
            caller_sip(),
            callee_sip(),
            d.request("INVITE", 1, true, Some(&offer)),
        ),
        Op::Pkt(
            t(1000),
            callee_sip(),
            caller_sip(),
            d.response(200, "OK", 1, "INVITE", true, Some(&answer)),
        ),
        Op::Pkt(
            t(1010),
            caller_sip(),
            callee_sip(),
            d.request("ACK", 1, true, None),
        ),
    ];
    let mut cseq = 2;
    for a in &plan.acts {
        match *a {
            Act::Api(k, on) => ops.push(Op::Api(MEDIA_START_US + k as i64 * PACKET_US, on)),
            Act::Info(k, leg, digit) => {
                let m = String::from_utf8(d.request("INFO", cseq, leg == 0, Some("x")))
                    .unwrap()
                    .replace("application/sdp", "application/dtmf-relay")
                    .replace("Content-Length: 1\r\n\r\nx", "");
                let body = format!("Signal={digit}\r\nDuration=100\r\n");
                cseq += 1;
                let (src, dst) = if leg == 0 {
                    (caller_sip(), callee_sip())
                } else {
                    (callee_sip(), caller_sip())
                };
                ops.push(Op::Pkt(
                    MEDIA_START_US + k as i64 * PACKET_US,
                    src,
                    dst,
                    format!("{m}Content-Length: {}\r\n\r\n{body}", body.len()).into_bytes(),
                ));
            }
            Act::Sip(k, on) => {
                let mut m = String::from_utf8(d.request("INFO", cseq, true, None)).unwrap();
                let v = if on { "yes" } else { "no" };
                m = m.replacen(
                    "User-Agent",
                    &format!("X-Recording-Pause: {v}\r\nUser-Agent"),
                    1,
                );
                cseq += 1;
                ops.push(Op::Pkt(
                    MEDIA_START_US + k as i64 * PACKET_US,
                    caller_sip(),
                    callee_sip(),
                    m.into_bytes(),
                ));
            }
        }
    }
    for k in 0..plan.n {
        for leg in 0..2 {
            let ssrc = if leg == 0 { 0x1111_0000 } else { 0x2222_0000 };
            let (src, dst) = if leg == 0 {
                (caller_rtp(), callee_rtp())
            } else {
                (callee_rtp(), caller_rtp())
            };
            let at = MEDIA_START_US
                + k as i64 * PACKET_US
                + if leg == 1 { 10_000 } else { 0 }
                + plan.delays.get(k).copied().unwrap_or(0);
            let seq = (1000 + k) as u16;
            let ts = (5000 + k * 160) as u32;
            let key = plan
                .keys
                .iter()
                .find(|c| c.leg == leg && k >= c.at && k < c.at + c.len);
            let data = match key {
                Some(c) if plan.te => {
                    let last = k + 1 == c.at + c.len;
                    let dur = ((k - c.at + 1) * 160) as u16;
                    rtp(
                        101,
                        k == c.at,
                        seq,
                        (5000 + c.at * 160) as u32,
                        ssrc,
                        &dtmf(event_code(c.digit), last, dur),
                    )
                }
                Some(c) => {
                    let (fl, fh) = freqs(c.digit);
                    let amp = 22_706.0 * 10f64.powf(-10.0 / 20.0);
                    let bytes: Vec<u8> = (0..160)
                        .map(|i| {
                            let t = ((k - c.at) * 160 + i) as f64 / 8000.0;
                            let v = amp
                                * ((2.0 * std::f64::consts::PI * fl * t).sin()
                                    + (2.0 * std::f64::consts::PI * fh * t).sin());
                            g711::linear_to_ulaw(v as i16)
                        })
                        .collect();
                    rtp(0, false, seq, ts, ssrc, &bytes)
                }
                None => rtp(0, k == 0, seq, ts, ssrc, &[voice(leg, k); 160]),
            };
            ops.push(Op::Pkt(at, src, dst, data));
        }
    }
    let bye = MEDIA_START_US + plan.n as i64 * PACKET_US + 300_000;
    ops.push(Op::Pkt(
        bye,
        caller_sip(),
        callee_sip(),
        d.request("BYE", 99, true, None),
    ));
    ops.sort_by_key(Op::at);
    ops
}

fn record(plan: &Plan, pause_dtmf: &str, resume_dtmf: &str, with_acts: bool) -> Rec {
    let mut engine = CallEngine::new(EngineConfig {
        pause_dtmf: pause_dtmf.into(),
        resume_dtmf: resume_dtmf.into(),
        ..EngineConfig::default()
    });
    let mut sink = Sink::default();
    for op in packets(plan) {
        match op {
            Op::Pkt(at, src, dst, data) => {
                if !with_acts && String::from_utf8_lossy(&data).contains("X-Recording-Pause") {
                    continue;
                }
                engine.handle_segment(
                    &Segment {
                        ts: Timestamp::from_micros(at),
                        src,
                        dst,
                        transport: Transport::Udp,
                        payload: &data,
                        tcp_gap: false,
                    },
                    &mut sink,
                );
            }
            Op::Api(at, on) if with_acts => {
                engine.handle_timeout(Timestamp::from_micros(at), &mut sink);
                let r = if on {
                    engine.pause(CALL_ID, PauseBy::Api).map(|_| ())
                } else {
                    engine.resume(CALL_ID, PauseBy::Api).map(|_| ())
                };
                assert!(r.is_ok(), "{r:?}");
            }
            Op::Api(..) => {}
        }
    }
    engine.finish(EndReason::CaptureEnd, &mut sink);
    assert!(sink.rec.meta.is_some(), "recording ended");
    sink.rec
}

/// Keys for `digits` on `leg` from packet `at`: each 5 packets (100 ms) of
/// tone and 5 of pause. Returns the packet after the last.
fn keyed(keys: &mut Vec<Key>, leg: usize, digits: &str, mut at: usize) -> usize {
    for digit in digits.chars() {
        keys.push(Key {
            leg,
            digit,
            at,
            len: 5,
        });
        at += 10;
    }
    at
}

/// The frames of leg `leg`'s packets `from..to` on the WAV.
fn frames_of(leg: usize, from: usize, to: usize) -> std::ops::Range<usize> {
    let off = if leg == 1 { 80 } else { 0 };
    from * 160 + off..to * 160 + off
}

fn in_pause(meta: &CallMeta, f: usize) -> bool {
    meta.pauses
        .iter()
        .any(|p| f >= p.from_ms as usize * 8 && f < p.to_ms as usize * 8)
}

/// The paused recording against the reference: same length, zeros inside
/// the stretches, identical outside; `secret` (frame ranges) all inside.
fn check(reference: &Rec, paused: &Rec, secret: &[std::ops::Range<usize>]) {
    let meta = paused.meta.as_ref().unwrap();
    let rmeta = reference.meta.as_ref().unwrap();
    assert!(rmeta.pauses.is_empty());
    assert_eq!(meta.frames, rmeta.frames, "duration unchanged");
    assert!(!meta.pauses.is_empty(), "paused");
    for w in meta.pauses.windows(2) {
        assert!(w[0].to_ms <= w[1].from_ms, "in order: {:?}", meta.pauses);
    }
    let frames = meta.frames as usize;
    let mut zeros = 0;
    for f in 0..frames {
        let (a, b) = (
            &reference.audio[2 * f..2 * f + 2],
            &paused.audio[2 * f..2 * f + 2],
        );
        if in_pause(meta, f) {
            assert_eq!(b, [0, 0], "frame {f} in a pause {:?}", meta.pauses);
            zeros += 1;
        } else {
            assert_eq!(a, b, "frame {f} outside the pauses {:?}", meta.pauses);
        }
    }
    assert!(zeros > 0);
    for r in secret {
        for f in r.clone() {
            assert!(
                in_pause(meta, f),
                "secret frame {f} not paused: {:?}",
                meta.pauses
            );
        }
    }
    // No card digit stored, in the paused recording.
    for d in &meta.dtmf {
        let at = d.at_ms as usize * 8;
        assert!(!in_pause(meta, at), "digit {} at {} kept", d.digit, d.at_ms);
    }
}

/// Digits the in-band detector finds on a channel of a recording.
fn tones_in(rec: &Rec, ch: usize) -> String {
    let pcm: Vec<i16> = rec.audio.iter().skip(ch).step_by(2).copied().collect();
    let mut d = DtmfDetector::new(8000);
    let mut ev = Vec::new();
    d.process(0, &pcm, &mut ev);
    d.reset(&mut ev);
    ev.iter()
        .filter_map(|e| match e {
            ToneEvent::Digit { digit, .. } => Some(*digit),
            _ => None,
        })
        .collect()
}

fn card_plan(
    te: bool,
    leg: usize,
    resume_leg: usize,
) -> (Plan, Vec<std::ops::Range<usize>>, usize) {
    let mut keys = Vec::new();
    let pause_at = 100;
    let card_at = keyed(&mut keys, leg, PAUSE, pause_at);
    let resume_at = keyed(&mut keys, leg, CARD, card_at + 10);
    let end = keyed(&mut keys, resume_leg, RESUME, resume_at + 10);
    let secret = vec![frames_of(leg, card_at + 10, resume_at)];
    (
        Plan {
            n: end + 150,
            te,
            offer_te: false,
            keys,
            acts: Vec::new(),
            delays: Vec::new(),
        },
        secret,
        pause_at,
    )
}

#[test]
fn rfc4733_card_number_between_sequences_leaves_no_trace() {
    let (plan, secret, pause_at) = card_plan(true, 0, 0);
    let reference = record(&plan, "", "", true);
    let paused = record(&plan, PAUSE, RESUME, true);
    check(&reference, &paused, &secret);
    let meta = paused.meta.as_ref().unwrap();
    assert_eq!(meta.pauses.len(), 1);
    assert_eq!(meta.pauses[0].by, PauseBy::Dtmf);
    // From the first digit of the pause sequence (where its RTP timestamp,
    // the key's start, places it: the audio packet of that timestamp's)
    // to the end of the resume sequence's last digit.
    assert_eq!(
        meta.pauses[0].from_ms as usize,
        pause_at * 20,
        "{:?}",
        meta.pauses
    );
    let rdigits: String = reference
        .meta
        .as_ref()
        .unwrap()
        .dtmf
        .iter()
        .map(|d| d.digit.as_str())
        .collect();
    assert_eq!(rdigits, format!("{PAUSE}{CARD}{RESUME}"));
    assert!(meta.dtmf.is_empty(), "no digit kept: {:?}", meta.dtmf);
    // The stretch ends with the last resume digit: its start (as for the
    // first digit, where its timestamp places it) plus its 100 ms.
    let last = plan.keys.last().unwrap();
    assert_eq!(meta.pauses[0].to_ms as usize, (last.at + last.len) * 20);
}

#[test]
fn inband_card_number_between_sequences_leaves_no_trace() {
    // Keyed on the other leg, the resume sequence does not resume (the
    // party keying a card number must not be able to end the pause): the
    // call stays muted to its end.
    let (plan, secret, _) = card_plan(false, 1, 0);
    let paused = record(&plan, PAUSE, RESUME, true);
    let meta = paused.meta.as_ref().unwrap();
    assert_eq!(meta.pauses.len(), 1, "{:?}", meta.pauses);
    assert_eq!(
        meta.pauses[0].to_ms,
        meta.duration_ms(),
        "{:?}",
        meta.pauses
    );
    let _ = secret;
    for (leg, resume_leg, offer_te) in [(0, 0, false), (1, 1, false), (0, 0, true)] {
        // (offer_te: an offer listing telephone-event that the answer
        // dropped switched tone detection off: the card was recorded.)
        let (mut plan, secret, _) = card_plan(false, leg, resume_leg);
        plan.offer_te = offer_te;
        let reference = record(&plan, "", "", true);
        let paused = record(&plan, PAUSE, RESUME, true);
        // The reference holds every tone, the paused recording none of the
        // card's (the pause sequence's own tones may be heard).
        assert_eq!(
            tones_in(&reference, leg).replace(RESUME, ""),
            format!("{PAUSE}{CARD}").replace(RESUME, "")
        );
        check(&reference, &paused, &secret);
        let found = tones_in(&paused, leg) + &tones_in(&paused, 1 - leg);
        assert!(
            !found.contains(|c: char| c.is_ascii_digit() && c != '1') && !found.contains("11"),
            "{found}"
        );
        let meta = paused.meta.as_ref().unwrap();
        assert_eq!(meta.pauses.len(), 1, "{:?}", meta.pauses);
        assert!(meta.dtmf.is_empty());
        // In band the pause is decided as the audio is written: it starts
        // within the 1 of *1 (which begins at packet 110, 2200 ms; the leg
        // 1 audio is 10 ms later), the stretch ends after the 2 of *2.
        let p = meta.pauses[0];
        let off = if leg == 1 { 10 } else { 0 };
        eprintln!("in band, leg {leg}: {p:?}");
        assert!((2200 + off..2300 + off).contains(&p.from_ms), "{p:?}");
        let last = plan.keys.last().unwrap();
        let end = ((last.at + last.len) * 20) as i64 + if resume_leg == 1 { 10 } else { 0 };
        assert!(
            (end..end + 60).contains(&p.to_ms),
            "{p:?} vs the 2 ending at {end}"
        );
    }
}

#[test]
fn a_slow_pause_sequence_starts_at_the_first_frame_not_yet_written() {
    // '*' and then '1' 2 s later: the '*' was written long ago; the pause
    // starts at the first frame not written when the '1' came, one jitter
    // window (500 ms) before it, and the JSON says so.
    let mut keys = vec![Key {
        leg: 0,
        digit: '*',
        at: 100,
        len: 5,
    }];
    let card_at = keyed(&mut keys, 0, "1", 200);
    let resume_at = keyed(&mut keys, 0, "4111", card_at);
    keyed(&mut keys, 0, RESUME, resume_at);
    let plan = Plan {
        n: 400,
        te: true,
        offer_te: false,
        keys,
        acts: Vec::new(),
        delays: Vec::new(),
    };
    let reference = record(&plan, "", "", true);
    let paused = record(&plan, PAUSE, RESUME, true);
    check(&reference, &paused, &[frames_of(0, card_at, resume_at)]);
    let from = paused.meta.as_ref().unwrap().pauses[0].from_ms;
    // The '1' arrived at 4.0 s (its first packet): written up to about 3.5 s
    // then (the mixer writes in pieces of 40 ms or more).
    assert!((3440..=3560).contains(&from), "from {from} ms");
}

#[test]
fn api_pause_and_resume_are_sample_exact_at_the_time_asked() {
    let plan = Plan {
        n: 400,
        te: true,
        offer_te: false,
        keys: Vec::new(),
        acts: vec![
            Act::Api(100, true),
            Act::Api(180, false),
            Act::Api(250, true),
            Act::Api(300, false),
        ],
        delays: Vec::new(),
    };
    let reference = record(&plan, "", "", false);
    let paused = record(&plan, "", "", true);
    check(
        &reference,
        &paused,
        &[frames_of(0, 100, 180), frames_of(0, 250, 300)],
    );
    let meta = paused.meta.as_ref().unwrap();
    let got: Vec<(i64, i64, PauseBy)> = meta
        .pauses
        .iter()
        .map(|p| (p.from_ms, p.to_ms, p.by))
        .collect();
    assert_eq!(
        got,
        vec![(2000, 3600, PauseBy::Api), (5000, 6000, PauseBy::Api)]
    );
}

#[test]
fn sip_header_pauses_and_resumes() {
    let plan = Plan {
        n: 300,
        te: true,
        offer_te: false,
        keys: Vec::new(),
        acts: vec![Act::Sip(50, true), Act::Sip(120, false)],
        delays: Vec::new(),
    };
    let reference = record(&plan, "", "", false);
    let paused = record(&plan, "", "", true);
    check(&reference, &paused, &[frames_of(0, 50, 120)]);
    let meta = paused.meta.as_ref().unwrap();
    let got: Vec<(i64, i64, PauseBy)> = meta
        .pauses
        .iter()
        .map(|p| (p.from_ms, p.to_ms, p.by))
        .collect();
    assert_eq!(got, vec![(1000, 2400, PauseBy::Sip)]);
}

#[test]
fn api_errors_and_calls_in_progress() {
    let plan = Plan {
        n: 100,
        te: true,
        offer_te: false,
        keys: Vec::new(),
        acts: Vec::new(),
        delays: Vec::new(),
    };
    let mut engine = CallEngine::new(EngineConfig::default());
    let mut sink = Sink::default();
    let ops = packets(&plan);
    let mut rid = None;
    for (i, op) in ops.into_iter().enumerate() {
        if let Op::Pkt(at, src, dst, data) = op {
            engine.handle_segment(
                &Segment {
                    ts: Timestamp::from_micros(at),
                    src,
                    dst,
                    transport: Transport::Udp,
                    payload: &data,
                    tcp_gap: false,
                },
                &mut sink,
            );
        }
        if i == 50 {
            let calls = engine.calls_in_progress();
            assert_eq!(calls.len(), 1);
            assert_eq!(calls[0].call_id, CALL_ID);
            assert!(!calls[0].paused);
            rid = calls[0].recording_id.clone();
            let rid = rid.clone().unwrap();
            assert!(engine.pause("nope", PauseBy::Api).is_err());
            assert!(engine.resume(CALL_ID, PauseBy::Api).is_err(), "not paused");
            assert!(engine.pause(&rid, PauseBy::Api).is_ok(), "by recording id");
            assert!(
                engine.pause(CALL_ID, PauseBy::Api).is_err(),
                "already paused"
            );
            assert!(engine.calls_in_progress()[0].paused);
            assert!(engine.resume(CALL_ID, PauseBy::Api).is_ok());
            assert!(!engine.calls_in_progress()[0].paused);
        }
    }
    engine.finish(EndReason::CaptureEnd, &mut sink);
    assert!(engine.calls_in_progress().is_empty());
    assert_eq!(sink.rec.meta.as_ref().unwrap().recording_id, rid.unwrap());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    /// Wherever the sequences and the card number fall, on whichever leg,
    /// RFC 4733 or in-band, with network jitter: the paused recording is the
    /// reference outside the stretches, zeros inside, the card inside.
    #[test]
    fn random_sequence_positions(
        te in any::<bool>(),
        leg in 0usize..2,
        resume_leg in 0usize..2,
        pause_at in 5usize..300,
        card_gap in 0usize..40,
        resume_gap in 0usize..40,
        card_len in 1usize..8,
        jitter in prop::collection::vec(0i64..30_000, 0..1),
    ) {
        let mut keys = Vec::new();
        let card: String = CARD.chars().take(card_len).collect();
        let card_at = keyed(&mut keys, leg, PAUSE, pause_at) + card_gap;
        let resume_at = keyed(&mut keys, leg, &card, card_at) + resume_gap;
        let end = keyed(&mut keys, resume_leg, RESUME, resume_at);
        let n = end + 100;
        let delays: Vec<i64> = if jitter.is_empty() {
            Vec::new()
        } else {
            (0..n).map(|k| ((k as i64 * 7919) % 13) * 2000).collect()
        };
        let plan = Plan { n, te, offer_te: false, keys, acts: Vec::new(), delays };
        let reference = record(&plan, "", "", true);
        let paused = record(&plan, PAUSE, RESUME, true);
        check(&reference, &paused, &[frames_of(leg, card_at, resume_at - resume_gap)]);
        prop_assert_eq!(paused.meta.as_ref().unwrap().pauses.len(), 1);
    }
}

/// A pause asked for by an id the PBX gave the call (here Asterisk's
/// linkedid, as a desktop application knows it) pauses every call in
/// progress carrying it: a PBX bridging two legs has a recording of each,
/// and the card number must be muted in both (before: 404, the engine knew
/// only each recording session's own Call-ID and recording id).
#[test]
fn a_pause_by_the_pbx_id_pauses_every_leg_carrying_it() {
    let mut engine = CallEngine::new(EngineConfig::default());
    let mut sink = Sink::default();
    for (n, call_id) in ["leg-a@pbx", "leg-b@pbx"].iter().enumerate() {
        let d = Dialog::new(call_id);
        let offer = sdp("10.0.0.1", 40000 + 10 * n as u16, &[0], "sendrecv");
        let answer = sdp("10.0.0.2", 50000 + 10 * n as u16, &[0], "sendrecv");
        let invite = String::from_utf8(d.request("INVITE", 1, true, Some(&offer)))
            .unwrap()
            .replacen(
                "User-Agent",
                "X-Asterisk-Linkedid: 1790000000.42\r\nUser-Agent",
                1,
            );
        let t = T0_US + n as i64 * 1000;
        for (at, src, dst, data) in [
            (t, caller_sip(), callee_sip(), invite.into_bytes()),
            (
                t + 100,
                callee_sip(),
                caller_sip(),
                d.response(200, "OK", 1, "INVITE", true, Some(&answer)),
            ),
        ] {
            engine.handle_segment(
                &Segment {
                    ts: Timestamp::from_micros(at),
                    src,
                    dst,
                    transport: Transport::Udp,
                    payload: &data,
                    tcp_gap: false,
                },
                &mut sink,
            );
        }
    }
    assert!(engine.pause("no-such-id", PauseBy::Api).is_err());
    assert!(engine.pause("1790000000.42", PauseBy::Api).is_ok());
    let calls = engine.calls_in_progress();
    assert_eq!(calls.len(), 2);
    assert!(calls.iter().all(|c| c.paused), "{calls:?}");
    assert!(
        engine.pause("1790000000.42", PauseBy::Api).is_err(),
        "already paused"
    );
    assert!(engine.resume("1790000000.42", PauseBy::Api).is_ok());
    assert!(engine.calls_in_progress().iter().all(|c| !c.paused));
}

/// Keys sent as SIP INFO (`application/dtmf-relay`, as many phones and
/// PBXs send DTMF) are digits of their sender's leg: listed in `dtmf` and
/// matched against the pause and resume sequences (they were ignored: a
/// pause keyed so never paused). The card number (plain audio here, no key
/// of it) between is silence.
#[test]
fn keys_sent_as_sip_info_pause_and_resume() {
    let acts: Vec<Act> = [
        (100, '5'),
        (101, '5'), // the same key again, as from the other side of a proxy
        (150, '*'),
        (160, '1'),
        (300, '*'),
        (310, '2'),
        (400, '7'),
    ]
    .into_iter()
    .map(|(k, d)| Act::Info(k, 0, d))
    .collect();
    let plan = Plan {
        n: 500,
        te: false,
        offer_te: false,
        keys: Vec::new(),
        acts,
        delays: Vec::new(),
    };
    let rec = record(&plan, PAUSE, RESUME, true);
    let meta = rec.meta.as_ref().unwrap();
    assert_eq!(meta.pauses.len(), 1, "{:?}", meta.pauses);
    let p = meta.pauses[0];
    assert_eq!(p.by, PauseBy::Dtmf);
    // From the '*' of *1 (packet 150: 3000 ms) to the end of the 2 of *2
    // (packet 310, 6200 ms, plus its 100 ms).
    assert_eq!((p.from_ms, p.to_ms), (3000, 6300), "{p:?}");
    let digits: Vec<&str> = meta.dtmf.iter().map(|d| d.digit.as_str()).collect();
    assert_eq!(digits, ["5", "7"], "{:?}", meta.dtmf);
    assert_eq!(
        (
            meta.dtmf[0].channel,
            meta.dtmf[0].at_ms,
            meta.dtmf[0].duration_ms
        ),
        (0, 2000, 100)
    );
    // Both channels are zeros in the stretch, voice around it.
    let frames = &rec.audio;
    for f in [3000 * 8 + 8, 6300 * 8 - 8] {
        assert_eq!((frames[2 * f], frames[2 * f + 1]), (0, 0), "frame {f}");
    }
    assert_ne!(frames[2 * (2900 * 8)], 0);
    assert_ne!(frames[2 * (6400 * 8)], 0);
}
