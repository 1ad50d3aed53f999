//! Every capture of the public corpus (`../shared/corpus`, see its MANIFEST.tsv)
//! goes through the real `pbx-edge import`, and the outcome is asserted exactly:
//! how many recordings, and for each one its Call-ID, caller and callee, end
//! reason, sample rate, and per channel the codecs, packet counts, SSRCs, DTMF
//! digits and whether the channel carries sound; plus every number of the
//! summary line. For captures whose calls are *not* recorded, the summary
//! must say why (RTP of no known call, calls without media).
//!
//! The second half decodes the G.711 legs of loss-free captures independently
//! (tshark extracts the payloads, sox decodes them) and checks that each
//! recorded channel holds exactly those samples, each packet at
//! `p0 + (ts - ts0)`, and silence where comfort noise was sent.
//!
//! Packet numbers below come from tshark, run once by hand:
//! `tshark -r FILE -q -z rtp,streams` (Pkts column). The recording's `packets`
//! counts audio and comfort-noise packets; telephone-event packets are counted
//! apart in `dtmf_packets`, so `packets + dtmf_packets` = tshark's Pkts.
//!
//! Fields that a known engine bug gets wrong are left unchecked here (`None`)
//! and asserted with their correct value in the `#[ignore]`d tests at the end
//! (`cargo test --test corpus -- --ignored`), which fail until the bug is fixed.
//!
//! The corpus is never copied into the repository (licenses); without it every
//! test prints a note and passes. Without tshark or sox the decode tests do the same.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::Value;

// ------------------------------------------------------------------ expectations

/// What a channel sounds like in the WAV.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sound {
    /// Every sample is 0.
    Silent,
    /// Some non-zero samples, but the peak stays below 1000 (line noise).
    Faint,
    /// Peak of 1000 or more.
    Audible,
}

fn sound_of(x: &[i16]) -> Sound {
    let peak = x.iter().map(|s| i32::from(*s).abs()).max().unwrap_or(0);
    match peak {
        0 => Sound::Silent,
        1..=999 => Sound::Faint,
        _ => Sound::Audible,
    }
}

#[derive(Debug, Clone)]
struct Chan {
    codecs: &'static [&'static str],
    packets: u64,
    comfort_noise: u64,
    dtmf_packets: u64,
    /// `None`: not checked here (a known engine bug, see `known_engine_bugs`).
    lost: Option<u64>,
    late: Option<u64>,
    ssrcs: &'static [u32],
    sound: Sound,
}

/// A channel that received RTP.
fn leg(codecs: &'static [&'static str], packets: u64, ssrcs: &'static [u32], sound: Sound) -> Chan {
    Chan {
        codecs,
        packets,
        comfort_noise: 0,
        dtmf_packets: 0,
        lost: Some(0),
        late: Some(0),
        ssrcs,
        sound,
    }
}

/// A channel no RTP was received for.
fn no_rtp() -> Chan {
    leg(&[], 0, &[], Sound::Silent)
}

#[derive(Debug, Clone)]
struct Rec {
    call_id: &'static str,
    /// from.number (the caller) and to.number (the callee).
    from: &'static str,
    to: &'static str,
    end_reason: &'static str,
    rate: u32,
    ch: [Chan; 2],
    /// (channel, digit, duration_ms), in order.
    dtmf: &'static [(u64, &'static str, i64)],
    /// Substrings that must each appear in some warning.
    warnings: &'static [&'static str],
}

struct Case {
    file: &'static str,
    recs: Vec<Rec>,
    /// Every number of the summary line, by its label; labels not listed must
    /// not appear.
    summary: &'static [(&'static str, u64)],
}

// ------------------------------------------------------------------ running

/// The corpus file, or None (with a note) when the corpus is not here.
fn corpus_file(name: &str) -> Option<PathBuf> {
    let dir = corpus()?;
    let f = dir.join(name);
    assert!(f.exists(), "{} is listed but missing", f.display());
    Some(f)
}

struct Imported {
    _dir: tempfile::TempDir,
    summary: String,
    recs: Vec<Recording>,
}

fn run_import(file: &Path) -> Imported {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let o = import(&[file], &out, &["--agent-id", "corpus-test", "--quiet"]);
    let stdout = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "import of {} failed: {}\n{}",
        file.display(),
        String::from_utf8_lossy(&o.stderr),
        stdout
    );
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("imported "))
        .unwrap_or_else(|| panic!("no summary line in {stdout:?}"))
        .to_string();
    let recs = recordings(&out);
    Imported {
        _dir: dir,
        summary,
        recs,
    }
}

/// `imported 1/1 files: 84 packets, 1 calls, 1 recordings written (1 calls
/// without media); not used: 2 RTCP (ignored)` → {"files read": 1, "files": 1,
/// "packets": 84, "calls": 1, "recordings written": 1, "calls without media": 1,
/// "RTCP (ignored)": 2}.
fn parse_summary(line: &str) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    let rest = line
        .strip_prefix("imported ")
        .unwrap_or_else(|| panic!("summary {line:?}"));
    let (files, rest) = rest
        .split_once(" files: ")
        .unwrap_or_else(|| panic!("summary {line:?}"));
    let (read, total) = files
        .split_once('/')
        .unwrap_or_else(|| panic!("summary {line:?}"));
    m.insert("files read".to_string(), read.parse().expect("files read"));
    m.insert("files".to_string(), total.parse().expect("files"));
    let rest = rest
        .replace("RTCP (ignored)", "RTCP-ignored")
        .replace("; not used: ", ", ")
        .replace(" (", ", ")
        .replace(')', "");
    for item in rest.split(", ") {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let (n, label) = item
            .split_once(' ')
            .unwrap_or_else(|| panic!("summary item {item:?} in {line:?}"));
        let label = label.replace("RTCP-ignored", "RTCP (ignored)");
        let n: u64 = n
            .parse()
            .unwrap_or_else(|_| panic!("summary item {item:?} in {line:?}"));
        m.insert(label, n);
    }
    m
}

fn str_of<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut x = v;
    for p in path {
        x = &x[*p];
    }
    x.as_str().unwrap_or("<missing>")
}

fn u64_of(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(u64::MAX)
}

/// Import the case's capture and compare everything; all mismatches are
/// reported at once.
fn check_case(case: &Case) {
    let Some(file) = corpus_file(case.file) else {
        return;
    };
    let got = run_import(&file);
    let mut bad: Vec<String> = Vec::new();
    let mut expect = |ok: bool, what: String| {
        if !ok {
            bad.push(what);
        }
    };

    // Summary line.
    let sum = parse_summary(&got.summary);
    let mut want: BTreeMap<String, u64> = case
        .summary
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
    want.insert("files read".into(), 1);
    want.insert("files".into(), 1);
    expect(
        sum == want,
        format!(
            "summary: got {sum:?}\n      want {want:?}\n      line {:?}",
            got.summary
        ),
    );

    // Recordings.
    expect(
        got.recs.len() == case.recs.len(),
        format!(
            "{} recordings, want {}: {:?}",
            got.recs.len(),
            case.recs.len(),
            got.recs
                .iter()
                .map(|r| r.json["call_id"].to_string())
                .collect::<Vec<_>>()
        ),
    );
    for w in &case.recs {
        let Some(r) = got.recs.iter().find(|r| r.json["call_id"] == w.call_id) else {
            expect(false, format!("no recording for call {}", w.call_id));
            continue;
        };
        let j = &r.json;
        let c = w.call_id;
        expect(
            str_of(j, &["from", "number"]) == w.from,
            format!("{c}: from.number {:?}, want {:?}", j["from"], w.from),
        );
        expect(
            str_of(j, &["to", "number"]) == w.to,
            format!("{c}: to.number {:?}, want {:?}", j["to"], w.to),
        );
        expect(
            str_of(j, &["end_reason"]) == w.end_reason,
            format!("{c}: end_reason {}, want {}", j["end_reason"], w.end_reason),
        );
        expect(
            r.rate == w.rate && j["audio"]["sample_rate"].as_u64() == Some(u64::from(w.rate)),
            format!(
                "{c}: sample rate wav {} json {}, want {}",
                r.rate, j["audio"]["sample_rate"], w.rate
            ),
        );
        expect(
            r.ch[0].len() == r.ch[1].len(),
            format!("{c}: channel lengths differ"),
        );
        let chans = j["channels"].as_array().cloned().unwrap_or_default();
        expect(
            chans.len() == 2,
            format!("{c}: {} channels in json", chans.len()),
        );
        for (i, wc) in w.ch.iter().enumerate() {
            let Some(jc) = chans.get(i) else { continue };
            let party = if i == 0 { "caller" } else { "callee" };
            expect(
                jc["index"].as_u64() == Some(i as u64) && jc["party"] == party,
                format!("{c} ch{i}: index/party {} {}", jc["index"], jc["party"]),
            );
            let codecs: Vec<&str> = jc["codecs"]
                .as_array()
                .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
                .unwrap_or_default();
            expect(
                codecs == wc.codecs,
                format!("{c} ch{i}: codecs {codecs:?}, want {:?}", wc.codecs),
            );
            expect(
                jc["codec"].as_str() == Some(wc.codecs.first().copied().unwrap_or("")),
                format!(
                    "{c} ch{i}: codec {}, want the first of {:?}",
                    jc["codec"], wc.codecs
                ),
            );
            for (key, want) in [
                ("packets", Some(wc.packets)),
                ("comfort_noise_packets", Some(wc.comfort_noise)),
                ("dtmf_packets", Some(wc.dtmf_packets)),
                ("duplicates", Some(0)),
                ("lost", wc.lost),
                ("late", wc.late),
            ] {
                if let Some(want) = want {
                    let g = u64_of(jc, key);
                    expect(g == want, format!("{c} ch{i}: {key} {g}, want {want}"));
                }
            }
            let ssrcs: Vec<u64> = jc["ssrcs"]
                .as_array()
                .map(|a| a.iter().filter_map(|x| x.as_u64()).collect())
                .unwrap_or_default();
            let want_ssrcs: Vec<u64> = wc.ssrcs.iter().map(|s| u64::from(*s)).collect();
            expect(
                ssrcs == want_ssrcs,
                format!("{c} ch{i}: ssrcs {ssrcs:x?}, want {want_ssrcs:x?}"),
            );
            let s = sound_of(&r.ch[i]);
            expect(
                s == wc.sound,
                format!("{c} ch{i}: channel is {s:?}, want {:?}", wc.sound),
            );
        }
        // DTMF
        let dtmf: Vec<(u64, String, i64)> = j["dtmf"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|d| {
                        (
                            d["channel"].as_u64().unwrap_or(99),
                            d["digit"].as_str().unwrap_or("?").to_string(),
                            d["duration_ms"].as_i64().unwrap_or(-1),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let want_dtmf: Vec<(u64, String, i64)> = w
            .dtmf
            .iter()
            .map(|(ch, d, ms)| (*ch, d.to_string(), *ms))
            .collect();
        expect(
            dtmf == want_dtmf,
            format!("{c}: dtmf {dtmf:?}, want {want_dtmf:?}"),
        );
        let at: Vec<i64> = j["dtmf"]
            .as_array()
            .map(|a| a.iter().filter_map(|d| d["at_ms"].as_i64()).collect())
            .unwrap_or_default();
        expect(
            at.windows(2).all(|p| p[0] < p[1]),
            format!("{c}: dtmf at_ms not increasing: {at:?}"),
        );
        let warnings: Vec<&str> = j["warnings"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
            .unwrap_or_default();
        for w in w.warnings {
            expect(
                warnings.iter().any(|x| x.contains(w)),
                format!("{c}: no warning containing {w:?} in {warnings:?}"),
            );
        }
    }
    assert!(
        bad.is_empty(),
        "{}: {} mismatches:\n  {}",
        case.file,
        bad.len(),
        bad.join("\n  ")
    );
}

// ------------------------------------------------------------------ the corpus

/// Every capture in the corpus has a test below: a new file fails this test
/// until its outcome is written down.
const CAPTURES: &[&str] = &[
    "16_bit_48khz_60_fec_dropped.pcapng",
    "Asterisk_ZFONE_XLITE.pcap",
    "FAX-Call-t38-CA-TDM-SIP-FB-1.pcap",
    "SIP_CALL_RTP_G711.pcap",
    "SIP_DTMF2.cap",
    "WebRTC_PCMA_p2p_SDES_Call_1.pcap",
    "codec-negotiation.pcap",
    "invite-opus-bye.pcap",
    "marseillaise-srtp.pcap",
    "opus-2013785496.pcap",
    "register-invite-reinvite-bye.pcap",
    "rtp-protocol.pcap",
    "sip-rtp-g711.pcap",
    "sip-rtp-g722.pcap",
    "sip-rtp-g729a.pcap",
    "sip-rtp-opus-hybrid.pcap",
    "sip_ipv4_tcp.pcap",
    "sip_ipv4_tcp_fragmented.pcap",
    "sipp_uac_Media_DTMF_Speex.pcap",
    "srtp_g722_DTMF_srcport_29394.pcap",
];

#[test]
fn every_capture_has_a_case() {
    let Some(dir) = corpus() else { return };
    let mut found: Vec<String> = std::fs::read_dir(&dir)
        .expect("read corpus dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".pcap") || n.ends_with(".pcapng") || n.ends_with(".cap"))
        .collect();
    found.sort();
    let mut listed: Vec<String> = CAPTURES.iter().map(|s| s.to_string()).collect();
    listed.sort();
    assert_eq!(
        found, listed,
        "corpus captures vs. the cases in tests/corpus.rs"
    );
}

use Sound::*;

// SIP over TCP, one call 101 -> 201. INVITE from 10.33.6.100 offers
// 10.33.6.100:6000, 200 OK answers 10.33.6.101:6050.
// tshark rtp,streams: 10.33.6.100:6000 0x5A3361B3 24 pkts (PCMA + 4 CN),
// 10.33.6.101:6050 0x42F433D4 42 pkts (PCMA + 2 CN), no loss. The caller's
// leg is low-level line noise (peak 344), the callee speaks.
// 2 RTCP packets (tshark: -Y rtcp).
#[test]
fn sip_ipv4_tcp() {
    check_case(&Case {
        file: "sip_ipv4_tcp.pcap",
        recs: vec![Rec {
            call_id: "158936656982201062716@10.33.6.100",
            from: "101",
            to: "201",
            end_reason: "bye",
            rate: 8000,
            ch: [
                Chan {
                    comfort_noise: 4,
                    ..leg(&["PCMA"], 24, &[0x5A33_61B3], Faint)
                },
                Chan {
                    comfort_noise: 2,
                    ..leg(&["PCMA"], 42, &[0x42F4_33D4], Audible)
                },
            ],
            dtmf: &[],
            warnings: &[],
        }],
        summary: &[
            ("packets", 84),
            ("calls", 1),
            ("recordings written", 1),
            ("RTCP (ignored)", 2),
        ],
    });
}

// SIP/UDP through a proxy (200.57.7.195/.204) and a media relay. Caller's SDP:
// 200.57.7.196:40376, callee's: 200.57.7.204:8000. tshark rtp,streams (with
// -o rtp.heuristic_rtp:TRUE): .196:40376 0x58F33DEA 891 pkts, .204:8000
// 0xD2BD4E3E 548 pkts; the relay's second hop carries the same SSRCs between
// .196:40378 and .199:4800 (891 + 548) — addresses no SDP announced, so those
// 1439 copies plus 6 packets .202:30000 -> .196:40362 (before the second,
// unanswered INVITE 12015624, whose SDP says port 40360) are the 1445 "RTP
// of no known call". The second INVITE gets only 100/180: a call without
// media. No BYE: the call ends with the capture. 28 RTCP (26 tshark dissects
// through SDP + 2 on relay ports), 657 other UDP and 198 TCP segments are noise.
#[test]
fn sip_call_rtp_g711() {
    check_case(&Case {
        file: "SIP_CALL_RTP_G711.pcap",
        recs: vec![Rec {
            call_id: "12013223@200.57.7.195",
            from: "",
            to: "francisco",
            end_reason: "capture_end",
            rate: 8000,
            ch: [
                leg(&["PCMA"], 891, &[0x58F3_3DEA], Audible),
                // the relayed stream's timestamps run ~0.3 s ahead of
                // arrival over 24 s: the clock follows arrival
                leg(&["PCMA"], 548, &[0xD2BD_4E3E], Audible),
            ],
            dtmf: &[],
            warnings: &[],
        }],
        summary: &[
            ("packets", 4269),
            ("calls", 2),
            ("recordings written", 1),
            ("calls without media", 1),
            ("RTP of no known call", 1445),
            ("RTCP (ignored)", 28),
            ("other UDP", 657),
            ("other TCP", 198),
        ],
    });
}

// 192.168.105.110 registers lines 2502 and 2504 at the proxy .105; INVITE
// 5514 is refused with 603 (a call without media); INVITE 25672 (2502 ->
// 2504) has no SDP, the 200 OK offers .110:4376 (callee), the ACK answers
// .110:4374 (caller). tshark rtp,streams shows two flows and no SIP party
// sends to .110:4374 or from .110:4376:
//   .110:4374 -> .172:4376 0x9A7B5382 665 pkts, 2 lost (sent by the caller's address)
//   .172:4376 -> .110:4376 0x5711BF84 666 pkts = 631 PCMA + 35 telephone-event
//                                     (sent to the callee's address)
// By signalling both are the caller's audio. The engine records the first
// (0x9A7B5382) on channel 0 and counts the 631 audio packets of the other as
// copies; the digits of the second flow still count for the caller. The
// callee sent nothing: channel 1 is silent. NOTE: the two flows do not carry
// the same audio (0x9A7B5382 peaks at RMS 115 per packet, 0x5711BF84 carries
// speech up to RMS 6690 after the digits), so the kept channel is near silence.
// DTMF (tshark -Y rtpevent -T fields -e rtpevent.event_id): 6 7 8 9 1 2 3,
// each ending at duration 960 = 120 ms.
#[test]
fn sip_dtmf2() {
    check_case(&Case {
        file: "SIP_DTMF2.cap",
        recs: vec![Rec {
            call_id: "25672@192.168.105.110",
            from: "2502",
            to: "2504",
            end_reason: "capture_end",
            rate: 8000,
            ch: [
                Chan {
                    dtmf_packets: 35,
                    // The flow sent to the callee's announced address
                    // (0x5711BF84, 666 packets, the speech and the digits)
                    // wins over the one only recognised by its source
                    // (0x9A7B5382), which gets the 2 packets sent before the
                    // other started.
                    lost: Some(0),
                    ..leg(&["PCMA"], 668, &[0x9A7B_5382, 0x5711_BF84], Audible)
                },
                no_rtp(),
            ],
            dtmf: &[
                (0, "6", 120),
                (0, "7", 120),
                (0, "8", 120),
                (0, "9", 120),
                (0, "1", 120),
                (0, "2", 120),
                (0, "3", 120),
            ],
            warnings: &["no RTP was received from this party"],
        }],
        summary: &[
            ("packets", 1360),
            ("calls", 2),
            ("recordings written", 1),
            ("calls without media", 1),
            ("RTP copies of an already recorded stream", 663),
        ],
    });
}

// One call with 100rel/PRACK, INVITE from 10.33.6.101 (SDP :6040), answer
// 10.33.6.100:6020. tshark rtp,streams: .101:6040 0x06C156FD 201 pkts
// (196 PCMA + 5 CN), .100:6020 0x44C61AFB 47 pkts (39 PCMA + 8 CN), no loss.
#[test]
fn rtp_protocol() {
    check_case(&Case {
        file: "rtp-protocol.pcap",
        recs: vec![Rec {
            call_id: "1907983263271201083544@10.33.6.101",
            from: "MP114.FXS1",
            to: "101",
            end_reason: "bye",
            rate: 8000,
            ch: [
                Chan {
                    comfort_noise: 5,
                    ..leg(&["PCMA"], 201, &[0x06C1_56FD], Audible)
                },
                Chan {
                    comfort_noise: 8,
                    ..leg(&["PCMA"], 47, &[0x44C6_1AFB], Audible)
                },
            ],
            dtmf: &[],
            warnings: &[],
        }],
        summary: &[
            ("packets", 259),
            ("calls", 1),
            ("recordings written", 1),
            ("RTCP (ignored)", 2),
        ],
    });
}

// Two SIPp calls, sipp@10.0.2.20 -> test@10.0.2.15, caller's SDP recvonly,
// callee's sendonly: media flows only from the callee (10.0.2.15) to the
// caller, so channel 0 is silent and channel 1 carries it.
// tshark rtp,streams: 10.0.2.15:27942 0x343DA99B PCMU 425, 10.0.2.15:28102
// 0x343FFA34 PCMA 414, no loss. The first call ends with BYE, the second with
// the capture. 3 other UDP: SIPp's media thread talking to itself (two 5-byte
// datagrams 27942->27942 and 28102->28102, one "RTP version 3" packet).
#[test]
fn sip_rtp_g711() {
    check_case(&Case {
        file: "sip-rtp-g711.pcap",
        recs: vec![
            Rec {
                call_id: "1-1966@10.0.2.20",
                from: "sipp",
                to: "test",
                end_reason: "bye",
                rate: 8000,
                ch: [no_rtp(), leg(&["PCMU"], 425, &[0x343D_A99B], Audible)],
                dtmf: &[],
                warnings: &["channel 0 (caller): no RTP was received"],
            },
            Rec {
                call_id: "1-1968@10.0.2.20",
                from: "sipp",
                to: "test",
                end_reason: "capture_end",
                rate: 8000,
                ch: [no_rtp(), leg(&["PCMA"], 414, &[0x343F_FA34], Audible)],
                dtmf: &[],
                warnings: &["channel 0 (caller): no RTP was received"],
            },
        ],
        summary: &[
            ("packets", 852),
            ("calls", 2),
            ("recordings written", 2),
            ("other UDP", 3),
        ],
    });
}

// Same SIPp setup with G.722 (PT 9, 8 kHz RTP clock, 16 kHz audio): one
// direction, 10.0.2.15:17472 0x043DAABA 425 pkts. Wideband: a 16 kHz WAV.
#[test]
fn sip_rtp_g722() {
    check_case(&Case {
        file: "sip-rtp-g722.pcap",
        recs: vec![Rec {
            call_id: "1-2161@10.0.2.20",
            from: "sipp",
            to: "test",
            end_reason: "bye",
            rate: 16000,
            ch: [no_rtp(), leg(&["G722"], 425, &[0x043D_AABA], Audible)],
            dtmf: &[],
            warnings: &[],
        }],
        summary: &[
            ("packets", 433),
            ("calls", 1),
            ("recordings written", 1),
            ("other UDP", 2),
        ],
    });
}

// G.729 (PT 18), 10.0.2.15:28120 0x044559A1 425 pkts: counted, but there is
// no G.729 decoder, so the channel is silent and a warning says so.
#[test]
fn sip_rtp_g729a() {
    check_case(&Case {
        file: "sip-rtp-g729a.pcap",
        recs: vec![Rec {
            call_id: "1-24411@10.0.2.20",
            from: "sipp",
            to: "test",
            end_reason: "bye",
            rate: 8000,
            ch: [no_rtp(), leg(&["G729"], 425, &[0x0445_59A1], Silent)],
            dtmf: &[],
            warnings: &["codec G729 (payload type 18) cannot be decoded"],
        }],
        summary: &[
            ("packets", 433),
            ("calls", 1),
            ("recordings written", 1),
            ("other UDP", 2),
        ],
    });
}

/// A call whose only audio is in a codec without a decoder is as long as
/// its packets (425 of 20 ms from 10:41:21.095; the WAV ends with the
/// last packet's audio): silence for its whole length on both channels,
/// not an empty WAV (before 2026-12-07: 0 frames, `duration_ms` 0).
#[test]
fn an_undecodable_call_is_silence_as_long_as_its_packets() {
    let Some(f) = corpus_file("sip-rtp-g729a.pcap") else {
        return;
    };
    let im = run_import(&f);
    let r = &im.recs[0];
    let frames = r.ch[1].len();
    // 425 packets of 20 ms: 8.5 s (their timestamps run 8.48 s and one
    // packet's audio beyond).
    assert!(
        (8.4 * 8000.0..=8.6 * 8000.0).contains(&(frames as f64)),
        "{frames} frames"
    );
    assert!(r.ch.iter().all(|c| c.iter().all(|s| *s == 0)));
    let ms = r.json["duration_ms"].as_u64().unwrap_or(0);
    assert!((8400..=8600).contains(&ms), "duration_ms {ms}");
}

// INVITE + 200 only, opus/48000/2 PT 99, 5 RTP packets kept of a stream whose
// sequence numbers run 23845..24160 (tshark: 5 pkts, 311 lost). The TOCs are
// 0x78 (1 frame), 0x79, 0x7a (2 frames) and 0x7b twice (code 3 with
// padding); the two code-3 packets are invalid (with 8 bytes of padding the
// two CBR frames of the 4th packet would be 71.5 bytes each; the 5th's frame
// lengths do not add up either), libopus rejects them: "2 malformed RTP".
#[test]
fn sip_rtp_opus_hybrid() {
    check_case(&Case {
        file: "sip-rtp-opus-hybrid.pcap",
        recs: vec![Rec {
            call_id: "1-4237@10.0.2.20",
            from: "sipp",
            to: "test",
            end_reason: "capture_end",
            rate: 16000,
            ch: [
                no_rtp(),
                Chan {
                    lost: Some(311),
                    ..leg(&["opus"], 5, &[0x043E_EE04], Audible)
                },
            ],
            dtmf: &[],
            warnings: &[],
        }],
        summary: &[
            ("packets", 7),
            ("calls", 1),
            ("recordings written", 1),
            ("malformed RTP", 2),
        ],
    });
}

// Loopback SIPp call alice -> bob, opus PT 96; caller at :5084, callee at
// :5094. tshark: 152 pkts each way, both with SSRC 0x0EEF0001 (the channels
// are told apart by address). Every payload is the same synthetic packet
// (tshark -e rtp.payload | sort -u: fc ff fe a5 a5 ...: a CELT frame whose
// silence flag is set), so both channels are correctly all zeros.
#[test]
fn invite_opus_bye() {
    check_case(&Case {
        file: "invite-opus-bye.pcap",
        recs: vec![Rec {
            call_id: "1-3811003@127.0.0.1",
            from: "alice",
            to: "bob",
            end_reason: "bye",
            rate: 16000,
            ch: [
                leg(&["opus"], 152, &[0x0EEF_0001], Silent),
                leg(&["opus"], 152, &[0x0EEF_0001], Silent),
            ],
            dtmf: &[],
            warnings: &[],
        }],
        summary: &[("packets", 311), ("calls", 1), ("recordings written", 1)],
    });
}

// REGISTER + a loopback call: PCMU, then a re-INVITE (CSeq 2) moves the same
// ports to opus with new SSRCs. Caller at :5094, callee at :5084.
// tshark: 5094->5084 0x0A0A0001 PCMU 77 + 0x0EEF0001 opus 32 (caller),
// 5084->5094 0x0A0A0002 PCMU 77 + 0x0EEF0002 opus 32 (callee). The call
// started narrowband: the capture is read again and the call recorded at
// 16 kHz from its start (`sample_rate = "auto"`: 16000 if a leg is
// wideband); opus here is the same synthetic silence frame as in
// invite-opus-bye, the PCMU part is audible.
#[test]
fn register_invite_reinvite_bye() {
    check_case(&Case {
        file: "register-invite-reinvite-bye.pcap",
        recs: vec![Rec {
            call_id: "1-3812687@127.0.0.1",
            from: "alice",
            to: "bob",
            end_reason: "bye",
            rate: 16000,
            ch: [
                leg(&["PCMU", "opus"], 109, &[0x0A0A_0001, 0x0EEF_0001], Audible),
                leg(&["PCMU", "opus"], 109, &[0x0A0A_0002, 0x0EEF_0002], Audible),
            ],
            dtmf: &[],
            warnings: &[],
        }],
        summary: &[("packets", 230), ("calls", 1), ("recordings written", 1)],
    });
}

// Loopback call, offer 0 8 9 answered PCMU, re-INVITE switches to G.722.
// Caller :5084, callee :5094; tshark: 151 PCMU (0x0E330AF3) + 151 G.722
// (0x2D374E76) each way, the same SSRCs in both directions. Recorded at
// 16 kHz from its start (read again once the G.722 was heard).
#[test]
fn codec_negotiation() {
    check_case(&Case {
        file: "codec-negotiation.pcap",
        recs: vec![Rec {
            call_id: "1-3685341@127.0.0.1",
            from: "alice",
            to: "bob",
            end_reason: "bye",
            rate: 16000,
            ch: [
                leg(&["PCMU", "G722"], 302, &[0x0E33_0AF3, 0x2D37_4E76], Audible),
                leg(&["PCMU", "G722"], 302, &[0x0E33_0AF3, 0x2D37_4E76], Audible),
            ],
            dtmf: &[],
            warnings: &[],
        }],
        summary: &[("packets", 614), ("calls", 1), ("recordings written", 1)],
    });
}

// 10009 (192.168.10.41:64508) calls 10008 through Asterisk 192.168.10.2,
// which answers with the phone's own media address 192.168.10.40:49848.
// The first INVITE is challenged (401); the engine counts that attempt as a
// second call, ended without media. tshark: .41:64508 0xBEE0F2ED 205 pkts to
// .40 + 2 to Asterisk .2:18874 after its re-INVITE = 207, sequence numbers
// 4513..5307 so 588 lost; .40:49848 0xB72A7104 790 pkts, seq 3898 missing.
// NOTE: after the ZRTP handshake (frames 32-47, Zfone) every packet is 4
// bytes longer (UDP 184 vs 180): SRTP with a 32-bit tag, keys from ZRTP's
// Diffie-Hellman. tshark shows "SRTP Encrypted Payload". The engine decodes
// the ciphertext as PCMU: both channels are loud noise. 7 RTCP (SRTCP
// included), 11 other UDP: 10 ZRTP packets and a CRLF keep-alive.
#[test]
fn asterisk_zfone_xlite() {
    check_case(&Case {
        file: "Asterisk_ZFONE_XLITE.pcap",
        recs: vec![Rec {
            call_id: "ZDYzOWVlNjEwM2NjZTBjNzliNmM1ZTNiOGZjNWFhN2E.",
            from: "10009",
            to: "10008",
            end_reason: "bye",
            rate: 8000,
            ch: [
                Chan {
                    lost: Some(588),
                    // Plain PCMU until ZRTP switches the call to SRTP: the
                    // encrypted rest is silence, not noise.
                    ..leg(&["PCMU"], 207, &[0xBEE0_F2ED], Faint)
                },
                Chan {
                    lost: Some(1),
                    ..leg(&["PCMU"], 790, &[0xB72A_7104], Faint)
                },
            ],
            dtmf: &[],
            warnings: &["ZRTP"],
        }],
        summary: &[
            ("packets", 1042),
            // The first INVITE's 401 challenge and its retry are one call.
            ("calls", 1),
            ("recordings written", 1),
            ("RTCP (ignored)", 7),
            ("other UDP", 11),
        ],
    });
}

// Carrier capture: the call 00e9d4a5... seen on several proxy legs (44 of its
// SIP messages are the same message again on another leg), and its other
// half SD4909701... behind NAT (SDP 138.132.169.101:15580 /
// 192.168.100.219:5002, no RTP seen there: a call without media). Caller
// 10.23.1.52:16756, callee 10.35.60.100:15580. tshark needs help: a MEGACO
// SDP sets up T.38 on the callee's port, so
// `tshark --disable-protocol t38 -d udp.port==15580,rtp -q -z rtp,streams`:
//   .52:16756  0x17D90134 3147 pkts (2981 PCMA + 163 CN + 3 PT 100), 0 lost
//   .100:15580 0x0EAF0EAF 3848 pkts (3847 PCMA + 1 PT 102), 0 lost
// PT 100 is in no SIP SDP (warned, silence). The single PT 102 packet is
// event 32 (ANS, the fax answer tone, RFC 4734): not a digit. The caller's
// stream restarts its timestamps at 0 at seq 1145 (after the refused T.38
// re-INVITE) with the same SSRC and contiguous sequence numbers.
// 130 other UDP are MEGACO.
#[test]
fn fax_call_t38() {
    check_case(&Case {
        file: "FAX-Call-t38-CA-TDM-SIP-FB-1.pcap",
        recs: vec![Rec {
            call_id: "00e9d4a500e9d48-0015-0001-0000-0000@10.35.40.25",
            from: "unavailable",
            to: "061963177",
            end_reason: "bye",
            rate: 8000,
            ch: [
                Chan {
                    comfort_noise: 163,
                    // The timestamp restart at seq 1145 re-anchors the clock.
                    late: Some(0),
                    ..leg(&["PCMA"], 3147, &[0x17D9_0134], Audible)
                },
                Chan {
                    dtmf_packets: 1,
                    // `packets` counts every RTP packet, telephone events included.
                    lost: Some(0),
                    ..leg(&["PCMA"], 3848, &[0x0EAF_0EAF], Audible)
                },
            ],
            dtmf: &[],
            warnings: &["payload type 100 is not in the SDP"],
        }],
        summary: &[
            ("packets", 7217),
            ("calls", 2),
            ("recordings written", 1),
            ("calls without media", 1),
            // (The capture holds each message on several hops, the same
            // branch on each: a copy from another sender to another
            // receiver is that hop's message, not a retransmission.)
            ("SIP retransmissions", 22),
            ("other UDP", 130),
        ],
    });
}

// SIP over TCP (port 6060), many messages split across or coalesced in TCP
// segments; 37 distinct INVITE Call-IDs (tshark -d tcp.port==6060,sip -Y
// 'sip.Method==INVITE' -T fields -e sip.Call-ID | sort -u), 33 answered, no
// RTP at all in the capture: 37 calls without media, nothing recorded.
#[test]
fn sip_ipv4_tcp_fragmented() {
    check_case(&Case {
        file: "sip_ipv4_tcp_fragmented.pcap",
        recs: vec![],
        summary: &[
            ("packets", 1542),
            ("calls", 37),
            ("recordings written", 0),
            ("calls without media", 37),
            ("SIP retransmissions", 2),
        ],
    });
}

// Public-internet call +46725098830 -> 79108, no BYE. Caller's SDP
// 213.64.235.116:28832, callee's 217.214.169.162:40000. tshark rtp,streams:
// caller 0x421970FE 1144 pkts = 804 PCMA + 340 telephone-event (PT 98),
// sequence numbers 0..1143 without a gap; callee 0x93451AB2 975 PCMA, no loss.
// Digits (tshark -Y 'rtpevent.end_of_event==1' -e rtpevent.event_id -e
// rtpevent.duration): 9 8 7 6 5 11(#), durations 3280 2960 3600 11360 2880
// 3120 at 8 kHz = 410 370 450 1420 360 390 ms.
#[test]
fn sipp_uac_media_dtmf() {
    check_case(&Case {
        file: "sipp_uac_Media_DTMF_Speex.pcap",
        recs: vec![Rec {
            call_id: "wICUpfWaoQE5Q18tlxgjGQ..",
            from: "+46725098830",
            to: "79108",
            end_reason: "capture_end",
            rate: 8000,
            ch: [
                Chan {
                    dtmf_packets: 340,
                    // ENGINE BUG: reported as 340, the sequence numbers of
                    // the telephone-event packets (see known_engine_bugs)
                    lost: None,
                    ..leg(&["PCMA"], 1144, &[0x4219_70FE], Audible)
                },
                leg(&["PCMA"], 975, &[0x9345_1AB2], Audible),
            ],
            dtmf: &[
                (0, "9", 410),
                (0, "8", 370),
                (0, "7", 450),
                (0, "6", 1420),
                (0, "5", 360),
                (0, "#", 390),
            ],
            warnings: &[],
        }],
        summary: &[("packets", 2129), ("calls", 1), ("recordings written", 1)],
    });
}

// RTP-only captures (no SIP, so no call to put the media in): every RTP
// packet is "RTP of no known call" and nothing is recorded.

// Opus PT 107, 2971 packets, pcapng (capinfos -c: 2971 frames, all RTP).
#[test]
fn rtp_only_opus_fec_dropped() {
    check_case(&Case {
        file: "16_bit_48khz_60_fec_dropped.pcapng",
        recs: vec![],
        summary: &[
            ("packets", 2971),
            ("calls", 0),
            ("recordings written", 0),
            ("RTP of no known call", 2971),
        ],
    });
}

// SRTP, one flow, 11888 packets (= every frame).
#[test]
fn rtp_only_marseillaise_srtp() {
    check_case(&Case {
        file: "marseillaise-srtp.pcap",
        recs: vec![],
        summary: &[
            ("packets", 11888),
            ("calls", 0),
            ("recordings written", 0),
            ("RTP of no known call", 11888),
        ],
    });
}

// Linux cooked capture (SLL), opus + telephone-event, 765 packets.
#[test]
fn rtp_only_opus_sll() {
    check_case(&Case {
        file: "opus-2013785496.pcap",
        recs: vec![],
        summary: &[
            ("packets", 765),
            ("calls", 0),
            ("recordings written", 0),
            ("RTP of no known call", 765),
        ],
    });
}

// SRTP G.722 + telephone-event, 686 packets.
#[test]
fn rtp_only_srtp_g722() {
    check_case(&Case {
        file: "srtp_g722_DTMF_srcport_29394.pcap",
        recs: vec![],
        summary: &[
            ("packets", 686),
            ("calls", 0),
            ("recordings written", 0),
            ("RTP of no known call", 686),
        ],
    });
}

// WebRTC, signalling over TLS: tshark -o rtp.heuristic_rtp:TRUE rtp,streams
// finds 227 + 259 SRTP packets = 486; 8 SRTCP (rtcp-mux), 99 other UDP (93
// STUN + 6 DNS), 420 TCP segments with payload (TLS). The other frames (TCP
// ACKs, ICMP, ARP, STP) are not counted in the summary.
#[test]
fn rtp_only_webrtc() {
    check_case(&Case {
        file: "WebRTC_PCMA_p2p_SDES_Call_1.pcap",
        recs: vec![],
        summary: &[
            ("packets", 1425),
            ("calls", 0),
            ("recordings written", 0),
            ("RTP of no known call", 486),
            ("RTCP (ignored)", 8),
            ("other UDP", 99),
            ("other TCP", 420),
        ],
    });
}

#[test]
fn summary_parser() {
    let m = parse_summary(
        "imported 1/1 files: 4269 packets, 2 calls, 1 recordings written (1 calls without media); \
         not used: 1445 RTP of no known call, 28 RTCP (ignored), 657 other UDP",
    );
    let want: BTreeMap<String, u64> = [
        ("files read", 1),
        ("files", 1),
        ("packets", 4269),
        ("calls", 2),
        ("recordings written", 1),
        ("calls without media", 1),
        ("RTP of no known call", 1445),
        ("RTCP (ignored)", 28),
        ("other UDP", 657),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), *v))
    .collect();
    assert_eq!(m, want);
}

// ------------------------------------------------------------------ independent decode

/// One RTP packet as tshark dissected it.
#[derive(Debug, Clone)]
struct Pkt {
    src: String,
    ssrc: u32,
    seq: u16,
    ts: u32,
    pt: u8,
    payload: Vec<u8>,
}

fn unhex(s: &str) -> Vec<u8> {
    let s = s.trim();
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

/// Every RTP packet of `file`, dissected by tshark with `extra` options.
fn tshark_rtp(file: &Path, extra: &[&str]) -> Vec<Pkt> {
    let o = Command::new("tshark")
        .arg("-r")
        .arg(file)
        .args(["-o", "rtp.heuristic_rtp:TRUE"])
        .args(extra)
        .args(["-Y", "rtp", "-T", "fields", "-E", "separator=/t"])
        .args(["-e", "ip.src", "-e", "udp.srcport", "-e", "rtp.ssrc"])
        .args(["-e", "rtp.seq", "-e", "rtp.timestamp", "-e", "rtp.p_type"])
        .args(["-e", "rtp.payload"])
        .output()
        .expect("run tshark");
    assert!(o.status.success(), "tshark failed on {}", file.display());
    let text = String::from_utf8_lossy(&o.stdout);
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() < 7 {
            continue;
        }
        let num = |s: &str| -> u64 {
            let s = s.trim();
            match s.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16).unwrap_or(0),
                None => s.parse().unwrap_or(0),
            }
        };
        out.push(Pkt {
            src: format!("{}:{}", f[0], f[1]),
            ssrc: num(f[2]) as u32,
            seq: num(f[3]) as u16,
            ts: num(f[4]) as u32,
            pt: num(f[5]) as u8,
            payload: unhex(f[6]),
        });
    }
    out
}

/// G.711 bytes to linear samples, by sox.
fn sox_decode(law: &str, bytes: &[u8], tmp: &Path) -> Vec<i16> {
    let input = tmp.join(format!("in-{law}-{}.raw", bytes.len()));
    std::fs::write(&input, bytes).expect("write raw");
    let o = Command::new("sox")
        .args(["-t", law, "-r", "8000", "-c", "1"])
        .arg(&input)
        .args(["-t", "raw", "-e", "signed-integer", "-b", "16", "-L", "-"])
        .output()
        .expect("run sox");
    assert!(
        o.status.success(),
        "sox failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

/// How a leg's channel must relate to the independent decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Every packet exactly at `p0 + (ts - ts0)`, comfort noise as zeros.
    Strict,
    /// Every packet's samples intact somewhere within 0.5 s of that place;
    /// the offset may change, but only as often as the channel's `reanchors`
    /// say, and at most that many packets may be damaged.
    Tolerant,
}

struct LegSpec {
    /// Recording (by Call-ID) and channel.
    call_id: &'static str,
    channel: usize,
    /// Sender "ip:port" and SSRC of the leg (relay copies share SSRCs).
    src: &'static str,
    ssrc: u32,
    /// sox type and RTP payload type: ("ul", 0) or ("al", 8).
    law: &'static str,
    pt: u8,
    mode: Mode,
}

#[derive(Debug, Default)]
struct DecodeReport {
    audio_packets: usize,
    cn_packets: usize,
    misplaced: Vec<String>,
    damaged: Vec<u16>,
    offset_changes: Vec<(u16, i64)>,
    cn_not_silent: Vec<u16>,
    unlocatable_constant: usize,
}

fn find(hay: &[i16], needle: &[i16], from: i64, to: i64) -> Vec<i64> {
    let n = needle.len() as i64;
    let lo = from.max(0);
    let hi = to.min(hay.len() as i64 - n);
    (lo..=hi)
        .filter(|&p| hay.get(p as usize..(p + n) as usize) == Some(needle))
        .collect()
}

fn at(hay: &[i16], pos: i64, needle: &[i16]) -> bool {
    pos >= 0 && hay.get(pos as usize..pos as usize + needle.len()) == Some(needle)
}

/// Compare one leg of the capture with its channel.
fn decode_leg(pkts: &[Pkt], spec: &LegSpec, chan: &[i16], tmp: &Path) -> DecodeReport {
    let leg: Vec<&Pkt> = pkts
        .iter()
        .filter(|p| p.src == spec.src && p.ssrc == spec.ssrc)
        .collect();
    let audio: Vec<&Pkt> = leg.iter().copied().filter(|p| p.pt == spec.pt).collect();
    let mut r = DecodeReport {
        audio_packets: audio.len(),
        cn_packets: leg.iter().filter(|p| p.pt == 13).count(),
        ..DecodeReport::default()
    };
    assert!(!audio.is_empty(), "no packets for {}", spec.src);
    let all: Vec<u8> = audio.iter().flat_map(|p| p.payload.clone()).collect();
    let pcm = sox_decode(spec.law, &all, tmp);
    assert_eq!(pcm.len(), all.len(), "sox: one sample per G.711 byte");
    let mut decoded: Vec<&[i16]> = Vec::new();
    let mut i = 0;
    for p in &audio {
        decoded.push(&pcm[i..i + p.payload.len()]);
        i += p.payload.len();
    }
    let ts0 = audio[0].ts;
    let rel = |ts: u32| i64::from(ts.wrapping_sub(ts0) as i32);
    let constant = |d: &[i16]| d.windows(2).all(|w| w[0] == w[1]);

    // p0: from the first packet with some sound in it that is found intact.
    let candidates: Vec<usize> = (0..audio.len())
        .filter(|&k| !constant(decoded[k]))
        .collect();
    let mut p0 = None;
    for &k in candidates
        .iter()
        .take(if spec.mode == Mode::Strict { 1 } else { 50 })
    {
        if let Some(&pos) = find(chan, decoded[k], 0, chan.len() as i64).first() {
            p0 = Some(pos - rel(audio[k].ts));
            break;
        }
    }
    let Some(p0) = p0 else {
        r.misplaced
            .push("the first packet with sound is nowhere in the channel".into());
        return r;
    };

    let window = 4000; // 0.5 s
    let mut offset = 0i64;
    for (p, d) in audio.iter().zip(&decoded) {
        let exp = p0 + rel(p.ts);
        match spec.mode {
            Mode::Strict => {
                if !at(chan, exp, d) {
                    let near = find(chan, d, exp - window, exp + window);
                    r.misplaced.push(format!(
                        "seq {} ts {}: not at {exp}; found at offsets {:?}",
                        p.seq,
                        p.ts,
                        near.iter().map(|x| x - exp).take(3).collect::<Vec<_>>()
                    ));
                }
            }
            Mode::Tolerant => {
                if at(chan, exp + offset, d) {
                    continue;
                }
                if constant(d) {
                    r.unlocatable_constant += 1;
                    continue;
                }
                let near = find(chan, d, exp + offset - window, exp + offset + window);
                match near.iter().min_by_key(|x| (*x - exp - offset).abs()) {
                    Some(x) => {
                        offset = x - exp;
                        r.offset_changes.push((p.seq, offset));
                    }
                    None => r.damaged.push(p.seq),
                }
            }
        }
    }

    // Comfort noise: silence from its timestamp to the next packet's.
    if spec.mode == Mode::Strict {
        for (k, p) in leg.iter().enumerate() {
            if p.pt != 13 {
                continue;
            }
            let next = leg[k + 1..]
                .iter()
                .find(|q| rel(q.ts) > rel(p.ts))
                .map(|q| rel(q.ts) - rel(p.ts))
                .unwrap_or(160);
            let from = (p0 + rel(p.ts)).max(0) as usize;
            let to = ((p0 + rel(p.ts) + next).max(0) as usize).min(chan.len());
            if chan.get(from..to).is_none_or(|s| s.iter().any(|x| *x != 0)) {
                r.cn_not_silent.push(p.seq);
            }
        }
    }
    r
}

fn tools() -> bool {
    for t in ["tshark", "sox"] {
        if !have(t) {
            eprintln!("note: {t} not found; independent decode test skipped");
            return false;
        }
    }
    true
}

/// Import `file`, decode each leg independently and compare; all problems of
/// all legs are reported at once.
fn check_decode(file: &str, tshark_extra: &[&str], legs: &[LegSpec]) {
    let bad = decode_problems(file, tshark_extra, legs);
    assert!(bad.is_empty(), "{file}:\n  {}", bad.join("\n  "));
}

/// The problems [`check_decode`] reports (none without the corpus or tools).
fn decode_problems(file: &str, tshark_extra: &[&str], legs: &[LegSpec]) -> Vec<String> {
    let Some(path) = corpus_file(file) else {
        return Vec::new();
    };
    if !tools() {
        return Vec::new();
    }
    let got = run_import(&path);
    let pkts = tshark_rtp(&path, tshark_extra);
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut bad = Vec::new();
    for spec in legs {
        let rec = by_call_id(&got.recs, spec.call_id);
        assert_eq!(rec.rate, 8000, "G.711 call recorded at 8 kHz");
        let chj = &rec.json["channels"][spec.channel];
        let reanchors = chj["reanchors"].as_u64().unwrap_or(0) as usize;
        // Offset corrections the timeline made (and said it made): a leg with
        // any is checked as Tolerant, each correction allowing one offset
        // change and the packets it was spread over (1 in 256).
        let corrections = chj["timing_corrections"].as_u64().unwrap_or(0) as usize;
        let spread: usize = chj["timing_log"]
            .as_array()
            .map(|l| {
                l.iter()
                    .map(|c| {
                        let n = c["samples"].as_i64().unwrap_or(0).unsigned_abs() as usize;
                        if c["spread"] == true {
                            n * 256 / 160 + 2
                        } else {
                            1
                        }
                    })
                    .sum()
            })
            .unwrap_or(0);
        // Interpolated stretches (a drift followed for a while): each 20 ms
        // of it may hold a packet that is not bit for bit the decoded one.
        let resampled = chj["resampled_ms"].as_u64().unwrap_or(0) as usize;
        let spread = spread + resampled.div_ceil(20);
        let mode = if corrections > 0 || resampled > 0 {
            Mode::Tolerant
        } else {
            spec.mode
        };
        let spec = &LegSpec { mode, ..*spec };
        let r = decode_leg(&pkts, spec, &rec.ch[spec.channel], tmp.path());
        let name = format!(
            "{} ch{} ({} ssrc {:#010x}, {} audio + {} CN packets, {:?})",
            spec.call_id,
            spec.channel,
            spec.src,
            spec.ssrc,
            r.audio_packets,
            r.cn_packets,
            spec.mode
        );
        eprintln!(
            "{name}: misplaced {}, damaged {}, offset changes {:?}, CN not silent {}, reanchors {reanchors}",
            r.misplaced.len(),
            r.damaged.len(),
            r.offset_changes,
            r.cn_not_silent.len()
        );
        if !r.misplaced.is_empty() {
            bad.push(format!(
                "{name}: {} packets not at p0 + (ts - ts0), first: {}",
                r.misplaced.len(),
                r.misplaced
                    .iter()
                    .take(3)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }
        if !r.cn_not_silent.is_empty() {
            bad.push(format!(
                "{name}: comfort noise not silent at seq {:?}",
                r.cn_not_silent
            ));
        }
        if spec.mode == Mode::Tolerant {
            if r.offset_changes.len() > reanchors + corrections
                || r.damaged.len() > reanchors + spread
            {
                bad.push(format!(
                    "{name}: {} offset changes {:?} and {} damaged packets {:?}, but only {reanchors} reanchors and {corrections} corrections",
                    r.offset_changes.len(),
                    r.offset_changes,
                    r.damaged.len(),
                    r.damaged
                ));
            }
            if r.unlocatable_constant * 20 > r.audio_packets {
                bad.push(format!(
                    "{name}: {} constant packets not at their place",
                    r.unlocatable_constant
                ));
            }
        }
    }
    bad
}

// sip-rtp-g711: one direction per call, no loss, no jitter to speak of.
#[test]
fn decode_sip_rtp_g711() {
    check_decode(
        "sip-rtp-g711.pcap",
        &[],
        &[
            LegSpec {
                call_id: "1-1966@10.0.2.20",
                channel: 1,
                src: "10.0.2.15:27942",
                ssrc: 0x343D_A99B,
                law: "ul",
                pt: 0,
                mode: Mode::Strict,
            },
            LegSpec {
                call_id: "1-1968@10.0.2.20",
                channel: 1,
                src: "10.0.2.15:28102",
                ssrc: 0x343F_FA34,
                law: "al",
                pt: 8,
                mode: Mode::Strict,
            },
        ],
    );
}

const SIP_IPV4_TCP: &str = "158936656982201062716@10.33.6.100";
const RTP_PROTOCOL: &str = "1907983263271201083544@10.33.6.101";
const SIP_CALL_G711: &str = "12013223@200.57.7.195";
const FAX_CALL: &str = "00e9d4a500e9d48-0015-0001-0000-0000@10.35.40.25";

fn sip_ipv4_tcp_callee(mode: Mode) -> LegSpec {
    // arrival minus timestamp position, in samples: 0 for the first packet,
    // then between -55 and +7 (the first packet came 6.6 ms late)
    LegSpec {
        call_id: SIP_IPV4_TCP,
        channel: 1,
        src: "10.33.6.101:6050",
        ssrc: 0x42F4_33D4,
        law: "al",
        pt: 8,
        mode,
    }
}

fn rtp_protocol_caller(mode: Mode) -> LegSpec {
    // after the CN packet seq 59069 the timestamps run 101..133 samples
    // (12.6 ms) ahead of arrival for the rest of the call
    LegSpec {
        call_id: RTP_PROTOCOL,
        channel: 0,
        src: "10.33.6.101:6040",
        ssrc: 0x06C1_56FD,
        law: "al",
        pt: 8,
        mode,
    }
}

fn sip_call_g711_callee(mode: Mode) -> LegSpec {
    // relayed with silence suppression: each timestamp jump is 100..450
    // samples longer than the pause it stands for, 0.3 s over the call
    LegSpec {
        call_id: SIP_CALL_G711,
        channel: 1,
        src: "200.57.7.204:8000",
        ssrc: 0xD2BD_4E3E,
        law: "al",
        pt: 8,
        mode,
    }
}

#[test]
fn decode_sip_ipv4_tcp() {
    check_decode(
        "sip_ipv4_tcp.pcap",
        &[],
        &[
            LegSpec {
                call_id: SIP_IPV4_TCP,
                channel: 0,
                src: "10.33.6.100:6000",
                ssrc: 0x5A33_61B3,
                law: "al",
                pt: 8,
                mode: Mode::Strict,
            },
            // Strict fails today, see decode_strict_known_failures.
            sip_ipv4_tcp_callee(Mode::Tolerant),
        ],
    );
}

#[test]
fn decode_rtp_protocol() {
    check_decode(
        "rtp-protocol.pcap",
        &[],
        &[
            // Strict fails today, see decode_strict_known_failures.
            rtp_protocol_caller(Mode::Tolerant),
            LegSpec {
                call_id: RTP_PROTOCOL,
                channel: 1,
                src: "10.33.6.100:6020",
                ssrc: 0x44C6_1AFB,
                law: "al",
                pt: 8,
                mode: Mode::Strict,
            },
        ],
    );
}

#[test]
fn decode_sip_call_rtp_g711() {
    check_decode(
        "SIP_CALL_RTP_G711.pcap",
        &[],
        &[
            LegSpec {
                call_id: SIP_CALL_G711,
                channel: 0,
                src: "200.57.7.196:40376",
                ssrc: 0x58F3_3DEA,
                law: "al",
                pt: 8,
                mode: Mode::Strict,
            },
            // Strict fails today, see decode_strict_known_failures.
            sip_call_g711_callee(Mode::Tolerant),
        ],
    );
}

// The FAX call's callee leg: 3847 PCMA packets, no loss, exact.
#[test]
fn decode_fax_callee() {
    check_decode(
        "FAX-Call-t38-CA-TDM-SIP-FB-1.pcap",
        &["--disable-protocol", "t38", "-d", "udp.port==15580,rtp"],
        &[LegSpec {
            call_id: FAX_CALL,
            channel: 1,
            src: "10.35.60.100:15580",
            ssrc: 0x0EAF_0EAF,
            law: "al",
            pt: 8,
            mode: Mode::Strict,
        }],
    );
}

// ------------------------------------------------------------------ known engine bugs

/// The correct values of the fields left unchecked above. Fails until the
/// engine is fixed.
#[test]
/// Formerly known engine bugs, fixed: telephone-event sequence numbers were
/// counted as lost; a backward RTP timestamp restart was dropped as late.
fn known_engine_bugs() {
    let Some(_) = corpus() else { return };
    let mut bad = Vec::new();
    // telephone-event packets share the audio's SSRC and sequence numbers;
    // the engine returns before recording their sequence numbers, so each
    // one counts as lost.
    for (file, call, ch) in [
        (
            "sipp_uac_Media_DTMF_Speex.pcap",
            "wICUpfWaoQE5Q18tlxgjGQ..",
            0,
        ),
        ("FAX-Call-t38-CA-TDM-SIP-FB-1.pcap", FAX_CALL, 1),
    ] {
        let Some(f) = corpus_file(file) else { return };
        let got = run_import(&f);
        let lost = by_call_id(&got.recs, call).json["channels"][ch]["lost"].as_u64();
        if lost != Some(0) {
            bad.push(format!("{file} ch{ch}: lost {lost:?}, tshark says 0"));
        }
    }
    // FAX caller: at seq 1145 the timestamps restart at 0 (same SSRC, next
    // sequence number); the clock places those packets 43 s in the past and
    // drops 474 of them (9.5 s of fax tones) as late until a drift window
    // re-anchors at seq 1619.
    if let Some(f) = corpus_file("FAX-Call-t38-CA-TDM-SIP-FB-1.pcap") {
        let got = run_import(&f);
        let late = by_call_id(&got.recs, FAX_CALL).json["channels"][0]["late"].as_u64();
        if late != Some(0) {
            bad.push(format!("FAX caller: late {late:?}, want 0"));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// The strict requirement on the legs that do not meet it today.
#[test]
#[ignore = "design: the leg clock follows arrival time where it disagrees with the timestamps (after comfort noise, a 0.3 s drift in 24 s), so these legs are not at p0 + (ts - ts0) everywhere"]
fn decode_strict_known_failures() {
    let mut bad = decode_problems(
        "sip_ipv4_tcp.pcap",
        &[],
        &[sip_ipv4_tcp_callee(Mode::Strict)],
    );
    bad.extend(decode_problems(
        "rtp-protocol.pcap",
        &[],
        &[rtp_protocol_caller(Mode::Strict)],
    ));
    bad.extend(decode_problems(
        "SIP_CALL_RTP_G711.pcap",
        &[],
        &[sip_call_g711_callee(Mode::Strict)],
    ));
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// The FAX caller leg, where 474 packets are dropped as late (see
/// `known_engine_bugs`); beyond that its clock also moves by -41 samples.
#[test]
#[ignore = "checker limitation: it assumes one timestamp mapping, but this stream restarts its timestamps at seq 1145 and the engine (correctly) re-anchors there on arrival"]
fn decode_fax_caller_known_failure() {
    check_decode(
        "FAX-Call-t38-CA-TDM-SIP-FB-1.pcap",
        &["--disable-protocol", "t38", "-d", "udp.port==15580,rtp"],
        &[LegSpec {
            call_id: FAX_CALL,
            channel: 0,
            src: "10.23.1.52:16756",
            ssrc: 0x17D9_0134,
            law: "al",
            pt: 8,
            mode: Mode::Tolerant,
        }],
    );
}
