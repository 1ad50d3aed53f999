//! Salvage: a request [`super::parse_message`] refused (over a limit,
//! malformed) → just what a response to it needs.
//!
//! In: the raw bytes. Out: a [`SipMessage`] with the request line and the
//! Via, From, To, Call-ID and CSeq headers only. Promises: bounded (at most
//! [`super::MAX_VIAS`] Via values, each value at most
//! [`super::MAX_SALVAGED_VALUE`] bytes), linear in the input, never panics.

use super::*;

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
        // Measured as kept: each byte that is not UTF-8 becomes U+FFFD,
        // three bytes.
        let value = String::from_utf8_lossy(value).into_owned();
        if value.len() > MAX_SALVAGED_VALUE {
            continue;
        }
        let canon = canonical_header_name(&String::from_utf8_lossy(trim_bytes(name)));
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
