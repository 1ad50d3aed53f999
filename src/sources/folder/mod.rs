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
//!   [`LEG_SUFFIXES`]) are merged aligned at their start,
//!   the shorter padded with silence, resampled to a common rate (8/16 kHz).
//!   Stereo files are taken as they are; a mono mix goes on channel 0 with
//!   silence on channel 1, `"mixed_mono": true` and a warning.
//! - Formats ([`decode_audio`]): WAV 16-bit PCM (`.wav`, `.wav16`; a header
//!   never finalised is read to the end of the file, with a warning),
//!   `.sln`/`.raw` (8 kHz), `.sln16` (mono or interleaved stereo: said by
//!   `raw_stereo`, or told from the samples, [`probe_raw_layout`]),
//!   Asterisk's other `.slnNN` rates reported as unsupported, and GSM 06.10 (Asterisk's `gsm` = raw `.gsm` frames, and
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
//! CDR store that cannot answer (database down, Master.csv unreadable) keeps
//! every settled recording waiting, however long, and marks the source not
//! ready with the reason; the wait starts again once the store answers.

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

pub use crate::config::{AfterDelivery, FolderWatch, RawStereo};
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

/// Errors of the folder source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FolderError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {why}")]
    Format { path: PathBuf, why: String },
    #[error("{path}: {size} bytes is more than the limit of {limit}")]
    TooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
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

/// Settings of the folder source beyond `[sources.folder]` (defaults apply
/// until the config grows these keys).
#[derive(Debug, Clone)]
pub struct FolderSettings {
    /// The PBX's time zone (file names, CDR times).
    pub timezone: PbxTimeZone,
    /// Master.csv column order.
    pub csv_columns: CsvColumns,
    /// Direction from the CDR.
    pub direction: DirectionRules,
    /// The caller is on the `-out`/`tx` leg (and the right channel of
    /// stereo files): the channels are swapped.
    pub caller_leg_out: bool,
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
            timezone: PbxTimeZone::Fixed(0),
            csv_columns: CsvColumns::default(),
            direction: DirectionRules::default(),
            caller_leg_out: false,
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
            timezone: f.utc_offset.map_or(PbxTimeZone::Local, PbxTimeZone::Fixed),
            csv_columns: f.cdr_csv_columns.clone(),
            direction: DirectionRules {
                inbound_contexts: f.inbound_contexts.clone(),
                outbound_contexts: f.outbound_contexts.clone(),
                internal_contexts: f.internal_contexts.clone(),
            },
            caller_leg_out: f.caller_leg_out,
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

// ---------------------------------------------------------------- names

/// What a FreePBX recording file name tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreePbxName {
    /// `in`, `out`, `internal`, `q`, `rg`, `exten`, ...
    pub kind: String,
    pub dst: String,
    pub src: String,
    /// Caller name, when the naming carries it (3CX).
    pub src_name: Option<String>,
    /// Local time of the PBX read as UTC (see [`FolderSettings::timezone`]).
    pub started_at: Timestamp,
    pub uniqueid: String,
}

/// Parses `<type>-<dst>-<src>-<YYYYMMDD>-<HHMMSS>-<uniqueid>` (a stem, without
/// extension or `-in`/`-out` suffix). `None` if it does not fit.
pub fn parse_freepbx_name(stem: &str) -> Option<FreePbxName> {
    // The uniqueid (`1700000000.123`) has no '-'; dst/src normally neither, but
    // the date and time are found from the right to be safe.
    let parts: Vec<&str> = stem.split('-').collect();
    if parts.len() < 6 {
        return None;
    }
    let n = parts.len();
    let uniqueid = *parts.get(n - 1)?;
    let time = *parts.get(n - 2)?;
    let date = *parts.get(n - 3)?;
    let kind = *parts.first()?;
    let dst = *parts.get(1)?;
    let src = parts.get(2..n - 3)?.join("-");
    if uniqueid.is_empty() || kind.is_empty() {
        return None;
    }
    let started_at = parse_compact_datetime(date, time)?;
    Some(FreePbxName {
        kind: kind.to_string(),
        dst: dst.to_string(),
        src,
        src_name: None,
        started_at,
        uniqueid: uniqueid.to_string(),
    })
}

use crate::sources::folder::cdr::digits;

/// Latest start time a file name or the CDR may give (9999-12-31T23:59:59Z):
/// later ones are not dates, and would overflow the arithmetic after.
const LAST_SECOND: i64 = 253_402_300_799;

/// `YYYYMMDD`, `HHMMSS` → timestamp (as UTC).
pub fn parse_compact_datetime(date: &str, time: &str) -> Option<Timestamp> {
    if date.len() != 8 || time.len() != 6 {
        return None;
    }
    Timestamp::from_civil(
        digits(date.get(0..4)?)?,
        digits(date.get(4..6)?)?,
        digits(date.get(6..8)?)?,
        digits(time.get(0..2)?)?,
        digits(time.get(2..4)?)?,
        digits(time.get(4..6)?)?,
    )
}

pub use crate::sources::folder::cdr::parse_cdr_datetime;

/// FreePBX recording type → CONTRACT direction.
pub fn direction_of(kind: &str) -> &'static str {
    match kind {
        "in" | "q" | "rg" | "external" | "inbound" => "inbound",
        "out" | "outbound" => "outbound",
        "internal" | "exten" | "conf" => "internal",
        _ => "unknown",
    }
}

// ---------------------------------------------------------------- audio

/// Decoded 16-bit PCM, interleaved.
#[derive(Debug, Clone)]
pub struct Pcm {
    pub rate: u32,
    pub channels: u16,
    pub samples: Vec<i16>,
    /// What the file held, for the JSON's per-channel `codec`: `"L16"` (PCM)
    /// or `"GSM"` (GSM 06.10, raw or WAV49).
    pub codec: &'static str,
    /// What decoding noticed but got past (GSM frames without the magic, a
    /// partial last frame), each naming the file: for the JSON's `warnings`.
    pub warnings: Vec<String>,
}

impl Pcm {
    fn l16(rate: u32, channels: u16, samples: Vec<i16>) -> Self {
        Pcm {
            rate,
            channels,
            samples,
            codec: "L16",
            warnings: Vec::new(),
        }
    }
}

/// Asterisk's signed-linear formats at rates other than 8 and 16 kHz
/// (`slin12` ... `slin192`): their extensions and rates. Taken as
/// recordings so that they are reported (the resampler converts only
/// between 8 and 16 kHz), not silently passed over.
pub const SLN_OTHER_RATES: &[(&str, u32)] = &[
    ("sln12", 12_000),
    ("sln24", 24_000),
    ("sln32", 32_000),
    ("sln44", 44_100),
    ("sln48", 48_000),
    ("sln96", 96_000),
    ("sln192", 192_000),
];

/// Extensions taken as recordings (any case): `wav`, `wav16` (Asterisk's
/// 16 kHz WAV), `wav49`, `sln`, `sln16`, `raw`, `gsm`, and the
/// [`SLN_OTHER_RATES`] ones (reported as unsupported).
pub fn is_audio_name(name: &str) -> bool {
    let Some((_, ext)) = name.rsplit_once('.') else {
        return false;
    };
    let ext = ext.to_ascii_lowercase();
    matches!(
        ext.as_str(),
        "wav" | "wav16" | "wav49" | "sln" | "sln16" | "raw" | "gsm"
    ) || SLN_OTHER_RATES.iter().any(|(e, _)| *e == ext)
}

fn le_samples(bytes: &[u8]) -> Vec<i16> {
    bytes
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect()
}

/// What [`probe_raw_layout`] measured of headerless s16 samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RawProbe {
    /// Σ(x[n] − x[n+1])² over the probe: adjacent samples.
    pub d1: f64,
    /// Σ(x[n] − x[n+2])² over the probe: every other sample.
    pub d2: f64,
    /// Σx[n]² over the probe.
    pub energy: f64,
    /// RMS of the probe (full scale 32768).
    pub rms: f64,
    /// Whether the samples count as interleaved stereo.
    pub stereo: bool,
    /// Why not, when a precondition failed (odd count, too quiet).
    pub why_not: Option<&'static str>,
}

impl RawProbe {
    /// D1/D2 (infinite when D2 is 0 and D1 is not; 0 when both are).
    pub fn ratio(&self) -> f64 {
        if self.d2 > 0.0 {
            self.d1 / self.d2
        } else if self.d1 > 0.0 {
            f64::INFINITY
        } else {
            0.0
        }
    }

    /// For the JSON's warnings.
    pub fn describe(&self) -> String {
        let how = match self.why_not {
            Some(why) => format!("{why}, D1/D2 = {:.2}", self.ratio()),
            None => format!("D1/D2 = {:.2}", self.ratio()),
        };
        if self.stereo {
            format!("raw layout detected as interleaved stereo (raw_stereo = \"auto\": {how})")
        } else {
            format!(
                "raw layout detected as mono (raw_stereo = \"auto\": {how}); set raw_stereo = \
                 true if the file is MixMonitor D interleaved stereo"
            )
        }
    }
}

/// How much of a raw file [`probe_raw_layout`] looks at, in seconds (of
/// stereo, at the file's rate): enough to get past ringing and a quiet
/// start, bounded so that the cost does not grow with the call.
pub const RAW_PROBE_SECONDS: usize = 30;

/// Interleaved stereo when D1 > this × D2.
pub const RAW_STEREO_RATIO: f64 = 1.5;

/// Interleaved stereo only when D1 < this × 2·Σx²: the channels of two
/// parties (or one party and silence) are not anti-correlated, so D1 ≈
/// 2·Σx²; a mono tone of angular frequency θ has D1 = 2·Σx²·(1 − cos θ),
/// at least 1.5 × 2·Σx² exactly when D1/D2 can exceed 1 (θ ≥ 2π/3).
pub const RAW_MAX_ANTI: f64 = 1.5;

/// Below this RMS (about −66 dBFS) a probe tells nothing: mono.
pub const RAW_PROBE_MIN_RMS: f64 = 16.0;

/// Whether headerless s16 samples at `rate` are interleaved stereo
/// (MixMonitor `D`) or mono, from the samples alone.
///
/// With x the samples: D1 = Σ(x[n]−x[n+1])², D2 = Σ(x[n]−x[n+2])², E =
/// Σx[n]². In interleaved stereo adjacent samples come from different
/// channels (two parties, or one party and silence), every other sample
/// from the same one: D1 ≈ 2E (independent channels), D2 only what a
/// channel changes in one frame, so D1 ≫ D2. In mono, band-limited audio
/// changes less in one sample than in two: D1 ≤ D2. Stereo when, over the
/// first [`RAW_PROBE_SECONDS`], D1 > [`RAW_STEREO_RATIO`]·D2, D1 <
/// [`RAW_MAX_ANTI`]·2E (not a mono tone above fs/3, whose D1/D2 exceeds 1),
/// the count of samples is even (whole frames) and the RMS is at least
/// [`RAW_PROBE_MIN_RMS`]; else mono.
///
/// Measured (tests/folder.rs `raw_layout_detector_on_real_material`,
/// `--nocapture` prints them), D1/D2 and D1/2E:
/// - mono, must stay mono: espeak-ng speech 8 kHz 0.42 / 0.24 and 0.44 /
///   0.29 (two voices), the same through a 300-3400 Hz band 0.39 / 0.26;
///   16 kHz 0.35 / 0.09 and 0.39 / 0.14; two voices mixed (MixMonitor's
///   default) 8 kHz 0.43, 16 kHz 0.37; sox tones 440 Hz 0.26, 1 kHz 0.29
///   (16 kHz: 0.26), DTMF 697+1209 Hz 0.50; pink noise 0.63, white noise
///   0.90 / 0.94. Mono tones above fs/3 pass the ratio but not the second
///   test: 3 kHz at 8 kHz 1.71 / 1.71, 3.4 kHz 4.59 / 1.89, 7 kHz at
///   16 kHz 6.57 / 1.92.
/// - interleaved, must be stereo: espeak speech + silence 8 kHz 4.15 and
///   3.44 (silence first) / 1.00, 16 kHz 10.99 / 1.00; two espeak voices
///   8 kHz 3.75 / 0.99, 16 kHz 8.58 / 0.99, 8 kHz with 30 % crosstalk
///   each way 1.96 / 0.52; sox tones 300 / 700 Hz 11.43 / 1.00; a 440 Hz
///   tone + speech 14.95 / 1.02.
///
/// Channels with heavy crosstalk (one party at more than about a third on
/// the other's channel) fall below the ratio and are read as mono: say
/// `raw_stereo = true` then.
pub fn probe_raw_layout(samples: &[i16], rate: u32) -> RawProbe {
    let n = samples
        .len()
        .min((rate as usize).saturating_mul(2 * RAW_PROBE_SECONDS));
    let x = &samples[..n];
    let (mut d1, mut d2, mut e) = (0f64, 0f64, 0f64);
    for (i, &v) in x.iter().enumerate() {
        let v = f64::from(v);
        e += v * v;
        if let Some(&a) = x.get(i + 1) {
            d1 += (v - f64::from(a)).powi(2);
        }
        if let Some(&b) = x.get(i + 2) {
            d2 += (v - f64::from(b)).powi(2);
        }
    }
    let rms = if n > 0 { (e / n as f64).sqrt() } else { 0.0 };
    let why_not = if samples.len() % 2 != 0 {
        Some("an odd number of samples")
    } else if rms < RAW_PROBE_MIN_RMS {
        Some("too quiet to tell")
    } else if d1 >= RAW_MAX_ANTI * 2.0 * e {
        // Adjacent samples anti-correlated (ρ1 ≤ −0.5): a mono tone above
        // fs/3, not two parties (independent channels give D1 ≈ 2·Σx²).
        Some("adjacent samples anti-correlated, as in a mono tone above a third of the rate")
    } else {
        None
    };
    RawProbe {
        d1,
        d2,
        energy: e,
        rms,
        stereo: why_not.is_none() && d1 > RAW_STEREO_RATIO * d2,
        why_not,
    }
}

/// Reads a recording file: WAV (`.wav`, `.wav16`; 16-bit PCM mono or
/// stereo, or GSM 6.10 = WAV49 mono 8 kHz), `.wav49`, raw GSM 06.10 frames
/// `.gsm` (8 kHz mono), `.sln`/`.raw` (8 kHz s16le, mono or interleaved
/// stereo per `raw_stereo`), `.sln16`.
pub fn read_audio(path: &Path, settings: &FolderSettings) -> Result<Pcm, FolderError> {
    read_audio_as(path, settings, false)
}

/// [`read_audio`] of a split leg (`leg`: MixMonitor `r()`/`t()` files are
/// mono, so `raw_stereo = "auto"` reads them as mono) or a whole file.
fn read_audio_as(path: &Path, settings: &FolderSettings, leg: bool) -> Result<Pcm, FolderError> {
    let size = fs::metadata(path).map_err(io_err(path))?.len();
    if size > settings.max_file_bytes {
        return Err(FolderError::TooLarge {
            path: path.to_path_buf(),
            size,
            limit: settings.max_file_bytes,
        });
    }
    let bytes = fs::read(path).map_err(io_err(path))?;
    decode_audio_as(path, &bytes, settings, leg)
}

/// [`read_audio`] of bytes already read: the format comes from `path`'s
/// extension and, for WAV (`.wav`, `.WAV`, `.wav49`), from the header's
/// format tag (1 = PCM, 0x31 = GSM 6.10); `path` also names the file in
/// errors and warnings. GSM decodes to about 10 times its size: a GSM file
/// whose PCM would exceed [`FolderSettings::max_file_bytes`] is refused.
/// A PCM WAV whose header was never finalised (data size 0, or more than
/// the file holds) is read to the end of the file, with a warning.
/// Never panics.
pub fn decode_audio(
    path: &Path,
    bytes: &[u8],
    settings: &FolderSettings,
) -> Result<Pcm, FolderError> {
    decode_audio_as(path, bytes, settings, false)
}

fn decode_audio_as(
    path: &Path,
    bytes: &[u8],
    settings: &FolderSettings,
    leg: bool,
) -> Result<Pcm, FolderError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let raw_rate = if name.ends_with(".sln16") {
        Some(16000)
    } else if name.ends_with(".sln") || name.ends_with(".raw") {
        Some(8000)
    } else {
        None
    };
    if let Some(rate) = raw_rate {
        let samples = le_samples(bytes);
        let (channels, warning) = match (settings.raw_stereo, leg) {
            (RawStereo::Stereo, _) => (2, None),
            (RawStereo::Mono, _) | (RawStereo::Auto, true) => (1, None),
            (RawStereo::Auto, false) => {
                let probe = probe_raw_layout(&samples, rate);
                (
                    if probe.stereo { 2 } else { 1 },
                    Some(format!("{}: {}", path.display(), probe.describe())),
                )
            }
        };
        let mut pcm = Pcm::l16(rate, channels, samples);
        pcm.warnings.extend(warning);
        return Ok(pcm);
    }
    if let Some((ext, rate)) = SLN_OTHER_RATES
        .iter()
        .find(|(e, _)| name.rsplit_once('.').is_some_and(|(_, x)| x == *e))
    {
        return Err(fmt_err(
            path,
            format!(
                "signed linear at {rate} Hz (Asterisk's .{ext}) is not supported: pbx-edge \
                 converts 8000 and 16000 Hz only; record as wav, wav16, sln or sln16"
            ),
        ));
    }
    if name.ends_with(".gsm") {
        // Asterisk's `gsm` format: 33-byte GSM 06.10 frames, no header.
        gsm_fits(
            path,
            bytes.len() / gsm::FRAME_BYTES,
            gsm::FRAME_SAMPLES,
            settings,
        )?;
        let (samples, stats) = gsm::decode_gsm_with_stats(bytes)
            .map_err(|e| fmt_err(path, format!("GSM 06.10: {e}")))?;
        return Ok(gsm_pcm(path, samples, stats, "frame"));
    }
    let info = parse_wav_header(bytes).map_err(|e| fmt_err(path, e.to_string()))?;
    let start = usize::try_from(info.data_offset).unwrap_or(usize::MAX);
    if info.format == gsm::WAVE_FORMAT_GSM610 {
        // WAV49 (Asterisk's `wav49`, written as `.WAV`): 65-byte blocks of
        // two GSM 06.10 frames, Microsoft packing.
        if info.channels != 1 || info.sample_rate != gsm::SAMPLE_RATE {
            return Err(fmt_err(
                path,
                format!(
                    "GSM 6.10 WAV (WAV49) with {} channels at {} Hz; mono 8000 Hz expected",
                    info.channels, info.sample_rate
                ),
            ));
        }
        if usize::from(info.block_align) != gsm::WAV49_BLOCK_BYTES {
            return Err(fmt_err(
                path,
                format!(
                    "GSM 6.10 WAV (WAV49) with block align {}; {} expected",
                    info.block_align,
                    gsm::WAV49_BLOCK_BYTES
                ),
            ));
        }
        // The declared size (the 0xFFFFFFFF placeholder of a file still
        // being written, or more than a cut file holds) clamped to the file.
        let available = bytes.len().saturating_sub(start);
        let mut header_warning = None;
        let len = if info.data_len == 0 && available > 0 {
            // Never finalised (the PBX crashed): to the end of the file.
            header_warning = Some(format!(
                "{}: WAV header data size 0: read to end of file ({available} bytes; the \
                 header was never finalised)",
                path.display()
            ));
            available
        } else {
            usize::try_from(info.data_len)
                .unwrap_or(usize::MAX)
                .min(available)
        };
        let data = bytes
            .get(start..start.saturating_add(len))
            .ok_or_else(|| fmt_err(path, "data chunk outside the file"))?;
        gsm_fits(
            path,
            data.len() / gsm::WAV49_BLOCK_BYTES,
            gsm::WAV49_BLOCK_SAMPLES,
            settings,
        )?;
        let (samples, mut stats) = gsm::decode_wav49_with_stats(data)
            .map_err(|e| fmt_err(path, format!("GSM 6.10 WAV (WAV49): {e}")))?;
        // One byte over whole blocks is the RIFF pad of an odd-sized chunk
        // (sox and Asterisk count it in the chunk size), not a cut block.
        if stats.trailing_bytes == 1 {
            stats.trailing_bytes = 0;
        }
        let mut pcm = gsm_pcm(path, samples, stats, "block");
        pcm.warnings.extend(header_warning);
        return Ok(pcm);
    }
    if !info.is_pcm() || info.bits_per_sample != 16 {
        return Err(fmt_err(
            path,
            format!(
                "unsupported WAV encoding (format {}, {} bits); 16-bit PCM or GSM 6.10 expected",
                info.format, info.bits_per_sample
            ),
        ));
    }
    if info.channels != 1 && info.channels != 2 {
        return Err(fmt_err(
            path,
            format!("{} channels; 1 or 2 expected", info.channels),
        ));
    }
    let (len, warning) = pcm_data_len(&info, bytes.len() as u64);
    let len = usize::try_from(len).unwrap_or(0);
    let data = bytes
        .get(start..start.saturating_add(len))
        .ok_or_else(|| fmt_err(path, "data chunk outside the file"))?;
    let mut pcm = Pcm::l16(info.sample_rate, info.channels, le_samples(data));
    pcm.warnings
        .extend(warning.map(|w| format!("{}: {w}", path.display())));
    Ok(pcm)
}

/// The audio bytes of a PCM WAV of `file_len` bytes, in whole frames. A
/// header the PBX never finalised (it crashed, or the file was cut off)
/// declares a data size of 0 (Asterisk's until the file is closed), or the
/// 0xFFFFFFFF placeholder, or more than the file holds: the data then
/// runs to the end of the file, and the warning says so. A valid header
/// is taken as it is (chunks after `data` stay out).
pub fn pcm_data_len(info: &pbx_core::audio::wav::WavInfo, file_len: u64) -> (u64, Option<String>) {
    let available = file_len.saturating_sub(info.data_offset);
    let align = u64::from(info.block_align.max(1));
    let whole = available / align * align;
    if info.data_len == 0 && whole > 0 {
        return (
            whole,
            Some(format!(
                "WAV header data size 0: read to end of file ({whole} bytes; the header was \
                 never finalised)"
            )),
        );
    }
    if info.data_len > available {
        return (
            whole,
            Some(format!(
                "WAV header data size {} is more than the file holds ({available} bytes): read \
                 to end of file",
                info.data_len
            )),
        );
    }
    (info.audio_len(file_len), None)
}

/// Refuses GSM whose decoded PCM (`units` frames or blocks of `samples`
/// each) would be larger than `max_file_bytes`: the memory bound holds for
/// what is decoded, not only for what is read.
fn gsm_fits(
    path: &Path,
    units: usize,
    samples: usize,
    settings: &FolderSettings,
) -> Result<(), FolderError> {
    let pcm_bytes = (units as u64).saturating_mul(samples as u64 * 2);
    if pcm_bytes > settings.max_file_bytes {
        return Err(fmt_err(
            path,
            format!(
                "GSM 06.10 decoding to {pcm_bytes} bytes of PCM, more than the limit of {}",
                settings.max_file_bytes
            ),
        ));
    }
    Ok(())
}

/// Decoded GSM as mono 8 kHz [`Pcm`], with a warning for each thing the
/// decoder got past (`unit`: "frame" or "block").
fn gsm_pcm(path: &Path, samples: Vec<i16>, stats: gsm::GsmStats, unit: &str) -> Pcm {
    let mut warnings = Vec::new();
    if stats.bad_frames > 0 {
        warnings.push(format!(
            "{}: {} of {} GSM frames without the 0xD magic, decoded as silence",
            path.display(),
            stats.bad_frames,
            stats.frames
        ));
    }
    if stats.trailing_bytes > 0 {
        warnings.push(format!(
            "{}: the last {} bytes are a partial GSM {unit}, ignored",
            path.display(),
            stats.trailing_bytes
        ));
    }
    Pcm {
        rate: gsm::SAMPLE_RATE,
        channels: 1,
        samples,
        codec: "GSM",
        warnings,
    }
}

/// Channel `idx` of interleaved PCM.
pub fn channel(p: &Pcm, idx: usize) -> Vec<i16> {
    let n = usize::from(p.channels.max(1));
    p.samples.iter().skip(idx).step_by(n).copied().collect()
}

/// `x` at `from` Hz converted to `to` Hz, same duration, delay compensated
/// (8 ↔ 16 kHz; other rates are an error naming `path`).
pub fn resample(x: Vec<i16>, from: u32, to: u32, path: &Path) -> Result<Vec<i16>, FolderError> {
    if from == to {
        return Ok(x);
    }
    let mut r = Resampler::new(from, to).map_err(|e| fmt_err(path, e.to_string()))?;
    let want = (x.len() as u64 * u64::from(to) / u64::from(from.max(1))) as usize;
    let delay = r.delay();
    let mut out = Vec::with_capacity(want + delay + 64);
    r.process(&x, &mut out);
    // Flush the filter: enough input silence to produce `delay` more outputs.
    let extra_in = (delay as u64 * u64::from(from) / u64::from(to.max(1))) as usize + 2;
    r.process_silence(extra_in, &mut out);
    let mut out: Vec<i16> = out.into_iter().skip(delay).collect();
    out.resize(want, 0);
    Ok(out)
}

// ---------------------------------------------------------------- sets

/// The files of one PBX recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingSet {
    /// Directory + stem without leg suffix (`-in`/`-out`, ...): the set's
    /// identity.
    pub key: PathBuf,
    /// What the PBX received from the caller (`-in`, MixMonitor `r()`).
    pub rx: Option<PathBuf>,
    /// What the PBX sent to the caller, i.e. the callee (`-out`, `t()`).
    pub tx: Option<PathBuf>,
    /// A file without leg suffix: stereo taken as is, mono as a mixed mono.
    pub whole: Option<PathBuf>,
}

impl RecordingSet {
    pub fn files(&self) -> Vec<&PathBuf> {
        [&self.rx, &self.tx, &self.whole]
            .into_iter()
            .flatten()
            .collect()
    }

    /// The stem (no directory).
    pub fn stem(&self) -> String {
        self.key
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// The leg suffixes paired into split legs (matched without regard to
/// case, just before the extension): what people configure for MixMonitor
/// `r()` (what the PBX received: the caller, `"in"`) and `t()` (what it
/// sent: the callee, `"out"`). Longest first, so `-out` is not read as `-t`.
pub const LEG_SUFFIXES: &[(&str, &str)] = &[
    ("-out", "out"),
    ("_out", "out"),
    (".out", "out"),
    ("-in", "in"),
    ("_in", "in"),
    (".in", "in"),
    ("-rx", "in"),
    ("_rx", "in"),
    ("-tx", "out"),
    ("_tx", "out"),
    ("-r", "in"),
    ("_r", "in"),
    ("-t", "out"),
    ("_t", "out"),
];

/// [`split_name`] of a file name's bytes (any, not only UTF-8): the length
/// of the base (the stem without extension and leg suffix) and the leg.
pub fn split_name_bytes(name: &[u8]) -> Option<(usize, Option<&'static str>)> {
    if !is_audio_name(&String::from_utf8_lossy(name)) {
        return None;
    }
    let stem_len = name.iter().rposition(|&b| b == b'.').unwrap_or(name.len());
    let stem = &name[..stem_len];
    for (suffix, leg) in LEG_SUFFIXES {
        let s = suffix.as_bytes();
        if stem.len() > s.len() && stem[stem.len() - s.len()..].eq_ignore_ascii_case(s) {
            return Some((stem.len() - s.len(), Some(*leg)));
        }
    }
    Some((stem_len, None))
}

/// Stem and leg of a file name: `("base", Some("in"))` for `base-in.wav`
/// (and the other [`LEG_SUFFIXES`]: `base_rx.wav`, `base.IN.wav`, ...);
/// `None` if it is not an audio file name.
pub fn split_name(name: &str) -> Option<(String, Option<&'static str>)> {
    let (len, leg) = split_name_bytes(name.as_bytes())?;
    // The suffixes and extensions are ASCII: `len` is a char boundary.
    Some((name.get(..len).unwrap_or(name).to_string(), leg))
}

/// Groups audio files into recording sets.
pub fn group_sets(files: &[PathBuf]) -> Vec<RecordingSet> {
    use std::os::unix::ffi::OsStrExt;
    let mut sets: HashMap<PathBuf, RecordingSet> = HashMap::new();
    for f in files {
        let Some(name) = f.file_name() else {
            continue;
        };
        let Some((len, leg)) = split_name_bytes(name.as_bytes()) else {
            continue;
        };
        // The key keeps the name's bytes (not a lossy copy): two names that
        // differ only in bytes that are not UTF-8 stay two recordings.
        let base = std::ffi::OsStr::from_bytes(&name.as_bytes()[..len]);
        let key = f.parent().unwrap_or(Path::new("")).join(base);
        let set = sets.entry(key.clone()).or_insert_with(|| RecordingSet {
            key,
            rx: None,
            tx: None,
            whole: None,
        });
        match leg {
            Some("in") => set.rx = Some(f.clone()),
            Some(_) => set.tx = Some(f.clone()),
            None => set.whole = Some(f.clone()),
        }
    }
    let mut v: Vec<RecordingSet> = sets.into_values().collect();
    v.sort_by(|a, b| a.key.cmp(&b.key));
    v
}

// ---------------------------------------------------------------- convert

/// A recording pair written to the spool.
#[derive(Debug, Clone)]
pub struct Converted {
    pub id: String,
    pub wav: PathBuf,
    pub json: PathBuf,
    pub bytes: u64,
    pub duration_ms: i64,
    pub warnings: Vec<String>,
}

/// Turns a finished recording set into `<id>.wav` + `<id>.json` in `out_dir`.
/// Reads only the PBX's files. `mtime` is the start time used when neither the
/// file name nor the CDR has one.
pub fn convert(
    set: &RecordingSet,
    cdr: Option<&CdrRow>,
    out_dir: &Path,
    agent_id: &str,
    settings: &FolderSettings,
    mtime: Timestamp,
) -> Result<Converted, FolderError> {
    let mut warnings: Vec<String> = Vec::new();
    let mut mixed_mono = false;
    let (left, right, rate, sources, codecs): (Vec<i16>, Vec<i16>, u32, Vec<String>, [&str; 2]);
    let src_name = |p: &PathBuf| p.to_string_lossy().into_owned();
    if set.rx.is_some() || set.tx.is_some() {
        let a = set
            .rx
            .as_ref()
            .map(|p| read_audio_as(p, settings, true))
            .transpose()?;
        let b = set
            .tx
            .as_ref()
            .map(|p| read_audio_as(p, settings, true))
            .transpose()?;
        for (leg, p) in [(&a, &set.rx), (&b, &set.tx)] {
            if let (Some(pcm), Some(path)) = (leg, p) {
                warnings.extend(pcm.warnings.iter().cloned());
                if pcm.channels != 1 {
                    warnings.push(format!(
                        "{}: leg has {} channels, the first is used",
                        path.display(),
                        pcm.channels
                    ));
                }
            }
        }
        if a.is_none() {
            warnings.push("the caller leg (-in) is missing: channel 0 is silent".into());
        }
        if b.is_none() {
            warnings.push("the callee leg (-out) is missing: channel 1 is silent".into());
        }
        let ra = a.as_ref().map(|p| p.rate).unwrap_or(8000);
        let rb = b.as_ref().map(|p| p.rate).unwrap_or(8000);
        rate = if ra > 8000 || rb > 8000 { 16000 } else { 8000 };
        let la = match (&a, &set.rx) {
            (Some(p), Some(path)) => resample(channel(p, 0), p.rate, rate, path)?,
            _ => Vec::new(),
        };
        let lb = match (&b, &set.tx) {
            (Some(p), Some(path)) => resample(channel(p, 0), p.rate, rate, path)?,
            _ => Vec::new(),
        };
        if a.is_some() && b.is_some() && la.len() != lb.len() {
            let diff = la.len().abs_diff(lb.len()) as u64 * 1000 / u64::from(rate);
            if diff > 0 {
                warnings.push(format!(
                    "the legs differ in length by {diff} ms; aligned at their start"
                ));
            }
        }
        left = la;
        right = lb;
        sources = [&set.rx, &set.tx]
            .into_iter()
            .flatten()
            .map(src_name)
            .collect();
        codecs = [
            a.as_ref().map_or("L16", |p| p.codec),
            b.as_ref().map_or("L16", |p| p.codec),
        ];
    } else if let Some(path) = &set.whole {
        let p = read_audio(path, settings)?;
        warnings.extend(p.warnings.iter().cloned());
        let r = if p.rate > 8000 { 16000 } else { 8000 };
        if p.channels == 2 {
            left = resample(channel(&p, 0), p.rate, r, path)?;
            right = resample(channel(&p, 1), p.rate, r, path)?;
        } else {
            mixed_mono = true;
            warnings.push(
                "mono mix: both parties are on channel 0, channel 1 is silent; \
                 record split legs (MixMonitor r()/t()) or stereo for a two-channel analysis"
                    .into(),
            );
            left = resample(channel(&p, 0), p.rate, r, path)?;
            right = Vec::new();
        }
        rate = r;
        sources = vec![src_name(path)];
        codecs = [p.codec, p.codec];
    } else {
        return Err(fmt_err(&set.key, "no audio file in the set"));
    }

    // `caller_leg = "out"`: the caller is what the PBX sent (tx / right).
    let (left, right, codecs) = if settings.caller_leg_out && !mixed_mono {
        (right, left, [codecs[1], codecs[0]])
    } else {
        (left, right, codecs)
    };

    // Metadata: the CDR first, then the file name, then the mtime.
    let stem = set.stem();
    let name = parse_name(&stem, &settings.name_patterns);
    let call_id = cdr
        .map(|c| c.uniqueid.clone())
        .or_else(|| name.as_ref().map(|n| n.uniqueid.clone()))
        .unwrap_or_else(|| stem.clone());
    let frames = left.len().max(right.len());
    let duration_ms = (frames as u64 * 1000 / u64::from(rate)) as i64;
    let name_start = name
        .as_ref()
        .map(|n| settings.timezone.to_utc(n.started_at));
    let started_at = cdr
        .and_then(|c| c.start)
        .or(name_start)
        .unwrap_or_else(|| mtime.add_micros(-duration_ms * 1000));
    let answered_at = cdr.and_then(|c| c.answer);
    let ended_at = cdr
        .and_then(|c| c.end)
        .unwrap_or_else(|| started_at.add_micros(duration_ms * 1000));
    let (from_number, to_number) = match (cdr, &name) {
        (Some(c), _) => (
            if c.src.is_empty() {
                c.cnum.clone()
            } else {
                c.src.clone()
            },
            c.dst.clone(),
        ),
        (None, Some(n)) => (n.src.clone(), n.dst.clone()),
        (None, None) => (String::new(), String::new()),
    };
    let from_name = cdr
        .and_then(|c| clid_name(&c.clid).or_else(|| Some(c.cnam.clone()).filter(|n| !n.is_empty())))
        .or_else(|| name.as_ref().and_then(|n| n.src_name.clone()));
    let file_direction = name
        .as_ref()
        .map(|n| direction_of(&n.kind))
        .unwrap_or("unknown");
    let direction = settings.direction.classify(cdr, file_direction);
    let id = recording_id(&call_id, started_at);

    let doc = RecordingDoc {
        schema: SCHEMA,
        recording_id: id.clone(),
        agent_id: agent_id.to_string(),
        source: "folder".into(),
        call_id: Some(call_id),
        from: Some(DocParty {
            number: from_number,
            name: from_name,
            uri: None,
        }),
        to: Some(DocParty {
            number: to_number,
            name: None,
            uri: None,
        }),
        direction: direction.to_string(),
        started_at: Some(started_at),
        answered_at,
        ended_at: Some(ended_at),
        duration_ms,
        // Filled in by `write_whole` from the WAV it writes.
        audio: DocAudio::wav(rate, 0, String::new()),
        channels: DocChannels::summary(codecs),
        dtmf: Vec::new(),
        truncated: false,
        warnings: warnings.clone(),
        call: None,
        folder: Some(FolderFields {
            mixed_mono,
            disposition: cdr.map(|c| c.disposition.clone()),
            did: cdr.map(|c| c.did.clone()).filter(|d| !d.is_empty()),
            cdr: cdr.is_some(),
            pbx_type: name.as_ref().map(|n| n.kind.clone()),
            source_files: sources,
        }),
    };
    let (written, bytes) = crate::recording::write_whole(out_dir, rate, &left, &right, doc)
        .map_err(|source| FolderError::Write {
            id: id.clone(),
            source,
        })?;
    Ok(Converted {
        id,
        wav: written.wav,
        json: written.json,
        bytes,
        duration_ms: written.duration_ms,
        warnings,
    })
}

/// Suffix of a WAV being converted in the spool (removed at start if left).
pub use crate::recording::WHOLE_TMP as FOLDER_TMP;

/// A PBX file's path as stored in the spool's delivery watch (a JSON
/// string): as it is when it is UTF-8, else `hex:` and the hex of its bytes
/// (the paths watched are absolute, so a plain one never starts so).
pub fn encode_path(p: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    match p.to_str() {
        Some(s) if !s.starts_with(HEX_PATH) => s.to_string(),
        _ => {
            let mut out = String::from(HEX_PATH);
            for b in p.as_os_str().as_bytes() {
                out.push_str(&format!("{b:02x}"));
            }
            out
        }
    }
}

/// [`encode_path`] reversed; entries written before it (plain, lossy
/// strings) are read as they are.
pub fn decode_path(s: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let Some(hex) = s.strip_prefix(HEX_PATH) else {
        return PathBuf::from(s);
    };
    let bytes: Option<Vec<u8>> = (hex.len() % 2 == 0)
        .then(|| {
            (0..hex.len())
                .step_by(2)
                .map(|i| {
                    hex.get(i..i + 2)
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                })
                .collect()
        })
        .flatten();
    match bytes {
        Some(b) => PathBuf::from(std::ffi::OsString::from_vec(b)),
        None => PathBuf::from(s),
    }
}

const HEX_PATH: &str = "hex:";

// ---------------------------------------------------------------- seen state

/// Identity of a file version: inode, size, mtime (ns). Survives renames.
pub type FileKey = (u64, u64, i64);

fn file_key(md: &fs::Metadata) -> FileKey {
    (
        md.ino(),
        md.size(),
        md.mtime().saturating_mul(1_000_000_000) + md.mtime_nsec(),
    )
}

/// The files already taken, `<spool>/.folder-seen`: append-only lines
/// `ino size mtime_ns<TAB>path` (the path is for people; only the key counts).
#[derive(Debug)]
pub struct SeenFile {
    path: PathBuf,
    keys: HashSet<FileKey>,
}

impl SeenFile {
    pub const NAME: &'static str = ".folder-seen";

    pub fn open(spool: &Path) -> io::Result<Self> {
        let path = spool.join(Self::NAME);
        let keys = match fs::read(&path) {
            Ok(bytes) => parse_seen(&String::from_utf8_lossy(&bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => HashSet::new(),
            Err(e) => return Err(e),
        };
        Ok(SeenFile { path, keys })
    }

    pub fn contains(&self, k: &FileKey) -> bool {
        self.keys.contains(k)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Remembers `files` durably (append + fsync).
    pub fn add(&mut self, files: &[(FileKey, PathBuf)]) -> io::Result<()> {
        let text: String = files.iter().map(|(k, p)| seen_line(k, p)).collect();
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode_private()
            .open(&self.path)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        for (k, _) in files {
            self.keys.insert(*k);
        }
        Ok(())
    }
}

/// One line of `.folder-seen`: `ino size mtime_ns<TAB>path` (the path
/// escaped: one line whatever its characters).
pub fn seen_line(k: &FileKey, p: &Path) -> String {
    let shown: String = p.to_string_lossy().escape_debug().collect();
    format!("{} {} {}\t{}\n", k.0, k.1, k.2, shown)
}

/// The keys of a `.folder-seen` text; lines that are not `ino size
/// mtime_ns...` (a line cut off by a crash, say) are skipped.
pub fn parse_seen(text: &str) -> HashSet<FileKey> {
    let mut keys = HashSet::new();
    for line in text.lines() {
        let mut it = line.split('\t').next().unwrap_or("").split(' ');
        let k = (
            it.next().and_then(|v| v.parse().ok()),
            it.next().and_then(|v| v.parse().ok()),
            it.next().and_then(|v| v.parse().ok()),
        );
        if let (Some(a), Some(b), Some(c)) = k {
            keys.insert((a, b, c));
        }
    }
    keys
}

trait PrivateMode {
    fn mode_private(&mut self) -> &mut Self;
}

impl PrivateMode for OpenOptions {
    fn mode_private(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.mode(0o600)
    }
}

// ---------------------------------------------------------------- scanner

/// Counters of the folder source.
#[derive(Debug, Default, Clone)]
pub struct FolderCounters {
    pub written: u64,
    pub failed: u64,
    pub bytes: u64,
    pub skipped_seen: u64,
    pub scan_errors: u64,
}

/// What the CDR store said of one settled recording.
#[derive(Debug)]
enum Lookup {
    NoStore,
    Found(Box<CdrRow>),
    NotYet,
    Down,
}

#[derive(Debug, Clone)]
struct Watch {
    key: FileKey,
    /// Since when the file is known to be unchanged.
    since: Instant,
    /// The pass that last read its metadata.
    checked: Instant,
}

/// How long after it appeared a new directory is listed again (events mode):
/// notify adds the watch of a new directory only after reporting it, so a
/// file created in it in between raises no event.
const FRESH_RELIST: Duration = Duration::from_secs(2);

/// With `after_delivery`, how often (at most) an idle events-mode scanner
/// asks the spool whether a watched recording was delivered.
const AFTER_DELIVERY_POLL: Duration = Duration::from_secs(5);

/// What an inotify event asks of the thread that owns the watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum EventEffect {
    /// Noted; the next pass is due when [`FolderScanner::next_pass`] says.
    Noted,
    /// Something is to be listed: a pass now.
    PassNow,
    /// `path` is back (created or moved in again): watch it again, then a
    /// full listing.
    RootBack,
    /// `path` itself was deleted or moved away.
    RootGone,
}

/// Scans a PBX folder and converts settled recording sets (no thread: call
/// [`FolderScanner::scan`] periodically, or feed it inotify events with
/// [`FolderScanner::note_event`] and call `scan` at
/// [`FolderScanner::next_pass`]; [`start`] does that in a thread).
#[derive(Debug)]
pub struct FolderScanner {
    root: PathBuf,
    spool: PathBuf,
    spool_canon: Option<PathBuf>,
    agent_id: String,
    settle: Duration,
    settings: FolderSettings,
    seen: SeenFile,
    cdr: Option<Box<dyn CdrStore>>,
    /// Why the CDR store cannot answer, while it cannot.
    cdr_down: Option<String>,
    /// The spool database, for `after_delivery` (opened when first needed).
    spool_db: Option<crate::spool::Spool>,
    /// Watches whose action failed (reported once each).
    after_failed: HashSet<String>,
    /// `after_delivery`: some recording taken is not delivered yet.
    after_pending: bool,
    watching: HashMap<PathBuf, Watch>,
    /// Directories listed: mtime then, subdirectories (polling only).
    dir_cache: HashMap<PathBuf, ((i64, i64), Vec<PathBuf>)>,
    full_scan_at: Instant,
    /// Settled sets waiting for their CDR row: key → first settled.
    waiting_cdr: HashMap<PathBuf, Instant>,
    /// Files whose set failed with an I/O error (permission denied, EIO,
    /// ...: maybe transient), with the version that failed: not marked
    /// seen, not tried again before the next full listing.
    io_failed: HashMap<PathBuf, FileKey>,
    /// Why `path` cannot be listed (deleted, moved away), while it cannot.
    root_missing: Option<String>,
    /// The next pass lists the whole tree.
    rescan: bool,
    /// Changes come as inotify events ([`FolderScanner::note_event`]).
    events: bool,
    /// Events mode: paths to look at in the next pass (a directory is listed
    /// with everything below it).
    to_list: HashSet<PathBuf>,
    /// Events mode: new directories to list again, and when.
    fresh: Vec<(PathBuf, Instant)>,
    /// Events mode: the last event of each file since the last pass.
    touched: HashMap<PathBuf, Instant>,
    /// Events mode: files written to and not closed since.
    open: HashSet<PathBuf>,
    pub counters: FolderCounters,
    pub written: Vec<Converted>,
    /// Recent errors (at most 100 kept).
    pub errors: VecDeque<String>,
}

impl FolderScanner {
    pub fn new(
        root: &Path,
        spool: &Path,
        agent_id: &str,
        cdr_csv: Option<&Path>,
        settle: Duration,
        settings: FolderSettings,
    ) -> io::Result<Self> {
        create_private_dir(spool)?;
        // Conversions a crash cut off: redone, since their files were not
        // marked seen.
        for e in fs::read_dir(spool)?.flatten() {
            let n = e.file_name();
            let n = n.to_string_lossy();
            if n.starts_with('.') && n.ends_with(FOLDER_TMP) {
                let _ = fs::remove_file(e.path());
            }
        }
        let seen = SeenFile::open(spool)?;
        let cdr = cdr_csv.map(|p| {
            Box::new(CsvStore(CdrFollower::with_columns(
                p,
                settings.max_cdr_rows,
                settings.csv_columns.clone(),
                settings.timezone,
            ))) as Box<dyn CdrStore>
        });
        // Absolute, as inotify events name the files (not canonical: the
        // configured path is kept, symbolic links and all).
        let root = std::path::absolute(root)?;
        Ok(FolderScanner {
            root,
            spool: spool.to_path_buf(),
            spool_canon: fs::canonicalize(spool).ok(),
            agent_id: agent_id.to_string(),
            settle,
            settings,
            seen,
            cdr,
            cdr_down: None,
            spool_db: None,
            after_failed: HashSet::new(),
            after_pending: false,
            watching: HashMap::new(),
            dir_cache: HashMap::new(),
            full_scan_at: Instant::now(),
            waiting_cdr: HashMap::new(),
            io_failed: HashMap::new(),
            root_missing: None,
            rescan: false,
            events: false,
            to_list: HashSet::new(),
            fresh: Vec::new(),
            touched: HashMap::new(),
            open: HashSet::new(),
            counters: FolderCounters::default(),
            written: Vec::new(),
            errors: VecDeque::new(),
        })
    }

    /// Uses `store` for call details (replacing Master.csv, if any).
    pub fn set_cdr_store(&mut self, store: Box<dyn CdrStore>) {
        self.cdr = Some(store);
    }

    /// Why the CDR store cannot answer now, if it cannot.
    pub fn cdr_down(&self) -> Option<&str> {
        self.cdr_down.as_deref()
    }

    /// Why `path` cannot be listed now (it was deleted or moved away).
    pub fn root_missing(&self) -> Option<&str> {
        self.root_missing.as_deref()
    }

    /// The folder watched (absolute).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Switches to passes driven by inotify events (`true`; the caller has
    /// just added the watch) or back to polling. Either way the next pass
    /// lists the whole tree.
    pub fn set_event_driven(&mut self, on: bool) {
        self.events = on;
        self.dir_cache.clear();
        self.to_list.clear();
        self.fresh.clear();
        self.touched.clear();
        self.open.clear();
        self.rescan = true;
    }

    /// Whether passes are driven by inotify events.
    pub fn event_driven(&self) -> bool {
        self.events
    }

    /// The next pass lists the whole tree.
    pub fn request_rescan(&mut self) {
        self.rescan = true;
    }

    /// Events were lost (inotify queue overflow, a watch error): nothing
    /// said since can be trusted. The next pass lists the whole tree, every
    /// settle wait starts again at `now`, and no file counts as open.
    pub fn lost_events(&mut self, now: Instant) {
        self.rescan = true;
        self.open.clear();
        self.touched.clear();
        for w in self.watching.values_mut() {
            w.since = now;
        }
    }

    fn error(&mut self, msg: String) {
        tracing::error!(target: "pbx_edge::folder", "{msg}");
        if self.errors.len() >= 100 {
            self.errors.pop_front();
        }
        self.errors.push_back(msg);
    }

    fn is_spool(&self, p: &Path) -> bool {
        p.starts_with(&self.spool)
            || self
                .spool_canon
                .as_deref()
                .is_some_and(|c| p.starts_with(c))
    }

    fn too_old(&self, md: &fs::Metadata) -> bool {
        self.settings.max_age.is_some_and(|age| {
            md.modified()
                .ok()
                .and_then(|m| m.elapsed().ok())
                .is_some_and(|e| e > age)
        })
    }

    /// How long `p` must stay unchanged.
    fn need(&self, p: &Path) -> Duration {
        if self.open.contains(p) {
            self.settings.open_settle.max(self.settle)
        } else {
            self.settle
        }
    }

    /// Forgets `p` and everything below it (deleted or moved away).
    fn forget(&mut self, p: &Path) {
        self.watching.retain(|k, _| !k.starts_with(p));
        self.touched.retain(|k, _| !k.starts_with(p));
        self.open.retain(|k| !k.starts_with(p));
        self.to_list.retain(|k| !k.starts_with(p));
        self.fresh.retain(|(k, _)| !k.starts_with(p));
    }

    /// Takes in one inotify event (events mode) at `now`.
    pub fn note_event(&mut self, ev: &notify::Event, now: Instant) -> EventEffect {
        if ev.need_rescan() {
            self.lost_events(now);
            return EventEffect::PassNow;
        }
        let mut effect = EventEffect::Noted;
        for p in &ev.paths {
            effect = effect.max(self.note_path(&ev.kind, p, now));
        }
        effect
    }

    fn note_path(&mut self, kind: &notify::EventKind, p: &Path, now: Instant) -> EventEffect {
        use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
        use notify::EventKind as K;
        if p == self.root {
            return match kind {
                K::Remove(_) | K::Modify(ModifyKind::Name(RenameMode::From)) => {
                    EventEffect::RootGone
                }
                K::Create(_) | K::Modify(ModifyKind::Name(RenameMode::To)) => EventEffect::RootBack,
                _ => EventEffect::Noted,
            };
        }
        // Not below `path` (the parent's watch, while `path` is gone), too
        // deep, or our own output.
        let Ok(rel) = p.strip_prefix(&self.root) else {
            return EventEffect::Noted;
        };
        if rel.components().count() > self.settings.max_depth + 1 || self.is_spool(p) {
            return EventEffect::Noted;
        }
        let audio = p
            .file_name()
            .is_some_and(|n| is_audio_name(&n.to_string_lossy()));
        match kind {
            K::Access(AccessKind::Close(AccessMode::Write)) => {
                if audio {
                    self.touched.insert(p.to_path_buf(), now);
                    self.open.remove(p);
                }
                EventEffect::Noted
            }
            K::Access(_) => EventEffect::Noted,
            K::Create(CreateKind::File) | K::Modify(ModifyKind::Data(_)) => {
                if audio {
                    self.touched.insert(p.to_path_buf(), now);
                    self.open.insert(p.to_path_buf());
                }
                EventEffect::Noted
            }
            K::Modify(ModifyKind::Metadata(_)) => {
                if audio {
                    self.touched.insert(p.to_path_buf(), now);
                }
                EventEffect::Noted
            }
            K::Modify(ModifyKind::Name(RenameMode::From)) | K::Remove(_) => {
                self.forget(p);
                EventEffect::Noted
            }
            // A rename gives From and To as well.
            K::Modify(ModifyKind::Name(RenameMode::Both)) => EventEffect::Noted,
            // A new directory, a file or directory moved in, or an event
            // that does not say what happened: look at it.
            _ => {
                self.to_list.insert(p.to_path_buf());
                EventEffect::PassNow
            }
        }
    }

    /// When the next pass is due in events mode (never before `now`): when
    /// a file may have settled, a new directory is listed again, the safety
    /// listing is due, or — every [`FolderSettings::poll`] — recordings wait
    /// for their CDR row, `path` is missing or a delivery is awaited.
    pub fn next_pass(&self, now: Instant) -> Instant {
        let mut next = self.full_scan_at + self.settings.full_scan;
        if self.rescan || !self.to_list.is_empty() {
            return now;
        }
        for (p, w) in &self.watching {
            let last = self.touched.get(p).map_or(w.since, |t| (*t).max(w.since));
            let due = last + self.need(p);
            // Past due and still here: it waits for its CDR row or for the
            // other leg, which have their own deadlines.
            if due > now {
                next = next.min(due);
            }
        }
        for (p, t) in &self.touched {
            if !self.watching.contains_key(p) {
                next = next.min(*t + self.need(p));
            }
        }
        for (_, t) in &self.fresh {
            next = next.min(*t);
        }
        if !self.waiting_cdr.is_empty() || self.root_missing.is_some() {
            next = next.min(now + self.settings.poll);
        }
        if self.after_pending {
            next = next.min(now + self.settings.poll.max(AFTER_DELIVERY_POLL));
        }
        next.max(now)
    }

    /// Whether `path` is there; notes (once) when it goes and comes back.
    fn root_present(&mut self) -> bool {
        match fs::metadata(&self.root) {
            Ok(m) if m.is_dir() => {
                if self.root_missing.take().is_some() {
                    tracing::info!(target: "pbx_edge::folder", path = %self.root.display(), "folder path is back: listing it");
                    self.rescan = true;
                }
                true
            }
            r => {
                if self.root_missing.is_none() {
                    let why = match r {
                        Ok(_) => "not a directory".to_string(),
                        Err(e) => e.to_string(),
                    };
                    let msg = format!(
                        "folder: sources.folder.path {}: {why}; waiting for it to come back",
                        self.root.display()
                    );
                    self.counters.scan_errors += 1;
                    self.error(msg.clone());
                    self.root_missing = Some(msg);
                }
                // Nothing below it is there any more.
                self.watching.clear();
                self.waiting_cdr.clear();
                self.dir_cache.clear();
                self.to_list.clear();
                self.fresh.clear();
                self.touched.clear();
                self.open.clear();
                false
            }
        }
    }

    /// Lists `dir` and below: audio files into `out`. `cached`: a directory
    /// whose mtime has not changed since it was listed (and was old enough
    /// then not to be racy) holds no new files, only its subdirectories are
    /// visited (polling; files still settling are re-read from `watching` by
    /// `scan`).
    fn walk(
        &mut self,
        dir: &Path,
        depth: usize,
        out: &mut Vec<(PathBuf, fs::Metadata)>,
        cached: bool,
    ) {
        let dir_mtime = fs::metadata(dir).ok().map(|m| (m.mtime(), m.mtime_nsec()));
        if let (true, Some(mt), Some(c)) = (cached, dir_mtime, self.dir_cache.get(dir)) {
            if c.0 == mt {
                let subdirs = c.1.clone();
                for sub in subdirs {
                    if depth < self.settings.max_depth {
                        self.walk(&sub, depth + 1, out, cached);
                    }
                }
                return;
            }
        }
        let mut subdirs = Vec::new();
        let rd = match fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) => {
                self.counters.scan_errors += 1;
                self.error(format!("folder: cannot list {}: {e}", dir.display()));
                return;
            }
        };
        for entry in rd.flatten() {
            let p = entry.path();
            let Ok(ft) = entry.file_type() else { continue };
            if ft.is_dir() {
                // Never take our own output (a spool inside the PBX folder).
                if self.spool_canon.as_deref() == fs::canonicalize(&p).ok().as_deref() {
                    continue;
                }
                subdirs.push(p.clone());
                if depth < self.settings.max_depth {
                    self.walk(&p, depth + 1, out, cached);
                }
            } else if ft.is_file() {
                let name = entry.file_name();
                if !is_audio_name(&name.to_string_lossy()) {
                    continue;
                }
                if let Ok(md) = entry.metadata() {
                    if !self.too_old(&md) {
                        out.push((p, md));
                    }
                }
            }
        }
        if !cached {
            return;
        }
        // Cache only a listing that cannot race a file created in the same
        // mtime tick: the directory must have been quiet for 2 s.
        let quiet = fs::metadata(dir)
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|m| m.elapsed().ok())
            .is_some_and(|e| e > Duration::from_secs(2));
        match (dir_mtime, quiet) {
            (Some(mt), true) if self.dir_cache.len() < 100_000 => {
                self.dir_cache.insert(dir.to_path_buf(), (mt, subdirs));
            }
            _ => {
                self.dir_cache.remove(dir);
            }
        }
    }

    /// Events mode, no full listing: what the events named (directories
    /// listed with everything below them).
    fn look_at_events(&mut self, now: Instant, out: &mut Vec<(PathBuf, fs::Metadata)>) {
        let mut look: Vec<(PathBuf, bool)> = self.to_list.drain().map(|p| (p, true)).collect();
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.fresh)
            .into_iter()
            .partition(|(_, t)| *t <= now);
        self.fresh = later;
        look.extend(due.into_iter().map(|(p, _)| (p, false)));
        // One look per path; an event's (listed again later) wins.
        look.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        look.dedup_by(|a, b| a.0 == b.0);
        for (p, from_event) in look {
            let Ok(md) = fs::symlink_metadata(&p) else {
                continue;
            };
            if md.is_dir() {
                if self.is_spool(&p)
                    || self.spool_canon.as_deref() == fs::canonicalize(&p).ok().as_deref()
                {
                    continue;
                }
                let depth = p
                    .strip_prefix(&self.root)
                    .map_or(0, |r| r.components().count());
                if depth > self.settings.max_depth {
                    continue;
                }
                self.walk(&p, depth, out, false);
                if from_event {
                    self.fresh.push((p, now + FRESH_RELIST));
                }
            } else if md.is_file()
                && p.file_name()
                    .is_some_and(|n| is_audio_name(&n.to_string_lossy()))
                && !self.too_old(&md)
            {
                out.push((p, md));
            }
        }
    }

    /// One pass: notices new and changed files, converts the sets whose files
    /// have all been unchanged for `settle` (and, with inotify, closed).
    /// Returns how many were written.
    pub fn scan(&mut self, now: Instant) -> usize {
        self.after_delivery_pass();
        if !self.root_present() {
            return 0;
        }
        // A full listing now and then, whatever the directory mtimes or the
        // events say.
        if self.rescan
            || now.saturating_duration_since(self.full_scan_at) >= self.settings.full_scan
        {
            self.rescan = false;
            self.dir_cache.clear();
            self.full_scan_at = now;
            // Files that failed with an I/O error get another attempt.
            self.io_failed.clear();
            // New directories among them are listed again all the same.
            for p in std::mem::take(&mut self.to_list) {
                self.fresh.push((p, now + FRESH_RELIST));
            }
            let root = self.root.clone();
            let mut found = Vec::new();
            self.walk(&root, 0, &mut found, !self.events);
            return self.settle_and_take(found, now);
        }
        let mut found = Vec::new();
        if self.events {
            self.look_at_events(now, &mut found);
        } else {
            let root = self.root.clone();
            self.walk(&root, 0, &mut found, true);
        }
        self.settle_and_take(found, now)
    }

    fn settle_and_take(&mut self, mut found: Vec<(PathBuf, fs::Metadata)>, now: Instant) -> usize {
        // Files still settling (or written to since the last pass) that the
        // listing did not cover.
        let listed: HashSet<PathBuf> = found.iter().map(|(p, _)| p.clone()).collect();
        let mut pending: Vec<PathBuf> = self
            .watching
            .keys()
            .chain(self.touched.keys())
            .filter(|p| !listed.contains(*p))
            .cloned()
            .collect();
        pending.sort();
        pending.dedup();
        for p in pending {
            if let Ok(md) = fs::symlink_metadata(&p) {
                if md.is_file() && (self.watching.contains_key(&p) || !self.too_old(&md)) {
                    found.push((p, md));
                }
            }
        }
        let mut present: HashMap<PathBuf, FileKey> = HashMap::new();
        for (p, md) in found {
            let key = file_key(&md);
            if self.seen.contains(&key) {
                continue;
            }
            present.insert(p, key);
        }
        self.watching.retain(|p, _| present.contains_key(p));
        for (p, key) in &present {
            // An event after the last look: unchanged since that event (the
            // writes before it are in what was just read).
            let event = self.touched.remove(p).map(|t| t.min(now));
            match self.watching.get_mut(p) {
                Some(w) => {
                    match event {
                        Some(t) if t >= w.checked => w.since = t,
                        _ if w.key != *key => w.since = now,
                        _ => {}
                    }
                    w.key = *key;
                    w.checked = now;
                }
                None => {
                    self.watching.insert(
                        p.clone(),
                        Watch {
                            key: *key,
                            since: event.unwrap_or(now),
                            checked: now,
                        },
                    );
                }
            }
        }
        // What the events said is in `watching` now.
        self.touched.clear();
        let watching = &self.watching;
        self.open.retain(|p| watching.contains_key(p));
        let files: Vec<PathBuf> = present.keys().cloned().collect();
        let io_failed = &self.io_failed;
        let settled: Vec<RecordingSet> = group_sets(&files)
            .into_iter()
            // Failed with an I/O error in this version: waits for the next
            // full listing (a changed file is a new version, tried anew).
            .filter(|set| {
                !set.files().iter().any(|f| {
                    present
                        .get(*f)
                        .is_some_and(|k| io_failed.get(*f) == Some(k))
                })
            })
            .filter(|set| {
                set.files().iter().all(|f| {
                    self.watching.get(*f).is_some_and(|w| {
                        now.saturating_duration_since(w.since) >= self.need(f.as_path())
                    })
                })
            })
            .collect();
        self.waiting_cdr
            .retain(|k, _| settled.iter().any(|s| s.key == *k));
        let rows = self.lookup_cdr(&settled, now);
        let mut written = 0;
        for (set, row) in settled.iter().zip(rows) {
            if self.take(set, row, &present, now) {
                written += 1;
            }
        }
        written
    }

    fn spool_db(&mut self) -> Option<&crate::spool::Spool> {
        // Moved aside and rebuilt by the delivery task (or removed): the
        // new one is where watches must go.
        if self.spool_db.as_ref().is_some_and(|db| db.is_detached()) {
            self.spool_db = None;
        }
        if self.spool_db.is_none() {
            match crate::spool::Spool::open(&self.spool) {
                Ok(db) => self.spool_db = Some(db),
                Err(e) => {
                    self.counters.scan_errors += 1;
                    self.error(format!("folder: after_delivery: {e}"));
                }
            }
        }
        self.spool_db.as_ref()
    }

    /// Asks the spool to tell when `id` is delivered (after_delivery).
    fn watch_delivery(&mut self, id: &str, set: &RecordingSet) {
        if self.settings.after_delivery == AfterDelivery::Leave {
            return;
        }
        let files: Vec<String> = set.files().iter().map(|f| encode_path(f)).collect();
        let note = serde_json::to_string(&files).unwrap_or_default();
        self.after_pending = true;
        let res = self.spool_db().map(|db| db.watch_delivery(id, &note));
        if let Some(Err(e)) = res {
            self.counters.scan_errors += 1;
            self.error(format!("folder: after_delivery: {e}"));
        }
    }

    /// Moves or deletes the PBX files of recordings the spool delivered.
    fn after_delivery_pass(&mut self) {
        if self.settings.after_delivery == AfterDelivery::Leave {
            return;
        }
        // Tried again later unless nothing is left to wait for.
        self.after_pending = true;
        let done = match self.spool_db().map(|db| db.delivered_watches()) {
            Some(Ok(v)) => v,
            Some(Err(e)) => {
                self.spool_db = None;
                self.counters.scan_errors += 1;
                self.error(format!("folder: after_delivery: {e}"));
                return;
            }
            None => return,
        };
        for (id, note) in done {
            let files: Vec<PathBuf> = serde_json::from_str::<Vec<String>>(&note)
                .unwrap_or_default()
                .iter()
                .map(|s| decode_path(s))
                .collect();
            let mut failed = None;
            for f in &files {
                if let Err(e) = self.after_one(f) {
                    failed = Some(format!("{}: {e}", f.display()));
                }
            }
            match failed {
                None => {
                    tracing::info!(target: "pbx_edge::folder", %id, action = ?self.settings.after_delivery, "PBX files handled after delivery");
                    self.after_failed.remove(&id);
                    if let Some(db) = self.spool_db.as_ref() {
                        let _ = db.unwatch_delivery(&id);
                    }
                }
                Some(e) => {
                    if self.after_failed.insert(id.clone()) {
                        self.counters.scan_errors += 1;
                        self.error(format!("folder: after_delivery of {id}: {e} (retried)"));
                    }
                }
            }
        }
        let waiting = self
            .spool_db
            .as_ref()
            .is_none_or(|db| db.watches_pending().unwrap_or(true));
        self.after_pending = waiting || !self.after_failed.is_empty();
    }

    fn after_one(&self, f: &Path) -> io::Result<()> {
        match fs::symlink_metadata(f) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Moved or deleted by someone else: nothing left to do, but
                // not silently (a path we could not name right would end
                // here too).
                tracing::warn!(target: "pbx_edge::folder", file = %f.display(), action = ?self.settings.after_delivery, "folder: after_delivery: the PBX file is not there any more");
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        match (self.settings.after_delivery, &self.settings.move_to) {
            (AfterDelivery::Delete, _) => fs::remove_file(f),
            (AfterDelivery::Move, Some(dir)) => {
                let rel = f
                    .strip_prefix(&self.root)
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|_| f.file_name().map(PathBuf::from).unwrap_or_default());
                let target = dir.join(rel);
                if let Some(parent) = target.parent() {
                    fs::create_dir_all(parent)?;
                }
                match fs::rename(f, &target) {
                    Ok(()) => Ok(()),
                    Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                        // Another file system: copy, sync, then remove.
                        fs::copy(f, &target)?;
                        File::open(&target)?.sync_all()?;
                        fs::remove_file(f)
                    }
                    Err(e) => Err(e),
                }
            }
            _ => Ok(()),
        }
    }

    /// The CDR rows of `sets`, one per set (`Lookup::Wait` while the store is
    /// down).
    fn lookup_cdr(&mut self, sets: &[RecordingSet], now: Instant) -> Vec<Lookup> {
        let Some(store) = self.cdr.as_mut() else {
            return sets.iter().map(|_| Lookup::NoStore).collect();
        };
        if sets.is_empty() {
            return Vec::new();
        }
        let queries: Vec<CdrQuery> = sets
            .iter()
            .map(|set| {
                let stem = set.stem();
                let name = parse_name(&stem, &self.settings.name_patterns);
                let mut files: Vec<String> = set
                    .files()
                    .iter()
                    .filter_map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .collect();
                for ext in ["wav", "WAV", "wav49", "gsm"] {
                    let n = format!("{stem}.{ext}");
                    if !files.contains(&n) {
                        files.push(n);
                    }
                }
                CdrQuery {
                    uniqueid: name.as_ref().map(|n| n.uniqueid.clone()).unwrap_or(stem),
                    files,
                    around: name.map(|n| self.settings.timezone.to_utc(n.started_at)),
                }
            })
            .collect();
        match store.find(&queries) {
            Ok(rows) => {
                if self.cdr_down.take().is_some() {
                    tracing::info!(target: "pbx_edge::folder", store = %store.describe(), "CDR store answers again");
                }
                rows.into_iter()
                    .map(|r| r.map_or(Lookup::NotYet, |r| Lookup::Found(Box::new(r))))
                    .collect()
            }
            Err(e) => {
                let msg = format!("folder: {e}; {} recording(s) wait for it", sets.len());
                if self.cdr_down.as_deref() != Some(msg.as_str()) {
                    self.counters.scan_errors += 1;
                    self.error(msg.clone());
                }
                self.cdr_down = Some(msg);
                // The wait for late rows starts again once the store answers.
                for s in sets {
                    self.waiting_cdr.insert(s.key.clone(), now);
                }
                sets.iter().map(|_| Lookup::Down).collect()
            }
        }
    }

    /// Converts one settled set (or leaves it waiting for its CDR row).
    fn take(
        &mut self,
        set: &RecordingSet,
        lookup: Lookup,
        present: &HashMap<PathBuf, FileKey>,
        now: Instant,
    ) -> bool {
        let row = match lookup {
            Lookup::Down => return false,
            Lookup::Found(r) => Some(*r),
            Lookup::NoStore => None,
            Lookup::NotYet => {
                let first = *self.waiting_cdr.entry(set.key.clone()).or_insert(now);
                if now.saturating_duration_since(first) < self.settings.cdr_wait {
                    return false;
                }
                None
            }
        };
        self.waiting_cdr.remove(&set.key);
        let mtime = set
            .files()
            .iter()
            .filter_map(|f| fs::metadata(f).ok())
            .map(|m| Timestamp::from_micros(m.mtime() * 1_000_000 + m.mtime_nsec() / 1000))
            .max()
            .unwrap_or(Timestamp::ZERO);
        let res = convert(
            set,
            row.as_ref(),
            &self.spool,
            &self.agent_id,
            &self.settings,
            mtime,
        );
        let ok = match res {
            Ok(c) => {
                tracing::info!(target: "pbx_edge::folder", id = %c.id, set = %set.key.display(), "folder recording taken");
                self.counters.written += 1;
                self.counters.bytes += c.bytes;
                self.watch_delivery(&c.id.clone(), set);
                self.written.push(c);
                if self.written.len() > 1000 {
                    self.written.remove(0);
                }
                true
            }
            Err(e @ FolderError::Write { .. }) => {
                // Our side (spool full, ...): not the PBX file's fault. Not
                // marked: tried again once it has settled again.
                self.counters.failed += 1;
                self.error(format!(
                    "folder: {} not taken, will retry: {e}",
                    set.key.display()
                ));
                for f in set.files() {
                    if let Some(w) = self.watching.get_mut(f.as_path()) {
                        w.since = now;
                    }
                }
                return false;
            }
            Err(e @ FolderError::Io { .. }) => {
                // Reading the PBX's file failed (permission denied, EIO, a
                // file replaced meanwhile): maybe not for good. Not marked
                // seen; tried once more at each full listing, counted and
                // logged once per attempt.
                self.counters.failed += 1;
                self.error(format!(
                    "folder: {} not taken, will retry at the next full listing: {e}",
                    set.key.display()
                ));
                for f in set.files() {
                    if let Some(k) = present.get(f) {
                        self.io_failed.insert(f.clone(), *k);
                    }
                }
                if self.io_failed.len() > 100_000 {
                    self.io_failed.clear();
                }
                return false;
            }
            Err(e) => {
                self.counters.failed += 1;
                self.error(format!("folder: {} not taken: {e}", set.key.display()));
                false
            }
        };
        // Taken or refused: either way not tried again (a broken file does not
        // become readable by waiting; a changed one has a new key).
        let marks: Vec<(FileKey, PathBuf)> = set
            .files()
            .into_iter()
            .filter_map(|f| present.get(f).map(|k| (*k, f.clone())))
            .collect();
        if let Err(e) = self.seen.add(&marks) {
            self.error(format!(
                "folder: cannot write {}: {e}",
                self.seen.path.display()
            ));
        }
        for f in set.files() {
            self.watching.remove(f);
            self.open.remove(f);
        }
        ok
    }
}

// ---------------------------------------------------------------- thread

/// What wakes the folder thread.
enum Wake {
    /// From notify's thread.
    Event(notify::Result<notify::Event>),
    /// The event queue was full: events were dropped.
    Lost,
    Stop,
}

/// Events queued between notify's thread and the folder thread; more are
/// dropped and make the next pass list everything (as an inotify overflow).
const EVENT_QUEUE: usize = 65_536;

/// A file's writes within this long of the last one forwarded are not
/// forwarded (MixMonitor writes every 20 ms; "closed" always is).
const WRITE_COALESCE: Duration = Duration::from_millis(500);

/// Passes notify's events to the folder thread, keeping only what the
/// folder source uses: opens and reads (its own among them) and events of
/// files that are not recordings are dropped, a run of writes to one file is
/// one event per [`WRITE_COALESCE`], and a full queue is one [`Wake::Lost`].
struct EventSink {
    tx: SyncSender<Wake>,
    lost: Arc<AtomicBool>,
    /// Files whose last forwarded event was a write, and when.
    writes: HashMap<PathBuf, Instant>,
}

impl EventSink {
    fn wanted(&mut self, ev: &notify::Event) -> bool {
        use notify::event::{
            AccessKind, AccessMode, CreateKind, ModifyKind, RemoveKind, RenameMode,
        };
        use notify::EventKind as K;
        if ev.need_rescan() {
            return true;
        }
        let audio = ev.paths.iter().any(|p| {
            p.file_name()
                .is_some_and(|n| is_audio_name(&n.to_string_lossy()))
        });
        match &ev.kind {
            K::Access(AccessKind::Close(AccessMode::Write)) => {
                for p in &ev.paths {
                    self.writes.remove(p);
                }
                audio
            }
            K::Access(_) => false,
            K::Modify(ModifyKind::Data(_)) => {
                let (Some(p), true) = (ev.paths.first(), audio) else {
                    return false;
                };
                let now = Instant::now();
                if self
                    .writes
                    .get(p)
                    .is_some_and(|t| now.saturating_duration_since(*t) < WRITE_COALESCE)
                {
                    return false;
                }
                if self.writes.len() >= 10_000 {
                    self.writes.clear();
                }
                self.writes.insert(p.clone(), now);
                true
            }
            K::Create(CreateKind::File) | K::Modify(ModifyKind::Metadata(_)) => {
                for p in &ev.paths {
                    self.writes.remove(p);
                }
                audio
            }
            K::Remove(RemoveKind::File) => {
                for p in &ev.paths {
                    self.writes.remove(p);
                }
                audio
            }
            K::Modify(ModifyKind::Name(RenameMode::Both)) => false,
            _ => true,
        }
    }
}

impl notify::EventHandler for EventSink {
    fn handle_event(&mut self, event: notify::Result<notify::Event>) {
        if let Ok(ev) = &event {
            if !self.wanted(ev) {
                return;
            }
        }
        if let Err(TrySendError::Full(_)) = self.tx.try_send(Wake::Event(event)) {
            // Flag first: the folder thread checks it after draining.
            self.lost.store(true, Ordering::SeqCst);
            let _ = self.tx.try_send(Wake::Lost);
        }
    }
}

/// What a notify error means for the watch, for people.
fn watch_error(e: &notify::Error) -> String {
    let sysctl = |name: &str| {
        fs::read_to_string(format!("/proc/sys/fs/inotify/{name}"))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|_| "?".into())
    };
    match &e.kind {
        notify::ErrorKind::MaxFilesWatch => format!(
            "the inotify watch limit is reached (fs.inotify.max_user_watches = {}, one watch per \
             directory); raise it (sysctl fs.inotify.max_user_watches=524288, and in \
             /etc/sysctl.d/) and restart pbx-edge",
            sysctl("max_user_watches")
        ),
        notify::ErrorKind::Io(io) if io.raw_os_error() == Some(libc::EMFILE) => format!(
            "no inotify instance left (fs.inotify.max_user_instances = {}); raise it and \
             restart pbx-edge",
            sysctl("max_user_instances")
        ),
        _ => format!("inotify: {e}"),
    }
}

/// The network file system `path` is on, if it is one: inotify sees only
/// the changes made through this host's kernel, not a PBX writing on another
/// host.
pub fn network_fs(path: &Path) -> Option<&'static str> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statfs fills the zeroed struct; `c` is a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    // f_type is a signed word whose width differs between targets; the
    // magic numbers are 32-bit.
    #[allow(clippy::unnecessary_cast)]
    let magic = st.f_type as u32;
    Some(match magic {
        0x6969 => "NFS",
        0xFF53_4D42 => "CIFS",
        0xFE53_4D42 => "SMB2",
        0x517B => "SMB",
        0x6573_5546 => "FUSE",
        0x0102_1997 => "9P",
        0x00C3_6400 => "Ceph",
        0x6B41_4653 => "AFS",
        0x5346_414F => "OpenAFS",
        0x4750_4653 => "GPFS",
        0x0BD0_0BD0 => "Lustre",
        0x564C => "NCP",
        0x7461_636F => "OCFS2",
        0x0116_1970 => "GFS2",
        _ => return None,
    })
}

/// How the folder thread learns of changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Inotify,
    Poll,
}

/// The folder thread: the scanner, the inotify watch, and the status it
/// publishes.
struct FolderLoop {
    scanner: FolderScanner,
    root: PathBuf,
    status: SharedStatus,
    live: Arc<Liveness>,
    watch: FolderWatch,
    poll: Duration,
    mode: Mode,
    watcher: Option<notify::INotifyWatcher>,
    /// `path` is gone: its parent, watched for it to come back (if it could be).
    root_gone: Option<Option<PathBuf>>,
    /// What `/status` and `/readyz` say of the watch.
    note: String,
    tx: SyncSender<Wake>,
    rx: Receiver<Wake>,
    lost: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

/// What handling one wake-up asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Next {
    Wait,
    Pass,
    Stop,
}

impl FolderLoop {
    fn new(
        scanner: FolderScanner,
        watch: FolderWatch,
        poll: Duration,
        status: SharedStatus,
        live: Arc<Liveness>,
        stop: Arc<AtomicBool>,
    ) -> Self {
        let (tx, rx) = sync_channel(EVENT_QUEUE);
        FolderLoop {
            root: scanner.root().to_path_buf(),
            scanner,
            status,
            live,
            watch,
            poll,
            mode: Mode::Poll,
            watcher: None,
            root_gone: None,
            note: String::new(),
            tx,
            rx,
            lost: Arc::new(AtomicBool::new(false)),
            stop,
        }
    }

    fn polling(&self) -> String {
        let p = self.poll;
        if p.subsec_millis() == 0 {
            format!("polling every {}s", p.as_secs())
        } else {
            format!("polling every {}ms", p.as_millis())
        }
    }

    /// Chooses inotify or polling, and adds the watch.
    fn start_watch(&mut self) {
        let fs_kind = network_fs(&self.root);
        match (self.watch, fs_kind) {
            (FolderWatch::Poll, _) => {
                self.note = format!("{} (watch = \"poll\")", self.polling());
                self.set_poll();
                tracing::info!(target: "pbx_edge::folder", path = %self.root.display(), "folder: {}", self.note);
            }
            (FolderWatch::Auto, Some(kind)) => {
                self.note = format!(
                    "{}: {} is on a network file system ({kind}), where changes made by other \
                     hosts raise no inotify event (watch = \"inotify\" to use inotify anyway)",
                    self.polling(),
                    self.root.display()
                );
                self.set_poll();
                tracing::info!(target: "pbx_edge::folder", "folder: {}", self.note);
            }
            _ => match self.add_watch() {
                Ok(()) => {
                    self.mode = Mode::Inotify;
                    self.note = "inotify".into();
                    self.scanner.set_event_driven(true);
                    tracing::info!(target: "pbx_edge::folder", path = %self.root.display(), "folder: watching with inotify");
                }
                Err(e) if matches!(e.kind, notify::ErrorKind::PathNotFound) => {
                    // Gone since start() looked: watched for when it is back.
                    self.mode = Mode::Inotify;
                    self.note = "inotify".into();
                    self.scanner.set_event_driven(true);
                    self.on_root_gone();
                }
                Err(e) => self.fall_back(&watch_error(&e)),
            },
        }
    }

    fn set_poll(&mut self) {
        self.mode = Mode::Poll;
        self.watcher = None;
        self.root_gone = None;
        if self.scanner.event_driven() {
            self.scanner.set_event_driven(false);
        }
    }

    /// A recursive watch on `path` (a new inotify instance if there is none).
    fn add_watch(&mut self) -> notify::Result<()> {
        use notify::Watcher;
        if self.watcher.is_none() {
            let sink = EventSink {
                tx: self.tx.clone(),
                lost: self.lost.clone(),
                writes: HashMap::new(),
            };
            let cfg = notify::Config::default().with_follow_symlinks(false);
            self.watcher = Some(notify::INotifyWatcher::new(sink, cfg)?);
        }
        let w = self.watcher.as_mut().expect("watcher just set");
        w.watch(&self.root, notify::RecursiveMode::Recursive)
    }

    /// inotify cannot be used (any more): polling from now on.
    fn fall_back(&mut self, why: &str) {
        self.note = format!("{} instead of inotify: {why}", self.polling());
        tracing::warn!(target: "pbx_edge::folder", path = %self.root.display(), "folder: {}", self.note);
        self.set_poll();
    }

    /// `path` was deleted or moved away: its parent is watched for it.
    fn on_root_gone(&mut self) {
        use notify::Watcher;
        let Some(w) = self.watcher.as_mut() else {
            return;
        };
        let _ = w.unwatch(&self.root);
        let parent = self
            .root
            .parent()
            .filter(|p| p.is_dir())
            .map(Path::to_path_buf)
            .filter(|p| w.watch(p, notify::RecursiveMode::NonRecursive).is_ok());
        tracing::warn!(target: "pbx_edge::folder", path = %self.root.display(), "folder path is gone: waiting for it");
        self.root_gone = Some(parent);
    }

    /// `path` is there again: watched and listed again.
    fn on_root_back(&mut self) {
        use notify::Watcher;
        let Some(parent) = self.root_gone.take() else {
            return;
        };
        if let (Some(p), Some(w)) = (parent, self.watcher.as_mut()) {
            let _ = w.unwatch(&p);
        }
        match self.add_watch() {
            Ok(()) => self.scanner.request_rescan(),
            Err(e) if matches!(e.kind, notify::ErrorKind::PathNotFound) => self.on_root_gone(),
            Err(e) => self.fall_back(&watch_error(&e)),
        }
    }

    fn publish(&self) {
        let s = &self.scanner;
        if let Ok(mut st) = self.status.lock() {
            let src = st.sources.entry("folder".to_string()).or_default();
            // A CDR store that cannot answer holds recordings back, a
            // missing folder gives none: not ready.
            src.up = s.cdr_down().is_none() && s.root_missing().is_none();
            src.error = s
                .root_missing()
                .or(s.cdr_down())
                .map(str::to_string)
                .or_else(|| s.errors.back().cloned());
            src.listen = self.root.display().to_string();
            src.watch = Some(self.note.clone());
            src.errors = s.counters.failed + s.counters.scan_errors;
            src.recordings_written = s.counters.written;
            src.recordings_failed = s.counters.failed;
            src.bytes_written = s.counters.bytes;
        }
    }

    /// One wake-up's message.
    fn handle(&mut self, msg: Wake, now: Instant) -> Next {
        match msg {
            Wake::Stop => Next::Stop,
            Wake::Lost => {
                if self.mode == Mode::Inotify {
                    self.scanner.lost_events(now);
                }
                Next::Pass
            }
            Wake::Event(_) if self.mode != Mode::Inotify => Next::Wait,
            Wake::Event(Err(e)) => {
                if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) {
                    // A new directory could not be watched.
                    self.fall_back(&watch_error(&e));
                } else {
                    tracing::warn!(target: "pbx_edge::folder", "folder: {}; listing the folder again", watch_error(&e));
                    self.scanner.lost_events(now);
                }
                Next::Pass
            }
            Wake::Event(Ok(ev)) => match self.scanner.note_event(&ev, now) {
                EventEffect::Noted => Next::Wait,
                EventEffect::PassNow => Next::Pass,
                EventEffect::RootGone => {
                    if self.root_gone.is_none() {
                        self.on_root_gone();
                    }
                    Next::Pass
                }
                EventEffect::RootBack => {
                    self.on_root_back();
                    Next::Pass
                }
            },
        }
    }

    /// When the next pass is due.
    fn due(&self, now: Instant) -> Instant {
        let mut due = match self.mode {
            Mode::Inotify => self.scanner.next_pass(now),
            Mode::Poll => now + self.poll,
        };
        // Gone with its parent: nothing to watch, look for it.
        if let Some(None) = self.root_gone {
            due = due.min(now + self.poll);
        }
        due
    }

    /// Blocks until the next pass is due or events ask for one; `false`:
    /// stop.
    fn wait(&mut self) -> bool {
        // Gone without an event saying so (unmounted, say): watched for.
        if self.mode == Mode::Inotify
            && self.root_gone.is_none()
            && self.scanner.root_missing().is_some()
        {
            self.on_root_gone();
        }
        if self.root_gone.is_some() && self.root.is_dir() {
            self.on_root_back();
            return true;
        }
        let mut due = self.due(Instant::now());
        // Blocked for work, not stalled.
        self.live.waiting("folder");
        loop {
            let now = Instant::now();
            let left = due.saturating_duration_since(now);
            if left.is_zero() {
                return true;
            }
            let msg = match self.rx.recv_timeout(left) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => return true,
                Err(RecvTimeoutError::Disconnected) => return false,
            };
            let now = Instant::now();
            let mut next = self.handle(msg, now);
            // What else is queued, bounded: a pass still runs when due.
            for _ in 0..EVENT_QUEUE {
                let Ok(m) = self.rx.try_recv() else { break };
                next = next.max(self.handle(m, now));
            }
            if self.lost.swap(false, Ordering::SeqCst) && self.mode == Mode::Inotify {
                self.scanner.lost_events(now);
                next = next.max(Next::Pass);
            }
            if next == Next::Stop || self.stop.load(Ordering::SeqCst) {
                return false;
            }
            if next == Next::Pass {
                return true;
            }
            due = self.due(now);
        }
    }

    fn run(mut self) {
        self.start_watch();
        while !self.stop.load(Ordering::SeqCst) {
            self.live.beat("folder");
            self.scanner.scan(Instant::now());
            self.publish();
            self.live.beat("folder");
            if !self.wait() {
                break;
            }
        }
        self.live.forget("folder");
    }
}

/// The running folder source.
#[derive(Debug)]
pub struct FolderHandle {
    stop: Arc<AtomicBool>,
    wake: SyncSender<Wake>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Wake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Wake::Event(_) => "Event",
            Wake::Lost => "Lost",
            Wake::Stop => "Stop",
        })
    }
}

impl FolderHandle {
    /// Stops the scanner thread and waits for it (at most the conversion in
    /// progress).
    pub fn stop(mut self) {
        self.signal();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    fn signal(&self) {
        self.stop.store(true, Ordering::SeqCst);
        // A full queue wakes the thread anyway; it then sees `stop`.
        let _ = self.wake.try_send(Wake::Stop);
    }
}

impl Drop for FolderHandle {
    fn drop(&mut self) {
        self.signal();
    }
}

/// Starts the folder source (`[sources.folder]`) in its own thread, writing
/// into `cfg.spool.dir`; beats `"folder"` on `live` each pass.
pub fn start(cfg: &Config, status: SharedStatus, live: Arc<Liveness>) -> io::Result<FolderHandle> {
    let settings = FolderSettings::from_config(&cfg.sources.folder)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    start_with(cfg, settings, status, live)
}

/// [`start`] with explicit [`FolderSettings`].
pub fn start_with(
    cfg: &Config,
    settings: FolderSettings,
    status: SharedStatus,
    live: Arc<Liveness>,
) -> io::Result<FolderHandle> {
    let f = &cfg.sources.folder;
    // A `path` not there (yet: mounted later, made by the PBX on its first
    // recording) is no reason to give up: the source starts not ready,
    // saying why, and takes files once the directory appears.
    if !f.path.is_dir() {
        tracing::warn!(target: "pbx_edge::folder", path = %f.path.display(), "folder: sources.folder.path is not a directory (yet): waiting for it");
    }
    let poll = settings.poll.max(Duration::from_millis(50));
    let watch = settings.watch;
    let db = db_store(f, settings.timezone)?;
    let mut scanner = FolderScanner::new(
        &f.path,
        &cfg.spool.dir,
        &cfg.agent.id,
        f.cdr_csv.as_deref(),
        f.settle,
        settings,
    )?;
    if let Some(db) = db {
        scanner.set_cdr_store(db);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let run = FolderLoop::new(scanner, watch, poll, status, live, stop.clone());
    let wake = run.tx.clone();
    let thread = std::thread::Builder::new()
        .name("folder".into())
        .spawn(move || run.run())?;
    Ok(FolderHandle {
        stop,
        wake,
        thread: Some(thread),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freepbx_name() {
        let n = parse_freepbx_name("out-5551234-1001-20261124-101502-1700000000.123").unwrap();
        assert_eq!(n.kind, "out");
        assert_eq!(n.dst, "5551234");
        assert_eq!(n.src, "1001");
        assert_eq!(n.uniqueid, "1700000000.123");
        assert_eq!(n.started_at.to_rfc3339(), "2026-11-24T10:15:02.000Z");
        assert!(parse_freepbx_name("foo").is_none());
        assert!(parse_freepbx_name("in-1-2-2026x124-101502-1.2").is_none());
        assert!(parse_freepbx_name("in-1-2-20261324-101502-1.2").is_none());
        // Years beyond 9999 are not dates (found by fuzzing: an overflow).
        assert!(parse_cdr_datetime("999799999999997-11-24 10:15:02").is_none());
        assert!(parse_cdr_datetime("9999-12-31 23:59:59").is_some());
        let epoch = NamePattern::new(r"^(?P<epoch>\d+)-(?P<uniqueid>.+)$").unwrap();
        assert!(epoch.parse("253402300800-x").is_none());
        assert!(epoch.parse("1700000000-x").is_some());
    }

    #[test]
    fn grouping() {
        let files: Vec<PathBuf> = [
            "/r/x-in.wav",
            "/r/x-out.wav",
            "/r/y.wav",
            "/r/z.WAV",
            "/r/notes.txt",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        let sets = group_sets(&files);
        assert_eq!(sets.len(), 3);
        assert_eq!(sets[0].rx.as_deref(), Some(Path::new("/r/x-in.wav")));
        assert_eq!(sets[0].tx.as_deref(), Some(Path::new("/r/x-out.wav")));
        assert_eq!(sets[1].whole.as_deref(), Some(Path::new("/r/y.wav")));
    }

    #[test]
    fn leg_suffixes_and_what_is_not_one() {
        let base = "out-5551234-1001-20261124-101502-1700000000.123";
        for (rx, tx) in [
            ("-in", "-out"),
            ("-rx", "-tx"),
            ("_in", "_out"),
            ("_rx", "_tx"),
            ("-r", "-t"),
            ("_r", "_t"),
            (".in", ".out"),
            ("-IN", "-OUT"),
            ("_Rx", "_TX"),
        ] {
            for ext in ["wav", "WAV", "sln16", "gsm"] {
                assert_eq!(
                    split_name(&format!("{base}{rx}.{ext}")),
                    Some((base.to_string(), Some("in"))),
                    "{rx}.{ext}"
                );
                assert_eq!(
                    split_name(&format!("{base}{tx}.{ext}")),
                    Some((base.to_string(), Some("out"))),
                    "{tx}.{ext}"
                );
            }
        }
        // The FreePBX name of the base parses as without a suffix.
        let n = parse_freepbx_name(&split_name(&format!("{base}_rx.wav")).unwrap().0).unwrap();
        assert_eq!(n.uniqueid, "1700000000.123");
        assert_eq!((n.src.as_str(), n.dst.as_str()), ("1001", "5551234"));
        // Not legs: a uniqueid ending in `.12`, other endings, a bare suffix.
        for whole in [
            "in-1-2-20261124-101502-1700000000.12.wav",
            "in-1-2-20261124-101502-1700000000.1.wav",
            "1700000000.12.sln",
            "call-internal.wav",
            "x-ri.wav",
            "x.int.wav",
        ] {
            let (stem, leg) = split_name(whole).unwrap();
            assert_eq!(leg, None, "{whole}");
            assert_eq!(format!("{stem}."), whole[..=stem.len()], "{whole}");
        }
        assert_eq!(split_name("-in.wav"), Some(("-in".to_string(), None)));
        assert_eq!(split_name("x-in.txt"), None);
    }

    #[test]
    fn paths_in_delivery_watches_are_lossless_and_old_ones_readable() {
        use std::os::unix::ffi::OsStrExt;
        let odd = PathBuf::from(std::ffi::OsStr::from_bytes(b"/m/2026/a \xff\xfe-in.wav"));
        let e = encode_path(&odd);
        assert_eq!(e, format!("hex:{}", hex_of(odd.as_os_str().as_bytes())));
        assert_eq!(decode_path(&e), odd);
        // UTF-8 paths (and what was stored before): as they are.
        for p in ["/m/2026/11/24/x-in.wav", "/m/ünï cødé/x.wav"] {
            assert_eq!(encode_path(Path::new(p)), p);
            assert_eq!(decode_path(p), PathBuf::from(p));
        }
        // An old lossy entry stays a path (that is not there: warned of).
        assert_eq!(
            decode_path("/m/a \u{fffd}-in.wav"),
            PathBuf::from("/m/a \u{fffd}-in.wav")
        );
        assert_eq!(decode_path("hex:zz"), PathBuf::from("hex:zz"));
    }

    fn hex_of(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn extensions() {
        for yes in [
            "a.wav", "a.WAV16", "a.wav49", "a.sln", "a.sln16", "a.SLN48", "a.sln192", "a.raw",
            "a.gsm",
        ] {
            assert!(is_audio_name(yes), "{yes}");
        }
        for no in ["a.txt", "a.sln17", "a.sln8", "wav", "a.wav.part", "a.mp3"] {
            assert!(!is_audio_name(no), "{no}");
        }
    }

    #[test]
    fn resample_keeps_length() {
        let x: Vec<i16> = (0..8000)
            .map(|i| ((i as f64 * 0.3).sin() * 8000.0) as i16)
            .collect();
        let y = resample(x.clone(), 8000, 16000, Path::new("t")).unwrap();
        assert_eq!(y.len(), 16000);
        let z = resample(y, 16000, 8000, Path::new("t")).unwrap();
        assert_eq!(z.len(), 8000);
    }

    #[test]
    fn freeswitch_and_3cx_patterns() {
        let fs_re = NamePattern::new(r"^(?P<date>\d{4}-\d{2}-\d{2})-(?P<time>\d{2}-\d{2}-\d{2})_(?P<dst>[^_]*)_(?P<src>[^_]*)_(?P<uniqueid>[0-9a-f-]{36})$").unwrap();
        let cx = NamePattern::new(r"^\[(?P<src_name>[^\]]*)\]_(?P<src>[^_-]*)-(?P<dst>[^_]*)_(?P<datetime>\d{14})\((?P<uniqueid>[^)]+)\)$").unwrap();
        let pats = vec![fs_re, cx];
        let n = parse_name(
            "2026-11-24-10-15-02_5551234_1001_0b8e9a36-1c1f-4e5e-9d0a-3f2b1c4d5e6f",
            &pats,
        )
        .unwrap();
        assert_eq!(n.uniqueid, "0b8e9a36-1c1f-4e5e-9d0a-3f2b1c4d5e6f");
        assert_eq!((n.src.as_str(), n.dst.as_str()), ("1001", "5551234"));
        assert_eq!(n.started_at.to_rfc3339(), "2026-11-24T10:15:02.000Z");
        let n = parse_name("[Alice Smith]_1001-5551234_20261124101502(77)", &pats).unwrap();
        assert_eq!(n.src_name.as_deref(), Some("Alice Smith"));
        assert_eq!(n.uniqueid, "77");
        assert_eq!(n.started_at.to_rfc3339(), "2026-11-24T10:15:02.000Z");
        // FreePBX still recognised after the patterns.
        let n = parse_name("in-1-2-20261124-101502-9.9", &pats).unwrap();
        assert_eq!(n.uniqueid, "9.9");
        assert!(parse_name("nothing", &pats).is_none());
    }

    proptest::proptest! {
        #[test]
        fn parsers_never_panic(s in ".{0,200}") {
            let _ = parse_freepbx_name(&s);
            let _ = parse_cdr_line(&s, 0);
            let _ = parse_cdr_datetime(&s);
            let _ = split_name(&s);
        }
    }
}

/// The event-driven side: events fed by hand (exact times), a real inotify
/// overflow, the watch-limit fallback, the event sink's filter.
#[cfg(test)]
mod event_tests {
    use super::*;
    use notify::event::{
        AccessKind, AccessMode, CreateKind, DataChange, ModifyKind, RemoveKind, RenameMode,
    };
    use notify::{Event, EventKind};

    const SETTLE: Duration = Duration::from_secs(5);

    fn settings() -> FolderSettings {
        FolderSettings {
            full_scan: Duration::from_secs(3600),
            open_settle: Duration::from_secs(600),
            ..FolderSettings::default()
        }
    }

    fn events_scanner(root: &Path, spool: &Path) -> FolderScanner {
        fs::create_dir_all(root).unwrap();
        let mut s = FolderScanner::new(root, spool, "t", None, SETTLE, settings()).unwrap();
        s.set_event_driven(true);
        s
    }

    /// An event-driven scanner on `<tmp>/m` (spool `<tmp>/s`) after its
    /// start-up listing at the returned instant.
    fn started_events_scanner() -> (tempfile::TempDir, PathBuf, FolderScanner, Instant) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("m");
        let mut s = events_scanner(&root, &tmp.path().join("s"));
        let t0 = Instant::now();
        s.scan(t0);
        (tmp, root, s, t0)
    }

    /// The PBX writes `p` (`ms` of audio) and closes it: both events at `at`.
    fn written_and_closed(s: &mut FolderScanner, p: &Path, ms: u32, at: Instant) {
        sln(p, ms);
        s.note_event(&ev(CREATED, p), at);
        s.note_event(&ev(CLOSED, p), at);
    }

    fn ev(kind: EventKind, p: &Path) -> Event {
        Event::new(kind).add_path(p.to_path_buf())
    }

    fn sln(p: &Path, ms: u32) {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        let b: Vec<u8> = pbx_testgen::audio::speechlike(1, ms, 8000)
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect();
        fs::write(p, b).unwrap();
    }

    const CREATED: EventKind = EventKind::Create(CreateKind::File);
    const WRITTEN: EventKind = EventKind::Modify(ModifyKind::Data(DataChange::Any));
    const CLOSED: EventKind = EventKind::Access(AccessKind::Close(AccessMode::Write));

    #[test]
    fn closed_after_write_then_quiet_for_settle_and_not_before() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("m");
        let mut s = events_scanner(&root, &tmp.path().join("s"));
        let t0 = Instant::now();
        assert_eq!(s.scan(t0), 0, "the start-up listing: nothing there");
        // Idle: nothing due before the safety listing.
        assert_eq!(s.next_pass(t0), t0 + Duration::from_secs(3600));

        let p = root.join("1700000200.1.sln");
        sln(&p, 200);
        assert_eq!(s.note_event(&ev(CREATED, &p), t0), EventEffect::Noted);
        assert_eq!(
            s.note_event(&ev(WRITTEN, &p), t0 + Duration::from_secs(1)),
            EventEffect::Noted
        );
        // Open: due only after open_settle.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(s.next_pass(t1), t1 + Duration::from_secs(600));
        assert_eq!(
            s.scan(t0 + SETTLE * 2),
            0,
            "quiet for settle but not closed"
        );
        // Our own reads (open, close without write) change nothing.
        let read = EventKind::Access(AccessKind::Close(AccessMode::Read));
        assert_eq!(
            s.note_event(&ev(read, &p), t0 + SETTLE * 2),
            EventEffect::Noted
        );
        // Closed: due `settle` after the close.
        let tc = t0 + SETTLE * 2 + Duration::from_secs(1);
        assert_eq!(s.note_event(&ev(CLOSED, &p), tc), EventEffect::Noted);
        assert_eq!(s.next_pass(tc), tc + SETTLE);
        assert_eq!(s.scan(tc + SETTLE - Duration::from_millis(1)), 0);
        assert_eq!(s.scan(tc + SETTLE), 1, "{:?}", s.errors);
        assert_eq!(s.written[0].duration_ms, 200);
        // Taken once: a late close event does not bring it back.
        assert_eq!(
            s.note_event(&ev(CLOSED, &p), tc + SETTLE * 2),
            EventEffect::Noted
        );
        assert_eq!(s.scan(tc + SETTLE * 4), 0);
        assert_eq!(s.next_pass(tc + SETTLE * 4), t0 + Duration::from_secs(3600));
    }

    #[test]
    fn reopened_after_close_waits_again() {
        let (_tmp, root, mut s, t0) = started_events_scanner();
        let p = root.join("1700000201.1.sln");
        written_and_closed(&mut s, &p, 100, t0);
        // MixMonitor opens it again and writes: open again.
        let t1 = t0 + Duration::from_secs(3);
        sln(&p, 300);
        s.note_event(&ev(WRITTEN, &p), t1);
        assert_eq!(s.scan(t0 + SETTLE * 3), 0, "written after the close: open");
        s.note_event(&ev(CLOSED, &p), t0 + SETTLE * 3);
        assert_eq!(s.scan(t0 + SETTLE * 4), 1, "{:?}", s.errors);
        assert_eq!(s.written[0].duration_ms, 300);
    }

    #[test]
    fn new_directory_listed_at_once_and_again_later() {
        let (tmp, root, mut s, t0) = started_events_scanner();
        // mkdir -p 2026/11/24 and a file in it before its watch existed:
        // only the event of the top directory arrives.
        let d = root.join("2026/11/24");
        sln(&d.join("1700000210.1.sln"), 100);
        let top = root.join("2026");
        let dir_ev = ev(EventKind::Create(CreateKind::Folder), &top);
        assert_eq!(s.note_event(&dir_ev, t0), EventEffect::PassNow);
        assert_eq!(s.next_pass(t0), t0, "listed at once");
        assert_eq!(s.scan(t0), 0);
        // Listed again FRESH_RELIST later: catches a file made meanwhile.
        assert_eq!(s.next_pass(t0), t0 + FRESH_RELIST);
        sln(&d.join("1700000211.1.sln"), 100);
        assert_eq!(s.scan(t0 + FRESH_RELIST), 0);
        assert_eq!(s.next_pass(t0 + FRESH_RELIST), t0 + SETTLE);
        assert_eq!(s.scan(t0 + SETTLE), 1, "the first one");
        assert_eq!(s.scan(t0 + FRESH_RELIST + SETTLE), 1, "the one found later");
        // A file moved in (rename): looked at, settles from then.
        let outside = tmp.path().join("elsewhere.sln");
        sln(&outside, 100);
        let moved = d.join("1700000212.1.sln");
        fs::rename(&outside, &moved).unwrap();
        let t1 = t0 + SETTLE * 3;
        let to = EventKind::Modify(ModifyKind::Name(RenameMode::To));
        assert_eq!(s.note_event(&ev(to, &moved), t1), EventEffect::PassNow);
        assert_eq!(s.scan(t1), 0);
        assert_eq!(s.scan(t1 + SETTLE), 1);
        assert_eq!(s.counters.written, 3);
    }

    #[test]
    fn deleted_directory_is_forgotten_and_root_events_are_reported() {
        let (tmp, root, mut s, t0) = started_events_scanner();
        let d = root.join("2026/11/24");
        let p = d.join("1700000220.1.sln");
        written_and_closed(&mut s, &p, 100, t0);
        assert_eq!(s.scan(t0 + Duration::from_secs(1)), 0);
        assert_eq!(s.next_pass(t0 + Duration::from_secs(1)), t0 + SETTLE);
        fs::remove_dir_all(root.join("2026")).unwrap();
        let rm = EventKind::Remove(RemoveKind::Folder);
        assert_eq!(
            s.note_event(&ev(rm, &root.join("2026")), t0 + Duration::from_secs(2)),
            EventEffect::Noted
        );
        assert_eq!(
            s.next_pass(t0 + Duration::from_secs(2)),
            t0 + Duration::from_secs(3600),
            "nothing left to wait for"
        );
        // The watched folder itself.
        let root_abs = s.root().to_path_buf();
        assert_eq!(s.note_event(&ev(rm, &root_abs), t0), EventEffect::RootGone);
        let from = EventKind::Modify(ModifyKind::Name(RenameMode::From));
        assert_eq!(
            s.note_event(&ev(from, &root_abs), t0),
            EventEffect::RootGone
        );
        let mk = EventKind::Create(CreateKind::Folder);
        assert_eq!(s.note_event(&ev(mk, &root_abs), t0), EventEffect::RootBack);
        // The parent's other entries are none of our business.
        let sibling = tmp.path().join("other.wav");
        assert_eq!(s.note_event(&ev(CREATED, &sibling), t0), EventEffect::Noted);
        assert_eq!(
            s.next_pass(t0 + Duration::from_secs(3)),
            t0 + Duration::from_secs(3600)
        );
        // Gone for real: reported, then listed again once back.
        fs::remove_dir_all(&root).unwrap();
        assert_eq!(s.scan(t0 + Duration::from_secs(3)), 0);
        assert!(s.root_missing().unwrap().contains("waiting for it"));
        sln(&root.join("1700000221.1.sln"), 100);
        assert_eq!(s.scan(t0 + Duration::from_secs(4)), 0);
        assert!(s.root_missing().is_none());
        assert_eq!(s.scan(t0 + Duration::from_secs(4) + SETTLE), 1);
    }

    #[test]
    fn a_lost_event_lists_everything_and_restarts_settling() {
        let (_tmp, root, mut s, t0) = started_events_scanner();
        let a = root.join("1700000230.1.sln");
        written_and_closed(&mut s, &a, 100, t0);
        assert_eq!(s.scan(t0 + Duration::from_secs(1)), 0);
        // A file whose events were lost, then the overflow notice.
        let b = root.join("2026/1700000231.1.sln");
        sln(&b, 100);
        let overflow = Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan);
        let t1 = t0 + Duration::from_secs(4);
        assert_eq!(s.note_event(&overflow, t1), EventEffect::PassNow);
        assert_eq!(s.next_pass(t1), t1);
        assert_eq!(s.scan(t1), 0);
        // `a` settles again from the overflow on; `b` was found.
        assert_eq!(s.scan(t0 + SETTLE), 0, "settle restarted at the overflow");
        assert_eq!(s.scan(t1 + SETTLE), 2, "{:?}", s.errors);
    }

    #[test]
    fn a_real_inotify_overflow_is_reported_and_rescanned() {
        use notify::Watcher;
        let max: usize = fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(usize::MAX);
        if max > 65_536 {
            eprintln!("fs.inotify.max_queued_events = {max}: overflow test skipped");
            return;
        }
        let (_tmp, root, mut s, t0) = started_events_scanner();
        // The handler stops at a gate: the kernel queue fills up.
        let gate = Arc::new(std::sync::Mutex::new(()));
        let got = Arc::new(std::sync::Mutex::new(Vec::<Event>::new()));
        let held = gate.lock().unwrap();
        let (g, v) = (gate.clone(), got.clone());
        let mut w = notify::INotifyWatcher::new(
            move |e: notify::Result<Event>| {
                let _open = g.lock().unwrap();
                if let Ok(e) = e {
                    v.lock().unwrap().push(e);
                }
            },
            notify::Config::default(),
        )
        .unwrap();
        // Made before the watch: notify watches a new directory only after
        // its handler has seen the directory's event.
        let junk = root.join("junk");
        fs::create_dir(&junk).unwrap();
        w.watch(s.root(), notify::RecursiveMode::Recursive).unwrap();
        for i in 0..max {
            fs::write(junk.join(format!("{i}.txt")), b"x").unwrap();
        }
        // Its events cannot be queued any more.
        let lost = root.join("1700000240.1.sln");
        sln(&lost, 100);
        drop(held);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !got.lock().unwrap().iter().any(Event::need_rescan) {
            assert!(Instant::now() < deadline, "no overflow reported");
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(w);
        let events = std::mem::take(&mut *got.lock().unwrap());
        let t1 = t0 + Duration::from_secs(1);
        let mut effect = EventEffect::Noted;
        for e in &events {
            effect = effect.max(s.note_event(e, t1));
        }
        assert_eq!(effect, EventEffect::PassNow);
        assert_eq!(s.scan(t1), 0);
        assert_eq!(s.scan(t1 + SETTLE), 1, "{:?}", s.errors);
        assert_eq!(
            json_of(&s.written[0].json)["call_id"],
            "1700000240.1",
            "the file whose events were lost"
        );
    }

    fn json_of(p: &Path) -> Value {
        serde_json::from_slice(&fs::read(p).unwrap()).unwrap()
    }

    fn sink(cap: usize) -> (EventSink, Receiver<Wake>, Arc<AtomicBool>) {
        let (tx, rx) = sync_channel(cap);
        let lost = Arc::new(AtomicBool::new(false));
        let s = EventSink {
            tx,
            lost: lost.clone(),
            writes: HashMap::new(),
        };
        (s, rx, lost)
    }

    #[test]
    fn the_sink_keeps_what_the_scanner_uses() {
        let (mut k, _rx, _) = sink(16);
        let wav = Path::new("/r/a.wav");
        let txt = Path::new("/r/Master.csv");
        let open = EventKind::Access(AccessKind::Open(AccessMode::Any));
        let read = EventKind::Access(AccessKind::Close(AccessMode::Read));
        assert!(
            !k.wanted(&ev(open, wav)),
            "opens (our own reads among them)"
        );
        assert!(!k.wanted(&ev(read, wav)));
        assert!(!k.wanted(&ev(CREATED, txt)), "not a recording");
        assert!(!k.wanted(&ev(WRITTEN, txt)));
        assert!(k.wanted(&ev(CREATED, wav)));
        assert!(k.wanted(&ev(WRITTEN, wav)));
        assert!(!k.wanted(&ev(WRITTEN, wav)), "a run of writes: one event");
        assert!(k.wanted(&ev(CLOSED, wav)), "closed: always");
        assert!(
            k.wanted(&ev(WRITTEN, wav)),
            "written after the close: forwarded"
        );
        assert!(k.wanted(&ev(
            EventKind::Create(CreateKind::Folder),
            Path::new("/r/2026")
        )));
        let to = EventKind::Modify(ModifyKind::Name(RenameMode::To));
        assert!(
            k.wanted(&ev(to, Path::new("/r/2027"))),
            "moved in: file or directory"
        );
        let both = EventKind::Modify(ModifyKind::Name(RenameMode::Both));
        assert!(!k.wanted(&ev(both, wav)), "From and To say it");
        assert!(k.wanted(&ev(
            EventKind::Remove(RemoveKind::Folder),
            Path::new("/r/2026")
        )));
        let overflow = Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan);
        assert!(k.wanted(&overflow));
    }

    #[test]
    fn a_full_queue_is_one_lost_signal() {
        use notify::EventHandler;
        let (mut k, rx, lost) = sink(1);
        let dir = EventKind::Create(CreateKind::Folder);
        k.handle_event(Ok(ev(dir, Path::new("/r/a"))));
        k.handle_event(Ok(ev(dir, Path::new("/r/b"))));
        assert!(lost.load(Ordering::SeqCst));
        assert!(matches!(rx.try_recv(), Ok(Wake::Event(Ok(_)))));
        assert!(rx.try_recv().is_err(), "nothing more fitted");
    }

    #[test]
    fn watch_limit_falls_back_to_polling_with_a_warning() {
        use std::sync::Mutex;
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("m");
        fs::create_dir_all(&root).unwrap();
        let settle = Duration::from_millis(100);
        let scanner =
            FolderScanner::new(&root, &tmp.path().join("s"), "t", None, settle, settings())
                .unwrap();
        let status: SharedStatus = Arc::new(Mutex::new(crate::status::Status::default()));
        let mut lp = FolderLoop::new(
            scanner,
            FolderWatch::Inotify,
            Duration::from_secs(1),
            status.clone(),
            Liveness::new(),
            Arc::new(AtomicBool::new(false)),
        );
        lp.start_watch();
        assert_eq!(lp.mode, Mode::Inotify);
        assert!(lp.scanner.event_driven());
        lp.publish();
        assert_eq!(
            status.lock().unwrap().sources["folder"].watch.as_deref(),
            Some("inotify")
        );
        // A new directory could not be watched: ENOSPC from inotify_add_watch.
        let err = notify::Error::new(notify::ErrorKind::MaxFilesWatch);
        assert_eq!(lp.handle(Wake::Event(Err(err)), Instant::now()), Next::Pass);
        assert_eq!(lp.mode, Mode::Poll);
        assert!(lp.watcher.is_none(), "the inotify instance is closed");
        assert!(!lp.scanner.event_driven());
        lp.publish();
        {
            let st = status.lock().unwrap();
            let f = &st.sources["folder"];
            assert!(f.up, "not a failure of the source");
            let w = f.watch.as_deref().unwrap();
            assert!(w.starts_with("polling every 1s instead of inotify"), "{w}");
            assert!(w.contains("fs.inotify.max_user_watches"), "{w}");
            let (_, parts) = crate::status::readiness(&st);
            assert_eq!(parts["source.folder"], "ok");
            assert_eq!(parts["source.folder.watch"], w);
        }
        // Later events of the closed watch are ignored; polling finds files.
        let p = root.join("2026/1700000250.1.sln");
        sln(&p, 100);
        let stale = ev(CREATED, &lp.scanner.root().join("2026/1700000250.1.sln"));
        assert_eq!(
            lp.handle(Wake::Event(Ok(stale)), Instant::now()),
            Next::Wait
        );
        let t0 = Instant::now();
        assert_eq!(lp.scanner.scan(t0), 0);
        assert_eq!(lp.scanner.scan(t0 + settle), 1, "{:?}", lp.scanner.errors);
    }

    #[test]
    fn local_file_systems_are_not_network_ones() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(network_fs(tmp.path()), None);
        assert_eq!(network_fs(Path::new("/nonexistent/x")), None);
    }
}
