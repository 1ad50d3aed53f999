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
        if !self.framers.contains_key(&key) {
            if !looks_like_sip(seg.payload) && !may_begin_sip(seg.payload) {
                // A stream seen from its middle (a capture started during
                // a long-lived SIP trunk): its first segment may begin
                // inside a message, with the next one after it. Followed,
                // from the next start line on.
                if !seg.payload.windows(7).any(|w| w == b"SIP/2.0") {
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
            framer.push(seg.payload);
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
