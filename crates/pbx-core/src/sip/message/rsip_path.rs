//! The rsip front end: only used where it accepts the message; any refusal
//! sends the message to the tolerant parser.

use super::{unescape_user, unquote_display, Method, NameAddr, RawMessage, StartLine, MAX_HEADERS};
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
        user: uri.user().filter(|u| !u.is_empty()).map(unescape_user),
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
