//! Extending RTP's wrapping counters: 16-bit sequence numbers
//! ([`SeqTracker`]: extended numbers, duplicates, loss; the one tracker the
//! call engine and every other consumer use) and 32-bit timestamps to `i64`
//! ([`TsUnwrapper`]). One instance per SSRC. Constant memory.

/// Extended RTP sequence numbers, with duplicate and loss counts: the
/// tracker the call engine uses for every (leg, SSRC).
///
/// [`SeqTracker::update`] places each sequence number at the extended value
/// nearest (within ±2^15) the highest so far and says whether it is the
/// newest, an older one not seen before (reordered or late), or a
/// duplicate. Duplicates are recognised within the last 512 numbers; a
/// packet further behind counts as received (it cannot be told apart).
/// [`SeqTracker::lost`] is the span from the lowest to the highest extended
/// number minus the packets received (RFC 3550 A.3's "cumulative number of
/// packets lost"; duplicates do not make it negative).
#[derive(Debug, Default, Clone, Copy)]
pub struct SeqTracker {
    base: u64,
    max: u64,
    started: bool,
    received: u64,
    duplicates: u64,
    window: [u64; 8], // bitmap of the 512 sequence numbers below `max`
    /// Counts of the numbering before the last [`SeqTracker::restart`].
    earlier_received: u64,
    earlier_lost: u64,
}

/// What a sequence number was, relative to those seen before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqUpdate {
    /// Beyond the highest so far.
    Newest,
    /// Older than the highest, not seen before (reordered).
    Older,
    Duplicate,
}

impl SeqTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Packets received, duplicates not counted.
    pub fn received(&self) -> u64 {
        self.earlier_received + self.received
    }

    /// Packets seen again within the duplicate window.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// The highest extended sequence number so far (`None` before the first packet).
    pub fn max_extended(&self) -> Option<u64> {
        self.started.then_some(self.max)
    }

    pub fn update(&mut self, seq: u16) -> SeqUpdate {
        if !self.started {
            self.started = true;
            self.base = 1 << 32 | u64::from(seq);
            self.max = self.base;
            self.received = 1;
            self.window = [0; 8];
            self.window[0] = 1;
            return SeqUpdate::Newest;
        }
        let ext = (self.max as i64 + i64::from(seq.wrapping_sub(self.max as u16) as i16)) as u64;
        if ext > self.max {
            let shift = ext - self.max;
            self.shift_window(shift);
            self.max = ext;
            self.set_bit(0);
            self.received += 1;
            SeqUpdate::Newest
        } else {
            let back = self.max - ext;
            if back >= 512 {
                // Too old to tell; count it as received (a very late packet,
                // or the first of a new numbering: it does not stretch the
                // span the loss is counted over).
                self.received += 1;
                return SeqUpdate::Older;
            }
            if self.bit(back) {
                self.duplicates += 1;
                SeqUpdate::Duplicate
            } else {
                self.set_bit(back);
                self.received += 1;
                if ext < self.base {
                    self.base = ext;
                }
                SeqUpdate::Older
            }
        }
    }
    fn bit(&self, back: u64) -> bool {
        self.window[(back / 64) as usize] >> (back % 64) & 1 == 1
    }
    fn set_bit(&mut self, back: u64) {
        self.window[(back / 64) as usize] |= 1 << (back % 64);
    }
    fn shift_window(&mut self, n: u64) {
        if n >= 512 {
            self.window = [0; 8];
            return;
        }
        let words = (n / 64) as usize;
        let bits = n % 64;
        let old = self.window;
        for i in 0..8 {
            let mut v = 0u64;
            if i >= words {
                v = old[i - words] << bits;
                if bits > 0 && i > words {
                    v |= old[i - words - 1] >> (64 - bits);
                }
            }
            self.window[i] = v;
        }
    }
    pub fn lost(&self) -> u64 {
        if !self.started {
            return 0;
        }
        self.earlier_lost + (self.max - self.base + 1).saturating_sub(self.received)
    }

    /// The source numbers its packets afresh under the same SSRC (RFC 3550
    /// A.1: a large jump that the next packet confirms): `seq` is the first
    /// of the new numbering, and the newest. The counts so far are kept.
    pub fn restart(&mut self, seq: u16) -> SeqUpdate {
        let kept = SeqTracker {
            earlier_received: self.received(),
            earlier_lost: self.lost(),
            duplicates: self.duplicates,
            ..SeqTracker::default()
        };
        *self = kept;
        self.update(seq)
    }
}

/// Extends 32-bit RTP timestamps to `i64`. The first timestamp maps to itself;
/// every later one maps to the value nearest (within ±2^31) the highest
/// extended value so far, so a slightly older packet after a wrap maps just
/// below it and a newer one continues upward past `u32::MAX`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TsUnwrapper {
    /// (last raw timestamp of the highest value, highest extended value)
    max: Option<(u32, i64)>,
}

impl TsUnwrapper {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a timestamp and returns its extended value.
    pub fn unwrap(&mut self, ts: u32) -> i64 {
        match self.max {
            None => {
                let ext = i64::from(ts);
                self.max = Some((ts, ext));
                ext
            }
            Some((raw, max)) => {
                let delta = i64::from(ts.wrapping_sub(raw) as i32);
                let ext = max.saturating_add(delta);
                if delta > 0 {
                    self.max = Some((ts, ext));
                }
                ext
            }
        }
    }

    /// Same as [`TsUnwrapper::unwrap`] (named like [`SeqTracker::update`]).
    pub fn update(&mut self, ts: u32) -> i64 {
        self.unwrap(ts)
    }

    /// Extends without recording: what [`TsUnwrapper::unwrap`] would return.
    pub fn peek(&self, ts: u32) -> i64 {
        match self.max {
            None => i64::from(ts),
            Some((raw, max)) => max.saturating_add(i64::from(ts.wrapping_sub(raw) as i32)),
        }
    }

    /// Highest extended timestamp so far.
    pub fn max(&self) -> Option<i64> {
        self.max.map(|(_, m)| m)
    }
}
