//! SIP over TCP framing (RFC 3261 §18.3): in-order bytes of one TCP direction
//! in, one complete message's bytes at a time out (headers + Content-Length
//! body), ready for [`super::message::parse_message`].
//!
//! Rules:
//! - CR/LF keep-alives between messages (RFC 5626 §4.4.1) are skipped.
//! - A missing Content-Length on a stream means an empty body.
//! - Bytes that do not start with a SIP start line (garbage, the middle of a
//!   message after a capture gap) are skipped line by line until a line that
//!   looks like a start line; [`SipStreamFramer::skipped_bytes`] counts them.
//! - Header blocks end at the first empty line, CRLF or bare LF.
//! - A message over [`MAX_MESSAGE_LEN`] bytes is refused
//!   ([`Frame::Refused`], [`SipError::TooLarge`]) and never buffered whole:
//!   - its length known from Content-Length: refused at once, its bytes are
//!     dropped as they arrive;
//!   - a header block that does not end within the limit: its lines are read
//!     as they arrive, only those a response needs are kept (start line, the
//!     first [`MAX_VIAS`] Via lines within [`VIA_BUDGET`] bytes, the first
//!     From, To, Call-ID and CSeq; at most [`MAX_HEAD`] bytes), and when the
//!     block ends the message is refused and its body dropped as above. A
//!     block still going on after [`MAX_HEADER_DISCARD`] bytes is refused
//!     there, then resync by the rule above.
//!
//!   The refusal carries those kept lines (`head`, for
//!   [`super::message::salvage_request`]) so a server can answer `513`.
//!   It is `fatal` when the stream cannot sensibly go on: more than
//!   [`MAX_DISCARD`] bytes still to drop (`Content-Length: 2000000000`), a
//!   Content-Length that is not a number (framing lost; refused as
//!   [`SipError::BadHeader`], then resync), a header block over
//!   [`MAX_HEADER_DISCARD`]. A server answers and closes the connection; a
//!   passive reader (sniffing) just goes on.
//!
//! Memory is bounded: the framer never holds more than [`MAX_BUFFER`] bytes.
//! Call [`SipStreamFramer::next_frame`] (or [`SipStreamFramer::next_message`])
//! until it returns `None` after every [`SipStreamFramer::push`]; data pushed
//! beyond the bound without draining is dropped (reported once as
//! [`SipError::BufferOverflow`], then resync).

use super::message::{
    is_start_line, response_header_index, Method, SipError, MAX_MESSAGE_LEN, MAX_SALVAGED_VALUE,
    MAX_VIAS,
};

/// Most bytes one framer buffers.
pub const MAX_BUFFER: usize = 4 * MAX_MESSAGE_LEN;
/// A line longer than this that is not yet terminated cannot be a start line.
const MAX_START_LINE: usize = 4096;
/// Most bytes of a refused message kept for its answer ([`Frame::Refused`]).
pub const MAX_HEAD: usize = 32 * 1024;
/// Most bytes of Via lines in that head (room stays for From, To, Call-ID
/// and CSeq after thousands of Vias).
pub const VIA_BUDGET: usize = 8 * 1024;
/// Most bytes of a refused message's body dropped as they arrive with the
/// stream still usable; beyond, the refusal is `fatal`.
pub const MAX_DISCARD: usize = 1024 * 1024;
/// A header block still without its end after this many bytes is refused
/// as `fatal`.
pub const MAX_HEADER_DISCARD: usize = 1024 * 1024;

/// What [`SipStreamFramer::next_frame`] cuts out of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// One complete message's bytes.
    Message(Vec<u8>),
    /// A message refused while framing (see the module doc).
    Refused {
        error: SipError,
        /// The start line and the header lines a response needs, as
        /// received (CRLF line ends, at most [`MAX_HEAD`] bytes); empty when
        /// nothing is known (buffer overflow, start line too long).
        head: Vec<u8>,
        /// The stream cannot sensibly go on: a server answers and closes.
        fatal: bool,
    },
}

/// Cuts one TCP direction into SIP messages. Sans-IO: feed bytes, pull messages.
#[derive(Debug, Default)]
pub struct SipStreamFramer {
    buf: Vec<u8>,
    /// Bytes were lost just before the buffer: the first start line must be
    /// a status line or a known method (a start line cut inside its method,
    /// `VITE sip:.. SIP/2.0`, is not taken for one).
    after_gap: bool,
    pending_error: Option<SipError>,
    /// Bytes of an oversize message still to be dropped as they arrive.
    discard: usize,
    /// Reading the header block of an oversize message line by line.
    oversize: Option<Oversize>,
    skipped: u64,
    messages: u64,
}

/// The header block of a message over the limit, read as it arrives.
#[derive(Debug)]
struct Oversize {
    /// Start line and the header lines a response needs.
    head: Head,
    /// Bytes of the header block so far (start line included).
    size: usize,
    content_length: ContentLength,
    /// The line being read is too long to keep: dropped up to its end.
    dropping: bool,
}

/// The lines of a refused message an answer needs (see the module doc).
#[derive(Debug, Default)]
struct Head {
    bytes: Vec<u8>,
    /// The last header line was kept (so are its continuations).
    keeping: bool,
    via_lines: usize,
    via_bytes: usize,
    /// From, To, Call-ID, CSeq already kept (the first of each counts).
    seen: [bool; 4],
}

impl Head {
    fn start(line: &[u8]) -> Head {
        let mut h = Head::default();
        if line.len() <= MAX_START_LINE {
            h.bytes.extend_from_slice(line);
            h.bytes.extend_from_slice(b"\r\n");
        }
        h
    }

    /// One header line (without its line end).
    fn line(&mut self, line: &[u8]) {
        let continuation = line.first().is_some_and(|b| *b == b' ' || *b == b'\t');
        if !continuation {
            let index = line
                .iter()
                .position(|b| *b == b':')
                .and_then(|c| response_header_index(line.get(..c).unwrap_or_default()));
            self.keeping = match index {
                Some(0) => self.via_lines < MAX_VIAS && self.via_bytes + line.len() <= VIA_BUDGET,
                Some(i) => match self.seen.get_mut(i - 1) {
                    Some(seen) if !*seen => {
                        *seen = true;
                        line.len() <= MAX_SALVAGED_VALUE + 64
                    }
                    _ => false,
                },
                None => false,
            };
            if self.keeping && index == Some(0) {
                self.via_lines += 1;
                self.via_bytes += line.len();
            }
        }
        if self.keeping && self.bytes.len() + line.len() + 2 <= MAX_HEAD {
            self.bytes.extend_from_slice(line);
            self.bytes.extend_from_slice(b"\r\n");
        }
    }
}

impl SipStreamFramer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends in-order stream bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        let drop_now = self.discard.min(bytes.len());
        self.discard -= drop_now;
        self.skipped = self.skipped.saturating_add(drop_now as u64);
        let bytes = bytes.get(drop_now..).unwrap_or_default();
        if self.buf.len().saturating_add(bytes.len()) > MAX_BUFFER {
            self.skipped = self
                .skipped
                .saturating_add((self.buf.len() + bytes.len()) as u64);
            self.gap();
            self.pending_error = Some(SipError::BufferOverflow);
            return;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes were lost: discard the partial message and resync at the next
    /// start line.
    pub fn gap(&mut self) {
        self.skipped = self.skipped.saturating_add(self.buf.len() as u64);
        self.buf.clear();
        self.discard = 0;
        self.oversize = None;
        self.after_gap = true;
    }

    /// Bytes skipped so far (garbage, resync, overflow, gaps).
    pub fn skipped_bytes(&self) -> u64 {
        self.skipped
    }

    /// Messages returned so far.
    pub fn message_count(&self) -> u64 {
        self.messages
    }

    /// Bytes buffered and not yet returned.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Inside a message (bytes buffered, an oversize header block being
    /// read, body bytes still to drop): what a server times to catch a
    /// sender that trickles.
    pub fn in_message(&self) -> bool {
        !self.buf.is_empty() || self.discard > 0 || self.oversize.is_some()
    }

    /// The next complete message's bytes; `None` means "incomplete, push
    /// more". Refusals come as errors (see [`SipStreamFramer::next_frame`]
    /// for what a server needs to answer them).
    pub fn next_message(&mut self) -> Option<Result<Vec<u8>, SipError>> {
        self.next_frame().map(|f| match f {
            Frame::Message(m) => Ok(m),
            Frame::Refused { error, .. } => Err(error),
        })
    }

    /// The next message or refusal; `None` means "incomplete, push more".
    pub fn next_frame(&mut self) -> Option<Frame> {
        if let Some(error) = self.pending_error.take() {
            return Some(Frame::Refused {
                error,
                head: Vec::new(),
                fatal: true,
            });
        }
        if self.oversize.is_some() {
            return self.oversize_step();
        }
        loop {
            // Keep-alives and blank lines between messages.
            let lead = self
                .buf
                .iter()
                .position(|b| *b != b'\r' && *b != b'\n')
                .unwrap_or(self.buf.len());
            if lead > 0 {
                self.drain(lead);
            }
            if self.buf.is_empty() {
                return None;
            }
            // Is the first line a start line?
            let line_end = match self.buf.iter().position(|b| *b == b'\n') {
                Some(i) => i,
                None => {
                    if self.buf.len() > MAX_START_LINE {
                        // Too long to be a start line and still unterminated.
                        let n = self.buf.len();
                        self.skip(n);
                    }
                    return None;
                }
            };
            let line = self.buf.get(..line_end).unwrap_or_default();
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let after_gap = std::mem::take(&mut self.after_gap);
            if !is_start_line(line) || (after_gap && !plausible_after_gap(line)) {
                self.skip(line_end + 1);
                self.after_gap = after_gap;
                continue;
            }
            // Find the end of the header block.
            let Some((head_len, cl_field)) = header_block(&self.buf) else {
                if self.buf.len() > MAX_MESSAGE_LEN {
                    // Read the rest of the block line by line.
                    self.oversize = Some(Oversize {
                        head: Head::start(line),
                        size: line_end + 1,
                        content_length: ContentLength::Absent,
                        dropping: false,
                    });
                    self.skip(line_end + 1);
                    return self.oversize_step();
                }
                return None;
            };
            let body_len = match cl_field {
                ContentLength::Absent => 0,
                ContentLength::Value(n) => n,
                ContentLength::Invalid => {
                    let head = response_head(self.buf.get(..head_len).unwrap_or_default());
                    self.skip(line_end + 1);
                    return Some(Frame::Refused {
                        error: SipError::BadHeader("Content-Length"),
                        head,
                        fatal: true,
                    });
                }
            };
            let total = head_len.saturating_add(body_len);
            if total > MAX_MESSAGE_LEN {
                // Its length is known: drop exactly that many bytes, now and
                // as they arrive.
                let head = response_head(self.buf.get(..head_len).unwrap_or_default());
                let now = total.min(self.buf.len());
                self.skip(now);
                self.discard = total - now;
                return Some(Frame::Refused {
                    error: SipError::TooLarge(total),
                    head,
                    fatal: self.discard > MAX_DISCARD,
                });
            }
            if self.buf.len() < total {
                return None;
            }
            let msg: Vec<u8> = self.buf.drain(..total).collect();
            self.messages += 1;
            return Some(Frame::Message(msg));
        }
    }

    /// Reads the header block of an oversize message as far as it has
    /// arrived; the refusal once it ends (or grows past
    /// [`MAX_HEADER_DISCARD`]).
    fn oversize_step(&mut self) -> Option<Frame> {
        let mut o = self.oversize.take()?;
        loop {
            let Some(nl) = self.buf.iter().position(|b| *b == b'\n') else {
                // A partial line: too long to keep, drop what there is.
                if o.dropping || self.buf.len() > MAX_HEAD {
                    o.dropping = true;
                    o.size = o.size.saturating_add(self.buf.len());
                    let n = self.buf.len();
                    self.skip(n);
                }
                if o.size > MAX_HEADER_DISCARD {
                    return Some(Frame::Refused {
                        error: SipError::TooLarge(o.size),
                        head: o.head.bytes,
                        fatal: true,
                    });
                }
                self.oversize = Some(o);
                return None;
            };
            o.size = o.size.saturating_add(nl + 1);
            let line = self.buf.get(..nl).unwrap_or_default();
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if o.dropping {
                // The end of a line too long to keep (nor its continuations).
                o.dropping = false;
                o.head.keeping = false;
            } else if line.is_empty() {
                // The end of the block: refuse, drop the body.
                self.skip(nl + 1);
                let body = match o.content_length {
                    ContentLength::Absent => 0,
                    ContentLength::Value(n) => n,
                    ContentLength::Invalid => {
                        return Some(Frame::Refused {
                            error: SipError::BadHeader("Content-Length"),
                            head: o.head.bytes,
                            fatal: true,
                        })
                    }
                };
                let now = body.min(self.buf.len());
                self.skip(now);
                self.discard = body - now;
                return Some(Frame::Refused {
                    error: SipError::TooLarge(o.size.saturating_add(body)),
                    head: o.head.bytes,
                    fatal: self.discard > MAX_DISCARD,
                });
            } else {
                if matches!(o.content_length, ContentLength::Absent) {
                    if let Some(cl) = content_length_line(line) {
                        o.content_length = cl;
                    }
                }
                o.head.line(line);
            }
            self.skip(nl + 1);
            if o.size > MAX_HEADER_DISCARD {
                return Some(Frame::Refused {
                    error: SipError::TooLarge(o.size),
                    head: o.head.bytes,
                    fatal: true,
                });
            }
        }
    }

    fn drain(&mut self, n: usize) {
        let n = n.min(self.buf.len());
        self.buf.drain(..n);
    }

    fn skip(&mut self, n: usize) {
        let n = n.min(self.buf.len());
        self.skipped = self.skipped.saturating_add(n as u64);
        self.buf.drain(..n);
    }
}

/// The head of a complete header block (start line first).
fn response_head(block: &[u8]) -> Vec<u8> {
    let mut lines = block
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let mut head = Head::start(lines.next().unwrap_or_default());
    for line in lines.take_while(|l| !l.is_empty()) {
        head.line(line);
    }
    head.bytes
}

/// After a gap: a status line, or a request line whose method is known.
fn plausible_after_gap(line: &[u8]) -> bool {
    if line.len() >= 8
        && line
            .get(..8)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"SIP/2.0 "))
    {
        return true;
    }
    let method = line.split(|b| *b == b' ').next().unwrap_or_default();
    std::str::from_utf8(method)
        .map(|m| !matches!(Method::from_token(m), Method::Other(_)))
        .unwrap_or(false)
}

#[derive(Debug, Clone, Copy)]
enum ContentLength {
    Absent,
    Value(usize),
    Invalid,
}

/// Length of the header block including its terminating empty line, and the
/// Content-Length found in it (long or compact `l`). `None` while the empty
/// line has not arrived (searched only within [`MAX_MESSAGE_LEN`]).
fn header_block(buf: &[u8]) -> Option<(usize, ContentLength)> {
    let window = buf.get(..buf.len().min(MAX_MESSAGE_LEN + 1))?;
    let mut pos = 0;
    let mut cl = ContentLength::Absent;
    let mut first = true;
    loop {
        let rest = window.get(pos..)?;
        let nl = rest.iter().position(|b| *b == b'\n')?;
        let line = rest.get(..nl)?;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        pos += nl + 1;
        if line.is_empty() {
            return Some((pos, cl));
        }
        if first {
            first = false;
            continue;
        }
        if matches!(cl, ContentLength::Absent) {
            if let Some(found) = content_length_line(line) {
                cl = found;
            }
        }
    }
}

/// The Content-Length of a header line (long or compact `l`), `None` for
/// any other line. A number too large for `usize` reads as `usize::MAX`
/// (over any limit), anything but digits as invalid.
fn content_length_line(line: &[u8]) -> Option<ContentLength> {
    let colon = line.iter().position(|b| *b == b':')?;
    let name = trim(line.get(..colon).unwrap_or_default());
    if !name.eq_ignore_ascii_case(b"content-length") && !name.eq_ignore_ascii_case(b"l") {
        return None;
    }
    let value = trim(line.get(colon + 1..).unwrap_or_default());
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Some(ContentLength::Invalid);
    }
    let n = value
        .iter()
        .try_fold(0usize, |n, d| {
            n.checked_mul(10)?.checked_add(usize::from(d - b'0'))
        })
        .unwrap_or(usize::MAX);
    Some(ContentLength::Value(n))
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    s.get(start..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::parse_message;
    use crate::sip::test_support::*;
    use proptest::prelude::*;

    fn msg(cseq: u32, body: &str) -> String {
        format!(
            "INFO sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK{cseq}\r\nFrom: <sip:a@h>;tag=1\r\n\
To: <sip:b@h>\r\nCall-ID: c{cseq}\r\nCSeq: {cseq} INFO\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    fn drain(f: &mut SipStreamFramer) -> Vec<Result<Vec<u8>, SipError>> {
        std::iter::from_fn(|| f.next_message()).collect()
    }

    #[test]
    fn several_messages_in_one_push_with_keepalives() {
        let mut f = SipStreamFramer::new();
        let input = format!(
            "\r\n\r\n{}\r\n\r\n{}{}",
            msg(1, "one"),
            msg(2, ""),
            msg(3, "three\r\n\r\nstill body")
        );
        f.push(input.as_bytes());
        let out = drain(&mut f);
        assert_eq!(out.len(), 3);
        let bodies: Vec<Vec<u8>> = out
            .into_iter()
            .map(|r| parse_message(&r.unwrap()).unwrap().body)
            .collect();
        assert_eq!(
            bodies,
            [b"one".to_vec(), vec![], b"three\r\n\r\nstill body".to_vec()]
        );
        assert_eq!(f.buffered(), 0);
        assert_eq!(f.skipped_bytes(), 0);
        assert_eq!(f.message_count(), 3);
    }

    #[test]
    fn one_message_over_many_pushes() {
        let m = msg(7, "v=0\r\n");
        let mut f = SipStreamFramer::new();
        for (i, b) in m.bytes().enumerate() {
            f.push(&[b]);
            let got = f.next_message();
            if i + 1 < m.len() {
                assert!(got.is_none(), "early message at byte {i}");
            } else {
                assert_eq!(got.unwrap().unwrap(), m.as_bytes());
            }
        }
    }

    #[test]
    fn missing_content_length_is_zero_and_lf_only_works() {
        let m = "OPTIONS sip:a@b SIP/2.0\nFrom: <sip:a@h>\nTo: <sip:b@h>\nCall-ID: x\nCSeq: 1 OPTIONS\n\n";
        let mut f = SipStreamFramer::new();
        f.push(m.as_bytes());
        f.push(msg(2, "xy").as_bytes());
        let out = drain(&mut f);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].as_ref().unwrap(), m.as_bytes());
        assert_eq!(parse_message(out[1].as_ref().unwrap()).unwrap().body, b"xy");
    }

    #[test]
    fn compact_content_length() {
        let m = "MESSAGE sip:a@b SIP/2.0\r\nf: <sip:a@h>\r\nt: <sip:b@h>\r\ni: x\r\nCSeq: 1 MESSAGE\r\nl :  4\r\n\r\nabcd";
        let mut f = SipStreamFramer::new();
        f.push(m.as_bytes());
        f.push(b"SIP/2.0 200 OK\r\n");
        assert_eq!(f.next_message().unwrap().unwrap(), m.as_bytes());
        assert!(f.next_message().is_none());
    }

    #[test]
    fn garbage_before_start_line_is_skipped() {
        let mut f = SipStreamFramer::new();
        f.push(b"junk line\r\nmore junk SIP/2.0\r\nv=0\r\n");
        f.push(msg(1, "b").as_bytes());
        let out = drain(&mut f);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].as_ref().unwrap(), msg(1, "b").as_bytes());
        assert_eq!(f.skipped_bytes(), 35);
    }

    #[test]
    fn gap_resyncs_at_next_start_line() {
        let m1 = msg(1, "hello body");
        let mut f = SipStreamFramer::new();
        f.push(&m1.as_bytes()[..40]);
        assert!(f.next_message().is_none());
        f.gap();
        // The rest of m1 minus some bytes, starting mid-line, then a message.
        // "INVITE sip:..." cut mid-line must not be taken for a start line.
        f.push(b"VITE sip:x@y SIP/2.0\r\nCall-ID: z\r\n\r\n");
        f.push(msg(2, "ok").as_bytes());
        let out = drain(&mut f);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(
            parse_message(out[0].as_ref().unwrap()).unwrap().call_id,
            "c2"
        );
    }

    #[test]
    fn gap_at_a_message_boundary_keeps_the_next_message() {
        let mut f = SipStreamFramer::new();
        f.push(b"SIP/2.0 100 Try");
        f.gap();
        f.push(msg(3, "x").as_bytes());
        let out = drain(&mut f);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].as_ref().unwrap(), msg(3, "x").as_bytes());
        assert_eq!(f.skipped_bytes(), 15);
    }

    #[test]
    fn oversize_message_is_an_error_then_resync() {
        let mut f = SipStreamFramer::new();
        let big_body = "x".repeat(MAX_MESSAGE_LEN);
        let big = msg(1, &big_body);
        let mut out = Vec::new();
        for chunk in big.as_bytes().chunks(1000) {
            f.push(chunk);
            out.extend(drain(&mut f));
            assert!(f.buffered() <= 1000);
        }
        f.push(msg(2, "after").as_bytes());
        out.extend(drain(&mut f));
        assert_eq!(out.len(), 2);
        assert!(matches!(out[0], Err(SipError::TooLarge(_))), "{:?}", out[0]);
        assert_eq!(f.skipped_bytes(), big.len() as u64);
        let ok: Vec<_> = out.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(ok.len(), 1);
        assert_eq!(parse_message(ok[0]).unwrap().call_id, "c2");
    }

    #[test]
    fn endless_headers_are_bounded() {
        let mut f = SipStreamFramer::new();
        f.push(b"INVITE sip:a@b SIP/2.0\r\n");
        let line = b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
        let mut errors = Vec::new();
        for _ in 0..2 * MAX_HEADER_DISCARD / line.len() {
            f.push(line);
            while let Some(r) = f.next_frame() {
                errors.push(r);
            }
            assert!(f.buffered() <= MAX_MESSAGE_LEN + line.len());
        }
        assert_eq!(errors.len(), 1, "{errors:?}");
        let Frame::Refused { error, fatal, .. } = &errors[0] else {
            panic!("{errors:?}");
        };
        assert!(matches!(error, SipError::TooLarge(n) if *n > MAX_HEADER_DISCARD));
        assert!(fatal);
        // Resync: the next message is framed.
        f.push(b"\r\n");
        f.push(msg(9, "x").as_bytes());
        let out = drain(&mut f);
        assert_eq!(out.len(), 1);
        assert_eq!(
            parse_message(out[0].as_ref().unwrap()).unwrap().call_id,
            "c9"
        );
    }

    /// A message whose header block is over the limit: refused when the
    /// block ends, with what an answer needs, and its body dropped.
    fn refused(f: &mut SipStreamFramer, input: &[u8], chunk: usize) -> Vec<Frame> {
        let mut out = Vec::new();
        for c in input.chunks(chunk) {
            f.push(c);
            while let Some(fr) = f.next_frame() {
                out.push(fr);
            }
            assert!(f.buffered() <= MAX_MESSAGE_LEN + chunk, "{}", f.buffered());
        }
        out
    }

    #[test]
    fn a_100_kib_header_is_refused_with_an_answerable_head_and_the_stream_goes_on() {
        let body = "v=0\r\n";
        let big = format!(
            "INVITE sip:srs@h SIP/2.0\r\nX-Big: {}\r\nVia: SIP/2.0/TCP h;branch=z9hG4bKbig\r\n\
From: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: big\r\nCSeq: 1 INVITE\r\n\
Subject: {}\r\nContent-Length: {}\r\n\r\n{body}",
            "a".repeat(100 * 1024),
            "s".repeat(1000),
            body.len()
        );
        for chunk in [1000, 16384, big.len()] {
            let mut f = SipStreamFramer::new();
            let mut out = refused(&mut f, big.as_bytes(), chunk);
            out.extend(refused(&mut f, msg(2, "after").as_bytes(), 100));
            assert_eq!(out.len(), 2, "chunk {chunk}: {out:?}");
            let Frame::Refused { error, head, fatal } = &out[0] else {
                panic!("{out:?}");
            };
            assert_eq!(*error, SipError::TooLarge(big.len()), "chunk {chunk}");
            assert!(!fatal);
            assert!(
                head.len() < 1024,
                "only what an answer needs: {}",
                head.len()
            );
            let m = crate::sip::message::salvage_request(head).expect("answerable");
            assert_eq!(m.call_id, "big");
            assert_eq!(m.via_branch.as_deref(), Some("z9hG4bKbig"));
            assert!(m.header("Subject").is_none());
            assert_eq!(
                out[1],
                Frame::Message(msg(2, "after").into_bytes()),
                "chunk {chunk}"
            );
            assert_eq!(f.skipped_bytes(), big.len() as u64);
        }
    }

    #[test]
    fn ten_thousand_vias_are_refused_with_a_bounded_head() {
        let mut m = String::from("INVITE sip:srs@h SIP/2.0\r\n");
        for i in 0..10_000 {
            m.push_str(&format!(
                "Via: SIP/2.0/TCP 10.0.{}.{}:5060;branch=z9hG4bK{i}\r\n",
                i / 250,
                i % 250
            ));
        }
        m.push_str("From: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: vias\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n");
        let mut f = SipStreamFramer::new();
        let out = refused(&mut f, m.as_bytes(), 16384);
        assert_eq!(out.len(), 1);
        let Frame::Refused { error, head, fatal } = &out[0] else {
            panic!("{out:?}");
        };
        assert_eq!(*error, SipError::TooLarge(m.len()));
        assert!(!fatal);
        assert!(head.len() <= VIA_BUDGET + 1024, "{}", head.len());
        // From, To, Call-ID and CSeq after 10,000 Vias still made it.
        let r = crate::sip::message::salvage_request(head).expect("answerable");
        assert_eq!(r.call_id, "vias");
        assert_eq!(r.via_branch.as_deref(), Some("z9hG4bK0"));
        assert!(r.headers_named("Via").count() <= MAX_VIAS);
    }

    #[test]
    fn an_impossible_content_length_is_refused_fatal_at_once() {
        let head = "INVITE sip:srs@h SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bKcl\r\n\
From: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: cl\r\nCSeq: 1 INVITE\r\n";
        for (cl, size) in [
            ("2000000000", Some(2_000_000_000usize)),
            ("99999999999999999999999999", None),
        ] {
            let m = format!("{head}Content-Length: {cl}\r\n\r\nv=0\r\n");
            let mut f = SipStreamFramer::new();
            f.push(m.as_bytes());
            let Some(Frame::Refused { error, head, fatal }) = f.next_frame() else {
                panic!("refused");
            };
            match size {
                Some(n) => assert_eq!(
                    error,
                    SipError::TooLarge(m.find("\r\n\r\n").unwrap() + 4 + n)
                ),
                None => assert_eq!(error, SipError::TooLarge(usize::MAX)),
            }
            assert!(fatal);
            let r = crate::sip::message::salvage_request(&head).unwrap();
            assert_eq!(r.call_id, "cl");
            assert_eq!(f.buffered(), 0);
            assert!(f.in_message(), "its body is still being dropped");
        }
    }

    #[test]
    fn a_700_kb_body_is_dropped_and_the_stream_goes_on() {
        let body = "<x/>".repeat(175_000);
        let m = msg(1, &body);
        let mut f = SipStreamFramer::new();
        let mut out = refused(&mut f, m.as_bytes(), 16384);
        assert!(f.in_message() || out.len() == 1);
        out.extend(refused(&mut f, msg(2, "ok").as_bytes(), 16384));
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(
            matches!(&out[0], Frame::Refused { error: SipError::TooLarge(n), fatal: false, .. } if *n == m.len())
        );
        assert_eq!(out[1], Frame::Message(msg(2, "ok").into_bytes()));
        assert!(!f.in_message());
    }

    #[test]
    fn bad_content_length_is_an_error() {
        let mut f = SipStreamFramer::new();
        f.push(b"BYE sip:a@b SIP/2.0\r\nContent-Length: lots\r\n\r\n");
        f.push(msg(5, "").as_bytes());
        let out = drain(&mut f);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0], Err(SipError::BadHeader("Content-Length")));
        assert!(out[1].is_ok());
        // A server learns the framing is lost, and what to answer.
        let mut f = SipStreamFramer::new();
        f.push(
            msg(6, "")
                .replace("Content-Length: 0", "Content-Length: -1")
                .as_bytes(),
        );
        let Some(Frame::Refused { error, head, fatal }) = f.next_frame() else {
            panic!("refused");
        };
        assert_eq!(error, SipError::BadHeader("Content-Length"));
        assert!(fatal);
        assert_eq!(
            crate::sip::message::salvage_request(&head).unwrap().call_id,
            "c6"
        );
    }

    #[test]
    fn overflow_without_draining_is_reported_and_bounded() {
        let mut f = SipStreamFramer::new();
        let m = msg(1, "");
        for _ in 0..(MAX_BUFFER / m.len() + 10) {
            f.push(m.as_bytes());
        }
        assert!(f.buffered() <= MAX_BUFFER);
        assert_eq!(f.next_message(), Some(Err(SipError::BufferOverflow)));
    }

    /// The TCP streams of the corpus, as tshark follows them, with tshark's
    /// count of SIP messages for each direction.
    fn corpus_streams() -> Vec<(String, Vec<u8>, usize)> {
        let Some(dir) = corpus_dir() else {
            return vec![];
        };
        if !have_tshark() {
            return vec![];
        }
        let mut out = Vec::new();
        let cases: [(&str, &[&str]); 3] = [
            (
                "sip_ipv4_tcp_fragmented.pcap",
                &["-d", "tcp.port==6060,sip"],
            ),
            ("sip_ipv4_tcp.pcap", &[]),
            ("sipp_uac_Media_DTMF_Speex.pcap", &[]),
        ];
        for (name, decode_as) in cases {
            let file = dir.join(name);
            if !file.exists() {
                continue;
            }
            let mut args: Vec<&str> = decode_as.to_vec();
            args.extend([
                "-Y",
                "sip && tcp",
                "-T",
                "fields",
                "-E",
                "occurrence=a",
                "-E",
                "aggregator=|",
                "-e",
                "tcp.stream",
                "-e",
                "tcp.srcport",
                "-e",
                "sip.CSeq",
            ]);
            let rows = tshark_rows(&file, &args);
            let mut streams: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
            streams.sort();
            streams.dedup();
            for s in streams {
                let (client_port, client, server) = tcp_follow(&file, s.parse().unwrap());
                let count = |client_side: bool| -> usize {
                    rows.iter()
                        .filter(|r| r[0] == s && (r[1] == client_port) == client_side)
                        .map(|r| r[2].split('|').count())
                        .sum()
                };
                out.push((format!("{name} stream {s} client"), client, count(true)));
                out.push((format!("{name} stream {s} server"), server, count(false)));
            }
        }
        out
    }

    fn frame_all(bytes: &[u8], chunks: &[usize]) -> (usize, Vec<String>) {
        let mut f = SipStreamFramer::new();
        let mut pos = 0;
        let mut i = 0;
        let mut count = 0;
        let mut errors = Vec::new();
        while pos < bytes.len() {
            let n = chunks
                .get(i % chunks.len().max(1))
                .copied()
                .unwrap_or(1400)
                .max(1);
            i += 1;
            let end = (pos + n).min(bytes.len());
            f.push(&bytes[pos..end]);
            pos = end;
            while let Some(r) = f.next_message() {
                match r {
                    Ok(m) => match parse_message(&m) {
                        Ok(msg) => {
                            count += 1;
                            // SDP bodies carried over TCP parse too.
                            if msg.media_type() == Some("application/sdp") {
                                let text = String::from_utf8_lossy(&msg.body);
                                if let Err(e) = crate::sip::sdp::parse_sdp(&text) {
                                    errors.push(format!("sdp: {e}\n{text}"));
                                }
                            }
                        }
                        Err(e) => errors.push(format!("{e}: {}", String::from_utf8_lossy(&m))),
                    },
                    Err(e) => errors.push(e.to_string()),
                }
            }
        }
        assert_eq!(f.buffered(), 0, "bytes left over");
        assert_eq!(f.skipped_bytes(), 0, "bytes skipped");
        (count, errors)
    }

    #[test]
    fn corpus_tcp_streams_frame_like_tshark() {
        let streams = corpus_streams();
        for (label, bytes, expected) in &streams {
            let (count, errors) = frame_all(bytes, &[1400]);
            assert!(errors.is_empty(), "{label}: {errors:?}");
            assert_eq!(count, *expected, "{label}");
        }
        if !streams.is_empty() {
            eprintln!("{} TCP directions framed", streams.len());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn corpus_tcp_streams_in_random_chunks(chunks in proptest::collection::vec(1usize..3000, 1..40)) {
            for (label, bytes, expected) in CORPUS.iter() {
                let (count, errors) = frame_all(bytes, &chunks);
                prop_assert!(errors.is_empty(), "{}: {:?}", label, errors);
                prop_assert_eq!(count, *expected, "{}", label);
            }
        }

        #[test]
        fn synthetic_stream_any_chunking(
            bodies in proptest::collection::vec("[a-z\r\n]{0,40}", 1..20),
            chunks in proptest::collection::vec(1usize..200, 1..20),
            keepalive in any::<bool>(),
        ) {
            let mut stream = Vec::new();
            for (i, b) in bodies.iter().enumerate() {
                if keepalive { stream.extend_from_slice(b"\r\n\r\n"); }
                stream.extend_from_slice(msg(i as u32, b).as_bytes());
            }
            let mut f = SipStreamFramer::new();
            let mut got = Vec::new();
            let mut pos = 0;
            let mut i = 0;
            while pos < stream.len() {
                let end = (pos + chunks[i % chunks.len()]).min(stream.len());
                i += 1;
                f.push(&stream[pos..end]);
                pos = end;
                while let Some(r) = f.next_message() { got.push(r.unwrap()); }
            }
            prop_assert_eq!(got.len(), bodies.len());
            for (g, b) in got.iter().zip(&bodies) {
                prop_assert_eq!(&parse_message(g).unwrap().body, b.as_bytes());
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_stay_bounded(
            data in proptest::collection::vec(any::<u8>(), 0..4000),
            chunks in proptest::collection::vec(1usize..500, 1..10),
            gap_at in proptest::option::of(0usize..10),
        ) {
            let mut f = SipStreamFramer::new();
            let mut pos = 0;
            let mut i = 0;
            while pos < data.len() {
                let end = (pos + chunks[i % chunks.len()]).min(data.len());
                if Some(i) == gap_at { f.gap(); }
                i += 1;
                f.push(&data[pos..end]);
                pos = end;
                while f.next_message().is_some() {}
                prop_assert!(f.buffered() <= MAX_BUFFER);
            }
        }
    }

    static CORPUS: std::sync::LazyLock<Vec<(String, Vec<u8>, usize)>> =
        std::sync::LazyLock::new(corpus_streams);
}
