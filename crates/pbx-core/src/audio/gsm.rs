//! GSM 06.10 full-rate (RPE-LTP, 13 kbit/s) decoder.
//!
//! In: GSM 06.10 frames, either in the standard packing (33 bytes per 20 ms
//! frame, MSB first, the 4-bit magic `0xD` in front: Asterisk's `gsm` format,
//! sox's `.gsm`, RTP payload type 3) or in Microsoft's WAV49 packing (65-byte
//! blocks holding two frames LSB first, the second from bit 260, no magic:
//! WAVE format tag 0x31 "GSM 6.10", Asterisk's `wav49` format written as
//! `.WAV`). Out: 16-bit PCM at 8 kHz, 160 samples per frame.
//!
//! The decoder follows ETSI GSM 06.10 §4.3 with the fixed-point arithmetic of
//! §4.2 (saturating add/sub, rounded `mult_r`), block by block as the
//! reference implementation does (libgsm by Jutta Degener and Carsten
//! Bormann, which sox and Asterisk use): RPE/APCM inverse quantization and
//! grid positioning, long-term synthesis filtering (a lag `Nc` outside 40..=120
//! keeps the previous lag, as libgsm does), LAR decoding, interpolation and
//! conversion to reflection coefficients, the short-term synthesis lattice
//! filter, de-emphasis, truncation and upscaling. The output is bit-exact with
//! libgsm fed the same bytes (the tests compare against sox sample for
//! sample). There is no encoder: pbx-edge only reads GSM recordings.
//!
//! Every bit pattern is a valid frame except, in the standard packing, a first
//! nibble other than `0xD`. Such a frame is decoded as 160 samples of silence
//! with the decoder state left as it was, and counted
//! ([`GsmDecoder::bad_frames`], [`GsmStats::bad_frames`]); [`decode_gsm`]
//! refuses input in which most frames lack the magic (it is not GSM). A
//! trailing partial frame or block is ignored and reported
//! ([`GsmStats::trailing_bytes`]). Nothing here panics, whatever the input.

/// Bytes of one frame in the standard packing.
pub const FRAME_BYTES: usize = 33;
/// Samples of one frame (20 ms at 8 kHz).
pub const FRAME_SAMPLES: usize = 160;
/// Bytes of one WAV49 block (two frames).
pub const WAV49_BLOCK_BYTES: usize = 65;
/// Samples of one WAV49 block.
pub const WAV49_BLOCK_SAMPLES: usize = 320;
/// The output sample rate.
pub const SAMPLE_RATE: u32 = 8000;
/// The WAVE format tag of GSM 6.10 (WAV49).
pub const WAVE_FORMAT_GSM610: u16 = 0x31;

/// The magic nibble in front of every frame in the standard packing.
const MAGIC: u8 = 0xD;

/// Why GSM bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GsmError {
    /// A standard-packed frame whose first nibble is not `0xD`.
    #[error("GSM frame without the 0xD magic (first byte {0:#04x})")]
    BadMagic(u8),
    /// Not even one complete frame / block.
    #[error("no complete GSM frame: {have} bytes, a {what} is {need}")]
    TooShort {
        have: usize,
        need: usize,
        what: &'static str,
    },
    /// Most frames lack the magic: the bytes are not GSM 06.10.
    #[error("not GSM 06.10: {bad} of {frames} frames lack the 0xD magic")]
    NotGsm { bad: usize, frames: usize },
}

/// What a whole-buffer decode found besides the samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GsmStats {
    /// Frames decoded (a WAV49 block counts two).
    pub frames: usize,
    /// Frames without the magic, decoded as silence (standard packing only).
    pub bad_frames: usize,
    /// Bytes after the last complete frame / block, ignored.
    pub trailing_bytes: usize,
}

// ------------------------------------------------------------ arithmetic
//
// GSM 06.10 §4.2.1 (the reference's add.c / private.h).

#[inline(always)]
fn sat(x: i32) -> i16 {
    x.clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16
}

#[inline(always)]
fn add(a: i16, b: i16) -> i16 {
    sat(i32::from(a) + i32::from(b))
}

#[inline(always)]
fn sub(a: i16, b: i16) -> i16 {
    sat(i32::from(a) - i32::from(b))
}

/// Rounded Q15 product; `mult_r(-32768, -32768)` saturates to 32767.
#[inline(always)]
fn mult_r(a: i16, b: i16) -> i16 {
    if a == i16::MIN && b == i16::MIN {
        i16::MAX
    } else {
        // |a * b| <= 2^30: the rounded, shifted product fits in 16 bits.
        ((i32::from(a) * i32::from(b) + 16384) >> 15) as i16
    }
}

/// Arithmetic shift right by `n` (negative `n` shifts left), as the
/// reference's `gsm_asr`.
#[inline(always)]
fn asr(a: i16, n: i16) -> i16 {
    if n >= 16 {
        -i16::from(a < 0)
    } else if n <= -16 {
        0
    } else if n < 0 {
        a.wrapping_shl(n.unsigned_abs().into())
    } else {
        a >> n
    }
}

/// Arithmetic shift left by `n` (negative `n` shifts right), as the
/// reference's `gsm_asl`.
#[inline(always)]
fn asl(a: i16, n: i16) -> i16 {
    if n >= 16 {
        0
    } else if n <= -16 {
        -i16::from(a < 0)
    } else if n < 0 {
        asr(a, -n)
    } else {
        a.wrapping_shl(n.unsigned_abs().into())
    }
}

// ------------------------------------------------------------ tables
//
// GSM 06.10 §4.4.

/// Table 4.1: offsets `B` and minimum codes `MIC` of the LAR quantizer.
const LAR_B: [i16; 8] = [0, 0, 2048, -2560, 94, -1792, -341, -1144];
const LAR_MIC: [i16; 8] = [-32, -32, -16, -16, -8, -8, -4, -4];
/// Table 4.2: `1 / A[i]` in Q13 (x 32768 * 8).
const LAR_INVA: [i16; 8] = [13107, 13107, 13107, 13107, 19223, 17476, 31454, 29708];
/// Table 4.3b: LTP gain quantization levels.
const QLB: [i16; 4] = [3277, 11469, 21299, 32767];
/// Table 4.6: normalized direct mantissa of `xmax`.
const FAC: [i16; 8] = [18431, 20479, 22527, 24575, 26623, 28671, 30719, 32767];

/// Bits of the eight coded LARs, in bitstream order.
const LAR_BITS: [u32; 8] = [6, 6, 5, 5, 4, 4, 3, 3];

// ------------------------------------------------------------ unpacking

/// The coded parameters of one frame (GSM 06.10 table 1.1).
#[derive(Debug, Clone, Copy, Default)]
struct Params {
    larc: [i16; 8],
    nc: [i16; 4],
    bc: [i16; 4],
    mc: [i16; 4],
    xmaxc: [i16; 4],
    xmc: [[i16; 13]; 4],
}

/// A bit reader over a byte slice, MSB first (standard packing) or LSB first
/// (WAV49). Reading past the end gives zeros (never happens for the fixed
/// frame layouts; it keeps the reader panic-free).
struct Bits<'a> {
    bytes: &'a [u8],
    pos: usize,
    lsb_first: bool,
}

impl Bits<'_> {
    #[inline]
    fn read(&mut self, n: u32) -> i16 {
        let mut v: u16 = 0;
        for i in 0..n {
            let byte = self.bytes.get(self.pos / 8).copied().unwrap_or(0);
            let shift = if self.lsb_first {
                self.pos % 8
            } else {
                7 - self.pos % 8
            };
            let bit = u16::from((byte >> shift) & 1);
            if self.lsb_first {
                v |= bit << i;
            } else {
                v = (v << 1) | bit;
            }
            self.pos += 1;
        }
        // At most 7 bits: always fits.
        v as i16
    }

    /// The 260 parameter bits of one frame, in the order of GSM 06.10 table
    /// 1.1 (the same in both packings).
    fn params(&mut self) -> Params {
        let mut p = Params::default();
        for (l, &n) in p.larc.iter_mut().zip(LAR_BITS.iter()) {
            *l = self.read(n);
        }
        for s in 0..4 {
            p.nc[s] = self.read(7);
            p.bc[s] = self.read(2);
            p.mc[s] = self.read(2);
            p.xmaxc[s] = self.read(6);
            for x in p.xmc[s].iter_mut() {
                *x = self.read(3);
            }
        }
        p
    }
}

// ------------------------------------------------------------ decoder

/// A GSM 06.10 decoder: the state carried from frame to frame. One per
/// stream (a file, an RTP stream); frames must be fed in order.
#[derive(Debug, Clone)]
pub struct GsmDecoder {
    /// Reconstructed short-term residual: `dp[0..120]` the last 120 samples
    /// (`drp[-120..-1]` in the recommendation), `dp[120..160]` the current
    /// sub-segment.
    dp: [i16; 160],
    /// Decoded LARs of the previous and the current frame.
    larpp: [[i16; 8]; 2],
    /// Which `larpp` is the current frame's.
    j: usize,
    /// The last valid LTP lag (40..=120).
    nrp: i16,
    /// Short-term synthesis filter state.
    v: [i16; 9],
    /// De-emphasis filter state.
    msr: i16,
    /// Frames refused for a missing magic.
    bad_frames: u64,
}

impl Default for GsmDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl GsmDecoder {
    /// A decoder in the reference's initial state (all zero, lag 40).
    pub fn new() -> Self {
        Self {
            dp: [0; 160],
            larpp: [[0; 8]; 2],
            j: 0,
            nrp: 40,
            v: [0; 9],
            msr: 0,
            bad_frames: 0,
        }
    }

    /// Frames refused so far by [`GsmDecoder::decode_frame`] for a missing
    /// magic (each was output as silence).
    pub fn bad_frames(&self) -> u64 {
        self.bad_frames
    }

    /// Decodes one standard-packed 33-byte frame into 160 samples.
    ///
    /// A frame whose first nibble is not `0xD` gives
    /// [`GsmError::BadMagic`]: `out` is then silence, the decoder state is
    /// unchanged (the next frame decodes as if this one had not been there)
    /// and [`GsmDecoder::bad_frames`] counts it.
    pub fn decode_frame(
        &mut self,
        frame: &[u8; FRAME_BYTES],
        out: &mut [i16; FRAME_SAMPLES],
    ) -> Result<(), GsmError> {
        if frame[0] >> 4 != MAGIC {
            self.bad_frames += 1;
            *out = [0; FRAME_SAMPLES];
            return Err(GsmError::BadMagic(frame[0]));
        }
        let p = Bits {
            bytes: frame,
            pos: 4,
            lsb_first: false,
        }
        .params();
        self.synthesize(&p, out);
        Ok(())
    }

    /// Decodes one 65-byte WAV49 block (two frames) into 320 samples. Every
    /// block is valid (WAV49 has no magic).
    pub fn decode_wav49_block(
        &mut self,
        block: &[u8; WAV49_BLOCK_BYTES],
        out: &mut [i16; WAV49_BLOCK_SAMPLES],
    ) {
        let mut bits = Bits {
            bytes: block,
            pos: 0,
            lsb_first: true,
        };
        let first = bits.params();
        // The second frame starts at bit 260, in the middle of byte 32.
        let second = bits.params();
        let (a, b) = out.split_at_mut(FRAME_SAMPLES);
        if let (Ok(a), Ok(b)) = (
            <&mut [i16; FRAME_SAMPLES]>::try_from(a),
            <&mut [i16; FRAME_SAMPLES]>::try_from(b),
        ) {
            self.synthesize(&first, a);
            self.synthesize(&second, b);
        }
    }

    /// GSM 06.10 §4.3: the RPE-LTP decoder proper.
    fn synthesize(&mut self, p: &Params, out: &mut [i16; FRAME_SAMPLES]) {
        let mut wt = [0i16; FRAME_SAMPLES];
        for s in 0..4 {
            let erp = rpe_decoding(p.xmaxc[s], p.mc[s], &p.xmc[s]);
            self.long_term_synthesis(p.nc[s], p.bc[s], &erp);
            wt[s * 40..s * 40 + 40].copy_from_slice(&self.dp[120..160]);
        }
        self.short_term_synthesis(&p.larc, &wt, out);
        // §4.3.5-4.3.7: de-emphasis, truncation to 13 bits, upscaling.
        let mut msr = self.msr;
        for s in out.iter_mut() {
            let tmp = mult_r(msr, 28180);
            msr = add(*s, tmp);
            *s = add(msr, msr) & !7;
        }
        self.msr = msr;
    }

    /// §4.3.2: long-term synthesis filtering of one sub-segment: `erp` plus
    /// the gain-scaled residual `Nr` samples back goes into `dp[120..160]`,
    /// then the history moves on by 40 samples.
    fn long_term_synthesis(&mut self, ncr: i16, bcr: i16, erp: &[i16; 40]) {
        let nr = if (40..=120).contains(&ncr) {
            ncr
        } else {
            self.nrp
        };
        self.nrp = nr;
        let brp = QLB[usize::from(bcr as u16 & 3)];
        // 40 <= nr <= 120: `120 + k - nr` is in the history, 0..120.
        let back = usize::from(nr.unsigned_abs());
        for (k, &e) in erp.iter().enumerate() {
            let drpp = mult_r(brp, self.dp[120 + k - back]);
            self.dp[120 + k] = add(e, drpp);
        }
        self.dp.copy_within(40..160, 0);
    }

    /// §4.2.8-4.2.9 and §4.3.4: LAR decoding, interpolation with the previous
    /// frame's LARs, reflection coefficients, and the lattice filter.
    fn short_term_synthesis(
        &mut self,
        larc: &[i16; 8],
        wt: &[i16; FRAME_SAMPLES],
        out: &mut [i16; FRAME_SAMPLES],
    ) {
        let cur = self.j;
        let prev = cur ^ 1;
        self.j = prev;
        // §4.2.8: decoding of the coded LARs.
        for i in 0..8 {
            let mut t = add(larc[i], LAR_MIC[i]) << 10;
            t = sub(t, LAR_B[i] << 1);
            t = mult_r(LAR_INVA[i], t);
            self.larpp[cur][i] = add(t, t);
        }
        let lj = self.larpp[cur];
        let lj1 = self.larpp[prev];
        // §4.2.9.1: interpolation for samples 0..13, 13..27, 27..40, 40..160.
        let mut rrp = [0i16; 8];
        for i in 0..8 {
            rrp[i] = add(add(lj1[i] >> 2, lj[i] >> 2), lj1[i] >> 1);
        }
        self.lattice(&rrp, &wt[0..13], &mut out[0..13]);
        for i in 0..8 {
            rrp[i] = add(lj1[i] >> 1, lj[i] >> 1);
        }
        self.lattice(&rrp, &wt[13..27], &mut out[13..27]);
        for i in 0..8 {
            rrp[i] = add(add(lj1[i] >> 2, lj[i] >> 2), lj[i] >> 1);
        }
        self.lattice(&rrp, &wt[27..40], &mut out[27..40]);
        self.lattice(&lj, &wt[40..160], &mut out[40..160]);
    }

    /// §4.2.9.2 (LARp to rp) and §4.3.4 (the short-term synthesis filter)
    /// over one stretch of samples.
    fn lattice(&mut self, larp: &[i16; 8], wt: &[i16], out: &mut [i16]) {
        let rrp = larp.map(lar_to_rp);
        let v = &mut self.v;
        for (&w, o) in wt.iter().zip(out.iter_mut()) {
            let mut sri = w;
            for i in (0..8).rev() {
                sri = sub(sri, mult_r(rrp[i], v[i]));
                v[i + 1] = add(v[i], mult_r(rrp[i], sri));
            }
            v[0] = sri;
            *o = sri;
        }
    }
}

/// §4.2.9.2: an interpolated LAR to a reflection coefficient (piecewise
/// linear approximation, odd symmetric).
#[inline]
fn lar_to_rp(larp: i16) -> i16 {
    let mag = if larp == i16::MIN {
        i16::MAX
    } else {
        larp.abs()
    };
    let r = if mag < 11059 {
        mag << 1
    } else if mag < 20070 {
        mag + 11059
    } else {
        add(mag >> 2, 26112)
    };
    if larp < 0 {
        -r
    } else {
        r
    }
}

/// §4.2.15 (decoder side): `xmaxc` to exponent and mantissa.
fn xmaxc_to_exp_mant(xmaxc: i16) -> (i16, i16) {
    let mut exp: i16 = 0;
    if xmaxc > 15 {
        exp = (xmaxc >> 3) - 1;
    }
    let mut mant = xmaxc - (exp << 3);
    if mant == 0 {
        exp = -4;
        mant = 7;
    } else {
        while mant <= 7 {
            mant = (mant << 1) | 1;
            exp -= 1;
        }
        mant -= 8;
    }
    (exp, mant)
}

/// §4.2.16-4.2.17: APCM inverse quantization of the 13 RPE samples and their
/// positioning on the grid `mc` of a 40-sample sub-segment.
fn rpe_decoding(xmaxc: i16, mc: i16, xmc: &[i16; 13]) -> [i16; 40] {
    let (exp, mant) = xmaxc_to_exp_mant(xmaxc);
    let temp1 = FAC[usize::from(mant as u16 & 7)];
    let temp2 = sub(6, exp);
    let temp3 = asl(1, sub(temp2, 1));
    let mut ep = [0i16; 40];
    let grid = usize::from(mc as u16 & 3);
    for (i, &x) in xmc.iter().enumerate() {
        // 3-bit code to a signed odd level -7..7, in Q12.
        let level = (((x & 7) << 1) - 7) << 12;
        let t = add(mult_r(temp1, level), temp3);
        ep[grid + 3 * i] = asr(t, temp2);
    }
    ep
}

// ------------------------------------------------------------ RTP

/// RTP payload type 3 (RFC 3551 4.5.8): one or more standard-packed frames
/// per packet. A payload that is not whole frames, or with a frame lacking
/// the magic, is refused whole (nothing appended; the engine conceals it
/// like a lost packet). Concealment is silence.
impl super::codec::Decoder for GsmDecoder {
    fn output_rate(&self) -> u32 {
        SAMPLE_RATE
    }

    fn decode(
        &mut self,
        payload: &[u8],
        out: &mut Vec<i16>,
    ) -> Result<usize, super::codec::CodecError> {
        let invalid = |reason: String| super::codec::CodecError::InvalidPayload {
            codec: "GSM",
            reason,
        };
        if payload.is_empty() || payload.len() % FRAME_BYTES != 0 {
            return Err(invalid(format!(
                "{} bytes, not whole {FRAME_BYTES}-byte frames",
                payload.len()
            )));
        }
        if let Some(f) = payload
            .chunks_exact(FRAME_BYTES)
            .find(|f| f[0] >> 4 != MAGIC)
        {
            self.bad_frames += 1;
            return Err(invalid(format!(
                "frame without the 0xD magic (first byte {:#04x})",
                f[0]
            )));
        }
        let mut pcm = [0i16; FRAME_SAMPLES];
        for f in payload.chunks_exact(FRAME_BYTES) {
            let frame: &[u8; FRAME_BYTES] = f.try_into().expect("chunks_exact");
            // The magic was checked above: this cannot fail.
            let _ = self.decode_frame(frame, &mut pcm);
            out.extend_from_slice(&pcm);
        }
        Ok(payload.len() / FRAME_BYTES * FRAME_SAMPLES)
    }

    fn conceal(&mut self, samples: usize, out: &mut Vec<i16>) {
        out.resize(out.len() + samples, 0);
    }
}

// ------------------------------------------------------------ whole buffers

/// Decodes a raw `.gsm` file (standard-packed frames back to back) into
/// 8 kHz PCM. See [`decode_gsm_with_stats`].
pub fn decode_gsm(bytes: &[u8]) -> Result<Vec<i16>, GsmError> {
    decode_gsm_with_stats(bytes).map(|(pcm, _)| pcm)
}

/// [`decode_gsm`] that also tells how many frames lacked the magic (each is
/// 160 samples of silence) and how many trailing bytes (a partial frame)
/// were ignored. Errors: no complete frame; more than half of the frames
/// without the magic ([`GsmError::NotGsm`]).
pub fn decode_gsm_with_stats(bytes: &[u8]) -> Result<(Vec<i16>, GsmStats), GsmError> {
    let frames = bytes.len() / FRAME_BYTES;
    if frames == 0 {
        return Err(GsmError::TooShort {
            have: bytes.len(),
            need: FRAME_BYTES,
            what: "frame",
        });
    }
    let bad = bytes
        .chunks_exact(FRAME_BYTES)
        .filter(|f| f[0] >> 4 != MAGIC)
        .count();
    if bad * 2 > frames {
        return Err(GsmError::NotGsm { bad, frames });
    }
    let mut dec = GsmDecoder::new();
    let mut pcm = Vec::with_capacity(frames * FRAME_SAMPLES);
    let mut out = [0i16; FRAME_SAMPLES];
    for chunk in bytes.chunks_exact(FRAME_BYTES) {
        if let Ok(frame) = <&[u8; FRAME_BYTES]>::try_from(chunk) {
            // A bad frame is silence in `out`, counted by the decoder.
            let _ = dec.decode_frame(frame, &mut out);
            pcm.extend_from_slice(&out);
        }
    }
    let stats = GsmStats {
        frames,
        bad_frames: bad,
        trailing_bytes: bytes.len() % FRAME_BYTES,
    };
    Ok((pcm, stats))
}

/// Decodes WAV49 data (the body of a WAVE `data` chunk with format 0x31,
/// 65-byte blocks back to back) into 8 kHz PCM. See
/// [`decode_wav49_with_stats`].
pub fn decode_wav49(bytes: &[u8]) -> Result<Vec<i16>, GsmError> {
    decode_wav49_with_stats(bytes).map(|(pcm, _)| pcm)
}

/// [`decode_wav49`] that also tells how many trailing bytes (a partial
/// block) were ignored. Error: no complete block.
pub fn decode_wav49_with_stats(bytes: &[u8]) -> Result<(Vec<i16>, GsmStats), GsmError> {
    let blocks = bytes.len() / WAV49_BLOCK_BYTES;
    if blocks == 0 {
        return Err(GsmError::TooShort {
            have: bytes.len(),
            need: WAV49_BLOCK_BYTES,
            what: "WAV49 block",
        });
    }
    let mut dec = GsmDecoder::new();
    let mut pcm = Vec::with_capacity(blocks * WAV49_BLOCK_SAMPLES);
    let mut out = [0i16; WAV49_BLOCK_SAMPLES];
    for chunk in bytes.chunks_exact(WAV49_BLOCK_BYTES) {
        if let Ok(block) = <&[u8; WAV49_BLOCK_BYTES]>::try_from(chunk) {
            dec.decode_wav49_block(block, &mut out);
            pcm.extend_from_slice(&out);
        }
    }
    let stats = GsmStats {
        frames: blocks * 2,
        bad_frames: 0,
        trailing_bytes: bytes.len() % WAV49_BLOCK_BYTES,
    };
    Ok((pcm, stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A standard-packed frame from its parameters (MSB first, magic first):
    /// the inverse of the unpacking, for the tests only.
    fn pack(p: &Params) -> [u8; FRAME_BYTES] {
        let mut bits: Vec<(u32, i16)> = vec![(4, i16::from(MAGIC))];
        for (i, &n) in LAR_BITS.iter().enumerate() {
            bits.push((n, p.larc[i]));
        }
        for s in 0..4 {
            bits.push((7, p.nc[s]));
            bits.push((2, p.bc[s]));
            bits.push((2, p.mc[s]));
            bits.push((6, p.xmaxc[s]));
            for &x in &p.xmc[s] {
                bits.push((3, x));
            }
        }
        let mut out = [0u8; FRAME_BYTES];
        let mut pos = 0;
        for (n, v) in bits {
            for b in (0..n).rev() {
                if (v >> b) & 1 != 0 {
                    out[pos / 8] |= 0x80 >> (pos % 8);
                }
                pos += 1;
            }
        }
        assert_eq!(pos, FRAME_BYTES * 8);
        out
    }

    /// Two frames' parameters as one WAV49 block (LSB first).
    fn pack_wav49(a: &Params, b: &Params) -> [u8; WAV49_BLOCK_BYTES] {
        let mut out = [0u8; WAV49_BLOCK_BYTES];
        let mut pos = 0;
        for p in [a, b] {
            let mut put = |n: u32, v: i16| {
                for b in 0..n {
                    if (v >> b) & 1 != 0 {
                        out[pos / 8] |= 1 << (pos % 8);
                    }
                    pos += 1;
                }
            };
            for (i, &n) in LAR_BITS.iter().enumerate() {
                put(n, p.larc[i]);
            }
            for s in 0..4 {
                put(7, p.nc[s]);
                put(2, p.bc[s]);
                put(2, p.mc[s]);
                put(6, p.xmaxc[s]);
                for &x in &p.xmc[s] {
                    put(3, x);
                }
            }
        }
        assert_eq!(pos, 520);
        out
    }

    fn sample_params(seed: u32) -> Params {
        let mut x = seed.wrapping_mul(2654435761).wrapping_add(12345);
        let mut next = |bits: u32| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x % (1 << bits)) as i16
        };
        let mut p = Params::default();
        for (i, &n) in LAR_BITS.iter().enumerate() {
            p.larc[i] = next(n);
        }
        for s in 0..4 {
            p.nc[s] = next(7);
            p.bc[s] = next(2);
            p.mc[s] = next(2);
            p.xmaxc[s] = next(6);
            for x in p.xmc[s].iter_mut() {
                *x = next(3);
            }
        }
        p
    }

    fn same(a: &Params, b: &Params) -> bool {
        a.larc == b.larc
            && a.nc == b.nc
            && a.bc == b.bc
            && a.mc == b.mc
            && a.xmaxc == b.xmaxc
            && a.xmc == b.xmc
    }

    #[test]
    fn gsm_unpacking_round_trips_both_packings() {
        for seed in 0..200 {
            let p = sample_params(seed);
            let q = sample_params(seed + 1000);
            let f = pack(&p);
            assert_eq!(f[0] >> 4, MAGIC);
            let got = Bits {
                bytes: &f,
                pos: 4,
                lsb_first: false,
            }
            .params();
            assert!(same(&got, &p), "seed {seed}");
            let blk = pack_wav49(&p, &q);
            let mut bits = Bits {
                bytes: &blk,
                pos: 0,
                lsb_first: true,
            };
            assert!(same(&bits.params(), &p));
            assert_eq!(bits.pos, 260);
            assert!(same(&bits.params(), &q));
        }
    }

    #[test]
    fn gsm_wav49_block_decodes_like_its_two_frames() {
        // The packing differs, the frames do not: a WAV49 block must decode
        // exactly as the same two frames in the standard packing.
        let mut a = GsmDecoder::new();
        let mut b = GsmDecoder::new();
        for seed in 0..100 {
            let p = sample_params(seed * 2);
            let q = sample_params(seed * 2 + 1);
            let mut w = [0i16; WAV49_BLOCK_SAMPLES];
            a.decode_wav49_block(&pack_wav49(&p, &q), &mut w);
            let mut f1 = [0i16; FRAME_SAMPLES];
            let mut f2 = [0i16; FRAME_SAMPLES];
            b.decode_frame(&pack(&p), &mut f1).unwrap();
            b.decode_frame(&pack(&q), &mut f2).unwrap();
            assert_eq!(&w[..160], &f1[..]);
            assert_eq!(&w[160..], &f2[..]);
        }
    }

    #[test]
    fn gsm_arithmetic_saturates_like_the_reference() {
        assert_eq!(add(32767, 1), 32767);
        assert_eq!(add(-32768, -1), -32768);
        assert_eq!(sub(-32768, 1), -32768);
        assert_eq!(sub(0, -32768), 32767);
        assert_eq!(mult_r(-32768, -32768), 32767);
        assert_eq!(mult_r(16384, 16384), 8192);
        assert_eq!(mult_r(-1, 16384), 0);
        assert_eq!(mult_r(-3, 16384), -1);
        assert_eq!(asr(-1, 20), -1);
        assert_eq!(asr(5, -1), 10);
        assert_eq!(asl(1, -1), 0);
        assert_eq!(asl(1, 9), 512);
        assert_eq!(lar_to_rp(i16::MIN), -add(32767 >> 2, 26112));
        assert_eq!(lar_to_rp(100), 200);
        assert_eq!(lar_to_rp(-15000), -26059);
        assert_eq!(lar_to_rp(30000), 32767);
    }

    #[test]
    fn gsm_exp_mant_covers_every_xmaxc() {
        for x in 0..64 {
            let (e, m) = xmaxc_to_exp_mant(x);
            assert!((-4..=6).contains(&e), "{x}: {e}");
            assert!((0..=7).contains(&m), "{x}: {m}");
        }
        assert_eq!(xmaxc_to_exp_mant(0), (-4, 7));
        assert_eq!(xmaxc_to_exp_mant(63), (6, 7));
    }

    /// RTP payload type 3: packets of one or two frames decode as the file
    /// of those frames does; broken payloads are refused whole.
    #[test]
    fn gsm_rtp_decoder_matches_the_whole_buffer() {
        use crate::audio::codec::{new_decoder, Codec, CodecError};
        let frames: Vec<u8> = (0..12).flat_map(|i| pack(&sample_params(i))).collect();
        let want = decode_gsm(&frames).unwrap();
        for per_packet in [1, 2] {
            let mut d = new_decoder(&Codec::Gsm, 8000).expect("GSM decoder");
            let mut got = Vec::new();
            for p in frames.chunks(FRAME_BYTES * per_packet) {
                assert_eq!(d.decode(p, &mut got), Ok(per_packet * FRAME_SAMPLES));
            }
            assert_eq!(got, want, "{per_packet} frame(s) per packet");
        }
        let mut d = new_decoder(&Codec::Gsm, 16000).expect("GSM at 16 kHz");
        let mut out = Vec::new();
        assert_eq!(d.decode(&frames[..FRAME_BYTES], &mut out), Ok(320));
        let mut d = GsmDecoder::new();
        use crate::audio::codec::Decoder as _;
        let mut bad = frames[..2 * FRAME_BYTES].to_vec();
        bad[FRAME_BYTES] = 0x00;
        for p in [&[][..], &frames[..32], &frames[..34], &bad[..]] {
            out.clear();
            assert!(matches!(
                d.decode(p, &mut out),
                Err(CodecError::InvalidPayload { codec: "GSM", .. })
            ));
            assert!(out.is_empty(), "nothing appended on error");
        }
        d.conceal(160, &mut out);
        assert_eq!(out, vec![0; 160]);
    }

    #[test]
    fn gsm_bad_magic_is_silence_and_keeps_the_state() {
        let frames: Vec<[u8; FRAME_BYTES]> = (0..20).map(|s| pack(&sample_params(s))).collect();
        let mut clean = GsmDecoder::new();
        let mut with_bad = GsmDecoder::new();
        let mut out = [0i16; FRAME_SAMPLES];
        let mut want = [0i16; FRAME_SAMPLES];
        for (i, f) in frames.iter().enumerate() {
            if i == 7 {
                let mut junk = *f;
                junk[0] = 0x1F;
                out = [5; FRAME_SAMPLES];
                assert_eq!(
                    with_bad.decode_frame(&junk, &mut out),
                    Err(GsmError::BadMagic(0x1F))
                );
                assert_eq!(out, [0; FRAME_SAMPLES]);
            }
            clean.decode_frame(f, &mut want).unwrap();
            with_bad.decode_frame(f, &mut out).unwrap();
            assert_eq!(out, want, "frame {i}");
        }
        assert_eq!(with_bad.bad_frames(), 1);
        assert_eq!(clean.bad_frames(), 0);
    }

    #[test]
    fn gsm_whole_buffer_errors_and_trailing_bytes() {
        assert!(matches!(
            decode_gsm(&[]),
            Err(GsmError::TooShort { have: 0, .. })
        ));
        assert!(matches!(
            decode_gsm(&[0xD0; 32]),
            Err(GsmError::TooShort { have: 32, .. })
        ));
        assert!(matches!(
            decode_wav49(&[0; 64]),
            Err(GsmError::TooShort { have: 64, .. })
        ));
        assert_eq!(
            decode_gsm(&[0u8; 99]),
            Err(GsmError::NotGsm { bad: 3, frames: 3 })
        );
        let mut bytes: Vec<u8> = (0..10).flat_map(|s| pack(&sample_params(s))).collect();
        bytes[33 * 4] = 0; // one bad frame of ten
        bytes.extend_from_slice(&[0xD5; 20]);
        let (pcm, st) = decode_gsm_with_stats(&bytes).unwrap();
        assert_eq!(pcm.len(), 1600);
        assert_eq!(
            st,
            GsmStats {
                frames: 10,
                bad_frames: 1,
                trailing_bytes: 20
            }
        );
        assert!(pcm[640..800].iter().all(|&s| s == 0));
        let (pcm, st) = decode_wav49_with_stats(&[0x55; 65 * 3 + 1]).unwrap();
        assert_eq!(pcm.len(), 960);
        assert_eq!(st.frames, 6);
        assert_eq!(st.trailing_bytes, 1);
    }

    #[test]
    fn gsm_output_is_13_bit_upscaled() {
        // Postprocessing truncates to 13 bits: the low 3 bits are always 0.
        let bytes: Vec<u8> = (0..50).flat_map(|s| pack(&sample_params(s))).collect();
        let pcm = decode_gsm(&bytes).unwrap();
        assert!(pcm.iter().all(|&s| s & 7 == 0));
        assert!(pcm.iter().any(|&s| s != 0));
    }

    #[test]
    fn gsm_never_panics_on_arbitrary_bytes() {
        let mut x: u64 = 0x9E3779B97F4A7C15;
        for len in [0usize, 1, 32, 33, 34, 64, 65, 66, 130, 131, 333, 1000] {
            for _ in 0..20 {
                let bytes: Vec<u8> = (0..len)
                    .map(|i| {
                        x = x
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        let b = (x >> 33) as u8;
                        // Half the frames with the magic, to get past the check.
                        if i % 33 == 0 && b & 1 == 0 {
                            0xD0 | (b >> 4)
                        } else {
                            b
                        }
                    })
                    .collect();
                let _ = decode_gsm(&bytes);
                let _ = decode_wav49(&bytes);
            }
        }
        // Extremes: all ones / all zeros with the magic.
        let mut f = [0xFFu8; FRAME_BYTES];
        f[0] = 0xDF;
        let frames: Vec<u8> = std::iter::repeat_n(f, 100).flatten().collect();
        let _ = decode_gsm(&frames).unwrap();
        let _ = decode_wav49(&[0xFF; 650]).unwrap();
        let _ = decode_wav49(&[0x00; 650]).unwrap();
    }
}
