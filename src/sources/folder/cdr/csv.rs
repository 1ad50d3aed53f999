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

/// Whether `b` holds an odd number of '"' (so a line break after it is
/// inside or outside quotes the other way round than before it; `""` in a
/// quoted field counts twice).
fn odd_quotes(b: &[u8]) -> bool {
    b.iter().filter(|&&c| c == b'"').count() % 2 == 1
}

/// A row held: its line and what it is indexed by.
#[derive(Debug)]
struct HeldRow {
    line: Box<str>,
    linkedid: Box<str>,
    /// The base name of its `recordingfile`.
    file: Box<str>,
}

/// One value or several: no more room than one in the common case (most
/// uniqueids have one row, most files and linkedids one uniqueid).
#[derive(Debug)]
enum Few<T> {
    One(T),
    /// Two or more.
    Many(Vec<T>),
}

impl<T> std::ops::Deref for Few<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match self {
            Few::One(t) => std::slice::from_ref(t),
            Few::Many(v) => v,
        }
    }
}

impl<'a, T> IntoIterator for &'a Few<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<T> Few<T> {
    fn push(&mut self, t: T) {
        match self {
            Few::Many(v) => v.push(t),
            Few::One(_) => {
                let Few::One(first) = std::mem::replace(self, Few::Many(Vec::with_capacity(2)))
                else {
                    unreachable!("matched One")
                };
                *self = Few::Many(vec![first, t]);
            }
        }
    }

    /// Keeps what `keep` says; `false`: nothing is left (the caller drops
    /// it).
    fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) -> bool {
        match self {
            Few::One(t) => keep(t),
            Few::Many(v) => {
                v.retain(|t| keep(t));
                if v.len() == 1 {
                    if let Some(t) = v.pop() {
                        *self = Few::One(t);
                    }
                }
                !self.is_empty()
            }
        }
    }

    /// Takes out the `i`th of several (`None` for the only one).
    fn take(&mut self, i: usize) -> Option<T> {
        let Few::Many(v) = self else { return None };
        let t = (i < v.len()).then(|| v.remove(i))?;
        if v.len() == 1 {
            if let Some(last) = v.pop() {
                *self = Few::One(last);
            }
        }
        Some(t)
    }
}

/// The longest line taken as a CDR row.
const MAX_LINE: usize = 64 * 1024;

/// Rows held per `uniqueid` (ring groups, queues and transfers write one
/// per leg; beyond this, the one least likely to be chosen goes).
pub const MAX_ROWS_PER_ID: usize = 64;

/// Follows Master.csv as it grows (bounded memory: the oldest rows are forgotten).
#[derive(Debug)]
pub struct CdrFollower {
    pub(crate) path: PathBuf,
    /// The file followed, held open: once rotated (renamed away, deleted)
    /// its last rows are still read from it before the new file's.
    file: Option<File>,
    offset: u64,
    /// Device and inode of `file`.
    inode: (u64, u64),
    partial: Vec<u8>,
    /// The line being read grew past 64 KiB and was dropped: its rest, up
    /// to its end, is dropped too (not read as a line of its own).
    dropping_line: bool,
    /// `partial` ends inside quotes (its record goes on past a line end).
    quoted: bool,
    /// The last read ended with `partial` inside quotes across a line end.
    open_quote_seen: bool,
    /// uniqueid → its rows as their lines, in the order read: parsed again
    /// when asked for (a row parsed is 1.4 KiB of strings and indexes; its
    /// line and indexes about a third of that: 200,000 rows took 380 MB
    /// before). Every row of a uniqueid is kept (up to
    /// [`MAX_ROWS_PER_ID`]): ring groups, queues and transfers write
    /// several, and [`best_row`] chooses among them as the database store
    /// does.
    rows: HashMap<Arc<str>, Few<HeldRow>>,
    /// Rows held, all uniqueids together (bounded by `max_rows`).
    held: usize,
    /// linkedid → uniqueids with a row of it.
    linked: HashMap<Box<str>, Few<Arc<str>>>,
    /// recordingfile base name → uniqueids with a row naming it.
    by_file: HashMap<Box<str>, Few<Arc<str>>>,
    /// uniqueids, oldest first: forgotten in this order.
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
            file: None,
            offset: 0,
            inode: (0, 0),
            partial: Vec::new(),
            dropping_line: false,
            quoted: false,
            open_quote_seen: false,
            rows: HashMap::new(),
            held: 0,
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

    /// Reads what was appended since the last call. Rotated (the path names
    /// another file now: the old one renamed away or deleted, a new one
    /// made): the old file is read to its end first, then the new one from
    /// its start. Truncated in place (`copytruncate`): read from the start
    /// again (rows written between the last read and the copy are only in
    /// the copy). Reports alive after each 256 KiB read; asked to stop, it
    /// ends with an `Interrupted` error and the next call goes on where
    /// this one ended.
    pub fn poll(&mut self) -> io::Result<()> {
        let opened = match File::open(&self.path) {
            Ok(f) => {
                let md = f.metadata()?;
                Some((f, md))
            }
            // Renamed away, the new one not made yet.
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let id = opened.as_ref().map(|(_, md)| (md.dev(), md.ino()));
        if self.file.is_some() && id != Some(self.inode) {
            // Rotated: the old file's last rows first (a stop here leaves
            // it held, to go on with next time).
            if let Some(mut old) = self.file.take() {
                let r = self.read_on(&mut old);
                self.file = Some(old);
                r?;
            }
            if opened.is_none() {
                return Ok(());
            }
            // Its last line, had it no line end, is a row all the same.
            self.finish_line();
            self.file = None;
        }
        let Some((f, md)) = opened else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} not found", self.path.display()),
            ));
        };
        if self.file.is_none() || md.len() < self.offset {
            self.inode = (md.dev(), md.ino());
            self.offset = 0;
            self.reset_record();
        }
        let mut f = f;
        let r = self.read_on(&mut f);
        // The handle is this path's file: kept for when it is rotated.
        self.file = Some(f);
        r?;
        self.at_end_of_data();
        Ok(())
    }

    /// Reads `f` from `offset` to its end, in pieces (the first read of a
    /// large file is not held whole).
    fn read_on(&mut self, f: &mut File) -> io::Result<()> {
        let len = f.metadata()?.len();
        if len <= self.offset {
            return Ok(());
        }
        f.seek(SeekFrom::Start(self.offset))?;
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

    /// The end of a file: what is held back, a record without its line
    /// end, is taken as a record (a quote that does not end: line by line).
    fn finish_line(&mut self) {
        if !self.dropping_line {
            if self.quoted && self.partial.contains(&b'\n') {
                self.take_lines_as_they_are();
            }
            let rest = std::mem::take(&mut self.partial);
            self.take_record(&rest);
        }
        self.reset_record();
    }

    /// Nothing held back (a new file, or read from its start again).
    fn reset_record(&mut self) {
        self.partial.clear();
        self.dropping_line = false;
        self.quoted = false;
        self.open_quote_seen = false;
    }

    /// Takes in bytes appended to the file: complete records become rows
    /// (a record without a `uniqueid` is counted in `malformed`), the rest
    /// waits for its end. A record ends at a line end outside quotes: a
    /// quoted field (a caller name, `userfield`, `lastdata`) may hold line
    /// breaks.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        if self.dropping_line {
            match bytes.iter().position(|&b| b == b'\n') {
                Some(end) => {
                    bytes = &bytes[end + 1..];
                    self.dropping_line = false;
                    self.quoted = false;
                }
                None => return,
            }
        }
        // Where the bytes held back so far end: `quoted` says whether they
        // end inside quotes.
        let mut from = self.partial.len();
        self.partial.extend_from_slice(bytes);
        // The records are parsed where they lie and the buffer is cut once
        // at the end: cutting it record by record moved the rest each time,
        // hours for the first read of a Master.csv of a few hundred MB.
        let buf = std::mem::take(&mut self.partial);
        let mut start = 0;
        let mut quoted = self.quoted;
        while let Some(off) = buf[from..].iter().position(|&b| b == b'\n') {
            let end = from + off;
            quoted ^= odd_quotes(&buf[from..end]);
            from = end + 1;
            if quoted {
                // A line break inside a quoted field.
                continue;
            }
            self.take_record(&buf[start..end]);
            start = end + 1;
        }
        self.quoted = quoted ^ odd_quotes(&buf[from..]);
        self.partial = buf;
        self.partial.drain(..start);
        if self.partial.len() > MAX_LINE {
            // 64 KiB inside quotes: a quote that does not end (a stray
            // '"'), not a record; its lines are taken one by one.
            if self.quoted {
                self.take_lines_as_they_are();
            }
            // A line longer than 64 KiB is not a CDR line: drop it.
            if self.partial.len() > MAX_LINE {
                self.partial.clear();
                self.malformed += 1;
                self.dropping_line = true;
                self.quoted = false;
            }
        }
    }

    /// One record (without its line end) → a row, or counted as malformed.
    fn take_record(&mut self, bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        let text = text.trim_end_matches(['\n', '\r']);
        if !text.is_empty() {
            match parse_cdr_line_with(text, &self.columns, self.tz) {
                Some(row) => self.insert(text, row),
                None => self.malformed += 1,
            }
        }
    }

    /// What is held back is in a quote that does not end: each of its lines
    /// is taken as a record of its own (the one with the stray quote is
    /// malformed, or a row if its columns still fit), the rest waits.
    fn take_lines_as_they_are(&mut self) {
        let buf = std::mem::take(&mut self.partial);
        let mut start = 0;
        while let Some(off) = buf[start..].iter().position(|&b| b == b'\n') {
            self.take_record(&buf[start..start + off]);
            start += off + 1;
        }
        self.partial = buf;
        self.partial.drain(..start);
        self.quoted = odd_quotes(&self.partial);
        self.open_quote_seen = false;
    }

    /// Everything the file holds now has been read: a record still open
    /// inside quotes across a line break, found so at two reads in a row,
    /// is a stray quote (Asterisk writes a record at once), not a record
    /// still being written: its lines are taken one by one, so that the
    /// rows after it do not wait.
    fn at_end_of_data(&mut self) {
        let open = self.quoted && self.partial.contains(&b'\n');
        if open && self.open_quote_seen {
            self.take_lines_as_they_are();
        } else {
            self.open_quote_seen = open;
        }
    }

    /// Rows held.
    pub fn len(&self) -> usize {
        self.held
    }

    pub fn is_empty(&self) -> bool {
        self.held == 0
    }

    /// Drops `key` from the index entry `k` of `index`.
    fn unindex_one(index: &mut HashMap<Box<str>, Few<Arc<str>>>, k: &str, key: &str) {
        if let Some(v) = index.get_mut(k) {
            if !v.retain(|u| &**u != key) {
                index.remove(k);
            }
        }
    }

    /// Adds `key` to the index entry `k` of `index` (once).
    fn index_one(index: &mut HashMap<Box<str>, Few<Arc<str>>>, k: &str, key: &Arc<str>) {
        if k.is_empty() {
            return;
        }
        match index.get_mut(k) {
            Some(v) if v.contains(key) => {}
            Some(v) => v.push(key.clone()),
            None => {
                index.insert(k.into(), Few::One(key.clone()));
            }
        }
    }

    /// Drops the index entries of `key`'s row `r` that no other row of
    /// `key` (`rest`) still needs.
    fn unindex(&mut self, key: &str, r: &HeldRow, rest: &[HeldRow]) {
        if !rest.iter().any(|o| o.linkedid == r.linkedid) {
            Self::unindex_one(&mut self.linked, &r.linkedid, key);
        }
        if !rest.iter().any(|o| o.file == r.file) {
            Self::unindex_one(&mut self.by_file, &r.file, key);
        }
    }

    /// Whether the indexes name only rows held, and just those (for tests
    /// and fuzzing).
    pub fn indexes_consistent(&self) -> bool {
        let needed = |index: &HashMap<Box<str>, Few<Arc<str>>>, f: fn(&HeldRow) -> &str| {
            index.iter().all(|(k, v)| {
                !k.is_empty()
                    && !v.is_empty()
                    && v.iter().enumerate().all(|(i, u)| {
                        !v[..i].contains(u)
                            && self
                                .rows
                                .get(u)
                                .is_some_and(|rs| rs.iter().any(|r| f(r) == &**k))
                    })
            }) && self.rows.iter().all(|(u, rs)| {
                rs.iter()
                    .all(|r| f(r).is_empty() || index.get(f(r)).is_some_and(|v| v.contains(u)))
            })
        };
        self.order.len() == self.rows.len()
            && self.held == self.rows.values().map(|rs| rs.len()).sum::<usize>()
            && self.held <= self.max_rows
            && self.order.iter().all(|u| self.rows.contains_key(u))
            && self
                .rows
                .values()
                .all(|rs| !rs.is_empty() && rs.len() <= MAX_ROWS_PER_ID)
            && needed(&self.linked, |r| &r.linkedid)
            && needed(&self.by_file, |r| &r.file)
    }

    /// Rows one uniqueid may hold.
    fn per_id(&self) -> usize {
        MAX_ROWS_PER_ID.min(self.max_rows)
    }

    fn insert(&mut self, line: &str, row: CdrRow) {
        let rf = row.recordingfile.trim();
        let held = HeldRow {
            line: line.into(),
            linkedid: row.linkedid.into_boxed_str(),
            file: rf.rsplit('/').next().unwrap_or(rf).into(),
        };
        let key: Arc<str> = match self.rows.get_key_value(row.uniqueid.as_str()) {
            Some((key, rs)) => {
                // The same line again (a file read twice): one row.
                if rs.iter().any(|r| r.line == held.line) {
                    return;
                }
                key.clone()
            }
            None => {
                let key: Arc<str> = row.uniqueid.into();
                self.order.push_back(key.clone());
                key
            }
        };
        Self::index_one(&mut self.linked, &held.linkedid, &key);
        Self::index_one(&mut self.by_file, &held.file, &key);
        let per_id = self.per_id();
        self.held += 1;
        let over = match self.rows.get_mut(&key) {
            Some(rs) => {
                rs.push(held);
                rs.len() > per_id
            }
            None => {
                self.rows.insert(key.clone(), Few::One(held));
                false
            }
        };
        if over {
            // The row least likely to be chosen goes: never the answered
            // one (the call's row) for a leg that rang unanswered.
            if let Some(mut rs) = self.rows.remove(&key) {
                let worst = self.least_likely(&rs);
                if let Some(gone) = rs.take(worst) {
                    self.held -= 1;
                    self.unindex(&key, &gone, &rs);
                }
                self.rows.insert(key.clone(), rs);
            }
        }
        // Bounded: the oldest uniqueids go with all their rows (never the
        // one just read: it holds at most `max_rows` rows itself).
        let mut kept = false;
        while self.held > self.max_rows {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if old == key {
                kept = true;
                continue;
            }
            if let Some(rs) = self.rows.remove(&old) {
                self.held -= rs.len();
                for r in &rs {
                    self.unindex(&old, r, &[]);
                }
            }
        }
        if kept {
            self.order.push_front(key);
        }
    }

    /// The index in `rs` (rows of one uniqueid) of the row [`best_row`] would
    /// choose last: no `recordingfile`, not answered, the shortest.
    fn least_likely(&self, rs: &[HeldRow]) -> usize {
        let score = |h: &HeldRow| {
            let r = self.parsed(h);
            (
                !h.file.is_empty(),
                r.as_ref()
                    .is_some_and(|r| r.disposition.eq_ignore_ascii_case("ANSWERED")),
                r.as_ref().and_then(|r| r.billsec).unwrap_or(0),
            )
        };
        rs.iter()
            .enumerate()
            .min_by_key(|(_, h)| score(h))
            .map_or(0, |(i, _)| i)
    }

    /// The row held as `held`, parsed again (as it was when taken in).
    fn parsed(&self, held: &HeldRow) -> Option<CdrRow> {
        parse_cdr_line_with(&held.line, &self.columns, self.tz)
    }

    /// The rows held for `uniqueid`, parsed again, in the order read.
    pub fn rows_of(&self, uniqueid: &str) -> Vec<CdrRow> {
        self.rows
            .get(uniqueid)
            .into_iter()
            .flatten()
            .filter_map(|h| self.parsed(h))
            .collect()
    }

    /// The best row held for `uniqueid` ([`best_row`]'s rule: `ANSWERED`,
    /// then the longest `billsec`, then the earliest).
    pub fn get(&self, uniqueid: &str) -> Option<CdrRow> {
        let q = CdrQuery {
            uniqueid: uniqueid.to_string(),
            files: Vec::new(),
            around: None,
        };
        best_row(&self.rows_of(uniqueid), &q)
    }

    /// The best row for `q` among those read so far.
    pub fn lookup(&self, q: &CdrQuery) -> Option<CdrRow> {
        let mut keys: Vec<&str> = Vec::new();
        for f in &q.files {
            for u in self.by_file.get(f.as_str()).into_iter().flatten() {
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
            .flat_map(|k| self.rows_of(k))
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
    fn a_rotated_master_csv_is_read_to_its_end_before_the_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("Master.csv");
        let cols = || CsvColumns::new(&["uniqueid", "linkedid", "recordingfile"]).unwrap();
        let append = |path: &Path, text: &str| {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap();
            std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
        };
        let mut f = CdrFollower::with_columns(&p, 100, cols(), PbxTimeZone::Fixed(0));
        append(&p, "1.1,L1,a.wav\n");
        f.poll().unwrap();
        // Rows appended after the last read, then logrotate (`create`):
        // renamed away, a new file made and written to.
        append(&p, "1.2,L2,b.wav\n1.3,L3,c.wav\n");
        std::fs::rename(&p, dir.path().join("Master.csv.1")).unwrap();
        append(&p, "2.1,L4,d.wav\n");
        f.poll().unwrap();
        for u in ["1.1", "1.2", "1.3", "2.1"] {
            assert!(f.get(u).is_some(), "{u}");
        }
        append(&p, "2.2,L5,e.wav\n");
        f.poll().unwrap();
        assert_eq!((f.len(), f.malformed), (5, 0));

        // Renamed away with a last line not ended, the new file not made
        // yet; then deleted (not renamed) and made again.
        append(&p, "3.1,L6,f.wav\n3.2,L7,g.wav");
        std::fs::rename(&p, dir.path().join("Master.csv.2")).unwrap();
        f.poll().unwrap();
        assert!(f.get("3.1").is_some(), "read from the renamed file");
        append(&p, "4.1,L8,h.wav\n");
        f.poll().unwrap();
        assert!(f.get("3.2").is_some(), "its last line, without a line end");
        assert!(f.get("4.1").is_some());
        append(&p, "4.2,L9,i.wav\n");
        std::fs::remove_file(&p).unwrap();
        append(&p, "5.1,LA,j.wav\n");
        f.poll().unwrap();
        assert!(f.get("4.2").is_some() && f.get("5.1").is_some());
        assert_eq!((f.len(), f.malformed), (10, 0));
        assert!(f.indexes_consistent());
        // A missing file with nothing followed yet: NotFound (no rows).
        let mut g = CdrFollower::new(&dir.path().join("none.csv"), 10, 0);
        assert_eq!(g.poll().unwrap_err().kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn a_line_break_inside_a_quoted_field_keeps_the_row() {
        // cdr_csv writes fields as they are: a caller name or a userfield
        // the dialplan set may hold a line break (LF, or CR LF).
        let broken = format!(
            "{}{}{}",
            r#""","5551234","2001","from-trunk","""Eve"#,
            "\r\nSmith\"\" <5551234>\",\"SIP/t-1\",\"SIP/2001-2\",\"Dial\",\"\",",
            r#""2026-11-24 10:00:00","2026-11-24 10:00:04","2026-11-24 10:01:00",60,56,"ANSWERED","D","6.1","note
second line""#,
        );
        let text = format!(
            "{}{broken}\n{}",
            leg("5.1", "200", "2026-11-24 09:00:00", "", 0, "NO ANSWER"),
            leg("7.1", "201", "2026-11-24 10:00:00", "", 0, "NO ANSWER"),
        );
        // Whole, and in pieces of every size up to 40 bytes (cut inside
        // the quotes, at the line breaks, between CR and LF).
        for piece in std::iter::once(text.len()).chain(1..=40) {
            let mut f = CdrFollower::new(Path::new("/x"), 100, 0);
            for c in text.as_bytes().chunks(piece) {
                f.feed(c);
            }
            assert_eq!((f.len(), f.malformed), (3, 0), "pieces of {piece}");
            let r = f.get("6.1").expect("the row with line breaks");
            assert_eq!(r.clid, "\"Eve\r\nSmith\" <5551234>");
            assert_eq!(r.userfield, "note\nsecond line");
            assert_eq!((r.disposition.as_str(), r.billsec), ("ANSWERED", Some(56)));
            assert!(f.get("5.1").is_some() && f.get("7.1").is_some());
        }
    }

    #[test]
    fn a_stray_quote_does_not_hold_up_the_rows_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("Master.csv");
        // A quote that never ends, then good rows: the rows after it are
        // found at the next read (Asterisk writes a record at once, so a
        // quote still open at two reads in a row is no record in writing).
        let stray = "\"\",\"1\",\"2\",\"c\",\"Bad <1>,\"\",\"\",\"\",\"\",\"2026-11-24 10:00:00\",\"\",\"2026-11-24 10:00:09\",9,0,\"NO ANSWER\",\"D\",\"8.1\",\"\"\n";
        let text = format!(
            "{}{stray}{}{}",
            leg("5.1", "200", "2026-11-24 09:00:00", "", 0, "NO ANSWER"),
            leg("7.1", "201", "2026-11-24 10:00:00", "", 0, "NO ANSWER"),
            leg("7.2", "202", "2026-11-24 10:00:00", "", 0, "NO ANSWER"),
        );
        std::fs::write(&p, &text).unwrap();
        let mut f = CdrFollower::new(&p, 100, 0);
        f.poll().unwrap();
        assert!(f.get("5.1").is_some());
        f.poll().unwrap();
        assert!(f.get("7.1").is_some() && f.get("7.2").is_some());
        assert_eq!(f.malformed, 1, "the line with the stray quote");
        // Fed without reads (no end of data): 64 KiB inside quotes is no
        // record either; the lines are taken one by one.
        let mut g = CdrFollower::new(Path::new("/x"), 10_000, 0);
        g.feed(stray.as_bytes());
        for i in 0..600 {
            g.feed(leg(&format!("9.{i}"), "1", "2026-11-24 10:00:00", "", 0, "BUSY").as_bytes());
        }
        assert!(
            g.get("9.0").is_some() && g.len() > 400,
            "{} {}",
            g.len(),
            g.malformed
        );
        assert!(g.indexes_consistent());
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

    /// A default-column Master.csv line: one leg of call `u`.
    fn leg(u: &str, dst: &str, start: &str, answer: &str, billsec: i64, disp: &str) -> String {
        format!(
            "\"\",\"5551234\",\"{dst}\",\"ext-group\",\"\",\"SIP/t-1\",\"SIP/{dst}-2\",\"Dial\",\"\",\
             \"{start}\",\"{answer}\",\"2026-11-24 10:05:00\",60,{billsec},\"{disp}\",\"D\",\"{u}\",\"\"\n"
        )
    }

    #[test]
    fn several_rows_of_one_uniqueid_answered_then_longest_billsec_in_either_order() {
        // A ring group: three phones rang, 201 answered; then a transfer
        // leg, answered for longer; the rows of one uniqueid, in the order
        // Asterisk wrote them (the unanswered legs last) and reversed.
        let rows = [
            leg("7.1", "200", "2026-11-24 10:00:00", "", 0, "NO ANSWER"),
            leg(
                "7.1",
                "201",
                "2026-11-24 10:00:01",
                "2026-11-24 10:00:05",
                40,
                "ANSWERED",
            ),
            leg(
                "7.1",
                "202",
                "2026-11-24 10:00:00",
                "2026-11-24 10:00:45",
                90,
                "ANSWERED",
            ),
            leg("7.1", "203", "2026-11-24 10:00:00", "", 0, "NO ANSWER"),
            leg("7.1", "204", "2026-11-24 10:00:00", "", 0, "BUSY"),
        ];
        let q = CdrQuery {
            uniqueid: "7.1".into(),
            files: vec!["in-x.wav".into()],
            around: None,
        };
        for reversed in [false, true] {
            let mut f = CdrFollower::new(Path::new("/x"), 100, 0);
            let mut order: Vec<&String> = rows.iter().collect();
            if reversed {
                order.reverse();
            }
            for r in order {
                f.feed(r.as_bytes());
            }
            assert_eq!(f.len(), 5, "every row kept");
            for r in [f.get("7.1").unwrap(), f.lookup(&q).unwrap()] {
                assert_eq!(
                    (r.dst.as_str(), r.disposition.as_str(), r.billsec),
                    ("202", "ANSWERED", Some(90)),
                    "reversed: {reversed}"
                );
                assert_eq!(r.answer.unwrap().to_rfc3339(), "2026-11-24T10:00:45.000Z");
                assert_eq!(r.start.unwrap().to_rfc3339(), "2026-11-24T10:00:00.000Z");
            }
            assert!(f.indexes_consistent());
        }
        // Only unanswered legs: the rule still chooses one (the earliest).
        let mut f = CdrFollower::new(Path::new("/x"), 100, 0);
        f.feed(leg("8.1", "300", "2026-11-24 10:00:03", "", 0, "NO ANSWER").as_bytes());
        f.feed(leg("8.1", "301", "2026-11-24 10:00:01", "", 0, "NO ANSWER").as_bytes());
        assert_eq!(f.get("8.1").unwrap().dst, "301");
    }

    #[test]
    fn rows_per_uniqueid_are_bounded_keeping_the_answered_one() {
        let mut f = CdrFollower::new(Path::new("/x"), 1000, 0);
        f.feed(
            leg(
                "9.1",
                "201",
                "2026-11-24 10:00:00",
                "2026-11-24 10:00:05",
                40,
                "ANSWERED",
            )
            .as_bytes(),
        );
        for i in 0..2 * MAX_ROWS_PER_ID {
            f.feed(
                leg(
                    "9.1",
                    &format!("3{i:02}"),
                    "2026-11-24 10:00:00",
                    "",
                    0,
                    "NO ANSWER",
                )
                .as_bytes(),
            );
        }
        assert_eq!(f.len(), MAX_ROWS_PER_ID);
        assert_eq!(f.get("9.1").unwrap().dst, "201");
        assert!(f.indexes_consistent());
        // The same line read twice is one row.
        let mut g = CdrFollower::new(Path::new("/x"), 10, 0);
        let l = leg("9.2", "201", "2026-11-24 10:00:00", "", 0, "NO ANSWER");
        g.feed(format!("{l}{l}").as_bytes());
        assert_eq!(g.len(), 1);
        // Bounded in all: the oldest uniqueids go with all their rows, the
        // one just read stays.
        let mut h = CdrFollower::new(Path::new("/x"), 3, 0);
        for (u, d) in [
            ("1.1", "a"),
            ("1.1", "b"),
            ("2.1", "c"),
            ("2.1", "d"),
            ("2.1", "e"),
        ] {
            h.feed(leg(u, d, "2026-11-24 10:00:00", "", 0, "NO ANSWER").as_bytes());
            assert!(h.len() <= 3 && h.indexes_consistent());
        }
        assert!(h.get("1.1").is_none());
        assert_eq!(h.rows_of("2.1").len(), 3);
        h.feed(leg("2.1", "f", "2026-11-24 10:00:00", "", 0, "NO ANSWER").as_bytes());
        assert_eq!((h.len(), h.rows_of("2.1").len()), (3, 3));
        assert!(h.indexes_consistent());
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
