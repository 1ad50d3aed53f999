//! RTP for the call engine: UDP payload bytes in, borrowed [`RtpPacket`]
//! views out (RFC 3550 §5.1), plus the small tools every RTP consumer needs:
//!
//! - [`is_rtcp`] / [`is_probably_rtp`]: classify a datagram (RFC 5761 §4
//!   demultiplexing rule, so rtcp-mux streams sort correctly).
//! - [`parse_telephone_event`] / [`event_to_digit`]: RFC 4733 DTMF events.
//! - [`SeqTracker`]: extended sequence numbers with loss and duplicate counts
//!   (the one tracker: the call engine's).
//! - [`TsUnwrapper`]: 32-bit RTP timestamps extended to `i64` across wraps.
//!
//! Promises: parsing borrows (no copies of payloads), validates every length
//! field against the buffer, returns an [`RtpError`] for malformed input and
//! never panics. The trackers use constant memory however long the stream.

mod seq;
pub mod srtp;

pub use seq::{SeqTracker, SeqUpdate, TsUnwrapper};

/// Why bytes are not a valid RTP packet / telephone event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RtpError {
    #[error("packet too short: {0} bytes")]
    TooShort(usize),
    #[error("RTP version {0}, expected 2")]
    BadVersion(u8),
    #[error("CSRC list or header extension runs past the packet end")]
    BadHeaderLength,
    #[error("padding length {0} invalid for the packet")]
    BadPadding(u8),
    #[error("telephone-event payload too short: {0} bytes")]
    EventTooShort(usize),
}

/// A parsed RTP packet borrowing the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpPacket<'a> {
    pub marker: bool,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    pub csrc_count: u8,
    /// The CSRC list, `4 * csrc_count` bytes (see [`RtpPacket::csrcs`]).
    pub csrc_list: &'a [u8],
    /// Header extension: profile-defined 16 bits and its data (RFC 3550 §5.3.1;
    /// RFC 8285 one-byte 0xBEDE / two-byte 0x100x forms are not split here).
    pub extension: Option<(u16, &'a [u8])>,
    /// The payload, padding removed.
    pub payload: &'a [u8],
    /// Padding bytes removed from the end (0 when the P bit is clear).
    pub padding: u8,
}

impl RtpPacket<'_> {
    /// The contributing sources.
    pub fn csrcs(&self) -> impl Iterator<Item = u32> + '_ {
        self.csrc_list
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes([
        *b.get(at)?,
        *b.get(at + 1)?,
        *b.get(at + 2)?,
        *b.get(at + 3)?,
    ]))
}

/// Parses an RTP packet. Version must be 2; the CSRC list, header extension
/// and padding must fit the buffer. It does not reject RTCP: classify with
/// [`is_rtcp`] first on rtcp-mux ports.
pub fn parse_rtp(bytes: &[u8]) -> Result<RtpPacket<'_>, RtpError> {
    let short = RtpError::TooShort(bytes.len());
    let (Some(&b0), Some(&b1)) = (bytes.first(), bytes.get(1)) else {
        return Err(short);
    };
    if bytes.len() < 12 {
        return Err(short);
    }
    let version = b0 >> 6;
    if version != 2 {
        return Err(RtpError::BadVersion(version));
    }
    let has_padding = b0 & 0x20 != 0;
    let has_extension = b0 & 0x10 != 0;
    let csrc_count = b0 & 0x0f;
    let sequence = be16(bytes, 2).ok_or(short)?;
    let timestamp = be32(bytes, 4).ok_or(short)?;
    let ssrc = be32(bytes, 8).ok_or(short)?;
    let mut pos = 12 + 4 * usize::from(csrc_count);
    let csrc_list = bytes.get(12..pos).ok_or(RtpError::BadHeaderLength)?;
    let extension = if has_extension {
        let profile = be16(bytes, pos).ok_or(RtpError::BadHeaderLength)?;
        let words = be16(bytes, pos + 2).ok_or(RtpError::BadHeaderLength)?;
        let start = pos + 4;
        let end = start + 4 * usize::from(words);
        let data = bytes.get(start..end).ok_or(RtpError::BadHeaderLength)?;
        pos = end;
        Some((profile, data))
    } else {
        None
    };
    let mut payload = bytes.get(pos..).ok_or(RtpError::BadHeaderLength)?;
    let mut padding = 0;
    if has_padding {
        // The last byte counts the padding, itself included (RFC 3550 §5.1).
        let count = *payload.last().ok_or(RtpError::BadPadding(0))?;
        if count == 0 || usize::from(count) > payload.len() {
            return Err(RtpError::BadPadding(count));
        }
        payload = payload
            .get(..payload.len() - usize::from(count))
            .ok_or(RtpError::BadPadding(count))?;
        padding = count;
    }
    Ok(RtpPacket {
        marker: b1 & 0x80 != 0,
        payload_type: b1 & 0x7f,
        sequence,
        timestamp,
        ssrc,
        csrc_count,
        csrc_list,
        extension,
        payload,
        padding,
    })
}

/// RFC 5761 §4: version 2 and the second byte in 192..=223 (RTCP packet
/// types FIR..IDMS, which as RTP would be marker + PT 64..=95). Covers SR,
/// RR, SDES, BYE, APP, RTPFB, PSFB, XR. At least 8 bytes (every RTCP packet
/// that starts a compound packet carries an SSRC).
pub fn is_rtcp(bytes: &[u8]) -> bool {
    bytes.len() >= 8
        && bytes.first().is_some_and(|b| b >> 6 == 2)
        && bytes.get(1).is_some_and(|b| (192..=223).contains(b))
}

/// Version 2, at least 12 bytes, second byte outside the RTCP range, and
/// the CSRC list (and header extension, if flagged) fit. STUN, DTLS and
/// ZRTP all fail the version test.
pub fn is_probably_rtp(bytes: &[u8]) -> bool {
    let (Some(&b0), Some(&b1)) = (bytes.first(), bytes.get(1)) else {
        return false;
    };
    if bytes.len() < 12 || b0 >> 6 != 2 || (192..=223).contains(&b1) {
        return false;
    }
    let pos = 12 + 4 * usize::from(b0 & 0x0f);
    if b0 & 0x10 != 0 {
        match be16(bytes, pos + 2) {
            Some(words) => pos + 4 + 4 * usize::from(words) <= bytes.len(),
            None => false,
        }
    } else {
        pos <= bytes.len()
    }
}

/// An RFC 4733 §2.3 telephone-event payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelephoneEvent {
    /// Event code (0-9, 10 = `*`, 11 = `#`, 12-15 = A-D, 16 = flash, ...).
    pub event: u8,
    /// E bit: this is (a retransmission of) the event's last packet.
    pub end: bool,
    /// Power level in -dBm0 (0..=63).
    pub volume: u8,
    /// Duration so far, in RTP clock units of the accompanying audio.
    pub duration: u16,
}

/// Decodes the first 4 bytes of a telephone-event payload. RFC 2198
/// redundancy or several events in one packet are not split: the first
/// event block is returned.
pub fn parse_telephone_event(payload: &[u8]) -> Result<TelephoneEvent, RtpError> {
    let (Some(&event), Some(&flags), Some(duration)) =
        (payload.first(), payload.get(1), be16(payload, 2))
    else {
        return Err(RtpError::EventTooShort(payload.len()));
    };
    Ok(TelephoneEvent {
        event,
        end: flags & 0x80 != 0,
        volume: flags & 0x3f,
        duration,
    })
}

/// The DTMF character of an RFC 4733 §3.2 event: 0-9 → `'0'..='9'`, 10 →
/// `'*'`, 11 → `'#'`, 12-15 → `'A'..='D'`, 16 (hook flash) → `'F'`
/// (not a key: the recording JSON shows it as "F"). Anything else → `None`.
pub fn event_to_digit(event: u8) -> Option<char> {
    match event {
        0..=9 => Some(char::from(b'0' + event)),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some(char::from(b'A' + (event - 12))),
        16 => Some('F'),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
