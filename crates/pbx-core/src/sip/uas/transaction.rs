//! Server transactions (RFC 3261 §17.2): what identifies one, what it
//! keeps, and how a request reaches it.
//!
//! In: a parsed request with its source, transport and arrival time
//! ([`super::Uas::handle`]). Out: a new or matched [`ServerTx`], `100
//! Trying`, retransmitted final responses for retransmitted requests, and
//! hand-off of in-dialog requests to [`super::dialog`]. Promises: the key
//! is branch + sent-by + method (ACK counts as INVITE), RFC 2543 requests
//! without a magic-cookie branch included; state is bounded by
//! [`super::MAX_TRANSACTIONS`] and [`super::MAX_STATE_BYTES`].

use super::*;

/// Server transaction key (RFC 3261 §17.2.3): branch, sent-by, method (ACK
/// counts as INVITE).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct TxKey {
    pub(super) branch: String,
    pub(super) sent_by: String,
    pub(super) method: String,
}

/// A request that opens a new server transaction, with what its final
/// response or its proceeding state needs: one value handed down from
/// [`Uas::on_request`] instead of the same six arguments at every call.
pub(super) struct Fresh<'m> {
    pub(super) at: Timestamp,
    pub(super) from: SocketAddr,
    pub(super) transport: Transport,
    pub(super) key: TxKey,
    pub(super) req: ReqHeaders,
    pub(super) msg: &'m SipMessage,
}

/// What a response needs from its request.
#[derive(Debug, Clone)]
pub(super) struct ReqHeaders {
    /// Via values in order; the top one already carries received/rport.
    pub(super) vias: Vec<String>,
    pub(super) from: String,
    pub(super) to: String,
    pub(super) to_has_tag: bool,
    pub(super) call_id: String,
    pub(super) cseq: String,
    pub(super) record_route: Vec<String>,
    pub(super) timestamp: Option<String>,
    pub(super) require_siprec: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TxState {
    /// No final response yet.
    Proceeding,
    /// 2xx sent to an INVITE, waiting for the ACK.
    Accepted,
    /// Non-2xx final sent (INVITE: waiting for the ACK) or non-INVITE done.
    Completed,
    /// ACK received (INVITE) or nothing more to wait for.
    Confirmed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TxKind {
    InitialInvite,
    Reinvite,
    Update,
    /// A BYE whose `200` waits for the shell ([`Uas::hold_byes`]).
    HeldBye,
    Other,
}

#[derive(Debug)]
pub(super) struct ServerTx {
    pub(super) kind: TxKind,
    pub(super) peer: SocketAddr,
    pub(super) transport: Transport,
    pub(super) req: ReqHeaders,
    pub(super) cseq: u32,
    /// The To-tag our responses carry.
    pub(super) local_tag: String,
    pub(super) dialog: Option<DialogId>,
    pub(super) state: TxState,
    pub(super) last_response: Option<Vec<u8>>,
    /// Next retransmission and the interval that led to it.
    pub(super) retransmit: Option<(Timestamp, i64)>,
    /// Give up waiting for the ACK (Timer H / L).
    pub(super) give_up_at: Option<Timestamp>,
    /// The shell must have decided by then.
    pub(super) decide_by: Option<Timestamp>,
    /// Dropped at this time.
    pub(super) expires_at: Option<Timestamp>,
    /// Bytes counted against [`MAX_STATE_BYTES`].
    pub(super) size: usize,
}

impl ServerTx {
    pub(super) fn footprint(&self) -> usize {
        ENTRY_OVERHEAD
            + self.req.footprint()
            + self.local_tag.len()
            + self.last_response.as_ref().map_or(0, Vec::len)
    }
}

#[derive(Debug)]
pub(super) struct ClientTx {
    pub(super) peer: SocketAddr,
    pub(super) transport: Transport,
    pub(super) bytes: Vec<u8>,
    pub(super) retransmit: Option<(Timestamp, i64)>,
    pub(super) expires_at: Timestamp,
}

impl ReqHeaders {
    pub(super) fn footprint(&self) -> usize {
        self.vias.iter().map(String::len).sum::<usize>()
            + self.record_route.iter().map(String::len).sum::<usize>()
            + self.from.len()
            + self.to.len()
            + self.call_id.len()
            + self.cseq.len()
            + self.timestamp.as_ref().map_or(0, String::len)
    }
}

impl Uas {
    // -- requests ---------------------------------------------------------

    pub(super) fn on_request(
        &mut self,
        at: Timestamp,
        from: SocketAddr,
        transport: Transport,
        msg: &SipMessage,
    ) {
        let Some(method) = msg.method().cloned() else {
            return;
        };
        let Some(key) = tx_key(msg, &method) else {
            return; // no Via: nowhere to answer
        };
        let req = req_headers(msg, from);
        if method == Method::Ack {
            self.on_ack(msg, &key);
            return;
        }
        if msg.cseq_method != method {
            self.stateless(&req, from, transport, 400, "CSeq Method Mismatch");
            return;
        }
        // A retransmission: the last response again.
        if let Some(tx) = self.txs.get(&key) {
            if let Some(bytes) = tx.last_response.clone() {
                self.events.push_back(UasEvent::Send {
                    to: tx.peer,
                    transport: tx.transport,
                    bytes,
                });
            }
            return;
        }
        let rq = Fresh {
            at,
            from,
            transport,
            key,
            req,
            msg,
        };
        if method == Method::Cancel {
            self.on_cancel(rq);
            return;
        }
        if let Some(bad) = unsupported_require(msg) {
            let extra = [("Unsupported", bad)];
            self.new_final(rq, 420, "Bad Extension", &extra);
            return;
        }
        match msg.to.tag.clone() {
            Some(tag) => {
                let id = DialogId {
                    call_id: msg.call_id.clone(),
                    local_tag: tag,
                    remote_tag: msg.from.tag.clone().unwrap_or_default(),
                };
                if self.dialogs.contains_key(&id) {
                    self.in_dialog(rq, &method, id);
                } else {
                    self.new_final(rq, 481, "Call/Transaction Does Not Exist", &[]);
                }
            }
            None => match method {
                Method::Invite => self.new_invite(rq),
                Method::Options => match self.unavailable {
                    Some(secs) => {
                        let extra = [("Retry-After", secs.to_string())];
                        self.new_final(rq, 503, "Service Unavailable", &extra)
                    }
                    None => self.new_final(rq, 200, "OK", &[]),
                },
                Method::Bye | Method::Update | Method::Info | Method::Prack => {
                    self.new_final(rq, 481, "Call/Transaction Does Not Exist", &[])
                }
                _ => self.new_final(rq, 405, "Method Not Allowed", &[]),
            },
        }
    }

    pub(super) fn new_invite(&mut self, rq: Fresh<'_>) {
        let (from, transport, msg) = (rq.from, rq.transport, rq.msg);
        // A merged request (RFC 3261 8.2.2.2): the INVITE of a dialog we
        // have (Call-ID, From tag, CSeq) on another branch, a copy forked
        // or retransmitted by another path. A second dialog for it would
        // take ports and end the first call's recording when it ends.
        // So is any new INVITE whose Call-ID a dialog already holds (under
        // another From tag): recordings are kept by Call-ID, and a second
        // session accepted with one in use was recorded into the first,
        // its own audio lost. Refused, its SRC knows it is not recorded.
        if self.call_id_in_use(msg) {
            self.new_final(rq, 482, "Loop Detected", &[]);
            return;
        }
        // Room for the dialog, its transaction and the 200 (~3 header copies).
        let need = 3 * (rq.req.footprint() + ENTRY_OVERHEAD) + 4096;
        if self.dialogs.len() >= MAX_DIALOGS || !self.has_room(need) {
            self.stateless(&rq.req, from, transport, 503, "Service Unavailable");
            return;
        }
        let local_tag = self.next_tag();
        let id = DialogId {
            call_id: msg.call_id.clone(),
            local_tag: local_tag.clone(),
            remote_tag: msg.from.tag.clone().unwrap_or_default(),
        };
        let remote_target = remote_target(msg);
        let dialog = Dialog {
            peer: from,
            transport,
            confirmed: false,
            remote_cseq: msg.cseq,
            local_cseq: 0,
            remote_target,
            route_set: rq.req.record_route.clone(),
            local_hdr: format!("{};tag={local_tag}", rq.req.to),
            remote_hdr: rq.req.from.clone(),
            pending: Some(rq.key.clone()),
            ack_wait: None,
            size: 0,
        };
        self.insert_dialog(id.clone(), dialog);
        self.start_proceeding(rq, TxKind::InitialInvite, local_tag, Some(id.clone()));
        self.events.push_back(UasEvent::NewCall {
            dialog: id,
            invite: msg.clone(),
            from,
        });
    }

    /// An initial INVITE (no To tag) whose Call-ID a dialog holds.
    fn call_id_in_use(&self, msg: &SipMessage) -> bool {
        self.dialogs.keys().any(|d| d.call_id == msg.call_id)
    }

    /// Whether a request can be answered at all (it has a Via): one that
    /// cannot is dropped without a word.
    pub fn answerable(msg: &SipMessage) -> bool {
        msg.method().is_some_and(|m| tx_key(msg, m).is_some())
    }

    /// Whether a received message is one this UAS takes up, so that a
    /// recorder beside it may act on it: a response; a request it can
    /// answer (it has a Via) that names one of its dialogs, or starts one
    /// (an INVITE whose Call-ID no dialog holds, or a retransmission of
    /// one it has), or needs none (OPTIONS, CANCEL, ACK). Not a request it
    /// answers `481` (a BYE whose tags name no dialog), nor one it cannot
    /// answer at all: such a BYE ended a recording, such INVITEs were
    /// calls in progress for minutes.
    pub fn takes(&self, msg: &SipMessage) -> bool {
        let Some(method) = msg.method() else {
            return true;
        };
        let Some(key) = tx_key(msg, method) else {
            return false;
        };
        match &msg.to.tag {
            Some(tag) => {
                *method == Method::Ack
                    || *method == Method::Cancel
                    || self.dialogs.contains_key(&DialogId {
                        call_id: msg.call_id.clone(),
                        local_tag: tag.clone(),
                        remote_tag: msg.from.tag.clone().unwrap_or_default(),
                    })
            }
            None => match method {
                Method::Invite => self.txs.contains_key(&key) || !self.call_id_in_use(msg),
                Method::Bye | Method::Update | Method::Info | Method::Prack => false,
                _ => true,
            },
        }
    }

    /// A new server transaction waiting for the shell (INVITE gets 100).
    pub(super) fn start_proceeding(
        &mut self,
        rq: Fresh<'_>,
        kind: TxKind,
        local_tag: String,
        dialog: Option<DialogId>,
    ) {
        let Fresh {
            at,
            from,
            transport,
            key,
            req,
            msg,
        } = rq;
        let last_response = matches!(kind, TxKind::InitialInvite | TxKind::Reinvite).then(|| {
            let opts = RespOpts {
                timestamp: true,
                ..RespOpts::default()
            };
            // 100 carries no To-tag on a new INVITE (RFC 3261 §8.2.6.2).
            let tag = (kind == TxKind::Reinvite).then_some(local_tag.as_str());
            self.response(&req, 100, "Trying", tag, &opts)
        });
        if let Some(bytes) = &last_response {
            self.events.push_back(UasEvent::Send {
                to: from,
                transport,
                bytes: bytes.clone(),
            });
        }
        self.insert_tx(
            key,
            ServerTx {
                kind,
                peer: from,
                transport,
                req,
                cseq: msg.cseq,
                local_tag,
                dialog,
                state: TxState::Proceeding,
                last_response,
                retransmit: None,
                give_up_at: None,
                decide_by: Some(at.add_micros(TX_LIFETIME_US)),
                expires_at: None,
                size: 0,
            },
        );
    }
}

impl Uas {
    pub(super) fn on_ack(&mut self, msg: &SipMessage, key: &TxKey) {
        // ACK of a non-2xx final: same branch as the INVITE.
        if let Some(tx) = self.txs.get_mut(key) {
            if tx.state == TxState::Completed {
                tx.state = TxState::Confirmed;
                tx.retransmit = None;
                tx.give_up_at = None;
                return;
            }
        }
        // ACK of a 2xx: its own transaction, matched by dialog and CSeq.
        let Some(local_tag) = msg.to.tag.clone() else {
            return;
        };
        let id = DialogId {
            call_id: msg.call_id.clone(),
            local_tag,
            remote_tag: msg.from.tag.clone().unwrap_or_default(),
        };
        let Some(dl) = self.dialogs.get_mut(&id) else {
            return;
        };
        if dl.ack_wait.as_ref().is_some_and(|(c, _)| *c == msg.cseq) {
            dl.confirmed = true;
            self.stop_ack_wait(&id);
            // (Only the first ACK: a retransmitted one finds no wait.)
            if !msg.body.iter().all(u8::is_ascii_whitespace) {
                self.events.push_back(UasEvent::AckAnswer {
                    dialog: id,
                    msg: msg.clone(),
                });
            }
        }
    }

    pub(super) fn on_cancel(&mut self, rq: Fresh<'_>) {
        let at = rq.at;
        let invite_key = TxKey {
            method: "INVITE".into(),
            ..rq.key.clone()
        };
        let Some(inv) = self.txs.get(&invite_key) else {
            self.new_final(rq, 481, "Call/Transaction Does Not Exist", &[]);
            return;
        };
        let pending = inv.state == TxState::Proceeding;
        let kind = inv.kind;
        let dialog = inv.dialog.clone();
        let tag = inv.local_tag.clone();
        self.new_final_tagged(rq, 200, "OK", &[], tag);
        if !pending {
            return;
        }
        if let Some(d) = &dialog {
            if let Some(dl) = self.dialogs.get_mut(d) {
                if dl.pending.as_ref() == Some(&invite_key) {
                    dl.pending = None;
                }
            }
        }
        self.final_failure(&invite_key, 487, "Request Terminated", &[], at);
        if kind == TxKind::InitialInvite {
            if let Some(d) = dialog {
                self.end_dialog(&d, EndCause::Cancel);
            }
        }
    }

    pub(super) fn on_response(&mut self, msg: &SipMessage) {
        let Some(branch) = &msg.via_branch else {
            return;
        };
        // Any answer to our BYE ends its retransmissions; we need no more.
        if msg.status().is_some() {
            self.remove_client(branch);
        }
    }
}

/// The top Via (first value of the first Via header).
pub(super) fn top_via(msg: &SipMessage) -> Option<&str> {
    let first = msg.header("Via")?;
    first
        .split(',')
        .next()
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// `host[:port]` of a Via value, lower-cased.
pub(super) fn via_sent_by(via: &str) -> String {
    via.split(';')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_ascii_lowercase()
}

pub(super) fn tx_key(msg: &SipMessage, method: &Method) -> Option<TxKey> {
    let via = top_via(msg)?;
    let sent_by = via_sent_by(via);
    let method = match method {
        Method::Ack => "INVITE".to_string(),
        m => m.as_str().to_ascii_uppercase(),
    };
    let branch = match &msg.via_branch {
        Some(b) if b.starts_with("z9hG4bK") => b.clone(),
        // RFC 2543 peers: no magic cookie; identify by the dialog fields.
        _ => format!(
            "2543|{}|{}|{}|{}",
            msg.call_id,
            msg.from.tag.as_deref().unwrap_or(""),
            msg.cseq,
            via
        ),
    };
    Some(TxKey {
        branch,
        sent_by,
        method,
    })
}

pub(super) fn req_headers(msg: &SipMessage, src: SocketAddr) -> ReqHeaders {
    let mut vias: Vec<String> = msg.headers_named("Via").map(str::to_string).collect();
    if let Some(first) = vias.first_mut() {
        // Only the first value of the first header is ours to annotate.
        let (top, rest) = match first.split_once(',') {
            Some((t, r)) => (t.trim().to_string(), Some(r.to_string())),
            None => (first.trim().to_string(), None),
        };
        let top = annotate_via(&top, src);
        *first = match rest {
            Some(r) => format!("{top},{r}"),
            None => top,
        };
    }
    let to = msg.header("To").unwrap_or_default().to_string();
    ReqHeaders {
        vias,
        from: msg.header("From").unwrap_or_default().to_string(),
        to_has_tag: msg.to.tag.is_some(),
        to,
        call_id: msg.call_id.clone(),
        cseq: msg.header("CSeq").unwrap_or_default().to_string(),
        record_route: msg
            .headers_named("Record-Route")
            .map(str::to_string)
            .collect(),
        timestamp: msg.header("Timestamp").map(str::to_string),
        require_siprec: msg.headers_named("Require").any(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("siprec"))
        }),
    }
}

/// RFC 3261 §18.2.1 `received` and RFC 3581 `rport` on the top Via.
pub(super) fn annotate_via(via: &str, src: SocketAddr) -> String {
    let sent_by = via_sent_by(via);
    let host = if let Some(v6) = sent_by.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default().to_string()
    } else {
        sent_by.split(':').next().unwrap_or_default().to_string()
    };
    let ip = src.ip().to_string();
    let mut params: Vec<String> = via.split(';').map(|p| p.trim().to_string()).collect();
    let mut has_rport = false;
    for p in params.iter_mut().skip(1) {
        if p.eq_ignore_ascii_case("rport") {
            *p = format!("rport={}", src.port());
            has_rport = true;
        }
    }
    let has_received = params
        .iter()
        .skip(1)
        .any(|p| p.to_ascii_lowercase().starts_with("received="));
    if (has_rport || host != ip) && !has_received {
        params.push(format!("received={ip}"));
    }
    params.join(";")
}

/// Option tags in Require that we do not support, comma-joined.
pub(super) fn unsupported_require(msg: &SipMessage) -> Option<String> {
    let bad: Vec<&str> = msg
        .headers_named("Require")
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .filter(|t| !SUPPORTED_TAGS.iter().any(|s| s.eq_ignore_ascii_case(t)))
        .collect();
    (!bad.is_empty()).then(|| bad.join(", "))
}
