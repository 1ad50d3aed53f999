//! The spool queue: which recording is where on its way to the cloud.
//!
//! In: complete recording pairs in the spool directory (`<id>.wav` +
//! `<id>.json`, written by [`crate::recording`]: WAV renamed first, JSON last,
//! so a `<id>.json` means the pair is complete; hidden files are recordings in
//! progress and are never looked at), and state changes from the delivery task
//! and from `pbx-edge spool retry|purge`. Out: a durable per-recording state,
//! the work that is due, and figures for metrics and `pbx-edge spool list`.
//!
//! # On-disk format
//! One SQLite database, `<spool dir>/spool.db` (plus SQLite's `spool.db-wal`
//! and `spool.db-shm`), mode 0600, WAL journal with `synchronous=FULL`: every
//! state change is one transaction that is on disk (WAL fsynced) before the
//! call returns, so nothing is acknowledged before it is durable. Several
//! processes may open it at once (the daemon and the `spool` commands); writers
//! wait up to 10 s for each other (`busy_timeout`). `PRAGMA user_version`
//! holds the schema version ([`SCHEMA_VERSION`]).
//!
//! Table `recordings`, one row per recording id:
//! `state` (`recorded`, `queued`, `uploading`, `delivered`, `failed`,
//! `filtered`), `size` (WAV bytes), `recorded_at` (JSON file mtime, Unix ms),
//! `adopted_at`, `updated_at`, `attempts` (requests started, all time),
//! `retries` (consecutive transient failures: the backoff exponent),
//! `next_attempt_at` (Unix ms; due when ≤ now), `last_error`,
//! `upload_location` + `upload_offset` (tus: the upload's URL and the last
//! offset the server confirmed), `failed_status` + `failed_body` (the cloud's
//! refusal), `delivered_at`, `filter_reason`. Table `counters` (name, value)
//! keeps totals across restarts (`delivered`, `filtered`).
//!
//! # States
//! `recorded` (adopted by the scanner) → `queued` (passed the local filters)
//! or `filtered` (kept only with `keep_filtered`; otherwise files and row are
//! removed and only the counter remains) → `uploading` (a tus location and
//! offset may be set) → `delivered` (after `200`/`201` on `/v1/calls`) or
//! `failed` (400/413/415/422, with the body; only `spool retry` requeues it).
//! A transient failure puts the row back to `queued` (or keeps `uploading`
//! when a tus location is known) with `next_attempt_at` in the future.
//!
//! # Durability window (docs/durability.md)
//! What a crash can cost before a pair reaches this queue, per call in
//! progress ([`crate::recording`] writes the files):
//! - the process dies (SIGKILL, OOM, panic): at most `recording.jitter`
//!   plus 200 ms of its latest audio (700 ms by default). The engine holds back
//!   `jitter` and hands over chunks of at least 100 ms; each is `write()`n to
//!   the `.part` WAV before the engine goes on, and the page cache survives
//!   the process, so no fsync is needed for this.
//! - power loss: that plus [`crate::recording::SYNC_INTERVAL`] (1 s): the
//!   spool's file system is synced once a second while recordings are
//!   written; a finished pair is fsynced (files, then directory) before its
//!   `<id>.json` appears.
//! - every call answered (SIPREC `200 OK`) leaves a pair: a note written
//!   before the answer is sent becomes a recording with an empty WAV if no
//!   audio ever reached the disk (`truncated`, `end_reason` `crash`).
//! - a call whose BYE was answered is complete: the SIPREC source sends that
//!   `200 OK` only once the pair is durable.
//!
//! # Recovery rules (after a crash or power loss)
//! - A pair on disk without a row is adopted by the next scan (idempotent:
//!   `INSERT OR IGNORE`); a row is only created after its `<id>.json` was seen.
//! - `uploading` with a location: the uploader `HEAD`s it and continues from
//!   the server's `Upload-Offset` (404/410: a new upload). Without a location
//!   (cut between the creation `POST` and the checkpoint): a new upload; the
//!   orphan expires on the server. Nothing is "in flight" in the database:
//!   whatever was running when the process died is simply due again.
//! - `delivered` rows whose files still exist are cleaned up once `retention`
//!   has passed; files are removed JSON first, then WAV, then the directory is
//!   fsynced and only then the row deleted, so a crash in between never makes
//!   the scanner adopt a delivered recording again.
//! - A crash after the cloud accepted `/v1/calls` but before `delivered` was
//!   committed sends the call again: the `Idempotency-Key` (the recording id)
//!   makes the cloud keep one copy (delivery is at least once, CONTRACT §4).
//! - Delivered ids are also kept in a small durable record beside the
//!   database, [`DELIVERED_LOG`] (`spool.delivered`: one id per line,
//!   appended and fsynced before the row becomes `delivered`, compacted to
//!   the ids whose files are still on disk). A row still queued whose id the
//!   record names (a crash between the two writes) is settled as delivered
//!   when the delivery task opens the spool.
//! - A corrupt `spool.db` (SQLite says "not a database" or "malformed", or
//!   `PRAGMA quick_check` fails when the delivery task opens it, or any query
//!   later says so) is moved aside with its `-wal`/`-shm` as
//!   `spool.db.corrupt-<UTC time>` and a new one is built from the pairs on
//!   disk ([`Spool::open_repairing`]): pairs named in [`DELIVERED_LOG`] come
//!   back as `delivered` (kept for `retention`, never sent again), the others
//!   as `recorded` (sent; if one had been accepted by the cloud just before
//!   the crash, its idempotency key keeps the cloud's copy single). A missing
//!   `spool.db` (deleted, or replaced under the running daemon) is rebuilt
//!   the same way. Lost in a rebuild: attempt counts, `failed` states (such
//!   recordings are tried once more), tus upload locations (uploads start
//!   again) and the folder source's after-delivery watches (those PBX files
//!   are left in place). While the database cannot be used, `/readyz` fails
//!   with the reason and the delivery task tries again every scan; it never
//!   exits for it.
//! - Nothing undelivered is ever deleted automatically: only `delivered`
//!   recordings (after `retention`), filtered ones (unless kept) and
//!   `spool purge` remove files.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};

use crate::sys::{create_private_file, free_bytes, sync_dir};

/// The database file inside the spool directory.
pub const DB_FILE: &str = "spool.db";
/// Space held back in the spool directory so that the database can still
/// record deliveries (which free space) when the disk is full.
pub const RESERVE_FILE: &str = ".spool.reserve";
/// Size of [`RESERVE_FILE`].
pub const RESERVE_BYTES: u64 = 4 << 20;
/// Version of the schema below (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 1;
/// The durable record of delivered ids beside the database (see the module
/// doc): one id per line.
pub const DELIVERED_LOG: &str = "spool.delivered";
/// Compact [`DELIVERED_LOG`] once it has at least this many lines and more
/// than twice as many as ids whose files are still there.
const DELIVERED_LOG_COMPACT: usize = 1024;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS recordings (
    id TEXT PRIMARY KEY NOT NULL,
    state TEXT NOT NULL,
    size INTEGER NOT NULL,
    recorded_at INTEGER NOT NULL,
    adopted_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    retries INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    upload_location TEXT,
    upload_offset INTEGER NOT NULL DEFAULT 0,
    failed_status INTEGER,
    failed_body TEXT,
    delivered_at INTEGER,
    filter_reason TEXT
);
CREATE INDEX IF NOT EXISTS recordings_due ON recordings (state, next_attempt_at);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY NOT NULL,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS delivery_watch (
    id TEXT PRIMARY KEY NOT NULL,
    note TEXT NOT NULL,
    delivered INTEGER NOT NULL DEFAULT 0
);
CREATE TRIGGER IF NOT EXISTS delivery_watch_mark AFTER UPDATE OF state ON recordings
WHEN NEW.state = 'delivered'
BEGIN UPDATE delivery_watch SET delivered = 1 WHERE id = NEW.id; END;
";

/// Errors of the spool queue.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpoolError {
    #[error("spool database {path}: {source}")]
    Db {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "spool database {path} has schema version {found}, this pbx-edge knows {SCHEMA_VERSION}"
    )]
    Schema { path: PathBuf, found: i64 },
    #[error("spool {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("spool database {path} is corrupt: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error("the spool database is not open")]
    NotOpen,
    #[error("no recording {0:?} in the spool")]
    NotFound(String),
    #[error("{0:?} is not a recording id")]
    BadId(String),
}

impl SpoolError {
    /// The database file is damaged (or not a database at all): moving it
    /// aside and rebuilding is the way out ([`Spool::open_repairing`]).
    pub fn is_corrupt(&self) -> bool {
        match self {
            SpoolError::Corrupt { .. } => true,
            SpoolError::Db { source, .. } => matches!(
                source.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
            ),
            _ => false,
        }
    }

    /// One line for people: what is wrong with the database.
    pub fn describe(&self) -> String {
        match self {
            SpoolError::Db { path, source } if self.is_corrupt() => {
                format!("spool database {} is corrupt ({source})", path.display())
            }
            other => other.to_string(),
        }
    }

    /// The database could not write because the disk is full.
    pub fn is_disk_full(&self) -> bool {
        match self {
            SpoolError::Db { source, .. } => {
                matches!(
                    source.sqlite_error_code(),
                    Some(rusqlite::ErrorCode::DiskFull)
                ) || source.to_string().contains("disk is full")
            }
            SpoolError::Io { source, .. } => source.raw_os_error() == Some(libc::ENOSPC),
            _ => false,
        }
    }
}

/// Where a recording is on its way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum State {
    Recorded,
    Queued,
    Uploading,
    Delivered,
    Failed,
    Filtered,
}

impl State {
    pub const ALL: [State; 6] = [
        State::Recorded,
        State::Queued,
        State::Uploading,
        State::Delivered,
        State::Failed,
        State::Filtered,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Recorded => "recorded",
            State::Queued => "queued",
            State::Uploading => "uploading",
            State::Delivered => "delivered",
            State::Failed => "failed",
            State::Filtered => "filtered",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// Not yet in the cloud and still meant to go there.
    pub fn is_undelivered(self) -> bool {
        matches!(
            self,
            State::Recorded | State::Queued | State::Uploading | State::Failed
        )
    }
}

/// One row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: String,
    pub state: State,
    pub size: u64,
    pub recorded_at_ms: i64,
    pub adopted_at_ms: i64,
    pub updated_at_ms: i64,
    pub attempts: u32,
    pub retries: u32,
    pub next_attempt_ms: i64,
    pub last_error: Option<String>,
    pub location: Option<String>,
    pub offset: u64,
    pub failed_status: Option<u16>,
    pub failed_body: Option<String>,
    pub delivered_at_ms: Option<i64>,
    pub filter_reason: Option<String>,
}

const COLUMNS: &str = "id, state, size, recorded_at, adopted_at, updated_at, attempts, retries, \
     next_attempt_at, last_error, upload_location, upload_offset, failed_status, failed_body, \
     delivered_at, filter_reason";

fn entry_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Entry> {
    let state: String = r.get(1)?;
    Ok(Entry {
        id: r.get(0)?,
        // An unknown state (a newer pbx-edge wrote it) is shown as failed:
        // never uploaded, never deleted.
        state: State::parse(&state).unwrap_or(State::Failed),
        size: r.get::<_, i64>(2)?.max(0) as u64,
        recorded_at_ms: r.get(3)?,
        adopted_at_ms: r.get(4)?,
        updated_at_ms: r.get(5)?,
        attempts: r.get::<_, i64>(6)?.clamp(0, u32::MAX as i64) as u32,
        retries: r.get::<_, i64>(7)?.clamp(0, u32::MAX as i64) as u32,
        next_attempt_ms: r.get(8)?,
        last_error: r.get(9)?,
        location: r.get(10)?,
        offset: r.get::<_, i64>(11)?.max(0) as u64,
        failed_status: r
            .get::<_, Option<i64>>(12)?
            .and_then(|s| u16::try_from(s).ok()),
        failed_body: r.get(13)?,
        delivered_at_ms: r.get(14)?,
        filter_reason: r.get(15)?,
    })
}

/// What one directory scan found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ScanReport {
    /// Pairs newly adopted as `recorded`.
    pub adopted: Vec<String>,
    /// `<id>.json` files without their `<id>.wav`.
    pub incomplete: u64,
}

pub use crate::sys::now_ms;

fn to_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Whether `id` can be a recording id (a plain file stem, not hidden).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 200
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'+' | b'@'))
}

/// The spool's database, opened by one process. Not `Sync`: the delivery
/// task keeps it behind a mutex and calls it from blocking threads.
pub struct Spool {
    dir: PathBuf,
    db_path: PathBuf,
    conn: Connection,
    /// Device and inode of `spool.db` when opened (see [`Spool::is_detached`]).
    identity: Option<(u64, u64)>,
    delivered: DeliveredLog,
}

/// How the queue database was rebuilt ([`Spool::open_repairing`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repair {
    /// Why: what SQLite said, or that the file was missing.
    pub reason: String,
    /// Where the damaged database went.
    pub moved_to: Option<PathBuf>,
    /// Pairs adopted from the disk.
    pub recordings: usize,
    /// Of those, already delivered (from [`DELIVERED_LOG`]): not sent again.
    pub known_delivered: usize,
}

impl std::fmt::Display for Repair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "spool.db {}", self.reason)?;
        if let Some(m) = &self.moved_to {
            let name = m
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default();
            write!(f, ", moved aside to {name}")?;
        }
        write!(
            f,
            "; rebuilt from the {} recordings on disk ({} already delivered, not sent again)",
            self.recordings, self.known_delivered
        )
    }
}

fn file_identity(p: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool").field("dir", &self.dir).finish()
    }
}

impl Spool {
    /// Open (creating if needed, mode 0600) `<dir>/spool.db`. `dir` must exist.
    pub fn open(dir: &Path) -> Result<Spool, SpoolError> {
        let db_path = dir.join(DB_FILE);
        if !db_path.exists() {
            // Created by us with mode 0600; SQLite gives -wal/-shm the same mode.
            create_private_file(&db_path).map_err(|source| SpoolError::Io {
                path: db_path.clone(),
                source,
            })?;
        }
        let dbe = |source| SpoolError::Db {
            path: db_path.clone(),
            source,
        };
        let conn = Connection::open(&db_path).map_err(dbe)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(dbe)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(dbe)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(dbe)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(dbe)?;
        if version > SCHEMA_VERSION {
            return Err(SpoolError::Schema {
                path: db_path,
                found: version,
            });
        }
        conn.execute_batch(SCHEMA).map_err(dbe)?;
        if version < SCHEMA_VERSION {
            conn.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(dbe)?;
        }
        give_to_dir_owner(dir, &db_path);
        Ok(Spool {
            dir: dir.to_path_buf(),
            identity: file_identity(&db_path),
            db_path,
            conn,
            delivered: DeliveredLog::load(dir),
        })
    }

    /// [`Spool::open`] for the process that delivers (it holds
    /// `.delivery.lock`): checks the database (`PRAGMA quick_check`); a
    /// corrupt one is moved aside and rebuilt from the pairs on disk, a
    /// missing one rebuilt (see the module doc). Rows the delivered record
    /// names are settled as delivered. `Some(repair)` says what was done.
    pub fn open_repairing(dir: &Path) -> Result<(Spool, Option<Repair>), SpoolError> {
        let db_path = dir.join(DB_FILE);
        let existed = fs::symlink_metadata(&db_path).is_ok();
        let opened = Spool::open(dir).and_then(|s| s.check_integrity().map(|()| s));
        let (mut spool, reason, moved_to) = match opened {
            Ok(s) => {
                // Missing although this spool had one (it has delivered
                // before: the delivered record exists): a rebuild, if there
                // is anything to rebuild from. A first start just adopts.
                let had_db = dir.join(DELIVERED_LOG).exists();
                let reason =
                    (!existed && had_db && has_pairs(dir)).then(|| "was missing".to_string());
                (s, reason, None)
            }
            Err(e) if e.is_corrupt() => {
                let detail = match &e {
                    SpoolError::Corrupt { detail, .. } => detail.clone(),
                    SpoolError::Db { source, .. } => source.to_string(),
                    other => other.to_string(),
                };
                let detail: String = detail.chars().take(200).collect();
                let moved = move_aside(dir)?;
                tracing::error!(
                    "spool database {} is corrupt ({detail}): moved aside to {}; rebuilding the queue from the recordings on disk",
                    db_path.display(),
                    moved.display()
                );
                let s = Spool::open(dir)?;
                s.check_integrity()?;
                (s, Some(format!("was corrupt ({detail})")), Some(moved))
            }
            Err(e) => return Err(e),
        };
        let repair = match reason {
            Some(reason) => {
                let report = spool.scan(now_ms())?;
                let known_delivered = report
                    .adopted
                    .iter()
                    .filter(|id| spool.delivered.ids.contains(*id))
                    .count();
                Some(Repair {
                    reason,
                    moved_to,
                    recordings: report.adopted.len(),
                    known_delivered,
                })
            }
            None => None,
        };
        spool.settle_known_delivered(now_ms())?;
        Ok((spool, repair))
    }

    /// `PRAGMA quick_check`: `Err(Corrupt)` unless SQLite finds it sound.
    pub fn check_integrity(&self) -> Result<(), SpoolError> {
        let mut st = self
            .conn
            .prepare("PRAGMA quick_check(5)")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| self.err(e))?;
        let found: Vec<String> = rows.collect::<Result<_, _>>().map_err(|e| self.err(e))?;
        if found.len() == 1 && found[0] == "ok" {
            return Ok(());
        }
        Err(SpoolError::Corrupt {
            path: self.db_path.clone(),
            detail: found.join("; "),
        })
    }

    /// `spool.db` is no longer the file this connection has open (deleted,
    /// replaced or moved away by another process): reopen to see it.
    pub fn is_detached(&self) -> bool {
        self.identity.is_none() || file_identity(&self.db_path) != self.identity
    }

    /// Rows not yet delivered whose id the delivered record names (a crash
    /// between the record and the database): delivered now.
    fn settle_known_delivered(&mut self, now: i64) -> Result<usize, SpoolError> {
        let pending = self.select(
            "state IN ('recorded', 'queued', 'uploading', 'failed')",
            params![],
        )?;
        let mut n = 0;
        for e in pending {
            if self.delivered.ids.contains(&e.id)
                && self.update_counted(
                    "UPDATE recordings SET state = 'delivered', delivered_at = ?2, updated_at = ?2, \
                     upload_location = NULL, last_error = NULL, retries = 0, next_attempt_at = 0 \
                     WHERE id = ?1 AND state <> 'delivered'",
                    params![e.id, now],
                    "delivered",
                )?
            {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Whether the delivered record names `id`.
    pub fn known_delivered(&self, id: &str) -> bool {
        self.delivered.ids.contains(id)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Create [`RESERVE_FILE`] (real blocks, fsynced) if it is missing and
    /// there is room. Returns whether it exists now.
    pub fn ensure_reserve(&self) -> bool {
        use std::io::Write;
        let p = self.dir.join(RESERVE_FILE);
        if fs::metadata(&p)
            .map(|m| m.len() >= RESERVE_BYTES)
            .unwrap_or(false)
        {
            return true;
        }
        if free_bytes(&self.dir).is_some_and(|f| f < 2 * RESERVE_BYTES) {
            return false;
        }
        let res = (|| {
            let mut f = create_private_file(&p)?;
            let block = vec![0u8; 64 << 10];
            let mut left = RESERVE_BYTES;
            while left > 0 {
                let n = left.min(block.len() as u64) as usize;
                f.write_all(block.get(..n).unwrap_or(&block))?;
                left -= n as u64;
            }
            f.sync_all()
        })();
        if res.is_err() {
            let _ = fs::remove_file(&p);
            return false;
        }
        true
    }

    /// Give the reserved space back (the disk is full). Whether there was any.
    pub fn release_reserve(&self) -> bool {
        fs::remove_file(self.dir.join(RESERVE_FILE)).is_ok()
    }

    fn err(&self, source: rusqlite::Error) -> SpoolError {
        SpoolError::Db {
            path: self.db_path.clone(),
            source,
        }
    }

    /// `<dir>/<id>.wav`
    pub fn wav_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.wav"))
    }

    /// `<dir>/<id>.json`
    pub fn json_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Adopt every complete pair that has no row yet (state `recorded`).
    pub fn scan(&mut self, now: i64) -> Result<ScanReport, SpoolError> {
        let rd = fs::read_dir(&self.dir).map_err(|source| SpoolError::Io {
            path: self.dir.clone(),
            source,
        })?;
        let mut candidates = Vec::new();
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(id) = name.strip_suffix(".json") else {
                continue;
            };
            if !valid_id(id) {
                continue;
            }
            candidates.push((id.to_string(), e.metadata().ok()));
        }
        let known: HashSet<String> = {
            let mut st = self
                .conn
                .prepare_cached("SELECT id FROM recordings")
                .map_err(|e| self.err(e))?;
            let rows = st
                .query_map([], |r| r.get::<_, String>(0))
                .map_err(|e| self.err(e))?;
            rows.collect::<Result<_, _>>().map_err(|e| self.err(e))?
        };
        let mut report = ScanReport::default();
        let mut new = Vec::new();
        for (id, meta) in candidates {
            if known.contains(&id) {
                continue;
            }
            let Ok(wav) = fs::metadata(self.wav_path(&id)) else {
                report.incomplete += 1;
                continue;
            };
            let recorded_at = meta
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(to_ms)
                .unwrap_or(now);
            new.push((id, wav.len(), recorded_at));
        }
        if new.is_empty() {
            return Ok(report);
        }
        let tx = self.conn.transaction().map_err(|e| SpoolError::Db {
            path: self.db_path.clone(),
            source: e,
        })?;
        {
            // A pair the delivered record names (the database was rebuilt)
            // comes back delivered: kept for `retention`, never sent again.
            let mut ins = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO recordings (id, state, size, recorded_at, adopted_at, updated_at, delivered_at) \
                     VALUES (?1, CASE WHEN ?5 THEN 'delivered' ELSE 'recorded' END, ?2, ?3, ?4, ?4, \
                     CASE WHEN ?5 THEN ?4 ELSE NULL END)",
                )
                .map_err(|e| SpoolError::Db {
                    path: self.db_path.clone(),
                    source: e,
                })?;
            for (id, size, recorded_at) in &new {
                // Checked again right before the insert: a `spool purge`
                // running at the same moment removes the JSON first.
                if !self.dir.join(format!("{id}.json")).exists() {
                    continue;
                }
                let delivered = self.delivered.ids.contains(id);
                let n = ins
                    .execute(params![id, *size as i64, recorded_at, now, delivered])
                    .map_err(|e| SpoolError::Db {
                        path: self.db_path.clone(),
                        source: e,
                    })?;
                if n == 1 {
                    report.adopted.push(id.clone());
                }
            }
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(report)
    }

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
    /// uploading, `next_attempt_at` ≤ now), oldest first, skipping `busy`.
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
            "state IN ('queued', 'uploading') AND next_attempt_at <= ?1 \
             ORDER BY next_attempt_at, recorded_at, id LIMIT ?2",
            params![now, (limit + busy.len()) as i64],
        )?;
        Ok(rows
            .into_iter()
            .filter(|e| !busy.contains(&e.id))
            .take(limit)
            .collect())
    }

    /// When the next queued/uploading row becomes due (Unix ms), if any.
    pub fn next_due(&self) -> Result<Option<i64>, SpoolError> {
        self.conn
            .query_row(
                "SELECT MIN(next_attempt_at) FROM recordings WHERE state IN ('queued', 'uploading')",
                [],
                |r| r.get::<_, Option<i64>>(0),
            )
            .map_err(|e| self.err(e))
    }

    fn select(&self, where_: &str, p: impl rusqlite::Params) -> Result<Vec<Entry>, SpoolError> {
        let mut st = self
            .conn
            .prepare_cached(&format!("SELECT {COLUMNS} FROM recordings WHERE {where_}"))
            .map_err(|e| self.err(e))?;
        let rows = st.query_map(p, entry_from_row).map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Run one UPDATE; whether a row matched (false: purged meanwhile).
    fn update(&self, sql: &str, p: impl rusqlite::Params) -> Result<bool, SpoolError> {
        let n = self
            .conn
            .prepare_cached(sql)
            .and_then(|mut s| s.execute(p))
            .map_err(|e| self.err(e))?;
        Ok(n > 0)
    }

    /// One UPDATE/DELETE and, when it matched, `counter + 1`, in one
    /// transaction (a crash never leaves the state changed but not counted).
    fn update_counted(
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

    fn bump(&self, counter: &str, by: i64) -> Result<(), SpoolError> {
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
    pub fn drop_filtered(&self, id: &str) -> Result<bool, SpoolError> {
        self.remove_files(id)?;
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
    pub fn begin_attempt(&self, id: &str, now: i64) -> Result<bool, SpoolError> {
        self.update(
            "UPDATE recordings SET state = 'uploading', attempts = attempts + 1, updated_at = ?2 \
             WHERE id = ?1 AND state IN ('queued', 'uploading')",
            params![id, now],
        )
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

    /// Remove `<id>.json` then `<id>.wav` (missing files are fine), then
    /// fsync the directory.
    fn remove_files(&self, id: &str) -> Result<(), SpoolError> {
        for p in [self.json_path(id), self.wav_path(id)] {
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(SpoolError::Io { path: p, source }),
            }
        }
        sync_dir(&self.dir).map_err(|source| SpoolError::Io {
            path: self.dir.clone(),
            source,
        })
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
            self.remove_files(&e.id)?;
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
    fn compact_delivered_log(&mut self) {
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

/// Whether `dir` holds any recording pair (`<id>.json` with its WAV).
fn has_pairs(dir: &Path) -> bool {
    fs::read_dir(dir)
        .map(|rd| {
            rd.flatten().any(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.strip_suffix(".json")
                    .is_some_and(|id| valid_id(id) && dir.join(format!("{id}.wav")).exists())
            })
        })
        .unwrap_or(false)
}

/// Moves `spool.db` (and its `-wal`, `-shm`) aside as
/// `spool.db.corrupt-<UTC time>` (`-wal.corrupt-…`, …). Returns the new name
/// of the database.
fn move_aside(dir: &Path) -> Result<PathBuf, SpoolError> {
    let stamp: String = pbx_core::Timestamp::from_micros(now_ms().saturating_mul(1000))
        .to_rfc3339()
        .chars()
        .take(19)
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        + "Z";
    let mut n = 0;
    let suffix = loop {
        let s = if n == 0 {
            format!("corrupt-{stamp}")
        } else {
            format!("corrupt-{stamp}-{n}")
        };
        if !dir.join(format!("{DB_FILE}.{s}")).exists() {
            break s;
        }
        n += 1;
    };
    let target = dir.join(format!("{DB_FILE}.{suffix}"));
    for ext in ["", "-wal", "-shm"] {
        let from = dir.join(format!("{DB_FILE}{ext}"));
        let to = dir.join(format!("{DB_FILE}{ext}.{suffix}"));
        match fs::rename(&from, &to) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(SpoolError::Io { path: from, source }),
        }
    }
    sync_dir(dir).map_err(|source| SpoolError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    Ok(target)
}

/// What the delivered record's bytes say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveredRecord {
    /// The valid ids ([`valid_id`]) on complete lines.
    pub ids: HashSet<String>,
    /// Non-empty complete lines (valid or not).
    pub lines: usize,
    /// Where the complete lines end when the text does not end with a
    /// newline (a torn append).
    pub torn: Option<u64>,
}

/// Parses the delivered record ([`DELIVERED_LOG`]): one id per line; a last
/// line without its newline is torn and not read; lines that are not a
/// valid id (not UTF-8, bad characters) are counted and skipped. Never
/// panics; linear in the input.
pub fn parse_delivered(text: &[u8]) -> DeliveredRecord {
    let complete = match text.iter().rposition(|b| *b == b'\n') {
        Some(i) => &text[..=i],
        None => &text[..0],
    };
    let torn = (complete.len() < text.len()).then_some(complete.len() as u64);
    let mut ids = HashSet::new();
    let mut lines = 0;
    for line in complete.split(|b| *b == b'\n') {
        if line.is_empty() {
            continue;
        }
        lines += 1;
        if let Ok(id) = std::str::from_utf8(line) {
            if valid_id(id) {
                ids.insert(id.to_string());
            }
        }
    }
    DeliveredRecord { ids, lines, torn }
}

/// The delivered record ([`DELIVERED_LOG`]): ids, one per line, appended
/// with an fsync each; a torn last line (a crash mid-append) is ignored and
/// cut off at the next append.
#[derive(Debug)]
struct DeliveredLog {
    path: PathBuf,
    ids: HashSet<String>,
    /// Lines in the file (compaction counts them).
    lines: usize,
    /// Where the complete lines end when the file does not end with a
    /// newline (a torn append): cut there before the next append.
    torn: Option<u64>,
}

impl DeliveredLog {
    fn load(dir: &Path) -> DeliveredLog {
        let path = dir.join(DELIVERED_LOG);
        let text = fs::read(&path).unwrap_or_default();
        let DeliveredRecord { ids, lines, torn } = parse_delivered(&text);
        DeliveredLog {
            path,
            ids,
            lines,
            torn,
        }
    }

    fn append(&mut self, id: &str) -> io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        if self.ids.contains(id) {
            return Ok(());
        }
        let new = !self.path.exists();
        let mut f = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.path)?;
        if let Some(end) = self.torn {
            // A torn id is no id: it goes.
            f.set_len(end)?;
        }
        f.write_all(format!("{id}\n").as_bytes())?;
        f.sync_data()?;
        if new {
            if let Some(dir) = self.path.parent() {
                sync_dir(dir)?;
            }
        }
        self.torn = None;
        self.ids.insert(id.to_string());
        self.lines += 1;
        Ok(())
    }

    /// Rewrites the record with the ids `keep` says (temp file, fsync,
    /// rename, directory fsync).
    fn compact(&mut self, keep: impl Fn(&str) -> bool) -> io::Result<()> {
        use std::io::Write;
        let mut kept: Vec<String> = self.ids.iter().filter(|id| keep(id)).cloned().collect();
        kept.sort();
        let tmp = self.path.with_extension("delivered.tmp");
        {
            let mut f = create_private_file(&tmp)?;
            let mut text = kept.join("\n");
            if !text.is_empty() {
                text.push('\n');
            }
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            sync_dir(dir)?;
        }
        self.lines = kept.len();
        self.ids = kept.into_iter().collect();
        self.torn = None;
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// `pbx-edge spool ...`
// ---------------------------------------------------------------------------

/// When root opens the database (`pbx-edge spool list` run with sudo), the
/// files SQLite created must stay usable by the daemon's user: they are
/// given to the owner of the spool directory.
fn give_to_dir_owner(dir: &Path, db: &Path) {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    let Ok(m) = fs::metadata(dir) else { return };
    if m.uid() == 0 {
        return;
    }
    for suffix in ["", "-wal", "-shm"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::os::unix::fs::chown(Path::new(&p), Some(m.uid()), Some(m.gid()));
    }
}

/// Human age: `42s`, `5m03s`, `2h10m`, `3d04h`.
pub fn human_age(ms: i64) -> String {
    let s = (ms / 1000).max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// Human size: `812B`, `1.5KiB`, `12.0MiB`.
pub fn human_size(b: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < U.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b}B")
    } else {
        format!("{v:.1}{}", U[i])
    }
}

/// The table `spool list` prints.
/// `spool list --json`: every recording with its exact size in bytes and
/// age in milliseconds.
pub fn list_json(entries: &[Entry], now: i64) -> String {
    let rows: Vec<serde_json::Value> = entries
        .iter()
        .map(|e| {
            serde_json::json!({
                "id": e.id,
                "state": e.state.as_str(),
                "size_bytes": e.size,
                "age_ms": (now - e.recorded_at_ms).max(0),
                "recorded_at_ms": e.recorded_at_ms,
                "attempts": e.attempts,
                "upload_offset": e.offset,
                "last_error": e.last_error,
                "delivered_at_ms": e.delivered_at_ms,
            })
        })
        .collect();
    serde_json::to_string_pretty(&rows).unwrap_or_default()
}

pub fn render_list(entries: &[Entry], now: i64) -> String {
    use std::fmt::Write as _;
    let idw = entries.iter().map(|e| e.id.len()).max().unwrap_or(2).max(2);
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:<idw$}  {:<9}  {:>7}  {:>8}  {:>8}  LAST ERROR",
        "ID", "STATE", "AGE", "SIZE", "ATTEMPTS"
    );
    for e in entries {
        let mut state = e.state.as_str().to_string();
        if e.state == State::Uploading && e.size > 0 {
            state = format!("{state} {}%", e.offset.min(e.size) * 100 / e.size);
        }
        let err = match (e.state, &e.last_error) {
            (State::Filtered, _) => e.filter_reason.clone().unwrap_or_default(),
            (State::Queued | State::Uploading, Some(err)) if e.next_attempt_ms > now => {
                format!("{err} (next try in {})", human_age(e.next_attempt_ms - now))
            }
            (_, Some(err)) => err.clone(),
            (_, None) => String::new(),
        };
        let err: String = err.chars().filter(|c| !c.is_control()).take(160).collect();
        let _ = writeln!(
            o,
            "{:<idw$}  {:<9}  {:>7}  {:>8}  {:>8}  {}",
            e.id,
            state,
            human_age(now - e.recorded_at_ms),
            human_size(e.size),
            e.attempts,
            err
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, id: &str, bytes: usize) {
        fs::write(dir.join(format!("{id}.wav")), vec![0u8; bytes]).unwrap();
        fs::write(
            dir.join(format!("{id}.json")),
            format!("{{\"recording_id\":\"{id}\"}}"),
        )
        .unwrap();
    }

    #[test]
    fn scan_adopts_complete_pairs_once() {
        let d = tempfile::tempdir().unwrap();
        pair(d.path(), "a", 10);
        pair(d.path(), "b", 20);
        fs::write(d.path().join(".c.wav.part"), b"x").unwrap();
        fs::write(d.path().join(".c.start.json"), b"{}").unwrap();
        fs::write(d.path().join(".d.json.tmp"), b"{}").unwrap();
        fs::write(d.path().join("e.json"), b"{}").unwrap(); // WAV missing
        let mut s = Spool::open(d.path()).unwrap();
        let r = s.scan(1000).unwrap();
        let mut ad = r.adopted.clone();
        ad.sort();
        assert_eq!(ad, vec!["a", "b"]);
        assert_eq!(r.incomplete, 1);
        assert_eq!(s.scan(2000).unwrap().adopted, Vec::<String>::new());
        let a = s.get("a").unwrap().unwrap();
        assert_eq!(a.state, State::Recorded);
        assert_eq!(a.size, 10);
        // Reopen: the rows survive.
        drop(s);
        let mut s = Spool::open(d.path()).unwrap();
        assert_eq!(s.list().unwrap().len(), 2);
        assert!(s.scan(3000).unwrap().adopted.is_empty());
    }

    #[test]
    fn the_whole_life_of_a_recording() {
        let d = tempfile::tempdir().unwrap();
        pair(d.path(), "r1", 100);
        let mut s = Spool::open(d.path()).unwrap();
        s.scan(0).unwrap();
        assert!(s.due(10, 5, &HashSet::new()).unwrap().is_empty());
        assert!(s.mark_queued("r1", 1).unwrap());
        assert!(!s.mark_queued("r1", 1).unwrap());
        let due = s.due(10, 5, &HashSet::new()).unwrap();
        assert_eq!(due.len(), 1);
        let busy: HashSet<String> = ["r1".to_string()].into();
        assert!(s.due(10, 5, &busy).unwrap().is_empty());
        assert!(s.begin_attempt("r1", 2).unwrap());
        assert!(s.checkpoint("r1", "http://x/u/1", 50, 3).unwrap());
        assert!(s.retry_later("r1", 1000, "HTTP 503", true, 4).unwrap());
        let e = s.get("r1").unwrap().unwrap();
        assert_eq!(e.state, State::Uploading);
        assert_eq!(
            (e.location.as_deref(), e.offset),
            (Some("http://x/u/1"), 50)
        );
        assert_eq!((e.attempts, e.retries), (1, 1));
        assert!(s.due(999, 5, &HashSet::new()).unwrap().is_empty());
        assert_eq!(s.next_due().unwrap(), Some(1000));
        assert_eq!(s.due(1000, 5, &HashSet::new()).unwrap().len(), 1);
        assert!(s.begin_attempt("r1", 1001).unwrap());
        assert!(s.mark_delivered("r1", 1002).unwrap());
        let e = s.get("r1").unwrap().unwrap();
        assert_eq!(e.state, State::Delivered);
        assert_eq!(e.location, None);
        assert_eq!(s.counters().unwrap()["delivered"], 1);
        // Retention: not yet, then gone with its files.
        assert!(s
            .expire_delivered(1500, Duration::from_secs(1))
            .unwrap()
            .is_empty());
        assert!(d.path().join("r1.wav").exists());
        assert_eq!(
            s.expire_delivered(2002, Duration::from_secs(1)).unwrap(),
            vec!["r1"]
        );
        assert!(!d.path().join("r1.wav").exists());
        assert!(!d.path().join("r1.json").exists());
        assert!(s.get("r1").unwrap().is_none());
        // And never adopted again.
        assert!(s.scan(3000).unwrap().adopted.is_empty());
    }

    #[test]
    fn failed_stays_until_retried() {
        let d = tempfile::tempdir().unwrap();
        pair(d.path(), "f", 1);
        pair(d.path(), "g", 1);
        let mut s = Spool::open(d.path()).unwrap();
        s.scan(0).unwrap();
        for id in ["f", "g"] {
            s.mark_queued(id, 0).unwrap();
            s.begin_attempt(id, 0).unwrap();
            assert!(s.mark_failed(id, 422, "{\"error\":\"no\"}", 1).unwrap());
        }
        let e = s.get("f").unwrap().unwrap();
        assert_eq!(e.state, State::Failed);
        assert_eq!(e.failed_status, Some(422));
        assert_eq!(e.failed_body.as_deref(), Some("{\"error\":\"no\"}"));
        assert!(s.due(i64::MAX, 10, &HashSet::new()).unwrap().is_empty());
        // Expiry never touches undelivered recordings.
        assert!(s
            .expire_delivered(i64::MAX, Duration::ZERO)
            .unwrap()
            .is_empty());
        assert!(d.path().join("f.wav").exists());
        s.retry("f", 5).unwrap();
        assert_eq!(s.get("f").unwrap().unwrap().state, State::Queued);
        assert_eq!(s.due(5, 10, &HashSet::new()).unwrap().len(), 1);
        assert_eq!(s.retry_all_failed(6).unwrap(), 1);
        assert!(matches!(s.retry("nope", 0), Err(SpoolError::NotFound(_))));
    }

    #[test]
    fn purge_and_filters() {
        let d = tempfile::tempdir().unwrap();
        pair(d.path(), "p", 1);
        pair(d.path(), "q", 1);
        pair(d.path(), "k", 1);
        let mut s = Spool::open(d.path()).unwrap();
        s.scan(0).unwrap();
        s.purge("p").unwrap();
        assert!(!d.path().join("p.wav").exists());
        assert!(s.get("p").unwrap().is_none());
        assert!(matches!(s.purge("p"), Err(SpoolError::NotFound(_))));
        assert!(matches!(s.purge("../x"), Err(SpoolError::BadId(_))));
        assert!(s.drop_filtered("q").unwrap());
        assert!(!d.path().join("q.json").exists());
        assert!(s.mark_filtered("k", "direction internal", 0).unwrap());
        assert!(d.path().join("k.wav").exists());
        assert_eq!(s.counters().unwrap()["filtered"], 2);
        assert!(s.scan(1).unwrap().adopted.is_empty());
        let depth = s.depth_by_state().unwrap();
        assert_eq!(depth[&State::Filtered], 1);
        assert_eq!(depth[&State::Queued], 0);
    }

    #[test]
    fn two_connections_see_each_other() {
        let d = tempfile::tempdir().unwrap();
        pair(d.path(), "x", 1);
        let mut a = Spool::open(d.path()).unwrap();
        let b = Spool::open(d.path()).unwrap();
        a.scan(0).unwrap();
        a.mark_queued("x", 0).unwrap();
        a.begin_attempt("x", 0).unwrap();
        a.mark_failed("x", 400, "bad", 0).unwrap();
        b.retry("x", 1).unwrap();
        assert_eq!(a.get("x").unwrap().unwrap().state, State::Queued);
        assert!(a.oldest_undelivered().unwrap().is_some());
    }

    #[test]
    fn ids_and_rendering() {
        assert!(valid_id("20240101-abc_1.2"));
        assert!(!valid_id(".hidden"));
        assert!(!valid_id("a/b"));
        assert!(!valid_id(""));
        assert_eq!(human_age(61_000), "1m01s");
        assert_eq!(human_age(3_600_000 * 49), "2d01h");
        assert_eq!(human_size(1536), "1.5KiB");
        let e = Entry {
            id: "abc".into(),
            state: State::Failed,
            size: 2048,
            recorded_at_ms: 0,
            adopted_at_ms: 0,
            updated_at_ms: 0,
            attempts: 3,
            retries: 0,
            next_attempt_ms: 0,
            last_error: Some("HTTP 422: bad\nline".into()),
            location: None,
            offset: 0,
            failed_status: Some(422),
            failed_body: None,
            delivered_at_ms: None,
            filter_reason: None,
        };
        let t = render_list(&[e], 90_000);
        assert!(t.contains("abc  failed"), "{t}");
        assert!(t.contains("HTTP 422: badline"), "{t}");
        assert!(t.contains("1m30s"), "{t}");
    }

    /// Through the states to `delivered` (retention keeps the files).
    fn deliver(s: &mut Spool, id: &str, now: i64) {
        s.mark_queued(id, now).unwrap();
        s.begin_attempt(id, now).unwrap();
        assert!(s.mark_delivered(id, now).unwrap());
    }

    fn aside(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".corrupt-"))
            .collect();
        v.sort();
        v
    }

    /// Garbage over spool.db: opening says corrupt; the delivering process
    /// moves it aside and rebuilds the queue from the pairs, the delivered
    /// one (from the delivered record) stays delivered, the others are due.
    #[test]
    fn corrupt_database_is_moved_aside_and_rebuilt_from_the_pairs() {
        let d = tempfile::tempdir().unwrap();
        for id in ["a", "b", "c"] {
            pair(d.path(), id, 100);
        }
        let mut s = Spool::open(d.path()).unwrap();
        s.scan(0).unwrap();
        deliver(&mut s, "a", 10);
        drop(s);
        fs::write(d.path().join(DB_FILE), vec![0x5au8; 20_000]).unwrap();
        let e = Spool::open(d.path()).unwrap_err();
        assert!(e.is_corrupt(), "{e}");
        let (s, repair) = Spool::open_repairing(d.path()).unwrap();
        let r = repair.expect("a repair");
        assert!(r.reason.contains("corrupt"), "{r:?}");
        assert_eq!((r.recordings, r.known_delivered), (3, 1));
        let moved = r.moved_to.clone().unwrap();
        assert_eq!(fs::read(&moved).unwrap(), vec![0x5au8; 20_000]);
        assert_eq!(aside(d.path()).len(), 1, "{:?}", aside(d.path()));
        assert!(
            r.to_string().contains("moved aside to spool.db.corrupt-"),
            "{r}"
        );
        assert_eq!(s.get("a").unwrap().unwrap().state, State::Delivered);
        assert_eq!(s.get("b").unwrap().unwrap().state, State::Recorded);
        assert_eq!(s.get("c").unwrap().unwrap().state, State::Recorded);
        s.check_integrity().unwrap();
        drop(s);
        // Sound now: nothing more to do.
        let (s, repair) = Spool::open_repairing(d.path()).unwrap();
        assert!(repair.is_none());
        assert_eq!(s.list().unwrap().len(), 3);
    }

    /// Damage inside the file (the header intact) is found by quick_check.
    #[test]
    fn damaged_pages_are_found_and_repaired() {
        let d = tempfile::tempdir().unwrap();
        for i in 0..300 {
            pair(
                d.path(),
                &format!("rec-{i:04}-with-a-longer-id-to-fill-pages"),
                1,
            );
        }
        let mut s = Spool::open(d.path()).unwrap();
        s.scan(0).unwrap();
        drop(s); // the last connection checkpoints the WAL into the file
        let db = d.path().join(DB_FILE);
        let mut bytes = fs::read(&db).unwrap();
        assert!(bytes.len() > 4 * 4096, "{}", bytes.len());
        for b in &mut bytes[2 * 4096..4 * 4096] {
            *b = 0xa5;
        }
        fs::write(&db, &bytes).unwrap();
        let (s, repair) = Spool::open_repairing(d.path()).unwrap();
        let r = repair.expect("a repair");
        assert_eq!(r.recordings, 300, "{r:?}");
        assert_eq!(s.list().unwrap().len(), 300);
    }

    /// spool.db removed: rebuilt from the pairs and the delivered record; a
    /// connection to the removed file knows it is detached.
    #[test]
    fn missing_database_is_rebuilt_and_delivered_ones_are_not_sent_again() {
        let d = tempfile::tempdir().unwrap();
        pair(d.path(), "x", 5);
        pair(d.path(), "y", 5);
        let mut s = Spool::open(d.path()).unwrap();
        s.scan(0).unwrap();
        deliver(&mut s, "x", 1);
        assert!(!s.is_detached());
        for ext in ["", "-wal", "-shm"] {
            let _ = fs::remove_file(d.path().join(format!("{DB_FILE}{ext}")));
        }
        assert!(s.is_detached());
        drop(s);
        let (s, repair) = Spool::open_repairing(d.path()).unwrap();
        let r = repair.expect("a rebuild");
        assert_eq!(r.reason, "was missing");
        assert_eq!((r.recordings, r.known_delivered, r.moved_to), (2, 1, None));
        assert_eq!(s.get("x").unwrap().unwrap().state, State::Delivered);
        assert_eq!(s.get("y").unwrap().unwrap().state, State::Recorded);
        assert!(s.due(i64::MAX, 10, &HashSet::new()).unwrap().is_empty());
        // A brand-new spool is no rebuild.
        let e = tempfile::tempdir().unwrap();
        assert!(Spool::open_repairing(e.path()).unwrap().1.is_none());
    }

    /// The cloud accepted, the record says so, the crash came before the
    /// row changed: settled as delivered when the delivery task opens it.
    #[test]
    fn a_row_the_delivered_record_names_is_settled_at_open() {
        let d = tempfile::tempdir().unwrap();
        pair(d.path(), "z", 5);
        let mut s = Spool::open(d.path()).unwrap();
        s.scan(0).unwrap();
        s.mark_queued("z", 0).unwrap();
        s.begin_attempt("z", 0).unwrap();
        s.delivered.append("z").unwrap();
        drop(s);
        let (s, repair) = Spool::open_repairing(d.path()).unwrap();
        assert!(repair.is_none());
        assert_eq!(s.get("z").unwrap().unwrap().state, State::Delivered);
        assert_eq!(s.counters().unwrap()["delivered"], 1);
    }

    /// A torn last line is ignored and cut off by the next append; the
    /// record is compacted to the ids whose files are still there.
    #[test]
    fn delivered_record_torn_lines_and_compaction() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join(DELIVERED_LOG), b"one\ntwo\nthr").unwrap();
        let mut log = DeliveredLog::load(d.path());
        assert_eq!(log.ids.len(), 2);
        assert_eq!(log.torn, Some(8));
        log.append("four").unwrap();
        assert_eq!(
            fs::read_to_string(d.path().join(DELIVERED_LOG)).unwrap(),
            "one\ntwo\nfour\n"
        );
        let again = DeliveredLog::load(d.path());
        assert_eq!(again.ids.len(), 3);
        log.compact(|id| id == "two").unwrap();
        assert_eq!(
            fs::read_to_string(d.path().join(DELIVERED_LOG)).unwrap(),
            "two\n"
        );
        // Through the spool: delivered and expired ids go at compaction.
        let mut s = Spool::open(d.path()).unwrap();
        for i in 0..DELIVERED_LOG_COMPACT + 10 {
            s.delivered.append(&format!("gone{i}")).unwrap();
        }
        s.expire_delivered(0, Duration::ZERO).unwrap();
        assert!(s.delivered.lines < 10, "{}", s.delivered.lines);
        assert!(DeliveredLog::load(d.path()).ids.len() < 10);
    }

    /// The spool as a model: any sequence of recordings finished, uploads
    /// accepted or failed, crashes (the spool dropped mid-way, an upload
    /// accepted by the cloud but not yet marked), restarts and a damaged or
    /// missing spool.db keeps every acknowledged recording (a complete pair
    /// on disk) in the queue, and never offers again for upload a recording
    /// once it was marked delivered.
    mod model {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            /// A recording finished: its pair is on disk (acknowledged).
            Record,
            /// The oldest due upload `n` (mod the due count) is accepted.
            UploadOk(usize),
            /// Refused for now (5xx, timeout): retried later.
            UploadFail(usize),
            /// Accepted by the cloud, then the crash before the row changed.
            CrashAfterAccept(usize),
            /// The process dies (the spool dropped without anything else).
            Crash,
            /// A clean restart: open_repairing + scan, as the delivery task.
            Restart,
            /// spool.db damaged (header overwritten, cut, or gone) while down.
            Corrupt(u8),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                3 => Just(Op::Record),
                3 => any::<usize>().prop_map(Op::UploadOk),
                2 => any::<usize>().prop_map(Op::UploadFail),
                1 => any::<usize>().prop_map(Op::CrashAfterAccept),
                1 => Just(Op::Crash),
                1 => Just(Op::Restart),
                1 => any::<u8>().prop_map(Op::Corrupt),
            ]
        }

        /// What the delivery task does when it starts: repair, adopt, queue.
        fn start(dir: &Path) -> Spool {
            let (mut s, _) = Spool::open_repairing(dir).expect("open_repairing");
            s.scan(now_ms()).expect("scan");
            for e in s.in_state(State::Recorded).unwrap() {
                s.mark_queued(&e.id, now_ms()).unwrap();
            }
            s
        }

        fn corrupt(dir: &Path, how: u8) {
            let db = dir.join(DB_FILE);
            match how % 3 {
                0 => {
                    let mut b = fs::read(&db).unwrap_or_default();
                    for (i, x) in b.iter_mut().take(100).enumerate() {
                        *x = (i as u8).wrapping_mul(how | 1) ^ 0x5a;
                    }
                    fs::write(&db, b).unwrap();
                }
                1 => {
                    let b = fs::read(&db).unwrap_or_default();
                    fs::write(&db, &b[..b.len() / 3]).unwrap();
                }
                _ => {
                    for ext in ["", "-wal", "-shm"] {
                        let _ = fs::remove_file(dir.join(format!("{DB_FILE}{ext}")));
                    }
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig {
                cases: 48,
                failure_persistence: None,
                ..ProptestConfig::default()
            })]
            #[test]
            fn spool_keeps_every_recording_and_delivers_once(ops in proptest::collection::vec(op(), 1..40)) {
                let d = tempfile::tempdir().unwrap();
                let dir = d.path();
                let mut recorded: Vec<String> = Vec::new();
                // Marked delivered (the cloud's answer recorded by the spool).
                let mut delivered: HashSet<String> = HashSet::new();
                // Offered for upload after their delivered mark: must stay 0.
                let mut offered_after_mark = 0usize;
                let mut spool = Some(start(dir));
                for op in ops {
                    match op {
                        Op::Record => {
                            let id = format!("rec-{}", recorded.len());
                            pair(dir, &id, 44 + recorded.len());
                            recorded.push(id);
                            if let Some(s) = spool.as_mut() {
                                s.scan(now_ms()).unwrap();
                                for e in s.in_state(State::Recorded).unwrap() {
                                    s.mark_queued(&e.id, now_ms()).unwrap();
                                }
                            }
                        }
                        Op::UploadOk(n) | Op::UploadFail(n) | Op::CrashAfterAccept(n) => {
                            let s = match spool.as_mut() {
                                Some(s) => s,
                                None => spool.insert(start(dir)),
                            };
                            let due = s.due(i64::MAX, 100, &HashSet::new()).unwrap();
                            if due.is_empty() {
                                continue;
                            }
                            let id = due[n % due.len()].id.clone();
                            offered_after_mark += usize::from(delivered.contains(&id));
                            s.begin_attempt(&id, now_ms()).unwrap();
                            match op {
                                Op::UploadOk(_) => {
                                    prop_assert!(s.mark_delivered(&id, now_ms()).unwrap());
                                    delivered.insert(id);
                                }
                                Op::UploadFail(_) => {
                                    s.retry_later(&id, now_ms() + 1, "HTTP 503", true, now_ms()).unwrap();
                                }
                                _ => {
                                    // The cloud has it (its idempotency key will
                                    // answer a resend); nothing was marked.
                                    spool = None;
                                }
                            }
                        }
                        Op::Crash => spool = None,
                        Op::Restart => {
                            drop(spool.take());
                            spool = Some(start(dir));
                        }
                        Op::Corrupt(how) => {
                            drop(spool.take());
                            corrupt(dir, how);
                            spool = Some(start(dir));
                        }
                    }
                    // The invariant, seen from a running spool.
                    if let Some(s) = spool.as_ref() {
                        for id in &recorded {
                            let e = s.get(id).unwrap();
                            prop_assert!(e.is_some(), "acknowledged {} lost", id);
                            let e = e.unwrap();
                            if delivered.contains(id) {
                                prop_assert_eq!(e.state, State::Delivered, "{} delivered", id);
                            } else {
                                prop_assert!(e.state.is_undelivered(), "{} {:?}", id, e.state);
                            }
                        }
                        let due = s.due(i64::MAX, 1000, &HashSet::new()).unwrap();
                        prop_assert!(due.iter().all(|e| !delivered.contains(&e.id)));
                    }
                }
                prop_assert_eq!(offered_after_mark, 0);
                // In the end everything acknowledged and not yet delivered is
                // still due: nothing stalls.
                drop(spool);
                let s = start(dir);
                let due: HashSet<String> = s
                    .due(i64::MAX, 1000, &HashSet::new())
                    .unwrap()
                    .into_iter()
                    .map(|e| e.id)
                    .collect();
                for id in &recorded {
                    prop_assert_eq!(due.contains(id), !delivered.contains(id), "{}", id);
                }
            }
        }
    }

    /// The delivered record's parser (also the `spool_delivered` fuzz
    /// target): complete lines only, invalid ids skipped.
    #[test]
    fn delivered_record_parses_complete_valid_lines() {
        let r = parse_delivered(b"a\n\xff\xfe\n.hidden\n\nb\nc");
        assert_eq!(r.ids, HashSet::from(["a".to_string(), "b".to_string()]));
        assert_eq!((r.lines, r.torn), (4, Some(16)));
        assert_eq!(parse_delivered(b""), DeliveredRecord::default());
    }
}
