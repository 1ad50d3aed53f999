//! Packets held because they came more than the window late, newest on
//! their sequence numbers (see the parent module): kept until the packets
//! after them tell a restart or a hold without timestamps (a new segment)
//! from a stalled link's queue (dropped as late).

use super::*;

/// A packet held because it came more than the window late.
#[derive(Debug)]
pub(super) struct Held {
    pub(super) arrival: i64,
    ssrc: u32,
    ts: u32,
    clock_rate: u32,
    delay: i64,
    /// `arrival - u` on the old segment's timestamps.
    pub(super) d: i64,
    audio: HeldAudio,
}

#[derive(Debug)]
enum HeldAudio {
    Pcm(Vec<i16>),
    G711(Law, Vec<u8>),
}

impl Held {
    pub(super) fn packet(&self) -> Packet<'_> {
        Packet {
            arrival: self.arrival,
            ssrc: self.ssrc,
            ts: self.ts,
            clock_rate: self.clock_rate,
            ticks: 0,
            newest: true,
            // Held packets go back in as their segment's own (stragglers):
            // none starts a segment by itself.
            restart: false,
            delay: self.delay,
            pcm: match &self.audio {
                HeldAudio::Pcm(v) => PacketAudio::Pcm(v),
                HeldAudio::G711(law, b) => PacketAudio::G711(*law, b),
            },
        }
    }
}

impl LegTimeline {
    /// Keep `p` (more than the window late, the newest) until it is known
    /// why it is so late.
    pub(super) fn hold(&mut self, p: &Packet<'_>, d: i64) {
        if self.held.len() >= HELD_MAX {
            self.held.remove(0);
            self.stats.late += 1;
        }
        self.held.push(Held {
            arrival: p.arrival,
            ssrc: p.ssrc,
            ts: p.ts,
            clock_rate: p.clock_rate,
            delay: p.delay,
            d,
            audio: match p.pcm {
                PacketAudio::Pcm(v) => HeldAudio::Pcm(v.to_vec()),
                PacketAudio::G711(law, b) => HeldAudio::G711(law, b.to_vec()),
            },
        });
    }

    /// Whether `held` are late by the same (a hold or a restart moves every
    /// packet by as much, give or take the jitter; a draining queue by ever
    /// less).
    pub(super) fn consistent(&self, held: &[Held]) -> bool {
        let limit = self.held_limit();
        let lo = held.iter().map(|h| h.d).min().unwrap_or(0);
        let hi = held.iter().map(|h| h.d).max().unwrap_or(0);
        (hi - lo) as f64 <= limit
    }

    /// How late held packets may differ and still be late by the same:
    /// the last segment's break threshold.
    pub(super) fn held_limit(&self) -> f64 {
        self.segs.back().map_or(0.0, |s| s.env.break_limit())
    }

    /// Held packets that stayed as late as each other for [`RESUME_MS`]
    /// start a new segment; at the end (`force`), or once held the whole
    /// window, they are decided as they look. Returns how far rendering may
    /// go meanwhile: to just before where their audio can land.
    pub(super) fn decide_held(&mut self, now: i64, force: bool) -> i64 {
        let Some(first) = self.held.first() else {
            return i64::MAX;
        };
        let wait = ((RESUME_MS as f64 * self.ms) as i64).min(self.hold_back / 2);
        let limit = self.held_limit() as i64;
        let since = now - first.arrival;
        if force || since >= self.hold_back {
            self.resolve_held(None);
        } else if since >= wait && self.consistent(&self.held) {
            self.resolve_held(Some(true));
        } else {
            return first.arrival - limit - 1;
        }
        i64::MAX
    }

    /// The held packets start a new segment (`Some(true)`), or were only
    /// late and are dropped (`Some(false)`); `None`: as they look now
    /// (as late as each other: a new segment).
    pub(super) fn resolve_held(&mut self, resume: Option<bool>) {
        if self.held.is_empty() {
            return;
        }
        let held = std::mem::take(&mut self.held);
        if !resume.unwrap_or_else(|| self.consistent(&held)) {
            self.stats.late += held.len() as u64;
            return;
        }
        let first = held[0].packet();
        self.new_segment(&first);
        let j = self.segs.len() - 1;
        for h in &held {
            self.insert_into(j, &h.packet(), true);
        }
    }
}
