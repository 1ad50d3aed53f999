//! Encoding test audio into RTP payloads with pbx-core's own encoders (G.711,
//! G.722) and libopus.

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
}

impl TestCodec {
    pub fn payload_type(self) -> u8 {
        match self {
            TestCodec::Pcmu => 0,
            TestCodec::Pcma => 8,
            TestCodec::G722 => 9,
            TestCodec::Opus => 111,
        }
    }
    pub fn rtpmap(self) -> &'static str {
        match self {
            TestCodec::Pcmu => "PCMU/8000",
            TestCodec::Pcma => "PCMA/8000",
            TestCodec::G722 => "G722/8000",
            TestCodec::Opus => "opus/48000/2",
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
            TestCodec::Pcmu | TestCodec::Pcma => 8000,
            TestCodec::G722 | TestCodec::Opus => 16000,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            TestCodec::Pcmu => "PCMU",
            TestCodec::Pcma => "PCMA",
            TestCodec::G722 => "G722",
            TestCodec::Opus => "opus",
        }
    }
}

/// A stateful encoder for one leg.
pub enum Encoder {
    Pcmu,
    Pcma,
    G722(Box<G722Encoder>),
    Opus(Box<OpusEncoder>),
}

impl Encoder {
    pub fn new(c: TestCodec) -> Self {
        match c {
            TestCodec::Pcmu => Encoder::Pcmu,
            TestCodec::Pcma => Encoder::Pcma,
            TestCodec::G722 => Encoder::G722(Box::new(G722Encoder::new())),
            TestCodec::Opus => Encoder::Opus(Box::new(
                OpusEncoder::new(16000, 32000).expect("libopus encoder for 16 kHz mono"),
            )),
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
        }
    }
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
