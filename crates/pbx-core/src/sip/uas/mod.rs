//! A sans-IO SIP user agent server (UAS) for the recording server: parsed
//! requests (with their source address, transport and arrival time) and
//! timeouts in; bytes to send and call events out. No sockets, no clock.
//!
//! The shell feeds [`Uas::handle`] with [`UasInput::Message`] for every SIP
//! message received and [`UasInput::Timeout`] when [`Uas::poll_timeout`]'s
//! deadline passes, then drains [`Uas::poll_event`]:
//! [`UasEvent::Send`] (write these bytes to that peer over that transport)
//! and the call events. For [`UasEvent::NewCall`], [`UasEvent::Reinvite`]
//! and [`UasEvent::Update`] it decides (allow list, call limit, SDP) and
//! answers with [`Uas::accept`] or [`Uas::reject`].
//!
//! What it implements (RFC 3261 §8.2, §12, §13.3, §17.2; RFC 6026):
//!
//! - INVITE server transactions: `100 Trying` at once; retransmitted
//!   INVITEs get the last response again; a `2xx` is retransmitted over
//!   UDP at T1, 2·T1, … capped at T2 (0.5, 1, 2, 4, 4, … s) until the ACK
//!   arrives, and after 64·T1 (32 s) without ACK the call ends
//!   ([`EndCause::AckTimeout`]) and a BYE is sent; non-2xx finals are
//!   retransmitted the same way until their ACK (UDP only, Timer G/H).
//!   Over TCP/TLS nothing is retransmitted (the brief's choice; RFC 3261
//!   §13.3.1.4 would retransmit 2xx on any transport).
//! - CANCEL of a pending INVITE: `200` to the CANCEL, `487` to the INVITE,
//!   [`EndCause::Cancel`]. A CANCEL after the final answer gets `200` and
//!   changes nothing; a CANCEL matching nothing gets `481`.
//! - In-dialog: BYE (`200`, [`EndCause::Bye`], pending requests get `487`;
//!   with [`Uas::hold_byes`] the `200` waits for [`Uas::answer_bye`], at most
//!   [`BYE_HOLD_MAX_US`], while retransmissions are absorbed: the shell
//!   answers once the call's recording is safe on disk),
//!   re-INVITE and UPDATE (events for the shell; a second offer while one
//!   is pending gets `500` + Retry-After), OPTIONS and INFO (`200`), CSeq
//!   going backwards (`500`), anything else `405`. Requests naming a dialog
//!   that does not exist get `481`. ACKs are absorbed.
//! - Out of dialog: OPTIONS answered `200` with Allow, Accept
//!   (`application/sdp`, `application/rs-metadata+xml`, `multipart/mixed`)
//!   and `Supported: siprec` -- or, while the shell says it takes no new
//!   calls ([`Uas::set_unavailable`]: draining, spool unusable), `503` with
//!   `Retry-After` (what a dispatcher's OPTIONS probe reads; in-dialog
//!   OPTIONS of calls in progress still get `200`); BYE/UPDATE/INFO/PRACK `481`; other methods
//!   `405`; a `Require` with an option tag other than `siprec` → `420`.
//! - Requests the shell refused before they got here (over a limit,
//!   malformed; [`super::limits`]): [`Uas::refuse`] answers them without
//!   keeping state, with a `Warning` naming the limit; an offer over a limit
//!   is rejected with [`Uas::reject_refusal`] (488 + Warning).
//! - Responses copy Via (with `received`/`rport`, RFC 3581), From, To (plus
//!   our tag), Call-ID, CSeq; dialog-creating ones copy Record-Route and
//!   carry `Contact: <sip:host:port>;+sip.srs` (RFC 7866 §6.1.2) and
//!   `Require: siprec` when the INVITE required it.
//!
//! Invariant for the shell: every [`UasEvent::NewCall`] is followed by
//! exactly one [`UasEvent::Ended`] for that dialog (also after
//! [`Uas::reject`], as [`EndCause::Rejected`]). A NewCall, re-INVITE or
//! UPDATE left undecided for 32 s is answered `503` (initial INVITE, the
//! call ends with [`EndCause::DecisionTimeout`]) or `500`.
//!
//! Bounded: at most [`MAX_DIALOGS`] dialogs and [`MAX_TRANSACTIONS`]
//! transactions (new INVITEs beyond get a stateless `503`); a transaction is
//! dropped 32 s after its final response, a dialog when it ends. Responses
//! go back to the address the request came from (which is what `rport`
//! asks for and what works through NAT). Timers scan all state: O(n) per
//! call, fine for thousands of calls.
//!
//! Layout, by protocol layer: this file holds the public types and the
//! shell-facing API of [`Uas`]; `transaction` the server transactions
//! and request routing, `dialog` dialog state and in-dialog requests,
//! `response` the bytes of every response, `timers` retransmission
//! and expiry.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};

use super::limits::Refusal;
use super::message::{parse_name_addr, Method, SipMessage};
use crate::Timestamp;

mod dialog;
mod response;
#[cfg(test)]
mod tests;
mod timers;
mod transaction;

use dialog::*;
use response::*;
use transaction::*;

/// RFC 3261 T1 (RTT estimate), microseconds.
pub const T1_US: i64 = 500_000;
/// RFC 3261 T2 (retransmit interval cap), microseconds.
pub const T2_US: i64 = 4_000_000;
/// 64·T1: ACK wait (Timer H / L), transaction lifetime after its final
/// response, and the time the shell has to decide on a request.
pub const TX_LIFETIME_US: i64 = 64 * T1_US;
/// Longest a held BYE waits for [`Uas::answer_bye`] before it is answered
/// `200` anyway (well inside the SRC's 32 s Timer F).
pub const BYE_HOLD_MAX_US: i64 = 16_000_000;
/// Most dialogs (calls) held at once.
pub const MAX_DIALOGS: usize = 8192;
/// Most server + client transactions held at once.
pub const MAX_TRANSACTIONS: usize = 16_384;
/// Most bytes of copied request headers, stored responses and dialog data
/// held at once (messages may be 64 KiB each: the counts alone would allow
/// gigabytes).
pub const MAX_STATE_BYTES: usize = 64 * 1024 * 1024;
/// Bookkeeping overhead counted per entry on top of its strings.
const ENTRY_OVERHEAD: usize = 256;

const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO";
const ACCEPT: &str =
    "application/sdp, application/rs-metadata+xml, application/rs-metadata, multipart/mixed";
const SUPPORTED_TAGS: [&str; 1] = ["siprec"];

/// The transport a message came over (and its response goes back over).
///
/// Not [`crate::net::Transport`]: that one says which IP protocol a
/// captured segment used (UDP or TCP; TLS cannot be seen in a capture, its
/// bytes are just TCP), this one which SIP transport a live peer used, TLS
/// included, which decides the Via name, the Contact port and whether
/// responses are retransmitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    /// TCP and TLS: no retransmissions.
    pub fn is_reliable(self) -> bool {
        !matches!(self, Transport::Udp)
    }

    fn via_name(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }
}

/// Local settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UasConfig {
    /// Host (IP or name) for our Contact and Via.
    pub contact_host: String,
    pub contact_port: u16,
    /// Our port for SIP over TLS (Contact and Via of dialogs over TLS);
    /// `None`: `contact_port`.
    pub tls_port: Option<u16>,
    /// Sent as `Server:` in responses and `User-Agent:` in our BYEs; empty
    /// for none.
    pub user_agent: String,
    /// Seeds To-tags and branches; the shell passes a random value.
    pub tag_seed: u64,
}

/// One dialog (one recording session): Call-ID and both tags.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DialogId {
    pub call_id: String,
    /// Our To-tag.
    pub local_tag: String,
    /// The SRC's From-tag (empty when it sent none).
    pub remote_tag: String,
}

/// Why a call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndCause {
    /// The SRC sent BYE.
    Bye,
    /// The SRC cancelled the INVITE before it was answered.
    Cancel,
    /// Our 2xx was never acknowledged (64·T1); a BYE was sent.
    AckTimeout,
    /// The shell rejected the INVITE with this status.
    Rejected(u16),
    /// The shell did not decide within 64·T1; the INVITE got 503.
    DecisionTimeout,
    /// The shell hung up ([`Uas::hangup`]).
    LocalBye,
}

/// What the UAS is given.
#[derive(Debug, Clone, Copy)]
pub enum UasInput<'a> {
    Message {
        at: Timestamp,
        from: SocketAddr,
        transport: Transport,
        msg: &'a SipMessage,
        /// Size on the wire (for the shell's counters; not used here).
        raw_len: usize,
    },
    Timeout(Timestamp),
}

/// What the UAS asks of the shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UasEvent {
    /// Responses, retransmissions and our BYEs. `to` is where the request
    /// came from; over TCP/TLS the shell writes to that peer's connection.
    Send {
        to: SocketAddr,
        transport: Transport,
        bytes: Vec<u8>,
    },
    /// A new INVITE (already answered `100 Trying`): decide with
    /// [`Uas::accept`] / [`Uas::reject`].
    NewCall {
        dialog: DialogId,
        invite: SipMessage,
        from: SocketAddr,
    },
    /// A re-INVITE in the dialog: answer with accept/reject too.
    Reinvite { dialog: DialogId, msg: SipMessage },
    /// An UPDATE in the dialog: answer with accept (SDP or empty) / reject.
    Update { dialog: DialogId, msg: SipMessage },
    /// The ACK of a 2xx carried a body: the peer's SDP answer to the offer
    /// we made in that 2xx (a re-INVITE without an offer, RFC 3261 14.2).
    AckAnswer { dialog: DialogId, msg: SipMessage },
    /// The call is over; its state is gone.
    Ended { dialog: DialogId, reason: EndCause },
}

/// The UAS: all transaction and dialog state.
#[derive(Debug)]
pub struct Uas {
    cfg: UasConfig,
    counter: u64,
    txs: HashMap<TxKey, ServerTx>,
    clients: HashMap<String, ClientTx>,
    dialogs: HashMap<DialogId, Dialog>,
    events: VecDeque<UasEvent>,
    /// Sum of the entries' sizes (see [`MAX_STATE_BYTES`]).
    state_bytes: usize,
    /// Our address as seen by each peer, when `contact_host` is an
    /// unspecified address (`0.0.0.0`, `::`): told by the shell, which knows
    /// the route (see [`Uas::learn_local_ip`]).
    local_ips: HashMap<IpAddr, IpAddr>,
    /// BYEs are answered by the shell ([`Uas::hold_byes`]).
    hold_byes: bool,
    /// The held BYE of each ended dialog.
    held_byes: HashMap<DialogId, TxKey>,
    /// Taking no new calls: out-of-dialog OPTIONS get `503` with this
    /// `Retry-After` (seconds).
    unavailable: Option<u32>,
}

/// Peers whose local address is remembered (beyond it, the map restarts).
const MAX_LOCAL_IPS: usize = 4096;

/// A table that a burst grew gives its room back once it is down to a
/// quarter: every INVITE's transaction lives 32 s after its answer
/// (RFC 6026), so a set-up burst of thousands of calls left a table sized
/// for them for the rest of the day (about 1 KiB a call in progress).
fn give_back_room<K: Eq + std::hash::Hash, V>(map: &mut HashMap<K, V>) {
    if map.capacity() >= 64 && map.len() < map.capacity() / 4 {
        map.shrink_to(map.len() * 2);
    }
}

impl Uas {
    pub fn new(cfg: UasConfig) -> Self {
        Uas {
            cfg,
            counter: 0,
            txs: HashMap::new(),
            clients: HashMap::new(),
            dialogs: HashMap::new(),
            events: VecDeque::new(),
            state_bytes: 0,
            local_ips: HashMap::new(),
            hold_byes: false,
            held_byes: HashMap::new(),
            unavailable: None,
        }
    }

    /// `Some(secs)`: this server takes no new calls for now (draining,
    /// spool unusable), and says so to out-of-dialog OPTIONS -- the probe of
    /// a dispatcher or an SBC's SRS group -- with `503 Service Unavailable`
    /// and `Retry-After: secs`. `None`: OPTIONS get `200` again. In-dialog
    /// requests are not affected; INVITEs are still the shell's decision
    /// ([`Uas::reject_unavailable`]).
    pub fn set_unavailable(&mut self, retry_after: Option<u32>) {
        self.unavailable = retry_after;
    }

    /// What [`Uas::set_unavailable`] last set.
    pub fn unavailable(&self) -> Option<u32> {
        self.unavailable
    }

    /// With `on`, a BYE ends its dialog at once ([`UasEvent::Ended`] with
    /// [`EndCause::Bye`]) but its `200 OK` waits until the shell calls
    /// [`Uas::answer_bye`] for that dialog (retransmissions meanwhile are
    /// absorbed), or [`BYE_HOLD_MAX_US`] passed: the SRC learns that the
    /// session is over only when what the shell had to do for it is done.
    pub fn hold_byes(&mut self, on: bool) {
        self.hold_byes = on;
    }

    /// Sends the `200 OK` to the held BYE that ended dialog `d`. `false` when
    /// none is held (answered already, or BYEs are not held).
    pub fn answer_bye(&mut self, d: &DialogId, at: Timestamp) -> bool {
        let Some(key) = self.held_byes.remove(d) else {
            return false;
        };
        self.final_response(&key, 200, "OK", &[], at)
    }

    /// Answers every held BYE (the shell stops).
    pub fn answer_held_byes(&mut self, at: Timestamp) {
        let mut held: Vec<DialogId> = self.held_byes.keys().cloned().collect();
        held.sort();
        for d in held {
            self.answer_bye(&d, at);
        }
    }

    /// BYEs waiting for [`Uas::answer_bye`].
    pub fn held_bye_count(&self) -> usize {
        self.held_byes.len()
    }

    /// Whether the BYE of `d` is still held (not answered yet, neither by
    /// [`Uas::answer_bye`] nor by its time limit).
    pub fn holds_bye(&self, d: &DialogId) -> bool {
        self.held_byes.contains_key(d)
    }

    /// Whether our Contact/Via host depends on the peer: the configured host
    /// is an unspecified address (listening on all interfaces).
    pub fn needs_local_ip(&self, peer: IpAddr) -> bool {
        self.cfg
            .contact_host
            .parse::<IpAddr>()
            .is_ok_and(|h| h.is_unspecified())
            && !self.local_ips.contains_key(&peer)
    }

    /// Tells the address of ours that `peer` reaches (the shell's routing
    /// lookup or the connection's local address); used in Contact and Via
    /// instead of an unspecified configured host.
    pub fn learn_local_ip(&mut self, peer: IpAddr, local: IpAddr) {
        if local.is_unspecified() {
            return;
        }
        if self.local_ips.len() >= MAX_LOCAL_IPS && !self.local_ips.contains_key(&peer) {
            self.local_ips.clear();
        }
        self.local_ips.insert(peer, local);
    }

    /// Our host for Contact and Via towards `peer`, bracketed if IPv6.
    fn host_for(&self, peer: Option<SocketAddr>) -> String {
        let learned = peer.and_then(|p| self.local_ips.get(&p.ip()));
        let host = match learned {
            Some(ip) => ip.to_string(),
            None => self.cfg.contact_host.clone(),
        };
        if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host
        }
    }

    /// Bytes of state held (copied headers, stored responses, dialogs).
    pub fn state_bytes(&self) -> usize {
        self.state_bytes
    }

    fn has_room(&self, bytes: usize) -> bool {
        self.state_bytes.saturating_add(bytes) <= MAX_STATE_BYTES
            && self.txs.len() + self.clients.len() < MAX_TRANSACTIONS
    }

    fn insert_tx(&mut self, key: TxKey, mut tx: ServerTx) {
        tx.size = tx.footprint();
        self.state_bytes = self.state_bytes.saturating_add(tx.size);
        if let Some(old) = self.txs.insert(key, tx) {
            self.state_bytes = self.state_bytes.saturating_sub(old.size);
        }
    }

    fn remove_tx(&mut self, key: &TxKey) {
        if let Some(old) = self.txs.remove(key) {
            self.state_bytes = self.state_bytes.saturating_sub(old.size);
            give_back_room(&mut self.txs);
        }
    }

    fn insert_client(&mut self, branch: String, c: ClientTx) {
        self.state_bytes = self
            .state_bytes
            .saturating_add(ENTRY_OVERHEAD + c.bytes.len());
        if let Some(old) = self.clients.insert(branch, c) {
            self.state_bytes = self
                .state_bytes
                .saturating_sub(ENTRY_OVERHEAD + old.bytes.len());
        }
    }

    fn remove_client(&mut self, branch: &str) {
        if let Some(old) = self.clients.remove(branch) {
            self.state_bytes = self
                .state_bytes
                .saturating_sub(ENTRY_OVERHEAD + old.bytes.len());
            give_back_room(&mut self.clients);
        }
    }

    fn insert_dialog(&mut self, id: DialogId, mut d: Dialog) {
        d.size = d.footprint() + id.call_id.len() + id.local_tag.len() + id.remote_tag.len();
        self.state_bytes = self.state_bytes.saturating_add(d.size);
        if let Some(old) = self.dialogs.insert(id, d) {
            self.state_bytes = self.state_bytes.saturating_sub(old.size);
        }
    }

    /// Feeds one input. Timers due at the input's time run first.
    pub fn handle(&mut self, input: UasInput<'_>) {
        match input {
            UasInput::Message {
                at,
                from,
                transport,
                msg,
                raw_len: _,
            } => {
                self.run_timers(at);
                if msg.is_request() {
                    self.on_request(at, from, transport, msg);
                } else {
                    self.on_response(msg);
                }
            }
            UasInput::Timeout(at) => self.run_timers(at),
        }
    }

    /// The next event, `None` when drained.
    pub fn poll_event(&mut self) -> Option<UasEvent> {
        self.events.pop_front()
    }

    /// When [`Uas::handle`] wants a [`UasInput::Timeout`] next.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let tx = self.txs.values().flat_map(|t| {
            [
                t.retransmit.map(|r| r.0),
                t.give_up_at,
                t.decide_by,
                t.expires_at,
            ]
        });
        let cl = self
            .clients
            .values()
            .flat_map(|c| [c.retransmit.map(|r| r.0), Some(c.expires_at)]);
        tx.chain(cl).flatten().min()
    }

    /// Number of live dialogs (calls, including undecided ones).
    pub fn dialog_count(&self) -> usize {
        self.dialogs.len()
    }

    /// Number of live transactions (server and client).
    pub fn transaction_count(&self) -> usize {
        self.txs.len() + self.clients.len()
    }

    /// Answers the dialog's pending INVITE / re-INVITE / UPDATE with `200 OK`
    /// carrying `sdp_answer` (no body when empty). `false` when nothing was
    /// pending (cancelled, timed out, unknown dialog).
    pub fn accept(&mut self, d: &DialogId, sdp_answer: &str, at: Timestamp) -> bool {
        let Some(key) = self.dialogs.get_mut(d).and_then(|dl| dl.pending.take()) else {
            return false;
        };
        let Some(tx) = self.txs.get(&key) else {
            return false;
        };
        if tx.state != TxState::Proceeding {
            return false;
        }
        let invite = matches!(tx.kind, TxKind::InitialInvite | TxKind::Reinvite);
        let opts = RespOpts {
            contact: true,
            transport_hint: Some(tx.transport),
            peer: Some(tx.peer),
            record_route: tx.kind == TxKind::InitialInvite,
            allow: true,
            require_siprec: invite && tx.req.require_siprec,
            body: (!sdp_answer.is_empty()).then_some(sdp_answer),
            ..RespOpts::default()
        };
        let bytes = self.response(&tx.req, 200, "OK", Some(&tx.local_tag), &opts);
        let cseq = tx.cseq;
        let reliable = tx.transport.is_reliable();
        self.send_tx_response(&key, bytes);
        if let Some(tx) = self.txs.get_mut(&key) {
            tx.decide_by = None;
            if invite {
                tx.state = TxState::Accepted;
                tx.retransmit = (!reliable).then(|| (at.add_micros(T1_US), T1_US));
                tx.give_up_at = Some(at.add_micros(TX_LIFETIME_US));
            } else {
                tx.state = TxState::Completed;
            }
            tx.expires_at = Some(at.add_micros(TX_LIFETIME_US));
        }
        if invite {
            if let Some(dl) = self.dialogs.get_mut(d) {
                dl.ack_wait = Some((cseq, key));
            }
        }
        true
    }

    /// Answers the dialog's pending request with a final non-2xx `code`
    /// (300..=699; e.g. 403, 488, 503). For the initial INVITE the call ends
    /// ([`EndCause::Rejected`]); a rejected re-INVITE or UPDATE leaves the
    /// dialog as it was. `false` when nothing was pending or `code` is not a
    /// failure code.
    pub fn reject(&mut self, d: &DialogId, code: u16, reason: &str, at: Timestamp) -> bool {
        self.reject_with(d, code, reason, &[], at)
    }

    /// Rejects the dialog's pending INVITE with `503 Service Unavailable`
    /// and `Retry-After: retry_after` (seconds): not taking new calls now,
    /// try another server (RFC 3261 §21.5.4). Same as [`Uas::reject`]
    /// otherwise.
    pub fn reject_unavailable(&mut self, d: &DialogId, retry_after: u32, at: Timestamp) -> bool {
        let extra = [("Retry-After", retry_after.to_string())];
        self.reject_with(d, 503, "Service Unavailable", &extra, at)
    }

    /// [`Uas::reject`] with a `Warning: 399 pbx-edge "<why>"` saying why
    /// (not an allowed source, the call limit reached), and a
    /// `Retry-After` when `retry_after` (seconds) is given.
    pub fn reject_because(
        &mut self,
        d: &DialogId,
        code: u16,
        reason: &str,
        why: &str,
        retry_after: Option<u32>,
        at: Timestamp,
    ) -> bool {
        let mut extra = vec![("Warning", crate::sip::limits::warning_value(why))];
        if let Some(s) = retry_after {
            extra.push(("Retry-After", s.to_string()));
        }
        self.reject_with(d, code, reason, &extra, at)
    }

    /// [`Uas::reject`] with the refusal's code, reason and a Warning header
    /// saying why (an offer over a limit: too many m-lines, metadata too
    /// large, ...).
    pub fn reject_refusal(&mut self, d: &DialogId, refusal: &Refusal, at: Timestamp) -> bool {
        let extra = [("Warning", refusal.warning_value())];
        self.reject_with(d, refusal.code, refusal.reason, &extra, at)
    }

    fn reject_with(
        &mut self,
        d: &DialogId,
        code: u16,
        reason: &str,
        extra: &[(&'static str, String)],
        at: Timestamp,
    ) -> bool {
        if !(300..=699).contains(&code) {
            return false;
        }
        let Some(key) = self.dialogs.get_mut(d).and_then(|dl| dl.pending.take()) else {
            return false;
        };
        let initial = self
            .txs
            .get(&key)
            .is_some_and(|t| t.kind == TxKind::InitialInvite);
        if !self.final_failure(&key, code, reason, extra, at) {
            return false;
        }
        if initial {
            self.end_dialog(d, EndCause::Rejected(code));
        }
        true
    }

    /// Answers a request that will not be taken (over a limit, malformed:
    /// see [`super::limits`]) with the refusal's code and reason and a
    /// `Warning` naming the limit. `msg` is what
    /// [`super::message::salvage_request`] kept of the request. No state is
    /// kept (a retransmission is refused again, with the same To-tag, so the
    /// answers are identical); an ACK is never answered. `false` when
    /// nothing was sent.
    pub fn refuse(
        &mut self,
        from: SocketAddr,
        transport: Transport,
        msg: &SipMessage,
        refusal: &Refusal,
    ) -> bool {
        if !(300..=699).contains(&refusal.code)
            || matches!(msg.method(), None | Some(Method::Ack))
            || msg.header("Via").is_none()
        {
            return false;
        }
        let req = req_headers(msg, from);
        let tag = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (self.cfg.tag_seed, &msg.via_branch, &msg.call_id, msg.cseq).hash(&mut h);
            format!("{:016x}", h.finish())
        };
        let opts = RespOpts {
            extra: vec![("Warning", refusal.warning_value())],
            ..RespOpts::default()
        };
        let bytes = self.response(&req, refusal.code, refusal.reason, Some(&tag), &opts);
        self.events.push_back(UasEvent::Send {
            to: from,
            transport,
            bytes,
        });
        true
    }

    /// Ends an established dialog from our side: sends BYE (retransmitted
    /// over UDP until answered), emits [`EndCause::LocalBye`]. A dialog still
    /// undecided is rejected with 480 instead. Simplification: a BYE asked
    /// for before the 2xx was acknowledged goes out at once (RFC 3261 §15
    /// would wait for the ACK). `false` for an unknown dialog.
    pub fn hangup(&mut self, d: &DialogId, at: Timestamp) -> bool {
        let Some(dl) = self.dialogs.get(d) else {
            return false;
        };
        if !dl.confirmed && dl.ack_wait.is_none() {
            return self.reject(d, 480, "Temporarily Unavailable", at);
        }
        if let Some(key) = dl.pending.clone() {
            self.final_failure(&key, 487, "Request Terminated", &[], at);
        }
        self.stop_ack_wait(d);
        self.send_bye(d, at);
        self.end_dialog(d, EndCause::LocalBye);
        true
    }
}
