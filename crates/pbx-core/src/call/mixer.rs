//! Two-channel assembly: PCM for each leg, placed at sample positions on the call's
//! common timeline, comes in; interleaved stereo frames come out, in order, once.
//!
//! Promises:
//! - Frame `n` of the output is what channel 0 and channel 1 hold at timeline
//!   sample `n`; positions nobody wrote are silence. A sound written at position
//!   `p` comes out at frame `p` — this is what keeps the two channels in sync.
//! - Memory is bounded: only the window between the flushed position and
//!   `flushed + capacity` is held; writes beyond it are cut and counted, writes
//!   before the flushed position (too late) are cut and counted.
//! - Writes may come in any order (reordering is absorbed as long as a packet
//!   arrives before its position is flushed); a later write to the same
//!   positions replaces the earlier one (duplicates are harmless).

use std::collections::VecDeque;

/// Counters of samples the mixer could not place.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MixerDrops {
    /// Samples that arrived for positions already written out.
    pub late: u64,
    /// Samples beyond the buffering window.
    pub overflow: u64,
}

#[derive(Debug)]
pub struct TwoChannelMixer {
    flushed: u64,
    capacity: usize,
    chans: [VecDeque<i16>; 2],
    end: [u64; 2],
    drops: [MixerDrops; 2],
}

impl TwoChannelMixer {
    /// `capacity`: how many frames past the flushed position may be buffered.
    pub fn new(capacity: usize) -> Self {
        TwoChannelMixer {
            flushed: 0,
            capacity: capacity.max(1),
            chans: [VecDeque::new(), VecDeque::new()],
            end: [0, 0],
            drops: [MixerDrops::default(); 2],
        }
    }

    /// Frames that may be buffered past the flushed position.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Frames already emitted.
    pub fn flushed(&self) -> u64 {
        self.flushed
    }

    /// One past the highest position written on `ch`.
    pub fn end(&self, ch: usize) -> u64 {
        self.end[ch & 1]
    }

    pub fn drops(&self, ch: usize) -> MixerDrops {
        self.drops[ch & 1]
    }

    /// Place `samples` on channel `ch` starting at timeline position `pos`.
    pub fn write(&mut self, ch: usize, pos: i64, samples: &[i16]) {
        let ch = ch & 1;
        let mut samples = samples;
        let mut pos = pos;
        // Cut what is already flushed (or before time zero).
        let floor = self.flushed as i64;
        if pos < floor {
            let cut = ((floor - pos) as u64).min(samples.len() as u64) as usize;
            self.drops[ch].late += cut as u64;
            samples = &samples[cut..];
            pos = floor;
        }
        if samples.is_empty() {
            return;
        }
        let off = (pos - floor) as u64;
        let room = (self.capacity as u64).saturating_sub(off);
        let take = (samples.len() as u64).min(room) as usize;
        self.drops[ch].overflow += (samples.len() - take) as u64;
        if take == 0 {
            return;
        }
        let off = off as usize;
        let buf = &mut self.chans[ch];
        if buf.len() < off + take {
            buf.resize(off + take, 0);
        }
        // The deque's storage is two slices; the samples may span both.
        let (a, b) = buf.as_mut_slices();
        let samples = &samples[..take];
        if off < a.len() {
            let n = (a.len() - off).min(take);
            a[off..off + n].copy_from_slice(&samples[..n]);
            b[..take - n].copy_from_slice(&samples[n..]);
        } else {
            let o = off - a.len();
            b[o..o + take].copy_from_slice(samples);
        }
        self.end[ch] = self.end[ch].max(pos as u64 + take as u64);
    }

    /// Emit every frame before `pos` (interleaved L,R) into `out`.
    pub fn flush_until(&mut self, pos: u64, out: &mut Vec<i16>) {
        if pos <= self.flushed {
            return;
        }
        let n = (pos - self.flushed) as usize;
        let start = out.len();
        // Silence first; then each channel's buffered samples into its slots.
        out.resize(start + n * 2, 0);
        let frames = &mut out[start..];
        for (ch, buf) in self.chans.iter_mut().enumerate() {
            let m = n.min(buf.len());
            let (a, b) = buf.as_slices();
            for (slot, s) in frames
                .iter_mut()
                .skip(ch)
                .step_by(2)
                .zip(a.iter().chain(b.iter()).take(m))
            {
                *slot = *s;
            }
            buf.drain(..m);
        }
        self.flushed = pos;
    }

    /// Emit everything written so far, padding the shorter channel with silence.
    pub fn finish(&mut self, out: &mut Vec<i16>) {
        let end = self.end[0].max(self.end[1]);
        self.flush_until(end, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn places_each_channel_at_its_position() {
        let mut m = TwoChannelMixer::new(1000);
        m.write(0, 2, &[1, 2]);
        m.write(1, 0, &[9]);
        let mut out = vec![];
        m.finish(&mut out);
        assert_eq!(out, vec![0, 9, 0, 0, 1, 0, 2, 0]);
    }

    #[test]
    fn late_and_overflow_are_cut_and_counted() {
        let mut m = TwoChannelMixer::new(4);
        let mut out = vec![];
        m.write(0, 0, &[1, 1]);
        m.flush_until(2, &mut out);
        m.write(0, 1, &[5, 6, 7]); // first sample late
        assert_eq!(m.drops(0).late, 1);
        m.write(1, 4, &[3, 3, 3, 3]); // window is [2, 6): 2 fit
        assert_eq!(m.drops(1).overflow, 2);
        m.finish(&mut out);
        assert_eq!(out, vec![1, 0, 1, 0, 6, 0, 7, 0, 0, 3, 0, 3]);
    }

    proptest! {
        /// Whatever order chunks arrive in, and however flushing is interleaved
        /// (as long as every chunk arrives before its position is flushed), the
        /// output is the chunks laid out at their positions.
        #[test]
        fn order_of_writes_does_not_matter(
            chunks in proptest::collection::vec((0usize..2, 0i64..400, proptest::collection::vec(any::<i16>(), 1..40)), 1..40),
            seed in any::<u64>(),
        ) {
            // expected: later writes to the same place win, so apply in the given order
            let mut expect = [vec![0i16; 480], vec![0i16; 480]];
            let mut end = 0usize;
            for (ch, pos, s) in &chunks {
                for (i, v) in s.iter().enumerate() { expect[*ch][*pos as usize + i] = *v; }
                end = end.max(*pos as usize + s.len());
            }
            // Deterministic "shuffle" that keeps the relative order of overlapping chunks:
            // rotate disjoint chunks only — simplest: write in given order but flush
            // at random safe points (before the smallest future position).
            let mut m = TwoChannelMixer::new(1000);
            let mut out = vec![];
            let mut rng = seed;
            for (i, (ch, pos, s)) in chunks.iter().enumerate() {
                m.write(*ch, *pos, s);
                rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                if rng >> 62 == 0 {
                    let min_future = chunks[i + 1..].iter().map(|c| c.1).min().unwrap_or(i64::MAX);
                    let safe = (min_future.max(0) as u64).min(m.end(0).max(m.end(1)));
                    m.flush_until(safe, &mut out);
                }
            }
            m.finish(&mut out);
            prop_assert_eq!(out.len(), end * 2);
            for n in 0..end {
                prop_assert_eq!(out[2 * n], expect[0][n]);
                prop_assert_eq!(out[2 * n + 1], expect[1][n]);
            }
        }
    }
}
