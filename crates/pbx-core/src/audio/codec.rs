//! The codec registry and the decoder trait.
//!
//! In: an RTP payload type (static, RFC 3551) or an SDP `a=rtpmap` line's
//! encoding name / clock rate / channels. Out: a [`Codec`] that knows its RTP
//! clock rate (with the quirks: G.722 counts at 8000 though it samples at
//! 16000, Opus always counts at 48000), and through [`new_decoder`] a boxed
//! [`Decoder`] that turns payloads into mono PCM at the recording rate
//! (8000 or 16000 Hz).
//!
//! ## Promises of every decoder from [`new_decoder`]
//!
//! - **Sample counts are exact.** A payload holding `n` samples at the codec's
//!   native rate appends exactly `n * out_rate / native_rate` samples (for
//!   G.711, G.722, GSM and L16 that is a fixed function of the payload length; for
//!   Opus it is what the packet's TOC says). The timeline can therefore place
//!   each packet by its RTP timestamp and trust the length. (One exception:
//!   16 kHz L16 packets with an odd sample count into an 8 kHz recording
//!   alternate between rounding down and up; the running total is exact.)
//! - **Delay is reported, not hidden.** Decoders that resample (G.711 at
//!   16 kHz, G.722 at 8 kHz, L16 at the other rate) go through the streaming
//!   [`Resampler`] and report its group delay in
//!   [`Decoder::delay_samples`] (output samples: 40 when upsampling to 16 kHz,
//!   19 when downsampling to 8 kHz, i.e. 2.5 ms); G.722 and Opus add the
//!   delay of the codec itself (22 samples of QMF at 16 kHz; Opus' 6.5 ms
//!   encoder look-ahead). Sample `i` of the output
//!   shows what the sender sent at output position `i - delay_samples()`.
//!   We chose this over self-compensation (dropping the first `delay` samples
//!   and flushing at the end) because it keeps the exact per-packet sample
//!   counts above; a timeline that cares subtracts the delay once when it
//!   anchors the leg. For 2.5 ms it may also simply ignore it.
//! - **No allocation per packet** beyond the growth of `out` (resampling
//!   decoders keep one reusable scratch buffer).
//! - **Malformed payloads never panic**: they return a [`CodecError`] and
//!   append nothing.

use super::g711::{G711Decoder, Law};
use super::g722::G722Decoder;
use super::gsm::GsmDecoder;
use super::opus::OpusDecoder;
use super::resample::Resampler;

/// Errors from decoders.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The payload is not a valid packet for this codec.
    #[error("invalid {codec} payload: {reason}")]
    InvalidPayload { codec: &'static str, reason: String },
    /// libopus refused to create a decoder / encoder or to decode.
    #[error("opus: {0}")]
    Opus(String),
    /// A rate or channel layout this build does not handle.
    #[error("unsupported: {0}")]
    Unsupported(String),
}

/// A media format as RTP and SDP name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Codec {
    /// G.711 μ-law, PT 0.
    Pcmu,
    /// G.711 A-law, PT 8.
    Pcma,
    /// G.722 at 64 kbit/s, PT 9 (16 kHz audio, 8 kHz RTP clock).
    G722,
    /// GSM 06.10 full rate, PT 3 (RFC 3551 4.5.8: 33-byte frames of 20 ms).
    Gsm,
    /// Opus (48 kHz RTP clock whatever the audio bandwidth).
    Opus,
    /// Linear 16-bit big-endian PCM.
    L16 { rate: u32, channels: u8 },
    /// RFC 4733 DTMF events; `rate` is the clock of the audio it accompanies.
    TelephoneEvent { rate: u32 },
    /// RFC 3389 comfort noise, PT 13: silence for a recorder.
    ComfortNoise,
    /// Anything else (G.729, G.723, ...): recognised, not decodable.
    Unknown { name: String, rate: u32 },
}

impl Codec {
    /// The RFC 3551 static payload types. Types 0-34 that RFC 3551 assigns
    /// give a codec (`Unknown` for the ones we cannot decode); dynamic and
    /// unassigned types give `None` (they need an `a=rtpmap`).
    pub fn from_static_pt(pt: u8) -> Option<Codec> {
        let unknown = |name: &str, rate: u32| {
            Some(Codec::Unknown {
                name: name.to_string(),
                rate,
            })
        };
        match pt {
            0 => Some(Codec::Pcmu),
            3 => Some(Codec::Gsm),
            4 => unknown("G723", 8000),
            5 => unknown("DVI4", 8000),
            6 => unknown("DVI4", 16000),
            7 => unknown("LPC", 8000),
            8 => Some(Codec::Pcma),
            9 => Some(Codec::G722),
            10 => Some(Codec::L16 {
                rate: 44100,
                channels: 2,
            }),
            11 => Some(Codec::L16 {
                rate: 44100,
                channels: 1,
            }),
            12 => unknown("QCELP", 8000),
            13 => Some(Codec::ComfortNoise),
            14 => unknown("MPA", 90000),
            15 => unknown("G728", 8000),
            16 => unknown("DVI4", 11025),
            17 => unknown("DVI4", 22050),
            18 => unknown("G729", 8000),
            25 => unknown("CelB", 90000),
            26 => unknown("JPEG", 90000),
            28 => unknown("nv", 90000),
            31 => unknown("H261", 90000),
            32 => unknown("MPV", 90000),
            33 => unknown("MP2T", 90000),
            34 => unknown("H263", 90000),
            _ => None,
        }
    }

    /// From an `a=rtpmap:<pt> <encoding>/<clock_rate>[/<channels>]` line.
    /// Names are matched case-insensitively. The clock rate of PCMU, PCMA,
    /// G722, opus and CN is fixed by their RFCs and the SDP value is ignored
    /// (broken offers such as `G722/16000` still mean G.722 with an 8 kHz
    /// RTP clock).
    pub fn from_rtpmap(encoding: &str, clock_rate: u32, channels: Option<u8>) -> Codec {
        let e = encoding.trim();
        if e.eq_ignore_ascii_case("PCMU") {
            Codec::Pcmu
        } else if e.eq_ignore_ascii_case("PCMA") {
            Codec::Pcma
        } else if e.eq_ignore_ascii_case("G722") {
            Codec::G722
        } else if e.eq_ignore_ascii_case("opus") {
            Codec::Opus
        } else if e.eq_ignore_ascii_case("GSM") {
            Codec::Gsm
        } else if e.eq_ignore_ascii_case("L16") {
            Codec::L16 {
                rate: clock_rate,
                channels: channels.unwrap_or(1),
            }
        } else if e.eq_ignore_ascii_case("telephone-event") {
            Codec::TelephoneEvent { rate: clock_rate }
        } else if e.eq_ignore_ascii_case("CN") {
            Codec::ComfortNoise
        } else {
            Codec::Unknown {
                name: e.to_string(),
                rate: clock_rate,
            }
        }
    }

    /// The canonical encoding name (as written in SDP).
    pub fn name(&self) -> &str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
            Codec::G722 => "G722",
            Codec::Gsm => "GSM",
            Codec::Opus => "opus",
            Codec::L16 { .. } => "L16",
            Codec::TelephoneEvent { .. } => "telephone-event",
            Codec::ComfortNoise => "CN",
            Codec::Unknown { name, .. } => name,
        }
    }

    /// Units per second of the RTP timestamp.
    pub fn rtp_clock_rate(&self) -> u32 {
        match self {
            Codec::Pcmu | Codec::Pcma | Codec::Gsm | Codec::ComfortNoise => 8000,
            // RFC 3551 4.5.2: G.722 samples at 16 kHz but its clock says 8 kHz.
            Codec::G722 => 8000,
            // RFC 7587: always 48 kHz.
            Codec::Opus => 48000,
            Codec::L16 { rate, .. } => *rate,
            Codec::TelephoneEvent { rate } => *rate,
            Codec::Unknown { rate, .. } => *rate,
        }
    }

    /// Sample rate of the decoded audio (for Opus the full band; the decoder
    /// from [`new_decoder`] decodes directly at the requested output rate).
    pub fn native_rate(&self) -> u32 {
        match self {
            Codec::Pcmu | Codec::Pcma | Codec::Gsm | Codec::ComfortNoise => 8000,
            Codec::G722 => 16000,
            Codec::Opus => 48000,
            Codec::L16 { rate, .. } => *rate,
            Codec::TelephoneEvent { rate } => *rate,
            Codec::Unknown { rate, .. } => *rate,
        }
    }

    /// Audio above narrowband (8 kHz sampling): worth a 16 kHz recording.
    pub fn is_wideband(&self) -> bool {
        match self {
            Codec::G722 | Codec::Opus => true,
            Codec::L16 { rate, .. } => *rate >= 16000,
            _ => false,
        }
    }

    /// [`new_decoder`] has a decoder for it: the one list of codecs the
    /// recorder decodes (the SIPREC SDP answer offers only these). L16 only
    /// at 8 or 16 kHz, mono or stereo.
    pub fn is_decodable(&self) -> bool {
        match self {
            Codec::Pcmu | Codec::Pcma | Codec::G722 | Codec::Gsm | Codec::Opus => true,
            Codec::L16 { rate, channels } => L16Decoder::new(*rate, *channels).is_some(),
            Codec::TelephoneEvent { .. } | Codec::ComfortNoise | Codec::Unknown { .. } => false,
        }
    }

    /// Carries audio to decode (false for telephone-event, CN and unknowns).
    pub fn is_audio(&self) -> bool {
        matches!(
            self,
            Codec::Pcmu | Codec::Pcma | Codec::G722 | Codec::Gsm | Codec::Opus | Codec::L16 { .. }
        )
    }
}

/// Turns RTP payloads of one stream into mono PCM at [`Decoder::output_rate`].
pub trait Decoder: Send {
    /// Sample rate of the PCM this decoder emits (mono).
    fn output_rate(&self) -> u32;

    /// Decode one RTP payload, appending mono PCM at `output_rate()` to `out`.
    /// Returns the number of samples appended. On error nothing is appended.
    fn decode(&mut self, payload: &[u8], out: &mut Vec<i16>) -> Result<usize, CodecError>;

    /// Packet-loss concealment for `samples` missing samples (at output rate):
    /// appends exactly `samples` samples (silence for most codecs; Opus runs
    /// its PLC for the first 120 ms of a gap and appends silence after that).
    fn conceal(&mut self, samples: usize, out: &mut Vec<i16>);

    /// Concealment when the packet *after* the gap is already at hand: codecs
    /// with in-band FEC (Opus) rebuild the end of the gap from it. Appends
    /// exactly `samples` samples; call [`Decoder::decode`] on `next_payload`
    /// afterwards as usual. Default: [`Decoder::conceal`].
    fn conceal_with_next(&mut self, samples: usize, next_payload: &[u8], out: &mut Vec<i16>) {
        let _ = next_payload;
        self.conceal(samples, out);
    }

    /// Group delay this decoder adds, in output samples (see the module docs).
    fn delay_samples(&self) -> usize {
        0
    }

    /// Whether the decoder's filters hold output still to come after a
    /// packet (a resampler's or a QMF's delay line): see [`Decoder::tail`].
    fn holds_tail(&self) -> bool {
        false
    }

    /// The samples this decoder would still emit if silence followed the
    /// last packet, until its filters have rung out (trailing zeros left
    /// off), appended to `out`; the decoder itself is unchanged. They
    /// belong right after the last packet's output: at a codec switch, a
    /// gap or the call's end they are otherwise lost (or land at the start
    /// of the next packet's output). Nothing for decoders without such
    /// state.
    fn tail(&self, out: &mut Vec<i16>) {
        let _ = out;
    }
}

/// A decoder emitting at `out_rate` (8000 or 16000), or `None` for non-audio,
/// unknown or unsupported formats (L16 at rates other than 8000 / 16000, or
/// with more than 2 channels; any other `out_rate`).
///
/// Opus decodes natively at `out_rate` (libopus downmixes stereo streams).
/// G.711 at 16 kHz, G.722 at 8 kHz and L16 at the other rate go through the
/// resampler and report its delay in [`Decoder::delay_samples`].
pub fn new_decoder(codec: &Codec, out_rate: u32) -> Option<Box<dyn Decoder>> {
    if out_rate != 8000 && out_rate != 16000 {
        return None;
    }
    match codec {
        Codec::Pcmu => Some(resampled(G711Decoder::new(Law::Ulaw), out_rate)),
        Codec::Pcma => Some(resampled(G711Decoder::new(Law::Alaw), out_rate)),
        Codec::G722 => Some(resampled(G722Decoder::new(), out_rate)),
        Codec::Gsm => Some(resampled(GsmDecoder::new(), out_rate)),
        Codec::Opus => OpusDecoder::new(out_rate)
            .ok()
            .map(|d| Box::new(d) as Box<dyn Decoder>),
        Codec::L16 { rate, channels } => {
            let d = L16Decoder::new(*rate, *channels)?;
            Some(resampled(d, out_rate))
        }
        Codec::TelephoneEvent { .. } | Codec::ComfortNoise | Codec::Unknown { .. } => None,
    }
}

/// Wraps `inner` in a resampler unless it already emits at `out_rate`.
fn resampled<D: Decoder + 'static>(inner: D, out_rate: u32) -> Box<dyn Decoder> {
    if inner.output_rate() == out_rate {
        return Box::new(inner);
    }
    match Resampler::new(inner.output_rate(), out_rate) {
        Ok(resampler) => Box::new(ResamplingDecoder {
            inner,
            resampler,
            scratch: Vec::new(),
        }),
        // Callers only pass 8000 / 16000 here; keep the native rate otherwise.
        Err(_) => Box::new(inner),
    }
}

/// A decoder followed by the streaming resampler. Concealment is pushed through
/// the resampler too, so its state stays continuous across gaps.
struct ResamplingDecoder<D> {
    inner: D,
    resampler: Resampler,
    /// Decoded PCM at the inner rate; reused, so no allocation per packet.
    scratch: Vec<i16>,
}

impl<D: Decoder> ResamplingDecoder<D> {
    /// Bound on the scratch buffer kept between packets.
    const SCRATCH_KEEP: usize = 16 * 1024;

    fn trim_scratch(&mut self) {
        self.scratch.clear();
        if self.scratch.capacity() > Self::SCRATCH_KEEP {
            self.scratch.shrink_to(Self::SCRATCH_KEEP);
        }
    }
}

impl<D: Decoder> Decoder for ResamplingDecoder<D> {
    fn output_rate(&self) -> u32 {
        self.resampler.output_rate()
    }

    fn decode(&mut self, payload: &[u8], out: &mut Vec<i16>) -> Result<usize, CodecError> {
        self.scratch.clear();
        self.inner.decode(payload, &mut self.scratch)?;
        let before = out.len();
        self.resampler.process(&self.scratch, out);
        self.trim_scratch();
        Ok(out.len() - before)
    }

    fn conceal(&mut self, samples: usize, out: &mut Vec<i16>) {
        let (num, den) = (
            self.resampler.input_rate() as usize,
            self.resampler.output_rate() as usize,
        );
        // Samples are requested at the output rate; the inner decoder works at
        // the input rate. With 8k<->16k the conversion is exact for even
        // counts; an odd count at 16k out is rounded up at the input side and
        // the surplus output sample trimmed.
        let mut remaining = (samples * num).div_ceil(den);
        let before = out.len();
        // In bounded chunks, so an hour on hold costs no more memory than a
        // packet; silence skips the filter once its state has drained.
        while remaining > 0 {
            let chunk = remaining.min(Self::SCRATCH_KEEP);
            self.scratch.clear();
            self.inner.conceal(chunk, &mut self.scratch);
            if self.scratch.iter().all(|&s| s == 0) {
                self.resampler.process_silence(self.scratch.len(), out);
            } else {
                self.resampler.process(&self.scratch, out);
            }
            remaining -= chunk;
        }
        self.trim_scratch();
        out.resize(before + samples, 0);
    }

    fn delay_samples(&self) -> usize {
        self.inner.delay_samples() * self.resampler.output_rate() as usize
            / self.resampler.input_rate() as usize
            + self.resampler.delay()
    }

    fn holds_tail(&self) -> bool {
        self.resampler.delay() > 0 || self.inner.holds_tail()
    }

    fn tail(&self, out: &mut Vec<i16>) {
        let mut inner = Vec::new();
        self.inner.tail(&mut inner);
        self.resampler.tail(&inner, out);
    }
}

/// L16 (RFC 3551 4.5.11): big-endian signed 16-bit, interleaved channels.
/// Stereo is downmixed to mono by averaging. A trailing partial frame (odd
/// byte count, or half a stereo frame) is ignored.
#[derive(Debug, Clone)]
pub struct L16Decoder {
    rate: u32,
    channels: u8,
}

impl L16Decoder {
    /// `None` unless `rate` is 8000 or 16000 and `channels` is 1 or 2.
    pub fn new(rate: u32, channels: u8) -> Option<Self> {
        let rate_ok = rate == 8000 || rate == 16000;
        let channels_ok = channels == 1 || channels == 2;
        (rate_ok && channels_ok).then_some(L16Decoder { rate, channels })
    }
}

impl Decoder for L16Decoder {
    fn output_rate(&self) -> u32 {
        self.rate
    }

    fn decode(&mut self, payload: &[u8], out: &mut Vec<i16>) -> Result<usize, CodecError> {
        let before = out.len();
        if self.channels == 2 {
            out.extend(payload.chunks_exact(4).map(|f| {
                let l = i16::from_be_bytes([f[0], f[1]]) as i32;
                let r = i16::from_be_bytes([f[2], f[3]]) as i32;
                // The floor of the mean always fits in i16.
                ((l + r) >> 1) as i16
            }));
        } else {
            out.extend(
                payload
                    .chunks_exact(2)
                    .map(|s| i16::from_be_bytes([s[0], s[1]])),
            );
        }
        Ok(out.len() - before)
    }

    fn conceal(&mut self, samples: usize, out: &mut Vec<i16>) {
        out.resize(out.len() + samples, 0);
    }
}

/// Helpers shared by the audio tests: RTP payloads out of corpus captures.
#[cfg(test)]
pub(crate) mod test_support {
    use std::path::PathBuf;

    /// `/work/shared/corpus/<name>`, or `None` (with a note) when missing.
    pub fn corpus_file(name: &str) -> Option<Vec<u8>> {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/corpus")
            .join(name);
        match std::fs::read(&path) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                eprintln!(
                    "note: corpus file {} unavailable ({e}); skipping",
                    path.display()
                );
                None
            }
        }
    }

    fn u16_at(b: &[u8], at: usize, le: bool) -> Option<u16> {
        let s: [u8; 2] = b.get(at..at + 2)?.try_into().ok()?;
        Some(if le {
            u16::from_le_bytes(s)
        } else {
            u16::from_be_bytes(s)
        })
    }

    fn u32_at(b: &[u8], at: usize, le: bool) -> Option<u32> {
        let s: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
        Some(if le {
            u32::from_le_bytes(s)
        } else {
            u32::from_be_bytes(s)
        })
    }

    /// (link type, frame bytes) of every packet of a pcap or pcapng file.
    /// Crude, test-only: the real reader is `crate::capture`.
    pub fn frames(file: &[u8]) -> Vec<(u32, Vec<u8>)> {
        let mut out = Vec::new();
        let magic = u32_at(file, 0, true).unwrap_or(0);
        if magic == 0x0A0D_0D0A {
            // pcapng
            let le = u32_at(file, 8, true) == Some(0x1A2B_3C4D);
            let mut at = 0usize;
            let mut link_types = Vec::new();
            while let (Some(kind), Some(len)) = (u32_at(file, at, le), u32_at(file, at + 4, le)) {
                let len = len as usize;
                if len < 12 {
                    break;
                }
                match kind {
                    1 => link_types.push(u16_at(file, at + 8, le).unwrap_or(1) as u32),
                    6 => {
                        let iface = u32_at(file, at + 8, le).unwrap_or(0) as usize;
                        let caplen = u32_at(file, at + 20, le).unwrap_or(0) as usize;
                        if let Some(data) = file.get(at + 28..at + 28 + caplen) {
                            let lt = link_types.get(iface).copied().unwrap_or(1);
                            out.push((lt, data.to_vec()));
                        }
                    }
                    _ => {}
                }
                at += len;
            }
        } else if magic == 0xA1B2_C3D4 || magic == 0xA1B2_3C4D || magic.swap_bytes() == 0xA1B2_C3D4
        {
            let le = magic == 0xA1B2_C3D4 || magic == 0xA1B2_3C4D;
            let lt = u32_at(file, 20, le).unwrap_or(1);
            let mut at = 24usize;
            while let Some(incl) = u32_at(file, at + 8, le) {
                let incl = incl as usize;
                if let Some(data) = file.get(at + 16..at + 16 + incl) {
                    out.push((lt, data.to_vec()));
                }
                at += 16 + incl;
            }
        }
        out
    }

    /// RTP payloads `(ssrc, seq, timestamp, payload)` with payload type `pt`,
    /// in capture order.
    pub fn rtp_payloads(file: &[u8], pt: u8) -> Vec<(u32, u16, u32, Vec<u8>)> {
        let mut out = Vec::new();
        for (lt, frame) in frames(file) {
            let sliced = match lt {
                1 => etherparse::SlicedPacket::from_ethernet(&frame),
                113 => etherparse::SlicedPacket::from_linux_sll(&frame),
                _ => continue,
            };
            let Ok(sliced) = sliced else { continue };
            let Some(etherparse::TransportSlice::Udp(udp)) = sliced.transport else {
                continue;
            };
            let p = udp.payload();
            if p.len() < 12 || p[0] >> 6 != 2 || p[1] & 0x7F != pt {
                continue;
            }
            let cc = (p[0] & 0x0F) as usize;
            let mut start = 12 + 4 * cc;
            if p[0] & 0x10 != 0 {
                let Some(words) = u16_at(p, start + 2, false) else {
                    continue;
                };
                start += 4 + 4 * words as usize;
            }
            let mut end = p.len();
            if p[0] & 0x20 != 0 {
                end = end.saturating_sub(*p.last().unwrap_or(&0) as usize);
            }
            let Some(payload) = p.get(start..end) else {
                continue;
            };
            let seq = u16_at(p, 2, false).unwrap_or(0);
            let ts = u32_at(p, 4, false).unwrap_or(0);
            let ssrc = u32_at(p, 8, false).unwrap_or(0);
            out.push((ssrc, seq, ts, payload.to_vec()));
        }
        out
    }

    /// Signal-to-noise ratio in dB of `got` against `want`.
    pub fn snr_db(want: &[f64], got: &[f64]) -> f64 {
        let sig: f64 = want.iter().map(|v| v * v).sum();
        let noise: f64 = want.iter().zip(got).map(|(a, b)| (a - b) * (a - b)).sum();
        10.0 * (sig / noise.max(1e-9)).log10()
    }

    /// Power of frequency `freq` in `x` (Goertzel), normalised so that a
    /// full-scale sine of amplitude A gives A²/4·N²… compare only ratios.
    pub fn goertzel_power(x: &[i16], rate: f64, freq: f64) -> f64 {
        let w = 2.0 * std::f64::consts::PI * freq / rate;
        let coeff = 2.0 * w.cos();
        let (mut s1, mut s2) = (0.0f64, 0.0f64);
        // Hann window to keep leakage of a strong neighbour below -50 dB.
        let n = x.len() as f64;
        for (i, &v) in x.iter().enumerate() {
            let win = 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / n).cos();
            let s0 = v as f64 * win + coeff * s1 - s2;
            s2 = s1;
            s1 = s0;
        }
        s1 * s1 + s2 * s2 - coeff * s1 * s2
    }

    /// A sine of `freq` Hz, `amplitude`, `len` samples at `rate`.
    pub fn sine(freq: f64, rate: f64, amplitude: f64, len: usize) -> Vec<i16> {
        (0..len)
            .map(|i| {
                (amplitude * (2.0 * std::f64::consts::PI * freq * i as f64 / rate).sin()).round()
                    as i16
            })
            .collect()
    }

    /// Delay (in samples, 0..max_lag) that best aligns `got` to `want`.
    pub fn best_lag(want: &[i16], got: &[i16], max_lag: usize) -> usize {
        let mut best = (0usize, f64::MIN);
        for lag in 0..max_lag {
            let c: f64 = want
                .iter()
                .zip(got.iter().skip(lag))
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum();
            if c > best.1 {
                best = (lag, c);
            }
        }
        best.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one codec list: `is_decodable` says exactly where `new_decoder`
    /// has a decoder (the SIPREC answer offers only those).
    #[test]
    fn is_decodable_matches_new_decoder() {
        let mut codecs = vec![
            Codec::Pcmu,
            Codec::Pcma,
            Codec::G722,
            Codec::Gsm,
            Codec::Opus,
            Codec::TelephoneEvent { rate: 8000 },
            Codec::ComfortNoise,
            Codec::from_rtpmap("G729", 8000, None),
        ];
        for rate in [8000, 11025, 16000, 44100, 48000] {
            for channels in 0..=3 {
                codecs.push(Codec::L16 { rate, channels });
            }
        }
        for c in &codecs {
            for out in [8000, 16000] {
                assert_eq!(
                    c.is_decodable(),
                    new_decoder(c, out).is_some(),
                    "{c:?} at {out}"
                );
            }
        }
        assert_eq!(codecs.iter().filter(|c| c.is_decodable()).count(), 5 + 4);
    }

    #[test]
    fn static_payload_types() {
        assert_eq!(Codec::from_static_pt(0), Some(Codec::Pcmu));
        assert_eq!(Codec::from_static_pt(8), Some(Codec::Pcma));
        assert_eq!(Codec::from_static_pt(9), Some(Codec::G722));
        assert_eq!(Codec::from_static_pt(13), Some(Codec::ComfortNoise));
        assert_eq!(
            Codec::from_static_pt(10),
            Some(Codec::L16 {
                rate: 44100,
                channels: 2
            })
        );
        assert_eq!(
            Codec::from_static_pt(11),
            Some(Codec::L16 {
                rate: 44100,
                channels: 1
            })
        );
        assert_eq!(
            Codec::from_static_pt(18),
            Some(Codec::Unknown {
                name: "G729".into(),
                rate: 8000
            })
        );
        assert_eq!(Codec::from_static_pt(3), Some(Codec::Gsm));
        assert_eq!(Codec::Gsm.name(), "GSM");
        for pt in [1, 2, 19, 20, 24, 35, 96, 101, 127, 200] {
            assert_eq!(Codec::from_static_pt(pt), None, "pt {pt}");
        }
    }

    #[test]
    fn rtpmap_names() {
        assert_eq!(Codec::from_rtpmap("pcmu", 8000, None), Codec::Pcmu);
        assert_eq!(Codec::from_rtpmap("PCMA", 8000, None), Codec::Pcma);
        assert_eq!(Codec::from_rtpmap("g722", 8000, None), Codec::G722);
        assert_eq!(Codec::from_rtpmap("G722", 16000, Some(1)), Codec::G722);
        assert_eq!(Codec::from_rtpmap("OPUS", 48000, Some(2)), Codec::Opus);
        assert_eq!(
            Codec::from_rtpmap("L16", 16000, None),
            Codec::L16 {
                rate: 16000,
                channels: 1
            }
        );
        assert_eq!(
            Codec::from_rtpmap("Telephone-Event", 16000, None),
            Codec::TelephoneEvent { rate: 16000 }
        );
        assert_eq!(Codec::from_rtpmap("cn", 8000, None), Codec::ComfortNoise);
        assert_eq!(
            Codec::from_rtpmap("G729", 8000, None),
            Codec::Unknown {
                name: "G729".into(),
                rate: 8000
            }
        );
    }

    #[test]
    fn clock_quirks() {
        assert_eq!(Codec::G722.rtp_clock_rate(), 8000);
        assert_eq!(Codec::G722.native_rate(), 16000);
        assert_eq!(Codec::Opus.rtp_clock_rate(), 48000);
        assert_eq!(Codec::Pcmu.rtp_clock_rate(), 8000);
        assert_eq!(
            Codec::TelephoneEvent { rate: 48000 }.rtp_clock_rate(),
            48000
        );
        assert!(Codec::G722.is_wideband());
        assert!(Codec::Opus.is_wideband());
        assert!(!Codec::Pcma.is_wideband());
        assert!(Codec::L16 {
            rate: 16000,
            channels: 1
        }
        .is_wideband());
        assert!(!Codec::ComfortNoise.is_audio());
        assert!(!Codec::TelephoneEvent { rate: 8000 }.is_audio());
        assert!(Codec::Pcmu.is_audio());
        for c in [
            Codec::Pcmu,
            Codec::Pcma,
            Codec::G722,
            Codec::Gsm,
            Codec::Opus,
            Codec::ComfortNoise,
            Codec::TelephoneEvent { rate: 8000 },
        ] {
            assert_eq!(Codec::from_rtpmap(c.name(), c.rtp_clock_rate(), None), c);
        }
    }

    #[test]
    fn decoder_availability_and_rates() {
        for (codec, rate, delay) in [
            (Codec::Pcmu, 8000, 0),
            (Codec::Pcmu, 16000, 40),
            (Codec::Pcma, 16000, 40),
            // G.722: its QMF pair's 22 samples at 16 kHz (11 at 8 kHz) on
            // top of the downsampler's 19.
            (Codec::G722, 16000, 22),
            (Codec::G722, 8000, 30),
            // Opus: the sender's 6.5 ms look-ahead (decoded at the rate
            // itself: no resampler).
            (Codec::Opus, 8000, 52),
            (Codec::Opus, 16000, 104),
            (Codec::Gsm, 8000, 0),
            (Codec::Gsm, 16000, 40),
        ] {
            let d = new_decoder(&codec, rate).expect("decoder");
            assert_eq!(d.output_rate(), rate, "{codec:?}");
            assert_eq!(d.delay_samples(), delay, "{codec:?} at {rate}");
        }
        for codec in [
            Codec::ComfortNoise,
            Codec::TelephoneEvent { rate: 8000 },
            Codec::Unknown {
                name: "G729".into(),
                rate: 8000,
            },
            Codec::L16 {
                rate: 44100,
                channels: 1,
            },
            Codec::L16 {
                rate: 8000,
                channels: 3,
            },
        ] {
            assert!(new_decoder(&codec, 8000).is_none(), "{codec:?}");
        }
        assert!(new_decoder(&Codec::Pcmu, 44100).is_none());
    }

    /// The promise the timeline relies on: exact sample counts per packet.
    #[test]
    fn exact_sample_counts() {
        let payload = [0x55u8; 160];
        let mut out = Vec::new();
        for (codec, rate, want) in [
            (Codec::Pcmu, 8000, 160),
            (Codec::Pcma, 16000, 320),
            (Codec::G722, 16000, 320),
            (Codec::G722, 8000, 160),
        ] {
            let mut d = new_decoder(&codec, rate).expect("decoder");
            for _ in 0..3 {
                out.clear();
                assert_eq!(d.decode(&payload, &mut out), Ok(want));
                assert_eq!(out.len(), want);
            }
            out.clear();
            d.conceal(want, &mut out);
            assert_eq!(out.len(), want);
            out.clear();
            d.conceal(7, &mut out);
            assert_eq!(out.len(), 7);
        }
    }

    #[test]
    fn l16_mono_and_stereo() {
        let mut d = new_decoder(
            &Codec::L16 {
                rate: 8000,
                channels: 1,
            },
            8000,
        )
        .expect("l16");
        let mut out = Vec::new();
        assert_eq!(d.decode(&[0x12, 0x34, 0xFF, 0xFE, 0x01], &mut out), Ok(2));
        assert_eq!(out, vec![0x1234, -2]);

        let mut d = new_decoder(
            &Codec::L16 {
                rate: 16000,
                channels: 2,
            },
            16000,
        )
        .expect("l16 stereo");
        out.clear();
        let frames = [
            0x7F, 0xFF, 0x7F, 0xFF, 0x80, 0x00, 0x80, 0x00, 0x00, 0x10, 0x00, 0x30,
        ];
        assert_eq!(d.decode(&frames, &mut out), Ok(3));
        assert_eq!(out, vec![32767, -32768, 0x20]);

        // 16 kHz L16 into an 8 kHz recording halves the count.
        let mut d = new_decoder(
            &Codec::L16 {
                rate: 16000,
                channels: 1,
            },
            8000,
        )
        .expect("l16 down");
        out.clear();
        assert_eq!(d.decode(&[0u8; 640], &mut out), Ok(160));
    }

    /// G.711 through the 16 kHz decoder: same tone, twice the samples.
    #[test]
    fn g711_at_16k_keeps_the_tone() {
        use super::test_support::*;
        let tone = sine(1000.0, 8000.0, 8000.0, 1600);
        let mut ulaw = Vec::new();
        crate::audio::g711::encode_ulaw(&tone, &mut ulaw);
        let mut d = new_decoder(&Codec::Pcmu, 16000).expect("pcmu");
        let mut out = Vec::new();
        for p in ulaw.chunks(160) {
            d.decode(p, &mut out).expect("decode");
        }
        assert_eq!(out.len(), 3200);
        let delay = d.delay_samples();
        let want = sine(1000.0, 16000.0, 8000.0, 3200 - delay);
        let got: Vec<f64> = out[delay..].iter().map(|&v| v as f64).collect();
        let want: Vec<f64> = want.iter().map(|&v| v as f64).collect();
        // G.711 quantisation limits this to ~35 dB.
        let snr = snr_db(&want[200..], &got[200..]);
        assert!(snr > 30.0, "snr {snr}");
    }

    proptest::proptest! {
        /// Any bytes, any codec: no panic, and on success exactly the
        /// promised number of samples (nothing appended on error).
        #[test]
        fn arbitrary_payloads_are_safe(
            payloads in proptest::collection::vec(
                proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400), 1..6),
            gap in 0usize..2000,
        ) {
            for codec in [
                Codec::Pcmu,
                Codec::Pcma,
                Codec::G722,
                Codec::Opus,
                Codec::L16 { rate: 8000, channels: 2 },
                Codec::L16 { rate: 16000, channels: 1 },
            ] {
                for rate in [8000u32, 16000] {
                    let mut d = new_decoder(&codec, rate).expect("decoder");
                    let mut out = Vec::new();
                    for p in &payloads {
                        let before = out.len();
                        match d.decode(p, &mut out) {
                            Ok(n) => {
                                proptest::prop_assert_eq!(out.len(), before + n);
                                let expected = match &codec {
                                    Codec::Pcmu | Codec::Pcma => Some(p.len() * rate as usize / 8000),
                                    Codec::G722 => Some(p.len() * rate as usize / 8000),
                                    Codec::L16 { rate: r, channels } => {
                                        let frames = p.len() / (2 * *channels as usize);
                                        Some(frames * rate as usize / *r as usize)
                                    }
                                    _ => None,
                                };
                                if let Some(e) = expected {
                                    // Downsampling an odd count may round
                                    // either way; the total stays exact.
                                    proptest::prop_assert!(n.abs_diff(e) <= 1, "{:?} {} {}", codec, n, e);
                                }
                            }
                            Err(_) => proptest::prop_assert_eq!(out.len(), before),
                        }
                        let before = out.len();
                        d.conceal_with_next(gap, p, &mut out);
                        proptest::prop_assert_eq!(out.len(), before + gap);
                    }
                }
            }
        }
    }

    #[test]
    fn decoders_are_send() {
        fn is_send<T: Send>(_: &T) {}
        let d = new_decoder(&Codec::G722, 8000).expect("g722");
        is_send(&d);
    }
}
