//! Config values that have a syntax of their own, parsed once when the
//! config is read and stored parsed: the upload window, the Master.csv
//! columns, the CDR table name, the default direction contexts. The
//! runtime modules (delivery, the folder source's CDR stores) use these
//! types; this module uses nothing of theirs.

use std::collections::HashMap;
use std::str::FromStr;

/// A daily window (local time) in which uploads may start, `HH:MM-HH:MM`;
/// it may wrap midnight (`22:00-06:00`); equal ends mean all day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadWindow {
    /// Minutes after local midnight.
    pub start: u16,
    pub end: u16,
}

impl FromStr for UploadWindow {
    type Err = BadWindow;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadWindow(s.to_string());
        let hm = |x: &str| -> Option<u16> {
            let (h, m) = x.trim().split_once(':')?;
            let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
            (h < 24 && m < 60 || h == 24 && m == 0).then_some(h * 60 + m)
        };
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        Ok(UploadWindow {
            start: hm(a).ok_or_else(bad)?,
            end: hm(b).ok_or_else(bad)?,
        })
    }
}

impl UploadWindow {
    /// Whether `minute` (after local midnight) is inside.
    pub fn contains(&self, minute: u16) -> bool {
        let (s, e) = (self.start % 1440, self.end % 1440);
        match s.cmp(&e) {
            std::cmp::Ordering::Equal => true,
            std::cmp::Ordering::Less => (s..e).contains(&minute),
            std::cmp::Ordering::Greater => minute >= s || minute < e,
        }
    }
}

/// A window that is not `HH:MM-HH:MM`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad upload window {0:?}: expected \"HH:MM-HH:MM\" (local time)")]
pub struct BadWindow(pub String);

/// Column names understood in `cdr_csv_columns` besides [`DEFAULT_COLUMNS`]
/// (`""` or `"-"` skips a column): fields a `cdr_custom.conf` template
/// commonly adds.
pub const EXTRA_COLUMNS: &[&str] = &["did", "cnum", "cnam", "outbound_cnum", "recordingfile"];

/// Asterisk's default Master.csv columns (cdr_csv.conf without options:
/// the first 18), followed by the three `newcdrcolumns = yes` adds.
pub const DEFAULT_COLUMNS: &[&str] = &[
    "accountcode",
    "src",
    "dst",
    "dcontext",
    "clid",
    "channel",
    "dstchannel",
    "lastapp",
    "lastdata",
    "start",
    "answer",
    "end",
    "duration",
    "billsec",
    "disposition",
    "amaflags",
    "uniqueid",
    "userfield",
    // cdr_csv.c with newcdrcolumns = yes appends these three, in this order.
    "peeraccount",
    "linkedid",
    "sequence",
];

/// Where each field is in a Master.csv line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvColumns {
    idx: HashMap<String, usize>,
}

impl Default for CsvColumns {
    fn default() -> Self {
        CsvColumns::new(DEFAULT_COLUMNS).unwrap_or(CsvColumns {
            idx: HashMap::new(),
        })
    }
}

impl CsvColumns {
    /// From column names in file order. Errors name the first problem: an
    /// unknown name, a repeated one, or no `uniqueid`.
    pub fn new<S: AsRef<str>>(names: &[S]) -> Result<Self, String> {
        let mut idx = HashMap::new();
        for (i, n) in names.iter().enumerate() {
            let n = n.as_ref();
            if n.is_empty() || n == "-" {
                continue;
            }
            let n = if n == "calldate" { "start" } else { n };
            if !DEFAULT_COLUMNS.contains(&n) && !EXTRA_COLUMNS.contains(&n) {
                return Err(format!(
                    "`{n}` is not a CDR column ({}, or \"-\" to skip one)",
                    DEFAULT_COLUMNS
                        .iter()
                        .chain(EXTRA_COLUMNS)
                        .copied()
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            if idx.insert(n.to_string(), i).is_some() {
                return Err(format!("`{n}` is listed twice"));
            }
        }
        if !idx.contains_key("uniqueid") {
            return Err("must contain `uniqueid` (recordings are matched by it)".into());
        }
        Ok(CsvColumns { idx })
    }

    /// The field `name` of a split line (empty when the line lacks it or
    /// the name is not a column).
    pub fn get(&self, f: &[String], name: &str) -> String {
        self.idx
            .get(name)
            .and_then(|&i| f.get(i))
            .cloned()
            .unwrap_or_default()
    }
}

/// `table` is a plain SQL identifier (`cdr`, `asteriskcdrdb.cdr` is given
/// through the URL's database instead).
pub fn valid_table(table: &str) -> bool {
    !table.is_empty()
        && table.len() <= 64
        && table
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$')
}

/// `sources.folder.inbound_contexts` by default (dcontext prefixes).
pub(crate) const INBOUND_CONTEXTS: &[&str] =
    &["from-trunk", "from-pstn", "ext-did", "from-did-direct"];
/// `sources.folder.outbound_contexts` by default.
pub(crate) const OUTBOUND_CONTEXTS: &[&str] =
    &["outrt-", "macro-dialout-trunk", "outbound-allroutes"];
/// `sources.folder.internal_contexts` by default.
pub(crate) const INTERNAL_CONTEXTS: &[&str] = &["from-internal", "ext-local", "from-sip-external"];

/// Owned strings of a default list.
pub(crate) fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn values_with_a_syntax_are_stored_parsed() {
        let text = "[cloud]\nupload_window = \"22:00-06:00\"\n\
                    [sources.folder]\ncdr_csv_columns = [\"uniqueid\", \"-\", \"src\"]\n";
        let none: [(String, String); 0] = [];
        let c = Config::from_toml_str("t.toml", text, none.clone()).unwrap();
        assert_eq!(
            c.cloud.upload_window,
            Some(UploadWindow {
                start: 22 * 60,
                end: 6 * 60
            })
        );
        let cols = &c.sources.folder.cdr_csv_columns;
        let line: Vec<String> = ["u1", "x", "1001"].map(String::from).to_vec();
        assert_eq!(cols.get(&line, "src"), "1001");
        assert_eq!(cols.get(&line, "uniqueid"), "u1");
        let d = Config::default();
        assert_eq!(d.cloud.upload_window, None);
        assert_eq!(d.sources.folder.cdr_csv_columns, CsvColumns::default());
        let bad =
            Config::from_toml_str("t.toml", "[cloud]\nupload_window = \"25:00-06:00\"\n", none);
        assert!(bad.unwrap_err().to_string().contains("upload_window"));
    }

    #[test]
    fn a_bad_window_says_what_is_expected() {
        let e = "9-5".parse::<UploadWindow>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "bad upload window \"9-5\": expected \"HH:MM-HH:MM\" (local time)"
        );
    }
}
