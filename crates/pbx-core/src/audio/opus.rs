//! Opus via libopus (the `opus` crate).
//!
//! In: Opus RTP payloads (RFC 7587; mono or stereo, any mode, 2.5-120 ms).
//! Out: mono 16-bit PCM decoded *directly* at the recording rate (8000 or
//! 16000 Hz; libopus decodes at 8/12/16/24/48 kHz and downmixes stereo when
//! the decoder is mono), so no resampler and no extra delay on our side.
//!
//! Loss: [`Decoder::conceal`] runs libopus' packet-loss concealment for the
//! first [`MAX_PLC_MS`] ms of a gap (it fades out by itself) and appends plain
//! silence for the rest, so a long hold costs nothing. When the packet after
//! the gap is known, [`Decoder::conceal_with_next`] lets libopus rebuild the
//! last frame of the gap from that packet's in-band FEC (LBRR) data.
//!
//! Malformed packets return [`CodecError`] and append nothing. The encoder
//! ([`OpusEncoder`]) exists to generate test streams.

use super::codec::{CodecError, Decoder};

/// Concealment beyond this many ms of a gap is plain silence.
pub const MAX_PLC_MS: usize = 120;

fn opus_err(e: opus::Error) -> CodecError {
    CodecError::Opus(e.to_string())
}

/// A mono Opus decoder emitting at `out_rate`.
pub struct OpusDecoder {
    inner: opus::Decoder,
    rate: u32,
}

impl std::fmt::Debug for OpusDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusDecoder")
            .field("rate", &self.rate)
            .finish_non_exhaustive()
    }
}

impl OpusDecoder {
    /// `out_rate` must be one of 8000, 12000, 16000, 24000, 48000.
    pub fn new(out_rate: u32) -> Result<Self, CodecError> {
        if ![8000, 12000, 16000, 24000, 48000].contains(&out_rate) {
            return Err(CodecError::Unsupported(format!(
                "opus output rate {out_rate}"
            )));
        }
        let inner = opus::Decoder::new(out_rate, opus::Channels::Mono).map_err(opus_err)?;
        Ok(OpusDecoder {
            inner,
            rate: out_rate,
        })
    }

    /// Samples in 2.5 ms, the granularity of libopus' PLC and FEC.
    fn quantum(&self) -> usize {
        self.rate as usize / 400
    }

    /// Runs PLC (or FEC with `fec_from`) for `n` samples, `n` a multiple of
    /// the quantum; on any libopus error the samples are silence.
    fn plc_into(&mut self, n: usize, fec_from: Option<&[u8]>, out: &mut Vec<i16>) {
        if n == 0 {
            return;
        }
        let start = out.len();
        out.resize(start + n, 0);
        let result = match fec_from {
            Some(next) => self.inner.decode(next, &mut out[start..], true),
            None => self.inner.decode(&[], &mut out[start..], false),
        };
        match result {
            Ok(got) if got <= n => {
                // libopus fills exactly `n`; be safe if it ever says less.
                out[start + got..].fill(0);
            }
            _ => out[start..].fill(0),
        }
    }
}

impl Decoder for OpusDecoder {
    fn output_rate(&self) -> u32 {
        self.rate
    }

    fn decode(&mut self, payload: &[u8], out: &mut Vec<i16>) -> Result<usize, CodecError> {
        if payload.is_empty() {
            return Err(CodecError::InvalidPayload {
                codec: "opus",
                reason: "empty payload".into(),
            });
        }
        // The TOC says how long the packet is (at most 120 ms); libopus
        // rejects anything inconsistent.
        let n = opus::packet::get_nb_samples(payload, self.rate).map_err(opus_err)?;
        if n == 0 || n > self.rate as usize * 120 / 1000 {
            return Err(CodecError::InvalidPayload {
                codec: "opus",
                reason: format!("{n} samples"),
            });
        }
        let start = out.len();
        out.resize(start + n, 0);
        match self.inner.decode(payload, &mut out[start..], false) {
            Ok(got) => {
                out.truncate(start + got.min(n));
                Ok(got.min(n))
            }
            Err(e) => {
                out.truncate(start);
                Err(opus_err(e))
            }
        }
    }

    fn conceal(&mut self, samples: usize, out: &mut Vec<i16>) {
        let q = self.quantum();
        let plc = samples.min(self.rate as usize * MAX_PLC_MS / 1000) / q * q;
        // In chunks of at most 120 ms, libopus' limit per call.
        let chunk_max = self.rate as usize * 120 / 1000;
        let mut left = plc;
        while left > 0 {
            let n = left.min(chunk_max);
            self.plc_into(n, None, out);
            left -= n;
        }
        out.resize(out.len() + (samples - plc), 0);
    }

    fn conceal_with_next(&mut self, samples: usize, next_payload: &[u8], out: &mut Vec<i16>) {
        let q = self.quantum();
        let frame = match opus::packet::get_samples_per_frame(next_payload, self.rate) {
            Ok(f) if f > 0 && f % q == 0 && !next_payload.is_empty() => f,
            _ => return self.conceal(samples, out),
        };
        if samples < frame || samples % q != 0 {
            return self.conceal(samples, out);
        }
        // PLC for all but the last frame of the gap, FEC for that one.
        self.conceal(samples - frame, out);
        self.plc_into(frame, Some(next_payload), out);
    }
}

/// A mono Opus encoder producing 20 ms packets (VoIP application).
pub struct OpusEncoder {
    inner: opus::Encoder,
    rate: u32,
    buf: Vec<u8>,
}

impl std::fmt::Debug for OpusEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusEncoder")
            .field("rate", &self.rate)
            .finish_non_exhaustive()
    }
}

impl OpusEncoder {
    /// `rate`: 8000, 12000, 16000, 24000 or 48000; `bitrate` in bit/s.
    pub fn new(rate: u32, bitrate: i32) -> Result<Self, CodecError> {
        let mut inner = opus::Encoder::new(rate, opus::Channels::Mono, opus::Application::Voip)
            .map_err(opus_err)?;
        inner
            .set_bitrate(opus::Bitrate::Bits(bitrate))
            .map_err(opus_err)?;
        Ok(OpusEncoder {
            inner,
            rate,
            buf: vec![0; 1500],
        })
    }

    /// Turn on in-band FEC, tuned for `loss_percent` expected loss.
    pub fn set_fec(&mut self, loss_percent: i32) -> Result<(), CodecError> {
        self.inner.set_inband_fec(true).map_err(opus_err)?;
        self.inner
            .set_packet_loss_perc(loss_percent)
            .map_err(opus_err)
    }

    /// Samples per 20 ms frame at this encoder's rate.
    pub fn frame_samples(&self) -> usize {
        self.rate as usize / 50
    }

    /// Encode exactly one 20 ms frame into one packet.
    pub fn encode_frame(&mut self, pcm: &[i16]) -> Result<Vec<u8>, CodecError> {
        if pcm.len() != self.frame_samples() {
            return Err(CodecError::Unsupported(format!(
                "opus frame of {} samples (want {})",
                pcm.len(),
                self.frame_samples()
            )));
        }
        let n = self.inner.encode(pcm, &mut self.buf).map_err(opus_err)?;
        Ok(self.buf.get(..n).unwrap_or_default().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::codec::test_support::*;

    fn correlation(a: &[i16], b: &[i16]) -> f64 {
        let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
        let na: f64 = a.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
        let nb: f64 = b.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
        dot / (na * nb).max(1e-9)
    }

    #[test]
    fn sine_survives_encode_decode() {
        for rate in [8000u32, 16000] {
            let pcm = sine(440.0, rate as f64, 10000.0, rate as usize * 2);
            let mut enc = OpusEncoder::new(rate, 32000).unwrap();
            let mut dec = OpusDecoder::new(rate).unwrap();
            let mut out = Vec::new();
            for frame in pcm.chunks_exact(enc.frame_samples()) {
                let packet = enc.encode_frame(frame).unwrap();
                let n = dec.decode(&packet, &mut out).unwrap();
                assert_eq!(n, enc.frame_samples());
            }
            assert_eq!(out.len(), pcm.len());
            let lag = best_lag(&pcm[..rate as usize], &out, rate as usize / 20);
            let c = correlation(&pcm[..pcm.len() - lag], &out[lag..]);
            assert!(c > 0.9, "rate {rate}: correlation {c} at lag {lag}");
        }
    }

    #[test]
    fn bad_packets_are_errors() {
        let mut dec = OpusDecoder::new(8000).unwrap();
        let mut out = vec![7];
        assert!(dec.decode(&[], &mut out).is_err());
        // Code 3 (arbitrary frames) with a frame count byte claiming 63 frames
        // of 60 ms: far over 120 ms.
        assert!(dec.decode(&[0x1B, 0x3F], &mut out).is_err());
        // Code 3 with zero frames.
        assert!(dec.decode(&[0x03, 0x00], &mut out).is_err());
        assert_eq!(out, vec![7]);
        assert!(OpusDecoder::new(44100).is_err());
    }

    #[test]
    fn conceal_counts_are_exact() {
        let mut dec = OpusDecoder::new(16000).unwrap();
        let mut enc = OpusEncoder::new(16000, 24000).unwrap();
        let pcm = sine(300.0, 16000.0, 8000.0, 320);
        let packet = enc.encode_frame(&pcm).unwrap();
        let mut out = Vec::new();
        dec.decode(&packet, &mut out).unwrap();
        for n in [0, 1, 39, 40, 320, 321, 1920, 5000, 16000 * 3600] {
            out.clear();
            dec.conceal(n, &mut out);
            assert_eq!(out.len(), n);
        }
        out.clear();
        dec.conceal_with_next(640, &packet, &mut out);
        assert_eq!(out.len(), 640);
        out.clear();
        dec.conceal_with_next(17, &packet, &mut out);
        assert_eq!(out.len(), 17);
        out.clear();
        dec.conceal_with_next(640, &[0xFF], &mut out);
        assert_eq!(out.len(), 640);
    }

    #[test]
    fn plc_continues_the_tone() {
        let mut dec = OpusDecoder::new(8000).unwrap();
        let mut enc = OpusEncoder::new(8000, 24000).unwrap();
        let pcm = sine(500.0, 8000.0, 8000.0, 8000);
        let mut out = Vec::new();
        for frame in pcm.chunks_exact(160).take(20) {
            dec.decode(&enc.encode_frame(frame).unwrap(), &mut out)
                .unwrap();
        }
        let mut plc = Vec::new();
        dec.conceal(160, &mut plc);
        let energy = plc.iter().map(|&v| (v as f64).powi(2)).sum::<f64>();
        assert!(energy > 0.0, "PLC of a steady tone should not be silence");
    }

    #[test]
    fn fec_recovers_a_lost_frame() {
        let rate = 16000;
        let pcm = sine(400.0, rate as f64, 8000.0, rate as usize);
        let mut enc = OpusEncoder::new(rate, 24000).unwrap();
        enc.set_fec(20).unwrap();
        let packets: Vec<Vec<u8>> = pcm
            .chunks_exact(320)
            .map(|f| enc.encode_frame(f).unwrap())
            .collect();
        let mut dec = OpusDecoder::new(rate).unwrap();
        let mut out = Vec::new();
        for (i, p) in packets.iter().enumerate() {
            if i == 30 {
                continue;
            }
            if i == 31 {
                dec.conceal_with_next(320, p, &mut out);
            }
            dec.decode(p, &mut out).unwrap();
        }
        assert_eq!(out.len(), pcm.len());
        let rebuilt = &out[30 * 320..31 * 320];
        let energy = rebuilt.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / 320.0;
        assert!(
            energy.sqrt() > 1000.0,
            "rms of the rebuilt frame {}",
            energy.sqrt()
        );
    }

    #[test]
    fn corpus_opus_decodes() {
        // (file, payload type, minimum packet count, carries real audio,
        // invalid packets). invite-opus-bye's payloads are SIPp filler
        // (0xFC 0xFF 0xFE 0xA5...), valid CELT frames that decode to silence.
        // sip-rtp-opus-hybrid is a dissector sample whose code-3 packets are
        // malformed (seq 24035: two CBR frames in 143 bytes, which
        // RFC 6716 3.2.5 forbids; likewise seq 24160): libopus rejects them.
        for (name, pt, min_packets, audible, invalid) in [
            ("invite-opus-bye.pcap", 96, 300, false, 0),
            ("16_bit_48khz_60_fec_dropped.pcapng", 107, 2900, true, 0),
            ("sip-rtp-opus-hybrid.pcap", 99, 5, true, 2),
            ("opus-2013785496.pcap", 96, 100, true, 0),
        ] {
            let Some(file) = corpus_file(name) else {
                continue;
            };
            let packets = rtp_payloads(&file, pt);
            assert!(
                packets.len() >= min_packets,
                "{name}: {} packets",
                packets.len()
            );
            for rate in [8000u32, 16000] {
                let mut dec = OpusDecoder::new(rate).unwrap();
                let mut out = Vec::new();
                let mut prev_seq: Option<(u32, u16)> = None;
                let mut errors = 0;
                for (ssrc, seq, _, payload) in &packets {
                    // Rebuild single-packet gaps with FEC, as the engine would.
                    if let Some((s, p)) = prev_seq {
                        if s == *ssrc && seq.wrapping_sub(p) == 2 {
                            let n = opus::packet::get_nb_samples(payload, rate).unwrap();
                            dec.conceal_with_next(n, payload, &mut out);
                        }
                    }
                    prev_seq = Some((*ssrc, *seq));
                    let before = out.len();
                    match dec.decode(payload, &mut out) {
                        Ok(n) => assert!(n > 0),
                        Err(e) => {
                            eprintln!("{name} seq {seq}: {e}");
                            assert_eq!(out.len(), before);
                            errors += 1;
                        }
                    }
                }
                assert_eq!(errors, invalid, "{name}: invalid packets");
                let rms = (out.iter().map(|&v| (v as f64).powi(2)).sum::<f64>()
                    / out.len().max(1) as f64)
                    .sqrt();
                eprintln!("{name} at {rate}: {} samples, rms {rms:.0}", out.len());
                if audible {
                    assert!(rms > 10.0, "{name}: silent");
                }
            }
        }
    }
}
