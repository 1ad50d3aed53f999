use super::notify::{notify_address, send_notify};
use super::*;

#[test]
fn a_source_that_cannot_start_is_tried_again_with_a_backoff() {
    let backoffs: Vec<u64> = (1..=8).map(|n| Retries::backoff(n).as_secs()).collect();
    assert_eq!(backoffs, [1, 2, 4, 8, 16, 30, 30, 30]);
    assert_eq!(Retries::backoff(u32::MAX), RETRY_MAX);
    let mut r = Retries::default();
    let t0 = Instant::now();
    assert_eq!(r.failed("siprec", t0), 1);
    assert!(r.due(t0).is_empty());
    assert_eq!(r.due(t0 + Duration::from_secs(1)), ["siprec"]);
    assert_eq!(r.failed("siprec", t0 + Duration::from_secs(1)), 2);
    assert!(r.due(t0 + Duration::from_secs(2)).is_empty());
    assert_eq!(r.due(t0 + Duration::from_secs(3)), ["siprec"]);
    // Already waiting: not reset.
    r.missing("siprec", t0 + Duration::from_secs(3));
    assert_eq!(r.failed[0].1, 2);
    assert_eq!(r.started("siprec"), Some(2));
    assert!(r.is_empty());
    assert_eq!(r.started("siprec"), None);
}

#[test]
fn notify_socket_may_be_a_path_or_an_abstract_address() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::UnixDatagram;
    let name = format!("pbx-edge-notify-test-{}", std::process::id());
    let abs = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let rx = UnixDatagram::bind_addr(&abs).unwrap();
    let at = std::ffi::OsString::from(format!("@{name}"));
    send_notify(
        &at,
        &[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status("ok"),
        ],
    )
    .unwrap();
    let mut buf = [0u8; 256];
    let n = rx.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"READY=1\nSTATUS=ok\n");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let rx = UnixDatagram::bind(&path).unwrap();
    send_notify(path.as_os_str(), &[sd_notify::NotifyState::Watchdog]).unwrap();
    let n = rx.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"WATCHDOG=1\n");
    assert!(notify_address(std::ffi::OsStr::new("relative")).is_err());
}

#[test]
fn a_reload_keeps_the_running_health_listen_and_log_format() {
    let running = Config::defaults(None);
    let mut new = Config::defaults(None);
    new.health.listen = "127.0.0.1:1".parse().unwrap();
    new.log.format = crate::config::LogFormat::Json;
    new.agent.id = "changed".into();
    keep_restart_only(&running, &mut new);
    assert_eq!(new.health.listen, running.health.listen);
    assert_eq!(new.log.format, running.log.format);
    // What a reload applies is taken.
    assert_eq!(new.agent.id, "changed");
}

#[test]
fn sync_retries_exactly_the_enabled_sources_that_do_not_run() {
    let mut cfg = Config::defaults(None);
    cfg.sources.sniff.enabled = true;
    let status = SharedStatus::default();
    if let Ok(mut s) = status.lock() {
        for n in ["siprec", "sniff"] {
            s.sources.insert(n.into(), SourceStatus::default());
        }
    }
    let mut r = Retries::default();
    r.sync(&cfg, |n| n == "siprec", &status);
    assert_eq!(r.failed.iter().map(|e| e.0).collect::<Vec<_>>(), ["sniff"]);
    let s = status.lock().unwrap().clone();
    assert_eq!(s.sources["sniff"].start_failures, 1);
    assert_eq!(s.sources["siprec"].start_failures, 0);
    assert!(status_line(&status).contains("sniff down: not running (retrying)"));
    // Disabled by a reload: forgotten.
    cfg.sources.sniff.enabled = false;
    r.sync(&cfg, |n| n == "siprec", &status);
    assert!(r.is_empty());
}
