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
//!   and `Supported: siprec`; BYE/UPDATE/INFO/PRACK `481`; other methods
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

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use super::limits::Refusal;
use super::message::{parse_name_addr, Method, SipMessage};
use crate::Timestamp;

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
    /// The call is over; its state is gone.
    Ended { dialog: DialogId, reason: EndCause },
}

/// Server transaction key (RFC 3261 §17.2.3): branch, sent-by, method (ACK
/// counts as INVITE).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TxKey {
    branch: String,
    sent_by: String,
    method: String,
}

/// What a response needs from its request.
#[derive(Debug, Clone)]
struct ReqHeaders {
    /// Via values in order; the top one already carries received/rport.
    vias: Vec<String>,
    from: String,
    to: String,
    to_has_tag: bool,
    call_id: String,
    cseq: String,
    record_route: Vec<String>,
    timestamp: Option<String>,
    require_siprec: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TxState {
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
enum TxKind {
    InitialInvite,
    Reinvite,
    Update,
    /// A BYE whose `200` waits for the shell ([`Uas::hold_byes`]).
    HeldBye,
    Other,
}

#[derive(Debug)]
struct ServerTx {
    kind: TxKind,
    peer: SocketAddr,
    transport: Transport,
    req: ReqHeaders,
    cseq: u32,
    /// The To-tag our responses carry.
    local_tag: String,
    dialog: Option<DialogId>,
    state: TxState,
    last_response: Option<Vec<u8>>,
    /// Next retransmission and the interval that led to it.
    retransmit: Option<(Timestamp, i64)>,
    /// Give up waiting for the ACK (Timer H / L).
    give_up_at: Option<Timestamp>,
    /// The shell must have decided by then.
    decide_by: Option<Timestamp>,
    /// Dropped at this time.
    expires_at: Option<Timestamp>,
    /// Bytes counted against [`MAX_STATE_BYTES`].
    size: usize,
}

impl ServerTx {
    fn footprint(&self) -> usize {
        ENTRY_OVERHEAD
            + self.req.footprint()
            + self.local_tag.len()
            + self.last_response.as_ref().map_or(0, Vec::len)
    }
}

#[derive(Debug)]
struct ClientTx {
    peer: SocketAddr,
    transport: Transport,
    bytes: Vec<u8>,
    retransmit: Option<(Timestamp, i64)>,
    expires_at: Timestamp,
}

#[derive(Debug)]
struct Dialog {
    peer: SocketAddr,
    transport: Transport,
    confirmed: bool,
    remote_cseq: u32,
    local_cseq: u32,
    remote_target: String,
    route_set: Vec<String>,
    /// To header value of the INVITE plus our tag (our From in BYE).
    local_hdr: String,
    /// From header value of the INVITE (our To in BYE).
    remote_hdr: String,
    /// The server transaction the shell has to answer.
    pending: Option<TxKey>,
    /// CSeq and transaction of the INVITE whose 2xx waits for its ACK.
    ack_wait: Option<(u32, TxKey)>,
    /// Bytes counted against [`MAX_STATE_BYTES`].
    size: usize,
}

impl Dialog {
    fn footprint(&self) -> usize {
        ENTRY_OVERHEAD
            + self.remote_target.len()
            + self.route_set.iter().map(String::len).sum::<usize>()
            + self.local_hdr.len()
            + self.remote_hdr.len()
    }
}

impl ReqHeaders {
    fn footprint(&self) -> usize {
        self.vias.iter().map(String::len).sum::<usize>()
            + self.record_route.iter().map(String::len).sum::<usize>()
            + self.from.len()
            + self.to.len()
            + self.call_id.len()
            + self.cseq.len()
            + self.timestamp.as_ref().map_or(0, String::len)
    }
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
}

/// Peers whose local address is remembered (beyond it, the map restarts).
const MAX_LOCAL_IPS: usize = 4096;

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
        }
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

    // -- requests ---------------------------------------------------------

    fn on_request(
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
        if method == Method::Cancel {
            self.on_cancel(at, from, transport, msg, key, req);
            return;
        }
        if let Some(bad) = unsupported_require(msg) {
            let extra = [("Unsupported", bad)];
            self.new_final(
                at,
                from,
                transport,
                key,
                req,
                msg,
                420,
                "Bad Extension",
                &extra,
            );
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
                    self.in_dialog(at, from, transport, msg, &method, key, req, id);
                } else {
                    self.new_final(
                        at,
                        from,
                        transport,
                        key,
                        req,
                        msg,
                        481,
                        "Call/Transaction Does Not Exist",
                        &[],
                    );
                }
            }
            None => match method {
                Method::Invite => self.new_invite(at, from, transport, msg, key, req),
                Method::Options => {
                    self.new_final(at, from, transport, key, req, msg, 200, "OK", &[])
                }
                Method::Bye | Method::Update | Method::Info | Method::Prack => self.new_final(
                    at,
                    from,
                    transport,
                    key,
                    req,
                    msg,
                    481,
                    "Call/Transaction Does Not Exist",
                    &[],
                ),
                _ => self.new_final(
                    at,
                    from,
                    transport,
                    key,
                    req,
                    msg,
                    405,
                    "Method Not Allowed",
                    &[],
                ),
            },
        }
    }

    fn new_invite(
        &mut self,
        at: Timestamp,
        from: SocketAddr,
        transport: Transport,
        msg: &SipMessage,
        key: TxKey,
        req: ReqHeaders,
    ) {
        // Room for the dialog, its transaction and the 200 (~3 header copies).
        let need = 3 * (req.footprint() + ENTRY_OVERHEAD) + 4096;
        if self.dialogs.len() >= MAX_DIALOGS || !self.has_room(need) {
            self.stateless(&req, from, transport, 503, "Service Unavailable");
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
            route_set: req.record_route.clone(),
            local_hdr: format!("{};tag={local_tag}", req.to),
            remote_hdr: req.from.clone(),
            pending: Some(key.clone()),
            ack_wait: None,
            size: 0,
        };
        self.insert_dialog(id.clone(), dialog);
        self.start_proceeding(
            at,
            from,
            transport,
            key,
            req,
            msg,
            TxKind::InitialInvite,
            local_tag,
            Some(id.clone()),
        );
        self.events.push_back(UasEvent::NewCall {
            dialog: id,
            invite: msg.clone(),
            from,
        });
    }

    /// A new server transaction waiting for the shell (INVITE gets 100).
    #[allow(clippy::too_many_arguments)]
    fn start_proceeding(
        &mut self,
        at: Timestamp,
        from: SocketAddr,
        transport: Transport,
        key: TxKey,
        req: ReqHeaders,
        msg: &SipMessage,
        kind: TxKind,
        local_tag: String,
        dialog: Option<DialogId>,
    ) {
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

    #[allow(clippy::too_many_arguments)]
    fn in_dialog(
        &mut self,
        at: Timestamp,
        from: SocketAddr,
        transport: Transport,
        msg: &SipMessage,
        method: &Method,
        key: TxKey,
        req: ReqHeaders,
        id: DialogId,
    ) {
        let Some(dl) = self.dialogs.get_mut(&id) else {
            return;
        };
        // RFC 3261 12.2.2: only a lower CSeq is out of order. An equal one
        // with another method (a BYE reusing the re-INVITE's CSeq, as some
        // SRCs do) is a new request; a retransmission never gets here.
        if msg.cseq < dl.remote_cseq {
            self.new_final(
                at,
                from,
                transport,
                key,
                req,
                msg,
                500,
                "CSeq Out of Order",
                &[],
            );
            return;
        }
        dl.remote_cseq = msg.cseq;
        let local_tag = id.local_tag.clone();
        match method {
            Method::Invite | Method::Update => {
                let need = 3 * (req.footprint() + ENTRY_OVERHEAD) + 4096;
                if !self.has_room(need) {
                    self.new_final(
                        at,
                        from,
                        transport,
                        key,
                        req,
                        msg,
                        503,
                        "Service Unavailable",
                        &[],
                    );
                    return;
                }
                let Some(dl) = self.dialogs.get_mut(&id) else {
                    return;
                };
                if dl.pending.is_some() {
                    let extra = [("Retry-After", "1".to_string())];
                    self.new_final(
                        at,
                        from,
                        transport,
                        key,
                        req,
                        msg,
                        500,
                        "Request Pending",
                        &extra,
                    );
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
                dl.pending = Some(key.clone());
                let kind = if *method == Method::Invite {
                    TxKind::Reinvite
                } else {
                    TxKind::Update
                };
                self.start_proceeding(
                    at,
                    from,
                    transport,
                    key,
                    req,
                    msg,
                    kind,
                    local_tag,
                    Some(id.clone()),
                );
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
                if self.hold_byes && self.has_room(2 * (req.footprint() + ENTRY_OVERHEAD)) {
                    self.start_proceeding(
                        at,
                        from,
                        transport,
                        key.clone(),
                        req,
                        msg,
                        TxKind::HeldBye,
                        local_tag,
                        None,
                    );
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
                    self.new_final(at, from, transport, key, req, msg, 200, "OK", &[]);
                }
                self.end_dialog(&id, EndCause::Bye);
            }
            Method::Options | Method::Info => {
                self.new_final(at, from, transport, key, req, msg, 200, "OK", &[]);
            }
            Method::Prack => self.new_final(
                at,
                from,
                transport,
                key,
                req,
                msg,
                481,
                "Call/Transaction Does Not Exist",
                &[],
            ),
            _ => self.new_final(
                at,
                from,
                transport,
                key,
                req,
                msg,
                405,
                "Method Not Allowed",
                &[],
            ),
        }
    }

    fn on_ack(&mut self, msg: &SipMessage, key: &TxKey) {
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
        }
    }

    fn on_cancel(
        &mut self,
        at: Timestamp,
        from: SocketAddr,
        transport: Transport,
        msg: &SipMessage,
        key: TxKey,
        req: ReqHeaders,
    ) {
        let invite_key = TxKey {
            method: "INVITE".into(),
            ..key.clone()
        };
        let Some(inv) = self.txs.get(&invite_key) else {
            self.new_final(
                at,
                from,
                transport,
                key,
                req,
                msg,
                481,
                "Call/Transaction Does Not Exist",
                &[],
            );
            return;
        };
        let pending = inv.state == TxState::Proceeding;
        let kind = inv.kind;
        let dialog = inv.dialog.clone();
        let tag = inv.local_tag.clone();
        self.new_final_tagged(at, from, transport, key, req, msg, 200, "OK", &[], tag);
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

    fn on_response(&mut self, msg: &SipMessage) {
        let Some(branch) = &msg.via_branch else {
            return;
        };
        // Any answer to our BYE ends its retransmissions; we need no more.
        if msg.status().is_some() {
            self.remove_client(branch);
        }
    }

    // -- responses --------------------------------------------------------

    /// A final response on a fresh server transaction (non-INVITE, or an
    /// INVITE refused outright).
    #[allow(clippy::too_many_arguments)]
    fn new_final(
        &mut self,
        at: Timestamp,
        from: SocketAddr,
        transport: Transport,
        key: TxKey,
        req: ReqHeaders,
        msg: &SipMessage,
        code: u16,
        reason: &str,
        extra: &[(&'static str, String)],
    ) {
        let tag = match &msg.to.tag {
            Some(t) => t.clone(),
            None => self.next_tag(),
        };
        self.new_final_tagged(at, from, transport, key, req, msg, code, reason, extra, tag);
    }

    #[allow(clippy::too_many_arguments)]
    fn new_final_tagged(
        &mut self,
        at: Timestamp,
        from: SocketAddr,
        transport: Transport,
        key: TxKey,
        req: ReqHeaders,
        msg: &SipMessage,
        code: u16,
        reason: &str,
        extra: &[(&'static str, String)],
        tag: String,
    ) {
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
    fn final_failure(
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
    fn final_response(
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

    fn send_tx_response(&mut self, key: &TxKey, bytes: Vec<u8>) {
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
    fn stateless(
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

    fn response(
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

    fn contact(&self, transport: Option<Transport>, peer: Option<SocketAddr>) -> String {
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
    fn local_port(&self, transport: Transport) -> u16 {
        match (transport, self.cfg.tls_port) {
            (Transport::Tls, Some(p)) => p,
            _ => self.cfg.contact_port,
        }
    }

    // -- dialogs and timers -----------------------------------------------

    fn stop_ack_wait(&mut self, id: &DialogId) {
        let Some(dl) = self.dialogs.get_mut(id) else {
            return;
        };
        if let Some((_, key)) = dl.ack_wait.take() {
            if let Some(tx) = self.txs.get_mut(&key) {
                tx.state = TxState::Confirmed;
                tx.retransmit = None;
                tx.give_up_at = None;
            }
        }
    }

    fn end_dialog(&mut self, id: &DialogId, reason: EndCause) {
        if let Some(old) = self.dialogs.remove(id) {
            self.state_bytes = self.state_bytes.saturating_sub(old.size);
            self.events.push_back(UasEvent::Ended {
                dialog: id.clone(),
                reason,
            });
        }
    }

    fn send_bye(&mut self, id: &DialogId, at: Timestamp) {
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

    fn run_timers(&mut self, at: Timestamp) {
        let due: Vec<TxKey> = self
            .txs
            .iter()
            .filter(|(_, t)| {
                [
                    t.retransmit.map(|r| r.0),
                    t.give_up_at,
                    t.decide_by,
                    t.expires_at,
                ]
                .into_iter()
                .flatten()
                .any(|d| d <= at)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            self.tx_timers(&key, at);
        }
        let due: Vec<String> = self
            .clients
            .iter()
            .filter(|(_, c)| c.expires_at <= at || c.retransmit.is_some_and(|r| r.0 <= at))
            .map(|(k, _)| k.clone())
            .collect();
        for b in due {
            let Some(c) = self.clients.get_mut(&b) else {
                continue;
            };
            if c.expires_at <= at {
                self.remove_client(&b);
                continue;
            }
            if let Some((next, interval)) = c.retransmit {
                if next <= at {
                    c.retransmit = Some(next_retransmit(next, interval, at));
                    self.events.push_back(UasEvent::Send {
                        to: c.peer,
                        transport: c.transport,
                        bytes: c.bytes.clone(),
                    });
                }
            }
        }
    }

    fn tx_timers(&mut self, key: &TxKey, at: Timestamp) {
        let Some(tx) = self.txs.get_mut(key) else {
            return;
        };
        // The shell never decided.
        if tx.decide_by.is_some_and(|d| d <= at) && tx.state == TxState::Proceeding {
            tx.decide_by = None;
            let kind = tx.kind;
            let dialog = tx.dialog.clone();
            if let Some(d) = &dialog {
                if let Some(dl) = self.dialogs.get_mut(d) {
                    if dl.pending.as_ref() == Some(key) {
                        dl.pending = None;
                    }
                }
            }
            if kind == TxKind::InitialInvite {
                self.final_failure(key, 503, "Service Unavailable", &[], at);
                if let Some(d) = dialog {
                    self.end_dialog(&d, EndCause::DecisionTimeout);
                }
            } else if kind == TxKind::HeldBye {
                // The shell never said: the BYE is answered anyway (a BYE is
                // never refused).
                self.held_byes.retain(|_, k| k != key);
                self.final_response(key, 200, "OK", &[], at);
            } else {
                let extra = [("Retry-After", "1".to_string())];
                self.final_failure(key, 500, "Server Internal Error", &extra, at);
            }
            return;
        }
        if tx.expires_at.is_some_and(|e| e <= at) {
            // Timer H / L expiry coincides with removal: an unacknowledged
            // 2xx ends the call first.
            if tx.state == TxState::Accepted {
                self.ack_timeout(key, at);
            }
            self.remove_tx(key);
            return;
        }
        if tx.give_up_at.is_some_and(|g| g <= at) {
            tx.give_up_at = None;
            tx.retransmit = None;
            if tx.state == TxState::Accepted {
                self.ack_timeout(key, at);
            }
            return;
        }
        if let Some((next, interval)) = tx.retransmit {
            if next <= at {
                tx.retransmit = Some(next_retransmit(next, interval, at));
                if let Some(bytes) = tx.last_response.clone() {
                    self.events.push_back(UasEvent::Send {
                        to: tx.peer,
                        transport: tx.transport,
                        bytes,
                    });
                }
            }
        }
    }

    /// The 2xx of `key` was never acknowledged: BYE and end (RFC 3261
    /// §13.3.1.4).
    fn ack_timeout(&mut self, key: &TxKey, at: Timestamp) {
        let Some(tx) = self.txs.get_mut(key) else {
            return;
        };
        tx.state = TxState::Confirmed;
        tx.retransmit = None;
        tx.give_up_at = None;
        let Some(d) = tx.dialog.clone() else {
            return;
        };
        let waiting = self
            .dialogs
            .get(&d)
            .and_then(|dl| dl.ack_wait.as_ref())
            .is_some_and(|(_, k)| k == key);
        if !waiting {
            return;
        }
        if let Some(dl) = self.dialogs.get_mut(&d) {
            dl.ack_wait = None;
            if let Some(p) = dl.pending.take() {
                self.final_failure(&p, 487, "Request Terminated", &[], at);
            }
        }
        self.send_bye(&d, at);
        self.end_dialog(&d, EndCause::AckTimeout);
    }

    fn next_tag(&mut self) -> String {
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

#[derive(Debug, Default)]
struct RespOpts<'a> {
    contact: bool,
    transport_hint: Option<Transport>,
    /// Who the response goes to (picks our Contact host, see `host_for`).
    peer: Option<SocketAddr>,
    record_route: bool,
    allow: bool,
    accept: bool,
    require_siprec: bool,
    timestamp: bool,
    extra: Vec<(&'static str, String)>,
    body: Option<&'a str>,
}

/// Interval doubles up to T2; the next time follows the schedule unless the
/// caller is late, then counts from now (no bursts).
fn next_retransmit(prev: Timestamp, interval: i64, at: Timestamp) -> (Timestamp, i64) {
    let interval = (interval.saturating_mul(2)).min(T2_US);
    let mut next = prev.add_micros(interval);
    if next <= at {
        next = at.add_micros(interval);
    }
    (next, interval)
}

/// The top Via (first value of the first Via header).
fn top_via(msg: &SipMessage) -> Option<&str> {
    let first = msg.header("Via")?;
    first
        .split(',')
        .next()
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// `host[:port]` of a Via value, lower-cased.
fn via_sent_by(via: &str) -> String {
    via.split(';')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_ascii_lowercase()
}

fn tx_key(msg: &SipMessage, method: &Method) -> Option<TxKey> {
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

fn req_headers(msg: &SipMessage, src: SocketAddr) -> ReqHeaders {
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
fn annotate_via(via: &str, src: SocketAddr) -> String {
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

/// The Contact URI of a request, else its From URI.
fn remote_target(msg: &SipMessage) -> String {
    msg.header("Contact")
        .and_then(parse_name_addr)
        .map(|n| n.uri)
        .unwrap_or_else(|| msg.from.uri.clone())
}

/// Option tags in Require that we do not support, comma-joined.
fn unsupported_require(msg: &SipMessage) -> Option<String> {
    let bad: Vec<&str> = msg
        .headers_named("Require")
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .filter(|t| !SUPPORTED_TAGS.iter().any(|s| s.eq_ignore_ascii_case(t)))
        .collect();
    (!bad.is_empty()).then(|| bad.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::parse_message;

    const BASE_US: i64 = 1_700_000_000_000_000;

    fn t(ms: i64) -> Timestamp {
        Timestamp::from_micros(BASE_US + ms * 1000)
    }

    fn src() -> SocketAddr {
        "192.0.2.10:5062".parse().unwrap()
    }

    fn uas() -> Uas {
        Uas::new(UasConfig {
            contact_host: "192.0.2.50".into(),
            contact_port: 5090,
            tls_port: Some(5091),
            user_agent: "pbx-edge-test".into(),
            tag_seed: 7,
        })
    }

    const SDP: &str = "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=label:1\r\na=sendonly\r\n";

    /// A request; `to_tag` makes it in-dialog.
    #[allow(clippy::too_many_arguments)]
    fn request(
        method: &str,
        branch: &str,
        call_id: &str,
        to_tag: Option<&str>,
        cseq: u32,
        cseq_method: &str,
        extra: &str,
        body: &str,
    ) -> SipMessage {
        let to = match to_tag {
            Some(tag) => format!("<sip:srs@192.0.2.50:5090>;tag={tag}"),
            None => "<sip:srs@192.0.2.50:5090>".to_string(),
        };
        let ct = if body.is_empty() {
            String::new()
        } else {
            "Content-Type: application/sdp\r\n".to_string()
        };
        let text = format!(
            "{method} sip:srs@192.0.2.50:5090 SIP/2.0\r\n\
             Via: SIP/2.0/UDP 10.1.1.1:5060;branch={branch};rport\r\n\
             Via: SIP/2.0/UDP 10.9.9.9:5060;branch=z9hG4bKproxy\r\n\
             Record-Route: <sip:10.1.1.1;lr>\r\n\
             From: \"SRC\" <sip:src@10.1.1.1>;tag=src-tag\r\n\
             To: {to}\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {cseq} {cseq_method}\r\n\
             Contact: <sip:src@10.1.1.1:5060>;+sip.src\r\n\
             Max-Forwards: 70\r\n\
             {extra}{ct}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        parse_message(text.as_bytes()).expect("test request parses")
    }

    fn invite(branch: &str, call_id: &str) -> SipMessage {
        request(
            "INVITE",
            branch,
            call_id,
            None,
            1,
            "INVITE",
            "Require: siprec\r\nTimestamp: 1581564919\r\n",
            SDP,
        )
    }

    fn feed_tp(
        u: &mut Uas,
        at: Timestamp,
        msg: &SipMessage,
        transport: Transport,
    ) -> Vec<UasEvent> {
        u.handle(UasInput::Message {
            at,
            from: src(),
            transport,
            msg,
            raw_len: 0,
        });
        drain(u)
    }

    fn feed(u: &mut Uas, at: Timestamp, msg: &SipMessage) -> Vec<UasEvent> {
        feed_tp(u, at, msg, Transport::Udp)
    }

    fn drain(u: &mut Uas) -> Vec<UasEvent> {
        let mut v = Vec::new();
        while let Some(e) = u.poll_event() {
            v.push(e);
        }
        v
    }

    /// Every Send parses as SIP (rsip or tolerant path) and goes to the source.
    fn sent(events: &[UasEvent]) -> Vec<SipMessage> {
        events
            .iter()
            .filter_map(|e| match e {
                UasEvent::Send { to, bytes, .. } => {
                    assert_eq!(*to, src());
                    Some(parse_message(bytes).expect("our output parses"))
                }
                _ => None,
            })
            .collect()
    }

    fn codes(events: &[UasEvent]) -> Vec<u16> {
        sent(events).iter().filter_map(|m| m.status()).collect()
    }

    fn new_call(events: &[UasEvent]) -> DialogId {
        events
            .iter()
            .find_map(|e| match e {
                UasEvent::NewCall { dialog, .. } => Some(dialog.clone()),
                _ => None,
            })
            .expect("NewCall")
    }

    fn ended(events: &[UasEvent]) -> Vec<EndCause> {
        events
            .iter()
            .filter_map(|e| match e {
                UasEvent::Ended { reason, .. } => Some(reason.clone()),
                _ => None,
            })
            .collect()
    }

    fn ack(branch: &str, call_id: &str, tag: &str, cseq: u32) -> SipMessage {
        request("ACK", branch, call_id, Some(tag), cseq, "ACK", "", "")
    }

    /// Runs timeouts until `until`, returning (time, events) per wake-up.
    fn run_until(u: &mut Uas, until: Timestamp) -> Vec<(Timestamp, Vec<UasEvent>)> {
        let mut out = Vec::new();
        while let Some(next) = u.poll_timeout() {
            if next > until {
                break;
            }
            u.handle(UasInput::Timeout(next));
            out.push((next, drain(u)));
        }
        out
    }

    /// Times (ms after `base`) at which something was sent.
    fn send_times(w: &[(Timestamp, Vec<UasEvent>)], base: Timestamp) -> Vec<i64> {
        w.iter()
            .filter(|(_, ev)| ev.iter().any(|e| matches!(e, UasEvent::Send { .. })))
            .map(|(at, _)| at.micros_since(base) / 1000)
            .collect()
    }

    /// INVITE → 100 + NewCall → accept → 200; returns the dialog.
    fn established(u: &mut Uas, call_id: &str) -> DialogId {
        let ev = feed(u, t(0), &invite("z9hG4bKinv1", call_id));
        let d = new_call(&ev);
        assert!(u.accept(&d, "v=0\r\n", t(10)));
        drain(u);
        d
    }

    #[test]
    fn invite_trying_then_200_retransmitted_until_ack() {
        let mut u = uas();
        let ev = feed(&mut u, t(0), &invite("z9hG4bKinv1", "call-1"));
        let msgs = sent(&ev);
        assert_eq!(msgs.len(), 1);
        let trying = &msgs[0];
        assert_eq!(trying.status(), Some(100));
        assert_eq!(trying.to.tag, None, "100 Trying carries no To-tag");
        assert_eq!(trying.header("Timestamp"), Some("1581564919"));
        assert_eq!(trying.headers_named("Via").count(), 2);
        let d = new_call(&ev);
        assert_eq!(d.call_id, "call-1");
        assert_eq!(d.remote_tag, "src-tag");

        assert!(u.accept(&d, SDP, t(10)));
        let ev = drain(&mut u);
        let ok = &sent(&ev)[0];
        assert_eq!(ok.status(), Some(200));
        assert_eq!(ok.to.tag.as_deref(), Some(d.local_tag.as_str()));
        assert_eq!(ok.cseq, 1);
        assert_eq!(ok.cseq_method, Method::Invite);
        assert_eq!(ok.call_id, "call-1");
        assert_eq!(ok.from.tag.as_deref(), Some("src-tag"));
        assert_eq!(ok.header("Contact"), Some("<sip:192.0.2.50:5090>;+sip.srs"));
        assert_eq!(ok.header("Require"), Some("siprec"));
        assert_eq!(ok.header("Record-Route"), Some("<sip:10.1.1.1;lr>"));
        assert_eq!(ok.header("Server"), Some("pbx-edge-test"));
        assert_eq!(ok.media_type(), Some("application/sdp"));
        assert_eq!(ok.body, SDP.as_bytes());
        assert!(ok.header("Allow").unwrap().contains("UPDATE"));
        // Top Via: rport filled in, received added (10.1.1.1 ≠ 192.0.2.10).
        assert_eq!(
            ok.header("Via"),
            Some("SIP/2.0/UDP 10.1.1.1:5060;branch=z9hG4bKinv1;rport=5062;received=192.0.2.10")
        );

        // Retransmissions at 0.5, 1, 2, 4, 4 s intervals.
        let w = run_until(&mut u, t(10 + 12_000));
        assert_eq!(send_times(&w, t(10)), vec![500, 1500, 3500, 7500, 11_500]);
        for (_, ev) in &w {
            assert_eq!(codes(ev), vec![200]);
        }
        let ev = feed(
            &mut u,
            t(12_100),
            &ack("z9hG4bKack1", "call-1", &d.local_tag, 1),
        );
        assert!(ev.is_empty(), "ACK absorbed silently");
        // No more sends; the transaction expires; the dialog stays.
        let w = run_until(&mut u, t(200_000));
        assert!(send_times(&w, t(0)).is_empty());
        assert!(w.iter().all(|(_, ev)| ev.is_empty()));
        assert_eq!(u.transaction_count(), 0);
        assert_eq!(u.dialog_count(), 1);
        assert_eq!(u.poll_timeout(), None);
    }

    #[test]
    fn retransmitted_invite_gets_the_same_response() {
        let mut u = uas();
        let inv = invite("z9hG4bKinv1", "call-2");
        let ev = feed(&mut u, t(0), &inv);
        let d = new_call(&ev);
        let first = ev
            .iter()
            .find(|e| matches!(e, UasEvent::Send { .. }))
            .cloned();
        let ev2 = feed(&mut u, t(500), &inv);
        assert_eq!(
            ev2,
            vec![first.unwrap()],
            "same 100 again, no second NewCall"
        );
        u.accept(&d, SDP, t(600));
        let ok = drain(&mut u);
        let ev3 = feed(&mut u, t(700), &inv);
        assert_eq!(ev3, ok, "retransmitted INVITE gets the 200 again");
        assert_eq!(u.dialog_count(), 1);
    }

    #[test]
    fn timer_h_without_ack_ends_call_and_sends_bye() {
        let mut u = uas();
        let d = established(&mut u, "call-3");
        let w = run_until(&mut u, t(10 + 32_000));
        let times = send_times(&w, t(10));
        // 0.5 1.5 3.5 7.5 11.5 15.5 ... 31.5, then the BYE at 32 s.
        assert_eq!(times.first(), Some(&500));
        assert!(
            times.contains(&31_500) && times.contains(&32_000),
            "{times:?}"
        );
        let (at, last) = w
            .iter()
            .find(|(_, ev)| !ended(ev).is_empty())
            .expect("Ended");
        assert_eq!(*at, t(10 + 32_000));
        assert_eq!(ended(last), vec![EndCause::AckTimeout]);
        let bye = sent(last)
            .into_iter()
            .find(|m| m.method() == Some(&Method::Bye))
            .expect("BYE sent");
        assert_eq!(bye.request_uri(), Some("sip:src@10.1.1.1:5060"));
        assert_eq!(bye.header("Route"), Some("<sip:10.1.1.1;lr>"));
        assert_eq!(bye.from.tag.as_deref(), Some(d.local_tag.as_str()));
        assert_eq!(bye.to.tag.as_deref(), Some("src-tag"));
        assert_eq!(bye.call_id, "call-3");
        assert_eq!(bye.cseq_method, Method::Bye);
        assert_eq!(u.dialog_count(), 0);
        // The BYE is retransmitted until answered.
        let branch = bye.via_branch.clone().unwrap();
        let w = run_until(&mut u, t(10 + 33_000));
        assert_eq!(send_times(&w, t(10 + 32_000)), vec![500]);
        let ok = format!(
            "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.50:5090;branch={branch}\r\nFrom: <sip:srs@192.0.2.50>;tag={}\r\nTo: <sip:src@10.1.1.1>;tag=src-tag\r\nCall-ID: call-3\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n",
            d.local_tag
        );
        let ev = feed(
            &mut u,
            t(10 + 33_100),
            &parse_message(ok.as_bytes()).unwrap(),
        );
        assert!(ev.is_empty());
        let w = run_until(&mut u, t(10 + 100_000));
        assert!(send_times(&w, t(0)).is_empty());
        assert_eq!(u.transaction_count(), 0);
    }

    #[test]
    fn tcp_no_retransmissions() {
        let mut u = uas();
        let ev = feed_tp(
            &mut u,
            t(0),
            &invite("z9hG4bKinv1", "call-4"),
            Transport::Tcp,
        );
        let d = new_call(&ev);
        u.accept(&d, SDP, t(10));
        let ok = sent(&drain(&mut u)).remove(0);
        assert_eq!(
            ok.header("Contact"),
            Some("<sip:192.0.2.50:5090;transport=tcp>;+sip.srs")
        );
        assert_eq!(
            u.poll_timeout(),
            Some(t(10 + 32_000)),
            "only the ACK deadline"
        );
        let w = run_until(&mut u, t(10 + 31_000));
        assert!(w.is_empty());
        let ev = feed_tp(
            &mut u,
            t(20_000),
            &ack("z9hG4bKack", "call-4", &d.local_tag, 1),
            Transport::Tcp,
        );
        assert!(ev.is_empty());
        let w = run_until(&mut u, t(100_000));
        assert!(w.iter().all(|(_, e)| e.is_empty()));
        assert_eq!(u.dialog_count(), 1);
    }

    #[test]
    fn tls_dialogs_name_the_tls_port_and_transport() {
        let mut u = uas();
        let ev = feed_tp(
            &mut u,
            t(0),
            &invite("z9hG4bKinv1", "call-tls"),
            Transport::Tls,
        );
        let d = new_call(&ev);
        u.accept(&d, SDP, t(10));
        let ok = sent(&drain(&mut u)).remove(0);
        assert_eq!(
            ok.header("Contact"),
            Some("<sip:192.0.2.50:5091;transport=tls>;+sip.srs")
        );
        feed_tp(
            &mut u,
            t(50),
            &ack("z9hG4bKack", "call-tls", &d.local_tag, 1),
            Transport::Tls,
        );
        assert!(u.hangup(&d, t(1000)));
        let ev = drain(&mut u);
        let bye = sent(&ev).remove(0);
        assert_eq!(bye.method(), Some(&Method::Bye));
        let via = bye.header("Via").unwrap();
        assert!(via.starts_with("SIP/2.0/TLS 192.0.2.50:5091;"), "{via}");
        assert!(ev.iter().any(|e| matches!(
            e,
            UasEvent::Send {
                transport: Transport::Tls,
                ..
            }
        )));
    }

    #[test]
    fn cancel_pending_invite() {
        let mut u = uas();
        let ev = feed(&mut u, t(0), &invite("z9hG4bKinv1", "call-5"));
        let d = new_call(&ev);
        let cancel = request("CANCEL", "z9hG4bKinv1", "call-5", None, 1, "CANCEL", "", "");
        let ev = feed(&mut u, t(100), &cancel);
        let msgs = sent(&ev);
        assert_eq!(codes(&ev), vec![200, 487]);
        assert_eq!(msgs[0].cseq_method, Method::Cancel);
        assert_eq!(msgs[1].cseq_method, Method::Invite);
        assert_eq!(msgs[0].to.tag, msgs[1].to.tag);
        assert_eq!(msgs[1].to.tag.as_deref(), Some(d.local_tag.as_str()));
        assert_eq!(ended(&ev), vec![EndCause::Cancel]);
        // The shell's late decision is a no-op.
        assert!(!u.accept(&d, SDP, t(150)));
        assert!(drain(&mut u).is_empty());
        // 487 retransmitted until its ACK (same branch as the INVITE).
        let w = run_until(&mut u, t(1000));
        assert_eq!(send_times(&w, t(100)), vec![500]);
        let ev = feed(
            &mut u,
            t(1100),
            &ack("z9hG4bKinv1", "call-5", &d.local_tag, 1),
        );
        assert!(ev.is_empty());
        let w = run_until(&mut u, t(100_000));
        assert!(w.iter().all(|(_, e)| e.is_empty()));
        assert_eq!(u.transaction_count(), 0);
        // Retransmitted CANCEL meanwhile would get 200 again, not a second 487.
    }

    #[test]
    fn cancel_race_after_accept() {
        let mut u = uas();
        let d = established(&mut u, "call-6");
        let cancel = request("CANCEL", "z9hG4bKinv1", "call-6", None, 1, "CANCEL", "", "");
        let ev = feed(&mut u, t(20), &cancel);
        assert_eq!(codes(&ev), vec![200], "CANCEL answered, INVITE stays 200");
        assert!(ended(&ev).is_empty());
        // A retransmitted CANCEL gets the same 200.
        assert_eq!(feed(&mut u, t(30), &cancel), ev);
        feed(&mut u, t(40), &ack("z9hG4bKack", "call-6", &d.local_tag, 1));
        let bye = request(
            "BYE",
            "z9hG4bKbye",
            "call-6",
            Some(&d.local_tag),
            2,
            "BYE",
            "",
            "",
        );
        let ev = feed(&mut u, t(5000), &bye);
        assert_eq!(codes(&ev), vec![200]);
        assert_eq!(ended(&ev), vec![EndCause::Bye]);
        // CANCEL for nothing known.
        let stray = request("CANCEL", "z9hG4bKnone", "call-x", None, 1, "CANCEL", "", "");
        assert_eq!(codes(&feed(&mut u, t(6000), &stray)), vec![481]);
    }

    #[test]
    fn bye_ends_dialog_once() {
        let mut u = uas();
        let d = established(&mut u, "call-7");
        feed(&mut u, t(50), &ack("z9hG4bKack", "call-7", &d.local_tag, 1));
        let bye = request(
            "BYE",
            "z9hG4bKbye1",
            "call-7",
            Some(&d.local_tag),
            2,
            "BYE",
            "",
            "",
        );
        let ev = feed(&mut u, t(60_000), &bye);
        assert_eq!(codes(&ev), vec![200]);
        assert_eq!(sent(&ev)[0].to.tag.as_deref(), Some(d.local_tag.as_str()));
        assert_eq!(
            ev.iter()
                .filter(|e| matches!(e, UasEvent::Ended { dialog, .. } if *dialog == d))
                .count(),
            1
        );
        // Retransmitted BYE: the same 200, no second Ended.
        let ev2 = feed(&mut u, t(60_500), &bye);
        assert_eq!(codes(&ev2), vec![200]);
        assert!(ended(&ev2).is_empty());
        // A new BYE for the gone dialog: 481.
        let bye2 = request(
            "BYE",
            "z9hG4bKbye2",
            "call-7",
            Some(&d.local_tag),
            3,
            "BYE",
            "",
            "",
        );
        assert_eq!(codes(&feed(&mut u, t(61_000), &bye2)), vec![481]);
        assert_eq!(u.dialog_count(), 0);
        assert!(u.state_bytes() > 0);
        run_until(&mut u, t(200_000));
        assert_eq!((u.transaction_count(), u.state_bytes()), (0, 0));
    }

    /// With held BYEs the dialog ends at once but the 200 waits for the
    /// shell; retransmissions meanwhile get nothing, afterwards the same
    /// 200; a BYE the shell never answers is answered at BYE_HOLD_MAX_US.
    #[test]
    fn held_bye_is_answered_when_the_shell_says_or_at_the_deadline() {
        for transport in [Transport::Udp, Transport::Tcp] {
            let mut u = uas();
            u.hold_byes(true);
            let d = established(&mut u, "call-h");
            feed(&mut u, t(50), &ack("z9hG4bKack", "call-h", &d.local_tag, 1));
            let bye = request(
                "BYE",
                "z9hG4bKbyeh",
                "call-h",
                Some(&d.local_tag),
                2,
                "BYE",
                "",
                "",
            );
            let ev = feed_tp(&mut u, t(1000), &bye, transport);
            assert!(codes(&ev).is_empty(), "no answer yet: {ev:?}");
            assert_eq!(ended(&ev), vec![EndCause::Bye]);
            assert_eq!(u.held_bye_count(), 1);
            // A retransmission is absorbed.
            assert!(codes(&feed_tp(&mut u, t(1500), &bye, transport)).is_empty());
            assert!(u.answer_bye(&d, t(1700)));
            let ev = drain(&mut u);
            assert_eq!(codes(&ev), vec![200]);
            assert_eq!(sent(&ev)[0].cseq_method, Method::Bye);
            assert_eq!(sent(&ev)[0].to.tag.as_deref(), Some(d.local_tag.as_str()));
            assert!(!u.answer_bye(&d, t(1800)), "answered once");
            assert_eq!(u.held_bye_count(), 0);
            if transport == Transport::Udp {
                // Retransmitted after the answer: the same 200.
                assert_eq!(codes(&feed(&mut u, t(2000), &bye)), vec![200]);
            }
            run_until(&mut u, t(200_000));
            assert_eq!((u.transaction_count(), u.state_bytes()), (0, 0));
        }
        // Never answered by the shell: 200 at the deadline, not before.
        let mut u = uas();
        u.hold_byes(true);
        let d = established(&mut u, "call-i");
        feed(&mut u, t(50), &ack("z9hG4bKack", "call-i", &d.local_tag, 1));
        let bye = request(
            "BYE",
            "z9hG4bKbyei",
            "call-i",
            Some(&d.local_tag),
            2,
            "BYE",
            "",
            "",
        );
        feed(&mut u, t(1000), &bye);
        let w = run_until(&mut u, t(1000 + BYE_HOLD_MAX_US / 1000 - 1));
        assert!(w.iter().all(|(_, e)| codes(e).is_empty()));
        let w = run_until(&mut u, t(1000 + BYE_HOLD_MAX_US / 1000));
        let all: Vec<u16> = w.iter().flat_map(|(_, e)| codes(e)).collect();
        assert_eq!(all, vec![200]);
        assert_eq!(u.held_bye_count(), 0);
        // Stopping answers whatever is held.
        let mut u = uas();
        u.hold_byes(true);
        let d = established(&mut u, "call-j");
        feed(&mut u, t(50), &ack("z9hG4bKack", "call-j", &d.local_tag, 1));
        let bye = request(
            "BYE",
            "z9hG4bKbyej",
            "call-j",
            Some(&d.local_tag),
            2,
            "BYE",
            "",
            "",
        );
        assert!(codes(&feed(&mut u, t(100), &bye)).is_empty());
        u.answer_held_byes(t(200));
        assert_eq!(codes(&drain(&mut u)), vec![200]);
    }

    #[test]
    fn unknown_dialog_481() {
        let mut u = uas();
        let bye = request("BYE", "z9hG4bK1", "nope", Some("zzz"), 2, "BYE", "", "");
        assert_eq!(codes(&feed(&mut u, t(0), &bye)), vec![481]);
        let info = request("INFO", "z9hG4bK2", "nope", None, 2, "INFO", "", "");
        assert_eq!(codes(&feed(&mut u, t(0), &info)), vec![481]);
        let upd = request(
            "UPDATE",
            "z9hG4bK3",
            "nope",
            Some("zzz"),
            2,
            "UPDATE",
            "",
            SDP,
        );
        assert_eq!(codes(&feed(&mut u, t(0), &upd)), vec![481]);
        // A re-INVITE for an unknown dialog: 481, retransmitted until ACK.
        let reinv = request(
            "INVITE",
            "z9hG4bK4",
            "nope",
            Some("zzz"),
            2,
            "INVITE",
            "",
            SDP,
        );
        let ev = feed(&mut u, t(0), &reinv);
        assert_eq!(codes(&ev), vec![481]);
        assert!(ev.iter().all(|e| !matches!(e, UasEvent::NewCall { .. })));
        let w = run_until(&mut u, t(600));
        assert_eq!(send_times(&w, t(0)), vec![500]);
        feed(&mut u, t(700), &ack("z9hG4bK4", "nope", "zzz", 2));
        let w = run_until(&mut u, t(100_000));
        assert!(w.iter().all(|(_, e)| e.is_empty()));
        // A stray ACK is absorbed.
        assert!(feed(&mut u, t(0), &ack("z9hG4bK5", "nope", "zzz", 9)).is_empty());
    }

    #[test]
    fn unspecified_listen_uses_the_address_the_peer_reaches() {
        let mut u = Uas::new(UasConfig {
            contact_host: "0.0.0.0".into(),
            contact_port: 5090,
            tls_port: None,
            user_agent: "pbx-edge-test".into(),
            tag_seed: 7,
        });
        assert!(u.needs_local_ip(src().ip()));
        u.learn_local_ip(src().ip(), "192.0.2.77".parse().unwrap());
        assert!(!u.needs_local_ip(src().ip()));
        let opt = request("OPTIONS", "z9hG4bKo1", "opt-1", None, 1, "OPTIONS", "", "");
        let r = sent(&feed(&mut u, t(0), &opt)).remove(0);
        assert_eq!(r.header("Contact"), Some("<sip:192.0.2.77:5090>;+sip.srs"));
        // Our BYE's Via names it too.
        let ev = feed(&mut u, t(10), &invite("z9hG4bKi1", "call-1"));
        let d = ev
            .iter()
            .find_map(|e| match e {
                UasEvent::NewCall { dialog, .. } => Some(dialog.clone()),
                _ => None,
            })
            .unwrap();
        assert!(u.accept(&d, SDP, t(20)));
        let ok = sent(&drain(&mut u)).remove(0);
        assert!(ok.header("Contact").unwrap().contains("192.0.2.77:5090"));
        assert!(u.hangup(&d, t(30)));
        let bye = sent(&drain(&mut u))
            .into_iter()
            .find(|m| m.method() == Some(&Method::Bye))
            .unwrap();
        assert!(bye.header("Via").unwrap().contains("192.0.2.77:5090"));
    }

    #[test]
    fn options_and_other_methods() {
        let mut u = uas();
        let opt = request("OPTIONS", "z9hG4bKo1", "opt-1", None, 1, "OPTIONS", "", "");
        let ev = feed(&mut u, t(0), &opt);
        let r = sent(&ev).remove(0);
        assert_eq!(r.status(), Some(200));
        assert!(r.to.tag.is_some());
        assert!(r.header("Allow").unwrap().contains("INVITE"));
        let accept = r.header("Accept").unwrap();
        assert!(accept.contains("application/sdp"));
        assert!(accept.contains("application/rs-metadata+xml"));
        assert_eq!(r.header("Supported"), Some("siprec"));
        assert!(r.header("Contact").unwrap().contains("+sip.srs"));
        assert!(!ev.iter().any(|e| matches!(e, UasEvent::NewCall { .. })));
        let reg = request(
            "REGISTER",
            "z9hG4bKr1",
            "reg-1",
            None,
            1,
            "REGISTER",
            "",
            "",
        );
        let ev = feed(&mut u, t(0), &reg);
        let r = sent(&ev).remove(0);
        assert_eq!(r.status(), Some(405));
        assert!(r.header("Allow").is_some());
        // Unsupported Require → 420 with Unsupported.
        let inv = request(
            "INVITE",
            "z9hG4bKr2",
            "req-1",
            None,
            1,
            "INVITE",
            "Require: siprec, 100rel\r\n",
            SDP,
        );
        let ev = feed(&mut u, t(0), &inv);
        let r = sent(&ev).remove(0);
        assert_eq!(r.status(), Some(420));
        assert_eq!(r.header("Unsupported"), Some("100rel"));
        assert_eq!(u.dialog_count(), 0);
        // CSeq method mismatch → 400.
        let bad = request("OPTIONS", "z9hG4bKb", "bad-1", None, 1, "INVITE", "", "");
        assert_eq!(codes(&feed(&mut u, t(0), &bad)), vec![400]);
        // Over TCP, non-INVITE answers keep no state.
        let before = u.transaction_count();
        let opt2 = request("OPTIONS", "z9hG4bKo2", "opt-2", None, 1, "OPTIONS", "", "");
        feed_tp(&mut u, t(0), &opt2, Transport::Tcp);
        assert_eq!(u.transaction_count(), before);
    }

    #[test]
    fn reinvite_and_update_in_dialog() {
        let mut u = uas();
        let d = established(&mut u, "call-8");
        feed(&mut u, t(50), &ack("z9hG4bKack", "call-8", &d.local_tag, 1));
        let reinv = request(
            "INVITE",
            "z9hG4bKre2",
            "call-8",
            Some(&d.local_tag),
            2,
            "INVITE",
            "",
            SDP,
        );
        let ev = feed(&mut u, t(10_000), &reinv);
        assert_eq!(codes(&ev), vec![100]);
        assert!(ev.iter().any(
            |e| matches!(e, UasEvent::Reinvite { dialog, msg } if *dialog == d && msg.cseq == 2)
        ));
        // A second offer while the first is pending: 500 + Retry-After.
        let upd = request(
            "UPDATE",
            "z9hG4bKup3",
            "call-8",
            Some(&d.local_tag),
            3,
            "UPDATE",
            "",
            SDP,
        );
        let ev = feed(&mut u, t(10_100), &upd);
        let r = sent(&ev).remove(0);
        assert_eq!(r.status(), Some(500));
        assert!(r.header("Retry-After").is_some());
        // Accept the re-INVITE: 200 retransmitted until ACK with CSeq 2.
        assert!(u.accept(&d, SDP, t(10_200)));
        let ok = sent(&drain(&mut u)).remove(0);
        assert_eq!((ok.status(), ok.cseq), (Some(200), 2));
        assert_eq!(ok.header("Record-Route"), None, "route set is fixed");
        let w = run_until(&mut u, t(11_000));
        assert_eq!(send_times(&w, t(10_200)), vec![500]);
        // An ACK with the wrong CSeq does not stop it; the right one does.
        feed(
            &mut u,
            t(11_100),
            &ack("z9hG4bKa1", "call-8", &d.local_tag, 1),
        );
        let w = run_until(&mut u, t(12_000));
        assert_eq!(send_times(&w, t(10_200)), vec![1500]);
        feed(
            &mut u,
            t(12_100),
            &ack("z9hG4bKa2", "call-8", &d.local_tag, 2),
        );
        let w = run_until(&mut u, t(60_000));
        assert!(send_times(&w, t(0)).is_empty());
        // UPDATE: event, 200 with body, no retransmissions.
        let upd = request(
            "UPDATE",
            "z9hG4bKup4",
            "call-8",
            Some(&d.local_tag),
            4,
            "UPDATE",
            "",
            SDP,
        );
        let ev = feed(&mut u, t(70_000), &upd);
        assert!(codes(&ev).is_empty(), "no 100 for non-INVITE");
        assert!(ev.iter().any(|e| matches!(e, UasEvent::Update { .. })));
        assert!(u.accept(&d, SDP, t(70_010)));
        let ok = sent(&drain(&mut u)).remove(0);
        assert_eq!(
            (ok.status(), ok.cseq_method.clone()),
            (Some(200), Method::Update)
        );
        assert_eq!(ok.body, SDP.as_bytes());
        let w = run_until(&mut u, t(75_000));
        assert!(send_times(&w, t(0)).is_empty());
        // A rejected re-INVITE leaves the dialog up.
        let reinv = request(
            "INVITE",
            "z9hG4bKre5",
            "call-8",
            Some(&d.local_tag),
            5,
            "INVITE",
            "",
            SDP,
        );
        feed(&mut u, t(80_000), &reinv);
        assert!(u.reject(&d, 488, "Not Acceptable Here", t(80_010)));
        let ev = drain(&mut u);
        assert_eq!(codes(&ev), vec![488]);
        assert!(ended(&ev).is_empty());
        assert_eq!(u.dialog_count(), 1);
        feed(
            &mut u,
            t(80_100),
            &ack("z9hG4bKre5", "call-8", &d.local_tag, 5),
        );
        // CSeq going backwards: 500.
        let old = request(
            "UPDATE",
            "z9hG4bKold",
            "call-8",
            Some(&d.local_tag),
            3,
            "UPDATE",
            "",
            "",
        );
        assert_eq!(codes(&feed(&mut u, t(81_000), &old)), vec![500]);
        // A BYE with the rejected re-INVITE's CSeq (5): not lower, so taken.
        let bye = request(
            "BYE",
            "z9hG4bKbye5",
            "call-8",
            Some(&d.local_tag),
            5,
            "BYE",
            "",
            "",
        );
        let ev = feed(&mut u, t(82_000), &bye);
        assert_eq!(codes(&ev), vec![200]);
        assert_eq!(u.dialog_count(), 0);
    }

    #[test]
    fn reject_codes_and_ack() {
        for code in [403u16, 488, 503] {
            let mut u = uas();
            let ev = feed(&mut u, t(0), &invite("z9hG4bKinv1", "call-9"));
            let d = new_call(&ev);
            assert!(!u.reject(&d, 200, "OK", t(1)), "200 is not a rejection");
            assert!(u.reject(&d, code, "No", t(5)));
            let ev = drain(&mut u);
            let r = sent(&ev).remove(0);
            assert_eq!(r.status(), Some(code));
            assert_eq!(r.to.tag.as_deref(), Some(d.local_tag.as_str()));
            assert_eq!(ended(&ev), vec![EndCause::Rejected(code)]);
            assert!(!u.reject(&d, code, "No", t(6)));
            // Retransmitted (UDP) until the ACK.
            let w = run_until(&mut u, t(2000));
            assert_eq!(send_times(&w, t(5)), vec![500, 1500]);
            feed(
                &mut u,
                t(2100),
                &ack("z9hG4bKinv1", "call-9", &d.local_tag, 1),
            );
            let w = run_until(&mut u, t(100_000));
            assert!(send_times(&w, t(0)).is_empty());
            assert_eq!((u.dialog_count(), u.transaction_count()), (0, 0));
        }
    }

    #[test]
    fn refused_requests_are_answered_without_state() {
        use crate::sip::message::{salvage_request, SipError, MAX_VIAS};
        let mut u = uas();
        // An INVITE with 1,000 Vias: refused by the parser, answered 400 with
        // the first 70 Vias (the top one annotated), From, To + tag, CSeq.
        let mut text = String::from("INVITE sip:srs@192.0.2.50 SIP/2.0\r\n");
        text.push_str("Via: SIP/2.0/UDP 10.1.1.1:5060;branch=z9hG4bKbig;rport\r\n");
        for i in 1..1000 {
            text.push_str(&format!(
                "Via: SIP/2.0/UDP 10.2.{}.{};branch=z9hG4bK{i}\r\n",
                i / 250,
                i % 250
            ));
        }
        text.push_str("From: <sip:src@10.1.1.1>;tag=f1\r\nTo: <sip:srs@192.0.2.50>\r\nCall-ID: vias\r\nCSeq: 3 INVITE\r\nContent-Length: 0\r\n\r\n");
        let err = parse_message(text.as_bytes()).unwrap_err();
        assert_eq!(err, SipError::TooManyVias(1000));
        let refusal = Refusal::for_sip_error(&err).unwrap();
        let msg = salvage_request(text.as_bytes()).unwrap();
        assert!(u.refuse(src(), Transport::Udp, &msg, &refusal));
        let ev = drain(&mut u);
        let UasEvent::Send {
            bytes, transport, ..
        } = &ev[0]
        else {
            panic!("{ev:?}");
        };
        assert_eq!(*transport, Transport::Udp);
        assert!(
            bytes.len() < text.len() / 4,
            "no amplification: {}",
            bytes.len()
        );
        let r = sent(&ev).remove(0);
        assert_eq!(r.status(), Some(400));
        assert_eq!(
            r.start,
            crate::sip::StartLine::Response {
                code: 400,
                reason: "Too Many Via Headers".into()
            }
        );
        assert_eq!(r.call_id, "vias");
        assert_eq!((r.cseq, r.cseq_method.clone()), (3, Method::Invite));
        assert_eq!(r.headers_named("Via").count(), MAX_VIAS);
        assert_eq!(
            r.header("Via"),
            Some("SIP/2.0/UDP 10.1.1.1:5060;branch=z9hG4bKbig;rport=5062;received=192.0.2.10")
        );
        assert_eq!(r.from.tag.as_deref(), Some("f1"));
        let tag = r.to.tag.clone().expect("our To-tag");
        assert_eq!(
            r.header("Warning"),
            Some("399 pbx-edge \"1000 Via values, more than the 70 accepted\"")
        );
        // No state: a retransmission gets the same answer again.
        assert_eq!((u.dialog_count(), u.transaction_count()), (0, 0));
        assert!(u.refuse(src(), Transport::Udp, &msg, &refusal));
        let again = sent(&drain(&mut u)).remove(0);
        assert_eq!(again.to.tag.as_deref(), Some(tag.as_str()));
        // Over TCP the answer goes back on the connection's transport.
        assert!(u.refuse(src(), Transport::Tcp, &msg, &refusal));
        assert!(matches!(
            drain(&mut u)[0],
            UasEvent::Send {
                transport: Transport::Tcp,
                ..
            }
        ));
        // An ACK is never answered; neither is a response.
        let ack = salvage_request(
            text.replace("INVITE sip:", "ACK sip:")
                .replace("3 INVITE", "3 ACK")
                .as_bytes(),
        )
        .unwrap();
        assert!(!u.refuse(src(), Transport::Udp, &ack, &refusal));
        assert!(drain(&mut u).is_empty());
    }

    #[test]
    fn an_offer_over_a_limit_is_rejected_488_with_a_warning() {
        use crate::sip::sdp::SdpError;
        use crate::sip::siprec::SiprecError;
        let mut u = uas();
        let ev = feed(&mut u, t(0), &invite("z9hG4bKm", "call-m"));
        let d = new_call(&ev);
        let refusal = Refusal::for_offer(&SiprecError::Sdp(SdpError::TooManyMedia));
        assert!(u.reject_refusal(&d, &refusal, t(5)));
        let ev = drain(&mut u);
        let r = sent(&ev).remove(0);
        assert_eq!(r.status(), Some(488));
        assert_eq!(
            r.header("Warning"),
            Some("399 pbx-edge \"SDP: more than 64 media sections\"")
        );
        assert_eq!(ended(&ev), vec![EndCause::Rejected(488)]);
    }

    #[test]
    fn undecided_invite_times_out_with_503() {
        let mut u = uas();
        let ev = feed(&mut u, t(0), &invite("z9hG4bKinv1", "call-10"));
        let _d = new_call(&ev);
        let w = run_until(&mut u, t(32_000));
        let ev: Vec<UasEvent> = w.into_iter().flat_map(|(_, e)| e).collect();
        assert_eq!(codes(&ev), vec![503]);
        assert_eq!(ended(&ev), vec![EndCause::DecisionTimeout]);
        assert_eq!(u.dialog_count(), 0);
    }

    #[test]
    fn hangup_sends_bye_and_retransmits() {
        let mut u = uas();
        let d = established(&mut u, "call-11");
        feed(
            &mut u,
            t(50),
            &ack("z9hG4bKack", "call-11", &d.local_tag, 1),
        );
        assert!(u.hangup(&d, t(1000)));
        let ev = drain(&mut u);
        assert_eq!(ended(&ev), vec![EndCause::LocalBye]);
        let bye = sent(&ev).remove(0);
        assert_eq!(bye.method(), Some(&Method::Bye));
        assert_eq!(bye.cseq, 1);
        let w = run_until(&mut u, t(1000 + 40_000));
        let times = send_times(&w, t(1000));
        assert_eq!(&times[..4], &[500, 1500, 3500, 7500]);
        assert_eq!(u.transaction_count(), 0);
        assert!(!u.hangup(&d, t(50_000)));
        // Hanging up an undecided call rejects it.
        let ev = feed(&mut u, t(60_000), &invite("z9hG4bKinv2", "call-12"));
        let d2 = new_call(&ev);
        assert!(u.hangup(&d2, t(60_001)));
        let ev = drain(&mut u);
        assert_eq!(codes(&ev), vec![480]);
        assert_eq!(ended(&ev), vec![EndCause::Rejected(480)]);
    }

    #[test]
    fn bye_during_pending_reinvite_answers_487() {
        let mut u = uas();
        let d = established(&mut u, "call-13");
        feed(
            &mut u,
            t(50),
            &ack("z9hG4bKack", "call-13", &d.local_tag, 1),
        );
        let reinv = request(
            "INVITE",
            "z9hG4bKre2",
            "call-13",
            Some(&d.local_tag),
            2,
            "INVITE",
            "",
            SDP,
        );
        feed(&mut u, t(100), &reinv);
        let bye = request(
            "BYE",
            "z9hG4bKbye",
            "call-13",
            Some(&d.local_tag),
            3,
            "BYE",
            "",
            "",
        );
        let ev = feed(&mut u, t(200), &bye);
        assert_eq!(codes(&ev), vec![487, 200]);
        assert_eq!(ended(&ev), vec![EndCause::Bye]);
        assert!(!u.accept(&d, SDP, t(300)));
    }

    #[test]
    fn rfc2543_branch_and_ipv6_contact() {
        let mut u = Uas::new(UasConfig {
            contact_host: "2001:db8::50".into(),
            contact_port: 5090,
            tls_port: Some(5091),
            user_agent: String::new(),
            tag_seed: 1,
        });
        let inv = invite("oldstyle1", "call-14");
        let ev = feed(&mut u, t(0), &inv);
        let d = new_call(&ev);
        // Retransmission still matched without the magic cookie.
        assert_eq!(codes(&feed(&mut u, t(100), &inv)), vec![100]);
        u.accept(&d, SDP, t(200));
        let ok = sent(&drain(&mut u)).remove(0);
        assert_eq!(
            ok.header("Contact"),
            Some("<sip:[2001:db8::50]:5090>;+sip.srs")
        );
        assert_eq!(ok.header("Server"), None);
    }

    #[test]
    fn cisco_cube_invite_end_to_end() {
        use crate::sip::sdp::{parse_sdp, Direction};
        use crate::sip::siprec::{answer_sdp, assign_streams, siprec_parts};
        let Some(dir) = crate::sip::test_support::corpus_dir() else {
            return;
        };
        let Ok(bytes) = std::fs::read(dir.join("siprec/invite_cisco_cube_media_proxy.txt")) else {
            eprintln!("note: Cisco CUBE INVITE missing, test skipped");
            return;
        };
        let inv = parse_message(&bytes).unwrap();
        let mut u = uas();
        let ev = feed(&mut u, t(0), &inv);
        assert_eq!(codes(&ev), vec![100]);
        let (d, invite) = ev
            .iter()
            .find_map(|e| match e {
                UasEvent::NewCall { dialog, invite, .. } => Some((dialog.clone(), invite.clone())),
                _ => None,
            })
            .unwrap();
        assert_eq!(d.remote_tag, "678813-6AC");
        let (offer, meta) = siprec_parts(&invite).unwrap();
        let a = assign_streams(&offer, &meta.unwrap()).unwrap();
        assert_eq!(a.len(), 2);
        let answer = answer_sdp(
            &offer,
            "192.0.2.50".parse().unwrap(),
            &[20000, 20002],
            &[],
            1,
        );
        assert!(u.accept(&d, &answer, t(20)));
        let ok = sent(&drain(&mut u)).remove(0);
        assert_eq!(ok.status(), Some(200));
        assert_eq!(ok.header("Require"), Some("siprec"));
        assert_eq!(ok.header("CSeq"), Some("101 INVITE"));
        assert_eq!(
            ok.call_id,
            "B0FA2851-4D4811EA-82E5D263-E98F8024@8.43.33.209"
        );
        let sdp = ok.sdp().unwrap().unwrap();
        let ports: Vec<u16> = sdp.media.iter().map(|m| m.port).collect();
        assert_eq!(ports, vec![20000, 20002]);
        assert!(sdp
            .media
            .iter()
            .all(|m| m.direction == Some(Direction::RecvOnly)));
        assert_eq!(parse_sdp(&answer).unwrap(), sdp);
        // The SRC's ACK (new branch, our tag, CSeq 101) confirms the dialog.
        let ack_text = format!(
            "ACK sip:8.43.33.203:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 8.43.33.209:5060;branch=z9hG4bKack\r\nFrom: <sip:8.43.33.209>;tag=678813-6AC\r\nTo: <sip:9876@8.43.33.203>;tag={}\r\nCall-ID: B0FA2851-4D4811EA-82E5D263-E98F8024@8.43.33.209\r\nCSeq: 101 ACK\r\nContent-Length: 0\r\n\r\n",
            d.local_tag
        );
        feed(&mut u, t(100), &parse_message(ack_text.as_bytes()).unwrap());
        let w = run_until(&mut u, t(60_000));
        assert!(send_times(&w, t(0)).is_empty());
        assert_eq!(u.dialog_count(), 1);
    }

    proptest::proptest! {
        /// Any interleaving of requests, shell decisions and timeouts: no
        /// panic, one Ended per NewCall at most, and everything but confirmed
        /// dialogs is gone once time runs far enough.
        #[test]
        fn random_sequences_stay_bounded(ops in proptest::collection::vec((0u8..12, 0u8..3, 0i64..3000), 1..60)) {
            let mut u = uas();
            let mut now = 0i64;
            let mut dialogs: Vec<DialogId> = Vec::new();
            let mut new_calls = 0usize;
            let mut ends: HashMap<DialogId, usize> = HashMap::new();
            let mut record = |ev: Vec<UasEvent>, dialogs: &mut Vec<DialogId>| {
                for e in ev {
                    match e {
                        UasEvent::NewCall { dialog, .. } => { new_calls += 1; dialogs.push(dialog); }
                        UasEvent::Ended { dialog, .. } => { *ends.entry(dialog).or_default() += 1; }
                        UasEvent::Send { bytes, .. } => { proptest::prop_assert!(parse_message(&bytes).is_ok()); }
                        _ => {}
                    }
                }
                Ok(())
            };
            for (op, which, dt) in ops {
                now += dt;
                let call = format!("c{which}");
                let tag = dialogs.iter().rev().find(|d| d.call_id == call).map(|d| d.local_tag.clone());
                let d = dialogs.iter().rev().find(|d| d.call_id == call).cloned();
                let branch = format!("z9hG4bK{which}");
                let cseq = 1 + (now as u32 % 7);
                let msg = match op {
                    0 => Some(invite(&branch, &call)),
                    1 => Some(request("CANCEL", &branch, &call, None, 1, "CANCEL", "", "")),
                    2 => tag.as_deref().map(|tg| ack("z9hG4bKa", &call, tg, 1)),
                    3 => tag.as_deref().map(|tg| request("BYE", &format!("z9hG4bKb{now}"), &call, Some(tg), cseq + 10, "BYE", "", "")),
                    4 => tag.as_deref().map(|tg| request("INVITE", &format!("z9hG4bKr{now}"), &call, Some(tg), cseq + 1, "INVITE", "", SDP)),
                    5 => Some(request("OPTIONS", &format!("z9hG4bKo{now}"), &call, None, 1, "OPTIONS", "", "")),
                    6 => { if let Some(d) = &d { u.accept(d, SDP, t(now)); } None }
                    7 => { if let Some(d) = &d { u.reject(d, 488, "No", t(now)); } None }
                    8 => { if let Some(d) = &d { u.hangup(d, t(now)); } None }
                    9 => tag.as_deref().map(|tg| request("UPDATE", &format!("z9hG4bKu{now}"), &call, Some(tg), cseq + 2, "UPDATE", "", SDP)),
                    _ => { u.handle(UasInput::Timeout(t(now))); None }
                };
                if let Some(m) = msg {
                    u.handle(UasInput::Message { at: t(now), from: src(), transport: Transport::Udp, msg: &m, raw_len: 0 });
                }
                record(drain(&mut u), &mut dialogs)?;
            }
            let w = run_until(&mut u, t(now + 1_000_000));
            for (_, ev) in w {
                record(ev, &mut dialogs)?;
            }
            proptest::prop_assert!(ends.values().all(|n| *n == 1));
            proptest::prop_assert!(ends.len() <= new_calls);
            proptest::prop_assert_eq!(u.transaction_count(), 0);
            proptest::prop_assert_eq!(u.dialog_count() + ends.len(), new_calls);
            proptest::prop_assert_eq!(u.poll_timeout(), None);
            if u.dialog_count() == 0 {
                proptest::prop_assert_eq!(u.state_bytes(), 0, "byte accounting balances");
            }
        }
    }
}
