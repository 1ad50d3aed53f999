use super::*;
use pbx_core::call::PartyInfo;

fn start(id: &str) -> RecordingStart {
    RecordingStart {
        call_id: format!("{id}@src"),
        sample_rate: 8000,
        media_started_at: Timestamp::parse_rfc3339("2026-12-03T10:00:01.000Z").unwrap(),
        recording_id: id.to_string(),
        from: PartyInfo {
            number: "1001".into(),
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

fn ctx(source: &'static str) -> RecordingContext {
    RecordingContext {
        agent_id: "agent-a".into(),
        source,
        min_duration: Duration::ZERO,
        seal: None,
        tap: None,
        roles: RoleRules::default(),
    }
}

fn json_of(dir: &Path, id: &str) -> Value {
    serde_json::from_slice(&fs::read(dir.join(format!("{id}.json"))).unwrap()).unwrap()
}

/// A SIPREC call cut by a crash, recovered by a start that names another
/// source: the sidecar's source, agent and times win, and every field of
/// CONTRACT §3 is there with its type.
#[test]
fn crash_recovery_keeps_the_source_and_fills_every_contract_field() {
    let d = tempfile::tempdir().unwrap();
    let mut rd = RecordingDir::new(d.path(), ctx("siprec")).unwrap();
    rd.begin(CallKey(1), &start("r1"));
    // 2.5 s of stereo audio reaches the disk, then the process dies.
    for _ in 0..25 {
        rd.audio(CallKey(1), &[7i16; 1600]);
    }
    drop(rd);
    let ids = recover(d.path(), &ctx("sniff")).unwrap();
    assert_eq!(ids, vec!["r1".to_string()]);
    let j = json_of(d.path(), "r1");
    assert_eq!(j["source"], "siprec");
    assert_eq!(j["agent_id"], "agent-a");
    assert_eq!(j["call_id"], "r1@src");
    assert_eq!(j["from"]["number"], "1001");
    assert_eq!(
        (j["truncated"].clone(), j["end_reason"].clone()),
        (true.into(), "crash".into())
    );
    assert_eq!(j["duration_ms"], 2500);
    assert_eq!(j["ended_at"], "2026-12-03T10:00:03.500Z");
    assert_eq!(j["started_at"], "2026-12-03T10:00:00.000Z");
    assert!(j["answered_at"].is_null());
    for (i, party) in [(0, "caller"), (1, "callee")] {
        let c = &j["channels"][i];
        assert_eq!(c["party"], party);
        assert!(
            c["codec"].is_string() && c["packets"].is_u64() && c["lost"].is_u64(),
            "{c}"
        );
    }
    let wav = fs::read(d.path().join("r1.wav")).unwrap();
    assert_eq!(j["audio"]["bytes"], wav.len());
    assert_eq!(wav.len(), 44 + 20_000 * 4);
    assert!(!d.path().join(".r1.start.json").exists());
    // Done once: a second start finds nothing to do.
    assert!(recover(d.path(), &ctx("sniff")).unwrap().is_empty());
}

/// A crash between the WAV's rename and the JSON's: the WAV is complete,
/// its JSON is written at the next start.
#[test]
fn wav_renamed_without_its_json_gets_one() {
    let d = tempfile::tempdir().unwrap();
    let mut rd = RecordingDir::new(d.path(), ctx("siprec")).unwrap();
    rd.begin(CallKey(1), &start("r2"));
    rd.audio(CallKey(1), &[3i16; 16_000]);
    drop(rd);
    // What finish_files had done before the crash: a finalised WAV.
    let part = d.path().join(".r2.wav.part");
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&part)
        .unwrap();
    let len = f.metadata().unwrap().len();
    pbx_core::audio::wav::repair_wav(&mut f, len).unwrap();
    drop(f);
    fs::rename(&part, d.path().join("r2.wav")).unwrap();
    let before = hash_file(&d.path().join("r2.wav")).unwrap();
    assert_eq!(
        recover(d.path(), &ctx("sniff")).unwrap(),
        vec!["r2".to_string()]
    );
    let j = json_of(d.path(), "r2");
    assert_eq!(j["source"], "siprec");
    assert_eq!(j["truncated"], false);
    assert_eq!(j["duration_ms"], 1000);
    assert_eq!(j["audio"]["sha256"], before.1.as_str());
    assert_eq!(
        hash_file(&d.path().join("r2.wav")).unwrap(),
        before,
        "WAV untouched"
    );
    // A finished pair is left alone, and its stray sidecar removed.
    fs::write(d.path().join(".r2.start.json"), b"{}").unwrap();
    assert!(recover(d.path(), &ctx("sniff")).unwrap().is_empty());
    assert!(!d.path().join(".r2.start.json").exists());
    assert_eq!(json_of(d.path(), "r2"), j);
}

fn answered(call_id: &str) -> AnsweredCall {
    AnsweredCall {
        call_id: call_id.to_string(),
        from: PartyInfo {
            number: "+15551001".into(),
            name: "Alice".into(),
            uri: "sip:+15551001@pbx".into(),
        },
        to: PartyInfo::default(),
        started_at: Timestamp::parse_rfc3339("2026-12-03T10:00:00.000Z").unwrap(),
        answered_at: Timestamp::parse_rfc3339("2026-12-03T10:00:00.250Z").unwrap(),
        recorded_call_id: Some("orig@pbx".into()),
        sample_rate: None,
        ids: Default::default(),
    }
}

/// When the calls of [`answered`] hang up: 20 s after their answer.
fn hung_up() -> Timestamp {
    Timestamp::parse_rfc3339("2026-12-03T10:00:20.250Z").unwrap()
}

fn hidden_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    v.sort();
    v
}

/// Every chunk the engine hands over is in the file (the page cache,
/// which a SIGKILL does not touch) when `audio` returns; the header is
/// there as soon as the recording begins.
#[test]
fn audio_reaches_the_file_before_audio_returns() {
    let d = tempfile::tempdir().unwrap();
    let mut rd = RecordingDir::new(d.path(), ctx("siprec")).unwrap();
    rd.begin(CallKey(1), &start("p1"));
    let part = d.path().join(".p1.wav.part");
    assert_eq!(fs::metadata(&part).unwrap().len(), 44, "header at once");
    // 100 ms of stereo audio at 8 kHz, then 20 ms more.
    rd.audio(CallKey(1), &[5i16; 1600]);
    assert_eq!(fs::metadata(&part).unwrap().len(), 44 + 3200);
    rd.audio(CallKey(1), &[6i16; 320]);
    assert_eq!(fs::metadata(&part).unwrap().len(), 44 + 3200 + 640);
    // What a crash leaves is what recovery keeps.
    std::mem::forget(rd);
    assert_eq!(recover(d.path(), &ctx("siprec")).unwrap(), vec!["p1"]);
    let j = json_of(d.path(), "p1");
    assert_eq!(j["duration_ms"], 120);
    assert_eq!(j["truncated"], true);
}

/// A call answered whose audio never began: after a crash, a recording
/// of its own with an empty, valid 2-channel WAV, marked truncated.
#[test]
fn answered_call_without_audio_becomes_an_empty_recording_after_a_crash() {
    let d = tempfile::tempdir().unwrap();
    let rd = RecordingDir::new(d.path(), ctx("siprec")).unwrap();
    let id = rd.answered_calls().answered(&answered("a1@src")).unwrap();
    assert_eq!(rd.answered_calls().len(), 1);
    assert_eq!(
        hidden_files(d.path()),
        vec![format!(".{id}{ANSWER_SUFFIX}")]
    );
    std::mem::forget(rd);
    assert_eq!(recover(d.path(), &ctx("sniff")).unwrap(), vec![id.clone()]);
    let j = json_of(d.path(), &id);
    assert_eq!(j["call_id"], "a1@src");
    assert_eq!(j["source"], "siprec");
    assert_eq!(j["agent_id"], "agent-a");
    assert_eq!(j["recorded_call_id"], "orig@pbx");
    assert_eq!(j["from"]["number"], "+15551001");
    assert_eq!(
        (j["truncated"].clone(), j["end_reason"].clone()),
        (true.into(), "crash".into())
    );
    assert_eq!(j["duration_ms"], 0);
    assert_eq!(j["answered_at"], "2026-12-03T10:00:00.250Z");
    assert_eq!(j["ended_at"], "2026-12-03T10:00:00.250Z");
    let wav = fs::read(d.path().join(format!("{id}.wav"))).unwrap();
    let info = pbx_core::audio::wav::parse_wav_header(&wav).unwrap();
    assert_eq!((info.channels, info.sample_rate, wav.len()), (2, 8000, 44));
    assert_eq!(j["audio"]["bytes"], 44);
    assert_eq!(
        j["audio"]["sha256"],
        hash_file(&d.path().join(format!("{id}.wav"))).unwrap().1
    );
    assert!(hidden_files(d.path()).is_empty());
    assert!(recover(d.path(), &ctx("sniff")).unwrap().is_empty());
}

/// A call answered, no audio, hung up 20 s later: its empty recording
/// ends when the call did (the BYE, or the stop), not when it was
/// answered (CONTRACT §3 `ended_at`).
#[test]
fn an_answered_call_without_audio_ends_when_it_was_hung_up() {
    let d = tempfile::tempdir().unwrap();
    let mut rd = RecordingDir::new(d.path(), ctx("siprec")).unwrap();
    let id = rd.answered_calls().answered(&answered("bye@src")).unwrap();
    assert!(rd.end_answered("bye@src", "bye", hung_up()));
    let j = json_of(d.path(), &id);
    assert_eq!(j["answered_at"], "2026-12-03T10:00:00.250Z");
    assert_eq!(j["ended_at"], "2026-12-03T10:00:20.250Z", "{j}");
    assert_eq!(j["duration_ms"], 0);
    let id = rd.answered_calls().answered(&answered("stop@src")).unwrap();
    let stop = Timestamp::parse_rfc3339("2026-12-03T10:01:00.000Z").unwrap();
    rd.finish_answered("shutdown", stop);
    let j = json_of(d.path(), &id);
    assert_eq!(j["ended_at"], "2026-12-03T10:01:00.000Z", "{j}");
    assert_eq!(j["end_reason"], "shutdown");
}

/// The answer note goes when the call's audio begins (the recording
/// stands for the call) or when it ends without audio; a crash between
/// the start sidecar and the note's removal still gives one recording.
#[test]
fn answered_note_gives_way_to_the_recording_or_goes_with_the_call() {
    let d = tempfile::tempdir().unwrap();
    let mut rd = RecordingDir::new(d.path(), ctx("siprec")).unwrap();
    let calls = rd.answered_calls();
    calls.answered(&answered("r3@src")).unwrap();
    rd.begin(CallKey(3), &start("r3"));
    assert!(calls.is_empty());
    assert_eq!(
        hidden_files(d.path()),
        vec![".r3.start.json", ".r3.wav.part"]
    );
    // Ended without audio: nothing stays.
    calls.answered(&answered("gone@src")).unwrap();
    calls.forget("gone@src");
    assert_eq!(hidden_files(d.path()).len(), 2);
    // A crash right after begin wrote its files but before the note
    // went: the note is stale, the recording is the call's one.
    let id = calls.answered(&answered("r3@src")).unwrap();
    std::mem::forget(rd);
    assert!(d.path().join(format!(".{id}{ANSWER_SUFFIX}")).exists());
    assert_eq!(recover(d.path(), &ctx("siprec")).unwrap(), vec!["r3"]);
    assert!(hidden_files(d.path()).is_empty());
    assert!(!d.path().join(format!("{id}.json")).exists());
}

/// [`meta_r4`] for call `i`, recording `id` (its Call-ID `{id}@src`, as
/// [`start`] gives).
fn meta_of(i: u64, id: &str) -> CallMeta {
    CallMeta {
        key: CallKey(i),
        recording_id: id.to_string(),
        call_id: format!("{id}@src"),
        ..meta_r4()
    }
}

fn meta_r4() -> CallMeta {
    let t0 = Timestamp::parse_rfc3339("2026-12-03T10:00:01.000Z").unwrap();
    CallMeta {
        key: CallKey(4),
        recording_id: "r4".into(),
        call_id: "r4@src".into(),
        recorded_call_id: None,
        from: PartyInfo::default(),
        to: PartyInfo::default(),
        caller_known: true,
        started_at: t0,
        answered_at: None,
        ended_at: t0.add_micros(100_000),
        media_started_at: t0,
        sample_rate: 8000,
        frames: 800,
        channels: Default::default(),
        dtmf: Vec::new(),
        pauses: Vec::new(),
        end_reason: pbx_core::call::EndReason::Bye,
        warnings: Vec::new(),
        ids: Default::default(),
        signalling: None,
        mixed_mono: false,
    }
}

/// `take_closed` names a call once its pair is on disk; a stop turns
/// calls answered without audio into recordings cut by shutdown.
#[test]
fn closed_calls_are_named_once_their_pair_is_durable() {
    let d = tempfile::tempdir().unwrap();
    let mut rd = RecordingDir::new(d.path(), ctx("siprec")).unwrap();
    rd.track_closed(true);
    rd.begin(CallKey(4), &start("r4"));
    rd.audio(CallKey(4), &[1i16; 1600]);
    assert!(rd.is_recording("r4@src"));
    assert!(rd.take_closed().is_empty());
    let meta = meta_r4();
    rd.end(CallKey(4), meta);
    assert!(!rd.is_recording("r4@src"));
    assert_eq!(rd.take_closed(), vec!["r4@src".to_string()]);
    assert!(d.path().join("r4.json").exists() && d.path().join("r4.wav").exists());
    assert!(rd.take_closed().is_empty());
    // A call that ends without audio is a recording of its own, whole.
    let id = rd
        .answered_calls()
        .answered(&answered("empty@src"))
        .unwrap();
    assert!(rd.end_answered("empty@src", "bye", hung_up()));
    assert!(!rd.end_answered("empty@src", "bye", hung_up()), "once");
    assert_eq!(rd.take_closed(), vec!["empty@src".to_string()]);
    let j = json_of(d.path(), &id);
    assert_eq!(
        (j["truncated"].clone(), j["end_reason"].clone()),
        (false.into(), "bye".into())
    );
    assert_eq!(
        fs::metadata(d.path().join(format!("{id}.wav")))
            .unwrap()
            .len(),
        44
    );
    // A call with audio: its note went when the audio began.
    rd.answered_calls().answered(&answered("r4b@src")).unwrap();
    rd.begin(
        CallKey(7),
        &RecordingStart {
            call_id: "r4b@src".into(),
            ..start("r4b")
        },
    );
    assert!(!rd.end_answered("r4b@src", "bye", hung_up()));
    rd.end(
        CallKey(7),
        CallMeta {
            call_id: "r4b@src".into(),
            recording_id: "r4b".into(),
            key: CallKey(7),
            ..meta_r4()
        },
    );
    assert_eq!(rd.take_closed(), vec!["r4b@src".to_string()]);
    let id = rd
        .answered_calls()
        .answered(&answered("quiet@src"))
        .unwrap();
    rd.finish_answered("shutdown", hung_up());
    assert_eq!(rd.take_closed(), vec!["quiet@src".to_string()]);
    let j = json_of(d.path(), &id);
    assert_eq!(
        (j["truncated"].clone(), j["end_reason"].clone()),
        (true.into(), "shutdown".into())
    );
    assert_eq!(rd.counters.written, 4);
    assert!(hidden_files(d.path()).is_empty());
}

/// Finished in the background (live sources): many calls ending at once
/// are each made durable by the finisher's threads; a call stays "being
/// recorded" until its pair is durable, `take_closed` names it only then,
/// once; the pairs and the counters are the same as when finished inline
/// (every byte of every WAV, every JSON field).
#[test]
fn pairs_finished_in_the_background_are_the_pairs_finished_inline() {
    let ids: Vec<String> = (0..40).map(|i| format!("bg{i}")).collect();
    let mut dirs = Vec::new();
    for background in [false, true] {
        let d = tempfile::tempdir().unwrap();
        let mut rd = RecordingDir::new(d.path(), ctx("siprec")).unwrap();
        rd.track_closed(true);
        if background {
            rd.finish_in_background();
        }
        for (i, id) in ids.iter().enumerate() {
            rd.begin(CallKey(i as u64), &start(id));
            rd.audio(CallKey(i as u64), &vec![i as i16; 1600 + 2 * i]);
        }
        let mut closed = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            rd.end(CallKey(i as u64), meta_of(i as u64, id));
            closed.extend(rd.take_closed());
        }
        // Until its pair is durable, a call is still being recorded (a
        // SIPREC BYE waits): never named closed before its JSON exists.
        for c in &closed {
            let id = c.trim_end_matches("@src");
            assert!(d.path().join(format!("{id}.json")).exists(), "{c}");
            assert!(!rd.is_recording(c));
        }
        rd.wait_finished();
        closed.extend(rd.take_closed());
        closed.sort();
        let mut want: Vec<String> = ids.iter().map(|i| format!("{i}@src")).collect();
        want.sort();
        assert_eq!(closed, want, "each call closed once");
        assert_eq!(rd.finishing(), 0);
        assert!(rd.take_closed().is_empty());
        assert_eq!(rd.counters.written, ids.len() as u64);
        assert_eq!(rd.counters.failed + rd.counters.too_short, 0);
        assert_eq!(rd.written.len(), ids.len());
        assert!(hidden_files(d.path()).is_empty());
        dirs.push(d);
    }
    for id in &ids {
        let wav = |d: &tempfile::TempDir| fs::read(d.path().join(format!("{id}.wav"))).unwrap();
        assert_eq!(wav(&dirs[0]), wav(&dirs[1]), "{id}");
        let (a, b) = (json_of(dirs[0].path(), id), json_of(dirs[1].path(), id));
        assert_eq!(a["audio"], b["audio"], "{id}");
        assert_eq!(a["duration_ms"], b["duration_ms"], "{id}");
    }
}

/// Finished two at a time (imports): the WAVs hashed together, every
/// pair byte for byte what finishing each alone makes (an odd count: the
/// last waits for [`RecordingDir::finish_held`]; the directory dropped
/// with one waiting finishes it too).
#[test]
fn recordings_finished_in_pairs_are_those_finished_one_by_one() {
    let ids: Vec<String> = (0..7).map(|i| format!("pr{i}")).collect();
    let mut dirs = Vec::new();
    for pairs in [false, true, true] {
        let d = tempfile::tempdir().unwrap();
        let mut rd = RecordingDir::new(d.path(), ctx("pcap")).unwrap();
        rd.set_write_through(false);
        rd.finish_in_pairs(pairs);
        for (i, id) in ids.iter().enumerate() {
            rd.begin(CallKey(i as u64), &start(id));
            for k in 0..(3 + 5 * i) {
                rd.audio(CallKey(i as u64), &vec![(i * 100 + k) as i16; 1600 + 2 * i]);
            }
        }
        for (i, id) in ids.iter().enumerate() {
            rd.end(CallKey(i as u64), meta_of(i as u64, id));
        }
        if pairs {
            assert_eq!(rd.counters.written, ids.len() as u64 - 1);
        }
        if dirs.len() == 2 {
            drop(rd);
        } else {
            rd.finish_held();
            assert_eq!(rd.counters.written, ids.len() as u64);
            assert_eq!(rd.counters.failed + rd.counters.too_short, 0);
        }
        assert!(hidden_files(d.path()).is_empty());
        dirs.push(d);
    }
    for id in &ids {
        let wav = |d: &tempfile::TempDir| fs::read(d.path().join(format!("{id}.wav"))).unwrap();
        let json = |d: &tempfile::TempDir| fs::read(d.path().join(format!("{id}.json"))).unwrap();
        for d in &dirs[1..] {
            assert_eq!(wav(&dirs[0]), wav(d), "{id}");
            assert_eq!(json(&dirs[0]), json(d), "{id}");
        }
        let j = json_of(dirs[1].path(), id);
        let (n, sha) = hash_file(&dirs[1].path().join(format!("{id}.wav"))).unwrap();
        assert_eq!(
            (j["audio"]["bytes"].as_u64(), j["audio"]["sha256"].as_str()),
            (Some(n), Some(sha.as_str()))
        );
    }
}

/// Dropping a directory whose pairs are still being finished (a source
/// that ends) finishes them first: no `.part` is left behind.
#[test]
fn dropping_the_directory_finishes_what_was_handed_over() {
    let d = tempfile::tempdir().unwrap();
    let mut rd = RecordingDir::new(d.path(), ctx("siprec")).unwrap();
    rd.finish_in_background();
    for i in 0..20u64 {
        let id = format!("dr{i}");
        rd.begin(CallKey(i), &start(&id));
        rd.audio(CallKey(i), &[5i16; 1600]);
        rd.end(CallKey(i), meta_of(i, &id));
    }
    drop(rd);
    assert!(hidden_files(d.path()).is_empty());
    for i in 0..20 {
        assert!(d.path().join(format!("dr{i}.json")).exists());
    }
}

/// A write cut in the middle of a frame: the stray bytes go, the WAV
/// stays valid. A part that never got its header (power loss) but whose
/// call is known: an empty recording, not nothing.
#[test]
fn parts_are_cut_to_whole_frames_and_headerless_ones_kept_empty() {
    let d = tempfile::tempdir().unwrap();
    let mut rd = RecordingDir::new(d.path(), ctx("siprec")).unwrap();
    rd.begin(CallKey(5), &start("r5"));
    rd.audio(CallKey(5), &[9i16; 800]);
    rd.begin(CallKey(6), &start("r6"));
    std::mem::forget(rd);
    let part5 = d.path().join(".r5.wav.part");
    let mut f = OpenOptions::new().append(true).open(&part5).unwrap();
    f.write_all(&[1, 2, 3]).unwrap();
    drop(f);
    fs::write(d.path().join(".r6.wav.part"), b"").unwrap();
    let mut ids = recover(d.path(), &ctx("siprec")).unwrap();
    ids.sort();
    assert_eq!(ids, vec!["r5", "r6"]);
    let w5 = fs::read(d.path().join("r5.wav")).unwrap();
    assert_eq!(w5.len(), 44 + 1600);
    assert_eq!(
        pbx_core::audio::wav::parse_wav_header(&w5)
            .unwrap()
            .audio_len(w5.len() as u64),
        1600
    );
    let w6 = fs::read(d.path().join("r6.wav")).unwrap();
    assert_eq!(w6.len(), 44);
    assert_eq!(json_of(d.path(), "r6")["call_id"], "r6@src");
}

/// The sync thread syncs a directory written to within a few intervals.
#[test]
fn a_whole_recording_is_written_as_a_pair_through_the_one_json_writer() {
    let d = tempfile::tempdir().unwrap();
    let mut doc = RecordingDoc::of_call(
        &meta_r4(),
        "w1",
        "edge",
        "folder",
        DocAudio::wav(8000, 0, String::new()),
    );
    doc.call = None;
    let left = vec![100i16; 8000];
    let right = vec![-100i16; 4000];
    let (w, bytes) = write_whole(d.path(), 8000, &[&left, &right], doc, None).unwrap();
    assert_eq!(w.duration_ms, 1000);
    assert_eq!(bytes, 44 + 8000 * 4);
    let (len, sha) = hash_file(&w.wav).unwrap();
    let j = json_of(d.path(), "w1");
    assert_eq!(j["audio"]["bytes"], len);
    assert_eq!(j["audio"]["sha256"], sha);
    assert_eq!(j["duration_ms"], 1000);
    assert!(j.get("end_reason").is_none(), "{j}");
    assert!(
        hidden_files(d.path()).is_empty(),
        "{:?}",
        hidden_files(d.path())
    );
    // A directory that cannot be written leaves nothing behind.
    let blocked = d.path().join("blocked");
    fs::write(&blocked, b"a file").unwrap();
    let doc = RecordingDoc::of_call(
        &meta_r4(),
        "w2",
        "edge",
        "folder",
        DocAudio::wav(8000, 0, String::new()),
    );
    assert!(write_whole(&blocked, 8000, &[&left, &right], doc, None).is_err());
    assert!(!d.path().join("w2.wav").exists());
}

/// A mono mix is a 1-channel WAV (CONTRACT §3 `mixed_mono`), its JSON says
/// `audio.channels: 1`; three channels are refused and leave nothing.
#[test]
fn a_whole_mono_recording_is_a_one_channel_wav() {
    let d = tempfile::tempdir().unwrap();
    let doc = |id: &str| {
        let mut doc = RecordingDoc::of_call(
            &meta_r4(),
            id,
            "edge",
            "folder",
            DocAudio::wav(8000, 0, String::new()),
        );
        doc.call = None;
        doc
    };
    let mono: Vec<i16> = (0..8000).map(|i| (i % 300) as i16 - 150).collect();
    let (w, bytes) = write_whole(d.path(), 8000, &[&mono], doc("m1"), None).unwrap();
    assert_eq!(bytes, 44 + 8000 * 2);
    assert_eq!(w.duration_ms, 1000);
    let raw = fs::read(&w.wav).unwrap();
    let info = pbx_core::audio::wav::parse_wav_header(&raw).unwrap();
    assert_eq!(info.channels, 1);
    let got: Vec<i16> = raw[info.data_offset as usize..]
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect();
    assert_eq!(got, mono);
    let j = json_of(d.path(), "m1");
    assert_eq!(j["audio"]["channels"], 1);
    assert_eq!(j["audio"]["bytes"], bytes);
    let e = write_whole(d.path(), 8000, &[&mono, &mono, &mono], doc("m3"), None).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    assert!(!d.path().join("m3.wav").exists());
    assert!(hidden_files(d.path()).is_empty());
}

#[test]
fn written_directories_are_synced_in_the_background() {
    let d = tempfile::tempdir().unwrap();
    let before = fs_syncs();
    mark_unsynced(d.path());
    let t = std::time::Instant::now();
    while fs_syncs() == before {
        assert!(t.elapsed() < SYNC_INTERVAL * 20, "no sync");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An import (write-through off) buffers its audio, and the finished
/// pair is byte for byte what a written-through one is.
#[test]
fn buffered_writes_make_the_same_recording() {
    let mut wavs = Vec::new();
    for through in [true, false] {
        let d = tempfile::tempdir().unwrap();
        let mut rd = RecordingDir::new(d.path(), ctx("pcap")).unwrap();
        rd.set_write_through(through);
        rd.begin(CallKey(4), &start("r4"));
        let part = d.path().join(".r4.wav.part");
        rd.audio(CallKey(4), &[3i16; 800]);
        rd.audio(CallKey(4), &[-4i16; 800]);
        let grown = fs::metadata(&part).unwrap().len();
        assert_eq!(grown, if through { 44 + 3200 } else { 44 }, "{through}");
        rd.end(CallKey(4), meta_r4());
        assert_eq!(rd.counters.written, 1);
        wavs.push(fs::read(d.path().join("r4.wav")).unwrap());
    }
    assert_eq!(wavs[0].len(), 44 + 3200);
    assert_eq!(wavs[0], wavs[1]);
}

/// A daemon writes recordings for months: what the directory keeps of them
/// for its owner is bounded (the latest 1024), however many are written.
#[test]
fn the_list_of_written_recordings_does_not_grow_without_bound() {
    let d = tempfile::tempdir().unwrap();
    let mut rd = RecordingDir::new(d.path(), ctx("siprec")).unwrap();
    rd.set_write_through(false);
    let n = KEEP_WRITTEN + 20;
    for i in 0..n {
        let id = format!("r{i}");
        let key = CallKey(i as u64 + 1);
        rd.begin(key, &start(&id));
        rd.audio(key, &[1i16; 16]);
        let mut meta = meta_r4();
        meta.key = key;
        meta.recording_id = id.clone();
        meta.call_id = format!("{id}@src");
        meta.frames = 8;
        rd.end(key, meta);
    }
    assert_eq!(rd.counters.written, n as u64);
    assert_eq!(rd.written.len(), KEEP_WRITTEN);
    assert_eq!(
        rd.written.last().map(|w| w.id.as_str()),
        Some(format!("r{}", n - 1).as_str())
    );
    assert_eq!(rd.written[0].id, "r20");
}

/// Encryption at rest: an answered call's note is sealed (it names the
/// parties); after a crash it becomes a sealed empty recording whose JSON
/// reads with the key, and a `.part` whose final WAV was already renamed in
/// is simply dropped.
#[test]
fn sealed_answered_notes_and_parts_recover_sealed() {
    let d = tempfile::tempdir().unwrap();
    let keys = Arc::new(Keyring::new(crypt::SpoolKey::new(&[4; 32]), Vec::new()));
    let sealed = RecordingContext {
        seal: Some(keys.clone()),
        ..ctx("siprec")
    };
    let rd = RecordingDir::new(d.path(), sealed.clone()).unwrap();
    let id = rd.answered_calls().answered(&answered("a9@src")).unwrap();
    drop(rd);
    let note = d.path().join(format!(".{id}{ANSWER_SUFFIX}"));
    assert!(fs::read(&note).unwrap().starts_with(crypt::MAGIC));
    // A start without the key leaves the note as it is (before, it became
    // an anonymous, unsealed empty recording and the note was gone).
    assert_eq!(
        recover(d.path(), &ctx("siprec")).unwrap(),
        Vec::<String>::new()
    );
    assert!(note.exists());
    assert!(!d.path().join(format!("{id}.json")).exists());
    // Recovery reads the sealed note with the key: the recording keeps the
    // call's details.
    assert_eq!(recover(d.path(), &sealed).unwrap(), vec![id.clone()]);
    for ext in ["wav", "json"] {
        let b = fs::read(d.path().join(format!("{id}.{ext}"))).unwrap();
        assert!(b.starts_with(crypt::MAGIC), "{ext}");
    }
    let j: Value = serde_json::from_slice(
        &read_recording(&d.path().join(format!("{id}.json")), Some(&keys)).unwrap(),
    )
    .unwrap();
    assert_eq!(j["call_id"], "a9@src");
    assert_eq!(j["truncated"], true);
    assert_eq!(j["audio"]["bytes"], 44);
    let (n, sha) = hash_recording(&d.path().join(format!("{id}.wav")), Some(&keys)).unwrap();
    assert_eq!(
        (n, sha.as_str()),
        (44, j["audio"]["sha256"].as_str().unwrap())
    );

    // A finished sealed WAV and its leftover .part: the .part goes, the JSON
    // is made from the start sidecar.
    let mut rd = RecordingDir::new(d.path(), sealed.clone()).unwrap();
    rd.begin(CallKey(3), &start("s3"));
    rd.audio(CallKey(3), &[5i16; 1600]);
    drop(rd);
    let part = d.path().join(".s3.wav.part");
    let wav = d.path().join("s3.wav");
    seal_part(&part, &wav, &keys).unwrap();
    assert_eq!(recover(d.path(), &sealed).unwrap(), vec!["s3".to_string()]);
    assert!(!part.exists());
    let j: Value =
        serde_json::from_slice(&read_recording(&d.path().join("s3.json"), Some(&keys)).unwrap())
            .unwrap();
    assert_eq!(j["audio"]["bytes"], 44 + 3200);
    assert_eq!(j["truncated"], false);
}

/// A recording that cannot be completed at a start (a sealed WAV left by a
/// crash, the key no longer configured) is left as it is and reported: it
/// does not stop the other recordings' recovery (found by the `recovery`
/// fuzz target: the whole recovery failed), and a later start with the key
/// completes it.
#[test]
fn a_recording_recovery_cannot_open_does_not_stop_the_others() {
    let d = tempfile::tempdir().unwrap();
    let keys = Arc::new(Keyring::new(crypt::SpoolKey::new(&[4; 32]), Vec::new()));
    let sealed = RecordingContext {
        seal: Some(keys.clone()),
        ..ctx("siprec")
    };
    // "a1": sealed, finished WAV renamed in, then the crash (its .part and
    // start sidecar left).
    let mut rd = RecordingDir::new(d.path(), sealed.clone()).unwrap();
    rd.begin(CallKey(1), &start("a1"));
    rd.audio(CallKey(1), &[5i16; 1600]);
    drop(rd);
    seal_part(
        &d.path().join(".a1.wav.part"),
        &d.path().join("a1.wav"),
        &keys,
    )
    .unwrap();
    // "b2": plain, cut off by the crash.
    let mut rd = RecordingDir::new(d.path(), ctx("siprec")).unwrap();
    rd.begin(CallKey(2), &start("b2"));
    rd.audio(CallKey(2), &[7i16; 1600]);
    drop(rd);
    // Started without the key: b2 is completed, a1 left for later.
    assert_eq!(
        recover(d.path(), &ctx("siprec")).unwrap(),
        vec!["b2".to_string()]
    );
    assert_eq!(json_of(d.path(), "b2")["audio"]["bytes"], 44 + 3200);
    assert!(d.path().join("a1.wav").exists());
    assert!(d.path().join(format!(".a1{START_SUFFIX}")).exists());
    assert!(!d.path().join("a1.json").exists());
    // With the key again: a1 gets its JSON.
    assert_eq!(recover(d.path(), &sealed).unwrap(), vec!["a1".to_string()]);
    let j: Value =
        serde_json::from_slice(&read_recording(&d.path().join("a1.json"), Some(&keys)).unwrap())
            .unwrap();
    assert_eq!(j["audio"]["bytes"], 44 + 3200);
}

/// What a test tap saw.
#[derive(Debug, Default)]
struct Seen {
    begun: Vec<TapBegin>,
    /// (offset, samples) of each chunk, with what the file held at that
    /// offset when the tap was told.
    chunks: Vec<(u64, Vec<i16>, Vec<i16>)>,
    ends: Vec<TapEnd>,
}

#[derive(Debug, Default)]
struct TestTap(Arc<Mutex<Seen>>);

struct TestCallTap(Arc<Mutex<Seen>>, RecordingFile);

impl AudioTap for TestTap {
    fn begin(&self, rec: TapBegin) -> Option<Box<dyn CallTap>> {
        let file = rec.file.clone();
        self.0.lock().unwrap().begun.push(rec);
        Some(Box::new(TestCallTap(self.0.clone(), file)))
    }
}

impl CallTap for TestCallTap {
    fn audio(&mut self, at: u64, frames: &[i16]) {
        let in_file = self.1.read_frames(at, frames.len() / 2).unwrap();
        self.0
            .lock()
            .unwrap()
            .chunks
            .push((at, frames.to_vec(), in_file));
    }
    fn end(self: Box<Self>, end: TapEnd) {
        self.0.lock().unwrap().ends.push(end);
    }
}

/// The tap hears every chunk at its offset after it is in the file (so
/// `read_frames` gives it back, also after the rename), the start metadata,
/// and the end with the frames and the JSON written.
#[test]
fn the_tap_sees_each_chunk_after_it_is_in_the_file_and_the_final_json() {
    let d = tempfile::tempdir().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut c = ctx("siprec");
    c.tap = Some(Arc::new(TestTap(seen.clone())));
    let mut rd = RecordingDir::new(d.path(), c).unwrap();
    rd.begin(CallKey(4), &start("r4"));
    let chunk = |k: i16| -> Vec<i16> { (0..1600).map(|i| i * 3 + k).collect() };
    rd.audio(CallKey(4), &chunk(1));
    rd.audio(CallKey(4), &chunk(2));
    let file = {
        let s = seen.lock().unwrap();
        assert_eq!(s.begun.len(), 1);
        let b = &s.begun[0];
        assert_eq!(b.recording_id, "r4");
        assert_eq!(b.sample_rate, 8000);
        assert_eq!(b.meta["recording_id"], "r4");
        assert_eq!(b.meta["call_id"], "r4@src");
        assert_eq!(b.meta["source"], "siprec");
        assert_eq!(b.meta["from"]["number"], "1001");
        assert_eq!(s.chunks.len(), 2);
        assert_eq!((s.chunks[0].0, s.chunks[1].0), (0, 800));
        for (_, sent, in_file) in &s.chunks {
            assert_eq!(sent, in_file);
        }
        b.file.clone()
    };
    rd.end(
        CallKey(4),
        CallMeta {
            frames: 1600,
            ..meta_r4()
        },
    );
    let s = seen.lock().unwrap();
    match &s.ends[..] {
        [TapEnd::Written { frames, meta }] => {
            assert_eq!(*frames, 1600);
            assert_eq!(*meta, json_of(d.path(), "r4"));
        }
        other => panic!("{other:?}"),
    }
    // After the rename the same reader finds the finished WAV.
    assert!(!file.part.exists());
    let all = file.read_frames(0, 10_000).unwrap();
    assert_eq!(all.len(), 3200);
    assert_eq!(&all[..1600], &chunk(1)[..]);
    assert_eq!(
        file.read_frames(1500, 100).unwrap(),
        chunk(2)[1400..].to_vec()
    );
}

/// A recording discarded as too short tells the tap so.
#[test]
fn a_discarded_recording_ends_its_tap_as_discarded() {
    let d = tempfile::tempdir().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut c = ctx("siprec");
    c.tap = Some(Arc::new(TestTap(seen.clone())));
    c.min_duration = Duration::from_secs(5);
    let mut rd = RecordingDir::new(d.path(), c).unwrap();
    rd.begin(CallKey(4), &start("r4"));
    rd.audio(CallKey(4), &[1i16; 1600]);
    rd.end(CallKey(4), meta_r4());
    let s = seen.lock().unwrap();
    assert!(
        matches!(&s.ends[..], [TapEnd::Discarded { frames: 800, .. }]),
        "{:?}",
        s.ends
    );
}

/// Who is who in the JSON and in the stream's start metadata: an outbound
/// call from extension 1001 (the caller is the agent), with the PBX's ids
/// and the recorded call's Call-ID.
#[test]
fn roles_and_ids_reach_the_json_and_the_start_metadata() {
    let d = tempfile::tempdir().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut c = ctx("siprec");
    c.tap = Some(Arc::new(TestTap(seen.clone())));
    let mut rd = RecordingDir::new(d.path(), c).unwrap();
    let ids: std::collections::BTreeMap<String, String> =
        [("asterisk_uniqueid".to_string(), "1733.7".to_string())].into();
    let to = PartyInfo {
        number: "+15551002".into(),
        ..PartyInfo::default()
    };
    rd.begin(
        CallKey(4),
        &RecordingStart {
            to: to.clone(),
            ids: ids.clone(),
            ..start("r4")
        },
    );
    rd.audio(CallKey(4), &[1i16; 1600]);
    rd.end(
        CallKey(4),
        CallMeta {
            from: PartyInfo {
                number: "1001".into(),
                ..PartyInfo::default()
            },
            to,
            ids,
            recorded_call_id: Some("orig-call@pbx".into()),
            ..meta_r4()
        },
    );
    let j = json_of(d.path(), "r4");
    assert_eq!(j["direction"], "outbound");
    assert_eq!(j["channels"][0]["role"], "agent");
    assert_eq!(j["channels"][0]["extension"], "1001");
    assert_eq!(j["channels"][1]["role"], "customer");
    assert!(j["channels"][1].get("extension").is_none());
    assert_eq!(j["ids"]["asterisk_uniqueid"], "1733.7");
    assert_eq!(j["ids"]["recorded_call_id"], "orig-call@pbx");
    let s = seen.lock().unwrap();
    let m = &s.begun[0].meta;
    assert_eq!(m["direction"], "outbound");
    assert_eq!(m["channels"][0]["role"], "agent");
    assert_eq!(m["channels"][0]["extension"], "1001");
    assert_eq!(m["channels"][1]["role"], "customer");
    assert_eq!(m["ids"]["asterisk_uniqueid"], "1733.7");
}

/// A write refused while a call records (a full disk, an I/O error): the
/// recording stops there, and the audio that reached the disk becomes the
/// recording, sample for sample, marked truncated, with the call's own end
/// reason and a warning naming the error; nothing written is thrown away.
/// Plain and sealed alike.
#[test]
fn a_write_error_keeps_what_reached_the_disk() {
    let keys = Arc::new(Keyring::new(crypt::SpoolKey::new(&[7; 32]), Vec::new()));
    for seal in [None, Some(keys)] {
        let d = tempfile::tempdir().unwrap();
        let c = RecordingContext {
            seal: seal.clone(),
            ..ctx("siprec")
        };
        let mut rd = RecordingDir::new(d.path(), c).unwrap();
        rd.begin(CallKey(4), &start("r4"));
        let first: Vec<i16> = (0..1600).map(|i| (i * 37 % 4000 - 2000) as i16).collect();
        rd.audio(CallKey(4), &first);
        rd.open.get_mut(&CallKey(4)).unwrap().error = Some(io::Error::new(
            io::ErrorKind::StorageFull,
            "No space left on device",
        ));
        rd.audio(CallKey(4), &[9i16; 1600]);
        // What the engine still knows of the call: its codecs, packets,
        // DTMF and pauses (200 ms of it, of which 100 reached the disk).
        let mut meta = meta_r4();
        meta.frames = 1600;
        meta.channels[0].codec = "PCMU".into();
        meta.channels[0].packets = 10;
        meta.channels[1].lost = 2;
        meta.dtmf.push(pbx_core::call::meta::Dtmf {
            channel: 0,
            digit: "5".into(),
            at_ms: 40,
            duration_ms: 20,
        });
        meta.pauses.push(pbx_core::call::meta::Pause {
            from_ms: 60,
            to_ms: 80,
            by: pbx_core::call::meta::PauseBy::Sip,
        });
        rd.end(CallKey(4), meta);
        assert_eq!(
            (rd.counters.written, rd.counters.failed),
            (1, 0),
            "{:?}",
            rd.errors
        );
        let keys = seal.as_deref();
        let j: Value =
            serde_json::from_slice(&read_recording(&d.path().join("r4.json"), keys).unwrap())
                .unwrap();
        assert_eq!(j["truncated"], true);
        assert_eq!(j["end_reason"], "bye");
        assert_eq!(j["duration_ms"], 100);
        // The call's own details, not only its start note's.
        assert_eq!(j["channels"][0]["codec"], "PCMU", "{j}");
        assert_eq!(j["channels"][0]["packets"], 10, "{j}");
        assert_eq!(j["channels"][1]["lost"], 2, "{j}");
        assert_eq!(j["dtmf"][0]["digit"], "5", "{j}");
        assert_eq!(j["pauses"][0]["from_ms"], 60, "{j}");
        assert_eq!(j["ended_at"], "2026-12-03T10:00:01.100Z", "{j}");
        assert!(
            j["warnings"][0]
                .as_str()
                .unwrap()
                .contains("No space left on device"),
            "{j}"
        );
        let wav = read_recording(&d.path().join("r4.wav"), keys).unwrap();
        let info = pbx_core::audio::wav::parse_wav_header(&wav).unwrap();
        let samples: Vec<i16> = wav[info.data_offset as usize..]
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect();
        assert_eq!(samples, first, "sealed: {}", seal.is_some());
        let (n, sha) = hash_recording(&d.path().join("r4.wav"), keys).unwrap();
        assert_eq!(
            (n, sha.as_str()),
            (
                j["audio"]["bytes"].as_u64().unwrap(),
                j["audio"]["sha256"].as_str().unwrap()
            )
        );
        assert_eq!(hidden_files(d.path()), Vec::<String>::new());
    }
}

/// A write error, then the recording cannot be completed (its WAV's name
/// is taken) and the daemon dies: the next start's recovery still writes
/// the call's own details (its end note, left before the completion), cut
/// by the write error, not by the crash.
#[test]
fn a_write_error_then_a_crash_keeps_the_calls_details() {
    let d = tempfile::tempdir().unwrap();
    let mut rd = RecordingDir::new(d.path(), ctx("siprec")).unwrap();
    rd.begin(CallKey(4), &start("r4"));
    rd.audio(CallKey(4), &[3i16; 1600]);
    rd.open.get_mut(&CallKey(4)).unwrap().error = Some(io::Error::new(
        io::ErrorKind::StorageFull,
        "No space left on device",
    ));
    fs::create_dir(d.path().join("r4.wav")).unwrap();
    let mut meta = meta_r4();
    meta.channels[0].codec = "G722".into();
    rd.end(CallKey(4), meta);
    assert_eq!(rd.counters.failed, 1, "{:?}", rd.errors);
    std::mem::forget(rd);
    fs::remove_dir(d.path().join("r4.wav")).unwrap();
    assert_eq!(recover(d.path(), &ctx("siprec")).unwrap(), vec!["r4"]);
    let j = json_of(d.path(), "r4");
    assert_eq!(j["channels"][0]["codec"], "G722", "{j}");
    assert_eq!(j["truncated"], true);
    assert_eq!(j["end_reason"], "bye", "{j}");
    assert_eq!(j["duration_ms"], 100);
    assert!(
        j["warnings"][0].as_str().unwrap().contains("No space left"),
        "{j}"
    );
    assert_eq!(hidden_files(d.path()), Vec::<String>::new());
}

/// The finish renames the WAV in, then its JSON cannot be written: the
/// audio is whole, and the JSON written once it can be is the call's own,
/// not one rebuilt from the start note without its end details.
#[test]
fn a_json_write_error_keeps_the_calls_own_json() {
    let d = tempfile::tempdir().unwrap();
    let mut rd = RecordingDir::new(d.path(), ctx("siprec")).unwrap();
    rd.begin(CallKey(4), &start("r4"));
    rd.audio(CallKey(4), &[3i16; 1600]);
    let block = d.path().join(".r4.json.tmp");
    fs::create_dir(&block).unwrap();
    let mut meta = meta_r4();
    meta.channels[1].codec = "PCMA".into();
    rd.end(CallKey(4), meta);
    assert_eq!(rd.counters.failed, 1, "{:?}", rd.errors);
    assert!(d.path().join("r4.wav").exists());
    fs::remove_dir(&block).unwrap();
    rd.retry_at = Some(std::time::Instant::now());
    assert!(rd.collect());
    let j = json_of(d.path(), "r4");
    assert_eq!(j["channels"][1]["codec"], "PCMA", "{j}");
    assert_eq!(
        (j["truncated"].clone(), j["end_reason"].clone()),
        (false.into(), "bye".into()),
        "{j}"
    );
    assert_eq!(j["duration_ms"], 100);
    assert_eq!(hidden_files(d.path()), Vec::<String>::new());
}

/// The spool's file system fills up while a call records (a real full
/// tmpfs; without the right to mount one, a directory that refuses new
/// files stands in for it): the audio that reached the disk is kept, the
/// recording cannot be finished while the disk is full, its files stay, and
/// the running daemon makes the recording from them once space returns.
/// Plain and encrypted at rest (where finishing needs room for a sealed copy
/// of the whole recording: a full disk then must not turn the audio on disk
/// into an empty recording, as it did).
#[test]
fn a_call_recording_when_the_disk_fills_is_kept_and_completed_later() {
    disk_fills_while_recording(None, 256, 64, 0);
    // Sealed, with 64 KiB freed before the call ends: room for an empty
    // recording but not for the sealed copy of the audio.
    let keys = Arc::new(Keyring::new(crypt::SpoolKey::new(&[9; 32]), Vec::new()));
    disk_fills_while_recording(Some(keys), 512, 256, 64);
}

/// The case above on a tmpfs of `size_k` KiB of which `filler_k` are taken,
/// and `freed_k` more that are freed when the call ends.
fn disk_fills_while_recording(
    seal: Option<Arc<Keyring>>,
    size_k: u32,
    filler_k: usize,
    freed_k: usize,
) {
    use std::os::unix::fs::PermissionsExt;
    use std::process::{Command, Stdio};
    let d = tempfile::tempdir().unwrap();
    let mnt = d.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    struct Umount(Option<PathBuf>);
    impl Drop for Umount {
        fn drop(&mut self) {
            if let Some(m) = &self.0 {
                let _ = Command::new("umount").arg(m).status();
            }
        }
    }
    let mounted = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size_k}k,mode=0700"),
            "tmpfs",
        ])
        .arg(&mnt)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let _u = Umount(mounted.then(|| mnt.clone()));
    let filler = mnt.join("filler");
    fs::write(&filler, vec![1u8; filler_k * 1024]).unwrap();
    let freed = mnt.join("freed");
    if freed_k > 0 {
        fs::write(&freed, vec![1u8; freed_k * 1024]).unwrap();
    }
    let keys = seal.clone();
    let c = RecordingContext {
        seal,
        ..ctx("siprec")
    };
    let mut rd = RecordingDir::new(&mnt, c).unwrap();
    rd.begin(CallKey(4), &start("r4"));
    // 20 s of audio in 100 ms chunks: about 5 s fit.
    let sent: Vec<i16> = (0..20 * 8000 * 2)
        .map(|i| ((i * 131) % 30000 - 15000) as i16)
        .collect();
    for (n, chunk) in sent.chunks(1600).enumerate() {
        if n == 60 && !mounted {
            // No tmpfs: the file refuses writes from 6 s on.
            rd.open.get_mut(&CallKey(4)).unwrap().error = Some(io::Error::new(
                io::ErrorKind::StorageFull,
                "No space left on device",
            ));
            fs::set_permissions(&mnt, fs::Permissions::from_mode(0o500)).unwrap();
        }
        rd.audio(CallKey(4), chunk);
    }
    if !mounted && fs::File::create(mnt.join("probe")).is_ok() {
        eprintln!("note: neither a tmpfs nor a refused directory here: skipped");
        return;
    }
    let mut meta = meta_r4();
    meta.frames = 160_000;
    meta.ended_at = meta.media_started_at.add_micros(20_000_000);
    meta.channels[0].codec = "PCMU".into();
    if freed_k > 0 && mounted {
        fs::remove_file(&freed).unwrap();
    }
    rd.end(CallKey(4), meta);
    assert_eq!(rd.counters.failed, 1, "{:?}", rd.errors);
    assert!(
        rd.errors[0].contains("what reached the disk is kept"),
        "{:?}",
        rd.errors
    );
    assert!(mnt.join(".r4.start.json").exists());
    assert!(rd.stranded_retry().is_some());
    assert!(!rd.collect(), "not due yet");
    // Space returns (the delivered recordings go); the retry is due.
    if mounted {
        fs::remove_file(&filler).unwrap();
    } else {
        fs::set_permissions(&mnt, fs::Permissions::from_mode(0o700)).unwrap();
    }
    rd.retry_at = Some(std::time::Instant::now());
    assert!(rd.collect());
    assert_eq!((rd.counters.written, rd.stranded_retry()), (1, None));
    let keys = keys.as_deref();
    let j: Value =
        serde_json::from_slice(&read_recording(&mnt.join("r4.json"), keys).unwrap()).unwrap();
    assert_eq!(j["truncated"], true);
    assert_eq!(j["end_reason"], "bye");
    // The call's details, kept by the retry once there is room.
    assert_eq!(j["channels"][0]["codec"], "PCMU", "{j}");
    assert_eq!(j["ended_at"], "2026-12-03T10:00:21.000Z", "{j}");
    let wav = read_recording(&mnt.join("r4.wav"), keys).unwrap();
    let info = pbx_core::audio::wav::parse_wav_header(&wav).unwrap();
    let kept: Vec<i16> = wav[info.data_offset as usize..]
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    assert!(kept.len() >= 4 * 8000 * 2, "{} samples kept", kept.len());
    assert!(kept.len() < sent.len());
    assert_eq!(
        kept[..],
        sent[..kept.len()],
        "what reached the disk, as sent"
    );
    assert_eq!(
        j["duration_ms"].as_u64().unwrap(),
        kept.len() as u64 / 2 * 1000 / 8000
    );
    assert_eq!(hidden_files(&mnt), Vec::<String>::new());
}

/// A live source's files are created off the engine thread: until the
/// `.part` is open the audio handed over waits in memory, then it is
/// written in order, and the tap sees every chunk once it is in the file;
/// a call that ends before its file is open waits for it. The pair is the
/// one made inline.
#[test]
fn audio_waits_for_its_file_and_is_written_in_order() {
    let d = tempfile::tempdir().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let c = RecordingContext {
        tap: Some(Arc::new(TestTap(seen.clone()))),
        ..ctx("siprec")
    };
    let mut rd = RecordingDir::new(d.path(), c).unwrap();
    rd.finish_in_background();
    let answered = rd.answered_calls();
    let chunks: Vec<Vec<i16>> = (0..5)
        .map(|k| (0..800).map(|i| (k * 1000 + i) as i16).collect())
        .collect();
    {
        // The opener creates the files, then waits for the lock to drop
        // the answered note: its result is held back meanwhile.
        let _held = answered.hold();
        rd.begin(CallKey(4), &start("r4"));
        for c in &chunks[..3] {
            rd.audio(CallKey(4), c);
        }
        rd.collect();
        let part = d.path().join(".r4.wav.part");
        let t = std::time::Instant::now();
        while fs::metadata(&part).map(|m| m.len()).unwrap_or(0) < 44 {
            assert!(t.elapsed() < Duration::from_secs(10));
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(fs::metadata(&part).unwrap().len(), 44, "the audio waits");
        assert!(
            seen.lock().unwrap().begun.is_empty(),
            "the tap waits for the file"
        );
    }
    // Taken in: what waited is written, as one chunk; then chunk by chunk.
    let part = d.path().join(".r4.wav.part");
    let t = std::time::Instant::now();
    while fs::metadata(&part).unwrap().len() == 44 {
        assert!(t.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(5));
        rd.collect();
    }
    assert_eq!(fs::metadata(&part).unwrap().len(), 44 + 3 * 1600);
    rd.audio(CallKey(4), &chunks[3]);
    rd.audio(CallKey(4), &chunks[4]);
    rd.end(CallKey(4), meta_r4());
    rd.wait_finished();
    assert_eq!(rd.counters.written, 1, "{:?}", rd.errors);
    let wav = fs::read(d.path().join("r4.wav")).unwrap();
    let want: Vec<u8> = chunks
        .concat()
        .iter()
        .flat_map(|s| s.to_le_bytes())
        .collect();
    assert_eq!(&wav[44..], &want[..]);
    let s = seen.lock().unwrap();
    assert_eq!(s.begun.len(), 1);
    let at: Vec<u64> = s.chunks.iter().map(|c| c.0).collect();
    assert_eq!(at, vec![0, 1200, 1600]);
    for (_, sent, in_file) in &s.chunks {
        assert_eq!(sent, in_file);
    }
}

/// A call that ends while its file is still being created waits for it:
/// nothing of its audio is lost, and its pair is complete.
#[test]
fn a_call_ending_before_its_file_is_open_waits_for_it() {
    let d = tempfile::tempdir().unwrap();
    let mut rd = RecordingDir::new(d.path(), ctx("siprec")).unwrap();
    rd.finish_in_background();
    let answered = rd.answered_calls();
    let (locked, is_locked) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        let _held = answered.hold();
        locked.send(()).unwrap();
        std::thread::sleep(Duration::from_millis(200));
    });
    is_locked.recv().unwrap();
    rd.begin(CallKey(4), &start("r4"));
    rd.audio(CallKey(4), &[7i16; 1600]);
    rd.end(CallKey(4), meta_r4());
    t.join().unwrap();
    rd.wait_finished();
    assert_eq!(rd.counters.written, 1, "{:?}", rd.errors);
    let wav = fs::read(d.path().join("r4.wav")).unwrap();
    assert_eq!(wav.len(), 44 + 3200);
    assert!(wav[44..]
        .chunks_exact(2)
        .all(|b| i16::from_le_bytes([b[0], b[1]]) == 7));
    assert_eq!(hidden_files(d.path()), Vec::<String>::new());
}

/// An answered call's note gives way only to files that stand for the
/// call: when the start sidecar cannot be written it stays until the
/// recording's audio is on disk; when nothing can be written it stays, and
/// the call still leaves a recording (empty, its own) when it is settled.
#[test]
fn the_answered_note_stays_until_something_else_stands_for_the_call() {
    let notes = |dir: &Path| {
        fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(ANSWER_SUFFIX))
            .count()
    };
    // The sidecar's place is taken (a directory): the note stays while
    // the call records, and goes when its pair is written.
    let d = tempfile::tempdir().unwrap();
    let mut rd = RecordingDir::new(d.path(), ctx("siprec")).unwrap();
    rd.answered_calls().answered(&answered("r4@src")).unwrap();
    fs::create_dir(d.path().join(format!(".r4{START_SUFFIX}"))).unwrap();
    rd.begin(CallKey(4), &start("r4"));
    rd.audio(CallKey(4), &[1i16; 1600]);
    assert_eq!(notes(d.path()), 1, "the note still stands for the call");
    rd.end(CallKey(4), meta_r4());
    assert_eq!(notes(d.path()), 0);
    assert_eq!(rd.counters.written, 1, "{:?}", rd.errors);
    assert!(
        !rd.end_answered("r4@src", "bye", hung_up()),
        "one recording of the call"
    );

    // Nothing can be written: the note stays, and makes the recording.
    let d = tempfile::tempdir().unwrap();
    let mut rd = RecordingDir::new(d.path(), ctx("siprec")).unwrap();
    let id = rd.answered_calls().answered(&answered("r4@src")).unwrap();
    fs::create_dir(d.path().join(format!(".r4{START_SUFFIX}"))).unwrap();
    fs::create_dir(d.path().join(".r4.wav.part")).unwrap();
    rd.begin(CallKey(4), &start("r4"));
    rd.audio(CallKey(4), &[1i16; 1600]);
    rd.end(CallKey(4), meta_r4());
    assert_eq!(rd.counters.failed, 1);
    assert_eq!(rd.stranded_retry(), None, "nothing of it on disk");
    assert_eq!(notes(d.path()), 1);
    assert!(rd.end_answered("r4@src", "bye", hung_up()));
    let j = json_of(d.path(), &id);
    assert_eq!(
        (j["call_id"].clone(), j["duration_ms"].clone()),
        ("r4@src".into(), 0.into())
    );
}

/// A start sidecar left alone by a crash: the call's audio file was never
/// created (a full disk when it began: its answered note had given way to
/// the sidecar). The call still leaves a recording, an empty one marked
/// truncated (before, recovery removed the sidecar: no recording at all).
/// With a `min_duration` a lone sidecar may be a call just discarded as too
/// short: removed as before.
#[test]
fn a_start_sidecar_left_alone_becomes_an_empty_recording() {
    for min in [Duration::ZERO, Duration::from_secs(5)] {
        let d = tempfile::tempdir().unwrap();
        let mut doc = serde_json::to_value(start("r5")).unwrap();
        doc["source"] = "siprec".into();
        doc["agent_id"] = "agent-a".into();
        fs::write(
            d.path().join(format!(".r5{START_SUFFIX}")),
            serde_json::to_vec(&doc).unwrap(),
        )
        .unwrap();
        let c = RecordingContext {
            min_duration: min,
            ..ctx("siprec")
        };
        let ids = recover(d.path(), &c).unwrap();
        assert!(!d.path().join(format!(".r5{START_SUFFIX}")).exists());
        if !min.is_zero() {
            assert!(ids.is_empty(), "{ids:?}");
            assert!(!d.path().join("r5.json").exists());
            continue;
        }
        assert_eq!(ids, vec!["r5".to_string()]);
        let j = json_of(d.path(), "r5");
        assert_eq!(j["call_id"], "r5@src");
        assert_eq!(j["truncated"], true);
        assert_eq!(j["duration_ms"], 0);
        let wav = fs::read(d.path().join("r5.wav")).unwrap();
        assert_eq!(wav.len(), 44, "an empty WAV");
        assert_eq!(hidden_files(d.path()), Vec::<String>::new());
    }
}

/// A call cut by a crash (`id`, 1 s of audio; its start sidecar kept or
/// not), whose JSON cannot be written at the first recovery (a full disk;
/// here a directory in the temp file's place) after its WAV was renamed
/// in: the next recovery completes it, still knowing the audio was cut.
fn cut_whose_json_failed_is_completed_later(id: &str, keep_sidecar: bool) {
    let d = tempfile::tempdir().unwrap();
    let mut rd = RecordingDir::new(d.path(), ctx("siprec")).unwrap();
    rd.begin(CallKey(1), &start(id));
    for _ in 0..10 {
        rd.audio(CallKey(1), &[5i16; 1600]);
    }
    drop(rd);
    if !keep_sidecar {
        fs::remove_file(d.path().join(format!(".{id}{START_SUFFIX}"))).unwrap();
    }
    let block = d.path().join(format!(".{id}.json.tmp"));
    fs::create_dir(&block).unwrap();
    assert!(recover(d.path(), &ctx("sniff")).unwrap().is_empty());
    let wav = d.path().join(format!("{id}.wav"));
    assert!(wav.exists() && !d.path().join(format!("{id}.json")).exists());
    fs::remove_dir(&block).unwrap();
    assert_eq!(
        recover(d.path(), &ctx("sniff")).unwrap(),
        vec![id.to_string()]
    );
    let j = json_of(d.path(), id);
    assert_eq!(
        (j["truncated"].clone(), j["end_reason"].clone()),
        (true.into(), "crash".into())
    );
    assert_eq!(j["warnings"][0], WARN_CUT);
    assert_eq!(j["duration_ms"], 1000);
    assert_eq!(hidden_files(d.path()), Vec::<String>::new());
}

/// With its start sidecar, the next recovery knows the audio was cut:
/// `truncated`, the crash's reason and warning (it said "the audio is
/// complete").
#[test]
fn a_cut_recording_whose_json_failed_is_still_cut_at_the_next_recovery() {
    cut_whose_json_failed_is_completed_later("r6", true);
}

/// Without it (its write failed, or a source without one), the WAV is
/// still completed (before: it waited without JSON for ever, never
/// delivered).
#[test]
fn a_cut_recording_without_its_sidecar_whose_json_failed_is_completed_later() {
    cut_whose_json_failed_is_completed_later("r7", false);
}

/// A sealed start sidecar alone (its call's audio file never created: a
/// full disk, then the crash) and a start without the key: left as it is,
/// as an answered note is (before, it became a plaintext, anonymous empty
/// recording and the sealed sidecar was deleted); with the key it becomes
/// the call's sealed empty recording.
#[test]
fn a_sealed_start_sidecar_waits_for_the_key() {
    let d = tempfile::tempdir().unwrap();
    let keys = Arc::new(Keyring::new(crypt::SpoolKey::new(&[4; 32]), Vec::new()));
    let sealed = RecordingContext {
        seal: Some(keys.clone()),
        ..ctx("siprec")
    };
    let mut rd = RecordingDir::new(d.path(), sealed.clone()).unwrap();
    rd.begin(CallKey(5), &start("s5"));
    rd.audio(CallKey(5), &[5i16; 1600]);
    drop(rd);
    // The audio file never made it to the disk.
    fs::remove_file(d.path().join(".s5.wav.part")).unwrap();
    let sidecar = d.path().join(format!(".s5{START_SUFFIX}"));
    assert!(fs::read(&sidecar).unwrap().starts_with(crypt::MAGIC));
    assert!(recover(d.path(), &ctx("siprec")).unwrap().is_empty());
    assert!(sidecar.exists());
    assert!(!d.path().join("s5.json").exists() && !d.path().join("s5.wav").exists());
    assert_eq!(recover(d.path(), &sealed).unwrap(), vec!["s5".to_string()]);
    let j: Value =
        serde_json::from_slice(&read_recording(&d.path().join("s5.json"), Some(&keys)).unwrap())
            .unwrap();
    assert_eq!(j["truncated"], true);
}

/// A stream catching up on a long call from a sealed `.part` held open
/// (reads of 2 s, as `stream` does, while the call goes on and the part
/// grows) decrypts each record once, not the whole part again at every
/// read; what it reads is the audio written, in order.
#[test]
fn catching_up_on_a_sealed_part_decrypts_each_record_once() {
    use crate::spoolfile::crypt::{Layout, SealedWriter, DECRYPTED};
    use std::io::Write;
    let d = tempfile::tempdir().unwrap();
    let keys = Arc::new(Keyring::new(crypt::SpoolKey::new(&[5; 32]), Vec::new()));
    let part = d.path().join(".long.wav.part");
    let mut w = SealedWriter::new(
        fs::File::create(&part).unwrap(),
        keys.current(),
        Layout::Records,
    )
    .unwrap();
    w.write_all(&[0u8; 44]).unwrap();
    w.flush().unwrap();
    let file = RecordingFile::new(part, d.path().join("long.wav"), Some(keys.clone()));
    file.hold();
    let sample = |i: u64| (i % 30_000) as i16;
    let (mut written, mut held) = (0u64, 0u64);
    let step = 16_000; // 2 s at 8 kHz
    let start = DECRYPTED.with(|c| c.get());
    let catch_up = |held: &mut u64| -> bool {
        let got = file.read_frames(*held, step).unwrap();
        for (k, f) in got.chunks_exact(2).enumerate() {
            let i = *held + k as u64;
            assert_eq!((f[0], f[1]), (sample(i), -sample(i)), "frame {i}");
        }
        *held += got.len() as u64 / 2;
        !got.is_empty()
    };
    // 2 minutes written in 40 ms records (one record per flush); the
    // stream reads 6 s for every 8 s written, then catches up.
    for _ in 0..15 {
        for _ in 0..200 {
            let mut b = Vec::with_capacity(1280);
            for i in written..written + 320 {
                b.extend_from_slice(&sample(i).to_le_bytes());
                b.extend_from_slice(&(-sample(i)).to_le_bytes());
            }
            w.write_all(&b).unwrap();
            w.flush().unwrap();
            written += 320;
        }
        for _ in 0..3 {
            assert!(catch_up(&mut held));
        }
    }
    while catch_up(&mut held) {}
    assert_eq!(held, written);
    let plain = 44 + written * 4;
    let spent = DECRYPTED.with(|c| c.get()) - start;
    assert!(
        spent <= plain,
        "{spent} plaintext bytes decrypted for a part of {plain}"
    );
}

/// Finishing a call with encryption at rest seals its WAV anew from the
/// `.part`: a `.part` whose records all authenticate (every call a stop
/// ends) is decrypted once, as it is copied (before: twice, once to find
/// its authentic records at open, once more by the copy), and its WAV is
/// the one the two passes made.
#[test]
fn sealing_a_clean_sealed_part_decrypts_it_once() {
    use crate::spoolfile::crypt::DECRYPTED;
    let d = tempfile::tempdir().unwrap();
    let keys = Arc::new(Keyring::new(crypt::SpoolKey::new(&[7; 32]), Vec::new()));
    let sealed = RecordingContext {
        seal: Some(keys.clone()),
        ..ctx("siprec")
    };
    let mut rd = RecordingDir::new(d.path(), sealed.clone()).unwrap();
    rd.begin(CallKey(1), &start("c1"));
    for v in 1..=40i16 {
        rd.audio(CallKey(1), &[v; 1600]);
    }
    drop(rd);
    let part = d.path().join(".c1.wav.part");
    let plain = 44 + 40 * 3200;
    let before = DECRYPTED.with(|c| c.get());
    let once = d.path().join("once.wav");
    let (h, damaged) = seal_part_counted(&part, &once, &keys).unwrap();
    let spent = DECRYPTED.with(|c| c.get()) - before;
    assert_eq!(spent, plain, "the part's plaintext decrypted once");
    assert_eq!(damaged, (0, 0));
    // The same WAV as the two passes make.
    let twice = d.path().join("twice.wav");
    let (want, want_damaged) = seal_part_recovered(&part, &twice, &keys).unwrap();
    assert_eq!((h.clone(), damaged), (want, want_damaged));
    let wav = read_recording(&once, Some(&keys)).unwrap();
    assert_eq!(wav, read_recording(&twice, Some(&keys)).unwrap());
    assert_eq!(h.0, plain);
    assert_eq!(hash_recording(&once, Some(&keys)).unwrap(), h);

    // A call ended (finished on this thread): its part decrypted once too
    // (and its small sealed sidecar).
    let mut rd = RecordingDir::new(d.path(), sealed).unwrap();
    rd.begin(CallKey(2), &start("c2"));
    for v in 1..=40i16 {
        rd.audio(CallKey(2), &[v; 1600]);
    }
    let mut meta = meta_r4();
    meta.key = CallKey(2);
    meta.recording_id = "c2".into();
    meta.call_id = "c2@src".into();
    meta.frames = 40 * 800;
    let before = DECRYPTED.with(|c| c.get());
    rd.end(meta.key, meta);
    rd.wait_finished();
    let spent = DECRYPTED.with(|c| c.get()) - before;
    assert_eq!(rd.counters.written, 1);
    assert!(
        (plain..plain + 4096).contains(&spent),
        "{spent} plaintext bytes decrypted finishing a part of {plain}"
    );
    let j: Value =
        serde_json::from_slice(&read_recording(&d.path().join("c2.json"), Some(&keys)).unwrap())
            .unwrap();
    assert_eq!(j["audio"]["bytes"], plain);
}

/// Sealing a `.part` read once gives exactly what the two passes gave
/// (the same WAV plaintext, hash and damaged records, or the same error)
/// for every part: clean, damaged in the middle, torn or damaged at its
/// end, its header record alone or damaged, no record at all, a part
/// frame at its end, a final record marked last.
#[test]
fn sealing_a_part_once_gives_what_the_two_passes_gave() {
    use crate::spoolfile::crypt::{Layout, SealedWriter, HEADER_LEN};
    let d = tempfile::tempdir().unwrap();
    let keys = Arc::new(Keyring::new(crypt::SpoolKey::new(&[8; 32]), Vec::new()));
    let sealed = RecordingContext {
        seal: Some(keys.clone()),
        ..ctx("siprec")
    };
    let mut rd = RecordingDir::new(d.path(), sealed).unwrap();
    rd.begin(CallKey(1), &start("v1"));
    for v in 1..=10i16 {
        rd.audio(CallKey(1), &[v; 1600]);
    }
    rd.begin(CallKey(2), &start("v2"));
    drop(rd);
    let clean = fs::read(d.path().join(".v1.wav.part")).unwrap();
    let header_only = fs::read(d.path().join(".v2.wav.part")).unwrap();
    // The records: (offset of the length field, length).
    let mut recs = Vec::new();
    let mut at = HEADER_LEN;
    while at + 4 <= clean.len() {
        let n = u32::from_le_bytes(clean[at..at + 4].try_into().unwrap()) as usize;
        recs.push((at, n));
        at += 4 + n;
    }
    assert!(recs.len() >= 11, "{recs:?}");
    let flip = |bytes: &[u8], ats: &[usize]| {
        let mut v = bytes.to_vec();
        for &a in ats {
            v[a] ^= 0x08;
        }
        v
    };
    let last = *recs.last().unwrap();
    // Written here: a part frame at the end; a final record marked last.
    let written = |finish: bool, tail: usize| {
        let mut w = SealedWriter::new(Vec::new(), keys.current(), Layout::Records).unwrap();
        w.write_all(&pbx_core::audio::wav::canonical_header(8000, 2, u32::MAX))
            .unwrap();
        w.flush().unwrap();
        for v in 0..5u8 {
            w.write_all(&[v; 3200]).unwrap();
            w.flush().unwrap();
        }
        w.write_all(&vec![9; tail]).unwrap();
        if finish {
            w.finish().unwrap()
        } else {
            w.flush().unwrap();
            w.get_ref().clone()
        }
    };
    let variants: Vec<(&str, Vec<u8>)> = vec![
        ("clean", clean.clone()),
        ("damaged middle", flip(&clean, &[recs[4].0 + 4 + 100])),
        (
            "damaged middles",
            flip(
                &clean,
                &[recs[2].0 + 4 + 7, recs[6].0 + 4 + 3000, recs[7].0 + 20],
            ),
        ),
        ("damaged end", flip(&clean, &[last.0 + 4 + 50])),
        (
            "damaged end and middle",
            flip(&clean, &[recs[3].0 + 4 + 1, last.0 + 4 + last.1 - 1]),
        ),
        ("torn end", clean[..last.0 + 4 + last.1 / 2].to_vec()),
        ("torn length field", clean[..last.0 + 2].to_vec()),
        ("damaged length field", flip(&clean, &[recs[5].0 + 1])),
        (
            "damaged WAV header record",
            flip(&clean, &[recs[0].0 + 4 + 5]),
        ),
        ("header only", header_only.clone()),
        (
            "header only, damaged",
            flip(&header_only, &[HEADER_LEN + 4 + 3]),
        ),
        ("no record", clean[..HEADER_LEN].to_vec()),
        ("part frame", written(false, 3)),
        ("part frame, last marked", written(true, 3)),
        ("final record marked last", written(true, 0)),
        ("final record marked last, damaged middle", {
            let w = written(true, 3200);
            let at = HEADER_LEN + (4 + 44 + 16) + 2 * (4 + 3200 + 16) + 4 + 9;
            flip(&w, &[at])
        }),
    ];
    let part = d.path().join(".x.wav.part");
    let (once, twice) = (d.path().join("once.wav"), d.path().join("twice.wav"));
    let mut outcomes = Vec::new();
    for (what, bytes) in variants {
        fs::write(&part, &bytes).unwrap();
        let _ = (fs::remove_file(&once), fs::remove_file(&twice));
        let got = seal_part_counted(&part, &once, &keys);
        let want = seal_part_recovered(&part, &twice, &keys);
        match (&got, &want) {
            (Ok(g), Ok(w)) => {
                assert_eq!(g, w, "{what}");
                assert_eq!(
                    read_recording(&once, Some(&keys)).unwrap(),
                    read_recording(&twice, Some(&keys)).unwrap(),
                    "{what}"
                );
            }
            (Err(g), Err(w)) => {
                assert_eq!(
                    (g.kind(), g.to_string()),
                    (w.kind(), w.to_string()),
                    "{what}"
                );
                assert_eq!(once.exists(), twice.exists(), "{what}");
            }
            _ => panic!("{what}: {got:?} where the two passes gave {want:?}"),
        }
        // The part is left as it was.
        assert_eq!(fs::read(&part).unwrap(), bytes, "{what}");
        outcomes.push((
            what,
            got.map(|((n, _), damaged)| (n, damaged))
                .map_err(|e| e.kind()),
        ));
    }
    let a = 44 + 10 * 3200;
    let b = 44 + 5 * 3200;
    use io::ErrorKind::UnexpectedEof;
    assert_eq!(
        outcomes,
        vec![
            ("clean", Ok((a, (0, 0)))),
            ("damaged middle", Ok((a, (1, 3200)))),
            ("damaged middles", Ok((a, (3, 3 * 3200)))),
            ("damaged end", Ok((a - 3200, (0, 0)))),
            ("damaged end and middle", Ok((a - 3200, (1, 3200)))),
            ("torn end", Ok((a - 3200, (0, 0)))),
            ("torn length field", Ok((a - 3200, (0, 0)))),
            ("damaged length field", Ok((44 + 4 * 3200, (0, 0)))),
            ("damaged WAV header record", Err(UnexpectedEof)),
            ("header only", Ok((44, (0, 0)))),
            ("header only, damaged", Err(UnexpectedEof)),
            ("no record", Err(UnexpectedEof)),
            ("part frame", Ok((b, (0, 0)))),
            ("part frame, last marked", Ok((b, (0, 0)))),
            ("final record marked last", Ok((b, (0, 0)))),
            (
                "final record marked last, damaged middle",
                Ok((b + 3200, (1, 3200)))
            ),
        ]
    );
}

/// A recording the start's recovery cannot complete (its `.part` cannot be
/// read: here a directory in its place, EISDIR, as tests may run as root,
/// whom permissions do not stop) is left as it is and named; a later try
/// takes exactly the files left: while the error lasts they stay left,
/// once it is gone the recording is completed, and the `.part` of a call
/// in progress beside them is never touched.
#[test]
fn a_recovery_that_failed_is_tried_again_on_exactly_the_files_left() {
    let d = tempfile::tempdir().unwrap();
    let aside = tempfile::tempdir().unwrap();
    let mut rd = RecordingDir::new(d.path(), ctx("siprec")).unwrap();
    rd.begin(CallKey(1), &start("c1"));
    rd.audio(CallKey(1), &[7i16; 1600]);
    drop(rd);
    let part = d.path().join(".c1.wav.part");
    let kept = aside.path().join("c1.part");
    fs::rename(&part, &kept).unwrap();
    fs::create_dir(&part).unwrap();
    let r = recover_spool(d.path(), &ctx("siprec")).unwrap();
    assert!(r.ids.is_empty(), "{r:?}");
    assert_eq!(r.left, vec![part.clone()]);
    assert!(d.path().join(format!(".c1{START_SUFFIX}")).exists());
    // A call begins meanwhile: its `.part` is beside the one left.
    let mut live = RecordingDir::new(d.path(), ctx("siprec")).unwrap();
    live.begin(CallKey(2), &start("live2"));
    live.audio(CallKey(2), &[3i16; 1600]);
    let live_part = d.path().join(".live2.wav.part");
    let live_len = fs::metadata(&live_part).unwrap().len();
    // Still failing: still left.
    let r = recover_again(d.path(), &r.left, &ctx("siprec"));
    assert!(r.ids.is_empty(), "{r:?}");
    assert_eq!(r.left, vec![part.clone()]);
    // The error is gone: completed.
    fs::remove_dir(&part).unwrap();
    fs::rename(&kept, &part).unwrap();
    let r = recover_again(d.path(), &r.left, &ctx("siprec"));
    assert_eq!(r.ids, vec!["c1".to_string()]);
    assert!(r.left.is_empty());
    let j = json_of(d.path(), "c1");
    assert_eq!(j["audio"]["bytes"], 44 + 3200);
    assert_eq!(j["truncated"], true);
    // The call in progress: untouched, still recording.
    assert_eq!(fs::metadata(&live_part).unwrap().len(), live_len);
    assert!(!d.path().join("live2.wav").exists());
    assert!(!d.path().join("live2.json").exists());
    live.audio(CallKey(2), &[3i16; 1600]);
    assert!(fs::metadata(&live_part).unwrap().len() > live_len);
    // Nothing left: a try over an empty list does nothing.
    let r = recover_again(d.path(), &[], &ctx("siprec"));
    assert!(r.ids.is_empty() && r.left.is_empty());
    assert_eq!(recovery_retry_delay(0), Duration::from_secs(60));
    assert_eq!(recovery_retry_delay(1), Duration::from_secs(120));
    assert_eq!(recovery_retry_delay(40), Duration::from_secs(960));
}

/// Encryption at rest: a record of a sealed `.part` that fails
/// authentication in the middle (a flipped bit on disk) costs only its own
/// audio after a crash: silence of the same length in its place, the audio
/// after it kept where it was (both channels in step), the recording marked
/// truncated with a warning saying so, and counted. (It ended what was
/// kept, losing the rest of the call.)
#[test]
fn a_damaged_record_in_a_sealed_part_becomes_silence_and_the_rest_is_kept() {
    let d = tempfile::tempdir().unwrap();
    let keys = Arc::new(Keyring::new(crypt::SpoolKey::new(&[9; 32]), Vec::new()));
    let sealed = RecordingContext {
        seal: Some(keys.clone()),
        ..ctx("siprec")
    };
    let mut rd = RecordingDir::new(d.path(), sealed.clone()).unwrap();
    rd.begin(CallKey(1), &start("z1"));
    for v in 1..=10i16 {
        rd.audio(CallKey(1), &[v; 1600]);
    }
    drop(rd);
    // The records of the `.part`: (offset of the length field, length).
    let part = d.path().join(".z1.wav.part");
    let mut bytes = fs::read(&part).unwrap();
    let mut recs = Vec::new();
    let mut at = crypt::HEADER_LEN;
    while at + 4 <= bytes.len() {
        let n = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        recs.push((at, n));
        at += 4 + n;
    }
    // The record holding the 4th chunk of audio (value 4): damaged.
    let audio: Vec<&(usize, usize)> = recs.iter().filter(|r| r.1 == 3200 + 16).collect();
    assert_eq!(audio.len(), 10, "{recs:?}");
    let (bad, _) = *audio[3];
    bytes[bad + 4 + 1000] ^= 0x20;
    fs::write(&part, &bytes).unwrap();
    let before = DAMAGED_RECORDS.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(recover(d.path(), &sealed).unwrap(), vec!["z1".to_string()]);
    assert!(DAMAGED_RECORDS.load(std::sync::atomic::Ordering::Relaxed) > before);
    let wav = read_recording(&d.path().join("z1.wav"), Some(&keys)).unwrap();
    assert_eq!(
        wav.len(),
        44 + 10 * 3200,
        "the audio after the damage is kept"
    );
    let samples: Vec<i16> = wav[44..]
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    for (i, chunk) in samples.chunks(1600).enumerate() {
        let want = if i == 3 { 0 } else { i as i16 + 1 };
        assert!(chunk.iter().all(|s| *s == want), "chunk {i}");
    }
    let j: Value =
        serde_json::from_slice(&read_recording(&d.path().join("z1.json"), Some(&keys)).unwrap())
            .unwrap();
    assert_eq!(j["truncated"], true);
    assert_eq!(j["duration_ms"], 1000);
    let w = j["warnings"].to_string();
    assert!(
        w.contains("1 damaged record") && w.contains("100 ms"),
        "{w}"
    );
}

/// A call answered without audio becomes its empty recording as the other
/// completions do: a cut one (a crash, a stop) leaves its `.cut` note
/// before its WAV is renamed in, so a crash between the WAV and the JSON
/// (here the JSON's write fails: a directory in its temp file's place)
/// still gives a cut recording with its own reason and warning. (It
/// became a whole recording, "the audio is complete", or lost its reason.)
#[test]
fn an_answered_call_completed_without_audio_is_still_cut_after_a_crash_before_its_json() {
    let d = tempfile::tempdir().unwrap();
    // A start sidecar alone (the audio file never created), recovered.
    let mut rd = RecordingDir::new(d.path(), ctx("siprec")).unwrap();
    rd.begin(CallKey(1), &start("e1"));
    drop(rd);
    fs::remove_file(d.path().join(".e1.wav.part")).unwrap();
    let block = d.path().join(".e1.json.tmp");
    fs::create_dir(&block).unwrap();
    let r = recover_spool(d.path(), &ctx("siprec")).unwrap();
    assert!(r.ids.is_empty(), "{r:?}");
    assert!(d.path().join("e1.wav").exists());
    assert!(!d.path().join("e1.json").exists());
    fs::remove_dir(&block).unwrap();
    assert_eq!(recover(d.path(), &ctx("siprec")).unwrap(), vec!["e1"]);
    let j = json_of(d.path(), "e1");
    assert_eq!(j["truncated"], true, "{j}");
    assert_eq!(j["end_reason"], "crash", "{j}");
    assert_eq!(j["warnings"][0], WARN_NO_AUDIO, "{j}");
    assert_eq!(j["audio"]["bytes"], 44);
    assert!(!d.path().join(".e1.cut").exists());

    // A call answered without audio, cut by a stop (its note in the
    // running daemon); the JSON fails, then the crash.
    let mut rd = RecordingDir::new(d.path(), ctx("siprec")).unwrap();
    let id = rd.answered_calls().answered(&answered("e2@src")).unwrap();
    let block = d.path().join(format!(".{id}.json.tmp"));
    fs::create_dir(&block).unwrap();
    rd.finish_answered("shutdown", hung_up());
    drop(rd);
    assert!(d.path().join(format!("{id}.wav")).exists());
    assert!(!d.path().join(format!("{id}.json")).exists());
    fs::remove_dir(&block).unwrap();
    assert_eq!(recover(d.path(), &ctx("siprec")).unwrap(), vec![id.clone()]);
    let j = json_of(d.path(), &id);
    assert_eq!(j["truncated"], true, "{j}");
    assert_eq!(j["end_reason"], "shutdown", "{j}");
    assert_eq!(j["call_id"], "e2@src", "{j}");
    assert!(!d.path().join(format!(".{id}.cut")).exists());

    // Not cut (hung up, no audio): no note; a crash before its JSON gives
    // a whole recording whose end details were lost.
    let mut rd = RecordingDir::new(d.path(), ctx("siprec")).unwrap();
    let id = rd.answered_calls().answered(&answered("e3@src")).unwrap();
    let block = d.path().join(format!(".{id}.json.tmp"));
    fs::create_dir(&block).unwrap();
    assert!(!rd.end_answered("e3@src", "bye", hung_up()));
    drop(rd);
    assert!(!d.path().join(format!(".{id}.cut")).exists());
    fs::remove_dir(&block).unwrap();
    assert_eq!(recover(d.path(), &ctx("siprec")).unwrap(), vec![id.clone()]);
    let j = json_of(d.path(), &id);
    assert_eq!(j["truncated"], false, "{j}");
    assert_eq!(j["warnings"][0], WARN_SAVING, "{j}");
    assert_eq!(j["call_id"], "e3@src", "{j}");
}

/// Measurement, not a check (docs/durability.md, "A stop with many long
/// calls"): what a stop's finishing of every recording in progress costs.
/// `PBX_EDGE_STOP_CALLS` calls (300) of `PBX_EDGE_STOP_MINUTES` minutes of
/// audio (10) each are written, then every one is ended at once and the
/// finisher's threads waited for, as a SIGTERM does. Run with
/// `cargo test --release --locked -p pbx-edge --lib stop_with_many_long_calls -- --ignored --nocapture`
/// (`PBX_EDGE_STOP_SEALED=1`: with encryption at rest;
/// `PBX_EDGE_STOP_BUDGET_MS=4000`: finished within that, as a daemon's
/// stop does, the rest by the next start's recovery). Needs the calls'
/// audio in free space (300 x 10 min: 5.8 GB).
#[test]
#[ignore]
fn stop_with_many_long_calls() {
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (calls, minutes) = (
        env("PBX_EDGE_STOP_CALLS", 300),
        env("PBX_EDGE_STOP_MINUTES", 10),
    );
    let sealed = env("PBX_EDGE_STOP_SEALED", 0) == 1;
    let d = tempfile::tempdir_in(std::env::var("PBX_EDGE_STOP_DIR").unwrap_or(".".into())).unwrap();
    let mut c = ctx("siprec");
    if sealed {
        c.seal = Some(Arc::new(Keyring::new(
            crypt::SpoolKey::new(&[3; 32]),
            Vec::new(),
        )));
    }
    let mut rd = RecordingDir::new(d.path(), c.clone()).unwrap();
    rd.finish_in_background();
    let chunk: Vec<i16> = (0..16_000).map(|i| ((i * 37) % 2000) as i16).collect();
    let t = std::time::Instant::now();
    for n in 0..calls {
        rd.begin(CallKey(n as u64 + 1), &start(&format!("s{n}")));
    }
    // One second of audio to every call in turn, as calls run side by side.
    for _ in 0..minutes * 60 {
        for n in 0..calls {
            rd.audio(CallKey(n as u64 + 1), &chunk);
        }
    }
    rd.collect();
    // The daemon's sync thread keeps little unwritten while calls record
    // (docs/durability.md): the stop's fsyncs find the audio on disk.
    let _ = std::process::Command::new("sync").status();
    eprintln!(
        "wrote {calls} calls of {minutes} min ({} MB) in {:.1} s",
        calls * minutes * 60 * 32_000 / 1_000_000,
        t.elapsed().as_secs_f64()
    );
    let t = std::time::Instant::now();
    for n in 0..calls {
        let mut meta = meta_r4();
        meta.key = CallKey(n as u64 + 1);
        meta.recording_id = format!("s{n}");
        meta.call_id = format!("s{n}@src");
        meta.frames = (minutes * 60 * 8000) as u64;
        meta.end_reason = pbx_core::call::EndReason::Shutdown;
        rd.end(meta.key, meta);
    }
    let handed = t.elapsed();
    // PBX_EDGE_STOP_BUDGET_MS: as a daemon's stop does, finish within the
    // budget and leave the rest for the next start (then timed too).
    let budget: Option<u64> = std::env::var("PBX_EDGE_STOP_BUDGET_MS")
        .ok()
        .and_then(|v| v.parse().ok());
    match budget {
        Some(ms) => rd.wait_finished_within(Duration::from_millis(ms)),
        None => rd.wait_finished(),
    }
    let written = rd.counters.written;
    eprintln!(
        "stop: {calls} recordings handed over in {:.2} s; {written} finished (fsynced, hashed), {} left for the next start, after {:.2} s",
        handed.as_secs_f64(),
        calls as u64 - written,
        t.elapsed().as_secs_f64()
    );
    drop(rd);
    if budget.is_some() {
        let t = std::time::Instant::now();
        let ids = recover(d.path(), &c).unwrap();
        eprintln!(
            "next start: {} finished by recovery in {:.2} s",
            ids.len(),
            t.elapsed().as_secs_f64()
        );
        assert_eq!(written + ids.len() as u64, calls as u64);
    } else {
        assert_eq!(written, calls as u64);
    }
}

/// A stop that runs out of time (here: none at all) leaves the recordings
/// it did not finish durable, each `.part` with its end note; the next
/// start's recovery finishes them exactly as the finish would have: the
/// same audio, `truncated: false`, the call's own end reason, channels and
/// timestamps, and nothing left over. Plain and sealed spools.
#[test]
fn a_stop_out_of_time_leaves_recordings_the_next_start_finishes_whole() {
    // The four finishing threads may take every job before the stop's
    // zero deadline (on a file system whose fsync costs nothing they keep
    // up with the ends): such a try tests nothing, and is made again.
    const CALLS: u32 = 24;
    const TRIES: usize = 20;
    let mut done_with = Vec::new();
    for (sealed, attempt) in [false, true]
        .into_iter()
        .flat_map(|s| (0..TRIES).map(move |a| (s, a)))
    {
        if attempt > 0 && done_with.contains(&sealed) {
            continue;
        }
        let d = tempfile::tempdir().unwrap();
        let keys = Arc::new(Keyring::new(crypt::SpoolKey::new(&[9; 32]), Vec::new()));
        let c = RecordingContext {
            seal: sealed.then(|| keys.clone()),
            ..ctx("siprec")
        };
        let mut rd = RecordingDir::new(d.path(), c.clone()).unwrap();
        rd.finish_in_background();
        // What a finish makes of a call (the reference), on its own.
        let mut want = Vec::new();
        for n in 0..CALLS {
            let id = format!("s{n}");
            rd.begin(CallKey(n.into()), &start(&id));
            let audio: Vec<i16> = (0..3200)
                .map(|i| (i as i16).wrapping_mul(n as i16 + 3))
                .collect();
            rd.audio(CallKey(n.into()), &audio);
            want.push((id, audio));
        }
        let mut meta = meta_r4();
        for n in 0..CALLS {
            meta.key = CallKey(n.into());
            meta.recording_id = format!("s{n}");
            meta.call_id = format!("s{n}@src");
            meta.frames = 1600;
            rd.end(CallKey(n.into()), meta.clone());
        }
        rd.wait_finished_within(Duration::ZERO);
        drop(rd);
        let notes: Vec<String> = hidden_files(d.path())
            .into_iter()
            .filter(|f| f.ends_with(".end.json"))
            .collect();
        // (A worker may have started a finish before the deadline: that
        // one is finished now.)
        if notes.is_empty() {
            assert!(
                attempt + 1 < TRIES,
                "sealed {sealed}: never any left for the next start in {TRIES} tries"
            );
            continue;
        }
        done_with.push(sealed);
        for f in &notes {
            let id = f.trim_start_matches('.').trim_end_matches(".end.json");
            assert!(d.path().join(format!(".{id}.wav.part")).is_file());
            assert!(!d.path().join(format!("{id}.json")).exists());
            if sealed {
                let raw = fs::read(d.path().join(f)).unwrap();
                assert!(raw.starts_with(crypt::MAGIC), "the note is sealed");
            }
        }
        let done = recover(d.path(), &c).unwrap();
        assert_eq!(done.len(), notes.len(), "sealed {sealed}");
        assert_eq!(
            hidden_files(d.path()),
            Vec::<String>::new(),
            "nothing left over"
        );
        for (id, audio) in &want {
            let k = c.seal.as_deref();
            let j: Value = serde_json::from_slice(
                &read_recording(&d.path().join(format!("{id}.json")), k).unwrap(),
            )
            .unwrap();
            assert_eq!(j["truncated"], false, "{id}: whole");
            assert_eq!(j["end_reason"], "bye", "{id}");
            assert_eq!(j["call_id"], format!("{id}@src"));
            assert_eq!(j["warnings"], json!([]), "{id}");
            let wav = read_recording(&d.path().join(format!("{id}.wav")), k).unwrap();
            let le: Vec<u8> = audio.iter().flat_map(|s| s.to_le_bytes()).collect();
            assert_eq!(wav[44..], le[..], "{id}: the audio");
            assert_eq!(j["audio"]["bytes"], wav.len() as u64);
            use sha2::Digest as _;
            assert_eq!(
                j["audio"]["sha256"],
                hex::encode(sha2::Sha256::digest(&wav))
            );
            assert_eq!(
                pbx_core::audio::wav::parse_wav_header(&wav)
                    .unwrap()
                    .data_len,
                le.len() as u64
            );
        }
    }
}

/// An end note damaged on disk (its `audio` not an object, another
/// recording's id) neither takes recovery down nor names another
/// recording: the pair is completed under its own id.
#[test]
fn a_damaged_end_note_is_survived() {
    let d = tempfile::tempdir().unwrap();
    let id = "20260101T000000Z-abc";
    let mut wav = pbx_core::audio::wav::canonical_header(8000, 2, 8).to_vec();
    wav.extend_from_slice(&[1, 0, 2, 0, 3, 0, 4, 0]);
    fs::write(d.path().join(format!(".{id}.wav.part")), &wav).unwrap();
    fs::write(
        d.path().join(format!(".{id}.end.json")),
        br#"{"audio": 5, "recording_id": "someone-else", "truncated": true}"#,
    )
    .unwrap();
    let ids = recover(d.path(), &ctx("siprec")).unwrap();
    assert_eq!(ids, vec![id.to_string()]);
    let j = json_of(d.path(), id);
    assert_eq!(j["recording_id"], id);
    assert_eq!(j["audio"]["bytes"], wav.len() as u64);
    assert_eq!(hidden_files(d.path()), Vec::<String>::new());
}

/// A mixed stream's recording (`CallMeta::mixed_mono`) is the left channel
/// alone, in a 1-channel WAV, plain and sealed; the JSON's `audio` (bytes,
/// sha256 of the plaintext, 1 channel) describes it.
#[test]
fn a_mixed_stream_is_written_as_one_channel_plain_and_sealed() {
    use sha2::Digest;
    let keys = Arc::new(Keyring::new(crypt::SpoolKey::new(&[5; 32]), Vec::new()));
    for seal in [None, Some(keys)] {
        let d = tempfile::tempdir().unwrap();
        let c = RecordingContext {
            seal: seal.clone(),
            ..ctx("siprec")
        };
        let mut rd = RecordingDir::new(d.path(), c).unwrap();
        rd.begin(CallKey(4), &start("r4"));
        let frames: Vec<i16> = (0..800i16).flat_map(|k| [k * 3 + 1, 0]).collect();
        rd.audio(CallKey(4), &frames);
        rd.end(
            CallKey(4),
            CallMeta {
                mixed_mono: true,
                ..meta_r4()
            },
        );
        let wav = crypt::read_recording(&d.path().join("r4.wav"), seal.as_deref()).unwrap();
        assert_eq!(wav.len(), 44 + 1600);
        assert_eq!(u16::from_le_bytes([wav[22], wav[23]]), 1, "one channel");
        let left: Vec<i16> = wav[44..]
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect();
        assert_eq!(left, (0..800i16).map(|k| k * 3 + 1).collect::<Vec<_>>());
        let j: Value = serde_json::from_slice(
            &crypt::read_recording(&d.path().join("r4.json"), seal.as_deref()).unwrap(),
        )
        .unwrap();
        assert_eq!(j["mixed_mono"], true);
        assert_eq!(j["audio"]["channels"], 1);
        assert_eq!(j["audio"]["bytes"], wav.len() as u64);
        let sha: String = sha2::Sha256::digest(&wav)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(j["audio"]["sha256"], sha);
        assert_eq!(j["channels"].as_array().unwrap().len(), 1);
        assert!(!d.path().join("r4.wav.mono-tmp").exists());
    }
}

/// A mixed stream's recording cut by a crash (its start said `mixed_mono`)
/// is completed mono at the next start, plain and sealed: the left
/// channel, `mixed_mono`, one channel entry, its length from the mono WAV;
/// a second recovery finds nothing to redo.
#[test]
fn a_mixed_stream_cut_by_a_crash_is_completed_mono() {
    let keys = Arc::new(Keyring::new(crypt::SpoolKey::new(&[6; 32]), Vec::new()));
    for seal in [None, Some(keys)] {
        let d = tempfile::tempdir().unwrap();
        let c = RecordingContext {
            seal: seal.clone(),
            ..ctx("siprec")
        };
        let mut rd = RecordingDir::new(d.path(), c.clone()).unwrap();
        rd.begin(
            CallKey(1),
            &RecordingStart {
                mixed_mono: true,
                ..start("m1")
            },
        );
        let frames: Vec<i16> = (0..8000i16).flat_map(|k| [k % 97 + 1, 0]).collect();
        rd.audio(CallKey(1), &frames);
        drop(rd);
        assert_eq!(recover(d.path(), &c).unwrap(), vec!["m1".to_string()]);
        let wav = crypt::read_recording(&d.path().join("m1.wav"), seal.as_deref()).unwrap();
        assert_eq!(u16::from_le_bytes([wav[22], wav[23]]), 1, "one channel");
        assert_eq!(wav.len(), 44 + 16_000);
        let j: Value = serde_json::from_slice(
            &crypt::read_recording(&d.path().join("m1.json"), seal.as_deref()).unwrap(),
        )
        .unwrap();
        assert_eq!(j["mixed_mono"], true, "{j}");
        assert_eq!(j["audio"]["channels"], 1, "{j}");
        assert_eq!(j["audio"]["bytes"], wav.len() as u64);
        assert_eq!(j["duration_ms"], 1000);
        assert_eq!(j["channels"].as_array().unwrap().len(), 1);
        assert!(recover(d.path(), &c).unwrap().is_empty());
    }
}
