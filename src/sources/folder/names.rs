//! Recording file names: the FreePBX naming and configured patterns →
//! call facts (type, numbers, start, unique id); files grouped into the
//! sets of one call (split legs `-in`/`-out` and their variants).

use super::*;

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
///
/// The date and time are the anchor: `-<8 digits>-<6 digits>-` followed by
/// a unique id that may hold dashes itself (`systemname` set in
/// asterisk.conf makes it `pbx1-1700000000.123`), preceded by the type, the
/// destination (up to the next dash, maybe empty) and the source (the rest,
/// maybe empty or with dashes). The last such anchor counts: the source is
/// the caller's, the unique id the PBX's own.
pub fn parse_freepbx_name(stem: &str) -> Option<FreePbxName> {
    let b = stem.as_bytes();
    let digits_at = |from: usize, n: usize| {
        b.get(from..from + n)
            .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
    };
    // `i`: the dash before the date; the unique id starts at `i + 17`.
    let mut i = b.len().checked_sub(18)?;
    loop {
        if b[i] == b'-'
            && digits_at(i + 1, 8)
            && b[i + 9] == b'-'
            && digits_at(i + 10, 6)
            && b[i + 16] == b'-'
        {
            if let Some(n) = freepbx_parts(stem, i) {
                return Some(n);
            }
        }
        i = i.checked_sub(1)?;
    }
}

/// [`parse_freepbx_name`] with the date found at `stem[i + 1..]`.
fn freepbx_parts(stem: &str, i: usize) -> Option<FreePbxName> {
    // ASCII digits and dashes around `i`: these are char boundaries.
    let head = stem.get(..i)?;
    let date = stem.get(i + 1..i + 9)?;
    let time = stem.get(i + 10..i + 16)?;
    let uniqueid = stem.get(i + 17..)?;
    let (kind, rest) = head.split_once('-')?;
    let (dst, src) = rest.split_once('-')?;
    if uniqueid.is_empty() || kind.is_empty() {
        return None;
    }
    let started_at = parse_compact_datetime(date, time)?;
    Some(FreePbxName {
        kind: kind.to_string(),
        dst: dst.to_string(),
        src: src.to_string(),
        src_name: None,
        started_at,
        uniqueid: uniqueid.to_string(),
    })
}

pub(super) use crate::sources::folder::cdr::digits;

/// Latest start time a file name or the CDR may give (9999-12-31T23:59:59Z):
/// later ones are not dates, and would overflow the arithmetic after.
pub(super) const LAST_SECOND: i64 = 253_402_300_799;

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

/// FreePBX recording type → CONTRACT direction. `exten` (recorded by an
/// extension's own setting) is any call of that extension, to or from the
/// outside as well as internal: it says nothing of the direction, which the
/// CDR's contexts or the parties' numbers then tell.
pub fn direction_of(kind: &str) -> &'static str {
    match kind {
        "in" | "q" | "rg" | "external" | "inbound" => "inbound",
        "out" | "outbound" => "outbound",
        "internal" | "conf" => "internal",
        _ => "unknown",
    }
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
pub(crate) fn split_name_bytes(name: &[u8]) -> Option<(usize, Option<&'static str>)> {
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
