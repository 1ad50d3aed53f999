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
/// scrape), never periodically. `None` where the allocator cannot say.
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

#[cfg(test)]
mod tests {
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
