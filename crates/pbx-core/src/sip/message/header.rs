//! Header names and values: canonical names, quoted-string aware splitting,
//! name-addr (`"Name" <uri>;params`) and URI user/host.
//!
//! In: header names and values as text. Out: canonical long names, a
//! [`NameAddr`], a URI's user and host. Promises: never panics; unknown
//! names come back as written; a malformed value gives `None`, not a guess.

use super::*;

/// Canonical long form of a header name: compact forms expanded (RFC 3261
/// §7.3.3 and later RFCs), well-known names spelled as in their RFCs,
/// anything else returned as written.
pub fn canonical_header_name(name: &str) -> String {
    pub(super) const COMPACT: [(&str, &str); 20] = [
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
    pub(super) const KNOWN: [&str; 72] = [
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

/// Splits on `sep` outside double-quoted strings (backslash escapes honoured).
pub(super) fn split_outside_quotes(s: &str, sep: u8) -> impl Iterator<Item = &str> {
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
pub(super) fn find_laquot(s: &str) -> Option<usize> {
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
pub(super) fn unquote_display(s: &str) -> Option<String> {
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
pub(super) fn header_param(params: &str, name: &str) -> Option<String> {
    split_outside_quotes(params, b';').find_map(|p| {
        let (k, val) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| val.trim().trim_matches('"').to_string())
            .filter(|s| !s.is_empty())
    })
}

/// User and host of a `sip:`/`sips:` URI, or the number of a `tel:` URI.
/// A URI's user part with its `%XX` escapes (RFC 3261 §19.1.2:
/// `sip:%2B4930123@host` is the number `+4930123`) decoded; as written when
/// an escape is malformed or decodes to no text.
pub fn unescape_user(user: &str) -> String {
    if !user.contains('%') {
        return user.to_string();
    }
    let b = user.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                Some(v) => {
                    out.push(v);
                    i += 3;
                    continue;
                }
                None => return user.to_string(),
            }
        }
        out.push(b[i]);
        i += 1;
    }
    match String::from_utf8(out) {
        Ok(s) if !s.chars().any(char::is_control) => s,
        _ => user.to_string(),
    }
}

pub fn uri_user_host(uri: &str) -> (Option<String>, Option<String>) {
    let Some((scheme, rest)) = uri.split_once(':') else {
        return (None, None);
    };
    let scheme = scheme.trim();
    if scheme.eq_ignore_ascii_case("tel") {
        let number = rest.split(';').next().unwrap_or_default().trim();
        return ((!number.is_empty()).then(|| unescape_user(number)), None);
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
        .map(unescape_user);
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
