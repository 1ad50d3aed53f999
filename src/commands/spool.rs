//! `pbx-edge spool list|retry|purge`: the queue seen and changed from the
//! command line.
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
        SpoolCommand::Retry { config, .. } | SpoolCommand::Purge { config, .. } => {
            config.config.clone()
        }
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
    }
    Ok(ExitCode::SUCCESS)
}
