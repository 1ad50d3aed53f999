//! A chunk's samples and where spare buffers go: linear PCM, or G.711
//! bytes expanded when read (see the parent module).

use super::*;

/// A chunk's samples: linear PCM, or G.711 bytes expanded when they are
/// read (rendered): a G.711 leg's hold-back window then takes one byte a
/// sample instead of two. Expanding is a table lookup, the same one the
/// G.711 decoder makes, so what is rendered is bit for bit the same.
#[derive(Debug)]
pub(super) enum Samples {
    Linear(Vec<i16>),
    /// The law's expansion table and the bytes.
    G711(&'static [i16; 256], Vec<u8>),
}

impl Samples {
    pub(super) fn len(&self) -> usize {
        match self {
            Samples::Linear(v) => v.len(),
            Samples::G711(_, b) => b.len(),
        }
    }

    pub(super) fn get(&self, i: usize) -> i16 {
        match self {
            Samples::Linear(v) => v[i],
            Samples::G711(t, b) => t[usize::from(b[i])],
        }
    }

    /// Append samples `off..off + n` to `out`.
    pub(super) fn extend_into(&self, off: usize, n: usize, out: &mut Vec<i16>) {
        match self {
            Samples::Linear(v) => out.extend_from_slice(&v[off..off + n]),
            Samples::G711(t, b) => out.extend(b[off..off + n].iter().map(|&x| t[usize::from(x)])),
        }
    }
}

/// A packet's audio at the output rate.
#[derive(Debug, Clone, Copy)]
pub enum PacketAudio<'a> {
    /// Decoded PCM.
    Pcm(&'a [i16]),
    /// G.711 bytes at 8 kHz, one a sample (expanded when rendered).
    G711(Law, &'a [u8]),
}

impl PacketAudio<'_> {
    pub(super) fn len(&self) -> usize {
        match self {
            PacketAudio::Pcm(p) => p.len(),
            PacketAudio::G711(_, b) => b.len(),
        }
    }
}

/// Spare chunk buffers of both kinds.
#[derive(Debug, Default)]
pub(super) struct Pools {
    pub(super) pcm: Vec<Vec<i16>>,
    pub(super) g711: Vec<Vec<u8>>,
}

/// Keep a chunk's buffer for a later chunk, or free it when enough are kept.
pub(super) fn recycle(pool: &mut Pools, samples: Samples) {
    match samples {
        Samples::Linear(v) if pool.pcm.len() < POOL_MAX => pool.pcm.push(v),
        Samples::G711(_, b) if pool.g711.len() < POOL_MAX => pool.g711.push(b),
        _ => {}
    }
}
