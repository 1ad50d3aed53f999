//! Which PBX files were taken (`<spool>/.folder-seen`, by inode, size and
//! mtime, across restarts and renames) and how their paths are kept.

use super::*;

/// A PBX file's path as stored in the spool's delivery watch (a JSON
/// string): as it is when it is UTF-8, else `hex:` and the hex of its bytes
/// (the paths watched are absolute, so a plain one never starts so).
pub(crate) fn encode_path(p: &Path) -> String {
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
pub(crate) fn decode_path(s: &str) -> PathBuf {
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

pub(super) fn file_key(md: &fs::Metadata) -> FileKey {
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
    pub(super) path: PathBuf,
    keys: HashSet<FileKey>,
    /// The path (as a line shows it) each inode was last taken under.
    taken: HashMap<u64, String>,
}

impl SeenFile {
    pub(crate) const NAME: &'static str = ".folder-seen";

    pub fn open(spool: &Path) -> io::Result<Self> {
        let path = spool.join(Self::NAME);
        let text = match fs::read(&path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        let keys = parse_seen(&text);
        let taken = text
            .lines()
            .filter_map(|l| {
                let (k, p) = l.split_once('\t')?;
                Some((k.split(' ').next()?.parse().ok()?, p.to_string()))
            })
            .collect();
        Ok(SeenFile { path, keys, taken })
    }

    /// Whether a version of the file at `p` (inode `ino`) was taken
    /// before: it has been written to since (a headerless file of a call
    /// on hold when the daemon started, taken after `settle`).
    pub fn taken_before(&self, ino: u64, p: &Path) -> bool {
        self.taken.get(&ino).is_some_and(|s| *s == shown(p))
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
        for (k, p) in files {
            self.keys.insert(*k);
            self.taken.insert(k.0, shown(p));
        }
        Ok(())
    }
}

/// One line of `.folder-seen`: `ino size mtime_ns<TAB>path` (the path
/// escaped: one line whatever its characters).
pub fn seen_line(k: &FileKey, p: &Path) -> String {
    format!("{} {} {}\t{}\n", k.0, k.1, k.2, shown(p))
}

/// A path as a `.folder-seen` line shows it (escaped: one line whatever
/// its characters).
fn shown(p: &Path) -> String {
    p.to_string_lossy().escape_debug().collect()
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
