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
pub fn run(cmd: SpoolCommand) -> anyhow::Result<ExitCode> {
    use anyhow::Context as _;
    let config = match &cmd {
        SpoolCommand::List(c) => c.config.config.clone(),
        SpoolCommand::Retry { config, .. }
        | SpoolCommand::Purge { config, .. }
        | SpoolCommand::Export { config, .. } => config.config.clone(),
    };
    let cfg = match Config::load(config.as_deref()) {
        Ok(c) => c,
        Err(errs) => {
            eprintln!("{errs}");
            return Ok(ExitCode::from(1));
        }
    };
    let dir = &cfg.spool.dir;
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
        SpoolCommand::Purge { id, .. } => match spool.purge(&id) {
            Ok(()) => println!("{id}: removed from the spool"),
            Err(e @ (SpoolError::NotFound(_) | SpoolError::BadId(_))) => {
                eprintln!("pbx-edge spool purge: {e}");
                return Ok(ExitCode::from(1));
            }
            Err(e) => return Err(e.into()),
        },
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
