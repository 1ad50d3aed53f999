//! What the cloud may answer (any status, any Retry-After value, any body):
//! the policy never panics, never waits longer than the cap, and keeps at
//! most the bounded part of a body (cut on a character boundary).
#![no_main]
use libfuzzer_sys::fuzz_target;
use pbx_edge::upload::policy::{
    classify, parse_retry_after, truncate, Action, Answer, Step, BODY_KEEP, RETRY_AFTER_MAX,
};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let status = u16::from_le_bytes([data[0], data[1]]);
    let step = match data[2] % 3 {
        0 => Step::Create,
        1 => Step::Location,
        _ => Step::Call,
    };
    let text = String::from_utf8_lossy(&data[3..]);
    let (retry, body) = text.split_once('\n').unwrap_or((&text, ""));
    let nows = [
        SystemTime::now(),
        UNIX_EPOCH,
        UNIX_EPOCH + Duration::from_secs(1 << 40),
    ];
    for now in nows {
        if let Some(d) = parse_retry_after(retry, now) {
            assert!(d <= RETRY_AFTER_MAX);
        }
        let a = Answer::Http {
            status,
            retry_after: Some(retry),
            body,
        };
        match classify(step, &a, now) {
            Action::Retry { after: Some(d), .. } => assert!(d <= RETRY_AFTER_MAX),
            Action::Fail { body: b, .. } => assert!(b.len() <= BODY_KEEP + 8),
            _ => {}
        }
    }
    for max in [0, 1, 3, 200, BODY_KEEP] {
        let t = truncate(body, max);
        assert!(t.len() <= max + 8, "{max} {}", t.len());
    }
});
