//! A live host whose media reach the engine on another path than the SIP
//! messages and its timers (a SIPREC server: a receive thread hands over
//! rounds of datagrams with their kernel arrival times), and that falls
//! behind for a while (the machine too busy): the signalling and the wall
//! clock run ahead of media still queued. With the host's horizon
//! ([`CallEngine::set_horizon`]: every datagram that arrived before it has
//! been handed over) the recording is the one made when nothing was
//! behind, sample for sample; without it, the queued audio was already
//! written as silence when it came, and was lost ("late").

use std::net::SocketAddr;

use pbx_core::call::{CallEngine, CallKey, CallMeta, EngineConfig, RecordingSink, RecordingStart};
use pbx_core::net::{Segment, Transport};
use pbx_core::Timestamp;

mod common;
use common::*;

#[derive(Default)]
struct Sink {
    audio: Vec<i16>,
    meta: Option<CallMeta>,
}

impl RecordingSink for Sink {
    fn begin(&mut self, _call: CallKey, _start: &RecordingStart) {}
    fn audio(&mut self, _call: CallKey, frames: &[i16]) {
        self.audio.extend_from_slice(frames);
    }
    fn end(&mut self, _call: CallKey, meta: CallMeta) {
        self.meta = Some(meta);
    }
}

const T0_US: i64 = 1_790_000_000_000_000;
const MEDIA_US: i64 = T0_US + 1_020_000;
const PACKETS: usize = 250;
const CALL_ID: &str = "horizon@10.0.0.1";

/// (arrival µs, from, to, bytes)
type Pkt = (i64, SocketAddr, SocketAddr, Vec<u8>);

fn signalling() -> (Vec<Pkt>, Pkt) {
    let d = Dialog::new(CALL_ID);
    let offer = sdp("10.0.0.1", 40000, &[0], "sendrecv");
    let answer = sdp("10.0.0.2", 50000, &[0], "sendrecv");
    let setup = vec![
        (
            T0_US,
            caller_sip(),
            callee_sip(),
            d.request("INVITE", 1, true, Some(&offer)),
        ),
        (
            T0_US + 1_000_000,
            callee_sip(),
            caller_sip(),
            d.response(200, "OK", 1, "INVITE", true, Some(&answer)),
        ),
        (
            T0_US + 1_010_000,
            caller_sip(),
            callee_sip(),
            d.request("ACK", 1, true, None),
        ),
    ];
    let bye = (
        MEDIA_US + PACKETS as i64 * 20_000 + 300_000,
        caller_sip(),
        callee_sip(),
        d.request("BYE", 2, true, None),
    );
    (setup, bye)
}

/// Both legs' packets in arrival order: a different voice per packet.
fn media() -> Vec<Pkt> {
    let mut v = Vec::new();
    for k in 0..PACKETS {
        for leg in 0..2 {
            let (src, dst, ssrc, base) = if leg == 0 {
                (caller_rtp(), callee_rtp(), 0x1111_0000, 1u8)
            } else {
                (callee_rtp(), caller_rtp(), 0x2222_0000, 0x81u8)
            };
            let at = MEDIA_US + k as i64 * 20_000 + leg as i64 * 7_000;
            let payload = [base + (k % 120) as u8; 160];
            let seq = (300 + k) as u16;
            let ts = (9_000 + k * 160) as u32;
            v.push((at, src, dst, rtp(0, k == 0, seq, ts, ssrc, &payload)));
        }
    }
    v
}

fn feed(engine: &mut CallEngine, sink: &mut Sink, p: &Pkt) {
    engine.handle_segment(
        &Segment {
            ts: Timestamp::from_micros(p.0),
            src: p.1,
            dst: p.2,
            transport: Transport::Udp,
            payload: &p.3,
            tcp_gap: false,
        },
        sink,
    );
}

/// The call as a host that never falls behind feeds it.
fn in_time() -> Sink {
    let mut engine = CallEngine::new(EngineConfig::default());
    let mut sink = Sink::default();
    let (setup, bye) = signalling();
    let mut all: Vec<Pkt> = setup.into_iter().chain(media()).collect();
    all.push(bye);
    all.sort_by_key(|p| p.0);
    for p in &all {
        feed(&mut engine, &mut sink, p);
    }
    engine.handle_timeout(
        Timestamp::from_micros(all[all.len() - 1].0 + 2_000_000),
        &mut sink,
    );
    sink
}

/// The same call through a host whose media path stalls for `stall_us`
/// from 1 s into the media: meanwhile its timer fires every 200 ms with the
/// wall clock and an in-dialog request arrives. Then the round that reads
/// the queues hands over one socket's backlog (the caller's) before the
/// other's, the host's timer firing between the two batches, as a receive
/// thread cuts a large round into batches; then 40 ms rounds again. With
/// `horizon`, the host sets the engine's horizon to the start of the last
/// round handed over completely.
fn behind(stall_us: i64, horizon: bool) -> Sink {
    let mut engine = CallEngine::new(EngineConfig::default());
    let mut sink = Sink::default();
    let (setup, bye) = signalling();
    for p in &setup {
        feed(&mut engine, &mut sink, p);
    }
    let media = media();
    let stall_at = MEDIA_US + 1_000_000;
    let resume = stall_at + stall_us;
    let d = Dialog::new(CALL_ID);
    let options = d.request("OPTIONS", 5, true, None);
    let mut done = vec![false; media.len()];
    let mut complete = MEDIA_US;
    let mut wall = MEDIA_US;
    while done.iter().any(|d| !d) {
        wall += 40_000;
        let stalled = wall > stall_at && wall < resume;
        if !stalled {
            // One socket after the other: the caller's, then the callee's.
            for from in [caller_rtp(), callee_rtp()] {
                for (i, p) in media.iter().enumerate() {
                    if !done[i] && p.1 == from && p.0 < wall {
                        if horizon {
                            engine.set_horizon(Some(Timestamp::from_micros(complete)));
                        }
                        feed(&mut engine, &mut sink, p);
                        done[i] = true;
                    }
                }
                // The host's timer between the round's batches.
                if horizon {
                    engine.set_horizon(Some(Timestamp::from_micros(complete)));
                }
                engine.handle_timeout(Timestamp::from_micros(wall), &mut sink);
            }
            complete = wall;
        }
        if wall == stall_at + 400_000 {
            // Signalling is not held up with the media.
            feed(
                &mut engine,
                &mut sink,
                &(wall, caller_sip(), callee_sip(), options.clone()),
            );
        }
        if horizon {
            engine.set_horizon(Some(Timestamp::from_micros(complete)));
        }
        if wall % 200_000 == 0 {
            engine.handle_timeout(Timestamp::from_micros(wall), &mut sink);
        }
    }
    if horizon {
        engine.set_horizon(None);
    }
    feed(&mut engine, &mut sink, &bye);
    engine.handle_timeout(Timestamp::from_micros(bye.0 + 2_000_000), &mut sink);
    sink
}

fn late(s: &Sink) -> u64 {
    s.meta
        .as_ref()
        .unwrap()
        .channels
        .iter()
        .map(|c| c.late)
        .sum()
}

#[test]
fn media_behind_signalling_are_not_late_with_the_horizon() {
    let want = in_time();
    assert_eq!(late(&want), 0);
    assert!(want.audio.len() >= PACKETS * 160 * 2);
    for stall_us in [600_000, 1_500_000, 3_000_000] {
        let got = behind(stall_us, true);
        assert_eq!(late(&got), 0, "stall {stall_us} µs");
        assert!(
            got.audio == want.audio,
            "stall {stall_us} µs: the recording differs from the one made in time"
        );
        // Without the horizon the wall clock and the signalling ran ahead of
        // the queued media: what was queued well beyond the 500 ms window
        // was written as silence before it came.
        if stall_us < 1_000_000 {
            continue;
        }
        let lost = behind(stall_us, false);
        assert!(late(&lost) > 0, "stall {stall_us} µs without the horizon");
        assert!(lost.audio != want.audio);
    }
}
