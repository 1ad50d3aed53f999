//! Encoding test audio into RTP payloads with pbx-core's own encoders (G.711,
//! G.722), libopus, and sox (GSM 06.10: pbx-core has no GSM encoder; sox's is
//! libgsm's, the reference).

use pbx_core::audio::g711::{linear_to_alaw, linear_to_ulaw};
use pbx_core::audio::g722::G722Encoder;
use pbx_core::audio::opus::OpusEncoder;

/// Codecs the generator can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestCodec {
    Pcmu,
    Pcma,
    G722,
    Opus,
    /// GSM 06.10, encoded by sox (a leg's whole audio at once).
    Gsm,
}

impl TestCodec {
    pub fn payload_type(self) -> u8 {
        match self {
            TestCodec::Pcmu => 0,
            TestCodec::Pcma => 8,
            TestCodec::G722 => 9,
            TestCodec::Opus => 111,
            TestCodec::Gsm => 3,
        }
    }
    pub fn rtpmap(self) -> &'static str {
        match self {
            TestCodec::Pcmu => "PCMU/8000",
            TestCodec::Pcma => "PCMA/8000",
            TestCodec::G722 => "G722/8000",
            TestCodec::Opus => "opus/48000/2",
            TestCodec::Gsm => "GSM/8000",
        }
    }
    /// RTP clock (G.722's is 8000 although it samples at 16 kHz; Opus is 48000).
    pub fn rtp_clock(self) -> u32 {
        match self {
            TestCodec::Opus => 48000,
            _ => 8000,
        }
    }
    /// Sample rate of the audio given to the encoder.
    pub fn audio_rate(self) -> u32 {
        match self {
            TestCodec::Pcmu | TestCodec::Pcma | TestCodec::Gsm => 8000,
            TestCodec::G722 | TestCodec::Opus => 16000,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            TestCodec::Pcmu => "PCMU",
            TestCodec::Pcma => "PCMA",
            TestCodec::G722 => "G722",
            TestCodec::Opus => "opus",
            TestCodec::Gsm => "GSM",
        }
    }
}

/// A stateful encoder for one leg.
pub enum Encoder {
    Pcmu,
    Pcma,
    G722(Box<G722Encoder>),
    Opus(Box<OpusEncoder>),
    /// Payloads encoded beforehand, handed out in order.
    Gsm(std::collections::VecDeque<Vec<u8>>),
}

impl Encoder {
    /// The encoder of a leg whose whole audio is `audio`, in packets of
    /// `per_packet` samples (GSM needs all of it up front).
    pub fn for_leg(c: TestCodec, audio: &[i16], per_packet: usize) -> Self {
        if c != TestCodec::Gsm {
            return Encoder::new(c);
        }
        let mut pcm = audio.to_vec();
        pcm.resize(audio.len().div_ceil(per_packet) * per_packet, 0);
        let frames = sox_gsm(&pcm);
        let bytes = per_packet / 160 * 33;
        Encoder::Gsm(frames.chunks(bytes.max(33)).map(<[u8]>::to_vec).collect())
    }

    /// Panics for GSM (see [`Encoder::for_leg`]).
    pub fn new(c: TestCodec) -> Self {
        match c {
            TestCodec::Pcmu => Encoder::Pcmu,
            TestCodec::Pcma => Encoder::Pcma,
            TestCodec::G722 => Encoder::G722(Box::new(G722Encoder::new())),
            TestCodec::Opus => Encoder::Opus(Box::new(
                OpusEncoder::new(16000, 32000).expect("libopus encoder for 16 kHz mono"),
            )),
            TestCodec::Gsm => panic!("GSM encodes a whole leg: Encoder::for_leg"),
        }
    }

    /// Encode one packet's worth of samples.
    pub fn encode(&mut self, pcm: &[i16]) -> Vec<u8> {
        match self {
            Encoder::Pcmu => pcm.iter().map(|s| linear_to_ulaw(*s)).collect(),
            Encoder::Pcma => pcm.iter().map(|s| linear_to_alaw(*s)).collect(),
            Encoder::G722(e) => {
                let mut out = Vec::with_capacity(pcm.len() / 2);
                e.encode(pcm, &mut out);
                out
            }
            Encoder::Opus(e) => e.encode_frame(pcm).expect("opus encode of a 20 ms frame"),
            Encoder::Gsm(q) => q.pop_front().expect("a GSM payload per packet"),
        }
    }
}

/// Whether sox (for GSM) is installed.
pub fn have_sox() -> bool {
    std::process::Command::new("sox")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// 8 kHz PCM encoded by sox as raw GSM 06.10 frames (33 bytes each).
pub fn sox_gsm(pcm: &[i16]) -> Vec<u8> {
    let input: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
    sox_pipe(
        &[
            "-t", "s16", "-L", "-r", "8000", "-c", "1", "-", "-t", "gsm", "-",
        ],
        input,
    )
}

/// Raw GSM 06.10 frames decoded by sox (libgsm) to 8 kHz PCM.
pub fn sox_gsm_decode(frames: &[u8]) -> Vec<i16> {
    let out = sox_pipe(
        &[
            "-t", "gsm", "-r", "8000", "-c", "1", "-", "-t", "s16", "-L", "-",
        ],
        frames.to_vec(),
    );
    out.chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect()
}

/// `sox <args>` with `input` on stdin; its stdout.
fn sox_pipe(args: &[&str], input: Vec<u8>) -> Vec<u8> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("sox")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sox (for GSM)");
    let mut stdin = child.stdin.take().expect("sox stdin");
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().expect("sox output");
    writer.join().expect("writer").expect("write to sox");
    assert!(out.status.success(), "sox {args:?} failed");
    out.stdout
}

/// RFC 4733 event code of a DTMF digit.
pub fn dtmf_event(d: char) -> u8 {
    match d {
        '0'..='9' => d as u8 - b'0',
        '*' => 10,
        '#' => 11,
        'A'..='D' => 12 + (d as u8 - b'A'),
        _ => 0,
    }
}
