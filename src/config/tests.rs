use super::*;

fn parse(text: &str) -> Result<Config, Vec<String>> {
    Config::from_toml_str("t.toml", text, Vec::<(String, String)>::new()).map_err(|e| e.lines())
}

fn err1(text: &str) -> String {
    let e = parse(text).expect_err("should fail");
    assert_eq!(e.len(), 1, "{e:?}");
    e.into_iter().next().unwrap_or_default()
}

#[test]
fn empty_file_is_defaults() {
    let c = parse("").unwrap();
    assert_eq!(c, Config::defaults(None));
    assert_eq!(c.spool.dir, PathBuf::from("./var"));
    assert_eq!(c.spool.max_size, 20 << 30);
    assert_eq!(c.health.listen.to_string(), "127.0.0.1:9466");
    assert_eq!(c.sources.siprec.rtp_ports, 20000..=29999);
    assert_eq!(c.cloud.chunk_size, 4 << 20);
    assert_eq!(c.recording.jitter, Duration::from_millis(500));
}

#[test]
fn state_directory_sets_spool_default() {
    let c = Config::defaults(Some("/var/lib/pbx-edge:/other"));
    assert_eq!(c.spool.dir, PathBuf::from("/var/lib/pbx-edge"));
    let c = Config::from_toml_str("t", "", [("STATE_DIRECTORY", "/srv/x")]).unwrap();
    assert_eq!(c.spool.dir, PathBuf::from("/srv/x"));
}

#[test]
fn an_installed_binary_defaults_to_the_services_spool() {
    let exe = |p: &str| Some(PathBuf::from(p));
    // The packages' binary, run from a shell as the service's user.
    assert_eq!(
        default_spool_dir(None, exe("/usr/bin/pbx-edge").as_deref()),
        PathBuf::from("/var/lib/pbx-edge")
    );
    assert_eq!(
        default_spool_dir(None, exe("/usr/local/bin/pbx-edge").as_deref()),
        PathBuf::from("/var/lib/pbx-edge")
    );
    // From a checkout (cargo run), or unknown: ./var, as any user.
    for p in [
        "/home/dev/pbx-edge/target/release/pbx-edge",
        "/usrx/pbx-edge",
    ] {
        assert_eq!(
            default_spool_dir(None, exe(p).as_deref()),
            PathBuf::from("./var"),
            "{p}"
        );
    }
    assert_eq!(default_spool_dir(None, None), PathBuf::from("./var"));
    // systemd's StateDirectory= wins.
    assert_eq!(
        default_spool_dir(Some("/srv/spool"), exe("/usr/bin/pbx-edge").as_deref()),
        PathBuf::from("/srv/spool")
    );
}

#[test]
fn lines_from_offsets() {
    let l = Lines::new("a\nbc\n\nd");
    assert_eq!(l.line(0), 1);
    assert_eq!(l.line(1), 1);
    assert_eq!(l.line(2), 2);
    assert_eq!(l.line(5), 3);
    assert_eq!(l.line(6), 4);
    assert_eq!(l.line(999), 4);
}

#[test]
fn wrong_types() {
    assert_eq!(
        err1("[cloud]\nmax_parallel = \"2\"\n"),
        "t.toml:2: cloud.max_parallel: expected an integer, found a string (\"2\")"
    );
    assert_eq!(
        err1("[sources.siprec]\nenabled = \"yes\""),
        "t.toml:2: sources.siprec.enabled: expected true or false, found a string (\"yes\")"
    );
    assert_eq!(
            err1("[recording]\nrtp_timeout = 30\n"),
            "t.toml:2: recording.rtp_timeout: expected a duration string such as \"30s\" or \"5m\", found an integer (30)"
        );
    assert_eq!(
        err1("cloud = 5\n"),
        "t.toml:1: cloud: expected a table ([cloud]), found an integer (5)"
    );
}

#[test]
fn sizes_accept_integers_and_strings() {
    let c = parse("[spool]\nmax_size = 1000\n").unwrap();
    assert_eq!(c.spool.max_size, 1000);
    let c = parse("[spool]\nmax_size = \"1GB\"\n").unwrap();
    assert_eq!(c.spool.max_size, 1_000_000_000);
    assert_eq!(
        err1("[spool]\nmax_size = -1\n"),
        "t.toml:2: spool.max_size: must not be negative (-1)"
    );
    assert_eq!(
        err1("[spool]\nmax_size = 0\n"),
        "t.toml:2: spool.max_size: must be above 0"
    );
}

#[test]
fn sample_rates() {
    for (v, want) in [
        ("\"auto\"", SampleRate::Auto),
        ("\"8000\"", SampleRate::Hz8000),
        ("16000", SampleRate::Hz16000),
    ] {
        let c = parse(&format!("[recording]\nsample_rate = {v}\n")).unwrap();
        assert_eq!(c.recording.sample_rate, want);
    }
    assert_eq!(SampleRate::Hz16000.policy(), SampleRatePolicy::Fixed(16000));
    assert_eq!(
            err1("[recording]\nsample_rate = 44100\n"),
            "t.toml:2: recording.sample_rate: expected \"auto\", \"8000\" or \"16000\", found an integer (44100)"
        );
    assert_eq!(
        err1("[recording]\nsample_rate = \"wide\"\n"),
        "t.toml:2: recording.sample_rate: expected \"auto\", \"8000\" or \"16000\", found \"wide\""
    );
}

#[test]
fn engine_config_carries_recording_settings() {
    let c =
        parse("[recording]\njitter = \"250ms\"\nrtp_timeout = \"1m\"\nsample_rate = 8000").unwrap();
    let e = c.recording.engine_config();
    assert_eq!(e.jitter_ms, 250);
    assert_eq!(e.rtp_timeout_us, 60_000_000);
    assert_eq!(e.sample_rate, SampleRatePolicy::Fixed(8000));
}

#[test]
fn pause_and_resume_sequences_are_checked_and_reach_the_engine() {
    let c = parse("[recording]\npause_dtmf = \"*1\"\nresume_dtmf = \"#9a\"\n").unwrap();
    assert_eq!(c.recording.pause_dtmf, "*1");
    assert_eq!(c.recording.resume_dtmf, "#9A");
    let e = c.recording.engine_config();
    assert_eq!(
        (e.pause_dtmf.as_str(), e.resume_dtmf.as_str()),
        ("*1", "#9A")
    );
    let d = parse("").unwrap().recording;
    assert!(d.pause_dtmf.is_empty() && d.resume_dtmf.is_empty());
    assert_eq!(
        err1("[recording]\n\npause_dtmf = \"*x1\"\n"),
        "t.toml:3: recording.pause_dtmf: \"*X1\" holds characters that are not DTMF digits (0-9, *, #, A-D), e.g. \"*1\""
    );
    assert_eq!(
        err1("[recording]\nresume_dtmf = \"12345678901234567\"\n"),
        "t.toml:2: recording.resume_dtmf: longer than 16 digits"
    );
    assert_eq!(
        err1("[recording]\nresume_dtmf = 12\n"),
        "t.toml:2: recording.resume_dtmf: expected a string of DTMF digits, found an integer (12)"
    );
    assert_eq!(
        err1("[recording]\npause_dtmf = \"*1\"\nresume_dtmf = \"*1\"\n"),
        "t.toml:3: recording.resume_dtmf: is the same sequence as recording.pause_dtmf (\"*1\"): a call could never be resumed by it"
    );
}

#[test]
fn port_ranges() {
    let ok = |s: &str| {
        parse(&format!("[sources.siprec]\nrtp_ports = \"{s}\"")).map(|c| c.sources.siprec.rtp_ports)
    };
    assert_eq!(ok("10000-10001").unwrap(), 10000..=10001);
    assert_eq!(ok(" 30000 - 40000 ").unwrap(), 30000..=40000);
    assert!(ok("10001-10002").is_err()); // 10002 has no odd partner
    assert!(ok("10000-10000").is_err());
    assert!(ok("5000").is_err());
    assert!(ok("1000-2000").is_err());
    assert!(ok("3000-2000").is_err());
    assert!(ok("20000-70000").is_err());
    assert_eq!(
        err1("[sources.siprec]\nrtp_ports = \"30000-20000\""),
        "t.toml:2: sources.siprec.rtp_ports: low port 30000 is above high port 20000"
    );
}

/// A clash between two keys is reported at the one written in the file,
/// never at "(built-in default)".
#[test]
fn clashes_with_a_default_are_reported_at_the_key_written() {
    assert_eq!(
        err1("[sources.siprec]\nlisten = \"0.0.0.0:20000\""),
        "t.toml:2: sources.siprec.listen: port 20000 is inside sources.siprec.rtp_ports (20000-29999)"
    );
    assert_eq!(
        err1("[sources.siprec]\nrtp_ports = \"5000-6000\""),
        "t.toml:2: sources.siprec.rtp_ports: contains the SIP port 5090 of sources.siprec.listen"
    );
    assert_eq!(
        err1("[health]\nlisten = \"127.0.0.1:9060\"\n\n[sources.hep]\nenabled = true\n"),
        "t.toml:2: health.listen: 127.0.0.1:9060 is used by both health.listen and sources.hep.listen"
    );
    assert_eq!(
        err1("[sources.siprec]\nlisten = \"127.0.0.1:9060\"\n\n[sources.hep]\nenabled = true\n"),
        "t.toml:2: sources.siprec.listen: 127.0.0.1:9060 is used by both sources.siprec.listen and sources.hep.listen"
    );
    assert_eq!(
        err1("[sources.hep]\nenabled = true\nlisten = \"127.0.0.1:9466\"\n"),
        "t.toml:3: sources.hep.listen: 127.0.0.1:9466 is used by both health.listen and sources.hep.listen"
    );
    for e in [
        parse("[sources.siprec]\nlisten = \"0.0.0.0:20000\""),
        parse("[health]\nlisten = \"127.0.0.1:9060\"\n[sources.hep]\nenabled = true"),
    ] {
        assert!(!format!("{e:?}").contains("built-in default"), "{e:?}");
    }
}

/// Two listeners on one port clash when their addresses are the same or
/// either is the wildcard (`run` could not bind both), not only when the
/// two are written alike.
#[test]
fn a_wildcard_and_an_address_on_one_port_clash() {
    assert_eq!(
        err1("[sources.siprec]\nlisten = \"0.0.0.0:9466\""),
        "t.toml:2: sources.siprec.listen: 0.0.0.0:9466 clashes with health.listen 127.0.0.1:9466 (port 9466 on the same or every address)"
    );
    assert_eq!(
        err1("[health]\nlisten = \"[::]:5090\""),
        "t.toml:2: health.listen: [::]:5090 clashes with sources.siprec.listen 127.0.0.1:5090 (port 5090 on the same or every address)"
    );
    assert_eq!(
        err1("[sources.hep]\nenabled = true\nlisten = \"0.0.0.0:5090\""),
        "t.toml:3: sources.hep.listen: 0.0.0.0:5090 clashes with sources.siprec.listen 127.0.0.1:5090 (port 5090 on the same or every address)"
    );
    assert_eq!(
        err1("[health]\nlisten = \"0.0.0.0:9060\"\n[sources.hep]\nenabled = true"),
        "t.toml:2: health.listen: 0.0.0.0:9060 clashes with sources.hep.listen 127.0.0.1:9060 (port 9060 on the same or every address)"
    );
    // (The certificate files are missing too: another problem.)
    let e = parse("[sources.hep]\nenabled = true\nlisten = \"127.0.0.1:5061\"\n[sources.siprec]\ntls_listen = \"0.0.0.0:5061\"\ntls_cert = \"/nonexistent/c.pem\"\ntls_key = \"/nonexistent/k.pem\"").unwrap_err();
    assert!(
        e.contains(&"t.toml:3: sources.hep.listen: 127.0.0.1:5061 clashes with sources.siprec.tls_listen 0.0.0.0:5061 (port 5061 on the same or every address)".to_string()),
        "{e:#?}"
    );
    // Different addresses, or a disabled source: no clash.
    assert!(parse("[sources.siprec]\nlisten = \"127.0.0.2:9466\"").is_ok());
    assert!(parse("[sources.siprec]\nenabled = false\nlisten = \"0.0.0.0:9466\"").is_ok());
    assert!(parse("[sources.hep]\nlisten = \"0.0.0.0:9466\"").is_ok());
}

#[test]
fn urls() {
    let url = |s: &str| parse(&format!("[cloud]\nurl = \"{s}\"")).map(|c| c.cloud.url);
    assert_eq!(url("").unwrap(), "");
    assert_eq!(
        url("https://api.example.com/edge/").unwrap(),
        "https://api.example.com/edge"
    );
    assert_eq!(
        url("http://127.0.0.1:8080").unwrap(),
        "http://127.0.0.1:8080"
    );
    assert_eq!(
        url("http://localhost:8080/").unwrap(),
        "http://localhost:8080"
    );
    assert_eq!(url("http://[::1]:8080").unwrap(), "http://[::1]:8080");
    assert!(url("http://api.example.com").is_err());
    assert!(url("http://10.0.0.1").is_err());
    assert!(url("ftp://x.example").is_err());
    assert!(url("https://user:pw@x.example").is_err());
    assert!(url("https://x.example/?a=b").is_err());
    assert!(url("not a url").is_err());
}

#[test]
fn allow_lists() {
    let c = parse("[sources.siprec]\nallow = [\"10.1.2.3/8\", \"192.0.2.7\", \"2001:db8::/32\"]")
        .unwrap();
    let a = &c.sources.siprec.allow;
    assert_eq!(a.len(), 3);
    assert_eq!(a[0].to_string(), "10.0.0.0/8");
    assert_eq!(a[1].to_string(), "192.0.2.7/32");
    assert!(c.sources.siprec.allows("10.9.9.9".parse().unwrap()));
    assert!(c.sources.siprec.allows("::ffff:10.9.9.9".parse().unwrap()));
    assert!(!c.sources.siprec.allows("11.0.0.1".parse().unwrap()));
    assert!(Config::defaults(None)
        .sources
        .siprec
        .allows("8.8.8.8".parse().unwrap()));
}

/// `health.control_allow`: networks whose requests the control API takes
/// besides loopback; each bad entry reported with its line and index.
#[test]
fn control_allow_lists_networks() {
    let c = parse("[health]\ncontrol_allow = [\"10.1.2.0/24\", \"192.0.2.7\"]").unwrap();
    let a = &c.health.control_allow;
    assert_eq!(a.len(), 2);
    assert_eq!(a[1].to_string(), "192.0.2.7/32");
    assert!(Config::defaults(None).health.control_allow.is_empty());
    assert_eq!(
        err1("[health]\ncontrol_allow = [\"10.0.0.0/8\",\n  \"nope\"]"),
        "t.toml:3: health.control_allow[1]: \"nope\" is not a network (write e.g. \"10.0.0.0/8\", \"192.0.2.7\" or \"2001:db8::/32\")"
    );
}

#[test]
fn unknown_keys_suggest() {
    assert_eq!(
        err1("[cloud]\nurll = \"\""),
        "t.toml:2: cloud.urll: unknown key (did you mean `url`?)"
    );
    assert_eq!(
        err1("[sources.sipreq]\nenabled = true"),
        "t.toml:1: sources.sipreq: unknown source (did you mean `siprec`?)"
    );
    assert_eq!(
            err1("[network]\nx = 1"),
            "t.toml:1: network: unknown section (known: agent, spool, health, recording, cloud, stream, roles, sources, filter, log)"
        );
    assert_eq!(
        suggest("max_parralel", &["url", "max_parallel"]),
        Some("max_parallel")
    );
    assert_eq!(suggest("zzz", &["url", "id"]), None);
}

#[test]
fn syntax_errors_have_lines_and_keys() {
    let e = parse("[cloud]\nurl = \"https://x\n[spool]\nmax_size = \n").unwrap_err();
    assert!(!e.is_empty());
    assert!(e[0].starts_with("t.toml:2: cloud.url: "), "{e:?}");
    assert_eq!(syntax_key_guess("[a.b]\nc = 1", 2), "a.b.c");
    assert_eq!(syntax_key_guess("[ a . \"b\" ]\n", 1), "a.b");
    assert_eq!(syntax_key_guess("x", 1), "toml");
    assert_eq!(syntax_key_guess("x", 9), "toml");
}

#[test]
fn diff_restart() {
    let a = Config::defaults(None);
    let mut b = a.clone();
    assert!(a.diff_restart_needed(&b).is_empty());
    b.recording.jitter = Duration::from_secs(1);
    b.cloud.max_parallel = 9;
    assert!(a.diff_restart_needed(&b).is_empty());
    b.sources.siprec.max_calls = 5;
    b.sources.folder.enabled = true;
    b.health.listen = "127.0.0.1:1".parse().unwrap();
    assert_eq!(
        a.diff_restart_needed(&b),
        vec!["sources.siprec", "sources.folder", "health.listen"]
    );
}

proptest::proptest! {
    /// Any text: no panic, and every problem points at a line of the text.
    #[test]
    fn any_text_gives_config_or_located_errors(
        text in "([a-z_.\\[\\]=\"' 0-9/:-]{0,12}\n?){0,12}"
    ) {
        check_located(&text);
    }

    /// The annotated file with one line replaced by junk.
    #[test]
    fn mutated_annotated_file(line in 0usize..100, junk in "[a-z_=\"\\[\\] 0-9.:/-]{0,20}") {
        let base = include_str!("../../config/pbx-edge.toml");
        let text: Vec<&str> = base
            .lines()
            .enumerate()
            .map(|(i, l)| if i == line { junk.as_str() } else { l })
            .collect();
        check_located(&text.join("\n"));
    }
}

fn check_located(text: &str) {
    let n_lines = text.lines().count().max(1);
    if let Err(e) = parse(text) {
        assert!(!e.is_empty());
        for l in e {
            if l.starts_with("(built-in default): ") {
                continue; // a clash between a set key and a default
            }
            let rest = l.strip_prefix("t.toml:").unwrap_or_else(|| panic!("{l}"));
            let (line, _) = rest.split_once(": ").unwrap_or_else(|| panic!("{l}"));
            let line: usize = line.parse().unwrap_or_else(|_| panic!("{l}"));
            assert!((1..=n_lines + 1).contains(&line), "{l} ({n_lines} lines)");
        }
    }
}

#[test]
fn env_key_paths() {
    assert_eq!(
        env_key_path("PBX_EDGE__SOURCES__SIPREC__RTP_PORTS"),
        "sources.siprec.rtp_ports"
    );
    assert_eq!(env_key_path("PBX_EDGE__CLOUD__URL"), "cloud.url");
}

#[test]
fn resolve_path_prefers_explicit_then_default() {
    let dir = tempfile::tempdir().unwrap();
    let def = dir.path().join("pbx-edge.toml");
    let other = dir.path().join("other.toml");
    assert_eq!(resolve_path_with(None, &def), None);
    assert_eq!(resolve_path_with(Some(&other), &def), Some(other.clone()));
    std::fs::write(&def, "[agent]\nid = \"from-default\"\n").unwrap();
    assert_eq!(resolve_path_with(None, &def), Some(def.clone()));
    let c = load_inner(None, &def, Vec::new()).unwrap();
    assert_eq!(c.agent.id, "from-default");
    let e = load_inner(Some(&other), &def, Vec::new()).unwrap_err();
    assert!(
        e.lines()[0].contains("other.toml:1: file: cannot read"),
        "{e}"
    );
}

#[test]
fn stream_section_defaults_and_checks() {
    let c = parse("").unwrap();
    assert!(!c.stream.enabled);
    assert_eq!(c.stream.frame, Duration::from_millis(100));
    assert_eq!(c.stream.max_lag, Duration::from_secs(30));
    // The token defaults to the cloud's.
    let c = parse(
        "[cloud]\ntoken_file = \"/etc/t\"\n[stream]\nenabled = true\nurl = \"wss://live.example.com/v1/stream\"\nframe = \"50ms\"\nmax_lag = \"2m\"\n",
    )
    .unwrap();
    assert_eq!(c.stream.token_path(&c.cloud), Path::new("/etc/t"));
    assert_eq!(c.stream.frame, Duration::from_millis(50));
    assert_eq!(c.stream.max_lag, Duration::from_secs(120));
    let c = parse("[stream]\nurl = \"ws://127.0.0.1:9/s\"\ntoken_file = \"/s\"\n").unwrap();
    assert_eq!(c.stream.token_path(&c.cloud), Path::new("/s"));
    assert_eq!(
        err1("[stream]\nurl = \"ws://live.example.com/\"\n"),
        "t.toml:2: stream.url: plain ws:// is accepted only for loopback hosts (localhost, 127.0.0.0/8, ::1); use wss://"
    );
    assert!(err1("[stream]\nurl = \"https://x.example.com/\"\n").contains("scheme must be wss"));
    assert!(err1("[stream]\nurl = \"wss://u:p@x.example.com/\"\n").contains("credentials"));
    assert_eq!(
        err1("[stream]\nenabled = true\n"),
        "t.toml:2: stream.url: must be set when stream is enabled (wss://…)"
    );
    assert!(err1("[stream]\nframe = \"5ms\"\n").starts_with("t.toml:2: stream.frame:"));
    assert!(err1("[stream]\nmax_lag = \"0s\"\n").starts_with("t.toml:2: stream.max_lag:"));
    assert!(err1("[stream]\nmaxlag = \"1s\"\n").starts_with("t.toml:2: stream.maxlag:"));
}

#[test]
fn roles_section() {
    let c = parse("").unwrap();
    assert_eq!(c.roles.extension_length, Some((2, 5)));
    let c = parse(
        "[roles]\ninternal_numbers = [\"+7495123????\"]\nextension_length = \"3-4\"\nagent_uris = [\"sip:*@agents.example.com\"]\n",
    )
    .unwrap();
    assert_eq!(c.roles.internal_numbers, vec!["+7495123????".to_string()]);
    assert_eq!(c.roles.extension_length, Some((3, 4)));
    assert_eq!(c.roles.agent_uris.len(), 1);
    assert_eq!(
        parse("[roles]\nextension_length = \"\"\n")
            .unwrap()
            .roles
            .extension_length,
        None
    );
    assert_eq!(
        parse("[roles]\nextension_length = \"4\"\n")
            .unwrap()
            .roles
            .extension_length,
        Some((4, 4))
    );
    assert!(err1("[roles]\nextension_length = \"5-3\"\n")
        .starts_with("t.toml:2: roles.extension_length:"));
    assert!(err1("[roles]\nextension_length = \"x\"\n")
        .starts_with("t.toml:2: roles.extension_length:"));
    assert!(err1("[roles]\ninternal_numbers = [\"*\"]\n").contains("every number"));
    let c = parse("[roles]\ntrunks = [\"192.0.2.7/24\"]\n").unwrap();
    assert_eq!(c.roles.trunks[0].to_string(), "192.0.2.0/24");
    assert!(err1("[roles]\ntrunks = [\"nope\"]\n").starts_with("t.toml:2: roles.trunks:"));
}

/// A SIPREC port range too small for `max_calls` is warned about (one even
/// port a stream, two streams a call), with the range it would need; the
/// packaged defaults (1,000 calls, 20000-29999: 2,500 calls) are not.
#[test]
fn a_port_range_too_small_for_max_calls_is_warned_about() {
    assert_eq!(parse("").unwrap().capacity_warnings(), Vec::<String>::new());
    let c = parse("[sources.siprec]\nmax_calls = 5000").unwrap();
    let w = c.warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("holds 5000 streams: at most 2500 two-stream calls")
            && w[0].contains("max_calls = 5000")
            && w[0].contains("\"20000-39999\""),
        "{w:?}"
    );
    let odd = parse("[sources.siprec]\nmax_calls = 3\nrtp_ports = \"30001-30009\"").unwrap();
    assert_eq!(odd.capacity_warnings().len(), 1, "4 even ports: 2 calls");
    let fits = parse("[sources.siprec]\nmax_calls = 2\nrtp_ports = \"30001-30009\"").unwrap();
    assert_eq!(fits.capacity_warnings(), Vec::<String>::new());
    let off = parse("[sources.siprec]\nenabled = false\nmax_calls = 5000").unwrap();
    assert_eq!(off.capacity_warnings(), Vec::<String>::new());
}

/// A resume sequence of digits only is warned about (a card number keyed
/// while paused may hold it); one with * or # is not.
#[test]
fn a_digits_only_resume_sequence_is_warned_about() {
    let w = parse("[recording]\npause_dtmf = \"*1\"\nresume_dtmf = \"99\"")
        .unwrap()
        .warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("recording.resume_dtmf (\"99\") is digits only"),
        "{w:?}"
    );
    let ok = parse("[recording]\npause_dtmf = \"*1\"\nresume_dtmf = \"*2\"").unwrap();
    assert_eq!(ok.warnings(), Vec::<String>::new());
    // The folder source cannot pause: said so.
    let folder = parse("[recording]\npause_dtmf = \"*1\"\nresume_dtmf = \"*2\"\n[sources.folder]\nenabled = true\n").unwrap();
    let w = folder.warnings();
    assert!(
        w.iter()
            .any(|w| w.contains("does not apply to the folder source")),
        "{w:?}"
    );
}

/// A boolean from the environment may be written as shells and unit files
/// do (`1`, `YES`, `off`, ...); in the file it stays TOML's `true`/`false`.
#[test]
fn environment_booleans_take_the_usual_spellings() {
    let key = "PBX_EDGE__SOURCES__SNIFF__ENABLED";
    for (v, want) in [
        ("true", true),
        ("TRUE", true),
        ("1", true),
        ("yes", true),
        ("On", true),
        ("false", false),
        ("0", false),
        ("NO", false),
        ("off", false),
    ] {
        let c = Config::from_toml_str("t", "", [(key, v)]).unwrap();
        assert_eq!(c.sources.sniff.enabled, want, "{v}");
    }
    let e = Config::from_toml_str("t", "", [(key, "maybe")]).unwrap_err();
    assert!(
        e.lines()[0].contains("expected true or false"),
        "{:?}",
        e.lines()
    );
    assert!(parse("[sources.sniff]\nenabled = \"yes\"").is_err());
}
