//! A chunk's samples: linear PCM, or G.711 bytes expanded when read (see
//! the parent module).

use super::*;

/// How a chunk's bytes hold its samples: linear PCM (two bytes a sample,
/// native order), or G.711 bytes expanded when they are read (rendered):
/// a G.711 leg's hold-back window then takes one byte a sample instead of
/// two. Expanding is a table lookup, the same one the G.711 decoder makes,
/// so what is rendered is bit for bit the same. One byte: a chunk keeps it
/// beside its bytes, which makes a chunk 40 bytes instead of 48 (an enum
/// of two boxes takes 24).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Linear,
    G711(Law),
}

/// A chunk's samples, owned: exactly as long as the packet's audio. A
/// rendered chunk's buffer is kept for the leg's next packet ([`Spare`]).
#[derive(Debug)]
pub(super) struct Samples {
    pub(super) kind: Kind,
    pub(super) bytes: Box<[u8]>,
}

/// A chunk's samples, borrowed.
#[derive(Debug, Clone, Copy)]
pub(super) struct SamplesRef<'a> {
    pub(super) kind: Kind,
    pub(super) bytes: &'a [u8],
}

/// Sample `i` of linear bytes.
#[inline]
fn linear_at(b: &[u8], i: usize) -> i16 {
    i16::from_ne_bytes([b[2 * i], b[2 * i + 1]])
}

impl SamplesRef<'_> {
    pub(super) fn len(&self) -> usize {
        match self.kind {
            Kind::Linear => self.bytes.len() / 2,
            Kind::G711(_) => self.bytes.len(),
        }
    }

    pub(super) fn get(&self, i: usize) -> i16 {
        match self.kind {
            Kind::Linear => linear_at(self.bytes, i),
            Kind::G711(law) => expansion(law)[usize::from(self.bytes[i])],
        }
    }

    /// Append samples `off..off + n` to `out`.
    pub(super) fn extend_into(&self, off: usize, n: usize, out: &mut Vec<i16>) {
        match self.kind {
            Kind::Linear => out.extend(
                self.bytes[2 * off..2 * (off + n)]
                    .chunks_exact(2)
                    .map(|c| i16::from_ne_bytes([c[0], c[1]])),
            ),
            Kind::G711(law) => {
                let t = expansion(law);
                out.extend(self.bytes[off..off + n].iter().map(|&x| t[usize::from(x)]));
            }
        }
    }
}

#[cfg(test)]
impl Samples {
    fn view(&self) -> SamplesRef<'_> {
        SamplesRef {
            kind: self.kind,
            bytes: &self.bytes,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.view().len()
    }

    pub(super) fn get(&self, i: usize) -> i16 {
        self.view().get(i)
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
    /// Keep `s`, in place of the older of the two when both are kept (a
    /// stream whose packets changed length soon has buffers that fit).
    pub(super) fn put(&mut self, s: Samples) {
        let [a, b] = &mut self.0;
        if a.is_some() {
            std::mem::swap(a, b);
        }
        *a = Some(s);
    }

    /// `pcm` in a kept buffer if one fits it, else in a new one.
    pub(super) fn samples(&mut self, pcm: PacketAudio<'_>) -> Samples {
        let (kind, len) = match pcm {
            PacketAudio::Pcm(p) => (Kind::Linear, 2 * p.len()),
            PacketAudio::G711(law, b) => (Kind::G711(law), b.len()),
        };
        // A buffer of the same length and of the same width of sample (a
        // law's bytes may go to the other law: the table is the kind's).
        let linear = kind == Kind::Linear;
        let fits = |s: &Option<Samples>| {
            s.as_ref()
                .is_some_and(|s| s.bytes.len() == len && (s.kind == Kind::Linear) == linear)
        };
        let mut bytes = match self.0.iter_mut().find(|s| fits(s)).and_then(Option::take) {
            Some(kept) => kept.bytes,
            None => vec![0u8; len].into_boxed_slice(),
        };
        match pcm {
            PacketAudio::Pcm(p) => {
                for (d, s) in bytes.chunks_exact_mut(2).zip(p) {
                    d.copy_from_slice(&s.to_ne_bytes());
                }
            }
            PacketAudio::G711(_, b) => bytes.copy_from_slice(b),
        }
        Samples { kind, bytes }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ptr(s: &Samples) -> *const u8 {
        s.bytes.as_ptr()
    }

    fn kept(spare: &Spare) -> Vec<(usize, *const u8)> {
        spare
            .0
            .iter()
            .flatten()
            .map(|s| (s.len(), ptr(s)))
            .collect()
    }

    /// Two buffers of `bytes`' length taken and kept again (a render
    /// frees a packet or two, then as many come).
    fn keep_two(spare: &mut Spare, bytes: &[u8]) {
        let (x, y) = (
            spare.samples(PacketAudio::G711(Law::Ulaw, bytes)),
            spare.samples(PacketAudio::G711(Law::Ulaw, bytes)),
        );
        spare.put(x);
        spare.put(y);
    }

    #[test]
    fn kept_buffers_are_reused_when_they_fit_and_the_newest_are_kept() {
        let mut spare = Spare::default();
        let (a20, b20, a10) = ([1u8; 160], [2u8; 160], [3u8; 80]);
        // Two 20 ms buffers kept: a 20 ms packet takes one, with its own
        // bytes.
        keep_two(&mut spare, &a20);
        let before = kept(&spare);
        assert_eq!(before.len(), 2);
        let again = spare.samples(PacketAudio::G711(Law::Alaw, &b20));
        assert!(before.contains(&(160, ptr(&again))));
        assert_eq!(again.get(0), expansion(Law::Alaw)[2]);
        spare.put(again);
        // The stream goes to 10 ms: its buffers replace the old ones.
        keep_two(&mut spare, &a10);
        let ten = kept(&spare);
        assert!(ten.len() == 2 && ten.iter().all(|k| k.0 == 80), "{ten:?}");
        let reused = spare.samples(PacketAudio::G711(Law::Ulaw, &a10));
        assert!(ten.contains(&(80, ptr(&reused))));
        // Linear audio never takes a G.711 buffer.
        let pcm = [7i16; 80];
        let lin = spare.samples(PacketAudio::Pcm(&pcm));
        assert_eq!(lin.kind, Kind::Linear);
        assert_eq!(lin.len(), 80);
        assert!((0..80).all(|i| lin.get(i) == 7));
        assert_eq!(kept(&spare).len(), 1);
        // Nor a G.711 packet a linear buffer of as many bytes: 160 bytes
        // are 80 linear samples or 160 G.711 ones.
        let lin_at = ptr(&lin);
        spare.put(lin);
        let g = spare.samples(PacketAudio::G711(Law::Ulaw, &[9u8; 160]));
        assert_eq!(
            (g.kind, g.len(), g.get(159)),
            (Kind::G711(Law::Ulaw), 160, expansion(Law::Ulaw)[9])
        );
        assert_ne!(ptr(&g), lin_at);
        assert!(
            kept(&spare).contains(&(80, lin_at)),
            "the linear buffer still kept"
        );
    }
}
