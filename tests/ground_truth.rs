//! Ground-truth tests: generated calls whose audio is known go through the real
//! `pbx-edge import`, and each output channel is measured against what that
//! party said (cross-correlation, alignment error, cross-talk, duration).

mod common;

use std::path::Path;

use common::truth::*;
use common::*;
use pbx_testgen::audio::{rms, speechlike, tone};
use pbx_testgen::{
    write_capture, CallSpec, CallTruth, Format, Framing, Hold, Link, SipTransport, TestCodec,
};

fn call(id: &str, codec: TestCodec, secs: u32, seed: u64) -> CallSpec {
    let rate = codec.audio_rate();
    let mut c = CallSpec::simple(
        id,
        codec,
        speechlike(seed * 2 + 1, secs * 1000, rate),
        speechlike(seed * 2 + 2, secs * 1000, rate),
    );
    c.seed = seed;
    c
}

fn run(
    calls: &[CallSpec],
    format: Format,
    link: Link,
    framing: &Framing,
    extra: &[&str],
) -> (tempfile::TempDir, Vec<CallTruth>, Vec<Recording>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cap = dir.path().join("calls.pcap");
    let truths = write_capture(&cap, calls, format, link, framing).expect("write capture");
    let out = dir.path().join("out");
    let o = import(&[&cap], &out, extra);
    assert!(
        o.status.success(),
        "import failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let recs = recordings(&out);
    (dir, truths, recs)
}

#[test]
fn pcmu_clean_call_is_sample_aligned() {
    let c = call("clean-pcmu@test", TestCodec::Pcmu, 20, 1);
    let (_d, truths, recs) = run(
        &[c],
        Format::PcapMicros,
        Link::Ethernet,
        &Framing::default(),
        &[],
    );
    assert_eq!(recs.len(), 1);
    let r = &recs[0];
    check(r, &truths[0], 0.0, 0.99);
    let j = &r.json;
    assert_eq!(j["schema"], "pbx-edge.recording/1");
    assert_eq!(j["source"], "pcap");
    assert_eq!(j["call_id"], "clean-pcmu@test");
    assert_eq!(j["from"]["number"], "1001");
    assert_eq!(j["from"]["name"], "Alice");
    assert_eq!(j["to"]["number"], "2002");
    assert_eq!(j["audio"]["sample_rate"], 8000);
    assert_eq!(j["audio"]["channels"], 2);
    assert_eq!(j["channels"][0]["party"], "caller");
    assert_eq!(j["channels"][0]["codec"], "PCMU");
    assert_eq!(j["channels"][0]["packets"], truths[0].sent[0]);
    assert_eq!(j["channels"][1]["packets"], truths[0].sent[1]);
    assert_eq!(j["channels"][0]["lost"], 0);
    assert_eq!(j["end_reason"], "bye");
    assert_eq!(j["truncated"], false);
    assert!(j["answered_at"].is_string());
    let id = j["recording_id"].as_str().unwrap();
    assert!(id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    let meta = std::fs::metadata(&r.wav).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(j["audio"]["bytes"], meta.len());
}

#[test]
fn pcma_with_loss_duplicates_jitter_and_reordering() {
    let mut c = call("rough-pcma@test", TestCodec::Pcma, 30, 2);
    for leg in [&mut c.caller_leg, &mut c.callee_leg] {
        leg.impair.loss = 0.05;
        leg.impair.duplicate = 0.03;
        leg.impair.jitter_ms = 60;
        leg.impair.reorder = 0.03;
    }
    let (_d, truths, recs) = run(
        &[c],
        Format::PcapMicros,
        Link::Ethernet,
        &Framing::default(),
        &[],
    );
    assert_eq!(recs.len(), 1);
    // The first packet of each leg anchors its clock; it may itself have been
    // delayed by up to 60 ms, which the clock corrects within about a second.
    check_share(&recs[0], &truths[0], 2.0, 0.9, 0.9);
    let lost0 = recs[0].json["channels"][0]["lost"].as_u64().unwrap();
    let want = truths[0].lost[0];
    assert!(lost0.abs_diff(want) <= 2, "lost {lost0}, truth {want}");
}

#[test]
fn g722_call_is_recorded_wideband() {
    let c = call("g722@test", TestCodec::G722, 15, 3);
    let (_d, truths, recs) = run(
        &[c],
        Format::PcapNanos,
        Link::Ethernet,
        &Framing::default(),
        &[],
    );
    assert_eq!(recs[0].rate, 16000);
    assert_eq!(recs[0].json["channels"][0]["codec"], "G722");
    check(&recs[0], &truths[0], 2.0, 0.9);
}

#[test]
fn gsm_call_is_recorded() {
    if !pbx_testgen::codec::have_sox() {
        eprintln!("note: sox not installed; GSM call test skipped");
        return;
    }
    // RTP payload type 3, encoded by sox (libgsm).
    let c = call("gsm@test", TestCodec::Gsm, 10, 9);
    let legs = [c.caller_leg.audio.clone(), c.callee_leg.audio.clone()];
    let (_d, truths, recs) = run(
        &[c],
        Format::PcapNanos,
        Link::Ethernet,
        &Framing::default(),
        &[],
    );
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].rate, 8000);
    assert_eq!(recs[0].json["channels"][0]["codec"], "GSM");
    assert_eq!(recs[0].json["channels"][1]["codec"], "GSM");
    // GSM is a vocoder: on noise-like test signals its waveform follows the
    // source less closely (the decoder itself is bit-exact with libgsm:
    // crates/pbx-core/tests/gsm_sox.rs).
    check_share(&recs[0], &truths[0], 2.0, 0.6, 0.8);
    // Each channel is what libgsm decodes from the same frames.
    for (ch, audio) in legs.iter().enumerate() {
        let mut pcm = audio.clone();
        pcm.resize(audio.len().div_ceil(160) * 160, 0);
        let coded = pbx_testgen::codec::sox_gsm_decode(&pbx_testgen::codec::sox_gsm(&pcm));
        let (lag, corr) = pbx_testgen::audio::best_lag(&recs[0].ch[ch], &coded, 800);
        eprintln!(
            "GSM channel {ch}: lag {lag} samples, correlation with libgsm's decoding {corr:.5}"
        );
        assert!(corr > 0.999, "channel {ch}: {corr} at lag {lag}");
    }
}

#[test]
fn opus_call_is_recorded_wideband() {
    let c = call("opus@test", TestCodec::Opus, 15, 4);
    let (_d, truths, recs) = run(
        &[c],
        Format::PcapNg,
        Link::Ethernet,
        &Framing::default(),
        &[],
    );
    assert_eq!(recs[0].rate, 16000);
    // Opus is a perceptual codec: on noise-like test signals its waveform
    // matches less closely than G.711's; its encoder's 6.5 ms look-ahead is
    // taken off the placement, so the words are where they were said.
    check_share(&recs[0], &truths[0], 1.0, 0.6, 0.8);
}

/// An Opus leg against a G.711 one (a WebRTC gateway's call): the two
/// channels in step, each where its words were said (the Opus channel was
/// 6.5 ms late).
#[test]
fn opus_and_g711_legs_are_in_step() {
    let mut c = call("opus-pcmu@test", TestCodec::Opus, 15, 14);
    c.callee_leg.codec = Some(TestCodec::Pcmu);
    c.callee_leg.audio = speechlike(77, 15_000, 8000);
    let (_d, truths, recs) = run(
        &[c],
        Format::PcapNg,
        Link::Ethernet,
        &Framing::default(),
        &[],
    );
    assert_eq!(recs[0].rate, 16000);
    check_share(&recs[0], &truths[0], 1.0, 0.6, 0.8);
}

#[test]
fn forced_8k_output_downsamples_wideband() {
    let c = call("g722-8k@test", TestCodec::G722, 10, 5);
    let (_d, truths, recs) = run(
        &[c],
        Format::PcapMicros,
        Link::Ethernet,
        &Framing::default(),
        &["--sample-rate", "8000"],
    );
    assert_eq!(recs[0].rate, 8000);
    check(&recs[0], &truths[0], 2.0, 0.85);
}

/// `import --config FILE` takes `[recording]` and `[agent]` from the file
/// (CONTRACT §1: every command that needs the configuration takes it); a
/// flag given on the command line wins over the file.
#[test]
fn import_takes_recording_and_agent_from_the_config() {
    let c = call("cfg-pcmu@test", TestCodec::Pcmu, 4, 7);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "[agent]\nid = \"from-config\"\n\n[recording]\nsample_rate = \"16000\"\njitter = \"200ms\"\n",
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    let (_d, truths, recs) = run(
        std::slice::from_ref(&c),
        Format::PcapMicros,
        Link::Ethernet,
        &Framing::default(),
        &["--config", cfg],
    );
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].rate, 16000, "a PCMU call at the configured rate");
    assert_eq!(recs[0].json["agent_id"], "from-config");
    check(&recs[0], &truths[0], 2.0, 0.85);
    // The flags win.
    let (_d, _, recs) = run(
        std::slice::from_ref(&c),
        Format::PcapMicros,
        Link::Ethernet,
        &Framing::default(),
        &[
            "--config",
            cfg,
            "--sample-rate",
            "8000",
            "--agent-id",
            "flag",
        ],
    );
    assert_eq!(recs[0].rate, 8000);
    assert_eq!(recs[0].json["agent_id"], "flag");
    // recording.min_duration: a 4 s call is not kept under "10s", unless
    // --min-duration says otherwise.
    let cfg2 = dir.path().join("min.toml");
    std::fs::write(&cfg2, "[recording]\nmin_duration = \"10s\"\n").unwrap();
    let cfg2 = cfg2.to_str().unwrap();
    let (_d, _, recs) = run(
        std::slice::from_ref(&c),
        Format::PcapMicros,
        Link::Ethernet,
        &Framing::default(),
        &["--config", cfg2],
    );
    assert!(recs.is_empty(), "{} recordings", recs.len());
    let (_d, _, recs) = run(
        &[c],
        Format::PcapMicros,
        Link::Ethernet,
        &Framing::default(),
        &["--config", cfg2, "--min-duration", "0s"],
    );
    assert_eq!(recs.len(), 1);
}

#[test]
fn ssrc_change_hold_and_silence_suppression_keep_sync() {
    let mut c = call("trouble@test", TestCodec::Pcmu, 40, 6);
    c.callee_leg.impair.ssrc_change_at_ms = Some(12_000);
    c.caller_leg.impair.hold = Some(Hold {
        from_ms: 15_000,
        to_ms: 25_000,
        timestamps_continue: false,
        signal: true,
    });
    c.caller_leg.impair.silence_suppression_rms = Some(50.0);
    c.callee_leg.impair.silence_suppression_rms = Some(50.0);
    let (_d, truths, recs) = run(
        &[c],
        Format::PcapMicros,
        Link::Ethernet,
        &Framing::default(),
        &[],
    );
    assert_eq!(
        recs.len(),
        1,
        "one recording despite SSRC change and re-INVITEs"
    );
    check(&recs[0], &truths[0], 1.0, 0.97);
    // The end of the call is still in sync (after hold and SSRC change).
    let r = &recs[0];
    let t = &truths[0];
    let from = 30 * 8000;
    for ch in 0..2 {
        let (lag, c) = align(&r.ch[ch][from..], 8000, &t.expected[ch][from..], 8000, 200);
        assert!(
            lag.abs() <= 1.0 && c > 0.97,
            "channel {ch} after 30 s: lag {lag} ms corr {c}"
        );
    }
    assert_eq!(r.json["channels"][1]["ssrcs"].as_array().unwrap().len(), 2);
}

#[test]
fn sender_clock_drift_over_ten_minutes_stays_in_sync() {
    let mut c = call("drift@test", TestCodec::Pcmu, 600, 7);
    c.caller_leg.impair.drift_ppm = 300;
    c.callee_leg.impair.drift_ppm = -300;
    c.caller_leg.impair.jitter_ms = 30;
    c.callee_leg.impair.jitter_ms = 30;
    let (_d, truths, recs) = run(
        &[c],
        Format::PcapMicros,
        Link::Ethernet,
        &Framing::default(),
        &[],
    );
    let r = &recs[0];
    let t = &truths[0];
    // Over ten minutes a 300 ppm clock error accumulates 180 ms; the recording
    // follows arrival time, so every window stays within the clock's tolerance.
    for ch in 0..2 {
        let (ok, worst, n) = windowed(&r.ch[ch], 8000, &t.expected[ch], 8000, 35.0, 0.8);
        assert!(
            ok >= 0.95,
            "channel {ch}: {:.1} % of {n} windows in sync, worst lag {worst} ms",
            ok * 100.0
        );
    }
}

#[test]
fn silent_leg_gives_silent_channel() {
    let mut c = call("oneway@test", TestCodec::Pcmu, 10, 8);
    c.callee_leg.impair.mute = true;
    let (_d, truths, recs) = run(
        &[c],
        Format::PcapMicros,
        Link::Ethernet,
        &Framing::default(),
        &[],
    );
    check(&recs[0], &truths[0], 0.0, 0.99);
    assert_eq!(recs[0].json["channels"][1]["packets"], 0);
    let w = recs[0].json["warnings"].to_string();
    assert!(w.contains("no RTP"), "warnings: {w}");
}

#[test]
fn tcp_sip_over_qinq_ipv6_pcapng() {
    let mut c = call("tcp-v6@test", TestCodec::Pcma, 8, 9);
    c.transport = SipTransport::Tcp;
    c.caller.ip = "2001:db8::1".parse().unwrap();
    c.callee.ip = "2001:db8::2".parse().unwrap();
    let framing = Framing {
        vlans: vec![100, 200],
        mtu: None,
    };
    let (_d, truths, recs) = run(&[c], Format::PcapNg, Link::Ethernet, &framing, &[]);
    assert_eq!(recs.len(), 1);
    check(&recs[0], &truths[0], 0.0, 0.99);
    assert_eq!(recs[0].json["from"]["number"], "1001");
}

#[test]
fn fragmented_invite_over_linux_cooked_v2_and_v1() {
    for link in [Link::LinuxSll2, Link::LinuxSll, Link::RawIp] {
        let c = call("frag@test", TestCodec::Pcmu, 5, 10);
        let framing = Framing {
            vlans: vec![],
            mtu: Some(576),
        };
        let (_d, truths, recs) = run(&[c], Format::PcapMicros, link, &framing, &[]);
        assert_eq!(recs.len(), 1, "{link:?}");
        check(&recs[0], &truths[0], 0.0, 0.99);
    }
}

#[test]
fn call_without_bye_ends_with_the_capture() {
    let mut c = call("nobye@test", TestCodec::Pcmu, 6, 11);
    c.bye = false;
    let (_d, truths, recs) = run(
        &[c],
        Format::PcapMicros,
        Link::Ethernet,
        &Framing::default(),
        &[],
    );
    check(&recs[0], &truths[0], 0.0, 0.99);
    assert_eq!(recs[0].json["end_reason"], "capture_end");
    assert_eq!(recs[0].json["truncated"], true);
}

#[test]
fn dtmf_becomes_json_not_audio() {
    let mut c = call("dtmf@test", TestCodec::Pcmu, 10, 12);
    c.caller_leg.dtmf = vec![('1', 2000, 200), ('#', 4000, 160), ('9', 6000, 100)];
    let (_d, truths, recs) = run(
        &[c],
        Format::PcapMicros,
        Link::Ethernet,
        &Framing::default(),
        &[],
    );
    let dtmf = recs[0].json["dtmf"].as_array().unwrap().clone();
    let digits: String = dtmf.iter().map(|d| d["digit"].as_str().unwrap()).collect();
    assert_eq!(digits, "1#9");
    for (d, t) in dtmf.iter().zip(&truths[0].dtmf) {
        assert_eq!(d["channel"], t.0 as u64);
        let at = d["at_ms"].as_i64().unwrap();
        // Placed by its RTP timestamp (the key's start) against the audio.
        assert!(
            (at - t.2).abs() <= 1,
            "digit {} at {at} ms, sent at {} ms",
            t.1,
            t.2
        );
        let dur = d["duration_ms"].as_i64().unwrap();
        assert!((dur - t.3).abs() <= 25, "duration {dur} vs {}", t.3);
    }
    check(&recs[0], &truths[0], 0.0, 0.98);
}

#[test]
fn many_concurrent_calls_are_kept_apart() {
    let mut calls = Vec::new();
    for n in 0..12u64 {
        let mut c = call(&format!("multi-{n}@test"), TestCodec::Pcmu, 8, 100 + n);
        c.caller.ip = format!("10.9.0.{}", n + 1).parse().unwrap();
        c.callee.ip = format!("10.9.1.{}", n + 1).parse().unwrap();
        c.start_ns += n as i64 * 150_000_000;
        calls.push(c);
    }
    let (_d, truths, recs) = run(
        &calls,
        Format::PcapMicros,
        Link::Ethernet,
        &Framing::default(),
        &[],
    );
    assert_eq!(recs.len(), 12);
    for t in &truths {
        check(by_call_id(&recs, &t.call_id), t, 0.0, 0.99);
    }
}

#[test]
fn truncated_capture_keeps_complete_calls_and_names_the_offset() {
    let dir = tempfile::tempdir().unwrap();
    let cap = dir.path().join("cut.pcap");
    let mut a = call("first@test", TestCodec::Pcmu, 4, 13);
    a.start_ns -= 60_000_000_000;
    let b = call("second@test", TestCodec::Pcmu, 20, 14);
    write_capture(
        &cap,
        &[a, b],
        Format::PcapMicros,
        Link::Ethernet,
        &Framing::default(),
    )
    .unwrap();
    let len = std::fs::metadata(&cap).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&cap).unwrap();
    f.set_len(len / 2 + 7).unwrap();
    let out = dir.path().join("out");
    let o = import(&[&cap], &out, &[]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("cut.pcap") && err.contains("byte"),
        "stderr: {err}"
    );
    let recs = recordings(&out);
    assert_eq!(
        recs.len(),
        2,
        "the complete call and the part of the cut one"
    );
    assert_eq!(by_call_id(&recs, "first@test").json["end_reason"], "bye");
    assert_eq!(by_call_id(&recs, "second@test").json["truncated"], true);
}

#[test]
fn not_a_capture_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("notes.txt");
    std::fs::write(&f, "hello, this is not a pcap").unwrap();
    let o = import(&[&f], &dir.path().join("out"), &[]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("notes.txt") && err.contains("not a pcap"),
        "{err}"
    );
    let missing = import(
        &[Path::new("/nonexistent/x.pcap")],
        &dir.path().join("out"),
        &[],
    );
    assert_eq!(missing.status.code(), Some(1));
}

#[test]
fn tone_levels_survive_g711() {
    // A pure tone keeps its level through encode/decode (no gain errors).
    let a = tone(440.0, 3000, 8000, 8000.0);
    let b = tone(1000.0, 3000, 8000, 4000.0);
    let c = CallSpec::simple("tone@test", TestCodec::Pcmu, a.clone(), b.clone());
    let (_d, _t, recs) = run(
        &[c],
        Format::PcapMicros,
        Link::Ethernet,
        &Framing::default(),
        &[],
    );
    let r = &recs[0];
    let l = rms(&r.ch[0][800..20000]);
    let rr = rms(&r.ch[1][800..20000]);
    assert!((l / rms(&a) - 1.0).abs() < 0.02, "left level {l}");
    assert!((rr / rms(&b) - 1.0).abs() < 0.02, "right level {rr}");
}

#[test]
fn wideband_and_narrowband_legs_give_16k_with_both_in_sync() {
    let mut c = call("mixed@test", TestCodec::G722, 12, 15);
    // The callee talks PCMU (8 kHz): its audio must be upsampled properly.
    c.callee_leg.codec = Some(TestCodec::Pcmu);
    c.callee_leg.audio = speechlike(31, 12_000, 8000);
    let (_d, truths, recs) = run(
        &[c],
        Format::PcapMicros,
        Link::Ethernet,
        &Framing::default(),
        &[],
    );
    let r = &recs[0];
    assert_eq!(r.rate, 16000);
    assert_eq!(r.json["channels"][0]["codec"], "G722");
    assert_eq!(r.json["channels"][1]["codec"], "PCMU");
    check(r, &truths[0], 2.0, 0.85);
    // No sample doubling: an 8 kHz leg upsampled properly has (almost) no
    // energy above 4 kHz; doubling samples would leave a strong image there.
    let x = &r.ch[1];
    let (mut hi, mut all) = (0f64, 0f64);
    for w in x.windows(2) {
        // first difference emphasises high frequencies
        let d = f64::from(w[1]) - f64::from(w[0]);
        hi += d * d;
        all += f64::from(w[0]) * f64::from(w[0]);
    }
    assert!(hi / all < 0.5, "high-frequency energy ratio {}", hi / all);
}

#[test]
fn early_media_on_183_is_recorded() {
    let mut c = call("early@test", TestCodec::Pcma, 10, 16);
    c.ring_ms = 5000;
    c.early_media_ms = Some(3000);
    let (_d, truths, recs) = run(
        &[c],
        Format::PcapMicros,
        Link::Ethernet,
        &Framing::default(),
        &[],
    );
    assert_eq!(recs.len(), 1);
    check(&recs[0], &truths[0], 0.0, 0.99);
}

#[test]
fn reinvite_moving_media_to_a_new_port_keeps_the_recording_going() {
    let mut c = call("move@test", TestCodec::Pcmu, 20, 17);
    c.caller_moves_media = Some((8000, 41000));
    let (_d, truths, recs) = run(
        &[c],
        Format::PcapMicros,
        Link::Ethernet,
        &Framing::default(),
        &[],
    );
    assert_eq!(recs.len(), 1, "one recording across the re-INVITE");
    check(&recs[0], &truths[0], 0.0, 0.99);
}

/// The capturing host's clock set back by NTP in the middle of a call (3 s,
/// 10 s into a 20 s call): every frame after the step is stamped 3 s
/// earlier. `import` continues the time after the step from before it, so
/// both channels hold what each party said where it was said, the whole
/// call (before, 3 s of both legs around the step were cut), and its
/// summary names the step.
#[test]
fn capture_clock_set_back_mid_call_loses_nothing() {
    use pbx_testgen::pcap::CaptureWriter;
    let c = call("clock-back@test", TestCodec::Pcmu, 20, 11);
    let (frames, truths) =
        pbx_testgen::scenario::generate(&[c], Link::Ethernet, &Framing::default());
    let dir = tempfile::tempdir().unwrap();
    let cap = dir.path().join("stepped.pcap");
    let step_at = frames[0].0 + 10_000_000_000;
    let mut w = CaptureWriter::new(
        std::io::BufWriter::new(std::fs::File::create(&cap).unwrap()),
        Format::PcapNanos,
        Link::Ethernet,
    )
    .unwrap();
    for (ts, f) in &frames {
        let ts = if *ts >= step_at {
            ts - 3_000_000_000
        } else {
            *ts
        };
        w.write(ts, f).unwrap();
    }
    use std::io::Write as _;
    w.into_inner().flush().unwrap();
    let out = dir.path().join("out");
    let o = import(&[&cap], &out, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let said = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(
        said.contains("1 steps back of the capture's clock"),
        "the summary names the step: {said}"
    );
    let recs = recordings(&out);
    assert_eq!(recs.len(), 1);
    check_share(&recs[0], &truths[0], 0.0, 0.99, 1.0);
    assert_eq!(recs[0].json["channels"][0]["lost"], 0);
    assert_eq!(recs[0].json["channels"][1]["lost"], 0);
}

/// Without `--config`, a configuration that cannot be used (here an
/// override in the environment that is not valid; on a host, a default file
/// only the daemon's user may read) does not stop an import: it is said on
/// stderr and the built-in defaults apply. With `--config` it is an error.
#[test]
fn import_without_config_goes_on_with_defaults_when_the_configuration_cannot_be_used() {
    let c = call("nocfg@test", TestCodec::Pcmu, 3, 9);
    let dir = tempfile::tempdir().unwrap();
    let cap = dir.path().join("c.pcap");
    write_capture(
        &cap,
        &[c],
        Format::PcapMicros,
        Link::Ethernet,
        &Framing::default(),
    )
    .unwrap();
    let run = |extra: &[&str], out: &str| {
        std::process::Command::new(bin())
            .arg("import")
            .arg(&cap)
            .arg("--out")
            .arg(dir.path().join(out))
            .args(extra)
            .env("PBX_EDGE__RECORDING__SAMPLE_RATE", "sixteen")
            .output()
            .unwrap()
    };
    let o = run(&[], "a");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("built-in defaults"), "{err}");
    assert!(err.contains("sample_rate"), "names the problem: {err}");
    assert_eq!(recordings(&dir.path().join("a")).len(), 1);
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[agent]\nid = \"x\"\n").unwrap();
    let o = run(&["--config", cfg.to_str().unwrap()], "b");
    assert!(!o.status.success(), "an explicit configuration must load");
}

/// `sample_rate = "auto"` (CONTRACT §2: 16000 if any leg is wideband): a
/// call that starts in PCMU and whose callee turns to G.722 at 6 s (a
/// re-INVITE) is recorded at 16000 Hz from its start, not narrowed to
/// 8000 Hz from the switch on. The capture is read again for it: its WAV
/// is the one `--sample-rate 16000` gives, bit for bit, once, and the
/// narrowband call beside it stays at 8000 Hz, sample-aligned.
#[test]
fn a_call_turning_wideband_midway_is_recorded_wideband_from_its_start() {
    let mut turning = call("turning@test", TestCodec::Pcmu, 12, 21);
    turning.callee_leg.impair.codec_change = Some((6_000, TestCodec::G722));
    let mut narrow = call("narrow@test", TestCodec::Pcmu, 12, 22);
    narrow.caller.ip = "10.9.0.7".parse().unwrap();
    narrow.callee.ip = "10.9.1.7".parse().unwrap();
    narrow.start_ns += 2_000_000_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let cap = dir.path().join("calls.pcap");
    let truths = write_capture(
        &cap,
        &[turning, narrow],
        Format::PcapMicros,
        Link::Ethernet,
        &Framing::default(),
    )
    .expect("write capture");
    let auto = dir.path().join("auto");
    let o = import(&[&cap], &auto, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary = String::from_utf8_lossy(&o.stdout);
    assert!(
        summary.contains("2 calls, 2 recordings written"),
        "{summary}"
    );
    let recs = recordings(&auto);
    assert_eq!(recs.len(), 2, "one recording a call");
    assert_eq!(
        std::fs::read_dir(&auto).unwrap().count(),
        4,
        "two pairs, nothing else"
    );

    let t = by_call_id(&recs, "turning@test");
    assert_eq!(t.rate, 16000);
    assert_eq!(t.json["audio"]["sample_rate"], 16000);
    assert_eq!(
        t.json["channels"][1]["codecs"],
        serde_json::json!(["PCMU", "G722"])
    );
    let warnings = t.json["warnings"].to_string();
    assert!(!warnings.contains("recorded at 8000"), "{warnings}");
    // Both channels within a sample (at 16 kHz) of the truth in every
    // window of the call, before and after the switch.
    let truth = truths.iter().find(|t| t.call_id == "turning@test").unwrap();
    check_share(t, truth, 0.0625, 0.98, 1.0);

    let fixed = dir.path().join("fixed");
    let o = import(&[&cap], &fixed, &["--sample-rate", "16000"]);
    assert!(o.status.success());
    let f = by_call_id(&recordings(&fixed), "turning@test").json.clone();
    assert_eq!(t.json["audio"]["sha256"], f["audio"]["sha256"]);
    assert_eq!(t.json["recording_id"], f["recording_id"]);

    let n = by_call_id(&recs, "narrow@test");
    assert_eq!(n.rate, 8000);
    let truth = truths.iter().find(|t| t.call_id == "narrow@test").unwrap();
    check(n, truth, 0.0, 0.99);

    // A pipe cannot be read twice: read once, the turning call kept at
    // 8000 Hz with its warning (nothing removed, nothing lost).
    let piped = dir.path().join("piped");
    let mut child = std::process::Command::new(bin())
        .args(["import", "/dev/stdin", "--out"])
        .arg(&piped)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let bytes = std::fs::read(&cap).unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        use std::io::Write;
        stdin.write_all(&bytes).unwrap();
    });
    let o = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let recs = recordings(&piped);
    assert_eq!(recs.len(), 2);
    let t = by_call_id(&recs, "turning@test");
    assert_eq!(t.rate, 8000);
    assert!(t.json["warnings"]
        .to_string()
        .contains("recorded at 8000 Hz"));
}
