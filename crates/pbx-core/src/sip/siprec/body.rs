//! Body extraction: a SIPREC request → its SDP offer and its metadata.
//!
//! In: a [`SipMessage`] (or its already split multipart [`Part`]s). Out:
//! the SDP offer and, when present, the metadata bytes. Promises: accepts
//! `application/rs-metadata+xml`, the older `application/rs-metadata` or
//! any part with `Content-Disposition: recording-session`; vendor parts
//! (Cisco `application/gtd`, ...) are ignored; a plain SDP body gives no
//! metadata.

use super::*;

/// Is this part the recording metadata?
pub(super) fn is_metadata_part(p: &Part) -> bool {
    let mt = p.media_type().unwrap_or_default();
    if mt.eq_ignore_ascii_case("application/rs-metadata+xml")
        || mt.eq_ignore_ascii_case("application/rs-metadata")
    {
        return true;
    }
    let disposition = p
        .header("Content-Disposition")
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim();
    disposition.eq_ignore_ascii_case("recording-session") && mt.ends_with("xml")
}

/// The SDP offer and recording metadata of a SIPREC request (INVITE,
/// re-INVITE or UPDATE). `Ok((sdp, None))` when the body is plain SDP or the
/// multipart body has no metadata part. A metadata part that does not parse
/// is an error (the caller may still use `msg.sdp()` and record without it).
pub fn siprec_parts(
    msg: &SipMessage,
) -> Result<(SessionDescription, Option<RecordingSession>), SiprecError> {
    let media_type = msg.media_type().unwrap_or_default().to_ascii_lowercase();
    if media_type.starts_with("multipart/") {
        let ct = msg.content_type.as_deref().unwrap_or_default();
        let parts = crate::sip::multipart::split_multipart(ct, &msg.body)?;
        return parts_to_siprec(&parts);
    }
    if media_type == "application/sdp" {
        let sdp = parse_sdp(&String::from_utf8_lossy(&msg.body))?;
        return Ok((sdp, None));
    }
    Err(SiprecError::NoSdp)
}

/// The recording metadata of a request that carries no SDP (RFC 7866 §9.1:
/// an UPDATE or re-INVITE may carry only metadata, as the whole body or
/// as the only part of a multipart body). `Ok(None)` when there is none.
pub fn metadata_without_sdp(msg: &SipMessage) -> Result<Option<RecordingSession>, SiprecError> {
    let media_type = msg.media_type().unwrap_or_default().to_ascii_lowercase();
    if media_type.starts_with("multipart/") {
        let ct = msg.content_type.as_deref().unwrap_or_default();
        let parts = crate::sip::multipart::split_multipart(ct, &msg.body)?;
        return match parts.iter().find(|p| is_metadata_part(p)) {
            Some(p) => Ok(Some(parse_metadata(&p.body)?)),
            None => Ok(None),
        };
    }
    if media_type == "application/rs-metadata+xml" || media_type == "application/rs-metadata" {
        return Ok(Some(parse_metadata(&msg.body)?));
    }
    Ok(None)
}

/// [`siprec_parts`] on already split parts (e.g. from
/// [`crate::sip::multipart::split_multipart`]).
pub fn parts_to_siprec(
    parts: &[Part],
) -> Result<(SessionDescription, Option<RecordingSession>), SiprecError> {
    let sdp_part = parts
        .iter()
        .find(|p| {
            p.media_type()
                .is_some_and(|t| t.eq_ignore_ascii_case("application/sdp"))
        })
        .ok_or(SiprecError::NoSdp)?;
    let sdp = parse_sdp(&String::from_utf8_lossy(&sdp_part.body))?;
    let meta = match parts.iter().find(|p| is_metadata_part(p)) {
        Some(p) => Some(parse_metadata(&p.body)?),
        None => None,
    };
    Ok((sdp, meta))
}

/// Does the request look like RFC 7866 asks a recording INVITE to look:
/// `siprec` in Require (or Supported) and `+sip.src` on the Contact? The
/// shell may accept requests without (drachtio's template has neither).
pub fn is_siprec_request(msg: &SipMessage) -> bool {
    let tag = |name: &str| {
        msg.headers_named(name).any(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("siprec"))
        })
    };
    let src = msg.headers_named("Contact").any(|v| {
        v.split(';')
            .skip(1)
            .any(|p| p.trim().to_ascii_lowercase().starts_with("+sip.src"))
    });
    (tag("Require") || tag("Supported")) && src
}
