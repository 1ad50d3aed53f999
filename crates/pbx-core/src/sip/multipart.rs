//! `multipart/*` bodies (RFC 2046 §5.1), as SIPREC sends them (RFC 7866:
//! `multipart/mixed` with an `application/sdp` part and an
//! `application/rs-metadata+xml` part): the message's Content-Type and body
//! in, the parts with their own headers out.
//!
//! Tolerant: LF or CRLF line ends, trailing whitespace after a delimiter
//! (RFC 2046 transport padding), a missing close delimiter (the last part
//! runs to the end of the body), preamble and epilogue ignored, quoted
//! boundaries. Header names come out in canonical form, like
//! [`super::message::SipMessage::headers`].
//!
//! Bounded: at most [`MAX_PARTS`] parts and [`MAX_PART_HEADERS`] headers per
//! part; never panics.

use super::message::{canonical_header_name, is_token_byte, SipMessage};

/// Most parts accepted in one body.
pub const MAX_PARTS: usize = 32;
/// Most header fields accepted per part.
pub const MAX_PART_HEADERS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MultipartError {
    #[error("Content-Type has no usable boundary parameter")]
    NoBoundary,
    #[error("no delimiter line for the boundary found in the body")]
    NoParts,
    #[error("more than {MAX_PARTS} parts")]
    TooManyParts,
    #[error("a part has more than {MAX_PART_HEADERS} header fields")]
    TooManyHeaders,
}

/// One body part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// The part's header fields (canonical names, trimmed values).
    pub headers: Vec<(String, String)>,
    /// Lower-cased media type with params, like
    /// [`SipMessage::content_type`]; `None` when the part has none
    /// (RFC 2046 then means `text/plain`).
    pub content_type: Option<String>,
    /// The part's content, without the line break before the next delimiter.
    pub body: Vec<u8>,
}

impl Part {
    /// First header of that name (case-insensitive; compact forms accepted).
    pub fn header(&self, name: &str) -> Option<&str> {
        let canon = canonical_header_name(name.trim());
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(&canon))
            .map(|(_, v)| v.as_str())
    }

    /// Media type without params (`application/sdp`).
    pub fn media_type(&self) -> Option<&str> {
        self.content_type
            .as_deref()
            .map(|ct| ct.split(';').next().unwrap_or(ct).trim())
    }
}

impl SipMessage {
    /// The body's parts when the message is `multipart/*`; `None` otherwise.
    pub fn multipart(&self) -> Option<Result<Vec<Part>, MultipartError>> {
        let ct = self.content_type.as_deref()?;
        if !self.media_type()?.starts_with("multipart/") {
            return None;
        }
        Some(split_multipart(ct, &self.body))
    }

    /// The body of the first part (or of the whole message) whose media type
    /// is `media_type`, e.g. `application/sdp`.
    pub fn body_of_type(&self, media_type: &str) -> Option<Vec<u8>> {
        if self
            .media_type()
            .is_some_and(|t| t.eq_ignore_ascii_case(media_type))
        {
            return Some(self.body.clone());
        }
        let parts = self.multipart()?.ok()?;
        parts
            .into_iter()
            .find(|p| {
                p.media_type()
                    .is_some_and(|t| t.eq_ignore_ascii_case(media_type))
            })
            .map(|p| p.body)
    }
}

/// The `boundary` parameter of a Content-Type value, unquoted.
pub fn boundary(content_type: &str) -> Option<String> {
    content_type.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        if !k.trim().eq_ignore_ascii_case("boundary") {
            return None;
        }
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|x| x.strip_suffix('"'))
            .unwrap_or(v);
        (!v.is_empty() && v.len() <= 200).then(|| v.to_string())
    })
}

/// Splits a multipart body by the boundary given in `content_type`.
pub fn split_multipart(content_type: &str, body: &[u8]) -> Result<Vec<Part>, MultipartError> {
    let b = boundary(content_type).ok_or(MultipartError::NoBoundary)?;
    split_with_boundary(&b, body)
}

/// Splits a multipart body by a known boundary (without the leading `--`).
pub fn split_with_boundary(boundary: &str, body: &[u8]) -> Result<Vec<Part>, MultipartError> {
    let delim: Vec<u8> = [b"--".as_slice(), boundary.as_bytes()].concat();
    // Walk the lines, noting where each delimiter line starts and ends.
    let mut parts = Vec::new();
    let mut open: Option<usize> = None; // start of the current part's content
    let mut pos = 0;
    let mut closed = false;
    while pos < body.len() {
        let rest = body.get(pos..).unwrap_or_default();
        let (line_len, next) = match rest.iter().position(|c| *c == b'\n') {
            Some(i) => (i, pos + i + 1),
            None => (rest.len(), body.len()),
        };
        let line = rest.get(..line_len).unwrap_or_default();
        let trimmed = trim_end(line);
        let kind = if trimmed == delim.as_slice() {
            Some(false)
        } else if trimmed.strip_prefix(delim.as_slice()) == Some(b"--".as_slice()) {
            Some(true)
        } else {
            None
        };
        if let Some(is_close) = kind {
            if let Some(start) = open.take() {
                // Content ends before the line break preceding this line.
                let end = strip_trailing_newline(body, start, pos);
                parts.push(make_part(body.get(start..end).unwrap_or_default())?);
                if parts.len() > MAX_PARTS {
                    return Err(MultipartError::TooManyParts);
                }
            }
            if is_close {
                closed = true;
                break;
            }
            open = Some(next);
        }
        pos = next;
    }
    if !closed {
        if let Some(start) = open {
            // No close delimiter: the last part runs to the end.
            let content = body.get(start..).unwrap_or_default();
            let end = start + trim_end(content).len();
            parts.push(make_part(body.get(start..end).unwrap_or_default())?);
            if parts.len() > MAX_PARTS {
                return Err(MultipartError::TooManyParts);
            }
        }
    }
    if parts.is_empty() {
        return Err(MultipartError::NoParts);
    }
    Ok(parts)
}

fn trim_end(s: &[u8]) -> &[u8] {
    let end = s
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    s.get(..end).unwrap_or_default()
}

/// `end` is the start of a delimiter line; drop the CRLF or LF before it.
fn strip_trailing_newline(body: &[u8], start: usize, end: usize) -> usize {
    let mut e = end;
    if e > start && body.get(e - 1) == Some(&b'\n') {
        e -= 1;
        if e > start && body.get(e - 1) == Some(&b'\r') {
            e -= 1;
        }
    }
    e
}

/// Part headers up to the first empty line, then the content.
fn make_part(raw: &[u8]) -> Result<Part, MultipartError> {
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut pos = 0;
    let mut body_start = None;
    while pos < raw.len() {
        let rest = raw.get(pos..).unwrap_or_default();
        let (line, next) = match rest.iter().position(|c| *c == b'\n') {
            Some(i) => (rest.get(..i).unwrap_or_default(), pos + i + 1),
            None => (rest, raw.len()),
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            body_start = Some(next);
            break;
        }
        let text = String::from_utf8_lossy(line);
        if line.first().is_some_and(|c| *c == b' ' || *c == b'\t') {
            if let Some((_, v)) = headers.last_mut() {
                v.push(' ');
                v.push_str(text.trim());
            }
        } else if let Some((name, value)) = text
            .split_once(':')
            .filter(|(n, _)| !n.trim().is_empty() && n.trim().bytes().all(is_token_byte))
        {
            if headers.len() >= MAX_PART_HEADERS {
                return Err(MultipartError::TooManyHeaders);
            }
            headers.push((canonical_header_name(name.trim()), value.trim().to_string()));
        } else {
            // Not a header: the part has no header block, all of it is content.
            headers.clear();
            body_start = Some(0);
            break;
        }
        pos = next;
    }
    let body = raw
        .get(body_start.unwrap_or(raw.len())..)
        .unwrap_or_default()
        .to_vec();
    let content_type = headers
        .iter()
        .find(|(n, _)| n == "Content-Type")
        .and_then(|(_, v)| normalize(v));
    Ok(Part {
        headers,
        content_type,
        body,
    })
}

fn normalize(v: &str) -> Option<String> {
    let mut parts = v.split(';');
    let mut out = parts.next()?.trim().to_ascii_lowercase();
    if out.is_empty() {
        return None;
    }
    for p in parts.map(str::trim).filter(|p| !p.is_empty()) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::parse_message;
    use crate::sip::sdp::parse_sdp;
    use crate::sip::test_support::*;
    use proptest::prelude::*;

    const BODY: &str = "preamble\r\n--XX\r\nContent-Type: application/sdp\r\n\r\nv=0\r\nm=audio 4000 RTP/AVP 0\r\n\
--XX\r\nContent-Type: Application/RS-Metadata+XML\r\nContent-Disposition: recording-session\r\n\r\n<x/>\r\n\
--XX--\r\nepilogue";

    #[test]
    fn splits_two_parts() {
        let parts = split_multipart("multipart/mixed;boundary=XX", BODY.as_bytes()).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].media_type(), Some("application/sdp"));
        assert_eq!(parts[0].body, b"v=0\r\nm=audio 4000 RTP/AVP 0");
        assert_eq!(parts[1].media_type(), Some("application/rs-metadata+xml"));
        assert_eq!(
            parts[1].header("content-disposition"),
            Some("recording-session")
        );
        assert_eq!(parts[1].body, b"<x/>");
    }

    #[test]
    fn lf_quoted_boundary_padding_and_missing_close() {
        let body = "--b c\nContent-Type: text/plain\n\nhello\n--b c   \n\nno headers\n";
        let parts = split_multipart("multipart/mixed; boundary=\"b c\"", body.as_bytes()).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].body, b"hello");
        assert!(parts[1].headers.is_empty());
        assert_eq!(parts[1].content_type, None);
        assert_eq!(parts[1].body, b"no headers");
        // A boundary that appears mid-line is not a delimiter.
        let body = "--q\r\n\r\nx --q y\r\n--q--";
        let parts = split_with_boundary("q", body.as_bytes()).unwrap();
        assert_eq!(parts[0].body, b"x --q y");
    }

    #[test]
    fn errors() {
        assert_eq!(
            split_multipart("multipart/mixed", BODY.as_bytes()),
            Err(MultipartError::NoBoundary)
        );
        assert_eq!(
            split_multipart("multipart/mixed;boundary=YY", BODY.as_bytes()),
            Err(MultipartError::NoParts)
        );
        let many = "--z\r\n\r\nx\r\n".repeat(MAX_PARTS + 1);
        assert_eq!(
            split_with_boundary("z", many.as_bytes()),
            Err(MultipartError::TooManyParts)
        );
    }

    #[test]
    fn message_helpers() {
        let msg = format!(
            "INVITE sip:srs@h SIP/2.0\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:srs@h>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\
Content-Type: multipart/mixed;boundary=XX\r\nContent-Length: {}\r\n\r\n{BODY}",
            BODY.len()
        );
        let m = parse_message(msg.as_bytes()).unwrap();
        assert_eq!(m.multipart().unwrap().unwrap().len(), 2);
        let sdp = m.body_of_type("application/sdp").unwrap();
        assert!(parse_sdp(&String::from_utf8_lossy(&sdp)).is_ok());
        assert_eq!(
            m.body_of_type("application/rs-metadata+xml").unwrap(),
            b"<x/>"
        );
        assert_eq!(m.body_of_type("image/png"), None);
        assert_eq!(m.sdp().unwrap().unwrap().media[0].port, 4000);
    }

    /// Every SIPREC sample of the corpus splits into an SDP that parses and
    /// a metadata XML part.
    #[test]
    fn corpus_siprec_bodies() {
        let Some(dir) = corpus_dir() else { return };
        let mut n = 0;
        for entry in std::fs::read_dir(dir.join("siprec")).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if !name.ends_with(".txt") {
                continue;
            }
            let raw = fill_sipp_template(&std::fs::read_to_string(&path).unwrap());
            let parts = if name.starts_with("invite_") {
                let m = parse_message(raw.as_bytes()).unwrap();
                m.multipart().expect("multipart").unwrap()
            } else {
                // Body-only files: the boundary is the first `--` line.
                let first = raw.lines().find(|l| l.starts_with("--")).unwrap();
                split_with_boundary(first.trim_end().trim_start_matches('-'), raw.as_bytes())
                    .unwrap()
            };
            assert!(parts.len() >= 2, "{name}");
            let sdp = parts
                .iter()
                .find(|p| p.media_type() == Some("application/sdp"))
                .unwrap_or_else(|| panic!("{name}: no sdp part"));
            let s = parse_sdp(&String::from_utf8_lossy(&sdp.body)).unwrap();
            assert_eq!(s.media.len(), 2, "{name}");
            let meta = parts
                .iter()
                .find(|p| {
                    p.media_type()
                        .is_some_and(|t| t.starts_with("application/rs-metadata"))
                })
                .unwrap_or_else(|| panic!("{name}: no metadata part"));
            let xml = String::from_utf8_lossy(&meta.body);
            assert!(xml.trim_start().starts_with("<?xml"), "{name}");
            assert!(xml.trim_end().ends_with('>'), "{name}");
            n += 1;
        }
        assert_eq!(n, 6);
    }

    proptest! {
        #[test]
        fn never_panics(body in proptest::collection::vec(any::<u8>(), 0..600), b in "[a-z-]{1,5}") {
            let _ = split_with_boundary(&b, &body);
        }

        #[test]
        fn round_trip(contents in proptest::collection::vec("[a-z0-9 =\r\n]{0,30}", 1..6)) {
            let mut body = String::new();
            for c in &contents {
                body.push_str("--BND\r\nContent-Type: text/plain\r\n\r\n");
                body.push_str(c);
                body.push_str("\r\n");
            }
            body.push_str("--BND--\r\n");
            let parts = split_with_boundary("BND", body.as_bytes()).unwrap();
            prop_assert_eq!(parts.len(), contents.len());
            for (p, c) in parts.iter().zip(&contents) {
                prop_assert_eq!(&p.body, c.as_bytes());
            }
        }
    }
}
