//! Timing measurements of the core (ignored by default; they read the clock,
//! which only tests and the shell may do):
//! `cargo test --release -p pbx-core --test throughput -- --ignored --nocapture`.
#![allow(clippy::disallowed_methods)]

use pbx_core::audio::codec::{new_decoder, Codec};
use pbx_core::audio::opus::OpusEncoder;
use pbx_core::capture::CaptureReader;
use pbx_core::net::NetDecoder;

fn corpus(name: &str) -> Option<Vec<u8>> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/corpus")
        .join(name);
    std::fs::read(p).ok()
}

/// Frames per second through the capture reader and the network decoder.
#[test]
#[ignore = "timing; run in release"]
fn capture_and_net_throughput() {
    for (kind, name) in [
        ("udp", "marseillaise-srtp.pcap"),
        ("tcp", "sip_ipv4_tcp_fragmented.pcap"),
    ] {
        let Some(bytes) = corpus(name) else {
            eprintln!("note: corpus not found; skipped");
            return;
        };
        let rounds = 50;
        let start = std::time::Instant::now();
        let (mut frames, mut payload) = (0u64, 0usize);
        for _ in 0..rounds {
            let mut reader = CaptureReader::new(std::io::Cursor::new(&bytes[..])).unwrap();
            let mut dec = NetDecoder::default();
            while let Some(f) = reader.next_frame().unwrap() {
                frames += 1;
                let _ = dec.decode(f.ts, f.link, f.data, &mut |s| payload += s.payload.len());
            }
        }
        let secs = start.elapsed().as_secs_f64();
        eprintln!(
            "{kind}: {frames} frames in {secs:.3} s = {:.1} M frames/s ({payload} payload bytes)",
            frames as f64 / secs / 1e6
        );
    }
}

/// Decode cost per 20 ms packet for each codec and output rate.
#[test]
#[ignore = "timing; run in release"]
fn decode_speed() {
    let packets = 50 * 60; // one minute
    let pcm: Vec<i16> = (0..320)
        .map(|i| ((i as f64 * 0.12).sin() * 8000.0) as i16)
        .collect();
    let opus_packet = OpusEncoder::new(16000, 24000)
        .unwrap()
        .encode_frame(&pcm)
        .unwrap();
    for (codec, rate) in [
        (Codec::Pcmu, 8000),
        (Codec::Pcmu, 16000),
        (Codec::G722, 16000),
        (Codec::G722, 8000),
        (Codec::Opus, 8000),
        (Codec::Opus, 16000),
    ] {
        let mut d = new_decoder(&codec, rate).unwrap();
        let payload: Vec<u8> = if codec == Codec::Opus {
            opus_packet.clone()
        } else {
            (0..160u32).map(|i| (i * 37 % 256) as u8).collect()
        };
        let mut out = Vec::with_capacity(rate as usize / 50);
        let start = std::time::Instant::now();
        for _ in 0..packets {
            out.clear();
            d.decode(&payload, &mut out).unwrap();
        }
        let per_packet = start.elapsed() / packets;
        eprintln!("{codec:?} -> {rate}: {per_packet:?} per 20 ms packet");
    }
}

/// GSM 06.10 decode speed (raw frames and WAV49 blocks), in seconds of
/// audio per second of CPU.
#[test]
#[ignore = "timing; run in release"]
fn gsm_decode_speed() {
    use pbx_core::audio::gsm::{decode_gsm, decode_wav49, GsmError, FRAME_BYTES};
    type Decode = fn(&[u8]) -> Result<Vec<i16>, GsmError>;
    // Ten minutes of frames with arbitrary parameters (the decoder's cost
    // does not depend on the content).
    let frames = 50 * 600;
    let mut x: u32 = 0x1234_5678;
    let mut bytes: Vec<u8> = (0..frames * FRAME_BYTES)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    for f in bytes.chunks_exact_mut(FRAME_BYTES) {
        f[0] = 0xD0 | (f[0] & 0x0F);
    }
    let audio_secs = frames as f64 / 50.0;
    for (name, run) in [
        ("gsm", decode_gsm as Decode),
        ("wav49", decode_wav49 as Decode),
    ] {
        let rounds = 5;
        let start = std::time::Instant::now();
        let mut n = 0;
        for _ in 0..rounds {
            n += run(&bytes).unwrap().len();
        }
        let secs = start.elapsed().as_secs_f64();
        let audio = n as f64 / 8000.0;
        eprintln!(
            "GSM ({name}): {audio:.0} s of audio in {secs:.3} s = {:.0}x real time, {:.2} µs per 20 ms frame",
            audio / secs,
            secs * 1e6 / (audio * 50.0)
        );
        assert!(audio >= audio_secs * rounds as f64 * 0.99);
    }
}
