//! One upload job: a due entry → the cloud → its outcome in the spool
//! (what to do with it is [`crate::upload::policy`], a pure function).

use super::*;

/// Per-upload progress into the database.
pub(super) struct JobProgress {
    pub(super) shared: Arc<Shared>,
    pub(super) id: String,
    /// The furthest offset the cloud confirmed for this recording (kept
    /// across a restart of its upload: retrying the same first chunks of a
    /// new upload again and again is not progress).
    pub(super) best: AtomicU64,
    /// The location last written to the database, when, and whether this
    /// attempt's progress reset the retries yet ([`CHECKPOINT_EVERY`]).
    pub(super) saved: std::sync::Mutex<Option<(String, Instant, bool)>>,
}

/// How often an upload's offset is written to the database while its
/// location stays the same. A new location is written at once (it is what
/// a resume needs: the offset is asked of the server with `HEAD`), and so
/// is the first progress of an attempt (it resets the retries); the offset
/// in between is what `spool list` shows. Each write is a durable SQLite
/// transaction (two fsyncs, 5-8 ms here): once per 4 MiB chunk it was a
/// quarter of a tus upload's time (BENCHMARKS.md, "Upload throughput").
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

impl Progress for JobProgress {
    fn checkpoint<'a>(&'a self, location: &'a str, offset: u64) -> upload::BoxFuture<'a, ()> {
        Box::pin(async move {
            let (id, loc) = (self.id.clone(), location.to_string());
            let advanced = offset > self.best.fetch_max(offset, Ordering::Relaxed);
            {
                let mut saved = self.saved.lock().unwrap_or_else(|e| e.into_inner());
                let due = match &*saved {
                    Some((l, at, reset)) => {
                        l != location || (advanced && !reset) || at.elapsed() >= CHECKPOINT_EVERY
                    }
                    None => true,
                };
                if !due {
                    return;
                }
                let reset = advanced || saved.as_ref().is_some_and(|(l, _, r)| *r && l == location);
                *saved = Some((loc.clone(), Instant::now(), reset));
            }
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
            // (A pause ends with a recording delivered or refused, not with
            // data taken: a cloud may take the audio and still answer the
            // call's post with 402, and uploads must not flap on and off.)
        })
    }

    fn restart(&self) -> upload::BoxFuture<'_, ()> {
        Box::pin(async move {
            let id = self.id.clone();
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

/// Whether a local error reading a recording (or making its FLAC copy)
/// stays: its files are missing, or malformed (a JSON that does not parse,
/// a WAV that is not one, a sealed file that does not authenticate). Other
/// errors (no space, too many open files, I/O errors) pass.
pub(super) fn local_error_is_for_good(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), NotFound | InvalidData | UnexpectedEof)
}

pub(super) async fn run_job(
    shared: Arc<Shared>,
    active: Arc<Active>,
    cloud: Arc<Cloud>,
    entry: Entry,
) {
    let id = entry.id.clone();
    let wav = shared.dir.join(format!("{id}.wav"));
    let json = shared.dir.join(format!("{id}.json"));
    let resume = entry.location.clone().map(|l| (l, entry.offset));
    let keys = active.settings.keys.clone();
    let loaded = upload::load_job(&id, wav, &json, resume, keys).await;
    let loaded = match (loaded, cloud.settings.audio_format) {
        (Ok(j), crate::config::AudioFormat::Flac) => upload::flac_job(j).await,
        (r, _) => r,
    };
    let job = match loaded {
        Ok(j) => j,
        Err(e) if !local_error_is_for_good(&e) => {
            // Not the recording's fault and not for good (a full disk for
            // its FLAC copy, too many open files, an I/O error, a key file
            // being replaced): tried again with backoff, never `failed`.
            let msg = format!("recording cannot be read now: {e}");
            tracing::warn!(%id, "{msg}; will retry");
            let s = &active.settings;
            let (base, cap) = (s.backoff_base, s.backoff_cap);
            let i = id.clone();
            let _ = shared
                .db(move |sp| {
                    let now = now_ms();
                    if sp.begin_attempt(&i, now)? {
                        let n = sp.get(&i)?.map(|e| e.retries).unwrap_or(0);
                        let next =
                            now + policy::backoff(n, fastrand::f64(), base, cap).as_millis() as i64;
                        sp.retry_later(&i, next, &msg, true, now)?;
                    }
                    Ok(())
                })
                .await;
            shared
                .metrics
                .failure("local_io", "recording cannot be read now");
            return;
        }
        Err(e) => {
            // Missing or malformed files are not the cloud's fault and no
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
            shared.hold(&id);
            return;
        }
    }
    shared.metrics.attempts.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(%id, size = job.size, protocol = cloud.protocol().name(), "uploading");
    let progress = JobProgress {
        shared: Arc::clone(&shared),
        id: id.clone(),
        best: AtomicU64::new(entry.offset),
        saved: std::sync::Mutex::new(None),
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
            let r = shared
                .db(move |sp| sp.mark_delivered(&i, now_ms()).map(|_| ()))
                .await;
            if r.is_ok() && retention.is_zero() {
                remove_delivered(&shared, &id);
            }
            r
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
                    if reason.starts_with("HTTP 429") {
                        // The account is rate-limited: every upload waits
                        // (each one told on its own would hit it again).
                        shared.set_pause(
                            PauseKind::RateLimit,
                            "the cloud is rate-limiting uploads (HTTP 429)",
                            after.unwrap_or(base).max(base),
                        );
                    }
                    shared
                        .db(move |sp| {
                            let n = sp.get(&i)?.map(|e| e.retries).unwrap_or(0);
                            // Retry-After overrides the backoff (CONTRACT
                            // §4); one under its base (0, or a date already
                            // past on our clock) waits the base: no loop of
                            // tries back to back.
                            let delay = after
                                .map(|a| a.max(base))
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
        shared.hold(&id);
    }
}

/// `retention = 0`: a delivered recording's files are removed beside the
/// uploads, not in the upload's slot nor under the spool's lock (removing a
/// large WAV takes tens of milliseconds: each upload's next one, and the
/// other uploads' database calls, waited for it), then its row goes. What
/// fails here (or a crash before it) is left to the retention pass, which
/// removes and reports it.
pub(super) fn remove_delivered(shared: &Arc<Shared>, id: &str) {
    let (sh, i, dir) = (Arc::clone(shared), id.to_string(), shared.dir.clone());
    let mut removals = shared.removals.lock().unwrap_or_else(|e| e.into_inner());
    // The finished ones' results go (the set stays as small as the work).
    while removals.try_join_next().is_some() {}
    removals.spawn(async move {
        let j = i.clone();
        let removed =
            tokio::task::spawn_blocking(move || crate::spool::remove_pair_files(&dir, &j)).await;
        if matches!(removed, Ok(Ok(()))) {
            if let Err(e) = sh.db(move |sp| sp.forget_delivered(&i)).await {
                tracing::debug!("spool: a delivered row stays for the retention pass: {e}");
            }
        }
    });
}
