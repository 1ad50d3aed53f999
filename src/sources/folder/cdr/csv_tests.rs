//! Tests of the Master.csv store (`csv.rs`).

use super::*;

#[test]
fn csv_and_cdr() {
    let line = r#""","1001","5551234","from-internal","""Alice"" <1001>","SIP/1001-0001","SIP/t-0002","Dial","SIP/t/5551234,300","2026-11-24 10:15:02","2026-11-24 10:15:05","2026-11-24 10:16:02",60,57,"ANSWERED","DOCUMENTATION","1700000000.123","""#;
    let r = parse_cdr_line(line, 3600).unwrap();
    assert_eq!(r.src, "1001");
    assert_eq!(r.dst, "5551234");
    assert_eq!(clid_name(&r.clid).as_deref(), Some("Alice"));
    assert_eq!(r.uniqueid, "1700000000.123");
    assert_eq!(r.start.unwrap().to_rfc3339(), "2026-11-24T09:15:02.000Z");
    assert_eq!(r.billsec, Some(57));
    assert_eq!(r.disposition, "ANSWERED");
    assert!(parse_cdr_line("a,b,c", 0).is_none());
    let f = split_csv_line(r#"a,"b,c","d""e",,"#);
    assert_eq!(f, vec!["a", "b,c", "d\"e", "", ""]);
}

#[test]
fn custom_columns() {
    let cols = CsvColumns::new(&["uniqueid", "-", "src", "dst", "calldate", "did"]).unwrap();
    let r = parse_cdr_line_with(
        "7.7,x,1001,200,2026-11-24 10:00:00,5551000",
        &cols,
        PbxTimeZone::Fixed(0),
    )
    .unwrap();
    assert_eq!(
        (r.uniqueid.as_str(), r.src.as_str(), r.did.as_str()),
        ("7.7", "1001", "5551000")
    );
    assert_eq!(r.start.unwrap().to_rfc3339(), "2026-11-24T10:00:00.000Z");
    assert!(CsvColumns::new(&["src"]).unwrap_err().contains("uniqueid"));
    assert!(CsvColumns::new(&["uniqueid", "bogus"])
        .unwrap_err()
        .contains("bogus"));
    assert!(CsvColumns::new(&["uniqueid", "src", "src"]).is_err());
}

#[test]
fn cdr_follower_partial_lines_and_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("Master.csv");
    let row = |u: &str| {
        format!("\"\",\"1\",\"2\",\"c\",\"\",\"\",\"\",\"\",\"\",\"2026-11-24 10:00:00\",\"\",\"2026-11-24 10:00:09\",9,0,\"NO ANSWER\",\"D\",\"{u}\",\"\"\n")
    };
    let first = row("1.1");
    let (a, b) = first.split_at(30);
    std::fs::write(&p, a).unwrap();
    let mut f = CdrFollower::new(&p, 2, 0);
    f.poll().unwrap();
    assert!(f.get("1.1").is_none(), "half a line is not a row");
    std::fs::write(&p, format!("{a}{b}{}garbage\n", row("1.2"))).unwrap();
    f.poll().unwrap();
    assert_eq!(f.get("1.1").unwrap().answer, None);
    assert!(f.get("1.2").is_some());
    assert_eq!(f.malformed, 1);
    // Rotated: shorter file, read from the start; bounded to 2 rows.
    std::fs::write(&p, format!("{}{}", row("2.1"), row("2.2"))).unwrap();
    f.poll().unwrap();
    assert!(f.get("2.1").is_some() && f.get("2.2").is_some());
    assert!(f.get("1.1").is_none(), "oldest forgotten");
}

#[test]
fn a_rotated_master_csv_is_read_to_its_end_before_the_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("Master.csv");
    let cols = || CsvColumns::new(&["uniqueid", "linkedid", "recordingfile"]).unwrap();
    let append = |path: &Path, text: &str| {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
    };
    let mut f = CdrFollower::with_columns(&p, 100, cols(), PbxTimeZone::Fixed(0));
    append(&p, "1.1,L1,a.wav\n");
    f.poll().unwrap();
    // Rows appended after the last read, then logrotate (`create`):
    // renamed away, a new file made and written to.
    append(&p, "1.2,L2,b.wav\n1.3,L3,c.wav\n");
    std::fs::rename(&p, dir.path().join("Master.csv.1")).unwrap();
    append(&p, "2.1,L4,d.wav\n");
    f.poll().unwrap();
    for u in ["1.1", "1.2", "1.3", "2.1"] {
        assert!(f.get(u).is_some(), "{u}");
    }
    append(&p, "2.2,L5,e.wav\n");
    f.poll().unwrap();
    assert_eq!((f.len(), f.malformed), (5, 0));

    // Renamed away with a last line not ended, the new file not made
    // yet; then deleted (not renamed) and made again.
    append(&p, "3.1,L6,f.wav\n3.2,L7,g.wav");
    std::fs::rename(&p, dir.path().join("Master.csv.2")).unwrap();
    f.poll().unwrap();
    assert!(f.get("3.1").is_some(), "read from the renamed file");
    append(&p, "4.1,L8,h.wav\n");
    f.poll().unwrap();
    assert!(f.get("3.2").is_some(), "its last line, without a line end");
    assert!(f.get("4.1").is_some());
    append(&p, "4.2,L9,i.wav\n");
    std::fs::remove_file(&p).unwrap();
    append(&p, "5.1,LA,j.wav\n");
    f.poll().unwrap();
    assert!(f.get("4.2").is_some() && f.get("5.1").is_some());
    assert_eq!((f.len(), f.malformed), (10, 0));
    assert!(f.indexes_consistent());
    // A missing file with nothing followed yet: NotFound (no rows).
    let mut g = CdrFollower::new(&dir.path().join("none.csv"), 10, 0);
    assert_eq!(g.poll().unwrap_err().kind(), io::ErrorKind::NotFound);
}

#[test]
fn a_line_break_inside_a_quoted_field_keeps_the_row() {
    // cdr_csv writes fields as they are: a caller name or a userfield
    // the dialplan set may hold a line break (LF, or CR LF).
    let broken = format!(
        "{}{}{}",
        r#""","5551234","2001","from-trunk","""Eve"#,
        "\r\nSmith\"\" <5551234>\",\"SIP/t-1\",\"SIP/2001-2\",\"Dial\",\"\",",
        r#""2026-11-24 10:00:00","2026-11-24 10:00:04","2026-11-24 10:01:00",60,56,"ANSWERED","D","6.1","note
second line""#,
    );
    let text = format!(
        "{}{broken}\n{}",
        leg("5.1", "200", "2026-11-24 09:00:00", "", 0, "NO ANSWER"),
        leg("7.1", "201", "2026-11-24 10:00:00", "", 0, "NO ANSWER"),
    );
    // Whole, and in pieces of every size up to 40 bytes (cut inside
    // the quotes, at the line breaks, between CR and LF).
    for piece in std::iter::once(text.len()).chain(1..=40) {
        let mut f = CdrFollower::new(Path::new("/x"), 100, 0);
        for c in text.as_bytes().chunks(piece) {
            f.feed(c);
        }
        assert_eq!((f.len(), f.malformed), (3, 0), "pieces of {piece}");
        let r = f.get("6.1").expect("the row with line breaks");
        assert_eq!(r.clid, "\"Eve\r\nSmith\" <5551234>");
        assert_eq!(r.userfield, "note\nsecond line");
        assert_eq!((r.disposition.as_str(), r.billsec), ("ANSWERED", Some(56)));
        assert!(f.get("5.1").is_some() && f.get("7.1").is_some());
    }
}

#[test]
fn a_stray_quote_does_not_hold_up_the_rows_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("Master.csv");
    // A quote that never ends, then good rows: the rows after it are
    // found at the next read (Asterisk writes a record at once, so a
    // quote still open at two reads in a row is no record in writing).
    let stray = "\"\",\"1\",\"2\",\"c\",\"Bad <1>,\"\",\"\",\"\",\"\",\"2026-11-24 10:00:00\",\"\",\"2026-11-24 10:00:09\",9,0,\"NO ANSWER\",\"D\",\"8.1\",\"\"\n";
    let text = format!(
        "{}{stray}{}{}",
        leg("5.1", "200", "2026-11-24 09:00:00", "", 0, "NO ANSWER"),
        leg("7.1", "201", "2026-11-24 10:00:00", "", 0, "NO ANSWER"),
        leg("7.2", "202", "2026-11-24 10:00:00", "", 0, "NO ANSWER"),
    );
    std::fs::write(&p, &text).unwrap();
    let mut f = CdrFollower::new(&p, 100, 0);
    f.poll().unwrap();
    assert!(f.get("5.1").is_some());
    f.poll().unwrap();
    assert!(f.get("7.1").is_some() && f.get("7.2").is_some());
    assert_eq!(f.malformed, 1, "the line with the stray quote");
    // Fed without reads (no end of data): 64 KiB inside quotes is no
    // record either; the lines are taken one by one.
    let mut g = CdrFollower::new(Path::new("/x"), 10_000, 0);
    g.feed(stray.as_bytes());
    for i in 0..600 {
        g.feed(leg(&format!("9.{i}"), "1", "2026-11-24 10:00:00", "", 0, "BUSY").as_bytes());
    }
    assert!(
        g.get("9.0").is_some() && g.len() > 400,
        "{} {}",
        g.len(),
        g.malformed
    );
    assert!(g.indexes_consistent());
}

#[test]
fn newcdrcolumns_order_is_peeraccount_linkedid_sequence() {
    // cdr_csv.c (newcdrcolumns = yes): ..., uniqueid, userfield,
    // peeraccount, linkedid, sequence.
    let line = r#""","1","2","c","","","","","","2026-11-24 10:00:00","","2026-11-24 10:00:09",9,0,"NO ANSWER","D","1.2","uf","peer","1.1",7"#;
    let row = parse_cdr_line(line, 0).unwrap();
    assert_eq!(row.uniqueid, "1.2");
    assert_eq!(row.linkedid, "1.1");
    assert_eq!(
        &DEFAULT_COLUMNS[16..],
        [
            "uniqueid",
            "userfield",
            "peeraccount",
            "linkedid",
            "sequence"
        ]
    );
}

#[test]
fn a_row_written_again_leaves_no_stale_index_entries() {
    let cols = CsvColumns::new(&["uniqueid", "linkedid", "recordingfile"]).unwrap();
    let mut f = CdrFollower::with_columns(Path::new("/x"), 2, cols, PbxTimeZone::Fixed(0));
    f.feed(b"1.1,L1,a.wav\n1.1,L2,b.wav\n");
    assert!(f.indexes_consistent());
    f.feed(b"2.1,L2,c.wav\n3.1,,\n");
    assert_eq!(f.len(), 2);
    assert!(f.indexes_consistent());
    assert!(f.get("1.1").is_none());
    let q = CdrQuery {
        uniqueid: "L1".into(),
        files: vec!["a.wav".into()],
        around: None,
    };
    assert!(f.lookup(&q).is_none(), "forgotten with its row");
}

#[test]
fn a_large_master_csv_is_read_in_pieces_with_every_row() {
    // Over 1 MB: lines cross the 256 KiB pieces the file is read in.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("Master.csv");
    let mut text = String::new();
    for i in 0..40_000 {
        text.push_str(&format!("{i}.7,L{i},rec-{i:06}.wav\r\n"));
    }
    assert!(text.len() > 1_000_000);
    std::fs::write(&path, &text).unwrap();
    let cols = CsvColumns::new(&["uniqueid", "linkedid", "recordingfile"]).unwrap();
    let mut f = CdrFollower::with_columns(&path, 100_000, cols, PbxTimeZone::Fixed(0));
    f.poll().unwrap();
    assert_eq!((f.len(), f.malformed), (40_000, 0));
    for i in [0, 1, 12_345, 39_999] {
        let r = f.get(&format!("{i}.7")).expect("row read");
        assert_eq!(r.linkedid, format!("L{i}"));
        assert_eq!(r.recordingfile, format!("rec-{i:06}.wav"));
    }
    assert!(f.indexes_consistent());
    // What is appended later is read from where the first read ended.
    let mut more = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    std::io::Write::write_all(&mut more, b"40000.7,L40000,").unwrap();
    f.poll().unwrap();
    assert_eq!(f.len(), 40_000, "half a line waits");
    std::io::Write::write_all(&mut more, b"last.wav\n").unwrap();
    f.poll().unwrap();
    assert_eq!(f.get("40000.7").unwrap().recordingfile, "last.wav");
}

#[test]
fn a_long_first_read_reports_alive_and_a_stop_cuts_it_short_losing_nothing() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("Master.csv");
    let mut text = String::new();
    for i in 0..40_000 {
        text.push_str(&format!("{i}.7,L{i},rec-{i:06}.wav\n"));
    }
    std::fs::write(&path, &text).unwrap();
    let cols = CsvColumns::new(&["uniqueid", "linkedid", "recordingfile"]).unwrap();
    let mut f = CdrFollower::with_columns(&path, 100_000, cols, PbxTimeZone::Fixed(0));
    let beats = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (b, st) = (beats.clone(), stop.clone());
    // The second beat (after 512 KiB) asks to stop.
    f.set_pulse(Pulse::new(
        move || {
            if b.fetch_add(1, Ordering::SeqCst) == 1 {
                st.store(true, Ordering::SeqCst);
            }
        },
        stop.clone(),
    ));
    let e = f.poll().unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::Interrupted);
    assert_eq!(beats.load(Ordering::SeqCst), 2, "alive after each piece");
    assert!(!f.is_empty() && f.len() < 40_000, "{}", f.len());
    // Read on from where the stop left it: every row, none twice.
    stop.store(false, Ordering::SeqCst);
    f.poll().unwrap();
    assert!(
        beats.load(Ordering::SeqCst) >= 5,
        "a 1 MB read beats each 256 KiB"
    );
    assert_eq!((f.len(), f.malformed), (40_000, 0));
    assert!(f.indexes_consistent());
    // As a store: a stop is an error (recordings wait), not rows missing.
    let mut store = CsvStore(CdrFollower::new(&path, 10, 0));
    let stopped = Arc::new(AtomicBool::new(true));
    store.set_pulse(Pulse::new(|| {}, stopped));
    let q = CdrQuery {
        uniqueid: "39999.7".into(),
        files: vec![],
        around: None,
    };
    assert!(store.find(&[q]).is_err());
}

/// A default-column Master.csv line: one leg of call `u`.
fn leg(u: &str, dst: &str, start: &str, answer: &str, billsec: i64, disp: &str) -> String {
    format!(
        "\"\",\"5551234\",\"{dst}\",\"ext-group\",\"\",\"SIP/t-1\",\"SIP/{dst}-2\",\"Dial\",\"\",\
         \"{start}\",\"{answer}\",\"2026-11-24 10:05:00\",60,{billsec},\"{disp}\",\"D\",\"{u}\",\"\"\n"
    )
}

#[test]
fn several_rows_of_one_uniqueid_answered_then_longest_billsec_in_either_order() {
    // A ring group: three phones rang, 201 answered; then a transfer
    // leg, answered for longer; the rows of one uniqueid, in the order
    // Asterisk wrote them (the unanswered legs last) and reversed.
    let rows = [
        leg("7.1", "200", "2026-11-24 10:00:00", "", 0, "NO ANSWER"),
        leg(
            "7.1",
            "201",
            "2026-11-24 10:00:01",
            "2026-11-24 10:00:05",
            40,
            "ANSWERED",
        ),
        leg(
            "7.1",
            "202",
            "2026-11-24 10:00:00",
            "2026-11-24 10:00:45",
            90,
            "ANSWERED",
        ),
        leg("7.1", "203", "2026-11-24 10:00:00", "", 0, "NO ANSWER"),
        leg("7.1", "204", "2026-11-24 10:00:00", "", 0, "BUSY"),
    ];
    let q = CdrQuery {
        uniqueid: "7.1".into(),
        files: vec!["in-x.wav".into()],
        around: None,
    };
    for reversed in [false, true] {
        let mut f = CdrFollower::new(Path::new("/x"), 100, 0);
        let mut order: Vec<&String> = rows.iter().collect();
        if reversed {
            order.reverse();
        }
        for r in order {
            f.feed(r.as_bytes());
        }
        assert_eq!(f.len(), 5, "every row kept");
        for r in [f.get("7.1").unwrap(), f.lookup(&q).unwrap()] {
            assert_eq!(
                (r.dst.as_str(), r.disposition.as_str(), r.billsec),
                ("202", "ANSWERED", Some(90)),
                "reversed: {reversed}"
            );
            assert_eq!(r.answer.unwrap().to_rfc3339(), "2026-11-24T10:00:45.000Z");
            assert_eq!(r.start.unwrap().to_rfc3339(), "2026-11-24T10:00:00.000Z");
        }
        assert!(f.indexes_consistent());
    }
    // Only unanswered legs: the rule still chooses one (the earliest).
    let mut f = CdrFollower::new(Path::new("/x"), 100, 0);
    f.feed(leg("8.1", "300", "2026-11-24 10:00:03", "", 0, "NO ANSWER").as_bytes());
    f.feed(leg("8.1", "301", "2026-11-24 10:00:01", "", 0, "NO ANSWER").as_bytes());
    assert_eq!(f.get("8.1").unwrap().dst, "301");
}

#[test]
fn rows_per_uniqueid_are_bounded_keeping_the_answered_one() {
    let mut f = CdrFollower::new(Path::new("/x"), 1000, 0);
    f.feed(
        leg(
            "9.1",
            "201",
            "2026-11-24 10:00:00",
            "2026-11-24 10:00:05",
            40,
            "ANSWERED",
        )
        .as_bytes(),
    );
    for i in 0..2 * MAX_ROWS_PER_ID {
        f.feed(
            leg(
                "9.1",
                &format!("3{i:02}"),
                "2026-11-24 10:00:00",
                "",
                0,
                "NO ANSWER",
            )
            .as_bytes(),
        );
    }
    assert_eq!(f.len(), MAX_ROWS_PER_ID);
    assert_eq!(f.get("9.1").unwrap().dst, "201");
    assert!(f.indexes_consistent());
    // The same line read twice is one row.
    let mut g = CdrFollower::new(Path::new("/x"), 10, 0);
    let l = leg("9.2", "201", "2026-11-24 10:00:00", "", 0, "NO ANSWER");
    g.feed(format!("{l}{l}").as_bytes());
    assert_eq!(g.len(), 1);
    // Bounded in all: the oldest uniqueids go with all their rows, the
    // one just read stays.
    let mut h = CdrFollower::new(Path::new("/x"), 3, 0);
    for (u, d) in [
        ("1.1", "a"),
        ("1.1", "b"),
        ("2.1", "c"),
        ("2.1", "d"),
        ("2.1", "e"),
    ] {
        h.feed(leg(u, d, "2026-11-24 10:00:00", "", 0, "NO ANSWER").as_bytes());
        assert!(h.len() <= 3 && h.indexes_consistent());
    }
    assert!(h.get("1.1").is_none());
    assert_eq!(h.rows_of("2.1").len(), 3);
    h.feed(leg("2.1", "f", "2026-11-24 10:00:00", "", 0, "NO ANSWER").as_bytes());
    assert_eq!((h.len(), h.rows_of("2.1").len()), (3, 3));
    assert!(h.indexes_consistent());
}

/// Not a test: the time of the first read of a large Master.csv
/// (BENCHMARKS.md, "The first read of a large Master.csv").
/// `MB=200 cargo test --release --lib first_read_of_a_large -- --ignored --nocapture`
#[test]
#[ignore]
fn first_read_of_a_large_master_csv() {
    let mb: usize = std::env::var("MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("Master.csv");
    let mut text = String::new();
    let mut lines = 0;
    while text.len() < mb << 20 {
        let i = lines;
        text.push_str(&format!(
            "\"\",\"1001\",\"2002\",\"from-internal\",\"\"\"Alice\"\" <1001>\",\
             \"PJSIP/1001-{i:08x}\",\"PJSIP/2002-{i:08x}\",\"Dial\",\"PJSIP/2002,,Tt\",\
             \"2026-01-01 10:00:00\",\"2026-01-01 10:00:02\",\"2026-01-01 10:01:00\",60,58,\
             \"ANSWERED\",\"DOCUMENTATION\",\"1767261600.{i}\",\"\",\"\",\"1767261600.{i}\",{i}\n"
        ));
        lines += 1;
    }
    std::fs::write(&path, &text).unwrap();
    drop(text);
    // As many rows as the folder source keeps.
    let keep = crate::sources::folder::FolderSettings::default().max_cdr_rows;
    let rss = || {
        let s = std::fs::read_to_string("/proc/self/status").unwrap();
        let l = s
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .unwrap()
            .to_string();
        l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap()
    };
    let before = rss();
    let mut f = CdrFollower::new(&path, keep, 0);
    let t = std::time::Instant::now();
    f.poll().unwrap();
    let took = t.elapsed();
    assert_eq!((f.len(), f.malformed), (lines.min(keep), 0));
    assert!(f.get(&format!("1767261600.{}", lines - 1)).is_some());
    eprintln!(
        "{mb} MB, {lines} lines: first read {took:?}, {} rows held, RSS +{} KiB",
        f.len(),
        rss().saturating_sub(before)
    );
}

#[test]
fn the_rest_of_an_overlong_line_is_not_read_as_a_row() {
    let cols = CsvColumns::new(&["uniqueid", "linkedid", "recordingfile"]).unwrap();
    let mut f = CdrFollower::with_columns(Path::new("/x"), 10, cols, PbxTimeZone::Fixed(0));
    f.feed(b"1.1,L1,a.wav\n");
    // 70 KiB without a line end, in pieces, then the end of that line.
    for _ in 0..70 {
        f.feed(&[b'x'; 1024]);
    }
    f.feed(b"\n9.9,L9,");
    assert_eq!((f.len(), f.malformed), (1, 1));
    f.feed(b"b.wav\n2.2,L2,c.wav\n");
    assert_eq!((f.len(), f.malformed), (3, 1));
    assert!(f.get("9.9").is_some(), "the line after the long one");
    // Cut inside the long line's rest: "9.9,L9,b.wav" is not a row of it.
    let mut g = CdrFollower::with_columns(
        Path::new("/x"),
        10,
        CsvColumns::new(&["uniqueid", "linkedid", "recordingfile"]).unwrap(),
        PbxTimeZone::Fixed(0),
    );
    g.feed(&vec![b'y'; 65 * 1024 + 1]);
    g.feed(b"9.9,L9,b.wav\n3.3,L3,d.wav\n");
    assert!(g.get("9.9").is_none(), "the tail of a dropped line");
    assert_eq!((g.len(), g.malformed), (1, 1));
    assert!(g.get("3.3").is_some());
}

proptest::proptest! {
    #[test]
    fn parser_never_panics(s in ".{0,200}") {
        let _ = parse_cdr_line(&s, 0);
        let _ = parse_cdr_datetime(&s);
    }
}

/// A record in Latin-1 (not UTF-8): each byte its Latin-1 character, the
/// caller's name kept (`José`, not `Jos\u{ffd}`); UTF-8 as it is.
#[test]
fn a_latin1_record_keeps_its_accents() {
    assert_eq!(
        text_of(b"\"Jos\xe9\" <15550000006>"),
        "\"José\" <15550000006>"
    );
    assert_eq!(text_of("\"José\" <1>".as_bytes()), "\"José\" <1>");
}
