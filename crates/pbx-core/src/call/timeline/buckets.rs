//! The envelope's quarter-second minima (see [`super::envelope`]), kept
//! compactly: a long call holds [`MAX_BUCKETS`] of them per leg, and each
//! stored its `u` and `d` as 64-bit numbers and its count as 32 bits (24
//! bytes a bucket, 3.75 KiB a leg). Stored relative to a base in one 64-bit
//! word (24 bits each for `u` and `d`, 16 for the count: 8 bytes a bucket),
//! they are the same values exactly: a queue whose values no longer fit
//! (`u` spans 16.7 M samples: the 40 s of minima a leg keeps span 1.9 M at
//! 48 kHz) is moved to a new base, or, if none fits, stored wide from then
//! on.

use std::collections::VecDeque;

use super::envelope::Bucket;
use super::MAX_BUCKETS;

/// Buckets the queue grows by when full (8 s): [`MAX_BUCKETS`] is a
/// multiple, so a long call's queue holds exactly that many.
const BUCKET_STEP: usize = 32;

/// A bucket relative to the queue's base: `u - base.u` in bits 0-23, `d -
/// base.d` in bits 24-47 (both two's complement), the count in 48-63.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Narrow(u64);

/// Bits of `u` and of `d` in a [`Narrow`].
const FIELD_BITS: u32 = 24;
const FIELD_MASK: u64 = (1 << FIELD_BITS) - 1;
const FIELD_MIN: i64 = -(1 << (FIELD_BITS - 1));
const FIELD_MAX: i64 = (1 << (FIELD_BITS - 1)) - 1;

/// `v` in 24 bits, if it fits.
fn field(v: i64) -> Option<u64> {
    (FIELD_MIN..=FIELD_MAX)
        .contains(&v)
        .then_some(v as u64 & FIELD_MASK)
}

/// The 24-bit field at `shift`, sign-extended.
#[inline]
fn unfield(w: u64, shift: u32) -> i64 {
    ((w >> shift) << (64 - FIELD_BITS)) as i64 >> (64 - FIELD_BITS)
}

/// How a queue's buckets are stored.
trait Stored: Copy {
    fn pack(b: Bucket, base: (i64, i64)) -> Option<Self>;
    fn unpack(self, base: (i64, i64)) -> Bucket;
}

impl Stored for Narrow {
    fn pack(b: Bucket, (bu, bd): (i64, i64)) -> Option<Self> {
        let u = field(b.u.checked_sub(bu)?)?;
        let d = field(b.d.checked_sub(bd)?)?;
        let n = u64::from(u16::try_from(b.n).ok()?);
        Some(Narrow(u | d << FIELD_BITS | n << (2 * FIELD_BITS)))
    }

    #[inline]
    fn unpack(self, (bu, bd): (i64, i64)) -> Bucket {
        Bucket {
            u: bu + unfield(self.0, 0),
            d: bd + unfield(self.0, FIELD_BITS),
            n: (self.0 >> (2 * FIELD_BITS)) as u32,
        }
    }
}

impl Stored for Bucket {
    fn pack(b: Bucket, _: (i64, i64)) -> Option<Self> {
        Some(b)
    }

    fn unpack(self, _: (i64, i64)) -> Bucket {
        self
    }
}

#[derive(Debug, Clone)]
enum Store {
    Narrow(VecDeque<Narrow>),
    Wide(VecDeque<Bucket>),
}

/// The same code for either kind of store (`$q` is the `VecDeque`).
macro_rules! with_store {
    ($store:expr, $q:ident => $e:expr) => {
        match $store {
            Store::Narrow($q) => $e,
            Store::Wide($q) => $e,
        }
    };
}

/// Buckets in order ([`BucketQueue::range`]): the queue's own iterator
/// (every fit walks all of them), unpacked on the way.
pub(super) enum Iter<'a> {
    Narrow(std::collections::vec_deque::Iter<'a, Narrow>, (i64, i64)),
    Wide(std::collections::vec_deque::Iter<'a, Bucket>),
}

impl Iterator for Iter<'_> {
    type Item = Bucket;

    #[inline]
    fn next(&mut self) -> Option<Bucket> {
        match self {
            Iter::Narrow(i, base) => i.next().map(|s| s.unpack(*base)),
            Iter::Wide(i) => i.next().copied(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self {
            Iter::Narrow(i, _) => i.size_hint(),
            Iter::Wide(i) => i.size_hint(),
        }
    }
}

impl DoubleEndedIterator for Iter<'_> {
    #[inline]
    fn next_back(&mut self) -> Option<Bucket> {
        match self {
            Iter::Narrow(i, base) => i.next_back().map(|s| s.unpack(*base)),
            Iter::Wide(i) => i.next_back().copied(),
        }
    }
}

/// The envelope's buckets, sorted by `u`, at most one per bucket number.
#[derive(Debug, Clone)]
pub(super) struct BucketQueue {
    /// What stored `u` and `d` are relative to (narrow store).
    base: (i64, i64),
    store: Store,
}

impl BucketQueue {
    pub(super) fn new() -> Self {
        BucketQueue {
            base: (0, 0),
            store: Store::Narrow(VecDeque::new()),
        }
    }

    pub(super) fn len(&self) -> usize {
        with_store!(&self.store, q => q.len())
    }

    /// Bucket `i` (in `u` order). Panics if out of range, as indexing does.
    #[inline]
    pub(super) fn get(&self, i: usize) -> Bucket {
        let base = self.base;
        with_store!(&self.store, q => q[i].unpack(base))
    }

    pub(super) fn front(&self) -> Option<Bucket> {
        (self.len() > 0).then(|| self.get(0))
    }

    pub(super) fn back(&self) -> Option<Bucket> {
        self.len().checked_sub(1).map(|i| self.get(i))
    }

    pub(super) fn pop_front(&mut self) -> Option<Bucket> {
        let base = self.base;
        with_store!(&mut self.store, q => q.pop_front().map(|s| s.unpack(base)))
    }

    /// Bucket `i` becomes `b` (same bucket number).
    pub(super) fn set(&mut self, i: usize, b: Bucket) {
        self.room_for(b);
        let base = self.base;
        with_store!(&mut self.store, q => {
            if let Some(s) = Stored::pack(b, base) {
                q[i] = s;
            }
        })
    }

    pub(super) fn push_back(&mut self, b: Bucket) {
        let at = self.len();
        self.insert(at, b);
    }

    /// `b` at position `at`, the queue growing by [`BUCKET_STEP`] when full
    /// (not doubling: memory follows the call's length up to
    /// [`MAX_BUCKETS`], then stays flat).
    pub(super) fn insert(&mut self, at: usize, b: Bucket) {
        if self.len() == 0 {
            // A fresh base: the first bucket (again after emptying).
            if let Store::Narrow(_) = self.store {
                self.base = (b.u, b.d);
            }
        }
        self.room_for(b);
        let base = self.base;
        with_store!(&mut self.store, q => {
            if q.len() == q.capacity() {
                q.reserve_exact(BUCKET_STEP);
            }
            if let Some(s) = Stored::pack(b, base) {
                q.insert(at, s);
            }
        })
    }

    /// The first position whose bucket does not satisfy `pred` (the queue
    /// is partitioned by it, as `VecDeque::partition_point`).
    pub(super) fn partition_point(&self, pred: impl Fn(&Bucket) -> bool) -> usize {
        let base = self.base;
        with_store!(&self.store, q => q.partition_point(|s| pred(&s.unpack(base))))
    }

    /// Buckets `range` in order.
    pub(super) fn range(&self, range: std::ops::Range<usize>) -> Iter<'_> {
        match &self.store {
            Store::Narrow(q) => Iter::Narrow(q.range(range), self.base),
            Store::Wide(q) => Iter::Wide(q.range(range)),
        }
    }

    pub(super) fn iter(&self) -> Iter<'_> {
        self.range(0..self.len())
    }

    /// Makes the store able to hold `b` exactly: a new base if the values
    /// outgrew the old one (the stored buckets moved to it), the wide store
    /// if no base fits them all.
    fn room_for(&mut self, b: Bucket) {
        let Store::Narrow(q) = &self.store else {
            return;
        };
        if Narrow::pack(b, self.base).is_some() {
            return;
        }
        let all = || q.iter().map(|s| s.unpack(self.base)).chain([b]);
        // The middle of what is held (the most room either way; in 128
        // bits, as any two i64 may be that far apart).
        let middle = |f: fn(&Bucket) -> i64| {
            let (lo, hi) = all().fold((f(&b), f(&b)), |(lo, hi), x| (lo.min(f(&x)), hi.max(f(&x))));
            ((i128::from(lo) + i128::from(hi)) / 2) as i64
        };
        let base = (middle(|x| x.u), middle(|x| x.d));
        let moved: Option<VecDeque<Narrow>> = {
            let mut v = VecDeque::with_capacity(q.capacity());
            q.iter()
                .map(|s| Narrow::pack(s.unpack(self.base), base))
                .try_for_each(|s| s.map(|s| v.push_back(s)))
                .map(|()| v)
        };
        match moved {
            Some(v) if Narrow::pack(b, base).is_some() => {
                self.base = base;
                self.store = Store::Narrow(v);
            }
            _ => {
                let mut w = VecDeque::with_capacity(q.capacity().max(1));
                w.extend(q.iter().map(|s| s.unpack(self.base)));
                self.store = Store::Wide(w);
            }
        }
    }

    /// Whether the buckets are stored 8 bytes each (tests).
    #[cfg(test)]
    pub(super) fn is_narrow(&self) -> bool {
        matches!(self.store, Store::Narrow(_))
    }

    /// Room reserved, in buckets (tests).
    #[cfg(test)]
    pub(super) fn capacity(&self) -> usize {
        with_store!(&self.store, q => q.capacity())
    }
}

const _: () = assert!(MAX_BUCKETS % BUCKET_STEP == 0);
const _: () = assert!(std::mem::size_of::<Narrow>() == 8);

#[cfg(test)]
mod tests {
    use super::*;

    fn b(u: i64, d: i64, n: u32) -> Bucket {
        Bucket { u, d, n }
    }

    fn values(q: &BucketQueue) -> Vec<(i64, i64, u32)> {
        q.iter().map(|x| (x.u, x.d, x.n)).collect()
    }

    /// Against a plain `VecDeque<Bucket>` doing the same operations: the
    /// same values whatever their size, narrow while they fit, moved to a
    /// new base when the call outgrows the old one, wide only when no base
    /// holds them all.
    #[test]
    fn the_compact_queue_holds_exactly_what_a_wide_one_would() {
        let big = i64::from(i32::MAX);
        let cases: Vec<Vec<Bucket>> = vec![
            (0..400).map(|i| b(i * 2000, 50 - i % 7, 1)).collect(),
            // A long call at 48 kHz: u passes 24 bits from its base, and
            // i32 too.
            (0..400)
                .map(|i| b(big - 100_000 + i * 12_000, -3, 2))
                .collect(),
            // Sparse minima (silence suppression) of a very long call: u
            // passes 24 bits from where it began, again and again, the
            // queue's span just within them.
            (0..400).map(|i| b(i * 90_000, i % 5, 1)).collect(),
            // Delays 2 M samples apart (a stall of 40 s at 48 kHz): moved
            // to a base between them.
            (0..200)
                .map(|i| b(i * 12_000, if i % 2 == 0 { -3 } else { 5_000_000 }, 1))
                .collect(),
            // Huge, negative starts (capture clocks far from zero).
            (0..300)
                .map(|i| b(-(1 << 40) + i * 12_000, (1 << 45) + i % 3, 1))
                .collect(),
            // Delays farther apart than 32 bits: wide from then on.
            vec![
                b(0, 0, 1),
                b(2000, 5, 1),
                b(4000, 3 * big, 1),
                b(6000, -3 * big, 4),
            ],
            // Minima spread wider than 24 bits: wide.
            (0..50)
                .map(|i| b(i * 2000, if i == 20 { 9_000_000 } else { -9_000_000 }, 1))
                .collect(),
            // More packets in a bucket than 16 bits count: wide.
            vec![b(0, 0, 1), b(2000, 5, 70_000), b(4000, 3, 2)],
        ];
        for (k, case) in cases.iter().enumerate() {
            let mut q = BucketQueue::new();
            let mut w: VecDeque<Bucket> = VecDeque::new();
            for (i, &x) in case.iter().enumerate() {
                if w.len() >= MAX_BUCKETS {
                    let (a, c) = (q.pop_front().unwrap(), w.pop_front().unwrap());
                    assert_eq!((a.u, a.d, a.n), (c.u, c.d, c.n));
                }
                q.push_back(x);
                w.push_back(x);
                if i % 5 == 0 {
                    // Lower the minimum of a bucket in the middle.
                    let m = q.len() / 2;
                    let mut y = q.get(m);
                    y.d -= 1;
                    y.n += 1;
                    q.set(m, y);
                    w[m] = y;
                }
                assert_eq!(
                    values(&q),
                    w.iter().map(|x| (x.u, x.d, x.n)).collect::<Vec<_>>(),
                    "case {k} step {i}"
                );
            }
            let wide_needed = k >= 5;
            assert_eq!(q.is_narrow(), !wide_needed, "case {k}");
            assert!(q.capacity() <= MAX_BUCKETS, "case {k}: {}", q.capacity());
            assert_eq!(
                q.partition_point(|x| x.u < case[2].u),
                w.partition_point(|x| x.u < case[2].u)
            );
        }
    }

    /// Inserting in the middle keeps the order and the values.
    #[test]
    fn inserts_keep_their_place() {
        let mut q = BucketQueue::new();
        for u in [0i64, 4000, 8000] {
            q.push_back(b(u, 10, 1));
        }
        let at = q.partition_point(|x| x.u < 6000);
        q.insert(at, b(6000, 7, 3));
        assert_eq!(
            values(&q),
            vec![(0, 10, 1), (4000, 10, 1), (6000, 7, 3), (8000, 10, 1)]
        );
        assert_eq!(
            q.range(1..3).map(|x| x.u).collect::<Vec<_>>(),
            vec![4000, 6000]
        );
        assert_eq!(q.back().map(|x| x.u), Some(8000));
        assert_eq!(q.front().map(|x| x.u), Some(0));
    }
}
