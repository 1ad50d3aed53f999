//! Arbitrary text as recording file names and paths: the FreePBX name
//! parser, the configurable name patterns (the documented FreeSWITCH and
//! 3CX ones), leg suffixes and set grouping, and the date/time parsers must
//! never panic, and what they return must be consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pbx_core::call::meta::recording_id;
use pbx_edge::cdr::PbxTimeZone;
use pbx_edge::folder::{
    direction_of, group_sets, is_audio_name, parse_cdr_datetime, parse_compact_datetime,
    parse_freepbx_name, parse_name, split_name, NamePattern,
};
use std::path::PathBuf;
use std::sync::OnceLock;

fn patterns() -> &'static [NamePattern] {
    static P: OnceLock<Vec<NamePattern>> = OnceLock::new();
    P.get_or_init(|| {
        [
            r"^(?P<date>\d{4}-\d{2}-\d{2})-(?P<time>\d{2}-\d{2}-\d{2})_(?P<dst>[^_]*)_(?P<src>[^_]*)_(?P<uniqueid>[0-9a-f-]{36})$",
            r"^\[(?P<src_name>[^\]]*)\]_(?P<src>[^_-]*)-(?P<dst>[^_]*)_(?P<datetime>\d{14})\((?P<uniqueid>[^)]+)\)$",
            r"^(?P<epoch>\d+(\.\d+)?)-(?P<kind>[a-z]+)-(?P<uniqueid>.+)$",
        ]
        .iter()
        .map(|p| NamePattern::new(p).expect("valid pattern"))
        .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut paths = Vec::new();
    for line in text.lines().take(64) {
        if let Some(n) = parse_freepbx_name(line) {
            // (A unique id may hold dashes: `systemname` in asterisk.conf
            // makes it `pbx1-1700000000.123`. It ends the name.)
            assert!(!n.uniqueid.is_empty() && line.ends_with(&n.uniqueid));
            assert!(!n.kind.is_empty() && !n.kind.contains('-'));
            assert!(!n.dst.contains('-'));
            let _ = direction_of(&n.kind);
        }
        if let Some(n) = parse_name(line, patterns()) {
            assert!(!n.uniqueid.is_empty());
            // What a conversion does with the start time.
            for tz in [
                PbxTimeZone::Fixed(-50_400),
                PbxTimeZone::Fixed(50_400),
                PbxTimeZone::Local,
            ] {
                let t = tz.to_utc(n.started_at);
                let _ = t.to_rfc3339();
                let _ = recording_id(&n.uniqueid, t);
            }
        }
        if let Some(t) = parse_cdr_datetime(line) {
            let _ = PbxTimeZone::Local.to_utc(t).to_rfc3339();
        }
        for p in patterns() {
            let _ = p.parse(line);
        }
        let _ = parse_cdr_datetime(line);
        if let (Some(d), Some(t)) = (line.get(..8), line.get(8..14)) {
            let _ = parse_compact_datetime(d, t);
        }
        match split_name(line) {
            Some((base, leg)) => {
                assert!(is_audio_name(line));
                assert!(line.starts_with(&base));
                assert!(leg.is_none() || !base.is_empty());
            }
            None => assert!(!is_audio_name(line)),
        }
        paths.push(PathBuf::from(line));
    }
    // No file lands in two sets, and only audio files land in one.
    let sets = group_sets(&paths);
    for p in &paths {
        let Some(name) = p.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            continue;
        };
        let n = sets.iter().filter(|s| s.files().contains(&p)).count();
        // Two names for one slot (`x-in.wav`, `x-rx.wav`): one of them.
        if split_name(&name).is_none() {
            assert_eq!(n, 0, "{p:?}");
        } else {
            assert!(n <= 1, "{p:?}");
        }
    }
    for s in &sets {
        assert!(!s.files().is_empty());
        let _ = s.stem();
    }
});
