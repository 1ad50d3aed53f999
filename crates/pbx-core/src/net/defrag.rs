//! IPv4 / IPv6 fragment reassembly with hard limits.
//!
//! A datagram is identified by (source, destination, protocol, id) — for IPv6 the
//! protocol is 0 and the first fragment's next header is remembered instead.
//! Fragments may arrive in any order and may repeat or overlap: each one is
//! copied to its offset (a later copy of the same bytes overwrites an earlier
//! one) and the covered ranges are merged; the datagram is complete when the last
//! fragment (MF = 0) has fixed the length and the ranges cover it. A fragment
//! that contradicts the known length, or would make the datagram larger than
//! `max_datagram`, drops the whole set.
//!
//! Memory is bounded three ways: at most `max_frag_sets` datagrams in progress,
//! at most `max_frag_bytes` buffered over all of them (the oldest set is evicted
//! first), and at most [`MAX_RANGES`] disjoint pieces per datagram. Sets expire
//! `frag_timeout` after their first fragment, judged by the timestamps passed in.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

use super::{NetLimits, NetStats};
use crate::Timestamp;

/// A datagram in more pieces than this is dropped (no real sender does it).
pub(super) const MAX_RANGES: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct FragKey {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub id: u32,
}

#[derive(Debug)]
struct FragSet {
    generation: u64,
    first_seen: Timestamp,
    data: Vec<u8>,
    /// Sorted, disjoint, non-adjacent [start, end) ranges received so far.
    have: Vec<(usize, usize)>,
    total: Option<usize>,
    /// Next header of the fragment at offset 0 (IPv6).
    first_next: Option<u8>,
}

/// One fragment as the IP layer sees it.
pub(super) struct Fragment<'a> {
    pub offset: usize,
    pub more: bool,
    pub data: &'a [u8],
    /// IPv6: the fragment header's next header; IPv4: the protocol.
    pub next: u8,
}

/// A completed datagram: the protocol of its first fragment and its bytes.
pub(super) struct Reassembled {
    pub next: u8,
    pub data: Vec<u8>,
}

#[derive(Debug, Default)]
pub(super) struct Defragmenter {
    sets: HashMap<FragKey, FragSet>,
    /// Sets in creation order, for timeouts and eviction (entries whose set is
    /// gone or has a newer generation are skipped).
    order: VecDeque<(FragKey, u64)>,
    generation: u64,
    held_bytes: usize,
}

impl Defragmenter {
    pub fn pending(&self) -> usize {
        self.sets.len()
    }

    /// Adds a fragment; returns the datagram when it is complete.
    pub fn add(
        &mut self,
        ts: Timestamp,
        key: FragKey,
        frag: Fragment<'_>,
        limits: &NetLimits,
        stats: &mut NetStats,
    ) -> Option<Reassembled> {
        self.expire(ts, limits, stats);
        let end = frag.offset.saturating_add(frag.data.len());
        if end > limits.max_datagram {
            stats.frag_dropped += 1;
            self.remove(&key);
            return None;
        }
        if frag.data.is_empty() && frag.more {
            return None;
        }
        if !self.sets.contains_key(&key) {
            while self.sets.len() >= limits.max_frag_sets.max(1) {
                if !self.evict_oldest(stats) {
                    break;
                }
            }
            self.generation += 1;
            self.sets.insert(
                key,
                FragSet {
                    generation: self.generation,
                    first_seen: ts,
                    data: Vec::new(),
                    have: Vec::new(),
                    total: None,
                    first_next: None,
                },
            );
            self.order.push_back((key, self.generation));
        }
        // Make room for the bytes this fragment may add.
        let grow = self
            .sets
            .get(&key)
            .map_or(0, |s| end.saturating_sub(s.data.len()));
        while self.held_bytes + grow > limits.max_frag_bytes {
            let before = self.sets.contains_key(&key);
            if !self.evict_oldest(stats) || (before && !self.sets.contains_key(&key)) {
                // The set itself was the oldest: the fragment cannot be kept.
                self.remove(&key);
                return None;
            }
        }
        let set = self.sets.get_mut(&key)?;
        let len_before = set.data.len();
        let ok = set.accept(&frag, end);
        // Account for what `accept` really added before any removal.
        self.held_bytes = self
            .held_bytes
            .saturating_add(set.data.len().saturating_sub(len_before));
        if !ok {
            stats.frag_dropped += 1;
            self.remove(&key);
            return None;
        }
        if !set.complete() {
            return None;
        }
        let set = self.remove(&key)?;
        let mut data = set.data;
        data.truncate(set.total.unwrap_or(0));
        Some(Reassembled {
            next: set.first_next.unwrap_or(key.proto),
            data,
        })
    }

    /// Drops sets older than the timeout.
    pub fn expire(&mut self, now: Timestamp, limits: &NetLimits, stats: &mut NetStats) {
        let timeout = limits.frag_timeout_us();
        while let Some(&(key, generation)) = self.order.front() {
            match self.sets.get(&key) {
                Some(set) if set.generation == generation => {
                    if now.micros_since(set.first_seen) < timeout {
                        break;
                    }
                    self.order.pop_front();
                    self.remove(&key);
                    stats.frag_timeouts += 1;
                }
                _ => {
                    self.order.pop_front();
                }
            }
        }
    }

    /// Forgets everything in progress.
    pub fn clear(&mut self) {
        self.sets.clear();
        self.order.clear();
        self.held_bytes = 0;
    }

    fn evict_oldest(&mut self, stats: &mut NetStats) -> bool {
        while let Some((key, generation)) = self.order.pop_front() {
            if self
                .sets
                .get(&key)
                .is_some_and(|s| s.generation == generation)
            {
                self.remove(&key);
                stats.frag_dropped += 1;
                return true;
            }
        }
        false
    }

    fn remove(&mut self, key: &FragKey) -> Option<FragSet> {
        let set = self.sets.remove(key)?;
        self.held_bytes = self.held_bytes.saturating_sub(set.data.len());
        Some(set)
    }
}

impl FragSet {
    /// Records a fragment; `false` if it contradicts what is known.
    fn accept(&mut self, frag: &Fragment<'_>, end: usize) -> bool {
        if !frag.more {
            if self.total.is_some_and(|t| t != end) {
                return false;
            }
            if self.have.last().is_some_and(|&(_, e)| e > end) {
                return false;
            }
            self.total = Some(end);
        } else if self.total.is_some_and(|t| end > t) {
            return false;
        }
        if frag.offset == 0 {
            self.first_next = Some(frag.next);
        }
        if frag.data.is_empty() {
            return true;
        }
        if self.data.len() < end {
            self.data.resize(end, 0);
        }
        let Some(dst) = self.data.get_mut(frag.offset..end) else {
            return false;
        };
        dst.copy_from_slice(frag.data);
        insert_range(&mut self.have, frag.offset, end);
        self.have.len() <= MAX_RANGES
    }

    fn complete(&self) -> bool {
        match (self.total, self.have.as_slice()) {
            (Some(0), []) => true,
            (Some(t), [(0, e)]) => *e == t,
            _ => false,
        }
    }
}

/// Inserts [start, end) into sorted disjoint ranges, merging touching ones.
fn insert_range(have: &mut Vec<(usize, usize)>, start: usize, end: usize) {
    // First range that ends at or after `start` (could merge).
    let i = have.partition_point(|&(_, e)| e < start);
    let mut new_start = start;
    let mut new_end = end;
    let mut j = i;
    while let Some(&(s, e)) = have.get(j) {
        if s > new_end {
            break;
        }
        new_start = new_start.min(s);
        new_end = new_end.max(e);
        j += 1;
    }
    have.splice(i..j, [(new_start, new_end)]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge() {
        let mut h = Vec::new();
        insert_range(&mut h, 10, 20);
        insert_range(&mut h, 30, 40);
        assert_eq!(h, vec![(10, 20), (30, 40)]);
        insert_range(&mut h, 20, 30);
        assert_eq!(h, vec![(10, 40)]);
        insert_range(&mut h, 0, 5);
        insert_range(&mut h, 3, 12);
        assert_eq!(h, vec![(0, 40)]);
        insert_range(&mut h, 50, 60);
        insert_range(&mut h, 45, 70);
        assert_eq!(h, vec![(0, 40), (45, 70)]);
        insert_range(&mut h, 0, 100);
        assert_eq!(h, vec![(0, 100)]);
    }
}
