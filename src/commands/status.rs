//! `pbx-edge status`: the running daemon's `/status` and `/readyz`, asked
//! over its health listener and printed for people (or as JSON).
//!
//! In: the config file (for `health.listen`). Out: stdout; exit code 0, 1
//! (bad config or answer) or 3 (no daemon answering).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::config::Config;
use crate::health;

/// Said when no daemon answers: a running daemon keeps the `health.listen`
/// it started with (a reload does not move it).
pub(crate) const RESTART_NOTE: &str =
    " (a daemon started before health.listen was changed listens on its old address until it is restarted)";

/// `pbx-edge status`: ask the running daemon and print it for people.
pub fn run(config_path: Option<PathBuf>, json: bool) -> Result<ExitCode> {
    let cfg = match Config::load(config_path.as_deref()) {
        Ok(c) => c,
        Err(errs) => {
            eprintln!("{errs}");
            return Ok(ExitCode::from(1));
        }
    };
    let addr = cfg.health.listen;
    let (code, body) = match health::get(addr, "/status") {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "pbx-edge status: no daemon answering on {addr} (health.listen): {e}{}",
                RESTART_NOTE
            );
            return Ok(ExitCode::from(3));
        }
    };
    if code != 200 {
        eprintln!("pbx-edge status: {addr} answered {code}");
        return Ok(ExitCode::from(1));
    }
    let s: serde_json::Value = serde_json::from_str(&body).context("bad /status JSON")?;
    let (_, ready) = health::get(addr, "/readyz").unwrap_or((0, String::new()));
    let ready: serde_json::Value = serde_json::from_str(&ready).unwrap_or_default();
    if json {
        // Exact figures: /status and /readyz as the daemon gave them.
        let both = serde_json::json!({"status": s, "readyz": ready});
        println!(
            "{}",
            serde_json::to_string_pretty(&both).unwrap_or_default()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let size = |v: &serde_json::Value| {
        v.as_u64()
            .map(crate::spool::human_size)
            .unwrap_or_else(|| "?".into())
    };
    println!(
        "pbx-edge {} on {} (agent {}), up {}",
        s["version"].as_str().unwrap_or("?"),
        addr,
        s["agent_id"].as_str().unwrap_or("?"),
        s["uptime_s"]
            .as_u64()
            .map(|u| crate::spool::human_age(i64::try_from(u).unwrap_or(i64::MAX / 1000) * 1000))
            .unwrap_or_else(|| "?".into())
    );
    println!(
        "ready: {}",
        if ready["ready"] == true { "yes" } else { "NO" }
    );
    if let Some(c) = ready["components"].as_object() {
        for (k, v) in c {
            println!("  {k:<16} {}", v.as_str().unwrap_or(""));
        }
    }
    if let Some(srcs) = s["sources"].as_object() {
        for (name, v) in srcs {
            println!(
                "source {name}: {} {} — {} active calls, {} recording, {} recorded, {} packets, {} kernel drops",
                if v["up"] == true { "up" } else { "DOWN" },
                v["listen"].as_str().unwrap_or(""),
                v["active_calls"],
                v["recording_calls"],
                v["engine"]["calls_recorded"],
                v["engine"]["frames"],
                v["kernel_drops"],
            );
            // Media waiting for the engine (SIPREC): worth a line from a
            // second on (a few tens of ms is the receive thread's rounds).
            let behind = |k: &str| v[k].as_u64().unwrap_or(0);
            if behind("media_behind_max_ms") >= 1000 {
                println!(
                    "  engine behind its media: {:.1} s now, {:.1} s at most (audio beyond 4 s is written as silence)",
                    behind("media_behind_ms") as f64 / 1000.0,
                    behind("media_behind_max_ms") as f64 / 1000.0
                );
            }
            let r = &v["rtp_rejected"];
            let n = |k: &str| r[k].as_u64().unwrap_or(0);
            if n("source") + n("ssrc") + n("unknown_port") > 0 {
                println!(
                    "  RTP kept out: {} not from the stream's source, {} of a foreign SSRC, {} to ports without a stream",
                    n("source"),
                    n("ssrc"),
                    n("unknown_port")
                );
            }
        }
    }
    let sp = &s["spool"];
    println!(
        "spool {}: {} files, {}, {} free{}",
        sp["dir"].as_str().unwrap_or(""),
        sp["files"],
        size(&sp["bytes"]),
        size(&sp["free_bytes"]),
        if sp["writable"] == true {
            ""
        } else {
            " — NOT WRITABLE"
        }
    );
    Ok(ExitCode::SUCCESS)
}
