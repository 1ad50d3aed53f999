//! `pbx-edge spool list|retry|purge|export`: the queue seen and changed from
//! the command line, and a recording handed to an operator in plaintext.
//!
//! In: the parsed command ([`SpoolCommand`]) and the config file it names.
//! Out: a listing on stdout (text or JSON), or the changed queue; the exit
//! code. Works while the daemon runs (SQLite serialises the writers).

use std::process::ExitCode;

use crate::cli::SpoolCommand;
use crate::config::Config;
use crate::delivery;
use crate::spool::*;

/// `pbx-edge spool list|retry|purge`: works while the daemon runs (both use
/// the database; SQLite serialises the writers).
pub fn run(cmd: SpoolCommand, config: Option<std::path::PathBuf>) -> anyhow::Result<ExitCode> {
    use anyhow::Context as _;
    let cfg = match Config::load(config.as_deref()) {
        Ok(c) => c,
        Err(errs) => {
            eprintln!("{errs}");
            return Ok(ExitCode::from(1));
        }
    };
    let dir = &cfg.spool.dir;
    if !dir.exists() {
        if let SpoolCommand::List(args) = &cmd {
            // No daemon has run with this spool yet: nothing in it.
            if args.json {
                println!("{}", list_json(&[], now_ms()));
            } else {
                println!("0 recordings ({} does not exist yet)", dir.display());
            }
            return Ok(ExitCode::SUCCESS);
        }
    }
    if !dir.is_dir() {
        eprintln!(
            "pbx-edge spool: the spool directory {} does not exist (spool.dir)",
            dir.display()
        );
        return Ok(ExitCode::from(1));
    }
    if let SpoolCommand::Export { id, out, .. } = &cmd {
        // Files only: no database needed, nothing in the spool changes.
        return Ok(match export(dir, id, out, cfg.spool.keys.as_deref()) {
            Ok(()) => {
                println!("{id}: written to {}", out.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("pbx-edge spool export: {e}");
                ExitCode::from(1)
            }
        });
    }
    let mut spool = match Spool::open(dir).and_then(|s| s.check_integrity().map(|()| s)) {
        Ok(s) => s,
        Err(e) if e.is_corrupt() => {
            // Repaired here only while no daemon delivers from this spool
            // (it repairs its own, and two repairs must not cross).
            match delivery::take_lock(dir) {
                Ok(lock) => {
                    let r = Spool::open_repairing(dir);
                    drop(lock);
                    let (s, repair) = r.context("cannot repair the spool database")?;
                    if let Some(r) = repair {
                        eprintln!("pbx-edge spool: {r}");
                    }
                    s
                }
                Err(delivery::DeliveryError::Locked(_)) => {
                    eprintln!(
                        "pbx-edge spool: {e}; the running daemon moves it aside and rebuilds it from the recordings on disk: try again in a few seconds"
                    );
                    return Ok(ExitCode::from(1));
                }
                Err(le) => return Err(le.into()),
            }
        }
        Err(e) => return Err(e).context("cannot open the spool"),
    };
    let now = now_ms();
    match cmd {
        SpoolCommand::List(args) => {
            // Pairs the daemon has not adopted yet (or no daemon runs) show too.
            spool.scan(now)?;
            let entries = spool.list()?;
            if args.json {
                println!("{}", list_json(&entries, now));
                return Ok(ExitCode::SUCCESS);
            }
            print!("{}", render_list(&entries, now));
            let depth = spool.depth_by_state()?;
            let summary: Vec<String> = depth
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(s, n)| format!("{n} {}", s.as_str()))
                .collect();
            println!(
                "{} recordings{}{}",
                entries.len(),
                if summary.is_empty() { "" } else { ": " },
                summary.join(", ")
            );
        }
        SpoolCommand::Retry { id, all_failed, .. } => match (id, all_failed) {
            (None, true) => {
                let n = spool.retry_all_failed(now)?;
                crate::spool::poke(dir);
                println!("{n} failed recordings queued again");
            }
            (Some(id), false)
                if spool.get(&id)?.is_some_and(|e| {
                    matches!(
                        e.state,
                        crate::spool::State::Delivered
                            | crate::spool::State::Filtered
                            | crate::spool::State::Recorded
                    )
                }) =>
            {
                // (It said "queued" and did nothing.)
                let state = spool.get(&id)?.map(|e| e.state.as_str()).unwrap_or("");
                eprintln!("pbx-edge spool retry: {id} is {state}: nothing to retry");
                return Ok(ExitCode::from(1));
            }
            (Some(id), false) => match spool.retry(&id, now) {
                Ok(()) => {
                    crate::spool::poke(dir);
                    println!("{id}: queued for the next attempt")
                }
                Err(e @ SpoolError::NotFound(_)) => {
                    eprintln!("pbx-edge spool retry: {e}");
                    return Ok(ExitCode::from(1));
                }
                Err(e) => return Err(e.into()),
            },
            _ => {
                eprintln!("pbx-edge spool retry: give a recording ID or --all-failed (not both)");
                return Ok(ExitCode::from(2));
            }
        },
        SpoolCommand::Purge {
            id: Some(id),
            number: None,
            before: None,
            dry_run: false,
            ..
        } => match spool.purge(&id) {
            Ok(()) => println!("{id}: removed from the spool"),
            Err(e @ (SpoolError::NotFound(_) | SpoolError::BadId(_))) => {
                eprintln!("pbx-edge spool purge: {e}");
                return Ok(ExitCode::from(1));
            }
            Err(e) => return Err(e.into()),
        },
        SpoolCommand::Purge {
            id: None,
            number,
            before,
            dry_run,
            ..
        } if number.is_some() || before.is_some() => {
            let sel = match Selection::new(number.as_deref(), before.as_deref()) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("pbx-edge spool purge: {e}");
                    return Ok(ExitCode::from(2));
                }
            };
            // Pairs the daemon has not adopted yet are purged too.
            spool.scan(now)?;
            let keys = cfg.spool.keys.as_deref();
            let mut matched = Vec::new();
            let mut unreadable = Vec::new();
            let mut incomplete = false;
            for e in spool.list()? {
                match read_doc(&spool, &e.id, keys) {
                    Ok(doc) if sel.matches(&doc, e.recorded_at_ms) => matched.push(e.id),
                    Ok(_) => {}
                    Err(err) => unreadable.push(format!("{}: {err}", e.id)),
                }
            }
            let what = sel.describe();
            if dry_run {
                println!(
                    "{} recordings {what} would be removed{}",
                    matched.len(),
                    list_ids(&matched)
                );
            } else {
                // One that cannot be removed does not stop the others; the
                // ones left are named (a privacy request must know).
                let mut removed = Vec::new();
                let mut failed = Vec::new();
                for id in matched {
                    match spool.purge(&id) {
                        Ok(()) => removed.push(id),
                        Err(err) => failed.push(format!("{id}: {err}")),
                    }
                }
                println!(
                    "{} recordings {what} removed from the spool{}",
                    removed.len(),
                    list_ids(&removed)
                );
                if !failed.is_empty() {
                    eprintln!(
                        "pbx-edge spool purge: {} recordings {what} could not be removed and are still in the spool: {}",
                        failed.len(),
                        failed.join("; ")
                    );
                    incomplete = true;
                }
            }
            if !unreadable.is_empty() {
                eprintln!(
                    "pbx-edge spool purge: {} recordings could not be read and were left (check them with spool export or remove them by id): {}",
                    unreadable.len(),
                    unreadable.join("; ")
                );
                incomplete = true;
            }
            if incomplete {
                return Ok(ExitCode::from(1));
            }
        }
        SpoolCommand::Purge { .. } => {
            eprintln!(
                "pbx-edge spool purge: give a recording ID, or --number and/or --before (not both kinds)"
            );
            return Ok(ExitCode::from(2));
        }
        SpoolCommand::Export { .. } => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// `spool export ID --out DIR`: `<id>.wav` and `<id>.json` of the spool as
/// plaintext files (mode 0600) in `out`, decrypted with `keys` when sealed.
/// Each is written to a temp file and renamed only when complete; the WAV
/// must match the JSON's `audio.bytes`/`sha256` (the JSON describes the WAV
/// spooled, not an uploaded FLAC). On any error (no such recording, a
/// missing or wrong key) nothing is left in `out` and the spool is untouched.
pub fn export(
    dir: &std::path::Path,
    id: &str,
    out: &std::path::Path,
    keys: Option<&crate::recording::Keyring>,
) -> anyhow::Result<()> {
    use crate::recording::{create_private_dir, create_private_file, open_recording, OpenMode};
    use anyhow::Context as _;
    use std::io::Write as _;
    if !valid_id(id) {
        anyhow::bail!("{id:?} is not a recording id");
    }
    let (wav, json) = (
        dir.join(format!("{id}.wav")),
        dir.join(format!("{id}.json")),
    );
    if !json.is_file() || !wav.is_file() {
        anyhow::bail!("no recording {id} in {}", dir.display());
    }
    let text = crate::recording::read_recording(&json, keys)?;
    let doc: serde_json::Value =
        serde_json::from_slice(&text).context("the recording's JSON does not parse")?;
    create_private_dir(out).with_context(|| format!("cannot create {}", out.display()))?;
    let tmp_wav = out.join(format!(".{id}.wav.export"));
    let tmp_json = out.join(format!(".{id}.json.export"));
    let written = (|| -> anyhow::Result<()> {
        let r = open_recording(&wav, keys, OpenMode::Strict)?;
        let f = create_private_file(&tmp_wav)?;
        let mut w = crate::recording::HashingWriter::new(std::io::BufWriter::new(f));
        std::io::copy(
            &mut std::io::BufReader::with_capacity(256 * 1024, r),
            &mut w,
        )?;
        let (bw, (n, sha)) = w.finish();
        bw.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        if doc["audio"]["bytes"].as_u64() != Some(n) || doc["audio"]["sha256"] != sha.as_str() {
            anyhow::bail!("{id}.wav does not match its JSON (bytes/sha256): damaged?");
        }
        let mut f = create_private_file(&tmp_json)?;
        f.write_all(&text)?;
        f.sync_all()?;
        std::fs::rename(&tmp_wav, out.join(format!("{id}.wav")))?;
        std::fs::rename(&tmp_json, out.join(format!("{id}.json")))?;
        crate::recording::sync_dir(out)?;
        Ok(())
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp_wav);
        let _ = std::fs::remove_file(&tmp_json);
    }
    written
}

/// What `spool purge --number/--before` removes: recordings of `number`
/// (as caller or callee) and/or of calls that started before `before`;
/// both given: recordings matching both.
#[derive(Debug)]
struct Selection {
    /// The number's digits (after a leading `+` or `00`).
    number: Option<String>,
    /// Milliseconds since the epoch.
    before_ms: Option<i64>,
}

/// Digits that must agree at the end of two spellings of a number for them
/// to be the same (a national and an international spelling differ in
/// their prefix only).
const SAME_NUMBER_DIGITS: usize = 9;

impl Selection {
    fn new(number: Option<&str>, before: Option<&str>) -> Result<Selection, String> {
        let number = match number {
            None => None,
            Some(n) => {
                let d = digits(n);
                if d.is_empty() {
                    return Err("--number has no digits".into());
                }
                Some(d)
            }
        };
        let before_ms = match before {
            None => None,
            Some(b) => {
                let text = if b.len() == 10 {
                    format!("{b}T00:00:00Z")
                } else {
                    b.to_string()
                };
                let t = pbx_core::time::Timestamp::parse_rfc3339(&text).ok_or_else(|| {
                    format!("--before {b:?}: not a date (2026-11-01) or an RFC 3339 time (2026-11-01T08:00:00Z)")
                })?;
                Some(t.as_millis())
            }
        };
        Ok(Selection { number, before_ms })
    }

    /// Whether the recording whose JSON is `doc` (adopted with
    /// `recorded_at_ms`) is selected.
    fn matches(&self, doc: &serde_json::Value, recorded_at_ms: i64) -> bool {
        if let Some(n) = &self.number {
            let parties = [&doc["from"], &doc["to"]];
            let hit = parties.iter().any(|p| {
                p["number"]
                    .as_str()
                    .is_some_and(|x| same_number(&digits(x), n))
            });
            if !hit {
                return false;
            }
        }
        if let Some(b) = self.before_ms {
            let started = doc["started_at"]
                .as_str()
                .and_then(pbx_core::time::Timestamp::parse_rfc3339)
                .map_or(recorded_at_ms, |t| t.as_millis());
            if started >= b {
                return false;
            }
        }
        true
    }

    /// The selection in words, without the number.
    fn describe(&self) -> String {
        match (&self.number, self.before_ms) {
            (Some(_), Some(_)) => "of the number given, started before the date given,".into(),
            (Some(_), None) => "of the number given".into(),
            _ => "started before the date given".into(),
        }
    }
}

/// The digits of a number, without a leading international `00`.
fn digits(n: &str) -> String {
    let d: String = n.chars().filter(char::is_ascii_digit).collect();
    match d.strip_prefix("00") {
        Some(rest) if n.trim_start().starts_with("00") => rest.to_string(),
        _ => d,
    }
}

/// Two numbers' digits are the same number: equal, or (national and
/// international spellings) agreeing in their last digits, at least
/// [`SAME_NUMBER_DIGITS`] of them, the shorter one without its trunk `0`.
fn same_number(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    let short = short.strip_prefix('0').unwrap_or(short);
    short.len() >= SAME_NUMBER_DIGITS && long.ends_with(short)
}

/// `<id>.json` of the spool, decrypted when sealed.
fn read_doc(
    spool: &Spool,
    id: &str,
    keys: Option<&crate::recording::Keyring>,
) -> anyhow::Result<serde_json::Value> {
    let bytes = crate::spoolfile::read_recording(&spool.json_path(id), keys)?;
    Ok(serde_json::from_slice(&bytes)?)
}

/// ": id, id, …" or nothing.
fn list_ids(ids: &[String]) -> String {
    if ids.is_empty() {
        String::new()
    } else {
        format!(": {}", ids.join(", "))
    }
}

#[cfg(test)]
mod purge_tests {
    use super::*;

    #[test]
    fn numbers_match_across_spellings_and_only_then() {
        let s = |n: &str| Selection::new(Some(n), None).unwrap();
        let doc = |from: &str, to: &str| serde_json::json!({"from": {"number": from}, "to": {"number": to}});
        let d = doc("+49 30 1234567", "2001");
        for n in [
            "+49301234567",
            "0049301234567",
            "030 1234567",
            "(030) 123-4567",
        ] {
            assert!(s(n).matches(&d, 0), "{n}");
        }
        for n in ["+49301234568", "1234567", "2002", "+4930123456"] {
            assert!(!s(n).matches(&d, 0), "{n}");
        }
        // The callee too; an extension exactly.
        assert!(s("2001").matches(&d, 0));
        assert!(!s("001").matches(&d, 0));
        assert!(Selection::new(Some("abc"), None).is_err());
    }

    #[test]
    fn before_takes_a_date_or_a_time_and_both_must_match() {
        let doc = serde_json::json!({
            "from": {"number": "+15551234567"},
            "started_at": "2026-10-31T23:59:59.000Z"
        });
        let b = |t: &str| Selection::new(None, Some(t)).unwrap();
        assert!(b("2026-11-01").matches(&doc, 0));
        assert!(!b("2026-10-31").matches(&doc, 0));
        assert!(!b("2026-10-31T23:59:59Z").matches(&doc, 0));
        assert!(b("2026-10-31T23:59:59.500Z").matches(&doc, 0));
        assert!(Selection::new(None, Some("yesterday")).is_err());
        let both = Selection::new(Some("5551234567"), Some("2026-11-01")).unwrap();
        assert!(both.matches(&doc, 0));
        let other = Selection::new(Some("5559999999"), Some("2026-11-01")).unwrap();
        assert!(!other.matches(&doc, 0));
        // No started_at: the time the spool took it.
        let bare = serde_json::json!({"from": {"number": "1"}});
        assert!(b("2026-11-01").matches(&bare, 1_700_000_000_000));
        assert!(!b("2026-11-01").matches(&bare, 1_800_000_000_000));
    }
}
