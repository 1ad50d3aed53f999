//! systemd's notification protocol (sd_notify(3)): READY, STATUS,
//! RELOADING, the watchdog ping, on `NOTIFY_SOCKET` (a path or an abstract
//! socket).

use std::fmt::Write as _;

/// Tell systemd `state` (`NOTIFY_SOCKET`); the first failure is logged
/// (once: a socket that cannot be reached fails every time).
pub(super) fn notify(state: &[sd_notify::NotifyState<'_>]) {
    static FAILED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send_notify(&socket, state) {
        if !FAILED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::error!(
                "cannot notify systemd on NOTIFY_SOCKET={}: {e} (READY=1, STATUS= and the watchdog ping do not arrive; not logged again)",
                socket.to_string_lossy()
            );
        }
    }
}

/// `NOTIFY_SOCKET`'s address: a file system path (`/run/...`), or with a
/// leading `@` a Linux abstract socket (as systemd hands to services run
/// in containers, and `systemd-run`/`systemd-notify --exec` tests use).
pub(super) fn notify_address(
    socket: &std::ffi::OsStr,
) -> std::io::Result<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    let b = socket.as_bytes();
    match b.first() {
        Some(b'@') => std::os::unix::net::SocketAddr::from_abstract_name(&b[1..]),
        Some(b'/') => std::os::unix::net::SocketAddr::from_pathname(socket),
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "neither an absolute path nor an abstract socket (@name)",
        )),
    }
}

/// One datagram with `state`, a line each (sd_notify(3)).
pub(super) fn send_notify(
    socket: &std::ffi::OsStr,
    state: &[sd_notify::NotifyState<'_>],
) -> std::io::Result<()> {
    let addr = notify_address(socket)?;
    let mut msg = String::new();
    for s in state {
        let _ = writeln!(msg, "{s}");
    }
    let sock = std::os::unix::net::UnixDatagram::unbound()?;
    let n = sock.send_to_addr(msg.as_bytes(), &addr)?;
    if n != msg.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::WriteZero,
            "incomplete write",
        ));
    }
    Ok(())
}

/// CLOCK_MONOTONIC in microseconds (systemd wants it with RELOADING=1).
pub(super) fn monotonic_usec() -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into ts.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000 + i128::from(ts.tv_nsec) / 1000
}
