//! The scheduler: due entries started within the limits (parallelism,
//! window, pauses), housekeeping (retention, integrity checks, reserve),
//! the status published.

use super::*;

/// Whether `p` exists (a broken symlink or a directory counts).
pub(super) fn fs_exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

/// How often the open database is checked (`PRAGMA quick_check`): damage
/// that no query of ours ran into yet (garbage written over the file under
/// the running daemon) is found within this time.
pub(crate) const INTEGRITY_CHECK_EVERY: Duration = Duration::from_secs(300);

/// Open the spool database if it is not (first scan, after a corruption,
/// or when `spool.db` was replaced or removed under us), repairing it.
pub(super) fn ensure_open(shared: &Shared, guard: &mut Option<Spool>) -> Result<(), SpoolError> {
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
pub(super) fn housekeeping(shared: &Shared, settings: &DeliverySettings) -> Result<(), SpoolError> {
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

/// Recordings whose metadata could not be read for the filters, already
/// logged (bounded).
static UNFILTERABLE: std::sync::Mutex<std::collections::BTreeSet<String>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// [`crate::spoolfile::seal_in_place`] of a pair's WAV and JSON.
fn seal_pair(sp: &Spool, id: &str, keys: &crate::spoolfile::Keyring) -> std::io::Result<()> {
    let mut sealed = false;
    for p in [sp.wav_path(id), sp.json_path(id)] {
        sealed |= crate::spoolfile::seal_in_place(&p, keys)?;
    }
    if sealed {
        crate::sys::sync_dir(sp.dir())?;
        tracing::info!(recording = %id, "a plaintext recording in the encrypted spool sealed");
    }
    Ok(())
}

pub(super) fn housekeeping_open(
    sp: &mut Spool,
    settings: &DeliverySettings,
) -> Result<(), SpoolError> {
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
    // Passed the filters: queued together, one transaction.
    let mut passed = Vec::new();
    for e in sp.in_state(State::Recorded)? {
        // A plaintext pair in an encrypted spool (put there by another
        // program) is sealed before it goes further; one that cannot be
        // now (a full disk) waits for the next scan.
        if let Some(keys) = settings.keys.as_deref() {
            if let Err(err) = seal_pair(sp, &e.id, keys) {
                if err.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(recording = %e.id, "a plaintext recording in the encrypted spool could not be sealed yet: {err}");
                    continue;
                }
            }
        }
        if settings.filters.is_empty() {
            // Nothing to read the JSON for: only whether it is still there.
            if !sp.json_path(&e.id).exists() && sp.forget_vanished(&e.id)? {
                continue;
            }
            passed.push(e.id);
            continue;
        }
        let doc: Option<Value> = match crate::spoolfile::read_recording(
            &sp.json_path(&e.id),
            settings.keys.as_deref(),
        ) {
            Ok(b) => serde_json::from_slice(&b).ok(),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                if sp.forget_vanished(&e.id)? {
                    continue;
                }
                None
            }
            Err(_) => None,
        };
        // A JSON that cannot be read cannot be filtered: it waits (read
        // again at the next scan) rather than leave the machine unfiltered
        // once it becomes readable to the upload. Said once per recording.
        let Some(doc) = doc else {
            let mut warned = UNFILTERABLE.lock().unwrap_or_else(|p| p.into_inner());
            if warned.len() > 4096 {
                warned.clear();
            }
            if warned.insert(e.id.clone()) {
                tracing::warn!(id = %e.id, "recording metadata cannot be read (permissions, key, damage): it waits, as [filter] cannot be applied to it");
            }
            continue;
        };
        let verdict = settings.filters.check(&doc);
        match verdict {
            None => passed.push(e.id),
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
    sp.mark_queued_all(&passed, now)?;
    sp.expire_delivered(now, settings.retention)?;
    // Held back again once there is room.
    sp.ensure_reserve();
    Ok(())
}

/// Copy the figures into the shared status.
pub(super) fn publish(
    shared: &Shared,
    active: &Active,
    in_flight: usize,
    window_open: bool,
    db_error: Option<String>,
) -> bool {
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
    let opened = figures.is_some();
    let Ok(mut st) = shared.status.lock() else {
        return true;
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
    // Work left: anything not yet delivered, failed or filtered (or no
    // figures at all); delivered recordings waiting for their retention
    // to pass count when retention is short (see the scheduler).
    let kept = c.queue.get("delivered").is_some_and(|n| *n > 0)
        && active.settings.retention > Duration::ZERO
        && active.settings.retention < super::IDLE_SCAN;
    !opened
        || in_flight > 0
        || kept
        || c.queue.iter().any(|(state, n)| {
            // Without a cloud, queued recordings wait for one: no work.
            *n > 0
                && (state == "recorded"
                    || (c.configured && matches!(state.as_str(), "queued" | "uploading")))
        })
}

/// How often the status is refreshed while uploads are running.
const PUBLISH_EVERY: Duration = Duration::from_millis(250);

/// Wake-ups closer together than this share one scan.
const MIN_RESCAN: std::time::Duration = std::time::Duration::from_millis(50);

pub(super) async fn scheduler(
    shared: Arc<Shared>,
    mut active_rx: watch::Receiver<Arc<Active>>,
    stop: crate::sys::shutdown::Shutdown,
) {
    let mut jobs: JoinSet<()> = JoinSet::new();
    let mut busy: HashMap<tokio::task::Id, String> = HashMap::new();
    let mut next_scan = Instant::now();
    let mut last_scan = Instant::now();
    let mut last_publish = Instant::now();
    let mut db_error: Option<String> = None;
    // The last spool error logged (the same one is not logged every scan).
    let mut logged: Option<String> = None;
    loop {
        if stop.is_set() {
            break;
        }
        let active = Arc::clone(&active_rx.borrow());
        let settings = &active.settings;
        let now = Instant::now();
        let scanned = now >= next_scan;
        if scanned {
            last_scan = now;
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
        // Not waiting on the lock here (an async worker; SIPREC's signalling
        // runs on these too): a job holds it through its fsync, or for the
        // database's busy wait. Held means open.
        let spool_open = match shared.spool.try_lock() {
            Ok(g) => g.is_some(),
            Err(std::sync::TryLockError::WouldBlock) => true,
            Err(std::sync::TryLockError::Poisoned(_)) => false,
        };
        let window_open = settings
            .upload_window
            .is_none_or(|w| w.contains(local_minute_of_day(SystemTime::now())));
        if let (Some(cloud), true, true) = (&active.cloud, window_open, spool_open) {
            // How many may start now.
            let mut probe = false;
            let room = {
                let mut p = shared.pause.lock().ok();
                if let Some(x) = p.as_mut() {
                    // A rate limit is over when its Retry-After (or backoff)
                    // is: every upload goes on at once, no probe (each one
                    // told 429 again sets it again). A probe would hold the
                    // whole queue behind one upload, and for `pause_retry`
                    // if that one met another transient error.
                    if x.as_ref().is_some_and(|q| {
                        q.kind == PauseKind::RateLimit && Instant::now() >= q.until
                    }) {
                        if let Some(old) = x.take() {
                            tracing::info!(was = %old.reason, "cloud uploads resumed");
                        }
                    }
                }
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
                let mut taken: HashSet<String> = busy.values().cloned().collect();
                taken.extend(shared.held_now());
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
        // The figures (three queries over the queue) at most every
        // PUBLISH_EVERY while uploads come and go: a burst of call ends
        // finishes an upload every few milliseconds.
        if scanned || jobs.is_empty() || last_publish.elapsed() >= PUBLISH_EVERY {
            last_publish = Instant::now();
            let (sh, ac, n, err) = (
                Arc::clone(&shared),
                Arc::clone(&active),
                busy.len(),
                db_error.clone(),
            );
            let busy = tokio::task::spawn_blocking(move || publish(&sh, &ac, n, window_open, err))
                .await
                .unwrap_or(true);
            // Nothing to deliver, nothing wrong: no need to look every
            // second (a new pair wakes us through the directory's watch).
            if scanned && !busy && db_error.is_none() && jobs.is_empty() {
                next_scan = next_scan.max(last_scan + super::IDLE_SCAN);
            }
        }
        let sleep = next_scan.saturating_duration_since(Instant::now());
        tokio::select! {
            _ = stop.wait() => {}
            r = active_rx.changed() => {
                if r.is_err() { break; }
                next_scan = Instant::now();
            }
            // At most one wake-driven scan per MIN_RESCAN (a burst of
            // new pairs is one scan).
            _ = shared.wake.notified() => { next_scan = Instant::now().max(last_scan + MIN_RESCAN); }
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
    // Shutdown: let running uploads finish within the grace period, and
    // by the deadline a shutdown was given (the daemon's stop budget).
    let grace = active_rx.borrow().settings.shutdown_grace;
    let stop_by = *shared.stop_by.lock().unwrap_or_else(|e| e.into_inner());
    let until = |grace: Duration| {
        let end = Instant::now() + grace;
        tokio::time::Instant::from_std(stop_by.map_or(end, |d| d.min(end)))
    };
    if !jobs.is_empty() {
        let until = until(grace);
        tracing::info!(
            uploads = jobs.len(),
            "waiting up to {:?} for running uploads",
            until.saturating_duration_since(tokio::time::Instant::now())
        );
        let all = async { while jobs.join_next().await.is_some() {} };
        if tokio::time::timeout_at(until, all).await.is_err() {
            tracing::info!(
                uploads = jobs.len(),
                "uploads still running at shutdown: resumed at the next start"
            );
            jobs.abort_all();
            while jobs.join_next().await.is_some() {}
        }
    }
    // Delivered recordings' files still being removed: finished (what a
    // stop cuts short is left to the next start's retention pass).
    let mut removals =
        std::mem::take(&mut *shared.removals.lock().unwrap_or_else(|e| e.into_inner()));
    let all = async { while removals.join_next().await.is_some() {} };
    if tokio::time::timeout_at(until(grace), all).await.is_err() {
        removals.abort_all();
    }
    let active = Arc::clone(&active_rx.borrow());
    let sh = Arc::clone(&shared);
    let _ = tokio::task::spawn_blocking(move || publish(&sh, &active, 0, true, None)).await;
}
