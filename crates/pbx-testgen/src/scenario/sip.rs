//! The SIP side of a generated call: the messages of its dialog
//! ([`Dialog`]) and how they travel, over UDP or a TCP connection with its
//! handshake ([`SipFlow`]); [`sdp`] the bodies.

use std::net::{IpAddr, SocketAddr};

use super::{CallSpec, Party, Rng, SipTransport, TimedFrame};
use crate::codec::TestCodec;
use crate::frame::{self, Framing, TCP_ACK, TCP_PSH, TCP_SYN};
use crate::pcap::Link;

pub(super) struct SipFlow {
    pub(super) link: Link,
    pub(super) framing: Framing,
    pub(super) transport: SipTransport,
    pub(super) caller: SocketAddr,
    pub(super) callee: SocketAddr,
    pub(super) seq: [u32; 2],
    pub(super) ip_id: u16,
    pub(super) rng: Rng,
}

impl SipFlow {
    pub(super) fn send(
        &mut self,
        out: &mut Vec<TimedFrame>,
        at_ns: i64,
        from_caller: bool,
        msg: &str,
    ) {
        let (src, dst, dir) = if from_caller {
            (self.caller, self.callee, 0)
        } else {
            (self.callee, self.caller, 1)
        };
        match self.transport {
            SipTransport::Udp => {
                self.ip_id = self.ip_id.wrapping_add(1);
                for f in frame::udp_frames(
                    self.link,
                    &self.framing,
                    src,
                    dst,
                    msg.as_bytes(),
                    self.ip_id,
                ) {
                    out.push((at_ns, f));
                }
            }
            SipTransport::Tcp => {
                // Split each message into 1-3 segments at random points.
                let b = msg.as_bytes();
                let parts = 1 + (self.rng.next_u64() % 3) as usize;
                let mut cuts: Vec<usize> = (1..parts)
                    .map(|_| 1 + (self.rng.next_u64() as usize) % (b.len().max(2) - 1))
                    .collect();
                cuts.sort_unstable();
                cuts.dedup();
                let mut last = 0;
                for (i, c) in cuts
                    .iter()
                    .copied()
                    .chain(std::iter::once(b.len()))
                    .enumerate()
                {
                    let seg = &b[last..c];
                    let f = frame::tcp_frame(
                        self.link,
                        &self.framing,
                        src,
                        dst,
                        self.seq[dir],
                        self.seq[1 - dir],
                        TCP_ACK | TCP_PSH,
                        seg,
                    );
                    self.seq[dir] = self.seq[dir].wrapping_add(seg.len() as u32);
                    out.push((at_ns + i as i64 * 1000, f));
                    last = c;
                }
            }
        }
    }

    pub(super) fn handshake(&mut self, out: &mut Vec<TimedFrame>, at_ns: i64) {
        if self.transport != SipTransport::Tcp {
            return;
        }
        let (c, s) = (self.caller, self.callee);
        out.push((
            at_ns - 3000,
            frame::tcp_frame(
                self.link,
                &self.framing,
                c,
                s,
                self.seq[0].wrapping_sub(1),
                0,
                TCP_SYN,
                &[],
            ),
        ));
        out.push((
            at_ns - 2000,
            frame::tcp_frame(
                self.link,
                &self.framing,
                s,
                c,
                self.seq[1].wrapping_sub(1),
                self.seq[0],
                TCP_SYN | TCP_ACK,
                &[],
            ),
        ));
        out.push((
            at_ns - 1000,
            frame::tcp_frame(
                self.link,
                &self.framing,
                c,
                s,
                self.seq[0],
                self.seq[1],
                TCP_ACK,
                &[],
            ),
        ));
    }
}

pub(super) fn sdp(
    p: &Party,
    port: u16,
    codecs: &[TestCodec],
    dir: &str,
    session_version: u32,
) -> String {
    let (ipv, ip) = match p.ip {
        IpAddr::V4(a) => ("IP4", a.to_string()),
        IpAddr::V6(a) => ("IP6", a.to_string()),
    };
    let pts: Vec<String> = codecs
        .iter()
        .map(|c| c.payload_type().to_string())
        .collect();
    let mut out = format!(
        "v=0\r\no=- 1000 {session_version} IN {ipv} {ip}\r\ns=-\r\nc=IN {ipv} {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP {} 101\r\n",
        pts.join(" ")
    );
    for c in codecs {
        out.push_str(&format!("a=rtpmap:{} {}\r\n", c.payload_type(), c.rtpmap()));
    }
    out.push_str(&format!(
        "a=rtpmap:101 telephone-event/{}\r\na=fmtp:101 0-16\r\na=ptime:20\r\na={dir}\r\n",
        codecs[0].rtp_clock()
    ));
    out
}

pub(super) fn host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    }
}

pub(super) struct Dialog<'a> {
    pub(super) spec: &'a CallSpec,
    pub(super) transport: &'static str,
}

impl Dialog<'_> {
    pub(super) fn request(
        &self,
        method: &str,
        cseq: u32,
        from_caller: bool,
        to_tag: bool,
        branch: &str,
        body: Option<&str>,
    ) -> String {
        let s = self.spec;
        let (me, peer) = if from_caller {
            (&s.caller, &s.callee)
        } else {
            (&s.callee, &s.caller)
        };
        let caller_h = format!(
            "\"{}\" <sip:{}@{}>;tag=caller-{}",
            s.caller.name,
            s.caller.number,
            host(s.caller.ip),
            s.seed
        );
        let callee_h = format!(
            "\"{}\" <sip:{}@{}>{}",
            s.callee.name,
            s.callee.number,
            host(s.callee.ip),
            if to_tag {
                format!(";tag=callee-{}", s.seed)
            } else {
                String::new()
            }
        );
        let (from_h, to_h) = if from_caller {
            (caller_h, callee_h)
        } else {
            (callee_h, caller_h)
        };
        let body = body.unwrap_or("");
        let ct = if body.is_empty() {
            String::new()
        } else {
            "Content-Type: application/sdp\r\n".into()
        };
        format!(
            "{method} sip:{}@{}:{} SIP/2.0\r\nVia: SIP/2.0/{} {}:{};branch=z9hG4bK{branch}\r\nMax-Forwards: 70\r\nFrom: {from_h}\r\nTo: {to_h}\r\nCall-ID: {}\r\nCSeq: {cseq} {method}\r\nContact: <sip:{}@{}:{}>\r\nUser-Agent: pbx-testgen\r\n{ct}Content-Length: {}\r\n\r\n{body}",
            peer.number,
            host(peer.ip),
            peer.sip_port,
            self.transport,
            host(me.ip),
            me.sip_port,
            s.call_id,
            me.number,
            host(me.ip),
            me.sip_port,
            body.len()
        )
    }

    pub(super) fn response(
        &self,
        code: u16,
        reason: &str,
        req: &str,
        to_tag: bool,
        body: Option<&str>,
    ) -> String {
        // Copy Via, From, To, Call-ID, CSeq from the request.
        let mut out = format!("SIP/2.0 {code} {reason}\r\n");
        for line in req.split("\r\n").skip(1) {
            if line.is_empty() {
                break;
            }
            let name = line.split(':').next().unwrap_or("");
            match name {
                "Via" | "From" | "Call-ID" | "CSeq" => {
                    out.push_str(line);
                    out.push_str("\r\n");
                }
                "To" => {
                    out.push_str(line);
                    if to_tag && !line.contains(";tag=") {
                        out.push_str(&format!(";tag=callee-{}", self.spec.seed));
                    }
                    out.push_str("\r\n");
                }
                _ => {}
            }
        }
        let body = body.unwrap_or("");
        if !body.is_empty() {
            out.push_str("Content-Type: application/sdp\r\n");
        }
        out.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        out
    }
}
