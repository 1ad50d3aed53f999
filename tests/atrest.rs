//! Recordings at rest and on the uplink: FLAC uploads (`cloud.audio_format =
//! "flac"`) decoded by an independent decoder (sox, which uses libFLAC) and
//! compared sample for sample with the spooled WAV, over both protocols.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::receiver::{Fault, FaultAction, Receiver, ReceiverOptions};
use hyper::Method;
use pbx_edge::config::{AudioFormat, CloudProtocol};
use pbx_edge::delivery::{self, DeliverySettings};
use pbx_edge::recording::{write_whole, DocAudio, DocChannels, DocParty, RecordingDoc, SCHEMA};
use pbx_edge::status::{SharedStatus, Status};
use pbx_edge::upload::CloudSettings;

/// Speech by espeak-ng, resampled by sox to `rate` (16-bit mono).
fn espeak(text: &str, voice: &str, rate: u32) -> Vec<i16> {
    let d = tempfile::tempdir().unwrap();
    let w = d.path().join("s.wav");
    let ok = Command::new("espeak-ng")
        .args(["-v", voice, "-w"])
        .arg(&w)
        .arg(text)
        .status()
        .expect("espeak-ng is installed")
        .success();
    assert!(ok);
    let raw = Command::new("sox")
        .arg(&w)
        .args([
            "-t", "raw", "-e", "signed", "-b", "16", "-L", "-c", "1", "-r",
        ])
        .arg(rate.to_string())
        .arg("-")
        .output()
        .expect("sox is installed");
    assert!(raw.status.success());
    raw.stdout
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect()
}

/// A two-party call: the caller speaks, then the callee answers, with
/// silence between, like a recorded conversation.
fn conversation(rate: u32) -> (Vec<i16>, Vec<i16>) {
    let a = espeak(
        "Hello, I am calling about my order, number four five six. It has not arrived yet.",
        "en",
        rate,
    );
    let b = espeak(
        "Thank you for calling. Let me check that for you, one moment please.",
        "en-us",
        rate,
    );
    let gap = vec![0i16; rate as usize / 2];
    let left: Vec<i16> = [a.clone(), gap.clone(), vec![0; b.len()], gap.clone()].concat();
    let right: Vec<i16> = [vec![0; a.len()], gap.clone(), b, gap].concat();
    (left, right)
}

fn doc(id: &str) -> RecordingDoc {
    RecordingDoc {
        schema: SCHEMA,
        recording_id: id.into(),
        agent_id: "edge-test".into(),
        source: "folder".into(),
        call_id: Some(format!("{id}@test")),
        from: Some(DocParty {
            number: "+4930111".into(),
            name: None,
            uri: None,
        }),
        to: None,
        direction: "inbound".into(),
        started_at: None,
        answered_at: None,
        ended_at: None,
        duration_ms: 0,
        audio: DocAudio::wav(8000, 0, String::new()),
        channels: DocChannels::summary(["L16", "L16"]),
        dtmf: Vec::new(),
        truncated: false,
        warnings: Vec::new(),
        call: None,
        folder: None,
    }
}

/// The interleaved samples of a WAV or FLAC file, decoded by sox.
fn sox_samples(path: &Path) -> (u32, u16, Vec<i16>) {
    let info = |what: &str| {
        let o = Command::new("soxi").arg(what).arg(path).output().unwrap();
        assert!(o.status.success(), "soxi {}", path.display());
        String::from_utf8_lossy(&o.stdout)
            .trim()
            .parse::<u32>()
            .unwrap()
    };
    let (rate, ch) = (info("-r"), info("-c") as u16);
    // sox picks the type from the content; the receiver stores no extension.
    let ty = if std::fs::read(path).unwrap().starts_with(b"fLaC") {
        "flac"
    } else {
        "wav"
    };
    let o = Command::new("sox")
        .args(["-t", ty])
        .arg(path)
        .args(["-t", "raw", "-e", "signed", "-b", "16", "-L", "-"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = o
        .stdout
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect();
    (rate, ch, s)
}

fn settings(spool: &Path, url: &str, protocol: CloudProtocol) -> DeliverySettings {
    let mut cloud = CloudSettings::new(url, protocol);
    cloud.chunk_size = 64 << 10;
    cloud.timeout = Duration::from_secs(10);
    cloud.audio_format = AudioFormat::Flac;
    DeliverySettings {
        cloud: Some(cloud),
        max_parallel: 2,
        scan_interval: Duration::from_millis(100),
        backoff_base: Duration::from_millis(20),
        backoff_cap: Duration::from_millis(300),
        pause_retry: Duration::from_millis(500),
        retention: Duration::from_secs(3600),
        ..DeliverySettings::new(spool)
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn new_status() -> SharedStatus {
    Arc::new(Mutex::new(Status {
        version: "test",
        ..Status::default()
    }))
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

/// Delivers what is in `spool` until `n` calls arrived.
fn deliver(spool: &Path, rx: &Receiver, s: DeliverySettings, n: usize) {
    let _ = spool;
    rt().block_on(async {
        let h = delivery::start_with(s, new_status()).unwrap();
        wait_for("the calls", Duration::from_secs(60), || {
            rx.lock().calls.len() >= n
        })
        .await;
        h.shutdown().await;
    });
}

struct Spooled {
    id: String,
    wav: PathBuf,
    channels: u16,
}

fn spool_calls(spool: &Path) -> Vec<Spooled> {
    let (l, r) = conversation(8000);
    let mono = espeak("This is a mixed recording of both parties.", "en", 8000);
    let mut out = Vec::new();
    for (id, chans) in [
        ("stereo-call", vec![&l[..], &r[..]]),
        ("mono-call", vec![&mono[..]]),
    ] {
        let mut d = doc(id);
        if chans.len() == 1 {
            d.channels = DocChannels::mixed("L16");
        }
        let (w, _) = write_whole(spool, 8000, &chans, d).unwrap();
        out.push(Spooled {
            id: id.into(),
            wav: w.wav,
            channels: chans.len() as u16,
        });
    }
    out
}

fn flac_upload_is_lossless(protocol: CloudProtocol) {
    let rx = Receiver::start(ReceiverOptions::default());
    let d = tempfile::tempdir().unwrap();
    let spool = d.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    let calls = spool_calls(&spool);
    deliver(
        &spool,
        &rx,
        settings(&spool, &rx.url, protocol),
        calls.len(),
    );
    let got = rx.calls();
    for c in &calls {
        let call = &got[&c.id];
        // The receiver already checked sha256/bytes against the JSON.
        assert_eq!(call.json["audio"]["format"], "flac", "{}", c.id);
        assert_eq!(call.content_type, "audio/flac", "{}", c.id);
        assert_eq!(call.filename, format!("{}.flac", c.id));
        assert_eq!(call.json["audio"]["channels"], c.channels);
        let flac = std::fs::read(&call.audio).unwrap();
        assert_eq!(&flac[..4], b"fLaC");
        let wav_len = std::fs::metadata(&c.wav).unwrap().len();
        // A conversation (each party silent while the other speaks) at
        // least 45 % smaller; continuous mono speech smaller at all.
        let most = if c.channels == 2 { 55 } else { 90 };
        assert!(
            (flac.len() as u64) < wav_len * most / 100,
            "{}: FLAC {} bytes vs WAV {wav_len}",
            c.id,
            flac.len()
        );
        let (wr, wc, ws) = sox_samples(&c.wav);
        let (fr, fc, fs) = sox_samples(&call.audio);
        assert_eq!((fr, fc), (wr, wc), "{}", c.id);
        assert_eq!(fc, c.channels);
        assert_eq!(fs.len(), ws.len(), "{}", c.id);
        assert!(fs == ws, "{}: the FLAC decodes to the WAV's samples", c.id);
        // libFLAC's own check: frame CRCs and STREAMINFO's sample MD5.
        let t = Command::new("flac")
            .args(["-t", "-s", "-f"])
            .arg(&call.audio)
            .output();
        if let Ok(t) = t {
            assert!(
                t.status.success(),
                "flac -t: {}",
                String::from_utf8_lossy(&t.stderr)
            );
        }
        // The spool's own JSON still describes the WAV it keeps.
        let spooled: serde_json::Value =
            serde_json::from_slice(&std::fs::read(c.wav.with_extension("json")).unwrap()).unwrap();
        assert_eq!(spooled["audio"]["format"], "wav");
    }
}

#[test]
fn flac_over_tus_decodes_to_the_wav_samples() {
    flac_upload_is_lossless(CloudProtocol::Tus);
}

#[test]
fn flac_over_multipart_decodes_to_the_wav_samples() {
    flac_upload_is_lossless(CloudProtocol::Multipart);
}

/// A tus upload broken in the middle resumes with the same FLAC bytes even
/// when the FLAC kept beside the WAV is lost before the next attempt (the
/// encoding is deterministic): the receiver's file matches the JSON's hash.
#[test]
fn a_broken_flac_upload_resumes_with_the_same_bytes() {
    let rx = Receiver::start(ReceiverOptions::default());
    let d = tempfile::tempdir().unwrap();
    let spool = d.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    let (l, r) = conversation(8000);
    let long_l = [l.clone(), l.clone(), l].concat();
    let long_r = [r.clone(), r.clone(), r].concat();
    write_whole(&spool, 8000, &[&long_l, &long_r], doc("resumed")).unwrap();
    // First attempt: the connection drops inside the second PATCH.
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
    let flac = spool.join(".resumed.flac");
    let s = settings(&spool, &rx.url, CloudProtocol::Tus);
    rt().block_on(async {
        let h = delivery::start_with(s, new_status()).unwrap();
        wait_for("the first PATCH", Duration::from_secs(30), || {
            rx.lock().count("PATCH", "/v1/uploads/", 204) >= 1
        })
        .await;
        // Lost between attempts: encoded again, the same bytes.
        let _ = std::fs::remove_file(&flac);
        wait_for("the call", Duration::from_secs(60), || {
            !rx.lock().calls.is_empty()
        })
        .await;
        h.shutdown().await;
    });
    let st = rx.lock();
    assert!(
        st.log.iter().any(|(m, _, s)| m == "PATCH" && *s == 0),
        "{:?}",
        st.log
    );
    assert!(
        st.count("HEAD", "/v1/uploads/", 200) >= 1,
        "resumed with HEAD: {:?}",
        st.log
    );
    assert_eq!(
        st.count("POST", "/v1/uploads", 201),
        1,
        "one upload, resumed"
    );
    let call = &st.calls["resumed"];
    assert_eq!(call.json["audio"]["format"], "flac");
    let (_, _, fs) = sox_samples(&call.audio);
    let (_, _, ws) = sox_samples(&spool.join("resumed.wav"));
    assert!(fs == ws);
}

fn cpu_now(who: libc::c_int) -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut u) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// BENCHMARKS.md "FLAC uplink": bytes saved on speech calls and CPU per
/// call-minute, beside `flac -5` on the same WAVs. Run by `benches/flac.sh`.
#[test]
#[ignore]
fn bench_flac_speech() {
    let lines = [
        (
            "en",
            "Good morning, I would like to change the delivery address for my last order.",
        ),
        (
            "en-us",
            "Of course. Can you give me the order number and the postcode please?",
        ),
        (
            "de",
            "Guten Tag, ich rufe wegen meiner Rechnung vom letzten Monat an.",
        ),
        ("de", "Einen Moment bitte, ich sehe mir das gleich an."),
        (
            "fr",
            "Bonjour, je voudrais des informations sur votre nouvelle offre.",
        ),
        (
            "fr",
            "Bien sûr, je vous envoie tout cela par courrier électronique.",
        ),
        (
            "en",
            "My internet connection drops every evening around eight o'clock.",
        ),
        (
            "en-us",
            "I am sorry to hear that. Let us run a line test together now.",
        ),
    ];
    let d = tempfile::tempdir().unwrap();
    let (mut wav_bytes, mut ours, mut theirs, mut seconds) = (0u64, 0u64, 0u64, 0f64);
    let (mut cpu_ours, mut cpu_theirs) = (0f64, 0f64);
    for call in 0..10 {
        // Six turns, each party silent while the other speaks.
        let (mut l, mut r) = (Vec::new(), Vec::new());
        for turn in 0..6 {
            let (voice, text) = lines[(call + turn) % lines.len()];
            let s = espeak(text, voice, 8000);
            let gap = vec![0i16; 4000];
            let (talk, quiet) = if turn % 2 == 0 {
                (&mut l, &mut r)
            } else {
                (&mut r, &mut l)
            };
            talk.extend_from_slice(&s);
            quiet.extend(std::iter::repeat_n(0, s.len()));
            talk.extend_from_slice(&gap);
            quiet.extend_from_slice(&gap);
        }
        let (w, bytes) = write_whole(d.path(), 8000, &[&l, &r], doc(&format!("b{call}"))).unwrap();
        wav_bytes += bytes;
        seconds += l.len() as f64 / 8000.0;
        let before = cpu_now(libc::RUSAGE_THREAD);
        let mut out = Vec::new();
        let info = pbx_edge::recording::flac::encode_wav(
            || std::fs::File::open(&w.wav).map(std::io::BufReader::new),
            &mut out,
        )
        .unwrap();
        cpu_ours += cpu_now(libc::RUSAGE_THREAD) - before;
        ours += info.bytes;
        let f5 = d.path().join(format!("b{call}.f5.flac"));
        let before = cpu_now(libc::RUSAGE_CHILDREN);
        let ok = Command::new("flac")
            .args(["-5", "-s", "-f", "-o"])
            .arg(&f5)
            .arg(&w.wav)
            .status()
            .expect("flac is installed")
            .success();
        cpu_theirs += cpu_now(libc::RUSAGE_CHILDREN) - before;
        assert!(ok);
        theirs += std::fs::metadata(&f5).unwrap().len();
        // Ours decodes to the same samples as flac's own.
        let (_, _, a) = sox_samples(&f5);
        let p = d.path().join("ours.flac");
        std::fs::write(&p, &out).unwrap();
        assert!(sox_samples(&p).2 == a);
    }
    let minutes = seconds / 60.0;
    println!("calls: 10, audio {seconds:.1} s, WAV {wav_bytes} bytes");
    println!(
        "pbx-edge (flacenc): {ours} bytes ({:.1} % smaller), CPU {:.3} s = {:.1} ms per call-minute",
        100.0 * (1.0 - ours as f64 / wav_bytes as f64),
        cpu_ours,
        1000.0 * cpu_ours / minutes
    );
    println!(
        "flac -5: {theirs} bytes ({:.1} % smaller), CPU {:.3} s = {:.1} ms per call-minute (process start included)",
        100.0 * (1.0 - theirs as f64 / wav_bytes as f64),
        cpu_theirs,
        1000.0 * cpu_theirs / minutes
    );
    assert!(ours * 100 <= wav_bytes * 55, "at least 45 % smaller");
}
