//! Extending RTP's wrapping counters: 16-bit sequence numbers to `u64`
//! ([`SeqTracker`], RFC 3550 appendix A.1) and 32-bit timestamps to `i64`
//! ([`TsUnwrapper`]). One instance per SSRC. Constant memory.

/// A forward jump larger than this many packets is treated as a possible
/// restart and needs a second packet to confirm it (RFC 3550 A.1).
pub const MAX_DROPOUT: u16 = 3000;
/// Packets up to this many behind the highest seen are "late" (reordered or
/// duplicated); further behind is treated like a big jump (RFC 3550 A.1).
pub const MAX_MISORDER: u16 = 100;

/// Duplicate detection window, in packets (a multiple of 64).
const WINDOW: u64 = 1024;

/// RFC 3550 A.1-style sequence tracking.
///
/// [`SeqTracker::update`] returns the packet's extended sequence number:
/// the first packet maps to `65536 + seq` (so packets from just before it
/// still map to non-negative values); in-order packets, gaps up to
/// [`MAX_DROPOUT`] and packets up to [`MAX_MISORDER`] late keep one
/// consistent numbering across wraps. A bigger jump is taken at its nearest
/// reading (usually "very late", which a jitter buffer drops, as A.1 discards
/// it) unless the next packet continues from it: then the sender restarted
/// or lost a long stretch, and numbering goes on forward from there
/// ([`SeqTracker::restarts`] counts it, and the jump is not counted as loss).
#[derive(Debug, Clone, Default)]
pub struct SeqTracker {
    init: bool,
    max_seq: u16,
    max_ext: u64,
    base_ext: u64,
    /// Sum of jumps accepted as restarts (excluded from `expected`).
    skipped: u64,
    bad_seq: Option<u16>,
    received: u64,
    duplicates: u64,
    reordered: u64,
    restarts: u64,
    /// Bit `e % WINDOW` set = extended seq `e` seen, for `e` in
    /// `(max_ext - WINDOW, max_ext]`.
    seen: [u64; (WINDOW / 64) as usize],
}

impl SeqTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a packet and returns its extended sequence number.
    pub fn update(&mut self, seq: u16) -> u64 {
        if !self.init {
            self.init = true;
            self.max_seq = seq;
            self.max_ext = (1 << 16) + u64::from(seq);
            self.base_ext = self.max_ext;
            self.received = 1;
            self.mark(self.max_ext);
            return self.max_ext;
        }
        let udelta = seq.wrapping_sub(self.max_seq);
        if udelta == 0 || udelta > u16::MAX - MAX_MISORDER {
            // Duplicate or late (at most MAX_MISORDER behind).
            let back = u64::from(self.max_seq.wrapping_sub(seq));
            let ext = self.max_ext.saturating_sub(back);
            self.late(ext);
            return ext;
        }
        if udelta <= MAX_DROPOUT {
            self.bad_seq = None;
            return self.advance(seq, u64::from(udelta));
        }
        // A big jump: forward past MAX_DROPOUT, or more than MAX_MISORDER late.
        if self.bad_seq == Some(seq) {
            // Two consecutive packets agree: the stream really moved.
            self.bad_seq = None;
            self.restarts += 1;
            let jump = u64::from(udelta);
            self.skipped += jump.saturating_sub(2);
            // The previous packet of this run was given its nearest reading;
            // count it as received in the new run.
            self.received += 1;
            return self.advance(seq, jump);
        }
        self.bad_seq = Some(seq.wrapping_add(1));
        // Nearest reading of a 16-bit difference.
        let delta = i64::from(udelta as i16);
        let ext = if delta >= 0 {
            self.max_ext + delta.unsigned_abs()
        } else {
            self.max_ext.saturating_sub(delta.unsigned_abs())
        };
        if ext < self.max_ext {
            self.reordered += 1;
        }
        ext
    }

    fn advance(&mut self, seq: u16, by: u64) -> u64 {
        // Clear the window slots the new range brings in.
        if by >= WINDOW {
            self.seen = [0; (WINDOW / 64) as usize];
        } else {
            for e in self.max_ext + 1..=self.max_ext + by {
                self.unmark(e);
            }
        }
        self.max_ext += by;
        self.max_seq = seq;
        self.received += 1;
        self.mark(self.max_ext);
        self.max_ext
    }

    fn late(&mut self, ext: u64) {
        if ext + WINDOW <= self.max_ext {
            self.reordered += 1;
            self.received += 1;
        } else if self.is_marked(ext) {
            self.duplicates += 1;
        } else {
            self.mark(ext);
            self.reordered += 1;
            self.received += 1;
            self.base_ext = self.base_ext.min(ext);
        }
    }

    fn slot(ext: u64) -> (usize, u64) {
        let bit = ext % WINDOW;
        ((bit / 64) as usize, 1u64 << (bit % 64))
    }

    fn mark(&mut self, ext: u64) {
        let (i, m) = Self::slot(ext);
        if let Some(w) = self.seen.get_mut(i) {
            *w |= m;
        }
    }

    fn unmark(&mut self, ext: u64) {
        let (i, m) = Self::slot(ext);
        if let Some(w) = self.seen.get_mut(i) {
            *w &= !m;
        }
    }

    fn is_marked(&self, ext: u64) -> bool {
        let (i, m) = Self::slot(ext);
        self.seen.get(i).is_some_and(|w| w & m != 0)
    }

    /// Highest extended sequence number seen (0 before the first packet).
    pub fn max_extended(&self) -> u64 {
        self.max_ext
    }

    /// Distinct packets received (duplicates not counted).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Packets the sender sent over the range seen, restarts' jumps excluded.
    pub fn expected(&self) -> u64 {
        if !self.init {
            return 0;
        }
        (self.max_ext + 1)
            .saturating_sub(self.base_ext)
            .saturating_sub(self.skipped)
    }

    /// Packets expected but not received (never negative).
    pub fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.received)
    }

    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Packets that arrived after a higher-numbered one.
    pub fn reordered(&self) -> u64 {
        self.reordered
    }

    /// Big jumps confirmed by a following packet.
    pub fn restarts(&self) -> u64 {
        self.restarts
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
