//! Log lines without phone numbers: a writer for `tracing` that masks every
//! run of 7 or more digits (an optional leading `+` included) except its last
//! two, so `+15551234567` becomes `+*********67`. Shorter runs (extensions,
//! ports, years, microseconds) are left alone, and so are long runs that are
//! not numbers, so an operator can still grep the log for an id:
//! - digits inside an identifier: a word of letters and digits (`0123456789abcdef`,
//!   `rec4815162342X`, the hex part of a recording id, a tus upload id) is
//!   kept whole; a phone number glued to letters is taken for such a word;
//! - a UUID (`550e8400-e29b-41d4-a716-446655440000`, as upload ids often are);
//! - a recording id `YYYYMMDDTHHMMSSZ-<16 hex>` even when its hex part
//!   happens to be all digits;
//! - a compact date and time (`20261203-101500`, `20261203T101500Z`, as in
//!   FreePBX file names) and an Asterisk uniqueid (`1700000000.42`: epoch
//!   seconds, a dot, a sequence).
//!
//! So a logged recording file or id stays recognisable while the caller's and
//! callee's numbers in it (`sip:+15551234567@`, `in-4915112345678-...`) are
//! masked. `log.log_numbers = true` turns it off.

use std::io::{self, Write};

/// Mask phone-number-like digit runs in `s`.
pub(crate) fn mask_numbers(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let word_start = i == 0 || !s[i - 1].is_ascii_alphanumeric();
        if word_start && is_uuid(&s[i..]) {
            out.extend_from_slice(&s[i..i + UUID_LEN]);
            i += UUID_LEN;
            continue;
        }
        if s[i].is_ascii_digit() {
            let start = i;
            while i < s.len() && s[i].is_ascii_digit() {
                i += 1;
            }
            let run = &s[start..i];
            let prefixed = start > 0 && s[start - 1] == b'+';
            let word_end = s[i..]
                .iter()
                .position(|b| !b.is_ascii_alphanumeric())
                .map_or(s.len(), |n| i + n);
            let glued = (start > 0 && s[start - 1].is_ascii_alphabetic())
                || s.get(i).is_some_and(u8::is_ascii_alphabetic);
            if !prefixed && (glued || is_recording_id_hex(s, start, word_end)) {
                // Part of an identifier: the rest of the word as is.
                out.extend_from_slice(&s[start..word_end]);
                i = word_end;
            } else if let Some(keep) = (!prefixed).then(|| not_a_number(s, start, i)).flatten() {
                out.extend_from_slice(&s[start..keep]);
                i = keep;
            } else if run.len() >= 7 {
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

const UUID_LEN: usize = 36;

/// `s` starts with a UUID (8-4-4-4-12 hex digits) not followed by a letter
/// or digit.
fn is_uuid(s: &[u8]) -> bool {
    let Some(u) = s.get(..UUID_LEN) else {
        return false;
    };
    let shape = u.iter().enumerate().all(|(i, b)| match i {
        8 | 13 | 18 | 23 => *b == b'-',
        _ => b.is_ascii_hexdigit(),
    });
    shape && !s.get(UUID_LEN).is_some_and(u8::is_ascii_alphanumeric)
}

/// The word `s[start..end]` is the 16-hex part of a recording id
/// (`YYYYMMDDTHHMMSSZ-<16 hex>`).
fn is_recording_id_hex(s: &[u8], start: usize, end: usize) -> bool {
    if end - start != 16 || !s[start..end].iter().all(u8::is_ascii_hexdigit) || start < 17 {
        return false;
    }
    let stamp = &s[start - 17..start];
    stamp.iter().enumerate().all(|(i, b)| match i {
        8 => *b == b'T',
        15 => *b == b'Z',
        16 => *b == b'-',
        _ => b.is_ascii_digit(),
    })
}

/// When the digit run `s[start..end]` is a compact date-time or an Asterisk
/// uniqueid rather than a number, the end of what to keep as is.
fn not_a_number(s: &[u8], start: usize, end: usize) -> Option<usize> {
    let num = |a: usize, b: usize| -> Option<u32> {
        let d = s.get(a..b)?;
        d.iter()
            .all(u8::is_ascii_digit)
            .then(|| d.iter().fold(0u32, |v, c| v * 10 + u32::from(c - b'0')))
    };
    let run = end - start;
    // YYYYMMDD then `-`, `T` or `_` and HHMMSS (a digit may not follow).
    if run == 8 && matches!(s.get(end), Some(b'-' | b'T' | b'_')) {
        let (y, m, d) = (
            num(start, start + 4)?,
            num(start + 4, start + 6)?,
            num(start + 6, end)?,
        );
        let t = end + 1;
        let (hh, mm, ss) = (num(t, t + 2)?, num(t + 2, t + 4)?, num(t + 4, t + 6)?);
        let digit_after = s.get(t + 6).is_some_and(u8::is_ascii_digit);
        let date = (1970..=2099).contains(&y) && (1..=12).contains(&m) && (1..=31).contains(&d);
        let time = hh < 24 && mm < 60 && ss < 61;
        return (date && time && !digit_after).then_some(t + 6);
    }
    // Epoch seconds (2001-09-09 .. 2286) then `.` and a sequence number.
    if run == 10 && s.get(end) == Some(&b'.') && s.get(end + 1).is_some_and(u8::is_ascii_digit) {
        let mut e = end + 1;
        while s.get(e).is_some_and(u8::is_ascii_digit) {
            e += 1;
        }
        // Not an address or a dotted number: nothing but the sequence follows.
        let dotted = s.get(e) == Some(&b'.') && s.get(e + 1).is_some_and(u8::is_ascii_digit);
        return (!dotted && e - end - 1 <= 9).then_some(e);
    }
    None
}

/// stderr, masked (or not); for the journal each line starts with its
/// syslog priority (sd-daemon(3): `<3>` error, `<4>` warning, `<6>` info,
/// `<7>` debug and trace), so `journalctl -p err` finds the errors.
#[derive(Clone, Copy, Default)]
pub struct MaskedStderr {
    /// Prefix lines with their priority (stderr is the journal).
    journald: bool,
    /// The priority of the event being written.
    prio: u8,
}

impl MaskedStderr {
    /// Plain lines (a terminal, a file).
    pub fn plain() -> Self {
        MaskedStderr::default()
    }

    /// Lines for the journal: each prefixed with its priority.
    pub fn journald() -> Self {
        MaskedStderr {
            journald: true,
            prio: 6,
        }
    }
}

/// The syslog priority of a `tracing` level (sd-daemon(3) prefixes).
pub fn syslog_priority(level: &tracing::Level) -> u8 {
    match *level {
        tracing::Level::ERROR => 3,
        tracing::Level::WARN => 4,
        tracing::Level::INFO => 6,
        _ => 7,
    }
}

/// `<prio>` before every line of `buf` (an event may span lines: a
/// rejected configuration lists its errors one a line).
fn with_priority(prio: u8, buf: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(buf.len() + 8);
    for line in buf.split_inclusive(|b| *b == b'\n') {
        out.push(b'<');
        out.push(b'0' + prio.min(7));
        out.push(b'>');
        out.extend_from_slice(line);
    }
    out
}

/// Whether stderr is connected to the journal: `JOURNAL_STREAM` (set by
/// systemd as `DEVICE:INODE`) names stderr's own file (sd-daemon(3), the
/// check systemd documents: a program started from a service's shell
/// inherits the variable while its stderr is a terminal).
pub fn stderr_is_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.to_str().and_then(parse_journal_stream) else {
        return false;
    };
    // SAFETY: fstat on fd 2 into a zeroed stat buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(2, &mut st) } != 0 {
        return false;
    }
    st.st_dev as u64 == dev && st.st_ino as u64 == ino
}

/// `JOURNAL_STREAM`'s `DEVICE:INODE` (both decimal).
fn parse_journal_stream(v: &str) -> Option<(u64, u64)> {
    let (d, i) = v.split_once(':')?;
    Some((d.parse().ok()?, i.parse().ok()?))
}

/// A URL as it may be logged: without user, password or query (a proxy's
/// credentials, a receiver's `?api_key=`), which show as `…`; what does not
/// parse as a URL shows only that.
pub fn url_for_log(s: &str) -> String {
    let Ok(mut u) = url::Url::parse(s) else {
        return "(not a URL)".into();
    };
    let had_user = !u.username().is_empty() || u.password().is_some();
    let had_query = u.query().is_some();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.set_fragment(None);
    let mut out = u.to_string();
    if had_user {
        if let Some(i) = out.find("://") {
            out.insert_str(i + 3, "…@");
        }
    }
    if had_query {
        out.push_str("?…");
    }
    out
}

/// Words of letters a PBX's recording file names are made of (kept whole
/// by [`file_for_log`]): directions, kinds, formats.
const FILE_WORDS: &[&str] = &[
    "in",
    "out",
    "exten",
    "external",
    "internal",
    "q",
    "rg",
    "ivr",
    "conf",
    "force",
    "ondemand",
    "g",
    "wav",
    "wav49",
    "gsm",
    "mp3",
    "ogg",
    "opus",
    "flac",
    "sln",
    "ulaw",
    "alaw",
    "part",
    "tmp",
    "rec",
    "recording",
    "call",
    "queue",
    "mixmon",
];

/// A PBX recording file's path as it may be logged: its directory as it
/// is, and in its name every word of letters that is not one of
/// [`FILE_WORDS`] (a 3CX display name, a FreeSWITCH user) cut to its first
/// letter (`[John Smith]_…` → `[J… S…]_…`); words with digits (ids) stay,
/// and digit runs are left to the log mask. In clear with
/// `log.log_numbers = true`.
pub fn file_for_log(p: &std::path::Path) -> String {
    if SHOW_NUMBERS.load(std::sync::atomic::Ordering::Relaxed) {
        return p.display().to_string();
    }
    let Some(name) = p.file_name() else {
        return p.display().to_string();
    };
    let name = name.to_string_lossy();
    let mut out = String::with_capacity(name.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        let letters = word.chars().all(char::is_alphabetic);
        let known = FILE_WORDS.iter().any(|w| w.eq_ignore_ascii_case(word));
        if letters && !known && word.chars().count() > 1 {
            out.extend(word.chars().next());
            out.push('…');
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in name.chars() {
        if c.is_alphanumeric() {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    match p.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(d) => format!("{}/{out}", d.display()),
        None => out,
    }
}

/// `log.log_numbers`: numbers shown in clear. Set at start and at every
/// reload ([`show_numbers`]), read by every log line.
static SHOW_NUMBERS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether log lines show phone numbers in clear (`log.log_numbers`); a
/// reload that turns it off masks them again at once.
pub fn show_numbers(show: bool) {
    SHOW_NUMBERS.store(show, std::sync::atomic::Ordering::Relaxed);
}

impl Write for MaskedStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut e = io::stderr().lock();
        let masked;
        let text = if !SHOW_NUMBERS.load(std::sync::atomic::Ordering::Relaxed) {
            masked = mask_numbers(buf);
            &masked[..]
        } else {
            buf
        };
        if self.journald {
            e.write_all(&with_priority(self.prio, text))?;
        } else {
            e.write_all(text)?;
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
    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        MaskedStderr {
            prio: syslog_priority(meta.level()),
            ..*self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_lines_carry_their_syslog_priority() {
        use tracing::Level;
        let p: Vec<u8> = [
            Level::ERROR,
            Level::WARN,
            Level::INFO,
            Level::DEBUG,
            Level::TRACE,
        ]
        .iter()
        .map(syslog_priority)
        .collect();
        assert_eq!(p, [3, 4, 6, 7, 7]);
        assert_eq!(
            with_priority(3, b"ERROR new configuration rejected:\na.toml:1: x\n"),
            b"<3>ERROR new configuration rejected:\n<3>a.toml:1: x\n"
        );
        assert_eq!(parse_journal_stream("8:12345"), Some((8, 12345)));
        assert_eq!(parse_journal_stream("8"), None);
        assert_eq!(parse_journal_stream("x:1"), None);
    }

    #[test]
    fn pbx_file_names_are_logged_without_names() {
        let p = std::path::Path::new;
        assert_eq!(
            file_for_log(p(
                "/var/rec/[John Smith]_15551234567-2001_20261201101500(42).wav"
            )),
            "/var/rec/[J… S…]_15551234567-2001_20261201101500(42).wav"
        );
        assert_eq!(
            file_for_log(p(
                "/m/2026/12/01/in-15551234567-2001-20261201-101500-1700000000.42.WAV"
            )),
            "/m/2026/12/01/in-15551234567-2001-20261201-101500-1700000000.42.WAV"
        );
        assert_eq!(
            file_for_log(p("rec_2001_alice_550e8400-e29b-41d4-a716-446655440000.wav")),
            "rec_2001_a…_550e8400-e29b-41d4-a716-446655440000.wav"
        );
    }

    #[test]
    fn urls_are_logged_without_credentials_or_query() {
        assert_eq!(
            url_for_log("http://user:secret@proxy.example:3128"),
            "http://…@proxy.example:3128/"
        );
        assert_eq!(
            url_for_log("wss://rx.example/v1/stream?api_key=abc123&x=1"),
            "wss://rx.example/v1/stream?…"
        );
        assert_eq!(url_for_log("https://a.example/p"), "https://a.example/p");
        assert_eq!(url_for_log("not a url secret"), "(not a URL)");
    }

    #[test]
    fn masks_numbers_not_times_or_ports() {
        let line = b"2026-11-25T05:38:01.123456Z call from +15551234567 to 1001 via 127.0.0.1:5090 uniqueid 1700000000.123";
        let m = String::from_utf8(mask_numbers(line)).unwrap();
        assert!(m.contains("+*********67"), "{m}");
        assert!(m.contains("2026-11-25T05:38:01.123456Z"), "{m}");
        assert!(m.contains(" 1001 ") && m.contains("127.0.0.1:5090"), "{m}");
        assert!(!m.contains("5551234567"));
        assert!(m.contains("uniqueid 1700000000.123"), "{m}");
    }

    #[test]
    fn recording_and_upload_ids_stay_greppable_numbers_do_not() {
        let line = b"id=20261203T101500Z-0123456789abcdef upload=/v1/uploads/24e533e02ec3bc40c387f1a0e460e216 \
                     rec=20261203T101500Z-1234567890123456 tus=550e8400-e29b-41d4-a716-446655440000 \
                     other=rec4815162342X from=sip:+4915112345678@pbx to=sip:4915112345678@pbx \
                     file=in-4915112345678-0301234567-20261203-101500.wav call=4915112345678";
        let m = String::from_utf8(mask_numbers(line)).unwrap();
        for id in [
            "20261203T101500Z-0123456789abcdef",
            "/v1/uploads/24e533e02ec3bc40c387f1a0e460e216",
            "20261203T101500Z-1234567890123456",
            "550e8400-e29b-41d4-a716-446655440000",
            "rec4815162342X",
        ] {
            assert!(m.contains(id), "{id} in {m}");
        }
        assert!(m.contains("sip:+***********78@pbx"), "{m}");
        assert!(m.contains("sip:***********78@pbx"), "{m}");
        assert!(
            m.contains("in-***********78-********67-20261203-101500.wav"),
            "{m}"
        );
        assert!(m.contains("call=***********78"), "{m}");
        assert!(!m.contains("4915112345678"), "{m}");
        // A UUID-like run that goes on, or 16 digits without the time stamp:
        // numbers.
        let m = String::from_utf8(mask_numbers(
            b"550e8400-e29b-41d4-a716-4466554400001 x-1234567890123456",
        ))
        .unwrap();
        assert!(m.contains("a716-***********01"), "{m}");
        assert!(m.contains("x-**************56"), "{m}");
    }

    #[test]
    fn freepbx_names_keep_date_time_and_uniqueid_but_not_numbers() {
        let line = b"2026/12/03/in-4915112345678-0301234567-20261203-101500-1764756900.42.wav \
                     id=20261203T101500Z-ab12 +4930123456-20261203 19991399-101500 \
                     20261203-101500123 1764756900.1.2";
        let m = String::from_utf8(mask_numbers(line)).unwrap();
        assert!(
            m.contains("in-***********78-********67-20261203-101500-1764756900.42.wav"),
            "{m}"
        );
        assert!(m.contains("id=20261203T101500Z-ab12"), "{m}");
        // A + number before a date-like run, an impossible date, a run that
        // goes on, a dotted number: masked as numbers.
        assert!(m.contains("+********56-******03"), "{m}");
        assert!(m.contains("******99-101500"), "{m}");
        assert!(m.contains("******03-*******23"), "{m}");
        assert!(m.contains("********00.1.2"), "{m}");
    }
}
