//! The tolerant front end and the assembly shared by both parsers.
//!
//! In: the bytes of one message (or what the rsip front end cut out). Out:
//! a [`RawMessage`] (start line, headers, body) and from it the
//! [`SipMessage`]: start line, canonical header names, From/To/Call-ID/CSeq/
//! Via branch, Content-Type and the body by the module's body rule.
//! Promises: accepts LF-only line ends, folded headers, compact or
//! lower-case names, spaces before the colon, unknown methods; never panics.

use super::*;

/// Start line, headers and body as cut out by one of the two front ends.
pub(super) struct RawMessage<'a> {
    pub(super) start: StartLine,
    pub(super) headers: Vec<(String, String)>,
    /// Everything after the empty line.
    pub(super) rest: &'a [u8],
}

#[derive(Clone, Copy)]
pub(super) enum FieldParser {
    Rsip,
    Own,
}

/// Tolerant split: skips leading CR/LFs, accepts LF or CRLF line ends,
/// unfolds continuation lines, ignores header lines without a colon.
pub(super) fn split_tolerant(bytes: &[u8]) -> Result<RawMessage<'_>, SipError> {
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

pub(super) fn parse_start_line(line: &[u8]) -> Result<StartLine, SipError> {
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

pub(super) fn find_header<'a>(headers: &'a [(String, String)], canon: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == canon)
        .map(|(_, v)| v.as_str())
}

/// Turns a split message into a [`SipMessage`], parsing the fields the engine
/// needs with the chosen parser.
pub(super) fn assemble(raw: RawMessage<'_>, parser: FieldParser) -> Result<SipMessage, SipError> {
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
pub(super) fn body_slice(rest: &[u8], content_length: Option<usize>) -> &[u8] {
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
pub(super) fn normalize_content_type(v: &str) -> Option<String> {
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
pub(super) fn parse_cseq(v: &str) -> Option<(u32, Method)> {
    let mut parts = v.split_ascii_whitespace();
    let num: u32 = parts.next()?.parse().ok()?;
    let method = parts.next()?;
    if !method.bytes().all(is_token_byte) || parts.next().is_some() {
        return None;
    }
    Some((num, Method::from_token(method)))
}

/// `branch` of the first via-parm of a Via header value.
pub(super) fn via_branch(v: &str) -> Option<String> {
    let first = split_outside_quotes(v, b',').next()?;
    split_outside_quotes(first, b';').skip(1).find_map(|p| {
        let (k, val) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("branch")
            .then(|| val.trim().to_string())
            .filter(|s| !s.is_empty())
    })
}
