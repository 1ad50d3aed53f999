//! Opus through libopus: by default built from the sources in `libopus/`
//! by build.rs with the `cc` crate (feature `bundled-opus`: a C compiler is
//! all it needs, no pkg-config, no cmake), or the system's shared libopus
//! (`opus` crate, feature `system-opus`, for packagers; it wins when both
//! are on). `tests/opus_libopus.rs` compares the bundled decoder with the
//! system's libopus.so.0 (loaded at run time) sample for sample on SILK,
//! hybrid and CELT streams with PLC and FEC; the measured tolerance is
//! stated there.
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

#[cfg(not(any(feature = "bundled-opus", feature = "system-opus")))]
compile_error!("pbx-core needs an Opus backend: feature `bundled-opus` (default) or `system-opus`");

#[cfg(all(feature = "bundled-opus", not(feature = "system-opus")))]
use bundled as backend;
#[cfg(feature = "system-opus")]
use system as backend;

fn opus_err(e: String) -> CodecError {
    CodecError::Opus(e)
}

/// libopus through the `opus` crate (the system's shared library).
#[cfg(feature = "system-opus")]
pub mod system {
    /// Which implementation this is (for logs and tests).
    pub const NAME: &str = "system libopus";

    /// A mono decoder.
    pub struct RawDecoder(opus::Decoder);

    impl RawDecoder {
        /// `rate`: 8000, 12000, 16000, 24000 or 48000.
        pub fn new(rate: u32) -> Result<Self, String> {
            opus::Decoder::new(rate, opus::Channels::Mono)
                .map(RawDecoder)
                .map_err(|e| e.to_string())
        }

        /// Decode `data` into `out` (empty `data`: PLC for `out.len()`
        /// samples; `fec`: rebuild the frame before `data` from its FEC).
        pub fn decode(&mut self, data: &[u8], out: &mut [i16], fec: bool) -> Result<usize, String> {
            self.0.decode(data, out, fec).map_err(|e| e.to_string())
        }
    }

    /// Samples in a packet at `rate`.
    pub fn nb_samples(data: &[u8], rate: u32) -> Result<usize, String> {
        opus::packet::get_nb_samples(data, rate).map_err(|e| e.to_string())
    }

    /// Samples per frame of a packet at `rate`.
    pub fn samples_per_frame(data: &[u8], rate: u32) -> Result<usize, String> {
        opus::packet::get_samples_per_frame(data, rate).map_err(|e| e.to_string())
    }

    /// A mono VoIP encoder.
    pub struct RawEncoder(opus::Encoder);

    impl RawEncoder {
        /// `rate` as for the decoder, `bitrate` in bit/s.
        pub fn new(rate: u32, bitrate: i32) -> Result<Self, String> {
            let mut e = opus::Encoder::new(rate, opus::Channels::Mono, opus::Application::Voip)
                .map_err(|e| e.to_string())?;
            e.set_bitrate(opus::Bitrate::Bits(bitrate))
                .map_err(|e| e.to_string())?;
            Ok(RawEncoder(e))
        }

        /// In-band FEC on, tuned for `loss_percent`.
        pub fn set_fec(&mut self, loss_percent: i32) -> Result<(), String> {
            self.0.set_inband_fec(true).map_err(|e| e.to_string())?;
            self.0
                .set_packet_loss_perc(loss_percent)
                .map_err(|e| e.to_string())
        }

        /// Encode one frame into `buf`; the packet's length.
        pub fn encode(&mut self, pcm: &[i16], buf: &mut [u8]) -> Result<usize, String> {
            self.0.encode(pcm, buf).map_err(|e| e.to_string())
        }
    }
}

/// libopus built from the sources in `libopus/` (build.rs, `cc`): no
/// system library. Left out when `system-opus` is on (the two would define
/// the same C symbols).
#[cfg(all(feature = "bundled-opus", not(feature = "system-opus")))]
pub mod bundled {
    use std::ffi::{c_char, c_int, CStr};

    /// Which implementation this is (for logs and tests).
    pub const NAME: &str = "bundled libopus (built from libopus/)";

    #[repr(C)]
    struct OpusDecoder {
        _private: [u8; 0],
    }
    #[repr(C)]
    struct OpusEncoder {
        _private: [u8; 0],
    }

    const OPUS_OK: c_int = 0;
    const OPUS_BAD_ARG: c_int = -1;
    const OPUS_APPLICATION_VOIP: c_int = 2048;
    const OPUS_SET_BITRATE_REQUEST: c_int = 4002;
    const OPUS_SET_INBAND_FEC_REQUEST: c_int = 4012;
    const OPUS_SET_PACKET_LOSS_PERC_REQUEST: c_int = 4014;

    extern "C" {
        fn opus_decoder_create(fs: i32, channels: c_int, error: *mut c_int) -> *mut OpusDecoder;
        fn opus_decode(
            st: *mut OpusDecoder,
            data: *const u8,
            len: i32,
            pcm: *mut i16,
            frame_size: c_int,
            decode_fec: c_int,
        ) -> c_int;
        fn opus_decoder_destroy(st: *mut OpusDecoder);
        fn opus_packet_get_nb_samples(packet: *const u8, len: i32, fs: i32) -> c_int;
        fn opus_packet_get_samples_per_frame(data: *const u8, fs: i32) -> c_int;
        fn opus_encoder_create(
            fs: i32,
            channels: c_int,
            application: c_int,
            error: *mut c_int,
        ) -> *mut OpusEncoder;
        fn opus_encode(
            st: *mut OpusEncoder,
            pcm: *const i16,
            frame_size: c_int,
            data: *mut u8,
            max_data_bytes: i32,
        ) -> i32;
        fn opus_encoder_ctl(st: *mut OpusEncoder, request: c_int, ...) -> c_int;
        fn opus_encoder_destroy(st: *mut OpusEncoder);
        fn opus_strerror(error: c_int) -> *const c_char;
    }

    fn strerror(code: c_int) -> String {
        // SAFETY: opus_strerror returns a static NUL-terminated string for
        // any code.
        unsafe { CStr::from_ptr(opus_strerror(code)) }
            .to_string_lossy()
            .into_owned()
    }

    fn check(code: c_int) -> Result<usize, String> {
        usize::try_from(code).map_err(|_| strerror(code))
    }

    fn len_i32(n: usize) -> Result<i32, String> {
        i32::try_from(n).map_err(|_| strerror(OPUS_BAD_ARG))
    }

    fn rate_i32(rate: u32) -> Result<i32, String> {
        i32::try_from(rate).map_err(|_| strerror(OPUS_BAD_ARG))
    }

    /// A mono decoder.
    pub struct RawDecoder(*mut OpusDecoder);

    // SAFETY: the decoder state is owned by this value alone; libopus keeps
    // no thread-local or global state for it.
    unsafe impl Send for RawDecoder {}

    impl RawDecoder {
        /// `rate`: 8000, 12000, 16000, 24000 or 48000.
        pub fn new(rate: u32) -> Result<Self, String> {
            let mut err: c_int = 0;
            // SAFETY: plain constructor; the result is checked.
            let st = unsafe { opus_decoder_create(rate_i32(rate)?, 1, &mut err) };
            if st.is_null() || err != OPUS_OK {
                if !st.is_null() {
                    // SAFETY: st came from opus_decoder_create.
                    unsafe { opus_decoder_destroy(st) };
                }
                return Err(strerror(err));
            }
            Ok(RawDecoder(st))
        }

        /// Decode `data` into `out` (empty `data`: PLC for `out.len()`
        /// samples; `fec`: rebuild the frame before `data` from its FEC).
        pub fn decode(&mut self, data: &[u8], out: &mut [i16], fec: bool) -> Result<usize, String> {
            let ptr = if data.is_empty() {
                std::ptr::null()
            } else {
                data.as_ptr()
            };
            // SAFETY: self.0 is a live decoder; data and out are valid for
            // the lengths given (out holds frame_size mono samples).
            check(unsafe {
                opus_decode(
                    self.0,
                    ptr,
                    len_i32(data.len())?,
                    out.as_mut_ptr(),
                    len_i32(out.len())?,
                    c_int::from(fec),
                )
            })
        }
    }

    impl Drop for RawDecoder {
        fn drop(&mut self) {
            // SAFETY: created by opus_decoder_create, destroyed once.
            unsafe { opus_decoder_destroy(self.0) }
        }
    }

    /// Samples in a packet at `rate`.
    pub fn nb_samples(data: &[u8], rate: u32) -> Result<usize, String> {
        if data.is_empty() {
            return Err(strerror(OPUS_BAD_ARG));
        }
        // SAFETY: data is valid for its length.
        check(unsafe {
            opus_packet_get_nb_samples(data.as_ptr(), len_i32(data.len())?, rate_i32(rate)?)
        })
    }

    /// Samples per frame of a packet at `rate`.
    pub fn samples_per_frame(data: &[u8], rate: u32) -> Result<usize, String> {
        if data.is_empty() {
            return Err(strerror(OPUS_BAD_ARG));
        }
        // SAFETY: reads the first byte only; data is not empty.
        check(unsafe { opus_packet_get_samples_per_frame(data.as_ptr(), rate_i32(rate)?) })
    }

    /// A mono VoIP encoder.
    pub struct RawEncoder(*mut OpusEncoder);

    // SAFETY: as for the decoder.
    unsafe impl Send for RawEncoder {}

    impl RawEncoder {
        /// `rate` as for the decoder, `bitrate` in bit/s.
        pub fn new(rate: u32, bitrate: i32) -> Result<Self, String> {
            let mut err: c_int = 0;
            // SAFETY: plain constructor; the result is checked.
            let st =
                unsafe { opus_encoder_create(rate_i32(rate)?, 1, OPUS_APPLICATION_VOIP, &mut err) };
            if st.is_null() || err != OPUS_OK {
                if !st.is_null() {
                    // SAFETY: st came from opus_encoder_create.
                    unsafe { opus_encoder_destroy(st) };
                }
                return Err(strerror(err));
            }
            let e = RawEncoder(st);
            e.ctl(OPUS_SET_BITRATE_REQUEST, bitrate)?;
            Ok(e)
        }

        fn ctl(&self, request: c_int, value: i32) -> Result<(), String> {
            // SAFETY: self.0 is a live encoder; each request used here
            // takes one opus_int32 argument.
            check(unsafe { opus_encoder_ctl(self.0, request, value) }).map(|_| ())
        }

        /// In-band FEC on, tuned for `loss_percent`.
        pub fn set_fec(&mut self, loss_percent: i32) -> Result<(), String> {
            self.ctl(OPUS_SET_INBAND_FEC_REQUEST, 1)?;
            self.ctl(OPUS_SET_PACKET_LOSS_PERC_REQUEST, loss_percent)
        }

        /// Encode one frame into `buf`; the packet's length.
        pub fn encode(&mut self, pcm: &[i16], buf: &mut [u8]) -> Result<usize, String> {
            // SAFETY: pcm holds frame_size mono samples, buf is writable
            // for its length.
            check(unsafe {
                opus_encode(
                    self.0,
                    pcm.as_ptr(),
                    len_i32(pcm.len())?,
                    buf.as_mut_ptr(),
                    len_i32(buf.len())?,
                )
            })
        }
    }

    impl Drop for RawEncoder {
        fn drop(&mut self) {
            // SAFETY: created by opus_encoder_create, destroyed once.
            unsafe { opus_encoder_destroy(self.0) }
        }
    }
}

/// The implementation in use ([`system`] when built with `system-opus`).
pub const BACKEND: &str = backend::NAME;

/// A mono Opus decoder emitting at `out_rate`.
pub struct OpusDecoder {
    inner: backend::RawDecoder,
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
        let inner = backend::RawDecoder::new(out_rate).map_err(opus_err)?;
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

    /// The sender's encoder delays the audio by its look-ahead, 6.5 ms in
    /// libopus' VoIP and audio modes (2.5 ms of CELT overlap and 4 ms of
    /// SILK's resampling, `OPUS_GET_LOOKAHEAD`; WebRTC and SIP phones use
    /// these modes): taken off the placement, so an Opus channel is in step
    /// with a G.711 one (as G.722's 22 samples are).
    fn delay_samples(&self) -> usize {
        self.rate as usize * 13 / 2000
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
        let n = backend::nb_samples(payload, self.rate).map_err(opus_err)?;
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
        let frame = match backend::samples_per_frame(next_payload, self.rate) {
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
    inner: backend::RawEncoder,
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
        let inner = backend::RawEncoder::new(rate, bitrate).map_err(opus_err)?;
        Ok(OpusEncoder {
            inner,
            rate,
            buf: vec![0; 1500],
        })
    }

    /// Turn on in-band FEC, tuned for `loss_percent` expected loss.
    pub fn set_fec(&mut self, loss_percent: i32) -> Result<(), CodecError> {
        self.inner.set_fec(loss_percent).map_err(opus_err)
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

    /// What `delay_samples` says is what an encode and decode delay speech
    /// by (a noise-like signal: one best lag).
    #[test]
    fn the_delay_reported_is_the_round_trip_delay() {
        for rate in [8000u32, 16000] {
            let mut x = 12345u32;
            let mut lp = 0.0f64;
            let pcm: Vec<i16> = (0..rate as usize * 2)
                .map(|i| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    let white = f64::from((x >> 16) as i16);
                    lp = 0.7 * lp + 0.3 * white;
                    let env = 0.5 + 0.5 * (i as f64 / rate as f64 * 3.0).sin().abs();
                    (lp * env * 0.5) as i16
                })
                .collect();
            let mut enc = OpusEncoder::new(rate, 64000).unwrap();
            let mut dec = OpusDecoder::new(rate).unwrap();
            let mut out = Vec::new();
            for frame in pcm.chunks_exact(enc.frame_samples()) {
                let packet = enc.encode_frame(frame).unwrap();
                dec.decode(&packet, &mut out).unwrap();
            }
            let lag = best_lag(&pcm[..rate as usize], &out, rate as usize / 50);
            assert_eq!(lag, dec.delay_samples(), "rate {rate}");
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
                            let n = backend::nb_samples(payload, rate).unwrap();
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
