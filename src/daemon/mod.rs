//! `pbx-edge run`: the long-running service.
//!
//! Shape (after tokio's mini-redis): the main task owns configuration, signals
//! and supervision; each source runs in its own thread with its own
//! [`pbx_core::call::CallEngine`] and writes recordings into the spool; the
//! health endpoint serves copies of the shared [`Status`]. Shutdown is a flag
//! every source loop checks at least every 200 ms; the source threads joining
//! proves every recording was closed.
//!
//! - Start-up: load and check the config, create the spool (0700), complete
//!   recordings a crash cut off, bind the health endpoint and the sources, tell
//!   systemd `READY=1` (Type=notify) with a `STATUS=` line.
//! - A source that cannot start (its address not up yet, its port taken,
//!   its interface missing) is tried again on the supervision tick with a
//!   backoff ([`Retries`]: 1 s doubling to 30 s) until it starts; meanwhile
//!   `/readyz` and `STATUS=` say so, and its start is logged.
//! - Watchdog: when systemd sets `WATCHDOG_USEC`, `WATCHDOG=1` is sent at half
//!   that interval, but only while every source loop has beaten recently (a
//!   stuck engine gets the daemon restarted).
//! - SIGTERM / SIGINT: stop taking calls, close every active recording (marked
//!   `shutdown`, `truncated`), exit 0 within 10 s.
//! - Drain (`pbx-edge drain`, `POST /v1/drain` from loopback, SIGUSR1): no
//!   new calls (SIPREC INVITE and OPTIONS answered 503), the calls in
//!   progress finish, the spool is delivered, exit 0 ([`drain`]). A reload
//!   is ignored while draining; SIGTERM still stops at once.
//! - SIGHUP: re-read the config; a bad new config is rejected with the reason
//!   logged and the old one kept. Calls in progress are never cut: settings
//!   that need no new socket go to the running sources (new calls take them);
//!   a new SIPREC listener binds first and the old one drains (or, needing
//!   the old one's port, replaces it when no call is in progress); a new
//!   sniff capture is handed to the running engine (`reload_siprec`,
//!   `reload_sniff`).

mod notify;
mod siprec;
use notify::{monotonic_usec, notify};
use siprec::{reload_siprec, replace_siprec, start_siprec};

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::watch;

use crate::config::Config;
use crate::control::Controls;
use crate::health::{self, Liveness};
use crate::recording::{self, RecordingDir};
use crate::sources::handle::{context, Reload, SourceHandle};
use crate::sources::sniff;
use crate::status::{SharedStatus, SourceStatus, Status};

/// The supervision tick while there is work, and while there is none.
const BUSY_TICK: Duration = Duration::from_secs(1);
const IDLE_TICK: Duration = Duration::from_secs(10);
/// How often a busy daemon looks whether a burst left its heap mostly
/// free (`sys::trim_heap_if_mostly_free`).
const TRIM_EVERY: Duration = Duration::from_secs(5);

pub mod drain;

/// The sources the daemon starts, reloads and stops alike (SIPREC has
/// its own listener swap: [`reload_siprec`]).
const PASSIVE: [&str; 3] = ["sniff", "folder", "hep"];

/// The longest wait between two attempts to start a source.
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Whether source `name` is enabled in `cfg`.
fn enabled(cfg: &Config, name: &str) -> bool {
    let s = &cfg.sources;
    match name {
        "siprec" => s.siprec.enabled,
        "sniff" => s.sniff.enabled,
        "folder" => s.folder.enabled,
        "hep" => s.hep.enabled,
        _ => false,
    }
}

/// Enabled sources that could not start (a bind error, a missing
/// interface): tried again on the supervision tick, 1 s after the first
/// failure, then twice as long after each one, at most [`RETRY_MAX`].
#[derive(Debug, Default)]
struct Retries {
    /// Name, failed attempts, when the next one is due.
    failed: Vec<(&'static str, u32, Instant)>,
}

impl Retries {
    /// The wait after `attempts` failed attempts.
    fn backoff(attempts: u32) -> Duration {
        let exp = attempts.saturating_sub(1).min(8);
        (Duration::from_secs(1) * (1u32 << exp)).min(RETRY_MAX)
    }

    /// Source `name` failed to start (again) at `now`: its failed attempts.
    fn failed(&mut self, name: &'static str, now: Instant) -> u32 {
        let n = match self.failed.iter_mut().find(|e| e.0 == name) {
            Some(e) => {
                e.1 += 1;
                e.1
            }
            None => {
                self.failed.push((name, 1, now));
                1
            }
        };
        if let Some(e) = self.failed.iter_mut().find(|e| e.0 == name) {
            e.2 = now + Self::backoff(n);
        }
        n
    }

    /// Source `name` is not running: tried again (unless it already is).
    fn missing(&mut self, name: &'static str, now: Instant) {
        if !self.failed.iter().any(|e| e.0 == name) {
            self.failed(name, now);
        }
    }

    /// Source `name` runs (or is no longer wanted): its failed attempts
    /// until then, if any.
    fn started(&mut self, name: &str) -> Option<u32> {
        let i = self.failed.iter().position(|e| e.0 == name)?;
        Some(self.failed.remove(i).1)
    }

    /// The sources whose next attempt is due at `now`.
    fn due(&self, now: Instant) -> Vec<&'static str> {
        self.failed
            .iter()
            .filter(|e| e.2 <= now)
            .map(|e| e.0)
            .collect()
    }

    fn is_empty(&self) -> bool {
        self.failed.is_empty()
    }

    /// After a start or a reload: every enabled source not running is
    /// retried (a reload that failed again counts as an attempt), the
    /// others are forgotten; the status says how often each has failed.
    fn sync(&mut self, cfg: &Config, is_running: impl Fn(&str) -> bool, status: &SharedStatus) {
        let now = Instant::now();
        for name in std::iter::once("siprec").chain(PASSIVE) {
            if enabled(cfg, name) && !is_running(name) {
                self.failed(name, now);
            } else {
                self.started(name);
            }
        }
        self.publish(status);
    }

    /// The failed attempts into the status of each source (`/readyz`,
    /// `/status`, `STATUS=`).
    fn publish(&self, status: &SharedStatus) {
        if let Ok(mut s) = status.lock() {
            for (name, src) in s.sources.iter_mut() {
                src.start_failures = self
                    .failed
                    .iter()
                    .find(|e| e.0 == name)
                    .map_or(0, |e| u64::from(e.1));
            }
        }
    }
}

/// Apply `[stream]` (start, reload): new calls stream with these settings.
/// A token or CA file that cannot be read turns streaming off, said in
/// /status and /readyz (which stays ready: streams are best effort).
fn configure_stream(cfg: &Config, hub: &crate::stream::StreamHub, status: &SharedStatus) {
    let error = match crate::stream::StreamSettings::from_config(cfg) {
        Ok(s) => {
            if let Some(s) = &s {
                tracing::info!(url = %crate::logmask::url_for_log(&s.url), "live streaming of calls on");
            }
            hub.configure(s);
            None
        }
        Err(e) => {
            tracing::error!("live streaming off: {e}");
            hub.configure(None);
            Some(e)
        }
    };
    if let Ok(mut s) = status.lock() {
        s.stream = crate::status::StreamStatus {
            config_error: error,
            ..hub.snapshot()
        };
    }
}

/// Start source `name` from `cfg` if it is enabled (its status entry says
/// why not, when it cannot start).
fn start_source(
    name: &str,
    cfg: &Config,
    status: &SharedStatus,
    live: &Arc<Liveness>,
    controls: &Controls,
) -> Option<Box<dyn SourceHandle>> {
    fn boxed(h: impl SourceHandle + 'static) -> Box<dyn SourceHandle> {
        Box::new(h)
    }
    let h = match name {
        "sniff" => sniff::SniffSource::start(cfg, status, live).map(boxed),
        "folder" => crate::sources::folder::start_source(cfg, status, live).map(boxed),
        "hep" => crate::sources::hep::start_source(cfg, status, live).map(boxed),
        _ => None,
    }?;
    // Its calls in progress can be listed, paused and resumed (/v1/calls).
    if let Some(send) = h.api() {
        controls.register(h.name(), send);
    }
    Some(h)
}

/// The files the start's recovery could not complete (an I/O error, a
/// file that cannot be opened) are tried again while the daemon runs, on
/// a thread of their own: exactly those files, never the `.part`s of calls
/// in progress beside them ([`recording::recover_again`]), after 1 min,
/// then less and less often ([`recording::recovery_retry_delay`]) until
/// none is left. `/status` shows how many wait (`spool.recovery_pending`)
/// and how many were completed so (`spool.repaired_later`); each try that
/// leaves some is logged. A stop in the middle of a try is a crash in the
/// middle of a recovery: the next start's recovery takes it up.
fn retry_recovery(
    dir: &std::path::Path,
    ctx: &recording::RecordingContext,
    left: Vec<std::path::PathBuf>,
    status: &SharedStatus,
    stream: &crate::stream::StreamHub,
) {
    let (dir, ctx, status, stream) = (
        dir.to_path_buf(),
        ctx.clone(),
        status.clone(),
        stream.clone(),
    );
    let set_pending = |status: &SharedStatus, n: usize| {
        if let Ok(mut s) = status.lock() {
            s.spool.recovery_pending = n as u64;
        }
    };
    set_pending(&status, left.len());
    let first = recording::recovery_retry_delay(0);
    tracing::warn!(
        files = left.len(),
        "recovery left files it could not complete; tried again in {} s",
        first.as_secs()
    );
    let spawned = std::thread::Builder::new()
        .name("recovery-retry".into())
        .spawn(move || {
            let mut left = left;
            let mut tries = 0u32;
            while !left.is_empty() {
                std::thread::sleep(recording::recovery_retry_delay(tries));
                tries = tries.saturating_add(1);
                let done = recording::recover_again(&dir, &left, &ctx);
                if !done.ids.is_empty() {
                    tracing::warn!(
                        count = done.ids.len(),
                        "completed recordings cut off by an earlier stop (a later try)"
                    );
                    if let Ok(mut s) = status.lock() {
                        s.spool.repaired_later += done.ids.len() as u64;
                    }
                    if stream.enabled() {
                        let keys = ctx.seal.clone();
                        for id in &done.ids {
                            let json = dir.join(format!("{id}.json"));
                            if let Some(meta) = recording::read_recording(&json, keys.as_deref())
                                .ok()
                                .and_then(|b| serde_json::from_slice(&b).ok())
                            {
                                stream.resume_recovered(&dir, meta, keys.clone());
                            }
                        }
                    }
                }
                left = done.left;
                set_pending(&status, left.len());
                if !left.is_empty() {
                    tracing::warn!(
                        files = left.len(),
                        tries,
                        "recovery: files still cannot be completed; tried again in {} s",
                        recording::recovery_retry_delay(tries).as_secs()
                    );
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!("recovery is not tried again before the next start: {e}");
    }
}

/// The time a stop on SIGTERM aims to end within (CONTRACT §1: 10 s),
/// with a margin for the process's exit.
const STOP_BUDGET: Duration = Duration::from_secs(9);

/// What delivery gets to stop when the sources took the whole budget: the
/// running uploads are dropped (their progress is saved) and the spool
/// closed.
const DELIVERY_STOP_FLOOR: Duration = Duration::from_millis(300);

/// Stop `sources` in parallel (they share the stop budget) and wait for
/// every one.
async fn stop_all(sources: impl IntoIterator<Item = Box<dyn SourceHandle>>) {
    let stopping: Vec<_> = sources
        .into_iter()
        .map(|h| tokio::spawn(h.stop()))
        .collect();
    for t in stopping {
        let _ = t.await;
    }
}

/// SIGHUP for the [`PASSIVE`] sources: each applies what it can in place
/// (calls in progress go on); the others are stopped and started again;
/// newly enabled ones start, disabled ones stop.
async fn reload_sources(
    cfg: &Config,
    changed: &[&'static str],
    status: &SharedStatus,
    live: &Arc<Liveness>,
    controls: &Controls,
    running: &mut Vec<Box<dyn SourceHandle>>,
) {
    let mut keep = Vec::new();
    for mut h in std::mem::take(running) {
        match h.reload(cfg, changed) {
            Reload::Applied => keep.push(h),
            Reload::Restart => {
                tracing::info!(source = h.name(), "restarting for the new configuration");
                h.stop().await;
            }
        }
    }
    for name in PASSIVE {
        if !keep.iter().any(|h| h.name() == name) {
            keep.extend(start_source(name, cfg, status, live, controls));
        }
    }
    *running = keep;
}

/// Free bytes on the file system holding `dir` (0 when unknown).
fn free_bytes(dir: &Path) -> u64 {
    crate::sys::free_bytes(dir).unwrap_or(0)
}

/// Refresh the spool figures of the status.
fn scan_spool(cfg: &Config, status: &SharedStatus) {
    let dir = &cfg.spool.dir;
    let (mut files, mut bytes) = (0u64, 0u64);
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            // The disk-full reserve is space held for the queue, not spool content.
            // Nor is the RTP port pool's small state file.
            if e.file_name() == crate::spool::RESERVE_FILE
                || e.file_name() == crate::spool::WAKE_FILE
                || e.file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with(crate::sources::siprec::ports::STATE_FILE))
            {
                continue;
            }
            if let Ok(m) = e.metadata() {
                if m.is_file() {
                    files += 1;
                    bytes += m.len();
                }
            }
        }
    }
    let probe = dir.join(".pbx-edge-write-probe");
    let writable = recording::create_private_file(&probe).is_ok();
    let _ = std::fs::remove_file(&probe);
    let free = free_bytes(dir);
    // Since the start, whatever became of the sources that wrote them (a
    // sum over the sources' entries went backwards when a replaced SIPREC
    // listener's entry went, or a restarted source began again at 0).
    let (w, f, b) = recording::TOTALS.snapshot();
    if let Ok(mut s) = status.lock() {
        let sp = &mut s.spool;
        sp.dir = dir.display().to_string();
        sp.files = files;
        sp.bytes = bytes;
        sp.max_size = cfg.spool.max_size;
        sp.writable = writable;
        sp.free_bytes = free;
        sp.recordings_written = w;
        sp.damaged_records = recording::DAMAGED_RECORDS.load(std::sync::atomic::Ordering::Relaxed);
        sp.recordings_failed = f;
        sp.bytes_written = b;
    }
}

fn status_line(status: &SharedStatus) -> String {
    let s = status.lock().map(|s| s.clone()).unwrap_or_default();
    let calls: u64 = s.sources.values().map(|x| x.recording_calls).sum();
    let recorded: u64 = s.sources.values().map(|x| x.engine.calls_recorded).sum();
    let mut line = format!(
        "recording {calls} calls, {recorded} recorded, spool {} files",
        s.spool.files
    );
    for (name, src) in s.sources.iter().filter(|(_, x)| !x.up) {
        let why = src.error.as_deref().unwrap_or("not running");
        let _ = write!(line, "; {name} down: {why}");
        if src.start_failures > 0 {
            line.push_str(" (retrying)");
        }
    }
    line
}

/// What a reload cannot apply (`health.listen`, `log.format`): a warning
/// naming each key that needs a restart, and `new` keeps the running
/// values, so the daemon goes on reporting the address it really listens
/// on.
fn keep_restart_only(running: &Config, new: &mut Config) {
    if new.health.listen != running.health.listen {
        tracing::warn!(
            "health.listen changed to {} in the file: not applied, the daemon keeps listening on {} until it is restarted (systemctl restart pbx-edge); meanwhile `pbx-edge status` and `pbx-edge drain`, which read the file, do not find it",
            new.health.listen,
            running.health.listen
        );
        new.health.listen = running.health.listen;
    }
    if new.log.format != running.log.format {
        tracing::warn!(
            "log.format changed to {:?} in the file: not applied, the log keeps its format ({:?}) until the daemon is restarted (systemctl restart pbx-edge)",
            new.log.format,
            running.log.format
        );
        new.log.format = running.log.format;
    }
}

/// Whether source `name` runs: `siprec` whether a SIPREC listener serves
/// (or waits to be replaced), the others whether they are in `running`.
fn running_source(name: &str, siprec: bool, running: &[Box<dyn SourceHandle>]) -> bool {
    match name {
        "siprec" => siprec,
        _ => running.iter().any(|h| h.name() == name),
    }
}

/// Start the delivery task; on an error (another process holds the
/// spool's delivery lock, the spool directory cannot be created) `/readyz`
/// says why and the caller tries again later. `last` is the error logged
/// last (the same one is not logged every second).
fn start_delivery(
    cfg: &Config,
    status: &SharedStatus,
    last: &mut Option<String>,
) -> Option<crate::delivery::DeliveryHandle> {
    match crate::delivery::start(cfg, status.clone()) {
        Ok(d) => {
            if last.take().is_some() {
                tracing::info!("delivery started");
            }
            Some(d)
        }
        Err(e) => {
            let msg = format!("delivery not started: {e}");
            if last.as_ref() != Some(&msg) {
                tracing::error!("{msg} (tried again every second)");
            }
            if let Ok(mut s) = status.lock() {
                s.cloud.spool_error = Some(msg.clone());
            }
            *last = Some(msg);
            None
        }
    }
}

/// A busy daemon: the heap a burst left free (thousands of calls set up
/// at once: twice the memory in use while the engine caught up) goes back
/// to the system, so that the resident memory follows the calls in
/// progress, not the largest burst so far.
fn trim_heap_after_burst() {
    tokio::task::spawn_blocking(|| {
        let began = Instant::now();
        let t = crate::sys::trim_heap_if_mostly_free();
        if t.trimmed {
            tracing::debug!(
                in_use_kib = t.in_use / 1024,
                resident_beyond_kib = t.beyond_heap / 1024,
                took_us = began.elapsed().as_micros() as u64,
                "busy: the heap's free memory given back"
            );
        }
    });
}

/// The daemon has become idle (after start-up or a busy spell): the code
/// and read-only data that work mapped, and the heap's free memory, go
/// back to the system (`sys::release_idle_memory`; the pages stay in the
/// page cache). An idle daemon's resident memory is then what it uses.
/// On the blocking pool: trimming a large heap takes its arenas' locks
/// for a while.
fn release_idle_memory() {
    tokio::task::spawn_blocking(|| match crate::sys::release_idle_memory() {
        Ok(r) => tracing::debug!(
            file_kib = r.file_bytes / 1024,
            mappings = r.mappings,
            "idle: unused pages of the program's files given back"
        ),
        Err(e) => tracing::debug!("idle: pages not given back: {e}"),
    });
}

/// `pbx-edge run [--config FILE]`.
/// For the person who started it: where it listens, where recordings go and
/// how to send it a test call (stdout, once at start; the logs go on as
/// before).
fn print_banner(cfg: &Config) {
    use std::io::Write;
    let spool = std::fs::canonicalize(&cfg.spool.dir).unwrap_or_else(|_| cfg.spool.dir.clone());
    let mut t = format!(
        "pbx-edge {} is running (SIGTERM or Ctrl-C stops it)\n  health:     http://{}/readyz  (also /healthz /metrics /status)\n",
        env!("CARGO_PKG_VERSION"),
        cfg.health.listen
    );
    let sc = &cfg.sources.siprec;
    if sc.enabled {
        t += &format!(
            "  SIPREC:     {} (UDP and TCP), RTP ports {}-{}\n",
            sc.listen,
            sc.rtp_ports.start(),
            sc.rtp_ports.end()
        );
    }
    let sn = &cfg.sources.sniff;
    if sn.enabled {
        t += &format!(
            "  sniffing:   interface {}{}\n",
            sn.interface,
            sn.filter
                .as_deref()
                .map(|f| format!(", filter {f}"))
                .unwrap_or_default()
        );
    }
    if cfg.sources.folder.enabled {
        t += &format!("  folder:     {}\n", cfg.sources.folder.path.display());
    }
    if cfg.sources.hep.enabled {
        t += &format!("  HEP:        {} (UDP and TCP)\n", cfg.sources.hep.listen);
    }
    t += &format!(
        "  recordings: {}  (pbx-edge spool list)\n  cloud:      {}\n",
        spool.display(),
        if cfg.cloud.url.is_empty() {
            "not configured: recordings stay in the spool".to_string()
        } else {
            // Checked at load: no credentials in it.
            format!("{} ({:?})", cfg.cloud.url, cfg.cloud.protocol)
        }
    );
    if sc.enabled {
        t += &format!(
            "  test call:  cargo run -p pbx-testgen --bin siprec-load -- --srs {} --calls 1 --seconds 5   (from a checkout)\n",
            sc.listen
        );
    }
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(t.as_bytes());
    let _ = out.flush();
}

pub fn run(config_path: Option<PathBuf>) -> Result<ExitCode> {
    let cfg = match Config::load(config_path.as_deref()) {
        Ok(c) => c,
        Err(errs) => {
            eprintln!("{errs}");
            return Ok(ExitCode::from(1));
        }
    };
    recording::create_private_dir(&cfg.spool.dir)
        .with_context(|| format!("cannot create spool directory {}", cfg.spool.dir.display()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("pbx-edge-rt")
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(main_loop(cfg, config_path))
}

async fn main_loop(mut cfg: Config, config_path: Option<PathBuf>) -> Result<ExitCode> {
    use tokio::signal::unix::{signal, SignalKind};

    // Before anything answers (the health endpoint, READY=1): a SIGHUP's
    // default action ends the process, and a reload or stop may come as soon
    // as /healthz answers.
    let mut sigterm = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let mut sigusr1 = signal(SignalKind::user_defined1()).context("SIGUSR1 handler")?;
    // `POST /v1/drain` on the health listener.
    let drain_request = Arc::new(tokio::sync::Notify::new());

    for w in cfg.warnings() {
        tracing::warn!("{w}");
    }
    let started = Instant::now();
    let status: SharedStatus = Arc::new(Mutex::new(Status {
        version: env!("CARGO_PKG_VERSION"),
        agent_id: cfg.agent.id.clone(),
        started_at: crate::sys::now().to_rfc3339(),
        started: Some(started),
        config_file: Config::resolve_path(config_path.as_deref()).map(|p| p.display().to_string()),
        ..Status::default()
    }));
    if let Ok(mut s) = status.lock() {
        s.cloud.configured = !cfg.cloud.url.is_empty();
    }
    let live = Liveness::new();
    let stream = crate::stream::StreamHub::new(tokio::runtime::Handle::current());
    configure_stream(&cfg, &stream, &status);
    stream.publish_to(status.clone());
    crate::sources::handle::set_stream_tap(stream.tap());

    // The health endpoint answers first: /healthz while the spool is
    // recovered below (it can take a while after a crash on a slow disk),
    // /readyz not before delivery has the queue open.
    let (stop_tx, stop_rx) = watch::channel(false);
    let listener = health::bind(cfg.health.listen)
        .await
        .with_context(|| format!("cannot listen on {} (health.listen)", cfg.health.listen))?;
    // The engines answer the control API (`/v1/calls`) through this.
    let controls = Controls::new();
    controls.set_allow(&cfg.health.control_allow);
    tokio::spawn(health::serve(
        listener,
        status.clone(),
        live.clone(),
        controls.clone(),
        stop_rx.clone(),
        drain_request.clone(),
    ));

    // Recordings a crash cut off (/readyz says so meanwhile).
    let set_spool_state = |why: &str| {
        if let Ok(mut s) = status.lock() {
            s.cloud.spool_error = Some(why.into());
        }
    };
    set_spool_state("not opened yet: recovering recordings cut off by an earlier stop");
    let recovering = Instant::now();
    let recovery_ctx = context(&cfg, "sniff");
    match recording::recover_spool(&cfg.spool.dir, &recovery_ctx) {
        Ok(recording::Recovery { ids, left }) => {
            if !left.is_empty() {
                retry_recovery(&cfg.spool.dir, &recovery_ctx, left, &status, &stream);
            }
            if !ids.is_empty() {
                tracing::warn!(
                    count = ids.len(),
                    took_ms = recovering.elapsed().as_millis() as u64,
                    "completed recordings cut off by an earlier stop"
                );
                if let Ok(mut s) = status.lock() {
                    s.spool.repaired_at_start = ids.len() as u64;
                }
                // Their live streams, broken by the crash, are resumed to
                // their end (CONTRACT §5).
                if stream.enabled() {
                    let keys = recovery_ctx.seal.clone();
                    for id in &ids {
                        let json = cfg.spool.dir.join(format!("{id}.json"));
                        match crate::recording::read_recording(&json, keys.as_deref())
                            .ok()
                            .and_then(|b| serde_json::from_slice(&b).ok())
                        {
                            Some(meta) => {
                                stream.resume_recovered(&cfg.spool.dir, meta, keys.clone())
                            }
                            None => {
                                tracing::warn!(recording = %id, "live stream not resumed: its JSON cannot be read")
                            }
                        }
                    }
                }
            }
        }
        Err(e) => tracing::error!("spool recovery in {}: {e}", cfg.spool.dir.display()),
    }
    // Not ready before the delivery task has the queue open.
    set_spool_state("opening the spool database");

    // The spool's figures before any source reads them (the SIPREC server
    // answers OPTIONS by them).
    scan_spool(&cfg, &status);
    let mut siprec = start_siprec(&cfg, &status, &live, &controls, None).await;
    // SIPREC instances replaced by a reload, finishing their calls.
    let mut siprec_draining: Vec<crate::sources::siprec::SiprecHandle> = Vec::new();
    // The running instance ends when its calls have ended, then one with
    // the new sockets starts (they need its address).
    let mut siprec_pending = false;
    let mut drain_gen = 0u64;
    let mut running: Vec<Box<dyn SourceHandle>> = PASSIVE
        .iter()
        .filter_map(|name| start_source(name, &cfg, &status, &live, &controls))
        .collect();
    // Delivery: spool → cloud (tracks the spool and retention even without a cloud).
    // The last reason delivery could not start (tried again every tick).
    let mut delivery_error: Option<String> = None;
    let mut delivery = start_delivery(&cfg, &status, &mut delivery_error);
    // Sources that could not start are tried again on the tick.
    let mut retries = Retries::default();
    retries.sync(
        &cfg,
        |n| running_source(n, siprec.is_some(), &running),
        &status,
    );
    for (name, ..) in &retries.failed {
        tracing::warn!(source = name, "source not started: tried again in 1 s, then less and less often (every 30 s at most) until it starts");
    }
    scan_spool(&cfg, &status);
    tracing::info!(health = %cfg.health.listen, spool = %cfg.spool.dir.display(), "pbx-edge {} running", env!("CARGO_PKG_VERSION"));
    print_banner(&cfg);
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&status_line(&status)),
    ]);

    let watchdog = sd_notify::watchdog_enabled().map(|d| d / 2);
    // The supervision tick: every second while there is work (calls,
    // recordings to deliver, listeners draining, delivery to restart),
    // every IDLE_TICK otherwise, never longer than half the watchdog time.
    let period = |busy: bool| {
        let p = if busy { BUSY_TICK } else { IDLE_TICK };
        watchdog.map_or(p, |w| p.min(w))
    };
    let mut tick_period = period(true);
    let next_tick = tokio::time::sleep(tick_period);
    tokio::pin!(next_tick);
    let mut last_wd = Instant::now();
    let mut draining: Option<drain::Drain> = None;
    // Start-up was work: the first idle tick gives back what it left.
    let mut was_busy = true;
    let mut last_trim = Instant::now();
    loop {
        let mut begin_drain = false;
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = sigusr1.recv() => begin_drain = true,
            _ = drain_request.notified() => begin_drain = true,
            _ = sighup.recv() => 'reload: {
                if draining.is_some() {
                    tracing::warn!("configuration reload ignored: draining (SIGTERM stops at once)");
                    break 'reload;
                }
                notify(&[sd_notify::NotifyState::Reloading, sd_notify::NotifyState::MonotonicUsec(monotonic_usec())]);
                match Config::load(config_path.as_deref()) {
                    Ok(mut new) => {
                        let changed = cfg.diff_restart_needed(&new);
                        tracing::info!(?changed, "configuration reloaded");
                        for w in new.warnings() {
                            tracing::warn!("{w}");
                        }
                        keep_restart_only(&cfg, &mut new);
                        crate::logmask::show_numbers(new.log.log_numbers);
                        cfg = new;
                        reload_siprec(
                            &cfg,
                            &status,
                            &live,
                            &controls,
                            &mut siprec,
                            &mut siprec_draining,
                            &mut siprec_pending,
                            &mut drain_gen,
                        )
                        .await;
                        reload_sources(&cfg, &changed, &status, &live, &controls, &mut running).await;
                        retries.sync(
                            &cfg,
                            |n| running_source(n, siprec.is_some() || siprec_pending, &running),
                            &status,
                        );
                        configure_stream(&cfg, &stream, &status);
                        controls.set_allow(&cfg.health.control_allow);
                        if let Ok(mut s) = status.lock() {
                            s.cloud.configured = !cfg.cloud.url.is_empty();
                            s.agent_id = cfg.agent.id.clone();
                        }
                        if changed.contains(&"spool.dir") {
                            if let Some(d) = delivery.take() {
                                d.shutdown().await;
                            }
                            delivery = start_delivery(&cfg, &status, &mut delivery_error);
                        } else if let Some(d) = &delivery {
                            if let Err(e) = d.reload(&cfg) {
                                tracing::error!("delivery kept its running settings: {e}");
                            }
                        }
                    }
                    Err(errs) => {
                        tracing::error!("new configuration rejected, keeping the running one:\n{errs}");
                    }
                }
                notify(&[sd_notify::NotifyState::Ready]);
                // A reload may leave work for the tick (a listener to replace).
                tick_period = period(true);
                next_tick.as_mut().reset(tokio::time::Instant::now() + tick_period);
            },
            _ = &mut next_tick => {
                if let Ok(mut s) = status.lock() {
                    s.uptime_s = started.elapsed().as_secs();
                    s.stream = crate::status::StreamStatus {
                        config_error: s.stream.config_error.take(),
                        ..stream.snapshot()
                    };
                }
                if let Some(d) = draining.as_mut() {
                    let calls: usize = siprec.iter().chain(siprec_draining.iter()).map(|h| h.calls()).sum();
                    let step = match status.lock() {
                        Ok(mut s) => d.tick(Instant::now(), calls, &mut s),
                        Err(_) => drain::Step::Wait,
                    };
                    match step {
                        drain::Step::Wait => {}
                        drain::Step::StopSources => {
                            tracing::info!("draining: no call in progress any more; stopping the passive sources, delivering the spool");
                            stop_all(std::mem::take(&mut running)).await;
                            if let Some(d) = &delivery {
                                d.wake();
                            }
                        }
                        drain::Step::Exit(why) => {
                            tracing::info!("drained: {why}; exiting");
                            break;
                        }
                    }
                }
                // Replaced SIPREC listeners whose last call ended.
                let (done, going): (Vec<_>, Vec<_>) =
                    std::mem::take(&mut siprec_draining).into_iter().partition(|h| h.finished());
                siprec_draining = going;
                for h in done {
                    h.stop().await;
                }
                if siprec_pending && siprec.as_ref().is_none_or(|h| h.finished()) {
                    siprec_pending = false;
                    siprec = replace_siprec(siprec.take(), &cfg, &status, &live, &controls).await;
                    if siprec.is_some() {
                        tracing::info!(listen = %cfg.sources.siprec.listen, "SIPREC listen change applied: the calls that were in progress have ended");
                    }
                }
                // A listener change applied above whose new address could
                // not be bound leaves no SIPREC listener: tried again too.
                if draining.is_none() && siprec.is_none() && cfg.sources.siprec.enabled {
                    retries.missing("siprec", Instant::now());
                }
                if draining.is_none() && !retries.is_empty() {
                    for name in retries.due(Instant::now()) {
                        let started = if name == "siprec" {
                            if siprec.is_none() {
                                let ports = siprec_draining.last().map(|h| h.ports());
                                siprec = start_siprec(&cfg, &status, &live, &controls, ports).await;
                            }
                            siprec.is_some()
                        } else {
                            match start_source(name, &cfg, &status, &live, &controls) {
                                Some(h) => {
                                    running.push(h);
                                    true
                                }
                                None => false,
                            }
                        };
                        if started {
                            let n = retries.started(name).unwrap_or(0);
                            tracing::info!(source = name, failed_attempts = n, "source started: it could not start before");
                        } else {
                            let n = retries.failed(name, Instant::now());
                            tracing::debug!(source = name, failed_attempts = n, "source still not started: tried again in {} s", Retries::backoff(n).as_secs());
                        }
                    }
                    retries.publish(&status);
                }
                scan_spool(&cfg, &status);
                if delivery.is_none() {
                    // Never a silent stall: e.g. `pbx-edge spool` held the
                    // lock for a moment.
                    delivery = start_delivery(&cfg, &status, &mut delivery_error);
                }
                if let Some(half) = watchdog {
                    // Ping on the tick that comes closest to half the
                    // watchdog time: a tick a little early must not wait a
                    // whole period more (with WATCHDOG_USEC=2s the period is
                    // the half, and `>= half` missed every other tick).
                    if last_wd.elapsed() + tick_period / 2 >= half {
                        let stalled = live.stalled(half * 2);
                        if stalled.is_empty() {
                            notify(&[sd_notify::NotifyState::Watchdog]);
                            last_wd = Instant::now();
                        } else {
                            tracing::error!(?stalled, "loops stalled: withholding the watchdog ping");
                        }
                    }
                }
                notify(&[sd_notify::NotifyState::Status(&status_line(&status))]);
                let busy = siprec_pending
                    || draining.is_some()
                    || !retries.is_empty()
                    || !siprec_draining.is_empty()
                    || delivery.is_none()
                    || status.lock().is_ok_and(|s| s.busy());
                if was_busy && !busy {
                    release_idle_memory();
                } else if busy && last_trim.elapsed() >= TRIM_EVERY {
                    last_trim = Instant::now();
                    trim_heap_after_burst();
                }
                was_busy = busy;
                tick_period = period(busy);
                next_tick.as_mut().reset(tokio::time::Instant::now() + tick_period);
            }
        }
        if begin_drain && draining.is_none() {
            let calls: usize = siprec
                .iter()
                .chain(siprec_draining.iter())
                .map(|h| h.calls())
                .sum();
            tracing::info!(calls, "draining: no new calls (SIPREC INVITE and OPTIONS answered 503); the calls in progress finish, then the spool is delivered and the daemon exits");
            for h in siprec.iter() {
                // A listen change waiting for the calls to end is dropped:
                // no new listener while draining.
                if siprec_pending {
                    h.stop_when_idle(false);
                }
                h.refuse_new_calls();
            }
            siprec_pending = false;
            let d = drain::Drain::new(Instant::now());
            if let Ok(mut s) = status.lock() {
                s.draining = true;
                s.drain = Some(crate::status::DrainStatus {
                    phase: "calls".into(),
                    since_s: 0,
                    calls_in_progress: calls as u64,
                });
            }
            draining = Some(d);
            notify(&[sd_notify::NotifyState::Status("draining")]);
            // The drain advances on the tick: every second from now on.
            tick_period = period(true);
            next_tick
                .as_mut()
                .reset(tokio::time::Instant::now() + tick_period);
        }
    }

    tracing::info!("stopping: closing active recordings");
    notify(&[sd_notify::NotifyState::Stopping]);
    if let Ok(mut s) = status.lock() {
        s.shutting_down = true;
    }
    // CONTRACT §1: exit within 10 s. (Delivery stops after the sources:
    // the folder source's last pass reads which recordings were delivered
    // to move or delete their PBX files, which delivery's own last steps
    // may remove from the spool.)
    let stop_started = tokio::time::Instant::now();
    // The process is ending: the sources finish their recordings within
    // their share of the budget, leaving the rest to the next start.
    crate::sources::engine_host::EXITING.store(true, std::sync::atomic::Ordering::Relaxed);
    // Stop every source in parallel so the 10 s budget is shared.
    stop_all(
        siprec
            .take()
            .into_iter()
            .chain(std::mem::take(&mut siprec_draining))
            .map(|h| Box::new(h) as Box<dyn SourceHandle>)
            .chain(std::mem::take(&mut running)),
    )
    .await;
    // The streams of the calls just closed send their `stop` (best effort,
    // within what is left of the stop budget; `drain` adds a 1 s grace).
    let left = STOP_BUDGET.saturating_sub(stop_started.elapsed());
    stream
        .drain(Duration::from_secs(3).min(left.saturating_sub(Duration::from_secs(2))))
        .await;
    // Delivery within what is left of the budget (running uploads are
    // dropped then, still queued with their progress for the next start),
    // with a little room to stop them cleanly.
    if let Some(d) = delivery.take() {
        let left = STOP_BUDGET.saturating_sub(stop_started.elapsed());
        d.shutdown_within(left.max(DELIVERY_STOP_FLOOR)).await;
    }
    let _ = stop_tx.send(true);
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests;
