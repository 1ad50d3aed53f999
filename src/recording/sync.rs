//! Syncing for power loss: one thread per process `syncfs`es every file
//! system a recording was written to, at most [`SYNC_INTERVAL`] after the
//! write. With nothing written it sleeps until something is: an idle daemon
//! does not wake up for it.

use super::*;

/// How long a write may wait for the sync of its file system: the
/// power-loss window beyond the engine's hold-back (docs/durability.md).
pub const SYNC_INTERVAL: Duration = Duration::from_secs(1);

pub(super) struct Syncer {
    /// Directories written since the last round.
    pub(super) dirty: Mutex<HashSet<PathBuf>>,
    /// Rung when [`Syncer::dirty`] stops being empty.
    pub(super) written: Condvar,
    /// File system syncs done (for tests and curiosity).
    pub(super) syncs: AtomicU64,
}

pub(super) static SYNCER: OnceLock<Syncer> = OnceLock::new();

pub(super) fn syncer() -> &'static Syncer {
    SYNCER.get_or_init(|| {
        let spawned = std::thread::Builder::new()
            .name("spool-sync".into())
            .spawn(sync_loop);
        if let Err(e) = spawned {
            tracing::error!("cannot start the spool sync thread: {e}");
        }
        Syncer {
            dirty: Mutex::new(HashSet::new()),
            written: Condvar::new(),
            syncs: AtomicU64::new(0),
        }
    })
}

/// One thread per process: once something is written, it waits
/// [`SYNC_INTERVAL`] (more writes join the round meanwhile), then `syncfs`
/// on each file system written to. One system call covers every open WAV,
/// sidecar and directory entry there, whatever the number of calls, and
/// the engine threads never wait for a disk. With nothing written it waits
/// for a write, without a timeout.
pub(super) fn sync_loop() {
    let s = loop {
        // The thread is spawned from inside the syncer's initialisation.
        if let Some(s) = SYNCER.get() {
            break s;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    loop {
        match s.dirty.lock() {
            Ok(d) => {
                if s.written.wait_while(d, |d| d.is_empty()).is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
        std::thread::sleep(SYNC_INTERVAL);
        let dirs: Vec<PathBuf> = s
            .dirty
            .lock()
            .map(|mut d| d.drain().collect())
            .unwrap_or_default();
        for d in dirs {
            if let Err(e) = sync_fs(&d) {
                tracing::debug!(dir = %d.display(), "syncfs: {e}");
            }
            s.syncs.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// `syncfs(2)` on the file system holding `dir`.
pub(super) fn sync_fs(dir: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = File::open(dir)?;
    // SAFETY: syncfs on a descriptor we own.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Something was written in `dir`: sync its file system in the next round.
pub(crate) fn mark_unsynced(dir: &Path) {
    let s = syncer();
    if let Ok(mut d) = s.dirty.lock() {
        if !d.contains(dir) {
            let first = d.is_empty();
            d.insert(dir.to_path_buf());
            if first {
                s.written.notify_one();
            }
        }
    }
}

/// File system syncs done by this process so far.
pub fn fs_syncs() -> u64 {
    SYNCER.get().map_or(0, |s| s.syncs.load(Ordering::Relaxed))
}
