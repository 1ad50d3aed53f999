//! Arbitrary text as the TOML configuration file (and as an environment
//! override value): loading never panics; a loaded config summarizes and
//! compares without panicking; every error has a message.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pbx_edge::config::Config;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let none: [(&str, &str); 0] = [];
    match Config::from_toml_str("fuzz.toml", &text, none) {
        Ok(c) => {
            let _ = c.summary();
            let _ = c.secret_file_warnings();
            let _ = c.diff_restart_needed(&Config::defaults(None));
        }
        Err(e) => assert!(e.lines().iter().all(|l| !l.is_empty())),
    }
    // The same bytes as the value of an environment override.
    let env = [("PBX_EDGE_SIPREC_MAX_CALLS", text.as_ref())];
    let _ = Config::from_toml_str("fuzz.toml", "", env);
});
