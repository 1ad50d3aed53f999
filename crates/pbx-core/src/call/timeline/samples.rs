//! A chunk's samples: linear PCM, or G.711 bytes expanded when read (see
//! the parent module).

use super::*;

/// A chunk's samples: linear PCM, or G.711 bytes expanded when they are
/// read (rendered): a G.711 leg's hold-back window then takes one byte a
/// sample instead of two. Expanding is a table lookup, the same one the
/// G.711 decoder makes, so what is rendered is bit for bit the same.
///
/// Exactly as long as the packet's audio (a boxed slice, 24 bytes in its
/// chunk): a chunk's buffer is allocated when its packet comes and freed
/// when it is rendered, and the allocator's per-thread cache reuses it for
/// the next packet of any call (a spare buffer kept per leg cost more than
/// a kilobyte a call).
#[derive(Debug)]
pub(super) enum Samples {
    Linear(Box<[i16]>),
    /// The law's expansion table and the bytes.
    G711(&'static [i16; 256], Box<[u8]>),
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
