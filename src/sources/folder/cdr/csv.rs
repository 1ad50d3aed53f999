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
        let text = text_of(bytes);
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

/// A record's text: UTF-8, or (a file written in Latin-1: Asterisk writes
/// the caller ID's bytes as the channel gave them) each byte its Latin-1
/// character, so that `José` stays `José` instead of `Jos\u{fffd}`.
fn text_of(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(s) => std::borrow::Cow::Borrowed(s),
        Err(_) => std::borrow::Cow::Owned(bytes.iter().map(|b| char::from(*b)).collect()),
    }
}

#[cfg(test)]
#[path = "csv_tests.rs"]
mod tests;
