//! A sniffed call's SIP retransmissions: the same request or response
//! again (same CSeq, method, status and Via branch) is counted and
//! ignored; every other message of the dialog is taken.

use pbx_core::call::{CallEngine, CallKey, CallMeta, EngineConfig, RecordingSink, RecordingStart};
use pbx_core::net::{Segment, Transport};
use pbx_core::Timestamp;

mod common;
use common::*;

struct Sink;

impl RecordingSink for Sink {
    fn begin(&mut self, _call: CallKey, _start: &RecordingStart) {}
    fn audio(&mut self, _call: CallKey, _frames: &[i16]) {}
    fn end(&mut self, _call: CallKey, _meta: CallMeta) {}
}

#[test]
fn retransmissions_are_counted_once_each_and_other_messages_taken() {
    let d = Dialog::new("retx-1@10.0.0.1");
    let offer = sdp("10.0.0.1", 40000, &[0], "sendrecv");
    let answer = sdp("10.0.0.2", 50000, &[0], "sendrecv");
    let (a, b) = (caller_sip(), callee_sip());
    let msgs = [
        (a, b, d.request("INVITE", 1, true, Some(&offer))),
        (a, b, d.request("INVITE", 1, true, Some(&offer))), // retransmission
        (b, a, d.response(180, "Ringing", 1, "INVITE", true, None)),
        (
            b,
            a,
            d.response(200, "OK", 1, "INVITE", true, Some(&answer)),
        ),
        (
            b,
            a,
            d.response(200, "OK", 1, "INVITE", true, Some(&answer)),
        ), // retransmission
        (a, b, d.request("ACK", 1, true, None)),
        (a, b, d.request("INVITE", 1, true, Some(&offer))), // again, later
        (a, b, d.request("BYE", 2, true, None)),
        (b, a, d.response(200, "OK", 2, "BYE", true, None)),
    ];
    let mut engine = CallEngine::new(EngineConfig::default());
    let mut sink = Sink;
    for (i, (src, dst, m)) in msgs.iter().enumerate() {
        engine.handle_segment(
            &Segment {
                ts: Timestamp::from_micros(1_000_000 + i as i64 * 10_000),
                src: *src,
                dst: *dst,
                transport: Transport::Udp,
                payload: m,
                tcp_gap: false,
            },
            &mut sink,
        );
    }
    assert_eq!(engine.stats().sip_retransmissions, 3);
    assert_eq!(engine.stats().sip_messages, msgs.len() as u64);
    // The BYE (a new CSeq) was taken: the call ends (long before any
    // media timeout).
    assert_eq!(engine.active_calls(), 1);
    engine.handle_timeout(Timestamp::from_micros(5_000_000), &mut sink);
    assert_eq!(engine.active_calls(), 0, "{:?}", engine.stats());
}
