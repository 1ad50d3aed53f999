//! Log lines without phone numbers: a writer for `tracing` that masks every
//! run of 7 or more digits (an optional leading `+` included) except its last
//! two, so `+15551234567` becomes `+*********67`. Shorter runs (extensions,
//! ports, years, microseconds) are left alone. `log.log_numbers = true` turns
//! it off.

use std::io::{self, Write};

/// Mask phone-number-like digit runs in `s`.
pub fn mask_numbers(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i].is_ascii_digit() {
            let start = i;
            while i < s.len() && s[i].is_ascii_digit() {
                i += 1;
            }
            let run = &s[start..i];
            if run.len() >= 7 {
                out.extend(std::iter::repeat_n(b'*', run.len() - 2));
                out.extend_from_slice(&run[run.len() - 2..]);
            } else {
                out.extend_from_slice(run);
            }
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

/// stderr, masked (or not).
#[derive(Clone, Copy)]
pub struct MaskedStderr {
    pub mask: bool,
}

impl Write for MaskedStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut e = io::stderr().lock();
        if self.mask {
            e.write_all(&mask_numbers(buf))?;
        } else {
            e.write_all(buf)?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for MaskedStderr {
    type Writer = MaskedStderr;
    fn make_writer(&'a self) -> Self::Writer {
        *self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_numbers_not_times_or_ports() {
        let line = b"2026-11-25T05:38:01.123456Z call from +15551234567 to 1001 via 127.0.0.1:5090 uniqueid 1700000000.123";
        let m = String::from_utf8(mask_numbers(line)).unwrap();
        assert!(m.contains("+*********67"), "{m}");
        assert!(m.contains("2026-11-25T05:38:01.123456Z"), "{m}");
        assert!(m.contains(" 1001 ") && m.contains("127.0.0.1:5090"), "{m}");
        assert!(!m.contains("5551234567"));
    }
}
