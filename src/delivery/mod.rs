//! The delivery task: spool in, cloud out.
//!
//! In: the spool directory (recording pairs written by the sources), the
//! [`DeliverySettings`] (from [`Config`], replaced on reload) and the shared
//! [`Status`](crate::status::Status). Out: recordings delivered to the cloud
//! per CONTRACT §4, their state kept in the [`Spool`] database, and the
//! `cloud` part of the status (queue depth by state, oldest undelivered age,
//! bytes uploaded, attempts, failures by reason, pause reason) for `/status`,
//! `/metrics` and `/readyz`.
//!
//! One scheduler task on the caller's tokio runtime, every `scan_interval`
//! while the queue holds work (every [`IDLE_SCAN`] while it holds none), and
//! at once whenever a recording pair lands in the spool directory (an
//! inotify watch on it; `pbx-edge spool retry` touches its `.wake` file),
//! an upload ends or [`DeliveryHandle::wake`] is called:
//! adopts new pairs, applies the local filters (`recorded` → `queued`, or
//! filtered: deleted, or kept with `keep_filtered`), removes delivered
//! recordings older than `retention`, then starts due uploads up to
//! `max_parallel` — none while paused or outside the upload window. Each
//! upload runs as its own task; its outcome is applied with the answer
//! policy ([`crate::upload::policy`]): delivered (files removed once
//! `retention` has passed), failed (kept with the cloud's answer), retried
//! later (exponential backoff with full jitter, or `Retry-After`), or every
//! upload paused (401/403/402, TLS certificate errors) with one probe every
//! `pause_retry` (5 min), which re-reads the token first.
//!
//! The spool database is opened by the scheduler ([`Spool::open_repairing`]):
//! a corrupt or missing one is moved aside and rebuilt from the pairs on
//! disk; until it is usable (and while a query says it is corrupt, or the
//! file was replaced under us), `/readyz` fails with the reason, nothing is
//! uploaded, and it is tried again at every scan. A spool problem never ends
//! the task.
//!
//! Promises: database calls run on blocking threads, never on the runtime's
//! workers; one process delivers from a spool at a time (`.delivery.lock`,
//! an `flock` the kernel releases when the process dies); nothing undelivered
//! is deleted; [`DeliveryHandle::shutdown`] stops starting uploads, gives
//! running ones `shutdown_grace` (5 s) to finish, then drops them — safe,
//! because their progress is already in the database and the next start
//! resumes with a tus `HEAD`. [`DeliveryHandle::shutdown_within`] does the
//! same within a deadline (the daemon's stop budget): the grace ends then
//! at the latest.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use tokio::sync::{watch, Notify};
use tokio::task::{JoinHandle, JoinSet};

use crate::config::Config;
use crate::spool::{now_ms, Entry, Spool, SpoolError, State};
use crate::status::SharedStatus;
use crate::upload::policy::{self, Action, PauseKind};
use crate::upload::{self, Cloud, CloudSettings, Outcome, Progress, RateLimiter, UploadError};

mod settings;
pub use settings::*;
mod job;
use job::*;
mod scheduler;
use scheduler::*;
mod watch_dir;

/// The lock file that keeps a second delivering process away from a spool.
pub(crate) const LOCK_FILE: &str = ".delivery.lock";

/// Errors of the delivery task.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeliveryError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error(transparent)]
    Upload(#[from] UploadError),
    #[error("another process already delivers from {0} (lock {LOCK_FILE} is held)")]
    Locked(PathBuf),
    #[error("lock file {path}: {source}")]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("spool worker thread: {0}")]
    Worker(String),
}

#[derive(Debug, Clone)]
struct Pause {
    kind: PauseKind,
    reason: String,
    /// No upload starts before this; then one probe.
    until: Instant,
}

#[derive(Debug, Default)]
struct Metrics {
    attempts: AtomicU64,
    delivered: AtomicU64,
    failures: Mutex<BTreeMap<&'static str, u64>>,
    last_error: Mutex<Option<String>>,
}

impl Metrics {
    fn failure(&self, label: &'static str, error: &str) {
        if let Ok(mut f) = self.failures.lock() {
            *f.entry(label).or_default() += 1;
        }
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(policy::truncate(error, 300));
        }
    }
}

/// What the scheduler currently runs with.
struct Active {
    settings: DeliverySettings,
    cloud: Option<Arc<Cloud>>,
}

struct Shared {
    /// `None` until opened, and after a corruption was found (reopened and
    /// repaired at the next scan).
    spool: Mutex<Option<Spool>>,
    /// Rebuilds of the database since start, and the last one.
    repairs: Mutex<(u64, Option<String>)>,
    /// When the open database was last checked.
    checked_at: Mutex<Instant>,
    dir: PathBuf,
    status: SharedStatus,
    metrics: Metrics,
    bytes_sent: Arc<AtomicU64>,
    limiter: Arc<RateLimiter>,
    pause: Mutex<Option<Pause>>,
    /// Recordings whose state could not be written (a full disk, a
    /// database error): not started again before then (they would be due
    /// at once, and an upload loop would hammer the cloud and the log).
    held: Mutex<std::collections::HashMap<String, Instant>>,
    /// Delivered recordings' files being removed beside the uploads
    /// (`retention = 0`, [`job::remove_delivered`]): a shutdown waits for
    /// them (within its grace), so a stop leaves no delivered pair behind.
    removals: Mutex<JoinSet<()>>,
    /// When a shutdown must be over ([`DeliveryHandle::shutdown_within`]):
    /// the waits for running uploads and removals end then at the latest.
    stop_by: Mutex<Option<Instant>>,
    wake: Notify,
    _lock: File,
}

impl Shared {
    /// Run `f` on the spool on a blocking thread.
    /// On a full disk the reserved space is given back and `f` tried once more.
    async fn db<T, F>(self: &Arc<Self>, f: F) -> Result<T, DeliveryError>
    where
        T: Send + 'static,
        F: Fn(&mut Spool) -> Result<T, SpoolError> + Send + 'static,
    {
        let me = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let mut guard = me
                .spool
                .lock()
                .map_err(|_| DeliveryError::Worker("spool mutex poisoned".into()))?;
            let Some(sp) = guard.as_mut() else {
                return Err(DeliveryError::Spool(SpoolError::NotOpen));
            };
            let r = match f(sp) {
                Err(e) if e.is_disk_full() && sp.release_reserve() => {
                    tracing::warn!("disk full: released the spool's reserved space");
                    f(sp)
                }
                r => r,
            };
            if let Err(e) = &r {
                if e.is_corrupt() {
                    // Repaired at the next scan.
                    *guard = None;
                }
            }
            r.map_err(DeliveryError::from)
        })
        .await
        .map_err(|e| DeliveryError::Worker(e.to_string()))?
    }

    fn set_pause(&self, kind: PauseKind, reason: &str, retry: Duration) {
        if let Ok(mut p) = self.pause.lock() {
            if p.as_ref().map(|x| &x.reason) != Some(&reason.to_string()) {
                tracing::warn!(reason, "cloud uploads paused; next try in {retry:?}");
            }
            *p = Some(Pause {
                kind,
                reason: reason.to_string(),
                until: Instant::now() + retry,
            });
        }
    }

    /// Hold `id` back for a while: its state could not be written.
    fn hold(&self, id: &str) {
        if let Ok(mut h) = self.held.lock() {
            h.insert(id.to_string(), Instant::now() + HOLD_AFTER_DB_ERROR);
        }
    }

    /// The recordings held back now (the ones whose time is up are let go).
    fn held_now(&self) -> Vec<String> {
        let now = Instant::now();
        self.held
            .lock()
            .map(|mut h| {
                h.retain(|_, until| *until > now);
                h.keys().cloned().collect()
            })
            .unwrap_or_default()
    }

    fn clear_pause(&self) {
        if let Ok(mut p) = self.pause.lock() {
            if let Some(old) = p.take() {
                tracing::info!(was = %old.reason, "cloud uploads resumed");
            }
        }
    }
}

/// The running delivery task.
pub struct DeliveryHandle {
    shared: Arc<Shared>,
    active_tx: watch::Sender<Arc<Active>>,
    stop: crate::sys::shutdown::Shutdown,
    task: JoinHandle<()>,
    /// Wakes the scheduler when a pair lands (`None`: inotify unusable;
    /// the idle scan still finds it).
    _watch: Option<watch_dir::SpoolWatch>,
}

/// How long a recording whose state could not be written waits before it
/// is tried again.
const HOLD_AFTER_DB_ERROR: std::time::Duration = std::time::Duration::from_secs(10);

/// How often an idle queue (nothing to deliver) is scanned; new pairs
/// wake the scheduler at once through the spool directory's watch.
pub(crate) const IDLE_SCAN: std::time::Duration = std::time::Duration::from_secs(30);

impl std::fmt::Debug for DeliveryHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryHandle")
            .field("dir", &self.shared.dir)
            .finish()
    }
}

/// Take the spool's delivery lock (`flock` on [`LOCK_FILE`], released when
/// the file is closed or the process dies).
pub(crate) fn take_lock(dir: &Path) -> Result<File, DeliveryError> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(LOCK_FILE);
    // 0600 like every other file in the spool.
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|source| DeliveryError::Lock {
            path: path.clone(),
            source,
        })?;
    // SAFETY: flock on a descriptor we own.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(DeliveryError::Locked(dir.to_path_buf()));
        }
        return Err(DeliveryError::Lock { path, source: e });
    }
    Ok(f)
}

fn build_active(
    settings: DeliverySettings,
    limiter: &Arc<RateLimiter>,
    bytes_sent: &Arc<AtomicU64>,
) -> Result<Active, DeliveryError> {
    limiter.set_rate(settings.bandwidth_limit);
    limiter.set_sharers(settings.max_parallel);
    let cloud = match &settings.cloud {
        Some(c) => {
            let cloud = Cloud::new(c.clone(), Some(Arc::clone(limiter)), Arc::clone(bytes_sent))?;
            if !cloud.has_token() {
                tracing::warn!(
                    "no cloud token (cloud.token_file not set, or its first line empty, and no $CREDENTIALS_DIRECTORY/{}): requests go without Authorization",
                    upload::CREDENTIAL_NAME
                );
            }
            Some(Arc::new(cloud))
        }
        None => None,
    };
    Ok(Active { settings, cloud })
}

/// Start delivering from `cfg.spool.dir` on the current tokio runtime.
pub fn start(cfg: &Config, status: SharedStatus) -> Result<DeliveryHandle, DeliveryError> {
    start_with(DeliverySettings::from_config(cfg), status)
}

/// [`start`] with explicit settings (tests, tools).
pub fn start_with(
    settings: DeliverySettings,
    status: SharedStatus,
) -> Result<DeliveryHandle, DeliveryError> {
    let dir = settings.spool_dir.clone();
    crate::sys::create_private_dir(&dir).map_err(|source| DeliveryError::Lock {
        path: dir.clone(),
        source,
    })?;
    let lock = take_lock(&dir)?;
    // The database is opened (and repaired if need be) by the scheduler's
    // first scan; until then /readyz says why it is not ready.
    let db = dir.join(crate::spool::DB_FILE);
    let why = match fs_exists(&db).then(|| Spool::open(&dir).and_then(|s| s.check_integrity())) {
        Some(Err(e)) if e.is_corrupt() => {
            format!(
                "{}: moving it aside and rebuilding the queue from the recordings on disk",
                e.describe()
            )
        }
        Some(Err(e)) => e.to_string(),
        _ => "opening the spool database".to_string(),
    };
    if let Ok(mut st) = status.lock() {
        st.cloud.spool_error = Some(why);
    }
    let limiter = Arc::new(RateLimiter::new(settings.bandwidth_limit));
    let bytes_sent = Arc::new(AtomicU64::new(0));
    let active = build_active(settings, &limiter, &bytes_sent)?;
    let shared = Arc::new(Shared {
        spool: Mutex::new(None),
        repairs: Mutex::new((0, None)),
        checked_at: Mutex::new(Instant::now()),
        dir,
        status,
        metrics: Metrics::default(),
        bytes_sent,
        limiter,
        pause: Mutex::new(None),
        held: Mutex::new(std::collections::HashMap::new()),
        removals: Mutex::new(JoinSet::new()),
        stop_by: Mutex::new(None),
        wake: Notify::new(),
        _lock: lock,
    });
    let (active_tx, active_rx) = watch::channel(Arc::new(active));
    let stop = crate::sys::shutdown::Shutdown::new().map_err(|source| DeliveryError::Lock {
        path: shared.dir.clone(),
        source,
    })?;
    let watch = watch_dir::SpoolWatch::start(&shared.dir, Arc::downgrade(&shared));
    let task = tokio::spawn(scheduler(Arc::clone(&shared), active_rx, stop.clone()));
    Ok(DeliveryHandle {
        shared,
        active_tx,
        stop,
        task,
        _watch: watch,
    })
}

impl DeliveryHandle {
    /// Take over a reloaded configuration (cloud settings, token, limits,
    /// filters, retention). A bad one (unreadable CA or token file) is
    /// refused and the running settings stay. `spool.dir` cannot change
    /// here: stop and start again for that.
    pub fn reload(&self, cfg: &Config) -> Result<(), DeliveryError> {
        self.reload_with(DeliverySettings::from_config(cfg))
    }

    /// [`DeliveryHandle::reload`] with explicit settings.
    pub fn reload_with(&self, mut settings: DeliverySettings) -> Result<(), DeliveryError> {
        if settings.spool_dir != self.shared.dir {
            tracing::warn!(
                "spool.dir changed to {}: takes effect after a restart",
                settings.spool_dir.display()
            );
            settings.spool_dir = self.shared.dir.clone();
        }
        let active = build_active(settings, &self.shared.limiter, &self.shared.bytes_sent)?;
        // A new token may end an auth pause: probe soon.
        if let Ok(mut p) = self.shared.pause.lock() {
            if let Some(p) = p.as_mut() {
                p.until = Instant::now();
            }
        }
        let _ = self.active_tx.send(Arc::new(active));
        Ok(())
    }

    /// Look at the spool now (e.g. right after a recording was written).
    pub fn wake(&self) {
        self.shared.wake.notify_one();
    }

    /// Stop: no new uploads; running ones get `shutdown_grace` to finish,
    /// then are dropped (their progress is already saved).
    pub async fn shutdown(self) {
        self.stop.trigger();
        self.shared.wake.notify_one();
        let _ = self.task.await;
    }

    /// [`DeliveryHandle::shutdown`] over within `limit`: the running uploads
    /// (and the removals of delivered files) get what is left of it, if
    /// less than `shutdown_grace`, then are dropped; an upload dropped stays
    /// queued with its progress, for the next start.
    pub async fn shutdown_within(self, limit: Duration) {
        /// For a step of the scheduler's that does not come back in time
        /// (a spool call on a stuck disk): it is left behind.
        const BACKSTOP: Duration = Duration::from_millis(500);
        *self
            .shared
            .stop_by
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + limit);
        self.stop.trigger();
        self.shared.wake.notify_one();
        let mut task = self.task;
        if tokio::time::timeout(limit + BACKSTOP, &mut task)
            .await
            .is_err()
        {
            tracing::warn!("delivery did not stop within {limit:?}: left behind");
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests;
