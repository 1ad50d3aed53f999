//! # Audio: codecs, resampling and the WAV writer
//!
//! RTP payloads come in; mono 16-bit PCM at the recording rate (8000 or 16000 Hz)
//! goes out, and the two-channel timeline's interleaved samples go into a WAV file.
//!
//! - [`codec`]: the [`codec::Codec`] registry (static payload types, `a=rtpmap`
//!   names, clock-rate quirks) and the [`codec::Decoder`] trait with
//!   [`codec::new_decoder`], which hands out a decoder emitting at 8000 or 16000 Hz.
//! - [`dtmf`]: in-band DTMF (Goertzel) detector for G.711 legs without
//!   telephone-events (pause/resume sequences), tuned to ITU-T Q.24 limits.
//! - [`g711`]: PCMU / PCMA, table-driven, bit-exact with ITU-T G.711 (and sox).
//! - [`g722`]: ITU-T G.722 64 kbit/s decoder and encoder (QMF + sub-band ADPCM).
//! - [`gsm`]: GSM 06.10 full-rate decoder (raw `.gsm` frames and WAV49),
//!   bit-exact with libgsm (and sox); for the folder source's recordings.
//! - [`opus`]: wrappers over libopus (via the `opus` crate) with packet-loss
//!   concealment and in-band FEC.
//! - [`resample`]: streaming 8000 <-> 16000 Hz half-band FIR resampler.
//! - [`wav`]: RIFF/WAVE writer on `Write + Seek`, header parser, crash repair.
//! - [`timeline`]: the two-channel timeline (owned by the call engine).
//!
//! Nothing here does I/O of its own: the WAV writer works on any `Write + Seek`
//! the shell hands it.

pub mod codec;
pub mod dtmf;
pub mod g711;
pub mod g722;
pub mod gsm;
pub mod opus;
pub mod resample;
pub mod wav;
