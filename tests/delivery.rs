//! Delivery end to end: recordings in a spool directory, the delivery task
//! (in process, or as a child process killed with SIGKILL), and the
//! reference cloud receiver of `common::receiver` with injected faults.
//!
//! Child modes: this test binary re-runs itself with `PBX_DELIVERY_CHILD`
//! set to run only the delivery task (`child_delivery_process`), so that the
//! torture test can SIGKILL a real process. The ignored `bench_*` tests are
//! driven by `benches/upload.sh`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::receiver::{Fault, FaultAction, RandomFaults, Receiver, ReceiverOptions, TestPki};
use hyper::Method;
use pbx_edge::config::CloudProtocol;
use pbx_edge::delivery::{self, DeliverySettings, Filters};
use pbx_edge::spool::{Spool, State};
use pbx_edge::status::{readiness, render_metrics, SharedStatus, Status};
use pbx_edge::upload::CloudSettings;
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Write a recording pair the way `recording.rs` does (WAV renamed into
/// place first, then the JSON through a temp file). Returns the WAV's sha256.
fn write_recording(dir: &Path, id: &str, audio_bytes: usize, seed: u64) -> String {
    write_recording_with(dir, id, audio_bytes, seed, |_| {}).expect("write recording")
}

fn write_recording_with(
    dir: &Path,
    id: &str,
    audio_bytes: usize,
    seed: u64,
    edit: impl FnOnce(&mut serde_json::Value),
) -> std::io::Result<String> {
    use std::io::Write;
    let mut rng = fastrand::Rng::with_seed(seed);
    let data_len = (audio_bytes / 4 * 4) as u32;
    let mut wav = Vec::with_capacity(44 + data_len as usize);
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + data_len).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes());
    wav.extend_from_slice(&2u16.to_le_bytes());
    wav.extend_from_slice(&8000u32.to_le_bytes());
    wav.extend_from_slice(&32000u32.to_le_bytes());
    wav.extend_from_slice(&4u16.to_le_bytes());
    wav.extend_from_slice(&16u16.to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&data_len.to_le_bytes());
    wav.extend((0..data_len).map(|_| rng.u8(..)));
    let sha = hex::encode(Sha256::digest(&wav));
    let part = dir.join(format!(".{id}.wav.part"));
    let res = (|| {
        let mut f = std::fs::File::create(&part)?;
        f.write_all(&wav)?;
        f.sync_all()?;
        std::fs::rename(&part, dir.join(format!("{id}.wav")))?;
        let mut doc = serde_json::json!({
            "schema": "pbx-edge.recording/1",
            "recording_id": id,
            "agent_id": "test-agent",
            "source": "pcap",
            "call_id": format!("{id}@test"),
            "from": {"number": "+4930111", "name": "A"},
            "to": {"number": "200", "name": "B"},
            "direction": "inbound",
            "started_at": "2026-01-01T00:00:00Z",
            "answered_at": null,
            "ended_at": "2026-01-01T00:01:00Z",
            "duration_ms": (data_len / 32) as i64,
            "audio": {"format": "wav", "sample_rate": 8000, "channels": 2,
                      "bytes": wav.len(), "sha256": sha},
            "channels": [],
            "dtmf": [],
        });
        edit(&mut doc);
        let tmp = dir.join(format!(".{id}.json.tmp"));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(&doc)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(format!("{id}.json")))?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&part);
        let _ = std::fs::remove_file(dir.join(format!(".{id}.json.tmp")));
        let _ = std::fs::remove_file(dir.join(format!("{id}.wav")));
        return Err(e);
    }
    Ok(sha)
}

fn fast_settings(spool: &Path, url: &str, protocol: CloudProtocol) -> DeliverySettings {
    let mut cloud = CloudSettings::new(url, protocol);
    cloud.chunk_size = 64 << 10;
    cloud.timeout = Duration::from_secs(10);
    DeliverySettings {
        cloud: Some(cloud),
        max_parallel: 3,
        scan_interval: Duration::from_millis(100),
        backoff_base: Duration::from_millis(20),
        backoff_cap: Duration::from_millis(500),
        pause_retry: Duration::from_millis(500),
        ..DeliverySettings::new(spool)
    }
}

fn new_status() -> SharedStatus {
    Arc::new(Mutex::new(Status {
        version: "test",
        ..Status::default()
    }))
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn wait_for(what: &str, max: Duration, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < max,
            "timed out after {max:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Pairs (non-hidden `.wav`/`.json`) left in `dir`.
/// Delivery (tus, the fast settings) of the spool `dir` until `rx` holds
/// one call.
async fn tus_delivery_until_one_call(dir: &Path, rx: &Receiver) {
    let h = delivery::start_with(
        fast_settings(dir, &rx.url, CloudProtocol::Tus),
        new_status(),
    )
    .unwrap();
    wait_for("delivery", Duration::from_secs(10), || {
        rx.lock().calls.len() == 1
    })
    .await;
    h.shutdown().await;
}

fn pairs_left(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.') && (n.ends_with(".wav") || n.ends_with(".json")))
        .collect();
    v.sort();
    v
}

/// Every one of `n` calls delivered (within 10 s), then the pause over
/// (within 3 s).
async fn delivered_and_unpaused(rx: &Receiver, status: &SharedStatus, n: usize) {
    wait_for("all delivered", Duration::from_secs(10), || {
        rx.lock().calls.len() == n
    })
    .await;
    wait_for("unpaused", Duration::from_secs(3), || {
        cloud_status(status).paused.is_none()
    })
    .await;
}

/// Uploads pause (within 5 s) for `kind` (the metric says so) with a
/// `/readyz` cloud reason containing `why`; `ready`: whether `/readyz`
/// stays ready. (The tests' status has no spool of its own: one that is
/// fine is put in.)
async fn assert_paused(status: &SharedStatus, kind: &str, why: &str, ready: bool) {
    wait_for("pause", Duration::from_secs(5), || {
        cloud_status(status).paused.is_some()
    })
    .await;
    let mut st = status.lock().unwrap().clone();
    st.spool.writable = true;
    st.spool.free_bytes = u64::MAX;
    let (ok, parts) = readiness(&st);
    assert_eq!(ok, ready, "{parts:?}");
    assert!(parts["cloud"].contains(why), "{parts:?}");
    assert_eq!(st.cloud.pause_kind.as_deref(), Some(kind));
    let m = render_metrics(&st);
    let line = format!("pbx_edge_delivery_paused{{reason=\"{kind}\"}} 1");
    assert!(m.contains(&line), "{m}");
}

fn cloud_status(st: &SharedStatus) -> pbx_edge::status::CloudStatus {
    st.lock().unwrap().cloud.clone()
}

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pbx-edge"))
}

fn spool_cmd(config: &Path, args: &[&str]) -> (i32, String, String) {
    let o = Command::new(bin())
        .arg("spool")
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

// ---------------------------------------------------------------------------
// Happy paths
// ---------------------------------------------------------------------------

fn deliver_all(protocol: CloudProtocol, absolute_location: bool) {
    let rx = Receiver::start(ReceiverOptions {
        token: Some("s3cret-token".into()),
        absolute_location,
        ..ReceiverOptions::default()
    });
    let d = tempfile::tempdir().unwrap();
    let spool = d.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    let tok = d.path().join("token");
    std::fs::write(&tok, "s3cret-token\n").unwrap();
    let mut want = std::collections::BTreeMap::new();
    for (i, size) in [0usize, 1000, 65_536, 200_000, 300_001].iter().enumerate() {
        let id = format!("rec-{i}");
        want.insert(id.clone(), write_recording(&spool, &id, *size, i as u64));
    }
    // A recording still being written must be ignored.
    std::fs::write(spool.join(".rec-9.wav.part"), b"RIFF").unwrap();
    let mut s = fast_settings(&spool, &rx.url, protocol);
    if let Some(c) = s.cloud.as_mut() {
        c.token_file = tok;
    }
    let status = new_status();
    let rt = rt();
    rt.block_on(async {
        let h = delivery::start_with(s, status.clone()).unwrap();
        wait_for("5 calls", Duration::from_secs(20), || {
            rx.lock().calls.len() == 5
        })
        .await;
        wait_for("an empty spool", Duration::from_secs(5), || {
            pairs_left(&spool).is_empty()
        })
        .await;
        wait_for("status", Duration::from_secs(5), || {
            cloud_status(&status).delivered_total == 5
        })
        .await;
        h.shutdown().await;
    });
    let calls = rx.calls();
    for (id, sha) in &want {
        let c = &calls[id];
        assert_eq!(&c.sha256, sha, "{id}");
        assert_eq!(c.posts, 1, "{id}");
        assert_eq!(c.json["recording_id"], id.as_str());
    }
    let st = rx.lock();
    assert!(st.conflicts.is_empty());
    assert!(st.user_agents.iter().all(|u| u.starts_with("pbx-edge/")));
    assert!(st
        .authorization_seen
        .iter()
        .all(|a| a == "Bearer s3cret-token"));
    if protocol == CloudProtocol::Tus {
        assert_eq!(st.count("POST", "/v1/uploads", 201), 5);
        // 0+1 header-only.. 300 KB: ceil(len/64Ki) PATCHes each.
        assert!(st.count("PATCH", "/v1/uploads/", 204) >= 9);
        assert_eq!(st.count("POST", "/v1/calls", 201), 5);
    } else {
        assert_eq!(st.count("POST", "/v1/calls", 201), 5);
        assert_eq!(st.count("POST", "/v1/uploads", 201), 0);
    }
    drop(st);
    assert!(spool.join(".rec-9.wav.part").exists());
    let c = cloud_status(&status);
    assert_eq!(
        c.queue["delivered"], 0,
        "retention 0 removes delivered rows"
    );
    assert!(c.bytes_uploaded >= want.len() as u64 * 44);
    assert_eq!(c.attempts, 5);
    let st = status.lock().unwrap();
    let json = serde_json::to_string(&*st).unwrap();
    assert!(!json.contains("s3cret"), "the token leaked into /status");
    assert!(!render_metrics(&st).contains("s3cret"));
    assert!(render_metrics(&st).contains("pbx_edge_recordings_delivered_total 5"));
}

#[test]
fn tus_delivers_every_recording_and_empties_the_spool() {
    deliver_all(CloudProtocol::Tus, false);
}

#[test]
fn tus_with_absolute_locations() {
    deliver_all(CloudProtocol::Tus, true);
}

#[test]
fn multipart_delivers_every_recording() {
    deliver_all(CloudProtocol::Multipart, false);
}

#[test]
fn retention_keeps_delivered_recordings_and_filters_apply() {
    let rx = Receiver::start(ReceiverOptions::default());
    let d = tempfile::tempdir().unwrap();
    let spool = d.path().to_path_buf();
    write_recording(&spool, "keep-me", 5000, 1);
    write_recording_with(&spool, "too-short", 100, 2, |j| {
        j["duration_ms"] = 10.into()
    })
    .unwrap();
    write_recording_with(&spool, "internal", 5000, 3, |j| {
        j["direction"] = "internal".into()
    })
    .unwrap();
    write_recording_with(&spool, "blocked", 5000, 4, |j| {
        j["to"]["number"] = "+1900555".into()
    })
    .unwrap();
    let mut s = fast_settings(&spool, &rx.url, CloudProtocol::Tus);
    s.retention = Duration::from_secs(3600);
    s.filters = Filters {
        min_duration: Duration::from_millis(100),
        exclude_numbers: vec!["+1900*".into()],
        directions: vec!["inbound".into(), "outbound".into()],
        ..Filters::default()
    };
    s.keep_filtered = false;
    let status = new_status();
    rt().block_on(async {
        let h = delivery::start_with(s.clone(), status.clone()).unwrap();
        wait_for("1 call", Duration::from_secs(10), || {
            rx.lock().calls.len() == 1
        })
        .await;
        wait_for("filtered count", Duration::from_secs(5), || {
            cloud_status(&status).filtered_total == 3
        })
        .await;
        // keep_filtered: a new filtered recording stays.
        s.keep_filtered = true;
        h.reload_with(s.clone()).unwrap();
        write_recording_with(&spool, "kept-filtered", 5000, 5, |j| {
            j["direction"] = "internal".into()
        })
        .unwrap();
        wait_for("kept", Duration::from_secs(5), || {
            cloud_status(&status).queue.get("filtered") == Some(&1)
        })
        .await;
        h.shutdown().await;
    });
    assert!(rx.calls().contains_key("keep-me"));
    assert_eq!(
        pairs_left(&spool),
        vec![
            "keep-me.json",
            "keep-me.wav",
            "kept-filtered.json",
            "kept-filtered.wav"
        ]
    );
    let mut sp = Spool::open(&spool).unwrap();
    assert_eq!(sp.get("keep-me").unwrap().unwrap().state, State::Delivered);
    let f = sp.get("kept-filtered").unwrap().unwrap();
    assert_eq!(f.state, State::Filtered);
    assert!(f.filter_reason.unwrap().contains("direction internal"));
    assert_eq!(sp.counters().unwrap()["filtered"], 4);
    // Retention passed: delivered files go, the filtered one stays.
    assert_eq!(
        sp.expire_delivered(pbx_edge::spool::now_ms() + 3_600_001, s.retention)
            .unwrap(),
        vec!["keep-me"]
    );
    assert_eq!(
        pairs_left(&spool),
        vec!["kept-filtered.json", "kept-filtered.wav"]
    );
}

#[test]
fn bandwidth_limit_paces_uploads() {
    let rx = Receiver::start(ReceiverOptions::default());
    let d = tempfile::tempdir().unwrap();
    write_recording(d.path(), "bw1", 300_000, 1);
    write_recording(d.path(), "bw2", 300_000, 2);
    let mut s = fast_settings(d.path(), &rx.url, CloudProtocol::Tus);
    s.bandwidth_limit = 300_000; // 600 KB at 300 KB/s: about 2 s
    let t0 = Instant::now();
    rt().block_on(async {
        let h = delivery::start_with(s, new_status()).unwrap();
        wait_for("delivery", Duration::from_secs(15), || {
            rx.lock().calls.len() == 2
        })
        .await;
        h.shutdown().await;
    });
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(1600), "{took:?}");
    assert!(took < Duration::from_secs(20), "{took:?}");
}

/// A body that takes longer to send than `cloud.timeout` (a long call on a
/// slow or shared link) is given the time its size needs: `cloud.timeout`
/// bounds the wait for an answer, not the whole upload. (reqwest's
/// `read_timeout` runs from the request's start until the answer's headers
/// and is not renewed while the body is sent: with it, every upload longer
/// than `cloud.timeout` timed out and was retried forever.)
#[test]
fn an_upload_longer_than_the_timeout_is_not_cut_off() {
    for protocol in [CloudProtocol::Multipart, CloudProtocol::Tus] {
        let rx = Receiver::start(ReceiverOptions::default());
        let d = tempfile::tempdir().unwrap();
        write_recording(d.path(), "long", 600_000, 7);
        let mut s = fast_settings(d.path(), &rx.url, protocol);
        s.bandwidth_limit = 200_000; // 600 KB at 200 KB/s: about 3 s
        if let Some(c) = s.cloud.as_mut() {
            c.timeout = Duration::from_secs(1);
            c.chunk_size = 1 << 20; // tus: one PATCH of the whole file
        }
        let status = new_status();
        rt().block_on(async {
            let h = delivery::start_with(s, status.clone()).unwrap();
            wait_for("delivery", Duration::from_secs(20), || {
                rx.lock().calls.len() == 1
            })
            .await;
            h.shutdown().await;
        });
        let c = cloud_status(&status);
        assert_eq!(
            c.failures.get("timeout"),
            None,
            "{protocol:?}: {:?}",
            c.failures
        );
    }
}

#[test]
fn nothing_starts_outside_the_upload_window() {
    let rx = Receiver::start(ReceiverOptions::default());
    let d = tempfile::tempdir().unwrap();
    write_recording(d.path(), "w", 1000, 1);
    let now = delivery::local_minute_of_day(std::time::SystemTime::now());
    // A window that ends at this minute (it does not contain it).
    let (start, end) = ((now + 1380) % 1440, now);
    let w = format!(
        "{:02}:{:02}-{:02}:{:02}",
        start / 60,
        start % 60,
        end / 60,
        end % 60
    );
    let mut s = fast_settings(d.path(), &rx.url, CloudProtocol::Tus);
    s.upload_window = Some(w.parse().unwrap());
    let status = new_status();
    rt().block_on(async {
        let h = delivery::start_with(s.clone(), status.clone()).unwrap();
        wait_for("status", Duration::from_secs(5), || {
            cloud_status(&status).queue.get("queued") == Some(&1)
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(rx.lock().log.is_empty());
        assert!(cloud_status(&status).outside_upload_window);
        // The window opens (reload): delivered.
        s.upload_window = None;
        h.reload_with(s).unwrap();
        wait_for("delivery", Duration::from_secs(5), || {
            rx.lock().calls.len() == 1
        })
        .await;
        h.shutdown().await;
    });
}

#[test]
fn shutdown_within_the_grace_period_keeps_the_progress() {
    let rx = Receiver::start(ReceiverOptions::default());
    let d = tempfile::tempdir().unwrap();
    let sha = write_recording(d.path(), "long", 2_000_000, 1);
    let mut s = fast_settings(d.path(), &rx.url, CloudProtocol::Tus);
    s.bandwidth_limit = 200_000; // 10 s for the file
    s.shutdown_grace = Duration::from_secs(1);
    rt().block_on(async {
        let h = delivery::start_with(s.clone(), new_status()).unwrap();
        // Some progress saved (the first chunk), the upload still running.
        let sp = Spool::open(d.path()).unwrap();
        wait_for(
            "the first chunk in the spool",
            Duration::from_secs(8),
            || {
                // A read can meet the delivery task's write for a moment
                // (SQLITE_BUSY on a loaded machine): that is "not yet".
                sp.get("long")
                    .ok()
                    .flatten()
                    .is_some_and(|e| e.offset >= 64 << 10)
            },
        )
        .await;
        let t0 = Instant::now();
        h.shutdown().await;
        assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    });
    let e = Spool::open(d.path()).unwrap().get("long").unwrap().unwrap();
    assert_eq!(e.state, State::Uploading);
    assert!(e.location.is_some());
    assert!(e.offset >= 64 << 10, "{e:?}");
    assert!(rx.lock().calls.is_empty());
    // The next start continues from the server's offset.
    s.bandwidth_limit = 0;
    rt().block_on(async {
        let h = delivery::start_with(s, new_status()).unwrap();
        wait_for("delivery", Duration::from_secs(10), || {
            rx.lock().calls.len() == 1
        })
        .await;
        h.shutdown().await;
    });
    let st = rx.lock();
    assert_eq!(st.calls["long"].sha256, sha);
    assert_eq!(st.count("POST", "/v1/uploads", 201), 1);
    assert!(st.count("HEAD", "/v1/uploads/", 200) >= 1);
}

/// A shutdown given a deadline (the daemon's stop budget) ends the grace for
/// running uploads then, however long `shutdown_grace` is; the upload cut
/// short stays queued and is delivered at the next start.
#[test]
fn shutdown_within_a_deadline_cuts_the_grace_short_and_keeps_the_upload() {
    let rx = Receiver::start(ReceiverOptions::default());
    // The cloud takes the upload and does not answer its data for a minute.
    rx.push_fault(Fault::new(
        Some(Method::PATCH),
        "/v1/uploads/",
        FaultAction::Delay(Duration::from_secs(60)),
    ));
    let d = tempfile::tempdir().unwrap();
    let sha = write_recording(d.path(), "hung", 100_000, 5);
    let mut s = fast_settings(d.path(), &rx.url, CloudProtocol::Tus);
    if let Some(c) = s.cloud.as_mut() {
        c.timeout = Duration::from_secs(120);
    }
    s.shutdown_grace = Duration::from_secs(30);
    rt().block_on(async {
        let h = delivery::start_with(s.clone(), new_status()).unwrap();
        wait_for(
            "the upload's data in flight",
            Duration::from_secs(10),
            || {
                let st = rx.lock();
                st.count("POST", "/v1/uploads", 201) == 1 && st.in_flight > 0
            },
        )
        .await;
        let t0 = Instant::now();
        h.shutdown_within(Duration::from_secs(1)).await;
        // Not the 30 s grace (CONTRACT §1's 10 s is the bound that matters).
        assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    });
    assert!(rx.lock().calls.is_empty());
    let e = Spool::open(d.path()).unwrap().get("hung").unwrap().unwrap();
    assert!(matches!(e.state, State::Uploading | State::Queued), "{e:?}");
    // The next start delivers it.
    rt().block_on(async {
        let h = delivery::start_with(s, new_status()).unwrap();
        wait_for("delivery", Duration::from_secs(20), || {
            rx.lock().calls.len() == 1
        })
        .await;
        h.shutdown().await;
    });
    assert_eq!(rx.calls()["hung"].sha256, sha);
}

/// CONTRACT §1: `run` exits 0 within 10 s of SIGTERM, also while an upload
/// hangs on the cloud; the recording stays in the spool and is delivered
/// after a restart.
#[test]
fn sigterm_during_a_hanging_upload_exits_in_time_and_delivers_after_restart() {
    let rx = Receiver::start(ReceiverOptions::default());
    rx.push_fault(Fault::new(
        Some(Method::PATCH),
        "/v1/uploads/",
        FaultAction::Delay(Duration::from_secs(60)),
    ));
    let d = tempfile::tempdir().unwrap();
    let spool = d.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    let sha = write_recording(&spool, "term", 100_000, 6);
    let extra = format!(
        "[cloud]\nurl = \"{}\"\n[sources.siprec]\nenabled = false\n",
        rx.url
    );
    let mut daemon = common::daemon::Daemon::start(d.path(), &extra);
    let t = Instant::now();
    while !(rx.lock().count("POST", "/v1/uploads", 201) == 1 && rx.lock().in_flight > 0) {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no upload started; log:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
    let t0 = Instant::now();
    daemon.signal(libc::SIGTERM);
    let code = daemon.wait_exit(Duration::from_secs(10));
    assert_eq!(
        code,
        Some(0),
        "exit within 10 s of SIGTERM (after {:?}); log:\n{}",
        t0.elapsed(),
        daemon.log()
    );
    assert!(rx.lock().calls.is_empty());
    assert!(spool.join("term.wav").is_file());
    // The next start delivers it (the fault is spent).
    let mut daemon = common::daemon::Daemon::start(d.path(), &extra);
    let t = Instant::now();
    while rx.lock().calls.is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "not delivered after the restart; log:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(rx.calls()["term"].sha256, sha);
    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.wait_exit(Duration::from_secs(10)), Some(0));
}

// ---------------------------------------------------------------------------
// The answer table
// ---------------------------------------------------------------------------

#[test]
fn transient_errors_back_off_and_retry_after_is_obeyed() {
    let rx = Receiver::start(ReceiverOptions::default());
    for s in [500, 502, 503, 504, 408] {
        rx.push_fault(Fault::new(
            Some(Method::POST),
            "/v1/uploads",
            FaultAction::Status(s, None),
        ));
    }
    rx.push_fault(Fault::new(
        Some(Method::POST),
        "/v1/calls",
        FaultAction::Status(429, Some("2".into())),
    ));
    let d = tempfile::tempdir().unwrap();
    let sha = write_recording(d.path(), "r", 10_000, 7);
    let mut s = fast_settings(d.path(), &rx.url, CloudProtocol::Tus);
    s.backoff_cap = Duration::from_secs(5);
    let status = new_status();
    let t0 = Instant::now();
    rt().block_on(async {
        let h = delivery::start_with(s, status.clone()).unwrap();
        wait_for("the 429", Duration::from_secs(20), || {
            rx.lock().count("POST", "/v1/calls", 429) == 1
        })
        .await;
        // The recording shows the last error and waits. The receiver counts
        // the 429 before the client has read it, so wait for the spool.
        let sp = Spool::open(d.path()).unwrap();
        wait_for("the 429 in the spool", Duration::from_secs(2), || {
            let e = sp.get("r").unwrap().unwrap();
            e.last_error.as_deref() == Some("HTTP 429")
        })
        .await;
        let e = sp.get("r").unwrap().unwrap();
        assert_eq!(e.state, State::Uploading, "tus location kept");
        wait_for("delivery", Duration::from_secs(10), || {
            rx.lock().calls.len() == 1
        })
        .await;
        // Measured on the receiver's clock (the 429 answered, the next post
        // answered), not from when this thread noticed the 429.
        let waited = {
            let st = rx.lock();
            let t429 = st.answered_at("POST", "/v1/calls", 429)[0];
            st.answered_at("POST", "/v1/calls", 201)[0].duration_since(t429)
        };
        assert!(
            waited >= Duration::from_millis(1900),
            "Retry-After 2 s not obeyed: {waited:?}"
        );
        h.shutdown().await;
    });
    // Five backoffs (1,2,4,8,16 × 20 ms ceilings) plus the 2 s Retry-After.
    assert!(t0.elapsed() >= Duration::from_secs(2));
    assert_eq!(rx.calls()["r"].sha256, sha);
    let c = cloud_status(&status);
    assert_eq!(c.failures["server"], 5, "{:?}", c.failures);
    assert_eq!(c.failures["throttled"], 1);
    assert_eq!(c.attempts, 7);
    // Only one upload was created: the 429 came after it.
    assert_eq!(rx.lock().count("POST", "/v1/uploads", 201), 1);
}

#[test]
fn payment_required_pauses_all_uploads_then_resumes() {
    let rx = Receiver::start(ReceiverOptions::default());
    rx.lock().payment_required_until = Some(Instant::now() + Duration::from_secs(2));
    let d = tempfile::tempdir().unwrap();
    for i in 0..6 {
        write_recording(d.path(), &format!("p{i}"), 3000, i);
    }
    let status = new_status();
    rt().block_on(async {
        let mut s = fast_settings(d.path(), &rx.url, CloudProtocol::Multipart);
        s.pause_retry = Duration::from_millis(700);
        let h = delivery::start_with(s, status.clone()).unwrap();
        // The pause does not make it unready: it records and spools
        // (CONTRACT §4's 402 row).
        assert_paused(&status, "payment", "402", true).await;
        // While paused, at most one probe per pause_retry: few requests.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let n402 = rx.lock().count("POST", "/v1/calls", 402);
        assert!(n402 <= 6, "{n402} requests during the pause");
        delivered_and_unpaused(&rx, &status, 6).await;
        let st = status.lock().unwrap().clone();
        assert_eq!(readiness(&st).1["cloud"], "ok");
        h.shutdown().await;
    });
    assert!(pairs_left(d.path()).is_empty());
}

/// A tus server whose creation answers a `Location` on another origin is
/// refused: nothing is sent there (recordings leave the machine only to the
/// configured cloud), every upload pauses with the reason on `/readyz` (not
/// ready: the operator's to fix) and in the metrics, the recordings wait in
/// the spool, the server is probed once per `pause_retry` (not retried
/// back to back), and uploads resume once it answers its own origin again.
#[test]
fn tus_location_on_another_origin_pauses_uploads_visibly() {
    let rx = Receiver::start(ReceiverOptions::default());
    // This machine, but a port nothing listens on (another origin, though
    // loopback): had the upload followed the Location, it would fail as a
    // connection error, not be refused.
    rx.lock().foreign_location = Some("http://127.0.0.1:9".into());
    let d = tempfile::tempdir().unwrap();
    for i in 0..4 {
        write_recording(d.path(), &format!("o{i}"), 3000, i);
    }
    let status = new_status();
    rt().block_on(async {
        let mut s = fast_settings(d.path(), &rx.url, CloudProtocol::Tus);
        s.pause_retry = Duration::from_millis(600);
        let h = delivery::start_with(s, status.clone()).unwrap();
        assert_paused(
            &status,
            "foreign_location",
            "another origin (http://127.0.0.1:9)",
            false,
        )
        .await;
        // Paused: one probe per pause_retry, not a creation per recording
        // and backoff step.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let creations = rx.lock().count("POST", "/v1/uploads", 201);
        assert!(creations <= 6, "{creations} creations while paused");
        assert!(rx.lock().calls.is_empty());
        assert_eq!(pairs_left(d.path()).len(), 8);
        // The server fixed: the recordings go.
        rx.lock().foreign_location = None;
        delivered_and_unpaused(&rx, &status, 4).await;
        h.shutdown().await;
    });
    // No request ever carried anything to the PATCH location's origin
    // (the receiver saw no PATCH while the Location was foreign).
    assert!(pairs_left(d.path()).is_empty());
}

/// CONTRACT §4: the creation's `Location` is "absolute or relative to
/// `url`": an absolute one that names this machine by another loopback
/// name (`localhost` for `127.0.0.1`, as a tus server naming itself by its
/// listening address answers) with the same scheme and port is the same
/// server: followed, and every recording is delivered. (Another port or
/// host: refused, above.)
#[test]
fn tus_location_on_another_loopback_name_is_followed() {
    let rx = Receiver::start(ReceiverOptions::default());
    let other = rx.url.replace("127.0.0.1", "localhost");
    assert_ne!(other, rx.url, "the receiver's url {}", rx.url);
    rx.lock().foreign_location = Some(other);
    let d = tempfile::tempdir().unwrap();
    for i in 0..3 {
        write_recording(d.path(), &format!("l{i}"), 3000, i);
    }
    let status = new_status();
    rt().block_on(async {
        let s = fast_settings(d.path(), &rx.url, CloudProtocol::Tus);
        let h = delivery::start_with(s, status.clone()).unwrap();
        delivered_and_unpaused(&rx, &status, 3).await;
        h.shutdown().await;
    });
    assert!(pairs_left(d.path()).is_empty());
    assert!(rx.lock().count("PATCH", "", 204) >= 3);
}

#[test]
fn refused_token_pauses_until_a_reload_brings_a_good_one() {
    let rx = Receiver::start(ReceiverOptions {
        token: Some("good-token".into()),
        ..ReceiverOptions::default()
    });
    let d = tempfile::tempdir().unwrap();
    let spool = d.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    write_recording(&spool, "t1", 3000, 1);
    let tok = d.path().join("token");
    std::fs::write(&tok, "bad-token").unwrap();
    let mut s = fast_settings(&spool, &rx.url, CloudProtocol::Tus);
    s.pause_retry = Duration::from_secs(300); // CONTRACT value: only a reload helps soon
    if let Some(c) = s.cloud.as_mut() {
        c.token_file = tok.clone();
    }
    let status = new_status();
    rt().block_on(async {
        let h = delivery::start_with(s.clone(), status.clone()).unwrap();
        wait_for("pause", Duration::from_secs(5), || {
            cloud_status(&status).paused.is_some()
        })
        .await;
        {
            let st = status.lock().unwrap();
            let (ok, parts) = readiness(&st);
            assert!(!ok);
            assert!(parts["cloud"].contains("token"), "{parts:?}");
            let json = serde_json::to_string(&*st).unwrap();
            assert!(!json.contains("bad-token"));
        }
        std::fs::write(&tok, "good-token\n").unwrap();
        h.reload_with(s.clone()).unwrap();
        wait_for("delivery", Duration::from_secs(5), || {
            rx.lock().calls.len() == 1
        })
        .await;
        h.shutdown().await;
    });
    assert_eq!(rx.lock().count("POST", "/v1/uploads", 401), 1);
}

#[test]
fn refused_recording_fails_with_the_body_and_spool_retry_requeues() {
    let rx = Receiver::start(ReceiverOptions::default());
    rx.lock().refuse_ids.push("bad".into());
    let d = tempfile::tempdir().unwrap();
    let spool = d.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    write_recording(&spool, "bad", 3000, 1);
    write_recording(&spool, "good", 3000, 2);
    let config = d.path().join("pbx-edge.toml");
    std::fs::write(&config, format!("[spool]\ndir = \"{}\"\n", spool.display())).unwrap();
    let status = new_status();
    rt().block_on(async {
        let h = delivery::start_with(
            fast_settings(&spool, &rx.url, CloudProtocol::Tus),
            status.clone(),
        )
        .unwrap();
        wait_for(
            "good delivered, bad failed",
            Duration::from_secs(10),
            || cloud_status(&status).queue.get("failed") == Some(&1) && rx.lock().calls.len() == 1,
        )
        .await;
        // Never retried by itself.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(rx.lock().count("POST", "/v1/calls", 422), 1);
        let (code, out, err) = spool_cmd(&config, &["list"]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("bad") && out.contains("failed"), "{out}");
        assert!(out.contains("HTTP 422"), "{out}");
        assert!(out.contains("recording refused by policy"), "{out}");
        let e = Spool::open(&spool).unwrap().get("bad").unwrap().unwrap();
        assert_eq!(e.failed_status, Some(422));
        assert!(e.failed_body.unwrap().contains("refused by policy"));
        // The cloud changes its mind; `spool retry` (while delivery runs).
        rx.lock().refuse_ids.clear();
        let (code, out, _) = spool_cmd(&config, &["retry", "bad"]);
        assert_eq!(code, 0);
        assert!(out.contains("queued"));
        wait_for("bad delivered", Duration::from_secs(10), || {
            rx.lock().calls.len() == 2
        })
        .await;
        let (code, _, err) = spool_cmd(&config, &["retry", "nope"]);
        assert_eq!(code, 1);
        assert!(err.contains("no recording"), "{err}");
        h.shutdown().await;
    });
    assert!(pairs_left(&spool).is_empty());
}

/// A local error that passes (here the FLAC copy cannot be written: a
/// directory stands where its temporary file goes, as a full disk or too
/// many open files would stop it) is retried with backoff, never `failed`;
/// the recording goes once the error is gone. A malformed recording (a JSON
/// that does not parse) is `failed` at once.
#[test]
fn a_local_error_that_passes_is_retried_not_failed() {
    let rx = Receiver::start(ReceiverOptions::default());
    let d = tempfile::tempdir().unwrap();
    write_recording(d.path(), "r", 3000, 5);
    write_recording(d.path(), "broken", 3000, 6);
    std::fs::write(d.path().join("broken.json"), b"{not json").unwrap();
    let blocker = d.path().join(".r.flac.tmp");
    std::fs::create_dir(&blocker).unwrap();
    let mut s = fast_settings(d.path(), &rx.url, CloudProtocol::Tus);
    if let Some(c) = s.cloud.as_mut() {
        c.audio_format = pbx_edge::config::AudioFormat::Flac;
    }
    let status = new_status();
    rt().block_on(async {
        let h = delivery::start_with(s, status.clone()).unwrap();
        let sp = Spool::open(d.path()).unwrap();
        wait_for("two tries of r", Duration::from_secs(10), || {
            sp.get("r").unwrap().is_some_and(|e| e.retries >= 2)
        })
        .await;
        let e = sp.get("r").unwrap().unwrap();
        assert_ne!(e.state, State::Failed, "{e:?}");
        assert!(
            e.last_error
                .as_deref()
                .is_some_and(|m| m.contains("cannot be read now")),
            "{e:?}"
        );
        wait_for("broken failed", Duration::from_secs(10), || {
            sp.get("broken")
                .unwrap()
                .is_some_and(|e| e.state == State::Failed)
        })
        .await;
        std::fs::remove_dir(&blocker).unwrap();
        wait_for("r delivered", Duration::from_secs(10), || {
            rx.lock().calls.len() == 1
        })
        .await;
        h.shutdown().await;
    });
    assert!(rx.calls().contains_key("r"));
    assert!(cloud_status(&status).failures["local_io"] >= 3);
}

#[test]
fn spool_purge_and_retry_all_from_the_command_line() {
    let d = tempfile::tempdir().unwrap();
    let spool = d.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    for id in ["a", "b", "c"] {
        write_recording(&spool, id, 1000, 1);
    }
    let config = d.path().join("pbx-edge.toml");
    std::fs::write(&config, format!("[spool]\ndir = \"{}\"\n", spool.display())).unwrap();
    // No daemon: list adopts what is there.
    let (code, out, _) = spool_cmd(&config, &["list"]);
    assert_eq!(code, 0);
    assert!(out.contains("3 recordings: 3 recorded"), "{out}");
    {
        let sp = Spool::open(&spool).unwrap();
        for id in ["a", "b"] {
            sp.mark_queued(id, 0).unwrap();
            sp.begin_attempt(id, 0).unwrap();
            sp.mark_failed(id, 400, "nope", 0).unwrap();
        }
    }
    let (code, out, _) = spool_cmd(&config, &["retry", "--all-failed"]);
    assert_eq!(code, 0);
    assert!(out.contains("2 failed recordings queued again"), "{out}");
    // Nothing to retry for a recording not waiting or failed (it said
    // "queued for the next attempt" and did nothing).
    let (code, _, err) = spool_cmd(&config, &["retry", "c"]);
    assert_eq!(code, 1);
    assert!(err.contains("c is recorded: nothing to retry"), "{err}");
    let (code, out, _) = spool_cmd(&config, &["purge", "c"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        pairs_left(&spool),
        vec!["a.json", "a.wav", "b.json", "b.wav"]
    );
    let (code, _, err) = spool_cmd(&config, &["purge", "c"]);
    assert_eq!(code, 1, "{err}");
    let (code, _, err) = spool_cmd(&config, &["purge", "../etc/passwd"]);
    assert_eq!(code, 1);
    assert!(err.contains("not a recording id"), "{err}");
    let (code, _, _) = spool_cmd(&config, &["retry"]);
    assert_eq!(code, 2);
}

/// A data-subject request: `spool purge --number` removes every recording
/// of a number whatever its spelling and state (here: one delivered, one
/// failed, one queued), `--before` those of calls before a date, both
/// together those matching both; the output names the recordings, never
/// the number; `--dry-run` removes nothing.
#[test]
fn spool_purge_by_number_and_date() {
    let d = tempfile::tempdir().unwrap();
    let spool = d.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    let party = |n: &str| serde_json::json!({ "number": n });
    for (id, from, to, started) in [
        ("r1", "+49 30 1234567", "2001", "2026-10-01T10:00:00.000Z"),
        ("r2", "2002", "0301234567", "2026-11-15T10:00:00.000Z"),
        ("r3", "2003", "+4930999999", "2026-10-20T10:00:00.000Z"),
        ("r4", "004930 1234567", "2004", "2026-11-20T10:00:00.000Z"),
        ("r5", "2005", "+15550001111", "2026-11-25T10:00:00.000Z"),
    ] {
        write_recording_with(&spool, id, 800, 1, |j| {
            j["from"] = party(from);
            j["to"] = party(to);
            j["started_at"] = started.into();
        })
        .unwrap();
    }
    let config = d.path().join("pbx-edge.toml");
    std::fs::write(&config, format!("[spool]\ndir = \"{}\"\n", spool.display())).unwrap();
    let (code, _, _) = spool_cmd(&config, &["list"]);
    assert_eq!(code, 0);
    {
        let mut sp = Spool::open(&spool).unwrap();
        sp.mark_queued("r1", 0).unwrap();
        sp.begin_attempt("r1", 0).unwrap();
        sp.mark_delivered("r1", 0).unwrap();
        sp.mark_queued("r2", 0).unwrap();
        sp.begin_attempt("r2", 0).unwrap();
        sp.mark_failed("r2", 400, "nope", 0).unwrap();
        sp.mark_queued("r4", 0).unwrap();
    }
    let number = "+49 (30) 123-4567";
    let (code, out, err) = spool_cmd(&config, &["purge", "--number", number, "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("3 recordings of the number given would be removed: r1, r2, r4"),
        "{out}"
    );
    assert_eq!(pairs_left(&spool).len(), 10);
    // One that cannot be removed (a directory where its FLAC copy belongs)
    // does not stop the others; it is named, and the command fails.
    let stuck = spool.join(".r4.flac");
    std::fs::create_dir(&stuck).unwrap();
    let (code, out, err) = spool_cmd(&config, &["purge", "--number", number]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("2 recordings of the number given removed from the spool: r1, r2"),
        "{out}"
    );
    assert!(
        err.contains("1 recordings of the number given could not be removed")
            && err.contains("r4:"),
        "{err}"
    );
    std::fs::remove_dir(&stuck).unwrap();
    let (code, out, err) = spool_cmd(&config, &["purge", "r4"]);
    assert_eq!(code, 0, "{out}{err}");
    for digits in ["1234567", "4930", "+49"] {
        assert!(!out.contains(digits) && !err.contains(digits), "{out}{err}");
    }
    assert_eq!(
        pairs_left(&spool),
        vec!["r3.json", "r3.wav", "r5.json", "r5.wav"]
    );
    let sp = Spool::open(&spool).unwrap();
    for id in ["r1", "r2", "r4"] {
        assert!(sp.get(id).unwrap().is_none(), "{id}");
    }
    // Both: a number and a date.
    let (code, out, _) = spool_cmd(
        &config,
        &[
            "purge",
            "--number",
            "+1 555 000 1111",
            "--before",
            "2026-11-01",
        ],
    );
    assert_eq!(code, 0);
    assert!(out.contains("0 recordings"), "{out}");
    let (code, out, _) = spool_cmd(&config, &["purge", "--before", "2026-11-01"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("1 recordings started before the date given removed from the spool: r3"),
        "{out}"
    );
    assert_eq!(pairs_left(&spool), vec!["r5.json", "r5.wav"]);
    // Bad arguments remove nothing.
    for args in [
        &["purge", "--before", "last week"][..],
        &["purge", "--number", "none"][..],
        &["purge", "r5", "--number", "1"][..],
        &["purge"][..],
    ] {
        let (code, _, err) = spool_cmd(&config, args);
        assert_eq!(code, 2, "{args:?}: {err}");
    }
    assert_eq!(pairs_left(&spool), vec!["r5.json", "r5.wav"]);
}

// ---------------------------------------------------------------------------
// tus resume paths
// ---------------------------------------------------------------------------

#[test]
fn broken_connection_mid_chunk_resumes_from_head() {
    let rx = Receiver::start(ReceiverOptions::default());
    // Second PATCH breaks after 10 000 bytes; a checksummed partial chunk is
    // discarded by the server, so the client must HEAD and resend it.
    rx.push_fault(Fault::new(
        Some(Method::PATCH),
        "/v1/uploads/",
        FaultAction::Delay(Duration::ZERO),
    ));
    rx.push_fault(Fault::new(
        Some(Method::PATCH),
        "/v1/uploads/",
        FaultAction::ResetAfter(10_000),
    ));
    // Then a 409 (offset moved) on the next PATCH.
    rx.push_fault(Fault::new(
        Some(Method::PATCH),
        "/v1/uploads/",
        FaultAction::Status(409, None),
    ));
    let d = tempfile::tempdir().unwrap();
    let sha = write_recording(d.path(), "big", 500_000, 3);
    let status = new_status();
    rt().block_on(async {
        let h = delivery::start_with(
            fast_settings(d.path(), &rx.url, CloudProtocol::Tus),
            status.clone(),
        )
        .unwrap();
        wait_for("delivery", Duration::from_secs(15), || {
            rx.lock().calls.len() == 1
        })
        .await;
        h.shutdown().await;
    });
    let st = rx.lock();
    assert_eq!(st.calls["big"].sha256, sha);
    assert_eq!(
        st.count("POST", "/v1/uploads", 201),
        1,
        "one upload, resumed"
    );
    assert!(st.count("HEAD", "/v1/uploads/", 200) >= 2, "{:?}", st.log);
    assert_eq!(st.count("PATCH", "/v1/uploads/", 0), 1);
    assert_eq!(st.count("PATCH", "/v1/uploads/", 409), 1);
    // The 409 comes before the body was read: the client may see it, or a
    // broken pipe when the server closes; either way it resumes.
    assert!(cloud_status(&status).failures["connection"] >= 1);
}

#[test]
fn expired_upload_starts_again() {
    let rx = Receiver::start(ReceiverOptions::default());
    rx.lock().expire_next_upload = true;
    let d = tempfile::tempdir().unwrap();
    let sha = write_recording(d.path(), "x", 100_000, 9);
    rt().block_on(async {
        tus_delivery_until_one_call(d.path(), &rx).await;
    });
    let st = rx.lock();
    assert_eq!(st.calls["x"].sha256, sha);
    assert_eq!(st.count("PATCH", "/v1/uploads/", 410), 1);
    assert_eq!(st.count("POST", "/v1/uploads", 201), 2);
}

/// Delivery of `first`, then (delivery still running) of `second`, both
/// 100 kB (two PATCHes each): with `rx`'s checksum behaviour.
fn two_recordings_one_after_the_other(rx: &Receiver) {
    let d = tempfile::tempdir().unwrap();
    let a = write_recording(d.path(), "first", 100_000, 21);
    let status = new_status();
    rt().block_on(async {
        let h = delivery::start_with(
            fast_settings(d.path(), &rx.url, CloudProtocol::Tus),
            status.clone(),
        )
        .unwrap();
        wait_for("first delivered", Duration::from_secs(10), || {
            rx.lock().calls.len() == 1
                || cloud_status(&status)
                    .queue
                    .get("failed")
                    .copied()
                    .unwrap_or(0)
                    > 0
        })
        .await;
        assert_eq!(rx.lock().calls.len(), 1, "{:?}", cloud_status(&status));
        let b = write_recording(d.path(), "second", 100_000, 22);
        wait_for("second delivered", Duration::from_secs(10), || {
            rx.lock().calls.len() == 2
        })
        .await;
        h.shutdown().await;
        let st = rx.lock();
        assert_eq!(st.calls["first"].sha256, a);
        assert_eq!(st.calls["second"].sha256, b);
    });
    assert!(pairs_left(d.path()).is_empty());
    let failed = cloud_status(&status).queue.get("failed").copied();
    assert_eq!(failed.unwrap_or(0), 0);
}

/// Every PATCH in `checksums` carried `Upload-Checksum` (`with`), or none did.
fn all_patches(checksums: &[bool], with: bool) {
    assert!(checksums.iter().all(|c| *c == with), "{checksums:?}");
}

/// A tus server with the checksum extension but without sha256 that says
/// so (`OPTIONS`): PATCHes go without `Upload-Checksum`, asked once.
#[test]
fn tus_checksum_is_left_out_when_options_lists_no_sha256() {
    let rx = Receiver::start(ReceiverOptions::default());
    rx.lock().checksum_algorithms = Some(vec!["sha1", "md5"]);
    two_recordings_one_after_the_other(&rx);
    let st = rx.lock();
    assert_eq!(st.count("OPTIONS", "/v1/uploads", 204), 1, "{:?}", st.log);
    assert_eq!(st.count("PATCH", "/v1/uploads/", 400), 0, "{:?}", st.log);
    assert!(st.patch_checksums.len() >= 4);
    all_patches(&st.patch_checksums, false);
}

/// The same server not answering `OPTIONS`: its 400 to the first PATCH
/// with a sha256 checksum is retried at once without one (never `failed`),
/// and no checksum goes to it after that.
#[test]
fn tus_400_to_a_sha256_checksum_is_retried_without_and_learned() {
    let rx = Receiver::start(ReceiverOptions::default());
    rx.lock().checksum_algorithms = Some(vec!["md5"]);
    rx.lock().options_silent = true;
    two_recordings_one_after_the_other(&rx);
    let st = rx.lock();
    assert_eq!(st.count("OPTIONS", "/v1/uploads", 404), 1, "{:?}", st.log);
    assert_eq!(st.count("PATCH", "/v1/uploads/", 400), 1, "{:?}", st.log);
    assert_eq!(st.patch_checksums.first(), Some(&true));
    all_patches(&st.patch_checksums[1..], false);
}

/// A 400 to the chunk sent again without a checksum is the recording's
/// refusal (CONTRACT §4): `failed` with the answer, not retried for ever.
#[test]
fn tus_400_without_a_checksum_still_fails_the_recording() {
    let rx = Receiver::start(ReceiverOptions::default());
    rx.lock().patch_400 = 2;
    let d = tempfile::tempdir().unwrap();
    write_recording(d.path(), "bad", 3000, 23);
    let status = new_status();
    rt().block_on(async {
        let h = delivery::start_with(
            fast_settings(d.path(), &rx.url, CloudProtocol::Tus),
            status.clone(),
        )
        .unwrap();
        wait_for("failed", Duration::from_secs(10), || {
            cloud_status(&status).queue.get("failed") == Some(&1)
        })
        .await;
        h.shutdown().await;
    });
    let st = rx.lock();
    assert_eq!(st.count("PATCH", "/v1/uploads/", 400), 2, "{:?}", st.log);
    assert_eq!(st.patch_checksums, [true, false]);
    assert!(st.calls.is_empty());
}

/// An `OPTIONS` answered 503 (a busy server) teaches nothing: asked again
/// at the next upload.
#[test]
fn tus_options_answered_503_is_asked_again() {
    let rx = Receiver::start(ReceiverOptions::default());
    rx.lock().checksum_algorithms = Some(vec!["sha256"]);
    rx.push_fault(Fault::new(
        Some(Method::OPTIONS),
        "/v1/uploads",
        FaultAction::Status(503, None),
    ));
    two_recordings_one_after_the_other(&rx);
    let st = rx.lock();
    assert_eq!(st.count("OPTIONS", "/v1/uploads", 503), 1, "{:?}", st.log);
    assert_eq!(st.count("OPTIONS", "/v1/uploads", 204), 1, "{:?}", st.log);
    all_patches(&st.patch_checksums, true);
}

/// A server that lists sha256 in its `OPTIONS` answer gets checksums.
#[test]
fn tus_checksum_is_sent_to_a_server_that_takes_sha256() {
    let rx = Receiver::start(ReceiverOptions::default());
    rx.lock().checksum_algorithms = Some(vec!["sha1", "sha256"]);
    two_recordings_one_after_the_other(&rx);
    let st = rx.lock();
    assert_eq!(st.count("OPTIONS", "/v1/uploads", 204), 1, "{:?}", st.log);
    all_patches(&st.patch_checksums, true);
}

/// A saved tus upload of another length than the file now sent (its WAV
/// was being sent when a reload switched to FLAC, or the other way round)
/// is not continued: a new upload starts, and the recording is delivered
/// whole. Before, the file was appended to the other upload, which never
/// completed: the call record was refused (422) and the recording failed.
#[test]
fn a_saved_upload_of_another_length_starts_again() {
    let rx = Receiver::start(ReceiverOptions::default());
    let d = tempfile::tempdir().unwrap();
    let sha = write_recording(d.path(), "x", 50_000, 11);
    let size = std::fs::metadata(d.path().join("x.wav")).unwrap().len();
    rt().block_on(async {
        // An upload of another length at the server, saved as this
        // recording's upload.
        let r = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .post(format!("{}/v1/uploads", rx.url))
            .header("Tus-Resumable", "1.0.0")
            .header("Upload-Length", (size + 1000).to_string())
            // filename x.wav, recording_id x (base64)
            .header("Upload-Metadata", "filename eC53YXY=,recording_id eA==")
            .body("")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
        let loc = r.headers()["location"].to_str().unwrap().to_string();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let mut sp = Spool::open(d.path()).unwrap();
        sp.scan(now).unwrap();
        assert!(sp.mark_queued("x", now).unwrap());
        assert!(sp.begin_attempt("x", now).unwrap());
        assert!(sp.checkpoint("x", &loc, 0, now).unwrap());
        drop(sp);
        tus_delivery_until_one_call(d.path(), &rx).await;
    });
    let st = rx.lock();
    assert_eq!(st.calls["x"].sha256, sha);
    assert_eq!(st.count("POST", "/v1/uploads", 201), 2, "a new upload");
    assert_eq!(st.count("POST", "/v1/calls", 422), 0);
}

#[test]
fn slow_answers_within_the_timeout_succeed_and_beyond_it_are_retried() {
    let rx = Receiver::start(ReceiverOptions::default());
    rx.push_fault(Fault::new(
        Some(Method::POST),
        "/v1/calls",
        FaultAction::Delay(Duration::from_millis(1500)),
    ));
    rx.push_fault(Fault::new(
        Some(Method::POST),
        "/v1/calls",
        FaultAction::Delay(Duration::from_millis(500)),
    ));
    let d = tempfile::tempdir().unwrap();
    write_recording(d.path(), "slow", 2000, 1);
    let mut s = fast_settings(d.path(), &rx.url, CloudProtocol::Tus);
    if let Some(c) = s.cloud.as_mut() {
        c.timeout = Duration::from_secs(1);
    }
    let status = new_status();
    rt().block_on(async {
        let h = delivery::start_with(s, status.clone()).unwrap();
        wait_for("delivery", Duration::from_secs(10), || {
            rx.lock().calls.len() == 1
        })
        .await;
        h.shutdown().await;
    });
    // The first answer came after the 1 s timeout: a timeout failure, then
    // the 500 ms answer was waited for. (The receiver may still have stored
    // the first post: the second then gets 200, "already accepted".)
    let c = cloud_status(&status);
    assert_eq!(c.failures.get("timeout"), Some(&1), "{:?}", c.failures);
    assert!(rx.calls()["slow"].posts >= 1);
    assert_eq!(rx.lock().count("POST", "/v1/calls", 201), 1);
}

// ---------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------

fn tls_run(
    pki_server: &TestPki,
    ca_pem: &str,
    client_cert: bool,
) -> (Receiver, SharedStatus, usize) {
    let rx = Receiver::start(ReceiverOptions {
        tls: Some(pki_server.tls(client_cert)),
        ..ReceiverOptions::default()
    });
    let d = tempfile::tempdir().unwrap();
    let spool = d.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    write_recording(&spool, "tls", 70_000, 1);
    let ca = d.path().join("ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    let mut s = fast_settings(&spool, &rx.url, CloudProtocol::Tus);
    if let Some(c) = s.cloud.as_mut() {
        c.ca_file = Some(ca);
        if client_cert {
            let (cp, kp) = (d.path().join("client.pem"), d.path().join("client.key"));
            std::fs::write(&cp, &pki_server.client_cert_pem).unwrap();
            std::fs::write(&kp, &pki_server.client_key_pem).unwrap();
            c.client_cert = Some(cp);
            c.client_key = Some(kp);
        }
    }
    let status = new_status();
    rt().block_on(async {
        let h = delivery::start_with(s, status.clone()).unwrap();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20)
            && rx.lock().calls.is_empty()
            && cloud_status(&status).paused.is_none()
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        h.shutdown().await;
    });
    let n = rx.lock().calls.len();
    (rx, status, n)
}

#[test]
fn tls_with_the_configured_ca_works() {
    let pki = TestPki::new("good");
    let (rx, status, n) = tls_run(&pki, &pki.ca_pem, false);
    assert_eq!(n, 1, "{:?}", cloud_status(&status));
    assert!(rx.url.starts_with("https://"));
}

#[test]
fn tls_with_a_client_certificate() {
    let pki = TestPki::new("mtls");
    let (_rx, status, n) = tls_run(&pki, &pki.ca_pem, true);
    assert_eq!(n, 1, "{:?}", cloud_status(&status));
}

#[test]
fn tls_with_a_wrong_ca_is_refused_and_pauses_with_the_reason() {
    let server = TestPki::new("server");
    let other = TestPki::new("other");
    let (rx, status, n) = tls_run(&server, &other.ca_pem, false);
    assert_eq!(n, 0);
    assert!(rx.lock().log.is_empty(), "no request got through");
    let st = status.lock().unwrap().clone();
    let (ok, parts) = readiness(&st);
    assert!(!ok);
    assert!(parts["cloud"].contains("certificate"), "{parts:?}");
    assert_eq!(st.cloud.pause_kind.as_deref(), Some("tls"));
    assert_eq!(st.cloud.failures.get("tls"), Some(&1));
}

// ---------------------------------------------------------------------------
// Torture: SIGKILL at random moments, faults, 200 recordings
// ---------------------------------------------------------------------------

/// Child mode: run only the delivery task until killed (or 180 s).
#[test]
fn child_delivery_process() {
    let Ok(spool) = std::env::var("PBX_DELIVERY_CHILD") else {
        return;
    };
    let url = std::env::var("PBX_DELIVERY_URL").unwrap();
    let protocol = match std::env::var("PBX_DELIVERY_PROTOCOL").as_deref() {
        Ok("multipart") => CloudProtocol::Multipart,
        _ => CloudProtocol::Tus,
    };
    let mut s = fast_settings(Path::new(&spool), &url, protocol);
    s.max_parallel = std::env::var("PBX_DELIVERY_PARALLEL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    if let Some(c) = s.cloud.as_mut() {
        if let Ok(v) = std::env::var("PBX_DELIVERY_CHUNK") {
            c.chunk_size = v.parse().unwrap();
        }
    }
    let exit_when_empty = std::env::var_os("PBX_DELIVERY_EXIT_WHEN_EMPTY").is_some();
    let status = new_status();
    rt().block_on(async {
        let h = delivery::start_with(s, status.clone()).unwrap();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(180) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if exit_when_empty && pairs_left(Path::new(&spool)).is_empty() {
                let c = cloud_status(&status);
                eprintln!(
                    "delivered {} bytes {} in {:?}",
                    c.delivered_total,
                    c.bytes_uploaded,
                    t0.elapsed()
                );
                break;
            }
        }
        h.shutdown().await;
    });
}

fn spawn_child(spool: &Path, url: &str, protocol: &str, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(std::env::current_exe().unwrap())
        .args([
            "child_delivery_process",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("PBX_DELIVERY_CHILD", spool)
        .env("PBX_DELIVERY_URL", url)
        .env("PBX_DELIVERY_PROTOCOL", protocol)
        .env("PBX_EDGE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

#[test]
fn torture_sigkill_with_faults_delivers_everything_exactly_once() {
    const N: usize = 200;
    let rx = Receiver::start(ReceiverOptions {
        random: Some(RandomFaults {
            seed: 0x5eed,
            p_5xx: 0.06,
            p_429: 0.02,
            p_reset: 0.05,
            p_slow: 0.03,
            slow: Duration::from_millis(300),
        }),
        ..ReceiverOptions::default()
    });
    let d = tempfile::tempdir().unwrap();
    let spool = d.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    let log = d.path().join("children.log");
    let mut rng = fastrand::Rng::with_seed(42);
    let mut want = std::collections::BTreeMap::new();
    let mut next = 0usize;
    let mut write_some = |n: usize, want: &mut std::collections::BTreeMap<String, String>| {
        for _ in 0..n {
            if next >= N {
                return;
            }
            let id = format!("t{next:04}");
            let size = rng.usize(2_000..300_000);
            want.insert(id.clone(), write_recording(&spool, &id, size, next as u64));
            next += 1;
        }
    };
    write_some(80, &mut want);
    let t0 = Instant::now();
    let mut kills = 0;
    let mut krng = fastrand::Rng::with_seed(7);
    while kills < 12 {
        let protocol = if kills % 3 == 2 { "multipart" } else { "tus" };
        let mut child = spawn_child(&spool, &rx.url, protocol, &log);
        let live = Duration::from_millis(krng.u64(150..1500));
        let step = Instant::now();
        while step.elapsed() < live {
            std::thread::sleep(Duration::from_millis(50));
            write_some(2, &mut want);
        }
        if kills == 5 {
            // 402 for a while in the middle of it.
            rx.lock().payment_required_until = Some(Instant::now() + Duration::from_millis(1500));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
    }
    write_some(N, &mut want);
    assert_eq!(want.len(), N);
    let mut child = spawn_child(&spool, &rx.url, "tus", &log);
    let drained = Instant::now();
    while !(pairs_left(&spool).is_empty() && rx.lock().calls.len() == N) {
        if drained.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!(
                "not drained: {} calls, left {:?}\n{}",
                rx.lock().calls.len(),
                pairs_left(&spool).len(),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // The files go before their rows: wait for the last row deletions, then stop.
    {
        let sp = Spool::open(&spool).unwrap();
        let t = Instant::now();
        while !sp.list().unwrap().is_empty() {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "rows left: {:?}",
                sp.list().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let st = rx.lock();
    assert!(st.conflicts.is_empty(), "{:?}", st.conflicts);
    assert_eq!(st.calls.len(), N);
    for (id, sha) in &want {
        let c = st.calls.get(id).unwrap_or_else(|| panic!("{id} missing"));
        assert_eq!(&c.sha256, sha, "{id} differs");
    }
    let reposts: u32 = st.calls.values().map(|c| c.posts - 1).sum();
    let resets = st.log.iter().filter(|l| l.2 == 0).count();
    let by_proto = st
        .calls
        .values()
        .filter(|c| c.protocol == "multipart")
        .count();
    eprintln!(
        "torture: {N} recordings, {kills} SIGKILLs, {} requests ({resets} resets, {} 5xx, {} 429, {} 402), {reposts} duplicate posts answered 200, {by_proto} via multipart, {:?}",
        st.log.len(),
        st.log.iter().filter(|l| l.2 >= 500).count(),
        st.log.iter().filter(|l| l.2 == 429).count(),
        st.log.iter().filter(|l| l.2 == 402).count(),
        t0.elapsed()
    );
    drop(st);
    let sp = Spool::open(&spool).unwrap();
    let rows = sp.list().unwrap();
    assert!(
        rows.iter().all(|e| e.state != State::Delivered),
        "delivered rows left: {rows:?}"
    );
    assert!(rows.is_empty(), "rows left: {rows:?}");
    assert_eq!(sp.counters().unwrap()["delivered"] as usize, N);
}

// ---------------------------------------------------------------------------
// Interop with a tus server we did not write
// ---------------------------------------------------------------------------

fn rustus_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("RUSTUS_BIN") {
        return Some(PathBuf::from(p));
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    [
        home.join(".cargo/bin/rustus"),
        PathBuf::from("/usr/local/bin/rustus"),
        PathBuf::from("/tmp/rustus-build/inst/bin/rustus"),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

struct NullProgress(Mutex<Vec<(String, u64)>>);
impl pbx_edge::upload::Progress for NullProgress {
    fn checkpoint<'a>(&'a self, l: &'a str, o: u64) -> pbx_edge::upload::BoxFuture<'a, ()> {
        self.0.lock().unwrap().push((l.to_string(), o));
        Box::pin(async {})
    }
    fn restart(&self) -> pbx_edge::upload::BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

#[test]
fn tus_interop_with_rustus() {
    let Some(rustus) = rustus_bin() else {
        eprintln!("note: rustus not installed (cargo install rustus, or set RUSTUS_BIN): interop test skipped");
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let port = common::daemon::free_port();
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _guard = Kill(
        Command::new(&rustus)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .arg("--data-dir")
            .arg(&data)
            .args(["--url", "/v1/uploads"])
            .args(["--tus-extensions", "getting,creation,termination,checksum"])
            // rustus keeps its .info files in ./data: keep them in the temp dir.
            .current_dir(d.path())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.path().join("rustus.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "rustus did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let spool = d.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    let sha = write_recording(&spool, "interop", 1_000_000, 5);
    let url = format!("http://127.0.0.1:{port}");
    let mut cs = CloudSettings::new(&url, CloudProtocol::Tus);
    cs.chunk_size = 64 << 10;
    let rt = rt();
    rt.block_on(async {
        use pbx_edge::upload::{load_job, Cloud, Outcome, RateLimiter};
        // First attempt: cut off after ~300 KB by a bandwidth limit and a timeout.
        let slow = Cloud::new(
            cs.clone(),
            Some(Arc::new(RateLimiter::new(1 << 20))),
            Arc::default(),
        )
        .unwrap();
        let job = load_job(
            "interop",
            spool.join("interop.wav"),
            &spool.join("interop.json"),
            None,
            None,
        )
        .await
        .unwrap();
        let p = NullProgress(Mutex::new(Vec::new()));
        let r = tokio::time::timeout(Duration::from_millis(300), slow.deliver(&job, &p)).await;
        assert!(r.is_err(), "should have been cut off");
        let (loc, off) = p.0.lock().unwrap().last().cloned().expect("a checkpoint");
        assert!(off < 1_000_044, "{off}");
        // Second attempt: HEAD, continue, then /v1/calls (404 on rustus).
        let fast = Cloud::new(cs.clone(), None, Arc::default()).unwrap();
        let job = load_job(
            "interop",
            spool.join("interop.wav"),
            &spool.join("interop.json"),
            Some((loc.clone(), off)),
            None,
        )
        .await
        .unwrap();
        let p2 = NullProgress(Mutex::new(Vec::new()));
        let out = fast.deliver(&job, &p2).await;
        // rustus has no /v1/calls: the upload itself must be complete.
        assert!(matches!(out, Outcome::Failed(_)), "{out:?}");
        let cps = p2.0.lock().unwrap().clone();
        assert_eq!(cps.last().map(|c| c.1), Some(job.size), "{cps:?}");
        assert!(cps.iter().all(|c| c.0 == loc), "same upload resumed");
        assert!(cps.first().map(|c| c.1).unwrap_or(0) >= off);
    });
    // The bytes rustus stored equal the recording.
    let stored: Vec<PathBuf> = walk(&data)
        .into_iter()
        .filter(|p| {
            std::fs::metadata(p)
                .map(|m| m.len() == 1_000_044)
                .unwrap_or(false)
        })
        .collect();
    assert_eq!(stored.len(), 1, "{stored:?}");
    let got = hex::encode(Sha256::digest(std::fs::read(&stored[0]).unwrap()));
    assert_eq!(got, sha);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Disk full
// ---------------------------------------------------------------------------

#[test]
fn disk_full_keeps_the_spool_intact_and_recovers() {
    let d = tempfile::tempdir().unwrap();
    let Some(fs) = common::Tmpfs::mount(&d.path().join("mnt"), "16m") else {
        return;
    };
    let mnt = fs.path().to_path_buf();
    let spool = mnt.join("spool");
    std::fs::create_dir(&spool).unwrap();
    let rx = Receiver::start(ReceiverOptions::default());
    // The cloud answers 402 at first: recordings stay in the spool.
    rx.lock().payment_required_until = Some(Instant::now() + Duration::from_secs(3600));
    let mut want = std::collections::BTreeMap::new();
    for i in 0..5 {
        let id = format!("full{i}");
        want.insert(id.clone(), write_recording(&spool, &id, 200_000, i));
    }
    let status = new_status();
    let rt = rt();
    let h = rt.block_on(async {
        let h = delivery::start_with(
            fast_settings(&spool, &rx.url, CloudProtocol::Tus),
            status.clone(),
        )
        .unwrap();
        wait_for("paused", Duration::from_secs(5), || {
            cloud_status(&status).paused.is_some()
        })
        .await;
        h
    });
    // The daemon's health view of the same spool (its spool path is a
    // symlink into the tmpfs; config and log stay outside it).
    let ddir = d.path().join("daemon");
    std::fs::create_dir(&ddir).unwrap();
    std::os::unix::fs::symlink(&spool, ddir.join("spool")).unwrap();
    let daemon = common::daemon::Daemon::start(&ddir, "[sources.siprec]\nenabled = false\n");
    // Fill the file system.
    let filler = mnt.join("filler");
    common::fill_up(&filler);
    // A new recording cannot be written; the attempt leaves nothing behind.
    let r = write_recording_with(&spool, "no-room", 500_000, 99, |_| {});
    assert!(r.is_err(), "the disk should be full");
    assert!(!spool.join("no-room.json").exists());
    let readyz = || daemon.get("/readyz").unwrap_or((0, String::new()));
    let t0 = Instant::now();
    while readyz().0 != 503 && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, body) = readyz();
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("disk almost full") || body.contains("not writable"),
        "{body}"
    );
    // Delivery keeps running on a full disk; the existing pairs are intact.
    rt.block_on(async {
        rx.lock().payment_required_until = None;
        h.wake();
        wait_for("deliveries on a full disk", Duration::from_secs(20), || {
            rx.lock().calls.len() == 5
        })
        .await;
    });
    for (id, sha) in &want {
        assert_eq!(&rx.calls()[id].sha256, sha);
    }
    // Space returns: new recordings flow again, the database is fine.
    std::fs::remove_file(&filler).unwrap();
    let sha = write_recording(&spool, "after", 100_000, 100);
    rt.block_on(async {
        wait_for("recovery", Duration::from_secs(10), || {
            rx.lock().calls.len() == 6 && pairs_left(&spool).is_empty()
        })
        .await;
        assert!(cloud_status(&status).spool_error.is_none());
        h.shutdown().await;
    });
    assert_eq!(rx.calls()["after"].sha256, sha);
    let mut daemon = daemon;
    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.wait_exit(Duration::from_secs(10)), Some(0));
}

// ---------------------------------------------------------------------------
// Benchmark helpers (driven by benches/upload.sh; ignored in normal runs)
// ---------------------------------------------------------------------------

/// Serve the reference receiver on `PBX_BENCH_ADDR` until `PBX_BENCH_SECONDS`.
#[test]
#[ignore]
fn bench_receiver() {
    let addr = std::env::var("PBX_BENCH_ADDR").unwrap_or_else(|_| "127.0.0.1:0".into());
    let secs: u64 = std::env::var("PBX_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    let rx = Receiver::start_on(&addr, ReceiverOptions::default());
    println!("RECEIVER {}", rx.url);
    let t0 = Instant::now();
    let mut last = 0;
    while t0.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(200));
        let n = rx.lock().calls.len();
        if n != last {
            last = n;
            println!("CALLS {n}");
        }
    }
}

/// Write `PBX_BENCH_FILES` recordings of `PBX_BENCH_BYTES` into `PBX_BENCH_DIR`.
#[test]
#[ignore]
fn bench_make_recordings() {
    let dir = PathBuf::from(std::env::var("PBX_BENCH_DIR").unwrap());
    let n: usize = std::env::var("PBX_BENCH_FILES").unwrap().parse().unwrap();
    let bytes: usize = std::env::var("PBX_BENCH_BYTES").unwrap().parse().unwrap();
    let prefix = std::env::var("PBX_BENCH_PREFIX").unwrap_or_else(|_| "b".into());
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..n {
        write_recording(&dir, &format!("{prefix}{i:05}"), bytes, i as u64);
    }
}

/// An idle queue is scanned only every 30 s (no wake-ups without work),
/// yet a pair that lands in the spool is delivered at once: the spool
/// directory's watch wakes the scheduler (the wait below is a third of the
/// idle scan).
#[test]
fn an_idle_delivery_wakes_for_a_new_pair_at_once() {
    let rx = Receiver::start(ReceiverOptions::default());
    let d = tempfile::tempdir().unwrap();
    let spool = d.path().to_path_buf();
    let mut s = fast_settings(&spool, &rx.url, CloudProtocol::Tus);
    s.scan_interval = Duration::from_secs(1);
    let status = new_status();
    rt().block_on(async {
        let h = delivery::start_with(s, status.clone()).unwrap();
        wait_for("spool open", Duration::from_secs(10), || {
            cloud_status(&status).spool_error.is_none()
        })
        .await;
        // Past the first scans: idle now.
        tokio::time::sleep(Duration::from_secs(3)).await;
        write_recording(&spool, "landed", 4000, 7);
        wait_for(
            "delivered before the idle scan",
            Duration::from_secs(10),
            || rx.lock().calls.len() == 1,
        )
        .await;
        h.shutdown().await;
    });
    assert!(rx.calls().contains_key("landed"));
}

/// A 429 rate-limits the account, not one recording: every upload waits
/// its Retry-After (before, only the recording told waited and the next
/// ones hit the limit at once); the daemon stays ready (it records and
/// spools), and uploads resume by themselves.
#[test]
fn a_rate_limit_holds_back_every_upload_for_its_retry_after() {
    let rx = Receiver::start(ReceiverOptions::default());
    rx.push_fault(Fault::new(
        Some(Method::POST),
        "/v1/calls",
        FaultAction::Status(429, Some("2".into())),
    ));
    let d = tempfile::tempdir().unwrap();
    for i in 0..8 {
        write_recording(d.path(), &format!("q{i}"), 3000, i);
    }
    let status = new_status();
    rt().block_on(async {
        let mut s = fast_settings(d.path(), &rx.url, CloudProtocol::Multipart);
        s.max_parallel = 1;
        let h = delivery::start_with(s, status.clone()).unwrap();
        wait_for("all delivered", Duration::from_secs(15), || {
            rx.lock().calls.len() == 8
        })
        .await;
        h.shutdown().await;
    });
    let st = rx.lock();
    let t429 = st.answered_at("POST", "/v1/calls", 429)[0];
    let early: Vec<_> = st
        .answered_at("POST", "/v1/calls", 201)
        .into_iter()
        .filter(|t| *t > t429 && t.duration_since(t429) < Duration::from_millis(1900))
        .collect();
    assert!(
        early.is_empty(),
        "{} posts answered within the Retry-After",
        early.len()
    );
    assert!(pairs_left(d.path()).is_empty());
}

/// A rate limit ends with its Retry-After: every upload goes on then, and
/// a transient error of the first one after it (a 503) is that upload's
/// own backoff, not `pause_retry` (5 min by default) for the whole queue
/// (before: the first upload after the limit was a probe, and the pause
/// stood until it was delivered).
#[test]
fn a_rate_limit_ends_with_its_retry_after_whatever_comes_next() {
    let rx = Receiver::start(ReceiverOptions::default());
    rx.push_fault(Fault::new(
        Some(Method::POST),
        "/v1/calls",
        FaultAction::Status(429, Some("1".into())),
    ));
    rx.push_fault(Fault::new(
        Some(Method::POST),
        "/v1/calls",
        FaultAction::Status(503, None),
    ));
    let d = tempfile::tempdir().unwrap();
    for i in 0..4 {
        write_recording(d.path(), &format!("r{i}"), 3000, i);
    }
    rt().block_on(async {
        let mut s = fast_settings(d.path(), &rx.url, CloudProtocol::Multipart);
        s.max_parallel = 1;
        s.pause_retry = Duration::from_secs(60);
        let h = delivery::start_with(s, new_status()).unwrap();
        wait_for("all delivered", Duration::from_secs(15), || {
            rx.lock().calls.len() == 4
        })
        .await;
        h.shutdown().await;
    });
    assert!(pairs_left(d.path()).is_empty());
}

/// Plain http (loopback only) never goes through a proxy: a proxy would
/// carry the token and the recording off the machine in clear.
#[test]
fn plain_http_to_loopback_bypasses_the_proxy() {
    let rx = Receiver::start(ReceiverOptions::default());
    let proxy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    proxy.set_nonblocking(true).unwrap();
    let d = tempfile::tempdir().unwrap();
    write_recording(d.path(), "np", 3000, 1);
    rt().block_on(async {
        let mut s = fast_settings(d.path(), &rx.url, CloudProtocol::Multipart);
        if let Some(c) = s.cloud.as_mut() {
            c.proxy = Some(format!("http://{}", proxy.local_addr().unwrap()));
        }
        let h = delivery::start_with(s, new_status()).unwrap();
        wait_for("delivered", Duration::from_secs(10), || {
            rx.lock().calls.len() == 1
        })
        .await;
        h.shutdown().await;
    });
    assert!(proxy.accept().is_err(), "a request went to the proxy");
}

/// A fixed endpoint that answers 404 (a wrong `cloud.url`, or a server of
/// another API) pauses every upload with the reason on `/readyz` (not
/// ready) instead of each recording retrying on its own unseen; once it
/// answers, the recordings go.
#[test]
fn a_missing_endpoint_pauses_uploads_with_the_reason() {
    let rx = Receiver::start(ReceiverOptions::default());
    for _ in 0..3 {
        rx.push_fault(Fault::new(
            Some(Method::POST),
            "/v1/calls",
            FaultAction::Status(404, None),
        ));
    }
    let d = tempfile::tempdir().unwrap();
    for i in 0..3 {
        write_recording(d.path(), &format!("e{i}"), 3000, i);
    }
    let status = new_status();
    rt().block_on(async {
        let mut s = fast_settings(d.path(), &rx.url, CloudProtocol::Multipart);
        s.pause_retry = Duration::from_millis(300);
        let h = delivery::start_with(s, status.clone()).unwrap();
        assert_paused(&status, "endpoint", "POST /v1/calls (HTTP 404)", false).await;
        delivered_and_unpaused(&rx, &status, 3).await;
        h.shutdown().await;
    });
    assert!(pairs_left(d.path()).is_empty());
}

/// A recording whose metadata cannot be read when the filters are applied
/// (damaged, a key removed, permissions) waits instead of leaving the
/// machine unfiltered (before, it passed the filters and was uploaded once
/// it became readable: an excluded number could leave); once readable it is
/// filtered like any other.
#[test]
fn an_unreadable_recording_waits_for_the_filters() {
    let rx = Receiver::start(ReceiverOptions::default());
    let d = tempfile::tempdir().unwrap();
    let spool = d.path().to_path_buf();
    write_recording_with(&spool, "blocked", 5000, 4, |j| {
        j["to"]["number"] = "+1900555".into()
    })
    .unwrap();
    let good = std::fs::read(spool.join("blocked.json")).unwrap();
    std::fs::write(spool.join("blocked.json"), b"{ damaged").unwrap();
    let mut s = fast_settings(&spool, &rx.url, CloudProtocol::Multipart);
    s.filters = Filters {
        exclude_numbers: vec!["+1900*".into()],
        ..Filters::default()
    };
    s.keep_filtered = true;
    let status = new_status();
    rt().block_on(async {
        let h = delivery::start_with(s, status.clone()).unwrap();
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(rx.lock().count("POST", "/v1/calls", 201), 0);
        let sp = Spool::open(&spool).unwrap();
        assert_eq!(sp.get("blocked").unwrap().unwrap().state, State::Recorded);
        // Readable again (restored): filtered, never sent.
        std::fs::write(spool.join("blocked.json"), &good).unwrap();
        wait_for("filtered", Duration::from_secs(10), || {
            sp.get("blocked").unwrap().unwrap().state == State::Filtered
        })
        .await;
        h.shutdown().await;
    });
    assert!(rx.lock().calls.is_empty());
}
