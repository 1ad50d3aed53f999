//! The encrypted-file reader (encryption at rest, `recording::crypt`) on any
//! bytes a crash, a full disk or a hostile hand may leave in the spool: it
//! never panics, never reads outside the file, and never returns bytes that
//! were not sealed with the key (a forged record cannot authenticate).
//! Also round trips: what the fuzzer's bytes are sealed into reads back
//! exactly, from any offset, in both open modes, and any cut of that file
//! reads back a prefix in recovery mode and is refused in strict mode.
//! A `.part` read once (`OpenMode::Checked`, how a sealed WAV is made from
//! it) either fails or reads, every record checked, exactly what recovery
//! mode reads with nothing damaged: on every input, cut or not.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pbx_edge::recording::crypt::{Layout, SealedWriter, SpoolKey, CHUNK};
use pbx_edge::recording::{open_recording, Keyring, OpenMode};
use std::io::{Read, Seek, SeekFrom, Write};

fn read_all(path: &std::path::Path, keys: &Keyring, mode: OpenMode, at: u64) -> Option<Vec<u8>> {
    let mut r = open_recording(path, Some(keys), mode).ok()?;
    let len = r.len();
    r.seek(SeekFrom::Start(at)).ok()?;
    let mut v = Vec::new();
    r.read_to_end(&mut v).ok()?;
    assert!(v.len() as u64 <= len.saturating_sub(at.min(len)));
    Some(v)
}

/// `OpenMode::Checked` reads the file whole with every record checked
/// only as `OpenMode::Recover` reads it with nothing damaged.
fn checked_as_recovered(path: &std::path::Path, keys: &Keyring) {
    let checked = (|| {
        let mut r = open_recording(path, Some(keys), OpenMode::Checked).ok()?;
        let len = r.len();
        let mut v = Vec::new();
        r.read_to_end(&mut v).ok()?;
        r.check_rest().ok()?;
        Some((v, len))
    })();
    if let Some((v, len)) = checked {
        let mut r = open_recording(path, Some(keys), OpenMode::Recover).expect("recover opens what checked read");
        let mut want = Vec::new();
        r.read_to_end(&mut want).expect("recover reads what checked read");
        assert_eq!((v, len, r.damaged()), (want, r.len(), (0, 0)), "checked read other than recover");
    }
}

fuzz_target!(|data: &[u8]| {
    let keys = Keyring::new(SpoolKey::new(&[3u8; 32]), Vec::new());
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("f");
    // 1. Any bytes as a spool file: whatever opens must be a sealed file of
    // ours, which the fuzzer cannot forge; plain files read as they are.
    std::fs::write(&p, data).unwrap();
    for mode in [OpenMode::Strict, OpenMode::Recover] {
        if let Some(v) = read_all(&p, &keys, mode, 0) {
            if data.starts_with(b"PBXENC\x00\x01") {
                assert!(v.is_empty() && mode == OpenMode::Recover, "forged record accepted");
            } else {
                assert_eq!(v, data);
            }
        }
    }
    checked_as_recovered(&p, &keys);
    // 2. The bytes sealed in pieces (split at 0xff) in both layouts.
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let layout = if sel & 1 == 0 { Layout::Chunks } else { Layout::Records };
    let mut w = SealedWriter::new(std::fs::File::create(&p).unwrap(), keys.current(), layout).unwrap();
    for piece in body.split(|b| *b == 0xff) {
        w.write_all(piece).unwrap();
        w.flush().unwrap();
    }
    let plain: Vec<u8> = body.iter().copied().filter(|b| *b != 0xff).collect();
    let finish = sel & 2 == 0;
    if finish {
        w.finish().unwrap();
    } else {
        drop(w);
    }
    let at = u64::from(sel >> 2) % (plain.len() as u64 + 1);
    // What reached the file: all of it when finished, or when every flush
    // sealed a record (Records); in fixed chunks a writer dropped without
    // finishing leaves only the chunks sealed so far (it keeps the last full
    // chunk back for `finish`, and a partial one waits).
    let durable = if finish || layout == Layout::Records {
        plain.len()
    } else {
        plain.len().saturating_sub(1) / CHUNK * CHUNK
    };
    checked_as_recovered(&p, &keys);
    let rec = read_all(&p, &keys, OpenMode::Recover, at).expect("recover reads its own file");
    assert_eq!(rec, plain.get(at as usize..durable).unwrap_or(&[]));
    let strict = read_all(&p, &keys, OpenMode::Strict, at);
    if finish {
        assert_eq!(strict.expect("strict reads a finished file"), plain[at as usize..]);
    } else {
        assert!(strict.is_none(), "an unfinished file is not taken as finished");
    }
    // 3. Cut it anywhere: recovery keeps a prefix; strict refuses a cut
    // of a finished file.
    let sealed = std::fs::read(&p).unwrap();
    let cut = usize::from(sel) * 7 % (sealed.len() + 1);
    std::fs::write(&p, &sealed[..cut]).unwrap();
    checked_as_recovered(&p, &keys);
    if cut >= 8 {
        // (Shorter than the magic, it is just a plain file of those bytes.)
        if let Some(v) = read_all(&p, &keys, OpenMode::Recover, 0) {
            assert!(plain.starts_with(&v));
        }
        if finish && cut < sealed.len() {
            assert!(
                read_all(&p, &keys, OpenMode::Strict, 0).is_none(),
                "a cut finished file read as whole"
            );
        }
    }
});
