//! The engine host: what every live source does around its [`CallEngine`],
//! written once (sniffing, SIPREC, HEP; `import` drives the engine from a
//! file and needs none of the timing).
//!
//! In: the source's inputs (frames or segments, fed straight to
//! [`EngineHost::engine`] with [`EngineHost::out`] as the sink), the clock
//! the inputs are stamped with, and [`HostControl`]s from the daemon (each
//! source carries them on the path that wakes its loop: its input queue, or
//! for sniffing a control queue with a doorbell fd).
//! Out: recordings (through the [`RecordingDir`]), liveness beats, and a
//! "publish now" answer for the source's status report.
//!
//! Promises:
//! - The source blocks for input for [`EngineHost::wait`]: until the
//!   engine's next deadline ([`CallEngine::poll_timeout`]) or the next
//!   status report, never longer; with no call in progress and nothing to
//!   report it blocks without a timeout, so an idle daemon does not wake up
//!   (its liveness entry says "waiting", which the watchdog accepts). While
//!   pairs are being finished in the background it wakes every
//!   [`FINISHED_POLL`] to collect them.
//! - [`EngineHost::tick`] after every input or wake-up runs the engine's
//!   timeout when due and says when the status is due:
//!   at most every [`PUBLISH_EVERY`] while anything happens, once more when
//!   the source falls idle. It beats the liveness on every input or
//!   wake-up (at most every [`BEAT_EVERY`]), whether or not there is
//!   anything to report: a loop woken by a timer with nothing new (a
//!   recording a full disk stranded, tried again every 10 s) is alive, and
//!   the watchdog must not kill it.
//! - [`EngineHost::finish`] closes every open call with a reason and
//!   returns once every pair is finished.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pbx_core::call::{CallEngine, EndReason, EngineConfig};
use pbx_core::Timestamp;

use crate::control::ControlRequest;
use crate::health::Liveness;
use crate::recording::{RecordingDir, RecordingSettings};

/// How often a busy source reports its status.
pub(crate) const PUBLISH_EVERY: Duration = Duration::from_millis(200);

/// The liveness is beaten at most this often (every input or wake-up
/// beats it once this long has passed since the last beat).
const BEAT_EVERY: Duration = Duration::from_millis(200);

/// How often a source looks for pairs finished in the background while
/// any are being finished (their counters, SIPREC's held BYEs).
const FINISHED_POLL: Duration = Duration::from_millis(5);

/// What the daemon tells a running engine.
pub(crate) enum HostControl {
    /// Recording settings for the calls that begin from now on (a reload).
    Settings(Box<RecordingSettings>),
    /// A control API request (`/v1/calls`: list, pause, resume), answered
    /// at once.
    Api(ControlRequest),
}

/// How long a shutdown finishes the recordings of the calls it ends (WAV
/// header, fsync, SHA-256; with encryption at rest each is sealed anew:
/// 300 ten-minute calls took 13-32 s). What is left then is made durable
/// and finished by the next start's recovery, as the finish would have
/// (docs/durability.md, "A stop with many long calls").
pub(crate) const FINISH_AT_STOP: Duration = Duration::from_secs(4);

/// Set when the process stops (SIGTERM, SIGINT): only then is the finishing
/// bounded by [`FINISH_AT_STOP`]. A source stopped by a reload while the
/// daemon runs on finishes every recording (no next start to leave them to).
pub(crate) static EXITING: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// A [`CallEngine`], its recordings and its timing (see the module docs).
pub(crate) struct EngineHost {
    name: String,
    pub(crate) engine: CallEngine,
    pub(crate) out: RecordingDir,
    live: Arc<Liveness>,
    /// When the status was last reported; `None`: reported since the last
    /// activity (nothing new to say).
    last_publish: Option<Instant>,
    /// Something happened since the last report.
    dirty: bool,
    /// When the liveness was last beaten; `None`: at the next tick (the
    /// loop said it waits: its entry no longer counts beats).
    last_beat: Option<Instant>,
    /// The clock this host's inputs are stamped with (the wall clock when
    /// sniffing, the steady wall clock for SIPREC): a pause or resume by
    /// the API takes effect at its now. `None` for HEP, whose inputs carry
    /// the agents' capture times: there it takes effect at the engine's
    /// latest time.
    pub(crate) clock: Option<fn() -> Timestamp>,
}

impl EngineHost {
    pub(crate) fn new(
        name: &str,
        cfg: EngineConfig,
        mut out: RecordingDir,
        live: Arc<Liveness>,
    ) -> Self {
        live.beat(name);
        // Ended recordings are finished on worker threads
        // (recording::finisher): the engine goes on with the calls still
        // running (BENCHMARKS.md, "Call end → delivered").
        out.finish_in_background();
        EngineHost {
            name: name.to_string(),
            engine: CallEngine::new(cfg),
            out,
            live,
            last_publish: None,
            dirty: true,
            last_beat: Some(Instant::now()),
            clock: Some(crate::sys::now),
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The name this host's liveness and status go under changes (a
    /// draining SIPREC instance).
    pub(crate) fn rename(&mut self, name: &str) {
        if name != self.name {
            self.live.forget(&self.name);
            self.name = name.to_string();
            self.live.beat(name);
            self.last_beat = Some(Instant::now());
        }
    }

    /// How long the source may block for input, `now` on the inputs' clock;
    /// `None`: until input comes (nothing to do before).
    pub(crate) fn wait(&self, now: Timestamp) -> Option<Duration> {
        let engine = self
            .engine
            .poll_timeout()
            .map(|d| Duration::from_micros(u64::try_from(d.micros_since(now)).unwrap_or(0)));
        let report = self.dirty.then(|| {
            self.last_publish.map_or(Duration::ZERO, |t| {
                PUBLISH_EVERY.saturating_sub(t.elapsed())
            })
        });
        // Pairs being finished are collected as they come.
        let finishing = (self.out.finishing() > 0).then_some(FINISHED_POLL);
        // Recordings a full disk left unfinished are tried again.
        let stranded = self.out.stranded_retry();
        [engine, report, finishing, stranded]
            .into_iter()
            .flatten()
            .min()
    }

    /// The source is about to block without a timeout ([`Self::wait`] said
    /// `None`): the watchdog must not take the silence for a hang.
    pub(crate) fn idle(&mut self) {
        self.live.waiting(&self.name);
        self.last_beat = None;
    }

    /// After an input (`input`: true) or a wake-up: the engine's timeout if
    /// due, a liveness beat. True when the source should publish its status
    /// now.
    pub(crate) fn tick(&mut self, now: Timestamp, input: bool) -> bool {
        // The loop woke up: it is alive, with or without news to report.
        if self.last_beat.is_none_or(|t| t.elapsed() >= BEAT_EVERY) {
            self.live.beat(&self.name);
            self.last_beat = Some(Instant::now());
        }
        self.dirty |= input;
        self.dirty |= self.out.collect();
        if self.engine.poll_timeout().is_some_and(|d| d <= now) {
            self.engine.handle_timeout(now, &mut self.out);
            self.dirty = true;
        }
        if !self.dirty {
            return false;
        }
        let due = self
            .last_publish
            .is_none_or(|t| t.elapsed() >= PUBLISH_EVERY);
        if due {
            self.last_publish = Some(Instant::now());
            // Nothing new after this report unless an input or a timeout
            // comes: then one more report, then silence.
            self.dirty = input || self.engine.poll_timeout().is_some();
        }
        due
    }

    pub(crate) fn apply(&mut self, c: HostControl) {
        match c {
            HostControl::Settings(s) => {
                crate::recording::apply_settings(&mut self.engine, &mut self.out, *s)
            }
            HostControl::Api(req) => {
                let now = self.clock.map(|c| c());
                crate::control::answer(&mut self.engine, req, now, &mut self.out)
            }
        }
        self.dirty = true;
    }

    /// End every open call (shutdown, end of input); the liveness entry goes.
    /// When the process stops ([`EXITING`]) the recordings are finished
    /// within [`FINISH_AT_STOP`]; those left then are made durable for the
    /// next start to finish (CONTRACT §1: a stop ends within 10 s).
    pub(crate) fn finish(&mut self, reason: EndReason) {
        self.engine.finish(reason, &mut self.out);
        if reason == EndReason::Shutdown && EXITING.load(std::sync::atomic::Ordering::Relaxed) {
            self.out.wait_finished_within(FINISH_AT_STOP);
        } else {
            self.out.wait_finished();
        }
        self.live.forget(&self.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recording::{RecordingContext, RoleRules};

    /// A loop that wakes up on a timer with nothing new to report (a
    /// recording a full disk stranded, tried again every 10 s: the wait
    /// never says "idle") still beats: the watchdog takes it for alive.
    #[test]
    fn a_wake_up_with_nothing_to_report_still_beats_the_liveness() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = RecordingContext {
            agent_id: "agent-a".into(),
            source: "sniff",
            min_duration: Duration::ZERO,
            seal: None,
            tap: None,
            roles: RoleRules::default(),
        };
        let out = RecordingDir::new(dir.path(), ctx).unwrap();
        let live = Liveness::new();
        let mut host = EngineHost::new("sniff", EngineConfig::default(), out, live.clone());
        let t = Timestamp::from_secs(1_800_000_000);
        // The first report, then nothing new.
        assert!(host.tick(t, false));
        assert!(!host.dirty);
        let limit = Duration::from_millis(300);
        std::thread::sleep(limit + Duration::from_millis(50));
        assert_eq!(live.stalled(limit), vec!["sniff".to_string()]);
        // A timer wake-up (no input, no news): no report, but a beat.
        assert!(!host.tick(t.add_micros(10_000_000), false));
        assert!(
            live.stalled(limit).is_empty(),
            "a loop that wakes up is alive"
        );
    }
}
