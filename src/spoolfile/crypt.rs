//! Encryption at rest (`spool.encryption_key_file`, CONTRACT §6): the file
//! format of every encrypted spool file, its writer and its reader.
//!
//! In: plaintext bytes (a WAV, a JSON document) and a [`Keyring`]. Out: a
//! sealed file; and back, a reader of the plaintext ([`open_recording`]).
//!
//! # File format (version 1)
//! A 40-byte header, then records:
//!
//! | bytes | field |
//! |---|---|
//! | 0..8 | magic `PBXENC` `\0` `\x01` (the last byte is the version) |
//! | 8..16 | key id: the first 8 bytes of SHA-256("pbx-edge spool key id" ‖ key) |
//! | 16..35 | nonce prefix: 19 random bytes, new for every file |
//! | 35 | layout: 0 = records of any size (a file being written), 1 = fixed chunks |
//! | 36..40 | chunk: plaintext bytes per record (u32 LE; layout 1: every record but the last holds exactly this many) |
//!
//! Each record: its ciphertext length `n` (u32 LE, plaintext + 16), then the
//! ciphertext and Poly1305 tag of XChaCha20-Poly1305 with key = the key,
//! nonce = prefix ‖ record number (u32 BE) ‖ last (1 byte: 1 on the final
//! record, else 0), associated data = the 40-byte header. This is the STREAM
//! construction (Hoang, Reyhanitabar, Rogaway, Vizár 2015): records cannot
//! be reordered, dropped, moved to another file or cut off at the end
//! without the reader noticing; the header cannot be changed.
//!
//! # Promises
//! - A file being written (`.part`, layout 0) is sealed record by record:
//!   every [`SealedWriter::flush`] seals what was written since the last one
//!   and hands it to the kernel in one `write()`, so a crash of the process
//!   loses only what was not flushed; a record torn by the crash (or power
//!   loss) is the only thing [`OpenMode::Recover`] drops. A reader of a
//!   `.part` still written ([`OpenMode::Follow`]) is kept open and takes in
//!   new records as they come: each record is decrypted once, however
//!   often it reads. A `.part` read once to be sealed anew
//!   ([`OpenMode::Checked`]) is checked record by record as it is read,
//!   each decrypted once; only a `.part` with a record that does not
//!   authenticate is read again in [`OpenMode::Recover`].
//! - A finished file (layout 1, [`SealedWriter::finish`]) ends in a record
//!   marked last: a file cut short is an error in [`OpenMode::Strict`], never
//!   silently shorter audio. Its records are found by arithmetic, so reading
//!   from any plaintext offset (a tus resume) costs one record.
//! - Keys: the current key seals new files; a file sealed with any key of
//!   the ring (current or old) opens. A file whose key is not in the ring, or
//!   a wrong key, is a clear error naming the key id, and nothing is changed.
//! - Files without the magic are plaintext and open as they are (recordings
//!   spooled before encryption was turned on).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// The first bytes of every encrypted file.
pub const MAGIC: &[u8; 8] = b"PBXENC\x00\x01";
/// Header length.
pub const HEADER_LEN: usize = 40;
/// Plaintext bytes per record of a finished file.
pub const CHUNK: usize = 64 * 1024;
/// Largest record a reader accepts (plaintext bytes).
pub const MAX_RECORD: usize = 1 << 20;
const TAG: usize = 16;
/// The systemd credential looked up when `encryption_key_file` is empty.
pub const CREDENTIAL_NAME: &str = "spool-key";

/// One 32-byte key and its id.
#[derive(Clone)]
pub struct SpoolKey {
    id: [u8; 8],
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for SpoolKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SpoolKey({})", hex::encode(self.id))
    }
}

impl SpoolKey {
    pub fn new(bytes: &[u8; 32]) -> Self {
        let mut h = Sha256::new();
        h.update(b"pbx-edge spool key id");
        h.update(bytes);
        let d = h.finalize();
        let mut id = [0u8; 8];
        id.copy_from_slice(&d[..8]);
        SpoolKey {
            id,
            cipher: XChaCha20Poly1305::new(&(*bytes).into()),
        }
    }

    /// The key id as hex (shown in errors, never the key).
    pub fn id_hex(&self) -> String {
        hex::encode(self.id)
    }

    /// Reads a key file: 32 raw bytes, or 64 hex digits (surrounding
    /// whitespace ignored). The error names the file, never its content.
    pub fn from_file(path: &Path) -> io::Result<Self> {
        let raw = Zeroizing::new(std::fs::read(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot read key file {}: {e}", path.display()),
            )
        })?);
        let key = parse_key(&raw).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "key file {} holds {} bytes: a key is 32 raw bytes or 64 hex digits",
                    path.display(),
                    raw.len()
                ),
            )
        })?;
        Ok(SpoolKey::new(&key))
    }
}

fn parse_key(raw: &[u8]) -> Option<Zeroizing<[u8; 32]>> {
    let mut k = Zeroizing::new([0u8; 32]);
    if raw.len() == 32 {
        k.copy_from_slice(raw);
        return Some(k);
    }
    let text = std::str::from_utf8(raw).ok()?.trim();
    if text.len() == 64 && hex::decode_to_slice(text, &mut k[..]).is_ok() {
        return Some(k);
    }
    None
}

/// The keys of a spool: the one that seals new files and the old ones that
/// still open files sealed with them (rotation).
#[derive(Debug, Clone)]
pub struct Keyring {
    current: SpoolKey,
    old: Vec<SpoolKey>,
}

/// Two keyrings are the same when they hold the same key ids.
impl PartialEq for Keyring {
    fn eq(&self, o: &Self) -> bool {
        self.current.id == o.current.id
            && self.old.len() == o.old.len()
            && self.old.iter().zip(&o.old).all(|(a, b)| a.id == b.id)
    }
}

impl Eq for Keyring {}

impl Keyring {
    pub fn new(current: SpoolKey, old: Vec<SpoolKey>) -> Self {
        Keyring { current, old }
    }

    /// `key_file` (empty: the systemd credential [`CREDENTIAL_NAME`] in
    /// `credentials_dir`, if there is one) and the old key files. `None`:
    /// encryption is off.
    pub fn load(
        key_file: &Path,
        old_files: &[PathBuf],
        credentials_dir: Option<&Path>,
    ) -> io::Result<Option<Arc<Keyring>>> {
        let path = if key_file.as_os_str().is_empty() {
            match credentials_dir.map(|d| d.join(CREDENTIAL_NAME)) {
                Some(p) if p.is_file() => p,
                _ => {
                    if !old_files.is_empty() {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidInput,
                            "spool.old_key_files is set but spool.encryption_key_file is not",
                        ));
                    }
                    return Ok(None);
                }
            }
        } else {
            key_file.to_path_buf()
        };
        let current = SpoolKey::from_file(&path)?;
        let old = old_files
            .iter()
            .map(|p| SpoolKey::from_file(p))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Some(Arc::new(Keyring::new(current, old))))
    }

    pub fn current(&self) -> &SpoolKey {
        &self.current
    }

    fn find(&self, id: &[u8]) -> Option<&SpoolKey> {
        std::iter::once(&self.current)
            .chain(&self.old)
            .find(|k| k.id == id)
    }
}

fn nonce(prefix: &[u8], counter: u32, last: bool) -> XNonce {
    let mut n = [0u8; 24];
    n[..19].copy_from_slice(prefix);
    n[19..23].copy_from_slice(&counter.to_be_bytes());
    n[23] = u8::from(last);
    n.into()
}

/// How a sealed file is laid out (header byte 35).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Records of any size: a file written while a call runs.
    Records,
    /// Records of exactly [`CHUNK`] plaintext bytes but the last.
    Chunks,
}

/// Writes a sealed file (see the module doc).
pub struct SealedWriter<W: Write> {
    inner: W,
    key: SpoolKey,
    header: [u8; HEADER_LEN],
    layout: Layout,
    counter: u32,
    header_out: bool,
    buf: Zeroizing<Vec<u8>>,
    out: Vec<u8>,
}

impl<W: Write> SealedWriter<W> {
    /// Starts a sealed file in `inner` with a fresh nonce prefix; the header
    /// is written with the first record (or by [`Self::finish`]).
    pub fn new(inner: W, key: &SpoolKey, layout: Layout) -> io::Result<Self> {
        let mut header = [0u8; HEADER_LEN];
        header[..8].copy_from_slice(MAGIC);
        header[8..16].copy_from_slice(&key.id);
        getrandom::fill(&mut header[16..35]).map_err(|e| io::Error::other(e.to_string()))?;
        header[35] = match layout {
            Layout::Records => 0,
            Layout::Chunks => 1,
        };
        header[36..40].copy_from_slice(&(CHUNK as u32).to_le_bytes());
        Ok(SealedWriter {
            inner,
            key: key.clone(),
            header,
            layout,
            counter: 0,
            header_out: false,
            // Both grow to the largest record sealed (a `.part` sealed
            // record by record holds one audio chunk, not 64 KiB).
            buf: Zeroizing::new(Vec::new()),
            out: Vec::new(),
        })
    }

    /// Seals `n` buffered bytes as the next record into `out`.
    fn seal(&mut self, n: usize, last: bool) -> io::Result<()> {
        self.put_header();
        let nonce = nonce(&self.header[16..35], self.counter, last);
        self.counter = self
            .counter
            .checked_add(1)
            .ok_or_else(|| io::Error::other("sealed file: too many records"))?;
        let start = self.out.len();
        self.out
            .extend_from_slice(&((n + TAG) as u32).to_le_bytes());
        self.out.extend_from_slice(&self.buf[..n]);
        let tag = self
            .key
            .cipher
            .encrypt_inout_detached(&nonce, &self.header, (&mut self.out[start + 4..]).into())
            .map_err(|_| io::Error::other("sealing failed"))?;
        self.out.extend_from_slice(&tag);
        self.buf.drain(..n);
        Ok(())
    }

    fn put_header(&mut self) {
        if !self.header_out {
            self.out.extend_from_slice(&self.header);
            self.header_out = true;
        }
    }

    fn write_out(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.inner.write_all(&self.out)?;
            self.out.clear();
        }
        Ok(())
    }

    /// Seals what is left as the final record, writes it; returns the inner
    /// writer (not flushed or synced).
    pub fn finish(mut self) -> io::Result<W> {
        while self.layout == Layout::Chunks && self.buf.len() > CHUNK {
            self.seal(CHUNK, false)?;
        }
        let n = self.buf.len();
        self.seal(n, true)?;
        self.write_out()?;
        self.inner.flush()?;
        Ok(self.inner)
    }

    pub fn get_ref(&self) -> &W {
        &self.inner
    }
}

impl<W: Write> Write for SealedWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        let full = match self.layout {
            Layout::Chunks => CHUNK,
            Layout::Records => MAX_RECORD,
        };
        // Keep one full chunk back: `finish` must have something to mark last.
        while self.buf.len() > full {
            self.seal(full, false)?;
        }
        if self.out.len() >= CHUNK {
            self.write_out()?;
        }
        Ok(data.len())
    }

    /// Layout `Records`: seals what was written since the last flush as one
    /// record and hands it to the kernel in one `write()`. Layout `Chunks`:
    /// writes out the chunks sealed so far (a partial chunk waits).
    fn flush(&mut self) -> io::Result<()> {
        if self.layout == Layout::Records && !self.buf.is_empty() {
            let n = self.buf.len();
            self.seal(n, false)?;
        }
        // The header on disk at once: the file says what it is.
        self.put_header();
        self.write_out()?;
        self.inner.flush()
    }
}

/// How strictly [`SealedReader`] takes a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// A finished file: every record authentic, the last one marked last.
    Strict,
    /// A `.part` left by a crash: the authentic records up to the last
    /// one (a torn or damaged end dropped); no final record needed. A
    /// damaged record in the middle, followed by authentic ones, reads as
    /// zeros of its length ([`SealedReader::damaged`]).
    Recover,
    /// A `.part` being written, read as it grows and kept open: what
    /// [`OpenMode::Recover`] reads, but each record is checked when it is
    /// read (not all at open), and [`RecordingReader::refresh`] takes in
    /// the records written since. A reader kept between reads decrypts each
    /// record once.
    Follow,
    /// A `.part` read once from its start, as [`OpenMode::Recover`] would
    /// read it if every record authenticates: each record is checked
    /// (decrypted once) when the reading comes to it, not all at open, and
    /// [`RecordingReader::check_rest`] checks those not read. A record
    /// that does not authenticate (a torn or damaged one, or a final one
    /// marked last) is an error here, never dropped or read as zeros: on
    /// any error the caller throws away what it made of the plaintext and
    /// reads the file again in [`OpenMode::Recover`], which decides. Until
    /// then [`SealedReader::len`] is that of every record indexed.
    Checked,
}

#[derive(Debug, Clone, Copy)]
struct Rec {
    /// Plaintext offset of its first byte.
    plain: u64,
    /// File offset of its length field.
    at: u64,
    len: u32,
    last: bool,
    /// Did not authenticate, records after it did (Recover mode): read as
    /// zeros of its plaintext length.
    damaged: bool,
}

/// Reads the plaintext of a sealed file, from any offset.
pub struct SealedReader {
    file: File,
    key: SpoolKey,
    header: [u8; HEADER_LEN],
    recs: Vec<Rec>,
    len: u64,
    pos: u64,
    /// The decrypted record in hand: (index, plaintext).
    cur: Option<(usize, Zeroizing<Vec<u8>>)>,
    /// Records checked authentic (Recover mode checks all at open).
    complete: bool,
    /// File offset of the first record not indexed yet.
    next_at: u64,
    /// Opened with [`OpenMode::Follow`].
    follow: bool,
    /// Follow: the final record was read (nothing more is indexed).
    ended: bool,
    /// Opened with [`OpenMode::Checked`].
    checked: bool,
    /// Checked: the records before this one authenticated (each as the
    /// reading came to it).
    authentic: usize,
}

#[cfg(test)]
thread_local! {
    /// Plaintext bytes decrypted on this thread (a record decrypted again
    /// counts again): tests count the work a reader does.
    pub(crate) static DECRYPTED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

impl SealedReader {
    /// Opens a sealed file whose header is `header` (already read).
    fn open(file: File, keys: &Keyring, mode: OpenMode) -> io::Result<Self> {
        let mut header = [0u8; HEADER_LEN];
        file.read_exact_at(&mut header, 0)
            .map_err(|_| bad("encrypted file: header cut short"))?;
        if &header[..8] != MAGIC {
            return Err(bad("not an encrypted pbx-edge file"));
        }
        let key = keys.find(&header[8..16]).cloned().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "encrypted with key id {}, which is not configured \
                     (spool.encryption_key_file or spool.old_key_files); nothing was changed",
                    hex::encode(&header[8..16])
                ),
            )
        })?;
        let chunk = u32::from_le_bytes([header[36], header[37], header[38], header[39]]) as usize;
        if header[35] > 1 || chunk == 0 || chunk > MAX_RECORD {
            return Err(bad("encrypted file: unknown layout"));
        }
        let mut r = SealedReader {
            file,
            key,
            header,
            recs: Vec::new(),
            next_at: HEADER_LEN as u64,
            len: 0,
            pos: 0,
            cur: None,
            complete: false,
            follow: mode == OpenMode::Follow,
            ended: false,
            checked: mode == OpenMode::Checked,
            authentic: 0,
        };
        r.index(mode)?;
        match mode {
            OpenMode::Strict => {
                // The last record must be authentic and marked last; the
                // others are checked as they are read.
                let Some(i) = r.recs.len().checked_sub(1) else {
                    return Err(bad("encrypted file: no records (cut short)"));
                };
                r.recs[i].last = true;
                r.decrypt(i).map_err(|e| {
                    if e.kind() == io::ErrorKind::PermissionDenied {
                        e
                    } else {
                        bad("encrypted file: cut short or damaged at its end")
                    }
                })?;
                if let Some(x) = r
                    .recs
                    .iter()
                    .take(i)
                    .find(|x| x.len as usize != CHUNK + TAG)
                {
                    if header[35] == 1 {
                        return Err(bad(format!(
                            "encrypted file: record at {} is not a full chunk",
                            x.at
                        )));
                    }
                }
            }
            OpenMode::Recover => {
                // Keep every record up to the last authentic one. A record
                // that does not authenticate ends what is kept, unless a
                // later record authenticates: it does so only at its true
                // place under its own number (the nonce), which proves the
                // length fields before it right, so the records between
                // are damaged in place (a bad sector, a flipped bit), each
                // of known length: read as zeros (silence), the audio
                // after them stays where it was.
                let mut keep = 0;
                let mut failed: Vec<usize> = Vec::new();
                for i in 0..r.recs.len() {
                    match r.decrypt(i) {
                        Ok(()) => {
                            for j in failed.drain(..) {
                                r.recs[j].damaged = true;
                            }
                            keep = i + 1;
                            continue;
                        }
                        // A failing read, not a record that does not
                        // authenticate: nothing cut on it.
                        Err(e)
                            if !matches!(
                                e.kind(),
                                io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
                            ) =>
                        {
                            return Err(e);
                        }
                        Err(_) => {}
                    }
                    // A finished file opened for recovery: its last record.
                    r.recs[i].last = true;
                    if r.decrypt(i).is_ok() {
                        for j in failed.drain(..) {
                            r.recs[j].damaged = true;
                        }
                        keep = i + 1;
                        break;
                    }
                    r.recs[i].last = false;
                    if i == 0 {
                        // The first record (the WAV header) does not open:
                        // nothing to go on from.
                        break;
                    }
                    failed.push(i);
                }
                r.recs.truncate(keep);
                r.len = r
                    .recs
                    .last()
                    .map_or(0, |x| x.plain + u64::from(x.len) - TAG as u64);
                r.cur = None;
                r.complete = true;
            }
            // Checked as they are read ([`Read`]).
            OpenMode::Follow | OpenMode::Checked => {}
        }
        Ok(r)
    }

    /// Index the records from `next_at` to the file's end (from its length
    /// fields; none is decrypted). A record not (yet) whole ends the index
    /// for now in `Recover` and `Follow` (a later [`Self::refresh`] looks
    /// again), is an error in `Strict`.
    fn index(&mut self, mode: OpenMode) -> io::Result<()> {
        let flen = self.file.metadata()?.len();
        let mut lenb = [0u8; 4];
        while self.next_at < flen {
            let at = self.next_at;
            let read = if flen - at < 4 {
                Err(io::ErrorKind::UnexpectedEof.into())
            } else {
                self.file.read_exact_at(&mut lenb, at)
            };
            if let Err(e) = read {
                // A failing read (EIO) is not a torn end: nothing is
                // decided on it (recovery leaves the file for a later try).
                if e.kind() != io::ErrorKind::UnexpectedEof {
                    return Err(e);
                }
                if mode != OpenMode::Strict {
                    break;
                }
                return Err(bad("encrypted file: cut inside a record"));
            }
            let n = u32::from_le_bytes(lenb);
            let plen = (n as usize).checked_sub(TAG);
            let fits = at + 4 + u64::from(n) <= flen;
            match plen {
                Some(p) if p <= MAX_RECORD && fits => {}
                _ if mode != OpenMode::Strict => break,
                _ => return Err(bad("encrypted file: a record is cut or malformed")),
            }
            let p = plen.unwrap_or(0) as u64;
            self.recs.push(Rec {
                plain: self.len,
                at,
                len: n,
                last: false,
                damaged: false,
            });
            self.len += p;
            self.next_at = at + 4 + u64::from(n);
        }
        Ok(())
    }

    /// A reader opened with [`OpenMode::Follow`]: take in the records
    /// written since (only their length fields are read). Nothing once the
    /// record marked last was read.
    pub fn refresh(&mut self) -> io::Result<()> {
        if self.follow && !self.ended {
            self.index(OpenMode::Follow)?;
        }
        Ok(())
    }

    /// [`OpenMode::Follow`]: record `i` does not authenticate. As
    /// [`OpenMode::Recover`] would: it is the final record of a finished
    /// file (nothing after it is read), or the authentic records end before
    /// it for now (it is looked at again at the next [`Self::refresh`], as
    /// a reader opened anew would).
    fn follow_end(&mut self, i: usize) -> io::Result<()> {
        self.recs[i].last = true;
        match self.decrypt(i) {
            Ok(()) => {
                self.ended = true;
                self.recs.truncate(i + 1);
            }
            Err(e) => {
                self.recs[i].last = false;
                if e.kind() != io::ErrorKind::InvalidData {
                    return Err(e);
                }
                self.next_at = self.recs[i].at;
                self.recs.truncate(i);
            }
        }
        self.len = self
            .recs
            .last()
            .map_or(0, |x| x.plain + u64::from(x.len) - TAG as u64);
        Ok(())
    }

    /// [`OpenMode::Checked`]: authenticates the records before `to` not
    /// yet checked, in order, each as [`OpenMode::Recover`] checks it at
    /// open (not marked last); the first that does not is the error.
    fn check_to(&mut self, to: usize) -> io::Result<()> {
        while self.authentic < to {
            self.decrypt(self.authentic)?;
            self.authentic += 1;
        }
        Ok(())
    }

    /// [`OpenMode::Checked`]: authenticates every record not read yet (an
    /// error if one does not). `Ok` says that [`OpenMode::Recover`] would
    /// read the file exactly as this reader does: every record kept, none
    /// damaged, the same length. Nothing to do in the other modes.
    pub fn check_rest(&mut self) -> io::Result<()> {
        if self.checked {
            self.check_to(self.recs.len())?;
        }
        Ok(())
    }

    /// The plaintext length.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Records of a `.part` opened in [`OpenMode::Recover`] that did not
    /// authenticate but were followed by authentic ones: how many, and the
    /// plaintext bytes they stood for (read as zeros).
    pub fn damaged(&self) -> (usize, u64) {
        self.recs
            .iter()
            .filter(|r| r.damaged)
            .fold((0, 0), |(n, b), r| {
                (n + 1, b + u64::from(r.len) - TAG as u64)
            })
    }

    fn decrypt(&mut self, i: usize) -> io::Result<()> {
        if matches!(&self.cur, Some((j, _)) if *j == i) {
            return Ok(());
        }
        let rec = self.recs[i];
        if rec.damaged {
            let zeros = Zeroizing::new(vec![0u8; rec.len as usize - TAG]);
            self.cur = Some((i, zeros));
            return Ok(());
        }
        let mut buf = Zeroizing::new(vec![0u8; rec.len as usize]);
        self.file.read_exact_at(&mut buf, rec.at + 4)?;
        let plen = rec.len as usize - TAG;
        let tag: [u8; TAG] = buf[plen..]
            .try_into()
            .map_err(|_| bad("encrypted file: bad record"))?;
        let nonce = nonce(&self.header[16..35], i as u32, rec.last);
        self.key
            .cipher
            .decrypt_inout_detached(&nonce, &self.header, (&mut buf[..plen]).into(), &tag.into())
            .map_err(|_| {
                if i == 0 && !self.complete {
                    // The first record does not open: the key with this id
                    // is not the key (a damaged header or first record).
                    bad(format!(
                        "encrypted file does not authenticate with key id {} (damaged, or a different key)",
                        self.key.id_hex()
                    ))
                } else {
                    bad(format!("encrypted file: record {i} does not authenticate"))
                }
            })?;
        buf.truncate(plen);
        #[cfg(test)]
        DECRYPTED.with(|d| d.set(d.get() + plen as u64));
        self.cur = Some((i, buf));
        Ok(())
    }
}

impl Read for SealedReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.len || out.is_empty() {
            return Ok(0);
        }
        // The last record starting at or before `pos`: records are
        // contiguous, so it holds `pos` (an empty one never does: the one
        // after it starts at the same offset).
        let pos = self.pos;
        let Some(i) = self.recs.partition_point(|r| r.plain <= pos).checked_sub(1) else {
            return Err(bad("encrypted file: no record at this offset"));
        };
        if self.checked {
            // Every record up to this one, empty ones too (a read never
            // comes to them): all are what Recover checks at open.
            self.check_to(i + 1)?;
        }
        match self.decrypt(i) {
            Ok(()) => {}
            Err(e) if self.follow && e.kind() == io::ErrorKind::InvalidData => {
                self.follow_end(i)?;
                if self.pos >= self.len {
                    return Ok(0);
                }
                self.decrypt(i)?;
            }
            Err(e) => return Err(e),
        }
        let Some((_, plain)) = &self.cur else {
            return Ok(0);
        };
        let off = (self.pos - self.recs[i].plain) as usize;
        if off >= plain.len() {
            return Err(bad("encrypted file: record index out of step"));
        }
        let n = (plain.len() - off).min(out.len());
        out[..n].copy_from_slice(&plain[off..off + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for SealedReader {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let p = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = p.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before 0"))?;
        Ok(self.pos)
    }
}

/// A recording file opened for reading, encrypted or not.
pub enum RecordingReader {
    Plain(File, u64),
    Sealed(Box<SealedReader>),
}

impl RecordingReader {
    /// The plaintext length.
    pub fn len(&self) -> u64 {
        match self {
            RecordingReader::Plain(_, n) => *n,
            RecordingReader::Sealed(r) => r.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_sealed(&self) -> bool {
        matches!(self, RecordingReader::Sealed(_))
    }

    /// A file still written to: take in what was written since it was
    /// opened (a sealed one opened with [`OpenMode::Follow`]: its new
    /// records; a plain one: its new length).
    pub fn refresh(&mut self) -> io::Result<()> {
        match self {
            RecordingReader::Plain(f, n) => {
                *n = f.metadata()?.len();
                Ok(())
            }
            RecordingReader::Sealed(r) => r.refresh(),
        }
    }

    /// Opened with [`OpenMode::Checked`]: authenticates the records not
    /// read yet ([`SealedReader::check_rest`]). Nothing to do for a plain
    /// file, or in the other modes.
    pub fn check_rest(&mut self) -> io::Result<()> {
        match self {
            RecordingReader::Plain(..) => Ok(()),
            RecordingReader::Sealed(r) => r.check_rest(),
        }
    }

    /// Damaged records read as zeros ([`SealedReader::damaged`]): how many,
    /// and their plaintext bytes. None in a plain file.
    pub fn damaged(&self) -> (usize, u64) {
        match self {
            RecordingReader::Plain(..) => (0, 0),
            RecordingReader::Sealed(r) => r.damaged(),
        }
    }

    /// The next `n` bytes of plaintext in a new buffer; an error if the
    /// file ends before. A plain file is read straight into the buffer's
    /// spare room (no zeroing first: streaming an upload reads every byte
    /// of a recording this way).
    pub fn read_piece(&mut self, n: usize) -> io::Result<Vec<u8>> {
        let mut buf = Vec::with_capacity(n);
        match self {
            RecordingReader::Plain(f, _) => read_into_spare(f, &mut buf, n)?,
            RecordingReader::Sealed(r) => {
                buf.resize(n, 0);
                r.read_exact(&mut buf)?;
            }
        }
        Ok(buf)
    }
}

/// Read exactly `n` bytes of `f` into `buf`'s spare room (which holds at
/// least `n`), without zeroing it first, in as few `read`s as the kernel
/// allows (`read_to_end` on a `Take` starts at 8 KiB and doubles: six
/// `read`s for a 256 KiB piece). An error if the file ends before.
fn read_into_spare(f: &File, buf: &mut Vec<u8>, n: usize) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let spare = &mut buf.spare_capacity_mut()[..n];
    let mut got = 0;
    while got < n {
        let rest = &mut spare[got..];
        // SAFETY: the kernel writes at most `rest.len()` bytes into `rest`,
        // memory this function borrows mutably for the call.
        let r = unsafe { libc::read(f.as_raw_fd(), rest.as_mut_ptr().cast(), rest.len()) };
        match r {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            r if r < 0 => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            r => got += r as usize,
        }
    }
    // SAFETY: the loop above initialised the first `n` bytes of the spare room.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(())
}

impl Read for RecordingReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        match self {
            RecordingReader::Plain(f, _) => f.read(out),
            RecordingReader::Sealed(r) => r.read(out),
        }
    }
}

impl Seek for RecordingReader {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        match self {
            RecordingReader::Plain(f, _) => f.seek(to),
            RecordingReader::Sealed(r) => r.seek(to),
        }
    }
}

/// Whether the file at `path` is sealed (starts with [`MAGIC`]).
pub fn is_sealed(path: &Path) -> io::Result<bool> {
    let f = File::open(path)?;
    let mut m = [0u8; 8];
    Ok(f.read_exact_at(&mut m, 0).is_ok() && &m == MAGIC)
}

/// THE way to read a spooled recording file (`<id>.wav`, `<id>.json`, a
/// `.part` of a call in progress, a sidecar, the upload FLAC), whether it is
/// encrypted or not: a sealed file is decrypted on the fly with `keys`
/// (an error if there are none, or none fits: the file is not touched), a
/// plain file is read as it is. `mode`: [`OpenMode::Strict`] for finished
/// files; [`OpenMode::Recover`] for a `.part` still being written or cut off
/// by a crash (its authentic records so far).
pub fn open_recording(
    path: &Path,
    keys: Option<&Keyring>,
    mode: OpenMode,
) -> io::Result<RecordingReader> {
    open_recording_file(File::open(path)?, path, keys, mode)
}

/// [`open_recording`] of a file already open (`path`: its name, for
/// messages), e.g. one held open by a reader that must outlive a rename or
/// removal of the name.
pub fn open_recording_file(
    f: File,
    path: &Path,
    keys: Option<&Keyring>,
    mode: OpenMode,
) -> io::Result<RecordingReader> {
    let mut m = [0u8; 8];
    if f.read_exact_at(&mut m, 0).is_ok() && &m == MAGIC {
        let Some(keys) = keys else {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} is encrypted and no key is configured (spool.encryption_key_file)",
                    path.display()
                ),
            ));
        };
        return SealedReader::open(f, keys, mode)
            .map(|r| RecordingReader::Sealed(Box::new(r)))
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())));
    }
    let n = f.metadata()?.len();
    Ok(RecordingReader::Plain(f, n))
}

/// The whole plaintext of a (small) recording file, e.g. a JSON document.
pub fn read_recording(path: &Path, keys: Option<&Keyring>) -> io::Result<Vec<u8>> {
    let mut r = open_recording(path, keys, OpenMode::Strict)?;
    let mut v = Vec::with_capacity(r.len().min(1 << 20) as usize);
    r.read_to_end(&mut v)?;
    Ok(v)
}

#[cfg(test)]
mod tests;
