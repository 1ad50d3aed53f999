//! The queue: rows read, and moved between states (recorded → queued →
//! uploading → delivered / failed / filtered), each one SQL statement.

use super::*;

// Queries and state transitions (CONTRACT §5 states).
/// The longest wait the daemon sets before a retry (a `Retry-After` is
/// capped at 6 h, backoff at 5 min), with a margin: a retry time further
/// ahead than this was set before the clock went back.
const WAIT_MAX_MS: i64 = 7 * 3600 * 1000;

impl Spool {
    /// One row.
    pub fn get(&self, id: &str) -> Result<Option<Entry>, SpoolError> {
        self.conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM recordings WHERE id = ?1"),
                [id],
                entry_from_row,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Every row, oldest recording first.
    pub fn list(&self) -> Result<Vec<Entry>, SpoolError> {
        self.select("1 = 1 ORDER BY recorded_at, id", params![])
    }

    /// Rows in `state`, oldest first.
    pub fn in_state(&self, state: State) -> Result<Vec<Entry>, SpoolError> {
        self.select(
            "state = ?1 ORDER BY recorded_at, id",
            params![state.as_str()],
        )
    }

    /// Up to `limit` rows due for an upload attempt at `now` (queued or
    /// uploading, `next_attempt_at` ≤ now), the oldest recordings first
    /// (one that waited out a pause or a backoff is not put behind every
    /// newer one), skipping `busy`. A retry time further ahead than any
    /// wait the daemon sets is due now: the clock went back.
    pub fn due(
        &self,
        now: i64,
        limit: usize,
        busy: &HashSet<String>,
    ) -> Result<Vec<Entry>, SpoolError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let rows = self.select(
            "state IN ('queued', 'uploading') AND (next_attempt_at <= ?1 OR next_attempt_at > ?3) \
             ORDER BY recorded_at, id LIMIT ?2",
            params![
                now,
                (limit + busy.len()) as i64,
                now.saturating_add(WAIT_MAX_MS)
            ],
        )?;
        Ok(rows
            .into_iter()
            .filter(|e| !busy.contains(&e.id))
            .take(limit)
            .collect())
    }

    /// When the next queued/uploading row becomes due (Unix ms), if any
    /// (now for one set further ahead than any wait: the clock went back).
    pub fn next_due(&self) -> Result<Option<i64>, SpoolError> {
        let (min, max) = self
            .conn
            .query_row(
                "SELECT MIN(next_attempt_at), MAX(next_attempt_at) FROM recordings WHERE state IN ('queued', 'uploading')",
                [],
                |r| Ok((r.get::<_, Option<i64>>(0)?, r.get::<_, Option<i64>>(1)?)),
            )
            .map_err(|e| self.err(e))?;
        let now = crate::sys::clock::now_ms();
        Ok(match (min, max) {
            (_, Some(m)) if m > now.saturating_add(WAIT_MAX_MS) => Some(now),
            (min, _) => min,
        })
    }

    pub(super) fn select(
        &self,
        where_: &str,
        p: impl rusqlite::Params,
    ) -> Result<Vec<Entry>, SpoolError> {
        let mut st = self
            .conn
            .prepare_cached(&format!("SELECT {COLUMNS} FROM recordings WHERE {where_}"))
            .map_err(|e| self.err(e))?;
        let rows = st.query_map(p, entry_from_row).map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| match e {
            // A row that cannot be read: the database is rebuilt from the
            // pairs on disk (every query over the row would fail).
            rusqlite::Error::InvalidColumnType(..)
            | rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::IntegralValueOutOfRange(..) => {
                self.wrong_type(format!("a row ({e})"))
            }
            e => self.err(e),
        })
    }

    /// Run one UPDATE; whether a row matched (false: purged meanwhile).
    pub(super) fn update(&self, sql: &str, p: impl rusqlite::Params) -> Result<bool, SpoolError> {
        let n = self
            .conn
            .prepare_cached(sql)
            .and_then(|mut s| s.execute(p))
            .map_err(|e| self.err(e))?;
        Ok(n > 0)
    }

    /// One UPDATE/DELETE and, when it matched, `counter + 1`, in one
    /// transaction (a crash never leaves the state changed but not counted).
    pub(super) fn update_counted(
        &self,
        sql: &str,
        p: impl rusqlite::Params,
        counter: &str,
    ) -> Result<bool, SpoolError> {
        let tx = self.conn.unchecked_transaction().map_err(|e| self.err(e))?;
        let ok = self.update(sql, p)?;
        if ok {
            self.bump(counter, 1)?;
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(ok)
    }

    pub(super) fn bump(&self, counter: &str, by: i64) -> Result<(), SpoolError> {
        self.update(
            "INSERT INTO counters (name, value) VALUES (?1, ?2) \
             ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            params![counter, by],
        )
        .map(|_| ())
    }

    /// Persistent totals (`delivered`, `filtered`).
    pub fn counters(&self) -> Result<BTreeMap<String, u64>, SpoolError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT name, value FROM counters")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?.max(0) as u64))
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// `recorded` → `queued` (passed the filters).
    pub fn mark_queued(&self, id: &str, now: i64) -> Result<bool, SpoolError> {
        self.update(
            "UPDATE recordings SET state = 'queued', next_attempt_at = 0, updated_at = ?2 \
             WHERE id = ?1 AND state = 'recorded'",
            params![id, now],
        )
    }

    /// [`Spool::mark_queued`] for many, in one transaction (one commit for
    /// a burst of call ends, not one each).
    pub fn mark_queued_all(&self, ids: &[String], now: i64) -> Result<usize, SpoolError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let tx = self.conn.unchecked_transaction().map_err(|e| self.err(e))?;
        let mut n = 0;
        for id in ids {
            n += usize::from(self.mark_queued(id, now)?);
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(n)
    }

    /// `recorded` → `filtered`, files kept.
    pub fn mark_filtered(&self, id: &str, reason: &str, now: i64) -> Result<bool, SpoolError> {
        self.update_counted(
            "UPDATE recordings SET state = 'filtered', filter_reason = ?2, updated_at = ?3 \
             WHERE id = ?1 AND state = 'recorded'",
            params![id, reason, now],
            "filtered",
        )
    }

    /// A recording filtered out and not kept: files, then row, removed.
    /// The files' removal failing is reported once and leaves the row (the
    /// next pass tries again); `Ok(false)` then.
    pub fn drop_filtered(&mut self, id: &str) -> Result<bool, SpoolError> {
        if !self.remove_files_or_report(id) {
            return Ok(false);
        }
        self.update_counted(
            "DELETE FROM recordings WHERE id = ?1 AND state = 'recorded'",
            params![id],
            "filtered",
        )
    }

    /// A `recorded` row whose files are both gone (a crash in the middle of
    /// dropping a filtered recording, or files removed by hand): forget it.
    pub fn forget_vanished(&self, id: &str) -> Result<bool, SpoolError> {
        if self.json_path(id).exists() || self.wav_path(id).exists() {
            return Ok(false);
        }
        self.update(
            "DELETE FROM recordings WHERE id = ?1 AND state = 'recorded'",
            params![id],
        )
    }

    /// An attempt starts: `attempts + 1`, state `uploading`. False if the row
    /// is gone or no longer due (purged, delivered, failed meanwhile).
    ///
    /// Not fsynced on its own (the one change that is not): it acknowledges
    /// nothing, and the next durable change (the attempt's outcome) carries
    /// it to the disk, as the WAL is written in order. A crash in between
    /// forgets only that the attempt began (`attempts` one lower; the
    /// recording is queued either way). This saves one of the three fsyncs
    /// each upload waited for, under the spool's lock (BENCHMARKS.md, "Call
    /// end → delivered").
    pub fn begin_attempt(&self, id: &str, now: i64) -> Result<bool, SpoolError> {
        self.relaxed(|| {
            self.update(
                "UPDATE recordings SET state = 'uploading', attempts = attempts + 1, updated_at = ?2 \
                 WHERE id = ?1 AND state IN ('queued', 'uploading')",
                params![id, now],
            )
        })
    }

    /// Runs `f` with `synchronous=NORMAL` (its commits reach the WAL, not
    /// the disk), then back to `FULL`.
    fn relaxed<T>(&self, f: impl FnOnce() -> Result<T, SpoolError>) -> Result<T, SpoolError> {
        self.conn
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| self.err(e))?;
        let r = f();
        let back = self
            .conn
            .pragma_update(None, "synchronous", "FULL")
            .map_err(|e| self.err(e));
        let r = r?;
        back?;
        Ok(r)
    }

    /// The server confirmed `offset` bytes of the upload at `location`.
    pub fn checkpoint(
        &self,
        id: &str,
        location: &str,
        offset: u64,
        now: i64,
    ) -> Result<bool, SpoolError> {
        self.update(
            "UPDATE recordings SET upload_location = ?2, upload_offset = ?3, updated_at = ?4 \
             WHERE id = ?1 AND state = 'uploading'",
            params![id, location, offset as i64, now],
        )
    }

    /// Forget the upload location (404/410: start again).
    pub fn clear_upload(&self, id: &str, now: i64) -> Result<bool, SpoolError> {
        self.update(
            "UPDATE recordings SET upload_location = NULL, upload_offset = 0, updated_at = ?2 \
             WHERE id = ?1",
            params![id, now],
        )
    }

    /// Any progress resets the backoff exponent.
    pub fn reset_retries(&self, id: &str) -> Result<bool, SpoolError> {
        self.update(
            "UPDATE recordings SET retries = 0 WHERE id = ?1 AND retries <> 0",
            params![id],
        )
    }

    /// `/v1/calls` answered 200/201. The id goes to the delivered record
    /// first (fsynced), then the row changes.
    pub fn mark_delivered(&mut self, id: &str, now: i64) -> Result<bool, SpoolError> {
        if let Err(e) = self.delivered.append(id) {
            // The database alone still says it; only a rebuild would miss it.
            tracing::warn!(%id, "spool: cannot add to {DELIVERED_LOG}: {e}");
        }
        self.update_counted(
            "UPDATE recordings SET state = 'delivered', delivered_at = ?2, updated_at = ?2, \
             upload_location = NULL, last_error = NULL, retries = 0, next_attempt_at = 0 \
             WHERE id = ?1 AND state IN ('queued', 'uploading')",
            params![id, now],
            "delivered",
        )
    }

    /// Asks to learn when `id` is delivered (kept across restarts, whatever
    /// `retention` removes): a trigger marks the watch in the same
    /// transaction as [`Spool::mark_delivered`]. `note` is the watcher's own
    /// data (the folder source: which PBX files to move or delete).
    pub fn watch_delivery(&self, id: &str, note: &str) -> Result<(), SpoolError> {
        self.update(
            "INSERT OR REPLACE INTO delivery_watch (id, note, delivered) VALUES (?1, ?2, \
             (SELECT COUNT(*) FROM recordings WHERE id = ?1 AND state = 'delivered'))",
            params![id, note],
        )?;
        Ok(())
    }

    /// Watched recordings delivered since: `(id, note)`.
    pub fn delivered_watches(&self) -> Result<Vec<(String, String)>, SpoolError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT id, note FROM delivery_watch WHERE delivered = 1 LIMIT 1000")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// Whether any watch is still waiting for its recording's delivery.
    pub fn watches_pending(&self) -> Result<bool, SpoolError> {
        self.conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM delivery_watch WHERE delivered = 0)",
                [],
                |r| r.get::<_, bool>(0),
            )
            .map_err(|e| self.err(e))
    }

    /// Forgets a watch (its action is done).
    pub fn unwatch_delivery(&self, id: &str) -> Result<(), SpoolError> {
        self.update("DELETE FROM delivery_watch WHERE id = ?1", params![id])?;
        Ok(())
    }

    /// A transient failure: due again at `next_at`. Stays `uploading` when a
    /// tus location is known (shown in `spool list`), else `queued`.
    pub fn retry_later(
        &self,
        id: &str,
        next_at: i64,
        error: &str,
        count_retry: bool,
        now: i64,
    ) -> Result<bool, SpoolError> {
        self.update(
            "UPDATE recordings SET \
               state = CASE WHEN upload_location IS NULL THEN 'queued' ELSE 'uploading' END, \
               next_attempt_at = ?2, last_error = ?3, retries = retries + ?4, updated_at = ?5 \
             WHERE id = ?1 AND state IN ('queued', 'uploading')",
            params![id, next_at, error, i64::from(count_retry), now],
        )
    }

    /// The cloud refused the recording (`status` 0: it could not be sent at
    /// all, `body` says why).
    pub fn mark_failed(
        &self,
        id: &str,
        status: u16,
        body: &str,
        now: i64,
    ) -> Result<bool, SpoolError> {
        self.update(
            "UPDATE recordings SET state = 'failed', failed_status = ?2, failed_body = ?3, \
               last_error = ?4, upload_location = NULL, upload_offset = 0, updated_at = ?5 \
             WHERE id = ?1 AND state IN ('queued', 'uploading')",
            params![
                id,
                i64::from(status),
                body,
                if status == 0 {
                    crate::upload::policy::truncate(body, 200)
                } else {
                    format!(
                        "HTTP {status}: {}",
                        crate::upload::policy::truncate(body, 200)
                    )
                },
                now
            ],
        )
    }

    /// `spool retry ID`: failed (or waiting) → due now.
    pub fn retry(&self, id: &str, now: i64) -> Result<(), SpoolError> {
        let ok = self.update(
            "UPDATE recordings SET state = CASE WHEN state = 'failed' THEN 'queued' ELSE state END, \
               next_attempt_at = 0, retries = 0, failed_status = NULL, failed_body = NULL, updated_at = ?2 \
             WHERE id = ?1 AND state IN ('failed', 'queued', 'uploading')",
            params![id, now],
        )?;
        if ok {
            return Ok(());
        }
        match self.get(id)? {
            None => Err(SpoolError::NotFound(id.to_string())),
            // recorded / delivered / filtered: nothing to retry.
            Some(_) => Ok(()),
        }
    }

    /// `spool retry --all-failed`: how many were requeued.
    pub fn retry_all_failed(&self, now: i64) -> Result<usize, SpoolError> {
        let n = self
            .conn
            .execute(
                "UPDATE recordings SET state = 'queued', next_attempt_at = 0, retries = 0, \
                   failed_status = NULL, failed_body = NULL, updated_at = ?1 WHERE state = 'failed'",
                params![now],
            )
            .map_err(|e| self.err(e))?;
        Ok(n)
    }

    /// Remove `<id>.json` then `<id>.wav`, then the FLAC kept for upload
    /// (`.<id>.flac`, and its temp file) (missing files are fine), then
    /// fsync the directory ([`remove_pair_files`]).
    pub(super) fn remove_files(&self, id: &str) -> Result<(), SpoolError> {
        remove_pair_files(&self.dir, id)
    }

    /// A delivered recording whose files are gone (removed by
    /// [`remove_pair_files`] off the database's lock): its row goes. False
    /// (nothing changed) while a file is still there, or when it is not
    /// delivered.
    pub fn forget_delivered(&mut self, id: &str) -> Result<bool, SpoolError> {
        if self.json_path(id).exists() || self.wav_path(id).exists() {
            return Ok(false);
        }
        let gone = self.update(
            "DELETE FROM recordings WHERE id = ?1 AND state = 'delivered'",
            params![id],
        )?;
        if gone {
            self.compact_delivered_log();
        }
        Ok(gone)
    }

    /// [`Self::remove_files`] for a pass over many recordings: false when
    /// they could not be removed, reported the first time for this id (the
    /// pass goes on with the others and tries this one again next time).
    pub(super) fn remove_files_or_report(&mut self, id: &str) -> bool {
        match self.remove_files(id) {
            Ok(()) => {
                self.undeletable.remove(id);
                true
            }
            Err(e) => {
                if self.undeletable.insert(id.to_string()) {
                    tracing::error!(%id, "cannot remove a recording's files (left; tried again at every pass): {e}");
                }
                false
            }
        }
    }

    /// `spool purge ID`: files and row, whatever the state.
    pub fn purge(&self, id: &str) -> Result<(), SpoolError> {
        if !valid_id(id) {
            return Err(SpoolError::BadId(id.to_string()));
        }
        let known = self.get(id)?.is_some();
        let on_disk = self.json_path(id).exists() || self.wav_path(id).exists();
        if !known && !on_disk {
            return Err(SpoolError::NotFound(id.to_string()));
        }
        self.remove_files(id)?;
        self.update("DELETE FROM recordings WHERE id = ?1", params![id])?;
        Ok(())
    }

    /// Remove recordings delivered at least `retention` ago (files, then
    /// rows). Returns the ids removed.
    pub fn expire_delivered(
        &mut self,
        now: i64,
        retention: Duration,
    ) -> Result<Vec<String>, SpoolError> {
        let cutoff = now.saturating_sub(to_ms(retention));
        let rows = self.select(
            "state = 'delivered' AND delivered_at <= ?1 ORDER BY delivered_at LIMIT 1000",
            params![cutoff],
        )?;
        let mut out = Vec::new();
        for e in rows {
            // One recording whose files cannot be removed is skipped (and
            // reported once): retention goes on for the others.
            if !self.remove_files_or_report(&e.id) {
                continue;
            }
            if self.update(
                "DELETE FROM recordings WHERE id = ?1 AND state = 'delivered'",
                params![e.id],
            )? {
                out.push(e.id);
            }
        }
        self.compact_delivered_log();
        Ok(out)
    }

    /// Drops the ids whose files are gone from [`DELIVERED_LOG`] once it has
    /// grown (nothing is left to send twice for them).
    pub(super) fn compact_delivered_log(&mut self) {
        let lines = self.delivered.lines;
        if lines < DELIVERED_LOG_COMPACT {
            return;
        }
        let dir = self.dir.clone();
        let alive = |id: &str| {
            dir.join(format!("{id}.json")).exists() || dir.join(format!("{id}.wav")).exists()
        };
        let live = self.delivered.ids.iter().filter(|id| alive(id)).count();
        if lines <= 2 * live {
            return;
        }
        if let Err(e) = self.delivered.compact(alive) {
            tracing::warn!("spool: cannot compact {DELIVERED_LOG}: {e}");
        }
    }

    /// Rows per state (every state present, zeros included).
    pub fn depth_by_state(&self) -> Result<BTreeMap<State, u64>, SpoolError> {
        let mut out: BTreeMap<State, u64> = State::ALL.into_iter().map(|s| (s, 0)).collect();
        let mut st = self
            .conn
            .prepare_cached("SELECT state, COUNT(*) FROM recordings GROUP BY state")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .map_err(|e| self.err(e))?;
        for r in rows {
            let (s, n) = r.map_err(|e| self.err(e))?;
            if let Some(s) = State::parse(&s) {
                *out.entry(s).or_default() += n.max(0) as u64;
            }
        }
        Ok(out)
    }

    /// `recorded_at` of the oldest undelivered recording (Unix ms).
    pub fn oldest_undelivered(&self) -> Result<Option<i64>, SpoolError> {
        self.conn
            .query_row(
                "SELECT MIN(recorded_at) FROM recordings \
                 WHERE state IN ('recorded', 'queued', 'uploading', 'failed')",
                [],
                |r| r.get::<_, Option<i64>>(0),
            )
            .map_err(|e| self.err(e))
    }
}

/// Remove a recording's files from the spool directory `dir`: `<id>.json`
/// then `<id>.wav`, then the FLAC kept for upload (`.<id>.flac`, and its
/// temp file) (missing files are fine), then fsync the directory. Needs no
/// database: a delivered recording's files go without holding the spool's
/// lock (a large WAV takes tens of milliseconds to remove, ext4 freeing its
/// extents; BENCHMARKS.md, "Upload throughput").
pub fn remove_pair_files(dir: &Path, id: &str) -> Result<(), SpoolError> {
    let mut first_error = None;
    for p in [
        dir.join(format!("{id}.json")),
        dir.join(format!("{id}.wav")),
        dir.join(format!(".{id}.flac")),
        dir.join(format!(".{id}.flac.tmp")),
    ] {
        // Every file is tried (what can go, goes); the first failure is
        // the answer.
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                first_error.get_or_insert(SpoolError::Io { path: p, source });
            }
        }
    }
    sync_dir(dir).map_err(|source| SpoolError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    first_error.map_or(Ok(()), Err)
}
