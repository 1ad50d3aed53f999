//! SIP for the call engine: bytes in, plain structs out (no `rsip` types leak).
//!
//! - [`message`]: one complete SIP message → [`SipMessage`] (rsip first, a
//!   tolerant parser of our own where rsip refuses a real device's message).
//! - [`stream`]: SIP over TCP → one message's bytes at a time (RFC 3261 §18.3
//!   framing by Content-Length, resync after garbage or lost bytes).
//! - [`sdp`]: session descriptions → [`SessionDescription`] (codecs, ports,
//!   direction, hold, SRTP crypto lines).
//! - [`multipart`]: `multipart/mixed` bodies (SIPREC: SDP + rs-metadata) →
//!   parts with their own headers.
//! - [`limits`]: how a request over a limit (or malformed) is answered
//!   (513 / 400 / 488 with a Warning naming the limit).
//!
//! Everything here is bounded (64 KiB per message, 256 headers, 70 Vias)
//! and never panics on input.

pub mod limits;
pub mod message;
pub mod multipart;
pub mod sdp;
pub mod siprec;
pub mod stream;
pub mod uas;

#[cfg(test)]
pub(crate) mod test_support;

pub use limits::Refusal;
pub use message::{
    looks_like_sip, may_begin_sip, parse_message, salvage_request, Method, NameAddr, SipError,
    SipMessage, StartLine,
};
pub use multipart::{split_multipart, MultipartError, Part};
pub use sdp::{
    parse_sdp, Crypto, Direction, MediaDescription, RtpMap, SdpError, SessionDescription,
};
pub use stream::{Frame, SipStreamFramer};
