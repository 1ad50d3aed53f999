//! G.711 μ-law (PCMU) and A-law (PCMA).
//!
//! In: G.711 bytes (one byte per 8 kHz sample). Out: 16-bit linear PCM at 8 kHz.
//! Decoding is a lookup in a 256-entry table built at compile time from the
//! ITU-T G.711 expansion rules (the classic Sun reference scaling: μ-law spans
//! ±32124, A-law ±32256), which is exactly what sox, ffmpeg and Wireshark emit.
//! Encoding follows the G.711 decision levels, so `decode(encode(x))` is the
//! reconstruction level nearest to `x`, and `encode(decode(b))` gives back `b`
//! (μ-law's two zero codes, 0x7F and 0xFF, both come back as 0xFF).
//! Decoding never fails: every byte is a valid code.

use super::codec::{CodecError, Decoder};

/// μ-law byte → linear sample (ITU-T G.711, Sun reference scaling).
#[inline]
pub fn ulaw_to_linear(b: u8) -> i16 {
    ULAW_TABLE[b as usize]
}

/// A-law byte → linear sample (ITU-T G.711, Sun reference scaling).
#[inline]
pub fn alaw_to_linear(b: u8) -> i16 {
    ALAW_TABLE[b as usize]
}

/// The μ-law expansion, computed once at compile time.
const fn ulaw_expand(b: u8) -> i16 {
    // Codes are transmitted inverted; 0x84 is the bias that makes the segment
    // boundaries powers of two.
    let u = !b;
    let mantissa = (u & 0x0F) as i32;
    let segment = ((u & 0x70) >> 4) as i32;
    let t = ((mantissa << 3) + 0x84) << segment;
    if u & 0x80 != 0 {
        (0x84 - t) as i16
    } else {
        (t - 0x84) as i16
    }
}

/// The A-law expansion, computed once at compile time.
const fn alaw_expand(b: u8) -> i16 {
    // Even bits are inverted on the line (the 0x55 mask).
    let a = b ^ 0x55;
    let mantissa = (a & 0x0F) as i32;
    let segment = ((a & 0x70) >> 4) as i32;
    let t = match segment {
        0 => (mantissa << 4) + 8,
        1 => (mantissa << 4) + 0x108,
        s => ((mantissa << 4) + 0x108) << (s - 1),
    };
    if a & 0x80 != 0 {
        t as i16
    } else {
        -t as i16
    }
}

const fn build_table(alaw: bool) -> [i16; 256] {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = if alaw {
            alaw_expand(i as u8)
        } else {
            ulaw_expand(i as u8)
        };
        i += 1;
    }
    t
}

static ULAW_TABLE: [i16; 256] = build_table(false);
static ALAW_TABLE: [i16; 256] = build_table(true);

/// Linear sample → μ-law byte (G.711 decision levels; clips at ±32635).
pub fn linear_to_ulaw(sample: i16) -> u8 {
    let (mask, magnitude) = if sample < 0 {
        (0x7Fu8, -(sample as i32))
    } else {
        (0xFFu8, sample as i32)
    };
    // After clipping and biasing, magnitude is in 0x84..=0x7FFF, so its top set
    // bit is 7..=14 and the segment 0..=7.
    let biased = magnitude.min(32635) + 0x84;
    let segment = (31 - biased.leading_zeros()) - 7;
    let mantissa = (biased >> (segment + 3)) & 0x0F;
    (((segment << 4) as u8) | mantissa as u8) ^ mask
}

/// Linear sample → A-law byte (G.711 decision levels).
pub fn linear_to_alaw(sample: i16) -> u8 {
    // A-law works on 13 bits; negative values use the ones' complement
    // magnitude so that the two halves are symmetric around -0.5.
    let v = (sample as i32) >> 3;
    let (mask, magnitude) = if v >= 0 {
        (0xD5u8, v)
    } else {
        (0x55u8, -v - 1)
    };
    // magnitude is in 0..=4095.
    let segment = if magnitude < 32 {
        0
    } else {
        (31 - magnitude.leading_zeros()) - 4
    };
    let mantissa = if segment < 2 {
        (magnitude >> 1) & 0x0F
    } else {
        (magnitude >> segment) & 0x0F
    };
    (((segment << 4) as u8) | mantissa as u8) ^ mask
}

/// μ-law bytes → appended linear samples.
pub fn decode_ulaw(payload: &[u8], out: &mut Vec<i16>) {
    out.extend(payload.iter().map(|&b| ULAW_TABLE[b as usize]));
}

/// A-law bytes → appended linear samples.
pub fn decode_alaw(payload: &[u8], out: &mut Vec<i16>) {
    out.extend(payload.iter().map(|&b| ALAW_TABLE[b as usize]));
}

/// Linear samples → appended μ-law bytes (for test-data generators).
pub fn encode_ulaw(pcm: &[i16], out: &mut Vec<u8>) {
    out.extend(pcm.iter().map(|&s| linear_to_ulaw(s)));
}

/// Linear samples → appended A-law bytes (for test-data generators).
pub fn encode_alaw(pcm: &[i16], out: &mut Vec<u8>) {
    out.extend(pcm.iter().map(|&s| linear_to_alaw(s)));
}

/// Which G.711 law a [`G711Decoder`] expands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Law {
    /// μ-law, RTP payload type 0.
    Ulaw,
    /// A-law, RTP payload type 8.
    Alaw,
}

/// G.711 decoder: 8 kHz out, one sample per payload byte, no delay, no state.
/// Concealment is silence (G.711 Appendix I PLC is not worth it for a recorder).
#[derive(Debug, Clone)]
pub struct G711Decoder {
    table: &'static [i16; 256],
}

/// The expansion table of `law`: byte → linear sample.
pub fn expansion(law: Law) -> &'static [i16; 256] {
    match law {
        Law::Ulaw => &ULAW_TABLE,
        Law::Alaw => &ALAW_TABLE,
    }
}

impl G711Decoder {
    pub fn new(law: Law) -> Self {
        G711Decoder {
            table: expansion(law),
        }
    }
}

impl Decoder for G711Decoder {
    fn output_rate(&self) -> u32 {
        8000
    }

    fn decode(&mut self, payload: &[u8], out: &mut Vec<i16>) -> Result<usize, CodecError> {
        let table = self.table;
        out.extend(payload.iter().map(|&b| table[b as usize]));
        Ok(payload.len())
    }

    fn conceal(&mut self, samples: usize, out: &mut Vec<i16>) {
        out.resize(out.len() + samples, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};

    /// Runs `sox -t <fmt> -r 8000 -c 1 - -t s16 -` on all 256 codes; `None` when
    /// sox is not installed.
    fn sox_decode(fmt: &str) -> Option<Vec<i16>> {
        let mut child = Command::new("sox")
            .args([
                "-t", fmt, "-r", "8000", "-c", "1", "-", "-t", "s16", "-L", "-",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let codes: Vec<u8> = (0..=255u8).collect();
        child.stdin.take()?.write_all(&codes).ok()?;
        let output = child.wait_with_output().ok()?;
        assert!(output.status.success(), "sox failed");
        Some(
            output
                .stdout
                .chunks_exact(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]]))
                .collect(),
        )
    }

    /// A cheap fingerprint of a decode table (order-sensitive).
    fn fingerprint(t: &[i16]) -> i64 {
        t.iter()
            .enumerate()
            .map(|(i, &v)| (i as i64 + 1) * v as i64)
            .sum()
    }

    #[test]
    fn tables_match_known_values() {
        // Checked by hand against `sox -t ul/-t al ... -t s16` (sox 14.4.2) once;
        // the fingerprints pin the whole 256-entry tables.
        assert_eq!(ulaw_to_linear(0x00), -32124);
        assert_eq!(ulaw_to_linear(0x80), 32124);
        assert_eq!(ulaw_to_linear(0xFF), 0);
        assert_eq!(ulaw_to_linear(0x7F), 0);
        assert_eq!(ulaw_to_linear(0xFE), 8);
        assert_eq!(ulaw_to_linear(0x7E), -8);
        assert_eq!(alaw_to_linear(0xD5), 8);
        assert_eq!(alaw_to_linear(0x55), -8);
        assert_eq!(alaw_to_linear(0xAA), 32256);
        assert_eq!(alaw_to_linear(0x2A), -32256);
        assert_eq!(fingerprint(&ULAW_TABLE), ULAW_FINGERPRINT);
        assert_eq!(fingerprint(&ALAW_TABLE), ALAW_FINGERPRINT);
    }

    const ULAW_FINGERPRINT: i64 = 98_107_392;
    const ALAW_FINGERPRINT: i64 = 100_139_008;

    #[test]
    fn tables_match_sox() {
        for (fmt, table) in [("ul", &ULAW_TABLE), ("al", &ALAW_TABLE)] {
            match sox_decode(fmt) {
                Some(sox) => assert_eq!(&sox[..], &table[..], "sox -t {fmt} disagrees"),
                None => {
                    eprintln!("note: sox not installed, skipping the live sox comparison");
                    return;
                }
            }
        }
    }

    #[test]
    fn code_round_trip() {
        for b in 0..=255u8 {
            let lin = ulaw_to_linear(b);
            let back = linear_to_ulaw(lin);
            assert_eq!(ulaw_to_linear(back), lin, "ulaw code {b:#04x}");
            if b != 0x7F {
                assert_eq!(back, b, "ulaw code {b:#04x}");
            }
            let lin = alaw_to_linear(b);
            assert_eq!(linear_to_alaw(lin), b, "alaw code {b:#04x}");
        }
    }

    /// G.711 quantises by decision levels: every value lands on the
    /// reconstruction level of its interval, so the error is at most half an
    /// interval (the interval is bounded by the gaps to the neighbouring
    /// levels), the mapping is monotonic, and values beyond the outermost
    /// level clip to it.
    #[test]
    fn encode_quantises_to_its_interval() {
        for (table, enc, dec) in [
            (
                &ULAW_TABLE,
                linear_to_ulaw as fn(i16) -> u8,
                ulaw_to_linear as fn(u8) -> i16,
            ),
            (&ALAW_TABLE, linear_to_alaw, alaw_to_linear),
        ] {
            let mut levels: Vec<i32> = table.iter().map(|&v| v as i32).collect();
            levels.sort_unstable();
            levels.dedup();
            let (lowest, highest) = (levels[0], levels[levels.len() - 1]);
            let mut prev = i32::MIN;
            for x in i16::MIN..=i16::MAX {
                let x32 = x as i32;
                let got = dec(enc(x)) as i32;
                assert!(got >= prev, "not monotonic at {x}");
                prev = got;
                if x32 >= highest {
                    assert_eq!(got, highest);
                    continue;
                }
                if x32 <= lowest {
                    assert_eq!(got, lowest);
                    continue;
                }
                let i = levels.binary_search(&got).unwrap_or(0);
                let below = if i > 0 { got - levels[i - 1] } else { 0 };
                let above = levels.get(i + 1).map_or(0, |&l| l - got);
                let half_interval = below.max(above) / 2;
                assert!(
                    (got - x32).abs() <= half_interval + 8,
                    "x={x} got={got} half interval {half_interval}"
                );
            }
        }
    }

    #[test]
    fn decoder_trait() {
        let mut d = G711Decoder::new(Law::Alaw);
        let mut out = vec![1, 2];
        assert_eq!(d.decode(&[0xD5, 0x55], &mut out).unwrap(), 2);
        assert_eq!(out, vec![1, 2, 8, -8]);
        d.conceal(3, &mut out);
        assert_eq!(out, vec![1, 2, 8, -8, 0, 0, 0]);
        assert_eq!(d.output_rate(), 8000);
        assert_eq!(d.delay_samples(), 0);
    }
}
