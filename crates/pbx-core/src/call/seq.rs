//! Decode order: a leg's RTP packets in, the same packets out in sequence
//! order for the decoder.
//!
//! In: each packet ([`InPacket`]) with its codec and payload, and whether
//! the leg's [`crate::rtp::SeqTracker`] found it the newest so far. Out:
//! [`Held`] packets released by [`DecodeOrder::pop_ready`] in sequence
//! order, a packet waiting at most [`order_wait`] for the ones before it.
//! Promises: bounded memory (at most `ORDER_HELD_MAX` held packets, their
//! buffers recycled).

use crate::audio::codec::Codec;
use crate::rtp::SeqTracker;

/// One RTP packet on its way to the decoder.
#[derive(Debug, Clone, Copy)]
pub(super) struct InPacket {
    pub(super) arrival: i64,
    pub(super) ssrc: u32,
    pub(super) seq: u16,
    pub(super) ts: u32,
    pub(super) pt: u8,
    pub(super) newest: bool,
    pub(super) marker: bool,
    /// A talk spurt's first packet (the marker bit) next in the decoding
    /// order: the first of the spurt the timeline sees, though its
    /// successor may have arrived first (it waits behind it), so taken as
    /// the newest; [`crate::call::timeline::Packet::restart`].
    pub(super) restart: bool,
}

impl InPacket {
    /// Next in the decoding order: a talk spurt's start if marked.
    fn mark_spurt_start(&mut self) {
        if self.marker {
            self.restart = true;
            self.newest = true;
        }
    }
}

/// A packet held until the ones before it arrive.
pub(super) struct Held {
    pub(super) pkt: InPacket,
    pub(super) codec: Codec,
    pub(super) payload: Vec<u8>,
    /// Due now: no more waiting for the packets before it.
    pub(super) released: bool,
}

/// Puts a leg's packets in sequence order for the decoder. A packet that
/// follows the last one released goes straight through (no copy); one after
/// a gap waits until the gap fills or until it has waited `wait` samples of
/// arrival time (then the missing ones are lost); one older than the last
/// released is decoded at once (it is late; its place on the timeline is
/// still found by its timestamp). A stream's first packet to arrive waits
/// as long for the ones before it (reordered at the start: decoded after
/// their successor, a stateful decoder's state would be wrong for
/// hundreds of milliseconds).
#[derive(Default)]
pub(super) struct DecodeOrder {
    /// SSRC and next expected sequence number.
    pub(super) next: Option<(u32, u16)>,
    /// Arrival of the current stream's first packet while nothing of it is
    /// decoded yet: packets numbered before it may still come.
    starting: Option<i64>,
    pub(super) held: Vec<Held>,
    pub(super) spare: Vec<Vec<u8>>,
}

pub(super) const ORDER_HELD_MAX: usize = 64;

/// Payload buffers kept for held packets while some are held.
const SPARE_HELD_MAX: usize = 8;

impl DecodeOrder {
    /// Whether `pkt` is to be decoded now; otherwise it is held.
    pub(super) fn offer(&mut self, pkt: &mut InPacket, codec: &Codec, payload: &[u8]) -> bool {
        let Some((ssrc, next)) = self.next else {
            return self.start(pkt, codec, payload);
        };
        if ssrc != pkt.ssrc {
            // A new stream: what the old one left waiting goes first.
            self.release_all();
            return self.start(pkt, codec, payload);
        }
        let ahead = pkt.seq.wrapping_sub(next) as i16;
        if self.starting.is_some() && (-50..0).contains(&ahead) {
            // Before the stream's first packet to arrive: the stream starts
            // here (unless an earlier one comes in time).
            self.next = Some((ssrc, pkt.seq));
            self.hold(pkt, codec, payload);
            return false;
        }
        if ahead == 0 && self.starting.is_none() {
            self.next = Some((ssrc, next.wrapping_add(1)));
            pkt.mark_spurt_start();
            return true;
        }
        if !(0..=50).contains(&ahead) || self.held.len() >= ORDER_HELD_MAX {
            // Late (its successor went already), or a jump no wait explains.
            if ahead > 0 {
                self.release_all();
                self.next = Some((ssrc, pkt.seq.wrapping_add(1)));
            }
            return true;
        }
        self.hold(pkt, codec, payload);
        false
    }

    /// A stream's first packet to arrive: held for its predecessors (see
    /// [`DecodeOrder::pop_ready`]) unless nothing may be held.
    fn start(&mut self, pkt: &InPacket, codec: &Codec, payload: &[u8]) -> bool {
        if self.held.len() >= ORDER_HELD_MAX {
            self.next = Some((pkt.ssrc, pkt.seq.wrapping_add(1)));
            return true;
        }
        self.next = Some((pkt.ssrc, pkt.seq));
        self.starting = Some(pkt.arrival);
        self.hold(pkt, codec, payload);
        false
    }

    fn hold(&mut self, pkt: &InPacket, codec: &Codec, payload: &[u8]) {
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(payload);
        self.held.push(Held {
            pkt: *pkt,
            codec: codec.clone(),
            payload: buf,
            released: false,
        });
    }

    /// The stream numbers its packets afresh from `seq` (same SSRC): what
    /// waits goes first, then the new numbering in its own order.
    pub(super) fn restart(&mut self, ssrc: u32, seq: u16) {
        self.release_all();
        self.next = Some((ssrc, seq));
    }

    /// Mark every held packet ready (they come out of `pop_ready` in order).
    pub(super) fn release_all(&mut self) {
        self.starting = None;
        for h in &mut self.held {
            h.released = true;
        }
    }

    /// The next packet to decode: the expected one if held, else the
    /// oldest held once it has waited `wait` (or was released).
    pub(super) fn pop_ready(&mut self, now: i64, wait: i64) -> Option<Held> {
        let (ssrc, next) = self.next?;
        if self.held.is_empty() {
            return None;
        }
        // What an earlier stream left (released when this one began) goes
        // first, in its own order.
        if let Some(old) = self.held.iter().find(|h| h.pkt.ssrc != ssrc) {
            let (old_ssrc, base) = (old.pkt.ssrc, old.pkt.seq);
            let i = (0..self.held.len())
                .filter(|&i| self.held[i].pkt.ssrc == old_ssrc)
                .min_by_key(|&i| self.held[i].pkt.seq.wrapping_sub(base) as i16)?;
            return Some(self.held.swap_remove(i));
        }
        let mut first = false;
        if let Some(arrived) = self.starting {
            if now.saturating_sub(arrived) < wait {
                return None;
            }
            self.starting = None;
            first = true;
        }
        let by_seq = |h: &Held| h.pkt.seq.wrapping_sub(next) as i16;
        let i = match self
            .held
            .iter()
            .position(|h| h.pkt.ssrc == ssrc && by_seq(h) == 0)
        {
            Some(i) => i,
            None => {
                let (i, h) = self
                    .held
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, h)| (h.pkt.ssrc != ssrc, by_seq(h)))?;
                let waited = h.released || now.saturating_sub(h.pkt.arrival) >= wait;
                if !waited && !self.held.iter().any(|h| h.released) {
                    return None;
                }
                i
            }
        };
        let mut h = self.held.swap_remove(i);
        // The stream's first in sequence is the newest the timeline has seen
        // of it, though its successor arrived first (not newest, it would be
        // taken for a straggler of a stream long written).
        h.pkt.newest |= first;
        if h.pkt.ssrc == ssrc {
            if h.pkt.seq == next {
                h.pkt.mark_spurt_start();
            }
            self.next = Some((ssrc, h.pkt.seq.wrapping_add(1)));
        }
        Some(h)
    }

    /// Takes back a released packet's buffer for the next one held. Once
    /// nothing is held (the stream in order again) the buffers and the held
    /// list's room are given back: every stream's start holds its first
    /// packets for [`order_wait`], and what that took, kept, was 2 KiB a leg
    /// never used again in an orderly call (the engine's heap per PCMU call
    /// 23.0 KiB against 19.2, `call_memory`).
    pub(super) fn recycle(&mut self, h: Held) {
        if self.held.is_empty() {
            self.spare = Vec::new();
            self.held = Vec::new();
            return;
        }
        if self.spare.len() < SPARE_HELD_MAX {
            self.spare.push(h.payload);
        }
    }
}

/// How long a packet after a gap waits for the missing ones: half the
/// jitter window, at most 120 ms (output samples).
pub(super) fn order_wait(rate: u32, jitter_ms: u32) -> i64 {
    i64::from(rate) * i64::from(jitter_ms.min(240)) / 2000
}

/// Recent packets of a leg whose timestamp did not follow from their
/// sequence number (a pause, or a stray: a corrupted or injected packet).
/// A later packet with one of their numbers but another timestamp is not a
/// duplicate: a stray must not take the real packet's place. Bounded: the
/// last [`JUMPS_KEPT`] such packets.
#[derive(Default)]
pub(super) struct JumpLog {
    last: Option<(u32, u16, u32)>,
    jumps: [(u32, u16, u32); JUMPS_KEPT],
    n: usize,
    /// A packet far behind the newest whose timestamp did not follow: the
    /// sequence number and timestamp its successor would have if it began
    /// a new numbering ([`JumpLog::restarts`]).
    probe: Option<(u32, u16, u32)>,
}

const JUMPS_KEPT: usize = 4;
/// A packet this many sequence numbers behind the newest (a minute at 20
/// ms) is not a late one of the same numbering (RFC 3550 A.1's
/// MAX_DROPOUT).
const MAX_DROPOUT: i64 = 3000;
/// Most timestamp ticks a packet may advance per sequence number and still
/// follow from it: 60 ms at 48 kHz (360 ms at 8 kHz).
const MAX_TICKS_PER_SEQ: i64 = 2880;

impl JumpLog {
    /// A packet that was the newest of its stream.
    pub(super) fn newest(&mut self, ssrc: u32, seq: u16, ts: u32) {
        if let Some((s, q, t)) = self.last {
            let dq = i64::from(seq.wrapping_sub(q) as i16);
            let dt = i64::from(ts.wrapping_sub(t) as i32);
            if s == ssrc && !(0..=dq * MAX_TICKS_PER_SEQ).contains(&dt) {
                self.jumps[self.n % JUMPS_KEPT] = (ssrc, seq, ts);
                self.n += 1;
            }
        }
        self.last = Some((ssrc, seq, ts));
    }

    /// Whether a packet that is not the newest by its sequence number
    /// begins, with the one before it, a new numbering under the same SSRC
    /// (a source switched behind a constant SSRC, a restarted sender): both
    /// behind the newest by number, their timestamps not following from the
    /// newest's, and this one the next of the other by number and timestamp
    /// (RFC 3550 A.1 asks for the two in sequence). A reordered, late or
    /// duplicated packet's timestamp follows (it is behind by about as much
    /// as its number); one stray packet is not followed by its successor.
    pub(super) fn restarts(&mut self, ssrc: u32, seq: u16, ts: u32) -> bool {
        if self.follows(ssrc, seq, ts) {
            self.probe = None;
            return false;
        }
        let second = self.probe.is_some_and(|(ps, pq, pt)| {
            ps == ssrc
                && pq == seq
                && (0..=MAX_TICKS_PER_SEQ).contains(&i64::from(ts.wrapping_sub(pt) as i32))
        });
        self.probe = (!second).then_some((ssrc, seq.wrapping_add(1), ts));
        second
    }

    /// Whether a packet behind the newest by its sequence number is behind
    /// it in time by about as much (at most [`MAX_TICKS_PER_SEQ`] a
    /// number), and by at most [`MAX_DROPOUT`] numbers: a reordered, late
    /// or duplicated packet of the same numbering. (Packets of another
    /// SSRC, or ahead, say nothing here.)
    pub(super) fn follows(&self, ssrc: u32, seq: u16, ts: u32) -> bool {
        let Some((s, q, t)) = self.last else {
            return true;
        };
        let dq = i64::from(seq.wrapping_sub(q) as i16);
        let dt = i64::from(ts.wrapping_sub(t) as i32);
        s != ssrc || dq >= 0 || (dq >= -MAX_DROPOUT && (dq * MAX_TICKS_PER_SEQ..=0).contains(&dt))
    }

    /// Whether a packet the sequence tracker calls a duplicate carries
    /// another timestamp than a jumping packet of the same number.
    pub(super) fn differs(&self, ssrc: u32, seq: u16, ts: u32) -> bool {
        self.jumps[..self.n.min(JUMPS_KEPT)]
            .iter()
            .any(|&(s, q, t)| s == ssrc && q == seq && t != ts)
    }
}

/// How far ahead of its stream's newest number a packet from a new source
/// may be and still be that stream moved ([`SsrcSeqs::continues`]).
const MOVED_SEQ_AHEAD: u16 = 50;

/// A leg's sequence number state per SSRC. Most legs have one SSRC, a few
/// two or three: a list searched in order, its room grown one at a time
/// (a hash map took 564 bytes a leg for its one SSRC; this takes 136).
#[derive(Debug, Default)]
pub(super) struct SsrcSeqs(Vec<(u32, SeqTracker)>);

impl SsrcSeqs {
    /// The state of `ssrc`, new if it has none.
    pub(super) fn entry(&mut self, ssrc: u32) -> &mut SeqTracker {
        let i = match self.0.iter().position(|(s, _)| *s == ssrc) {
            Some(i) => i,
            None => {
                self.0.reserve_exact(1);
                self.0.push((ssrc, SeqTracker::default()));
                self.0.len() - 1
            }
        };
        &mut self.0[i].1
    }

    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether `seq` of `ssrc` goes on from its newest number (the next
    /// [`MOVED_SEQ_AHEAD`]): not a copy of a packet already heard.
    pub(super) fn continues(&self, ssrc: u32, seq: u16) -> bool {
        self.0
            .iter()
            .find(|(s, _)| *s == ssrc)
            .and_then(|(_, t)| t.max_extended())
            .is_some_and(|m| (1..=MOVED_SEQ_AHEAD).contains(&seq.wrapping_sub(m as u16)))
    }

    /// The oldest SSRC's state other than `keep`'s goes.
    pub(super) fn forget_one_other_than(&mut self, keep: u32) {
        if let Some(i) = self.0.iter().position(|(s, _)| *s != keep) {
            self.0.remove(i);
        }
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &SeqTracker> {
        self.0.iter().map(|(_, t)| t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(seq: u16, arrival: i64) -> InPacket {
        InPacket {
            arrival,
            ssrc: 7,
            seq,
            ts: u32::from(seq) * 160,
            pt: 0,
            newest: true,
            marker: false,
            restart: false,
        }
    }

    /// Offers each packet at its arrival and returns the order in which
    /// they are decoded.
    fn run(order: &mut DecodeOrder, pkts: &[InPacket], wait: i64) -> Vec<u16> {
        let mut out = Vec::new();
        for p in pkts {
            let mut p = *p;
            if order.offer(&mut p, &Codec::Pcmu, &[0; 160]) {
                out.push(p.seq);
            }
            while let Some(h) = order.pop_ready(p.arrival, wait) {
                out.push(h.pkt.seq);
            }
        }
        while let Some(h) = order.pop_ready(i64::MAX / 2, wait) {
            out.push(h.pkt.seq);
        }
        out
    }

    /// A talk spurt's first packet (marker bit) is the first of the spurt
    /// the timeline sees, whether it arrived in order or after its
    /// successor (which waits behind it): marked as a possible restart and
    /// as the newest. A marked packet decoded late (its successor went
    /// already) or without the marker is not.
    #[test]
    fn a_spurts_first_packet_is_marked_in_decoding_order() {
        let marked = |seq: u16, arrival: i64| InPacket {
            marker: true,
            newest: false,
            ..pkt(seq, arrival)
        };
        let mut o = DecodeOrder::default();
        let mut seen = Vec::new();
        let wait = 320;
        // 100 starts the stream (waits for predecessors); 101 in order;
        // 103 (after the gap) before the marked 102; then the marked 104
        // in order; the marked 106 after its successor waited too long.
        for p in [
            pkt(100, 0),
            pkt(101, 400),
            pkt(103, 420),
            marked(102, 440),
            marked(104, 460),
            pkt(107, 480),
            marked(105, 900),
        ] {
            let mut p = p;
            // What is due by now first (the engine pops on time, too).
            while let Some(h) = o.pop_ready(p.arrival, wait) {
                seen.push((h.pkt.seq, h.pkt.restart, h.pkt.newest));
            }
            if o.offer(&mut p, &Codec::Pcmu, &[0; 160]) {
                seen.push((p.seq, p.restart, p.newest));
            }
            while let Some(h) = o.pop_ready(p.arrival, wait) {
                seen.push((h.pkt.seq, h.pkt.restart, h.pkt.newest));
            }
        }
        assert_eq!(
            seen,
            [
                (100, false, true),
                (101, false, true),
                (102, true, true),
                (103, false, true),
                (104, true, true),
                (107, false, true),
                (105, false, false),
            ]
        );
    }

    #[test]
    fn a_streams_first_packets_arriving_swapped_are_decoded_in_order() {
        let mut o = DecodeOrder::default();
        // 101 and 102 arrive before 100 (200 samples late); wait 320.
        let got = run(
            &mut o,
            &[pkt(101, 160), pkt(102, 320), pkt(100, 200), pkt(103, 480)],
            320,
        );
        assert_eq!(got, [100, 101, 102, 103]);
    }

    #[test]
    fn a_predecessor_later_than_the_wait_is_decoded_as_late() {
        let mut o = DecodeOrder::default();
        let got = run(
            &mut o,
            &[pkt(101, 0), pkt(102, 160), pkt(103, 400), pkt(100, 480)],
            320,
        );
        assert_eq!(got, [101, 102, 103, 100]);
    }

    #[test]
    fn a_new_ssrc_waits_behind_what_the_old_one_left() {
        let mut o = DecodeOrder::default();
        let mut b = pkt(500, 700);
        b.ssrc = 9;
        // 3 is missing: 4 is held when the new stream begins.
        let got = run(&mut o, &[pkt(1, 0), pkt(2, 160), pkt(4, 480), b], 320);
        assert_eq!(got, [1, 2, 4, 500]);
    }
}
