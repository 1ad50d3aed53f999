//! The scanner: listings and inotify events → files that settled → sets
//! converted (after their CDR row, if one is awaited), `after_delivery`
//! actions once delivered.

use super::*;

mod outside;

// ---------------------------------------------------------------- scanner

/// Counters of the folder source.
#[derive(Debug, Default, Clone)]
pub struct FolderCounters {
    pub written: u64,
    pub failed: u64,
    pub bytes: u64,
    pub skipped_seen: u64,
    pub scan_errors: u64,
    /// Recordings shorter than `recording.min_duration`: not kept.
    pub too_short: u64,
    /// Recordings in a format pbx-edge does not decode (counted in `failed`
    /// too), each reported once.
    pub unsupported: u64,
}

/// What the CDR store said of one settled recording.
#[derive(Debug)]
enum Lookup {
    NoStore,
    Found(Box<CdrRow>),
    NotYet,
    Down,
    /// The store could not answer for `cdr_wait`: taken without a row.
    GaveUp,
}

#[derive(Debug, Clone)]
struct Watch {
    key: FileKey,
    /// Since when the file is known to be unchanged.
    since: Instant,
    /// The pass that last read its metadata.
    checked: Instant,
}

/// How long after it appeared a new directory is listed again (events mode):
/// notify adds the watch of a new directory only after reporting it, so a
/// file created in it in between raises no event.
pub(super) const FRESH_RELIST: Duration = Duration::from_secs(2);

/// With `after_delivery`, how often (at most) an idle events-mode scanner
/// asks the spool whether a watched recording was delivered.
const AFTER_DELIVERY_POLL: Duration = Duration::from_secs(5);

/// A long pass reports alive (and looks whether it is to stop) every this
/// many files listed or looked at; after every recording converted, and
/// before each CDR lookup, in any case.
const BEAT_EVERY: u32 = 256;

/// Settled recordings looked up in the CDR store at a time (then converted,
/// before the next are looked up).
const LOOKUP_CHUNK: usize = 100;

/// What an inotify event asks of the thread that owns the watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum EventEffect {
    /// Noted; the next pass is due when [`FolderScanner::next_pass`] says.
    Noted,
    /// Something is to be listed: a pass now.
    PassNow,
    /// `path` is back (created or moved in again): watch it again, then a
    /// full listing.
    RootBack,
    /// `path` itself was deleted or moved away.
    RootGone,
}

/// Scans a PBX folder and converts settled recording sets (no thread: call
/// [`FolderScanner::scan`] periodically, or feed it inotify events with
/// [`FolderScanner::note_event`] and call `scan` at
/// [`FolderScanner::next_pass`]; [`start`] does that in a thread).
#[derive(Debug)]
pub struct FolderScanner {
    root: PathBuf,
    spool: PathBuf,
    spool_canon: Option<PathBuf>,
    agent_id: String,
    settle: Duration,
    settings: FolderSettings,
    seen: SeenFile,
    cdr: Option<Box<dyn CdrStore>>,
    /// Why the CDR store cannot answer, while it cannot.
    cdr_down: Option<String>,
    /// The store's error last logged (once per distinct cause, not per
    /// recording waiting).
    cdr_down_cause: Option<String>,
    /// While the store cannot answer: recordings past `cdr_wait` were taken
    /// without their row (said once in the log).
    cdr_down_gave_up: bool,
    /// The spool database, for `after_delivery` (opened when first needed).
    spool_db: Option<crate::spool::Spool>,
    /// Watches whose action failed (reported once each).
    after_failed: HashSet<String>,
    /// `after_delivery`: some recording taken is not delivered yet.
    after_pending: bool,
    watching: HashMap<PathBuf, Watch>,
    /// Directories listed: mtime then, subdirectories (polling only).
    dir_cache: HashMap<PathBuf, ((i64, i64), Vec<PathBuf>)>,
    full_scan_at: Instant,
    /// Settled sets waiting for their CDR row: key → first settled.
    waiting_cdr: HashMap<PathBuf, Instant>,
    /// Files whose set failed with an I/O error (permission denied, EIO,
    /// ...: maybe transient), with the version that failed: not marked
    /// seen, not tried again before the next full listing.
    io_failed: HashMap<PathBuf, FileKey>,
    /// Why `path` cannot be listed (deleted, moved away), while it cannot.
    root_missing: Option<String>,
    /// The next pass lists the whole tree.
    rescan: bool,
    /// Changes come as inotify events ([`FolderScanner::note_event`]).
    events: bool,
    /// Events mode: paths to look at in the next pass (a directory is listed
    /// with everything below it).
    to_list: HashSet<PathBuf>,
    /// Events mode: new directories to list again, and when.
    fresh: Vec<(PathBuf, Instant)>,
    /// Events mode: the last event of each file since the last pass.
    touched: HashMap<PathBuf, Instant>,
    /// Events mode: files written to and not closed since.
    open: HashSet<PathBuf>,
    /// WAVs looked at once settled: the version looked at, and whether its
    /// header was never finalised (data size 0 with audio after it: still
    /// open, it waits like one, [`FolderSettings::open_settle`]).
    unfinalised: HashMap<PathBuf, (FileKey, bool)>,
    /// Reports the thread alive during a pass; says when to stop.
    pulse: Pulse,
    /// Calls of [`FolderScanner::tick`] (a beat every [`BEAT_EVERY`]).
    ticks: u32,
    /// The last pass ended at its time budget with settled recordings left:
    /// the next pass is due at once.
    more: bool,
    pub counters: FolderCounters,
    pub written: Vec<Converted>,
    /// Recent errors (at most 100 kept).
    pub errors: VecDeque<String>,
}

impl FolderScanner {
    pub fn new(
        root: &Path,
        spool: &Path,
        agent_id: &str,
        cdr_csv: Option<&Path>,
        settle: Duration,
        settings: FolderSettings,
    ) -> io::Result<Self> {
        create_private_dir(spool)?;
        // Conversions a crash cut off: redone, since their files were not
        // marked seen.
        for e in fs::read_dir(spool)?.flatten() {
            let n = e.file_name();
            let n = n.to_string_lossy();
            if n.starts_with('.') && n.ends_with(FOLDER_TMP) {
                let _ = fs::remove_file(e.path());
            }
        }
        let seen = SeenFile::open(spool)?;
        let cdr = cdr_csv.map(|p| {
            Box::new(CsvStore(CdrFollower::with_columns(
                p,
                settings.max_cdr_rows,
                settings.csv_columns.clone(),
                settings.timezone,
            ))) as Box<dyn CdrStore>
        });
        // Absolute, as inotify events name the files (not canonical: the
        // configured path is kept, symbolic links and all).
        let root = std::path::absolute(root)?;
        Ok(FolderScanner {
            root,
            spool: spool.to_path_buf(),
            spool_canon: fs::canonicalize(spool).ok(),
            agent_id: agent_id.to_string(),
            settle,
            settings,
            seen,
            cdr,
            cdr_down: None,
            cdr_down_cause: None,
            cdr_down_gave_up: false,
            spool_db: None,
            after_failed: HashSet::new(),
            after_pending: false,
            watching: HashMap::new(),
            dir_cache: HashMap::new(),
            full_scan_at: Instant::now(),
            waiting_cdr: HashMap::new(),
            io_failed: HashMap::new(),
            root_missing: None,
            rescan: false,
            events: false,
            to_list: HashSet::new(),
            fresh: Vec::new(),
            touched: HashMap::new(),
            open: HashSet::new(),
            unfinalised: HashMap::new(),
            pulse: Pulse::default(),
            ticks: 0,
            more: false,
            counters: FolderCounters::default(),
            written: Vec::new(),
            errors: VecDeque::new(),
        })
    }

    /// Uses `store` for call details (replacing Master.csv, if any).
    pub fn set_cdr_store(&mut self, mut store: Box<dyn CdrStore>) {
        store.set_pulse(self.pulse.clone());
        self.cdr = Some(store);
    }

    /// How passes report alive and learn to stop (the CDR store's reads too).
    pub fn set_pulse(&mut self, pulse: Pulse) {
        if let Some(c) = self.cdr.as_mut() {
            c.set_pulse(pulse.clone());
        }
        self.pulse = pulse;
    }

    /// Whether the last pass left settled recordings for the next one (it
    /// reached [`FolderSettings::pass_budget`]): the next pass is due now.
    pub fn more(&self) -> bool {
        self.more
    }

    /// A file listed or looked at: reports alive every [`BEAT_EVERY`];
    /// `false`: asked to stop.
    fn tick(&mut self) -> bool {
        self.ticks = self.ticks.wrapping_add(1);
        if self.ticks % BEAT_EVERY == 0 {
            self.pulse.beat()
        } else {
            !self.pulse.stopping()
        }
    }

    /// Why the CDR store cannot answer now, if it cannot.
    pub fn cdr_down(&self) -> Option<&str> {
        self.cdr_down.as_deref()
    }

    /// Why `path` cannot be listed now (it was deleted or moved away).
    pub fn root_missing(&self) -> Option<&str> {
        self.root_missing.as_deref()
    }

    /// The folder watched (absolute).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Switches to passes driven by inotify events (`true`; the caller has
    /// just added the watch) or back to polling. Either way the next pass
    /// lists the whole tree.
    pub fn set_event_driven(&mut self, on: bool) {
        self.events = on;
        self.dir_cache.clear();
        self.to_list.clear();
        self.fresh.clear();
        self.touched.clear();
        self.open.clear();
        self.rescan = true;
    }

    /// Whether passes are driven by inotify events.
    pub fn event_driven(&self) -> bool {
        self.events
    }

    /// The next pass lists the whole tree.
    pub fn request_rescan(&mut self) {
        self.rescan = true;
    }

    /// Events were lost (inotify queue overflow, a watch error): nothing
    /// said since can be trusted. The next pass lists the whole tree, every
    /// settle wait starts again at `now`, and no file counts as open.
    pub fn lost_events(&mut self, now: Instant) {
        self.rescan = true;
        self.open.clear();
        self.touched.clear();
        for w in self.watching.values_mut() {
            w.since = now;
        }
    }

    fn error(&mut self, msg: String) {
        tracing::error!(target: "pbx_edge::folder", "{msg}");
        if self.errors.len() >= 100 {
            self.errors.pop_front();
        }
        self.errors.push_back(msg);
    }

    fn is_spool(&self, p: &Path) -> bool {
        p.starts_with(&self.spool)
            || self
                .spool_canon
                .as_deref()
                .is_some_and(|c| p.starts_with(c))
    }

    fn too_old(&self, md: &fs::Metadata) -> bool {
        self.settings.max_age.is_some_and(|age| {
            md.modified()
                .ok()
                .and_then(|m| m.elapsed().ok())
                .is_some_and(|e| e > age)
        })
    }

    /// How long `p` must stay unchanged.
    fn need(&self, p: &Path) -> Duration {
        if self.open.contains(p) || self.unfinalised.get(p).is_some_and(|(_, u)| *u) {
            self.settings.open_settle.max(self.settle)
        } else {
            self.settle
        }
    }

    /// Forgets `p` and everything below it (deleted or moved away).
    fn forget(&mut self, p: &Path) {
        self.watching.retain(|k, _| !k.starts_with(p));
        self.touched.retain(|k, _| !k.starts_with(p));
        self.open.retain(|k| !k.starts_with(p));
        self.to_list.retain(|k| !k.starts_with(p));
        self.fresh.retain(|(k, _)| !k.starts_with(p));
    }

    /// Takes in one inotify event (events mode) at `now`.
    pub fn note_event(&mut self, ev: &notify::Event, now: Instant) -> EventEffect {
        if ev.need_rescan() {
            self.lost_events(now);
            return EventEffect::PassNow;
        }
        let mut effect = EventEffect::Noted;
        for p in &ev.paths {
            effect = effect.max(self.note_path(&ev.kind, p, now));
        }
        effect
    }

    fn note_path(&mut self, kind: &notify::EventKind, p: &Path, now: Instant) -> EventEffect {
        use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
        use notify::EventKind as K;
        if p == self.root {
            return match kind {
                K::Remove(_) | K::Modify(ModifyKind::Name(RenameMode::From)) => {
                    EventEffect::RootGone
                }
                K::Create(_) | K::Modify(ModifyKind::Name(RenameMode::To)) => EventEffect::RootBack,
                _ => EventEffect::Noted,
            };
        }
        // Not below `path` (the parent's watch, while `path` is gone), too
        // deep, or our own output.
        let Ok(rel) = p.strip_prefix(&self.root) else {
            return EventEffect::Noted;
        };
        if rel.components().count() > self.settings.max_depth + 1 || self.is_spool(p) {
            return EventEffect::Noted;
        }
        let audio = p
            .file_name()
            .is_some_and(|n| is_audio_name(&n.to_string_lossy()));
        match kind {
            K::Access(AccessKind::Close(AccessMode::Write)) => {
                if audio {
                    self.touched.insert(p.to_path_buf(), now);
                    self.open.remove(p);
                }
                EventEffect::Noted
            }
            K::Access(_) => EventEffect::Noted,
            K::Create(CreateKind::File) | K::Modify(ModifyKind::Data(_)) => {
                if audio {
                    self.touched.insert(p.to_path_buf(), now);
                    self.open.insert(p.to_path_buf());
                }
                EventEffect::Noted
            }
            K::Modify(ModifyKind::Metadata(_)) => {
                if audio {
                    self.touched.insert(p.to_path_buf(), now);
                }
                EventEffect::Noted
            }
            K::Modify(ModifyKind::Name(RenameMode::From)) | K::Remove(_) => {
                self.forget(p);
                EventEffect::Noted
            }
            // A rename gives From and To as well.
            K::Modify(ModifyKind::Name(RenameMode::Both)) => EventEffect::Noted,
            // A new directory, a file or directory moved in, or an event
            // that does not say what happened: look at it.
            _ => {
                self.to_list.insert(p.to_path_buf());
                EventEffect::PassNow
            }
        }
    }

    /// When the next pass is due in events mode (never before `now`): when
    /// a file may have settled, a new directory is listed again, the safety
    /// listing is due, or — every [`FolderSettings::poll`] — recordings wait
    /// for their CDR row, the CDR store is down, `path` is missing or a
    /// delivery is awaited.
    pub fn next_pass(&self, now: Instant) -> Instant {
        let mut next = self.full_scan_at + self.settings.full_scan;
        if self.rescan || self.more || !self.to_list.is_empty() {
            return now;
        }
        for (p, w) in &self.watching {
            let last = self.touched.get(p).map_or(w.since, |t| (*t).max(w.since));
            let due = last + self.need(p);
            // Past due and still here: it waits for its CDR row or for the
            // other leg, which have their own deadlines.
            if due > now {
                next = next.min(due);
            }
        }
        for (p, t) in &self.touched {
            if !self.watching.contains_key(p) {
                next = next.min(*t + self.need(p));
            }
        }
        for (_, t) in &self.fresh {
            next = next.min(*t);
        }
        if !self.waiting_cdr.is_empty() || self.root_missing.is_some() || self.cdr_down.is_some() {
            next = next.min(now + self.settings.poll);
        }
        if self.after_pending {
            next = next.min(now + self.settings.poll.max(AFTER_DELIVERY_POLL));
        }
        next.max(now)
    }

    /// Whether `path` is there; notes (once) when it goes and comes back.
    fn root_present(&mut self) -> bool {
        match fs::metadata(&self.root) {
            Ok(m) if m.is_dir() => {
                if self.root_missing.take().is_some() {
                    tracing::info!(target: "pbx_edge::folder", path = %self.root.display(), "folder path is back: listing it");
                    self.rescan = true;
                }
                true
            }
            r => {
                if self.root_missing.is_none() {
                    let why = match r {
                        Ok(_) => "not a directory".to_string(),
                        Err(e) => e.to_string(),
                    };
                    let msg = format!(
                        "folder: sources.folder.path {}: {why}; waiting for it to come back",
                        self.root.display()
                    );
                    self.counters.scan_errors += 1;
                    self.error(msg.clone());
                    self.root_missing = Some(msg);
                }
                // Nothing below it is there any more.
                self.watching.clear();
                self.waiting_cdr.clear();
                self.dir_cache.clear();
                self.to_list.clear();
                self.fresh.clear();
                self.touched.clear();
                self.open.clear();
                false
            }
        }
    }

    /// Lists `dir` and below: audio files into `out`. `cached`: a directory
    /// whose mtime has not changed since it was listed (and was old enough
    /// then not to be racy) holds no new files, only its subdirectories are
    /// visited (polling; files still settling are re-read from `watching` by
    /// `scan`).
    fn walk(
        &mut self,
        dir: &Path,
        depth: usize,
        out: &mut Vec<(PathBuf, fs::Metadata)>,
        cached: bool,
    ) {
        let dir_mtime = fs::metadata(dir).ok().map(|m| (m.mtime(), m.mtime_nsec()));
        if let (true, Some(mt), Some(c)) = (cached, dir_mtime, self.dir_cache.get(dir)) {
            if c.0 == mt {
                let subdirs = c.1.clone();
                for sub in subdirs {
                    if !self.tick() {
                        return;
                    }
                    if depth < self.settings.max_depth {
                        self.walk(&sub, depth + 1, out, cached);
                    }
                }
                return;
            }
        }
        let mut subdirs = Vec::new();
        let rd = match fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) => {
                self.counters.scan_errors += 1;
                self.error(format!("folder: cannot list {}: {e}", dir.display()));
                return;
            }
        };
        for entry in rd.flatten() {
            // Asked to stop: the listing is cut short (and not cached).
            if !self.tick() {
                return;
            }
            let p = entry.path();
            let Ok(ft) = entry.file_type() else { continue };
            if ft.is_dir() {
                // Never take our own output (a spool inside the PBX folder).
                if self.spool_canon.as_deref() == fs::canonicalize(&p).ok().as_deref() {
                    continue;
                }
                subdirs.push(p.clone());
                if depth < self.settings.max_depth {
                    self.walk(&p, depth + 1, out, cached);
                }
            } else if ft.is_file() {
                let name = entry.file_name();
                if !is_audio_name(&name.to_string_lossy()) {
                    continue;
                }
                if let Ok(md) = entry.metadata() {
                    if !self.too_old(&md) {
                        out.push((p, md));
                    }
                }
            }
        }
        if !cached || self.pulse.stopping() {
            return;
        }
        // Cache only a listing that cannot race a file created in the same
        // mtime tick: the directory must have been quiet for 2 s.
        let quiet = fs::metadata(dir)
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|m| m.elapsed().ok())
            .is_some_and(|e| e > Duration::from_secs(2));
        match (dir_mtime, quiet) {
            (Some(mt), true) if self.dir_cache.len() < 100_000 => {
                self.dir_cache.insert(dir.to_path_buf(), (mt, subdirs));
            }
            _ => {
                self.dir_cache.remove(dir);
            }
        }
    }

    /// Events mode, no full listing: what the events named (directories
    /// listed with everything below them).
    fn look_at_events(&mut self, now: Instant, out: &mut Vec<(PathBuf, fs::Metadata)>) {
        let mut look: Vec<(PathBuf, bool)> = self.to_list.drain().map(|p| (p, true)).collect();
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.fresh)
            .into_iter()
            .partition(|(_, t)| *t <= now);
        self.fresh = later;
        look.extend(due.into_iter().map(|(p, _)| (p, false)));
        // One look per path; an event's (listed again later) wins.
        look.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        look.dedup_by(|a, b| a.0 == b.0);
        for (p, from_event) in look {
            let Ok(md) = fs::symlink_metadata(&p) else {
                continue;
            };
            if md.is_dir() {
                if self.is_spool(&p)
                    || self.spool_canon.as_deref() == fs::canonicalize(&p).ok().as_deref()
                {
                    continue;
                }
                let depth = p
                    .strip_prefix(&self.root)
                    .map_or(0, |r| r.components().count());
                if depth > self.settings.max_depth {
                    continue;
                }
                self.walk(&p, depth, out, false);
                if from_event {
                    self.fresh.push((p, now + FRESH_RELIST));
                }
            } else if md.is_file()
                && p.file_name()
                    .is_some_and(|n| is_audio_name(&n.to_string_lossy()))
                && !self.too_old(&md)
            {
                out.push((p, md));
            }
        }
    }

    /// One pass: notices new and changed files, converts the sets whose files
    /// have all been unchanged for `settle` (and, with inotify, closed).
    /// Returns how many were written.
    ///
    /// A long pass reports alive through its [`Pulse`] and ends early when
    /// asked to stop (a listing cut short is done again in full by the next
    /// pass), or once it has converted for [`FolderSettings::pass_budget`]
    /// (the next pass goes on at once: [`FolderScanner::more`]).
    pub fn scan(&mut self, now: Instant) -> usize {
        self.more = false;
        self.after_delivery_pass();
        if !self.root_present() {
            return 0;
        }
        // A full listing now and then, whatever the directory mtimes or the
        // events say.
        if self.rescan
            || now.saturating_duration_since(self.full_scan_at) >= self.settings.full_scan
        {
            self.rescan = false;
            self.dir_cache.clear();
            self.full_scan_at = now;
            // Files that failed with an I/O error get another attempt.
            self.io_failed.clear();
            // New directories among them are listed again all the same.
            for p in std::mem::take(&mut self.to_list) {
                self.fresh.push((p, now + FRESH_RELIST));
            }
            let root = self.root.clone();
            let mut found = Vec::new();
            self.walk(&root, 0, &mut found, !self.events);
            if self.pulse.stopping() {
                self.rescan = true;
                return 0;
            }
            return self.settle_and_take(found, now);
        }
        let mut found = Vec::new();
        if self.events {
            self.look_at_events(now, &mut found);
        } else {
            let root = self.root.clone();
            self.walk(&root, 0, &mut found, true);
        }
        if self.pulse.stopping() {
            self.rescan = true;
            return 0;
        }
        self.settle_and_take(found, now)
    }

    fn settle_and_take(&mut self, mut found: Vec<(PathBuf, fs::Metadata)>, now: Instant) -> usize {
        // Files still settling (or written to since the last pass) that the
        // listing did not cover.
        let listed: HashSet<PathBuf> = found.iter().map(|(p, _)| p.clone()).collect();
        let mut pending: Vec<PathBuf> = self
            .watching
            .keys()
            .chain(self.touched.keys())
            .filter(|p| !listed.contains(*p))
            .cloned()
            .collect();
        pending.sort();
        pending.dedup();
        for p in pending {
            if !self.tick() {
                return 0;
            }
            if let Ok(md) = fs::symlink_metadata(&p) {
                if md.is_file() && (self.watching.contains_key(&p) || !self.too_old(&md)) {
                    found.push((p, md));
                }
            }
        }
        let mut present: HashMap<PathBuf, FileKey> = HashMap::new();
        for (p, md) in found {
            let key = file_key(&md);
            if self.seen.contains(&key) {
                continue;
            }
            present.insert(p, key);
        }
        self.watching.retain(|p, _| present.contains_key(p));
        for (p, key) in &present {
            // An event after the last look: unchanged since that event (the
            // writes before it are in what was just read).
            let event = self.touched.remove(p).map(|t| t.min(now));
            match self.watching.get_mut(p) {
                Some(w) => {
                    match event {
                        Some(t) if t >= w.checked => w.since = t,
                        _ if w.key != *key => w.since = now,
                        _ => {}
                    }
                    w.key = *key;
                    w.checked = now;
                }
                None => {
                    self.watching.insert(
                        p.clone(),
                        Watch {
                            key: *key,
                            since: event.unwrap_or(now),
                            checked: now,
                        },
                    );
                }
            }
        }
        // What the events said is in `watching` now.
        self.touched.clear();
        let watching = &self.watching;
        self.open.retain(|p| watching.contains_key(p));
        // A WAV settled whose header still says it holds no audio while
        // audio follows was never finalised by its writer (Asterisk writes
        // the sizes at close): still open. It waits like a file written to
        // and not closed (`open_settle`), then is read to its end.
        let settle = self.settle;
        let look: Vec<(PathBuf, FileKey)> = present
            .iter()
            .filter(|(p, k)| {
                self.unfinalised.get(*p).is_none_or(|(seen, _)| seen != *k)
                    && self
                        .watching
                        .get(*p)
                        .is_some_and(|w| now.saturating_duration_since(w.since) >= settle)
            })
            .map(|(p, k)| (p.clone(), *k))
            .collect();
        for (p, k) in look {
            let open = wav_unfinalised(&p);
            if open {
                tracing::info!(target: "pbx_edge::folder", file = %crate::logmask::file_for_log(&p), "folder: WAV header data size still 0: taken as still being written (waits open_settle, {:?}, unchanged)", self.settings.open_settle);
            }
            self.unfinalised.insert(p, (k, open));
        }
        self.unfinalised.retain(|p, _| present.contains_key(p));
        let files: Vec<PathBuf> = present.keys().cloned().collect();
        let io_failed = &self.io_failed;
        let settled: Vec<RecordingSet> = group_sets(&files)
            .into_iter()
            // Failed with an I/O error in this version: waits for the next
            // full listing (a changed file is a new version, tried anew).
            .filter(|set| {
                !set.files().iter().any(|f| {
                    present
                        .get(*f)
                        .is_some_and(|k| io_failed.get(*f) == Some(k))
                })
            })
            .filter(|set| {
                set.files().iter().all(|f| {
                    self.watching.get(*f).is_some_and(|w| {
                        now.saturating_duration_since(w.since) >= self.need(f.as_path())
                    })
                })
            })
            .collect();
        if settled.is_empty() {
            self.probe_cdr();
        }
        let keys: HashSet<&PathBuf> = settled.iter().map(|s| &s.key).collect();
        self.waiting_cdr.retain(|k, _| keys.contains(k));
        // A backlog is converted a chunk at a time, reporting alive after
        // each recording: a pass of thousands must not look stalled (the
        // systemd watchdog) nor hold up a stop.
        let started = Instant::now();
        let mut written = 0;
        let mut tried = 0;
        let mut from = 0;
        while from < settled.len() {
            let chunk = &settled[from..settled.len().min(from + LOOKUP_CHUNK)];
            if !self.pulse.beat() {
                return written;
            }
            let rows = self.lookup_cdr(chunk, settled.len() - from);
            if self.pulse.stopping() {
                return written;
            }
            if rows.iter().any(|r| matches!(r, Lookup::Down)) {
                // The store cannot answer (Master.csv unreadable, database
                // down): each recording left waits for it up to `cdr_wait`
                // from when it settled, then goes with what its file name
                // tells, like one whose row never came. The store is not
                // asked again in this pass.
                let mut due = Vec::new();
                for s in &settled[from..] {
                    let first = *self.waiting_cdr.entry(s.key.clone()).or_insert(now);
                    if now.saturating_duration_since(first) >= self.settings.cdr_wait {
                        due.push(s.clone());
                    }
                }
                if !due.is_empty() && !self.cdr_down_gave_up {
                    self.cdr_down_gave_up = true;
                    tracing::warn!(target: "pbx_edge::folder", "folder: {}; recordings that waited cdr_wait ({:?}) are taken with what their file names tell", self.cdr_down.as_deref().unwrap_or("the CDR store cannot answer"), self.settings.cdr_wait);
                }
                for set in &due {
                    if tried > 0 && started.elapsed() >= self.settings.pass_budget {
                        self.more = true;
                        return written;
                    }
                    tried += 1;
                    if self.take(set, Lookup::GaveUp, &present, now) {
                        written += 1;
                    }
                    if !self.pulse.beat() {
                        return written;
                    }
                }
                return written;
            }
            for (set, row) in chunk.iter().zip(rows) {
                // Past the budget: the rest in the next pass (one at least
                // in each, so a backlog always moves on).
                if tried > 0 && started.elapsed() >= self.settings.pass_budget {
                    self.more = true;
                    return written;
                }
                tried += 1;
                if self.take(set, row, &present, now) {
                    written += 1;
                }
                if !self.pulse.beat() {
                    return written;
                }
            }
            from += chunk.len();
        }
        written
    }

    /// Converts one settled set (or leaves it waiting for its CDR row).
    fn take(
        &mut self,
        set: &RecordingSet,
        lookup: Lookup,
        present: &HashMap<PathBuf, FileKey>,
        now: Instant,
    ) -> bool {
        let note = matches!(lookup, Lookup::GaveUp).then(|| {
            format!(
                "no CDR details: the CDR store could not be read for cdr_wait ({}); the call's \
                 details are what the file name tells",
                self.cdr_down_cause.as_deref().unwrap_or("no answer")
            )
        });
        let row = match lookup {
            Lookup::Down => return false,
            Lookup::Found(r) => Some(*r),
            Lookup::NoStore | Lookup::GaveUp => None,
            Lookup::NotYet => {
                let first = *self.waiting_cdr.entry(set.key.clone()).or_insert(now);
                if now.saturating_duration_since(first) < self.settings.cdr_wait {
                    return false;
                }
                None
            }
        };
        self.waiting_cdr.remove(&set.key);
        let mtime = set
            .files()
            .iter()
            .filter_map(|f| fs::metadata(f).ok())
            .map(|m| Timestamp::from_micros(m.mtime() * 1_000_000 + m.mtime_nsec() / 1000))
            .max()
            .unwrap_or(Timestamp::ZERO);
        // A file taken before and written to since (a headerless file of a
        // call on hold when the daemon started): a recording of its own,
        // under an id of this version's (its files' sizes), not the first
        // one's, which the spool and the cloud hold already.
        let retake = set
            .files()
            .iter()
            .any(|f| {
                present
                    .get(*f)
                    .is_some_and(|k| self.seen.taken_before(k.0, f))
            })
            .then(|| {
                set.files()
                    .iter()
                    .filter_map(|f| present.get(*f))
                    .map(|k| k.1)
                    .sum::<u64>()
            });
        let res = convert(
            set,
            row.as_ref(),
            &self.spool,
            &self.agent_id,
            &self.settings,
            mtime,
            note,
            retake,
        );
        let ok = match res {
            Ok(c) => {
                tracing::info!(target: "pbx_edge::folder", id = %c.id, set = %crate::logmask::file_for_log(&set.key), "folder recording taken");
                self.counters.written += 1;
                self.counters.bytes += c.bytes;
                crate::recording::TOTALS.wrote(c.bytes);
                self.watch_delivery(&c.id.clone(), set);
                self.written.push(c);
                if self.written.len() > 1000 {
                    self.written.remove(0);
                }
                true
            }
            Err(e @ FolderError::TooShort { .. }) => {
                // Not kept (CONTRACT §2 min_duration), not an error; marked
                // seen below so it is never tried again. Not delivered:
                // `after_delivery` never moves or deletes its files.
                self.counters.too_short += 1;
                tracing::info!(target: "pbx_edge::folder", "folder: {e}");
                false
            }
            Err(e @ FolderError::Write { .. }) => {
                // Our side (spool full, ...): not the PBX file's fault. Not
                // marked: tried again once it has settled again.
                self.counters.failed += 1;
                crate::recording::TOTALS.failed();
                self.error(format!(
                    "folder: {} not taken, will retry: {e}",
                    crate::logmask::file_for_log(&set.key)
                ));
                for f in set.files() {
                    if let Some(w) = self.watching.get_mut(f.as_path()) {
                        w.since = now;
                    }
                }
                return false;
            }
            Err(e @ FolderError::Io { .. }) => {
                // Reading the PBX's file failed (permission denied, EIO, a
                // file replaced meanwhile): maybe not for good. Not marked
                // seen; tried once more at each full listing, counted and
                // logged once per attempt.
                self.counters.failed += 1;
                crate::recording::TOTALS.failed();
                self.error(format!(
                    "folder: {} not taken, will retry at the next full listing: {e}",
                    crate::logmask::file_for_log(&set.key)
                ));
                for f in set.files() {
                    if let Some(k) = present.get(f) {
                        self.io_failed.insert(f.clone(), *k);
                    }
                }
                if self.io_failed.len() > 100_000 {
                    self.io_failed.clear();
                }
                return false;
            }
            Err(e) => {
                if matches!(e, FolderError::Unsupported { .. }) {
                    self.counters.unsupported += 1;
                }
                self.counters.failed += 1;
                crate::recording::TOTALS.failed();
                self.error(format!(
                    "folder: {} not taken: {e}",
                    crate::logmask::file_for_log(&set.key)
                ));
                false
            }
        };
        // Taken or refused: either way not tried again (a broken file does not
        // become readable by waiting; a changed one has a new key).
        let marks: Vec<(FileKey, PathBuf)> = set
            .files()
            .into_iter()
            .filter_map(|f| present.get(f).map(|k| (*k, f.clone())))
            .collect();
        if let Err(e) = self.seen.add(&marks) {
            self.error(format!(
                "folder: cannot write {}: {e}",
                self.seen.path.display()
            ));
        }
        for f in set.files() {
            self.watching.remove(f);
            self.open.remove(f);
        }
        ok
    }
}
