//! Crash-recovery inputs: what a crash (or a hostile hand in the spool) may
//! leave in the recording directory: a start sidecar, an answered-call note,
//! a `.part` WAV and a stop's end note, each any bytes. `recover` never panics; every id it
//! recovers ends as a WAV whose header reads and a JSON object; no `.part`
//! stays behind.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pbx_core::audio::wav::repair_wav;
use pbx_edge::recording::{recover, RecordingContext, ANSWER_SUFFIX, START_SUFFIX};
use std::fs;
use std::time::Duration;

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let flags = data[0];
    let mut pieces = data[1..].splitn(4, |b| *b == 0xfe);
    let start = pieces.next().unwrap_or(&[]);
    let answer = pieces.next().unwrap_or(&[]);
    let part = pieces.next().unwrap_or(&[]);
    let end_note = pieces.next().unwrap_or(&[]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let id = "20260101T000000Z-abc";
    if flags & 1 != 0 {
        fs::write(dir.join(format!(".{id}{START_SUFFIX}")), start).unwrap();
    }
    if flags & 2 != 0 {
        fs::write(dir.join(format!(".ans-1{ANSWER_SUFFIX}")), answer).unwrap();
    }
    if flags & 4 != 0 {
        fs::write(dir.join(format!(".{id}.wav.part")), part).unwrap();
    }
    if flags & 8 != 0 {
        fs::write(dir.join(format!("{id}.wav")), part).unwrap();
    }
    if flags & 32 != 0 {
        fs::write(dir.join(format!(".{id}.end.json")), end_note).unwrap();
    }
    let ctx = RecordingContext {
        agent_id: "fuzz".into(),
        source: "siprec",
        min_duration: Duration::ZERO,
        // Bit 4: the spool is encrypted at rest (its key opens nothing the
        // fuzzer made, unless it forged a record: it cannot).
        seal: (flags & 16 != 0).then(|| {
            std::sync::Arc::new(pbx_edge::recording::Keyring::new(
                pbx_edge::recording::crypt::SpoolKey::new(&[7u8; 32]),
                Vec::new(),
            ))
        }),
        tap: None,
        roles: Default::default(),
    };
    let ids = recover(dir, &ctx).expect("recover");
    for id in &ids {
        // A finished WAV left without its JSON is taken as written (our
        // writer renamed it complete); a `.part` is repaired and must read.
        let repaired = flags & 8 == 0;
        let json = pbx_edge::recording::read_recording(
            &dir.join(format!("{id}.json")),
            ctx.seal.as_deref(),
        )
        .expect("json written");
        let v: serde_json::Value = serde_json::from_slice(&json).expect("json parses");
        assert!(v.is_object());
        if ctx.seal.is_some() {
            // Sealed WAVs are checked by the encrypted reader's own target.
            continue;
        }
        let mut f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join(format!("{id}.wav")))
            .expect("wav written");
        let len = f.metadata().unwrap().len();
        if repaired {
            repair_wav(&mut f, len).expect("recovered wav has a header");
        }
    }
    // A sealed `.part` no key opens is left as it is (nothing destroyed).
    assert!(!dir.join(format!(".{id}.wav.part")).exists() || part.starts_with(b"PBXENC\x00\x01"));
});
