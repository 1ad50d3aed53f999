//! What the engine's integration tests share: addresses of a synthetic
//! call, and the SIP, SDP and RTP text its packets carry.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

// ------------------------------------------------------------ addresses

pub fn v4(a: u8, b: u8, c: u8, d: u8, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(a, b, c, d)), port)
}

pub fn caller_sip() -> SocketAddr {
    v4(10, 0, 0, 1, 5060)
}
pub fn callee_sip() -> SocketAddr {
    v4(10, 0, 0, 2, 5060)
}
pub fn caller_rtp() -> SocketAddr {
    v4(10, 0, 0, 1, 40000)
}
pub fn callee_rtp() -> SocketAddr {
    v4(10, 0, 0, 2, 50000)
}

// ------------------------------------------------------------ SIP / SDP / RTP text

pub fn sdp(ip: &str, port: u16, pts: &[u8], direction: &str) -> String {
    let mut s = format!(
        "v=0\r\no=- 4711 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP"
    );
    for pt in pts {
        s.push_str(&format!(" {pt}"));
    }
    s.push_str("\r\n");
    for pt in pts {
        let map = match pt {
            0 => "PCMU/8000",
            8 => "PCMA/8000",
            9 => "G722/8000",
            13 => "CN/8000",
            101 => "telephone-event/8000",
            111 => "opus/48000/2",
            _ => continue,
        };
        s.push_str(&format!("a=rtpmap:{pt} {map}\r\n"));
    }
    if pts.contains(&101) {
        s.push_str("a=fmtp:101 0-16\r\n");
    }
    s.push_str("a=ptime:20\r\n");
    s.push_str(&format!("a={direction}\r\n"));
    s
}

/// One dialog's SIP messages.
pub struct Dialog {
    pub call_id: String,
    pub from_tag: String,
    pub to_tag: String,
}

impl Dialog {
    pub fn new(call_id: &str) -> Self {
        Dialog {
            call_id: call_id.to_string(),
            from_tag: "a73kszlfl".into(),
            to_tag: "1410948204".into(),
        }
    }

    pub fn headers(&self, by_caller: bool, to_tag: bool) -> (String, String) {
        let caller = format!("\"Alice\" <sip:1001@10.0.0.1>;tag={}", self.from_tag);
        let callee = if to_tag {
            format!("<sip:1002@10.0.0.2>;tag={}", self.to_tag)
        } else {
            "<sip:1002@10.0.0.2>".to_string()
        };
        if by_caller {
            (caller, callee)
        } else {
            (callee, caller)
        }
    }

    pub fn finish(mut head: String, body: Option<&str>) -> Vec<u8> {
        let body = body.unwrap_or("");
        if !body.is_empty() {
            head.push_str("Content-Type: application/sdp\r\n");
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        head.into_bytes()
    }

    /// A request; `by_caller` says who sends it (From/To swap for the callee).
    pub fn request(&self, method: &str, cseq: u32, by_caller: bool, body: Option<&str>) -> Vec<u8> {
        let to_tag = !((method == "INVITE" && cseq == 1) || method == "CANCEL");
        let (from, to) = self.headers(by_caller, to_tag);
        let (host, target) = if by_caller {
            ("10.0.0.1", "sip:1002@10.0.0.2")
        } else {
            ("10.0.0.2", "sip:1001@10.0.0.1")
        };
        // CANCEL and a non-2xx ACK reuse the INVITE's branch.
        let branch_method = if method == "CANCEL" { "INVITE" } else { method };
        let head = format!(
            "{method} {target} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {host}:5060;branch=z9hG4bK-{}-{branch_method}-{cseq}\r\n\
             Max-Forwards: 70\r\n\
             From: {from}\r\n\
             To: {to}\r\n\
             Call-ID: {}\r\n\
             CSeq: {cseq} {method}\r\n\
             Contact: <sip:{}@{host}:5060>\r\n\
             User-Agent: engine-props\r\n",
            self.call_id,
            self.call_id,
            if by_caller { "1001" } else { "1002" },
        );
        Self::finish(head, body)
    }

    /// A response to a request sent by the caller (`req_by_caller`) or the callee.
    pub fn response(
        &self,
        code: u16,
        reason: &str,
        cseq: u32,
        method: &str,
        req_by_caller: bool,
        body: Option<&str>,
    ) -> Vec<u8> {
        let to_tag = code != 100;
        let (from, to) = self.headers(req_by_caller, to_tag);
        let host = if req_by_caller {
            "10.0.0.1"
        } else {
            "10.0.0.2"
        };
        let head = format!(
            "SIP/2.0 {code} {reason}\r\n\
             Via: SIP/2.0/UDP {host}:5060;branch=z9hG4bK-{}-{method}-{cseq}\r\n\
             From: {from}\r\n\
             To: {to}\r\n\
             Call-ID: {}\r\n\
             CSeq: {cseq} {method}\r\n\
             Contact: <sip:{}@{}:5060>\r\n",
            self.call_id,
            self.call_id,
            if req_by_caller { "1002" } else { "1001" },
            if req_by_caller {
                "10.0.0.2"
            } else {
                "10.0.0.1"
            },
        );
        Self::finish(head, body)
    }
}

pub fn rtp(pt: u8, marker: bool, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(12 + payload.len());
    p.push(0x80);
    p.push(pt | if marker { 0x80 } else { 0 });
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// RFC 4733 event payload.
pub fn dtmf(event: u8, end: bool, duration: u16) -> Vec<u8> {
    let d = duration.to_be_bytes();
    vec![event, if end { 0x8a } else { 0x0a }, d[0], d[1]]
}

pub mod plan;
