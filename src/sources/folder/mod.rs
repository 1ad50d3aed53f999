//! The folder source: recordings the PBX already makes (Asterisk/FreePBX
//! MixMonitor files) become pbx-edge recording pairs.
//!
//! In: a directory tree the PBX writes (`[sources.folder] path`, FreePBX layout
//! `YYYY/MM/DD/<type>-<dst>-<src>-<YYYYMMDD>-<HHMMSS>-<uniqueid>.<ext>`), and
//! optionally call details from a CDR store ([`crate::sources::folder::cdr`]: Asterisk's
//! `Master.csv`, or FreePBX's `asteriskcdrdb.cdr` table in MariaDB/MySQL).
//! Out: `<id>.wav` + `<id>.json` in the spool directory (CONTRACT §3, `"source":
//! "folder"`), written by the recording module like every other recording
//! ([`crate::recording::write_whole`]: WAV renamed first, JSON
//! temp+fsync+rename last, directory fsynced, mode 0600).
//!
//! Promises:
//! - The PBX's files are only read. With `after_delivery = "move" | "delete"`
//!   they are moved or deleted, but only once the spool has delivered the
//!   recording (a delivery watch in `spool.db`, marked by a trigger in the
//!   same transaction as the delivery; it survives restarts and `retention`).
//! - Split legs (`…-in.wav` = what the PBX received from the caller, channel 0;
//!   `…-out.wav` = the callee, channel 1; also `-rx`/`-tx`, `_in`/`_out`,
//!   `_rx`/`_tx`, `-r`/`-t`, `_r`/`_t`, `.in`/`.out` in any case: see
//!   [`LEG_SUFFIXES`]) are merged aligned at their end (`leg_align`,
//!   default `"end"`: the shorter padded with silence at its start, since
//!   Asterisk without MixMonitor's `S` option writes nothing for a direction
//!   while it has no audio, mostly before answer; `"start"` pads at the end),
//!   resampled to a common rate (8/16 kHz); a difference is a warning and
//!   `legs_differ_ms` in the JSON.
//!   Stereo files are taken as they are; a mono mix becomes a 1-channel WAV
//!   (`"mixed_mono": true`, `audio.channels: 1`, one `channels` entry with
//!   party `mixed`) and a warning: never a mix beside a silent channel.
//! - Formats ([`decode_audio`]): WAV 16-bit PCM (`.wav`, `.wav16`; a header
//!   never finalised, data size 0 with audio after it, counts as a file
//!   still open: it waits [`FolderSettings::open_settle`] unchanged, then is
//!   read to the end of the file, with a warning),
//!   `.sln`/`.raw` (8 kHz), `.sln16` (mono or interleaved stereo: said by
//!   `raw_stereo`, or told from the samples, [`probe_raw_layout`]),
//!   Asterisk's other `.slnNN` rates reported as unsupported, raw G.711
//!   (`.ulaw`/`.ul`/`.mu`/`.pcm` µ-law, `.alaw`/`.al` A-law, 8 kHz mono),
//!   raw G.722 (`.g722`, 16 kHz), formats Asterisk writes but pbx-edge does
//!   not decode ([`UNSUPPORTED_EXTS`]: G.729, G.726, Siren, Speex, ...)
//!   reported once each, and GSM 06.10 (Asterisk's `gsm` = raw `.gsm` frames, and
//!   `wav49` = WAV format 0x31, `.WAV`/`.wav49`), decoded by
//!   [`pbx_core::audio::gsm`] bit-exact with libgsm.
//! - A file is taken only once the PBX has finished writing it. With
//!   inotify: closed after writing (`IN_CLOSE_WRITE`), then unchanged for
//!   `settle` (MixMonitor may reopen a file: a write after the close makes it
//!   open again). A file written to and never closed is taken only after
//!   [`FolderSettings::open_settle`] unchanged (a PBX holding a file open
//!   without writing). Files found by a listing with no event about them (at
//!   start, in a directory moved in) and every file while polling need
//!   `settle` unchanged (size and mtime) between two looks. Each file is
//!   taken once, even across restarts and renames (its inode, size and mtime
//!   are remembered in `<spool>/.folder-seen`).
//! - Changes are noticed by a recursive inotify watch on `path` (the
//!   `notify` crate, its inotify backend; `watch = "inotify"`, or `"auto"`
//!   on a local file system). The thread blocks on events and wakes only
//!   when a file is due to have settled, a new directory is to be listed, a
//!   recording waiting for its CDR row is looked up again (every
//!   [`FolderSettings::poll`]), an `after_delivery` action waits for a
//!   delivery, or for the safety listing of the whole tree every
//!   [`FolderSettings::full_scan`]: an idle folder costs nothing. Writes are
//!   only noted (one event per file per 500 ms reaches the thread); the
//!   source's own reads raise no wake-up.
//! - At start the whole tree is listed: files that appeared while the daemon
//!   was down are taken. A new directory (created or moved in) is listed at
//!   once, and again 2 s later (notify watches it only after reporting it,
//!   so a file created in between raises no event); a directory deleted or
//!   moved away is forgotten. A lost event (inotify queue overflow, this
//!   side's queue of 65536 full, a watch error) makes the next pass list the
//!   whole tree and start every settle wait again. When `path` itself is
//!   deleted or moved away the source is not ready (`/readyz` says why) and
//!   its parent is watched (polled every `poll` if the parent is gone too);
//!   once `path` is back it is watched and listed again. A `path` not there
//!   at start is the same: the source starts, not ready, and waits for it.
//! - Polling instead: with `watch = "poll"`, with `"auto"` when `path` is
//!   on a network file system (NFS, SMB/CIFS, FUSE, ...: changes made on
//!   other hosts raise no inotify event there), and when inotify cannot be
//!   used: the watch limit `fs.inotify.max_user_watches` is reached (at
//!   start, or when a new directory is to be watched) or no inotify
//!   instance is left. The last two are a warning in the log and in
//!   `/status` / `/readyz` (`source.folder.watch`), never a failure of the
//!   source. Polling scans every [`FolderSettings::poll`]: a directory whose
//!   mtime has not changed since it was listed (and was quiet then) is not
//!   listed again, only the files still settling are re-read; the whole
//!   tree is listed every `full_scan`.
//! - A long pass (a backlog of recordings, a large tree, the first read of a
//!   large Master.csv) reports the thread alive after each recording
//!   converted and every few hundred files listed or 256 KiB of Master.csv
//!   read ([`Pulse`]), and ends after the recording in progress when the
//!   source is stopped. A pass converts for at most
//!   [`FolderSettings::pass_budget`]; the next one follows at once.
//! - An undecodable file is logged, counted and marked seen; the others
//!   continue. A file that cannot be read (an I/O error: permission denied,
//!   EIO, ... may pass) is logged and counted, not marked seen, and tried
//!   again at the next full listing (every `full_scan`). Input never panics; files larger than
//!   [`FolderSettings::max_file_bytes`] are refused.
//!
//! Times in file names and in the CDR are the PBX's local time; they become
//! UTC by [`FolderSettings::timezone`].
//!
//! A settled recording whose CDR row is not there yet waits for it up to
//! [`FolderSettings::cdr_wait`], then goes with what its file name tells. A
//! CDR store that cannot answer (database down, Master.csv unreadable) is
//! the same: each settled recording waits `cdr_wait` from when it settled,
//! then goes with what its file name tells; the problem is logged once per
//! cause (and once that recordings go without their rows), and the source
//! is not ready, with the reason, while the store fails.

pub mod cdr;

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pbx_core::audio::gsm;
use pbx_core::audio::resample::Resampler;
use pbx_core::audio::wav::parse_wav_header;
use pbx_core::call::meta::recording_id;
use pbx_core::Timestamp;
#[cfg(test)]
use serde_json::Value;

pub use crate::config::{AfterDelivery, FolderWatch, LegAlign, RawStereo};
use crate::config::{Config, FolderConfig};
use crate::health::Liveness;
use crate::recording::{
    create_private_dir, DocAudio, DocChannels, DocParty, FolderFields, RecordingDoc, SCHEMA,
};
pub use crate::sources::folder::cdr::csv::{
    clid_name, parse_cdr_line, split_csv_line, CdrFollower,
};
use crate::sources::folder::cdr::csv::{CsvColumns, CsvStore};
pub use crate::sources::folder::cdr::CdrRow;
use crate::sources::folder::cdr::{CdrQuery, CdrStore, DirectionRules, PbxTimeZone};
use crate::status::SharedStatus;

mod names;
pub use names::*;
mod decode;
pub use decode::*;
mod convert;
pub use convert::*;
mod seen;
pub use seen::*;
mod scanner;
pub use scanner::*;
mod watch;
pub use watch::*;

/// Errors of the folder source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FolderError {
    // The PBX's file names may hold the parties' names: logged through
    // `file_for_log`.
    #[error("{}: {source}", crate::logmask::file_for_log(.path))]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: {why}", crate::logmask::file_for_log(.path))]
    Format { path: PathBuf, why: String },
    #[error("{}: {size} bytes is more than the limit of {limit}", crate::logmask::file_for_log(.path))]
    TooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    /// A format Asterisk writes that pbx-edge does not decode (G.729,
    /// G.722, Siren, Speex, ...).
    #[error("{}: {why}", crate::logmask::file_for_log(.path))]
    Unsupported { path: PathBuf, why: String },
    /// Shorter than `recording.min_duration`: not kept (marked seen, the
    /// PBX's files left as they are).
    #[error("{}: {duration_ms} ms is shorter than recording.min_duration ({min_ms} ms): not kept", crate::logmask::file_for_log(.path))]
    TooShort {
        path: PathBuf,
        duration_ms: i64,
        min_ms: u128,
    },
    #[error("writing the recording {id}: {source}")]
    Write {
        id: String,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> FolderError + '_ {
    move |source| FolderError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn fmt_err(path: &Path, why: impl Into<String>) -> FolderError {
    FolderError::Format {
        path: path.to_path_buf(),
        why: why.into(),
    }
}

/// How a long pass (a backlog of recordings, a large tree, the first read
/// of a large Master.csv) reports the folder thread alive and learns that
/// it is to stop: [`Pulse::beat`] is called after each recording converted
/// and every few hundred files listed or 256 KiB of Master.csv read. Without
/// it a pass of minutes looked stalled (the daemon then withholds the
/// systemd watchdog ping) and a stop waited for the whole pass.
#[derive(Clone)]
pub struct Pulse {
    alive: Arc<dyn Fn() + Send + Sync>,
    stop: Arc<AtomicBool>,
}

impl Pulse {
    /// `alive` is called on each beat (the folder thread: its
    /// [`Liveness`] beat); `stop` set: the pass ends early.
    pub fn new(alive: impl Fn() + Send + Sync + 'static, stop: Arc<AtomicBool>) -> Self {
        Pulse {
            alive: Arc::new(alive),
            stop,
        }
    }

    /// Beats `name` on `live`, stops with `stop`.
    pub fn of(live: Arc<Liveness>, name: &'static str, stop: Arc<AtomicBool>) -> Self {
        Pulse::new(move || live.beat(name), stop)
    }

    /// Reports alive; `false`: asked to stop, the pass is to end now.
    pub fn beat(&self) -> bool {
        (self.alive)();
        !self.stopping()
    }

    /// Whether a stop was asked for.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

impl Default for Pulse {
    /// Reports to no one, never stops (a scanner driven by hand).
    fn default() -> Self {
        Pulse::new(|| {}, Arc::new(AtomicBool::new(false)))
    }
}

impl std::fmt::Debug for Pulse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pulse")
            .field("stopping", &self.stopping())
            .finish()
    }
}

/// Settings of the folder source beyond `[sources.folder]` (defaults apply
/// until the config grows these keys).
#[derive(Debug, Clone)]
pub struct FolderSettings {
    /// Encryption at rest: the spool's keys (`spool.encryption_key_file`);
    /// converted recordings are sealed with the current one.
    pub keys: Option<std::sync::Arc<crate::recording::Keyring>>,
    /// The PBX's time zone (file names, CDR times).
    pub timezone: PbxTimeZone,
    /// Master.csv column order.
    pub csv_columns: CsvColumns,
    /// Direction from the CDR.
    pub direction: DirectionRules,
    /// Who is who (`[roles]`).
    pub roles: crate::recording::RoleRules,
    /// The caller is on the `-out`/`tx` leg (and the right channel of
    /// stereo files): the channels are swapped.
    pub caller_leg_out: bool,
    /// `recording.sample_rate`: `Auto` = 8000 Hz unless a file or leg is
    /// wideband (16000 Hz then); `Hz8000`/`Hz16000`: always that rate
    /// (resampled as needed).
    pub sample_rate: crate::config::SampleRate,
    /// `recording.min_duration`: shorter recordings are not kept (counted,
    /// marked seen, the PBX's files left alone whatever `after_delivery`).
    pub min_duration: Duration,
    /// Where split legs of different lengths are lined up (`leg_align`):
    /// at their end (default; the shorter padded with silence at its start)
    /// or at their start.
    pub leg_align: LegAlign,
    /// What happens to the PBX's files once the spool has delivered the
    /// recording (never before).
    pub after_delivery: AfterDelivery,
    /// Target directory of `AfterDelivery::Move` (the tree below `path` is kept).
    pub move_to: Option<PathBuf>,
    /// Whether `.raw`/`.sln`/`.sln16` files hold interleaved stereo
    /// (MixMonitor `D`): [`RawStereo::Auto`] tells from the samples
    /// ([`probe_raw_layout`]).
    pub raw_stereo: RawStereo,
    /// Files larger than this are refused (memory bound).
    pub max_file_bytes: u64,
    /// How changes are noticed (`watch`).
    pub watch: FolderWatch,
    /// While polling: how often the folder is scanned. With inotify: how
    /// often settled recordings waiting for their CDR row are looked up
    /// again, and a vanished `path` whose parent is gone too is looked for.
    pub poll: Duration,
    /// How often the whole tree is listed anyway (a safety net for events
    /// inotify could not deliver, and for directory mtimes while polling).
    pub full_scan: Duration,
    /// With inotify: how long a file written to and not closed since must
    /// stay unchanged before it is taken anyway (a PBX holding a file open
    /// without writing). A closed file needs `settle`.
    pub open_settle: Duration,
    /// How long a settled recording waits for its Master.csv row.
    pub cdr_wait: Duration,
    /// Rows of Master.csv kept in memory (oldest forgotten first).
    pub max_cdr_rows: usize,
    /// Directory depth scanned below `path`.
    pub max_depth: usize,
    /// Name patterns tried (in order) before the FreePBX one, matched against
    /// the file stem without extension and `-in`/`-out`; see [`NamePattern`].
    pub name_patterns: Vec<NamePattern>,
    /// Files last modified longer ago than this are ignored (not taken, not
    /// marked): keeps a first start from importing years of old recordings.
    /// `None`: everything found is taken.
    pub max_age: Option<Duration>,
    /// A pass stops converting after this long and the next one goes on at
    /// once: a backlog does not hold up the status, the event queue or the
    /// watch's upkeep for its whole length.
    pub pass_budget: Duration,
}

/// A recording file name pattern: a regex with named groups that become
/// metadata. Groups: `uniqueid` (the call id), `src`, `src_name`, `dst`,
/// `kind` (a FreePBX type or `inbound`/`outbound`/`internal`), and the start
/// time as `datetime` (14 digits) or `date` + `time` (any separators:
/// `2026-11-24` + `10-15-02`), or `epoch` (Unix seconds).
///
/// FreeSWITCH (`RECORD_STEREO`, dialplan
/// `${strftime(%Y-%m-%d-%H-%M-%S)}_${destination_number}_${caller_id_number}_${uuid}.wav`):
/// `^(?P<date>\d{4}-\d{2}-\d{2})-(?P<time>\d{2}-\d{2}-\d{2})_(?P<dst>[^_]*)_(?P<src>[^_]*)_(?P<uniqueid>[0-9a-f-]{36})$`
///
/// 3CX (`[%CallerDisplayName%]_%CallerNumber%-%CalledNumber%_%DateTime%(%CallId%)`):
/// `^\[(?P<src_name>[^\]]*)\]_(?P<src>[^_-]*)-(?P<dst>[^_]*)_(?P<datetime>\d{14})\((?P<uniqueid>[^)]+)\)$`
#[derive(Debug, Clone)]
pub struct NamePattern(pub regex::Regex);

impl NamePattern {
    pub fn new(re: &str) -> Result<Self, regex::Error> {
        regex::Regex::new(re).map(NamePattern)
    }

    /// What the pattern tells of `stem`; `None` if it does not match or has
    /// no usable start time or id.
    pub fn parse(&self, stem: &str) -> Option<FreePbxName> {
        let c = self.0.captures(stem)?;
        let g = |n: &str| c.name(n).map(|m| m.as_str().to_string());
        let only_digits = |s: String| s.chars().filter(char::is_ascii_digit).collect::<String>();
        let started_at = if let Some(e) = g("epoch") {
            Timestamp::from_secs(
                digits(e.split('.').next().unwrap_or("")).filter(|s| *s <= LAST_SECOND)?,
            )
        } else if let Some(dt) = g("datetime").map(only_digits) {
            parse_compact_datetime(dt.get(0..8)?, dt.get(8..14)?)?
        } else {
            parse_compact_datetime(&only_digits(g("date")?), &only_digits(g("time")?))?
        };
        let uniqueid = g("uniqueid").filter(|u| !u.is_empty())?;
        Some(FreePbxName {
            kind: g("kind").unwrap_or_default(),
            dst: g("dst").unwrap_or_default(),
            src: g("src").unwrap_or_default(),
            src_name: g("src_name").filter(|n| !n.is_empty()),
            started_at,
            uniqueid,
        })
    }
}

/// The metadata of a recording's stem: the configured patterns first, then
/// the FreePBX naming.
pub fn parse_name(stem: &str, patterns: &[NamePattern]) -> Option<FreePbxName> {
    patterns
        .iter()
        .find_map(|p| p.parse(stem))
        .or_else(|| parse_freepbx_name(stem))
}

impl Default for FolderSettings {
    fn default() -> Self {
        FolderSettings {
            keys: None,
            timezone: PbxTimeZone::Fixed(0),
            csv_columns: CsvColumns::default(),
            direction: DirectionRules::default(),
            roles: crate::recording::RoleRules::default(),
            caller_leg_out: false,
            sample_rate: crate::config::SampleRate::Auto,
            min_duration: Duration::ZERO,
            leg_align: LegAlign::End,
            after_delivery: AfterDelivery::Leave,
            move_to: None,
            raw_stereo: RawStereo::Auto,
            max_file_bytes: 1 << 30,
            watch: FolderWatch::Auto,
            poll: Duration::from_secs(1),
            full_scan: Duration::from_secs(300),
            open_settle: Duration::from_secs(3600),
            cdr_wait: Duration::from_secs(60),
            max_cdr_rows: 200_000,
            max_depth: 12,
            name_patterns: Vec::new(),
            max_age: None,
            pass_budget: Duration::from_secs(10),
        }
    }
}

impl FolderSettings {
    /// The settings `[sources.folder]` gives (the rest at their defaults).
    pub fn from_config(f: &FolderConfig) -> Result<Self, String> {
        let mut name_patterns = Vec::new();
        for p in &f.name_patterns {
            name_patterns.push(NamePattern::new(p).map_err(|e| e.to_string())?);
        }
        Ok(FolderSettings {
            keys: None,
            timezone: f.utc_offset.map_or(PbxTimeZone::Local, PbxTimeZone::Fixed),
            csv_columns: f.cdr_csv_columns.clone(),
            direction: DirectionRules {
                inbound_contexts: f.inbound_contexts.clone(),
                outbound_contexts: f.outbound_contexts.clone(),
                internal_contexts: f.internal_contexts.clone(),
            },
            caller_leg_out: f.caller_leg_out,
            leg_align: f.leg_align,
            after_delivery: f.after_delivery,
            move_to: f.move_to.clone(),
            raw_stereo: f.raw_stereo,
            watch: f.watch,
            cdr_wait: f.cdr_wait,
            name_patterns,
            max_age: (!f.max_age.is_zero()).then_some(f.max_age),
            ..FolderSettings::default()
        })
    }
}

/// The CDR database store `[sources.folder] cdr_db_url_file` names, if any.
pub fn db_store(f: &FolderConfig, tz: PbxTimeZone) -> io::Result<Option<Box<dyn CdrStore>>> {
    let Some(file) = &f.cdr_db_url_file else {
        return Ok(None);
    };
    // Holds the database password: wiped from memory when dropped.
    let url = zeroize::Zeroizing::new(fs::read_to_string(file).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("sources.folder.cdr_db_url_file {}: {e}", file.display()),
        )
    })?);
    let store = crate::sources::folder::cdr::mysql::MysqlStore::new(&url, &f.cdr_db_table, tz)
        .map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("sources.folder.cdr_db_url_file {}: {e}", file.display()),
            )
        })?;
    Ok(Some(Box::new(store)))
}

#[cfg(test)]
mod tests;

/// The event-driven side: events fed by hand (exact times), a real inotify
/// overflow, the watch-limit fallback, the event sink's filter.
#[cfg(test)]
mod event_tests;
