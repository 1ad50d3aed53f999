//! `pbx-edge drain`: asks the running daemon to drain -- take no new calls
//! (SIPREC INVITE and OPTIONS answered 503, so a dispatcher sends new calls
//! to the other recorders), finish the calls in progress, deliver the spool,
//! exit 0 (see [`crate::daemon::drain`]). The same as SIGUSR1.
//!
//! In: the config file (for `health.listen`; an unspecified address is
//! reached on loopback: the daemon takes the request from loopback only).
//! Out: `POST /v1/drain`; one line on stdout; with `--wait`, a line per
//! phase change until the daemon has exited. Exit 0 (accepted; with
//! `--wait`: the daemon is gone), 1 (bad config or answer), 3 (no daemon
//! answering).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;

use crate::config::Config;
use crate::health;

/// Where the daemon's health listener is reached from this host.
fn local_addr(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(a) if a.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), listen.port())
        }
        IpAddr::V6(a) if a.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), listen.port())
        }
        _ => listen,
    }
}

pub fn run(config_path: Option<PathBuf>, wait: bool) -> Result<ExitCode> {
    let cfg = match Config::load(config_path.as_deref()) {
        Ok(c) => c,
        Err(errs) => {
            eprintln!("{errs}");
            return Ok(ExitCode::from(1));
        }
    };
    let addr = local_addr(cfg.health.listen);
    let (code, body) = match health::post(addr, "/v1/drain") {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "pbx-edge drain: no daemon answering on {addr} (health.listen): {e}{}",
                super::status::RESTART_NOTE
            );
            return Ok(ExitCode::from(3));
        }
    };
    if code != 202 {
        eprintln!(
            "pbx-edge drain: {addr} answered {code}: {}",
            body.trim_end()
        );
        return Ok(ExitCode::from(1));
    }
    println!("pbx-edge drain: the daemon on {addr} is draining: no new calls; it exits when its calls have ended and its spool is delivered");
    if !wait {
        return Ok(ExitCode::SUCCESS);
    }
    let mut last = String::new();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let Ok((_, body)) = health::get(addr, "/status") else {
            println!("pbx-edge drain: the daemon has exited");
            return Ok(ExitCode::SUCCESS);
        };
        let s: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let d = &s["drain"];
        let now = format!(
            "{} ({} calls in progress, {} recordings to deliver)",
            d["phase"].as_str().unwrap_or("stopping"),
            d["calls_in_progress"].as_u64().unwrap_or(0),
            ["recorded", "queued", "uploading"]
                .iter()
                .map(|k| s["cloud"]["queue"][k].as_u64().unwrap_or(0))
                .sum::<u64>()
        );
        if now != last {
            println!("pbx-edge drain: {now}");
            last = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_listen_address_is_reached_on_loopback() {
        let a: SocketAddr = "0.0.0.0:9466".parse().unwrap();
        assert_eq!(local_addr(a), "127.0.0.1:9466".parse().unwrap());
        let a: SocketAddr = "[::]:9466".parse().unwrap();
        assert_eq!(local_addr(a), "[::1]:9466".parse().unwrap());
        let a: SocketAddr = "127.0.0.2:9466".parse().unwrap();
        assert_eq!(local_addr(a), a);
    }
}
