//! Arbitrary text as the TOML configuration file (and as environment
//! override values and names): loading never panics; a loaded config summarizes and
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
    // The same bytes as the value of environment overrides (CONTRACT §2:
    // `PBX_EDGE__SECTION__KEY`): a number, a string, a duration, a list and
    // a nested section's key; and as the name of one (its value a number).
    for key in [
        "PBX_EDGE__SOURCES__SIPREC__MAX_CALLS",
        "PBX_EDGE__AGENT__ID",
        "PBX_EDGE__RECORDING__RTP_TIMEOUT",
        "PBX_EDGE__SOURCES__SIPREC__ALLOW",
        "PBX_EDGE__SPOOL__MAX_SIZE",
    ] {
        let env = [(key, text.as_ref())];
        if let Err(e) = Config::from_toml_str("fuzz.toml", "", env) {
            assert!(e.lines().iter().all(|l| !l.is_empty()));
        }
    }
    let name = format!("PBX_EDGE__{}", text.trim());
    let env = [(name.as_str(), "7")];
    if let Err(e) = Config::from_toml_str("fuzz.toml", "", env) {
        assert!(e.lines().iter().all(|l| !l.is_empty()));
    }
});
