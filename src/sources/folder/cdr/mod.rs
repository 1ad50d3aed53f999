//! Call detail records (CDR) for the folder source: where a PBX recording's
//! numbers, times, direction and disposition come from.
//!
//! A CDR store answers "which row belongs to this recording?" for a batch of
//! recordings ([`CdrStore::find`]). Two stores exist: Asterisk's `Master.csv`
//! followed as it grows ([`csv::CsvStore`]) and FreePBX's
//! `asteriskcdrdb.cdr` table in MariaDB/MySQL ([`mysql::MysqlStore`]). A new
//! store is one new module implementing the trait plus its config keys.
//!
//! Matching (every store): a row whose `recordingfile` names one of the
//! recording's files (base name, or a path ending in it) is the best match,
//! then a row whose `uniqueid` is the recording's unique id, then one whose
//! `linkedid` is. Among several rows of one call (ring groups, queues,
//! transfers make one row per leg) an `ANSWERED` row wins, then the longest
//! `billsec`, then the earliest.
//!
//! Direction: see [`DirectionRules`].
//!
//! Store errors never lose a recording: the folder source keeps the
//! recording waiting and reports the store as not ready until it answers
//! again.

pub mod csv;
pub mod mysql;

use pbx_core::Timestamp;

/// One CDR row: the fields pbx-edge uses. Times are UTC.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CdrRow {
    pub src: String,
    pub dst: String,
    pub dcontext: String,
    pub clid: String,
    pub channel: String,
    pub dstchannel: String,
    pub start: Option<Timestamp>,
    pub answer: Option<Timestamp>,
    pub end: Option<Timestamp>,
    pub duration: Option<i64>,
    pub billsec: Option<i64>,
    pub disposition: String,
    pub uniqueid: String,
    pub linkedid: String,
    pub userfield: String,
    /// FreePBX: the DID the call came in on (set only by the inbound routes).
    pub did: String,
    /// FreePBX: the caller's own number (the extension on outgoing calls).
    pub cnum: String,
    pub cnam: String,
    /// FreePBX: the caller id sent out a trunk (set only by outbound routes).
    pub outbound_cnum: String,
    /// FreePBX: the MixMonitor file of this call.
    pub recordingfile: String,
}

/// What is asked of a store for one recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CdrQuery {
    /// The PBX unique id from the file name (or the stem).
    pub uniqueid: String,
    /// Base names of the recording's files, and the stem with `.wav`.
    pub files: Vec<String>,
    /// Start time from the file name (UTC), to bound a database search.
    pub around: Option<Timestamp>,
}

/// A store cannot answer now (down, unreadable): recordings wait.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CdrError(pub String);

/// A source of CDR rows.
pub trait CdrStore: Send + std::fmt::Debug {
    /// For logs and `/readyz`: `"Master.csv /var/log/…"`, `"MariaDB cdr"`
    /// (never credentials).
    fn describe(&self) -> String;
    /// The best row for each query (same order), `None` where no row exists
    /// (yet). `Err`: the store cannot answer now.
    fn find(&mut self, queries: &[CdrQuery]) -> Result<Vec<Option<CdrRow>>, CdrError>;
    /// How a long read reports the folder thread alive and learns to stop
    /// (a stop may cut it short with an error). Stores whose reads are
    /// bounded otherwise ignore it.
    fn set_pulse(&mut self, _pulse: crate::sources::folder::Pulse) {}
}

/// How the PBX's local times (file names, CDR) become UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PbxTimeZone {
    /// A fixed offset, seconds east of UTC.
    Fixed(i64),
    /// This machine's time zone (`TZ`, `/etc/localtime`), daylight saving
    /// time included: for a pbx-edge running beside or on the PBX.
    Local,
}

impl Default for PbxTimeZone {
    fn default() -> Self {
        PbxTimeZone::Fixed(0)
    }
}

impl PbxTimeZone {
    /// `naive` is a local wall-clock time read as if it were UTC.
    pub fn to_utc(self, naive: Timestamp) -> Timestamp {
        match self {
            PbxTimeZone::Fixed(off) => naive.add_micros(-off * 1_000_000),
            PbxTimeZone::Local => {
                let secs = naive.as_micros().div_euclid(1_000_000);
                let frac = naive.as_micros().rem_euclid(1_000_000);
                let days = secs.div_euclid(86_400);
                let sod = secs.rem_euclid(86_400);
                let (y, m, d) = pbx_core::time::civil_from_days(days);
                // SAFETY: `tm` is a plain C struct, zeroed then filled;
                // mktime only reads and normalises it.
                let mut tm: libc::tm = unsafe { std::mem::zeroed() };
                tm.tm_year = (y - 1900) as libc::c_int;
                tm.tm_mon = (m - 1) as libc::c_int;
                tm.tm_mday = d as libc::c_int;
                tm.tm_hour = (sod / 3600) as libc::c_int;
                tm.tm_min = (sod / 60 % 60) as libc::c_int;
                tm.tm_sec = (sod % 60) as libc::c_int;
                tm.tm_isdst = -1;
                // SAFETY: a valid, initialised `tm`.
                let t = unsafe { libc::mktime(&mut tm) };
                if t == -1 {
                    naive
                } else {
                    Timestamp::from_micros(t * 1_000_000 + frac)
                }
            }
        }
    }
}

/// `YYYY-MM-DD HH:MM:SS` (Asterisk CDR) → timestamp (as UTC); empty → `None`.
pub fn parse_cdr_datetime(s: &str) -> Option<Timestamp> {
    let s = s.trim();
    let (d, t) = s.split_once(' ')?;
    let mut dp = d.split('-');
    let mut tp = t.split(':');
    let y = digits(dp.next()?)?;
    let mo = digits(dp.next()?)?;
    let da = digits(dp.next()?)?;
    let h = digits(tp.next()?)?;
    let mi = digits(tp.next()?)?;
    let sec = digits(tp.next()?.split('.').next()?)?;
    Timestamp::from_civil(y, mo, da, h, mi, sec)
}

/// A non-empty run of ASCII digits as a number.
pub fn digits(s: &str) -> Option<i64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// How well a row matches a query: 3 recordingfile, 2 uniqueid, 1 linkedid.
pub(crate) fn match_rank(row: &CdrRow, q: &CdrQuery) -> u8 {
    let rf = row.recordingfile.trim();
    if !rf.is_empty() {
        let base = rf.rsplit('/').next().unwrap_or(rf);
        if q.files.iter().any(|f| f == base) {
            return 3;
        }
    }
    if !row.uniqueid.is_empty() && row.uniqueid == q.uniqueid {
        return 2;
    }
    if !row.linkedid.is_empty() && row.linkedid == q.uniqueid {
        return 1;
    }
    0
}

/// The best of `rows` for `q` (see the module doc), if any matches.
pub fn best_row<'a>(rows: impl IntoIterator<Item = &'a CdrRow>, q: &CdrQuery) -> Option<CdrRow> {
    /// rank, answered, billsec, −start
    type Score = (u8, bool, i64, i64);
    let mut best: Option<(&CdrRow, Score)> = None;
    for r in rows {
        let rank = match_rank(r, q);
        if rank == 0 {
            continue;
        }
        let score = (
            rank,
            r.disposition.eq_ignore_ascii_case("ANSWERED"),
            r.billsec.unwrap_or(0),
            // earlier start wins: negate
            -r.start.map(|t| t.as_micros()).unwrap_or(0),
        );
        if best.as_ref().is_none_or(|(_, s)| score > *s) {
            best = Some((r, score));
        }
    }
    best.map(|(r, _)| r.clone())
}

/// How the direction of a call is read from its CDR row.
///
/// FreePBX sets `did` only on calls that came in through an inbound route
/// (`from-trunk`/`from-pstn` → `ext-did`), and `outbound_cnum` only in
/// `macro-dialout-trunk`, i.e. on calls that left through an outbound route
/// (`outrt-N`). So, in order:
/// 1. `did` not empty, or `dcontext` starts with one of `inbound_contexts` → inbound;
/// 2. `outbound_cnum` not empty, or `dcontext` starts with one of
///    `outbound_contexts` → outbound;
/// 3. the recording's FreePBX file type (`out`, `internal`, `conf`,
///    `external`/`in`, `q`, `rg`; not `exten`: [`crate::sources::folder::direction_of`]);
/// 4. `dcontext` starts with one of `internal_contexts` → internal;
/// 5. unknown: the parties' numbers decide later (`[roles]`,
///    [`crate::recording::RoleRules::classify`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectionRules {
    pub inbound_contexts: Vec<String>,
    pub outbound_contexts: Vec<String>,
    pub internal_contexts: Vec<String>,
}

impl Default for DirectionRules {
    fn default() -> Self {
        use crate::config::{strings, INBOUND_CONTEXTS, INTERNAL_CONTEXTS, OUTBOUND_CONTEXTS};
        DirectionRules {
            inbound_contexts: strings(INBOUND_CONTEXTS),
            outbound_contexts: strings(OUTBOUND_CONTEXTS),
            internal_contexts: strings(INTERNAL_CONTEXTS),
        }
    }
}

fn starts_with_any(s: &str, prefixes: &[String]) -> bool {
    !s.is_empty()
        && prefixes
            .iter()
            .any(|p| !p.is_empty() && s.starts_with(p.as_str()))
}

impl DirectionRules {
    /// The direction (CONTRACT §3) from the row and the file name's type.
    pub fn classify(&self, row: Option<&CdrRow>, file_direction: &'static str) -> &'static str {
        if let Some(r) = row {
            if !r.did.trim().is_empty() || starts_with_any(&r.dcontext, &self.inbound_contexts) {
                return "inbound";
            }
            if !r.outbound_cnum.trim().is_empty()
                || starts_with_any(&r.dcontext, &self.outbound_contexts)
            {
                return "outbound";
            }
        }
        if file_direction != "unknown" {
            return file_direction;
        }
        if row.is_some_and(|r| starts_with_any(&r.dcontext, &self.internal_contexts)) {
            return "internal";
        }
        "unknown"
    }
}

/// Replaces `secret` in `text` (error messages of a client that may quote
/// its connection string).
pub fn mask(text: &str, secret: &str) -> String {
    if secret.is_empty() {
        text.to_string()
    } else {
        text.replace(secret, "***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(uid: &str, linked: &str, rf: &str, disp: &str, billsec: i64) -> CdrRow {
        CdrRow {
            uniqueid: uid.into(),
            linkedid: linked.into(),
            recordingfile: rf.into(),
            disposition: disp.into(),
            billsec: Some(billsec),
            ..CdrRow::default()
        }
    }

    #[test]
    fn best_row_prefers_recordingfile_then_uniqueid_then_answered() {
        let q = CdrQuery {
            uniqueid: "1.1".into(),
            files: vec!["x.wav".into()],
            around: None,
        };
        let rows = [
            row("1.2", "1.1", "", "ANSWERED", 50),
            row("1.1", "1.1", "", "NO ANSWER", 0),
            row(
                "1.3",
                "1.1",
                "/var/spool/asterisk/monitor/2026/x.wav",
                "NO ANSWER",
                0,
            ),
        ];
        assert_eq!(best_row(&rows, &q).unwrap().uniqueid, "1.3");
        assert_eq!(best_row(&rows[..2], &q).unwrap().uniqueid, "1.1");
        assert_eq!(best_row(&rows[..1], &q).unwrap().uniqueid, "1.2");
        let other = CdrQuery {
            uniqueid: "9".into(),
            files: vec![],
            around: None,
        };
        assert!(best_row(&rows, &other).is_none());
    }

    #[test]
    fn direction_rules() {
        let d = DirectionRules::default();
        let mut r = CdrRow {
            dcontext: "from-internal".into(),
            ..CdrRow::default()
        };
        assert_eq!(d.classify(Some(&r), "unknown"), "internal");
        assert_eq!(d.classify(Some(&r), "outbound"), "outbound");
        r.outbound_cnum = "5550100".into();
        assert_eq!(d.classify(Some(&r), "unknown"), "outbound");
        r.did = "5551000".into();
        assert_eq!(d.classify(Some(&r), "outbound"), "inbound");
        assert_eq!(d.classify(None, "unknown"), "unknown");
        let r = CdrRow {
            dcontext: "ext-did-0001".into(),
            ..CdrRow::default()
        };
        assert_eq!(d.classify(Some(&r), "unknown"), "inbound");
        let n = Timestamp::from_secs(1_795_256_102);
        assert_eq!(
            PbxTimeZone::Fixed(3600).to_utc(n),
            Timestamp::from_secs(1_795_252_502)
        );
        assert_eq!(pbx_core::time::civil_from_days(0), (1970, 1, 1));
        assert_eq!(pbx_core::time::civil_from_days(20_781), (2026, 11, 24));
        assert_eq!(
            mask("mysql://u:s3cret@h/db: refused", "s3cret"),
            "mysql://u:***@h/db: refused"
        );
    }
}
