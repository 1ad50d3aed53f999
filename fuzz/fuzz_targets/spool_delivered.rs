//! Arbitrary bytes as the spool's delivered record (`spool.delivered`, read
//! when spool.db is rebuilt): never panics; only valid ids on complete lines
//! are taken; a torn last line is reported at the end of the complete ones;
//! an id appended after the torn part is cut (as the spool does) reads back.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pbx_edge::spool::{parse_delivered, valid_id};

fuzz_target!(|data: &[u8]| {
    let r = parse_delivered(data);
    assert!(r.ids.iter().all(|id| valid_id(id)));
    assert!(r.ids.len() <= r.lines);
    let complete = match r.torn {
        Some(end) => {
            let end = end as usize;
            assert!(end < data.len());
            assert!(end == 0 || data[end - 1] == b'\n');
            assert!(!data[end..].contains(&b'\n'));
            &data[..end]
        }
        None => {
            assert!(data.is_empty() || data.ends_with(b"\n"));
            data
        }
    };
    let mut next = complete.to_vec();
    next.extend_from_slice(b"rec-1\n");
    let again = parse_delivered(&next);
    assert!(again.ids.contains("rec-1"));
    assert!(r.ids.iter().all(|id| again.ids.contains(id)));
    assert_eq!(again.torn, None);
});
