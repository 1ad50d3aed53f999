//! Responses: the bytes of every response the UAS sends, and the
//! transaction state a final response leaves behind.
//!
//! In: the headers a response needs from its request ([`super::transaction::ReqHeaders`]),
//! a code, a reason and [`RespOpts`]. Out: [`super::UasEvent::Send`] events.
//! Promises: responses copy Via (with `received`/`rport`), From, To (plus
//! our tag), Call-ID and CSeq; dialog-creating ones copy Record-Route and
//! carry our `Contact` with `+sip.srs`; a final response on a fresh
//! transaction keeps just enough state to absorb retransmissions.

use std::fmt::Write as _;

use super::*;

impl Uas {
    // -- responses --------------------------------------------------------

    /// A final response on a fresh server transaction (non-INVITE, or an
    /// INVITE refused outright).
    pub(super) fn new_final(
        &mut self,
        rq: Fresh<'_>,
        code: u16,
        reason: &str,
        extra: &[(&'static str, String)],
    ) {
        let tag = match &rq.msg.to.tag {
            Some(t) => t.clone(),
            None => self.next_tag(),
        };
        self.new_final_tagged(rq, code, reason, extra, tag);
    }

    /// [`Uas::new_final`] with our To-tag given.
    pub(super) fn new_final_tagged(
        &mut self,
        rq: Fresh<'_>,
        code: u16,
        reason: &str,
        extra: &[(&'static str, String)],
        tag: String,
    ) {
        let Fresh {
            at,
            from,
            transport,
            key,
            req,
            msg,
        } = rq;
        let options = msg.method() == Some(&Method::Options);
        let opts = RespOpts {
            allow: code == 405 || options,
            accept: options,
            contact: options && code == 200,
            transport_hint: Some(transport),
            peer: Some(from),
            extra: extra.to_vec(),
            ..RespOpts::default()
        };
        let bytes = self.response(&req, code, reason, Some(&tag), &opts);
        self.events.push_back(UasEvent::Send {
            to: from,
            transport,
            bytes: bytes.clone(),
        });
        let invite = msg.method() == Some(&Method::Invite);
        // Keep state to absorb retransmissions; none arrive over TCP for
        // non-INVITE requests, and the table has a hard cap.
        let need = 2 * (req.footprint() + ENTRY_OVERHEAD) + bytes.len();
        if (!invite && transport.is_reliable()) || !self.has_room(need) {
            return;
        }
        let retrans = invite && code >= 300 && !transport.is_reliable();
        self.insert_tx(
            key,
            ServerTx {
                kind: TxKind::Other,
                peer: from,
                transport,
                req,
                cseq: msg.cseq,
                local_tag: tag,
                dialog: None,
                state: if invite && code >= 300 {
                    TxState::Completed
                } else {
                    TxState::Confirmed
                },
                last_response: Some(bytes),
                retransmit: retrans.then(|| (at.add_micros(T1_US), T1_US)),
                give_up_at: (invite && code >= 300).then(|| at.add_micros(TX_LIFETIME_US)),
                decide_by: None,
                expires_at: Some(at.add_micros(TX_LIFETIME_US)),
                size: 0,
            },
        );
    }

    /// Sends a final failure on an existing (proceeding) server transaction.
    pub(super) fn final_failure(
        &mut self,
        key: &TxKey,
        code: u16,
        reason: &str,
        extra: &[(&'static str, String)],
        at: Timestamp,
    ) -> bool {
        self.final_response(key, code, reason, extra, at)
    }

    /// Sends a final response on an existing (proceeding) server
    /// transaction: a failure, or the `200` of a held BYE.
    pub(super) fn final_response(
        &mut self,
        key: &TxKey,
        code: u16,
        reason: &str,
        extra: &[(&'static str, String)],
        at: Timestamp,
    ) -> bool {
        let Some(tx) = self.txs.get(key) else {
            return false;
        };
        if tx.state != TxState::Proceeding {
            return false;
        }
        let opts = RespOpts {
            extra: extra.to_vec(),
            ..RespOpts::default()
        };
        let bytes = self.response(&tx.req, code, reason, Some(&tx.local_tag), &opts);
        let invite = matches!(tx.kind, TxKind::InitialInvite | TxKind::Reinvite);
        let reliable = tx.transport.is_reliable();
        self.send_tx_response(key, bytes);
        if let Some(tx) = self.txs.get_mut(key) {
            tx.decide_by = None;
            tx.state = TxState::Completed;
            tx.expires_at = Some(at.add_micros(TX_LIFETIME_US));
            if invite {
                tx.retransmit = (!reliable).then(|| (at.add_micros(T1_US), T1_US));
                tx.give_up_at = Some(at.add_micros(TX_LIFETIME_US));
            } else {
                tx.state = TxState::Confirmed;
            }
        }
        true
    }

    pub(super) fn send_tx_response(&mut self, key: &TxKey, bytes: Vec<u8>) {
        if let Some(tx) = self.txs.get_mut(key) {
            self.events.push_back(UasEvent::Send {
                to: tx.peer,
                transport: tx.transport,
                bytes: bytes.clone(),
            });
            tx.last_response = Some(bytes);
            let size = tx.footprint();
            self.state_bytes = self
                .state_bytes
                .saturating_sub(tx.size)
                .saturating_add(size);
            tx.size = size;
        }
    }

    /// A response without any state kept (overload, malformed request).
    pub(super) fn stateless(
        &mut self,
        req: &ReqHeaders,
        to: SocketAddr,
        transport: Transport,
        code: u16,
        reason: &str,
    ) {
        let tag = self.next_tag();
        let bytes = self.response(req, code, reason, Some(&tag), &RespOpts::default());
        self.events.push_back(UasEvent::Send {
            to,
            transport,
            bytes,
        });
    }

    pub(super) fn response(
        &self,
        req: &ReqHeaders,
        code: u16,
        reason: &str,
        to_tag: Option<&str>,
        opts: &RespOpts<'_>,
    ) -> Vec<u8> {
        let mut s = String::with_capacity(512);
        let _ = write!(s, "SIP/2.0 {code} {reason}\r\n");
        for v in &req.vias {
            let _ = write!(s, "Via: {v}\r\n");
        }
        if opts.record_route {
            for r in &req.record_route {
                let _ = write!(s, "Record-Route: {r}\r\n");
            }
        }
        // Always there but in a refusal of a request that had none.
        if !req.from.is_empty() {
            let _ = write!(s, "From: {}\r\n", req.from);
        }
        match to_tag {
            _ if req.to.is_empty() => {}
            Some(tag) if !req.to_has_tag => {
                let _ = write!(s, "To: {};tag={tag}\r\n", req.to);
            }
            _ => {
                let _ = write!(s, "To: {}\r\n", req.to);
            }
        }
        let _ = write!(s, "Call-ID: {}\r\nCSeq: {}\r\n", req.call_id, req.cseq);
        if opts.timestamp {
            if let Some(t) = &req.timestamp {
                let _ = write!(s, "Timestamp: {t}\r\n");
            }
        }
        if opts.contact {
            let _ = write!(
                s,
                "Contact: {}\r\n",
                self.contact(opts.transport_hint, opts.peer)
            );
        }
        if opts.allow {
            let _ = write!(s, "Allow: {ALLOW}\r\n");
        }
        if opts.accept {
            let _ = write!(s, "Accept: {ACCEPT}\r\n");
        }
        if opts.allow || opts.contact {
            s.push_str("Supported: siprec\r\n");
        }
        if opts.require_siprec {
            s.push_str("Require: siprec\r\n");
        }
        for (k, v) in &opts.extra {
            let _ = write!(s, "{k}: {v}\r\n");
        }
        if !self.cfg.user_agent.is_empty() {
            let _ = write!(s, "Server: {}\r\n", self.cfg.user_agent);
        }
        match opts.body {
            Some(body) => {
                let _ = write!(
                    s,
                    "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
            }
            None => s.push_str("Content-Length: 0\r\n\r\n"),
        }
        s.into_bytes()
    }

    pub(super) fn contact(&self, transport: Option<Transport>, peer: Option<SocketAddr>) -> String {
        let host = self.host_for(peer);
        let tp = match transport {
            Some(Transport::Tcp) => ";transport=tcp",
            Some(Transport::Tls) => ";transport=tls",
            _ => "",
        };
        let port = self.local_port(transport.unwrap_or(Transport::Udp));
        format!("<sip:{host}:{port}{tp}>;+sip.srs")
    }

    /// The port we receive on over `transport`.
    pub(super) fn local_port(&self, transport: Transport) -> u16 {
        match (transport, self.cfg.tls_port) {
            (Transport::Tls, Some(p)) => p,
            _ => self.cfg.contact_port,
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct RespOpts<'a> {
    pub(super) contact: bool,
    pub(super) transport_hint: Option<Transport>,
    /// Who the response goes to (picks our Contact host, see `host_for`).
    pub(super) peer: Option<SocketAddr>,
    pub(super) record_route: bool,
    pub(super) allow: bool,
    pub(super) accept: bool,
    pub(super) require_siprec: bool,
    pub(super) timestamp: bool,
    pub(super) extra: Vec<(&'static str, String)>,
    pub(super) body: Option<&'a str>,
}
