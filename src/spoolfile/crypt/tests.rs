//! Sealed files: writing, reading, recovery, following a part, keys.

use super::*;

fn ring(b: u8) -> Keyring {
    Keyring::new(SpoolKey::new(&[b; 32]), Vec::new())
}

fn seal(keys: &Keyring, layout: Layout, parts: &[&[u8]], finish: bool) -> Vec<u8> {
    let mut w = SealedWriter::new(Vec::new(), keys.current(), layout).unwrap();
    for p in parts {
        w.write_all(p).unwrap();
        w.flush().unwrap();
    }
    if finish {
        w.finish().unwrap()
    } else {
        w.get_ref().clone()
    }
}

fn open_bytes(bytes: &[u8], keys: Option<&Keyring>, mode: OpenMode) -> io::Result<Vec<u8>> {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("f");
    std::fs::write(&p, bytes).unwrap();
    let mut r = open_recording(&p, keys, mode)?;
    let mut v = Vec::new();
    r.read_to_end(&mut v)?;
    assert_eq!(v.len() as u64, r.len());
    Ok(v)
}

#[test]
fn round_trip_both_layouts_and_seek_anywhere() {
    let k = ring(7);
    let data: Vec<u8> = (0..(3 * CHUNK + 123))
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    for layout in [Layout::Chunks, Layout::Records] {
        let sealed = seal(&k, layout, &[&data[..1000], &data[1000..]], true);
        assert_eq!(&sealed[..8], MAGIC);
        assert!(!sealed
            .windows(64)
            .any(|w| data.windows(64).take(50).any(|d| d == w)));
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, &sealed).unwrap();
        let mut r = open_recording(&p, Some(&k), OpenMode::Strict).unwrap();
        assert_eq!(r.len(), data.len() as u64);
        for at in [
            0u64,
            1,
            999,
            1000,
            CHUNK as u64 - 1,
            CHUNK as u64,
            2 * CHUNK as u64 + 7,
        ] {
            r.seek(SeekFrom::Start(at)).unwrap();
            let mut v = Vec::new();
            r.read_to_end(&mut v).unwrap();
            assert_eq!(v, data[at as usize..], "{layout:?} at {at}");
        }
    }
    // Exactly a multiple of the chunk: an empty last record.
    let exact = vec![5u8; 2 * CHUNK];
    let s = seal(&k, Layout::Chunks, &[&exact], true);
    assert_eq!(open_bytes(&s, Some(&k), OpenMode::Strict).unwrap(), exact);
    let s = seal(&k, Layout::Chunks, &[], true);
    assert_eq!(open_bytes(&s, Some(&k), OpenMode::Strict).unwrap(), b"");
}

#[test]
fn cut_wrong_key_tampered_and_missing_key_are_errors() {
    let k = ring(1);
    let data = vec![9u8; 3 * CHUNK];
    let s = seal(&k, Layout::Chunks, &[&data], true);
    // Cut at a record boundary: the last record is not marked last.
    let cut = &s[..HEADER_LEN + 2 * (4 + CHUNK + TAG)];
    assert!(open_bytes(cut, Some(&k), OpenMode::Strict).is_err());
    assert!(open_bytes(&s[..s.len() - 1], Some(&k), OpenMode::Strict).is_err());
    let e = open_bytes(&s, Some(&ring(2)), OpenMode::Strict).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
    assert!(e.to_string().contains("key id"), "{e}");
    let e = open_bytes(&s, None, OpenMode::Strict).unwrap_err();
    assert!(e.to_string().contains("no key is configured"), "{e}");
    let mut t = s.clone();
    t[HEADER_LEN + 4 + 100] ^= 1;
    let mut r = {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, &t).unwrap();
        open_recording(&p, Some(&k), OpenMode::Strict).unwrap()
    };
    let mut v = Vec::new();
    assert!(r.read_to_end(&mut v).is_err(), "a changed byte is noticed");
    let mut h = s.clone();
    h[20] ^= 1; // the nonce prefix
    assert!(open_bytes(&h, Some(&k), OpenMode::Strict).is_err());
}

#[test]
fn rotation_opens_old_files_and_seals_with_the_new_key() {
    let old = ring(3);
    let s = seal(&old, Layout::Chunks, &[b"{\"a\":1}"], true);
    let both = Keyring::new(SpoolKey::new(&[4; 32]), vec![SpoolKey::new(&[3; 32])]);
    assert_eq!(
        open_bytes(&s, Some(&both), OpenMode::Strict).unwrap(),
        b"{\"a\":1}"
    );
    let n = seal(&both, Layout::Chunks, &[b"x"], true);
    assert_eq!(&n[8..16], &SpoolKey::new(&[4; 32]).id);
    assert!(open_bytes(&n, Some(&old), OpenMode::Strict).is_err());
}

#[test]
fn a_part_cut_anywhere_recovers_its_authentic_records() {
    let k = ring(5);
    let parts: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 1600]).collect();
    let refs: Vec<&[u8]> = parts.iter().map(|p| p.as_slice()).collect();
    let s = seal(&k, Layout::Records, &refs, false);
    let whole: Vec<u8> = parts.concat();
    assert_eq!(open_bytes(&s, Some(&k), OpenMode::Recover).unwrap(), whole);
    assert!(
        open_bytes(&s, Some(&k), OpenMode::Strict).is_err(),
        "no final record"
    );
    let rec = 4 + 1600 + TAG;
    for cut in [
        HEADER_LEN,
        HEADER_LEN + 3,
        HEADER_LEN + rec,
        HEADER_LEN + 5 * rec + 17,
    ] {
        let got = open_bytes(&s[..cut], Some(&k), OpenMode::Recover).unwrap();
        let whole_recs = (cut - HEADER_LEN) / rec;
        assert_eq!(got, whole[..whole_recs * 1600], "cut at {cut}");
    }
    // A finished file opens in recovery too.
    let f = seal(&k, Layout::Records, &refs, true);
    assert_eq!(open_bytes(&f, Some(&k), OpenMode::Recover).unwrap(), whole);
}

/// A part read as it grows ([`OpenMode::Follow`]): a record not whole
/// yet is taken in by a later refresh; the first inauthentic record, or
/// the final one, ends it as in recovery.
#[test]
fn a_followed_part_reads_what_is_written_since() {
    let k = ring(6);
    let parts: Vec<Vec<u8>> = (0..6u8).map(|i| vec![i; 1000]).collect();
    let refs: Vec<&[u8]> = parts.iter().map(|p| p.as_slice()).collect();
    let whole: Vec<u8> = parts.concat();
    let rec = 4 + 1000 + TAG;
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("x");
    let read_all = |r: &mut RecordingReader| {
        let mut v = Vec::new();
        r.read_to_end(&mut v).unwrap();
        v
    };
    for finish in [false, true] {
        let s = seal(&k, Layout::Records, &refs, finish);
        // Two records and part of the third.
        std::fs::write(&p, &s[..HEADER_LEN + 2 * rec + 7]).unwrap();
        let mut r = open_recording(&p, Some(&k), OpenMode::Follow).unwrap();
        assert_eq!(read_all(&mut r), whole[..2000]);
        std::fs::write(&p, &s).unwrap();
        r.refresh().unwrap();
        assert_eq!(read_all(&mut r), whole[2000..], "finish {finish}");
        r.seek(SeekFrom::Start(0)).unwrap();
        assert_eq!(read_all(&mut r), whole);
    }
    // A damaged fourth record: the first three, and nothing after.
    let good = seal(&k, Layout::Records, &refs, false);
    let mut s = good.clone();
    s[HEADER_LEN + 3 * rec + 10] ^= 1;
    std::fs::write(&p, &s).unwrap();
    let mut r = open_recording(&p, Some(&k), OpenMode::Follow).unwrap();
    assert_eq!(read_all(&mut r), whole[..3000]);
    r.refresh().unwrap();
    assert_eq!(read_all(&mut r), b"");
    assert_eq!(r.len(), 3000);
    // Looked at again at each refresh (as a reader opened anew would).
    std::fs::write(&p, &good).unwrap();
    r.refresh().unwrap();
    assert_eq!(read_all(&mut r), whole[3000..]);
}

/// A record damaged in the middle of a `.part` (a flipped bit, a bad
/// sector over two records) costs that record only: it reads as zeros
/// of its length, the records after it where they were. A damaged
/// length field (no later record authenticates at its place) and a
/// damaged end still end what is kept; a damaged first record opens
/// nothing, as before.
#[test]
fn a_damaged_record_in_a_part_reads_as_zeros_and_the_rest_is_kept() {
    let k = ring(6);
    let parts: Vec<Vec<u8>> = (1..=20u8).map(|i| vec![i; 1600]).collect();
    let refs: Vec<&[u8]> = parts.iter().map(|p| p.as_slice()).collect();
    let s = seal(&k, Layout::Records, &refs, false);
    let rec = 4 + 1600 + TAG;
    let at = |i: usize| HEADER_LEN + i * rec;
    let opened = |bytes: &[u8]| {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, bytes).unwrap();
        let mut r = open_recording(&p, Some(&k), OpenMode::Recover).unwrap();
        let mut v = Vec::new();
        r.read_to_end(&mut v).unwrap();
        assert_eq!(v.len() as u64, r.len());
        (v, r.damaged())
    };
    // Record 5's ciphertext damaged; records 11 and 12 too (one span).
    let mut bad = s.clone();
    bad[at(5) + 100] ^= 0x40;
    bad[at(11) + 1500] ^= 1;
    bad[at(12) + 4] ^= 0xff;
    let (got, damaged) = opened(&bad);
    let mut want = parts.clone();
    for i in [5, 11, 12] {
        want[i] = vec![0; 1600];
    }
    assert_eq!(got, want.concat());
    assert_eq!(damaged, (3, 3 * 1600));
    // Damaged at its end (torn): dropped, nothing marked.
    let mut torn = s.clone();
    torn[at(19) + 50] ^= 1;
    let (got, damaged) = opened(&torn);
    assert_eq!(got, parts[..19].concat());
    assert_eq!(damaged, (0, 0));
    // A damaged length field: nothing after it can be placed.
    let mut len = s.clone();
    len[at(7)] ^= 0x10;
    let (got, _) = opened(&len);
    assert_eq!(got, parts[..7].concat());
    // The first record damaged: nothing opens from it.
    let mut first = s.clone();
    first[at(0) + 10] ^= 1;
    assert!(opened(&first).0.is_empty());
    // A finished file with a damaged record opened for recovery: the
    // last record still found.
    let mut fin = seal(&k, Layout::Records, &refs, true);
    fin[at(3) + 9] ^= 2;
    let (got, damaged) = opened(&fin);
    let mut want = parts.clone();
    want[3] = vec![0; 1600];
    assert_eq!(got, want.concat());
    assert_eq!(damaged, (1, 1600));
}

#[test]
fn key_files_raw_or_hex() {
    let d = tempfile::tempdir().unwrap();
    let raw = d.path().join("raw");
    std::fs::write(&raw, [0xabu8; 32]).unwrap();
    let hexf = d.path().join("hex");
    std::fs::write(&hexf, format!("{}\n", "ab".repeat(32))).unwrap();
    assert_eq!(
        SpoolKey::from_file(&raw).unwrap().id,
        SpoolKey::from_file(&hexf).unwrap().id
    );
    let short = d.path().join("short");
    std::fs::write(&short, b"secret-but-short").unwrap();
    let e = SpoolKey::from_file(&short).unwrap_err().to_string();
    assert!(e.contains("32 raw bytes") && !e.contains("secret"), "{e}");
    // The credential stands in for an empty key file.
    std::fs::write(d.path().join(CREDENTIAL_NAME), [1u8; 32]).unwrap();
    let r = Keyring::load(Path::new(""), &[], Some(d.path()))
        .unwrap()
        .unwrap();
    assert_eq!(r.current().id, SpoolKey::new(&[1; 32]).id);
    assert!(Keyring::load(Path::new(""), &[], None).unwrap().is_none());
}

/// [`OpenMode::Checked`] reads a `.part` once, each record decrypted once
/// as the reading comes to it; it reads a file whole (with every record
/// checked, [`RecordingReader::check_rest`]) only when every record
/// authenticates, and then exactly what [`OpenMode::Recover`] reads (same
/// plaintext, same length, nothing damaged). Anything else is an error:
/// a damaged middle, a torn or damaged end, a damaged first record or
/// length field, a final record marked last.
#[test]
fn a_checked_part_reads_as_recover_does_or_fails() {
    let k = ring(8);
    let parts: Vec<Vec<u8>> = (1..=12u8).map(|i| vec![i; 1000 + i as usize]).collect();
    let refs: Vec<&[u8]> = parts.iter().map(|p| p.as_slice()).collect();
    let whole = parts.concat();
    let s = seal(&k, Layout::Records, &refs, false);
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("f");
    // (plaintext, len at open) read in Checked, or the error.
    let checked = |bytes: &[u8]| -> io::Result<(Vec<u8>, u64)> {
        std::fs::write(&p, bytes).unwrap();
        let mut r = open_recording(&p, Some(&k), OpenMode::Checked)?;
        let len = r.len();
        let mut v = Vec::new();
        r.read_to_end(&mut v)?;
        r.check_rest()?;
        assert_eq!(r.damaged(), (0, 0));
        Ok((v, len))
    };
    let recovered = |bytes: &[u8]| -> io::Result<(Vec<u8>, u64, (usize, u64))> {
        std::fs::write(&p, bytes).unwrap();
        let mut r = open_recording(&p, Some(&k), OpenMode::Recover)?;
        let mut v = Vec::new();
        r.read_to_end(&mut v)?;
        Ok((v, r.len(), r.damaged()))
    };

    // A clean part: read whole, each record decrypted once.
    let before = DECRYPTED.with(|c| c.get());
    assert_eq!(checked(&s).unwrap(), (whole.clone(), whole.len() as u64));
    assert_eq!(
        DECRYPTED.with(|c| c.get()) - before,
        whole.len() as u64,
        "each record decrypted once"
    );
    // Recover decrypts it all at open, then again as it is read.
    let before = DECRYPTED.with(|c| c.get());
    recovered(&s).unwrap();
    assert_eq!(DECRYPTED.with(|c| c.get()) - before, 2 * whole.len() as u64);

    // Cut anywhere, one bit flipped anywhere (headers, length fields,
    // ciphertexts, tags), finished or not: Checked either fails or reads
    // exactly what Recover reads.
    let fin = seal(&k, Layout::Records, &refs, true);
    let mut variants: Vec<Vec<u8>> = Vec::new();
    for base in [&s, &fin] {
        for cut in (0..base.len()).step_by(97).chain([base.len() - 1]) {
            variants.push(base[..cut].to_vec());
        }
        for at in (0..base.len()).step_by(53) {
            let mut v = base.clone();
            v[at] ^= 0x10;
            variants.push(v);
        }
    }
    let (mut ok, mut failed) = (0, 0);
    for v in &variants {
        match checked(v) {
            Ok((plain, len)) => {
                ok += 1;
                let (want, want_len, damaged) = recovered(v).unwrap();
                assert_eq!((plain, len, damaged), (want, want_len, (0, 0)));
            }
            Err(_) => failed += 1,
        }
    }
    assert!(ok > 10 && failed > 10, "{ok} read, {failed} failed");
    // In particular: a damaged middle, a damaged end, a final record
    // marked last are errors (Recover decides on them).
    let rec = |i: usize| HEADER_LEN + parts[..i].iter().map(|p| 4 + p.len() + TAG).sum::<usize>();
    for (at, what) in [
        (rec(5) + 100, "damaged middle"),
        (rec(11) + 50, "damaged end"),
        (rec(0) + 10, "damaged first record"),
    ] {
        let mut v = s.clone();
        v[at] ^= 1;
        assert!(checked(&v).is_err(), "{what}");
    }
    assert!(checked(&fin).is_err(), "final record marked last");
    assert_eq!(recovered(&fin).unwrap().0, whole);
}

/// A plain piece is read whole however the kernel splits it (a pipe
/// hands over what was written so far), appended after what the buffer
/// holds; the end of the data before the piece is whole is an error.
#[test]
fn a_plain_piece_is_read_whole_across_short_reads() {
    let (rx, mut tx) = std::io::pipe().unwrap();
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let sent = data.clone();
    let writer = std::thread::spawn(move || {
        for c in sent.chunks(997) {
            tx.write_all(c).unwrap();
            std::thread::yield_now();
        }
        tx.write_all(b"0123456789").unwrap();
    });
    let f = File::from(std::os::fd::OwnedFd::from(rx));
    let mut buf = Vec::with_capacity(3 + data.len());
    buf.extend_from_slice(b"abc");
    read_into_spare(&f, &mut buf, data.len()).unwrap();
    assert_eq!(&buf[..3], b"abc");
    assert_eq!(buf[3..], data[..]);
    writer.join().unwrap();
    let mut rest = Vec::with_capacity(20);
    let e = read_into_spare(&f, &mut rest, 20).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    assert!(rest.is_empty(), "nothing is claimed as read");
}
