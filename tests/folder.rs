//! The folder source against generated FreePBX-style recordings: split legs,
//! stereo, mono, raw, Master.csv, settling, once-only, broken files, odd paths.

mod common;

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pbx_core::audio::wav::WavWriter;
use pbx_edge::folder::{FolderScanner, FolderSettings, LegAlign};
use pbx_testgen::audio::{
    best_lag, correlation_at, halve, read_mono_wav, read_stereo_wav, rms, speechlike, tone,
};
use serde_json::Value;

const SETTLE: Duration = Duration::from_secs(5);

fn write_wav(path: &Path, rate: u32, channels: u16, samples: &[i16]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let f = File::create(path).unwrap();
    let mut w = WavWriter::new(f, rate, channels).unwrap();
    w.write_samples(samples).unwrap();
    w.finalize().unwrap();
}

fn day_dir(root: &Path) -> PathBuf {
    root.join("2026/11/24")
}

/// A PBX's recording folder and a spool in a temporary directory: (the
/// directory, the folder, the spool, the folder's day directory, made).
fn site() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("m");
    let spool = tmp.path().join("s");
    let d = day_dir(&root);
    fs::create_dir_all(&d).unwrap();
    (tmp, root, spool, d)
}

/// `bytes` written at the end of the file at `p` (a PBX still recording).
fn append(p: &Path, bytes: &[u8]) {
    fs::OpenOptions::new()
        .append(true)
        .open(p)
        .unwrap()
        .write_all(bytes)
        .unwrap();
}

/// `ms` of speech-like signed linear 8 kHz audio, as a `.sln` file holds it.
fn sln_bytes(seed: u64, ms: u32) -> Vec<u8> {
    speechlike(seed, ms, 8000)
        .iter()
        .flat_map(|s| s.to_le_bytes())
        .collect()
}

fn scanner(root: &Path, spool: &Path, cdr: Option<&Path>) -> FolderScanner {
    let settings = FolderSettings {
        cdr_wait: Duration::from_secs(30),
        ..FolderSettings::default()
    };
    FolderScanner::new(root, spool, "pbx-test", cdr, SETTLE, settings).unwrap()
}

/// Two scans a settle apart: everything present and unchanged is taken.
fn settle_scan(s: &mut FolderScanner, t0: Instant) -> usize {
    let a = s.scan(t0);
    a + s.scan(t0 + SETTLE + Duration::from_millis(1))
}

/// A recording's WAV as (rate, [channel 0, channel 1]): a mono mix (a
/// 1-channel WAV) gives an empty channel 1 (see [`assert_honest_mono`]).
fn read_wav(p: &Path) -> std::io::Result<(u32, [Vec<i16>; 2])> {
    match read_mono_wav(p) {
        Ok((rate, x)) => Ok((rate, [x, Vec::new()])),
        Err(_) => read_stereo_wav(p),
    }
}

/// A mono mix is a 1-channel WAV and its JSON says so (CONTRACT §3).
fn assert_honest_mono(wav: &Path, json: &Value) {
    let (_, x) = read_mono_wav(wav).expect("a 1-channel WAV");
    assert_eq!(json["mixed_mono"], true, "{json}");
    assert_eq!(json["audio"]["channels"], 1, "{json}");
    assert_eq!(json["audio"]["bytes"], fs::metadata(wav).unwrap().len());
    let ch = json["channels"].as_array().unwrap();
    assert_eq!(ch.len(), 1, "{json}");
    assert_eq!(ch[0]["party"], "mixed");
    assert_eq!(
        json["duration_ms"],
        x.len() as u64 * 1000 / json["audio"]["sample_rate"].as_u64().unwrap()
    );
}

/// A two-party recording is a 2-channel WAV.
fn assert_stereo(wav: &Path, json: &Value) {
    read_stereo_wav(wav).expect("a 2-channel WAV");
    assert_eq!(json["mixed_mono"], false, "{json}");
    assert_eq!(json["audio"]["channels"], 2, "{json}");
    assert_eq!(json["channels"].as_array().unwrap().len(), 2, "{json}");
}

fn json_of(p: &Path) -> Value {
    serde_json::from_slice(&fs::read(p).unwrap()).unwrap()
}

fn pairs(spool: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(spool)
        .unwrap()
        .filter_map(|e| {
            let n = e.unwrap().file_name().to_string_lossy().into_owned();
            n.strip_suffix(".json").map(str::to_string)
        })
        .filter(|n| !n.starts_with('.'))
        .collect();
    v.sort();
    v
}

#[test]
fn split_legs_merged_aligned_with_freepbx_metadata() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("monitor");
    let spool = tmp.path().join("spool");
    let caller = speechlike(1, 3000, 8000);
    let callee_speech = speechlike(2, 2000, 8000);
    // The callee leg starts with 500 ms of silence (it answered later),
    // written as silence (MixMonitor's S option): both legs 3 s.
    let mut callee = vec![0i16; 4000];
    callee.extend_from_slice(&callee_speech);
    callee.resize(caller.len(), 0);
    let stem = "out-5551234-1001-20261124-101502-1700000000.123";
    let d = day_dir(&root);
    write_wav(&d.join(format!("{stem}-in.wav")), 8000, 1, &caller);
    write_wav(&d.join(format!("{stem}-out.wav")), 8000, 1, &callee);

    let mut s = scanner(&root, &spool, None);
    assert_eq!(settle_scan(&mut s, Instant::now()), 1, "{:?}", s.errors);
    let c = &s.written[0];
    let (rate, [l, r]) = read_wav(&c.wav).unwrap();
    assert_eq!(rate, 8000);
    assert_eq!(l.len(), 3000 * 8);
    let (lag, corr) = best_lag(&l, &caller, 200);
    assert_eq!(lag, 0);
    assert!(corr > 0.99, "caller on channel 0: {corr}");
    let (lag, corr) = best_lag(&r, &callee, 200);
    assert_eq!(lag, 0);
    assert!(corr > 0.99, "callee on channel 1: {corr}");
    assert!(correlation_at(&l, &callee, 0).abs() < 0.2);
    assert!(rms(&r[..3900]) < 1.0, "offset kept: callee silent first");

    let j = json_of(&c.json);
    assert_eq!(j["schema"], "pbx-edge.recording/1");
    assert_eq!(j["source"], "folder");
    assert_eq!(j["agent_id"], "pbx-test");
    assert_eq!(j["call_id"], "1700000000.123");
    assert_eq!(j["from"]["number"], "1001");
    assert_eq!(j["to"]["number"], "5551234");
    assert_eq!(j["direction"], "outbound");
    // Who is who (issue 15, default [roles]: 2-5 digit extensions): the
    // caller is the agent at extension 1001, the callee the customer.
    assert_eq!(j["channels"][0]["role"], "agent");
    assert_eq!(j["channels"][0]["extension"], "1001");
    assert_eq!(j["channels"][1]["role"], "customer");
    assert!(j["channels"][1].get("extension").is_none());
    assert_eq!(j["started_at"], "2026-11-24T10:15:02.000Z");
    assert_eq!(j["ended_at"], "2026-11-24T10:15:05.000Z");
    assert_eq!(j["duration_ms"], 3000);
    assert_eq!(j["mixed_mono"], false);
    assert_eq!(j["audio"]["channels"], 2);
    assert_eq!(j["audio"]["sample_rate"], 8000);
    assert_eq!(j["audio"]["bytes"], fs::metadata(&c.wav).unwrap().len());
    assert_eq!(j["recording_id"], c.id.as_str());
    assert!(c.id.starts_with("20261124T101502Z-"));
    // The PBX's files are untouched.
    assert!(d.join(format!("{stem}-in.wav")).exists());
    assert!(d.join(format!("{stem}-out.wav")).exists());
    // Mode 0600.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&c.wav).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

/// One leg of a split recording cannot be read (its file holds six bytes
/// of a WAV header: a PBX's write cut short): the other party's leg is
/// still recorded, unchanged on its channel, the unreadable one silent
/// and named in a warning (before, the whole set was refused and the
/// readable caller's audio lost).
#[test]
fn an_unreadable_leg_leaves_the_other_recorded() {
    let (_tmp, root, spool, d) = site();
    let caller = speechlike(21, 2000, 8000);
    let stem = "in-1001-5551234-20261124-101502-1700000000.322";
    write_wav(&d.join(format!("{stem}-in.wav")), 8000, 1, &caller);
    fs::write(d.join(format!("{stem}-out.wav")), b"RIFF\0\0").unwrap();
    let mut s = scanner(&root, &spool, None);
    assert_eq!(settle_scan(&mut s, Instant::now()), 1, "{:?}", s.errors);
    let c = &s.written[0];
    let (_, [l, r]) = read_wav(&c.wav).unwrap();
    assert_eq!(l, caller, "channel 0 is the caller's leg, unchanged");
    assert!(r.iter().all(|x| *x == 0), "channel 1 silent");
    let j = json_of(&c.json);
    assert!(
        j["warnings"]
            .to_string()
            .contains("the callee leg (-out) cannot be read: channel 1 is silent"),
        "{j}"
    );
}

/// Without MixMonitor's S option Asterisk writes nothing for a direction
/// while it has no audio: a callee who answers 0.5 s in has a `t()` file
/// 0.5 s shorter, its audio missing at the START. The legs are lined up at
/// their end (default): the callee's first sample lands at 0.5 s exactly,
/// the caller's channel is unchanged. `leg_align = "start"` keeps the old
/// alignment for sites that know better.
#[test]
fn split_legs_of_different_lengths_lined_up_at_their_end() {
    let tmp = tempfile::tempdir().unwrap();
    let caller = speechlike(11, 3000, 8000);
    // The callee's audio from 0.5 s to 3 s; the file holds only that.
    let mut callee = speechlike(12, 2500, 8000);
    assert_eq!(callee.len(), 20000);
    callee[0] = 1234;
    let stem = "in-1001-5551234-20261124-101502-1700000000.321";
    for align in [LegAlign::End, LegAlign::Start] {
        let root = tmp.path().join(format!("monitor-{}", align.as_str()));
        let spool = tmp.path().join(format!("spool-{}", align.as_str()));
        let d = day_dir(&root);
        write_wav(&d.join(format!("{stem}-in.wav")), 8000, 1, &caller);
        write_wav(&d.join(format!("{stem}-out.wav")), 8000, 1, &callee);
        let settings = FolderSettings {
            leg_align: align,
            ..FolderSettings::default()
        };
        let mut s = FolderScanner::new(&root, &spool, "pbx-test", None, SETTLE, settings).unwrap();
        assert_eq!(settle_scan(&mut s, Instant::now()), 1, "{:?}", s.errors);
        let c = &s.written[0];
        let (rate, [l, r]) = read_wav(&c.wav).unwrap();
        assert_eq!(rate, 8000);
        assert_eq!(l, caller, "channel 0 is the caller's leg, unchanged");
        assert_eq!(r.len(), 24000);
        let j = json_of(&c.json);
        assert_eq!(j["legs_differ_ms"], 500, "{j}");
        assert_eq!(j["leg_align"], align.as_str(), "{j}");
        assert!(
            j["warnings"]
                .as_array()
                .unwrap()
                .iter()
                .any(|w| w.as_str().unwrap().contains("differ in length by 500 ms")),
            "{j}"
        );
        match align {
            LegAlign::End => {
                assert!(r[..4000].iter().all(|&x| x == 0), "silence before 0.5 s");
                assert_eq!(
                    &r[4000..],
                    &callee[..],
                    "the callee's first sample at 0.5 s"
                );
            }
            LegAlign::Start => {
                assert_eq!(&r[..20000], &callee[..]);
                assert!(r[20000..].iter().all(|&x| x == 0));
            }
        }
    }
}

/// `recording.min_duration` and a fixed `recording.sample_rate` (CONTRACT
/// §2) hold for the folder source too: a 2 s recording is not kept with
/// min_duration 5 s (counted, marked seen, never tried again, the PBX's
/// file left as it is); 8 kHz legs become 16 kHz with sample_rate 16000, a
/// 16 kHz file 8 kHz with 8000.
#[test]
fn min_duration_and_fixed_sample_rate_apply() {
    use pbx_edge::config::SampleRate;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("monitor");
    let spool = tmp.path().join("spool");
    let d = day_dir(&root);
    let short = "in-1001-5551234-20261124-101502-1700000000.501";
    let long = "in-1001-5551234-20261124-101502-1700000000.502";
    write_wav(
        &d.join(format!("{short}-in.wav")),
        8000,
        1,
        &tone(440.0, 2000, 8000, 8000.0),
    );
    write_wav(
        &d.join(format!("{short}-out.wav")),
        8000,
        1,
        &tone(700.0, 2000, 8000, 8000.0),
    );
    let caller = tone(440.0, 6000, 8000, 8000.0);
    write_wav(&d.join(format!("{long}-in.wav")), 8000, 1, &caller);
    write_wav(
        &d.join(format!("{long}-out.wav")),
        8000,
        1,
        &tone(700.0, 6000, 8000, 8000.0),
    );
    let settings = FolderSettings {
        min_duration: Duration::from_secs(5),
        sample_rate: SampleRate::Hz16000,
        ..FolderSettings::default()
    };
    let t0 = Instant::now();
    let mut s = FolderScanner::new(&root, &spool, "pbx-test", None, SETTLE, settings).unwrap();
    assert_eq!(settle_scan(&mut s, t0), 1, "{:?}", s.errors);
    assert_eq!(s.counters.too_short, 1);
    assert_eq!(s.counters.failed, 0, "not a failure");
    assert_eq!(pairs(&spool).len(), 1);
    let c = &s.written[0];
    assert_eq!(json_of(&c.json)["call_id"], "1700000000.502");
    let (rate, [l, r]) = read_wav(&c.wav).unwrap();
    assert_eq!(rate, 16000, "sample_rate = 16000 from 8 kHz legs");
    assert_eq!(json_of(&c.json)["audio"]["sample_rate"], 16000);
    assert_eq!(l.len(), 6000 * 16);
    assert_eq!(r.len(), 6000 * 16);
    let (lag, corr) = best_lag(&halve(&l), &caller, 10);
    assert!(lag.abs() <= 1 && corr > 0.95, "{lag} {corr}");
    // Seen: a later pass (and a restart) does not take it again.
    s.request_rescan();
    assert_eq!(s.scan(t0 + SETTLE * 3), 0);
    assert_eq!(s.counters.too_short, 1, "not tried again");
    drop(s);
    let settings = FolderSettings {
        min_duration: Duration::from_secs(5),
        ..FolderSettings::default()
    };
    let mut s = FolderScanner::new(&root, &spool, "pbx-test", None, SETTLE, settings).unwrap();
    assert_eq!(settle_scan(&mut s, Instant::now()), 0);
    assert_eq!(s.counters.too_short, 0, "remembered across restarts");
    assert!(
        d.join(format!("{short}-in.wav")).exists(),
        "the PBX's file is left"
    );
    assert!(d.join(format!("{short}-out.wav")).exists());

    // 16 kHz in, sample_rate = 8000: 8 kHz out.
    let root = tmp.path().join("monitor16");
    let spool = tmp.path().join("spool16");
    let wide = tone(440.0, 1000, 16000, 8000.0);
    write_wav(
        &day_dir(&root).join("in-1001-5551234-20261124-101502-1700000000.503.wav"),
        16000,
        2,
        &interleave(&wide, &wide),
    );
    let settings = FolderSettings {
        sample_rate: SampleRate::Hz8000,
        ..FolderSettings::default()
    };
    let mut s = FolderScanner::new(&root, &spool, "pbx-test", None, SETTLE, settings).unwrap();
    assert_eq!(settle_scan(&mut s, Instant::now()), 1, "{:?}", s.errors);
    let (rate, [l, _]) = read_wav(&s.written[0].wav).unwrap();
    assert_eq!(rate, 8000, "sample_rate = 8000 from a 16 kHz file");
    assert_eq!(l.len(), 8000);
}

#[test]
fn legs_of_different_rates_resampled_to_16k() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("m");
    let spool = tmp.path().join("s");
    let caller = speechlike(3, 2000, 8000);
    let callee16 = speechlike(4, 2000, 16000);
    write_wav(&root.join("1700000001.5-in.wav"), 8000, 1, &caller);
    write_wav(&root.join("1700000001.5-out.wav"), 16000, 1, &callee16);
    let mut s = scanner(&root, &spool, None);
    assert_eq!(settle_scan(&mut s, Instant::now()), 1, "{:?}", s.errors);
    let (rate, [l, r]) = read_wav(&s.written[0].wav).unwrap();
    assert_eq!(rate, 16000);
    assert_eq!(l.len(), 32000);
    let (lag, corr) = best_lag(&halve(&l), &caller, 50);
    assert!(lag.abs() <= 1 && corr > 0.8, "{lag} {corr}");
    let (lag, corr) = best_lag(&r, &callee16, 50);
    assert!(lag == 0 && corr > 0.99, "{lag} {corr}");
    let j = json_of(&s.written[0].json);
    assert_eq!(j["call_id"], "1700000001.5");
    assert_eq!(j["direction"], "unknown");
}

#[test]
fn stereo_as_is_mono_flagged_raw_read() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("m");
    let spool = tmp.path().join("s");
    let d = day_dir(&root);
    let a = tone(440.0, 1000, 8000, 0.3);
    let b = speechlike(5, 1000, 8000);
    let inter: Vec<i16> = a.iter().zip(&b).flat_map(|(x, y)| [*x, *y]).collect();
    write_wav(
        &d.join("in-1001-5550000-20261124-090000-1700000002.1.wav"),
        8000,
        2,
        &inter,
    );
    let mono = speechlike(6, 1500, 8000);
    write_wav(
        &d.join("internal-1002-1001-20261124-091000-1700000003.1.wav"),
        8000,
        1,
        &mono,
    );
    let raw = speechlike(7, 800, 8000);
    let bytes: Vec<u8> = raw.iter().flat_map(|s| s.to_le_bytes()).collect();
    fs::write(
        d.join("q-600-5551111-20261124-092000-1700000004.1.sln"),
        bytes,
    )
    .unwrap();

    let mut s = scanner(&root, &spool, None);
    assert_eq!(settle_scan(&mut s, Instant::now()), 3, "{:?}", s.errors);
    let by_call = |id: &str| {
        s.written
            .iter()
            .find(|c| json_of(&c.json)["call_id"] == id)
            .unwrap()
            .clone()
    };
    let st = by_call("1700000002.1");
    let (_, [l, r]) = read_wav(&st.wav).unwrap();
    assert_eq!(l, a);
    assert_eq!(r, b);
    let j = json_of(&st.json);
    assert_eq!(j["direction"], "inbound");
    assert_stereo(&st.wav, &j);

    let mo = by_call("1700000003.1");
    let (_, x) = read_mono_wav(&mo.wav).unwrap();
    assert_eq!(x, mono);
    let j = json_of(&mo.json);
    assert_honest_mono(&mo.wav, &j);
    assert_eq!(j["direction"], "internal");
    assert!(j["warnings"][0].as_str().unwrap().contains("mono"));

    let rw = by_call("1700000004.1");
    let (rate, [l, _]) = read_wav(&rw.wav).unwrap();
    assert_eq!(rate, 8000);
    assert_eq!(l, raw);
    assert_eq!(json_of(&rw.json)["direction"], "inbound");
}

#[test]
fn master_csv_fills_call_details_and_late_row_is_waited_for() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("m");
    let spool = tmp.path().join("s");
    let d = day_dir(&root);
    let stem = "in-5550000-15551230000-20261124-101502-1700000010.7";
    write_wav(
        &d.join(format!("{stem}.wav")),
        8000,
        1,
        &speechlike(8, 1000, 8000),
    );
    let csv = tmp.path().join("Master.csv");
    fs::write(
        &csv,
        "\"\",\"999\",\"1\",\"ctx\",\"\",\"\",\"\",\"\",\"\",\"2026-11-24 09:00:00\",\"\",\"2026-11-24 09:00:01\",1,0,\"NO ANSWER\",\"DOCUMENTATION\",\"1600000000.1\",\"\"\n",
    )
    .unwrap();
    let mut s = scanner(&root, &spool, Some(&csv));
    let t0 = Instant::now();
    assert_eq!(settle_scan(&mut s, t0), 0, "waits for its CDR row");
    let mut f = fs::OpenOptions::new().append(true).open(&csv).unwrap();
    writeln!(
        f,
        r#""","15551230000","5550000","from-trunk","""Bob Smith"" <15551230000>","SIP/trunk-0001","SIP/1001-0002","Dial","SIP/1001,30","2026-11-24 10:15:01","2026-11-24 10:15:04","2026-11-24 10:16:04",63,60,"ANSWERED","DOCUMENTATION","1700000010.7","""#
    )
    .unwrap();
    drop(f);
    assert_eq!(s.scan(t0 + SETTLE * 2), 1, "{:?}", s.errors);
    let j = json_of(&s.written[0].json);
    assert_eq!(j["call_id"], "1700000010.7");
    assert_eq!(j["from"]["number"], "15551230000");
    assert_eq!(j["from"]["name"], "Bob Smith");
    assert_eq!(j["to"]["number"], "5550000");
    assert_eq!(j["started_at"], "2026-11-24T10:15:01.000Z");
    assert_eq!(j["answered_at"], "2026-11-24T10:15:04.000Z");
    assert_eq!(j["ended_at"], "2026-11-24T10:16:04.000Z");
    assert_eq!(j["disposition"], "ANSWERED");
    assert_eq!(j["cdr"], true);
    assert_eq!(j["mixed_mono"], true);

    // A recording whose row never comes goes after cdr_wait with the file name.
    let stem2 = "out-5552222-1001-20261124-110000-1700000011.1";
    write_wav(
        &d.join(format!("{stem2}.wav")),
        8000,
        1,
        &speechlike(9, 500, 8000),
    );
    let t1 = t0 + SETTLE * 3;
    s.scan(t1);
    assert_eq!(s.scan(t1 + SETTLE + Duration::from_secs(1)), 0);
    assert_eq!(s.scan(t1 + SETTLE + Duration::from_secs(31)), 1);
    let j = json_of(&s.written[1].json);
    assert_eq!(j["cdr"], false);
    assert_eq!(j["from"]["number"], "1001");
}

#[test]
fn growing_file_not_taken_until_settled() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("m");
    let spool = tmp.path().join("s");
    let p = root.join("1700000020.1.sln");
    fs::create_dir_all(&root).unwrap();
    let chunk = sln_bytes(10, 200);
    fs::write(&p, &chunk).unwrap();
    let mut s = scanner(&root, &spool, None);
    let t0 = Instant::now();
    assert_eq!(s.scan(t0), 0);
    // Still being written: grows before each scan.
    for i in 1..=4u32 {
        append(&p, &chunk);
        assert_eq!(s.scan(t0 + SETTLE * i + Duration::from_millis(1)), 0);
    }
    assert!(pairs(&spool).is_empty());
    // Quiet now, but not yet for `settle`.
    assert_eq!(s.scan(t0 + SETTLE * 4 + Duration::from_secs(2)), 0);
    assert_eq!(s.scan(t0 + SETTLE * 5 + Duration::from_millis(2)), 1);
    assert_eq!(s.written[0].duration_ms, 1000, "all five chunks");
}

/// A headerless file taken (it stayed unchanged for `settle`: a call on
/// hold when the daemon started), then written to again (the call
/// resumed), is taken again as a recording of its own, under an id of its
/// own: before, a FreePBX name gave it the first take's id, which the
/// spool and the cloud hold already, and what came after the hold never
/// reached the cloud. The first take stays as it was.
#[test]
fn a_file_written_to_after_it_was_taken_is_a_recording_of_its_own() {
    let (_tmp, root, spool, d) = site();
    let p = d.join("out-15550000072-1001-20260116-100000-1768558000.72.sln");
    let chunk = sln_bytes(12, 2000);
    fs::write(&p, &chunk).unwrap();
    let mut s = scanner(&root, &spool, None);
    let t0 = Instant::now();
    assert_eq!(settle_scan(&mut s, t0), 1);
    let first = s.written[0].clone();
    assert_eq!(first.duration_ms, 2000);
    append(&p, &chunk);
    assert_eq!(settle_scan(&mut s, t0 + SETTLE * 2), 1);
    let second = s.written[1].clone();
    assert_eq!(second.duration_ms, 4000);
    assert_ne!(second.id, first.id);
    assert!(
        second
            .warnings
            .iter()
            .any(|w| w.contains("a recording of its own")),
        "{:?}",
        second.warnings
    );
    // The first take's files are as they were.
    assert_eq!(json_of(&first.json)["duration_ms"], 2000);
    assert_eq!(pairs(&spool).len(), 2);
}

#[test]
fn taken_once_across_restarts_and_renames() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("m");
    let spool = tmp.path().join("s");
    write_wav(
        &root.join("a/1700000030.1.wav"),
        8000,
        1,
        &speechlike(11, 300, 8000),
    );
    let mut s = scanner(&root, &spool, None);
    assert_eq!(settle_scan(&mut s, Instant::now()), 1);
    assert_eq!(settle_scan(&mut s, Instant::now() + SETTLE * 4), 0);
    drop(s);
    // A conversion cut off by a crash leaves a temp file: removed at start.
    fs::write(spool.join(".x.wav.folder-tmp"), b"half").unwrap();
    // Restart; the PBX (or an admin) moves the file meanwhile.
    fs::create_dir_all(root.join("b")).unwrap();
    fs::rename(root.join("a/1700000030.1.wav"), root.join("b/moved.wav")).unwrap();
    let mut s2 = scanner(&root, &spool, None);
    assert_eq!(settle_scan(&mut s2, Instant::now()), 0);
    // A new file after the restart is taken.
    write_wav(
        &root.join("b/1700000031.1.wav"),
        8000,
        1,
        &speechlike(12, 300, 8000),
    );
    assert_eq!(settle_scan(&mut s2, Instant::now() + SETTLE * 4), 1);
    assert_eq!(pairs(&spool).len(), 2);
    assert!(spool.join(".folder-seen").exists());
    assert!(!spool.join(".x.wav.folder-tmp").exists());
}

#[test]
fn broken_file_reported_others_continue() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("m");
    let spool = tmp.path().join("s");
    fs::create_dir_all(&root).unwrap();
    fs::write(
        root.join("1700000040.1.wav"),
        b"RIFF\x10\0\0\0WAVEjunkjunkjunk",
    )
    .unwrap();
    // 8-bit WAV: a format pbx-edge does not take.
    {
        let mut h = pbx_core::audio::wav::canonical_header(8000, 1, 4).to_vec();
        h[34] = 8; // bits per sample
        h.extend_from_slice(&[1, 2, 3, 4]);
        fs::write(root.join("1700000041.1.wav"), h).unwrap();
    }
    write_wav(
        &root.join("1700000042.1.wav"),
        8000,
        1,
        &speechlike(13, 300, 8000),
    );
    let mut s = scanner(&root, &spool, None);
    assert_eq!(settle_scan(&mut s, Instant::now()), 1);
    assert_eq!(s.counters.failed, 2);
    assert_eq!(s.errors.len(), 2);
    assert!(
        s.errors.iter().any(|e| e.contains("1700000040.1")),
        "{:?}",
        s.errors
    );
    assert!(
        s.errors.iter().any(|e| e.contains("8 bits")),
        "{:?}",
        s.errors
    );
    // Not retried in a loop.
    assert_eq!(settle_scan(&mut s, Instant::now() + SETTLE * 4), 0);
    assert_eq!(s.counters.failed, 2);
    assert_eq!(pairs(&spool).len(), 1);
    // No stray temp files.
    assert!(fs::read_dir(&spool).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .contains("tmp")));
}

#[test]
fn odd_characters_in_path() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("rec ordings 'quoted' \"dq\" ünïcødé");
    let spool = tmp.path().join("spool dir");
    let d = root.join("2026/11/24/sub dir ✓");
    let stem = "in-55 5-Ölaf's phone-20261124-101502-1700000050.2";
    write_wav(
        &d.join(format!("{stem}-in.wav")),
        8000,
        1,
        &speechlike(14, 400, 8000),
    );
    write_wav(
        &d.join(format!("{stem}-out.wav")),
        8000,
        1,
        &speechlike(15, 400, 8000),
    );
    let mut s = scanner(&root, &spool, None);
    assert_eq!(settle_scan(&mut s, Instant::now()), 1, "{:?}", s.errors);
    let j = json_of(&s.written[0].json);
    assert_eq!(j["call_id"], "1700000050.2");
    assert_eq!(j["from"]["number"], "Ölaf's phone");
    assert!(!s.written[0].id.contains(' '));
    let mut s2 = scanner(&root, &spool, None);
    assert_eq!(
        settle_scan(&mut s2, Instant::now()),
        0,
        "seen file with odd names reloads"
    );
}

#[test]
fn spool_inside_the_pbx_folder_is_not_rescanned() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("m");
    let spool = root.join("pbx-edge-spool");
    write_wav(
        &root.join("1700000060.1.wav"),
        8000,
        1,
        &speechlike(16, 300, 8000),
    );
    let mut s = scanner(&root, &spool, None);
    assert_eq!(settle_scan(&mut s, Instant::now()), 1);
    assert_eq!(settle_scan(&mut s, Instant::now() + SETTLE * 4), 0);
    assert_eq!(pairs(&spool).len(), 1);
}

#[test]
fn start_runs_in_a_thread_and_publishes_status() {
    use std::sync::{Arc, Mutex};
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("m");
    let spool = tmp.path().join("s");
    write_wav(
        &root.join("2026/11/24/out-5551234-1001-20261124-101502-1700000070.1.wav"),
        8000,
        1,
        &speechlike(17, 300, 8000),
    );
    let mut cfg = pbx_edge::config::Config::defaults(Some(spool.to_str().unwrap()));
    cfg.spool.dir = spool.clone();
    cfg.sources.folder.enabled = true;
    cfg.sources.folder.path = root.clone();
    cfg.sources.folder.settle = Duration::from_millis(200);
    let status: pbx_edge::status::SharedStatus =
        Arc::new(Mutex::new(pbx_edge::status::Status::default()));
    let live = pbx_edge::health::Liveness::new();
    let settings = FolderSettings {
        poll: Duration::from_millis(50),
        ..FolderSettings::default()
    };
    let h = pbx_edge::folder::start_with(&cfg, settings, status.clone(), live).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while pairs(&spool).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(150));
    h.stop();
    assert_eq!(pairs(&spool).len(), 1);
    let st = status.lock().unwrap();
    let f = st.sources.get("folder").expect("folder status");
    assert!(f.up);
    assert_eq!(f.recordings_written, 1);
    assert_eq!(f.errors, 0);
}

#[test]
fn espeak_speech_legs_at_16k_and_8k() {
    let tmp = tempfile::tempdir().unwrap();
    let (Some(caller), Some(callee)) = (
        pbx_testgen::audio::espeak(
            "Hello, I would like to check my order.",
            "en",
            16000,
            tmp.path(),
        ),
        pbx_testgen::audio::espeak("Sure, what is the order number?", "en", 8000, tmp.path()),
    ) else {
        eprintln!("espeak-ng not available: test skipped");
        return;
    };
    let root = tmp.path().join("monitor");
    let spool = tmp.path().join("spool");
    let d = day_dir(&root);
    let stem = "in-5550100-5559876-20261124-120000-1700000080.3";
    // The callee answers 1 s in; both legs last as long (silence written:
    // MixMonitor's S option).
    let mut late = vec![0i16; 8000];
    late.extend_from_slice(&callee);
    let n8 = late.len().max(caller.len().div_ceil(2));
    late.resize(n8, 0);
    let mut caller = caller;
    caller.resize(n8 * 2, 0);
    write_wav(&d.join(format!("{stem}-in.wav")), 16000, 1, &caller);
    write_wav(&d.join(format!("{stem}-out.wav")), 8000, 1, &late);
    let mut s = scanner(&root, &spool, None);
    assert_eq!(settle_scan(&mut s, Instant::now()), 1, "{:?}", s.errors);
    let (rate, [l, r]) = read_wav(&s.written[0].wav).unwrap();
    assert_eq!(rate, 16000);
    assert_eq!(l.len(), caller.len().max(late.len() * 2));
    let (lag, c) = best_lag(&l, &caller, 100);
    assert!(lag == 0 && c > 0.99, "{lag} {c}");
    let (lag, c) = best_lag(&halve(&r), &late, 100);
    assert!(lag.abs() <= 1 && c > 0.8, "{lag} {c}");
    assert!(rms(&r[..15_000]) < 50.0, "callee silent before answering");
}

#[test]
fn three_cx_stereo_with_a_name_pattern() {
    use pbx_edge::folder::NamePattern;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("3cx");
    let spool = tmp.path().join("s");
    let a = speechlike(20, 600, 8000);
    let b = speechlike(21, 600, 8000);
    let inter: Vec<i16> = a.iter().zip(&b).flat_map(|(x, y)| [*x, *y]).collect();
    write_wav(
        &root.join("1001/[Alice Smith]_1001-5551234_20261124101502(77).wav"),
        8000,
        2,
        &inter,
    );
    let settings = FolderSettings {
        name_patterns: vec![NamePattern::new(
            r"^\[(?P<src_name>[^\]]*)\]_(?P<src>[^_-]*)-(?P<dst>[^_]*)_(?P<datetime>\d{14})\((?P<uniqueid>[^)]+)\)$",
        )
        .unwrap()],
        ..FolderSettings::default()
    };
    let mut s = FolderScanner::new(&root, &spool, "a", None, SETTLE, settings).unwrap();
    assert_eq!(settle_scan(&mut s, Instant::now()), 1, "{:?}", s.errors);
    let j = json_of(&s.written[0].json);
    assert_eq!(j["call_id"], "77");
    assert_eq!(j["from"]["name"], "Alice Smith");
    assert_eq!(j["from"]["number"], "1001");
    assert_eq!(j["to"]["number"], "5551234");
    assert_eq!(j["started_at"], "2026-11-24T10:15:02.000Z");
    let (_, [l, r]) = read_wav(&s.written[0].wav).unwrap();
    assert_eq!((l, r), (a, b));
}

#[test]
fn old_files_ignored_with_max_age_and_raw_stereo() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("m");
    let spool = tmp.path().join("s");
    fs::create_dir_all(&root).unwrap();
    let a = tone(300.0, 500, 8000, 0.2);
    let b = tone(700.0, 500, 8000, 0.2);
    let bytes: Vec<u8> = a
        .iter()
        .zip(&b)
        .flat_map(|(x, y)| [*x, *y])
        .flat_map(|s| s.to_le_bytes())
        .collect();
    fs::write(root.join("new-1700000090.1.raw"), &bytes).unwrap();
    let old = root.join("old-1600000000.1.raw");
    fs::write(&old, &bytes).unwrap();
    let status = std::process::Command::new("touch")
        .args(["-d", "2020-01-01 00:00:00"])
        .arg(&old)
        .status()
        .unwrap();
    assert!(status.success());
    let settings = FolderSettings {
        raw_stereo: pbx_edge::folder::RawStereo::Stereo,
        max_age: Some(Duration::from_secs(7 * 86400)),
        ..FolderSettings::default()
    };
    let mut s = FolderScanner::new(&root, &spool, "a", None, SETTLE, settings).unwrap();
    assert_eq!(settle_scan(&mut s, Instant::now()), 1, "{:?}", s.errors);
    let (_, [l, r]) = read_wav(&s.written[0].wav).unwrap();
    assert_eq!((l, r), (a, b));
    assert_eq!(json_of(&s.written[0].json)["call_id"], "new-1700000090.1");
}

#[test]
fn spool_write_error_is_retried_not_forgotten() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("m");
    let spool = tmp.path().join("s");
    write_wav(
        &root.join("1700000100.1.wav"),
        8000,
        1,
        &speechlike(30, 300, 8000),
    );
    let mut s = scanner(&root, &spool, None);
    let t0 = Instant::now();
    s.scan(t0);
    // The spool breaks (a file where the directory was: fails even as root).
    fs::remove_dir_all(&spool).unwrap();
    fs::write(&spool, b"not a dir").unwrap();
    assert_eq!(s.scan(t0 + SETTLE + Duration::from_millis(1)), 0);
    assert_eq!(s.counters.failed, 1);
    assert!(s.errors.back().unwrap().contains("will retry"));
    // Repaired: taken after settling again.
    fs::remove_file(&spool).unwrap();
    fs::create_dir_all(&spool).unwrap();
    assert_eq!(
        s.scan(t0 + SETTLE + Duration::from_secs(1)),
        0,
        "waits to settle again"
    );
    assert_eq!(
        s.scan(t0 + SETTLE * 2 + Duration::from_millis(2)),
        1,
        "{:?}",
        s.errors
    );
    assert_eq!(pairs(&spool).len(), 1);
}

#[test]
fn quiet_directories_are_not_relisted_but_new_and_growing_files_are_seen() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("m");
    let spool = tmp.path().join("s");
    let d = root.join("2026/11/24");
    fs::create_dir_all(&d).unwrap();
    let p = d.join("1700000110.1.sln");
    let chunk = sln_bytes(40, 200);
    fs::write(&p, &chunk).unwrap();
    let touch_old = |dir: &Path| {
        let ok = std::process::Command::new("touch")
            .args(["-d", "2020-01-01 00:00:00"])
            .arg(dir)
            .status()
            .unwrap()
            .success();
        assert!(ok);
    };
    touch_old(&d);
    let mut s = scanner(&root, &spool, None);
    let t0 = Instant::now();
    assert_eq!(s.scan(t0), 0);
    // Grows in a directory whose mtime does not change.
    fs::OpenOptions::new()
        .append(true)
        .open(&p)
        .unwrap()
        .write_all(&chunk)
        .unwrap();
    assert_eq!(s.scan(t0 + SETTLE + Duration::from_millis(1)), 0);
    assert_eq!(s.scan(t0 + SETTLE * 2 + Duration::from_millis(2)), 1);
    assert_eq!(s.written[0].duration_ms, 400);
    // A new file in the (now cached) directory changes its mtime: found.
    touch_old(&d);
    s.scan(t0 + SETTLE * 3);
    write_wav(
        &d.join("1700000111.1.wav"),
        8000,
        1,
        &speechlike(41, 300, 8000),
    );
    s.scan(t0 + SETTLE * 4);
    assert_eq!(s.scan(t0 + SETTLE * 5 + Duration::from_millis(1)), 1);
}

#[test]
fn after_delivery_move_and_delete_only_once_delivered() {
    use pbx_edge::folder::AfterDelivery;
    use pbx_edge::spool::{now_ms, Spool};
    for action in [AfterDelivery::Move, AfterDelivery::Delete] {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("monitor");
        let spool = tmp.path().join("spool");
        let moved = tmp.path().join("done");
        let stem = "out-5551234-1001-20261124-101502-1700000000.5";
        let d = day_dir(&root);
        let files = [
            d.join(format!("{stem}-in.wav")),
            d.join(format!("{stem}-out.wav")),
        ];
        for f in &files {
            write_wav(f, 8000, 1, &speechlike(7, 500, 8000));
        }
        let settings = FolderSettings {
            after_delivery: action,
            move_to: Some(moved.clone()),
            ..FolderSettings::default()
        };
        let mut s = FolderScanner::new(&root, &spool, "pbx-test", None, SETTLE, settings).unwrap();
        let t0 = Instant::now();
        assert_eq!(settle_scan(&mut s, t0), 1, "{:?}", s.errors);
        let id = s.written[0].id.clone();
        // Spooled, queued, not delivered: the PBX's files stay.
        let mut sp = Spool::open(&spool).unwrap();
        sp.scan(now_ms()).unwrap();
        assert!(sp.mark_queued(&id, now_ms()).unwrap());
        s.scan(t0 + SETTLE * 2);
        assert!(
            files.iter().all(|f| f.exists()),
            "{action:?} before delivery"
        );
        // Delivered, and expired at once (retention 0): the watch still fires.
        assert!(sp.mark_delivered(&id, now_ms()).unwrap());
        sp.expire_delivered(now_ms(), Duration::ZERO).unwrap();
        s.scan(t0 + SETTLE * 3);
        assert!(
            files.iter().all(|f| !f.exists()),
            "{action:?}: {:?}",
            s.errors
        );
        let target = moved.join("2026/11/24").join(format!("{stem}-in.wav"));
        assert_eq!(target.exists(), action == AfterDelivery::Move);
        // Nothing taken again, no error.
        assert_eq!(s.scan(t0 + SETTLE * 4), 0);
        assert!(s.errors.is_empty(), "{:?}", s.errors);
        assert_eq!(pairs(&spool).len(), 0, "expired from the spool");
    }
}

// ------------------------------------------------------------ inotify
//
// The folder thread with inotify. The poll interval and the safety listing
// are set to an hour: whatever is taken within the test was found through
// inotify events. No test asserts how fast: each waits (bounded) for what
// must happen, and checks what must not happen while it waits.

/// `sox <src> <args...> <dst>`; panics on failure.
fn sox(src: &Path, args: &[&str], dst: &Path) {
    let out = std::process::Command::new("sox")
        .arg("-V1")
        .arg(src)
        .args(args)
        .arg(dst)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sox {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// sox's (libgsm's) decoding of a `.gsm` / WAV49 file, as s16 samples.
fn sox_decoded(file: &Path, tmp: &Path) -> Vec<i16> {
    let raw = tmp.join("sox-decoded.raw");
    sox(file, &["-t", "raw", "-e", "signed", "-b", "16"], &raw);
    fs::read(&raw)
        .unwrap()
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect()
}

/// Speech at 8 kHz (espeak-ng), or a speech-like signal without it.
fn speech_8k(text: &str, seed: u64, tmp: &Path) -> Vec<i16> {
    pbx_testgen::audio::espeak(text, "en", 8000, tmp).unwrap_or_else(|| {
        eprintln!("espeak-ng not available: a speech-like signal instead");
        speechlike(seed, 2500, 8000)
    })
}

#[test]
fn wav49_split_legs_merged_exact_with_sox() {
    if !common::have("sox") {
        eprintln!("sox not available: WAV49 folder test skipped");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    fs::create_dir_all(&work).unwrap();
    let caller = speech_8k("Hello, I am calling about my last invoice.", 21, &work);
    let callee_speech = speech_8k("Of course, can you give me the invoice number?", 22, &work);
    // The callee answers 600 ms in; both legs last as long (silence
    // written: MixMonitor's S option).
    let mut callee = vec![0i16; 4800];
    callee.extend_from_slice(&callee_speech);
    let n = callee.len().max(caller.len());
    callee.resize(n, 0);
    let mut caller = caller;
    caller.resize(n, 0);
    // Asterisk `wav49`: GSM 6.10 in WAV, written as `.WAV`.
    let root = tmp.path().join("monitor");
    let spool = tmp.path().join("spool");
    let d = day_dir(&root);
    fs::create_dir_all(&d).unwrap();
    let stem = "in-5550100-5559876-20261124-130000-1700000090.7";
    let legs = [(&caller, "in"), (&callee, "out")].map(|(pcm, leg)| {
        let src = work.join(format!("{leg}.wav"));
        write_wav(&src, 8000, 1, pcm);
        let dst = d.join(format!("{stem}-{leg}.WAV"));
        sox(&src, &["-e", "gsm-full-rate"], &dst);
        dst
    });
    let want_l = sox_decoded(&legs[0], &work);
    let want_r = sox_decoded(&legs[1], &work);

    let mut s = scanner(&root, &spool, None);
    assert_eq!(settle_scan(&mut s, Instant::now()), 1, "{:?}", s.errors);
    let c = &s.written[0];
    let (rate, [l, r]) = read_wav(&c.wav).unwrap();
    assert_eq!(rate, 8000);
    let frames = want_l.len().max(want_r.len());
    assert_eq!(l.len(), frames, "padded to the longer leg");
    // Sample for sample what sox (libgsm) decodes, the shorter leg padded.
    assert_eq!(
        &l[..want_l.len()],
        &want_l[..],
        "caller leg = sox's decoding"
    );
    assert_eq!(
        &r[..want_r.len()],
        &want_r[..],
        "callee leg = sox's decoding"
    );
    assert!(l[want_l.len()..]
        .iter()
        .chain(&r[want_r.len()..])
        .all(|&x| x == 0));
    // And close to what was said, on the right channels, in time.
    let (lag, corr) = best_lag(&l, &caller, 80);
    assert!(lag == 0 && corr > 0.9, "caller on channel 0: {lag} {corr}");
    let (lag, corr) = best_lag(&r, &callee, 80);
    assert!(lag == 0 && corr > 0.9, "callee on channel 1: {lag} {corr}");
    assert!(correlation_at(&l, &callee, 0).abs() < 0.2);
    assert!(rms(&r[..4700]) < 50.0, "callee silent before answering");

    let j = json_of(&c.json);
    assert_eq!(j["call_id"], "1700000090.7");
    assert_eq!(j["direction"], "inbound");
    assert_eq!(j["mixed_mono"], false);
    assert_eq!(j["channels"][0]["codec"], "GSM");
    assert_eq!(j["channels"][1]["codec"], "GSM");
    let warnings = j["warnings"].as_array().unwrap();
    assert!(
        !warnings.iter().any(|w| w.as_str().unwrap().contains("GSM")),
        "sox's RIFF pad byte is not a partial block: {warnings:?}"
    );
}

#[test]
fn gsm_raw_mono_and_broken_gsm_files_reported() {
    if !common::have("sox") {
        eprintln!("sox not available: GSM folder test skipped");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    fs::create_dir_all(&work).unwrap();
    let root = tmp.path().join("m");
    let spool = tmp.path().join("s");
    fs::create_dir_all(&root).unwrap();
    let speech = speech_8k(
        "Thank you for holding, an agent will be with you shortly.",
        23,
        &work,
    );
    let src = work.join("src.wav");
    write_wav(&src, 8000, 1, &speech);
    // Asterisk `gsm`: raw frames, a mono mix.
    let gsm = root.join("1700000091.1.gsm");
    sox(&src, &[], &gsm);
    let want = sox_decoded(&gsm, &work);
    // A `.wav49` file name, the last block cut short by a crash.
    let w49 = work.join("w49.wav");
    sox(&src, &["-e", "gsm-full-rate"], &w49);
    let want49 = sox_decoded(&w49, &work);
    let mut cut = fs::read(&w49).unwrap();
    let keep = cut.len() - 40;
    cut.truncate(keep);
    fs::write(root.join("1700000092.1.wav49"), &cut).unwrap();
    // Broken: text named .gsm; a stereo 16 kHz "GSM 6.10" WAV; a WAV49
    // header with no whole block.
    fs::write(
        root.join("1700000093.1.gsm"),
        "not a GSM file at all, ".repeat(10),
    )
    .unwrap();
    let mut stereo = fs::read(&w49).unwrap();
    stereo[22] = 2; // channels
    stereo[24..28].copy_from_slice(&16000u32.to_le_bytes());
    fs::write(root.join("1700000094.1.WAV"), &stereo).unwrap();
    let header_only = &fs::read(&w49).unwrap()[..60 + 64];
    fs::write(root.join("1700000095.1.WAV"), header_only).unwrap();

    let mut s = scanner(&root, &spool, None);
    assert_eq!(settle_scan(&mut s, Instant::now()), 2, "{:?}", s.errors);
    assert_eq!(s.counters.failed, 3, "{:?}", s.errors);
    let has = |file: &str, what: &str| {
        s.errors
            .iter()
            .any(|e| e.contains(file) && e.contains(what))
    };
    assert!(
        has("1700000093.1.gsm", "lack the 0xD magic"),
        "{:?}",
        s.errors
    );
    assert!(
        has("1700000094.1.WAV", "2 channels at 16000 Hz"),
        "{:?}",
        s.errors
    );
    assert!(
        has("1700000095.1.WAV", "no complete GSM frame"),
        "{:?}",
        s.errors
    );

    let by_call = |id: &str| {
        s.written
            .iter()
            .find(|c| json_of(&c.json)["call_id"] == id)
            .unwrap()
            .clone()
    };
    let mono = by_call("1700000091.1");
    let (rate, l) = read_mono_wav(&mono.wav).unwrap();
    assert_eq!(rate, 8000);
    assert_eq!(l, want, "= sox's decoding");
    assert!(correlation_at(&l, &speech, 0) > 0.9);
    let j = json_of(&mono.json);
    assert_honest_mono(&mono.wav, &j);
    assert_eq!(j["channels"][0]["codec"], "GSM");

    let cut = by_call("1700000092.1");
    let (_, [l, _]) = read_wav(&cut.wav).unwrap();
    assert_eq!(l.len(), want49.len() - 320, "the cut block is dropped");
    assert_eq!(l[..], want49[..l.len()]);
    let j = json_of(&cut.json);
    let warnings: Vec<&str> = j["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("1700000092.1.wav49") && w.contains("partial GSM block")),
        "{warnings:?}"
    );
}

mod inotify {
    use super::*;
    use pbx_edge::folder::{FolderHandle, FolderWatch};
    use pbx_edge::status::{SharedStatus, SourceStatus, Status};
    use std::sync::{Arc, Mutex};

    const HOUR: Duration = Duration::from_secs(3600);
    const SHORT_SETTLE: Duration = Duration::from_millis(200);

    struct Running {
        handle: Option<FolderHandle>,
        status: SharedStatus,
        spool: PathBuf,
    }

    impl Running {
        fn start(root: &Path, spool: &Path, watch: FolderWatch, poll: Duration) -> Running {
            let mut cfg = pbx_edge::config::Config::defaults(Some(spool.to_str().unwrap()));
            cfg.spool.dir = spool.to_path_buf();
            cfg.sources.folder.enabled = true;
            cfg.sources.folder.path = root.to_path_buf();
            cfg.sources.folder.settle = SHORT_SETTLE;
            let status: SharedStatus = Arc::new(Mutex::new(Status::default()));
            let settings = FolderSettings {
                watch,
                poll,
                full_scan: HOUR,
                ..FolderSettings::default()
            };
            let live = pbx_edge::health::Liveness::new();
            let handle =
                pbx_edge::folder::start_with(&cfg, settings, status.clone(), live).unwrap();
            let r = Running {
                handle: Some(handle),
                status,
                spool: spool.to_path_buf(),
            };
            // The start-up listing has run once the status is published.
            assert!(r.wait_for(|r| r.folder().is_some()), "no status");
            r
        }

        fn folder(&self) -> Option<SourceStatus> {
            self.status.lock().unwrap().sources.get("folder").cloned()
        }

        fn pairs(&self) -> usize {
            pairs(&self.spool).len()
        }

        /// Waits (at most 30 s) until `f` holds.
        fn wait_for(&self, f: impl Fn(&Running) -> bool) -> bool {
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if f(self) {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            f(self)
        }

        fn stop(mut self) {
            if let Some(h) = self.handle.take() {
                h.stop();
            }
        }
    }

    #[test]
    fn a_new_file_is_taken_without_waiting_for_a_poll() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("monitor");
        let spool = tmp.path().join("spool");
        // There before the start (the daemon was down): the start-up listing.
        write_wav(
            &day_dir(&root).join("out-5551234-1001-20261124-101502-1700000300.1.wav"),
            8000,
            1,
            &speechlike(50, 300, 8000),
        );
        let r = Running::start(&root, &spool, FolderWatch::Inotify, HOUR);
        assert_eq!(r.folder().unwrap().watch.as_deref(), Some("inotify"));
        assert!(
            r.wait_for(|r| r.pairs() == 1),
            "the file from before the start"
        );
        // After the start: only an event can bring it in within the hour.
        write_wav(
            &day_dir(&root).join("in-1001-5550000-20261124-101600-1700000301.1.wav"),
            8000,
            1,
            &speechlike(51, 300, 8000),
        );
        assert!(r.wait_for(|r| r.pairs() == 2), "{:?}", r.folder());
        // Published after the pass that wrote it.
        assert!(r.wait_for(|r| r.folder().unwrap().recordings_written == 2));
        let f = r.folder().unwrap();
        assert!(f.up);
        assert_eq!(f.errors, 0);
        r.stop();
    }

    #[test]
    fn a_file_still_being_written_is_not_taken_until_closed() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("monitor");
        let spool = tmp.path().join("spool");
        fs::create_dir_all(&root).unwrap();
        let r = Running::start(&root, &spool, FolderWatch::Inotify, HOUR);
        let p = root.join("1700000310.1.sln");
        let mut f = File::create(&p).unwrap();
        f.write_all(&sln_bytes(52, 200)).unwrap();
        // Open and quiet for many times `settle` (a pause in the call): a
        // poller would take it now; the writer has not closed it.
        std::thread::sleep(SHORT_SETTLE * 8);
        assert_eq!(r.pairs(), 0, "taken while still open");
        f.write_all(&sln_bytes(53, 300)).unwrap();
        std::thread::sleep(SHORT_SETTLE * 2);
        assert_eq!(r.pairs(), 0, "taken while still open");
        drop(f); // closed after writing
        assert!(r.wait_for(|r| r.pairs() == 1), "{:?}", r.folder());
        let json = fs::read_dir(&spool)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "json"))
            .unwrap();
        assert_eq!(json_of(&json)["duration_ms"], 500, "both writes");
        r.stop();
    }

    #[test]
    fn new_nested_and_moved_in_directories_are_watched() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("monitor");
        let spool = tmp.path().join("spool");
        fs::create_dir_all(root.join("2026/11/24")).unwrap();
        let r = Running::start(&root, &spool, FolderWatch::Inotify, HOUR);
        // A day's directory made after the start, as Asterisk does at
        // midnight; the file comes well after the directory was listed (and
        // listed again), so only the new directory's own watch sees it.
        let d = root.join("2026/11/25");
        fs::create_dir_all(&d).unwrap();
        std::thread::sleep(Duration::from_secs(3));
        write_wav(
            &d.join("in-1001-5550000-20261125-000100-1700000320.1.wav"),
            8000,
            1,
            &speechlike(54, 300, 8000),
        );
        assert!(r.wait_for(|r| r.pairs() == 1), "{:?}", r.folder());
        // A new month, its day and a file made at once (before notify can
        // watch the new directories).
        write_wav(
            &root.join("2026/12/01/in-1001-5550000-20261201-000100-1700000321.1.wav"),
            8000,
            1,
            &speechlike(55, 300, 8000),
        );
        assert!(r.wait_for(|r| r.pairs() == 2), "{:?}", r.folder());
        // A directory with a recording moved in from elsewhere.
        let outside = tmp.path().join("restored/26");
        write_wav(
            &outside.join("in-1001-5550000-20261126-000100-1700000322.1.wav"),
            8000,
            1,
            &speechlike(56, 300, 8000),
        );
        fs::rename(&outside, root.join("2026/11/26")).unwrap();
        assert!(r.wait_for(|r| r.pairs() == 3), "{:?}", r.folder());
        // And the watch of a moved-in directory works too.
        write_wav(
            &root.join("2026/11/26/in-1001-5550000-20261126-000200-1700000323.1.wav"),
            8000,
            1,
            &speechlike(57, 300, 8000),
        );
        assert!(r.wait_for(|r| r.pairs() == 4), "{:?}", r.folder());
        assert_eq!(r.folder().unwrap().errors, 0);
        r.stop();
    }

    #[test]
    fn the_folder_deleted_and_made_again_is_watched_again() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("monitor");
        let spool = tmp.path().join("spool");
        fs::create_dir_all(root.join("2026/11/24")).unwrap();
        let r = Running::start(&root, &spool, FolderWatch::Inotify, HOUR);
        fs::remove_dir_all(&root).unwrap();
        assert!(
            r.wait_for(|r| r.folder().is_some_and(|f| !f.up)),
            "{:?}",
            r.folder()
        );
        let f = r.folder().unwrap();
        assert!(f.error.unwrap().contains("waiting for it to come back"));
        // Back, with a recording already in it.
        write_wav(
            &day_dir(&root).join("in-1001-5550000-20261124-120000-1700000330.1.wav"),
            8000,
            1,
            &speechlike(58, 300, 8000),
        );
        assert!(r.wait_for(|r| r.pairs() == 1), "{:?}", r.folder());
        assert!(r.wait_for(|r| r.folder().is_some_and(|f| f.up)));
        // Watched again: a new file in it is seen.
        write_wav(
            &day_dir(&root).join("in-1001-5550000-20261124-120100-1700000331.1.wav"),
            8000,
            1,
            &speechlike(59, 300, 8000),
        );
        assert!(r.wait_for(|r| r.pairs() == 2), "{:?}", r.folder());
        r.stop();
    }

    #[test]
    fn polling_when_asked_for() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("monitor");
        let spool = tmp.path().join("spool");
        fs::create_dir_all(&root).unwrap();
        let r = Running::start(&root, &spool, FolderWatch::Poll, Duration::from_millis(50));
        let w = r.folder().unwrap().watch.unwrap();
        assert_eq!(w, "polling every 50ms (watch = \"poll\")");
        fs::write(root.join("1700000340.1.sln"), sln_bytes(60, 200)).unwrap();
        assert!(r.wait_for(|r| r.pairs() == 1), "{:?}", r.folder());
        r.stop();
    }
}

// ------------------------------------------------------------ the daemon
//
// `pbx-edge run` with the folder source and a cloud: killed and stopped in
// the middle of deliveries, started again. Every recording reaches the cloud
// once, with the PBX's audio, and every PBX file is moved once, untouched.

mod daemon {
    use super::common::daemon::Daemon;
    use super::common::receiver::{Fault, FaultAction, Receiver, ReceiverOptions};
    use super::*;
    use hyper::Method;
    use std::os::unix::process::ExitStatusExt;

    struct Set {
        stem: String,
        caller: Vec<i16>,
        callee: Vec<i16>,
    }

    fn write_set(root: &Path, n: u64) -> Set {
        let stem = format!("in-1001-555000{n}-20261124-1015{n:02}-1700000100.{n}");
        let caller = speechlike(100 + n, 2500, 8000);
        let callee = speechlike(200 + n, 2500, 8000);
        let d = day_dir(root);
        write_wav(&d.join(format!("{stem}-in.wav")), 8000, 1, &caller);
        write_wav(&d.join(format!("{stem}-out.wav")), 8000, 1, &callee);
        Set {
            stem,
            caller,
            callee,
        }
    }

    fn folder_status(d: &Daemon) -> Value {
        let (code, body) = d.get("/status").expect("status");
        assert_eq!(code, 200);
        let v: Value = serde_json::from_str(&body).unwrap();
        v["sources"]["folder"].clone()
    }

    /// Waits (at most `max`) until `f` holds.
    fn wait(what: &str, max: Duration, d: &Daemon, mut f: impl FnMut() -> bool) {
        let t = Instant::now();
        while !f() {
            assert!(t.elapsed() < max, "{what}; log:\n{}", d.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Keeps a stopped daemon's log (the next start truncates daemon.log).
    fn keep_log(dir: &Path, n: usize) -> String {
        let to = dir.join(format!("daemon-{n}.log"));
        fs::rename(dir.join("daemon.log"), &to).unwrap();
        fs::read_to_string(to).unwrap()
    }

    #[test]
    fn restarts_in_the_middle_of_deliveries_deliver_each_recording_once() {
        let rx = Receiver::start(ReceiverOptions {
            token: Some("folder-token".into()),
            ..ReceiverOptions::default()
        });
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let root = dir.join("monitor dir");
        let done = dir.join("done");
        fs::write(dir.join("token"), "folder-token\n").unwrap();
        let extra = format!(
            "[sources.siprec]\nenabled = false\n\
             [sources.folder]\nenabled = true\npath = \"{}\"\nsettle = \"1s\"\n\
             after_delivery = \"move\"\nmove_to = \"{}\"\n\
             [cloud]\nurl = \"{}\"\ntoken_file = \"{}\"\nmax_parallel = 2\n",
            root.display(),
            done.display(),
            rx.url,
            dir.join("token").display()
        );
        // Three calls recorded while the daemon was not running.
        let mut sets: Vec<Set> = (1..=3).map(|n| write_set(&root, n)).collect();
        let originals: Vec<(PathBuf, Vec<u8>)> = sets
            .iter()
            .flat_map(|s| ["in", "out"].map(|leg| format!("{}-{leg}.wav", s.stem)))
            .map(|n| {
                let p = day_dir(&root).join(&n);
                let b = fs::read(&p).unwrap();
                (PathBuf::from(n), b)
            })
            .collect();

        // 1. The uploads hang: SIGKILL while they do, recordings spooled.
        for _ in 0..2 {
            rx.push_fault(Fault::new(
                Some(Method::PATCH),
                "/v1/uploads/",
                FaultAction::Delay(Duration::from_secs(15)),
            ));
        }
        let mut d = Daemon::start(dir, &extra);
        wait("3 recordings spooled", Duration::from_secs(30), &d, || {
            d.recordings().len() == 3
        });
        // A scripted fault is used up when its request arrives.
        wait("two uploads hanging", Duration::from_secs(30), &d, || {
            rx.lock().script.is_empty()
        });
        d.signal(libc::SIGKILL);
        let exit = d.child.wait().unwrap();
        assert_eq!(exit.signal(), Some(libc::SIGKILL));
        drop(d);
        let log1 = keep_log(dir, 1);
        assert_eq!(
            rx.lock().calls.len(),
            0,
            "nothing delivered before the kill"
        );

        // 2. A fourth call while it is down; started again, stopped (SIGTERM)
        //    with a call post hanging.
        let mut sets_more = vec![write_set(&root, 4)];
        let originals_4: Vec<(PathBuf, Vec<u8>)> = ["in", "out"]
            .map(|leg| {
                let n = format!("{}-{leg}.wav", sets_more[0].stem);
                (
                    PathBuf::from(&n),
                    fs::read(day_dir(&root).join(&n)).unwrap(),
                )
            })
            .into();
        rx.push_fault(Fault::new(
            Some(Method::POST),
            "/v1/calls",
            FaultAction::Delay(Duration::from_secs(15)),
        ));
        let mut d = Daemon::start(dir, &extra);
        wait("the 4th spooled", Duration::from_secs(30), &d, || {
            d.log().contains("folder recording taken")
        });
        wait("a call post hanging", Duration::from_secs(30), &d, || {
            rx.lock().script.is_empty()
        });
        d.signal(libc::SIGTERM);
        assert_eq!(
            d.wait_exit(Duration::from_secs(15)),
            Some(0),
            "SIGTERM: exit 0"
        );
        drop(d);
        let log2 = keep_log(dir, 2);

        // 3. Started again: everything is delivered and moved.
        let d = Daemon::start(dir, &extra);
        wait("4 calls delivered", Duration::from_secs(60), &d, || {
            rx.lock().calls.len() == 4
        });
        let day_done = day_dir(&done);
        let all: Vec<(PathBuf, Vec<u8>)> = originals.into_iter().chain(originals_4).collect();
        wait("the PBX files moved", Duration::from_secs(30), &d, || {
            all.iter()
                .all(|(n, _)| day_done.join(n).exists() && !day_dir(&root).join(n).exists())
        });
        wait("an empty spool", Duration::from_secs(10), &d, || {
            d.recordings().is_empty()
        });
        let f3 = folder_status(&d);
        let log3 = d.log();
        drop(d);

        // Each recording once in the cloud, with the PBX's audio.
        sets.append(&mut sets_more);
        let st = rx.lock();
        assert!(st.conflicts.is_empty(), "{:?}", st.conflicts);
        assert_eq!(st.calls.len(), 4);
        for s in &sets {
            let uid = s.stem.rsplit('-').next().unwrap();
            let c = st
                .calls
                .values()
                .find(|c| c.json["call_id"] == uid)
                .unwrap_or_else(|| panic!("{uid} not delivered"));
            assert_eq!(c.json["source"], "folder");
            assert_eq!(c.json["from"]["number"], format!("555000{}", &uid[11..]));
            assert_eq!(c.json["to"]["number"], "1001");
            assert_eq!(c.json["direction"], "inbound");
            let (rate, [l, r]) = read_wav(&c.audio).unwrap();
            assert_eq!(rate, 8000);
            assert!(correlation_at(&l, &s.caller, 0) > 0.99, "{uid} caller");
            assert!(correlation_at(&r, &s.callee, 0) > 0.99, "{uid} callee");
        }
        // Auth was sent every time; the hung call post was not lost.
        assert!(st
            .authorization_seen
            .iter()
            .all(|a| a == "Bearer folder-token"));
        drop(st);
        // Every PBX file moved once, byte for byte as the PBX wrote it.
        for (n, bytes) in &all {
            assert_eq!(&fs::read(day_done.join(n)).unwrap(), bytes, "{n:?}");
        }
        // Each set was taken once over the three runs: by the first (3) and
        // the second (the one that appeared while it was down); none by the
        // third.
        let taken = |log: &str| log.matches("folder recording taken").count();
        assert_eq!(taken(&log1), 3, "{log1}");
        assert_eq!(taken(&log2), 1, "{log2}");
        assert_eq!(taken(&log3), 0, "{log3}");
        assert_eq!(f3["recordings_written"], 0);
        assert_eq!(f3["errors"], 0, "{f3}");
        assert!(!log3.contains("not taken"), "{log3}");
    }
}

// ------------------------------------------------------------ review fixes

/// Sets of 8 kHz legs under each suffix pair MixMonitor r()/t() are given.
#[test]
fn leg_suffix_variants_pair_into_two_channels() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("m");
    let spool = tmp.path().join("s");
    let d = day_dir(&root);
    let pairs_of = [
        ("-in", "-out"),
        ("_in", "_out"),
        ("_rx", "_tx"),
        ("-rx", "-tx"),
        ("-r", "-t"),
        ("_r", "_t"),
        (".in", ".out"),
        ("-IN", "-OUT"),
        ("_RX", "_Tx"),
    ];
    let mut want = Vec::new();
    for (i, (rx, tx)) in pairs_of.iter().enumerate() {
        let uid = format!("1700000{:03}.{}", 300 + i, 10 + i);
        let stem = format!("out-5551234-1001-20261124-101502-{uid}");
        let caller = speechlike(100 + i as u64, 600, 8000);
        let callee = speechlike(200 + i as u64, 400, 8000);
        write_wav(&d.join(format!("{stem}{rx}.wav")), 8000, 1, &caller);
        write_wav(&d.join(format!("{stem}{tx}.wav")), 8000, 1, &callee);
        want.push((uid, caller, callee, *rx));
    }
    // A plain FreePBX name whose uniqueid ends in `.12`, `.in`-like
    // look-alikes: whole recordings, not legs.
    let plain = speechlike(300, 500, 8000);
    write_wav(
        &d.join("in-1001-5550000-20261124-101502-1700000399.12.wav"),
        8000,
        1,
        &plain,
    );
    write_wav(
        &d.join("in-1001-5550000-20261124-101502-1700000398.1.wav"),
        8000,
        1,
        &plain,
    );
    let mut s = scanner(&root, &spool, None);
    assert_eq!(
        settle_scan(&mut s, Instant::now()),
        pairs_of.len() + 2,
        "{:?}",
        s.errors
    );
    for (uid, caller, callee, rx) in want {
        let c = s
            .written
            .iter()
            .find(|c| json_of(&c.json)["call_id"] == uid.as_str())
            .unwrap_or_else(|| panic!("{rx}: no recording with call_id {uid}"));
        let j = json_of(&c.json);
        assert_eq!(j["mixed_mono"], false, "{rx}");
        assert_eq!(j["from"]["number"], "1001", "{rx}");
        assert_eq!(j["to"]["number"], "5551234", "{rx}");
        assert_eq!(j["started_at"], "2026-11-24T10:15:02.000Z", "{rx}");
        assert_eq!(j["source_files"].as_array().unwrap().len(), 2, "{rx}");
        let (_, [l, r]) = read_wav(&c.wav).unwrap();
        // The callee leg is the shorter: lined up at its end (leg_align).
        assert_eq!(&l[..], &caller[..], "{rx}: channel 0 = the rx leg");
        assert_eq!(
            &r[r.len() - callee.len()..],
            &callee[..],
            "{rx}: channel 1 = the tx leg"
        );
    }
    for uid in ["1700000399.12", "1700000398.1"] {
        let c = s
            .written
            .iter()
            .find(|c| json_of(&c.json)["call_id"] == uid)
            .unwrap();
        assert_eq!(json_of(&c.json)["mixed_mono"], true, "{uid}");
    }
}

/// Asterisk cdr_csv with `newcdrcolumns = yes` writes 21 columns:
/// ..., uniqueid, userfield, peeraccount, linkedid, sequence.
#[test]
fn master_csv_newcdrcolumns_row_matched_by_linkedid() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("m");
    let spool = tmp.path().join("s");
    let stem = "in-5550000-15551230000-20261124-101502-1700000600.1";
    write_wav(
        &day_dir(&root).join(format!("{stem}.wav")),
        8000,
        1,
        &speechlike(60, 500, 8000),
    );
    let csv = tmp.path().join("Master.csv");
    // The row of the agent's leg: its own uniqueid, the call's linkedid.
    let row = r#""acct","15551230000","5550000","from-trunk","""Carol"" <15551230000>","SIP/trunk-0001","SIP/1001-0002","Dial","SIP/1001,30","2026-11-24 10:15:01","2026-11-24 10:15:03","2026-11-24 10:16:03",62,60,"ANSWERED","DOCUMENTATION","1700000600.7","","peeracct","1700000600.1",42"#;
    assert_eq!(pbx_edge::folder::split_csv_line(row).len(), 21);
    fs::write(&csv, format!("{row}\n")).unwrap();
    let mut s = scanner(&root, &spool, Some(&csv));
    assert_eq!(settle_scan(&mut s, Instant::now()), 1, "{:?}", s.errors);
    let j = json_of(&s.written[0].json);
    assert_eq!(j["cdr"], true);
    assert_eq!(j["call_id"], "1700000600.7");
    assert_eq!(j["from"]["name"], "Carol");
    assert_eq!(j["disposition"], "ANSWERED");
    assert_eq!(j["started_at"], "2026-11-24T10:15:01.000Z");
    // Who is who from the CDR (issue 15): an inbound call (the `in-` file
    // and the trunk's number), the callee is the agent; the ids a cloud
    // joins on come from the row.
    assert_eq!(j["direction"], "inbound");
    assert_eq!(j["ids"]["asterisk_uniqueid"], "1700000600.7");
    assert_eq!(j["ids"]["asterisk_linkedid"], "1700000600.1");
}

#[test]
fn systemname_uniqueid_with_a_dash_is_read_from_the_name_and_matched() {
    // `systemname = pbx1` (asterisk.conf): Asterisk's uniqueids are
    // `pbx1-<epoch>.<n>`, in the file name and in the CDR.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("m");
    let spool = tmp.path().join("s");
    let stem = "in-2001-5551234-20261201-101500-pbx1-1700000000.123";
    write_wav(
        &day_dir(&root).join(format!("{stem}.wav")),
        8000,
        1,
        &speechlike(61, 500, 8000),
    );
    let csv = tmp.path().join("Master.csv");
    let row = r#""","5551234","2001","from-trunk","""Dan"" <5551234>","SIP/trunk-0001","SIP/2001-0002","Dial","SIP/2001,30","2026-12-01 10:14:58","2026-12-01 10:15:00","2026-12-01 10:16:00",62,60,"ANSWERED","DOCUMENTATION","pbx1-1700000000.123","""#;
    fs::write(&csv, format!("{row}\n")).unwrap();
    let mut s = scanner(&root, &spool, Some(&csv));
    assert_eq!(settle_scan(&mut s, Instant::now()), 1, "{:?}", s.errors);
    let j = json_of(&s.written[0].json);
    assert_eq!(j["cdr"], true, "{j}");
    assert_eq!(j["call_id"], "pbx1-1700000000.123");
    assert_eq!(j["from"]["number"], "5551234");
    assert_eq!(j["to"]["number"], "2001");
    assert_eq!(j["started_at"], "2026-12-01T10:14:58.000Z");
}

#[test]
fn exten_recordings_get_their_direction_from_the_numbers() {
    // `exten-`: recorded by an extension's own setting, no CDR row: the
    // parties' numbers tell (the file type said "internal" for all).
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("m");
    let spool = tmp.path().join("s");
    let d = day_dir(&root);
    // An outside caller to extension 2001, split legs.
    let inbound = "exten-2001-15551230000-20261124-101502-1700000700.1";
    write_wav(
        &d.join(format!("{inbound}-in.wav")),
        8000,
        1,
        &speechlike(70, 500, 8000),
    );
    write_wav(
        &d.join(format!("{inbound}-out.wav")),
        8000,
        1,
        &speechlike(71, 500, 8000),
    );
    // 2001 calls 2002, and 2001 calls outside: mono mixes.
    let internal = "exten-2002-2001-20261124-102000-1700000701.1";
    write_wav(
        &d.join(format!("{internal}.wav")),
        8000,
        1,
        &speechlike(72, 500, 8000),
    );
    let outbound = "exten-15559870000-2001-20261124-103000-1700000702.1";
    write_wav(
        &d.join(format!("{outbound}.wav")),
        8000,
        1,
        &speechlike(73, 500, 8000),
    );
    let mut s = scanner(&root, &spool, None);
    assert_eq!(settle_scan(&mut s, Instant::now()), 3, "{:?}", s.errors);
    let by_call = |id: &str| {
        s.written
            .iter()
            .map(|c| json_of(&c.json))
            .find(|j| j["call_id"] == id)
            .unwrap()
    };
    let j = by_call("1700000700.1");
    assert_eq!(j["direction"], "inbound", "{j}");
    assert_eq!(j["channels"][0]["role"], "customer");
    assert_eq!(j["channels"][1]["role"], "agent");
    assert_eq!(j["channels"][1]["extension"], "2001");
    assert_eq!(j["pbx_type"], "exten");
    let j = by_call("1700000701.1");
    assert_eq!(j["direction"], "internal", "{j}");
    assert_eq!(j["mixed_mono"], true);
    assert!(
        j["channels"][0].get("role").is_none(),
        "a mono mix has no roles"
    );
    assert_eq!(by_call("1700000702.1")["direction"], "outbound");
}

fn raw_bytes(x: &[i16]) -> Vec<u8> {
    x.iter().flat_map(|s| s.to_le_bytes()).collect()
}

fn interleave(a: &[i16], b: &[i16]) -> Vec<i16> {
    let n = a.len().max(b.len());
    (0..n)
        .flat_map(|i| {
            [
                a.get(i).copied().unwrap_or(0),
                b.get(i).copied().unwrap_or(0),
            ]
        })
        .collect()
}

/// sox-made raw s16 samples (`sox -n ... synth ...`).
fn sox_synth(rate: u32, channels: u32, effects: &[&str], tmp: &Path) -> Vec<i16> {
    let out = tmp.join(format!("synth-{}.raw", effects.join("_").replace('/', "")));
    let r = rate.to_string();
    let c = channels.to_string();
    let mut args = vec![
        "-V1", "-n", "-r", &r, "-c", &c, "-b", "16", "-e", "signed", "-t", "raw",
    ];
    let o = out.to_str().unwrap().to_string();
    args.push(&o);
    args.extend_from_slice(effects);
    let st = std::process::Command::new("sox")
        .args(&args)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    fs::read(&out)
        .unwrap()
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect()
}

/// `raw_stereo = "auto"` on real material: espeak-ng speech mono stays
/// mono, interleaved (speech + silence, two voices, two tones) is stereo;
/// the ratios are printed (`--nocapture`) for the record in folder.rs.
#[test]
fn raw_layout_detector_on_real_material() {
    use pbx_edge::folder::probe_raw_layout;
    let tmp = tempfile::tempdir().unwrap();
    let espeak = |text: &str, voice: &str, rate: u32| {
        pbx_testgen::audio::espeak(text, voice, rate, tmp.path())
            .expect("espeak-ng is needed for this test (Debian package espeak-ng)")
    };
    let text_a = "Hello, this is Alice from the accounts team. I am calling about your invoice.";
    let text_b = "Yes, hi. I got the letter yesterday, but the amount looks wrong to me.";
    let a8 = espeak(text_a, "en", 8000);
    let b8 = espeak(text_b, "en+f3", 8000);
    let a16 = espeak(text_a, "en", 16000);
    let b16 = espeak(text_b, "en+f3", 16000);
    let silence8 = vec![0i16; a8.len()];
    let silence16 = vec![0i16; a16.len()];
    let tone = |e: &[&str], rate: u32, ch: u32| sox_synth(rate, ch, e, tmp.path());
    let mut mono_cases: Vec<(&str, Vec<i16>, u32)> = vec![
        ("espeak speech mono 8 kHz", a8.clone(), 8000),
        ("espeak speech mono 8 kHz (voice 2)", b8.clone(), 8000),
        ("espeak speech mono 16 kHz", a16.clone(), 16000),
        ("espeak speech mono 16 kHz (voice 2)", b16.clone(), 16000),
        (
            "sox tone 440 Hz mono 8 kHz",
            tone(&["synth", "3", "sine", "440"], 8000, 1),
            8000,
        ),
        (
            "sox tone 1 kHz mono 8 kHz",
            tone(&["synth", "3", "sine", "1000"], 8000, 1),
            8000,
        ),
        (
            "sox tone 1 kHz mono 16 kHz",
            tone(&["synth", "3", "sine", "1000"], 16000, 1),
            16000,
        ),
        (
            "sox DTMF 1 (697+1209 Hz) mono 8 kHz",
            tone(
                &["synth", "3", "sine", "697", "sine", "1209", "remix", "1,2"],
                8000,
                2,
            ),
            8000,
        ),
        (
            "sox tone 3 kHz mono 8 kHz",
            tone(&["synth", "3", "sine", "3000"], 8000, 1),
            8000,
        ),
        (
            "sox tone 3.4 kHz mono 8 kHz",
            tone(&["synth", "3", "sine", "3400"], 8000, 1),
            8000,
        ),
        (
            "sox tone 7 kHz mono 16 kHz",
            tone(&["synth", "3", "sine", "7000"], 16000, 1),
            16000,
        ),
        (
            "sox white noise mono 8 kHz",
            tone(&["synth", "3", "whitenoise", "vol", "0.3"], 8000, 1),
            8000,
        ),
        (
            "sox pink noise mono 8 kHz",
            tone(&["synth", "3", "pinknoise", "vol", "0.3"], 8000, 1),
            8000,
        ),
    ];
    // Mono espeak speech as MixMonitor writes it at 8 kHz: through sox's
    // telephone band (300-3400 Hz).
    let band = tmp.path().join("band.raw");
    fs::write(tmp.path().join("a8.raw"), raw_bytes(&a8)).unwrap();
    let raw8 = [
        "-t", "raw", "-r", "8000", "-c", "1", "-b", "16", "-e", "signed",
    ];
    let out = std::process::Command::new("sox")
        .args(raw8)
        .arg(tmp.path().join("a8.raw"))
        .args(raw8)
        .arg(&band)
        .args(["sinc", "300-3400"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let banded: Vec<i16> = fs::read(&band)
        .unwrap()
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect();
    mono_cases.push(("espeak speech mono 8 kHz, 300-3400 Hz band", banded, 8000));
    // What MixMonitor writes by default: both parties mixed.
    let mix = |a: &[i16], b: &[i16], k: f64| -> Vec<i16> {
        (0..a.len().max(b.len()))
            .map(|i| {
                let x = f64::from(a.get(i).copied().unwrap_or(0));
                let y = f64::from(b.get(i).copied().unwrap_or(0));
                (x + k * y).clamp(-32768.0, 32767.0) as i16
            })
            .collect()
    };
    mono_cases.push((
        "two espeak voices mixed mono 8 kHz",
        mix(&a8, &b8, 1.0),
        8000,
    ));
    mono_cases.push((
        "two espeak voices mixed mono 16 kHz",
        mix(&a16, &b16, 1.0),
        16000,
    ));
    let stereo_cases: Vec<(&str, Vec<i16>, u32)> = vec![
        (
            "espeak speech + silence interleaved 8 kHz",
            interleave(&a8, &silence8),
            8000,
        ),
        (
            "silence + espeak speech interleaved 8 kHz",
            interleave(&silence8, &b8),
            8000,
        ),
        (
            "two espeak voices interleaved 8 kHz",
            interleave(&a8, &b8),
            8000,
        ),
        (
            "espeak speech + silence interleaved 16 kHz",
            interleave(&a16, &silence16),
            16000,
        ),
        (
            "two espeak voices interleaved 16 kHz",
            interleave(&a16, &b16),
            16000,
        ),
        (
            "two espeak voices interleaved 8 kHz, 30 % crosstalk each way",
            interleave(&mix(&a8, &b8, 0.3), &mix(&b8, &a8, 0.3)),
            8000,
        ),
        (
            "sox tones 300 / 700 Hz stereo 8 kHz",
            tone(&["synth", "3", "sine", "300", "sine", "700"], 8000, 2),
            8000,
        ),
        (
            "sox tone 440 Hz + espeak speech interleaved 8 kHz",
            interleave(&tone(&["synth", "3", "sine", "440"], 8000, 1), &a8),
            8000,
        ),
    ];
    let mut wrong = Vec::new();
    for (name, x, rate) in &mono_cases {
        let p = probe_raw_layout(x, *rate);
        eprintln!(
            "{name}: D1/D2 = {:.3}, D1/2E = {:.3}, D2/2E = {:.3} (rms {:.0})",
            p.ratio(),
            p.d1 / (2.0 * p.energy),
            p.d2 / (2.0 * p.energy),
            p.rms
        );
        // Even sample counts only: what "mono" means is not the odd count.
        let even = &x[..x.len() / 2 * 2];
        let p = probe_raw_layout(even, *rate);
        if p.stereo {
            wrong.push(format!("{name} (mono): {p:?}"));
        }
    }
    for (name, x, rate) in &stereo_cases {
        let p = probe_raw_layout(x, *rate);
        eprintln!(
            "{name}: D1/D2 = {:.3}, D1/2E = {:.3}, D2/2E = {:.3} (rms {:.0})",
            p.ratio(),
            p.d1 / (2.0 * p.energy),
            p.d2 / (2.0 * p.energy),
            p.rms
        );
        if !p.stereo {
            wrong.push(format!("{name} (stereo): {p:?}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    // Quiet or odd: mono.
    assert!(!probe_raw_layout(&vec![0i16; 16000], 8000).stereo);
    assert!(!probe_raw_layout(&interleave(&a8, &silence8)[1..], 8000).stereo);

    // Through the folder source: files as MixMonitor writes them.
    let root = tmp.path().join("m");
    let spool = tmp.path().join("s");
    let d = day_dir(&root);
    fs::create_dir_all(&d).unwrap();
    let even = |x: &[i16]| x[..x.len() / 2 * 2].to_vec();
    let (m8, m16) = (even(&a8), even(&a16));
    fs::write(
        d.join("in-1-2-20261124-101502-1700000700.1.sln"),
        raw_bytes(&m8),
    )
    .unwrap();
    fs::write(
        d.join("in-1-2-20261124-101502-1700000701.1.sln16"),
        raw_bytes(&m16),
    )
    .unwrap();
    fs::write(
        d.join("in-1-2-20261124-101502-1700000702.1.raw"),
        raw_bytes(&interleave(&a8, &b8)),
    )
    .unwrap();
    fs::write(
        d.join("in-1-2-20261124-101502-1700000703.1.sln16"),
        raw_bytes(&interleave(&silence16, &b16)),
    )
    .unwrap();
    let mut s = scanner(&root, &spool, None);
    assert_eq!(settle_scan(&mut s, Instant::now()), 4, "{:?}", s.errors);
    let by_call = |id: &str| {
        let c = s
            .written
            .iter()
            .find(|c| json_of(&c.json)["call_id"] == id)
            .unwrap();
        (json_of(&c.json), read_wav(&c.wav).unwrap())
    };
    let warned = |j: &Value, what: &str| {
        j["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains(what))
    };
    for (id, rate, x) in [("1700000700.1", 8000, &m8), ("1700000701.1", 16000, &m16)] {
        let (j, (r, [l, rr])) = by_call(id);
        assert_eq!(j["mixed_mono"], true, "{id}");
        assert!(warned(&j, "raw layout detected as mono"), "{id}: {j}");
        assert_eq!(r, rate);
        assert_eq!(&l, x);
        assert!(rr.is_empty(), "{id}: a 1-channel WAV");
        assert_eq!(j["audio"]["channels"], 1, "{id}");
    }
    let (j, (r, [l, rr])) = by_call("1700000702.1");
    assert_eq!(j["mixed_mono"], false);
    assert!(
        warned(&j, "raw layout detected as interleaved stereo"),
        "{j}"
    );
    assert_eq!(r, 8000);
    assert_eq!(&l[..a8.len()], &a8[..]);
    assert_eq!(&rr[..b8.len()], &b8[..]);
    let (j, (r, [l, rr])) = by_call("1700000703.1");
    assert_eq!(j["mixed_mono"], false);
    assert!(
        warned(&j, "raw layout detected as interleaved stereo"),
        "{j}"
    );
    assert_eq!(r, 16000);
    assert!(l.iter().all(|&v| v == 0));
    assert_eq!(&rr[..b16.len()], &b16[..]);
}

/// `path` missing at start: started anyway, not ready with the reason,
/// files taken once the directory appears (its parent there, or not).
#[test]
fn folder_missing_at_start_is_waited_for() {
    use std::sync::{Arc, Mutex};
    for (parent_too, watch) in [
        (false, pbx_edge::folder::FolderWatch::Auto),
        (true, pbx_edge::folder::FolderWatch::Auto),
        (false, pbx_edge::folder::FolderWatch::Poll),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let root = if parent_too {
            tmp.path().join("later/monitor")
        } else {
            tmp.path().join("monitor")
        };
        let spool = tmp.path().join("s");
        let mut cfg = pbx_edge::config::Config::defaults(Some(spool.to_str().unwrap()));
        cfg.spool.dir = spool.clone();
        cfg.sources.folder.enabled = true;
        cfg.sources.folder.path = root.clone();
        cfg.sources.folder.settle = Duration::from_millis(200);
        let status: pbx_edge::status::SharedStatus =
            Arc::new(Mutex::new(pbx_edge::status::Status::default()));
        let settings = FolderSettings {
            poll: Duration::from_millis(50),
            watch,
            ..FolderSettings::default()
        };
        let live = pbx_edge::health::Liveness::new();
        let h = pbx_edge::folder::start_with(&cfg, settings, status.clone(), live)
            .expect("starts without its folder");
        let wait_for = |what: &str, f: &dyn Fn() -> bool| {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !f() {
                assert!(
                    Instant::now() < deadline,
                    "{what} (parent_too {parent_too}, {watch:?})"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        wait_for("published not ready", &|| {
            status
                .lock()
                .unwrap()
                .sources
                .get("folder")
                .is_some_and(|f| !f.up)
        });
        {
            let st = status.lock().unwrap();
            let (ready, parts) = pbx_edge::status::readiness(&st);
            assert!(!ready);
            let why = &parts["source.folder"];
            assert!(
                why.contains("sources.folder.path") && why.contains("waiting for it"),
                "{why}"
            );
        }
        // The directory appears (as the PBX makes it), then a recording.
        std::thread::sleep(Duration::from_millis(200));
        write_wav(
            &root.join("2026/11/24/out-5551234-1001-20261124-101502-1700000800.1.wav"),
            8000,
            1,
            &speechlike(80, 300, 8000),
        );
        wait_for("the recording taken", &|| pairs(&spool).len() == 1);
        wait_for("ready again", &|| {
            status
                .lock()
                .unwrap()
                .sources
                .get("folder")
                .is_some_and(|f| f.up)
        });
        h.stop();
        let st = status.lock().unwrap();
        assert_eq!(st.sources["folder"].recordings_written, 1);
    }
}

/// A header never finalised (data size 0, or more than the file): read to
/// the end of the file, with a warning; a valid header as it is.
#[test]
fn unfinalised_wav_header_read_to_end_of_file() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("m");
    let spool = tmp.path().join("s");
    fs::create_dir_all(&root).unwrap();
    let x = speechlike(90, 700, 8000);
    let data = raw_bytes(&x);
    let with_size = |size: u32, extra: &[u8]| {
        let mut b = pbx_core::audio::wav::canonical_header(8000, 1, size).to_vec();
        b.extend_from_slice(&data);
        b.extend_from_slice(extra);
        b
    };
    // Crashed: size 0 (and one odd byte at the end: a cut frame).
    fs::write(root.join("1700000900.1.wav"), with_size(0, &[7])).unwrap();
    // Size larger than the file.
    fs::write(
        root.join("1700000901.1.wav"),
        with_size(data.len() as u32 * 3, &[]),
    )
    .unwrap();
    // Valid, with a LIST chunk after the data: the chunk is not audio.
    let mut list = b"LIST\x04\0\0\0INFO".to_vec();
    list.extend_from_slice(&[0; 0]);
    fs::write(
        root.join("1700000902.1.wav"),
        with_size(data.len() as u32, &list),
    )
    .unwrap();
    // Valid and empty.
    fs::write(
        root.join("1700000903.1.wav"),
        with_size(0, &[]).get(..44).unwrap(),
    )
    .unwrap();
    // A header with data size 0 and audio after it was never finalised:
    // most likely still being written (Asterisk writes the sizes at close).
    // It waits like an open file (open_settle), then is read to its end.
    let open_settle = Duration::from_secs(60);
    let settings = FolderSettings {
        open_settle,
        ..FolderSettings::default()
    };
    let mut s = FolderScanner::new(&root, &spool, "pbx-test", None, SETTLE, settings).unwrap();
    let t0 = Instant::now();
    assert_eq!(settle_scan(&mut s, t0), 3, "{:?}", s.errors);
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    assert!(
        !s.written
            .iter()
            .any(|c| json_of(&c.json)["call_id"] == "1700000900.1"),
        "data size 0: still open, not taken after settle"
    );
    assert_eq!(s.scan(t0 + open_settle / 2), 0, "still waiting");
    assert_eq!(s.scan(t0 + open_settle + SETTLE), 1, "{:?}", s.errors);
    let get = |s: &FolderScanner, id: &str| {
        let c = s
            .written
            .iter()
            .find(|c| json_of(&c.json)["call_id"] == id)
            .unwrap();
        (json_of(&c.json), read_wav(&c.wav).unwrap().1)
    };
    let header_warnings = |j: &Value| -> Vec<String> {
        j["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w.as_str().unwrap().to_string())
            .filter(|w| w.contains("WAV header"))
            .collect()
    };
    let (j, [l, _]) = get(&s, "1700000900.1");
    assert_eq!(l, x);
    assert_eq!(j["duration_ms"], 700);
    let w = header_warnings(&j);
    assert!(
        w.len() == 1 && w[0].contains("WAV header data size 0: read to end of file"),
        "{w:?}"
    );
    let (j, [l, _]) = get(&s, "1700000901.1");
    assert_eq!(l, x);
    let w = header_warnings(&j);
    assert!(
        w.len() == 1 && w[0].contains("more than the file holds"),
        "{w:?}"
    );
    let (j, [l, _]) = get(&s, "1700000902.1");
    assert_eq!(l, x, "the LIST chunk after the data is not audio");
    assert!(header_warnings(&j).is_empty());
    let (j, [l, _]) = get(&s, "1700000903.1");
    assert!(l.is_empty());
    assert!(header_warnings(&j).is_empty());

    // WAV49 (GSM 6.10 in WAV) that Asterisk never finalised: the same.
    let work = tmp.path().join("work");
    fs::create_dir_all(&work).unwrap();
    let src = work.join("speech.wav");
    write_wav(&src, 8000, 1, &speechlike(92, 640, 8000));
    let gsm = work.join("speech.WAV");
    sox(&src, &["-e", "gsm-full-rate"], &gsm);
    let want = sox_decoded(&gsm, &work);
    let mut b = fs::read(&gsm).unwrap();
    let info = pbx_core::audio::wav::parse_wav_header(&b).unwrap();
    let at = info.data_offset as usize - 4;
    b[at..at + 4].copy_from_slice(&[0; 4]);
    fs::write(root.join("1700000904.1.WAV"), &b).unwrap();
    let t1 = t0 + open_settle * 2;
    assert_eq!(settle_scan(&mut s, t1), 0, "{:?}", s.errors);
    assert_eq!(s.scan(t1 + open_settle + SETTLE), 1, "{:?}", s.errors);
    let (j, [l, _]) = get(&s, "1700000904.1");
    assert_eq!(l, want, "as sox decodes the finalised file");
    let w = header_warnings(&j);
    assert!(
        w.len() == 1 && w[0].contains("WAV header data size 0: read to end of file"),
        "{w:?}"
    );
}

/// `.wav16` is a WAV; `.sln48` & co. are reported, counted, not retried.
#[test]
fn wav16_taken_and_other_sln_rates_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("m");
    let spool = tmp.path().join("s");
    let x = speechlike(91, 500, 16000);
    write_wav(
        &root.join("in-1-2-20261124-101502-1700001000.1.wav16"),
        16000,
        1,
        &x,
    );
    write_wav(&root.join("1700001001.1-in.wav16"), 16000, 1, &x);
    write_wav(&root.join("1700001001.1-out.wav16"), 16000, 1, &x);
    fs::write(root.join("1700001002.1.sln48"), raw_bytes(&x)).unwrap();
    fs::write(root.join("1700001003.1.SLN12"), raw_bytes(&x)).unwrap();
    let mut s = scanner(&root, &spool, None);
    let t0 = Instant::now();
    assert_eq!(settle_scan(&mut s, t0), 2, "{:?}", s.errors);
    let j = json_of(
        &s.written
            .iter()
            .find(|c| json_of(&c.json)["call_id"] == "1700001000.1")
            .unwrap()
            .json,
    );
    assert_eq!(j["audio"]["sample_rate"], 16000);
    assert_eq!(j["duration_ms"], 500);
    assert_eq!(j["mixed_mono"], true);
    assert_eq!(s.counters.failed, 2);
    for (file, rate) in [
        ("1700001002.1.sln48", "48000 Hz"),
        ("1700001003.1.SLN12", "12000 Hz"),
    ] {
        assert!(
            s.errors
                .iter()
                .any(|e| e.contains(file) && e.contains(rate) && e.contains("not supported")),
            "{file}: {:?}",
            s.errors
        );
    }
    // Format errors are for good: not retried.
    assert_eq!(s.scan(t0 + Duration::from_secs(400)), 0);
    assert_eq!(s.scan(t0 + Duration::from_secs(400) + SETTLE * 2), 0);
    assert_eq!(s.counters.failed, 2);
}

/// after_delivery moves and deletes files whose names are not UTF-8.
#[test]
fn after_delivery_handles_names_that_are_not_utf8() {
    use pbx_edge::folder::AfterDelivery;
    use pbx_edge::spool::{now_ms, Spool};
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    for action in [AfterDelivery::Move, AfterDelivery::Delete] {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("monitor");
        let spool = tmp.path().join("spool");
        let moved = tmp.path().join("done");
        let d = day_dir(&root).join(OsStr::from_bytes(b"dir \xff\xfe"));
        let names: [&[u8]; 2] = [
            b"call \xff\xfe 1700001100.1-in.wav",
            b"call \xff\xfe 1700001100.1-out.wav",
        ];
        let files: Vec<PathBuf> = names.iter().map(|n| d.join(OsStr::from_bytes(n))).collect();
        for f in &files {
            write_wav(f, 8000, 1, &speechlike(7, 300, 8000));
        }
        // A look-alike whose lossy name is the same: another recording,
        // and not touched.
        let other = d.join(OsStr::from_bytes(b"call \xfe\xff 1700001100.1-in.wav"));
        write_wav(&other, 8000, 1, &speechlike(8, 450, 8000));
        let settings = FolderSettings {
            after_delivery: action,
            move_to: Some(moved.clone()),
            ..FolderSettings::default()
        };
        let mut s = FolderScanner::new(&root, &spool, "pbx-test", None, SETTLE, settings).unwrap();
        let t0 = Instant::now();
        assert_eq!(settle_scan(&mut s, t0), 2, "{:?}", s.errors);
        let c = s
            .written
            .iter()
            .find(|c| json_of(&c.json)["source_files"].as_array().unwrap().len() == 2)
            .unwrap()
            .clone();
        let mut sp = Spool::open(&spool).unwrap();
        sp.scan(now_ms()).unwrap();
        assert!(sp.mark_queued(&c.id, now_ms()).unwrap());
        assert!(sp.mark_delivered(&c.id, now_ms()).unwrap());
        s.scan(t0 + SETTLE * 3);
        assert!(s.errors.is_empty(), "{:?}", s.errors);
        for (f, n) in files.iter().zip(names) {
            assert!(!f.exists(), "{action:?}: {f:?} still there");
            let target = moved
                .join("2026/11/24")
                .join(OsStr::from_bytes(b"dir \xff\xfe"))
                .join(OsStr::from_bytes(n));
            assert_eq!(target.exists(), action == AfterDelivery::Move, "{target:?}");
        }
        assert!(other.exists(), "the look-alike is not delivered yet");
    }
}

/// Dropping CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH from this thread's
/// effective set (capabilities are per thread on Linux; the permitted set
/// keeps them, so they come back): a mode 000 file is then unreadable even
/// for root, as for the unprivileged pbx-edge user.
struct NoDacOverride {
    saved: [CapData; 2],
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_V3: u32 = 0x2008_0522;
const DAC_BITS: u32 = (1 << 1) | (1 << 2); // CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH

impl NoDacOverride {
    fn drop_caps() -> Option<Self> {
        let mut h = CapHeader {
            version: CAP_V3,
            pid: 0,
        };
        let mut d = [CapData::default(); 2];
        // SAFETY: capget fills two v3 data structs for the calling thread.
        let r =
            unsafe { libc::syscall(libc::SYS_capget, &mut h as *mut CapHeader, d.as_mut_ptr()) };
        if r != 0 {
            return None;
        }
        let saved = d;
        d[0].effective &= !DAC_BITS;
        let mut h = CapHeader {
            version: CAP_V3,
            pid: 0,
        };
        // SAFETY: as above; capset of the calling thread.
        let r = unsafe { libc::syscall(libc::SYS_capset, &mut h as *mut CapHeader, d.as_ptr()) };
        (r == 0).then_some(NoDacOverride { saved })
    }
}

impl Drop for NoDacOverride {
    fn drop(&mut self) {
        let mut h = CapHeader {
            version: CAP_V3,
            pid: 0,
        };
        // SAFETY: restores what capget returned, for the calling thread.
        unsafe {
            libc::syscall(
                libc::SYS_capset,
                &mut h as *mut CapHeader,
                self.saved.as_ptr(),
            )
        };
    }
}

/// An I/O error reading a PBX file (permission denied here) may pass: the
/// file is not marked seen, is not retried before the next full listing,
/// and is taken then; each attempt counts once.
#[test]
fn unreadable_file_is_retried_at_the_next_full_listing() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("m");
    let spool = tmp.path().join("s");
    let locked = root.join("1700001200.1.wav");
    write_wav(&locked, 8000, 1, &speechlike(120, 300, 8000));
    write_wav(
        &root.join("1700001201.1.wav"),
        8000,
        1,
        &speechlike(121, 300, 8000),
    );
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o000)).unwrap();
    let caps = NoDacOverride::drop_caps();
    if File::open(&locked).is_ok() {
        eprintln!("a mode 000 file is readable here even without CAP_DAC_OVERRIDE: test skipped");
        return;
    }
    let mut s = scanner(&root, &spool, None);
    let t0 = Instant::now();
    assert_eq!(
        settle_scan(&mut s, t0),
        1,
        "the readable one: {:?}",
        s.errors
    );
    assert_eq!(s.counters.failed, 1);
    let e = s.errors.back().unwrap();
    assert!(
        e.contains("1700001200.1") && e.contains("ermission denied") && e.contains("will retry"),
        "{e}"
    );
    // Not tried again (nor counted) before the next full listing, even
    // once readable.
    for i in 2..6 {
        assert_eq!(s.scan(t0 + SETTLE * i), 0);
    }
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o644)).unwrap();
    drop(caps);
    assert_eq!(s.scan(t0 + SETTLE * 7), 0);
    assert_eq!(s.counters.failed, 1, "one failure per attempt");
    // The full listing (every 300 s): tried again, taken.
    let t1 = t0 + Duration::from_secs(301);
    let n = s.scan(t1) + s.scan(t1 + SETTLE + Duration::from_millis(1));
    assert_eq!(n, 1, "{:?}", s.errors);
    assert_eq!(s.counters.failed, 1);
    assert_eq!(s.counters.written, 2);
    assert_eq!(pairs(&spool).len(), 2);
}

/// Asterisk's raw G.711 formats (`MixMonitor(x.ulaw)`, `.alaw`, and their
/// other extensions) are taken: split legs in µ-law and A-law merged into
/// two channels, decoded exactly; a mono `.ul` as a mixed mono; `.g722`
/// (raw G.722, 16 kHz) decoded. Formats Asterisk writes that pbx-edge
/// cannot decode (G.729, G.726, Siren, ...)
/// are reported and counted once each, never silently passed over.
#[test]
fn raw_g711_legs_taken_and_undecodable_asterisk_formats_reported() {
    use pbx_core::audio::g711::{decode_alaw, decode_ulaw, encode_alaw, encode_ulaw};
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("m");
    let spool = tmp.path().join("s");
    let d = day_dir(&root);
    fs::create_dir_all(&d).unwrap();
    let caller = speechlike(61, 1000, 8000);
    let callee = speechlike(62, 1000, 8000);
    let (mut ul, mut al) = (Vec::new(), Vec::new());
    encode_ulaw(&caller, &mut ul);
    encode_alaw(&callee, &mut al);
    let (mut want_l, mut want_r) = (Vec::new(), Vec::new());
    decode_ulaw(&ul, &mut want_l);
    decode_alaw(&al, &mut want_r);
    let stem = "in-1001-5551234-20261124-101502-1700002000.1";
    fs::write(d.join(format!("{stem}-in.ulaw")), &ul).unwrap();
    fs::write(d.join(format!("{stem}-out.alaw")), &al).unwrap();
    fs::write(
        d.join("in-1001-5551234-20261124-101502-1700002001.1.UL"),
        &ul,
    )
    .unwrap();
    fs::write(d.join("1700002002.1.g729"), [0u8; 200]).unwrap();
    fs::write(d.join("1700002003.1-in.siren14"), [0u8; 200]).unwrap();
    fs::write(d.join("1700002003.1-out.siren14"), [0u8; 200]).unwrap();
    fs::write(d.join("1700002004.1.g726-32"), [0u8; 200]).unwrap();
    // G.722 (Asterisk's `g722`: raw, 16 kHz): decoded by pbx-core's decoder.
    let wide = speechlike(63, 1000, 16000);
    let mut enc = pbx_core::audio::g722::G722Encoder::new();
    let g722: Vec<u8> = wide
        .chunks(2)
        .map(|p| enc.encode_pair(p[0], p[1]))
        .collect();
    let mut want_wide = Vec::new();
    pbx_core::audio::g722::G722Decoder::new().decode_into(&g722, &mut want_wide);
    fs::write(
        d.join("in-1001-5551234-20261124-101502-1700002005.1.g722"),
        &g722,
    )
    .unwrap();
    let mut s = scanner(&root, &spool, None);
    let t0 = Instant::now();
    assert_eq!(settle_scan(&mut s, t0), 3, "{:?}", s.errors);
    let by_id = |id: &str| {
        s.written
            .iter()
            .find(|c| json_of(&c.json)["call_id"] == id)
            .unwrap_or_else(|| panic!("no recording {id}: {:?}", s.errors))
            .clone()
    };
    let c = by_id("1700002000.1");
    let (rate, [l, r]) = read_wav(&c.wav).unwrap();
    assert_eq!(rate, 8000);
    assert_eq!(l, want_l, "µ-law caller leg decoded exactly");
    assert_eq!(r, want_r, "A-law callee leg decoded exactly");
    let j = json_of(&c.json);
    assert_stereo(&c.wav, &j);
    assert_eq!(j["channels"][0]["codec"], "PCMU");
    assert_eq!(j["channels"][1]["codec"], "PCMA");
    let c = by_id("1700002001.1");
    let j = json_of(&c.json);
    assert_honest_mono(&c.wav, &j);
    assert_eq!(read_wav(&c.wav).unwrap().1[0], want_l);
    let c = by_id("1700002005.1");
    let j = json_of(&c.json);
    assert_eq!(j["audio"]["sample_rate"], 16000);
    assert_eq!(j["channels"][0]["codec"], "G722");
    assert_eq!(
        read_wav(&c.wav).unwrap().1[0],
        want_wide,
        "G.722 decoded exactly"
    );
    // Three recordings in formats not decoded: each reported once.
    assert_eq!(s.counters.unsupported, 3, "{:?}", s.errors);
    assert_eq!(s.counters.failed, 3);
    for ext in [".g729", ".siren14", ".g726-32"] {
        assert!(
            s.errors
                .iter()
                .any(|e| e.contains(ext) && e.contains("not supported")),
            "{ext}: {:?}",
            s.errors
        );
    }
    assert_eq!(s.scan(t0 + Duration::from_secs(400)), 0);
    assert_eq!(s.scan(t0 + Duration::from_secs(400) + SETTLE * 2), 0);
    assert_eq!(s.counters.unsupported, 3, "not reported again");
}

/// A CDR store that cannot answer (here a Master.csv that cannot be read:
/// a directory in its place, which stops root too) does not hold
/// recordings back for ever: each waits `cdr_wait`, then goes with what its
/// file name tells. The problem is logged once (not per recording), and the
/// source stays not ready (`cdr_down`) while the store fails.
#[test]
fn unreadable_master_csv_recordings_go_with_their_names_after_cdr_wait() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("m");
    let spool = tmp.path().join("s");
    let d = day_dir(&root);
    for uid in ["1700003000.1", "1700003000.2"] {
        write_wav(
            &d.join(format!("in-5550000-15551230000-20261124-101502-{uid}.wav")),
            8000,
            1,
            &speechlike(9, 1000, 8000),
        );
    }
    let csv = tmp.path().join("Master.csv");
    fs::create_dir(&csv).unwrap();
    let mut s = scanner(&root, &spool, Some(&csv)); // cdr_wait 30 s
    let t0 = Instant::now();
    assert_eq!(settle_scan(&mut s, t0), 0, "waits for the store first");
    assert!(
        s.cdr_down().is_some_and(|w| w.contains("Master.csv")),
        "{:?}",
        s.cdr_down()
    );
    assert_eq!(
        s.scan(t0 + SETTLE + Duration::from_secs(10)),
        0,
        "within cdr_wait"
    );
    assert_eq!(
        s.scan(t0 + SETTLE + Duration::from_secs(31)),
        2,
        "after cdr_wait: taken with the file names' details: {:?}",
        s.errors
    );
    for c in &s.written {
        let j = json_of(&c.json);
        assert_eq!(j["cdr"], false);
        assert!(
            j["warnings"][0].as_str().is_some_and(
                |w| w.contains("CDR store could not be read") && w.contains("Master.csv")
            ),
            "{j}"
        );
        assert_eq!(j["from"]["number"], "15551230000");
        assert_eq!(j["to"]["number"], "5550000");
        assert_eq!(j["started_at"], "2026-11-24T10:15:02.000Z");
    }
    assert!(
        s.cdr_down().is_some(),
        "still not ready while the store fails"
    );
    let cdr_errors = s.errors.iter().filter(|e| e.contains("Master.csv")).count();
    assert_eq!(cdr_errors, 1, "said once: {:?}", s.errors);
    // A new recording while the store still fails: waits its own cdr_wait.
    write_wav(
        &d.join("in-5550000-15551230000-20261124-101502-1700003000.3.wav"),
        8000,
        1,
        &speechlike(10, 1000, 8000),
    );
    let t1 = t0 + Duration::from_secs(100);
    assert_eq!(s.scan(t1), 0);
    assert_eq!(s.scan(t1 + SETTLE), 0);
    assert_eq!(
        s.scan(t1 + SETTLE + Duration::from_secs(31)),
        1,
        "{:?}",
        s.errors
    );
    let cdr_errors = s.errors.iter().filter(|e| e.contains("Master.csv")).count();
    assert_eq!(cdr_errors, 1, "still said once: {:?}", s.errors);
    // Nothing waits any more: the store is still asked, and once it
    // answers the source is ready again.
    assert_eq!(s.scan(t1 + SETTLE * 10), 0);
    assert!(
        s.cdr_down()
            .is_some_and(|w| w.contains("no recording waits")),
        "{:?}",
        s.cdr_down()
    );
    fs::remove_dir(&csv).unwrap();
    fs::write(&csv, "").unwrap();
    assert_eq!(s.scan(t1 + SETTLE * 11), 0);
    assert!(s.cdr_down().is_none(), "{:?}", s.cdr_down());
}
