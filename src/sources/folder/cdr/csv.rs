//! Asterisk's `Master.csv` (cdr_csv) as a CDR store, followed as it grows.
//!
//! Column order: Asterisk's default (`accountcode, src, dst, dcontext, clid,
//! channel, dstchannel, lastapp, lastdata, start, answer, end, duration,
//! billsec, disposition, amaflags, uniqueid, userfield`, then, with
//! `newcdrcolumns = yes`, `peeraccount, linkedid, sequence`: the order
//! cdr_csv.c writes them in) or any order given as [`CsvColumns`]
//! (`cdr_csv_columns`).
//! Times are the PBX's local time ([`PbxTimeZone`]).

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pbx_core::Timestamp;

use super::{best_row, CdrError, CdrQuery, CdrRow, CdrStore, PbxTimeZone};
use crate::sources::folder::Pulse;

pub use crate::config::{CsvColumns, DEFAULT_COLUMNS, EXTRA_COLUMNS};

/// Splits one CSV line (RFC 4180 quoting, `""` inside quotes).
pub fn split_csv_line(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') => {
                if chars.peek() == Some(&'"') {
                    cur.push('"');
                    chars.next();
                } else {
                    quoted = false;
                }
            }
            (false, '"') => quoted = true,
            (false, ',') => out.push(std::mem::take(&mut cur)),
            (_, '\r') if !quoted => {}
            (_, c) => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// `YYYY-MM-DD HH:MM:SS` (Asterisk CDR) → timestamp (as UTC); empty → `None`.
pub fn parse_cdr_datetime(s: &str) -> Option<Timestamp> {
    super::parse_cdr_datetime(s)
}

/// Parses a Master.csv line in Asterisk's default column order, times
/// shifted by `utc_offset_secs`. `None` for a line without a `uniqueid`.
pub fn parse_cdr_line(line: &str, utc_offset_secs: i64) -> Option<CdrRow> {
    parse_cdr_line_with(
        line,
        &CsvColumns::default(),
        PbxTimeZone::Fixed(utc_offset_secs),
    )
}

/// Parses a Master.csv line with the given columns and time zone.
pub fn parse_cdr_line_with(line: &str, cols: &CsvColumns, tz: PbxTimeZone) -> Option<CdrRow> {
    let f = split_csv_line(line);
    let g = |n: &str| cols.get(&f, n);
    let t = |n: &str| parse_cdr_datetime(&g(n)).map(|ts| tz.to_utc(ts));
    let uniqueid = g("uniqueid").trim().to_string();
    if uniqueid.is_empty() {
        return None;
    }
    Some(CdrRow {
        src: g("src"),
        dst: g("dst"),
        dcontext: g("dcontext"),
        clid: g("clid"),
        channel: g("channel"),
        dstchannel: g("dstchannel"),
        start: t("start"),
        answer: t("answer"),
        end: t("end"),
        duration: g("duration").trim().parse().ok(),
        billsec: g("billsec").trim().parse().ok(),
        disposition: g("disposition"),
        uniqueid,
        linkedid: g("linkedid").trim().to_string(),
        userfield: g("userfield"),
        did: g("did"),
        cnum: g("cnum"),
        cnam: g("cnam"),
        outbound_cnum: g("outbound_cnum"),
        recordingfile: g("recordingfile"),
    })
}

/// The caller-ID name of a `"Name" <number>` clid, if any.
pub fn clid_name(clid: &str) -> Option<String> {
    let name = clid.split('<').next()?.trim().trim_matches('"').trim();
    if name.is_empty() {
        None
    } else {
        Some(name.to_string())
    }
}

/// A row held: its line and what it is indexed by.
#[derive(Debug)]
struct HeldRow {
    line: Box<str>,
    linkedid: Box<str>,
    /// The base name of its `recordingfile`.
    file: Box<str>,
}

/// The longest line taken as a CDR row.
const MAX_LINE: usize = 64 * 1024;

/// Follows Master.csv as it grows (bounded memory: the oldest rows are forgotten).
#[derive(Debug)]
pub struct CdrFollower {
    pub(crate) path: PathBuf,
    offset: u64,
    inode: u64,
    partial: Vec<u8>,
    /// The line being read grew past 64 KiB and was dropped: its rest, up
    /// to its end, is dropped too (not read as a line of its own).
    dropping_line: bool,
    /// uniqueid → the row as its line: parsed again when asked for (a
    /// row parsed is 1.4 KiB of strings and indexes; its line and indexes
    /// about a third of that: 200,000 rows took 380 MB before).
    rows: HashMap<Arc<str>, HeldRow>,
    /// linkedid → uniqueids of its rows.
    linked: HashMap<Box<str>, Vec<Arc<str>>>,
    /// recordingfile base name → uniqueid.
    by_file: HashMap<Box<str>, Arc<str>>,
    order: VecDeque<Arc<str>>,
    max_rows: usize,
    columns: CsvColumns,
    tz: PbxTimeZone,
    /// Beaten after each piece read (the first read of a large file takes
    /// seconds to minutes); a stop cuts the read short.
    pulse: Pulse,
    pub malformed: u64,
}

impl CdrFollower {
    pub fn new(path: &Path, max_rows: usize, utc_offset_secs: i64) -> Self {
        Self::with_columns(
            path,
            max_rows,
            CsvColumns::default(),
            PbxTimeZone::Fixed(utc_offset_secs),
        )
    }

    pub fn with_columns(
        path: &Path,
        max_rows: usize,
        columns: CsvColumns,
        tz: PbxTimeZone,
    ) -> Self {
        CdrFollower {
            path: path.to_path_buf(),
            offset: 0,
            inode: 0,
            partial: Vec::new(),
            dropping_line: false,
            rows: HashMap::new(),
            linked: HashMap::new(),
            by_file: HashMap::new(),
            order: VecDeque::new(),
            max_rows: max_rows.max(1),
            columns,
            tz,
            pulse: Pulse::default(),
            malformed: 0,
        }
    }

    /// How a long read reports alive and learns to stop.
    pub fn set_pulse(&mut self, pulse: Pulse) {
        self.pulse = pulse;
    }

    /// Reads what was appended since the last call (from the start again if
    /// the file shrank or was replaced: rotated). Reports alive after each
    /// 256 KiB read; asked to stop, it ends with an `Interrupted` error and
    /// the next call goes on where this one ended.
    pub fn poll(&mut self) -> io::Result<()> {
        let mut f = File::open(&self.path)?;
        let md = f.metadata()?;
        let len = md.len();
        if len < self.offset || md.ino() != self.inode {
            self.inode = md.ino();
            self.offset = 0;
            self.partial.clear();
            self.dropping_line = false;
        }
        f.seek(SeekFrom::Start(self.offset))?;
        // In pieces: the first read of a large file is not held whole.
        let mut f = f.take(len - self.offset);
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.offset += n as u64;
            self.feed(&buf[..n]);
            if !self.pulse.beat() {
                return Err(io::Error::new(
                    io::ErrorKind::Interrupted,
                    "stopped while reading",
                ));
            }
        }
        Ok(())
    }

    /// Takes in bytes appended to the file: complete lines become rows (a
    /// line without a `uniqueid` is counted in `malformed`), the rest waits
    /// for its end.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        if self.dropping_line {
            match bytes.iter().position(|&b| b == b'\n') {
                Some(end) => {
                    bytes = &bytes[end + 1..];
                    self.dropping_line = false;
                }
                None => return,
            }
        }
        // Where the bytes held back so far end: they hold no line end.
        let mut from = self.partial.len();
        self.partial.extend_from_slice(bytes);
        // The lines are parsed where they lie and the buffer is cut once at
        // the end: cutting it line by line moved the rest each time, hours
        // for the first read of a Master.csv of a few hundred MB.
        let buf = std::mem::take(&mut self.partial);
        let mut start = 0;
        while let Some(off) = buf[from..].iter().position(|&b| b == b'\n') {
            let end = from + off;
            let text = String::from_utf8_lossy(&buf[start..end]);
            let text = text.trim_end_matches(['\n', '\r']);
            if !text.is_empty() {
                match parse_cdr_line_with(text, &self.columns, self.tz) {
                    Some(row) => self.insert(text, row),
                    None => self.malformed += 1,
                }
            }
            start = end + 1;
            from = start;
        }
        self.partial = buf;
        self.partial.drain(..start);
        // A line longer than 64 KiB is not a CDR line: drop it.
        if self.partial.len() > MAX_LINE {
            self.partial.clear();
            self.malformed += 1;
            self.dropping_line = true;
        }
    }

    /// Rows held.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Drops the entries of `key`'s row `r` in the `linked` and `by_file`
    /// indexes.
    fn unindex(&mut self, key: &str, r: &HeldRow) {
        if let Some(v) = self.linked.get_mut(&r.linkedid) {
            v.retain(|u| &**u != key);
            if v.is_empty() {
                self.linked.remove(&r.linkedid);
            }
        }
        if self.by_file.get(&r.file).is_some_and(|u| &**u == key) {
            self.by_file.remove(&r.file);
        }
    }

    /// Whether the indexes name only rows held (for tests and fuzzing).
    pub fn indexes_consistent(&self) -> bool {
        self.order.len() == self.rows.len()
            && self.rows.len() <= self.max_rows
            && self.order.iter().all(|u| self.rows.contains_key(u))
            && self.by_file.values().all(|u| self.rows.contains_key(u))
            && self
                .linked
                .values()
                .all(|v| !v.is_empty() && v.iter().all(|u| self.rows.contains_key(u)))
    }

    fn insert(&mut self, line: &str, row: CdrRow) {
        let rf = row.recordingfile.trim();
        let held = HeldRow {
            line: line.into(),
            linkedid: row.linkedid.into_boxed_str(),
            file: rf.rsplit('/').next().unwrap_or(rf).into(),
        };
        // A row again (the CDR rewritten): the old one's index entries go.
        let key: Arc<str> = match self.rows.remove_entry(row.uniqueid.as_str()) {
            Some((key, old)) => {
                self.unindex(&key, &old);
                key
            }
            None => {
                let key: Arc<str> = row.uniqueid.into();
                self.order.push_back(key.clone());
                key
            }
        };
        if !held.linkedid.is_empty() {
            let v = self.linked.entry(held.linkedid.clone()).or_default();
            if !v.contains(&key) {
                v.push(key.clone());
            }
        }
        if !held.file.is_empty() {
            self.by_file.insert(held.file.clone(), key.clone());
        }
        self.rows.insert(key, held);
        while self.rows.len() > self.max_rows {
            match self.order.pop_front() {
                Some(old) => {
                    if let Some(r) = self.rows.remove(&old) {
                        self.unindex(&old, &r);
                    }
                }
                None => break,
            }
        }
    }

    /// The row held as `held`, parsed again (as it was when taken in).
    fn parsed(&self, held: &HeldRow) -> Option<CdrRow> {
        parse_cdr_line_with(&held.line, &self.columns, self.tz)
    }

    pub fn get(&self, uniqueid: &str) -> Option<CdrRow> {
        self.rows.get(uniqueid).and_then(|h| self.parsed(h))
    }

    /// The best row for `q` among those read so far.
    pub fn lookup(&self, q: &CdrQuery) -> Option<CdrRow> {
        let mut keys: Vec<&str> = Vec::new();
        for f in &q.files {
            if let Some(u) = self.by_file.get(f.as_str()) {
                keys.push(u);
            }
        }
        keys.push(&q.uniqueid);
        for u in self.linked.get(q.uniqueid.as_str()).into_iter().flatten() {
            keys.push(u);
        }
        // A row found two ways is one candidate.
        let mut seen = Vec::with_capacity(keys.len());
        let cands: Vec<CdrRow> = keys
            .into_iter()
            .filter(|k| {
                let new = !seen.contains(k);
                seen.push(k);
                new
            })
            .filter_map(|k| self.rows.get(k).and_then(|h| self.parsed(h)))
            .collect();
        best_row(&cands, q)
    }
}

/// [`CdrFollower`] as a [`CdrStore`]. A Master.csv that does not exist (yet)
/// has no rows; one that cannot be read is an error (recordings wait).
#[derive(Debug)]
pub struct CsvStore(pub CdrFollower);

impl CdrStore for CsvStore {
    fn describe(&self) -> String {
        format!("Master.csv {}", self.0.path.display())
    }

    fn set_pulse(&mut self, pulse: Pulse) {
        self.0.set_pulse(pulse);
    }

    fn find(&mut self, queries: &[CdrQuery]) -> Result<Vec<Option<CdrRow>>, CdrError> {
        match self.0.poll() {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(CdrError(format!(
                    "cannot read {}: {e}",
                    self.0.path.display()
                )))
            }
        }
        Ok(queries.iter().map(|q| self.0.lookup(q)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_and_cdr() {
        let line = r#""","1001","5551234","from-internal","""Alice"" <1001>","SIP/1001-0001","SIP/t-0002","Dial","SIP/t/5551234,300","2026-11-24 10:15:02","2026-11-24 10:15:05","2026-11-24 10:16:02",60,57,"ANSWERED","DOCUMENTATION","1700000000.123","""#;
        let r = parse_cdr_line(line, 3600).unwrap();
        assert_eq!(r.src, "1001");
        assert_eq!(r.dst, "5551234");
        assert_eq!(clid_name(&r.clid).as_deref(), Some("Alice"));
        assert_eq!(r.uniqueid, "1700000000.123");
        assert_eq!(r.start.unwrap().to_rfc3339(), "2026-11-24T09:15:02.000Z");
        assert_eq!(r.billsec, Some(57));
        assert_eq!(r.disposition, "ANSWERED");
        assert!(parse_cdr_line("a,b,c", 0).is_none());
        let f = split_csv_line(r#"a,"b,c","d""e",,"#);
        assert_eq!(f, vec!["a", "b,c", "d\"e", "", ""]);
    }

    #[test]
    fn custom_columns() {
        let cols = CsvColumns::new(&["uniqueid", "-", "src", "dst", "calldate", "did"]).unwrap();
        let r = parse_cdr_line_with(
            "7.7,x,1001,200,2026-11-24 10:00:00,5551000",
            &cols,
            PbxTimeZone::Fixed(0),
        )
        .unwrap();
        assert_eq!(
            (r.uniqueid.as_str(), r.src.as_str(), r.did.as_str()),
            ("7.7", "1001", "5551000")
        );
        assert_eq!(r.start.unwrap().to_rfc3339(), "2026-11-24T10:00:00.000Z");
        assert!(CsvColumns::new(&["src"]).unwrap_err().contains("uniqueid"));
        assert!(CsvColumns::new(&["uniqueid", "bogus"])
            .unwrap_err()
            .contains("bogus"));
        assert!(CsvColumns::new(&["uniqueid", "src", "src"]).is_err());
    }

    #[test]
    fn cdr_follower_partial_lines_and_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("Master.csv");
        let row = |u: &str| {
            format!("\"\",\"1\",\"2\",\"c\",\"\",\"\",\"\",\"\",\"\",\"2026-11-24 10:00:00\",\"\",\"2026-11-24 10:00:09\",9,0,\"NO ANSWER\",\"D\",\"{u}\",\"\"\n")
        };
        let first = row("1.1");
        let (a, b) = first.split_at(30);
        std::fs::write(&p, a).unwrap();
        let mut f = CdrFollower::new(&p, 2, 0);
        f.poll().unwrap();
        assert!(f.get("1.1").is_none(), "half a line is not a row");
        std::fs::write(&p, format!("{a}{b}{}garbage\n", row("1.2"))).unwrap();
        f.poll().unwrap();
        assert_eq!(f.get("1.1").unwrap().answer, None);
        assert!(f.get("1.2").is_some());
        assert_eq!(f.malformed, 1);
        // Rotated: shorter file, read from the start; bounded to 2 rows.
        std::fs::write(&p, format!("{}{}", row("2.1"), row("2.2"))).unwrap();
        f.poll().unwrap();
        assert!(f.get("2.1").is_some() && f.get("2.2").is_some());
        assert!(f.get("1.1").is_none(), "oldest forgotten");
    }

    #[test]
    fn newcdrcolumns_order_is_peeraccount_linkedid_sequence() {
        // cdr_csv.c (newcdrcolumns = yes): ..., uniqueid, userfield,
        // peeraccount, linkedid, sequence.
        let line = r#""","1","2","c","","","","","","2026-11-24 10:00:00","","2026-11-24 10:00:09",9,0,"NO ANSWER","D","1.2","uf","peer","1.1",7"#;
        let row = parse_cdr_line(line, 0).unwrap();
        assert_eq!(row.uniqueid, "1.2");
        assert_eq!(row.linkedid, "1.1");
        assert_eq!(
            &DEFAULT_COLUMNS[16..],
            [
                "uniqueid",
                "userfield",
                "peeraccount",
                "linkedid",
                "sequence"
            ]
        );
    }

    #[test]
    fn a_row_written_again_leaves_no_stale_index_entries() {
        let cols = CsvColumns::new(&["uniqueid", "linkedid", "recordingfile"]).unwrap();
        let mut f = CdrFollower::with_columns(Path::new("/x"), 2, cols, PbxTimeZone::Fixed(0));
        f.feed(b"1.1,L1,a.wav\n1.1,L2,b.wav\n");
        assert!(f.indexes_consistent());
        f.feed(b"2.1,L2,c.wav\n3.1,,\n");
        assert_eq!(f.len(), 2);
        assert!(f.indexes_consistent());
        assert!(f.get("1.1").is_none());
        let q = CdrQuery {
            uniqueid: "L1".into(),
            files: vec!["a.wav".into()],
            around: None,
        };
        assert!(f.lookup(&q).is_none(), "forgotten with its row");
    }

    #[test]
    fn a_large_master_csv_is_read_in_pieces_with_every_row() {
        // Over 1 MB: lines cross the 256 KiB pieces the file is read in.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("Master.csv");
        let mut text = String::new();
        for i in 0..40_000 {
            text.push_str(&format!("{i}.7,L{i},rec-{i:06}.wav\r\n"));
        }
        assert!(text.len() > 1_000_000);
        std::fs::write(&path, &text).unwrap();
        let cols = CsvColumns::new(&["uniqueid", "linkedid", "recordingfile"]).unwrap();
        let mut f = CdrFollower::with_columns(&path, 100_000, cols, PbxTimeZone::Fixed(0));
        f.poll().unwrap();
        assert_eq!((f.len(), f.malformed), (40_000, 0));
        for i in [0, 1, 12_345, 39_999] {
            let r = f.get(&format!("{i}.7")).expect("row read");
            assert_eq!(r.linkedid, format!("L{i}"));
            assert_eq!(r.recordingfile, format!("rec-{i:06}.wav"));
        }
        assert!(f.indexes_consistent());
        // What is appended later is read from where the first read ended.
        let mut more = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut more, b"40000.7,L40000,").unwrap();
        f.poll().unwrap();
        assert_eq!(f.len(), 40_000, "half a line waits");
        std::io::Write::write_all(&mut more, b"last.wav\n").unwrap();
        f.poll().unwrap();
        assert_eq!(f.get("40000.7").unwrap().recordingfile, "last.wav");
    }

    #[test]
    fn a_long_first_read_reports_alive_and_a_stop_cuts_it_short_losing_nothing() {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("Master.csv");
        let mut text = String::new();
        for i in 0..40_000 {
            text.push_str(&format!("{i}.7,L{i},rec-{i:06}.wav\n"));
        }
        std::fs::write(&path, &text).unwrap();
        let cols = CsvColumns::new(&["uniqueid", "linkedid", "recordingfile"]).unwrap();
        let mut f = CdrFollower::with_columns(&path, 100_000, cols, PbxTimeZone::Fixed(0));
        let beats = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (b, st) = (beats.clone(), stop.clone());
        // The second beat (after 512 KiB) asks to stop.
        f.set_pulse(Pulse::new(
            move || {
                if b.fetch_add(1, Ordering::SeqCst) == 1 {
                    st.store(true, Ordering::SeqCst);
                }
            },
            stop.clone(),
        ));
        let e = f.poll().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Interrupted);
        assert_eq!(beats.load(Ordering::SeqCst), 2, "alive after each piece");
        assert!(!f.is_empty() && f.len() < 40_000, "{}", f.len());
        // Read on from where the stop left it: every row, none twice.
        stop.store(false, Ordering::SeqCst);
        f.poll().unwrap();
        assert!(
            beats.load(Ordering::SeqCst) >= 5,
            "a 1 MB read beats each 256 KiB"
        );
        assert_eq!((f.len(), f.malformed), (40_000, 0));
        assert!(f.indexes_consistent());
        // As a store: a stop is an error (recordings wait), not rows missing.
        let mut store = CsvStore(CdrFollower::new(&path, 10, 0));
        let stopped = Arc::new(AtomicBool::new(true));
        store.set_pulse(Pulse::new(|| {}, stopped));
        let q = CdrQuery {
            uniqueid: "39999.7".into(),
            files: vec![],
            around: None,
        };
        assert!(store.find(&[q]).is_err());
    }

    /// Not a test: the time of the first read of a large Master.csv
    /// (BENCHMARKS.md, "The first read of a large Master.csv").
    /// `MB=200 cargo test --release --lib first_read_of_a_large -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn first_read_of_a_large_master_csv() {
        let mb: usize = std::env::var("MB")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("Master.csv");
        let mut text = String::new();
        let mut lines = 0;
        while text.len() < mb << 20 {
            let i = lines;
            text.push_str(&format!(
                "\"\",\"1001\",\"2002\",\"from-internal\",\"\"\"Alice\"\" <1001>\",\
                 \"PJSIP/1001-{i:08x}\",\"PJSIP/2002-{i:08x}\",\"Dial\",\"PJSIP/2002,,Tt\",\
                 \"2026-01-01 10:00:00\",\"2026-01-01 10:00:02\",\"2026-01-01 10:01:00\",60,58,\
                 \"ANSWERED\",\"DOCUMENTATION\",\"1767261600.{i}\",\"\",\"\",\"1767261600.{i}\",{i}\n"
            ));
            lines += 1;
        }
        std::fs::write(&path, &text).unwrap();
        drop(text);
        // As many rows as the folder source keeps.
        let keep = crate::sources::folder::FolderSettings::default().max_cdr_rows;
        let rss = || {
            let s = std::fs::read_to_string("/proc/self/status").unwrap();
            let l = s
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .unwrap()
                .to_string();
            l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap()
        };
        let before = rss();
        let mut f = CdrFollower::new(&path, keep, 0);
        let t = std::time::Instant::now();
        f.poll().unwrap();
        let took = t.elapsed();
        assert_eq!((f.len(), f.malformed), (lines.min(keep), 0));
        assert!(f.get(&format!("1767261600.{}", lines - 1)).is_some());
        eprintln!(
            "{mb} MB, {lines} lines: first read {took:?}, {} rows held, RSS +{} KiB",
            f.len(),
            rss().saturating_sub(before)
        );
    }

    #[test]
    fn the_rest_of_an_overlong_line_is_not_read_as_a_row() {
        let cols = CsvColumns::new(&["uniqueid", "linkedid", "recordingfile"]).unwrap();
        let mut f = CdrFollower::with_columns(Path::new("/x"), 10, cols, PbxTimeZone::Fixed(0));
        f.feed(b"1.1,L1,a.wav\n");
        // 70 KiB without a line end, in pieces, then the end of that line.
        for _ in 0..70 {
            f.feed(&[b'x'; 1024]);
        }
        f.feed(b"\n9.9,L9,");
        assert_eq!((f.len(), f.malformed), (1, 1));
        f.feed(b"b.wav\n2.2,L2,c.wav\n");
        assert_eq!((f.len(), f.malformed), (3, 1));
        assert!(f.get("9.9").is_some(), "the line after the long one");
        // Cut inside the long line's rest: "9.9,L9,b.wav" is not a row of it.
        let mut g = CdrFollower::with_columns(
            Path::new("/x"),
            10,
            CsvColumns::new(&["uniqueid", "linkedid", "recordingfile"]).unwrap(),
            PbxTimeZone::Fixed(0),
        );
        g.feed(&vec![b'y'; 65 * 1024 + 1]);
        g.feed(b"9.9,L9,b.wav\n3.3,L3,d.wav\n");
        assert!(g.get("9.9").is_none(), "the tail of a dropped line");
        assert_eq!((g.len(), g.malformed), (1, 1));
        assert!(g.get("3.3").is_some());
    }

    proptest::proptest! {
        #[test]
        fn parser_never_panics(s in ".{0,200}") {
            let _ = parse_cdr_line(&s, 0);
            let _ = parse_cdr_datetime(&s);
        }
    }
}
