//! Drain: how the daemon leaves a pool of recorders without losing a call
//! (`pbx-edge drain`, `POST /v1/drain` on the health listener from loopback,
//! or SIGUSR1; rolling upgrades behind a dispatcher, docs/scale-out.md).
//!
//! In: the request, then the daemon's tick (once a second) with the SIPREC
//! dialogs still in progress and the [`Status`]. Out: what the daemon does
//! next ([`Step`]) and the drain's progress in the status (`draining`,
//! `drain`; `/readyz` fails with `daemon: draining (phase)`; the
//! `pbx_edge_draining` gauge).
//!
//! Phases:
//! 1. `calls`: the SIPREC server takes no new calls (INVITE and
//!    out-of-dialog OPTIONS answered `503` + `Retry-After`, so a dispatcher
//!    probing with OPTIONS stops sending), the dialogs in progress go on
//!    (BYE, re-INVITE, UPDATE answered) until they end, and until each
//!    ended call's recording is on disk. No time limit: SIGTERM still stops
//!    at once (the calls left are cut, marked `shutdown`).
//! 2. `delivery`: the passive sources (sniffing, HEP, folder) stop as at
//!    SIGTERM (they cannot refuse calls; theirs in progress are closed
//!    `truncated`), the SIPREC listener keeps answering 503; the spool is
//!    delivered until nothing is left to send (`recorded`, `queued`,
//!    `uploading`: 0, judged after [`SETTLE`] so the last recordings are
//!    adopted), or until delivery cannot go on: no cloud configured, uploads
//!    paused (401/403/402, TLS), or no progress (nothing delivered, no byte
//!    sent) for [`STALL`] after a failed attempt (cloud unreachable; its
//!    next retry may be minutes away under backoff). The log says which, and how many recordings
//!    stay in the spool for the next start.
//! 3. the daemon stops as at SIGTERM (nothing left to cut) and exits 0.

use std::time::{Duration, Instant};

use crate::status::{DrainStatus, Status};

/// Time after the sources stopped before an empty queue counts as
/// delivered: the delivery task scans the spool every second (and is woken
/// at once), so by then it has adopted the last recordings.
pub const SETTLE: Duration = Duration::from_secs(3);

/// No progress (no recording delivered, no byte sent) for this long after a
/// failed attempt: the cloud is unreachable, the drain ends with the rest
/// left in the spool.
pub const STALL: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Calls,
    Delivery,
}

/// What the daemon does after a tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing yet.
    Wait,
    /// The SIPREC calls have ended: stop the passive sources, wake delivery.
    StopSources,
    /// Done (why, for the log): stop and exit 0.
    Exit(String),
}

/// A drain in progress.
#[derive(Debug)]
pub struct Drain {
    started: Instant,
    phase: Phase,
    /// When the delivery phase began.
    sources_stopped: Option<Instant>,
    /// Last time the spool's pending count went down (or delivery began).
    progress_at: Instant,
    pending: u64,
    delivered: u64,
    uploaded: u64,
}

/// Recordings still to be sent: recorded, queued, uploading.
pub fn pending(s: &Status) -> u64 {
    ["recorded", "queued", "uploading"]
        .iter()
        .map(|k| s.cloud.queue.get(*k).copied().unwrap_or(0))
        .sum()
}

impl Drain {
    pub fn new(now: Instant) -> Self {
        Drain {
            started: now,
            phase: Phase::Calls,
            sources_stopped: None,
            progress_at: now,
            pending: 0,
            delivered: 0,
            uploaded: 0,
        }
    }

    /// One tick: `calls` SIPREC dialogs are in progress; `s` is the status
    /// (its `drain` part is updated here).
    pub fn tick(&mut self, now: Instant, calls: usize, s: &mut Status) -> Step {
        s.draining = true;
        let step = match self.phase {
            Phase::Calls if calls > 0 => Step::Wait,
            Phase::Calls => {
                self.phase = Phase::Delivery;
                self.sources_stopped = Some(now);
                self.progress_at = now;
                self.pending = pending(s);
                self.delivered = s.cloud.delivered_total;
                self.uploaded = s.cloud.bytes_uploaded;
                Step::StopSources
            }
            Phase::Delivery => self.delivery(now, s),
        };
        s.drain = Some(DrainStatus {
            phase: match (&step, self.phase) {
                (Step::Exit(_), _) => "exiting",
                (_, Phase::Calls) => "calls",
                (_, Phase::Delivery) => "delivery",
            }
            .to_string(),
            since_s: now.saturating_duration_since(self.started).as_secs(),
            calls_in_progress: calls as u64,
        });
        step
    }

    fn delivery(&mut self, now: Instant, s: &Status) -> Step {
        let left = pending(s);
        let c = &s.cloud;
        // Progress: fewer to send, more delivered, or bytes going out (a
        // long upload).
        if left < self.pending
            || c.delivered_total > self.delivered
            || c.bytes_uploaded > self.uploaded
        {
            self.progress_at = now;
        }
        // The last attempt failed (and nothing moved since, see below): a
        // retry may be minutes away under backoff; do not wait for it.
        let failing = c.last_error.is_some();
        self.pending = left;
        self.delivered = c.delivered_total;
        self.uploaded = c.bytes_uploaded;
        let settled = self
            .sources_stopped
            .is_some_and(|t| now.saturating_duration_since(t) >= SETTLE);
        if !settled {
            return Step::Wait;
        }
        if !c.configured {
            return Step::Exit(format!(
                "no cloud configured: {left} recordings stay in the spool"
            ));
        }
        if let Some(e) = &c.spool_error {
            return Step::Exit(format!(
                "the spool database is unusable ({e}): the recordings stay in the spool"
            ));
        }
        if left == 0 {
            return Step::Exit("the spool is delivered".into());
        }
        if let Some(why) = &c.paused {
            return Step::Exit(format!(
                "uploads are paused ({why}): {left} recordings stay in the spool for the next start"
            ));
        }
        if failing && now.saturating_duration_since(self.progress_at) >= STALL {
            return Step::Exit(format!(
                "the cloud is unreachable ({}; nothing delivered for {} s): {left} recordings stay in the spool for the next start",
                c.last_error.as_deref().unwrap_or("failing"),
                STALL.as_secs()
            ));
        }
        Step::Wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(queued: u64, delivered: u64) -> Status {
        let mut s = Status::default();
        s.cloud.configured = true;
        s.cloud.queue.insert("queued".into(), queued);
        s.cloud.queue.insert("delivered".into(), delivered);
        s.cloud.delivered_total = delivered;
        s
    }

    #[test]
    fn waits_for_calls_then_delivers_then_exits() {
        let t0 = Instant::now();
        let mut d = Drain::new(t0);
        let mut s = status(2, 0);
        assert_eq!(d.tick(t0, 3, &mut s), Step::Wait);
        assert!(s.draining);
        assert_eq!(s.drain.as_ref().unwrap().phase, "calls");
        assert_eq!(
            d.tick(t0 + Duration::from_secs(1), 0, &mut s),
            Step::StopSources
        );
        assert_eq!(s.drain.as_ref().unwrap().phase, "delivery");
        // Nothing judged before the spool settled, even with an empty queue.
        let mut empty = status(0, 2);
        assert_eq!(
            d.tick(t0 + Duration::from_secs(2), 0, &mut empty),
            Step::Wait
        );
        s = status(1, 1);
        assert_eq!(d.tick(t0 + Duration::from_secs(5), 0, &mut s), Step::Wait);
        s = status(0, 2);
        assert_eq!(
            d.tick(t0 + Duration::from_secs(6), 0, &mut s),
            Step::Exit("the spool is delivered".into())
        );
        assert_eq!(s.drain.as_ref().unwrap().phase, "exiting");
    }

    #[test]
    fn paused_or_unreachable_cloud_ends_the_drain_with_the_reason() {
        let t0 = Instant::now();
        let mut d = Drain::new(t0);
        let mut s = status(4, 0);
        assert_eq!(d.tick(t0, 0, &mut s), Step::StopSources);
        s.cloud.paused = Some("402 Payment Required".into());
        match d.tick(t0 + SETTLE, 0, &mut s) {
            Step::Exit(why) => assert!(why.contains("paused") && why.contains("4 recordings")),
            other => panic!("{other:?}"),
        }
        // Unreachable: the last attempt failed (before the drain: its next
        // retry is far away under backoff), nothing moves for STALL.
        let mut d = Drain::new(t0);
        let mut s = status(4, 0);
        s.cloud.last_error = Some("connection refused".into());
        assert_eq!(d.tick(t0, 0, &mut s), Step::StopSources);
        assert_eq!(d.tick(t0 + SETTLE, 0, &mut s), Step::Wait);
        assert_eq!(
            d.tick(t0 + STALL - Duration::from_secs(1), 0, &mut s),
            Step::Wait
        );
        match d.tick(t0 + STALL, 0, &mut s) {
            Step::Exit(why) => assert!(why.contains("unreachable"), "{why}"),
            other => panic!("{other:?}"),
        }
        // A slow cloud that delivers is not unreachable, nor one long
        // upload that sends bytes.
        let mut d = Drain::new(t0);
        let mut s = status(40, 0);
        assert_eq!(d.tick(t0, 0, &mut s), Step::StopSources);
        for i in 1..=60u64 {
            let mut s = status(40 - i / 2, i / 2);
            s.cloud.attempts = i;
            s.cloud.last_error = Some("timeout".into());
            assert_eq!(d.tick(t0 + Duration::from_secs(i), 0, &mut s), Step::Wait);
        }
        let mut d = Drain::new(t0);
        let mut s = status(1, 0);
        s.cloud.last_error = Some("timeout".into());
        assert_eq!(d.tick(t0, 0, &mut s), Step::StopSources);
        for i in 1..=60u64 {
            s.cloud.bytes_uploaded = i * 1000;
            assert_eq!(d.tick(t0 + Duration::from_secs(i), 0, &mut s), Step::Wait);
        }
        // No cloud: exits once settled.
        let mut d = Drain::new(t0);
        let mut s = status(0, 0);
        s.cloud.configured = false;
        assert_eq!(d.tick(t0, 0, &mut s), Step::StopSources);
        assert!(matches!(d.tick(t0 + SETTLE, 0, &mut s), Step::Exit(w) if w.contains("no cloud")));
    }
}
