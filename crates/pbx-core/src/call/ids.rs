//! The identifiers a PBX gives a call, read from SIP headers, for the
//! recording's `ids` (CONTRACT §3): what a cloud dedupes and joins on.
//!
//! In: a SIP request of the call (the initial INVITE, later requests add
//! what it lacked). Out: `name → value` pairs, names from CONTRACT §3:
//! - `asterisk_uniqueid`, `asterisk_linkedid`: `X-Asterisk-Uniqueid`,
//!   `X-Asterisk-Linkedid` (also `X-Uniqueid`, `X-Linkedid`), as a dialplan
//!   adds them (`PJSIP_HEADER(add,…)=${UNIQUEID}`);
//! - `cisco_guid`: `Cisco-Guid` (CUCM, CUBE);
//! - `session_id`: the RFC 7989 `Session-ID` (CUCM, CUBE, Polycom, …): the
//!   sender's UUID, the part before `;remote=` (32 hex digits; the nil UUID
//!   is no id);
//! - `avaya_ucid`: `X-UCID`, or the UCID in a `User-to-User` header (hex,
//!   Avaya's `FA 08` element: 2-byte node, 2-byte sequence, 4-byte time,
//!   written as 20 digits).
//!
//! Values are kept only when short and printable (at most 128 characters,
//! no control characters): they end up in JSON and file listings.

use std::collections::BTreeMap;

use crate::sip::SipMessage;

/// Header names (lower case) → id name.
const HEADERS: &[(&str, &str)] = &[
    ("x-asterisk-uniqueid", "asterisk_uniqueid"),
    ("x-uniqueid", "asterisk_uniqueid"),
    ("x-asterisk-linkedid", "asterisk_linkedid"),
    ("x-linkedid", "asterisk_linkedid"),
    ("cisco-guid", "cisco_guid"),
    ("x-ucid", "avaya_ucid"),
];

fn clean(v: &str) -> Option<String> {
    let v = v.trim();
    (!v.is_empty() && v.len() <= 128 && !v.chars().any(char::is_control)).then(|| v.to_string())
}

/// Add the ids `msg` carries to `ids` (an id already known is kept).
pub fn collect(msg: &SipMessage, ids: &mut BTreeMap<String, String>) {
    for (name, value) in &msg.headers {
        let lower = name.to_ascii_lowercase();
        if let Some((_, id)) = HEADERS.iter().find(|(h, _)| *h == lower) {
            if let Some(v) = clean(value) {
                ids.entry((*id).to_string()).or_insert(v);
            }
        } else if lower == "session-id" {
            if let Some(u) = session_uuid(value) {
                ids.entry("session_id".to_string()).or_insert(u);
            }
        } else if lower == "user-to-user" {
            if let Some(u) = ucid_from_uui(value) {
                ids.entry("avaya_ucid".to_string()).or_insert(u);
            }
        }
    }
}

/// The sender's UUID of an RFC 7989 `Session-ID` value
/// (`ab30317f1a784dc48ff824d0d3715d86;remote=…`), lower case; `None` for
/// anything else and for the nil UUID (sent before the peer's is known).
pub fn session_uuid(value: &str) -> Option<String> {
    let u = value.split(';').next()?.trim();
    (u.len() == 32 && u.bytes().all(|b| b.is_ascii_hexdigit()) && u.bytes().any(|b| b != b'0'))
        .then(|| u.to_ascii_lowercase())
}

/// Avaya's UCID from a `User-to-User` value (`00FA08…;encoding=hex`): the
/// 8 bytes after the `FA 08` element tag, as 5 + 5 + 10 decimal digits.
pub fn ucid_from_uui(value: &str) -> Option<String> {
    let hex = value.split(';').next()?.trim();
    if hex.len() % 2 != 0 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect::<Option<_>>()?;
    // The UCID element: tag 0xFA, length 8, right after the protocol
    // discriminator (or at the start).
    let at = bytes.windows(2).position(|w| w == [0xFA, 0x08])?;
    if at > 1 {
        return None;
    }
    let b = bytes.get(at + 2..at + 10)?;
    let node = u16::from_be_bytes([b[0], b[1]]);
    let seq = u16::from_be_bytes([b[2], b[3]]);
    let time = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
    Some(format!("{node:05}{seq:05}{time:010}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(headers: &str) -> SipMessage {
        let text = format!(
            "INVITE sip:2002@pbx SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\nFrom: <sip:1001@pbx>;tag=a\r\nTo: <sip:2002@pbx>\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\n{headers}Content-Length: 0\r\n\r\n"
        );
        crate::sip::parse_message(text.as_bytes()).unwrap()
    }

    #[test]
    fn pbx_headers_become_ids() {
        let m = msg("X-Asterisk-Uniqueid: 1733300000.42\r\nX-Asterisk-Linkedid: 1733300000.41\r\nCisco-Guid: 1234567890-1111111111-2222222222-3333333333\r\nUser-to-User: 00FA080019001038F725B3;encoding=hex\r\n");
        let mut ids = BTreeMap::new();
        collect(&m, &mut ids);
        assert_eq!(ids["asterisk_uniqueid"], "1733300000.42");
        assert_eq!(ids["asterisk_linkedid"], "1733300000.41");
        assert_eq!(
            ids["cisco_guid"],
            "1234567890-1111111111-2222222222-3333333333"
        );
        // node 0x0019 = 25, sequence 0x0010 = 16, time 0x38F725B3.
        assert_eq!(ids["avaya_ucid"], "00025000160955721139");
        // Known ids stay; other spellings fill what is missing.
        let m2 = msg("X-Uniqueid: other\r\nX-UCID: 00001002161733300000\r\n");
        let mut ids2 = BTreeMap::new();
        collect(&m2, &mut ids2);
        assert_eq!(ids2["asterisk_uniqueid"], "other");
        assert_eq!(ids2["avaya_ucid"], "00001002161733300000");
        collect(&m2, &mut ids);
        assert_eq!(ids["asterisk_uniqueid"], "1733300000.42");
    }

    #[test]
    fn rfc7989_session_id_is_the_senders_uuid() {
        let m = msg("Session-ID: AB30317F1A784DC48FF824D0D3715D86;remote=00000000000000000000000000000000\r\n");
        let mut ids = BTreeMap::new();
        collect(&m, &mut ids);
        assert_eq!(ids["session_id"], "ab30317f1a784dc48ff824d0d3715d86");
        assert_eq!(session_uuid("00000000000000000000000000000000"), None);
        assert_eq!(session_uuid("1234"), None);
        assert_eq!(session_uuid("zz30317f1a784dc48ff824d0d3715d86"), None);
    }

    #[test]
    fn odd_values_are_left_out() {
        assert_eq!(ucid_from_uui("zz"), None);
        assert_eq!(ucid_from_uui("00FA0800"), None);
        assert_eq!(ucid_from_uui("0102030405FA080019001038F725B3"), None);
        let long = "x".repeat(200);
        let m = msg(&format!("X-Asterisk-Uniqueid: {long}\r\n"));
        let mut ids = BTreeMap::new();
        collect(&m, &mut ids);
        assert!(ids.is_empty());
    }
}
