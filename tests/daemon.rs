//! The daemon as a process: `pbx-edge run` sniffing generated calls replayed as
//! real UDP packets on the loopback interface, health endpoints, signals,
//! crash recovery, and `pbx-edge status`.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::daemon::*;
use common::truth::check_alignment;
use common::*;
use pbx_testgen::audio::{best_lag, speechlike};
use pbx_testgen::scenario::generate;
use pbx_testgen::{CallSpec, CallTruth, Framing, Link, Party, TestCodec};
use serde_json::Value;

/// A call between 127.0.0.1 and 127.0.0.2 (so it can be replayed on `lo`),
/// on ports unlikely to be in use.
fn loopback_call(id: &str, secs: u32, seed: u64, base: u16) -> CallSpec {
    let mut c = CallSpec::simple(
        id,
        TestCodec::Pcmu,
        speechlike(seed * 2 + 1, secs * 1000, 8000),
        speechlike(seed * 2 + 2, secs * 1000, 8000),
    );
    c.caller = Party {
        ip: IpAddr::from([127, 0, 0, 1]),
        sip_port: base,
        rtp_port: base + 2,
        number: "1001".into(),
        name: "Alice".into(),
    };
    c.callee = Party {
        ip: IpAddr::from([127, 0, 0, 2]),
        sip_port: base + 4,
        rtp_port: base + 6,
        number: "2002".into(),
        name: "Bob".into(),
    };
    c.ring_ms = 200;
    c.seed = seed;
    c
}

/// Sniffing daemons see every packet on `lo`: tests that sniff run one at a time.
static SNIFF: std::sync::Mutex<()> = std::sync::Mutex::new(());

thread_local! {
    /// This test thread runs in a network namespace of its own.
    static ISOLATED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Takes the sniff lock and, where the kernel and privileges allow, moves
/// the calling test thread into a network namespace of its own with only
/// `lo` (up): the daemons it starts, the packets it replays and the HTTP
/// requests it makes stay in there, and nothing else on the machine's `lo`
/// reaches the capture. Where it is not allowed, [`sniff_config`] filters
/// on the ports the tests own (47000-47999) instead.
fn sniff_lock() -> std::sync::MutexGuard<'static, ()> {
    let guard = SNIFF.lock().unwrap_or_else(|e| e.into_inner());
    if !ISOLATED.with(|i| i.get()) {
        match isolate_network() {
            Ok(()) => ISOLATED.with(|i| i.set(true)),
            Err(e) => eprintln!(
                "note: no network namespace for this test ({e}); the capture filters on the test's ports"
            ),
        }
    }
    guard
}

/// `unshare(CLONE_NEWNET)` for the calling thread, then `lo` up.
fn isolate_network() -> std::io::Result<()> {
    // SAFETY: plain system calls on this thread and a socket it owns.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNET) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *d = *s as libc::c_char;
        }
        let mut rc = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req);
        if rc == 0 {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            rc = libc::ioctl(fd, libc::SIOCSIFFLAGS, &req);
        }
        let e = std::io::Error::last_os_error();
        libc::close(fd);
        if rc != 0 {
            return Err(e);
        }
    }
    Ok(())
}

fn sniff_config(extra: &str) -> String {
    // Not isolated: only the ports the tests own (unless the test sets a
    // filter of its own).
    let filter = if ISOLATED.with(|i| i.get()) || extra.contains("filter =") {
        String::new()
    } else {
        "filter = \"udp portrange 47000-47999\"\n".to_string()
    };
    format!(
        "[sources.siprec]\nenabled = false\n[sources.sniff]\nenabled = true\ninterface = \"lo\"\n{filter}{extra}"
    )
}

/// Unrelated SIP and RTP replayed on the machine's `lo` in a loop (another
/// program's calls, as on a CI machine or a laptop) until dropped.
struct Noise {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<u32>>,
}

impl Noise {
    fn start() -> Noise {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            // The same addresses and ports as the tests' own calls, so only
            // isolation (not a port filter) keeps it out when it can.
            let mut spec = loopback_call("heldout-noise@other", 2, 77, 47100);
            spec.ring_ms = 50;
            let (frames, _) = generate(
                std::slice::from_ref(&spec),
                Link::Ethernet,
                &Framing::default(),
            );
            let mut rounds = 0;
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                // Partial calls too: the loop stops between packets.
                replay(&frames, Some(300_000_000));
                rounds += 1;
            }
            rounds
        });
        Noise {
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> u32 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread
            .take()
            .map(|t| t.join().unwrap_or(0))
            .unwrap_or(0)
    }
}

impl Drop for Noise {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn read_json(p: &std::path::Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn recording_of(json: &std::path::Path) -> Recording {
    let j = read_json(json);
    let wav = json.with_extension("wav");
    let (rate, ch) = pbx_testgen::audio::read_stereo_wav(&wav).unwrap();
    Recording {
        json: j,
        wav,
        rate,
        ch,
    }
}

#[test]
fn sniffed_call_is_recorded_alone_while_other_sip_rtp_plays_on_lo() {
    if !can_sniff() {
        return;
    }
    // The noise starts first, on the machine's own `lo`, and plays a call
    // on the same addresses and ports for as long as the test runs.
    let noise = Noise::start();
    let _one_at_a_time = sniff_lock();
    if !ISOLATED.with(|i| i.get()) {
        // Same ports: a port filter cannot tell the two apart.
        eprintln!(
            "skipped: needs a network namespace (unshare CLONE_NEWNET: root or CAP_SYS_ADMIN)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &sniff_config(""));
    d.wait_http("/readyz", 200, Duration::from_secs(5));
    let spec = loopback_call("sniff-noise@test", 3, 45, 47100);
    let (frames, truths): (_, Vec<CallTruth>) = generate(
        std::slice::from_ref(&spec),
        Link::Ethernet,
        &Framing::default(),
    );
    replay(&frames, None);
    let recs = d.wait_recordings(1, Duration::from_secs(10));
    // Give a stray recording of the noise time to appear before counting.
    std::thread::sleep(Duration::from_secs(2));
    let rounds = noise.stop();
    assert!(rounds >= 1, "the noise never played");
    let all = d.recordings();
    assert_eq!(all.len(), 1, "recordings: {all:?}");
    let r = recording_of(&recs[0]);
    assert_eq!(r.json["call_id"], "sniff-noise@test");
    check_alignment(&r, &truths[0], 25.0, 0.9, 0.9);
    eprintln!("{rounds} rounds of unrelated SIP/RTP on lo; one recording, the test's own");
}

#[test]
fn api_pause_during_a_sniffed_call() {
    if !can_sniff() {
        return;
    }
    let _one_at_a_time = sniff_lock();
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &sniff_config(""));
    d.wait_http("/readyz", 200, Duration::from_secs(5));
    let spec = loopback_call("sniff-pause@test", 5, 47, 47100);
    let (frames, truths): (_, Vec<CallTruth>) = generate(
        std::slice::from_ref(&spec),
        Link::Ethernet,
        &Framing::default(),
    );
    let player = std::thread::spawn(move || replay(&frames, None));
    // Media starts after the ring (200 ms); pause 1.5 s in, resume at 3 s.
    let t = std::time::Instant::now();
    let at = |ms: u64| {
        if let Some(w) = Duration::from_millis(ms).checked_sub(t.elapsed()) {
            std::thread::sleep(w);
        }
    };
    at(1500);
    let (code, body) = d.post("/v1/calls/sniff-pause%40test/pause");
    assert_eq!(code, 200, "{body}");
    let (_, list) = d.get("/v1/calls").unwrap();
    let v: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(v["calls"][0]["source"], "sniff", "{v}");
    assert_eq!(v["calls"][0]["paused"], true, "{v}");
    at(3000);
    let (code, body) = d.post("/v1/calls/sniff-pause%40test/resume");
    assert_eq!(code, 200, "{body}");
    player.join().unwrap();
    let recs = d.wait_recordings(1, Duration::from_secs(10));
    let r = recording_of(&recs[0]);
    let p = r.json["pauses"].as_array().expect("pauses").clone();
    assert_eq!(p.len(), 1, "{}", r.json);
    assert_eq!(p[0]["by"], "api");
    let from = p[0]["from_ms"].as_u64().unwrap() as usize * 8;
    let to = p[0]["to_ms"].as_u64().unwrap() as usize * 8;
    // Asked 1.5 s and 3 s after the replay began; media began 0.2 s in.
    assert!((9_000..=12_000).contains(&from), "{from}");
    assert!((21_000..=24_500).contains(&to), "{to}");
    for (k, ch) in r.ch.iter().enumerate() {
        assert!(ch[from..to].iter().all(|s| *s == 0), "channel {k}");
        // Before and after the stretch: each party's audio where the truth
        // says, at the same lag (the sync is kept across the pause).
        let truth = &truths[0].expected[k];
        let n = truth.len().min(ch.len());
        let (lag_pre, c_pre) = best_lag(&ch[..from], &truth[..from], 400);
        let (lag_post, c_post) = best_lag(&ch[to..n], &truth[to..n], 400);
        assert!(c_pre > 0.9 && c_post > 0.9, "{c_pre:.3} {c_post:.3}");
        assert!(
            (lag_pre - lag_post).abs() <= 1,
            "lag {lag_pre} then {lag_post}"
        );
    }
}

#[test]
fn sniffed_call_on_loopback_matches_its_source() {
    if !can_sniff() {
        return;
    }
    let _one_at_a_time = sniff_lock();
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &sniff_config(""));
    d.wait_http("/readyz", 200, Duration::from_secs(5));
    let spec = loopback_call("sniff-1@test", 4, 41, 47100);
    let (frames, truths): (_, Vec<CallTruth>) = generate(
        std::slice::from_ref(&spec),
        Link::Ethernet,
        &Framing::default(),
    );
    let first_late = replay(&frames, None);
    let recs = d.wait_recordings(1, Duration::from_secs(10));
    let r = recording_of(&recs[0]);
    assert_eq!(r.json["source"], "sniff");
    assert_eq!(r.json["call_id"], "sniff-1@test");
    assert_eq!(r.json["end_reason"], "bye");
    // Replay pacing on a busy machine adds jitter: allow a few ms. Each leg
    // starts where its first packet arrived, and a first packet delayed by
    // less than 10 ms stays there in a call without a gap: allow for how late
    // the first RTP packets of the two legs went out.
    let rtp_late = [
        SocketAddr::new(spec.caller.ip, spec.caller.rtp_port),
        SocketAddr::new(spec.callee.ip, spec.callee.rtp_port),
    ]
    .iter()
    .map(|a| first_late.get(a).copied().unwrap_or_default())
    .max()
    .unwrap_or_default();
    check_alignment(
        &r,
        &truths[0],
        5.0 + rtp_late.as_secs_f64() * 1000.0,
        0.9,
        0.9,
    );
    let want = truths[0].expected[0].len() as f64 / 8.0;
    let got = r.ch[0].len() as f64 / 8.0;
    assert!(
        (got - want).abs() < want * 0.05,
        "duration {got} ms, expected {want} ms"
    );
    // The same packets through `import` give the same channels.
    let cap = dir.path().join("same.pcap");
    let spec = loopback_call("sniff-1@test", 4, 41, 47100);
    pbx_testgen::write_capture(
        &cap,
        &[spec],
        pbx_testgen::Format::PcapMicros,
        Link::Ethernet,
        &Framing::default(),
    )
    .unwrap();
    let out = dir.path().join("imported");
    assert!(import(&[&cap], &out, &[]).status.success());
    let imported = &recordings(&out)[0];
    assert_eq!(
        imported.json["channels"][0]["packets"],
        r.json["channels"][0]["packets"]
    );
    assert_eq!(
        imported.json["channels"][1]["packets"],
        r.json["channels"][1]["packets"]
    );
    // The capture thread publishes its counters every 200 ms, not with the
    // recording: wait for them.
    let want = "pbx_edge_calls_recorded_total{source=\"sniff\"} 1";
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let m = d.get("/metrics").map(|r| r.1).unwrap_or_default();
        if m.contains(want) || std::time::Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(metrics.contains(want), "{metrics}");
    // File modes: recordings 0600, spool 0700.
    use std::os::unix::fs::PermissionsExt;
    let m = std::fs::metadata(&r.wav).unwrap().permissions().mode() & 0o777;
    assert_eq!(m, 0o600);
    let m = std::fs::metadata(&d.spool).unwrap().permissions().mode() & 0o777;
    assert_eq!(m, 0o700);
    // Every file in the spool (queue database, lock, reserve, sidecars).
    for e in std::fs::read_dir(&d.spool).unwrap() {
        let e = e.unwrap();
        let md = e.metadata().unwrap();
        if md.is_file() {
            let m = md.permissions().mode() & 0o777;
            assert_eq!(m, 0o600, "{}", e.file_name().to_string_lossy());
        }
    }
}

#[test]
fn sniff_filter_excludes_a_call_and_records_the_other_like_import() {
    if !can_sniff() {
        return;
    }
    let _one_at_a_time = sniff_lock();
    let dir = tempfile::tempdir().unwrap();
    // A tcpdump-style filter: the PBX's SIP port range, but not host .3.
    let d = Daemon::start(
        dir.path(),
        &sniff_config("filter = \"udp portrange 47100-47299 and not host 127.0.0.3\"\n"),
    );
    d.wait_http("/readyz", 200, Duration::from_secs(5));
    let kept = loopback_call("kept@test", 3, 43, 47110);
    let mut excluded = loopback_call("excluded@test", 3, 44, 47120);
    excluded.caller.ip = IpAddr::from([127, 0, 0, 3]);
    excluded.callee.ip = IpAddr::from([127, 0, 0, 4]);
    let (frames, truths): (_, Vec<CallTruth>) = generate(
        &[kept.clone(), excluded],
        Link::Ethernet,
        &Framing::default(),
    );
    replay(&frames, None);
    let recs = d.wait_recordings(1, Duration::from_secs(10));
    let r = recording_of(&recs[0]);
    assert_eq!(r.json["call_id"], "kept@test");
    assert_eq!(r.json["end_reason"], "bye");
    let truth = truths.iter().find(|t| t.call_id == "kept@test").unwrap();
    // Each party's voice on its channel. Two calls replayed by one thread on
    // a loaded machine stall now and then, and a stall moves the rest of a
    // leg on the arrival timeline: the lag allowed here is generous; the
    // packets themselves are compared with `import` below.
    check_alignment(&r, truth, 100.0, 0.9, 0.9);
    // The kept call alone through `import`: the same packets on each channel.
    let cap = dir.path().join("kept.pcap");
    pbx_testgen::write_capture(
        &cap,
        &[kept],
        pbx_testgen::Format::PcapMicros,
        Link::Ethernet,
        &Framing::default(),
    )
    .unwrap();
    let out = dir.path().join("imported");
    assert!(import(&[&cap], &out, &[]).status.success());
    let imported = &recordings(&out)[0];
    assert_eq!(imported.json["call_id"], "kept@test");
    for ch in 0..2 {
        assert_eq!(
            imported.json["channels"][ch]["packets"],
            r.json["channels"][ch]["packets"]
        );
        assert_eq!(
            imported.json["channels"][ch]["codec"],
            r.json["channels"][ch]["codec"]
        );
    }
    // The engine never saw the other call: both INVITEs went out long before
    // the kept call's BYE, and the engine takes packets in order.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let st = loop {
        let (_, status) = d.get("/status").unwrap();
        let st: Value = serde_json::from_str(&status).unwrap();
        if st["sources"]["sniff"]["engine"]["calls_recorded"] == 1
            || std::time::Instant::now() > deadline
        {
            break st;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let engine = &st["sources"]["sniff"]["engine"];
    assert_eq!(engine["calls_recorded"], 1, "{st}");
    assert_eq!(engine["calls_seen"], 1, "{st}");
    assert_eq!(d.recordings().len(), 1);
}

#[test]
fn sniff_filter_runs_in_the_kernel_for_ipv4_and_ipv6() {
    if !can_sniff() {
        return;
    }
    let _one_at_a_time = sniff_lock();
    let port = 47390;
    let sock =
        pbx_edge::sniff::PacketSocket::open("lo", Some(&format!("udp dst port {port} and ip6")))
            .unwrap();
    let v4 = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let v6 = std::net::UdpSocket::bind("[::1]:0").unwrap();
    for i in 0..3u8 {
        v4.send_to(&[4, i], ("127.0.0.1", port)).unwrap();
        v6.send_to(&[6, i], ("::1", port)).unwrap();
        v6.send_to(&[9, i], ("::1", port + 1)).unwrap();
    }
    let mut buf = vec![0u8; 65_536];
    let mut got = Vec::new();
    // The socket times out every 200 ms; a few empty reads mean all is in.
    let mut idle = 0;
    while idle < 3 {
        match sock.recv(&mut buf).unwrap() {
            Some((_, pkt)) => {
                got.push(pkt.to_vec());
                idle = 0;
            }
            None => idle += 1,
        }
    }
    // Only the three IPv6 datagrams to the port, as raw IPv6 packets.
    assert_eq!(got.len(), 3, "{got:?}");
    for (i, p) in got.iter().enumerate() {
        assert_eq!(p[0] >> 4, 6);
        assert_eq!(p[6], 17, "next header UDP");
        assert_eq!(&p[40 + 8..], &[6, i as u8]);
    }
}

#[test]
fn sigterm_during_a_call_closes_the_recording_and_exits_zero() {
    if !can_sniff() {
        return;
    }
    let _one_at_a_time = sniff_lock();
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(dir.path(), &sniff_config(""));
    // Ready: the capture socket is bound (healthz answers before that).
    d.wait_http("/readyz", 200, Duration::from_secs(5));
    let mut spec = loopback_call("term@test", 10, 42, 47200);
    spec.bye = false;
    let (frames, _) = generate(&[spec], Link::Ethernet, &Framing::default());
    replay(&frames, Some(4_000_000_000));
    let t = std::time::Instant::now();
    d.signal(libc::SIGTERM);
    assert_eq!(
        d.wait_exit(Duration::from_secs(10)),
        Some(0),
        "log:\n{}",
        d.log()
    );
    assert!(t.elapsed() < Duration::from_secs(10));
    let recs = d.recordings();
    assert_eq!(recs.len(), 1, "log:\n{}", d.log());
    let j = read_json(&recs[0]);
    assert_eq!(j["end_reason"], "shutdown");
    assert_eq!(j["truncated"], true);
    assert!(j["duration_ms"].as_i64().unwrap() > 2000);
}

#[test]
fn call_without_bye_ends_after_rtp_timeout() {
    if !can_sniff() {
        return;
    }
    let _one_at_a_time = sniff_lock();
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        dir.path(),
        &sniff_config("[recording]\nrtp_timeout = \"2s\"\n"),
    );
    // Ready: the capture socket is bound (healthz answers before that).
    d.wait_http("/readyz", 200, Duration::from_secs(5));
    let mut spec = loopback_call("timeout@test", 3, 43, 47300);
    spec.bye = false;
    let (frames, _) = generate(&[spec], Link::Ethernet, &Framing::default());
    replay(&frames, None);
    let recs = d.wait_recordings(1, Duration::from_secs(8));
    let j = read_json(&recs[0]);
    assert_eq!(j["end_reason"], "rtp_timeout");
}

#[test]
fn sighup_takes_a_good_config_and_keeps_the_old_one_on_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        dir.path(),
        "[sources.siprec]\nenabled = false\n[agent]\nid = \"first\"\n",
    );
    let status =
        |d: &Daemon| -> Value { serde_json::from_str(&d.get("/status").unwrap().1).unwrap() };
    assert_eq!(status(&d)["agent_id"], "first");
    // A bad config: rejected, old one kept, daemon still serving.
    std::fs::write(&d.config, "[agent]\nid = 5\nbogus_key = 1\n").unwrap();
    d.signal(libc::SIGHUP);
    let t = std::time::Instant::now();
    while !d.log().contains("rejected") && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(status(&d)["agent_id"], "first");
    let log = d.log();
    assert!(
        log.contains("rejected") && log.contains("bogus_key"),
        "log:\n{log}"
    );
    // A good one: taken.
    std::fs::write(
        &d.config,
        Daemon::config_text(
            &d.spool,
            d.health,
            "[sources.siprec]\nenabled = false\n[agent]\nid = \"second\"\n",
        ),
    )
    .unwrap();
    d.signal(libc::SIGHUP);
    let t = std::time::Instant::now();
    while status(&d)["agent_id"] != "second" && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(status(&d)["agent_id"], "second");
}

#[test]
fn recording_cut_by_sigkill_is_completed_at_the_next_start() {
    if !can_sniff() {
        return;
    }
    let _one_at_a_time = sniff_lock();
    let dir = tempfile::tempdir().unwrap();
    let spec = {
        let mut s = loopback_call("kill@test", 8, 44, 47400);
        s.bye = false;
        s
    };
    let (frames, _) = generate(&[spec], Link::Ethernet, &Framing::default());
    {
        let mut d = Daemon::start(dir.path(), &sniff_config(""));
        // Ready: the capture socket is bound (healthz answers before that).
        d.wait_http("/readyz", 200, Duration::from_secs(5));
        replay(&frames, Some(3_000_000_000));
        // Audio is written while the call runs (flushed every second of it):
        // wait until more than a second is on disk, then kill.
        let part_len = || -> u64 {
            std::fs::read_dir(&d.spool)
                .map(|rd| {
                    rd.flatten()
                        .filter(|e| e.file_name().to_string_lossy().ends_with(".wav.part"))
                        .filter_map(|e| e.metadata().ok())
                        .map(|m| m.len())
                        .max()
                        .unwrap_or(0)
                })
                .unwrap_or(0)
        };
        let t = std::time::Instant::now();
        while part_len() <= 44 + 8000 * 4 && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
        d.signal(libc::SIGKILL);
        d.wait_exit(Duration::from_secs(5));
        assert!(d.recordings().is_empty(), "nothing complete yet");
    }
    let d = Daemon::start(dir.path(), &sniff_config(""));
    let recs = d.wait_recordings(1, Duration::from_secs(5));
    let j = read_json(&recs[0]);
    assert_eq!(j["truncated"], true);
    assert_eq!(j["end_reason"], "crash");
    assert_eq!(j["call_id"], "kill@test");
    let r = recording_of(&recs[0]);
    assert!(r.ch[0].len() > 8000, "audio kept: {} frames", r.ch[0].len());
    let (bytes, sha) = pbx_edge::recording::hash_file(&r.wav).unwrap();
    assert_eq!(j["audio"]["sha256"], sha);
    assert_eq!(j["audio"]["bytes"], bytes);
}

#[test]
fn sighup_as_soon_as_healthz_answers_is_a_reload() {
    // A reload may come the moment the daemon answers: the signal handlers
    // are in place before the health endpoint (SIGHUP's default action would
    // end the process).
    let dir = tempfile::tempdir().unwrap();
    // Started by hand to catch the first answer (Daemon::start polls slower).
    let health: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let spool = dir.path().join("spool");
    let config = dir.path().join("pbx-edge.toml");
    let text = Daemon::config_text(&spool, health, "[sources.siprec]\nenabled = false\n");
    std::fs::write(&config, text).unwrap();
    let child = std::process::Command::new(bin())
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env_remove("NOTIFY_SOCKET")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("daemon.log")).unwrap())
        .spawn()
        .unwrap();
    let mut d = Daemon {
        child,
        dir: dir.path().to_path_buf(),
        config,
        health,
        spool,
    };
    let t = std::time::Instant::now();
    while d.get("/healthz").map(|r| r.0) != Some(200) {
        assert!(t.elapsed() < Duration::from_secs(10), "{}", d.log());
        std::thread::sleep(Duration::from_millis(1));
    }
    d.signal(libc::SIGHUP);
    let t = std::time::Instant::now();
    while !d.log().contains("configuration reloaded") && t.elapsed() < Duration::from_secs(10) {
        assert_eq!(d.child.try_wait().unwrap(), None, "log:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(d.log().contains("configuration reloaded"), "{}", d.log());
    d.wait_http("/healthz", 200, Duration::from_secs(5));
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(10)), Some(0), "{}", d.log());
}

#[test]
fn status_command_and_readiness() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), "[sources.siprec]\nenabled = false\n");
    // /healthz answers before the spool was first looked at: ready a moment later.
    d.wait_http("/readyz", 200, Duration::from_secs(10));
    let out = std::process::Command::new(bin())
        .args(["status", "--config"])
        .arg(&d.config)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("ready: yes") && text.contains("spool"),
        "{text}"
    );
    // For people: sizes in KiB/MiB/GiB/TiB, uptime as an age, no raw bytes.
    let spool_line = text.lines().find(|l| l.starts_with("spool ")).unwrap();
    assert!(!spool_line.contains("bytes"), "{spool_line}");
    assert!(
        spool_line.contains("iB free") && spool_line.contains(" files, "),
        "{spool_line}"
    );
    assert!(!text.lines().next().unwrap().ends_with(" s"), "{text}");
    // --json keeps the exact figures.
    let out = std::process::Command::new(bin())
        .args(["status", "--json", "--config"])
        .arg(&d.config)
        .output()
        .unwrap();
    assert!(out.status.success());
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        j["status"]["spool"]["free_bytes"].as_u64().unwrap() > 0,
        "{j}"
    );
    assert!(j["status"]["spool"]["bytes"].is_u64(), "{j}");
    assert_eq!(j["readyz"]["ready"], true, "{j}");
    // spool list: people's units by default, exact figures with --json.
    std::fs::write(
        d.spool.join("20250101T000000Z-00000000000000aa.wav"),
        vec![0u8; 3 << 20],
    )
    .unwrap();
    std::fs::write(
        d.spool.join("20250101T000000Z-00000000000000aa.json"),
        b"{}",
    )
    .unwrap();
    let list = |json: bool| {
        let mut c = std::process::Command::new(bin());
        c.args(["spool", "list", "--config"]).arg(&d.config);
        if json {
            c.arg("--json");
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let text = list(false);
    assert!(text.contains("MiB"), "{text}");
    let rows: Value = serde_json::from_str(&list(true)).unwrap();
    let row = &rows.as_array().unwrap()[0];
    assert_eq!(row["id"], "20250101T000000Z-00000000000000aa", "{rows}");
    assert!(row["size_bytes"].as_u64().unwrap() >= 3 << 20, "{rows}");
    assert!(row["age_ms"].is_i64(), "{rows}");
    let (code, body) = d.get("/readyz").unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("not configured"));
    assert_eq!(d.get("/nope").unwrap().0, 404);
}

#[test]
fn sniffing_without_capability_is_a_clear_error() {
    // As root this cannot be tested by dropping privileges portably; check
    // the message the socket error turns into instead.
    let e = pbx_edge::sniff::PacketSocket::open("no-such-interface-xyz", None).err();
    if let Some(e) = e {
        let m = e.to_string();
        assert!(
            m.contains("no-such-interface-xyz") || m.contains("CAP_NET_RAW"),
            "{m}"
        );
    }
}

#[test]
fn sighup_during_a_sniffed_call_new_filter_and_agent_do_not_cut_it() {
    if !can_sniff() {
        return;
    }
    let _one_at_a_time = sniff_lock();
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        dir.path(),
        &sniff_config("[agent]\nid = \"sniff-before\"\n"),
    );
    d.wait_http("/readyz", 200, Duration::from_secs(5));
    let spec = loopback_call("sniff-reload@test", 4, 43, 47300);
    let (frames, _truths): (_, Vec<CallTruth>) = generate(
        std::slice::from_ref(&spec),
        Link::Ethernet,
        &Framing::default(),
    );
    let player = std::thread::spawn(move || replay(&frames, None));
    std::thread::sleep(Duration::from_millis(1500));
    // A new filter (a new capture) and a new agent id, mid-call.
    std::fs::write(
        &d.config,
        Daemon::config_text(
            &d.spool,
            d.health,
            &sniff_config("filter = \"udp\"\n[agent]\nid = \"sniff-after\"\n"),
        ),
    )
    .unwrap();
    d.signal(libc::SIGHUP);
    player.join().unwrap();
    let recs = d.wait_recordings(1, Duration::from_secs(10));
    let log = d.log();
    assert!(log.contains("capture switched"), "{log}");
    let r = recording_of(&recs[0]);
    assert_eq!(r.json["end_reason"], "bye", "{}", r.json);
    assert_eq!(r.json["truncated"], false);
    // Recordings in progress keep the settings they began with.
    assert_eq!(r.json["agent_id"], "sniff-before");
    // Every packet once: the same counts as `import` of the same packets.
    let cap = dir.path().join("same.pcap");
    pbx_testgen::write_capture(
        &cap,
        &[loopback_call("sniff-reload@test", 4, 43, 47300)],
        pbx_testgen::Format::PcapMicros,
        Link::Ethernet,
        &Framing::default(),
    )
    .unwrap();
    let out = dir.path().join("imported");
    assert!(import(&[&cap], &out, &[]).status.success());
    let imported = &recordings(&out)[0];
    for ch in 0..2 {
        assert_eq!(
            imported.json["channels"][ch]["packets"], r.json["channels"][ch]["packets"],
            "channel {ch}"
        );
    }
    assert!((r.ch[0].len() as f64 / 8.0 - 4000.0).abs() < 200.0);

    // The next call gets the new agent id.
    let spec = loopback_call("sniff-after@test", 1, 44, 47400);
    let (frames, _): (_, Vec<CallTruth>) = generate(
        std::slice::from_ref(&spec),
        Link::Ethernet,
        &Framing::default(),
    );
    replay(&frames, None);
    let recs = d.wait_recordings(2, Duration::from_secs(10));
    let j = recs
        .iter()
        .map(|p| read_json(p))
        .find(|j| j["call_id"] == "sniff-after@test")
        .expect("second recording");
    assert_eq!(j["agent_id"], "sniff-after");
}

/// Who is who for sniffed calls, with `[roles]` from the config: numbers
/// matching `internal_numbers` are agents (extension_length off, so a
/// short outside number is no agent): inbound, outbound and internal calls
/// get the direction, roles and extension their numbers say.
#[test]
fn sniffed_calls_get_roles_from_the_configured_rules() {
    if !can_sniff() {
        return;
    }
    let _one_at_a_time = sniff_lock();
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        dir.path(),
        &sniff_config("[roles]\ninternal_numbers = [\"+7495123????\"]\nextension_length = \"\"\n"),
    );
    d.wait_http("/readyz", 200, Duration::from_secs(5));
    let agent = "+74951234567";
    let agent2 = "+74951230001";
    let outside = "2002"; // short, but not internal: extension_length is off
    let cases = [
        (
            "roles-in@test",
            outside,
            agent,
            "inbound",
            ["customer", "agent"],
            [None, Some(agent)],
        ),
        (
            "roles-out@test",
            agent,
            outside,
            "outbound",
            ["agent", "customer"],
            [Some(agent), None],
        ),
        (
            "roles-int@test",
            agent,
            agent2,
            "internal",
            ["agent", "agent"],
            [Some(agent), Some(agent2)],
        ),
    ];
    for (i, (id, from, to, ..)) in cases.iter().enumerate() {
        let mut spec = loopback_call(id, 1, 60 + i as u64, 47200 + 20 * i as u16);
        spec.caller.number = from.to_string();
        spec.callee.number = to.to_string();
        let (frames, _) = generate(
            std::slice::from_ref(&spec),
            Link::Ethernet,
            &Framing::default(),
        );
        replay(&frames, None);
    }
    d.wait_recordings(3, Duration::from_secs(15));
    for (id, _, _, direction, roles, ext) in cases {
        let j = d
            .recordings()
            .iter()
            .map(|p| read_json(p))
            .find(|j| j["call_id"] == id)
            .unwrap_or_else(|| panic!("no recording of {id}"));
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
}

/// Capture files given out of time order (a shell glob of `tcpdump -C`
/// files: `cap1 cap10 cap2`), or captured at once (two interfaces):
/// `import` reads their packets as one stream in time order, and the call
/// is the one the whole capture gives, sample for sample. Before, the later file read first moved the
/// clock on, and the earlier file's part of the call was lost.
/// A capture cut short (a record broken off at its end: a full disk, a
/// copy taken while written) is imported up to there, reported, not
/// counted as imported in the summary, and the exit code is 1.
#[test]
fn import_counts_a_capture_cut_short_as_not_imported() {
    use pbx_testgen::pcap::{CaptureWriter, Format};
    let dir = tempfile::tempdir().unwrap();
    let spec = loopback_call("cut@test", 8, 47, 47400);
    let (frames, _) = generate(&[spec], Link::Ethernet, &Framing::default());
    let p = dir.path().join("whole.pcap");
    let mut w = CaptureWriter::new(
        std::io::BufWriter::new(std::fs::File::create(&p).unwrap()),
        Format::PcapMicros,
        Link::Ethernet,
    )
    .unwrap();
    for (ts, f) in &frames {
        w.write(*ts, f).unwrap();
    }
    std::io::Write::flush(&mut w.into_inner()).unwrap();
    let bytes = std::fs::read(&p).unwrap();
    let cut = dir.path().join("cut.pcap");
    std::fs::write(&cut, &bytes[..bytes.len() - 7]).unwrap();
    let summary = |o: &std::process::Output| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .find(|l| l.starts_with("imported "))
            .unwrap_or_default()
            .to_string()
    };
    let o = import(&[&cut], &dir.path().join("a"), &["--quiet"]);
    assert_eq!(o.status.code(), Some(1));
    let s = summary(&o);
    assert!(s.starts_with("imported 0/1 files"), "{s}");
    assert!(s.contains("1 files cut short"), "{s}");
    let o = import(&[&p, &cut], &dir.path().join("b"), &["--quiet"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        summary(&o).starts_with("imported 1/2 files"),
        "{}",
        summary(&o)
    );
    let o = import(&[&p], &dir.path().join("c"), &["--quiet"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(
        summary(&o).starts_with("imported 1/1 files"),
        "{}",
        summary(&o)
    );
}

#[test]
fn import_reads_capture_files_in_time_order() {
    use pbx_testgen::pcap::{CaptureWriter, Format};
    let dir = tempfile::tempdir().unwrap();
    let spec = loopback_call("split@test", 8, 47, 47300);
    let (frames, _) = generate(&[spec], Link::Ethernet, &Framing::default());
    let write = |name: &str, part: &[(i64, Vec<u8>)]| {
        let p = dir.path().join(name);
        let mut w = CaptureWriter::new(
            std::io::BufWriter::new(std::fs::File::create(&p).unwrap()),
            Format::PcapMicros,
            Link::Ethernet,
        )
        .unwrap();
        for (ts, f) in part {
            w.write(*ts, f).unwrap();
        }
        std::io::Write::flush(&mut w.into_inner()).unwrap();
        p
    };
    let whole = write("whole.pcap", &frames);
    let half = frames.len() / 2;
    // cap10 holds the first half, cap2 the second: given as "cap10 cap2"
    // they are read second half first.
    let later = write("cap2.pcap", &frames[half..]);
    let earlier = write("cap10.pcap", &frames[..half]);
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    assert!(import(&[&whole], &a, &[]).status.success());
    let out = import(&[&later, &earlier], &b, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (ra, rb) = (recordings(&a), recordings(&b));
    assert_eq!((ra.len(), rb.len()), (1, 1));
    assert_eq!(
        rb[0].ch, ra[0].ch,
        "the same audio as from the whole capture"
    );
    assert_eq!(rb[0].json["channels"], ra[0].json["channels"]);
    // Two files captured at once (two interfaces: every other packet in
    // each, so their times interleave for the whole call): read as one
    // stream in time order, the same call (before, the first file was read
    // to its end first: the call ended without the other file's packets).
    let odd: Vec<(i64, Vec<u8>)> = frames.iter().skip(1).step_by(2).cloned().collect();
    let even: Vec<(i64, Vec<u8>)> = frames.iter().step_by(2).cloned().collect();
    let (if1, if2) = (write("if1.pcap", &odd), write("if2.pcap", &even));
    let c = dir.path().join("c");
    let out = import(&[&if1, &if2], &c, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rc = recordings(&c);
    assert_eq!(rc.len(), 1);
    assert_eq!(
        rc[0].ch, ra[0].ch,
        "the same audio as from the whole capture"
    );
    assert_eq!(rc[0].json["channels"], ra[0].json["channels"]);
    // A ring buffer of many files under a small descriptor limit: a file
    // is open only while the merge reads it (opening them all at once ran
    // out of descriptors and lost their calls).
    let chunk = frames.len().div_ceil(60);
    let ring: Vec<std::path::PathBuf> = frames
        .chunks(chunk)
        .enumerate()
        .map(|(i, part)| write(&format!("ring{i}.pcap"), part))
        .collect();
    let d = dir.path().join("d");
    let mut cmd = std::process::Command::new(bin());
    cmd.arg("import").args(&ring).arg("--out").arg(&d);
    // SAFETY: setrlimit between fork and exec touches nothing shared.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            let lim = libc::rlimit {
                rlim_cur: 24,
                rlim_max: 24,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rd = recordings(&d);
    assert_eq!(rd.len(), 1);
    assert_eq!(
        rd[0].ch, ra[0].ch,
        "the same audio as from the whole capture"
    );
}

/// SIP over TCP whose connection lost a segment just before the BYE, at the
/// end of the capture: the BYE waits behind the hole (for 2 s, to be
/// reordered in), and the capture ends before that. Its bytes are read at
/// the end all the same (the hole skipped): the call ends by its BYE, at
/// the BYE's time (before, they were thrown away and the call ended as
/// cut by the end of the capture).
#[test]
fn import_reads_a_tcp_bye_held_behind_a_hole_at_the_end() {
    use pbx_testgen::pcap::{CaptureWriter, Format};
    let dir = tempfile::tempdir().unwrap();
    let spec = loopback_call("tcp-bye@test", 3, 48, 47400);
    let sip_ports = [spec.caller.sip_port, spec.callee.sip_port];
    let (frames, _) = generate(&[spec], Link::Ethernet, &Framing::default());
    // Ethernet (14) + IPv4 (20) + UDP (8): SIP datagrams become segments of
    // one TCP connection per direction.
    let mut seq: std::collections::HashMap<u16, u32> = Default::default();
    let mut out: Vec<(i64, Vec<u8>)> = Vec::new();
    for (ts, f) in &frames {
        let (sport, dport) = (
            u16::from_be_bytes([f[34], f[35]]),
            u16::from_be_bytes([f[36], f[37]]),
        );
        if !sip_ports.contains(&sport) {
            out.push((*ts, f.clone()));
            continue;
        }
        let payload = &f[42..];
        let ip = |o: usize| IpAddr::from([f[o], f[o + 1], f[o + 2], f[o + 3]]);
        let s = seq.entry(sport).or_insert(1000);
        if payload.starts_with(b"BYE ") {
            *s += 100; // a lost segment before it
        }
        out.push((
            *ts,
            pbx_testgen::frame::tcp_frame(
                Link::Ethernet,
                &Framing::default(),
                SocketAddr::new(ip(26), sport),
                SocketAddr::new(ip(30), dport),
                *s,
                1,
                0x18,
                payload,
            ),
        ));
        *s += payload.len() as u32;
    }
    let cap = dir.path().join("tcp.pcap");
    let mut w = CaptureWriter::new(
        std::io::BufWriter::new(std::fs::File::create(&cap).unwrap()),
        Format::PcapMicros,
        Link::Ethernet,
    )
    .unwrap();
    for (ts, f) in &out {
        w.write(*ts, f).unwrap();
    }
    std::io::Write::flush(&mut w.into_inner()).unwrap();
    let o = dir.path().join("out");
    let r = import(&[&cap], &o, &[]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let recs = recordings(&o);
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].json["end_reason"], "bye", "{}", recs[0].json);
}

#[test]
fn a_siprec_listener_that_cannot_bind_at_start_is_tried_again_until_it_binds() {
    let dir = tempfile::tempdir().unwrap();
    // Another program holds the SIPREC port (UDP and TCP) when the daemon
    // starts, as a PBX started later would, or an address not up yet.
    let (tcp, udp, port) = loop {
        let port = free_port();
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        if let Ok(udp) = std::net::UdpSocket::bind(("127.0.0.1", port)) {
            break (tcp, udp, port);
        }
    };
    let rtp = rtp_base(port, 20);
    let d = Daemon::start(
        dir.path(),
        &format!(
            "[sources.siprec]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\nrtp_ports = \"{rtp}-{}\"\n",
            rtp + 19
        ),
    );
    // Not ready, and /readyz says why and that it is retried.
    let t = std::time::Instant::now();
    let body = loop {
        let (code, body) = d.get("/readyz").unwrap();
        if body.contains("retrying") {
            assert_eq!(code, 503, "{body}");
            break body;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{body}\n{}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(body.contains("cannot listen"), "{body}");
    // The port comes free: the listener binds without a restart.
    drop((tcp, udp));
    d.wait_http("/readyz", 200, Duration::from_secs(15));
    let log = d.log();
    assert!(
        log.contains("source started: it could not start before"),
        "{log}"
    );
    let s: Value = serde_json::from_str(&d.get("/status").unwrap().1).unwrap();
    assert_eq!(s["sources"]["siprec"]["up"], true, "{s}");
    assert!(
        s["sources"]["siprec"].get("start_failures").is_none(),
        "{s}"
    );
}

/// `pbx-edge run` with stderr to `log` and `JOURNAL_STREAM` set to
/// `journal_stream`; stopped once it says it runs. Its log.
fn run_logging_to(dir: &std::path::Path, journal_stream: &str, extra: &str) -> String {
    let health: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = dir.join("pbx-edge.toml");
    std::fs::write(
        &config,
        Daemon::config_text(&dir.join("spool"), health, extra),
    )
    .unwrap();
    let log_path = dir.join("daemon.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = std::process::Command::new(bin())
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env_remove("NOTIFY_SOCKET")
        .env("JOURNAL_STREAM", journal_stream)
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    while !std::fs::read_to_string(&log_path)
        .unwrap_or_default()
        .contains(" running")
    {
        assert!(t.elapsed() < Duration::from_secs(10), "did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: signalling our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    std::fs::read_to_string(&log_path).unwrap()
}

#[test]
fn log_lines_carry_syslog_priorities_when_stderr_is_the_journal() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    // A port held by someone else: an error at start, and the note that
    // it is tried again is a warning.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let rtp = rtp_base(port, 20);
    let extra = format!(
        "[sources.siprec]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\nrtp_ports = \"{rtp}-{}\"\n",
        rtp + 19
    );
    // JOURNAL_STREAM names the file stderr is (as systemd sets it for the
    // journal's stream socket): every line starts with its priority.
    let log_path = dir.path().join("daemon.log");
    std::fs::write(&log_path, b"").unwrap();
    let m = std::fs::metadata(&log_path).unwrap();
    let log = run_logging_to(dir.path(), &format!("{}:{}", m.dev(), m.ino()), &extra);
    assert!(log.lines().all(|l| l.starts_with('<')), "{log}");
    let prio = |p: &str, word: &str| log.lines().any(|l| l.starts_with(p) && l.contains(word));
    assert!(prio("<3>", "cannot listen"), "{log}");
    assert!(prio("<4>", "source not started"), "{log}");
    assert!(prio("<6>", "running"), "{log}");
    // No time stamps of our own there (journald adds them).
    assert!(!log.contains("Z  INFO"), "{log}");

    // JOURNAL_STREAM inherited, but stderr is not the journal (a shell
    // started by a service, output to a file): plain lines.
    let log = run_logging_to(dir.path(), "1:1", &extra);
    assert!(!log.lines().any(|l| l.starts_with('<')), "{log}");
    assert!(
        log.contains("ERROR") && log.contains("cannot listen"),
        "{log}"
    );
}

#[test]
fn sighup_changing_health_listen_or_log_format_warns_that_they_need_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), "[sources.siprec]\nenabled = false\n");
    let other: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    std::fs::write(
        &d.config,
        Daemon::config_text(
            &d.spool,
            other,
            "[sources.siprec]\nenabled = false\n[log]\nformat = \"json\"\n",
        ),
    )
    .unwrap();
    d.signal(libc::SIGHUP);
    let t = std::time::Instant::now();
    while !d.log().contains("configuration reloaded") {
        assert!(t.elapsed() < Duration::from_secs(10), "{}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
    let log = d.log();
    let warned = |key: &str| {
        log.lines().any(|l| {
            l.contains("WARN") && l.contains(&format!("{key} changed")) && l.contains("restart")
        })
    };
    assert!(warned("health.listen"), "{log}");
    assert!(warned("log.format"), "{log}");
    // Still on the address it started with, still logging text.
    d.wait_http("/healthz", 200, Duration::from_secs(2));
    assert!(!log.lines().any(|l| l.starts_with('{')), "{log}");
    // `pbx-edge status` reads the file: it says why it finds no daemon.
    let out = std::process::Command::new(bin())
        .args(["status", "--config"])
        .arg(&d.config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("until it is restarted"), "{err}");
}

/// systemd may hand a service an abstract NOTIFY_SOCKET (`@name`, e.g. in a
/// container or under `systemd-run`): READY=1 and STATUS= arrive there. A
/// socket that cannot be reached is logged once, not at every tick.
#[test]
fn ready_is_sent_to_an_abstract_notify_socket() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
    let dir = tempfile::tempdir().unwrap();
    let name = format!("pbx-edge-test-notify-{}", std::process::id());
    let rx =
        UnixDatagram::bind_addr(&UnixAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let start = |socket: &str| {
        let health: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = dir.path().join("pbx-edge.toml");
        std::fs::write(
            &config,
            Daemon::config_text(
                &dir.path().join("spool"),
                health,
                "[sources.siprec]\nenabled = false\n",
            ),
        )
        .unwrap();
        std::process::Command::new(bin())
            .arg("run")
            .arg("--config")
            .arg(&config)
            .env("NOTIFY_SOCKET", socket)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("daemon.log")).unwrap())
            .spawn()
            .unwrap()
    };
    let mut child = start(&format!("@{name}"));
    let mut buf = [0u8; 4096];
    let got = rx
        .recv(&mut buf)
        .map(|n| String::from_utf8_lossy(&buf[..n]).to_string());
    // SAFETY: signalling our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap();
    let got = got.unwrap_or_else(|e| panic!("no notification: {e}\n{log}"));
    assert!(
        got.contains("READY=1\n") && got.contains("STATUS=recording 0 calls"),
        "{got}"
    );
    assert!(!log.contains("cannot notify"), "{log}");

    // Nobody listens there: said once.
    let mut child = start(&format!("@{name}-gone"));
    std::thread::sleep(Duration::from_millis(2500));
    // SAFETY: signalling our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap();
    assert_eq!(log.matches("cannot notify systemd").count(), 1, "{log}");
}

/// The IP packets of `frames` (Ethernet frames from pbx-testgen) sent as
/// they are, source address included, through a raw socket at the pace of
/// their time stamps: routed by their destination (out of the interface
/// whose network holds it).
fn replay_raw(frames: &[(i64, Vec<u8>)]) {
    // SAFETY: plain socket(2); IPPROTO_RAW implies IP_HDRINCL.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
    let Some(first) = frames.first().map(|f| f.0) else {
        return;
    };
    let start = std::time::Instant::now();
    for (ts, f) in frames {
        let ip = &f[14..];
        let due = Duration::from_nanos((ts - first) as u64);
        if let Some(w) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(w);
        }
        // SAFETY: zeroed sockaddr_in is valid; the address is set below.
        let mut to: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        to.sin_family = libc::AF_INET as u16;
        to.sin_addr.s_addr = u32::from_ne_bytes([ip[16], ip[17], ip[18], ip[19]]);
        // SAFETY: ip and to are valid for the call.
        unsafe {
            libc::sendto(
                fd,
                ip.as_ptr().cast(),
                ip.len(),
                0,
                (&to as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            )
        };
    }
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
}

fn ip_ok(args: &[&str]) -> bool {
    let st = std::process::Command::new("ip").args(args).status();
    st.is_ok_and(|s| s.success())
}

/// `pbxd0`, one end of a veth pair (without ARP) in this thread's network
/// namespace, with 10.77.0.1/24: what is routed to its network (sent by
/// [`replay_raw`]) goes out of it and is captured there as it leaves.
fn veth_out() -> bool {
    ip_ok(&[
        "link", "add", "pbxd0", "type", "veth", "peer", "name", "pbxd1",
    ]) && ip_ok(&["addr", "add", "10.77.0.1/24", "dev", "pbxd0"])
        && ip_ok(&["link", "set", "pbxd0", "arp", "off", "up"])
        && ip_ok(&["link", "set", "pbxd1", "up"])
}

/// The call `id` of 2 s between 10.77.0.2 and 10.77.0.3 (SIP on 47500 and
/// 47504), as Ethernet frames, its IP packets at most `mtu` long.
fn call_on_veth(id: &str, seed: u64, mtu: Option<usize>) -> Vec<(i64, Vec<u8>)> {
    let mut c = loopback_call(id, 2, seed, 47500);
    c.caller.ip = IpAddr::from([10, 77, 0, 2]);
    c.callee.ip = IpAddr::from([10, 77, 0, 3]);
    let framing = Framing {
        mtu,
        ..Framing::default()
    };
    generate(&[c], Link::Ethernet, &framing).0
}

/// A port filter keeps the fragments of a SIP message larger than the MTU
/// (those after the first carry no UDP header, so `udp port ...` alone
/// dropped them, and with them the call).
#[test]
fn a_port_filter_keeps_the_fragments_of_a_large_sip_message() {
    if !can_sniff() {
        return;
    }
    let _one_at_a_time = sniff_lock();
    if !ISOLATED.with(|i| i.get()) || !veth_out() {
        eprintln!("note: no network namespace or veth of its own: skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        dir.path(),
        "[sources.siprec]\nenabled = false\n[sources.sniff]\nenabled = true\ninterface = \"pbxd0\"\nfilter = \"udp portrange 47500-47510\"\n",
    );
    d.wait_http("/readyz", 200, Duration::from_secs(5));
    replay_raw(&call_on_veth("fragments@iface", 63, Some(400)));
    let recs = d.wait_recordings(1, Duration::from_secs(15));
    assert_eq!(recording_of(&recs[0]).json["call_id"], "fragments@iface");
    let _ = ip_ok(&["link", "del", "pbxd0"]);
}

/// A named interface that goes away and comes back (a veth or VPN
/// interface recreated, under a new index) is captured again: a call on
/// it after its return is recorded (before: the capture stayed detached
/// from it until the daemon was restarted, and nothing said so).
#[test]
fn a_sniffed_interface_that_goes_away_and_comes_back_is_captured_again() {
    if !can_sniff() {
        return;
    }
    let _one_at_a_time = sniff_lock();
    if !ISOLATED.with(|i| i.get()) {
        eprintln!("note: no network namespace of its own: skipped (it adds an interface)");
        return;
    }
    let make = veth_out;
    if !make() {
        eprintln!("note: no veth interface here: skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        dir.path(),
        "[sources.siprec]\nenabled = false\n[sources.sniff]\nenabled = true\ninterface = \"pbxd0\"\n",
    );
    d.wait_http("/readyz", 200, Duration::from_secs(5));
    let call = |id: &str, seed: u64| call_on_veth(id, seed, None);
    replay_raw(&call("before@iface", 61));
    d.wait_recordings(1, Duration::from_secs(15));
    assert!(ip_ok(&["link", "del", "pbxd0"]));
    std::thread::sleep(Duration::from_millis(300));
    assert!(make());
    // (It says so when it has the interface again; at most 10 s.)
    let t = std::time::Instant::now();
    while !d.log().contains("the interface is back") && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    replay_raw(&call("after@iface", 62));
    let recs = d.wait_recordings(2, Duration::from_secs(15));
    let ids: Vec<String> = recs
        .iter()
        .map(|p| {
            recording_of(p).json["call_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(ids.contains(&"after@iface".to_string()), "{ids:?}");
    let _ = ip_ok(&["link", "del", "pbxd0"]);
}

/// Once idle (its first idle tick after start-up), the daemon gives back
/// the pages of its program and libraries that start-up mapped (they stay
/// in the page cache), and goes on working: the code it runs next is
/// mapped again.
#[test]
fn an_idle_daemon_gives_back_the_pages_start_up_mapped() {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let health: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let spool = dir.path().join("spool");
    let config = dir.path().join("pbx-edge.toml");
    let extra = "[sources.siprec]\nenabled = false\n";
    std::fs::write(&config, Daemon::config_text(&spool, health, extra)).unwrap();
    let log_path = dir.path().join("daemon.log");
    let child = Command::new(bin())
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env_remove("NOTIFY_SOCKET")
        .env("PBX_EDGE_LOG", "pbx_edge=debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .expect("start pbx-edge run");
    let d = Daemon {
        child,
        dir: dir.path().to_path_buf(),
        config,
        health,
        spool,
    };
    d.wait_http("/healthz", 200, Duration::from_secs(10));
    let t = std::time::Instant::now();
    let line = loop {
        let log = std::fs::read_to_string(&log_path).unwrap();
        if let Some(l) = log
            .lines()
            .find(|l| l.contains("unused pages of the program's files given back"))
        {
            break l.to_string();
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "nothing given back:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let kib: u64 = line
        .split("file_kib=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no size in {line:?}"));
    assert!(
        kib >= 1024,
        "start-up left more than a MiB of code mapped: {line}"
    );
    // Still working: readiness, the metrics (code not run since), status.
    d.wait_http("/readyz", 200, Duration::from_secs(10));
    let (code, metrics) = d.get("/metrics").expect("metrics");
    assert_eq!(code, 200);
    assert!(metrics.contains("pbx_edge_heap_bytes"), "{metrics}");
    let out = Command::new(bin())
        .args(["status", "--config"])
        .arg(&d.config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}
