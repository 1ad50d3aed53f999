//! One stop signal for every loop of the daemon, whatever it waits on.
//!
//! In: one `trigger()` (the daemon stopping a source, or the whole process).
//! Out: the same news three ways, so no loop has to poll a flag on a timer:
//! - `is_set()`: a flag for loops that look between inputs;
//! - `fd()`: an eventfd that becomes readable, for threads blocked in
//!   `poll`/`epoll` on their sockets (they add it to the set they wait on);
//! - `wait().await`: for tokio tasks.
//!
//! Promises: once set it stays set; clones share the one signal; a waiter
//! that starts after the trigger returns at once.
//!
//! [`Doorbell`] is the same eventfd without the stickiness: a thread that
//! waits on its socket with [`wait_readable`] is woken when a message is
//! put in its control queue.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

/// A cloneable stop signal (see the module documentation).
#[derive(Clone, Debug)]
pub(crate) struct Shutdown(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    set: AtomicBool,
    fd: OwnedFd,
    notify: Notify,
}

impl Shutdown {
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Shutdown(Arc::new(Inner {
            set: AtomicBool::new(false),
            // SAFETY: fd is a new descriptor we own.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            notify: Notify::new(),
        })))
    }

    /// Stop: every waiter wakes, now and later.
    pub(crate) fn trigger(&self) {
        if self.0.set.swap(true, Ordering::SeqCst) {
            return;
        }
        let one: u64 = 1;
        // SAFETY: an 8-byte write to our eventfd. It is never read, so it
        // stays readable.
        unsafe { libc::write(self.0.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        self.0.notify.notify_waiters();
    }

    pub(crate) fn is_set(&self) -> bool {
        self.0.set.load(Ordering::SeqCst)
    }

    /// Readable once triggered: add it to a `poll`/`epoll` set.
    pub(crate) fn fd(&self) -> RawFd {
        self.0.fd.as_raw_fd()
    }

    /// Returns when triggered (at once if it already was).
    pub(crate) async fn wait(&self) {
        loop {
            let notified = self.0.notify.notified();
            if self.is_set() {
                return;
            }
            notified.await;
        }
    }
}

/// An eventfd rung after a message is queued for a thread that waits in
/// `poll` (see the module documentation).
#[derive(Debug)]
pub(crate) struct Doorbell(OwnedFd);

impl Doorbell {
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a new descriptor we own.
        Ok(Doorbell(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    pub(crate) fn ring(&self) {
        let one: u64 = 1;
        // SAFETY: an 8-byte write to our eventfd.
        unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Silence it (before looking at the queue it announces).
    pub(crate) fn clear(&self) {
        let mut v = 0u64;
        // SAFETY: an 8-byte read from our non-blocking eventfd.
        unsafe { libc::read(self.0.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// What [`wait_readable`] saw.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ready {
    /// The socket has something to read (or an error to report).
    Input,
    /// The time given passed first.
    Timeout,
    /// The shutdown was triggered.
    Stop,
}

/// Block until one of `fds` is readable, `stop` is triggered or `timeout`
/// passes (`None`: no timeout: an idle loop sleeps without waking up).
pub(crate) fn wait_readable(fds: &[RawFd], stop: &Shutdown, timeout: Option<Duration>) -> Ready {
    let ms = timeout.map_or(-1, |d| {
        // Round up: a deadline 0.3 ms away must not spin.
        i32::try_from(d.as_micros().div_ceil(1000)).unwrap_or(i32::MAX)
    });
    let mut set: Vec<libc::pollfd> = std::iter::once(stop.fd())
        .chain(fds.iter().copied())
        .map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `set` is a valid array of pollfd of the length given.
    let n = unsafe { libc::poll(set.as_mut_ptr(), set.len() as libc::nfds_t, ms) };
    if stop.is_set() {
        Ready::Stop
    } else if n == 0 {
        Ready::Timeout
    } else {
        // Readable, or EINTR: the caller reads without blocking and sees.
        Ready::Input
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    #[test]
    fn a_blocked_thread_wakes_on_trigger_not_before() {
        let stop = Shutdown::new().unwrap();
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        assert_eq!(
            wait_readable(&[sock.as_raw_fd()], &stop, Some(Duration::from_millis(1))),
            Ready::Timeout
        );
        let s2 = stop.clone();
        let fd = sock.as_raw_fd();
        let t = std::thread::spawn(move || wait_readable(&[fd], &s2, None));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!t.is_finished(), "woke without input or stop");
        stop.trigger();
        assert_eq!(t.join().unwrap(), Ready::Stop);
        // Later waits see it at once; triggering twice is harmless.
        stop.trigger();
        assert_eq!(wait_readable(&[fd], &stop, None), Ready::Stop);
    }

    #[test]
    fn input_wakes_the_waiter() {
        let stop = Shutdown::new().unwrap();
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = sock.local_addr().unwrap();
        UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .send_to(b"x", to)
            .unwrap();
        assert_eq!(
            wait_readable(&[sock.as_raw_fd()], &stop, None),
            Ready::Input
        );
        // A doorbell wakes too, until cleared.
        let bell = Doorbell::new().unwrap();
        let quiet = Some(Duration::from_millis(1));
        assert_eq!(wait_readable(&[bell.fd()], &stop, quiet), Ready::Timeout);
        bell.ring();
        assert_eq!(wait_readable(&[bell.fd()], &stop, None), Ready::Input);
        bell.clear();
        assert_eq!(wait_readable(&[bell.fd()], &stop, quiet), Ready::Timeout);
    }

    #[tokio::test]
    async fn tasks_wake_on_trigger_even_when_late() {
        let stop = Shutdown::new().unwrap();
        let s2 = stop.clone();
        let t = tokio::spawn(async move { s2.wait().await });
        tokio::task::yield_now().await;
        stop.trigger();
        tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .expect("woken")
            .unwrap();
        // After the trigger: at once.
        tokio::time::timeout(Duration::from_secs(10), stop.wait())
            .await
            .expect("at once");
    }
}
