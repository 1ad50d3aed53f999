//! Rebuilding after damage: a corrupt database moved aside, the record of
//! delivered ids (`spool.delivered`) that keeps them from being sent again.

use super::*;

/// Whether `dir` holds any recording pair (`<id>.json` with its WAV).
pub(super) fn has_pairs(dir: &Path) -> bool {
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
pub(super) fn move_aside(dir: &Path) -> Result<PathBuf, SpoolError> {
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
pub(super) struct DeliveredLog {
    pub(super) path: PathBuf,
    pub(super) ids: HashSet<String>,
    /// Lines in the file (compaction counts them).
    pub(super) lines: usize,
    /// Where the complete lines end when the file does not end with a
    /// newline (a torn append): cut there before the next append.
    pub(super) torn: Option<u64>,
}

impl DeliveredLog {
    pub(super) fn load(dir: &Path) -> DeliveredLog {
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

    pub(super) fn append(&mut self, id: &str) -> io::Result<()> {
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
    pub(super) fn compact(&mut self, keep: impl Fn(&str) -> bool) -> io::Result<()> {
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
pub(super) fn give_to_dir_owner(dir: &Path, db: &Path) {
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
