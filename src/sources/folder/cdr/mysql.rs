//! FreePBX's `asteriskcdrdb.cdr` table (MariaDB/MySQL) as a CDR store.
//!
//! Client: `mysql_async` without TLS and with the pure-Rust deflate backend
//! (`default-features = false, features = ["minimal-rust"]`). It was chosen
//! over `sqlx` (mysql) because it is the lighter of the two here: no macros,
//! no `rsa`/migration/any-driver layers, about 40 crates on top of what
//! pbx-edge already builds, and it is the long-maintained async MySQL client
//! that `sqlx`'s own MySQL driver grew next to. The CDR database normally is
//! on the PBX itself or on its LAN (FreePBX binds it to localhost), so a
//! plaintext connection (TCP or `?socket=/run/mysqld/mysqld.sock`) is what is
//! needed; TLS can be added with the crate's `rustls-tls` feature later.
//!
//! Connection: a URL `mysql://user:password@host:3306/asteriskcdrdb` read from
//! a file (`cdr_db_url_file`, like `cloud.token_file`); the password never
//! appears in logs, `/status` or errors (masked as `***`).
//!
//! The folder thread is synchronous: the store owns a small current-thread
//! tokio runtime and one connection, re-established after any error. Every
//! round trip is bounded ([`QUERY_TIMEOUT`]). Which columns exist is read from
//! `information_schema` at connect time, so older FreePBX schemas (without
//! `linkedid`, `did`, `outbound_cnum`, …) work: a missing column reads as empty.
//!
//! Query: one statement per batch of at most 100 recordings, matching
//! `uniqueid IN (…) OR linkedid IN (…) OR recordingfile IN (…)` (the base
//! name, or a full path ending in it), bounded to a calldate window of ±1 day
//! around the file names' start times when every recording has one (FreePBX
//! indexes `calldate`). Which row wins is [`super::best_row`]'s rule.
//! `calldate` is the PBX's local time ([`PbxTimeZone`]); the table has no
//! answer/end columns: answer = calldate + duration − billsec (when billsec >
//! 0), end = calldate + duration.

use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, Value};

use super::{best_row, mask, CdrError, CdrQuery, CdrRow, CdrStore, PbxTimeZone};

/// Bound of a connect + query round trip.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Columns read (those present in the table).
const WANTED: &[&str] = &[
    "calldate",
    "clid",
    "src",
    "dst",
    "dcontext",
    "channel",
    "dstchannel",
    "duration",
    "billsec",
    "disposition",
    "uniqueid",
    "userfield",
    "did",
    "recordingfile",
    "cnum",
    "cnam",
    "outbound_cnum",
    "linkedid",
];

/// The CDR table in MariaDB/MySQL.
pub struct MysqlStore {
    rt: tokio::runtime::Runtime,
    opts: Opts,
    /// Every form of the password that could appear in a message.
    secrets: Vec<String>,
    table: String,
    tz: PbxTimeZone,
    conn: Option<Conn>,
    /// Columns of `WANTED` the table has (read at connect).
    present: Vec<&'static str>,
    host: String,
}

impl std::fmt::Debug for MysqlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MysqlStore")
            .field("host", &self.host)
            .field("table", &self.table)
            .finish()
    }
}

pub use crate::config::valid_table;

impl MysqlStore {
    /// From the connection URL (the contents of `cdr_db_url_file`). Does not
    /// connect yet: a database that is down at start is reported by
    /// [`CdrStore::find`] and retried.
    pub fn new(url: &str, table: &str, tz: PbxTimeZone) -> Result<Self, CdrError> {
        let url = url.trim();
        let mut secrets = Vec::new();
        if let Ok(u) = url::Url::parse(url) {
            if let Some(p) = u.password() {
                secrets.push(p.to_string());
                if let Ok(d) = percent_decode(p) {
                    secrets.push(d);
                }
            }
        }
        secrets.retain(|s| !s.is_empty());
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        let masked = |m: String| secrets.iter().fold(m, |acc, s| mask(&acc, s));
        if !url.starts_with("mysql://") && !url.starts_with("mariadb://") {
            return Err(CdrError(
                "the CDR database URL must start with mysql:// (mysql://user:password@host:3306/asteriskcdrdb)".into(),
            ));
        }
        let url = url.replacen("mariadb://", "mysql://", 1);
        let opts = Opts::from_url(&url)
            .map_err(|e| CdrError(masked(format!("the CDR database URL is not valid: {e}"))))?;
        if opts.db_name().is_none() {
            return Err(CdrError(
                "the CDR database URL names no database (…/asteriskcdrdb)".into(),
            ));
        }
        if !valid_table(table) {
            return Err(CdrError(format!("`{table}` is not a table name")));
        }
        let host = match opts.socket() {
            Some(s) => s.to_string(),
            None => format!("{}:{}", opts.ip_or_hostname(), opts.tcp_port()),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| CdrError(format!("cannot start the CDR database client: {e}")))?;
        Ok(MysqlStore {
            rt,
            opts,
            secrets,
            table: table.to_string(),
            tz,
            conn: None,
            present: Vec::new(),
            host,
        })
    }

    fn masked(&self, m: String) -> String {
        self.secrets.iter().fold(m, |acc, s| mask(&acc, s))
    }

    fn has(&self, c: &str) -> bool {
        self.present.contains(&c)
    }

    fn sql(&self, batch: &[CdrQuery]) -> (String, Vec<Value>) {
        let cols: Vec<String> = WANTED
            .iter()
            .map(|c| match (*c, self.has(c)) {
                ("calldate", true) => "DATE_FORMAT(calldate, '%Y-%m-%d %H:%i:%s')".to_string(),
                (c, true) => format!("CAST(`{c}` AS CHAR)"),
                (_, false) => "NULL".to_string(),
            })
            .collect();
        let mut params: Vec<Value> = Vec::new();
        let mut ors: Vec<String> = Vec::new();
        let ids: Vec<&str> = batch.iter().map(|q| q.uniqueid.as_str()).collect();
        let files: Vec<&str> = batch
            .iter()
            .flat_map(|q| q.files.iter().map(String::as_str))
            .collect();
        let list = |n: usize| vec!["?"; n].join(",");
        ors.push(format!("uniqueid IN ({})", list(ids.len())));
        params.extend(ids.iter().map(|s| Value::from(*s)));
        if self.has("linkedid") {
            ors.push(format!("linkedid IN ({})", list(ids.len())));
            params.extend(ids.iter().map(|s| Value::from(*s)));
        }
        if self.has("recordingfile") && !files.is_empty() {
            ors.push(format!(
                "SUBSTRING_INDEX(recordingfile, '/', -1) IN ({})",
                list(files.len())
            ));
            params.extend(files.iter().map(|s| Value::from(*s)));
        }
        let mut sql = format!(
            "SELECT {} FROM `{}` WHERE ({})",
            cols.join(", "),
            self.table,
            ors.join(" OR ")
        );
        let times: Option<Vec<i64>> = batch
            .iter()
            .map(|q| q.around.map(|t| t.as_micros() / 1_000_000))
            .collect();
        if let (Some(times), true) = (times, self.has("calldate")) {
            let lo = times.iter().min().copied().unwrap_or(0) - 86_400;
            let hi = times.iter().max().copied().unwrap_or(0) + 86_400;
            // The file names' times are UTC here; calldate is local: a day's
            // margin covers every offset.
            sql.push_str(" AND calldate BETWEEN FROM_UNIXTIME(?) AND FROM_UNIXTIME(?)");
            params.push(Value::from(lo.max(0)));
            params.push(Value::from(hi.max(0)));
        }
        sql.push_str(" LIMIT 5000");
        (sql, params)
    }

    fn to_row(&self, vals: Vec<Value>) -> CdrRow {
        let s: Vec<String> = vals
            .into_iter()
            .map(|v| match v {
                Value::Bytes(b) => String::from_utf8_lossy(&b).into_owned(),
                Value::Int(i) => i.to_string(),
                Value::UInt(u) => u.to_string(),
                _ => String::new(),
            })
            .collect();
        let g = |name: &str| {
            WANTED
                .iter()
                .position(|c| *c == name)
                .and_then(|i| s.get(i))
                .cloned()
                .unwrap_or_default()
        };
        let start = super::parse_cdr_datetime(&g("calldate")).map(|t| self.tz.to_utc(t));
        let duration: Option<i64> = g("duration").trim().parse().ok();
        let billsec: Option<i64> = g("billsec").trim().parse().ok();
        let end = match (start, duration) {
            (Some(t), Some(d)) => Some(t.add_micros(d * 1_000_000)),
            _ => None,
        };
        let answer = match (start, duration, billsec) {
            (Some(t), Some(d), Some(b)) if b > 0 => Some(t.add_micros((d - b).max(0) * 1_000_000)),
            _ => None,
        };
        CdrRow {
            src: g("src"),
            dst: g("dst"),
            dcontext: g("dcontext"),
            clid: g("clid"),
            channel: g("channel"),
            dstchannel: g("dstchannel"),
            start,
            answer,
            end,
            duration,
            billsec,
            disposition: g("disposition"),
            uniqueid: g("uniqueid"),
            linkedid: g("linkedid"),
            userfield: g("userfield"),
            did: g("did"),
            cnum: g("cnum"),
            cnam: g("cnam"),
            outbound_cnum: g("outbound_cnum"),
            recordingfile: g("recordingfile"),
        }
    }

    fn find_batch(&mut self, batch: &[CdrQuery]) -> Result<Vec<CdrRow>, String> {
        let opts = self.opts.clone();
        let table = self.table.clone();
        let mut conn = self.conn.take();
        let mut present = std::mem::take(&mut self.present);
        // Connect (and read the columns) if needed.
        let res: Result<Conn, String> = self.rt.block_on(async {
            tokio::time::timeout(QUERY_TIMEOUT, async {
                if let Some(c) = conn.take() {
                    return Ok(c);
                }
                let mut c = Conn::new(opts).await.map_err(|e| e.to_string())?;
                let cols: Vec<String> = c
                    .exec(
                        "SELECT COLUMN_NAME FROM information_schema.COLUMNS \
                         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?",
                        (table.clone(),),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                if cols.is_empty() {
                    return Err(format!("table `{table}` not found in the CDR database"));
                }
                present = WANTED
                    .iter()
                    .copied()
                    .filter(|w| cols.iter().any(|c| c.eq_ignore_ascii_case(w)))
                    .collect();
                if !present.contains(&"uniqueid") {
                    return Err(format!("table `{table}` has no uniqueid column"));
                }
                Ok(c)
            })
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {}s", QUERY_TIMEOUT.as_secs())))
        });
        self.present = present;
        let mut c = res?;
        let (sql, params) = self.sql(batch);
        let res: Result<Vec<Vec<Value>>, String> = self.rt.block_on(async {
            tokio::time::timeout(QUERY_TIMEOUT, async {
                let rows: Vec<mysql_async::Row> =
                    c.exec(sql, params).await.map_err(|e| e.to_string())?;
                Ok(rows.into_iter().map(mysql_async::Row::unwrap).collect())
            })
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {}s", QUERY_TIMEOUT.as_secs())))
        });
        match res {
            Ok(rows) => {
                self.conn = Some(c);
                Ok(rows.into_iter().map(|v| self.to_row(v)).collect())
            }
            Err(e) => {
                let _g = self.rt.enter();
                drop(c);
                Err(e)
            }
        }
    }
}

impl Drop for MysqlStore {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            let _ = self.rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(2), c.disconnect()).await
            });
        }
        // The password's forms kept for masking messages.
        zeroize::Zeroize::zeroize(&mut self.secrets);
    }
}

impl CdrStore for MysqlStore {
    fn describe(&self) -> String {
        format!("CDR database {} table {}", self.host, self.table)
    }

    fn find(&mut self, queries: &[CdrQuery]) -> Result<Vec<Option<CdrRow>>, CdrError> {
        let mut out = Vec::with_capacity(queries.len());
        for batch in queries.chunks(100) {
            let rows = self.find_batch(batch).map_err(|e| {
                CdrError(self.masked(format!(
                    "CDR database {} table {}: {e}",
                    self.host, self.table
                )))
            })?;
            out.extend(batch.iter().map(|q| best_row(&rows, q)));
        }
        Ok(out)
    }
}

fn percent_decode(s: &str) -> Result<String, std::string::FromUtf8Error> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_checked_and_password_masked() {
        let e = MysqlStore::new("postgres://u:pw@h/db", "cdr", PbxTimeZone::Local).unwrap_err();
        assert!(!e.0.contains("pw"));
        let e =
            MysqlStore::new("mysql://u:s3cr%21t@h:3306/", "cdr", PbxTimeZone::Local).unwrap_err();
        assert!(e.0.contains("no database"), "{e}");
        let s = MysqlStore::new(
            "mysql://u:s3cr%21t@h:3306/asteriskcdrdb",
            "cdr",
            PbxTimeZone::Local,
        )
        .unwrap();
        assert_eq!(s.masked("x s3cr!t y s3cr%21t".into()), "x *** y ***");
        assert!(!format!("{s:?}").contains("s3cr"));
        assert!(MysqlStore::new("mysql://u@h/db", "cdr; DROP", PbxTimeZone::Local).is_err());
        assert_eq!(percent_decode("a%20b%2").unwrap(), "a b%2");
    }
}
