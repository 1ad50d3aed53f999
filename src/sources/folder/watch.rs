//! The folder source's thread: the inotify watch (or polling), the wake-ups
//! of the scanner, the handle the daemon stops it with.

use super::*;

// ---------------------------------------------------------------- thread

/// What wakes the folder thread.
pub(super) enum Wake {
    /// From notify's thread.
    Event(notify::Result<notify::Event>),
    /// The event queue was full: events were dropped.
    Lost,
    Stop,
}

/// Events queued between notify's thread and the folder thread; more are
/// dropped and make the next pass list everything (as an inotify overflow).
const EVENT_QUEUE: usize = 65_536;

/// A file's writes within this long of the last one forwarded are not
/// forwarded (MixMonitor writes every 20 ms; "closed" always is).
const WRITE_COALESCE: Duration = Duration::from_millis(500);

/// Passes notify's events to the folder thread, keeping only what the
/// folder source uses: opens and reads (its own among them) and events of
/// files that are not recordings are dropped, a run of writes to one file is
/// one event per [`WRITE_COALESCE`], and a full queue is one [`Wake::Lost`].
pub(super) struct EventSink {
    pub(super) tx: SyncSender<Wake>,
    pub(super) lost: Arc<AtomicBool>,
    /// Files whose last forwarded event was a write, and when.
    pub(super) writes: HashMap<PathBuf, Instant>,
}

impl EventSink {
    pub(super) fn wanted(&mut self, ev: &notify::Event) -> bool {
        use notify::event::{
            AccessKind, AccessMode, CreateKind, ModifyKind, RemoveKind, RenameMode,
        };
        use notify::EventKind as K;
        if ev.need_rescan() {
            return true;
        }
        let audio = ev.paths.iter().any(|p| {
            p.file_name()
                .is_some_and(|n| is_audio_name(&n.to_string_lossy()))
        });
        match &ev.kind {
            K::Access(AccessKind::Close(AccessMode::Write)) => {
                for p in &ev.paths {
                    self.writes.remove(p);
                }
                audio
            }
            K::Access(_) => false,
            K::Modify(ModifyKind::Data(_)) => {
                let (Some(p), true) = (ev.paths.first(), audio) else {
                    return false;
                };
                let now = Instant::now();
                if self
                    .writes
                    .get(p)
                    .is_some_and(|t| now.saturating_duration_since(*t) < WRITE_COALESCE)
                {
                    return false;
                }
                if self.writes.len() >= 10_000 {
                    self.writes.clear();
                }
                self.writes.insert(p.clone(), now);
                true
            }
            K::Create(CreateKind::File) | K::Modify(ModifyKind::Metadata(_)) => {
                for p in &ev.paths {
                    self.writes.remove(p);
                }
                audio
            }
            K::Remove(RemoveKind::File) => {
                for p in &ev.paths {
                    self.writes.remove(p);
                }
                audio
            }
            K::Modify(ModifyKind::Name(RenameMode::Both)) => false,
            _ => true,
        }
    }
}

impl notify::EventHandler for EventSink {
    fn handle_event(&mut self, event: notify::Result<notify::Event>) {
        if let Ok(ev) = &event {
            if !self.wanted(ev) {
                return;
            }
        }
        if let Err(TrySendError::Full(_)) = self.tx.try_send(Wake::Event(event)) {
            // Flag first: the folder thread checks it after draining.
            self.lost.store(true, Ordering::SeqCst);
            let _ = self.tx.try_send(Wake::Lost);
        }
    }
}

/// What a notify error means for the watch, for people.
fn watch_error(e: &notify::Error) -> String {
    let sysctl = |name: &str| {
        fs::read_to_string(format!("/proc/sys/fs/inotify/{name}"))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|_| "?".into())
    };
    match &e.kind {
        notify::ErrorKind::MaxFilesWatch => format!(
            "the inotify watch limit is reached (fs.inotify.max_user_watches = {}, one watch per \
             directory); raise it (sysctl fs.inotify.max_user_watches=524288, and in \
             /etc/sysctl.d/) and restart pbx-edge",
            sysctl("max_user_watches")
        ),
        notify::ErrorKind::Io(io) if io.raw_os_error() == Some(libc::EMFILE) => format!(
            "no inotify instance left (fs.inotify.max_user_instances = {}); raise it and \
             restart pbx-edge",
            sysctl("max_user_instances")
        ),
        _ => format!("inotify: {e}"),
    }
}

/// The network file system `path` is on, if it is one: inotify sees only
/// the changes made through this host's kernel, not a PBX writing on another
/// host.
pub(crate) fn network_fs(path: &Path) -> Option<&'static str> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statfs fills the zeroed struct; `c` is a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    // f_type is a signed word whose width differs between targets; the
    // magic numbers are 32-bit.
    #[allow(clippy::unnecessary_cast)]
    let magic = st.f_type as u32;
    Some(match magic {
        0x6969 => "NFS",
        0xFF53_4D42 => "CIFS",
        0xFE53_4D42 => "SMB2",
        0x517B => "SMB",
        0x6573_5546 => "FUSE",
        0x0102_1997 => "9P",
        0x00C3_6400 => "Ceph",
        0x6B41_4653 => "AFS",
        0x5346_414F => "OpenAFS",
        0x4750_4653 => "GPFS",
        0x0BD0_0BD0 => "Lustre",
        0x564C => "NCP",
        0x7461_636F => "OCFS2",
        0x0116_1970 => "GFS2",
        _ => return None,
    })
}

/// How the folder thread learns of changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Inotify,
    Poll,
}

/// The folder thread: the scanner, the inotify watch, and the status it
/// publishes.
pub(super) struct FolderLoop {
    pub(super) scanner: FolderScanner,
    root: PathBuf,
    status: SharedStatus,
    live: Arc<Liveness>,
    watch: FolderWatch,
    poll: Duration,
    pub(super) mode: Mode,
    pub(super) watcher: Option<notify::INotifyWatcher>,
    /// `path` is gone: its parent, watched for it to come back (if it could be).
    root_gone: Option<Option<PathBuf>>,
    /// What `/status` and `/readyz` say of the watch.
    note: String,
    tx: SyncSender<Wake>,
    rx: Receiver<Wake>,
    lost: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

/// What handling one wake-up asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Next {
    Wait,
    Pass,
    Stop,
}

impl FolderLoop {
    pub(super) fn new(
        scanner: FolderScanner,
        watch: FolderWatch,
        poll: Duration,
        status: SharedStatus,
        live: Arc<Liveness>,
        stop: Arc<AtomicBool>,
    ) -> Self {
        let (tx, rx) = sync_channel(EVENT_QUEUE);
        let mut scanner = scanner;
        scanner.set_pulse(Pulse::of(live.clone(), "folder", stop.clone()));
        FolderLoop {
            root: scanner.root().to_path_buf(),
            scanner,
            status,
            live,
            watch,
            poll,
            mode: Mode::Poll,
            watcher: None,
            root_gone: None,
            note: String::new(),
            tx,
            rx,
            lost: Arc::new(AtomicBool::new(false)),
            stop,
        }
    }

    fn polling(&self) -> String {
        let p = self.poll;
        if p.subsec_millis() == 0 {
            format!("polling every {}s", p.as_secs())
        } else {
            format!("polling every {}ms", p.as_millis())
        }
    }

    /// Chooses inotify or polling, and adds the watch.
    pub(super) fn start_watch(&mut self) {
        let fs_kind = network_fs(&self.root);
        match (self.watch, fs_kind) {
            (FolderWatch::Poll, _) => {
                self.note = format!("{} (watch = \"poll\")", self.polling());
                self.set_poll();
                tracing::info!(target: "pbx_edge::folder", path = %self.root.display(), "folder: {}", self.note);
            }
            (FolderWatch::Auto, Some(kind)) => {
                self.note = format!(
                    "{}: {} is on a network file system ({kind}), where changes made by other \
                     hosts raise no inotify event (watch = \"inotify\" to use inotify anyway)",
                    self.polling(),
                    self.root.display()
                );
                self.set_poll();
                tracing::info!(target: "pbx_edge::folder", "folder: {}", self.note);
            }
            _ => match self.add_watch() {
                Ok(()) => {
                    self.mode = Mode::Inotify;
                    self.note = "inotify".into();
                    self.scanner.set_event_driven(true);
                    tracing::info!(target: "pbx_edge::folder", path = %self.root.display(), "folder: watching with inotify");
                }
                Err(e) if matches!(e.kind, notify::ErrorKind::PathNotFound) => {
                    // Gone since start() looked: watched for when it is back.
                    self.mode = Mode::Inotify;
                    self.note = "inotify".into();
                    self.scanner.set_event_driven(true);
                    self.on_root_gone();
                }
                Err(e) => self.fall_back(&watch_error(&e)),
            },
        }
    }

    fn set_poll(&mut self) {
        self.mode = Mode::Poll;
        self.watcher = None;
        self.root_gone = None;
        if self.scanner.event_driven() {
            self.scanner.set_event_driven(false);
        }
    }

    /// A recursive watch on `path` (a new inotify instance if there is none).
    fn add_watch(&mut self) -> notify::Result<()> {
        use notify::Watcher;
        if self.watcher.is_none() {
            let sink = EventSink {
                tx: self.tx.clone(),
                lost: self.lost.clone(),
                writes: HashMap::new(),
            };
            let cfg = notify::Config::default().with_follow_symlinks(false);
            self.watcher = Some(notify::INotifyWatcher::new(sink, cfg)?);
        }
        let w = self.watcher.as_mut().expect("watcher just set");
        w.watch(&self.root, notify::RecursiveMode::Recursive)
    }

    /// inotify cannot be used (any more): polling from now on.
    fn fall_back(&mut self, why: &str) {
        self.note = format!("{} instead of inotify: {why}", self.polling());
        tracing::warn!(target: "pbx_edge::folder", path = %self.root.display(), "folder: {}", self.note);
        self.set_poll();
    }

    /// `path` was deleted or moved away: its parent is watched for it.
    fn on_root_gone(&mut self) {
        use notify::Watcher;
        let Some(w) = self.watcher.as_mut() else {
            return;
        };
        let _ = w.unwatch(&self.root);
        let parent = self
            .root
            .parent()
            .filter(|p| p.is_dir())
            .map(Path::to_path_buf)
            .filter(|p| w.watch(p, notify::RecursiveMode::NonRecursive).is_ok());
        tracing::warn!(target: "pbx_edge::folder", path = %self.root.display(), "folder path is gone: waiting for it");
        self.root_gone = Some(parent);
    }

    /// `path` is there again: watched and listed again.
    fn on_root_back(&mut self) {
        use notify::Watcher;
        let Some(parent) = self.root_gone.take() else {
            return;
        };
        if let (Some(p), Some(w)) = (parent, self.watcher.as_mut()) {
            let _ = w.unwatch(&p);
        }
        match self.add_watch() {
            Ok(()) => self.scanner.request_rescan(),
            Err(e) if matches!(e.kind, notify::ErrorKind::PathNotFound) => self.on_root_gone(),
            Err(e) => self.fall_back(&watch_error(&e)),
        }
    }

    pub(super) fn publish(&self) {
        let s = &self.scanner;
        if let Ok(mut st) = self.status.lock() {
            let src = st.sources.entry("folder".to_string()).or_default();
            // A CDR store that cannot answer holds recordings back, a
            // missing folder gives none: not ready.
            src.up = s.cdr_down().is_none() && s.root_missing().is_none();
            src.error = s
                .root_missing()
                .or(s.cdr_down())
                .map(str::to_string)
                .or_else(|| s.errors.back().cloned());
            src.listen = self.root.display().to_string();
            src.watch = Some(self.note.clone());
            src.errors = s.counters.failed + s.counters.scan_errors;
            src.recordings_written = s.counters.written;
            src.recordings_failed = s.counters.failed;
            src.recordings_too_short = s.counters.too_short;
            src.recordings_unsupported = s.counters.unsupported;
            src.bytes_written = s.counters.bytes;
        }
    }

    /// One wake-up's message.
    pub(super) fn handle(&mut self, msg: Wake, now: Instant) -> Next {
        match msg {
            Wake::Stop => Next::Stop,
            Wake::Lost => {
                if self.mode == Mode::Inotify {
                    self.scanner.lost_events(now);
                }
                Next::Pass
            }
            Wake::Event(_) if self.mode != Mode::Inotify => Next::Wait,
            Wake::Event(Err(e)) => {
                if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) {
                    // A new directory could not be watched.
                    self.fall_back(&watch_error(&e));
                } else {
                    tracing::warn!(target: "pbx_edge::folder", "folder: {}; listing the folder again", watch_error(&e));
                    self.scanner.lost_events(now);
                }
                Next::Pass
            }
            Wake::Event(Ok(ev)) => match self.scanner.note_event(&ev, now) {
                EventEffect::Noted => Next::Wait,
                EventEffect::PassNow => Next::Pass,
                EventEffect::RootGone => {
                    if self.root_gone.is_none() {
                        self.on_root_gone();
                    }
                    Next::Pass
                }
                EventEffect::RootBack => {
                    self.on_root_back();
                    Next::Pass
                }
            },
        }
    }

    /// When the next pass is due.
    fn due(&self, now: Instant) -> Instant {
        // The last pass stopped at its time budget: the backlog goes on.
        if self.scanner.more() {
            return now;
        }
        let mut due = match self.mode {
            Mode::Inotify => self.scanner.next_pass(now),
            Mode::Poll => now + self.poll,
        };
        // Gone with its parent: nothing to watch, look for it.
        if let Some(None) = self.root_gone {
            due = due.min(now + self.poll);
        }
        due
    }

    /// Blocks until the next pass is due or events ask for one; `false`:
    /// stop.
    fn wait(&mut self) -> bool {
        // Gone without an event saying so (unmounted, say): watched for.
        if self.mode == Mode::Inotify
            && self.root_gone.is_none()
            && self.scanner.root_missing().is_some()
        {
            self.on_root_gone();
        }
        if self.root_gone.is_some() && self.root.is_dir() {
            self.on_root_back();
            return true;
        }
        let mut due = self.due(Instant::now());
        // Blocked for work, not stalled.
        self.live.waiting("folder");
        loop {
            let now = Instant::now();
            let left = due.saturating_duration_since(now);
            if left.is_zero() {
                return true;
            }
            let msg = match self.rx.recv_timeout(left) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => return true,
                Err(RecvTimeoutError::Disconnected) => return false,
            };
            let now = Instant::now();
            let mut next = self.handle(msg, now);
            // What else is queued, bounded: a pass still runs when due.
            for _ in 0..EVENT_QUEUE {
                let Ok(m) = self.rx.try_recv() else { break };
                next = next.max(self.handle(m, now));
            }
            if self.lost.swap(false, Ordering::SeqCst) && self.mode == Mode::Inotify {
                self.scanner.lost_events(now);
                next = next.max(Next::Pass);
            }
            if next == Next::Stop || self.stop.load(Ordering::SeqCst) {
                return false;
            }
            if next == Next::Pass {
                return true;
            }
            due = self.due(now);
        }
    }

    fn run(mut self) {
        self.start_watch();
        while !self.stop.load(Ordering::SeqCst) {
            self.live.beat("folder");
            self.scanner.scan(Instant::now());
            self.publish();
            self.live.beat("folder");
            if !self.wait() {
                break;
            }
        }
        self.live.forget("folder");
    }
}

/// The running folder source.
#[derive(Debug)]
pub struct FolderHandle {
    stop: Arc<AtomicBool>,
    wake: SyncSender<Wake>,
    thread: Option<JoinHandle<()>>,
    /// `recording.sample_rate` and `min_duration` it runs with (started
    /// by [`start`]): a reload that changes them restarts it.
    recording: Option<(crate::config::SampleRate, Duration)>,
}

impl std::fmt::Debug for Wake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Wake::Event(_) => "Event",
            Wake::Lost => "Lost",
            Wake::Stop => "Stop",
        })
    }
}

impl FolderHandle {
    /// Stops the scanner thread and waits for it (at most the conversion in
    /// progress).
    pub fn stop(mut self) {
        self.signal();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    fn signal(&self) {
        self.stop.store(true, Ordering::SeqCst);
        // A full queue wakes the thread anyway; it then sees `stop`.
        let _ = self.wake.try_send(Wake::Stop);
    }
}

impl Drop for FolderHandle {
    fn drop(&mut self) {
        self.signal();
    }
}

/// Start the folder source of `[sources.folder]` if enabled; on an error
/// the status (readyz) and the log say why, and `None`.
pub(crate) fn start_source(
    cfg: &Config,
    status: &SharedStatus,
    live: &Arc<Liveness>,
) -> Option<FolderHandle> {
    if !cfg.sources.folder.enabled {
        if let Ok(mut s) = status.lock() {
            s.sources.remove("folder");
        }
        return None;
    }
    match start(cfg, status.clone(), live.clone()) {
        Ok(h) => {
            tracing::info!(path = %cfg.sources.folder.path.display(), "watching PBX recordings");
            Some(h)
        }
        Err(e) => {
            tracing::error!("folder source: {e}");
            if let Ok(mut s) = status.lock() {
                let src = s.sources.entry("folder".into()).or_default();
                src.up = false;
                src.error = Some(e.to_string());
                src.listen = cfg.sources.folder.path.display().to_string();
            }
            None
        }
    }
}

impl crate::sources::handle::SourceHandle for FolderHandle {
    fn name(&self) -> &'static str {
        "folder"
    }

    /// Any change of `[sources.folder]`, the spool's directory or keys,
    /// `recording.sample_rate` / `min_duration`, or `[roles]`: restart (the files
    /// already taken are remembered on disk, so nothing is taken twice).
    fn reload(&mut self, cfg: &Config, changed: &[&'static str]) -> crate::sources::handle::Reload {
        if !cfg.sources.folder.enabled
            || changed.contains(&"sources.folder")
            || changed.contains(&"spool.dir")
            || changed.contains(&"spool.keys")
            || changed.contains(&"roles")
            || self
                .recording
                .is_some_and(|r| r != (cfg.recording.sample_rate, cfg.recording.min_duration))
        {
            crate::sources::handle::Reload::Restart
        } else {
            crate::sources::handle::Reload::Applied
        }
    }

    fn stop(self: Box<Self>) -> crate::sources::handle::Stopping {
        crate::sources::handle::stop_blocking(move || FolderHandle::stop(*self))
    }
}

/// Starts the folder source (`[sources.folder]`) in its own thread, writing
/// into `cfg.spool.dir`; beats `"folder"` on `live` each pass.
pub fn start(cfg: &Config, status: SharedStatus, live: Arc<Liveness>) -> io::Result<FolderHandle> {
    let mut settings = FolderSettings::from_config(&cfg.sources.folder)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    settings.keys = cfg.spool.keys.clone();
    settings.roles = crate::sources::handle::role_rules(cfg);
    settings.sample_rate = cfg.recording.sample_rate;
    settings.min_duration = cfg.recording.min_duration;
    let mut h = start_with(cfg, settings, status, live)?;
    h.recording = Some((cfg.recording.sample_rate, cfg.recording.min_duration));
    Ok(h)
}

/// [`start`] with explicit [`FolderSettings`].
pub fn start_with(
    cfg: &Config,
    settings: FolderSettings,
    status: SharedStatus,
    live: Arc<Liveness>,
) -> io::Result<FolderHandle> {
    let f = &cfg.sources.folder;
    // A `path` not there (yet: mounted later, made by the PBX on its first
    // recording) is no reason to give up: the source starts not ready,
    // saying why, and takes files once the directory appears.
    if !f.path.is_dir() {
        tracing::warn!(target: "pbx_edge::folder", path = %f.path.display(), "folder: sources.folder.path is not a directory (yet): waiting for it");
    }
    let poll = settings.poll.max(Duration::from_millis(50));
    let watch = settings.watch;
    let db = db_store(f, settings.timezone)?;
    let mut scanner = FolderScanner::new(
        &f.path,
        &cfg.spool.dir,
        &cfg.agent.id,
        f.cdr_csv.as_deref(),
        f.settle,
        settings,
    )?;
    if let Some(db) = db {
        scanner.set_cdr_store(db);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let run = FolderLoop::new(scanner, watch, poll, status, live, stop.clone());
    let wake = run.tx.clone();
    let thread = std::thread::Builder::new()
        .name("folder".into())
        .spawn(move || run.run())?;
    Ok(FolderHandle {
        stop,
        wake,
        thread: Some(thread),
        recording: None,
    })
}
