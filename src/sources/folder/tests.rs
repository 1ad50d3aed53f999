use super::*;

#[test]
fn freepbx_name() {
    let n = parse_freepbx_name("out-5551234-1001-20261124-101502-1700000000.123").unwrap();
    assert_eq!(n.kind, "out");
    assert_eq!(n.dst, "5551234");
    assert_eq!(n.src, "1001");
    assert_eq!(n.uniqueid, "1700000000.123");
    assert_eq!(n.started_at.to_rfc3339(), "2026-11-24T10:15:02.000Z");
    assert!(parse_freepbx_name("foo").is_none());
    assert!(parse_freepbx_name("in-1-2-2026x124-101502-1.2").is_none());
    assert!(parse_freepbx_name("in-1-2-20261324-101502-1.2").is_none());
    // Years beyond 9999 are not dates (found by fuzzing: an overflow).
    assert!(parse_cdr_datetime("999799999999997-11-24 10:15:02").is_none());
    assert!(parse_cdr_datetime("9999-12-31 23:59:59").is_some());
    let epoch = NamePattern::new(r"^(?P<epoch>\d+)-(?P<uniqueid>.+)$").unwrap();
    assert!(epoch.parse("253402300800-x").is_none());
    assert!(epoch.parse("1700000000-x").is_some());
}

#[test]
fn freepbx_name_with_a_systemname_uniqueid_and_empty_numbers() {
    // `systemname = pbx1` in asterisk.conf: the uniqueid holds a dash.
    let n = parse_freepbx_name("in-2001-5551234-20261201-101500-pbx1-1700000000.123").unwrap();
    assert_eq!(
        (n.kind.as_str(), n.dst.as_str(), n.src.as_str()),
        ("in", "2001", "5551234")
    );
    assert_eq!(n.uniqueid, "pbx1-1700000000.123");
    assert_eq!(n.started_at.to_rfc3339(), "2026-12-01T10:15:00.000Z");
    // Several dashes in the system name; the plain form is unchanged.
    let n = parse_freepbx_name("out-5551234-1001-20261201-101500-pbx-east-2-1700000000.9").unwrap();
    assert_eq!(n.uniqueid, "pbx-east-2-1700000000.9");
    assert_eq!(n.src, "1001");
    let n = parse_freepbx_name("in-2001-5551234-20261201-101500-1700000000.123").unwrap();
    assert_eq!(
        (n.src.as_str(), n.uniqueid.as_str()),
        ("5551234", "1700000000.123")
    );
    // Empty numbers (no caller id, an unknown destination).
    let n = parse_freepbx_name("in-2001--20261201-101500-pbx1-1700000000.1").unwrap();
    assert_eq!((n.dst.as_str(), n.src.as_str()), ("2001", ""));
    assert_eq!(n.uniqueid, "pbx1-1700000000.1");
    let n = parse_freepbx_name("out--1001-20261201-101500-1700000000.2").unwrap();
    assert_eq!((n.dst.as_str(), n.src.as_str()), ("", "1001"));
    let n = parse_freepbx_name("exten---20261201-101500-1700000000.3").unwrap();
    assert_eq!(
        (n.kind.as_str(), n.dst.as_str(), n.src.as_str()),
        ("exten", "", "")
    );
    // A source with dashes stays the source.
    let n = parse_freepbx_name("in-2001-555-123-4-20261201-101500-pbx1-1.2").unwrap();
    assert_eq!(
        (n.src.as_str(), n.uniqueid.as_str()),
        ("555-123-4", "pbx1-1.2")
    );
    // Not FreePBX names: no type, no uniqueid, no date, too few parts.
    for no in [
        "-2001-5551234-20261201-101500-1.2",
        "in-2001-5551234-20261201-101500-",
        "in-2001-5551234-20261201-101500",
        "in-2001-20261201-101500-1.2",
        "in-2001-5551234-20261301-101500-pbx1-1.2",
        "in-2001-5551234-2026120-101500-1.2",
        "20261201-101500-1.2",
        "",
    ] {
        assert!(parse_freepbx_name(no).is_none(), "{no}");
    }
}

#[test]
fn exten_recordings_leave_the_direction_to_the_cdr_and_the_numbers() {
    // FreePBX's `exten` type: recorded by the extension's own setting, any
    // call of it (from a trunk, to a trunk, another extension).
    assert_eq!(direction_of("exten"), "unknown");
    assert_eq!(direction_of("internal"), "internal");
    let d = DirectionRules::default();
    let row = |dcontext: &str, did: &str| CdrRow {
        dcontext: dcontext.into(),
        did: did.into(),
        ..CdrRow::default()
    };
    let f = direction_of("exten");
    assert_eq!(d.classify(Some(&row("ext-local", "5551000")), f), "inbound");
    assert_eq!(d.classify(Some(&row("outrt-1", "")), f), "outbound");
    assert_eq!(d.classify(Some(&row("from-internal", "")), f), "internal");
    assert_eq!(d.classify(Some(&row("custom-ctx", "")), f), "unknown");
    assert_eq!(d.classify(None, f), "unknown");
}

#[test]
fn grouping() {
    let files: Vec<PathBuf> = [
        "/r/x-in.wav",
        "/r/x-out.wav",
        "/r/y.wav",
        "/r/z.WAV",
        "/r/notes.txt",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    let sets = group_sets(&files);
    assert_eq!(sets.len(), 3);
    assert_eq!(sets[0].rx.as_deref(), Some(Path::new("/r/x-in.wav")));
    assert_eq!(sets[0].tx.as_deref(), Some(Path::new("/r/x-out.wav")));
    assert_eq!(sets[1].whole.as_deref(), Some(Path::new("/r/y.wav")));
}

#[test]
fn leg_suffixes_and_what_is_not_one() {
    let base = "out-5551234-1001-20261124-101502-1700000000.123";
    for (rx, tx) in [
        ("-in", "-out"),
        ("-rx", "-tx"),
        ("_in", "_out"),
        ("_rx", "_tx"),
        ("-r", "-t"),
        ("_r", "_t"),
        (".in", ".out"),
        ("-IN", "-OUT"),
        ("_Rx", "_TX"),
    ] {
        for ext in ["wav", "WAV", "sln16", "gsm"] {
            assert_eq!(
                split_name(&format!("{base}{rx}.{ext}")),
                Some((base.to_string(), Some("in"))),
                "{rx}.{ext}"
            );
            assert_eq!(
                split_name(&format!("{base}{tx}.{ext}")),
                Some((base.to_string(), Some("out"))),
                "{tx}.{ext}"
            );
        }
    }
    // The FreePBX name of the base parses as without a suffix.
    let n = parse_freepbx_name(&split_name(&format!("{base}_rx.wav")).unwrap().0).unwrap();
    assert_eq!(n.uniqueid, "1700000000.123");
    assert_eq!((n.src.as_str(), n.dst.as_str()), ("1001", "5551234"));
    // Not legs: a uniqueid ending in `.12`, other endings, a bare suffix.
    for whole in [
        "in-1-2-20261124-101502-1700000000.12.wav",
        "in-1-2-20261124-101502-1700000000.1.wav",
        "1700000000.12.sln",
        "call-internal.wav",
        "x-ri.wav",
        "x.int.wav",
    ] {
        let (stem, leg) = split_name(whole).unwrap();
        assert_eq!(leg, None, "{whole}");
        assert_eq!(format!("{stem}."), whole[..=stem.len()], "{whole}");
    }
    assert_eq!(split_name("-in.wav"), Some(("-in".to_string(), None)));
    assert_eq!(split_name("x-in.txt"), None);
}

#[test]
fn paths_in_delivery_watches_are_lossless_and_old_ones_readable() {
    use std::os::unix::ffi::OsStrExt;
    let odd = PathBuf::from(std::ffi::OsStr::from_bytes(b"/m/2026/a \xff\xfe-in.wav"));
    let e = encode_path(&odd);
    assert_eq!(e, format!("hex:{}", hex_of(odd.as_os_str().as_bytes())));
    assert_eq!(decode_path(&e), odd);
    // UTF-8 paths (and what was stored before): as they are.
    for p in ["/m/2026/11/24/x-in.wav", "/m/ünï cødé/x.wav"] {
        assert_eq!(encode_path(Path::new(p)), p);
        assert_eq!(decode_path(p), PathBuf::from(p));
    }
    // An old lossy entry stays a path (that is not there: warned of).
    assert_eq!(
        decode_path("/m/a \u{fffd}-in.wav"),
        PathBuf::from("/m/a \u{fffd}-in.wav")
    );
    assert_eq!(decode_path("hex:zz"), PathBuf::from("hex:zz"));
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn extensions() {
    for yes in [
        "a.wav", "a.WAV16", "a.wav49", "a.sln", "a.sln16", "a.SLN48", "a.sln192", "a.raw", "a.gsm",
    ] {
        assert!(is_audio_name(yes), "{yes}");
    }
    for no in ["a.txt", "a.sln17", "a.sln8", "wav", "a.wav.part", "a.mp3"] {
        assert!(!is_audio_name(no), "{no}");
    }
}

#[test]
fn resample_keeps_length() {
    let x: Vec<i16> = (0..8000)
        .map(|i| ((i as f64 * 0.3).sin() * 8000.0) as i16)
        .collect();
    let y = resample(x.clone(), 8000, 16000, Path::new("t")).unwrap();
    assert_eq!(y.len(), 16000);
    let z = resample(y, 16000, 8000, Path::new("t")).unwrap();
    assert_eq!(z.len(), 8000);
}

#[test]
fn freeswitch_and_3cx_patterns() {
    let fs_re = NamePattern::new(r"^(?P<date>\d{4}-\d{2}-\d{2})-(?P<time>\d{2}-\d{2}-\d{2})_(?P<dst>[^_]*)_(?P<src>[^_]*)_(?P<uniqueid>[0-9a-f-]{36})$").unwrap();
    let cx = NamePattern::new(r"^\[(?P<src_name>[^\]]*)\]_(?P<src>[^_-]*)-(?P<dst>[^_]*)_(?P<datetime>\d{14})\((?P<uniqueid>[^)]+)\)$").unwrap();
    let pats = vec![fs_re, cx];
    let n = parse_name(
        "2026-11-24-10-15-02_5551234_1001_0b8e9a36-1c1f-4e5e-9d0a-3f2b1c4d5e6f",
        &pats,
    )
    .unwrap();
    assert_eq!(n.uniqueid, "0b8e9a36-1c1f-4e5e-9d0a-3f2b1c4d5e6f");
    assert_eq!((n.src.as_str(), n.dst.as_str()), ("1001", "5551234"));
    assert_eq!(n.started_at.to_rfc3339(), "2026-11-24T10:15:02.000Z");
    let n = parse_name("[Alice Smith]_1001-5551234_20261124101502(77)", &pats).unwrap();
    assert_eq!(n.src_name.as_deref(), Some("Alice Smith"));
    assert_eq!(n.uniqueid, "77");
    assert_eq!(n.started_at.to_rfc3339(), "2026-11-24T10:15:02.000Z");
    // FreePBX still recognised after the patterns.
    let n = parse_name("in-1-2-20261124-101502-9.9", &pats).unwrap();
    assert_eq!(n.uniqueid, "9.9");
    assert!(parse_name("nothing", &pats).is_none());
}

proptest::proptest! {
    #[test]
    fn parsers_never_panic(s in ".{0,200}") {
        let _ = parse_freepbx_name(&s);
        let _ = parse_cdr_line(&s, 0);
        let _ = parse_cdr_datetime(&s);
        let _ = split_name(&s);
    }
}

/// Raw 8 kHz audio, `ms` long.
fn sln_file(p: &Path, ms: u32) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    let b: Vec<u8> = pbx_testgen::audio::speechlike(1, ms, 8000)
        .iter()
        .flat_map(|s| s.to_le_bytes())
        .collect();
    fs::write(p, b).unwrap();
}

fn recordings_in(spool: &Path) -> usize {
    fs::read_dir(spool)
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.ends_with(".json") && !n.starts_with('.')
                })
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn a_backlog_pass_reports_alive_between_recordings_and_stops_early() {
    use std::sync::Mutex;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("m");
    let spool = tmp.path().join("s");
    for i in 0..30 {
        sln_file(&root.join(format!("2026/17000000{i:02}.1.sln")), 100);
    }
    // Not recordings: listed all the same.
    let other = root.join("notes");
    fs::create_dir_all(&other).unwrap();
    for i in 0..1000 {
        fs::write(other.join(format!("{i}.txt")), b"x").unwrap();
    }
    let mut s = FolderScanner::new(
        &root,
        &spool,
        "t",
        None,
        Duration::ZERO,
        FolderSettings::default(),
    )
    .unwrap();
    // Each beat notes how many recordings were written by then; the 10th
    // written asks to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<Vec<usize>>> = Arc::default();
    let (st, sn, sp) = (stop.clone(), seen.clone(), spool.clone());
    s.set_pulse(Pulse::new(
        move || {
            let n = recordings_in(&sp);
            sn.lock().unwrap().push(n);
            if n >= 10 {
                st.store(true, Ordering::SeqCst);
            }
        },
        stop.clone(),
    ));
    let t0 = Instant::now();
    assert_eq!(s.scan(t0), 10, "the pass ends at the stop: {:?}", s.errors);
    assert_eq!(recordings_in(&spool), 10);
    let beats = seen.lock().unwrap().clone();
    // Alive while listing (1000 files: a beat every 256) and after each
    // recording, not only before and after the pass.
    assert!(beats.iter().filter(|n| **n == 0).count() >= 3, "{beats:?}");
    for k in 1..=10 {
        assert!(beats.contains(&k), "a beat after recording {k}: {beats:?}");
    }
    // Nothing lost, nothing taken twice: the next pass takes the rest.
    stop.store(false, Ordering::SeqCst);
    s.set_pulse(Pulse::new(|| {}, stop.clone()));
    assert_eq!(s.scan(t0), 20, "{:?}", s.errors);
    assert_eq!(recordings_in(&spool), 30);
    assert!(!s.more());

    // Asked to stop while listing: nothing taken, the next pass lists the
    // whole tree again.
    sln_file(&root.join("2026/1700000099.1.sln"), 100);
    stop.store(true, Ordering::SeqCst);
    assert_eq!(s.scan(t0), 0);
    assert!(s.next_pass(t0) <= t0, "a full listing is due at once");
    stop.store(false, Ordering::SeqCst);
    assert_eq!(s.scan(t0), 1);
}

#[test]
fn a_pass_stops_at_its_time_budget_and_the_next_goes_on_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("m");
    for i in 0..3 {
        sln_file(&root.join(format!("17000000{i:02}.1.sln")), 100);
    }
    let settings = FolderSettings {
        pass_budget: Duration::ZERO,
        full_scan: Duration::from_secs(3600),
        ..FolderSettings::default()
    };
    let mut s = FolderScanner::new(
        &root,
        &tmp.path().join("s"),
        "t",
        None,
        Duration::ZERO,
        settings,
    )
    .unwrap();
    s.set_event_driven(true);
    let t0 = Instant::now();
    for left in [2, 1] {
        assert_eq!(s.scan(t0), 1);
        assert!(s.more(), "{left} left");
        assert_eq!(s.next_pass(t0), t0, "due at once");
    }
    assert_eq!(s.scan(t0), 1);
    assert!(!s.more());
    assert!(s.next_pass(t0) > t0);
}

/// The folder source runs with `recording.sample_rate` and `min_duration`:
/// a reload that changes either restarts it (it cannot take them in place);
/// one that changes neither leaves it running.
#[test]
fn reload_restarts_on_recording_settings() {
    use crate::sources::handle::{Reload, SourceHandle};
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = Config::defaults(Some(tmp.path().join("s").to_str().unwrap()));
    cfg.spool.dir = tmp.path().join("s");
    cfg.sources.folder.enabled = true;
    cfg.sources.folder.path = tmp.path().join("m");
    fs::create_dir_all(&cfg.sources.folder.path).unwrap();
    let status: SharedStatus = Default::default();
    let mut h = start(&cfg, status, crate::health::Liveness::new()).unwrap();
    assert!(matches!(h.reload(&cfg, &[]), Reload::Applied));
    let mut shorter = cfg.clone();
    shorter.recording.min_duration = Duration::from_secs(5);
    assert!(matches!(h.reload(&shorter, &[]), Reload::Restart));
    let mut wide = cfg.clone();
    wide.recording.sample_rate = crate::config::SampleRate::Hz16000;
    assert!(matches!(h.reload(&wide, &[]), Reload::Restart));
    h.stop();
}
