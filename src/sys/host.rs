//! The host.

/// This machine's host name, the default agent id.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc == 0 {
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        if let Ok(s) = std::str::from_utf8(&buf[..end]) {
            if !s.is_empty() {
                return s.to_string();
            }
        }
    }
    "pbx-edge".to_string()
}

/// Bytes of heap in use (allocated and not freed), from the C library's
/// allocator (`mallinfo2`: every arena's in-use total). It takes each
/// arena's lock for a moment, so it is read when asked for (a metrics
/// scrape) and, while the daemon is busy, every 5 s to see whether a burst
/// left free pages to give back ([`trim_heap_if_mostly_free`]). `None`
/// where the allocator cannot say.
pub(crate) fn heap_in_use() -> Option<u64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 takes no arguments and returns a plain struct.
        let m = unsafe { libc::mallinfo2() };
        // Small chunks in use plus chunks mapped on their own.
        Some((m.uordblks as u64).saturating_add(m.hblkhd as u64))
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

/// The heap, and whether its free pages were given back
/// ([`trim_heap_if_mostly_free`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Trim {
    /// Heap bytes in use when looked at.
    pub(crate) in_use: u64,
    /// Resident anonymous bytes beyond them (free heap pages the
    /// allocator kept, stacks).
    pub(crate) beyond_heap: u64,
    /// Whether `malloc_trim` ran.
    pub(crate) trimmed: bool,
}

/// Resident memory beyond the heap in use past which free pages are given
/// back: a burst (thousands of calls set up at once, the engine catching
/// up) leaves the allocator's arenas resident at its size. The C library
/// returns only the top of its main heap on its own; `malloc_trim`
/// returns every free page.
const TRIM_BEYOND_MIN: u64 = 32 << 20;

/// Resident anonymous bytes (`/proc/self/statm`: resident less shared,
/// which is the file-backed part).
fn resident_anonymous() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let mut f = statm
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse::<u64>().ok());
    let (resident, shared) = (f.next()??, f.next()??);
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(resident.saturating_sub(shared) * u64::try_from(page).ok()?)
}

/// After a burst of work: if the resident anonymous memory exceeds the
/// heap in use by more than 32 MiB and by more than half of it, the
/// allocator's free pages go back to the system (`malloc_trim`; what is
/// in use does not move). Then the resident memory is near what is used,
/// and nothing more is done until another burst. The trim holds each
/// arena's lock while it walks its free chunks (4-22 ms for 70 MB free at
/// 2,000 calls), so it is called on the blocking pool, seconds apart.
pub(crate) fn trim_heap_if_mostly_free() -> Trim {
    let Some(in_use) = heap_in_use() else {
        return Trim::default();
    };
    let beyond_heap = resident_anonymous().map_or(0, |r| r.saturating_sub(in_use));
    let trimmed = beyond_heap > TRIM_BEYOND_MIN && beyond_heap > in_use / 2;
    if trimmed {
        malloc_trim();
    }
    Trim {
        in_use,
        beyond_heap,
        trimmed,
    }
}

/// The allocator's free pages back to the system (`malloc_trim(0)`; a
/// no-op where the C library is not glibc).
fn malloc_trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap memory to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Resident bytes the process gave back ([`release_idle_memory`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Released {
    /// Mapped pages of files (code, read-only data) no longer mapped.
    pub(crate) file_bytes: u64,
    /// Mappings whose pages were given back.
    pub(crate) mappings: u32,
}

/// Gives back what an idle process holds only because it ran once: the
/// pages of its program and libraries that start-up and the last calls
/// mapped (the kernel maps 64 KiB around each page first run), and the
/// heap's free memory (`malloc_trim`).
///
/// Only mappings of a file that are read-only and private with no page
/// of their own (`Anonymous: 0 kB` in `/proc/self/smaps`: no page was
/// ever written, so every page is the file's) are unmapped with
/// `MADV_DONTNEED`. Their pages stay in the page cache: the code run next
/// maps them again at the cost of a minor fault. This is what the
/// kernel's own reclaim does to clean file pages under memory pressure;
/// writable mappings, mappings with copied pages (relocated read-only
/// data) and anonymous memory are never touched.
pub(crate) fn release_idle_memory() -> std::io::Result<Released> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut out = Released::default();
    for m in mappings(&smaps).filter(|m| m.releasable()) {
        let len = m.end - m.start;
        // SAFETY: the range is one whole mapping of this process, read-only
        // and backed by a file with no private page: dropping its pages
        // loses nothing (they are read again from the file when used).
        let rc = unsafe { libc::madvise(m.start as *mut libc::c_void, len, libc::MADV_DONTNEED) };
        if rc == 0 {
            out.file_bytes += m.rss_kb * 1024;
            out.mappings += 1;
        }
    }
    malloc_trim();
    Ok(out)
}

/// One mapping of `/proc/self/smaps`, as far as [`release_idle_memory`]
/// needs it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Mapping<'a> {
    start: usize,
    end: usize,
    perms: &'a str,
    path: &'a str,
    rss_kb: u64,
    /// `None` if the kernel did not say (then it is not released).
    anonymous_kb: Option<u64>,
}

impl Mapping<'_> {
    fn releasable(&self) -> bool {
        let p = self.perms.as_bytes();
        p.len() == 4
            && p[0] == b'r'
            && p[1] == b'-'
            && p[3] == b'p'
            && self.path.starts_with('/')
            && self.anonymous_kb == Some(0)
            && self.rss_kb > 0
            && self.end > self.start
    }
}

/// The mappings in `/proc/<pid>/smaps` text, with their resident and
/// anonymous sizes.
fn mappings(smaps: &str) -> impl Iterator<Item = Mapping<'_>> {
    let mut lines = smaps.lines().peekable();
    std::iter::from_fn(move || {
        let head = lines.next()?;
        // Range, permissions, offset, device, inode, then the path (after
        // padding; it may hold spaces).
        let mut f = head.splitn(6, ' ');
        let (range, perms) = (f.next()?, f.next().unwrap_or(""));
        let path = f.nth(3).map_or("", str::trim);
        let (start, end) = range.split_once('-').map_or((0, 0), |(a, b)| {
            (
                usize::from_str_radix(a, 16).unwrap_or(0),
                usize::from_str_radix(b, 16).unwrap_or(0),
            )
        });
        let mut m = Mapping {
            start,
            end,
            perms,
            path,
            ..Mapping::default()
        };
        // The mapping's fields, up to the next mapping's header (a line
        // whose first word is not `Name:`).
        while let Some(l) = lines.next_if(|l| {
            l.split_whitespace()
                .next()
                .is_some_and(|w| w.ends_with(':'))
        }) {
            let mut w = l.split_whitespace();
            let (key, kb) = (w.next(), w.next().and_then(|v| v.parse::<u64>().ok()));
            match (key, kb) {
                (Some("Rss:"), Some(kb)) => m.rss_kb = kb,
                (Some("Anonymous:"), Some(kb)) => m.anonymous_kb = Some(kb),
                _ => {}
            }
        }
        Some(m)
    })
}

#[cfg(test)]
mod tests {
    const SMAPS: &str = "\
55d0c0000000-55d0c0200000 r--p 00000000 08:01 1234                       /usr/bin/pbx-edge
Size:               2048 kB
Rss:                 900 kB
Anonymous:             0 kB
VmFlags: rd mr mw me sd
55d0c0200000-55d0c0a00000 r-xp 00200000 08:01 1234                       /usr/bin/pbx-edge
Size:               8192 kB
Rss:                6000 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me sd
55d0c0a00000-55d0c0b00000 r--p 00a00000 08:01 1234                       /usr/bin/pbx-edge
Size:               1024 kB
Rss:                1024 kB
Anonymous:           300 kB
VmFlags: rd mr mw me ac sd
55d0c0b00000-55d0c0b10000 rw-p 00b00000 08:01 1234                       /usr/bin/pbx-edge
Size:                 64 kB
Rss:                  64 kB
Anonymous:            64 kB
VmFlags: rd wr mr mw me ac sd
55d0c1000000-55d0c1100000 rw-p 00000000 00:00 0                          [heap]
Size:               1024 kB
Rss:                 288 kB
Anonymous:           288 kB
7f0000000000-7f0000010000 r--p 00000000 08:01 99                         /tmp/a file with spaces.bin
Size:                 64 kB
Rss:                   0 kB
Anonymous:             0 kB
7f0000010000-7f0000020000 r--s 00000000 08:01 98                         /dev/shm/shared
Size:                 64 kB
Rss:                  64 kB
Anonymous:             0 kB
7f0000020000-7f0000030000 r-xp 00000000 08:01 97                         /usr/lib/libx.so
Size:                 64 kB
Rss:                  16 kB
7fff00000000-7fff00002000 r-xp 00000000 00:00 0                          [vdso]
Rss:                   8 kB
Anonymous:             0 kB
";

    /// The parser finds every mapping and its sizes; only read-only,
    /// private file mappings with no page of their own are released (not
    /// the relocated read-only data, not data, heap, shared memory, the
    /// vDSO, or a mapping whose anonymous size is not given).
    #[test]
    fn only_clean_read_only_file_mappings_are_released() {
        let all: Vec<_> = super::mappings(SMAPS).collect();
        assert_eq!(all.len(), 9);
        assert_eq!(all[1].perms, "r-xp");
        assert_eq!(all[1].path, "/usr/bin/pbx-edge");
        assert_eq!((all[1].start, all[1].end), (0x55d0c0200000, 0x55d0c0a00000));
        assert_eq!((all[1].rss_kb, all[1].anonymous_kb), (6000, Some(0)));
        assert_eq!(all[4].path, "[heap]");
        assert_eq!(all[5].path, "/tmp/a file with spaces.bin");
        assert_eq!(all[7].anonymous_kb, None);
        let released: Vec<usize> = all
            .iter()
            .enumerate()
            .filter(|(_, m)| m.releasable())
            .map(|(i, _)| i)
            .collect();
        assert_eq!(released, vec![0, 1]);
    }

    /// This process's mapping of `[start, end)` in `/proc/self/smaps`.
    fn mapping(start: usize) -> (u64, Option<u64>, String) {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let m = super::mappings(&smaps)
            .find(|m| m.start == start)
            .expect("mapping listed");
        (m.rss_kb, m.anonymous_kb, m.perms.to_string())
    }

    /// On a real mapping: a read-only file mapping's pages are given back
    /// and read again, the same bytes; a mapping written and then made
    /// read-only (as relocated data is) keeps its written bytes.
    #[cfg(target_os = "linux")]
    #[test]
    fn released_pages_read_back_the_same_and_written_ones_stay() {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        let len = 64 * 4096;
        let bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&bytes).unwrap();
        let map = |prot| {
            // SAFETY: a fresh private mapping of the whole file.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    prot,
                    libc::MAP_PRIVATE,
                    f.as_raw_fd(),
                    0,
                )
            };
            assert_ne!(p, libc::MAP_FAILED);
            p as usize
        };
        let clean = map(libc::PROT_READ);
        let written = map(libc::PROT_READ | libc::PROT_WRITE);
        // SAFETY: both mappings are `len` bytes long and live to the end.
        let (c, w) = unsafe {
            (
                std::slice::from_raw_parts(clean as *const u8, len),
                std::slice::from_raw_parts_mut(written as *mut u8, len),
            )
        };
        assert_eq!(c, &bytes[..]);
        w[4096 * 3] ^= 0xff;
        // SAFETY: the mapping is ours; read-only from now on.
        assert_eq!(
            unsafe { libc::mprotect(written as *mut libc::c_void, len, libc::PROT_READ) },
            0
        );
        let (rss, anon, perms) = mapping(clean);
        assert_eq!((anon, perms.as_str()), (Some(0), "r--p"));
        assert!(rss >= 4, "touched: {rss} kB");
        let (_, anon_w, perms_w) = mapping(written);
        assert_eq!(perms_w, "r--p");
        assert!(anon_w.unwrap_or(0) >= 4, "a page of its own: {anon_w:?}");

        let out = super::release_idle_memory().unwrap();
        assert!(out.mappings >= 1 && out.file_bytes >= 4096, "{out:?}");
        assert_eq!(mapping(clean).0, 0, "the clean mapping's pages given back");
        assert_eq!(c, &bytes[..], "and read again the same");
        assert_eq!(w[4096 * 3], bytes[4096 * 3] ^ 0xff, "the written page kept");
        assert_eq!(&w[..4096 * 3], &bytes[..4096 * 3]);
        for p in [clean, written] {
            // SAFETY: unmapping what was mapped above, not used after.
            assert_eq!(unsafe { libc::munmap(p as *mut libc::c_void, len) }, 0);
        }
    }

    /// After a burst (96 MiB in small blocks, one in sixteen kept), the
    /// free pages the allocator kept resident are given back; what is in
    /// use stays, and a second look finds far less beyond it. Other tests'
    /// threads allocate and free meanwhile: a try they disturbed is made
    /// again.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn a_burst_left_free_is_given_back_and_what_is_used_stays() {
        let mut seen = Vec::new();
        for _ in 0..3 {
            let blocks: Vec<Box<[u8; 1024]>> =
                (0..96 * 1024).map(|i| Box::new([i as u8; 1024])).collect();
            let kept: Vec<Box<[u8; 1024]>> = blocks
                .into_iter()
                .enumerate()
                .filter_map(|(i, b)| (i % 16 == 0).then_some(b))
                .collect();
            let before = super::resident_anonymous().unwrap();
            let t = super::trim_heap_if_mostly_free();
            let after = super::resident_anonymous().unwrap();
            // What is in use is untouched, whatever the trim did.
            assert!(kept
                .iter()
                .enumerate()
                .all(|(k, b)| b[0] == (k * 16) as u8 && b[1023] == b[0]));
            let again = super::trim_heap_if_mostly_free();
            if t.trimmed
                && after + (32 << 20) < before
                && again.beyond_heap + (32 << 20) < t.beyond_heap
            {
                return;
            }
            seen.push((before, after, t, again));
        }
        panic!("a burst's free pages were not given back: {seen:?}");
    }

    /// What the heap count says follows what is allocated: 64 MiB (mapped
    /// on its own) and 10,000 small buffers show up. Other tests' threads
    /// allocate and free meanwhile: the margin is theirs, and a try that
    /// coincided with a large free of theirs is made again.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn heap_in_use_follows_allocations() {
        let mut seen = Vec::new();
        for _ in 0..3 {
            let before = super::heap_in_use().unwrap();
            let big = vec![1u8; 64 << 20];
            let small: Vec<Vec<u8>> = (0..10_000).map(|i| vec![i as u8; 100]).collect();
            let during = super::heap_in_use().unwrap();
            drop((big, small));
            if during >= before + (48 << 20) {
                return;
            }
            seen.push((before, during));
        }
        panic!("64 MiB allocated, the heap count did not follow: {seen:?}");
    }
}
