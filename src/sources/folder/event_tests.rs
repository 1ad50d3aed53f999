use super::*;
use notify::event::{
    AccessKind, AccessMode, CreateKind, DataChange, ModifyKind, RemoveKind, RenameMode,
};
use notify::{Event, EventKind};

const SETTLE: Duration = Duration::from_secs(5);

fn settings() -> FolderSettings {
    FolderSettings {
        full_scan: Duration::from_secs(3600),
        open_settle: Duration::from_secs(600),
        ..FolderSettings::default()
    }
}

fn events_scanner(root: &Path, spool: &Path) -> FolderScanner {
    fs::create_dir_all(root).unwrap();
    let mut s = FolderScanner::new(root, spool, "t", None, SETTLE, settings()).unwrap();
    s.set_event_driven(true);
    s
}

/// An event-driven scanner on `<tmp>/m` (spool `<tmp>/s`) after its
/// start-up listing at the returned instant.
fn started_events_scanner() -> (tempfile::TempDir, PathBuf, FolderScanner, Instant) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("m");
    let mut s = events_scanner(&root, &tmp.path().join("s"));
    let t0 = Instant::now();
    s.scan(t0);
    (tmp, root, s, t0)
}

/// The PBX writes `p` (`ms` of audio) and closes it: both events at `at`.
fn written_and_closed(s: &mut FolderScanner, p: &Path, ms: u32, at: Instant) {
    sln(p, ms);
    s.note_event(&ev(CREATED, p), at);
    s.note_event(&ev(CLOSED, p), at);
}

fn ev(kind: EventKind, p: &Path) -> Event {
    Event::new(kind).add_path(p.to_path_buf())
}

fn sln(p: &Path, ms: u32) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    let b: Vec<u8> = pbx_testgen::audio::speechlike(1, ms, 8000)
        .iter()
        .flat_map(|s| s.to_le_bytes())
        .collect();
    fs::write(p, b).unwrap();
}

const CREATED: EventKind = EventKind::Create(CreateKind::File);
const WRITTEN: EventKind = EventKind::Modify(ModifyKind::Data(DataChange::Any));
const CLOSED: EventKind = EventKind::Access(AccessKind::Close(AccessMode::Write));

#[test]
fn closed_after_write_then_quiet_for_settle_and_not_before() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("m");
    let mut s = events_scanner(&root, &tmp.path().join("s"));
    let t0 = Instant::now();
    assert_eq!(s.scan(t0), 0, "the start-up listing: nothing there");
    // Idle: nothing due before the safety listing.
    assert_eq!(s.next_pass(t0), t0 + Duration::from_secs(3600));

    let p = root.join("1700000200.1.sln");
    sln(&p, 200);
    assert_eq!(s.note_event(&ev(CREATED, &p), t0), EventEffect::Noted);
    assert_eq!(
        s.note_event(&ev(WRITTEN, &p), t0 + Duration::from_secs(1)),
        EventEffect::Noted
    );
    // Open: due only after open_settle.
    let t1 = t0 + Duration::from_secs(1);
    assert_eq!(s.next_pass(t1), t1 + Duration::from_secs(600));
    assert_eq!(
        s.scan(t0 + SETTLE * 2),
        0,
        "quiet for settle but not closed"
    );
    // Our own reads (open, close without write) change nothing.
    let read = EventKind::Access(AccessKind::Close(AccessMode::Read));
    assert_eq!(
        s.note_event(&ev(read, &p), t0 + SETTLE * 2),
        EventEffect::Noted
    );
    // Closed: due `settle` after the close.
    let tc = t0 + SETTLE * 2 + Duration::from_secs(1);
    assert_eq!(s.note_event(&ev(CLOSED, &p), tc), EventEffect::Noted);
    assert_eq!(s.next_pass(tc), tc + SETTLE);
    assert_eq!(s.scan(tc + SETTLE - Duration::from_millis(1)), 0);
    assert_eq!(s.scan(tc + SETTLE), 1, "{:?}", s.errors);
    assert_eq!(s.written[0].duration_ms, 200);
    // Taken once: a late close event does not bring it back.
    assert_eq!(
        s.note_event(&ev(CLOSED, &p), tc + SETTLE * 2),
        EventEffect::Noted
    );
    assert_eq!(s.scan(tc + SETTLE * 4), 0);
    assert_eq!(s.next_pass(tc + SETTLE * 4), t0 + Duration::from_secs(3600));
}

#[test]
fn reopened_after_close_waits_again() {
    let (_tmp, root, mut s, t0) = started_events_scanner();
    let p = root.join("1700000201.1.sln");
    written_and_closed(&mut s, &p, 100, t0);
    // MixMonitor opens it again and writes: open again.
    let t1 = t0 + Duration::from_secs(3);
    sln(&p, 300);
    s.note_event(&ev(WRITTEN, &p), t1);
    assert_eq!(s.scan(t0 + SETTLE * 3), 0, "written after the close: open");
    s.note_event(&ev(CLOSED, &p), t0 + SETTLE * 3);
    assert_eq!(s.scan(t0 + SETTLE * 4), 1, "{:?}", s.errors);
    assert_eq!(s.written[0].duration_ms, 300);
}

#[test]
fn new_directory_listed_at_once_and_again_later() {
    let (tmp, root, mut s, t0) = started_events_scanner();
    // mkdir -p 2026/11/24 and a file in it before its watch existed:
    // only the event of the top directory arrives.
    let d = root.join("2026/11/24");
    sln(&d.join("1700000210.1.sln"), 100);
    let top = root.join("2026");
    let dir_ev = ev(EventKind::Create(CreateKind::Folder), &top);
    assert_eq!(s.note_event(&dir_ev, t0), EventEffect::PassNow);
    assert_eq!(s.next_pass(t0), t0, "listed at once");
    assert_eq!(s.scan(t0), 0);
    // Listed again FRESH_RELIST later: catches a file made meanwhile.
    assert_eq!(s.next_pass(t0), t0 + FRESH_RELIST);
    sln(&d.join("1700000211.1.sln"), 100);
    assert_eq!(s.scan(t0 + FRESH_RELIST), 0);
    assert_eq!(s.next_pass(t0 + FRESH_RELIST), t0 + SETTLE);
    assert_eq!(s.scan(t0 + SETTLE), 1, "the first one");
    assert_eq!(s.scan(t0 + FRESH_RELIST + SETTLE), 1, "the one found later");
    // A file moved in (rename): looked at, settles from then.
    let outside = tmp.path().join("elsewhere.sln");
    sln(&outside, 100);
    let moved = d.join("1700000212.1.sln");
    fs::rename(&outside, &moved).unwrap();
    let t1 = t0 + SETTLE * 3;
    let to = EventKind::Modify(ModifyKind::Name(RenameMode::To));
    assert_eq!(s.note_event(&ev(to, &moved), t1), EventEffect::PassNow);
    assert_eq!(s.scan(t1), 0);
    assert_eq!(s.scan(t1 + SETTLE), 1);
    assert_eq!(s.counters.written, 3);
}

#[test]
fn deleted_directory_is_forgotten_and_root_events_are_reported() {
    let (tmp, root, mut s, t0) = started_events_scanner();
    let d = root.join("2026/11/24");
    let p = d.join("1700000220.1.sln");
    written_and_closed(&mut s, &p, 100, t0);
    assert_eq!(s.scan(t0 + Duration::from_secs(1)), 0);
    assert_eq!(s.next_pass(t0 + Duration::from_secs(1)), t0 + SETTLE);
    fs::remove_dir_all(root.join("2026")).unwrap();
    let rm = EventKind::Remove(RemoveKind::Folder);
    assert_eq!(
        s.note_event(&ev(rm, &root.join("2026")), t0 + Duration::from_secs(2)),
        EventEffect::Noted
    );
    assert_eq!(
        s.next_pass(t0 + Duration::from_secs(2)),
        t0 + Duration::from_secs(3600),
        "nothing left to wait for"
    );
    // The watched folder itself.
    let root_abs = s.root().to_path_buf();
    assert_eq!(s.note_event(&ev(rm, &root_abs), t0), EventEffect::RootGone);
    let from = EventKind::Modify(ModifyKind::Name(RenameMode::From));
    assert_eq!(
        s.note_event(&ev(from, &root_abs), t0),
        EventEffect::RootGone
    );
    let mk = EventKind::Create(CreateKind::Folder);
    assert_eq!(s.note_event(&ev(mk, &root_abs), t0), EventEffect::RootBack);
    // The parent's other entries are none of our business.
    let sibling = tmp.path().join("other.wav");
    assert_eq!(s.note_event(&ev(CREATED, &sibling), t0), EventEffect::Noted);
    assert_eq!(
        s.next_pass(t0 + Duration::from_secs(3)),
        t0 + Duration::from_secs(3600)
    );
    // Gone for real: reported, then listed again once back.
    fs::remove_dir_all(&root).unwrap();
    assert_eq!(s.scan(t0 + Duration::from_secs(3)), 0);
    assert!(s.root_missing().unwrap().contains("waiting for it"));
    sln(&root.join("1700000221.1.sln"), 100);
    assert_eq!(s.scan(t0 + Duration::from_secs(4)), 0);
    assert!(s.root_missing().is_none());
    assert_eq!(s.scan(t0 + Duration::from_secs(4) + SETTLE), 1);
}

#[test]
fn a_lost_event_lists_everything_and_restarts_settling() {
    let (_tmp, root, mut s, t0) = started_events_scanner();
    let a = root.join("1700000230.1.sln");
    written_and_closed(&mut s, &a, 100, t0);
    assert_eq!(s.scan(t0 + Duration::from_secs(1)), 0);
    // A file whose events were lost, then the overflow notice.
    let b = root.join("2026/1700000231.1.sln");
    sln(&b, 100);
    let overflow = Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan);
    let t1 = t0 + Duration::from_secs(4);
    assert_eq!(s.note_event(&overflow, t1), EventEffect::PassNow);
    assert_eq!(s.next_pass(t1), t1);
    assert_eq!(s.scan(t1), 0);
    // `a` settles again from the overflow on; `b` was found.
    assert_eq!(s.scan(t0 + SETTLE), 0, "settle restarted at the overflow");
    assert_eq!(s.scan(t1 + SETTLE), 2, "{:?}", s.errors);
}

#[test]
fn a_real_inotify_overflow_is_reported_and_rescanned() {
    use notify::Watcher;
    let max: usize = fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(usize::MAX);
    if max > 65_536 {
        eprintln!("fs.inotify.max_queued_events = {max}: overflow test skipped");
        return;
    }
    let (_tmp, root, mut s, t0) = started_events_scanner();
    // The handler stops at a gate: the kernel queue fills up.
    let gate = Arc::new(std::sync::Mutex::new(()));
    let got = Arc::new(std::sync::Mutex::new(Vec::<Event>::new()));
    let held = gate.lock().unwrap();
    let (g, v) = (gate.clone(), got.clone());
    let mut w = notify::INotifyWatcher::new(
        move |e: notify::Result<Event>| {
            let _open = g.lock().unwrap();
            if let Ok(e) = e {
                v.lock().unwrap().push(e);
            }
        },
        notify::Config::default(),
    )
    .unwrap();
    // Made before the watch: notify watches a new directory only after
    // its handler has seen the directory's event.
    let junk = root.join("junk");
    fs::create_dir(&junk).unwrap();
    w.watch(s.root(), notify::RecursiveMode::Recursive).unwrap();
    for i in 0..max {
        fs::write(junk.join(format!("{i}.txt")), b"x").unwrap();
    }
    // Its events cannot be queued any more.
    let lost = root.join("1700000240.1.sln");
    sln(&lost, 100);
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !got.lock().unwrap().iter().any(Event::need_rescan) {
        assert!(Instant::now() < deadline, "no overflow reported");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(w);
    let events = std::mem::take(&mut *got.lock().unwrap());
    let t1 = t0 + Duration::from_secs(1);
    let mut effect = EventEffect::Noted;
    for e in &events {
        effect = effect.max(s.note_event(e, t1));
    }
    assert_eq!(effect, EventEffect::PassNow);
    assert_eq!(s.scan(t1), 0);
    assert_eq!(s.scan(t1 + SETTLE), 1, "{:?}", s.errors);
    assert_eq!(
        json_of(&s.written[0].json)["call_id"],
        "1700000240.1",
        "the file whose events were lost"
    );
}

fn json_of(p: &Path) -> Value {
    serde_json::from_slice(&fs::read(p).unwrap()).unwrap()
}

fn sink(cap: usize) -> (EventSink, Receiver<Wake>, Arc<AtomicBool>) {
    let (tx, rx) = sync_channel(cap);
    let lost = Arc::new(AtomicBool::new(false));
    let s = EventSink {
        tx,
        lost: lost.clone(),
        writes: HashMap::new(),
    };
    (s, rx, lost)
}

#[test]
fn the_sink_keeps_what_the_scanner_uses() {
    let (mut k, _rx, _) = sink(16);
    let wav = Path::new("/r/a.wav");
    let txt = Path::new("/r/Master.csv");
    let open = EventKind::Access(AccessKind::Open(AccessMode::Any));
    let read = EventKind::Access(AccessKind::Close(AccessMode::Read));
    assert!(
        !k.wanted(&ev(open, wav)),
        "opens (our own reads among them)"
    );
    assert!(!k.wanted(&ev(read, wav)));
    assert!(!k.wanted(&ev(CREATED, txt)), "not a recording");
    assert!(!k.wanted(&ev(WRITTEN, txt)));
    assert!(k.wanted(&ev(CREATED, wav)));
    assert!(k.wanted(&ev(WRITTEN, wav)));
    assert!(!k.wanted(&ev(WRITTEN, wav)), "a run of writes: one event");
    assert!(k.wanted(&ev(CLOSED, wav)), "closed: always");
    assert!(
        k.wanted(&ev(WRITTEN, wav)),
        "written after the close: forwarded"
    );
    assert!(k.wanted(&ev(
        EventKind::Create(CreateKind::Folder),
        Path::new("/r/2026")
    )));
    let to = EventKind::Modify(ModifyKind::Name(RenameMode::To));
    assert!(
        k.wanted(&ev(to, Path::new("/r/2027"))),
        "moved in: file or directory"
    );
    let both = EventKind::Modify(ModifyKind::Name(RenameMode::Both));
    assert!(!k.wanted(&ev(both, wav)), "From and To say it");
    assert!(k.wanted(&ev(
        EventKind::Remove(RemoveKind::Folder),
        Path::new("/r/2026")
    )));
    let overflow = Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan);
    assert!(k.wanted(&overflow));
}

#[test]
fn a_full_queue_is_one_lost_signal() {
    use notify::EventHandler;
    let (mut k, rx, lost) = sink(1);
    let dir = EventKind::Create(CreateKind::Folder);
    k.handle_event(Ok(ev(dir, Path::new("/r/a"))));
    k.handle_event(Ok(ev(dir, Path::new("/r/b"))));
    assert!(lost.load(Ordering::SeqCst));
    assert!(matches!(rx.try_recv(), Ok(Wake::Event(Ok(_)))));
    assert!(rx.try_recv().is_err(), "nothing more fitted");
}

#[test]
fn watch_limit_falls_back_to_polling_with_a_warning() {
    use std::sync::Mutex;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("m");
    fs::create_dir_all(&root).unwrap();
    let settle = Duration::from_millis(100);
    let scanner =
        FolderScanner::new(&root, &tmp.path().join("s"), "t", None, settle, settings()).unwrap();
    let status: SharedStatus = Arc::new(Mutex::new(crate::status::Status::default()));
    let mut lp = FolderLoop::new(
        scanner,
        FolderWatch::Inotify,
        Duration::from_secs(1),
        status.clone(),
        Liveness::new(),
        Arc::new(AtomicBool::new(false)),
    );
    lp.start_watch();
    assert_eq!(lp.mode, Mode::Inotify);
    assert!(lp.scanner.event_driven());
    lp.publish();
    assert_eq!(
        status.lock().unwrap().sources["folder"].watch.as_deref(),
        Some("inotify")
    );
    // A new directory could not be watched: ENOSPC from inotify_add_watch.
    let err = notify::Error::new(notify::ErrorKind::MaxFilesWatch);
    assert_eq!(lp.handle(Wake::Event(Err(err)), Instant::now()), Next::Pass);
    assert_eq!(lp.mode, Mode::Poll);
    assert!(lp.watcher.is_none(), "the inotify instance is closed");
    assert!(!lp.scanner.event_driven());
    lp.publish();
    {
        let st = status.lock().unwrap();
        let f = &st.sources["folder"];
        assert!(f.up, "not a failure of the source");
        let w = f.watch.as_deref().unwrap();
        assert!(w.starts_with("polling every 1s instead of inotify"), "{w}");
        assert!(w.contains("fs.inotify.max_user_watches"), "{w}");
        let (_, parts) = crate::status::readiness(&st);
        assert_eq!(parts["source.folder"], "ok");
        assert_eq!(parts["source.folder.watch"], w);
    }
    // Later events of the closed watch are ignored; polling finds files.
    let p = root.join("2026/1700000250.1.sln");
    sln(&p, 100);
    let stale = ev(CREATED, &lp.scanner.root().join("2026/1700000250.1.sln"));
    assert_eq!(
        lp.handle(Wake::Event(Ok(stale)), Instant::now()),
        Next::Wait
    );
    let t0 = Instant::now();
    assert_eq!(lp.scanner.scan(t0), 0);
    assert_eq!(lp.scanner.scan(t0 + settle), 1, "{:?}", lp.scanner.errors);
}

#[test]
fn local_file_systems_are_not_network_ones() {
    let tmp = tempfile::tempdir().unwrap();
    assert_eq!(network_fs(tmp.path()), None);
    assert_eq!(network_fs(Path::new("/nonexistent/x")), None);
}
