//! The spool directory's watch: a new `<id>.json` (a pair is complete: it
//! is renamed into place last) or a touched [`crate::spool::WAKE_FILE`]
//! (`pbx-edge spool retry` in another process) wakes the scheduler.
//!
//! Only the events those raise are asked for (`IN_MOVED_TO`,
//! `IN_CLOSE_WRITE`): recordings in progress are written to the same
//! directory in 40 ms chunks, and a watch that also took `IN_MODIFY` woke
//! for each of them (12,500 wake-ups per second at 500 calls, 5 % of the
//! daemon's CPU in the call-end benchmark). Read on the runtime, no thread.

use std::path::Path;
use std::sync::Weak;

use inotify::{Inotify, WatchMask};
use tokio::io::unix::AsyncFd;
use tokio::task::JoinHandle;

use super::Shared;

/// The running watch; dropping it ends it.
pub(crate) struct SpoolWatch(JoinHandle<()>);

impl Drop for SpoolWatch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Whether an event's file name is one that means work for the scheduler.
fn wanted(name: &std::ffi::OsStr) -> bool {
    let hidden = name.as_encoded_bytes().starts_with(b".");
    (Path::new(name).extension().is_some_and(|e| e == "json") && !hidden)
        || name == crate::spool::WAKE_FILE
}

impl SpoolWatch {
    /// Watch `dir` (on the current runtime); `None` when inotify cannot be
    /// used (the idle scan still finds new pairs).
    pub(crate) fn start(dir: &Path, shared: Weak<Shared>) -> Option<SpoolWatch> {
        let ino = Inotify::init().ok()?;
        if let Err(e) = ino
            .watches()
            .add(dir, WatchMask::MOVED_TO | WatchMask::CLOSE_WRITE)
        {
            tracing::debug!(
                "spool directory not watched ({e}): new recordings are found by the scan"
            );
            return None;
        }
        // SAFETY: the inotify instance owns its descriptor: it stays open
        // and the same until the `AsyncFd` (which owns the instance) drops.
        let mut fd = unsafe { AsyncFd::register(ino) }.ok()?;
        Some(SpoolWatch(tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok(mut ready) = fd.readable_mut().await else {
                    return;
                };
                let hit = match ready.get_inner_mut().read_events(&mut buf) {
                    Ok(events) => events.into_iter().any(|e| e.name.is_some_and(wanted)),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        ready.clear_ready();
                        false
                    }
                    Err(e) => {
                        tracing::debug!("spool directory watch ended: {e}");
                        return;
                    }
                };
                if hit {
                    match shared.upgrade() {
                        Some(s) => s.wake.notify_one(),
                        None => return,
                    }
                }
            }
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn only_pairs_and_the_wake_file_wake_the_scheduler() {
        assert!(wanted(OsStr::new("20261204-abc.json")));
        assert!(wanted(OsStr::new(crate::spool::WAKE_FILE)));
        assert!(!wanted(OsStr::new(".20261204-abc.json.tmp")));
        assert!(!wanted(OsStr::new(".20261204-abc.start.json")));
        assert!(!wanted(OsStr::new(".20261204-abc.wav.part")));
        assert!(!wanted(OsStr::new("20261204-abc.wav")));
    }
}
