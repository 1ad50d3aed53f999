//! The spool queue: which recording is where on its way to the cloud.
//!
//! In: complete recording pairs in the spool directory (`<id>.wav` +
//! `<id>.json`, written by [`crate::recording`]: WAV renamed first, JSON last,
//! so a `<id>.json` means the pair is complete; hidden files are recordings in
//! progress and are never looked at) (the files may be sealed: encryption at rest,
//! [`crate::recording::crypt`]; the queue reads their plaintext through
//! [`crate::recording::open_recording`]; `.<id>.flac` is the FLAC kept for
//! upload, removed with the pair), and state changes from the delivery task
//! and from `pbx-edge spool retry|purge`. Out: a durable per-recording state,
//! the work that is due, and figures for metrics and `pbx-edge spool list`.
//!
//! # On-disk format
//! One SQLite database, `<spool dir>/spool.db` (plus SQLite's `spool.db-wal`
//! and `spool.db-shm`), mode 0600, WAL journal with `synchronous=FULL`: every
//! state change is one transaction that is on disk (WAL fsynced) before the
//! call returns, so nothing is acknowledged before it is durable (the one
//! exception, an upload attempt's start, acknowledges nothing:
//! `Spool::begin_attempt`). Several
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
//!   `PRAGMA quick_check` fails when the delivery task opens it, or a row
//!   holds a value not of its column's type, or any query later says so)
//!   is moved aside with its `-wal`/`-shm` as
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

use crate::sys::{create_private_file, sync_dir};

/// The database file inside the spool directory.
pub(crate) const DB_FILE: &str = "spool.db";
/// Space held back in the spool directory so that the database can still
/// record deliveries (which free space) when the disk is full.
pub const RESERVE_FILE: &str = ".spool.reserve";
/// Touched by [`poke`] (`pbx-edge spool retry` in another process): the
/// running daemon's delivery, which watches the spool directory, looks at
/// the queue at once instead of at its next idle scan.
pub const WAKE_FILE: &str = ".wake";

/// Tell a running daemon that the queue changed (see [`WAKE_FILE`]); best
/// effort: without a daemon nothing happens.
pub fn poke(dir: &Path) {
    let _ = create_private_file(&dir.join(WAKE_FILE));
}

/// Size of [`RESERVE_FILE`].
pub(crate) const RESERVE_BYTES: u64 = 4 << 20;
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

/// Rows whose values are not of their column's type (SQLite keeps what it
/// is given): [`Spool::check_integrity`].
const WRONG_TYPES: &str = "SELECT \
    (SELECT count(*) FROM recordings WHERE typeof(id) <> 'text' OR typeof(state) <> 'text' \
        OR typeof(size) <> 'integer' OR typeof(recorded_at) <> 'integer' \
        OR typeof(adopted_at) <> 'integer' OR typeof(updated_at) <> 'integer' \
        OR typeof(attempts) <> 'integer' OR typeof(retries) <> 'integer' \
        OR typeof(next_attempt_at) <> 'integer' OR typeof(upload_offset) <> 'integer' \
        OR typeof(last_error) NOT IN ('text', 'null') \
        OR typeof(upload_location) NOT IN ('text', 'null') \
        OR typeof(failed_status) NOT IN ('integer', 'null') \
        OR typeof(failed_body) NOT IN ('text', 'null') \
        OR typeof(delivered_at) NOT IN ('integer', 'null') \
        OR typeof(filter_reason) NOT IN ('text', 'null')) \
  + (SELECT count(*) FROM counters WHERE typeof(name) <> 'text' OR typeof(value) <> 'integer') \
  + (SELECT count(*) FROM delivery_watch WHERE typeof(id) <> 'text' OR typeof(note) <> 'text' \
        OR typeof(delivered) <> 'integer')";

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
    pub(crate) fn is_corrupt(&self) -> bool {
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
    pub(crate) fn describe(&self) -> String {
        match self {
            SpoolError::Db { path, source } if self.is_corrupt() => {
                format!("spool database {} is corrupt ({source})", path.display())
            }
            other => other.to_string(),
        }
    }

    /// The database could not write because the disk is full.
    pub(crate) fn is_disk_full(&self) -> bool {
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

pub use crate::sys::{free_bytes, now_ms};

mod queue;
pub use queue::remove_pair_files;
mod repair;
pub use repair::*;
mod list;
pub use list::*;

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
    /// Recordings whose files could not be removed (an immutable file, a
    /// directory where a file belongs, an I/O error): reported once each,
    /// skipped by the passes that remove files so they do not hold up the
    /// others, tried again at every pass.
    undeletable: std::collections::HashSet<String>,
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
        // Created by us with mode 0600 (SQLite gives -wal/-shm the same
        // mode), and only if it does not exist: never truncated, since
        // another process opening a new spool at the same moment may have
        // written its first page already (a truncate then left it
        // "malformed").
        {
            use std::os::unix::fs::OpenOptionsExt;
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&db_path)
            {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(source) => {
                    return Err(SpoolError::Io {
                        path: db_path.clone(),
                        source,
                    })
                }
            }
        }
        let dbe = |source| SpoolError::Db {
            path: db_path.clone(),
            source,
        };
        let conn = Connection::open(&db_path).map_err(dbe)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(dbe)?;
        // Switching to WAL takes the database's lock without SQLite's busy
        // handler: while another process opens or writes it at that moment
        // (the daemon, when `spool list` runs), retry for up to 10 s.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match conn.pragma_update(None, "journal_mode", "WAL") {
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::DatabaseBusy
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                r => break r.map_err(dbe)?,
            }
        }
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
            undeletable: Default::default(),
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
        if found.len() != 1 || found[0] != "ok" {
            return Err(SpoolError::Corrupt {
                path: self.db_path.clone(),
                detail: found.join("; "),
            });
        }
        // Sound pages can still hold a value of the wrong type (a flipped
        // bit in a record's header, a hand edit): such a row could not be
        // read, and every query over it would fail.
        let bad: i64 = self
            .conn
            .query_row(WRONG_TYPES, [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        if bad > 0 {
            return Err(self.wrong_type(format!("{bad} rows")));
        }
        Ok(())
    }

    /// A row whose values are not of their column's type.
    fn wrong_type(&self, what: String) -> SpoolError {
        SpoolError::Corrupt {
            path: self.db_path.clone(),
            detail: format!("{what} with a value of the wrong type"),
        }
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
            candidates.push((id.to_string(), e));
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
        for (id, entry) in candidates {
            // Known pairs are not looked at again (a scan during a burst of
            // call ends saw thousands of them, each one a statx).
            if known.contains(&id) {
                continue;
            }
            let meta = entry.metadata().ok();
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
}

#[cfg(test)]
mod tests;
