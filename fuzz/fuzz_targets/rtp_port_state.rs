//! Arbitrary bytes as the RTP port state file (`<spool>/.rtp-ports`, read at
//! start): never panics (a hostile `saved_at` must not crash the daemon into
//! a loop); the ports read are sorted, unique, and each named in the text.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pbx_edge::rtp_ports::parse_state;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for wall in [
        SystemTime::now(),
        UNIX_EPOCH,
        UNIX_EPOCH + Duration::from_secs(u32::MAX.into()),
    ] {
        if let Some(ports) = parse_state(&text, wall) {
            assert!(ports.windows(2).all(|w| w[0] < w[1]));
            assert!(ports.iter().all(|p| text.contains(&p.to_string())));
        }
    }
});
