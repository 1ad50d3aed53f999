//! The live stream's wire protocol (CONTRACT §5) as pure functions: the
//! client's text messages (`start`, `stop`), its binary audio messages
//! (8-byte big-endian sample-frame offset + interleaved stereo s16le PCM),
//! and the server's answers (`ready`, `done`, `error`) parsed.
//!
//! Nothing here does I/O; `client` sends and receives these.

use serde_json::{json, Value};

/// The WebSocket subprotocol (`Sec-WebSocket-Protocol`).
pub const SUBPROTOCOL: &str = "pbx-edge.stream.v1";

/// Bytes of one sample frame (two channels of s16le).
pub const FRAME_BYTES: usize = 4;

/// `{"type": "start", …}`: a call's stream begins (`resume`: again after a
/// broken connection).
pub fn start(recording_id: &str, resume: bool, sample_rate: u32, meta: &Value) -> String {
    json!({
        "type": "start",
        "recording_id": recording_id,
        "resume": resume,
        "sample_rate": sample_rate,
        "channels": 2,
        "encoding": "pcm_s16le",
        "meta": meta,
    })
    .to_string()
}

/// `{"type": "stop", …}`: the stream ends; `complete`: the server holds every
/// sample frame of the recording (`frames` of them).
pub fn stop(complete: bool, frames: u64, meta: &Value) -> String {
    json!({
        "type": "stop",
        "complete": complete,
        "frames": frames,
        "meta": meta,
    })
    .to_string()
}

/// Interleaved stereo samples as s16le bytes.
pub fn pcm_bytes(frames: &[i16]) -> Vec<u8> {
    let mut out = Vec::with_capacity(frames.len() * 2);
    pbx_core::audio::wav::extend_le(&mut out, frames);
    out
}

/// A binary audio message: `offset` (sample frames) as 8 bytes big-endian,
/// then `pcm` (s16le interleaved stereo, whole frames).
pub fn audio(offset: u64, pcm: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + pcm.len());
    out.extend_from_slice(&offset.to_be_bytes());
    out.extend_from_slice(pcm);
    out
}

/// A binary audio message taken apart: its offset and PCM bytes; `None`
/// when shorter than the offset or not whole frames.
pub fn parse_audio(msg: &[u8]) -> Option<(u64, &[u8])> {
    if msg.len() < 8 || (msg.len() - 8) % FRAME_BYTES != 0 {
        return None;
    }
    let (head, pcm) = msg.split_at(8);
    let mut o = [0u8; 8];
    o.copy_from_slice(head);
    Some((u64::from_be_bytes(o), pcm))
}

/// What the server says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMsg {
    /// It holds `offset` sample frames of this recording.
    Ready { offset: u64 },
    /// The `stop` was taken.
    Done,
    /// This call's stream ends (not retried).
    Error { reason: String },
    /// A message of another type (ignored: the protocol may grow).
    Other(String),
}

/// A server text message; `Err` when it is not a JSON object with a
/// known shape.
pub fn parse_server(text: &str) -> Result<ServerMsg, String> {
    let v: Value =
        serde_json::from_str(text).map_err(|e| format!("not JSON from the server: {e}"))?;
    let t = v
        .get("type")
        .and_then(Value::as_str)
        .ok_or("a server message without a \"type\"")?;
    match t {
        "ready" => v
            .get("offset")
            .and_then(Value::as_u64)
            .map(|offset| ServerMsg::Ready { offset })
            .ok_or_else(|| "\"ready\" without a whole-number \"offset\"".to_string()),
        "done" => Ok(ServerMsg::Done),
        "error" => Ok(ServerMsg::Error {
            reason: v
                .get("reason")
                .and_then(Value::as_str)
                .unwrap_or("")
                .chars()
                .take(200)
                .collect(),
        }),
        other => Ok(ServerMsg::Other(other.chars().take(40).collect())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_have_the_contract_shape() {
        let meta = json!({"recording_id": "r1"});
        let s: Value = serde_json::from_str(&start("r1", true, 16000, &meta)).unwrap();
        assert_eq!(s["type"], "start");
        assert_eq!(s["recording_id"], "r1");
        assert_eq!(s["resume"], true);
        assert_eq!(s["sample_rate"], 16000);
        assert_eq!(s["channels"], 2);
        assert_eq!(s["encoding"], "pcm_s16le");
        assert_eq!(s["meta"], meta);
        let p: Value = serde_json::from_str(&stop(false, 77, &meta)).unwrap();
        assert_eq!(p["type"], "stop");
        assert_eq!(p["complete"], false);
        assert_eq!(p["frames"], 77);
    }

    #[test]
    fn audio_round_trips_with_a_big_endian_offset() {
        let pcm = pcm_bytes(&[1, -2, 300, -32768]);
        assert_eq!(pcm, [1, 0, 0xFE, 0xFF, 0x2C, 1, 0, 0x80]);
        let m = audio(0x0102_0304_0506_0708, &pcm);
        assert_eq!(&m[..8], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(parse_audio(&m), Some((0x0102_0304_0506_0708, &pcm[..])));
        assert_eq!(parse_audio(&m[..7]), None);
        assert_eq!(parse_audio(&m[..10]), None);
    }

    #[test]
    fn server_messages_parse() {
        assert_eq!(
            parse_server(r#"{"type":"ready","offset":42}"#),
            Ok(ServerMsg::Ready { offset: 42 })
        );
        assert_eq!(parse_server(r#"{"type":"done"}"#), Ok(ServerMsg::Done));
        assert_eq!(
            parse_server(r#"{"type":"error","reason":"quota"}"#),
            Ok(ServerMsg::Error {
                reason: "quota".into()
            })
        );
        assert!(parse_server(r#"{"type":"ready","offset":-1}"#).is_err());
        assert!(parse_server(r#"{"type":"ready"}"#).is_err());
        assert!(parse_server("[1]").is_err());
        assert!(parse_server("nope").is_err());
        assert_eq!(
            parse_server(r#"{"type":"ping"}"#),
            Ok(ServerMsg::Other("ping".into()))
        );
    }
}
