//! Every request answered: what a SIP server answers to a request it will
//! not take because it is over one of the limits (or malformed), so the
//! sender stops retransmitting into silence and its operator reads why.
//!
//! In: the error of [`super::message::parse_message`] or of the TCP framer
//! ([`super::stream::Frame::Refused`]), or of [`super::siprec::siprec_parts`]
//! for an INVITE body. Out: a [`Refusal`]: status code, reason phrase, the
//! text of a `Warning: 399 pbx-edge "…"` header naming the limit, and a short
//! label for metrics.
//!
//! | limit | constant | answer |
//! |---|---|---|
//! | message size (UDP datagram, TCP header block or Content-Length) | [`MAX_MESSAGE_LEN`] | `513 Message Too Large` |
//! | header fields | [`MAX_HEADERS`] | `400 Too Many Headers` |
//! | Via values | [`MAX_VIAS`] | `400 Too Many Via Headers` |
//! | Content-Length not a number (TCP: framing lost, connection closed) | | `400 Bad Content-Length` |
//! | other malformed fields (From, To, CSeq, ...) | | `400 Bad Request` |
//! | SDP size, m-lines | [`MAX_SDP_LEN`], [`MAX_MEDIA`] | `488 Not Acceptable Here` |
//! | metadata size, elements, depth, participants, streams | [`MAX_METADATA_LEN`], ... | `488 Not Acceptable Here` |
//! | multipart parts and part headers | [`MAX_PARTS`], [`MAX_PART_HEADERS`] | `488 Not Acceptable Here` |
//!
//! The Warning text says which limit and the size found, never the content
//! of the request (it is personal data): it is built from our own error
//! messages, stripped of quotes, backslashes and control characters, at most
//! [`MAX_WARNING_TEXT`] characters.
//!
//! Whether a refused request can be answered at all is
//! [`super::message::salvage_request`]'s call (no Via, Call-ID or CSeq: no
//! answer); the UAS sends the answer ([`super::uas::Uas::refuse`]).
//!
//! [`MAX_MESSAGE_LEN`]: super::message::MAX_MESSAGE_LEN
//! [`MAX_HEADERS`]: super::message::MAX_HEADERS
//! [`MAX_VIAS`]: super::message::MAX_VIAS
//! [`MAX_SDP_LEN`]: super::sdp::MAX_SDP_LEN
//! [`MAX_MEDIA`]: super::sdp::MAX_MEDIA
//! [`MAX_METADATA_LEN`]: super::siprec::MAX_METADATA_LEN
//! [`MAX_PARTS`]: super::multipart::MAX_PARTS
//! [`MAX_PART_HEADERS`]: super::multipart::MAX_PART_HEADERS

use super::message::{SipError, MAX_MESSAGE_LEN};
use super::multipart::MultipartError;
use super::sdp::SdpError;
use super::siprec::SiprecError;

/// Longest Warning text sent.
pub const MAX_WARNING_TEXT: usize = 160;

/// How a refused request is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: u16,
    pub reason: &'static str,
    /// Which limit or rule, for the Warning header (already sanitized).
    pub warning: String,
    /// Short label for metrics: `too_large`, `too_many_headers`,
    /// `too_many_vias`, `bad_content_length`, `bad_request`, `sdp_limit`,
    /// `metadata_limit`, `body_limit`, `not_acceptable`.
    pub kind: &'static str,
}

impl Refusal {
    fn new(code: u16, reason: &'static str, kind: &'static str, text: &str) -> Refusal {
        Refusal {
            code,
            reason,
            warning: sanitize(text),
            kind,
        }
    }

    /// The answer to a message [`super::message::parse_message`] or the TCP
    /// framer refused. `None` for errors that are not about a request one
    /// could answer (an empty message, a framer buffer overflow).
    pub fn for_sip_error(e: &SipError) -> Option<Refusal> {
        Some(match e {
            SipError::TooLarge(n) => Refusal::new(
                513,
                "Message Too Large",
                "too_large",
                &format!(
                    "message of {} bytes exceeds the {MAX_MESSAGE_LEN}-byte limit",
                    size_text(*n)
                ),
            ),
            SipError::TooManyHeaders => {
                Refusal::new(400, "Too Many Headers", "too_many_headers", &e.to_string())
            }
            SipError::TooManyVias(_) => {
                Refusal::new(400, "Too Many Via Headers", "too_many_vias", &e.to_string())
            }
            SipError::BadHeader("Content-Length") => Refusal::new(
                400,
                "Bad Content-Length",
                "bad_content_length",
                "Content-Length is not a number",
            ),
            SipError::BadHeader(_) | SipError::MissingHeader(_) | SipError::BadStartLine => {
                Refusal::new(400, "Bad Request", "bad_request", &e.to_string())
            }
            SipError::Empty | SipError::BufferOverflow => return None,
        })
    }

    /// The answer to an INVITE / re-INVITE / UPDATE whose body cannot be
    /// taken (always 488; the label tells a limit from a plain bad offer).
    pub fn for_offer(e: &SiprecError) -> Refusal {
        let kind = match e {
            SiprecError::Sdp(SdpError::TooManyMedia | SdpError::TooLarge(_)) => "sdp_limit",
            SiprecError::TooLarge(_)
            | SiprecError::TooDeep
            | SiprecError::TooManyElements
            | SiprecError::TooManyParticipants
            | SiprecError::TooManyStreams
            | SiprecError::TooManyAssociations
            | SiprecError::DtdRefused => "metadata_limit",
            SiprecError::Multipart(
                MultipartError::TooManyParts | MultipartError::TooManyHeaders,
            ) => "body_limit",
            _ => "not_acceptable",
        };
        Refusal::new(488, "Not Acceptable Here", kind, &e.to_string())
    }

    /// The Warning header's value: `399 pbx-edge "text"` (RFC 3261 §20.43;
    /// the warn-agent is a pseudonym, our host names are not needed).
    pub fn warning_value(&self) -> String {
        warning_value(&self.warning)
    }
}

/// A Warning header's value saying `text` (sanitized): `399 pbx-edge "text"`.
pub fn warning_value(text: &str) -> String {
    format!("399 pbx-edge \"{}\"", sanitize(text))
}

/// `18446744073709551615` is not a size anyone sent: say "more than" instead.
fn size_text(n: usize) -> String {
    if n == usize::MAX {
        format!("more than {}", u64::MAX)
    } else {
        n.to_string()
    }
}

/// Printable ASCII without `"` and `\` (a quoted-string needs no escapes),
/// at most [`MAX_WARNING_TEXT`] characters.
fn sanitize(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '"' | '\\' => '\'',
            c if c.is_ascii_graphic() || c == ' ' => c,
            _ => '?',
        })
        .take(MAX_WARNING_TEXT)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::{MAX_HEADERS, MAX_VIAS};
    use crate::sip::sdp::MAX_MEDIA;
    use crate::sip::siprec::MAX_METADATA_LEN;

    #[test]
    fn each_limit_has_its_answer_and_warning() {
        let r = Refusal::for_sip_error(&SipError::TooLarge(2_000_000_000)).unwrap();
        assert_eq!(
            (r.code, r.reason, r.kind),
            (513, "Message Too Large", "too_large")
        );
        assert_eq!(
            r.warning_value(),
            "399 pbx-edge \"message of 2000000000 bytes exceeds the 65536-byte limit\""
        );
        let r = Refusal::for_sip_error(&SipError::TooLarge(usize::MAX)).unwrap();
        assert!(
            r.warning.contains("more than 18446744073709551615"),
            "{r:?}"
        );
        let r = Refusal::for_sip_error(&SipError::TooManyHeaders).unwrap();
        assert_eq!((r.code, r.kind), (400, "too_many_headers"));
        assert!(r.warning.contains(&MAX_HEADERS.to_string()));
        let r = Refusal::for_sip_error(&SipError::TooManyVias(1000)).unwrap();
        assert_eq!((r.code, r.reason), (400, "Too Many Via Headers"));
        assert!(r.warning.contains("1000") && r.warning.contains(&MAX_VIAS.to_string()));
        let r = Refusal::for_sip_error(&SipError::BadHeader("Content-Length")).unwrap();
        assert_eq!((r.code, r.kind), (400, "bad_content_length"));
        let r = Refusal::for_sip_error(&SipError::MissingHeader("From")).unwrap();
        assert_eq!(
            (r.code, r.reason, r.kind),
            (400, "Bad Request", "bad_request")
        );
        assert_eq!(Refusal::for_sip_error(&SipError::Empty), None);
        assert_eq!(Refusal::for_sip_error(&SipError::BufferOverflow), None);

        let r = Refusal::for_offer(&SiprecError::Sdp(SdpError::TooManyMedia));
        assert_eq!((r.code, r.kind), (488, "sdp_limit"));
        assert!(
            r.warning.contains(&format!("more than {MAX_MEDIA} media")),
            "{r:?}"
        );
        let r = Refusal::for_offer(&SiprecError::TooLarge(700_000));
        assert_eq!((r.code, r.kind), (488, "metadata_limit"));
        assert!(r.warning.contains(&MAX_METADATA_LEN.to_string()));
        let r = Refusal::for_offer(&SiprecError::Multipart(MultipartError::TooManyParts));
        assert_eq!((r.code, r.kind), (488, "body_limit"));
        let r = Refusal::for_offer(&SiprecError::NoAudio);
        assert_eq!((r.code, r.kind), (488, "not_acceptable"));
    }

    #[test]
    fn warning_text_cannot_break_the_header() {
        let r = Refusal::for_offer(&SiprecError::Xml(
            "bad \"tag\"\r\nVia: evil\\ \u{e9}".repeat(40),
        ));
        assert!(r.warning.len() <= MAX_WARNING_TEXT);
        assert!(
            !r.warning.contains(['"', '\\', '\r', '\n']),
            "{}",
            r.warning
        );
        assert!(r.warning.is_ascii());
    }
}
