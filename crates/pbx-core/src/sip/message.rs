//! One SIP message: the bytes of one complete message in (a UDP datagram, or what
//! [`super::stream::SipStreamFramer`] cut out of a TCP stream), a plain
//! [`SipMessage`] out that the call engine can use without knowing `rsip`.
//!
//! Two parsers stand behind [`parse_message`]:
//!
//! 1. **rsip** (strict, RFC 3261 grammar): tokenizes the message and parses
//!    From/To/Via/CSeq with its typed headers. Most well-formed traffic takes
//!    this path.
//! 2. **A tolerant parser of our own**, used whenever rsip refuses a message
//!    that a real PBX still sent: LF-only line ends, folded headers, compact or
//!    lower-case header names, spaces before the colon, `tel:` URIs, unknown
//!    methods, a Content-Length that does not match the body.
//!
//! Both paths produce the same [`SipMessage`] for the same input (a test checks
//! this on every SIP message of the corpus captures).
//!
//! Promises: never panics on any input; refuses messages over
//! [`MAX_MESSAGE_LEN`] bytes, with more than [`MAX_HEADERS`] headers or more
//! than [`MAX_VIAS`] Via values (counted before either parser runs, so both
//! refuse the same messages the same way); header names come out in
//! canonical long form (`i` → `Call-ID`, `call-id` → `Call-ID`), unknown
//! names as written.
//!
//! A refused request can still be answered: [`salvage_request`] takes from
//! it only what a response needs (start line, Via, From, To, Call-ID, CSeq;
//! bounded in count and length) so the server can tell the sender why
//! (see [`super::limits`]).
//!
//! Body rule (UDP, RFC 3261 §18.3 made tolerant): the body is everything after
//! the first empty line. When Content-Length is smaller and the excess is only
//! whitespace/NUL padding, the body is cut to Content-Length; when the stated
//! length is larger than what arrived, or the excess is real data (a wrong
//! Content-Length, as in Cisco's documented SIPREC INVITE), the whole rest is
//! kept rather than dropping a real PBX's message.
//!
//! Layout: this file holds the types, the limits and the entry points;
//! `tolerant` the tolerant front end and the assembly both front ends share,
//! `rsip_path` the rsip front end, `header` header names and values,
//! `salvage` what a refused request still yields.

use std::fmt;

mod header;
mod rsip_path;
mod salvage;
mod tolerant;

use header::*;
pub use header::{canonical_header_name, parse_name_addr, uri_user_host};
pub use salvage::salvage_request;
use tolerant::*;

/// Largest message accepted, in bytes (headers + body).
pub const MAX_MESSAGE_LEN: usize = 64 * 1024;
/// Largest number of header fields accepted (after unfolding).
pub const MAX_HEADERS: usize = 256;
/// Largest number of Via values accepted (all Via headers, comma-separated
/// values counted one by one): a request that went through more proxies
/// than Max-Forwards' usual start of 70 allows is a loop or an attack.
pub const MAX_VIAS: usize = 70;
/// Longest header value [`salvage_request`] copies into a response.
pub const MAX_SALVAGED_VALUE: usize = 4096;

/// Why a message could not be parsed (or framed, see [`super::stream`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SipError {
    #[error("message of {0} bytes exceeds the {MAX_MESSAGE_LEN}-byte limit")]
    TooLarge(usize),
    #[error("more than {MAX_HEADERS} header fields")]
    TooManyHeaders,
    #[error("{0} Via values, more than the {MAX_VIAS} accepted")]
    TooManyVias(usize),
    #[error("empty message")]
    Empty,
    #[error("not a SIP request or status line")]
    BadStartLine,
    #[error("missing or empty {0} header")]
    MissingHeader(&'static str),
    #[error("malformed {0} header")]
    BadHeader(&'static str),
    #[error("stream buffer overflow: the reader did not drain messages; data dropped")]
    BufferOverflow,
}

/// A SIP method. Known methods are matched case-insensitively (RFC 3261 says
/// case-sensitive; some devices disagree); anything else is kept as written.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Update,
    Prack,
    Options,
    Register,
    Info,
    Refer,
    Notify,
    Subscribe,
    Message,
    Publish,
    Other(String),
}

impl Method {
    /// Method from its token.
    pub fn from_token(token: &str) -> Method {
        const KNOWN: [(&str, Method); 14] = [
            ("INVITE", Method::Invite),
            ("ACK", Method::Ack),
            ("BYE", Method::Bye),
            ("CANCEL", Method::Cancel),
            ("UPDATE", Method::Update),
            ("PRACK", Method::Prack),
            ("OPTIONS", Method::Options),
            ("REGISTER", Method::Register),
            ("INFO", Method::Info),
            ("REFER", Method::Refer),
            ("NOTIFY", Method::Notify),
            ("SUBSCRIBE", Method::Subscribe),
            ("MESSAGE", Method::Message),
            ("PUBLISH", Method::Publish),
        ];
        KNOWN
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(token))
            .map(|(_, m)| m.clone())
            .unwrap_or_else(|| Method::Other(token.to_string()))
    }

    /// The method's token (upper case for the known ones).
    pub fn as_str(&self) -> &str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Update => "UPDATE",
            Method::Prack => "PRACK",
            Method::Options => "OPTIONS",
            Method::Register => "REGISTER",
            Method::Info => "INFO",
            Method::Refer => "REFER",
            Method::Notify => "NOTIFY",
            Method::Subscribe => "SUBSCRIBE",
            Method::Message => "MESSAGE",
            Method::Publish => "PUBLISH",
            Method::Other(s) => s,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A From/To-style address: `"Alice" <sip:alice@example.com>;tag=1`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameAddr {
    /// Display name, unquoted and unescaped; `None` when absent or empty.
    pub display_name: Option<String>,
    /// The URI as written (without the angle brackets and header params).
    pub uri: String,
    /// User part of a `sip:`/`sips:` URI (password stripped), or the number of
    /// a `tel:` URI; as written (no percent-decoding).
    pub user: Option<String>,
    /// Host of a `sip:`/`sips:` URI (no port, IPv6 without brackets).
    pub host: Option<String>,
    /// The `tag` header parameter.
    pub tag: Option<String>,
}

/// The first line of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartLine {
    Request { method: Method, uri: String },
    Response { code: u16, reason: String },
}

/// A parsed SIP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipMessage {
    pub start: StartLine,
    pub call_id: String,
    pub from: NameAddr,
    pub to: NameAddr,
    pub cseq: u32,
    pub cseq_method: Method,
    /// `branch` of the topmost Via.
    pub via_branch: Option<String>,
    /// Lower-cased media type with its params as written, spaces around `;`
    /// removed, e.g. `multipart/mixed;boundary=foo`.
    pub content_type: Option<String>,
    /// The stated Content-Length, if any and numeric.
    pub content_length: Option<usize>,
    pub body: Vec<u8>,
    /// All header fields in order, names in canonical long form, values trimmed
    /// (folded lines joined with one space).
    pub headers: Vec<(String, String)>,
}

impl SipMessage {
    /// First header of that name (case-insensitive; compact forms accepted).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers_named(name).next()
    }

    /// Every header of that name, in order.
    pub fn headers_named<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a str> + 'a {
        let canon = canonical_header_name(name.trim());
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(&canon))
            .map(|(_, v)| v.as_str())
    }

    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    pub fn method(&self) -> Option<&Method> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match &self.start {
            StartLine::Request { .. } => None,
            StartLine::Response { code, .. } => Some(*code),
        }
    }

    pub fn request_uri(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { uri, .. } => Some(uri),
            StartLine::Response { .. } => None,
        }
    }

    /// The media type of the body without params (`application/sdp`).
    pub fn media_type(&self) -> Option<&str> {
        self.content_type
            .as_deref()
            .map(|ct| ct.split(';').next().unwrap_or(ct).trim())
    }
}

/// Parses one complete SIP message (see the module doc for the rules).
pub fn parse_message(bytes: &[u8]) -> Result<SipMessage, SipError> {
    check_limits(bytes)?;
    if let Some(raw) = rsip_path::split(bytes) {
        if let Ok(msg) = assemble(raw, FieldParser::Rsip) {
            return Ok(msg);
        }
    }
    parse_message_tolerant(bytes)
}

/// The tolerant parser alone (no rsip). Same output as [`parse_message`];
/// public so tests and tools can compare both paths.
pub fn parse_message_tolerant(bytes: &[u8]) -> Result<SipMessage, SipError> {
    check_limits(bytes)?;
    let raw = split_tolerant(bytes)?;
    assemble(raw, FieldParser::Own)
}

fn check_limits(bytes: &[u8]) -> Result<(), SipError> {
    if bytes.len() > MAX_MESSAGE_LEN {
        return Err(SipError::TooLarge(bytes.len()));
    }
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(SipError::Empty);
    }
    let (headers, vias) = count_headers(bytes);
    if vias > MAX_VIAS {
        return Err(SipError::TooManyVias(vias));
    }
    if headers > MAX_HEADERS {
        return Err(SipError::TooManyHeaders);
    }
    Ok(())
}

/// Lines of a message after its first line, up to the empty line that ends
/// the header block: `(line without its line end)`. LF or CRLF.
fn header_lines(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let start = bytes
        .iter()
        .position(|b| *b != b'\r' && *b != b'\n')
        .unwrap_or(bytes.len());
    bytes
        .get(start..)
        .unwrap_or_default()
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .skip(1)
        .take_while(|l| !l.is_empty())
}

/// Header fields and Via values in a message's header block, as both
/// parsers would see them (continuation lines belong to their header).
fn count_headers(bytes: &[u8]) -> (usize, usize) {
    let (mut headers, mut vias) = (0usize, 0usize);
    let mut in_via = false;
    for line in header_lines(bytes) {
        if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
            if in_via {
                vias += count_commas_outside_quotes(line);
            }
            continue;
        }
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            in_via = false;
            continue;
        };
        let name = trim_bytes(line.get(..colon).unwrap_or_default());
        if name.is_empty() || !name.iter().all(|b| is_token_byte(*b)) {
            in_via = false;
            continue;
        }
        headers += 1;
        in_via = is_via_name(name);
        if in_via {
            vias += 1 + count_commas_outside_quotes(line.get(colon + 1..).unwrap_or_default());
        }
    }
    (headers, vias)
}

fn is_via_name(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"via") || name.eq_ignore_ascii_case(b"v")
}

fn count_commas_outside_quotes(s: &[u8]) -> usize {
    let (mut n, mut in_quotes, mut escaped) = (0, false, false);
    for &b in s {
        if escaped {
            escaped = false;
            continue;
        }
        match b {
            b'\\' if in_quotes => escaped = true,
            b'"' => in_quotes = !in_quotes,
            b',' if !in_quotes => n += 1,
            _ => {}
        }
    }
    n
}

/// The headers a response to a request is built from (RFC 3261 §8.2.6.2),
/// long or compact names: `Some(0)` Via, `1` From, `2` To, `3` Call-ID,
/// `4` CSeq; `None` for any other.
pub(crate) fn response_header_index(name: &[u8]) -> Option<usize> {
    let name = trim_bytes(name);
    const NAMES: [(&str, &str); 5] = [
        ("via", "v"),
        ("from", "f"),
        ("to", "t"),
        ("call-id", "i"),
        ("cseq", "cseq"),
    ];
    NAMES.iter().position(|(long, short)| {
        name.eq_ignore_ascii_case(long.as_bytes()) || name.eq_ignore_ascii_case(short.as_bytes())
    })
}

/// Cheap check used to classify UDP/TCP payloads: does the first line (after
/// any keep-alive CR/LFs) read `SIP/2.0 NNN ...` or `METHOD uri SIP/2.0`?
pub fn looks_like_sip(bytes: &[u8]) -> bool {
    let start = bytes
        .iter()
        .take(64)
        .position(|b| *b != b'\r' && *b != b'\n')
        .unwrap_or(0);
    let rest = bytes.get(start..).unwrap_or_default();
    // A start line begins with a method (a token) or "SIP/2.0": this turns
    // away RTP (first byte 0x80-0xBF) before any scanning.
    if !rest.first().is_some_and(|b| is_token_byte(*b)) {
        return false;
    }
    let window = rest.get(..4096.min(rest.len())).unwrap_or_default();
    let line = match window.iter().position(|b| *b == b'\n') {
        Some(i) => window.get(..i).unwrap_or_default(),
        None => window,
    };
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    is_start_line(line)
}

/// Whether `bytes`, without a line end yet, may be the beginning of a SIP
/// start line: a TCP stream's first segment cut inside its request line
/// (`INVITE sip:bob@[2001:db8::`, a small first segment) or status line.
/// Its bytes then wait for the line's end in the next segments, which
/// tells SIP from another protocol (turned away, the INVITE was lost and
/// with it the call).
pub fn may_begin_sip(bytes: &[u8]) -> bool {
    let start = bytes
        .iter()
        .take(64)
        .position(|b| *b != b'\r' && *b != b'\n')
        .unwrap_or(bytes.len());
    let line = bytes.get(start..).unwrap_or_default();
    if line.is_empty() || line.len() > 1024 || line.contains(&b'\n') {
        return false;
    }
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let prefix_ci =
        |s: &[u8], of: &[u8]| s.len() <= of.len() && s.eq_ignore_ascii_case(&of[..s.len()]);
    let status = b"SIP/2.0 ";
    if prefix_ci(line, status) {
        return true;
    }
    if let Some(rest) = strip_prefix_ci(line, status) {
        let code = &rest[..rest.len().min(3)];
        return code.iter().all(u8::is_ascii_digit)
            && (rest.len() <= 3 || rest[3] == b' ')
            && !rest.iter().any(u8::is_ascii_control);
    }
    // METHOD [SP Request-URI [SP SIP/2.0]], cut anywhere.
    let mut parts = line.splitn(3, |b| *b == b' ');
    let method = parts.next().unwrap_or_default();
    let uri = parts.next();
    let version = parts.next();
    !method.is_empty()
        && method.len() <= 16
        && method.iter().all(u8::is_ascii_uppercase)
        && uri.is_none_or(|u| u.iter().all(|b| b.is_ascii_graphic()))
        && version.is_none_or(|v| prefix_ci(v, b"SIP/2.0"))
}

/// Whether one line (without its line end) is a SIP request or status line.
pub(crate) fn is_start_line(line: &[u8]) -> bool {
    if let Some(rest) = strip_prefix_ci(line, b"SIP/2.0 ") {
        let code = rest.get(..3).unwrap_or_default();
        return code.len() == 3
            && code.iter().all(u8::is_ascii_digit)
            && rest.get(3).is_none_or(|b| *b == b' ' || *b == b'\t');
    }
    // METHOD SP Request-URI SP SIP/2.0
    let Some(sp1) = line.iter().position(|b| *b == b' ') else {
        return false;
    };
    let method = line.get(..sp1).unwrap_or_default();
    if method.is_empty() || !method.iter().all(|b| is_token_byte(*b)) {
        return false;
    }
    let rest = line.get(sp1 + 1..).unwrap_or_default();
    let Some(sp2) = rest.iter().rposition(|b| *b == b' ') else {
        return false;
    };
    let uri = rest.get(..sp2).unwrap_or_default();
    let version = rest.get(sp2 + 1..).unwrap_or_default();
    let uri = trim_bytes(uri);
    !uri.is_empty()
        && !uri.contains(&b' ')
        && uri.contains(&b':')
        && version.eq_ignore_ascii_case(b"SIP/2.0")
}

fn strip_prefix_ci<'a>(s: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    let head = s.get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix) {
        s.get(prefix.len()..)
    } else {
        None
    }
}

fn trim_bytes(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if first.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = s {
        if last.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    s
}

/// RFC 3261 `token` characters.
pub(crate) fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
        )
}

#[cfg(test)]
mod tests;
