//! Arbitrary bytes as Asterisk's Master.csv: the line splitter, the row
//! parser (default and custom columns) and the follower (chunked input,
//! bounded rows, lookups) must never panic, and the follower's indexes must
//! name only rows it holds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pbx_edge::cdr::csv::{
    clid_name, parse_cdr_line, parse_cdr_line_with, split_csv_line, CdrFollower, CsvColumns,
};
use pbx_edge::cdr::{CdrQuery, PbxTimeZone};
use std::path::Path;

/// A field quoted the way Asterisk writes it.
fn quote(f: &str) -> String {
    format!("\"{}\"", f.replace('"', "\"\""))
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let custom = CsvColumns::new(&[
        "uniqueid",
        "-",
        "src",
        "dst",
        "calldate",
        "linkedid",
        "recordingfile",
        "did",
    ])
    .expect("valid columns");
    let tz = PbxTimeZone::Fixed(i64::from(ctl as i8) * 900);
    let mut queries = Vec::new();
    for line in text.lines().take(200) {
        let fields = split_csv_line(line);
        assert!(!fields.is_empty());
        // Quoting the fields again gives them back.
        let again: Vec<String> = fields.iter().map(|f| quote(f)).collect();
        assert_eq!(split_csv_line(&again.join(",")), fields);
        if let Some(r) = parse_cdr_line(line, i64::from(ctl) * 60) {
            assert!(!r.uniqueid.trim().is_empty());
            let _ = clid_name(&r.clid);
            queries.push(CdrQuery {
                uniqueid: r.uniqueid.clone(),
                files: vec![r.recordingfile.clone()],
                around: r.start,
            });
        }
        if let Some(r) = parse_cdr_line_with(line, &custom, tz) {
            queries.push(CdrQuery {
                uniqueid: r.linkedid.clone(),
                files: vec![r.recordingfile.clone(), format!("{}.wav", r.uniqueid)],
                around: None,
            });
        }
    }
    // The follower, fed in chunks of a size the first byte picks.
    let max_rows = usize::from(ctl % 7) + 1;
    let chunk = usize::from(ctl / 7) + 1;
    for cols in [CsvColumns::default(), custom] {
        let mut f = CdrFollower::with_columns(Path::new("/fuzz/Master.csv"), max_rows, cols, tz);
        for c in rest.chunks(chunk) {
            f.feed(c);
            assert!(f.len() <= max_rows);
        }
        assert!(f.indexes_consistent());
        for q in queries.iter().take(50) {
            if let Some(r) = f.lookup(q) {
                assert!(f.get(&r.uniqueid).is_some());
            }
        }
    }
});
