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
        ids: Default::default(),
        roles: None,
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
        let (w, _) = write_whole(spool, 8000, &chans, d, None).unwrap();
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
    write_whole(&spool, 8000, &[&long_l, &long_r], doc("resumed"), None).unwrap();
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
        let (w, bytes) =
            write_whole(d.path(), 8000, &[&l, &r], doc(&format!("b{call}")), None).unwrap();
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

// ---------------------------------------------------------------------------
// Encryption at rest
// ---------------------------------------------------------------------------

use pbx_edge::recording::{
    open_recording, read_recording, recover, Keyring, OpenMode, RecordingContext, RecordingDir,
};
use std::io::{BufRead, Read};

const KEY_HEX: &str = "8f0e1d2c3b4a59687766554433221100ffeeddccbbaa99887766554433221100";

fn keyring(dir: &Path) -> (PathBuf, Arc<Keyring>) {
    let p = dir.join("spool.key");
    std::fs::write(&p, format!("{KEY_HEX}\n")).unwrap();
    let k = Keyring::load(&p, &[], None).unwrap().unwrap();
    (p, k)
}

/// No file of `dir` (but the queue's own database) shows a WAV, FLAC or
/// JSON in plaintext, or the caller's number.
fn assert_no_plaintext(dir: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // Recording files (the queue's database and lock are not).
        let recording = [".wav", ".json", ".flac"].iter().any(|x| name.contains(x));
        if !recording || !e.path().is_file() {
            continue;
        }
        let b = std::fs::read(e.path()).unwrap();
        for needle in [
            &b"RIFF"[..],
            b"WAVE",
            b"fLaC",
            b"recording_id",
            b"\"audio\"",
            b"+4930111",
            b"duration_ms",
        ] {
            assert!(
                !b.windows(needle.len()).any(|w| w == needle),
                "{name} holds {:?} in plaintext",
                String::from_utf8_lossy(needle)
            );
        }
        assert!(b.starts_with(b"PBXENC\x00\x01"), "{name} is not sealed");
        n += 1;
    }
    n
}

fn encrypted_delivery(protocol: CloudProtocol, format: AudioFormat) {
    let rx = Receiver::start(ReceiverOptions::default());
    let d = tempfile::tempdir().unwrap();
    let (_, keys) = keyring(d.path());
    let (spool, plain) = (d.path().join("spool"), d.path().join("plain"));
    let (l, r) = conversation(8000);
    for (dir, seal) in [(&spool, Some(&*keys)), (&plain, None)] {
        std::fs::create_dir(dir).unwrap();
        write_whole(dir, 8000, &[&l, &r], doc("sealed-call"), seal).unwrap();
    }
    assert_eq!(assert_no_plaintext(&spool), 2);
    let mut s = settings(&spool, &rx.url, protocol);
    s.keys = Some(keys.clone());
    if let Some(c) = s.cloud.as_mut() {
        c.audio_format = format;
    }
    deliver(&spool, &rx, s, 1);
    let call = &rx.calls()["sealed-call"];
    let plain_wav = std::fs::read(plain.join("sealed-call.wav")).unwrap();
    let plain_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(plain.join("sealed-call.json")).unwrap()).unwrap();
    let got = std::fs::read(&call.audio).unwrap();
    match format {
        AudioFormat::Wav => {
            assert!(got == plain_wav, "the cloud gets the exact plaintext WAV");
            assert_eq!(call.json["audio"], plain_json["audio"]);
        }
        AudioFormat::Flac => {
            assert_eq!(&got[..4], b"fLaC");
            let (_, _, fs) = sox_samples(&call.audio);
            let (_, _, ws) = sox_samples(&plain.join("sealed-call.wav"));
            assert!(fs == ws);
        }
    }
    assert_eq!(call.json["from"]["number"], "+4930111");
    // The FLAC kept for upload is sealed too.
    assert_no_plaintext(&spool);
}

#[test]
fn encrypted_spool_uploads_the_exact_plaintext_over_tus() {
    encrypted_delivery(CloudProtocol::Tus, AudioFormat::Wav);
}

#[test]
fn encrypted_spool_uploads_the_exact_plaintext_over_multipart() {
    encrypted_delivery(CloudProtocol::Multipart, AudioFormat::Wav);
}

#[test]
fn encrypted_spool_uploads_flac() {
    encrypted_delivery(CloudProtocol::Tus, AudioFormat::Flac);
}

/// A plaintext pair put in an encrypted spool by another program (`pbx-edge
/// import --out` the spool dir, a copy): sealed where it lies before it is
/// queued, then delivered as the exact plaintext. Before, it stayed in
/// plaintext on the disk the key was meant to protect.
#[test]
fn a_plaintext_pair_in_an_encrypted_spool_is_sealed_then_delivered() {
    let rx = Receiver::start(ReceiverOptions::default());
    let d = tempfile::tempdir().unwrap();
    let (_, keys) = keyring(d.path());
    let (spool, plain) = (d.path().join("spool"), d.path().join("plain"));
    let (l, r) = conversation(8000);
    for dir in [&spool, &plain] {
        std::fs::create_dir(dir).unwrap();
        write_whole(dir, 8000, &[&l, &r], doc("dropped-in"), None).unwrap();
    }
    let mut s = settings(&spool, &rx.url, CloudProtocol::Tus);
    s.keys = Some(keys.clone());
    if let Some(c) = s.cloud.as_mut() {
        c.audio_format = AudioFormat::Wav;
    }
    deliver(&spool, &rx, s, 1);
    assert_eq!(assert_no_plaintext(&spool), 2, "the pair sealed in place");
    let got = std::fs::read(&rx.calls()["dropped-in"].audio).unwrap();
    assert!(got == std::fs::read(plain.join("dropped-in.wav")).unwrap());
    assert_eq!(rx.calls()["dropped-in"].json["from"]["number"], "+4930111");
}

/// A tus upload of a sealed WAV broken in the middle resumes at the
/// server's offset: the decrypting reader seeks to any plaintext offset.
#[test]
fn an_encrypted_upload_resumes_at_any_offset() {
    let rx = Receiver::start(ReceiverOptions::default());
    let d = tempfile::tempdir().unwrap();
    let (_, keys) = keyring(d.path());
    let spool = d.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    let (l, r) = conversation(8000);
    let (_, bytes) = write_whole(&spool, 8000, &[&l, &r], doc("cut"), Some(&keys)).unwrap();
    for _ in 0..2 {
        rx.push_fault(Fault::new(
            Some(Method::PATCH),
            "/v1/uploads/",
            FaultAction::ResetAfter(12_345),
        ));
    }
    let mut s = settings(&spool, &rx.url, CloudProtocol::Tus);
    s.keys = Some(keys.clone());
    if let Some(c) = s.cloud.as_mut() {
        c.audio_format = AudioFormat::Wav;
    }
    deliver(&spool, &rx, s, 1);
    let st = rx.lock();
    assert!(st.count("HEAD", "/v1/uploads/", 200) >= 1, "{:?}", st.log);
    let got = std::fs::read(&st.calls["cut"].audio).unwrap();
    assert_eq!(got.len() as u64, bytes);
    let mut want = Vec::new();
    open_recording(&spool.join("cut.wav"), Some(&keys), OpenMode::Strict)
        .unwrap()
        .read_to_end(&mut want)
        .unwrap();
    assert!(got == want);
}

fn start(id: &str) -> pbx_core::call::RecordingStart {
    use pbx_core::call::PartyInfo;
    use pbx_core::time::Timestamp;
    pbx_core::call::RecordingStart {
        call_id: format!("{id}@src"),
        sample_rate: 8000,
        media_started_at: Timestamp::parse_rfc3339("2026-12-03T10:00:01.000Z").unwrap(),
        recording_id: id.to_string(),
        from: PartyInfo {
            number: "+4930111".into(),
            ..PartyInfo::default()
        },
        to: PartyInfo::default(),
        started_at: Timestamp::parse_rfc3339("2026-12-03T10:00:00.000Z").unwrap(),
        answered_at: None,
        ids: Default::default(),
        signalling: None,
        mixed_mono: false,
    }
}

fn ctx(keys: Option<Arc<Keyring>>) -> RecordingContext {
    RecordingContext {
        agent_id: "edge-test".into(),
        source: "siprec",
        min_duration: Duration::ZERO,
        seal: keys,
        tap: None,
        roles: Default::default(),
    }
}

/// The samples of chunk `n` the child writes (100 ms of stereo audio).
fn chunk(n: u32) -> Vec<i16> {
    (0..1600)
        .map(|i| ((n * 7 + i) % 2000) as i16 - 1000)
        .collect()
}

/// Child mode: records one call into `PBX_ATREST_CHILD` (sealed with the key
/// file `PBX_ATREST_KEY`), 100 ms chunks, printing each chunk number once
/// it has been handed to the kernel, until killed.
#[test]
fn child_recorder_process() {
    use pbx_core::call::{CallKey, RecordingSink};
    let Ok(dir) = std::env::var("PBX_ATREST_CHILD") else {
        return;
    };
    let key = std::env::var("PBX_ATREST_KEY").unwrap();
    let keys = Keyring::load(Path::new(&key), &[], None).unwrap();
    let mut rd = RecordingDir::new(Path::new(&dir), ctx(keys)).unwrap();
    rd.begin(CallKey(1), &start("killed"));
    for n in 0..100_000 {
        rd.audio(CallKey(1), &chunk(n));
        println!("chunk {n}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// SIGKILL while an encrypted call records, then the next start's recovery:
/// the sealed `.part` becomes a sealed WAV holding every chunk the child had
/// written, and its JSON (truncated, crash); nothing on disk in plaintext.
/// A normal call's end and a key that does not fit are checked too.
#[test]
fn sigkill_during_an_encrypted_recording_recovers_the_part() {
    let d = tempfile::tempdir().unwrap();
    let (key_file, keys) = keyring(d.path());
    let spool = d.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_recorder_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("PBX_ATREST_CHILD", &spool)
        .env("PBX_ATREST_KEY", &key_file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut written = 0;
    for l in lines.by_ref() {
        if let Some(n) = l.unwrap().strip_prefix("chunk ") {
            written = n.parse::<u32>().unwrap() + 1;
            if written >= 40 {
                break;
            }
        }
    }
    // SIGKILL: nothing of the child's runs after this.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    assert!(spool.join(".killed.wav.part").exists());
    assert_no_plaintext(&spool);

    // A start without the key leaves it as it is.
    let before: Vec<_> = std::fs::read_dir(&spool)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(recover(&spool, &ctx(None)).unwrap().is_empty());
    let other = Keyring::load(
        &{
            let p = d.path().join("other.key");
            std::fs::write(&p, [9u8; 32]).unwrap();
            p
        },
        &[],
        None,
    )
    .unwrap();
    assert!(recover(&spool, &ctx(other)).unwrap().is_empty());
    let after: Vec<_> = std::fs::read_dir(&spool)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(before, after, "a missing or wrong key destroys nothing");

    let ids = recover(&spool, &ctx(Some(keys.clone()))).unwrap();
    assert_eq!(ids, vec!["killed".to_string()]);
    assert!(!spool.join(".killed.wav.part").exists());
    assert_no_plaintext(&spool);
    let j: serde_json::Value =
        serde_json::from_slice(&read_recording(&spool.join("killed.json"), Some(&keys)).unwrap())
            .unwrap();
    assert_eq!(j["truncated"], true);
    assert_eq!(j["end_reason"], "crash");
    assert_eq!(j["from"]["number"], "+4930111");
    let mut wav = Vec::new();
    open_recording(&spool.join("killed.wav"), Some(&keys), OpenMode::Strict)
        .unwrap()
        .read_to_end(&mut wav)
        .unwrap();
    assert_eq!(j["audio"]["bytes"], wav.len());
    let info = pbx_core::audio::wav::parse_wav_header(&wav).unwrap();
    assert_eq!(info.data_len as usize, wav.len() - 44);
    let samples: Vec<i16> = wav[44..]
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect();
    let got_chunks = samples.len() / 1600;
    assert!(
        got_chunks >= written as usize,
        "{got_chunks} chunks kept, {written} written"
    );
    for n in 0..got_chunks {
        assert!(
            samples[n * 1600..(n + 1) * 1600] == chunk(n as u32)[..],
            "chunk {n}"
        );
    }
}

/// A call that ends normally: the sealed `.part` becomes a sealed WAV with
/// its true header, and the JSON describes the plaintext.
#[test]
fn an_encrypted_call_ends_as_a_sealed_pair() {
    use pbx_core::call::{CallKey, RecordingSink};
    let d = tempfile::tempdir().unwrap();
    let (_, keys) = keyring(d.path());
    let spool = d.path().join("spool");
    let mut rd = RecordingDir::new(&spool, ctx(Some(keys.clone()))).unwrap();
    rd.begin(CallKey(1), &start("ended"));
    for n in 0..30 {
        rd.audio(CallKey(1), &chunk(n));
    }
    assert_no_plaintext(&spool);
    let t0 = pbx_core::time::Timestamp::parse_rfc3339("2026-12-03T10:00:01.000Z").unwrap();
    let meta = pbx_core::call::CallMeta {
        key: CallKey(1),
        recording_id: "ended".into(),
        call_id: "ended@src".into(),
        recorded_call_id: None,
        from: Default::default(),
        to: Default::default(),
        caller_known: true,
        started_at: t0,
        answered_at: None,
        ended_at: t0.add_micros(3_000_000),
        media_started_at: t0,
        sample_rate: 8000,
        frames: 30 * 800,
        channels: Default::default(),
        dtmf: Vec::new(),
        pauses: Vec::new(),
        end_reason: pbx_core::call::EndReason::Bye,
        warnings: Vec::new(),
        ids: Default::default(),
        signalling: None,
        mixed_mono: false,
    };
    rd.end(CallKey(1), meta);
    assert_eq!(rd.counters.written, 1, "{:?}", rd.errors);
    assert_eq!(assert_no_plaintext(&spool), 2);
    let (n, sha) =
        pbx_edge::recording::hash_recording(&spool.join("ended.wav"), Some(&keys)).unwrap();
    assert_eq!(n, 44 + 30 * 3200);
    let j: serde_json::Value =
        serde_json::from_slice(&read_recording(&spool.join("ended.json"), Some(&keys)).unwrap())
            .unwrap();
    assert_eq!(j["audio"]["sha256"], sha);
}

fn pbx_edge_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pbx-edge"))
}

/// `spool export ID --out DIR` writes the plaintext pair (0600) of an
/// encrypted spool; with a wrong key it fails clearly and changes nothing;
/// `check-config` names a malformed key file at its line.
#[test]
fn spool_export_writes_the_plaintext_pair_and_a_wrong_key_destroys_nothing() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let (key_file, keys) = keyring(d.path());
    let spool = d.path().join("spool");
    let plain = d.path().join("plain");
    let (l, r) = conversation(8000);
    write_whole(&spool, 8000, &[&l, &r], doc("exp"), Some(&keys)).unwrap();
    write_whole(&plain, 8000, &[&l, &r], doc("exp"), None).unwrap();
    let cfg = d.path().join("c.toml");
    let write_cfg = |key: &Path| {
        std::fs::write(
            &cfg,
            format!(
                "[spool]\ndir = \"{}\"\nencryption_key_file = \"{}\"\n",
                spool.display(),
                key.display()
            ),
        )
        .unwrap()
    };
    write_cfg(&key_file);
    let out = d.path().join("out");
    let o = Command::new(pbx_edge_bin())
        .args(["spool", "export", "exp", "--out"])
        .arg(&out)
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in ["exp.wav", "exp.json"] {
        assert_eq!(
            std::fs::read(out.join(f)).unwrap(),
            std::fs::read(plain.join(f)).unwrap(),
            "{f}"
        );
        let mode = std::fs::metadata(out.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }

    // A wrong key: a clear error, no file written, the spool untouched.
    let wrong = d.path().join("wrong.key");
    std::fs::write(&wrong, [1u8; 32]).unwrap();
    write_cfg(&wrong);
    let snapshot = |p: &Path| -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<_> = std::fs::read_dir(p)
            .unwrap()
            .flatten()
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let before = snapshot(&spool);
    let out2 = d.path().join("out2");
    let o = Command::new(pbx_edge_bin())
        .args(["spool", "export", "exp", "--out"])
        .arg(&out2)
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("key id") && err.contains("not configured"),
        "{err}"
    );
    assert!(!err.contains(KEY_HEX));
    assert_eq!(snapshot(&spool), before);
    assert!(!out2.exists() || snapshot(&out2).is_empty());

    // Rotation: the new key as current, the old one listed: exports again.
    std::fs::write(
        &cfg,
        format!(
            "[spool]\ndir = \"{}\"\nencryption_key_file = \"{}\"\nold_key_files = [\"{}\"]\n",
            spool.display(),
            wrong.display(),
            key_file.display()
        ),
    )
    .unwrap();
    let out3 = d.path().join("out3");
    let o = Command::new(pbx_edge_bin())
        .args(["spool", "export", "exp", "--out"])
        .arg(&out3)
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // A key file of the wrong size: check-config names it at its line.
    let short = d.path().join("short.key");
    std::fs::write(&short, b"too short").unwrap();
    write_cfg(&short);
    let o = Command::new(pbx_edge_bin())
        .arg("check-config")
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr) + String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("c.toml:3: spool.encryption_key_file:") && err.contains("32 raw bytes"),
        "{err}"
    );
}

/// BENCHMARKS.md "Encryption at rest": CPU per call-minute of recording
/// with and without `encryption_key_file` (the live `.part` sealed chunk by
/// chunk, the finished WAV sealed anew, the JSON), and of reading it back
/// for upload (decrypting vs reading the plain file). Run by `benches/atrest.sh`.
#[test]
#[ignore]
fn bench_encryption_cpu() {
    use pbx_core::call::{CallKey, RecordingSink};
    const CALLS: u32 = 10;
    const CHUNKS: u32 = 600; // 100 ms each: one minute per call
    let d = tempfile::tempdir().unwrap();
    let (_, keys) = keyring(d.path());
    let mut cpu = Vec::new();
    for (name, seal) in [("plain", None), ("sealed", Some(keys.clone()))] {
        let dir = d.path().join(name);
        let mut rd = RecordingDir::new(&dir, ctx(seal.clone())).unwrap();
        let audio: Vec<Vec<i16>> = (0..CHUNKS).map(chunk).collect();
        let t = cpu_now(libc::RUSAGE_THREAD);
        for c in 0..CALLS {
            let key = CallKey(u64::from(c));
            let id = format!("{name}-{c}");
            rd.begin(key, &start(&id));
            for a in &audio {
                rd.audio(key, a);
            }
            let t0 = pbx_core::time::Timestamp::parse_rfc3339("2026-12-03T10:00:01.000Z").unwrap();
            rd.end(
                key,
                pbx_core::call::CallMeta {
                    key,
                    recording_id: id.clone(),
                    call_id: format!("{id}@src"),
                    recorded_call_id: None,
                    from: Default::default(),
                    to: Default::default(),
                    caller_known: true,
                    started_at: t0,
                    answered_at: None,
                    ended_at: t0.add_micros(60_000_000),
                    media_started_at: t0,
                    sample_rate: 8000,
                    frames: u64::from(CHUNKS) * 800,
                    channels: Default::default(),
                    dtmf: Vec::new(),
                    pauses: Vec::new(),
                    end_reason: pbx_core::call::EndReason::Bye,
                    warnings: Vec::new(),
                    ids: Default::default(),
                    signalling: None,
                    mixed_mono: false,
                },
            );
        }
        let write = cpu_now(libc::RUSAGE_THREAD) - t;
        assert_eq!(rd.counters.written, u64::from(CALLS), "{:?}", rd.errors);
        let t = cpu_now(libc::RUSAGE_THREAD);
        for c in 0..CALLS {
            let p = dir.join(format!("{name}-{c}.wav"));
            let (n, _) = pbx_edge::recording::hash_recording(&p, seal.as_deref()).unwrap();
            assert_eq!(n, 44 + u64::from(CHUNKS) * 3200);
        }
        let read = cpu_now(libc::RUSAGE_THREAD) - t;
        println!(
            "{name}: record {:.1} ms, read back (hash for upload) {:.1} ms CPU per call-minute",
            1000.0 * write / f64::from(CALLS),
            1000.0 * read / f64::from(CALLS)
        );
        cpu.push((write, read));
    }
    println!(
        "encryption costs {:.1} ms CPU per call-minute recorded, decryption {:.1} ms per call-minute uploaded",
        1000.0 * (cpu[1].0 - cpu[0].0) / f64::from(CALLS),
        1000.0 * (cpu[1].1 - cpu[0].1) / f64::from(CALLS)
    );
}
