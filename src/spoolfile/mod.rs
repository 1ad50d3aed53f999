//! How a spool file is stored: as it is, or sealed at rest
//! (`spool.encryption_key_file`, [`crypt`]), and the FLAC form of a WAV for
//! the uplink ([`flac`]).
//!
//! In: paths and keys. Out: readers of the plaintext (from any offset),
//! writers that seal, lengths and SHA-256 of the plaintext. Used by the
//! recording writer, crash recovery, delivery and upload alike, so it sits
//! below all of them and uses nothing of ours but `sys`.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

pub mod crypt;
pub mod flac;
pub mod sha256x2;
pub use crypt::{
    open_recording, open_recording_file, read_recording, Keyring, OpenMode, RecordingReader,
};

/// A finished spool file's writer: the file as it is, or sealed (fixed
/// chunks) with the current key.
pub enum SpoolWriter<W: Write> {
    Plain(W),
    Sealed(crypt::SealedWriter<W>),
}

impl<W: Write> SpoolWriter<W> {
    pub fn new(inner: W, seal: Option<&Keyring>) -> io::Result<Self> {
        Ok(match seal {
            Some(k) => SpoolWriter::Sealed(crypt::SealedWriter::new(
                inner,
                k.current(),
                crypt::Layout::Chunks,
            )?),
            None => SpoolWriter::Plain(inner),
        })
    }

    /// Everything written (the final record sealed); the inner writer.
    pub fn finish(self) -> io::Result<W> {
        match self {
            SpoolWriter::Plain(mut w) => {
                w.flush()?;
                Ok(w)
            }
            SpoolWriter::Sealed(w) => w.finish(),
        }
    }
}

impl<W: Write> Write for SpoolWriter<W> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            SpoolWriter::Plain(w) => w.write(b),
            SpoolWriter::Sealed(w) => w.write(b),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            SpoolWriter::Plain(w) => w.flush(),
            SpoolWriter::Sealed(w) => w.flush(),
        }
    }
}

/// Seals a plaintext spool file where it is (a pair another program put in
/// an encrypted spool: `pbx-edge import --out` the spool, a copy from
/// elsewhere): the sealed copy written beside it, fsynced, then renamed
/// over it; the caller syncs the directory. False when it was sealed
/// already. An error leaves the file as it was.
pub fn seal_in_place(path: &Path, keys: &Keyring) -> io::Result<bool> {
    if crypt::is_sealed(path)? {
        return Ok(false);
    }
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".sealing");
    let tmp = path.with_file_name(name);
    let sealed = (|| {
        let mut src = File::open(path)?;
        let f = crate::sys::create_private_file(&tmp)?;
        let mut w = SpoolWriter::new(io::BufWriter::with_capacity(256 * 1024, f), Some(keys))?;
        io::copy(&mut src, &mut w)?;
        let f = w
            .finish()?
            .into_inner()
            .map_err(io::IntoInnerError::into_error)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = sealed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(true)
}

/// Counts and hashes (SHA-256) what goes through it.
pub struct HashingWriter<W: Write> {
    inner: W,
    hash: Sha256,
    n: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hash: Sha256::new(),
            n: 0,
        }
    }

    /// The inner writer, and the length and hex SHA-256 of what went through.
    pub fn finish(self) -> (W, (u64, String)) {
        (self.inner, (self.n, hex::encode(self.hash.finalize())))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(b)?;
        self.hash.update(&b[..n]);
        self.n += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Length and hex SHA-256 of a spool file's plaintext (decrypted on the fly
/// when sealed): what its JSON's `bytes` and `sha256` describe.
pub fn hash_recording(path: &Path, keys: Option<&Keyring>) -> io::Result<(u64, String)> {
    let r = open_recording(path, keys, OpenMode::Strict)?;
    let mut w = HashingWriter::new(io::sink());
    io::copy(&mut io::BufReader::with_capacity(256 * 1024, r), &mut w)?;
    Ok(w.finish().1)
}

/// Length and hex SHA-256 of a file, read through a mapping (a finished
/// recording is in the page cache: hashing it there saves copying every
/// byte out first); read in pieces where it cannot be mapped.
pub fn hash_file(path: &Path) -> io::Result<(u64, String)> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    let mut h = Sha256::new();
    if let Ok(Some(m)) = crate::sys::MappedFile::map(&f, len) {
        h.update(m.bytes());
        return Ok((len, hex::encode(h.finalize())));
    }
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    loop {
        let r = f.read(&mut buf)?;
        if r == 0 {
            break;
        }
        h.update(&buf[..r]);
        n += r as u64;
    }
    Ok((n, hex::encode(h.finalize())))
}

/// [`hash_file`] of two files at once: their SHA-256 computed together
/// ([`sha256x2`], about twice as fast as one after the other on a CPU with
/// SHA extensions). The same lengths and hashes as [`hash_file`] of each.
pub fn hash_file_pair(a: &Path, b: &Path) -> io::Result<[(u64, String); 2]> {
    let (fa, fb) = (File::open(a)?, File::open(b)?);
    let (la, lb) = (fa.metadata()?.len(), fb.metadata()?.len());
    if let (Ok(Some(ma)), Ok(Some(mb))) = (
        crate::sys::MappedFile::map(&fa, la),
        crate::sys::MappedFile::map(&fb, lb),
    ) {
        let (ha, hb) = sha256x2::digest_pair(ma.bytes(), mb.bytes());
        return Ok([(la, hex::encode(ha)), (lb, hex::encode(hb))]);
    }
    Ok([hash_file(a)?, hash_file(b)?])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mapped or not, the hash is the file's: an empty file (which cannot
    /// be mapped) and one of several pieces.
    #[test]
    fn hash_file_is_the_sha256_of_the_bytes() {
        let d = tempfile::tempdir().unwrap();
        for len in [0usize, 1, 44, 300_001] {
            let p = d.path().join(format!("f{len}"));
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            std::fs::write(&p, &bytes).unwrap();
            let (n, sha) = hash_file(&p).unwrap();
            assert_eq!(n, len as u64);
            assert_eq!(sha, hex::encode(Sha256::digest(&bytes)));
        }
        assert!(hash_file(&d.path().join("missing")).is_err());
    }

    /// Two files hashed together: what each hashed alone gives (mapped or
    /// not: an empty one cannot be mapped).
    #[test]
    fn hash_file_pair_is_hash_file_of_each() {
        let d = tempfile::tempdir().unwrap();
        let lens = [0usize, 44, 300_001, 1_920_044];
        for (i, &la) in lens.iter().enumerate() {
            for &lb in &lens[i..] {
                let (pa, pb) = (d.path().join("a"), d.path().join("b"));
                std::fs::write(
                    &pa,
                    (0..la).map(|i| (i * 7 % 251) as u8).collect::<Vec<_>>(),
                )
                .unwrap();
                std::fs::write(
                    &pb,
                    (0..lb).map(|i| (i * 3 % 241) as u8).collect::<Vec<_>>(),
                )
                .unwrap();
                let [ha, hb] = hash_file_pair(&pa, &pb).unwrap();
                assert_eq!(ha, hash_file(&pa).unwrap());
                assert_eq!(hb, hash_file(&pb).unwrap());
            }
        }
        assert!(hash_file_pair(&d.path().join("a"), &d.path().join("missing")).is_err());
    }
}
