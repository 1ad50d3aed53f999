//! One packet's audio as the window holds it ([`Chunk`]), and how it
//! stood against its segment's envelope when it came ([`Flag`]).

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flag {
    Normal,
    /// Later than the envelope by more than the break threshold.
    Late,
    /// Earlier than the envelope by more than the break threshold.
    Early,
}

/// One packet's audio in the window (a leg holds the window's worth: kept
/// small, 40 bytes beside the samples).
#[derive(Debug)]
pub(super) struct Chunk {
    /// Source position of the first PCM sample.
    pub(super) u: i64,
    pub(super) arrival: i64,
    /// The samples ([`Samples`], kept here as its two parts: the kind
    /// fits beside the flag).
    pub(super) bytes: Box<[u8]>,
    /// The decoder's delay (a few hundred samples at most): the RTP
    /// timestamp names `u + delay`.
    pub(super) delay: u32,
    pub(super) flag: Flag,
    pub(super) kind: Kind,
}

#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<Chunk>() == 40);

impl Chunk {
    pub(super) fn new(u: i64, delay: i64, arrival: i64, flag: Flag, pcm: Samples) -> Self {
        Chunk {
            u,
            arrival,
            bytes: pcm.bytes,
            delay: u32::try_from(delay).unwrap_or(0),
            flag,
            kind: pcm.kind,
        }
    }

    pub(super) fn pcm(&self) -> SamplesRef<'_> {
        SamplesRef {
            kind: self.kind,
            bytes: &self.bytes,
        }
    }

    /// The samples' buffer, for the leg's next packets ([`Spare`]).
    pub(super) fn into_samples(self) -> Samples {
        Samples {
            kind: self.kind,
            bytes: self.bytes,
        }
    }

    pub(super) fn end(&self) -> i64 {
        self.u + self.pcm().len() as i64
    }

    /// Source position the RTP timestamp names.
    pub(super) fn uts(&self) -> i64 {
        self.u + i64::from(self.delay)
    }

    /// Arrival minus [`Self::uts`].
    pub(super) fn d(&self) -> i64 {
        self.arrival - self.uts()
    }
}
