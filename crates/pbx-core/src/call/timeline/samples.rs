//! A chunk's samples: linear PCM, or G.711 bytes expanded when read (see
//! the parent module).

use super::*;

/// A chunk's samples: linear PCM, or G.711 bytes expanded when they are
/// read (rendered): a G.711 leg's hold-back window then takes one byte a
/// sample instead of two. Expanding is a table lookup, the same one the
/// G.711 decoder makes, so what is rendered is bit for bit the same.
///
/// Exactly as long as the packet's audio (a boxed slice, 24 bytes in its
/// chunk). A rendered chunk's buffer is kept for the leg's next packet
/// ([`Spare`]).
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

/// The buffers of the last chunks a leg rendered, kept for its next
/// packets (of the same length and kind, as a stream's packets are): a
/// leg renders a packet or two a round and takes as many in, so its
/// buffers go round within the leg instead of through the allocator's
/// shared bins, where thousands of calls' buffers freed and taken in
/// another order left the heap fragmented (more resident memory for less
/// in use). Two, not a burst's worth: the rest are freed.
#[derive(Debug, Default)]
pub(super) struct Spare([Option<Samples>; 2]);

impl Spare {
    /// Keep `s` if there is room.
    pub(super) fn put(&mut self, s: Samples) {
        if let Some(slot) = self.0.iter_mut().find(|x| x.is_none()) {
            *slot = Some(s);
        }
    }

    /// `pcm` in a kept buffer if one fits it, else in a new one.
    pub(super) fn samples(&mut self, pcm: PacketAudio<'_>) -> Samples {
        let fits = |s: &Option<Samples>| match (s, pcm) {
            (Some(Samples::Linear(v)), PacketAudio::Pcm(p)) => v.len() == p.len(),
            (Some(Samples::G711(_, b)), PacketAudio::G711(_, x)) => b.len() == x.len(),
            _ => false,
        };
        let kept = self.0.iter_mut().find(|s| fits(s)).and_then(Option::take);
        match (kept, pcm) {
            (Some(Samples::Linear(mut v)), PacketAudio::Pcm(p)) => {
                v.copy_from_slice(p);
                Samples::Linear(v)
            }
            (Some(Samples::G711(_, mut b)), PacketAudio::G711(law, x)) => {
                b.copy_from_slice(x);
                Samples::G711(expansion(law), b)
            }
            (_, PacketAudio::Pcm(p)) => Samples::Linear(p.into()),
            (_, PacketAudio::G711(law, b)) => Samples::G711(expansion(law), b.into()),
        }
    }
}
