//! Timestamps that advance at twice the RTP clock: a sender that counts
//! G.722's RTP timestamps at its 16 kHz audio rate instead of RFC 3551's
//! 8000 (a common interop bug of G.722 phones and gateways), or any codec
//! whose sender steps twice the audio a packet carries.
//!
//! In: each packet a leg decodes, in decoding (sequence) order, with the
//! length of its audio. Out: the timestamp its place is taken from.
//! Taken at face value, such a stream's 20 ms packets lie 40 ms apart: its
//! channel was stretched, then cut back in steps of a second, and its
//! first packet, looking 500 ms late against the falling envelope, moved
//! time zero a whole window earlier for the other leg too
//! (`g722_sender_counting_at_16_khz`, crates/pbx-testgen/tests/
//! timing_adversarial.rs).
//!
//! How it is told: two packets in a row (consecutive sequence numbers)
//! whose timestamps differ by exactly twice the first one's audio, but
//! which arrived about one packet's audio apart (at most 1.5 times it): a
//! stream in silence suppression that left out one packet also steps
//! twice, but the time between the two then is twice the audio too. From
//! there on (per SSRC) its timestamps count half, continuously from that
//! packet. Three such pairs where the first did not tell (late arrivals)
//! decide too. A pair stepping exactly one packet's audio, which such a
//! sender never sends, undoes it (continuously again): a correct sender
//! whose first pair left one packet out while the arrivals bunched is read
//! at half for that one packet.
//!
//! Promises: a stream whose timestamps step as its audio is never changed
//! (its mapped timestamp is its own); the mapping is continuous (a switch
//! never makes a jump); state is a few bytes a leg.

/// One leg's view of its current stream's timestamp clock.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct TsClock {
    ssrc: u32,
    /// The last packet decoded: sequence number, timestamp, its audio in
    /// RTP ticks, its arrival (samples).
    last: Option<(u16, u32, u32, i64)>,
    /// Consecutive pairs seen (saturating).
    pairs: u8,
    /// Pairs in a row seen stepping twice (the arrivals saying once).
    doubled: u8,
    /// Halving: timestamps from `.0` on count half, from `.1` (the mapped
    /// timestamp of that packet).
    half: Option<(u32, u32)>,
    /// Once (not halving): `.0` maps to `.1`, ticks go on one for one.
    once: Option<(u32, u32)>,
}

/// Pairs that decide halving when the first pair did not.
const DOUBLED_PAIRS: u8 = 3;

impl TsClock {
    /// The timestamp to place a packet by. `ticks`: its audio in RTP clock
    /// ticks; `audio`: the same in samples of the arrival clock (`arrival`
    /// is in those samples too).
    pub(super) fn map(
        &mut self,
        ssrc: u32,
        seq: u16,
        ts: u32,
        ticks: u32,
        audio: i64,
        arrival: i64,
    ) -> u32 {
        if ssrc != self.ssrc || self.last.is_none() {
            *self = TsClock {
                ssrc,
                ..TsClock::default()
            };
        }
        if let Some((s, t, k, a)) = self.last {
            if seq == s.wrapping_add(1) && k > 0 {
                let step = ts.wrapping_sub(t);
                self.pairs = self.pairs.saturating_add(1);
                let apart = arrival - a;
                if step == 2 * k && apart * 2 <= 3 * audio {
                    self.doubled = self.doubled.saturating_add(1);
                    let first_pair = self.pairs == 1;
                    if self.half.is_none() && (first_pair || self.doubled >= DOUBLED_PAIRS) {
                        // From the pair's first packet on, continuously.
                        self.half = Some((t, self.mapped(t)));
                        self.once = None;
                    }
                } else if step == k {
                    // Never from such a sender (a lost packet breaks the
                    // pair): the guess was a packet left out, or the
                    // sender counts right from here.
                    self.doubled = 0;
                    if self.half.is_some() {
                        self.once = Some((t, self.mapped(t)));
                        self.half = None;
                    }
                }
            }
        }
        self.last = Some((seq, ts, ticks, arrival));
        self.mapped(ts)
    }

    /// RTP ticks the current stream's timestamps step per tick of its
    /// audio: 2 while read at half, else 1.
    pub(super) fn ticks_per_tick(&self) -> u32 {
        if self.half.is_some() {
            2
        } else {
            1
        }
    }

    fn mapped(&self, ts: u32) -> u32 {
        match (self.half, self.once) {
            (Some((from, to)), _) => to.wrapping_add((ts.wrapping_sub(from) as i32 / 2) as u32),
            (None, Some((from, to))) => to.wrapping_add(ts.wrapping_sub(from)),
            (None, None) => ts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 20 ms G.722 packets (160 ticks of 8 kHz, 320 samples at 16 kHz)
    /// sent every 20 ms: (seq, ts, arrival).
    fn feed(c: &mut TsClock, pkts: &[(u16, u32, i64)]) -> Vec<u32> {
        pkts.iter()
            .map(|&(s, t, a)| c.map(7, s, t, 160, 320, a))
            .collect()
    }

    #[test]
    fn a_correct_stream_is_its_own_even_through_silence_suppression() {
        let mut c = TsClock::default();
        // One packet left out (DTX): twice the step, twice the time.
        let pkts = [
            (1, 1000, 0),
            (2, 1160, 320),
            (3, 1480, 960),
            (4, 1640, 1280),
            (5, 3000, 4000),
        ];
        let out = feed(&mut c, &pkts);
        assert_eq!(out, vec![1000, 1160, 1480, 1640, 3000]);
        // Late by 30 ms then on time: not 1.5 times the audio apart.
        let mut c = TsClock::default();
        let out = feed(&mut c, &[(1, 0, 0), (2, 320, 960), (3, 480, 1280)]);
        assert_eq!(out, vec![0, 320, 480]);
    }

    #[test]
    fn a_stream_counting_twice_is_read_at_half_from_its_first_packet() {
        let mut c = TsClock::default();
        let pkts: Vec<(u16, u32, i64)> = (0..10u16)
            .map(|i| {
                let ts = (u32::MAX - 500).wrapping_add(320 * u32::from(i));
                (65530u16.wrapping_add(i), ts, 320 * i64::from(i))
            })
            .collect();
        let out = feed(&mut c, &pkts);
        for (i, t) in out.iter().enumerate() {
            assert_eq!(
                *t,
                (u32::MAX - 500).wrapping_add(160 * i as u32),
                "packet {i}"
            );
        }
        // A new SSRC starts afresh.
        assert_eq!(c.map(8, 1, 5000, 160, 320, 4000), 5000);
    }

    #[test]
    fn late_arrivals_delay_the_decision_and_plain_steps_undo_it_continuously() {
        let mut c = TsClock::default();
        // The first pair arrives 40 ms apart (the second late): undecided;
        // three more pairs decide, from the fourth packet on (the ones
        // before keep their timestamps).
        let pkts = [
            (1, 0, 0),
            (2, 320, 640),
            (3, 640, 700),
            (4, 960, 1000),
            (5, 1280, 1300),
        ];
        let out = feed(&mut c, &pkts);
        assert_eq!(out, vec![0, 320, 640, 960, 1120]);
        // The sender then steps once a packet: one for one again from the
        // first such pair, continuously.
        let out = feed(&mut c, &[(6, 1440, 1620), (7, 1600, 1940), (8, 1760, 2260)]);
        assert_eq!(out, vec![1280, 1440, 1600]);
    }
}
