//! A decoder's tail: the output its filters (a resampler's, G.722's receive
//! QMF) still hold after a packet, [`crate::audio::codec::Decoder::tail`].
//!
//! Each packet's output is placed `delay` samples before its timestamp's
//! position, so the last `delay`-odd samples of the audio before a codec
//! switch, a pause or the call's end come out only with the next packet,
//! if any. Taken at face value they were lost at a codec switch (under the
//! new decoder's start-up) and at the call's end, and landed at the start
//! of the next talk spurt (before its place) after a pause.
//!
//! In: each packet a leg decodes, in decoding order. Out: the tail placed
//! right after the packet it belongs to, once the next packet is overdue
//! (or at the end), or added into the next packet's output when a new
//! decoder takes over without a gap; taken off the start of the next
//! packet's output after a gap (the decoder's filters still held it).
//! Nothing for G.711 recorded at its own rate (no filter, no tail).
//! Promises: the filters are linear, so a tail placed and later continued
//! by the same decoder without a gap is replaced by that packet's output
//! at the same place, sample for sample as if no tail had been placed.

use super::timeline::{LegTimeline, Packet, PacketAudio};

/// The last packet decoded, while its decoder holds a tail.
#[derive(Debug, Clone, Copy)]
pub(super) struct LastOut {
    pub(super) ssrc: u32,
    /// Its end on the timeline's timestamp clock (its timestamp as placed
    /// plus its audio) and that clock's rate.
    pub(super) ts_end: u32,
    pub(super) clock_rate: u32,
    /// The RTP timestamp the next packet carries if it follows at once.
    pub(super) raw_next: u32,
    /// Its decoder's delay (output samples).
    pub(super) delay: i64,
    /// Its arrival plus its audio (output samples).
    pub(super) arrival_end: i64,
    /// Its tail is on the timeline.
    pub(super) placed: bool,
}

impl LastOut {
    /// Put `tail` on `timeline` right after the packet (once).
    pub(super) fn place(&mut self, timeline: &mut LegTimeline, tail: &[i16]) {
        if self.placed {
            return;
        }
        self.placed = true;
        if tail.is_empty() {
            return;
        }
        timeline.insert_tail(&Packet {
            arrival: self.arrival_end,
            ssrc: self.ssrc,
            ts: self.ts_end,
            clock_rate: self.clock_rate,
            ticks: 0,
            newest: false,
            restart: false,
            delay: self.delay,
            pcm: PacketAudio::Pcm(tail),
        });
    }

    /// Whether a packet at `ts` (timeline clock) continues this one without
    /// a gap.
    pub(super) fn continued_by(&self, ssrc: u32, ts: u32, clock_rate: u32) -> bool {
        self.ssrc == ssrc && self.clock_rate == clock_rate && self.ts_end == ts
    }

    /// Whether a packet at `ts` lies at or after this one's end (not a late
    /// one decoded after its successor).
    pub(super) fn before(&self, ssrc: u32, ts: u32, clock_rate: u32) -> bool {
        self.ssrc != ssrc
            || self.clock_rate != clock_rate
            || ts.wrapping_sub(self.ts_end) as i32 >= 0
    }
}

fn add(a: i16, b: i16) -> i16 {
    (i32::from(a) + i32::from(b)).clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16
}

/// The new decoder's first packet `pcm` (placed `d_new` samples before its
/// timestamp) with the old decoder's `tail` (which starts `d_old` before
/// it) added in: both filters are linear, so the sum is what one decoder
/// would have given across the switch. Returns the result's delay (the
/// tail may begin before the packet's output).
pub(super) fn merge(pcm: &mut Vec<i16>, tail: &[i16], d_new: i64, d_old: i64) -> i64 {
    let (off, delay) = if d_new >= d_old {
        ((d_new - d_old) as usize, d_new)
    } else {
        let pre = (d_old - d_new) as usize;
        pcm.splice(0..0, std::iter::repeat_n(0, pre));
        (0, d_old)
    };
    for (p, &t) in pcm.iter_mut().skip(off).zip(tail) {
        *p = add(*p, t);
    }
    delay
}

/// Take `tail` (what the decoder held before this packet) off the start of
/// a packet's output `pcm` after a gap: it was placed where it belongs.
pub(super) fn subtract(pcm: &mut [i16], tail: &[i16]) {
    for (p, &t) in pcm.iter_mut().zip(tail) {
        *p = add(*p, t.saturating_neg());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_the_tail_where_it_lies() {
        // The new decoder delays more: the tail lies inside its output.
        let mut pcm = vec![1, 1, 1, 1, 1];
        assert_eq!(merge(&mut pcm, &[10, 20], 3, 1), 3);
        assert_eq!(pcm, [1, 1, 11, 21, 1]);
        // Less: the tail begins before it.
        let mut pcm = vec![1, 1, 1];
        assert_eq!(merge(&mut pcm, &[10, 20, 30], 0, 2), 2);
        assert_eq!(pcm, [10, 20, 31, 1, 1]);
    }

    #[test]
    fn subtract_saturates() {
        let mut pcm = vec![i16::MIN, 5, 7];
        subtract(&mut pcm, &[1, 5]);
        assert_eq!(pcm, [i16::MIN, 0, 7]);
    }
}
