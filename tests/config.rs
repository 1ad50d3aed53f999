//! The configuration as users meet it: the annotated default file, every kind of
//! bad value with its exact `FILE:LINE: key.path: message`, several problems at
//! once, environment overrides, and `pbx-edge check-config` through the real
//! binary (exit codes and output).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use pbx_edge::config::{CloudProtocol, Config, LogFormat, SampleRate};

const NO_ENV: [(&str, &str); 0] = [];

fn annotated() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/pbx-edge.toml")
}

fn errors(text: &str) -> Vec<String> {
    match Config::from_toml_str("bad.toml", text, NO_ENV) {
        Ok(c) => panic!("expected errors, got {c:?}"),
        Err(e) => e.lines(),
    }
}

fn error(text: &str) -> String {
    let e = errors(text);
    assert_eq!(e.len(), 1, "{e:#?}");
    e.into_iter().next().unwrap_or_default()
}

#[test]
fn annotated_file_equals_defaults() {
    let c = Config::load_from_env_map(Some(&annotated()), NO_ENV).unwrap();
    let d = Config::defaults(None);
    // agent.id (host name) and spool.dir ($STATE_DIRECTORY) depend on the
    // environment; in the file they are commented out, so they default too.
    assert_eq!(c.agent, d.agent);
    assert_eq!(c.spool.dir, PathBuf::from("./var"));
    assert_eq!(c.spool.max_size, d.spool.max_size);
    assert_eq!(c.spool.retention, d.spool.retention);
    assert_eq!(c.health, d.health);
    assert_eq!(c.recording, d.recording);
    assert_eq!(c.cloud, d.cloud);
    assert_eq!(c.sources.siprec, d.sources.siprec);
    assert_eq!(c.sources.sniff, d.sources.sniff);
    assert_eq!(c.sources.folder, d.sources.folder);
    assert_eq!(c.log, d.log);
    assert_eq!(c, d);

    // And the values are the ones CONTRACT §2 names.
    assert_eq!(c.spool.max_size, 20 * 1024 * 1024 * 1024);
    assert_eq!(c.spool.retention, Duration::ZERO);
    assert_eq!(
        c.health.listen,
        "127.0.0.1:9466".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(c.recording.sample_rate, SampleRate::Auto);
    assert_eq!(c.recording.rtp_timeout, Duration::from_secs(30));
    assert_eq!(c.recording.jitter, Duration::from_millis(500));
    assert_eq!(c.cloud.url, "");
    assert!(!c.cloud.is_configured());
    assert_eq!(c.cloud.protocol, CloudProtocol::Tus);
    assert_eq!(c.cloud.max_parallel, 2);
    assert_eq!(c.cloud.chunk_size, 4 << 20);
    assert!(c.sources.siprec.enabled);
    assert_eq!(c.sources.siprec.listen.to_string(), "127.0.0.1:5090");
    assert_eq!(c.sources.siprec.rtp_ports, 20000..=29999);
    assert!(c.sources.siprec.allow.is_empty());
    assert_eq!(c.sources.siprec.max_calls, 1000);
    assert!(!c.sources.sniff.enabled);
    assert_eq!(c.sources.sniff.interface, "any");
    assert!(!c.sources.folder.enabled);
    assert_eq!(c.sources.folder.settle, Duration::from_secs(5));
    assert_eq!(c.log.format, LogFormat::Auto);
    assert!(!c.log.log_numbers);
}

/// Every key the loader knows is written in the annotated file (set or as a
/// commented-out `# key = value` example), and with the examples uncommented
/// the file still loads.
#[test]
fn annotated_file_documents_every_key() {
    let text = std::fs::read_to_string(annotated()).unwrap();
    let mut section = String::new();
    let mut documented = BTreeSet::new();
    let mut uncommented = String::new();
    for line in text.lines() {
        let t = line.trim();
        if let Some(h) = t.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            section = h.trim().to_string();
        }
        let body = t.strip_prefix('#').map(str::trim).unwrap_or(t);
        if let Some((k, _)) = body.split_once('=') {
            let k = k.trim();
            if !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                documented.insert(format!("{section}.{k}"));
                uncommented.push_str(body);
                uncommented.push('\n');
                continue;
            }
        }
        uncommented.push_str(line);
        uncommented.push('\n');
    }
    let known: BTreeSet<String> = Config::known_keys().into_iter().collect();
    assert_eq!(documented, known);
    let c = Config::from_toml_str("uncommented", &uncommented, NO_ENV).unwrap();
    assert_eq!(c.agent.id, "pbx-01");
    assert_eq!(c.spool.dir, PathBuf::from("/var/lib/pbx-edge"));
}

#[test]
fn built_in_defaults_without_file() {
    let c = Config::from_toml_str("empty", "", NO_ENV).unwrap();
    assert_eq!(c, Config::defaults(None));
    assert!(!c.agent.id.is_empty());
    assert_eq!(
        c.summary(),
        "sources: siprec 127.0.0.1:5090; spool ./var; cloud: not configured"
    );
}

#[test]
fn a_full_file_is_read() {
    let text = r#"
[agent]
id = "pbx-01"
[spool]
dir = "/var/lib/pbx-edge"
max_size = "512MiB"
retention = "1h30m"
[health]
listen = "0.0.0.0:9000"
[recording]
sample_rate = "16000"
min_duration = "2s"
rtp_timeout = "5m"
jitter = "200ms"
[cloud]
url = "https://api.example.com/"
protocol = "multipart"
token_file = "/etc/pbx-edge/token"
max_parallel = 8
ca_file = "/etc/pbx-edge/ca.pem"
chunk_size = "16MiB"
[sources.siprec]
enabled = false
listen = "[::]:5070"
rtp_ports = "40000-40999"
allow = ["10.0.0.0/8", "2001:db8::/32"]
max_calls = 50
[sources.sniff]
enabled = true
interface = "eth0"
filter = "host 10.0.0.5"
[sources.folder]
enabled = true
path = "/srv/rec"
cdr_csv = "/var/log/asterisk/cdr-csv/Master.csv"
settle = "10s"
watch = "poll"
[log]
format = "json"
log_numbers = true
"#;
    let c = Config::from_toml_str("full.toml", text, NO_ENV).unwrap();
    assert_eq!(c.agent.id, "pbx-01");
    assert_eq!(c.spool.dir, PathBuf::from("/var/lib/pbx-edge"));
    assert_eq!(c.spool.max_size, 512 << 20);
    assert_eq!(c.spool.retention, Duration::from_secs(5400));
    assert_eq!(c.health.listen.to_string(), "0.0.0.0:9000");
    assert_eq!(c.recording.sample_rate, SampleRate::Hz16000);
    assert_eq!(c.recording.min_duration, Duration::from_secs(2));
    assert_eq!(c.recording.rtp_timeout, Duration::from_secs(300));
    assert_eq!(c.recording.jitter, Duration::from_millis(200));
    assert_eq!(c.cloud.url, "https://api.example.com");
    assert_eq!(c.cloud.protocol, CloudProtocol::Multipart);
    assert_eq!(c.cloud.token_file, PathBuf::from("/etc/pbx-edge/token"));
    assert_eq!(c.cloud.max_parallel, 8);
    assert_eq!(c.cloud.ca_file, Some(PathBuf::from("/etc/pbx-edge/ca.pem")));
    assert_eq!(c.cloud.chunk_size, 16 << 20);
    let s = &c.sources;
    assert!(!s.siprec.enabled);
    assert_eq!(s.siprec.listen.to_string(), "[::]:5070");
    assert_eq!(s.siprec.rtp_ports, 40000..=40999);
    assert_eq!(s.siprec.allow.len(), 2);
    assert_eq!(s.siprec.max_calls, 50);
    assert!(s.sniff.enabled);
    assert_eq!(s.sniff.interface, "eth0");
    assert_eq!(s.sniff.filter.as_deref(), Some("host 10.0.0.5"));
    assert!(s.folder.enabled);
    assert_eq!(s.folder.path, PathBuf::from("/srv/rec"));
    assert_eq!(
        s.folder.cdr_csv,
        Some(PathBuf::from("/var/log/asterisk/cdr-csv/Master.csv"))
    );
    assert_eq!(s.folder.settle, Duration::from_secs(10));
    assert_eq!(s.folder.watch, pbx_edge::config::FolderWatch::Poll);
    assert_eq!(c.log.format, LogFormat::Json);
    assert!(c.log.log_numbers);
    assert_eq!(
        c.summary(),
        "sources: sniff eth0, folder /srv/rec; spool /var/lib/pbx-edge; cloud: https://api.example.com (multipart)"
    );
}

#[test]
fn each_kind_of_bad_value() {
    let cases: &[(&str, &str)] = &[
        (
            "[spool]\nmax_size = \"20 parsecs\"",
            "bad.toml:2: spool.max_size: `20 parsecs`: unknown unit `parsecs` (use B, KB, MB, GB, KiB, MiB, GiB, TiB)",
        ),
        (
            "[spool]\nretention = \"5 weeks\"",
            "bad.toml:2: spool.retention: `5 weeks`: unknown unit `weeks` (use ms, s, m, h, d)",
        ),
        (
            "[recording]\nmin_duration = \"30\"",
            "bad.toml:2: recording.min_duration: `30`: missing unit (ms, s, m, h, d)",
        ),
        (
            "[recording]\n\nrtp_timeout = \"500ms\"",
            "bad.toml:3: recording.rtp_timeout: must be at least 1s",
        ),
        (
            "[recording]\njitter = \"1m\"",
            "bad.toml:2: recording.jitter: must be at most 10s",
        ),
        (
            "[health]\nlisten = \"127.0.0.1\"",
            "bad.toml:2: health.listen: \"127.0.0.1\" is not an IP address and port (write e.g. \"127.0.0.1:5090\", \"0.0.0.0:5090\" or \"[::1]:5090\"; host names are not accepted)",
        ),
        (
            "[sources.siprec]\nrtp_ports = \"20000-29999-3\"",
            "bad.toml:2: sources.siprec.rtp_ports: \"20000-29999-3\" is not a port range (write e.g. \"20000-29999\")",
        ),
        (
            "[sources.siprec]\nrtp_ports = \"29999-20000\"",
            "bad.toml:2: sources.siprec.rtp_ports: low port 29999 is above high port 20000",
        ),
        (
            "[sources.siprec]\nrtp_ports = \"80-2000\"",
            "bad.toml:2: sources.siprec.rtp_ports: starts at 80: ports below 1024 are privileged (start at 1024 or above)",
        ),
        (
            "[sources.siprec]\nrtp_ports = \"20001-20002\"",
            "bad.toml:2: sources.siprec.rtp_ports: 20001-20002 holds no RTP/RTCP pair (an even port and the odd one after it)",
        ),
        (
            "[sources.siprec]\nrtp_ports = \"5000-6000\"\nlisten = \"127.0.0.1:5090\"",
            "bad.toml:2: sources.siprec.rtp_ports: contains the SIP port 5090 of sources.siprec.listen",
        ),
        (
            "[sources.siprec]\nallow = [\n  \"10.0.0.0/8\",\n  \"10.0.0.0/33\",\n]",
            "bad.toml:4: sources.siprec.allow[1]: \"10.0.0.0/33\" is not a network (write e.g. \"10.0.0.0/8\", \"192.0.2.7\" or \"2001:db8::/32\")",
        ),
        (
            "[sources.siprec]\nallow = \"10.0.0.0/8\"",
            "bad.toml:2: sources.siprec.allow: expected an array of networks such as [\"10.0.0.0/8\"], found a string (\"10.0.0.0/8\")",
        ),
        (
            "[sources.siprec]\nmax_calls = 0",
            "bad.toml:2: sources.siprec.max_calls: must be between 1 and 1000000, found 0",
        ),
        (
            "[cloud]\nurl = \"http://api.example.com\"",
            "bad.toml:2: cloud.url: plain http:// is accepted only for loopback hosts (localhost, 127.0.0.0/8, ::1); use https://",
        ),
        (
            "[cloud]\nurl = \"api.example.com\"",
            "bad.toml:2: cloud.url: \"api.example.com\" is not a URL: relative URL without a base",
        ),
        (
            "[cloud]\nurl = \"https://me:secret@api.example.com\"",
            "bad.toml:2: cloud.url: must not contain credentials; put the token in cloud.token_file",
        ),
        (
            "[cloud]\nprotocol = \"s3\"",
            "bad.toml:2: cloud.protocol: expected \"tus\" or \"multipart\", found \"s3\"",
        ),
        (
            "[cloud]\nmax_parallel = 65",
            "bad.toml:2: cloud.max_parallel: must be between 1 and 64, found 65",
        ),
        (
            "[cloud]\nchunk_size = \"1KiB\"",
            "bad.toml:2: cloud.chunk_size: must be between 64KiB and 1GiB, found 1024 bytes",
        ),
        (
            "[agent]\nid = \"\"",
            "bad.toml:2: agent.id: must not be empty (leave the key out to use the host name)",
        ),
        (
            "[sources.sniff]\ninterface = \"\"",
            "bad.toml:2: sources.sniff.interface: must not be empty (\"any\" captures on all interfaces)",
        ),
        (
            "[sources.folder]\nenabled = true\npath = \"\"",
            "bad.toml:3: sources.folder.path: must not be empty when sources.folder is enabled",
        ),
        (
            "[sources.folder]\nwatch = \"fanotify\"",
            "bad.toml:2: sources.folder.watch: \"fanotify\" is not one of \"auto\", \"inotify\", \"poll\"",
        ),
        (
            "[sources.folder]\nraw_stereo = \"yes\"",
            "bad.toml:2: sources.folder.raw_stereo: expected \"auto\", true or false, found a string (\"yes\")",
        ),
        (
            "[sources.folder]\n\nraw_stereo = 1",
            "bad.toml:3: sources.folder.raw_stereo: expected \"auto\", true or false, found an integer (1)",
        ),
        (
            "[log]\nformat = \"syslog\"",
            "bad.toml:2: log.format: expected \"auto\", \"journald\", \"text\" or \"json\", found \"syslog\"",
        ),
        (
            "[health]\nlisten = \"127.0.0.1:5090\"",
            "bad.toml:2: health.listen: 127.0.0.1:5090 is used by both health.listen and sources.siprec.listen",
        ),
        // Wrong types.
        (
            "[sources.sniff]\nenabled = 1",
            "bad.toml:2: sources.sniff.enabled: expected true or false, found an integer (1)",
        ),
        (
            "[cloud]\nmax_parallel = 2.5",
            "bad.toml:2: cloud.max_parallel: expected an integer, found a float (2.5)",
        ),
        (
            "[spool]\ndir = [\"/a\"]",
            "bad.toml:2: spool.dir: expected a path string, found an array",
        ),
        (
            "spool = \"./var\"",
            "bad.toml:1: spool: expected a table ([spool]), found a string (\"./var\")",
        ),
        (
            "[cloud]\nmax_parallel = 99999999999999999999",
            "bad.toml:2: cloud.max_parallel: must be between 1 and 64",
        ),
    ];
    for (text, want) in cases {
        assert_eq!(&error(text), want, "for {text:?}");
    }
}

#[test]
fn siprec_tls_keys_are_checked_with_their_files() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["srs.example".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (c, k) = (dir.path().join("srs.crt"), dir.path().join("srs.key"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    let (c, k) = (c.display().to_string(), k.display().to_string());
    let good = format!(
        "[sources.siprec]\nlisten = \"0.0.0.0:5090\"\ntls_listen = \"0.0.0.0:5061\"\ntls_cert = \"{c}\"\ntls_key = \"{k}\"\ntls_client_ca = \"{c}\"\n"
    );
    let cfg = Config::from_toml_str("t.toml", &good, NO_ENV).unwrap();
    let sr = &cfg.sources.siprec;
    assert_eq!(sr.tls_listen, Some("0.0.0.0:5061".parse().unwrap()));
    assert_eq!(sr.tls_client_ca.as_deref(), Some(Path::new(&c)));
    // Empty: off.
    let off =
        Config::from_toml_str("t.toml", "[sources.siprec]\ntls_listen = \"\"", NO_ENV).unwrap();
    assert_eq!(off.sources.siprec.tls_listen, None);
    // Missing certificate and key: both named, at the tls_listen line.
    assert_eq!(
        errors("[sources.siprec]\ntls_listen = \"0.0.0.0:5061\"\n"),
        vec![
            "bad.toml:2: sources.siprec.tls_cert: must be set when sources.siprec.tls_listen is (a PEM file)",
            "bad.toml:2: sources.siprec.tls_key: must be set when sources.siprec.tls_listen is (a PEM file)",
        ]
    );
    // The certificate file is read: a key given as certificate, at its line.
    let e = error(&format!(
        "[sources.siprec]\ntls_listen = \"0.0.0.0:5061\"\ntls_cert = \"{k}\"\ntls_key = \"{k}\"\n"
    ));
    assert_eq!(
        e,
        format!("bad.toml:3: sources.siprec.tls_cert: {k}: no PEM CERTIFICATE found")
    );
    // A key that does not go with the certificate, never quoted.
    let other = dir.path().join("other.key");
    std::fs::write(&other, rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
    let e = error(&format!(
        "[sources.siprec]\ntls_listen = \"0.0.0.0:5061\"\ntls_cert = \"{c}\"\ntls_key = \"{}\"\n",
        other.display()
    ));
    assert!(
        e.starts_with("bad.toml:4: sources.siprec.tls_key: ")
            && e.contains("does not go with the certificate"),
        "{e}"
    );
    assert!(!e.contains("PRIVATE KEY-----"), "{e}");
    // Port clashes: the TCP listener, the RTP range, a bad address.
    assert_eq!(
        error(&good.replace("0.0.0.0:5061", "127.0.0.1:5090")),
        "t.toml:3: sources.siprec.tls_listen: 127.0.0.1:5090 clashes with sources.siprec.listen 0.0.0.0:5090 (TCP); TLS needs its own port, usually 5061"
            .replace("t.toml", "bad.toml")
    );
    assert_eq!(
        error(&good.replace("0.0.0.0:5061", "0.0.0.0:20002")),
        "bad.toml:3: sources.siprec.tls_listen: port 20002 is inside sources.siprec.rtp_ports (20000-29999)"
    );
    assert!(error("[sources.siprec]\ntls_listen = \"5061\"")
        .starts_with("bad.toml:2: sources.siprec.tls_listen: "));
}

#[test]
fn sniff_filters_are_compiled_by_libpcap() {
    let ok = |f: &str| {
        let c = Config::from_toml_str(
            "t.toml",
            &format!("[sources.sniff]\nfilter = \"{f}\""),
            NO_ENV,
        )
        .unwrap_or_else(|e| panic!("{f}: {e}"));
        assert_eq!(c.sources.sniff.filter.as_deref(), Some(f));
    };
    ok("udp port 5060 or udp portrange 10000-20000");
    ok("host 10.0.0.5");
    ok("ip6 and udp and net 2001:db8::/32");
    assert_eq!(
        error("[sources.sniff]\nenabled = true\nfilter = \"udp portrange 5060-\""),
        "bad.toml:3: sources.sniff.filter: not a valid capture filter (pcap syntax): \
         can't parse filter expression: syntax error"
    );
    // The socket sees IP packets: link-layer primitives cannot apply.
    let e = error("[sources.sniff]\nenabled = true\nfilter = \"ether host 00:11:22:33:44:55\"");
    assert!(
        e.starts_with(
            "bad.toml:3: sources.sniff.filter: not a valid capture filter (pcap syntax): "
        ),
        "{e}"
    );
    // A filter left in a disabled section is not compiled (libpcap is
    // not needed for a capture that does not run).
    let c = Config::from_toml_str(
        "t.toml",
        "[sources.sniff]\nenabled = false\nfilter = \"ether host 00:11:22:33:44:55\"",
        NO_ENV,
    )
    .unwrap();
    assert!(c.sources.sniff.filter.is_some());
    // Empty: no filter.
    let c = Config::from_toml_str("t.toml", "[sources.sniff]\nfilter = \" \"", NO_ENV).unwrap();
    assert_eq!(c.sources.sniff.filter, None);
}

#[test]
fn syntax_errors_name_line_and_key() {
    let e = errors("[agent]\nid = \"pbx-01\"\n[cloud]\nurl = 'https://x\n");
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(e[0].starts_with("bad.toml:4: cloud.url: "), "{e:#?}");
    let e = errors("[cloud]\nurl = \"\"\nurl = \"\"\n");
    assert_eq!(e, vec!["bad.toml:3: cloud.url: duplicate key"]);
}

#[test]
fn an_unclosed_table_is_one_error_not_two() {
    // The keys after the broken header are not reported as misplaced.
    assert_eq!(
        errors("[sources.siprec\nmax_calls = 5\nlisten = \"127.0.0.1:5090\"\n"),
        vec!["bad.toml:1: sources.siprec: unclosed table, expected `]`"]
    );
    // Problems elsewhere in the file are still all reported.
    assert_eq!(
        errors(
            "[agent]\nid = \"x\"\n[sources.siprec\nmax_calls = 5\n[spool]\nmax_size = \"big\"\n"
        ),
        vec![
            "bad.toml:3: sources.siprec: unclosed table, expected `]`",
            "bad.toml:6: spool.max_size: `big` is not a size (write e.g. \"512MiB\", \"20GiB\")",
        ]
    );
}

#[test]
fn out_of_range_numbers_are_short() {
    assert_eq!(
        error("[sources.siprec]\nmax_calls = 1e308"),
        "bad.toml:2: sources.siprec.max_calls: expected an integer, found a float (1e308)"
    );
    assert_eq!(
        error("[sources.siprec]\nmax_calls = 99999999999999999999999999"),
        "bad.toml:2: sources.siprec.max_calls: must be between 1 and 1000000"
    );
    assert_eq!(
        error("[recording]\nrtp_timeout = -1e300"),
        "bad.toml:2: recording.rtp_timeout: expected a duration string such as \"30s\" or \"5m\", found a float (-1e300)"
    );
    assert_eq!(
        error("[cloud]\nmax_parallel = 2.5"),
        "bad.toml:2: cloud.max_parallel: expected an integer, found a float (2.5)"
    );
    for text in [
        "[sources.siprec]\nmax_calls = 1e308",
        "[cloud]\nchunk_size = 1.7976931348623157e308",
        "[spool]\nmax_size = 1e300",
    ] {
        let e = error(text);
        assert!(e.len() < 200, "{e}");
    }
}

#[test]
fn unknown_keys_and_sections() {
    assert_eq!(
        error("[spool]\nmax_sise = \"1GiB\""),
        "bad.toml:2: spool.max_sise: unknown key (did you mean `max_size`?)"
    );
    assert_eq!(
        error("[spool]\ncompression = true"),
        "bad.toml:2: spool.compression: unknown key (known: dir, max_size, retention, encryption_key_file, old_key_files)"
    );
    assert_eq!(
        error("\n[upload]\nurl = \"https://x\""),
        "bad.toml:2: upload: unknown section (known: agent, spool, health, recording, cloud, stream, roles, sources, filter, log)"
    );
    assert_eq!(
        error("[sources.sip]\nenabled = true"),
        "bad.toml:1: sources.sip: unknown source (known: siprec, sniff, folder, hep)"
    );
    assert_eq!(
        error("[sources.sniff.extra]\nx = 1"),
        "bad.toml:1: sources.sniff.extra: unknown key (known: enabled, interface, filter)"
    );
}

#[test]
fn several_errors_at_once_in_file_order() {
    let text = "\
[sources.siprec]
listen = \"nowhere\"
rtp_ports = \"1-2\"
[cloud]
url = \"ftp://x\"
max_parallel = 0
bogus = 1
[spool]
max_size = \"big\"
";
    assert_eq!(
        errors(text),
        vec![
            "bad.toml:2: sources.siprec.listen: \"nowhere\" is not an IP address and port (write e.g. \"127.0.0.1:5090\", \"0.0.0.0:5090\" or \"[::1]:5090\"; host names are not accepted)",
            "bad.toml:3: sources.siprec.rtp_ports: starts at 1: ports below 1024 are privileged (start at 1024 or above)",
            "bad.toml:5: cloud.url: scheme must be https (or http for a loopback host), found `ftp`",
            "bad.toml:6: cloud.max_parallel: must be between 1 and 64, found 0",
            "bad.toml:7: cloud.bogus: unknown key (known: url, protocol, audio_format, token_file, max_parallel, ca_file, chunk_size, bandwidth_limit, client_cert, client_key, proxy, upload_window)",
            "bad.toml:9: spool.max_size: `big` is not a size (write e.g. \"512MiB\", \"20GiB\")",
        ]
    );
}

#[test]
fn env_overrides_apply_over_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pbx-edge.toml");
    std::fs::write(
        &path,
        "[cloud]\nurl = \"https://a.example\"\nmax_parallel = 3\n[sources.siprec]\nmax_calls = 10\n",
    )
    .unwrap();
    let env = [
        ("PBX_EDGE__CLOUD__MAX_PARALLEL", "8"),
        ("PBX_EDGE__AGENT__ID", "1234"),
        ("PBX_EDGE__SPOOL__MAX_SIZE", "1GiB"),
        ("PBX_EDGE__RECORDING__SAMPLE_RATE", "16000"),
        ("PBX_EDGE__RECORDING__RTP_TIMEOUT", "\"2m\""),
        ("PBX_EDGE__SOURCES__SIPREC__LISTEN", "0.0.0.0:5070"),
        ("PBX_EDGE__SOURCES__SIPREC__ALLOW", "[\"10.0.0.0/8\"]"),
        (
            "PBX_EDGE__SOURCES__SNIFF",
            "{ enabled = true, interface = \"eth1\" }",
        ),
        ("PBX_EDGE__LOG__LOG_NUMBERS", "true"),
        ("PBX_EDGE_LOG", "debug"), // not an override (single underscore)
        ("STATE_DIRECTORY", "/var/lib/pbx-edge"),
        ("HOME", "/root"),
    ];
    let c = Config::load_from_env_map(Some(&path), env).unwrap();
    assert_eq!(c.cloud.url, "https://a.example"); // from the file
    assert_eq!(c.cloud.max_parallel, 8); // env wins
    assert_eq!(c.sources.siprec.max_calls, 10);
    assert_eq!(c.agent.id, "1234"); // parsed as TOML integer, used as text
    assert_eq!(c.spool.max_size, 1 << 30);
    assert_eq!(c.spool.dir, PathBuf::from("/var/lib/pbx-edge"));
    assert_eq!(c.recording.sample_rate, SampleRate::Hz16000);
    assert_eq!(c.recording.rtp_timeout, Duration::from_secs(120));
    assert_eq!(c.sources.siprec.listen.to_string(), "0.0.0.0:5070");
    assert_eq!(c.sources.siprec.allow.len(), 1);
    assert_eq!(c.sources.siprec.allow[0].to_string(), "10.0.0.0/8");
    assert!(c.sources.sniff.enabled);
    assert_eq!(c.sources.sniff.interface, "eth1");
    assert!(c.log.log_numbers);

    // A plain comma-separated list is accepted from the environment.
    let c = Config::from_toml_str(
        "x",
        "",
        [("PBX_EDGE__SOURCES__SIPREC__ALLOW", "10.0.0.0/8, 192.0.2.7")],
    )
    .unwrap();
    assert_eq!(c.sources.siprec.allow.len(), 2);

    // Without any file: env over built-in defaults.
    let c = Config::from_toml_str("x", "", [("PBX_EDGE__CLOUD__PROTOCOL", "multipart")]).unwrap();
    assert_eq!(c.cloud.protocol, CloudProtocol::Multipart);
}

#[test]
fn bad_env_overrides_name_the_variable() {
    let env = [
        ("PBX_EDGE__CLOUD__MAX_PARALLEL", "0"),
        ("PBX_EDGE__CLOUD__URLL", "https://x"),
        (
            "PBX_EDGE__SOURCES__SIPREC__ALLOW",
            "[\"10.0.0.0/8\", \"nope\"]",
        ),
        ("PBX_EDGE__SOURCES__SNIFF__ENABLED", "maybe"),
        ("PBX_EDGE__RECORDING__JITTER", "lots"),
        ("PBX_EDGE__NETWORK__X", "1"),
        ("PBX_EDGE__AGENT____ID", "x"),
        ("PBX_EDGE__AGENT__ID__SUB", "x"),
    ];
    let text = "[agent]\nid = \"a\"\n[cloud]\nmax_parallel = 70\n";
    let e = Config::from_toml_str("f.toml", text, env)
        .unwrap_err()
        .lines();
    assert_eq!(
        e,
        vec![
            // The file's value is overridden, so only the variable's problem shows.
            "PBX_EDGE__AGENT__ID__SUB: agent.id.sub: `agent.id` is not a table (it is set at f.toml:2)",
            "PBX_EDGE__AGENT____ID: agent..id: malformed variable name (write PBX_EDGE__SECTION__KEY)",
            "PBX_EDGE__CLOUD__MAX_PARALLEL: cloud.max_parallel: must be between 1 and 64, found 0",
            "PBX_EDGE__CLOUD__URLL: cloud.urll: unknown key (did you mean `url`?)",
            "PBX_EDGE__NETWORK__X: network: unknown section (known: agent, spool, health, recording, cloud, stream, roles, sources, filter, log)",
            "PBX_EDGE__RECORDING__JITTER: recording.jitter: `lots` is not a duration (write e.g. \"30s\", \"5m\", \"1h\")",
            "PBX_EDGE__SOURCES__SIPREC__ALLOW: sources.siprec.allow[1]: \"nope\" is not a network (write e.g. \"10.0.0.0/8\", \"192.0.2.7\" or \"2001:db8::/32\")",
            "PBX_EDGE__SOURCES__SNIFF__ENABLED: sources.sniff.enabled: expected true or false (or 1/0, yes/no, on/off), found a string (\"maybe\")",
        ]
    );
}

#[test]
fn explicit_file_must_exist() {
    let e = Config::load_from_env_map(Some(Path::new("/nonexistent/pbx.toml")), NO_ENV)
        .unwrap_err()
        .lines();
    assert_eq!(
        e,
        vec!["/nonexistent/pbx.toml:1: file: cannot read: No such file or directory (os error 2)"]
    );
}

#[test]
fn huge_or_binary_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.toml");
    std::fs::write(&big, vec![b'#'; 2 << 20]).unwrap();
    let e = Config::load_from_env_map(Some(&big), NO_ENV).unwrap_err();
    assert!(e.to_string().contains("larger than 1024 KiB"), "{e}");
    let bin = dir.path().join("bin.toml");
    std::fs::write(&bin, b"id = \"\xff\"").unwrap();
    let e = Config::load_from_env_map(Some(&bin), NO_ENV).unwrap_err();
    assert!(e.to_string().contains("not UTF-8"), "{e}");
}

#[test]
fn reload_diff_names_sources_to_restart() {
    let a = Config::from_toml_str("a", "", NO_ENV).unwrap();
    let b = Config::from_toml_str(
        "b",
        "[sources.sniff]\nenabled = true\n[cloud]\nmax_parallel = 4\n",
        NO_ENV,
    )
    .unwrap();
    assert_eq!(a.diff_restart_needed(&b), vec!["sources.sniff"]);
    assert!(b.diff_restart_needed(&b.clone()).is_empty());
}

// --- the real binary ---

fn check_config(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pbx-edge"));
    cmd.arg("check-config").args(args);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PBX_EDGE__") || k == "STATE_DIRECTORY" {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().unwrap();
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

#[test]
fn check_config_accepts_the_annotated_file() {
    let f = annotated();
    let f = f.to_str().unwrap();
    let (code, out, err) = check_config(&[f], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        format!("{f}: ok (sources: siprec 127.0.0.1:5090; spool ./var; cloud: not configured)\n")
    );
    assert_eq!(err, "");
    // The same through --config.
    let (code, out2, _) = check_config(&["--config", f], &[]);
    assert_eq!(code, 0);
    assert_eq!(out2, out);
}

#[test]
fn check_config_lists_every_problem_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[cloud]\nurl = \"http://example.com\"\n\n[sources.siprec]\nallow = [\"x\"]\nmax_call = 5\n",
    )
    .unwrap();
    let p = path.to_str().unwrap();
    let (code, out, err) = check_config(&[p], &[("PBX_EDGE__CLOUD__MAX_PARALLEL", "100")]);
    assert_eq!(code, 1);
    assert_eq!(out, "");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(
        lines,
        vec![
            format!("{p}:2: cloud.url: plain http:// is accepted only for loopback hosts (localhost, 127.0.0.0/8, ::1); use https://"),
            format!("{p}:5: sources.siprec.allow[0]: \"x\" is not a network (write e.g. \"10.0.0.0/8\", \"192.0.2.7\" or \"2001:db8::/32\")"),
            format!("{p}:6: sources.siprec.max_call: unknown key (did you mean `max_calls`?)"),
            "PBX_EDGE__CLOUD__MAX_PARALLEL: cloud.max_parallel: must be between 1 and 64, found 100".to_string(),
        ]
    );
}

/// A token file that cannot be read (missing, a directory): check-config
/// names it at its line and exits 1, alone or among other problems; the
/// daemon's own load still succeeds (it records, `/readyz` says why nothing
/// is delivered): a refused start would lose the calls.
#[test]
fn check_config_names_a_token_file_it_cannot_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let missing = dir.path().join("no-token");
    std::fs::write(
        &path,
        format!(
            "[cloud]\nurl = \"http://127.0.0.1:9\"\ntoken_file = \"{}\"\n\n[stream]\ntoken_file = \"{}\"\n",
            missing.display(),
            dir.path().display()
        ),
    )
    .unwrap();
    let p = path.to_str().unwrap();
    let (code, out, err) = check_config(&[p], &[]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(out, "");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(
        lines[0].starts_with(&format!(
            "{p}:3: cloud.token_file: cannot read {}: ",
            missing.display()
        )),
        "{err}"
    );
    assert_eq!(
        lines[1],
        format!(
            "{p}:6: stream.token_file: {} is a directory, not a file",
            dir.path().display()
        )
    );
    let c = pbx_edge::config::Config::load(Some(&path)).expect("the daemon still loads it");
    assert_eq!(c.delivery_problems.len(), 2);
    // Among other problems: every one listed.
    std::fs::write(
        &path,
        format!(
            "[cloud]\nurl = \"http://127.0.0.1:9\"\ntoken_file = \"{}\"\nmax_parallel = 0\n",
            missing.display()
        ),
    )
    .unwrap();
    let (code, _, err) = check_config(&[p], &[]);
    assert_eq!(code, 1);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(
        lines[0].starts_with(&format!("{p}:3: cloud.token_file: cannot read")),
        "{err}"
    );
    assert!(
        lines[1].starts_with(&format!("{p}:4: cloud.max_parallel: ")),
        "{err}"
    );
    // Readable: fine.
    std::fs::write(&missing, "tok\n").unwrap();
    std::fs::write(
        &path,
        format!(
            "[cloud]\nurl = \"http://127.0.0.1:9\"\ntoken_file = \"{}\"\n",
            missing.display()
        ),
    )
    .unwrap();
    let (code, out, err) = check_config(&[p], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(": ok ("), "{out}");
    // Readable but empty (or its first line blank): no token to send.
    for empty in ["", "\n", "  \r\ntok\n"] {
        std::fs::write(&missing, empty).unwrap();
        let (code, out, err) = check_config(&[p], &[]);
        assert_eq!(code, 1, "{empty:?}: {out}");
        assert_eq!(
            err,
            format!(
                "{p}:3: cloud.token_file: {} holds no token (its first line is empty): requests would go without Authorization\n",
                missing.display()
            )
        );
    }
}

#[test]
fn check_config_missing_file_and_env_effects() {
    let (code, out, err) = check_config(&["/nonexistent/x.toml"], &[]);
    assert_eq!(code, 1);
    assert_eq!(out, "");
    assert_eq!(
        err,
        "/nonexistent/x.toml:1: file: cannot read: No such file or directory (os error 2)\n"
    );

    let f = annotated();
    let f = f.to_str().unwrap();
    let (code, out, err) = check_config(
        &[f],
        &[
            ("PBX_EDGE__CLOUD__URL", "https://cloud.example/"),
            ("PBX_EDGE__SOURCES__FOLDER__ENABLED", "true"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        format!("{f}: ok (sources: siprec 127.0.0.1:5090, folder /var/spool/asterisk/monitor; spool ./var; cloud: https://cloud.example (tus))\n")
    );

    let (code, _, err) = check_config(&[f, "--config", "/other.toml"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("two different files"), "{err}");
}

/// A clash between a key in the file and a built-in default is reported at
/// `FILE:LINE` of the key written, never at "(built-in default)"; so is a
/// bad systemd credential standing in for the spool key.
#[test]
fn check_config_reports_clashes_with_defaults_at_the_line_written() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "# SIP inside the default RTP range\n[sources.siprec]\nlisten = \"0.0.0.0:20000\"\n",
            "3: sources.siprec.listen: port 20000 is inside sources.siprec.rtp_ports (20000-29999)",
        ),
        (
            "[health]\nlisten = \"127.0.0.1:9060\"\n\n[sources.hep]\nenabled = true\n",
            "2: health.listen: 127.0.0.1:9060 is used by both health.listen and sources.hep.listen",
        ),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("c{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let p = path.to_str().unwrap();
        let (code, out, err) = check_config(&[p], &[]);
        assert_eq!((code, out.as_str()), (1, ""), "{err}");
        assert_eq!(err, format!("{p}:{want}\n"));
    }

    // The systemd credential `spool-key` (no key file in the config).
    let creds = dir.path().join("creds");
    std::fs::create_dir(&creds).unwrap();
    std::fs::write(creds.join("spool-key"), "not a key").unwrap();
    let path = dir.path().join("plain.toml");
    std::fs::write(&path, "[agent]\nid = \"a\"\n").unwrap();
    let c = creds.to_str().unwrap();
    let (code, _, err) = check_config(&[path.to_str().unwrap()], &[("CREDENTIALS_DIRECTORY", c)]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.starts_with("CREDENTIALS_DIRECTORY: spool.encryption_key_file: systemd credential: "),
        "{err}"
    );
    // Written as `encryption_key_file = ""`: at that line.
    std::fs::write(&path, "[spool]\nencryption_key_file = \"\"\n").unwrap();
    let p = path.to_str().unwrap();
    let (code, _, err) = check_config(&[p], &[("CREDENTIALS_DIRECTORY", c)]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.starts_with(&format!(
            "{p}:2: spool.encryption_key_file: systemd credential: "
        )),
        "{err}"
    );
}

/// check-config finds the port clashes that would make `run` fail to bind:
/// the wildcard and a loopback address on one port are one port.
#[test]
fn check_config_refuses_a_wildcard_listen_on_the_health_port() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[health]\nlisten = \"127.0.0.1:9466\"\n\n[sources.siprec]\nlisten = \"0.0.0.0:9466\"\n",
    )
    .unwrap();
    let p = path.to_str().unwrap();
    let (code, out, err) = check_config(&[p], &[]);
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert_eq!(
        err,
        format!("{p}:5: sources.siprec.listen: 0.0.0.0:9466 clashes with health.listen 127.0.0.1:9466 (port 9466 on the same or every address)\n")
    );
}

#[test]
fn check_config_without_a_file() {
    if Path::new(pbx_edge::config::DEFAULT_PATH).exists() {
        eprintln!("note: {} exists; skipping", pbx_edge::config::DEFAULT_PATH);
        return;
    }
    let (code, out, err) = check_config(&[], &[("STATE_DIRECTORY", "/var/lib/pbx-edge")]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "(built-in defaults; /etc/pbx-edge/pbx-edge.toml not found): ok (sources: siprec 127.0.0.1:5090; spool /var/lib/pbx-edge; cloud: not configured)\n"
    );
}

#[test]
fn filter_section_reaches_delivery() {
    let env: Vec<(String, String)> = Vec::new();
    let c = pbx_edge::config::Config::from_toml_str(
        "f.toml",
        "[filter]\nmin_duration = \"3s\"\nexclude_numbers = [\"+4930*\"]\ndirections = [\"inbound\"]\nkeep_filtered = true\n",
        env.clone(),
    )
    .unwrap();
    let d = pbx_edge::delivery::DeliverySettings::from_config(&c);
    assert_eq!(d.filters.min_duration, std::time::Duration::from_secs(3));
    assert_eq!(d.filters.exclude_numbers, vec!["+4930*".to_string()]);
    assert_eq!(d.filters.directions, vec!["inbound".to_string()]);
    assert!(d.keep_filtered);
    let e = pbx_edge::config::Config::from_toml_str(
        "f.toml",
        "\n[filter]\ndirections = [\"sideways\"]\n",
        env,
    )
    .unwrap_err();
    assert_eq!(
        e.lines(),
        vec!["f.toml:3: filter.directions: `sideways` is not a direction (inbound, outbound, internal, unknown)".to_string()]
    );
}

#[test]
fn raw_stereo_takes_auto_and_booleans() {
    use pbx_edge::config::RawStereo;
    for (v, want) in [
        ("\"auto\"", RawStereo::Auto),
        ("true", RawStereo::Stereo),
        ("false", RawStereo::Mono),
    ] {
        let c = Config::from_toml_str(
            "t.toml",
            &format!("[sources.folder]\nraw_stereo = {v}"),
            NO_ENV,
        )
        .unwrap();
        assert_eq!(c.sources.folder.raw_stereo, want, "{v}");
    }
    let c = Config::from_toml_str("t.toml", "", NO_ENV).unwrap();
    assert_eq!(c.sources.folder.raw_stereo, RawStereo::Auto, "the default");
    for (v, want) in [
        ("auto", RawStereo::Auto),
        ("true", RawStereo::Stereo),
        ("false", RawStereo::Mono),
    ] {
        let env = [("PBX_EDGE__SOURCES__FOLDER__RAW_STEREO", v)];
        let c = Config::from_toml_str("t.toml", "", env).unwrap();
        assert_eq!(c.sources.folder.raw_stereo, want, "env {v}");
    }
}

#[test]
fn leg_align_takes_end_and_start() {
    use pbx_edge::config::LegAlign;
    let c = Config::from_toml_str("t.toml", "", NO_ENV).unwrap();
    assert_eq!(c.sources.folder.leg_align, LegAlign::End, "the default");
    for (v, want) in [("end", LegAlign::End), ("start", LegAlign::Start)] {
        let c = Config::from_toml_str(
            "t.toml",
            &format!("[sources.folder]\nleg_align = \"{v}\""),
            NO_ENV,
        )
        .unwrap();
        assert_eq!(c.sources.folder.leg_align, want, "{v}");
        let env = [("PBX_EDGE__SOURCES__FOLDER__LEG_ALIGN", v)];
        let c = Config::from_toml_str("t.toml", "", env).unwrap();
        assert_eq!(c.sources.folder.leg_align, want, "env {v}");
    }
    assert_eq!(
        error("[sources.folder]\nleg_align = \"middle\""),
        "bad.toml:2: sources.folder.leg_align: \"middle\" is not \"end\" or \"start\""
    );
}

#[test]
fn secret_files_others_can_read_are_named_at_check_config_and_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("cloud-token");
    let db = dir.path().join("cdr-db-url");
    std::fs::write(&token, "tok\n").unwrap();
    std::fs::write(&db, "mysql://u:p@127.0.0.1/cdr\n").unwrap();
    let chmod = |p: &Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    chmod(&token, 0o644);
    chmod(&db, 0o660);
    let health = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let path = dir.path().join("p.toml");
    std::fs::write(
        &path,
        format!(
            "[spool]\ndir = \"{}\"\n[health]\nlisten = \"{health}\"\n[cloud]\ntoken_file = \"{}\"\n\
             [sources.siprec]\nenabled = false\n[sources.folder]\ncdr_db_url_file = \"{}\"\n",
            dir.path().join("spool").display(),
            token.display(),
            db.display()
        ),
    )
    .unwrap();
    let p = path.to_str().unwrap();
    let (code, out, err) = check_config(&[p], &[]);
    assert_eq!(code, 0, "a warning, not an error: {err}");
    assert!(out.starts_with(&format!("{p}: ok")), "{out}");
    assert_eq!(
        err.lines().collect::<Vec<_>>(),
        vec![
            format!(
                "warning: cloud.token_file: {} is readable by others (mode 0644) and holds a secret: make it 0600 or 0640 (chmod 600 {})",
                token.display(),
                token.display()
            ),
            format!(
                "warning: sources.folder.cdr_db_url_file: {} is writable by its group (mode 0660) and holds a secret: make it 0600 or 0640 (chmod 600 {})",
                db.display(),
                db.display()
            ),
        ]
    );

    // At start, the daemon logs the same.
    let log = dir.path().join("daemon.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_pbx-edge"))
        .args(["run", "--config", p])
        .env_remove("NOTIFY_SOCKET")
        .env_remove("CREDENTIALS_DIRECTORY")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    let mut text = String::new();
    while t.elapsed() < Duration::from_secs(30) {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("cdr_db_url_file") && text.contains("cloud.token_file") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    let warned = |key: &str| {
        text.lines()
            .any(|l| l.contains("WARN") && l.contains(key) && l.contains("make it 0600 or 0640"))
    };
    assert!(
        warned("cloud.token_file") && warned("cdr_db_url_file"),
        "{text}"
    );

    // 0600 and 0640: nothing to say.
    chmod(&token, 0o600);
    chmod(&db, 0o640);
    let (code, _, err) = check_config(&[p], &[]);
    assert_eq!((code, err.as_str()), (0, ""));
}

#[test]
fn cloud_audio_format_is_wav_or_flac() {
    use pbx_edge::config::AudioFormat;
    assert_eq!(Config::defaults(None).cloud.audio_format, AudioFormat::Wav);
    let c = Config::from_toml_str("f.toml", "[cloud]\naudio_format = \"flac\"\n", NO_ENV).unwrap();
    assert_eq!(c.cloud.audio_format, AudioFormat::Flac);
    assert_eq!(
        error("[cloud]\naudio_format = \"mp3\"\n"),
        "bad.toml:2: cloud.audio_format: expected \"wav\" or \"flac\", found \"mp3\""
    );
}

/// `--config FILE` is taken wherever it stands on the command line
/// (CONTRACT §1: every command that needs the configuration takes it): a
/// spool that no daemon has made yet lists as empty (exit 0).
#[test]
fn config_is_taken_before_or_after_the_command_words() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("c.toml");
    let spool = d.path().join("never-made");
    std::fs::write(&cfg, format!("[spool]\ndir = \"{}\"\n", spool.display())).unwrap();
    let c = cfg.to_str().unwrap();
    for args in [
        vec!["spool", "list", "--config", c],
        vec!["spool", "--config", c, "list"],
        vec!["--config", c, "spool", "list"],
        vec!["spool", "list", "--json", "--config", c],
        vec!["check-config", "--config", c],
        vec!["--config", c, "check-config"],
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_pbx-edge"))
            .args(&args)
            .env_remove("PBX_EDGE__SPOOL__DIR")
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{args:?}: {out} {}",
            String::from_utf8_lossy(&o.stderr)
        );
        if args.contains(&"--json") {
            assert_eq!(out.trim(), "[]", "{args:?}");
        } else if args.contains(&"list") {
            assert!(out.starts_with("0 recordings"), "{args:?}: {out}");
        }
    }
    assert!(!spool.exists(), "listing made the spool");
}
