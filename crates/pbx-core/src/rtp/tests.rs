use super::*;
use crate::sip::test_support::{corpus_dir, have_tshark, hex_decode, tshark_rows};
use proptest::prelude::*;
use std::collections::HashMap;

fn header(b0: u8, b1: u8, seq: u16, ts: u32, ssrc: u32) -> Vec<u8> {
    let mut v = vec![b0, b1];
    v.extend(seq.to_be_bytes());
    v.extend(ts.to_be_bytes());
    v.extend(ssrc.to_be_bytes());
    v
}

#[test]
fn parses_plain_packet() {
    let mut p = header(0x80, 0x80 | 8, 4660, 0xdead_beef, 0x0102_0304);
    p.extend([0xd5; 160]);
    let r = parse_rtp(&p).unwrap();
    assert!(r.marker);
    assert_eq!(r.payload_type, 8);
    assert_eq!(r.sequence, 4660);
    assert_eq!(r.timestamp, 0xdead_beef);
    assert_eq!(r.ssrc, 0x0102_0304);
    assert_eq!(r.csrc_count, 0);
    assert_eq!(r.extension, None);
    assert_eq!(r.payload.len(), 160);
    assert_eq!(r.padding, 0);
    assert!(is_probably_rtp(&p));
    assert!(!is_rtcp(&p));
}

#[test]
fn csrcs_extension_and_padding() {
    let mut p = header(0x80 | 0x20 | 0x10 | 2, 0, 1, 2, 3);
    p.extend(0x1111_1111u32.to_be_bytes());
    p.extend(0x2222_2222u32.to_be_bytes());
    p.extend([0xbe, 0xde, 0x00, 0x01, 0x10, 0xaa, 0x00, 0x00]); // one-byte ext, 1 word
    p.extend([1, 2, 3]); // payload
    p.extend([0, 0, 3]); // 3 bytes of padding
    let r = parse_rtp(&p).unwrap();
    assert_eq!(r.csrc_count, 2);
    assert_eq!(r.csrcs().collect::<Vec<_>>(), [0x1111_1111, 0x2222_2222]);
    assert_eq!(r.extension, Some((0xbede, &[0x10, 0xaa, 0, 0][..])));
    assert_eq!(r.payload, [1, 2, 3]);
    assert_eq!(r.padding, 3);
    assert!(is_probably_rtp(&p));
}

#[test]
fn rejects_malformed() {
    assert_eq!(parse_rtp(&[]), Err(RtpError::TooShort(0)));
    assert_eq!(parse_rtp(&[0x80; 11]), Err(RtpError::TooShort(11)));
    assert_eq!(
        parse_rtp(&header(0x40, 0, 0, 0, 0)),
        Err(RtpError::BadVersion(1))
    );
    // CSRC count past the end.
    assert_eq!(
        parse_rtp(&header(0x81, 0, 0, 0, 0)),
        Err(RtpError::BadHeaderLength)
    );
    assert!(!is_probably_rtp(&header(0x81, 0, 0, 0, 0)));
    // Extension header missing / extension length past the end.
    assert_eq!(
        parse_rtp(&header(0x90, 0, 0, 0, 0)),
        Err(RtpError::BadHeaderLength)
    );
    let mut p = header(0x90, 0, 0, 0, 0);
    p.extend([0, 0, 0, 2, 1, 2, 3, 4]);
    assert_eq!(parse_rtp(&p), Err(RtpError::BadHeaderLength));
    assert!(!is_probably_rtp(&p));
    // Padding: zero count, count larger than the payload, no payload at all.
    let mut p = header(0xa0, 0, 0, 0, 0);
    p.extend([1, 2, 0]);
    assert_eq!(parse_rtp(&p), Err(RtpError::BadPadding(0)));
    let mut p = header(0xa0, 0, 0, 0, 0);
    p.extend([1, 2, 4]);
    assert_eq!(parse_rtp(&p), Err(RtpError::BadPadding(4)));
    assert_eq!(
        parse_rtp(&header(0xa0, 0, 0, 0, 0)),
        Err(RtpError::BadPadding(0))
    );
    // Padding that eats the whole payload is fine.
    let mut p = header(0xa0, 0, 0, 0, 0);
    p.extend([9, 9, 3]);
    assert_eq!(parse_rtp(&p).unwrap().payload, &[] as &[u8]);
}

#[test]
fn rtcp_classification() {
    for pt in [200u8, 201, 202, 203, 204, 205, 206, 207, 192, 223] {
        let p = [0x80, pt, 0, 1, 0, 0, 0, 1];
        assert!(is_rtcp(&p), "{pt}");
        assert!(!is_probably_rtp(&[&p[..], &[0; 8]].concat()), "{pt}");
    }
    assert!(!is_rtcp(&[0x80, 191, 0, 1, 0, 0, 0, 1]));
    assert!(!is_rtcp(&[0x80, 224, 0, 1, 0, 0, 0, 1]));
    assert!(!is_rtcp(&[0x80, 200, 0, 1])); // too short
    assert!(!is_rtcp(&[0x40, 200, 0, 1, 0, 0, 0, 1])); // version 1
                                                       // STUN binding request, DTLS, ZRTP are not RTP.
    assert!(!is_probably_rtp(&[
        0x00, 0x01, 0, 0, 0x21, 0x12, 0xa4, 0x42, 0, 0, 0, 0
    ]));
    assert!(!is_probably_rtp(&[22, 254, 253, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
    assert!(!is_probably_rtp(&[
        0x10, 0, 0, 0, 0x5a, 0x52, 0x54, 0x50, 0, 0, 0, 0
    ]));
}

#[test]
fn telephone_events() {
    let e = parse_telephone_event(&[5, 0x8a, 0x03, 0x20]).unwrap();
    assert_eq!(
        e,
        TelephoneEvent {
            event: 5,
            end: true,
            volume: 10,
            duration: 800
        }
    );
    let e = parse_telephone_event(&[11, 0x4a, 0, 160, 99, 99, 99, 99]).unwrap();
    assert_eq!((e.event, e.end, e.volume, e.duration), (11, false, 10, 160));
    assert_eq!(
        parse_telephone_event(&[1, 2, 3]),
        Err(RtpError::EventTooShort(3))
    );
    let digits: String = (0..=16).filter_map(event_to_digit).collect();
    assert_eq!(digits, "0123456789*#ABCDF");
    assert_eq!(event_to_digit(17), None);
    assert_eq!(event_to_digit(255), None);
}

#[test]
fn seq_tracker_basics() {
    let mut t = SeqTracker::new();
    assert_eq!(t.lost(), 0);
    assert_eq!(t.max_extended(), None);
    assert_eq!(t.update(65533), SeqUpdate::Newest);
    let base = t.max_extended().unwrap();
    assert_eq!(base, (1 << 32) + 65533);
    assert_eq!(t.update(65534), SeqUpdate::Newest);
    assert_eq!(t.update(0), SeqUpdate::Newest); // 65535 missing, wrapped
    assert_eq!(t.max_extended(), Some(base + 3));
    assert_eq!(t.lost(), 1);
    assert_eq!(t.update(65535), SeqUpdate::Older); // ... arrived late
    assert_eq!(t.lost(), 0);
    assert_eq!(t.update(1), SeqUpdate::Newest);
    assert_eq!(t.update(1), SeqUpdate::Duplicate);
    assert_eq!(t.update(65533), SeqUpdate::Duplicate); // the first, across the wrap
    assert_eq!(t.update(65532), SeqUpdate::Older); // earlier than the first packet
    assert_eq!(t.received(), 6);
    assert_eq!(t.duplicates(), 2);
    assert_eq!(t.lost(), 0);
    assert_eq!(t.update(10), SeqUpdate::Newest); // 8 missing
    assert_eq!(t.lost(), 8);
    assert_eq!(t.max_extended(), Some(base + 13));
}

#[test]
fn seq_tracker_far_behind_counts_as_received() {
    let mut t = SeqTracker::new();
    for s in 0..=600u16 {
        assert_eq!(t.update(s), SeqUpdate::Newest);
    }
    // 550 behind the newest: beyond the duplicate window, so a repeat of
    // an old packet cannot be told apart and counts as received.
    assert_eq!(t.update(50), SeqUpdate::Older);
    assert_eq!(t.received(), 602);
    assert_eq!(t.duplicates(), 0);
    // Within the window a repeat is a duplicate.
    assert_eq!(t.update(500), SeqUpdate::Duplicate);
    assert_eq!(t.duplicates(), 1);
    // A jump forward clears the window; numbering continues across it.
    assert_eq!(t.update(2000), SeqUpdate::Newest);
    assert_eq!(t.max_extended(), Some((1 << 32) + 2000));
    assert_eq!(t.update(1999), SeqUpdate::Older);
    assert_eq!(t.update(2000), SeqUpdate::Duplicate);
}

#[test]
fn ts_unwrapper_both_directions() {
    let mut u = TsUnwrapper::new();
    assert_eq!(u.unwrap(u32::MAX - 159), i64::from(u32::MAX - 159));
    assert_eq!(u.unwrap(0), i64::from(u32::MAX) + 1); // wrapped forward
    assert_eq!(u.unwrap(u32::MAX - 319), i64::from(u32::MAX - 319)); // older, before the wrap
    assert_eq!(u.unwrap(160), i64::from(u32::MAX) + 161);
    assert_eq!(u.max(), Some(i64::from(u32::MAX) + 161));
    assert_eq!(u.peek(320), i64::from(u32::MAX) + 321);

    let mut u = TsUnwrapper::new();
    assert_eq!(u.unwrap(10), 10);
    assert_eq!(u.unwrap(u32::MAX - 5), -6); // older than the first, across the wrap
    assert_eq!(u.unwrap(20), 20);
}

proptest! {
    /// A random walk of sequence numbers with gaps, wraps, duplicates and
    /// reordering within 100 packets is counted exactly.
    #[test]
    fn seq_tracker_random_walk(
        start in any::<u16>(),
        steps in proptest::collection::vec((1u64..4, 0u64..100, any::<bool>()), 1..3000),
    ) {
        // True extended numbers: mostly +1, sometimes a gap.
        let mut truth = Vec::new();
        let mut cur = u64::from(start) + 1_000_000;
        for (step, jitter, dup) in &steps {
            cur += if *step == 3 { 3 } else { 1 };
            truth.push((cur, *jitter, *dup));
        }
        let sent = truth.len() as u64;
        // Reorder: sort by seq + jitter (each packet at most 99 late).
        let mut order: Vec<(u64, u64, bool)> = truth.clone();
        order.sort_by_key(|(s, j, _)| s + j);
        let mut t = SeqTracker::new();
        let mut newest: Option<u64> = None;
        let mut dups = 0;
        for (s, _, dup) in &order {
            let want = if newest.is_none_or(|n| *s > n) {
                SeqUpdate::Newest
            } else {
                SeqUpdate::Older
            };
            prop_assert_eq!(t.update(*s as u16), want);
            newest = Some(newest.map_or(*s, |n| n.max(*s)));
            if *dup {
                prop_assert_eq!(t.update(*s as u16), SeqUpdate::Duplicate);
                dups += 1;
            }
        }
        prop_assert_eq!(t.duplicates(), dups);
        prop_assert_eq!(t.received(), sent);
        let first = truth.first().map(|x| x.0).unwrap_or(0);
        let last = truth.last().map(|x| x.0).unwrap_or(0);
        prop_assert_eq!(t.lost(), last - first + 1 - sent);
    }

    /// Timestamps: a random walk (including many wraps) with packets up to
    /// ~1 s late extends consistently.
    #[test]
    fn ts_unwrapper_random_walk(
        start in any::<u32>(),
        steps in proptest::collection::vec((0i64..200_000_000, 0i64..8000), 1..500),
    ) {
        let mut u = TsUnwrapper::new();
        let mut truth = i64::from(start);
        let first = u.unwrap(start);
        prop_assert_eq!(first, truth);
        for (step, back) in steps {
            truth += step;
            let got = u.unwrap(truth as u32);
            prop_assert_eq!(got, truth);
            // An older packet arrives after it.
            let old = truth - back;
            prop_assert_eq!(u.unwrap(old as u32), old);
        }
    }

    #[test]
    fn rtp_parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(p) = parse_rtp(&bytes) {
            prop_assert!(p.payload.len() + 12 <= bytes.len());
            prop_assert_eq!(p.csrcs().count(), usize::from(p.csrc_count));
            prop_assert!(is_probably_rtp(&bytes) || is_rtcp(&bytes));
        }
        let _ = parse_telephone_event(&bytes);
        let _ = is_rtcp(&bytes);
    }
}

/// Every RTP packet tshark finds in the corpus parses to the same header
/// fields; RTCP is classified as such.
#[test]
fn corpus_rtp_matches_tshark() {
    let Some(dir) = corpus_dir() else { return };
    if !have_tshark() {
        return;
    }
    let files = [
        "SIP_DTMF2.cap",
        "rtp-protocol.pcap",
        "SIP_CALL_RTP_G711.pcap",
        "Asterisk_ZFONE_XLITE.pcap",
        "invite-opus-bye.pcap",
        "WebRTC_PCMA_p2p_SDES_Call_1.pcap",
        "16_bit_48khz_60_fec_dropped.pcapng",
        "srtp_g722_DTMF_srcport_29394.pcap",
    ];
    let mut rtp_total = 0;
    let mut rtcp_total = 0;
    for name in files {
        let file = dir.join(name);
        if !file.exists() {
            continue;
        }
        let rows = tshark_rows(
            &file,
            &[
                "-o",
                "rtp.heuristic_rtp:TRUE",
                "-Y",
                "rtp && !rtcp",
                "-T",
                "fields",
                "-e",
                "udp.payload",
                "-e",
                "rtp.ssrc",
                "-e",
                "rtp.seq",
                "-e",
                "rtp.timestamp",
                "-e",
                "rtp.p_type",
                "-e",
                "rtp.marker",
            ],
        );
        for row in &rows {
            let bytes = hex_decode(&row[0]);
            let p = parse_rtp(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(is_probably_rtp(&bytes));
            assert!(!is_rtcp(&bytes), "{name}");
            let ssrc = u32::from_str_radix(row[1].trim_start_matches("0x"), 16).unwrap();
            assert_eq!(p.ssrc, ssrc, "{name}");
            assert_eq!(p.sequence.to_string(), row[2], "{name}");
            assert_eq!(p.timestamp.to_string(), row[3], "{name}");
            assert_eq!(p.payload_type.to_string(), row[4], "{name}");
            assert_eq!(p.marker, row[5] == "1" || row[5] == "True", "{name}");
        }
        rtp_total += rows.len();
        let rows = tshark_rows(&file, &["-Y", "rtcp", "-T", "fields", "-e", "udp.payload"]);
        for row in &rows {
            let bytes = hex_decode(&row[0]);
            assert!(is_rtcp(&bytes), "{name}");
            assert!(!is_probably_rtp(&bytes), "{name}");
        }
        rtcp_total += rows.len();
    }
    eprintln!("{rtp_total} RTP and {rtcp_total} RTCP corpus packets checked");
    assert!(rtp_total > 9_000);
    assert!(rtcp_total > 10);
}

/// RFC 4733 events in SIP_DTMF2.cap decode like tshark decodes them.
#[test]
fn corpus_telephone_events_match_tshark() {
    let Some(dir) = corpus_dir() else { return };
    if !have_tshark() {
        return;
    }
    let rows = tshark_rows(
        &dir.join("SIP_DTMF2.cap"),
        &[
            "-Y",
            "rtpevent",
            "-T",
            "fields",
            "-e",
            "udp.payload",
            "-e",
            "rtpevent.event_id",
            "-e",
            "rtpevent.end_of_event",
            "-e",
            "rtpevent.volume",
            "-e",
            "rtpevent.duration",
        ],
    );
    assert!(rows.len() >= 30);
    let mut digits = String::new();
    for row in &rows {
        let bytes = hex_decode(&row[0]);
        let p = parse_rtp(&bytes).unwrap();
        let e = parse_telephone_event(p.payload).unwrap();
        assert_eq!(e.event.to_string(), row[1]);
        assert_eq!(e.end, row[2] == "1" || row[2] == "True");
        assert_eq!(e.volume.to_string(), row[3]);
        assert_eq!(e.duration.to_string(), row[4]);
        if e.end && !digits.ends_with(event_to_digit(e.event).unwrap()) {
            digits.push(event_to_digit(e.event).unwrap());
        }
    }
    eprintln!("DTMF digits in SIP_DTMF2.cap: {digits}");
    assert!(!digits.is_empty());
}

/// Loss per stream matches tshark's RTP stream analysis (SIP_DTMF2.cap:
/// 0 and 2 lost; Asterisk_ZFONE_XLITE.pcap has a long gap in one direction).
#[test]
fn corpus_loss_matches_tshark() {
    let Some(dir) = corpus_dir() else { return };
    if !have_tshark() {
        return;
    }
    for name in [
        "SIP_DTMF2.cap",
        "Asterisk_ZFONE_XLITE.pcap",
        "rtp-protocol.pcap",
    ] {
        let file = dir.join(name);
        let rows = tshark_rows(
            &file,
            &[
                "-Y",
                "rtp",
                "-T",
                "fields",
                "-e",
                "ip.src",
                "-e",
                "udp.srcport",
                "-e",
                "ip.dst",
                "-e",
                "udp.dstport",
                "-e",
                "rtp.ssrc",
                "-e",
                "udp.payload",
            ],
        );
        let mut trackers: HashMap<Vec<String>, SeqTracker> = HashMap::new();
        for row in &rows {
            let bytes = hex_decode(&row[5]);
            let p = parse_rtp(&bytes).unwrap();
            trackers
                .entry(row[..5].to_vec())
                .or_default()
                .update(p.sequence);
        }
        // tshark -z rtp,streams: "... SSRC  Payload  Pkts  Lost (x%) ..."
        let out = std::process::Command::new("tshark")
            .arg("-r")
            .arg(&file)
            .args(["-q", "-z", "rtp,streams"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let mut checked = 0;
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let Some(ssrc_i) = f.iter().position(|w| w.starts_with("0x")) else {
                continue;
            };
            let Some(pct) = f
                .iter()
                .position(|w| w.starts_with('(') && w.ends_with("%)"))
            else {
                continue;
            };
            let lost: i64 = f[pct - 1].parse().unwrap();
            let pkts: u64 = f[pct - 2].parse().unwrap();
            let key: Vec<String> = vec![
                f[2].to_string(),
                f[3].to_string(),
                f[4].to_string(),
                f[5].to_string(),
                f[ssrc_i].to_ascii_lowercase(),
            ];
            let t = trackers
                .get(&key)
                .unwrap_or_else(|| panic!("{name}: no stream {key:?}"));
            assert_eq!(t.received() + t.duplicates(), pkts, "{name} {key:?}");
            assert_eq!(t.lost() as i64, lost.max(0), "{name} {key:?}");
            checked += 1;
        }
        assert!(checked >= 2, "{name}: {checked} streams");
    }
}
