use super::*;

fn rtp(ssrc: u32, seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p[8..12].copy_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&[0xff; 160]);
    p
}

fn a(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const SRC_HOST: &str = "192.0.2.10";

/// The SRC signals from 192.0.2.10 and announces 192.0.2.10:4000.
fn origin() -> StreamOrigin {
    StreamOrigin {
        announced_ip: Some(SRC_HOST.parse().unwrap()),
        announced_port: 4000,
        signalling: SRC_HOST.parse().unwrap(),
    }
}

/// Feeds datagrams; records what is admitted.
struct Run {
    adm: Admission,
    rejected: RejectCounts,
    admitted: Vec<(Timestamp, SocketAddr, u32, u16)>,
}

impl Run {
    fn new(adm: Admission) -> Run {
        Run {
            adm,
            rejected: RejectCounts::default(),
            admitted: Vec::new(),
        }
    }
    fn send(&mut self, ms: i64, src: &str, ssrc: u32, seq: u16) {
        self.send_bytes(ms, src, &rtp(ssrc, seq));
    }
    fn send_bytes(&mut self, ms: i64, src: &str, bytes: &[u8]) {
        let admitted = &mut self.admitted;
        self.adm.offer(
            Timestamp::from_micros(ms * 1000),
            a(src),
            bytes,
            &mut self.rejected,
            &mut |ts, s, b| {
                let (ssrc, seq) = rtp_fields(b).unwrap_or((0, 0));
                admitted.push((ts, s, ssrc, seq));
            },
        );
    }
    fn seqs_from(&self, src: &str) -> Vec<u16> {
        self.admitted
            .iter()
            .filter(|x| x.1 == a(src))
            .map(|x| x.3)
            .collect()
    }
}

#[test]
fn the_announced_address_is_admitted_from_its_first_packet() {
    let mut r = Run::new(Admission::new(origin()));
    r.send(0, "192.0.2.10:4000", 7, 100);
    assert_eq!(r.admitted.len(), 1);
    assert_eq!(r.adm.locked(), Some(a("192.0.2.10:4000")));
    for i in 1..50 {
        r.send(i * 20, "192.0.2.10:4000", 7, 100 + i as u16);
    }
    assert_eq!(r.admitted.len(), 50);
    assert_eq!(r.rejected.total(), 0);
}

#[test]
fn packets_from_another_port_of_the_src_host_right_after_the_answer_never_get_in() {
    let mut r = Run::new(Admission::new(origin()));
    // Five injected packets in sequence, paced like audio, before the real stream.
    for i in 0..5 {
        r.send(i * 20, "192.0.2.10:5555", 0xBAD, 1 + i as u16);
    }
    assert!(r.admitted.is_empty());
    assert_eq!(r.adm.held(), 5);
    for i in 0..100 {
        r.send(100 + i * 20, "192.0.2.10:4000", 0x600D, 500 + i as u16);
    }
    // More injection during the call.
    for i in 5..50 {
        r.send(100 + i * 20, "192.0.2.10:5555", 0xBAD, 1 + i as u16);
    }
    assert_eq!(r.seqs_from("192.0.2.10:5555"), Vec::<u16>::new());
    assert_eq!(r.seqs_from("192.0.2.10:4000").len(), 100);
    assert_eq!(r.rejected.source, 50);
    assert_eq!(r.rejected.total(), 50);
}

#[test]
fn another_host_is_never_admitted() {
    let mut r = Run::new(Admission::new(origin()));
    for i in 0..100 {
        r.send(i * 20, "198.51.100.7:4000", 1, i as u16);
    }
    assert!(r.admitted.is_empty());
    assert_eq!(r.rejected.source, 100);
    assert_eq!(r.adm.held(), 0);
}

#[test]
fn a_source_on_the_signalling_host_latches_after_the_quorum_and_loses_nothing() {
    // Behind NAT: the SDP names a private address we never see.
    let o = StreamOrigin {
        announced_ip: Some("10.1.1.1".parse().unwrap()),
        announced_port: 4000,
        signalling: SRC_HOST.parse().unwrap(),
    };
    let mut r = Run::new(Admission::new(o));
    let mut latched_at = None;
    for i in 0..50 {
        r.send(i * 20, "192.0.2.10:31000", 9, 1000 + i as u16);
        if latched_at.is_none() && !r.admitted.is_empty() {
            latched_at = Some(i);
        }
    }
    // 100 ms of arrival time: the 6th packet (at 100 ms) latches.
    assert_eq!(latched_at, Some(5));
    assert_eq!(
        r.seqs_from("192.0.2.10:31000"),
        (1000..1050).collect::<Vec<_>>()
    );
    // Released with their own arrival times, in order.
    let ts: Vec<i64> = r.admitted.iter().map(|x| x.0.as_micros()).collect();
    assert_eq!(ts, (0..50).map(|i| i * 20_000).collect::<Vec<_>>());
    assert_eq!(r.rejected.total(), 0);
    // Then locked: another port of the same host is rejected.
    r.send(1000, "192.0.2.10:31002", 9, 1050);
    assert_eq!(r.rejected.source, 1);
}

#[test]
fn a_short_burst_never_latches_and_a_broken_run_starts_again() {
    let o = StreamOrigin {
        announced_ip: None,
        announced_port: 0,
        signalling: SRC_HOST.parse().unwrap(),
    };
    let mut r = Run::new(Admission::new(o));
    // 20 packets in 10 ms: a quorum of packets but not of time.
    for i in 0..20 {
        r.send(i / 2, "192.0.2.10:31000", 9, i as u16);
    }
    assert!(r.admitted.is_empty());
    // A jump in sequence numbers starts the run again: the 20 held are gone.
    r.send(300, "192.0.2.10:31000", 9, 5000);
    assert_eq!(r.rejected.source, 20);
    assert!(r.admitted.is_empty());
    // A new SSRC does too.
    r.send(320, "192.0.2.10:31000", 10, 5001);
    assert_eq!(r.rejected.source, 21);
    for i in 1..=10 {
        r.send(320 + i * 20, "192.0.2.10:31000", 10, 5001 + i as u16);
    }
    assert_eq!(r.admitted.len(), 11);
    assert!(r.admitted.iter().all(|x| x.2 == 10));
}

#[test]
fn the_announced_address_takes_over_from_a_latched_source() {
    let mut r = Run::new(Admission::new(origin()));
    for i in 0..20 {
        r.send(i * 20, "192.0.2.10:6000", 1, i as u16);
    }
    assert_eq!(r.admitted.len(), 20);
    r.send(400, "192.0.2.10:4000", 2, 100);
    r.send(410, "192.0.2.10:6000", 1, 20);
    r.send(420, "192.0.2.10:4000", 2, 101);
    assert_eq!(r.seqs_from("192.0.2.10:4000"), vec![100, 101]);
    assert_eq!(r.adm.locked(), Some(a("192.0.2.10:4000")));
    assert_eq!(r.rejected.source, 1);
}

#[test]
fn of_two_candidates_the_first_to_reach_the_quorum_wins() {
    let o = StreamOrigin {
        announced_ip: Some("0.0.0.0".parse().unwrap()),
        announced_port: 4000,
        signalling: SRC_HOST.parse().unwrap(),
    };
    assert_eq!(o.announced(), None);
    let mut r = Run::new(Admission::new(o));
    for i in 0..3 {
        r.send(i * 20, "192.0.2.10:7000", 1, i as u16);
    }
    for i in 0..30 {
        r.send(100 + i * 20, "192.0.2.10:7002", 2, i as u16);
    }
    assert_eq!(r.seqs_from("192.0.2.10:7000"), Vec::<u16>::new());
    assert_eq!(r.seqs_from("192.0.2.10:7002").len(), 30);
    assert_eq!(r.rejected.source, 3);
}

#[test]
fn an_ssrc_change_from_the_locked_source_is_followed_without_loss() {
    let mut r = Run::new(Admission::new(origin()));
    for i in 0..10 {
        r.send(i * 20, "192.0.2.10:4000", 1, i as u16);
    }
    // Transfer: a new SSRC, the old one stops.
    for i in 0..10 {
        r.send(200 + i * 20, "192.0.2.10:4000", 2, 9000 + i as u16);
    }
    let ssrcs: Vec<u32> = r.admitted.iter().map(|x| x.2).collect();
    assert_eq!(ssrcs, [[1u32; 10], [2u32; 10]].concat());
    assert_eq!(r.rejected.total(), 0);
    // The old SSRC is no longer the stream's: its two packets wait for a
    // change back; the new one going on (three packets) refuses them.
    r.send(400, "192.0.2.10:4000", 1, 10);
    r.send(420, "192.0.2.10:4000", 1, 11);
    for k in 0..3 {
        r.send(440 + 20 * k, "192.0.2.10:4000", 2, 9010 + k as u16);
    }
    assert_eq!(r.rejected.ssrc, 2);
    assert_eq!(r.admitted.len(), 23);
    let order: Vec<u16> = r.admitted[20..].iter().map(|x| x.3).collect();
    assert_eq!(order, [9010, 9011, 9012], "in the order they came");
}

/// An SSRC change whose old stream's last packets were overtaken by the
/// new one's first (1 or 2 of them): every packet of both is admitted, in
/// the order they came. Before, the old one's straggler cancelled the
/// change in progress and the new stream's first packets were lost.
#[test]
fn an_ssrc_change_overtaking_the_old_streams_last_packets_loses_nothing() {
    for overtaken in 1..=2u16 {
        for new_first in 1..=2u16 {
            let mut r = Run::new(Admission::new(origin()));
            for i in 0..10 - overtaken {
                r.send(i64::from(i) * 20, "192.0.2.10:4000", 1, i);
            }
            let mut t = 200;
            for k in 0..new_first {
                r.send(t, "192.0.2.10:4000", 2, 9000 + k);
                t += 1;
            }
            for i in 10 - overtaken..10 {
                r.send(t, "192.0.2.10:4000", 1, i);
                t += 1;
            }
            for k in new_first..10 {
                r.send(t + 20 * i64::from(k), "192.0.2.10:4000", 2, 9000 + k);
            }
            assert_eq!(r.rejected.total(), 0, "{overtaken} overtaken");
            // In the order they came.
            let seqs: Vec<u16> = r.admitted.iter().map(|x| x.3).collect();
            let mut want: Vec<u16> = (0..10 - overtaken).collect();
            want.extend(9000..9000 + new_first);
            want.extend(10 - overtaken..10);
            want.extend(9000 + new_first..9010);
            assert_eq!(seqs, want, "{overtaken} overtaken");
        }
    }
}

/// Two SSRCs taking turns, one packet each: no change, the other one's
/// packets refused.
#[test]
fn two_ssrcs_taking_turns_do_not_move_the_lock() {
    let mut r = Run::new(Admission::new(origin()));
    for i in 0..50u16 {
        r.send(i64::from(i) * 20, "192.0.2.10:4000", 1, i);
        r.send(i64::from(i) * 20 + 5, "192.0.2.10:4000", 66, 7000 + i);
    }
    assert!(r.admitted.iter().all(|x| x.2 == 1));
    assert_eq!(
        r.admitted.len() as u64 + r.rejected.ssrc + r.adm.held() as u64,
        100
    );
    // (The last turn waits for what comes next.)
    assert!(r.adm.held() <= 3, "{}", r.adm.held());
    assert!(r.admitted.len() >= 49, "{}", r.admitted.len());
    r.send(1000, "192.0.2.10:4000", 1, 50);
    assert_eq!(r.adm.held(), 0, "the old stream going on refuses the turns");
    assert_eq!(r.admitted.len(), 51);
}

#[test]
fn an_ssrc_interleaved_with_the_locked_one_is_rejected() {
    let mut r = Run::new(Admission::new(origin()));
    for i in 0..100u16 {
        r.send(i64::from(i) * 20, "192.0.2.10:4000", 1, i);
        // A spoofed stream with the source's address, every other packet.
        if i % 2 == 0 {
            r.send(i64::from(i) * 20 + 5, "192.0.2.10:4000", 66, 7000 + i / 2);
        }
    }
    assert!(r.admitted.iter().all(|x| x.2 == 1));
    assert_eq!(r.admitted.len(), 100);
    assert_eq!(r.rejected.ssrc, 50);
}

#[test]
fn rtcp_and_non_rtp_only_from_the_locked_source() {
    let mut r = Run::new(Admission::new(origin()));
    let rtcp = [0x80u8, 200, 0, 6, 0, 0, 0, 1, 0, 0, 0, 0];
    r.send_bytes(0, "192.0.2.10:5000", &rtcp);
    r.send_bytes(0, "192.0.2.10:5000", b"garbage");
    assert_eq!(r.rejected.source, 2);
    r.send(10, "192.0.2.10:4000", 1, 1);
    r.send_bytes(20, "192.0.2.10:4000", &rtcp);
    r.send_bytes(30, "192.0.2.10:4000", b"garbage");
    assert_eq!(r.admitted.len(), 3);
}

#[test]
fn a_retired_port_admits_nothing() {
    let mut r = Run::new(Admission::retired());
    for i in 0..10 {
        r.send(i * 20, "192.0.2.10:4000", 1, i as u16);
    }
    assert!(r.admitted.is_empty());
    assert_eq!(r.rejected.unknown_port, 10);
}

#[test]
fn the_stream_of_a_retired_port_is_kept_out_of_its_next_stream() {
    // NAT: an ended call's stream from the SRC's host, still flowing
    // when the port is given to a new call whose stream comes from
    // another port of the same host.
    let nat = StreamOrigin {
        announced_ip: Some("10.1.1.1".parse().unwrap()),
        announced_port: 4000,
        signalling: SRC_HOST.parse().unwrap(),
    };
    let mut r = Run::new(Admission::new(nat));
    for i in 0..20 {
        r.send(i * 20, "192.0.2.10:31000", 1, i as u16);
    }
    assert_eq!(r.adm.locked(), Some(a("192.0.2.10:31000")));
    let mut rej = RejectCounts::default();
    r.adm.retire(&mut rej);
    r.send(400, "192.0.2.10:31002", 2, 1);
    let stale = r.adm.stale_sources().to_vec();
    assert_eq!(stale, vec![a("192.0.2.10:31000"), a("192.0.2.10:31002")]);
    // The new call: the old stream goes on, the new one starts later.
    let mut r2 = Run::new(Admission::new(nat).excluding(&stale, &[]));
    for i in 0..50 {
        r2.send(1000 + i * 20, "192.0.2.10:31000", 1, 20 + i as u16);
        if i >= 5 {
            r2.send(1000 + i * 20 + 5, "192.0.2.10:32000", 3, i as u16);
        }
    }
    assert_eq!(r2.adm.locked(), Some(a("192.0.2.10:32000")));
    assert!(r2.admitted.iter().all(|x| x.1 == a("192.0.2.10:32000")));
    assert_eq!(r2.admitted.len(), 45);
    assert_eq!(r2.rejected.unknown_port, 50);
    // The announced address is taken even if it was heard before.
    let o = origin();
    let mut r3 = Run::new(Admission::new(o).excluding(&[a("192.0.2.10:4000")], &[]));
    r3.send(0, "192.0.2.10:4000", 1, 1);
    assert_eq!(r3.admitted.len(), 1);
}

#[test]
fn a_new_offer_with_another_address_starts_over_the_same_keeps_the_lock() {
    let mut r = Run::new(Admission::new(origin()));
    r.send(0, "192.0.2.10:4000", 1, 1);
    let mut rej = RejectCounts::default();
    r.adm.set_origin(origin(), &mut rej);
    assert_eq!(r.adm.locked(), Some(a("192.0.2.10:4000")));
    let moved = StreamOrigin {
        announced_port: 4100,
        ..origin()
    };
    r.adm.set_origin(moved, &mut rej);
    assert_eq!(r.adm.locked(), None);
    r.send(20, "192.0.2.10:4000", 1, 2);
    r.send(40, "192.0.2.10:4100", 1, 3);
    assert_eq!(r.seqs_from("192.0.2.10:4100"), vec![3]);
    assert_eq!(r.adm.locked(), Some(a("192.0.2.10:4100")));
    // The old address's packet (the SRC had not moved yet) was the
    // stream's: admitted; after the new address took over, refused.
    assert_eq!(r.seqs_from("192.0.2.10:4000"), vec![1, 2]);
    r.send(60, "192.0.2.10:4000", 1, 4);
    assert_eq!(r.rejected.source, 1);
}

/// An SRC that goes on sending from the stream's old address for 100 ms
/// after its re-offer moved it (before it has our answer, or a moment
/// longer) loses nothing: before, those packets were a candidate's, held,
/// and refused when the new address won (80 ms lost). Another source in
/// the meantime is still only a candidate.
#[test]
fn a_moved_stream_keeps_its_old_source_until_the_new_one_comes() {
    let mut r = Run::new(Admission::new(origin()));
    for i in 0..10u16 {
        r.send(i64::from(i) * 20, "192.0.2.10:4000", 1, i);
    }
    let moved = StreamOrigin {
        announced_port: 4100,
        ..origin()
    };
    let mut rej = RejectCounts::default();
    r.adm.set_origin(moved, &mut rej);
    for i in 10..15u16 {
        r.send(i64::from(i) * 20, "192.0.2.10:4000", 1, i);
        r.send(i64::from(i) * 20 + 3, "192.0.2.10:6666", 9, i);
    }
    for i in 15..30u16 {
        r.send(i64::from(i) * 20, "192.0.2.10:4100", 1, i);
    }
    assert_eq!(r.seqs_from("192.0.2.10:4000"), (0..15).collect::<Vec<_>>());
    assert_eq!(r.seqs_from("192.0.2.10:4100"), (15..30).collect::<Vec<_>>());
    assert!(r.seqs_from("192.0.2.10:6666").is_empty());
    assert_eq!(r.rejected.source, 5);
}

#[test]
fn held_packets_are_bounded() {
    let o = StreamOrigin {
        announced_ip: None,
        announced_port: 0,
        signalling: SRC_HOST.parse().unwrap(),
    };
    let mut r = Run::new(Admission::new(o));
    // A flood of in-sequence packets in no time, from many ports.
    for port in 0..10u16 {
        for i in 0..1000u16 {
            r.send(0, &format!("192.0.2.10:{}", 10_000 + port), 1, i);
        }
    }
    assert!(r.adm.held() <= MAX_CANDIDATES * MAX_HELD);
    assert!(r.admitted.is_empty());
    assert_eq!(r.rejected.source + r.adm.held() as u64, 10_000);
}

#[test]
fn ipv4_mapped_sources_match_ipv4_announcements() {
    let mut r = Run::new(Admission::new(origin()));
    r.send(0, "[::ffff:192.0.2.10]:4000", 1, 1);
    assert_eq!(r.admitted.len(), 1);
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    /// Who sends: 0 the announced address, 1-2 other ports of the SRC's
    /// host, 3 another host.
    const SOURCES: [&str; 4] = [
        "192.0.2.10:4000",
        "192.0.2.10:5000",
        "192.0.2.10:5002",
        "198.51.100.9:4000",
    ];

    #[derive(Debug, Clone)]
    struct Dgram {
        gap_ms: i64,
        src: usize,
        ssrc: u32,
        seq_step: u16,
        kind: u8,
    }

    fn dgram() -> impl Strategy<Value = Dgram> {
        (0i64..60, 0usize..4, 1u32..4, 0u16..8, 0u8..10).prop_map(
            |(gap_ms, src, ssrc, seq_step, kind)| Dgram {
                gap_ms,
                src,
                ssrc,
                seq_step,
                kind,
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever arrives: every datagram is admitted once, rejected
        /// or still held (nothing lost, nothing doubled); nothing from
        /// another host gets in; once the announced address is in,
        /// nothing else is; held memory stays bounded; each source's
        /// datagrams reach the engine in arrival order with their own
        /// arrival times.
        #[test]
        fn admission_invariants(dgrams in proptest::collection::vec(dgram(), 1..400), nat in any::<bool>()) {
            let origin = StreamOrigin {
                announced_ip: Some(if nat { "10.1.1.1" } else { SRC_HOST }.parse().unwrap()),
                announced_port: 4000,
                signalling: SRC_HOST.parse().unwrap(),
            };
            let mut adm = Admission::new(origin);
            let mut rejected = RejectCounts::default();
            let mut admitted: Vec<(Timestamp, SocketAddr, Vec<u8>)> = Vec::new();
            let mut offered: Vec<(Timestamp, SocketAddr, Vec<u8>)> = Vec::new();
            let mut seqs = [0u16; 4];
            let mut t = 0i64;
            let mut announced_in_at = None;
            for (i, d) in dgrams.iter().enumerate() {
                t += d.gap_ms * 1000;
                seqs[d.src] = seqs[d.src].wrapping_add(d.seq_step);
                let mut bytes = match d.kind {
                    0 => vec![0x80, 200, 0, 1, 0, 0, 0, 1],
                    1 => b"not rtp at all".to_vec(),
                    _ => rtp(d.ssrc, seqs[d.src]),
                };
                // Unique payload: which datagram this is.
                bytes.extend_from_slice(&(i as u32).to_be_bytes());
                let src = a(SOURCES[d.src]);
                let ts = Timestamp::from_micros(t);
                offered.push((ts, src, bytes.clone()));
                adm.offer(ts, src, &bytes, &mut rejected, &mut |ts, s, b| {
                    admitted.push((ts, s, b.to_vec()))
                });
                prop_assert!(adm.held() <= MAX_CANDIDATES * MAX_HELD);
                if !nat && announced_in_at.is_none()
                    && admitted.iter().any(|x| x.1 == a(SOURCES[0]))
                {
                    announced_in_at = Some(admitted.len());
                }
            }
            prop_assert_eq!(
                admitted.len() as u64 + rejected.total() + adm.held() as u64,
                offered.len() as u64
            );
            prop_assert_eq!(rejected.unknown_port, 0);
            prop_assert!(admitted.iter().all(|x| x.1 != a(SOURCES[3])));
            if let Some(k) = announced_in_at {
                prop_assert!(admitted[k..].iter().all(|x| x.1 == a(SOURCES[0])));
            }
            // Each admitted datagram was offered, once, with its time;
            // the RTP of each source in arrival order (RTCP and other
            // datagrams of the locked source pass at once, also while
            // packets of a new SSRC are held).
            let mut last_index = [None::<usize>; 4];
            let mut seen = std::collections::HashSet::new();
            for (ts, src, b) in &admitted {
                let idx = u32::from_be_bytes(b[b.len() - 4..].try_into().unwrap()) as usize;
                prop_assert_eq!(&offered[idx], &(*ts, *src, b.clone()));
                prop_assert!(seen.insert(idx), "datagram {} admitted twice", idx);
                if dgrams[idx].kind < 2 {
                    continue;
                }
                let s = SOURCES.iter().position(|x| a(x) == *src).unwrap();
                prop_assert!(last_index[s].is_none_or(|l| l < idx), "order of {}", src);
                last_index[s] = Some(idx);
            }
        }
    }
}

#[test]
fn reordered_packets_in_a_run_are_held_not_lost() {
    let o = StreamOrigin {
        announced_ip: None,
        announced_port: 0,
        signalling: SRC_HOST.parse().unwrap(),
    };
    let mut r = Run::new(Admission::new(o));
    let seqs = [1u16, 3, 2, 4, 5, 6, 8, 7, 9, 10, 11, 12];
    for (i, s) in seqs.iter().enumerate() {
        r.send(i as i64 * 20, "192.0.2.10:31000", 5, *s);
    }
    assert_eq!(r.seqs_from("192.0.2.10:31000"), seqs.to_vec());
}

/// A port given to a new call before its cooling-off ended (a small
/// `rtp_ports`), by an SRC that sends every stream from one address (SIPp):
/// the ended call's last packets, arriving after the new call's offer, go
/// on from its newest sequence number under its SSRC, from the new call's
/// announced address. They are `unknown_port`, not the new call's first
/// audio (60 ms of the ended call at the new one's start, all of it
/// shifted); the new stream under its own SSRC is admitted from its first
/// packet, and so is a new stream that happens to reuse the old SSRC with
/// its own numbering (SIPp playing the same capture again).
#[test]
fn an_ended_streams_continuation_stays_out_of_the_ports_next_stream() {
    let o = origin();
    let src = "192.0.2.10:4000";
    let mut r = Run::new(Admission::new(o));
    for i in 0..50 {
        r.send(i * 20, src, 7, 1000 + i as u16);
    }
    let mut rej = RejectCounts::default();
    r.adm.retire(&mut rej);
    let stale = r.adm.stale_sources().to_vec();
    let ended = r.adm.ended_streams().to_vec();
    assert_eq!(ended.len(), 1);
    let mut r2 = Run::new(Admission::new(o).excluding(&stale, &ended));
    for i in 50..53 {
        r2.send(1000 + i * 20, src, 7, 1000 + i as u16);
    }
    for i in 0..20 {
        r2.send(1100 + i * 20, src, 8, i as u16);
    }
    assert_eq!(r2.rejected.unknown_port, 3);
    assert_eq!(r2.admitted.len(), 20);
    assert!(r2.admitted.iter().all(|x| x.2 == 8));
    // The same SSRC with a numbering of its own (not the next ones).
    let mut r3 = Run::new(Admission::new(o).excluding(&stale, &ended));
    for i in 0..20 {
        r3.send(2000 + i * 20, src, 7, 500 + i as u16);
    }
    assert_eq!(r3.admitted.len(), 20);
    assert_eq!(r3.rejected.unknown_port, 0);
}

/// A re-offer that moves a locked stream to another source port, the SRC
/// switching the moment it has our 200: its first packets from the new
/// port come before the media thread has the new origin (refused,
/// counted), and are admitted after all, in order, ahead of the first
/// packet the new origin admits (before, 2 packets were lost at every
/// such move). Packets of a source no re-offer names stay refused.
#[test]
fn packets_from_a_new_port_just_before_its_re_offer_are_not_lost() {
    let o = origin();
    let mut r = Run::new(Admission::new(o));
    for i in 0..10 {
        r.send(i * 20, "192.0.2.10:4000", 1, i as u16);
    }
    // The switch: two packets from :4010 before the re-offer reaches us.
    r.send(200, "192.0.2.10:4010", 1, 10);
    r.send(220, "192.0.2.10:4010", 1, 11);
    assert_eq!(r.rejected.source, 2);
    let moved = StreamOrigin {
        announced_port: 4010,
        ..o
    };
    let mut rej = RejectCounts::default();
    r.adm.set_origin(moved, &mut rej);
    r.send(240, "192.0.2.10:4010", 1, 12);
    assert_eq!(r.adm.locked(), Some(a("192.0.2.10:4010")));
    assert_eq!(r.seqs_from("192.0.2.10:4010"), vec![10, 11, 12]);
    // Another source, never named: refused for good.
    r.send(260, "192.0.2.10:4999", 1, 13);
    r.send(280, "192.0.2.10:4010", 1, 13);
    assert!(!r.admitted.iter().any(|x| x.1 == a("192.0.2.10:4999")));
}
