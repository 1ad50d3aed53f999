//! Demultiplexing: transport segments in, SIP messages and RTP packets out
//! to their handlers.
//!
//! In: UDP datagrams and TCP segments ([`crate::net::Segment`]). Out: SIP
//! messages (TCP streams reassembled by one bounded framer per flow) to
//! the dialog layer, RTP to the leg layer; RTCP and unknown traffic are
//! counted and dropped. Promises: at most a fixed number of TCP framers,
//! idle ones dropped; never panics on input.

use std::net::SocketAddr;

use crate::call::meta::RecordingSink;
use crate::net::Segment;
use crate::rtp::is_rtcp;
use crate::sip::message::{looks_like_sip, may_begin_sip, parse_message};
use crate::sip::stream::SipStreamFramer;
use crate::Timestamp;

use super::engine::*;

impl Tracker {
    pub(super) fn handle_udp(
        &mut self,
        ts: Timestamp,
        src: SocketAddr,
        dst: SocketAddr,
        payload: &[u8],
        sink: &mut dyn RecordingSink,
    ) {
        if looks_like_sip(payload) {
            match parse_message(payload) {
                Ok(msg) => self.handle_sip(ts, src, dst, msg, sink),
                Err(_) => self.stats.sip_malformed += 1,
            }
            return;
        }
        if is_rtcp(payload) {
            self.stats.rtcp_packets += 1;
            return;
        }
        if payload.len() >= 12 && payload[0] >> 6 == 2 {
            self.handle_rtp(ts, src, dst, payload, sink);
            return;
        }
        // ZRTP (RFC 6189) on a call's media addresses: its audio will be SRTP
        // with keys we never see.
        if payload.len() >= 12 && payload[0] & 0xf0 == 0x10 && &payload[4..8] == b"ZRTP" {
            let hit = self
                .endpoints
                .get(&dst)
                .or_else(|| self.endpoints.get(&src));
            if let Some((k, _)) = hit {
                if let Some(call) = self.calls.get_mut(k) {
                    if !call.zrtp {
                        call.zrtp = true;
                        push_warning(
                            &mut call.warnings,
                            "the parties negotiated ZRTP: their audio is encrypted end to end and cannot be recorded; the channels are silent from then on".into(),
                        );
                    }
                }
            }
            self.stats.udp_other += 1;
            return;
        }
        self.stats.udp_other += 1;
    }

    pub(super) fn handle_tcp(&mut self, seg: &Segment<'_>, sink: &mut dyn RecordingSink) {
        let key = (seg.src, seg.dst);
        let mut resync = false;
        // A stream's first bytes that did not hold its first line whole
        // (kept in `first_lines`) go before this segment's.
        let joined;
        let mut data = seg.payload;
        if !self.framers.contains_key(&key) {
            if self.not_sip.contains(&key) {
                self.stats.tcp_other += 1;
                return;
            }
            if let Some(mut head) = self.first_lines.remove(&key) {
                head.extend_from_slice(seg.payload);
                joined = head;
                data = &joined;
            }
            if other_protocol(data) {
                if self.not_sip.len() >= TCP_FRAMERS_MAX {
                    self.not_sip.clear();
                }
                self.not_sip.insert(key);
                self.stats.tcp_other += 1;
                return;
            }
            if !looks_like_sip(data) && may_begin_sip(data) {
                // Cut inside its first line: SIP, or another protocol
                // (`POST /upload` of an HTTP request whose body holds SIP
                // text), told by the line's end in the next segment.
                if self.first_lines.len() >= TCP_FRAMERS_MAX {
                    self.first_lines.clear();
                }
                self.first_lines.insert(key, data.to_vec());
                return;
            }
            if !looks_like_sip(data) {
                // A stream seen from its middle (a capture started during
                // a long-lived SIP trunk): its first segment may begin
                // inside a message, with the next one after it. Followed,
                // from the next start line on.
                if !data.windows(7).any(|w| w == b"SIP/2.0") {
                    self.stats.tcp_other += 1;
                    return;
                }
                resync = true;
            }
            if self.framers.len() >= TCP_FRAMERS_MAX {
                // Drop the least recently used stream.
                if let Some(old) = self
                    .framers
                    .iter()
                    .min_by_key(|(_, (_, t))| *t)
                    .map(|(k, _)| *k)
                {
                    self.framers.remove(&old);
                }
            }
            self.framers.insert(key, (SipStreamFramer::new(), seg.ts));
        }
        let mut msgs = Vec::new();
        if let Some((framer, last)) = self.framers.get_mut(&key) {
            *last = seg.ts;
            if seg.tcp_gap || resync {
                framer.gap();
            }
            framer.push(data);
            while let Some(m) = framer.next_message() {
                msgs.push(m);
            }
        }
        for m in msgs {
            match m
                .map_err(|_| ())
                .and_then(|b| parse_message(&b).map_err(|_| ()))
            {
                Ok(msg) => self.handle_sip(seg.ts, seg.src, seg.dst, msg, sink),
                Err(()) => self.stats.sip_malformed += 1,
            }
        }
    }
}

/// Whether a TCP stream's first bytes open another text protocol's
/// message: a first line ending in `HTTP/1.x` or `RTSP/1.0`, or an HTTP
/// status line.
fn other_protocol(payload: &[u8]) -> bool {
    let line = payload.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() == payload.len() {
        return false; // no whole line yet
    }
    let version =
        |v: &[u8]| v.starts_with(b"HTTP/1.") || v.starts_with(b"HTTP/2") || v.starts_with(b"RTSP/");
    version(line) || line.rsplit(|b| *b == b' ').next().is_some_and(version)
}
