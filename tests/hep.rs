//! The HEP collector (`[sources.hep]`, issue 17): calls whose SIP and RTP
//! reach pbx-edge only as HEPv3 copies from a capture agent, over UDP and
//! over TCP, are recorded; each channel is sample for sample what `import`
//! makes of a capture of the same packets (the same engine, fed the
//! agent's capture times). Garbage and foreign senders are counted, not
//! recorded.

mod common;

use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use common::daemon::{free_port, Daemon};
use common::*;
use pbx_core::capture::LinkType;
use pbx_core::hep::{encode_v3, HepPacket, PROTO_RTP, PROTO_SIP};
use pbx_core::net::NetDecoder;
use pbx_core::Timestamp;
use pbx_testgen::audio::speechlike;
use pbx_testgen::scenario::generate;
use pbx_testgen::{CallSpec, Framing, Link, Party, TestCodec};

fn call(id: &str, seed: u64, base: u16) -> CallSpec {
    let mut c = CallSpec::simple(
        id,
        TestCodec::Pcmu,
        speechlike(seed * 2 + 1, 4000, 8000),
        speechlike(seed * 2 + 2, 4000, 8000),
    );
    c.caller = Party {
        ip: IpAddr::from([10, 1, 0, 1]),
        sip_port: 5060,
        rtp_port: base,
        number: "1001".into(),
        name: "Alice".into(),
    };
    c.callee = Party {
        ip: IpAddr::from([10, 1, 0, 2]),
        sip_port: 5060,
        rtp_port: base + 2,
        number: "2002".into(),
        name: "Bob".into(),
    };
    c.seed = seed;
    c
}

/// The call's packets as HEPv3 from agent `agent`, their capture times
/// moved to start now (the agent captures live).
fn hep_packets(spec: &CallSpec, agent: u32) -> Vec<Vec<u8>> {
    hep_packets_behind(spec, agent, 0)
}

/// [`hep_packets`] from an agent whose clock is `behind_us` behind ours.
fn hep_packets_behind(spec: &CallSpec, agent: u32, behind_us: i64) -> Vec<Vec<u8>> {
    let (frames, _) = generate(
        std::slice::from_ref(spec),
        Link::Ethernet,
        &Framing::default(),
    );
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
        - behind_us;
    // The generator's times are in nanoseconds.
    let first = frames.first().map(|(ts, _)| *ts / 1000).unwrap_or(0);
    let mut dec = NetDecoder::default();
    let mut out = Vec::new();
    for (ts, f) in &frames {
        let shifted = Timestamp::from_micros(ts / 1000 - first + now_us);
        let _ = dec.decode(
            Timestamp::from_micros(*ts),
            LinkType::Ethernet,
            f,
            &mut |s| {
                let sip = s.src.port() == 5060 || s.dst.port() == 5060;
                out.push(encode_v3(&HepPacket {
                    version: 3,
                    ts: Some(shifted),
                    src: s.src,
                    dst: s.dst,
                    transport: s.transport,
                    proto_type: if sip { PROTO_SIP } else { PROTO_RTP },
                    agent_id: Some(agent),
                    auth_key: None,
                    payload: s.payload,
                }));
            },
        );
    }
    out
}

fn imported(spec: &CallSpec, dir: &std::path::Path) -> Recording {
    let cap = dir.join(format!("{}.pcap", spec.call_id));
    pbx_testgen::write_capture(
        &cap,
        std::slice::from_ref(spec),
        pbx_testgen::Format::PcapMicros,
        Link::Ethernet,
        &Framing::default(),
    )
    .unwrap();
    let out = dir.join(format!("import-{}", spec.call_id));
    assert!(import(&[&cap], &out, &[]).status.success());
    recordings(&out).remove(0)
}

fn metric(d: &Daemon, line: &str) -> bool {
    d.get("/metrics").is_some_and(|(_, m)| m.contains(line))
}

#[test]
fn calls_sent_as_hep_over_udp_and_tcp_are_recorded_as_import_records_them() {
    two_calls_as_hep(
        call("hep-udp@test", 3, 40000),
        call("hep-tcp@test", 4, 41000),
        0,
    );
}

/// An agent whose clock is 20 s behind ours (no NTP on the capture host),
/// the legs through 60 ms of jitter (reordered): the engine runs on the
/// agent's clock from its first packet, so the jitter window holds as in
/// an import. Before, the engine's clock started at ours and every packet
/// looked 20 s old: written at once, a reordered packet's place was
/// already silence (half of one leg's packets, with nothing counted).
#[test]
fn an_agent_whose_clock_is_behind_ours_is_recorded_as_import_records_it() {
    let jittery = |mut c: CallSpec| {
        c.caller_leg.impair.jitter_ms = 60;
        c.callee_leg.impair.jitter_ms = 60;
        c
    };
    two_calls_as_hep(
        jittery(call("hep-behind-udp@test", 5, 40100)),
        jittery(call("hep-behind-tcp@test", 6, 41100)),
        20_000_000,
    );
}

/// `by_udp` sent as HEP over UDP and `by_tcp` over TCP, in real time, by
/// agents `behind_us` behind our clock: each channel as `import` makes it.
fn two_calls_as_hep(by_udp: CallSpec, by_tcp: CallSpec, behind_us: i64) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let listen: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let d = Daemon::start(
        dir.path(),
        &format!("[sources.siprec]\nenabled = false\n[sources.hep]\nenabled = true\nlisten = \"{listen}\"\n"),
    );
    d.wait_http("/readyz", 200, Duration::from_secs(10));

    // As an agent sends them: in capture order, at the pace they were
    // captured; one call's copies over UDP (one per datagram), the other's
    // over one TCP connection.
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut tcp = TcpStream::connect(listen).unwrap();
    let mut all: Vec<(i64, bool, Vec<u8>)> = Vec::new();
    for (p, by_tcp) in hep_packets_behind(&by_udp, 77, behind_us)
        .into_iter()
        .map(|p| (p, false))
        .chain(
            hep_packets_behind(&by_tcp, 78, behind_us)
                .into_iter()
                .map(|p| (p, true)),
        )
    {
        let ts = pbx_core::hep::parse(&p).unwrap().ts.unwrap().as_micros();
        all.push((ts, by_tcp, p));
    }
    all.sort_by_key(|(ts, ..)| *ts);
    let (t0, start) = (all[0].0, Instant::now());
    for (ts, by_tcp, p) in &all {
        let due = Duration::from_micros((ts - t0) as u64);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        if *by_tcp {
            tcp.write_all(p).unwrap();
        } else {
            udp.send_to(p, listen).unwrap();
        }
    }
    // Garbage on the UDP port: counted, nothing else happens.
    udp.send_to(b"hello, is this HEP?", listen).unwrap();

    let t = Instant::now();
    let spool = dir.path().join("spool");
    let recs = loop {
        let done: Vec<_> = std::fs::read_dir(&spool)
            .map(|r| {
                r.flatten()
                    .filter(|e| {
                        let n = e.file_name().to_string_lossy().to_string();
                        n.ends_with(".json") && !n.starts_with('.')
                    })
                    .count()
            })
            .into_iter()
            .collect();
        if done.first().copied().unwrap_or(0) >= 2 {
            break recordings(&spool);
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "no recordings from HEP:\n{}",
            d.get("/status").map(|r| r.1).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    drop(tcp);
    for spec in [&by_udp, &by_tcp] {
        let r = recs
            .iter()
            .find(|r| r.json["call_id"] == spec.call_id.as_str())
            .unwrap_or_else(|| panic!("no recording of {}", spec.call_id));
        assert_eq!(r.json["source"], "sniff", "CONTRACT §3: a passive capture");
        assert_eq!(r.json["from"]["number"], "1001");
        assert_eq!(r.json["end_reason"], "bye");
        let i = imported(spec, dir.path());
        for ch in 0..2 {
            assert!(
                r.ch[ch].len() > 8000 * 3,
                "{}: ch{ch} too short",
                spec.call_id
            );
            assert_eq!(
                r.ch[ch], i.ch[ch],
                "{}: channel {ch} differs from import",
                spec.call_id
            );
        }
    }
    let t = Instant::now();
    while !(metric(
        &d,
        "pbx_edge_hep_packets_total{source=\"hep\",agent=\"77\"}",
    ) && metric(
        &d,
        "pbx_edge_hep_packets_total{source=\"hep\",agent=\"78\"}",
    ) && metric(
        &d,
        "pbx_edge_hep_rejected_total{source=\"hep\",reason=\"not_hep\"} 1",
    )) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{}",
            d.get("/metrics").map(|r| r.1).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn agents_outside_allow_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let listen: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let d = Daemon::start(
        dir.path(),
        &format!(
            "[sources.hep]\nenabled = true\nlisten = \"{listen}\"\nallow = [\"192.0.2.0/24\"]\n"
        ),
    );
    d.wait_http("/readyz", 200, Duration::from_secs(10));
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    for p in hep_packets(&call("hep-foreign@test", 5, 42000), 9) {
        udp.send_to(&p, listen).unwrap();
    }
    let _ = TcpStream::connect(listen).map(|mut s| s.write_all(b"HEP3"));
    let t = Instant::now();
    while !metric(
        &d,
        "pbx_edge_hep_rejected_total{source=\"hep\",reason=\"not_allowed\"}",
    ) {
        assert!(t.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(recordings(&dir.path().join("spool")).is_empty());
    assert!(!metric(&d, "pbx_edge_hep_packets_total{source=\"hep\""));
}

/// A real capture agent: Kamailio (Debian's package) with `siptrace` in HEP
/// mode (v3, capture id 2222) sends a copy of every request it handles to
/// the collector; each is read as a SIP message from agent 2222, none
/// refused. Skipped with a message where kamailio is not installed.
#[test]
fn kamailio_siptrace_hep_copies_are_understood() {
    if !have("kamailio") {
        eprintln!("SKIPPED: kamailio is not installed (see .ci/run)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (hep_port, sip_port) = (free_port(), free_port());
    let listen: SocketAddr = format!("127.0.0.1:{hep_port}").parse().unwrap();
    let d = Daemon::start(
        dir.path(),
        &format!("[sources.siprec]\nenabled = false\n[sources.hep]\nenabled = true\nlisten = \"{listen}\"\n"),
    );
    d.wait_http("/readyz", 200, Duration::from_secs(10));
    let modules = [
        "/usr/lib/x86_64-linux-gnu/kamailio/modules",
        "/usr/lib/kamailio/modules",
    ]
    .into_iter()
    .find(|m| std::path::Path::new(m).join("siptrace.so").exists());
    let Some(modules) = modules else {
        eprintln!("SKIPPED: kamailio's siptrace module is not installed");
        return;
    };
    let cfg = dir.path().join("kamailio.cfg");
    std::fs::write(
        &cfg,
        format!(
            "#!KAMAILIO\ndebug=2\nlog_stderror=yes\nfork=no\nchildren=1\n\
             listen=udp:127.0.0.1:{sip_port}\nmpath=\"{modules}/\"\n\
             loadmodule \"sl.so\"\nloadmodule \"tm.so\"\nloadmodule \"siptrace.so\"\n\
             modparam(\"siptrace\", \"duplicate_uri\", \"sip:{listen}\")\n\
             modparam(\"siptrace\", \"hep_mode_on\", 1)\n\
             modparam(\"siptrace\", \"hep_version\", 3)\n\
             modparam(\"siptrace\", \"hep_capture_id\", 2222)\n\
             modparam(\"siptrace\", \"trace_to_database\", 0)\n\
             modparam(\"siptrace\", \"trace_on\", 1)\n\
             request_route {{\n    sip_trace();\n    sl_send_reply(\"200\", \"OK\");\n}}\n"
        ),
    )
    .unwrap();
    let mut kam = std::process::Command::new("kamailio")
        .arg("-f")
        .arg(&cfg)
        .args(["-DD", "-E", "-P"])
        .arg(dir.path().join("kamailio.pid"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("kamailio.log")).unwrap())
        .spawn()
        .expect("start kamailio");
    let ua = UdpSocket::bind("127.0.0.1:0").unwrap();
    ua.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let me = ua.local_addr().unwrap();
    let mut answered = 0;
    let t = Instant::now();
    while answered < 3 && t.elapsed() < Duration::from_secs(20) {
        let m = format!(
            "OPTIONS sip:k@127.0.0.1:{sip_port} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-k{answered}\r\n\
             From: <sip:t@127.0.0.1>;tag=1\r\nTo: <sip:k@127.0.0.1>\r\nCall-ID: hep-kam-{answered}\r\n\
             CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        );
        ua.send_to(m.as_bytes(), ("127.0.0.1", sip_port)).unwrap();
        let mut buf = [0u8; 2048];
        if let Ok(n) = ua.recv(&mut buf) {
            if buf[..n].starts_with(b"SIP/2.0 200") {
                answered += 1;
            }
        }
    }
    let t = Instant::now();
    let seen = loop {
        if metric(
            &d,
            "pbx_edge_hep_packets_total{source=\"hep\",agent=\"2222\"} 3",
        ) || t.elapsed() > Duration::from_secs(10)
        {
            break d.get("/metrics").map(|r| r.1).unwrap_or_default();
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = kam.kill();
    let _ = kam.wait();
    assert_eq!(
        answered,
        3,
        "kamailio did not answer: {}",
        std::fs::read_to_string(dir.path().join("kamailio.log")).unwrap_or_default()
    );
    assert!(
        seen.contains("pbx_edge_hep_packets_total{source=\"hep\",agent=\"2222\"} 3")
            && seen.contains("pbx_edge_sip_messages_total{source=\"hep\"} 3")
            && !seen.contains("pbx_edge_hep_rejected_total{source"),
        "{seen}"
    );
}

/// Agent ids come from the network: each new one must not become a series
/// kept for good. The first 64 agents get their own, the rest count under
/// agent="other"; every packet is counted.
#[test]
fn capture_agents_beyond_64_are_counted_as_other() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let listen: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let d = Daemon::start(
        dir.path(),
        &format!("[sources.siprec]\nenabled = false\n[sources.hep]\nenabled = true\nlisten = \"{listen}\"\n"),
    );
    d.wait_http("/readyz", 200, Duration::from_secs(10));
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    let sent = 300u32;
    for agent in 0..sent {
        let msg = format!(
            "OPTIONS sip:x@10.1.0.2 SIP/2.0\r\nVia: SIP/2.0/UDP 10.1.0.1;branch=z9hG4bK{agent}\r\n\
             From: <sip:a@10.1.0.1>;tag=1\r\nTo: <sip:x@10.1.0.2>\r\nCall-ID: agents-{agent}\r\n\
             CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        );
        let p = encode_v3(&HepPacket {
            version: 3,
            ts: Some(Timestamp::from_micros(now_us)),
            src: "10.1.0.1:5060".parse().unwrap(),
            dst: "10.1.0.2:5060".parse().unwrap(),
            transport: pbx_core::net::Transport::Udp,
            proto_type: PROTO_SIP,
            agent_id: Some(1000 + agent),
            auth_key: None,
            payload: msg.as_bytes(),
        });
        udp.send_to(&p, listen).unwrap();
        // No flood: the collector's queue keeps every one.
        std::thread::sleep(Duration::from_millis(1));
    }
    let t = Instant::now();
    let (agents, total) = loop {
        let m = d.get("/metrics").map(|r| r.1).unwrap_or_default();
        let series: Vec<(String, u64)> = m
            .lines()
            .filter_map(|l| l.strip_prefix("pbx_edge_hep_packets_total{source=\"hep\",agent=\""))
            .filter_map(|l| {
                let (agent, v) = l.split_once("\"} ")?;
                Some((agent.to_string(), v.parse().ok()?))
            })
            .collect();
        let total: u64 = series.iter().map(|s| s.1).sum();
        if total >= u64::from(sent) || t.elapsed() > Duration::from_secs(10) {
            break (series, total);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(total, u64::from(sent), "{agents:?}");
    assert_eq!(agents.len(), 65, "{agents:?}");
    assert!(
        agents.contains(&("other".to_string(), u64::from(sent) - 64)),
        "{agents:?}"
    );
}
