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

use std::fmt;

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

/// What a response needs from a request that [`parse_message`] refused (too
/// large, too many headers or Vias, a malformed field): the request line and
/// the Via (at most [`MAX_VIAS`] values), From, To, Call-ID and CSeq headers,
/// each value at most [`MAX_SALVAGED_VALUE`] bytes; every other header and
/// the body are left out. `None` when the first line is not a request line
/// or the request has no Via, no Call-ID or no usable CSeq: nothing to
/// address an answer with. From and To are kept as written (absent ones stay
/// absent; the response then has none either). Linear in the input; never
/// panics.
pub fn salvage_request(bytes: &[u8]) -> Option<SipMessage> {
    let start = bytes.iter().position(|b| *b != b'\r' && *b != b'\n')?;
    let first = bytes
        .get(start..)?
        .split(|b| *b == b'\n')
        .next()
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))?;
    let start_line = parse_start_line(first).ok()?;
    if !matches!(start_line, StartLine::Request { .. }) {
        return None;
    }
    // (canonical name, value) of the kept headers; `None` value: dropped
    // (too long), its continuation lines go with it.
    let mut kept: Vec<(String, String)> = Vec::new();
    let mut current: Option<usize> = None;
    let mut vias = 0usize;
    for line in header_lines(bytes) {
        if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
            if let Some((_, v)) = current.and_then(|i| kept.get_mut(i)) {
                let more = String::from_utf8_lossy(trim_bytes(line));
                if v.len() + more.len() < MAX_SALVAGED_VALUE {
                    v.push(' ');
                    v.push_str(&more);
                } else {
                    v.clear(); // too long: unusable
                }
            }
            continue;
        }
        current = None;
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let name = line.get(..colon).unwrap_or_default();
        let value = trim_bytes(line.get(colon + 1..).unwrap_or_default());
        let Some(index) = response_header_index(name) else {
            continue;
        };
        if index == 0 {
            // Via: the first values, within the count and the length.
            if vias >= MAX_VIAS {
                continue;
            }
            let value = String::from_utf8_lossy(value);
            let mut joined = String::new();
            for v in split_outside_quotes(&value, b',') {
                if vias >= MAX_VIAS || joined.len() + v.len() + 1 > MAX_SALVAGED_VALUE {
                    break;
                }
                if !joined.is_empty() {
                    joined.push(',');
                }
                joined.push_str(v);
                vias += 1;
            }
            if !joined.is_empty() {
                kept.push(("Via".to_string(), joined.trim().to_string()));
            }
            current = None; // a continuation could not be told apart
            continue;
        }
        if value.len() > MAX_SALVAGED_VALUE {
            continue;
        }
        let canon = canonical_header_name(&String::from_utf8_lossy(trim_bytes(name)));
        let value = String::from_utf8_lossy(value).into_owned();
        if kept.iter().any(|(n, _)| *n == canon) {
            continue; // the first one counts
        } else {
            kept.push((canon, value));
        }
        current = Some(kept.len() - 1);
    }
    kept.retain(|(_, v)| !v.trim().is_empty());
    let call_id = find_header(&kept, "Call-ID")?.trim().to_string();
    let (cseq, cseq_method) = parse_cseq(find_header(&kept, "CSeq")?)?;
    let via_branch = via_branch(find_header(&kept, "Via")?);
    let addr = |name: &str| {
        find_header(&kept, name)
            .map(|v| {
                parse_name_addr(v).unwrap_or_else(|| NameAddr {
                    uri: v.to_string(),
                    ..NameAddr::default()
                })
            })
            .unwrap_or_default()
    };
    let (from, to) = (addr("From"), addr("To"));
    Some(SipMessage {
        start: start_line,
        call_id,
        from,
        to,
        cseq,
        cseq_method,
        via_branch,
        content_type: None,
        content_length: None,
        body: Vec::new(),
        headers: kept,
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

/// Canonical long form of a header name: compact forms expanded (RFC 3261
/// §7.3.3 and later RFCs), well-known names spelled as in their RFCs,
/// anything else returned as written.
pub fn canonical_header_name(name: &str) -> String {
    const COMPACT: [(&str, &str); 20] = [
        ("a", "Accept-Contact"),
        ("b", "Referred-By"),
        ("c", "Content-Type"),
        ("d", "Request-Disposition"),
        ("e", "Content-Encoding"),
        ("f", "From"),
        ("i", "Call-ID"),
        ("j", "Reject-Contact"),
        ("k", "Supported"),
        ("l", "Content-Length"),
        ("m", "Contact"),
        ("n", "Identity-Info"),
        ("o", "Event"),
        ("r", "Refer-To"),
        ("s", "Subject"),
        ("t", "To"),
        ("u", "Allow-Events"),
        ("v", "Via"),
        ("x", "Session-Expires"),
        ("y", "Identity"),
    ];
    const KNOWN: [&str; 72] = [
        "Accept",
        "Accept-Contact",
        "Accept-Encoding",
        "Accept-Language",
        "Alert-Info",
        "Allow",
        "Allow-Events",
        "Authentication-Info",
        "Authorization",
        "Call-ID",
        "Call-Info",
        "Contact",
        "Content-Disposition",
        "Content-Encoding",
        "Content-ID",
        "Content-Language",
        "Content-Length",
        "Content-Type",
        "CSeq",
        "Date",
        "Diversion",
        "Error-Info",
        "Event",
        "Expires",
        "From",
        "History-Info",
        "Identity",
        "Identity-Info",
        "In-Reply-To",
        "Max-Forwards",
        "MIME-Version",
        "Min-Expires",
        "Min-SE",
        "Organization",
        "P-Asserted-Identity",
        "P-Charging-Vector",
        "P-Preferred-Identity",
        "Priority",
        "Privacy",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Require",
        "RAck",
        "Reason",
        "Record-Route",
        "Refer-To",
        "Referred-By",
        "Reject-Contact",
        "Remote-Party-ID",
        "Replaces",
        "Reply-To",
        "Request-Disposition",
        "Require",
        "Retry-After",
        "Route",
        "RSeq",
        "Server",
        "Session-Expires",
        "Session-ID",
        "Subject",
        "Subscription-State",
        "Supported",
        "Timestamp",
        "To",
        "Unsupported",
        "User-Agent",
        "User-to-User",
        "Via",
        "Warning",
        "WWW-Authenticate",
        "X-Asterisk-HangupCause",
        "X-Asterisk-HangupCauseCode",
    ];
    if name.len() == 1 {
        if let Some((_, long)) = COMPACT.iter().find(|(c, _)| c.eq_ignore_ascii_case(name)) {
            return (*long).to_string();
        }
    }
    KNOWN
        .iter()
        .find(|k| k.eq_ignore_ascii_case(name))
        .map(|k| (*k).to_string())
        .unwrap_or_else(|| name.to_string())
}

/// Start line, headers and body as cut out by one of the two front ends.
struct RawMessage<'a> {
    start: StartLine,
    headers: Vec<(String, String)>,
    /// Everything after the empty line.
    rest: &'a [u8],
}

#[derive(Clone, Copy)]
enum FieldParser {
    Rsip,
    Own,
}

/// Tolerant split: skips leading CR/LFs, accepts LF or CRLF line ends,
/// unfolds continuation lines, ignores header lines without a colon.
fn split_tolerant(bytes: &[u8]) -> Result<RawMessage<'_>, SipError> {
    let mut pos = bytes
        .iter()
        .position(|b| *b != b'\r' && *b != b'\n')
        .ok_or(SipError::Empty)?;
    let mut start: Option<StartLine> = None;
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut rest: &[u8] = &[];
    loop {
        let remaining = bytes.get(pos..).unwrap_or_default();
        if remaining.is_empty() {
            break; // no empty line: headers only, no body
        }
        let (line, next) = match remaining.iter().position(|b| *b == b'\n') {
            Some(i) => (remaining.get(..i).unwrap_or_default(), pos + i + 1),
            None => (remaining, bytes.len()),
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        pos = next;
        if start.is_none() {
            start = Some(parse_start_line(line)?);
            continue;
        }
        if line.is_empty() {
            rest = bytes.get(pos..).unwrap_or_default();
            break;
        }
        let text = String::from_utf8_lossy(line);
        if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
            // Folded continuation of the previous header.
            if let Some((_, value)) = headers.last_mut() {
                let more = text.trim();
                if !more.is_empty() {
                    if !value.is_empty() {
                        value.push(' ');
                    }
                    value.push_str(more);
                }
            }
            continue;
        }
        let Some((name, value)) = text.split_once(':') else {
            continue; // not a header line: ignore
        };
        let name = name.trim();
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            continue;
        }
        if headers.len() >= MAX_HEADERS {
            return Err(SipError::TooManyHeaders);
        }
        headers.push((canonical_header_name(name), value.trim().to_string()));
    }
    let start = start.ok_or(SipError::BadStartLine)?;
    Ok(RawMessage {
        start,
        headers,
        rest,
    })
}

fn parse_start_line(line: &[u8]) -> Result<StartLine, SipError> {
    let text = std::str::from_utf8(line).map_err(|_| SipError::BadStartLine)?;
    let text = text.trim();
    if let Some(rest) = text
        .get(..8)
        .filter(|p| p.eq_ignore_ascii_case("SIP/2.0 "))
        .and_then(|_| text.get(8..))
    {
        let rest = rest.trim_start();
        let code_str = rest.get(..3).ok_or(SipError::BadStartLine)?;
        if !code_str.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SipError::BadStartLine);
        }
        let code: u16 = code_str.parse().map_err(|_| SipError::BadStartLine)?;
        if !(100..=699).contains(&code) {
            return Err(SipError::BadStartLine);
        }
        let after = rest.get(3..).unwrap_or_default();
        if after.starts_with(|c: char| !c.is_ascii_whitespace()) {
            return Err(SipError::BadStartLine);
        }
        return Ok(StartLine::Response {
            code,
            reason: after.trim().to_string(),
        });
    }
    let mut parts = text.split_ascii_whitespace();
    let (Some(method), Some(uri), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SipError::BadStartLine);
    };
    if !version.eq_ignore_ascii_case("SIP/2.0") || !method.bytes().all(is_token_byte) {
        return Err(SipError::BadStartLine);
    }
    Ok(StartLine::Request {
        method: Method::from_token(method),
        uri: uri.to_string(),
    })
}

fn find_header<'a>(headers: &'a [(String, String)], canon: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == canon)
        .map(|(_, v)| v.as_str())
}

/// Turns a split message into a [`SipMessage`], parsing the fields the engine
/// needs with the chosen parser.
fn assemble(raw: RawMessage<'_>, parser: FieldParser) -> Result<SipMessage, SipError> {
    if raw.headers.len() > MAX_HEADERS {
        return Err(SipError::TooManyHeaders);
    }
    let call_id = find_header(&raw.headers, "Call-ID")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or(SipError::MissingHeader("Call-ID"))?
        .to_string();
    let from_v = find_header(&raw.headers, "From").ok_or(SipError::MissingHeader("From"))?;
    let to_v = find_header(&raw.headers, "To").ok_or(SipError::MissingHeader("To"))?;
    let cseq_v = find_header(&raw.headers, "CSeq").ok_or(SipError::MissingHeader("CSeq"))?;
    let via_v = find_header(&raw.headers, "Via");
    let (from, to, (cseq, cseq_method), via_branch) = match parser {
        FieldParser::Own => (
            parse_name_addr(from_v).ok_or(SipError::BadHeader("From"))?,
            parse_name_addr(to_v).ok_or(SipError::BadHeader("To"))?,
            parse_cseq(cseq_v).ok_or(SipError::BadHeader("CSeq"))?,
            via_v.and_then(via_branch),
        ),
        FieldParser::Rsip => (
            rsip_path::name_addr(from_v, true).ok_or(SipError::BadHeader("From"))?,
            rsip_path::name_addr(to_v, false).ok_or(SipError::BadHeader("To"))?,
            rsip_path::cseq(cseq_v).ok_or(SipError::BadHeader("CSeq"))?,
            match via_v {
                Some(v) => {
                    Some(rsip_path::via_branch(v).ok_or(SipError::BadHeader("Via"))?).flatten()
                }
                None => None,
            },
        ),
    };
    let content_type = find_header(&raw.headers, "Content-Type").and_then(normalize_content_type);
    let content_length =
        find_header(&raw.headers, "Content-Length").and_then(|v| v.trim().parse::<usize>().ok());
    let body = body_slice(raw.rest, content_length).to_vec();
    Ok(SipMessage {
        start: raw.start,
        call_id,
        from,
        to,
        cseq,
        cseq_method,
        via_branch,
        content_type,
        content_length,
        body,
        headers: raw.headers,
    })
}

/// The body rule from the module doc.
fn body_slice(rest: &[u8], content_length: Option<usize>) -> &[u8] {
    match content_length {
        Some(n) if n < rest.len() => {
            let excess = rest.get(n..).unwrap_or_default();
            if excess.iter().all(|b| b.is_ascii_whitespace() || *b == 0) {
                rest.get(..n).unwrap_or(rest)
            } else {
                rest
            }
        }
        _ => rest,
    }
}

/// `Multipart/Mixed; boundary=foo` → `multipart/mixed;boundary=foo`.
fn normalize_content_type(v: &str) -> Option<String> {
    let mut parts = v.split(';');
    let media = parts.next()?.trim().to_ascii_lowercase();
    if media.is_empty() {
        return None;
    }
    let mut out = media;
    for p in parts {
        let p = p.trim();
        if p.is_empty() {
            continue;
        }
        out.push(';');
        match p.split_once('=') {
            Some((k, val)) => {
                out.push_str(k.trim());
                out.push('=');
                out.push_str(val.trim());
            }
            None => out.push_str(p),
        }
    }
    Some(out)
}

/// `CSeq: 1 INVITE`.
fn parse_cseq(v: &str) -> Option<(u32, Method)> {
    let mut parts = v.split_ascii_whitespace();
    let num: u32 = parts.next()?.parse().ok()?;
    let method = parts.next()?;
    if !method.bytes().all(is_token_byte) || parts.next().is_some() {
        return None;
    }
    Some((num, Method::from_token(method)))
}

/// `branch` of the first via-parm of a Via header value.
fn via_branch(v: &str) -> Option<String> {
    let first = split_outside_quotes(v, b',').next()?;
    split_outside_quotes(first, b';').skip(1).find_map(|p| {
        let (k, val) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("branch")
            .then(|| val.trim().to_string())
            .filter(|s| !s.is_empty())
    })
}

/// Splits on `sep` outside double-quoted strings (backslash escapes honoured).
fn split_outside_quotes(s: &str, sep: u8) -> impl Iterator<Item = &str> {
    let mut pieces = Vec::new();
    let bytes = s.as_bytes();
    let mut in_quotes = false;
    let mut escaped = false;
    let mut last = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if escaped {
            escaped = false;
            continue;
        }
        match b {
            b'\\' if in_quotes => escaped = true,
            b'"' => in_quotes = !in_quotes,
            _ if b == sep && !in_quotes => {
                pieces.push(s.get(last..i).unwrap_or_default());
                last = i + 1;
            }
            _ => {}
        }
    }
    pieces.push(s.get(last..).unwrap_or_default());
    pieces.into_iter()
}

/// Position of the first `<` outside a quoted string.
fn find_laquot(s: &str) -> Option<usize> {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, b) in s.bytes().enumerate() {
        if escaped {
            escaped = false;
            continue;
        }
        match b {
            b'\\' if in_quotes => escaped = true,
            b'"' => in_quotes = !in_quotes,
            b'<' if !in_quotes => return Some(i),
            _ => {}
        }
    }
    None
}

/// `"Al\"ice"` → `Al"ice`; unquoted names trimmed; empty → `None`.
fn unquote_display(s: &str) -> Option<String> {
    let s = s.trim();
    let out = if let Some(inner) = s.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    if let Some(n) = chars.next() {
                        out.push(n);
                    }
                }
                '"' => break,
                c => out.push(c),
            }
        }
        out.trim().to_string()
    } else {
        s.to_string()
    };
    (!out.is_empty()).then_some(out)
}

/// Parses a name-addr or addr-spec header value (From, To, P-Asserted-Identity,
/// Contact, ...): `"Name" <uri>;tag=x`, `Name <uri>`, `<uri>`, `uri;tag=x`.
pub fn parse_name_addr(v: &str) -> Option<NameAddr> {
    let v = v.trim();
    if v.is_empty() {
        return None;
    }
    let (display_name, uri, params) = if let Some(lt) = find_laquot(v) {
        let display = v.get(..lt).unwrap_or_default();
        let after = v.get(lt + 1..).unwrap_or_default();
        let (uri, params) = match after.find('>') {
            Some(gt) => (
                after.get(..gt).unwrap_or_default(),
                after.get(gt + 1..).unwrap_or_default(),
            ),
            None => (after, ""),
        };
        (unquote_display(display), uri.trim(), params)
    } else {
        // addr-spec: parameters after the URI belong to the header.
        match v.split_once(';') {
            Some((uri, params)) => (None, uri.trim(), params),
            None => (None, v, ""),
        }
    };
    if uri.is_empty() {
        return None;
    }
    let (user, host) = uri_user_host(uri);
    let tag = header_param(params, "tag");
    Some(NameAddr {
        display_name,
        uri: uri.to_string(),
        user,
        host,
        tag,
    })
}

/// A `;name=value` parameter from header params.
fn header_param(params: &str, name: &str) -> Option<String> {
    split_outside_quotes(params, b';').find_map(|p| {
        let (k, val) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| val.trim().trim_matches('"').to_string())
            .filter(|s| !s.is_empty())
    })
}

/// User and host of a `sip:`/`sips:` URI, or the number of a `tel:` URI.
pub fn uri_user_host(uri: &str) -> (Option<String>, Option<String>) {
    let Some((scheme, rest)) = uri.split_once(':') else {
        return (None, None);
    };
    let scheme = scheme.trim();
    if scheme.eq_ignore_ascii_case("tel") {
        let number = rest.split(';').next().unwrap_or_default().trim();
        return ((!number.is_empty()).then(|| number.to_string()), None);
    }
    if !scheme.eq_ignore_ascii_case("sip") && !scheme.eq_ignore_ascii_case("sips") {
        return (None, None);
    }
    let (userinfo, hostport) = match rest.find('@') {
        Some(at) => (rest.get(..at), rest.get(at + 1..).unwrap_or_default()),
        None => (None, rest),
    };
    let user = userinfo
        .map(|u| u.split(':').next().unwrap_or(u))
        .filter(|u| !u.is_empty())
        .map(str::to_string);
    let hostport = hostport
        .split([';', '?', '>'])
        .next()
        .unwrap_or_default()
        .trim();
    let host = if let Some(v6) = hostport.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        hostport.split(':').next().unwrap_or_default()
    };
    let host = (!host.is_empty()).then(|| host.to_string());
    (user, host)
}

/// The rsip front end: only used where it accepts the message; any refusal
/// sends the message to the tolerant parser.
mod rsip_path {
    use super::{unquote_display, Method, NameAddr, RawMessage, StartLine, MAX_HEADERS};
    use rsip::headers::{ToTypedHeader, UntypedHeader};

    pub(super) fn split(bytes: &[u8]) -> Option<RawMessage<'_>> {
        let msg = rsip::SipMessage::try_from(bytes).ok()?;
        let hdrs = match &msg {
            rsip::SipMessage::Request(r) => &r.headers,
            rsip::SipMessage::Response(r) => &r.headers,
        };
        if hdrs.iter().count() > MAX_HEADERS {
            return None;
        }
        let mut headers = Vec::new();
        for h in hdrs.iter() {
            let text = h.to_string();
            let (name, value) = text.split_once(':')?;
            headers.push((
                super::canonical_header_name(name.trim()),
                value.trim().to_string(),
            ));
        }
        let start = match &msg {
            rsip::SipMessage::Request(r) => {
                // The URI as written: rsip re-serialises it, so take it from
                // the start line itself.
                let line_end = bytes.iter().position(|b| *b == b'\r')?;
                let line = std::str::from_utf8(bytes.get(..line_end)?).ok()?;
                let mut parts = line.split(' ');
                let method = parts.next()?;
                let uri = parts.next()?;
                if !method.eq_ignore_ascii_case(&r.method.to_string()) {
                    return None;
                }
                StartLine::Request {
                    method: Method::from_token(method),
                    uri: uri.to_string(),
                }
            }
            rsip::SipMessage::Response(r) => {
                let line_end = bytes.iter().position(|b| *b == b'\r')?;
                let line = std::str::from_utf8(bytes.get(..line_end)?).ok()?;
                let reason = line.splitn(3, ' ').nth(2).unwrap_or_default().trim();
                StartLine::Response {
                    code: r.status_code.code(),
                    reason: reason.to_string(),
                }
            }
        };
        // rsip's body is everything after the first CRLFCRLF.
        let body_start = find_subslice(bytes, b"\r\n\r\n").map(|i| i + 4)?;
        Some(RawMessage {
            start,
            headers,
            rest: bytes.get(body_start..).unwrap_or_default(),
        })
    }

    fn find_subslice(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    }

    /// From/To through rsip's typed header. The URI string is taken as
    /// written; rsip decides user, host, tag and display name.
    pub(super) fn name_addr(value: &str, is_from: bool) -> Option<NameAddr> {
        let (display, uri, params) = if is_from {
            let t = rsip::headers::From::new(value).typed().ok()?;
            (t.display_name, t.uri, t.params)
        } else {
            let t = rsip::headers::To::new(value).typed().ok()?;
            (t.display_name, t.uri, t.params)
        };
        match uri.scheme {
            Some(rsip::Scheme::Sip) | Some(rsip::Scheme::Sips) => {}
            _ => return None,
        }
        let raw_uri = raw_uri(value)?;
        // rsip 0.4 misreads some user parts (e.g. `sip:MP114.FXS1@host` gives
        // host `MP114.FXS1@host`): accept its answer only when it is sane.
        let addr = raw_uri.split([';', '?']).next().unwrap_or_default();
        if addr.contains('@') && uri.user().is_none_or(str::is_empty) {
            return None;
        }
        let tag = params.iter().find_map(|p| match p {
            rsip::Param::Tag(t) => Some(t.to_string()),
            _ => None,
        });
        let host = match &uri.host_with_port.host {
            rsip::Host::Domain(d) => d.to_string(),
            rsip::Host::IpAddr(ip) => ip.to_string(),
        };
        if host.contains('@') || host.is_empty() {
            return None;
        }
        Some(NameAddr {
            display_name: display.as_deref().and_then(unquote_display),
            uri: raw_uri,
            user: uri.user().filter(|u| !u.is_empty()).map(str::to_string),
            host: Some(host),
            tag: tag.filter(|t| !t.is_empty()),
        })
    }

    fn raw_uri(value: &str) -> Option<String> {
        match super::find_laquot(value) {
            Some(lt) => {
                let after = value.get(lt + 1..)?;
                let gt = after.find('>')?;
                Some(after.get(..gt)?.trim().to_string())
            }
            None => Some(value.split(';').next()?.trim().to_string()),
        }
    }

    pub(super) fn cseq(value: &str) -> Option<(u32, Method)> {
        let t = rsip::headers::CSeq::new(value).typed().ok()?;
        Some((t.seq, Method::from_token(&t.method.to_string())))
    }

    /// `Some(branch)` when rsip parses the Via; the inner option is the branch.
    pub(super) fn via_branch(value: &str) -> Option<Option<String>> {
        let first = super::split_outside_quotes(value, b',').next()?;
        let t = rsip::headers::Via::new(first.trim()).typed().ok()?;
        Some(t.branch().map(|b| b.to_string()).filter(|b| !b.is_empty()))
    }
}

#[cfg(test)]
mod tests;
