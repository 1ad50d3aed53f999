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
//! (and whenever an upload ends or [`DeliveryHandle::wake`] is called):
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
//! resumes with a tus `HEAD`.

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

/// The lock file that keeps a second delivering process away from a spool.
pub const LOCK_FILE: &str = ".delivery.lock";

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

// ---------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------

/// Local filters: recordings that fail them never leave the machine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters {
    /// `filter.min_duration`: shorter recordings are filtered.
    pub min_duration: Duration,
    /// `filter.include_numbers`: when not empty, the caller's or callee's
    /// number must match one of these patterns (`*` any run, `?` one char).
    pub include_numbers: Vec<String>,
    /// `filter.exclude_numbers`: a caller or callee number matching one of
    /// these filters the recording.
    pub exclude_numbers: Vec<String>,
    /// `filter.directions`: when not empty, only these `direction` values
    /// (inbound, outbound, internal, unknown) are delivered.
    pub directions: Vec<String>,
}

/// `*` matches any run of characters, `?` exactly one; everything else
/// literally. Iterative, linear in practice, no recursion.
pub fn glob_match(pattern: &str, s: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = s.chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(c) if *c == '?' || Some(c) == t.get(ti) => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p.get(pi..)
        .is_some_and(|rest| rest.iter().all(|c| *c == '*'))
}

impl Filters {
    pub fn is_empty(&self) -> bool {
        self.min_duration.is_zero()
            && self.include_numbers.is_empty()
            && self.exclude_numbers.is_empty()
            && self.directions.is_empty()
    }

    /// `Some(reason)` when the recording JSON `doc` is filtered out.
    pub fn check(&self, doc: &Value) -> Option<String> {
        if !self.min_duration.is_zero() {
            let ms = doc["duration_ms"].as_i64().unwrap_or(0);
            if (ms.max(0) as u128) < self.min_duration.as_millis() {
                return Some(format!(
                    "shorter than filter.min_duration ({ms} ms < {} ms)",
                    self.min_duration.as_millis()
                ));
            }
        }
        let numbers: Vec<&str> = ["from", "to"]
            .iter()
            .filter_map(|k| doc[*k]["number"].as_str())
            .filter(|n| !n.is_empty())
            .collect();
        if !self.include_numbers.is_empty()
            && !numbers
                .iter()
                .any(|n| self.include_numbers.iter().any(|p| glob_match(p, n)))
        {
            return Some("no number matches filter.include_numbers".into());
        }
        if let Some(p) = self
            .exclude_numbers
            .iter()
            .find(|p| numbers.iter().any(|n| glob_match(p, n)))
        {
            return Some(format!("a number matches filter.exclude_numbers {p:?}"));
        }
        if !self.directions.is_empty() {
            let d = doc["direction"].as_str().unwrap_or("unknown");
            if !self.directions.iter().any(|x| x.eq_ignore_ascii_case(d)) {
                return Some(format!("direction {d} not in filter.directions"));
            }
        }
        None
    }
}

pub use crate::config::UploadWindow;

/// Minutes since local midnight (the system time zone).
pub fn local_minute_of_day(t: SystemTime) -> u16 {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as libc::time_t)
        .unwrap_or(0);
    // SAFETY: localtime_r writes into the zeroed struct we own.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&secs, &mut tm).is_null() };
    if !ok {
        return ((secs / 60) % 1440) as u16;
    }
    (tm.tm_hour.clamp(0, 23) * 60 + tm.tm_min.clamp(0, 59)) as u16
}

/// Everything the delivery task runs with. [`DeliverySettings::from_config`]
/// fills it from [`Config`]; keys the config does not have yet take the
/// defaults documented on each field.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliverySettings {
    /// `spool.dir`
    pub spool_dir: PathBuf,
    /// `spool.retention`: how long delivered recordings stay.
    pub retention: Duration,
    /// `None` when `cloud.url` is empty: recordings are adopted, filtered and
    /// queued, nothing is sent.
    pub cloud: Option<CloudSettings>,
    /// `cloud.max_parallel`
    pub max_parallel: u32,
    /// `cloud.bandwidth_limit` (bytes/s over all uploads; 0 = none). Default 0.
    pub bandwidth_limit: u64,
    /// `cloud.upload_window` (`"HH:MM-HH:MM"`, local time; empty = always).
    pub upload_window: Option<UploadWindow>,
    /// `[filter]` section. Default: nothing filtered.
    pub filters: Filters,
    /// `filter.keep_filtered`: keep filtered recordings (state `filtered`)
    /// instead of deleting them. Default false.
    pub keep_filtered: bool,
    /// How often the spool directory is scanned. Default 1 s.
    pub scan_interval: Duration,
    /// Backoff base and cap (CONTRACT §4: 1 s, 5 min).
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// How often a paused delivery probes (CONTRACT §4: 5 min).
    pub pause_retry: Duration,
    /// How long shutdown waits for running uploads. Default 5 s.
    pub shutdown_grace: Duration,
}

impl DeliverySettings {
    /// Defaults for everything the config does not say.
    pub fn new(spool_dir: &Path) -> DeliverySettings {
        DeliverySettings {
            spool_dir: spool_dir.to_path_buf(),
            retention: Duration::ZERO,
            cloud: None,
            max_parallel: 2,
            bandwidth_limit: 0,
            upload_window: None,
            filters: Filters::default(),
            keep_filtered: false,
            scan_interval: Duration::from_secs(1),
            backoff_base: policy::BACKOFF_BASE,
            backoff_cap: policy::BACKOFF_CAP,
            pause_retry: policy::PAUSE_RETRY,
            shutdown_grace: Duration::from_secs(5),
        }
    }

    /// From the daemon's configuration.
    pub fn from_config(cfg: &Config) -> DeliverySettings {
        let c = &cfg.cloud;
        let cloud = c.is_configured().then(|| CloudSettings {
            token_file: c.token_file.clone(),
            ca_file: c.ca_file.clone(),
            client_cert: c.client_cert.clone(),
            client_key: c.client_key.clone(),
            proxy: (!c.proxy.is_empty()).then(|| c.proxy.clone()),
            chunk_size: c.chunk_size,
            ..CloudSettings::new(&c.url, c.protocol)
        });
        DeliverySettings {
            retention: cfg.spool.retention,
            cloud,
            max_parallel: c.max_parallel.max(1),
            bandwidth_limit: c.bandwidth_limit,
            upload_window: c.upload_window,
            filters: Filters {
                min_duration: cfg.filter.min_duration,
                include_numbers: cfg.filter.include_numbers.clone(),
                exclude_numbers: cfg.filter.exclude_numbers.clone(),
                directions: cfg.filter.directions.clone(),
            },
            keep_filtered: cfg.filter.keep_filtered,
            ..DeliverySettings::new(&cfg.spool.dir)
        }
    }
}

// ---------------------------------------------------------------------------
// The task
// ---------------------------------------------------------------------------

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
    stop_tx: watch::Sender<bool>,
    task: JoinHandle<()>,
}

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
    let cloud = match &settings.cloud {
        Some(c) => {
            let cloud = Cloud::new(c.clone(), Some(Arc::clone(limiter)), Arc::clone(bytes_sent))?;
            if !cloud.has_token() {
                tracing::warn!(
                    "no cloud token (cloud.token_file empty and no $CREDENTIALS_DIRECTORY/{}): requests go without Authorization",
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
        wake: Notify::new(),
        _lock: lock,
    });
    let (active_tx, active_rx) = watch::channel(Arc::new(active));
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(scheduler(Arc::clone(&shared), active_rx, stop_rx));
    Ok(DeliveryHandle {
        shared,
        active_tx,
        stop_tx,
        task,
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
        let _ = self.stop_tx.send(true);
        self.shared.wake.notify_one();
        let _ = self.task.await;
    }
}

/// Per-upload progress into the database.
struct JobProgress {
    shared: Arc<Shared>,
    id: String,
    best: AtomicU64,
}

impl Progress for JobProgress {
    fn checkpoint<'a>(&'a self, location: &'a str, offset: u64) -> upload::BoxFuture<'a, ()> {
        Box::pin(async move {
            let (id, loc) = (self.id.clone(), location.to_string());
            let advanced = offset > self.best.fetch_max(offset, Ordering::Relaxed);
            let r = self
                .shared
                .db(move |sp| {
                    let now = now_ms();
                    sp.checkpoint(&id, &loc, offset, now)?;
                    if advanced {
                        sp.reset_retries(&id)?;
                    }
                    Ok(())
                })
                .await;
            if let Err(e) = r {
                tracing::error!(id = %self.id, "cannot save upload progress: {e}");
            }
            if advanced {
                // The cloud takes our data: whatever paused us is over.
                self.shared.clear_pause();
            }
        })
    }

    fn restart(&self) -> upload::BoxFuture<'_, ()> {
        Box::pin(async move {
            let id = self.id.clone();
            self.best.store(0, Ordering::Relaxed);
            if let Err(e) = self
                .shared
                .db(move |sp| sp.clear_upload(&id, now_ms()))
                .await
            {
                tracing::error!(id = %self.id, "cannot reset the upload: {e}");
            }
        })
    }
}

async fn run_job(shared: Arc<Shared>, active: Arc<Active>, cloud: Arc<Cloud>, entry: Entry) {
    let id = entry.id.clone();
    let wav = shared.dir.join(format!("{id}.wav"));
    let json = shared.dir.join(format!("{id}.json"));
    let resume = entry.location.clone().map(|l| (l, entry.offset));
    let job = match upload::load_job(&id, wav, &json, resume).await {
        Ok(j) => j,
        Err(e) => {
            // Missing or unreadable files are not the cloud's fault and no
            // retry fixes them: failed, kept, shown in `spool list`.
            let msg = format!("recording cannot be read: {e}");
            tracing::error!(%id, "{msg}");
            let i = id.clone();
            let _ = shared
                .db(move |sp| {
                    if sp.begin_attempt(&i, now_ms())? {
                        sp.mark_failed(&i, 0, &msg, now_ms())?;
                    }
                    Ok(())
                })
                .await;
            shared
                .metrics
                .failure("local_io", "recording cannot be read");
            return;
        }
    };
    let i = id.clone();
    match shared.db(move |sp| sp.begin_attempt(&i, now_ms())).await {
        Ok(true) => {}
        Ok(false) => return, // purged or settled meanwhile
        Err(e) => {
            tracing::error!(%id, "spool: {e}");
            return;
        }
    }
    shared.metrics.attempts.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(%id, size = job.size, protocol = cloud.protocol().name(), "uploading");
    let progress = JobProgress {
        shared: Arc::clone(&shared),
        id: id.clone(),
        best: AtomicU64::new(entry.offset),
    };
    let outcome = cloud.deliver(&job, &progress).await;
    let s = &active.settings;
    let (retention, base, cap, pause_retry) =
        (s.retention, s.backoff_base, s.backoff_cap, s.pause_retry);
    let i = id.clone();
    let res = match outcome {
        Outcome::Delivered { status } => {
            tracing::info!(%id, status, bytes = job.size, "delivered");
            shared.metrics.delivered.fetch_add(1, Ordering::Relaxed);
            shared.clear_pause();
            shared
                .db(move |sp| {
                    let now = now_ms();
                    sp.mark_delivered(&i, now)?;
                    if retention.is_zero() {
                        sp.expire_delivered(now, Duration::ZERO)?;
                    }
                    Ok(())
                })
                .await
        }
        Outcome::Failed(action) => {
            let label = action.failure_label().unwrap_or("other");
            match action {
                Action::Fail { status, body } => {
                    tracing::warn!(%id, status, "the cloud refused the recording; kept as failed");
                    shared.metrics.failure(label, &format!("HTTP {status}"));
                    shared.clear_pause();
                    shared
                        .db(move |sp| sp.mark_failed(&i, status, &body, now_ms()).map(|_| ()))
                        .await
                }
                Action::PauseAll { kind, reason } => {
                    shared.metrics.failure(label, &reason);
                    shared.set_pause(kind, &reason, pause_retry);
                    // Due at once: the pause alone decides when the next try
                    // (the probe) starts, so a reload can end it early.
                    shared
                        .db(move |sp| {
                            let now = now_ms();
                            sp.retry_later(&i, now, &reason, false, now).map(|_| ())
                        })
                        .await
                }
                Action::Retry { after, reason } => {
                    tracing::info!(%id, %reason, "upload failed; will retry");
                    shared.metrics.failure(label, &reason);
                    shared
                        .db(move |sp| {
                            let n = sp.get(&i)?.map(|e| e.retries).unwrap_or(0);
                            let delay = after
                                .unwrap_or_else(|| policy::backoff(n, fastrand::f64(), base, cap));
                            let now = now_ms();
                            let next = now + delay.as_millis() as i64;
                            sp.retry_later(&i, next, &reason, true, now).map(|_| ())
                        })
                        .await
                }
                other @ (Action::Done | Action::Resume | Action::Restart) => {
                    let reason = format!("uploader ended with {other:?}");
                    shared.metrics.failure("other", &reason);
                    shared
                        .db(move |sp| {
                            sp.retry_later(&i, now_ms() + 1000, &reason, true, now_ms())
                                .map(|_| ())
                        })
                        .await
                }
            }
        }
    };
    if let Err(e) = res {
        tracing::error!(%id, "cannot record the upload's outcome: {e}");
    }
}

/// Whether `p` exists (a broken symlink or a directory counts).
fn fs_exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

/// How often the open database is checked (`PRAGMA quick_check`): damage
/// that no query of ours ran into yet (garbage written over the file under
/// the running daemon) is found within this time.
pub const INTEGRITY_CHECK_EVERY: Duration = Duration::from_secs(300);

/// Open the spool database if it is not (first scan, after a corruption,
/// or when `spool.db` was replaced or removed under us), repairing it.
fn ensure_open(shared: &Shared, guard: &mut Option<Spool>) -> Result<(), SpoolError> {
    if guard.as_ref().is_some_and(|sp| sp.is_detached()) {
        tracing::warn!(
            "spool database {} was removed or replaced: opening it again",
            shared.dir.join(crate::spool::DB_FILE).display()
        );
        *guard = None;
    }
    if guard.is_some() {
        return Ok(());
    }
    let (sp, repair) = Spool::open_repairing(&shared.dir)?;
    if let Ok(mut c) = shared.checked_at.lock() {
        *c = Instant::now();
    }
    if let Some(r) = repair {
        let line = r.to_string();
        tracing::warn!("{line}");
        if let Ok(mut rp) = shared.repairs.lock() {
            rp.0 += 1;
            rp.1 = Some(format!("{}: {line}", crate::sys::now().to_rfc3339()));
        }
    }
    *guard = Some(sp);
    Ok(())
}

/// Adopt, filter, expire; then refresh the status. Runs on a blocking thread.
fn housekeeping(shared: &Shared, settings: &DeliverySettings) -> Result<(), SpoolError> {
    let mut guard = match shared.spool.lock() {
        Ok(g) => g,
        Err(_) => return Ok(()),
    };
    ensure_open(shared, &mut guard)?;
    let Some(sp) = guard.as_mut() else {
        return Err(SpoolError::NotOpen);
    };
    let check_due = shared
        .checked_at
        .lock()
        .map(|mut c| {
            let due = c.elapsed() >= INTEGRITY_CHECK_EVERY;
            if due {
                *c = Instant::now();
            }
            due
        })
        .unwrap_or(false);
    let r = if check_due {
        sp.check_integrity()
            .and_then(|()| housekeeping_open(sp, settings))
    } else {
        housekeeping_open(sp, settings)
    };
    if let Err(e) = &r {
        if e.is_corrupt() {
            // Moved aside and rebuilt at the next scan.
            *guard = None;
        }
    }
    r
}

fn housekeeping_open(sp: &mut Spool, settings: &DeliverySettings) -> Result<(), SpoolError> {
    let now = now_ms();
    let report = match sp.scan(now) {
        Err(e) if e.is_disk_full() && sp.release_reserve() => {
            tracing::warn!("disk full: released the spool's reserved space");
            sp.scan(now)?
        }
        r => r?,
    };
    if !report.adopted.is_empty() {
        tracing::debug!(count = report.adopted.len(), "recordings adopted");
    }
    for e in sp.in_state(State::Recorded)? {
        let doc: Option<Value> = match std::fs::read(sp.json_path(&e.id)) {
            Ok(b) => serde_json::from_slice(&b).ok(),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                if sp.forget_vanished(&e.id)? {
                    continue;
                }
                None
            }
            Err(_) => None,
        };
        // A JSON that cannot be read is not filtered (the upload reports it).
        let verdict = doc.as_ref().and_then(|d| settings.filters.check(d));
        match verdict {
            None => {
                sp.mark_queued(&e.id, now)?;
            }
            Some(reason) if settings.keep_filtered => {
                tracing::info!(id = %e.id, %reason, "filtered (kept)");
                sp.mark_filtered(&e.id, &reason, now)?;
            }
            Some(reason) => {
                tracing::info!(id = %e.id, %reason, "filtered (deleted)");
                sp.drop_filtered(&e.id)?;
            }
        }
    }
    sp.expire_delivered(now, settings.retention)?;
    // Held back again once there is room.
    sp.ensure_reserve();
    Ok(())
}

/// Copy the figures into the shared status.
fn publish(
    shared: &Shared,
    active: &Active,
    in_flight: usize,
    window_open: bool,
    db_error: Option<String>,
) {
    let figures = shared.spool.lock().ok().and_then(|sp| {
        let sp = sp.as_ref()?;
        Some((
            sp.depth_by_state().unwrap_or_default(),
            sp.oldest_undelivered().ok().flatten(),
            sp.counters().unwrap_or_default(),
        ))
    });
    let repairs = shared.repairs.lock().map(|r| r.clone()).unwrap_or_default();
    let pause = shared.pause.lock().ok().and_then(|p| p.clone());
    let failures = shared
        .metrics
        .failures
        .lock()
        .map(|f| f.iter().map(|(k, v)| (k.to_string(), *v)).collect())
        .unwrap_or_default();
    let last_error = shared
        .metrics
        .last_error
        .lock()
        .ok()
        .and_then(|e| e.clone());
    let Ok(mut st) = shared.status.lock() else {
        return;
    };
    let c = &mut st.cloud;
    c.configured = active.cloud.is_some();
    if let Some(cs) = &active.settings.cloud {
        c.url_host = url::Url::parse(&cs.url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_string));
        c.protocol = cs.protocol.as_str().to_string();
    }
    if let Some((depth, oldest, counters)) = figures {
        c.queue = depth
            .into_iter()
            .map(|(s, n)| (s.as_str().to_string(), n))
            .collect();
        c.oldest_undelivered_s = oldest.map(|t| (now_ms().saturating_sub(t).max(0) / 1000) as u64);
        c.delivered_total = counters.get("delivered").copied().unwrap_or(0);
        c.filtered_total = counters.get("filtered").copied().unwrap_or(0);
    }
    c.in_flight = in_flight as u64;
    c.bytes_uploaded = shared.bytes_sent.load(Ordering::Relaxed);
    c.attempts = shared.metrics.attempts.load(Ordering::Relaxed);
    c.failures = failures;
    c.last_error = last_error;
    c.paused = pause.as_ref().map(|p| p.reason.clone());
    c.pause_kind = pause.map(|p| p.kind.as_str().to_string());
    c.outside_upload_window = !window_open;
    c.spool_error = db_error;
    c.spool_repairs = repairs.0;
    c.spool_repaired = repairs.1;
}

async fn scheduler(
    shared: Arc<Shared>,
    mut active_rx: watch::Receiver<Arc<Active>>,
    mut stop_rx: watch::Receiver<bool>,
) {
    let mut jobs: JoinSet<()> = JoinSet::new();
    let mut busy: HashMap<tokio::task::Id, String> = HashMap::new();
    let mut next_scan = Instant::now();
    let mut db_error: Option<String> = None;
    // The last spool error logged (the same one is not logged every scan).
    let mut logged: Option<String> = None;
    loop {
        if *stop_rx.borrow() {
            break;
        }
        let active = Arc::clone(&active_rx.borrow());
        let settings = &active.settings;
        let now = Instant::now();
        if now >= next_scan {
            next_scan = now + settings.scan_interval;
            let (sh, st) = (Arc::clone(&shared), settings.clone());
            let r = tokio::task::spawn_blocking(move || housekeeping(&sh, &st)).await;
            db_error = match r {
                Ok(Ok(())) => None,
                Ok(Err(e)) => {
                    let msg = if e.is_corrupt() {
                        format!(
                            "{}: moving it aside and rebuilding the queue from the recordings on disk",
                            e.describe()
                        )
                    } else {
                        e.to_string()
                    };
                    if logged.as_ref() != Some(&msg) {
                        tracing::error!("spool: {msg}");
                    }
                    Some(msg)
                }
                Err(e) => Some(format!("spool worker: {e}")),
            };
            if db_error.is_none() && logged.is_some() {
                tracing::info!("spool database usable again");
            }
            logged.clone_from(&db_error);
        }
        let spool_open = shared.spool.lock().is_ok_and(|g| g.is_some());
        let window_open = settings
            .upload_window
            .is_none_or(|w| w.contains(local_minute_of_day(SystemTime::now())));
        if let (Some(cloud), true, true) = (&active.cloud, window_open, spool_open) {
            // How many may start now.
            let mut probe = false;
            let room = {
                let mut p = shared.pause.lock().ok();
                match p.as_mut().and_then(|p| p.as_mut()) {
                    Some(p) if Instant::now() < p.until => 0,
                    Some(p) if busy.is_empty() => {
                        // One probe; the next one not before another pause_retry.
                        p.until = Instant::now() + settings.pause_retry;
                        probe = true;
                        1
                    }
                    Some(_) => 0,
                    None => (settings.max_parallel as usize).saturating_sub(busy.len()),
                }
            };
            if room > 0 {
                if probe {
                    if let Err(e) = cloud.reload_token() {
                        tracing::error!("{e}");
                    }
                }
                let taken: HashSet<String> = busy.values().cloned().collect();
                match shared.db(move |sp| sp.due(now_ms(), room, &taken)).await {
                    Ok(due) => {
                        if probe && due.is_empty() {
                            // Nothing to probe with: try again as soon as something is due.
                            if let Ok(mut p) = shared.pause.lock() {
                                if let Some(p) = p.as_mut() {
                                    p.until = Instant::now();
                                }
                            }
                        }
                        for e in due {
                            let id = e.id.clone();
                            let h = jobs.spawn(run_job(
                                Arc::clone(&shared),
                                Arc::clone(&active),
                                Arc::clone(cloud),
                                e,
                            ));
                            busy.insert(h.id(), id);
                        }
                    }
                    Err(e) => {
                        tracing::error!("spool: {e}");
                        db_error = Some(e.to_string());
                    }
                }
            }
        }
        {
            let (sh, ac, n, err) = (
                Arc::clone(&shared),
                Arc::clone(&active),
                busy.len(),
                db_error.clone(),
            );
            let _ =
                tokio::task::spawn_blocking(move || publish(&sh, &ac, n, window_open, err)).await;
        }
        let sleep = next_scan.saturating_duration_since(Instant::now());
        tokio::select! {
            _ = stop_rx.changed() => {}
            r = active_rx.changed() => {
                if r.is_err() { break; }
                next_scan = Instant::now();
            }
            _ = shared.wake.notified() => { next_scan = Instant::now(); }
            Some(r) = jobs.join_next_with_id(), if !jobs.is_empty() => {
                let tid = match r { Ok((tid, ())) => tid, Err(e) => {
                    if e.is_panic() { tracing::error!("an upload task panicked: {e}"); }
                    e.id()
                }};
                busy.remove(&tid);
                // A slot is free: look for due work at once (no rescan).
                continue;
            }
            _ = tokio::time::sleep(sleep) => {}
        }
    }
    // Shutdown: let running uploads finish within the grace period.
    let grace = active_rx.borrow().settings.shutdown_grace;
    if !jobs.is_empty() {
        tracing::info!(
            uploads = jobs.len(),
            "waiting up to {grace:?} for running uploads"
        );
        let all = async { while jobs.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::info!(
                uploads = jobs.len(),
                "uploads still running at shutdown: resumed at the next start"
            );
            jobs.abort_all();
            while jobs.join_next().await.is_some() {}
        }
    }
    let active = Arc::clone(&active_rx.borrow());
    let sh = Arc::clone(&shared);
    let _ = tokio::task::spawn_blocking(move || publish(&sh, &active, 0, true, None)).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn globs() {
        assert!(glob_match("+49*", "+4930123"));
        assert!(!glob_match("+49*", "+4330123"));
        assert!(glob_match("1??", "123"));
        assert!(!glob_match("1??", "1234"));
        assert!(glob_match("*", ""));
        assert!(glob_match("*00", "1200"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
        assert!(glob_match("**", "x"));
        assert!(!glob_match("", "x"));
    }

    #[test]
    fn filters() {
        let doc = json!({
            "duration_ms": 5000,
            "direction": "inbound",
            "from": {"number": "+4930111"},
            "to": {"number": "200"},
        });
        assert_eq!(Filters::default().check(&doc), None);
        let f = Filters {
            min_duration: Duration::from_secs(6),
            ..Filters::default()
        };
        assert!(f.check(&doc).unwrap().contains("min_duration"));
        let f = Filters {
            include_numbers: vec!["2??".into()],
            ..Filters::default()
        };
        assert_eq!(f.check(&doc), None);
        let f = Filters {
            include_numbers: vec!["3*".into()],
            ..Filters::default()
        };
        assert!(f.check(&doc).is_some());
        let f = Filters {
            exclude_numbers: vec!["+4930*".into()],
            ..Filters::default()
        };
        assert!(f.check(&doc).unwrap().contains("exclude"));
        let f = Filters {
            directions: vec!["outbound".into(), "Inbound".into()],
            ..Filters::default()
        };
        assert_eq!(f.check(&doc), None);
        let f = Filters {
            directions: vec!["outbound".into()],
            ..Filters::default()
        };
        assert!(f.check(&doc).unwrap().contains("direction inbound"));
        // Missing fields: unknown direction, no numbers, duration 0.
        let f = Filters {
            include_numbers: vec!["*".into()],
            ..Filters::default()
        };
        assert!(f.check(&json!({})).is_some());
    }

    #[test]
    fn windows() {
        let w: UploadWindow = "22:00-06:00".parse().unwrap();
        assert!(w.contains(23 * 60));
        assert!(w.contains(0));
        assert!(w.contains(5 * 60 + 59));
        assert!(!w.contains(6 * 60));
        assert!(!w.contains(12 * 60));
        let w: UploadWindow = "09:30-17:00".parse().unwrap();
        assert!(w.contains(9 * 60 + 30));
        assert!(!w.contains(17 * 60));
        let w: UploadWindow = "00:00-24:00".parse().unwrap();
        assert!(w.contains(0) && w.contains(1439));
        for bad in ["", "9-17", "25:00-01:00", "10:60-11:00", "10:00"] {
            assert!(bad.parse::<UploadWindow>().is_err(), "{bad}");
        }
        assert!(local_minute_of_day(SystemTime::now()) < 1440);
    }

    #[test]
    fn settings_from_config() {
        let mut cfg = Config::defaults(None);
        let s = DeliverySettings::from_config(&cfg);
        assert!(s.cloud.is_none());
        assert_eq!(s.pause_retry, Duration::from_secs(300));
        cfg.cloud.url = "https://cloud.example".into();
        cfg.cloud.max_parallel = 5;
        let s = DeliverySettings::from_config(&cfg);
        assert_eq!(s.max_parallel, 5);
        let c = s.cloud.unwrap();
        assert_eq!(c.url, "https://cloud.example");
        assert_eq!(c.chunk_size, 4 << 20);
    }

    #[test]
    fn second_process_is_locked_out() {
        let d = tempfile::tempdir().unwrap();
        let a = take_lock(d.path()).unwrap();
        // flock is per open file description: a second open conflicts.
        assert!(matches!(take_lock(d.path()), Err(DeliveryError::Locked(_))));
        drop(a);
        assert!(take_lock(d.path()).is_ok());
    }
}
