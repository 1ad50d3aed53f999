//! Arbitrary bytes as `<spool>/.folder-seen` (the files already taken): the
//! parser must never panic, and a line written for any key and any path
//! (newlines, tabs, any characters) reads back as that key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pbx_edge::folder::{parse_seen, seen_line};
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let before = parse_seen(&text);
    if data.len() >= 24 {
        let n = |i: usize| u64::from_le_bytes(data[i..i + 8].try_into().unwrap());
        let key = (n(0), n(8), n(16) as i64);
        let path = String::from_utf8_lossy(&data[24..]);
        let line = seen_line(&key, Path::new(path.as_ref()));
        assert_eq!(line.matches('\n').count(), 1, "one line: {line:?}");
        assert!(line.ends_with('\n'));
        let keys = parse_seen(&line);
        assert_eq!(keys.len(), 1);
        assert!(keys.contains(&key));
        // Appended to whatever was there (ending mid-line, as after a
        // crash, the torn line is lost but this one is read).
        let mut all = text.into_owned();
        all.push('\n');
        all.push_str(&line);
        let after = parse_seen(&all);
        assert!(after.contains(&key));
        assert!(before.iter().all(|k| after.contains(k)));
    }
});
