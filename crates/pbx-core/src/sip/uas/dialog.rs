//! Dialogs (RFC 3261 §12): their state, requests inside them (BYE,
//! re-INVITE, UPDATE, OPTIONS, INFO, PRACK) and the BYE we send.
//!
//! In: requests whose To-tag names a dialog, from [`super::transaction`].
//! Out: in-dialog responses and call events ([`super::UasEvent::Reinvite`],
//! [`super::UasEvent::Update`], [`super::UasEvent::Ended`]) and our own BYE
//! (a client transaction retransmitted over UDP). Promises: a dialog ends
//! exactly once; CSeq going backwards gets `500`; a second offer while one
//! is pending gets `500` + Retry-After; requests naming no dialog get `481`.

use std::fmt::Write as _;

use super::*;

#[derive(Debug)]
pub(super) struct Dialog {
    pub(super) peer: SocketAddr,
    pub(super) transport: Transport,
    pub(super) confirmed: bool,
    pub(super) remote_cseq: u32,
    pub(super) local_cseq: u32,
    pub(super) remote_target: String,
    pub(super) route_set: Vec<String>,
    /// To header value of the INVITE plus our tag (our From in BYE).
    pub(super) local_hdr: String,
    /// From header value of the INVITE (our To in BYE).
    pub(super) remote_hdr: String,
    /// The server transaction the shell has to answer.
    pub(super) pending: Option<TxKey>,
    /// CSeq and transaction of the INVITE whose 2xx waits for its ACK.
    pub(super) ack_wait: Option<(u32, TxKey)>,
    /// Bytes counted against [`MAX_STATE_BYTES`].
    pub(super) size: usize,
}

impl Dialog {
    pub(super) fn footprint(&self) -> usize {
        ENTRY_OVERHEAD
            + self.remote_target.len()
            + self.route_set.iter().map(String::len).sum::<usize>()
            + self.local_hdr.len()
            + self.remote_hdr.len()
    }
}

impl Uas {
    pub(super) fn in_dialog(&mut self, rq: Fresh<'_>, method: &Method, id: DialogId) {
        let (at, from, transport, msg) = (rq.at, rq.from, rq.transport, rq.msg);
        let Some(dl) = self.dialogs.get_mut(&id) else {
            return;
        };
        // RFC 3261 12.2.2: only a lower CSeq is out of order. An equal one
        // with another method (a BYE reusing the re-INVITE's CSeq, as some
        // SRCs do) is a new request; a retransmission never gets here.
        if msg.cseq < dl.remote_cseq {
            self.new_final(rq, 500, "CSeq Out of Order", &[]);
            return;
        }
        dl.remote_cseq = msg.cseq;
        let local_tag = id.local_tag.clone();
        match method {
            Method::Invite | Method::Update => {
                let need = 3 * (rq.req.footprint() + ENTRY_OVERHEAD) + 4096;
                if !self.has_room(need) {
                    self.new_final(rq, 503, "Service Unavailable", &[]);
                    return;
                }
                let Some(dl) = self.dialogs.get_mut(&id) else {
                    return;
                };
                if dl.pending.is_some() {
                    let extra = [("Retry-After", "1".to_string())];
                    self.new_final(rq, 500, "Request Pending", &extra);
                    return;
                }
                // Target refresh (RFC 3261 §12.2.2, RFC 3311 §5.2).
                if msg.header("Contact").is_some() {
                    dl.remote_target = remote_target(msg);
                    let size = dl.footprint()
                        + id.call_id.len()
                        + id.local_tag.len()
                        + id.remote_tag.len();
                    self.state_bytes = self
                        .state_bytes
                        .saturating_sub(dl.size)
                        .saturating_add(size);
                    dl.size = size;
                }
                dl.peer = from;
                dl.transport = transport;
                dl.pending = Some(rq.key.clone());
                let kind = if *method == Method::Invite {
                    TxKind::Reinvite
                } else {
                    TxKind::Update
                };
                self.start_proceeding(rq, kind, local_tag, Some(id.clone()));
                let ev = if kind == TxKind::Reinvite {
                    UasEvent::Reinvite {
                        dialog: id,
                        msg: msg.clone(),
                    }
                } else {
                    UasEvent::Update {
                        dialog: id,
                        msg: msg.clone(),
                    }
                };
                self.events.push_back(ev);
            }
            Method::Bye => {
                let pending = dl.pending.take();
                if let Some(p) = pending {
                    self.final_failure(&p, 487, "Request Terminated", &[], at);
                }
                self.stop_ack_wait(&id);
                if self.hold_byes && self.has_room(2 * (rq.req.footprint() + ENTRY_OVERHEAD)) {
                    let key = rq.key.clone();
                    self.start_proceeding(rq, TxKind::HeldBye, local_tag, None);
                    if let Some(tx) = self.txs.get_mut(&key) {
                        tx.decide_by = Some(at.add_micros(BYE_HOLD_MAX_US));
                    }
                    if let Some(old) = self.held_byes.insert(id.clone(), key) {
                        // A second BYE with a new transaction for the same
                        // dialog cannot reach here (the dialog is gone);
                        // answer an earlier one rather than drop it.
                        self.final_response(&old, 200, "OK", &[], at);
                    }
                } else {
                    self.new_final(rq, 200, "OK", &[]);
                }
                self.end_dialog(&id, EndCause::Bye);
            }
            Method::Options | Method::Info => {
                self.new_final(rq, 200, "OK", &[]);
            }
            Method::Prack => self.new_final(rq, 481, "Call/Transaction Does Not Exist", &[]),
            _ => self.new_final(rq, 405, "Method Not Allowed", &[]),
        }
    }
}

impl Uas {
    // -- dialogs and timers -----------------------------------------------

    pub(super) fn stop_ack_wait(&mut self, id: &DialogId) {
        let Some(dl) = self.dialogs.get_mut(id) else {
            return;
        };
        if let Some((_, key)) = dl.ack_wait.take() {
            if let Some(tx) = self.txs.get_mut(&key) {
                tx.state = TxState::Confirmed;
                tx.retransmit = None;
                tx.give_up_at = None;
                // The ACK says the 2xx arrived (a BYE or our hangup ends
                // the wait too): the transaction lives on (RFC 6026, Timer
                // L) only to absorb late copies of the INVITE, which need
                // no answer. Its stored 2xx (about a kilobyte with the SDP)
                // goes now, not 32 s later.
                if let Some(sent) = tx.last_response.take() {
                    tx.size = tx.size.saturating_sub(sent.len());
                    self.state_bytes = self.state_bytes.saturating_sub(sent.len());
                }
            }
        }
    }

    pub(super) fn end_dialog(&mut self, id: &DialogId, reason: EndCause) {
        if let Some(old) = self.dialogs.remove(id) {
            self.state_bytes = self.state_bytes.saturating_sub(old.size);
            super::give_back_room(&mut self.dialogs);
            self.events.push_back(UasEvent::Ended {
                dialog: id.clone(),
                reason,
            });
        }
    }

    pub(super) fn send_bye(&mut self, id: &DialogId, at: Timestamp) {
        let Some(dl) = self.dialogs.get_mut(id) else {
            return;
        };
        dl.local_cseq = dl.local_cseq.saturating_add(1);
        let (peer, transport, cseq) = (dl.peer, dl.transport, dl.local_cseq);
        let target = dl.remote_target.clone();
        let routes = dl.route_set.clone();
        let (local_hdr, remote_hdr) = (dl.local_hdr.clone(), dl.remote_hdr.clone());
        let branch = format!("z9hG4bK{}", self.next_tag());
        let host = self.host_for(Some(peer));
        let mut s = String::with_capacity(512);
        let _ = write!(
            s,
            "BYE {target} SIP/2.0\r\nVia: SIP/2.0/{} {host}:{};branch={branch};rport\r\nMax-Forwards: 70\r\n",
            transport.via_name(),
            self.local_port(transport)
        );
        for r in &routes {
            let _ = write!(s, "Route: {r}\r\n");
        }
        let _ = write!(
            s,
            "From: {local_hdr}\r\nTo: {remote_hdr}\r\nCall-ID: {}\r\nCSeq: {cseq} BYE\r\n",
            id.call_id
        );
        if !self.cfg.user_agent.is_empty() {
            let _ = write!(s, "User-Agent: {}\r\n", self.cfg.user_agent);
        }
        s.push_str("Content-Length: 0\r\n\r\n");
        let bytes = s.into_bytes();
        self.events.push_back(UasEvent::Send {
            to: peer,
            transport,
            bytes: bytes.clone(),
        });
        if self.has_room(ENTRY_OVERHEAD + bytes.len()) {
            self.insert_client(
                branch,
                ClientTx {
                    peer,
                    transport,
                    bytes,
                    retransmit: (!transport.is_reliable()).then(|| (at.add_micros(T1_US), T1_US)),
                    expires_at: at.add_micros(TX_LIFETIME_US),
                },
            );
        }
    }
}

impl Uas {
    pub(super) fn next_tag(&mut self) -> String {
        self.counter = self.counter.wrapping_add(1);
        let mut z = self
            .cfg
            .tag_seed
            .wrapping_add(self.counter.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        format!("{z:016x}")
    }
}

/// The Contact URI of a request, else its From URI.
pub(super) fn remote_target(msg: &SipMessage) -> String {
    msg.header("Contact")
        .and_then(parse_name_addr)
        .map(|n| n.uri)
        .unwrap_or_else(|| msg.from.uri.clone())
}
