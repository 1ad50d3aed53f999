use super::*;

fn pair(dir: &Path, id: &str, bytes: usize) {
    fs::write(dir.join(format!("{id}.wav")), vec![0u8; bytes]).unwrap();
    fs::write(
        dir.join(format!("{id}.json")),
        format!("{{\"recording_id\":\"{id}\"}}"),
    )
    .unwrap();
}

#[test]
fn scan_adopts_complete_pairs_once() {
    let d = tempfile::tempdir().unwrap();
    pair(d.path(), "a", 10);
    pair(d.path(), "b", 20);
    fs::write(d.path().join(".c.wav.part"), b"x").unwrap();
    fs::write(d.path().join(".c.start.json"), b"{}").unwrap();
    fs::write(d.path().join(".d.json.tmp"), b"{}").unwrap();
    fs::write(d.path().join("e.json"), b"{}").unwrap(); // WAV missing
    let mut s = Spool::open(d.path()).unwrap();
    let r = s.scan(1000).unwrap();
    let mut ad = r.adopted.clone();
    ad.sort();
    assert_eq!(ad, vec!["a", "b"]);
    assert_eq!(r.incomplete, 1);
    assert_eq!(s.scan(2000).unwrap().adopted, Vec::<String>::new());
    let a = s.get("a").unwrap().unwrap();
    assert_eq!(a.state, State::Recorded);
    assert_eq!(a.size, 10);
    // Reopen: the rows survive.
    drop(s);
    let mut s = Spool::open(d.path()).unwrap();
    assert_eq!(s.list().unwrap().len(), 2);
    assert!(s.scan(3000).unwrap().adopted.is_empty());
}

#[test]
fn the_whole_life_of_a_recording() {
    let d = tempfile::tempdir().unwrap();
    pair(d.path(), "r1", 100);
    let mut s = Spool::open(d.path()).unwrap();
    s.scan(0).unwrap();
    assert!(s.due(10, 5, &HashSet::new()).unwrap().is_empty());
    assert!(s.mark_queued("r1", 1).unwrap());
    assert!(!s.mark_queued("r1", 1).unwrap());
    let due = s.due(10, 5, &HashSet::new()).unwrap();
    assert_eq!(due.len(), 1);
    let busy: HashSet<String> = ["r1".to_string()].into();
    assert!(s.due(10, 5, &busy).unwrap().is_empty());
    assert!(s.begin_attempt("r1", 2).unwrap());
    assert!(s.checkpoint("r1", "http://x/u/1", 50, 3).unwrap());
    assert!(s.retry_later("r1", 1000, "HTTP 503", true, 4).unwrap());
    let e = s.get("r1").unwrap().unwrap();
    assert_eq!(e.state, State::Uploading);
    assert_eq!(
        (e.location.as_deref(), e.offset),
        (Some("http://x/u/1"), 50)
    );
    assert_eq!((e.attempts, e.retries), (1, 1));
    assert!(s.due(999, 5, &HashSet::new()).unwrap().is_empty());
    assert_eq!(s.next_due().unwrap(), Some(1000));
    assert_eq!(s.due(1000, 5, &HashSet::new()).unwrap().len(), 1);
    assert!(s.begin_attempt("r1", 1001).unwrap());
    assert!(s.mark_delivered("r1", 1002).unwrap());
    let e = s.get("r1").unwrap().unwrap();
    assert_eq!(e.state, State::Delivered);
    assert_eq!(e.location, None);
    assert_eq!(s.counters().unwrap()["delivered"], 1);
    // Retention: not yet, then gone with its files.
    assert!(s
        .expire_delivered(1500, Duration::from_secs(1))
        .unwrap()
        .is_empty());
    assert!(d.path().join("r1.wav").exists());
    assert_eq!(
        s.expire_delivered(2002, Duration::from_secs(1)).unwrap(),
        vec!["r1"]
    );
    assert!(!d.path().join("r1.wav").exists());
    assert!(!d.path().join("r1.json").exists());
    assert!(s.get("r1").unwrap().is_none());
    // And never adopted again.
    assert!(s.scan(3000).unwrap().adopted.is_empty());
}

#[test]
fn failed_stays_until_retried() {
    let d = tempfile::tempdir().unwrap();
    pair(d.path(), "f", 1);
    pair(d.path(), "g", 1);
    let mut s = Spool::open(d.path()).unwrap();
    s.scan(0).unwrap();
    for id in ["f", "g"] {
        s.mark_queued(id, 0).unwrap();
        s.begin_attempt(id, 0).unwrap();
        assert!(s.mark_failed(id, 422, "{\"error\":\"no\"}", 1).unwrap());
    }
    let e = s.get("f").unwrap().unwrap();
    assert_eq!(e.state, State::Failed);
    assert_eq!(e.failed_status, Some(422));
    assert_eq!(e.failed_body.as_deref(), Some("{\"error\":\"no\"}"));
    assert!(s.due(i64::MAX, 10, &HashSet::new()).unwrap().is_empty());
    // Expiry never touches undelivered recordings.
    assert!(s
        .expire_delivered(i64::MAX, Duration::ZERO)
        .unwrap()
        .is_empty());
    assert!(d.path().join("f.wav").exists());
    s.retry("f", 5).unwrap();
    assert_eq!(s.get("f").unwrap().unwrap().state, State::Queued);
    assert_eq!(s.due(5, 10, &HashSet::new()).unwrap().len(), 1);
    assert_eq!(s.retry_all_failed(6).unwrap(), 1);
    assert!(matches!(s.retry("nope", 0), Err(SpoolError::NotFound(_))));
}

#[test]
fn purge_and_filters() {
    let d = tempfile::tempdir().unwrap();
    pair(d.path(), "p", 1);
    pair(d.path(), "q", 1);
    pair(d.path(), "k", 1);
    let mut s = Spool::open(d.path()).unwrap();
    s.scan(0).unwrap();
    s.purge("p").unwrap();
    assert!(!d.path().join("p.wav").exists());
    assert!(s.get("p").unwrap().is_none());
    assert!(matches!(s.purge("p"), Err(SpoolError::NotFound(_))));
    assert!(matches!(s.purge("../x"), Err(SpoolError::BadId(_))));
    assert!(s.drop_filtered("q").unwrap());
    assert!(!d.path().join("q.json").exists());
    assert!(s.mark_filtered("k", "direction internal", 0).unwrap());
    assert!(d.path().join("k.wav").exists());
    assert_eq!(s.counters().unwrap()["filtered"], 2);
    assert!(s.scan(1).unwrap().adopted.is_empty());
    let depth = s.depth_by_state().unwrap();
    assert_eq!(depth[&State::Filtered], 1);
    assert_eq!(depth[&State::Queued], 0);
}

#[test]
fn two_connections_see_each_other() {
    let d = tempfile::tempdir().unwrap();
    pair(d.path(), "x", 1);
    let mut a = Spool::open(d.path()).unwrap();
    let b = Spool::open(d.path()).unwrap();
    a.scan(0).unwrap();
    a.mark_queued("x", 0).unwrap();
    a.begin_attempt("x", 0).unwrap();
    a.mark_failed("x", 400, "bad", 0).unwrap();
    b.retry("x", 1).unwrap();
    assert_eq!(a.get("x").unwrap().unwrap().state, State::Queued);
    assert!(a.oldest_undelivered().unwrap().is_some());
}

#[test]
fn ids_and_rendering() {
    assert!(valid_id("20240101-abc_1.2"));
    assert!(!valid_id(".hidden"));
    assert!(!valid_id("a/b"));
    assert!(!valid_id(""));
    assert_eq!(human_age(61_000), "1m01s");
    assert_eq!(human_age(3_600_000 * 49), "2d01h");
    assert_eq!(human_size(1536), "1.5KiB");
    let e = Entry {
        id: "abc".into(),
        state: State::Failed,
        size: 2048,
        recorded_at_ms: 0,
        adopted_at_ms: 0,
        updated_at_ms: 0,
        attempts: 3,
        retries: 0,
        next_attempt_ms: 0,
        last_error: Some("HTTP 422: bad\nline".into()),
        location: None,
        offset: 0,
        failed_status: Some(422),
        failed_body: None,
        delivered_at_ms: None,
        filter_reason: None,
    };
    let t = render_list(&[e], 90_000);
    assert!(t.contains("abc  failed"), "{t}");
    assert!(t.contains("HTTP 422: badline"), "{t}");
    assert!(t.contains("1m30s"), "{t}");
}

/// Through the states to `delivered` (retention keeps the files).
fn deliver(s: &mut Spool, id: &str, now: i64) {
    s.mark_queued(id, now).unwrap();
    s.begin_attempt(id, now).unwrap();
    assert!(s.mark_delivered(id, now).unwrap());
}

/// A spool of three pairs, "a" delivered, "b" and "c" recorded; closed.
fn three_pairs_a_delivered() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for id in ["a", "b", "c"] {
        pair(d.path(), id, 100);
    }
    let mut s = Spool::open(d.path()).unwrap();
    s.scan(0).unwrap();
    deliver(&mut s, "a", 10);
    d
}

fn aside(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".corrupt-"))
        .collect();
    v.sort();
    v
}

/// Garbage over spool.db: opening says corrupt; the delivering process
/// moves it aside and rebuilds the queue from the pairs, the delivered
/// one (from the delivered record) stays delivered, the others are due.
#[test]
fn corrupt_database_is_moved_aside_and_rebuilt_from_the_pairs() {
    let d = three_pairs_a_delivered();
    fs::write(d.path().join(DB_FILE), vec![0x5au8; 20_000]).unwrap();
    let e = Spool::open(d.path()).unwrap_err();
    assert!(e.is_corrupt(), "{e}");
    let (s, repair) = Spool::open_repairing(d.path()).unwrap();
    let r = repair.expect("a repair");
    assert!(r.reason.contains("corrupt"), "{r:?}");
    assert_eq!((r.recordings, r.known_delivered), (3, 1));
    let moved = r.moved_to.clone().unwrap();
    assert_eq!(fs::read(&moved).unwrap(), vec![0x5au8; 20_000]);
    assert_eq!(aside(d.path()).len(), 1, "{:?}", aside(d.path()));
    assert!(
        r.to_string().contains("moved aside to spool.db.corrupt-"),
        "{r}"
    );
    assert_eq!(s.get("a").unwrap().unwrap().state, State::Delivered);
    assert_eq!(s.get("b").unwrap().unwrap().state, State::Recorded);
    assert_eq!(s.get("c").unwrap().unwrap().state, State::Recorded);
    s.check_integrity().unwrap();
    drop(s);
    // Sound now: nothing more to do.
    let (s, repair) = Spool::open_repairing(d.path()).unwrap();
    assert!(repair.is_none());
    assert_eq!(s.list().unwrap().len(), 3);
}

/// Damage inside the file (the header intact) is found by quick_check.
#[test]
fn damaged_pages_are_found_and_repaired() {
    let d = tempfile::tempdir().unwrap();
    for i in 0..300 {
        pair(
            d.path(),
            &format!("rec-{i:04}-with-a-longer-id-to-fill-pages"),
            1,
        );
    }
    let mut s = Spool::open(d.path()).unwrap();
    s.scan(0).unwrap();
    drop(s); // the last connection checkpoints the WAL into the file
    let db = d.path().join(DB_FILE);
    let mut bytes = fs::read(&db).unwrap();
    assert!(bytes.len() > 4 * 4096, "{}", bytes.len());
    for b in &mut bytes[2 * 4096..4 * 4096] {
        *b = 0xa5;
    }
    fs::write(&db, &bytes).unwrap();
    let (s, repair) = Spool::open_repairing(d.path()).unwrap();
    let r = repair.expect("a repair");
    assert_eq!(r.recordings, 300, "{r:?}");
    assert_eq!(s.list().unwrap().len(), 300);
}

/// spool.db removed: rebuilt from the pairs and the delivered record; a
/// connection to the removed file knows it is detached.
#[test]
fn missing_database_is_rebuilt_and_delivered_ones_are_not_sent_again() {
    let d = tempfile::tempdir().unwrap();
    pair(d.path(), "x", 5);
    pair(d.path(), "y", 5);
    let mut s = Spool::open(d.path()).unwrap();
    s.scan(0).unwrap();
    deliver(&mut s, "x", 1);
    assert!(!s.is_detached());
    for ext in ["", "-wal", "-shm"] {
        let _ = fs::remove_file(d.path().join(format!("{DB_FILE}{ext}")));
    }
    assert!(s.is_detached());
    drop(s);
    let (s, repair) = Spool::open_repairing(d.path()).unwrap();
    let r = repair.expect("a rebuild");
    assert_eq!(r.reason, "was missing");
    assert_eq!((r.recordings, r.known_delivered, r.moved_to), (2, 1, None));
    assert_eq!(s.get("x").unwrap().unwrap().state, State::Delivered);
    assert_eq!(s.get("y").unwrap().unwrap().state, State::Recorded);
    assert!(s.due(i64::MAX, 10, &HashSet::new()).unwrap().is_empty());
    // A brand-new spool is no rebuild.
    let e = tempfile::tempdir().unwrap();
    assert!(Spool::open_repairing(e.path()).unwrap().1.is_none());
}

/// The cloud accepted, the record says so, the crash came before the
/// row changed: settled as delivered when the delivery task opens it.
#[test]
fn a_row_the_delivered_record_names_is_settled_at_open() {
    let d = tempfile::tempdir().unwrap();
    pair(d.path(), "z", 5);
    let mut s = Spool::open(d.path()).unwrap();
    s.scan(0).unwrap();
    s.mark_queued("z", 0).unwrap();
    s.begin_attempt("z", 0).unwrap();
    s.delivered.append("z").unwrap();
    drop(s);
    let (s, repair) = Spool::open_repairing(d.path()).unwrap();
    assert!(repair.is_none());
    assert_eq!(s.get("z").unwrap().unwrap().state, State::Delivered);
    assert_eq!(s.counters().unwrap()["delivered"], 1);
}

/// A torn last line is ignored and cut off by the next append; the
/// record is compacted to the ids whose files are still there.
#[test]
fn delivered_record_torn_lines_and_compaction() {
    let d = tempfile::tempdir().unwrap();
    fs::write(d.path().join(DELIVERED_LOG), b"one\ntwo\nthr").unwrap();
    let mut log = DeliveredLog::load(d.path());
    assert_eq!(log.ids.len(), 2);
    assert_eq!(log.torn, Some(8));
    log.append("four").unwrap();
    assert_eq!(
        fs::read_to_string(d.path().join(DELIVERED_LOG)).unwrap(),
        "one\ntwo\nfour\n"
    );
    let again = DeliveredLog::load(d.path());
    assert_eq!(again.ids.len(), 3);
    log.compact(|id| id == "two").unwrap();
    assert_eq!(
        fs::read_to_string(d.path().join(DELIVERED_LOG)).unwrap(),
        "two\n"
    );
    // Through the spool: delivered and expired ids go at compaction.
    let mut s = Spool::open(d.path()).unwrap();
    for i in 0..DELIVERED_LOG_COMPACT + 10 {
        s.delivered.append(&format!("gone{i}")).unwrap();
    }
    s.expire_delivered(0, Duration::ZERO).unwrap();
    assert!(s.delivered.lines < 10, "{}", s.delivered.lines);
    assert!(DeliveredLog::load(d.path()).ids.len() < 10);
}

/// The spool as a model: any sequence of recordings finished, uploads
/// accepted or failed, crashes (the spool dropped mid-way, an upload
/// accepted by the cloud but not yet marked), restarts and a damaged or
/// missing spool.db keeps every acknowledged recording (a complete pair
/// on disk) in the queue, and never offers again for upload a recording
/// once it was marked delivered.
mod model {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        /// A recording finished: its pair is on disk (acknowledged).
        Record,
        /// The oldest due upload `n` (mod the due count) is accepted.
        UploadOk(usize),
        /// Refused for now (5xx, timeout): retried later.
        UploadFail(usize),
        /// Accepted by the cloud, then the crash before the row changed.
        CrashAfterAccept(usize),
        /// The process dies (the spool dropped without anything else).
        Crash,
        /// A clean restart: open_repairing + scan, as the delivery task.
        Restart,
        /// spool.db damaged (header overwritten, cut, or gone) while down.
        Corrupt(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Record),
            3 => any::<usize>().prop_map(Op::UploadOk),
            2 => any::<usize>().prop_map(Op::UploadFail),
            1 => any::<usize>().prop_map(Op::CrashAfterAccept),
            1 => Just(Op::Crash),
            1 => Just(Op::Restart),
            1 => any::<u8>().prop_map(Op::Corrupt),
        ]
    }

    /// What the delivery task does when it starts: repair, adopt, queue.
    fn start(dir: &Path) -> Spool {
        let (mut s, _) = Spool::open_repairing(dir).expect("open_repairing");
        s.scan(now_ms()).expect("scan");
        for e in s.in_state(State::Recorded).unwrap() {
            s.mark_queued(&e.id, now_ms()).unwrap();
        }
        s
    }

    fn corrupt(dir: &Path, how: u8) {
        let db = dir.join(DB_FILE);
        match how % 3 {
            0 => {
                let mut b = fs::read(&db).unwrap_or_default();
                for (i, x) in b.iter_mut().take(100).enumerate() {
                    *x = (i as u8).wrapping_mul(how | 1) ^ 0x5a;
                }
                fs::write(&db, b).unwrap();
            }
            1 => {
                let b = fs::read(&db).unwrap_or_default();
                fs::write(&db, &b[..b.len() / 3]).unwrap();
            }
            _ => {
                for ext in ["", "-wal", "-shm"] {
                    let _ = fs::remove_file(dir.join(format!("{DB_FILE}{ext}")));
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 48,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]
        #[test]
        fn spool_keeps_every_recording_and_delivers_once(ops in proptest::collection::vec(op(), 1..40)) {
            let d = tempfile::tempdir().unwrap();
            let dir = d.path();
            let mut recorded: Vec<String> = Vec::new();
            // Marked delivered (the cloud's answer recorded by the spool).
            let mut delivered: HashSet<String> = HashSet::new();
            // Offered for upload after their delivered mark: must stay 0.
            let mut offered_after_mark = 0usize;
            let mut spool = Some(start(dir));
            for op in ops {
                match op {
                    Op::Record => {
                        let id = format!("rec-{}", recorded.len());
                        pair(dir, &id, 44 + recorded.len());
                        recorded.push(id);
                        if let Some(s) = spool.as_mut() {
                            s.scan(now_ms()).unwrap();
                            for e in s.in_state(State::Recorded).unwrap() {
                                s.mark_queued(&e.id, now_ms()).unwrap();
                            }
                        }
                    }
                    Op::UploadOk(n) | Op::UploadFail(n) | Op::CrashAfterAccept(n) => {
                        let s = match spool.as_mut() {
                            Some(s) => s,
                            None => spool.insert(start(dir)),
                        };
                        let due = s.due(i64::MAX, 100, &HashSet::new()).unwrap();
                        if due.is_empty() {
                            continue;
                        }
                        let id = due[n % due.len()].id.clone();
                        offered_after_mark += usize::from(delivered.contains(&id));
                        s.begin_attempt(&id, now_ms()).unwrap();
                        match op {
                            Op::UploadOk(_) => {
                                prop_assert!(s.mark_delivered(&id, now_ms()).unwrap());
                                delivered.insert(id);
                            }
                            Op::UploadFail(_) => {
                                s.retry_later(&id, now_ms() + 1, "HTTP 503", true, now_ms()).unwrap();
                            }
                            _ => {
                                // The cloud has it (its idempotency key will
                                // answer a resend); nothing was marked.
                                spool = None;
                            }
                        }
                    }
                    Op::Crash => spool = None,
                    Op::Restart => {
                        drop(spool.take());
                        spool = Some(start(dir));
                    }
                    Op::Corrupt(how) => {
                        drop(spool.take());
                        corrupt(dir, how);
                        spool = Some(start(dir));
                    }
                }
                // The invariant, seen from a running spool.
                if let Some(s) = spool.as_ref() {
                    for id in &recorded {
                        let e = s.get(id).unwrap();
                        prop_assert!(e.is_some(), "acknowledged {} lost", id);
                        let e = e.unwrap();
                        if delivered.contains(id) {
                            prop_assert_eq!(e.state, State::Delivered, "{} delivered", id);
                        } else {
                            prop_assert!(e.state.is_undelivered(), "{} {:?}", id, e.state);
                        }
                    }
                    let due = s.due(i64::MAX, 1000, &HashSet::new()).unwrap();
                    prop_assert!(due.iter().all(|e| !delivered.contains(&e.id)));
                }
            }
            prop_assert_eq!(offered_after_mark, 0);
            // In the end everything acknowledged and not yet delivered is
            // still due: nothing stalls.
            drop(spool);
            let s = start(dir);
            let due: HashSet<String> = s
                .due(i64::MAX, 1000, &HashSet::new())
                .unwrap()
                .into_iter()
                .map(|e| e.id)
                .collect();
            for id in &recorded {
                prop_assert_eq!(due.contains(id), !delivered.contains(id), "{}", id);
            }
        }
    }
}

/// The delivered record's parser (also the `spool_delivered` fuzz
/// target): complete lines only, invalid ids skipped.
#[test]
fn delivered_record_parses_complete_valid_lines() {
    let r = parse_delivered(b"a\n\xff\xfe\n.hidden\n\nb\nc");
    assert_eq!(r.ids, HashSet::from(["a".to_string(), "b".to_string()]));
    assert_eq!((r.lines, r.torn), (4, Some(16)));
    assert_eq!(parse_delivered(b""), DeliveredRecord::default());
}

/// Several processes open the spool at the same moment (the daemon
/// starting, `spool list`, a second open while the first is switching the
/// new database to WAL): every open succeeds; none fails with "database is
/// locked" (seen in a delivery test on a loaded machine).
#[test]
fn concurrent_opens_of_a_new_spool_all_succeed() {
    for _ in 0..20 {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().to_path_buf();
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let dir = dir.clone();
                std::thread::spawn(move || Spool::open(&dir).map(|_| ()))
            })
            .collect();
        for t in threads {
            let r = t.join().unwrap();
            assert!(r.is_ok(), "{r:?}");
        }
    }
}

/// A recording whose files cannot be removed (here a directory where its
/// FLAC belongs: unlinking it fails even for root) is skipped and left by
/// retention and by dropping filtered recordings: the others are still
/// removed, and it goes once it can be.
#[test]
fn a_recording_that_cannot_be_removed_does_not_stop_the_others() {
    let d = tempfile::tempdir().unwrap();
    for id in ["a", "b", "c", "f", "g"] {
        pair(d.path(), id, 1);
    }
    let mut s = Spool::open(d.path()).unwrap();
    s.scan(0).unwrap();
    for (id, at) in [("a", 1), ("b", 2), ("c", 3)] {
        deliver(&mut s, id, at);
    }
    // "a" is the oldest delivered: the pass meets it first.
    let stuck = d.path().join(".a.flac");
    fs::create_dir(&stuck).unwrap();
    let mut gone = s.expire_delivered(10, Duration::ZERO).unwrap();
    gone.sort();
    assert_eq!(gone, vec!["b".to_string(), "c".to_string()]);
    assert!(!d.path().join("b.wav").exists() && !d.path().join("c.wav").exists());
    assert!(s.get("a").unwrap().is_some());
    // A filtered recording likewise: left with its row, the next one dropped.
    fs::create_dir(d.path().join(".f.flac")).unwrap();
    assert!(!s.drop_filtered("f").unwrap());
    assert!(s.get("f").unwrap().is_some());
    assert!(s.drop_filtered("g").unwrap());
    // Once it can be removed, the next pass removes it.
    fs::remove_dir(&stuck).unwrap();
    assert_eq!(
        s.expire_delivered(11, Duration::ZERO).unwrap(),
        vec!["a".to_string()]
    );
    fs::remove_dir(d.path().join(".f.flac")).unwrap();
    assert!(s.drop_filtered("f").unwrap());
}

/// Sound pages, but a row holding a value of the wrong type (a flipped bit
/// in its record header, a hand edit): every query over it would fail, so
/// no recording would be delivered. Reading it says corrupt, and the
/// database is rebuilt from the pairs like a damaged one.
#[test]
fn a_row_of_the_wrong_type_is_corrupt_and_rebuilt() {
    let d = three_pairs_a_delivered();
    let c = rusqlite::Connection::open(d.path().join(DB_FILE)).unwrap();
    c.execute(
        "UPDATE recordings SET next_attempt_at = 'soon' WHERE id = 'b'",
        [],
    )
    .unwrap();
    drop(c);
    let s = Spool::open(d.path()).unwrap();
    let e = s.list().unwrap_err();
    assert!(e.is_corrupt(), "{e}");
    let e = s.check_integrity().unwrap_err();
    assert!(e.to_string().contains("wrong type"), "{e}");
    drop(s);
    let (s, repair) = Spool::open_repairing(d.path()).unwrap();
    let r = repair.expect("a repair");
    assert_eq!((r.recordings, r.known_delivered), (3, 1), "{r:?}");
    assert_eq!(s.get("a").unwrap().unwrap().state, State::Delivered);
    assert_eq!(s.get("b").unwrap().unwrap().state, State::Recorded);
    assert_eq!(s.list().unwrap().len(), 3);
}

/// The oldest recording due goes first, also one that waited out a pause
/// or a backoff (before, every retried one sorted behind every newer one:
/// with calls coming as fast as uploads finish, it never went); a retry
/// time further ahead than any wait the daemon sets (the clock went back)
/// is due now, and says so to the scheduler.
#[test]
fn the_oldest_due_goes_first_and_a_clock_gone_back_stalls_nothing() {
    let d = tempfile::tempdir().unwrap();
    pair(d.path(), "old", 1);
    pair(d.path(), "new", 1);
    let t = std::time::SystemTime::now();
    for (id, ago) in [("old", 3600), ("new", 60)] {
        let f = fs::File::options()
            .write(true)
            .open(d.path().join(format!("{id}.json")))
            .unwrap();
        f.set_modified(t - Duration::from_secs(ago)).unwrap();
    }
    let mut s = Spool::open(d.path()).unwrap();
    let now = crate::sys::clock::now_ms();
    s.scan(now).unwrap();
    for id in ["old", "new"] {
        s.mark_queued(id, now).unwrap();
    }
    // "old" failed once and waited; it is due again now.
    s.retry_later("old", now - 1, "HTTP 503", true, now)
        .unwrap();
    let due = s.due(now, 1, &HashSet::new()).unwrap();
    assert_eq!(due[0].id, "old");
    // Set 10 h ahead by a clock since put back: due now.
    s.retry_later("old", now + 10 * 3600 * 1000, "HTTP 503", true, now)
        .unwrap();
    s.retry_later("new", now + 60_000, "HTTP 503", true, now)
        .unwrap();
    let due = s.due(now, 10, &HashSet::new()).unwrap();
    assert_eq!(
        due.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["old"]
    );
    assert!(s.next_due().unwrap().unwrap() <= crate::sys::clock::now_ms());
}
