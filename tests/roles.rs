//! Who is who for imported captures with the default `[roles]` (2-5 digit
//! extensions): inbound, outbound, internal and unknown calls, each
//! recording's direction, channel roles and extension as the numbers say.

mod common;

use common::*;
use pbx_testgen::audio::speechlike;
use pbx_testgen::{write_capture, CallSpec, Format, Framing, Link, TestCodec};

#[test]
fn imported_calls_get_direction_roles_and_extension_from_their_numbers() {
    let cases = [
        (
            "in@roles",
            "+15551001",
            "2002",
            "inbound",
            ["customer", "agent"],
            [None, Some("2002")],
        ),
        (
            "out@roles",
            "2002",
            "+15551001",
            "outbound",
            ["agent", "customer"],
            [Some("2002"), None],
        ),
        (
            "int@roles",
            "1001",
            "2002",
            "internal",
            ["agent", "agent"],
            [Some("1001"), Some("2002")],
        ),
        (
            "ext@roles",
            "+15551001",
            "+15552002",
            "unknown",
            ["unknown", "unknown"],
            [None, None],
        ),
    ];
    let calls: Vec<CallSpec> = cases
        .iter()
        .enumerate()
        .map(|(i, (id, from, to, ..))| {
            let mut c = CallSpec::simple(
                id,
                TestCodec::Pcmu,
                speechlike(2 * i as u64 + 1, 1000, 8000),
                speechlike(2 * i as u64 + 2, 1000, 8000),
            );
            c.caller.number = from.to_string();
            c.callee.number = to.to_string();
            c.caller.rtp_port += 10 * i as u16;
            c.callee.rtp_port += 10 * i as u16;
            c.start_ns += i as i64 * 10_000_000_000;
            c.seed = i as u64 + 1;
            c
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let cap = dir.path().join("calls.pcap");
    write_capture(
        &cap,
        &calls,
        Format::PcapMicros,
        Link::Ethernet,
        &Framing::default(),
    )
    .unwrap();
    let out = dir.path().join("out");
    let o = import(&[&cap], &out, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let recs = recordings(&out);
    assert_eq!(recs.len(), 4);
    for (id, _, _, direction, roles, ext) in cases {
        let j = &by_call_id(&recs, id).json;
        assert_eq!(j["direction"], direction, "{id}: {j}");
        for ch in 0..2 {
            assert_eq!(j["channels"][ch]["role"], roles[ch], "{id} channel {ch}");
            assert_eq!(
                j["channels"][ch]["extension"].as_str(),
                ext[ch],
                "{id} channel {ch}"
            );
        }
    }
    // With --config, its [roles] decide (they were ignored: the defaults
    // were used): +15552002 is internal, 4-digit numbers are not.
    let cfg = dir.path().join("pbx-edge.toml");
    std::fs::write(
        &cfg,
        format!(
            "[spool]\ndir = \"{}\"\n[roles]\ninternal_numbers = [\"+15552002\"]\nextension_length = \"\"\n",
            dir.path().join("spool").display()
        ),
    )
    .unwrap();
    let out2 = dir.path().join("out2");
    let o = import(&[&cap], &out2, &["--config", cfg.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let recs = recordings(&out2);
    let j = &by_call_id(&recs, "ext@roles").json;
    assert_eq!(j["direction"], "inbound", "{j}");
    assert_eq!(j["channels"][1]["role"], "agent", "{j}");
    let j = &by_call_id(&recs, "int@roles").json;
    assert_eq!(j["direction"], "unknown", "{j}");
}
