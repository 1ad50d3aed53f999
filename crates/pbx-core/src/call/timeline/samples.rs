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

#[cfg(test)]
mod tests {
    use super::*;

    fn ptr(s: &Samples) -> *const u8 {
        match s {
            Samples::Linear(v) => v.as_ptr().cast(),
            Samples::G711(_, b) => b.as_ptr(),
        }
    }

    fn kept(spare: &Spare) -> Vec<(usize, *const u8)> {
        spare
            .0
            .iter()
            .flatten()
            .map(|s| (s.len(), ptr(s)))
            .collect()
    }

    #[test]
    fn kept_buffers_are_reused_when_they_fit_and_the_newest_are_kept() {
        let mut spare = Spare::default();
        let (a20, b20, a10) = ([1u8; 160], [2u8; 160], [3u8; 80]);
        // Two 20 ms buffers kept (a render frees a packet or two, then as
        // many come): a 20 ms packet takes one, with its own bytes.
        let (x, y) = (
            spare.samples(PacketAudio::G711(Law::Ulaw, &a20)),
            spare.samples(PacketAudio::G711(Law::Ulaw, &a20)),
        );
        spare.put(x);
        spare.put(y);
        let before = kept(&spare);
        assert_eq!(before.len(), 2);
        let again = spare.samples(PacketAudio::G711(Law::Alaw, &b20));
        assert!(before.contains(&(160, ptr(&again))));
        assert_eq!(again.get(0), expansion(Law::Alaw)[2]);
        spare.put(again);
        // The stream goes to 10 ms: its buffers replace the old ones.
        let (x, y) = (
            spare.samples(PacketAudio::G711(Law::Ulaw, &a10)),
            spare.samples(PacketAudio::G711(Law::Ulaw, &a10)),
        );
        spare.put(x);
        spare.put(y);
        let ten = kept(&spare);
        assert!(ten.len() == 2 && ten.iter().all(|k| k.0 == 80), "{ten:?}");
        let reused = spare.samples(PacketAudio::G711(Law::Ulaw, &a10));
        assert!(ten.contains(&(80, ptr(&reused))));
        // Linear audio never takes a G.711 buffer.
        let pcm = [7i16; 80];
        let lin = spare.samples(PacketAudio::Pcm(&pcm));
        assert!(matches!(lin, Samples::Linear(ref v) if v[..] == pcm[..]));
        assert_eq!(kept(&spare).len(), 1);
    }
}
