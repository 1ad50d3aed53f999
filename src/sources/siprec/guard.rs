//! The SIPREC server's guards against heavy, broken or hostile SIP input
//! (whoever reaches `sources.siprec.listen` / `tls_listen`: UDP datagrams and
//! TCP / TLS connections).
//!
//! - **Every request answered** ([`Refuser`]): a request the parser or the TCP
//!   framer refuses (over a limit, malformed) gets the answer
//!   [`pbx_core::sip::limits`] gives it (513 / 400 / 488 with a `Warning`
//!   naming the limit), addressed from what
//!   [`pbx_core::sip::salvage_request`] kept of it. A message too broken to
//!   address (no Via, Call-ID or CSeq; not a request) is counted and dropped.
//! - **Per-source rate limit** of those answers: at most
//!   [`REFUSALS_PER_SECOND`] per source address (bursts of
//!   [`REFUSAL_BURST`]); beyond, refused messages are dropped unanswered and
//!   counted as `rate_limited`, so a flood of junk cannot turn us into a
//!   reflector or eat the SIP task. Requests that parse are never limited
//!   here (an SBC's busy hour is not an attack).
//! - **Connections** ([`read_connection`]): SIP over TCP/TLS is framed with
//!   the framer's limits; a refusal after which the stream is lost
//!   (`Content-Length: 2000000000`, a Content-Length that is not a number, an
//!   endless header block) is answered, then the connection is closed (our
//!   answer and a FIN first, then up to [`CLOSE_LINGER`] of reading what the
//!   sender still sends, so it gets to read the answer). A connection idle
//!   for `tcp_idle_timeout` (no byte, not even a CRLF keep-alive) is closed,
//!   unless a call set up over it is in progress (its BYE comes that way,
//!   and that BYE's answer, sent once the recording is durable); a
//!   sender that takes longer than `tcp_message_timeout` to finish a message
//!   (one that trickles bytes) is cut off. At most [`MAX_CONNS_PER_IP`]
//!   connections per address and [`MAX_CONNS`] in all; more are closed at
//!   once.
//! - **Counters** ([`GuardCounters`]), exported as
//!   `pbx_edge_sip_rejected_total{source, reason}`; reasons are
//!   [`REASONS`]. Logs name the peer and the reason, never the message.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use pbx_core::sip::stream::{Frame, SipStreamFramer};
use pbx_core::sip::uas::{Transport, Uas};
use pbx_core::sip::{salvage_request, Refusal, SipError};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

/// Refusal answers per second and source address.
pub const REFUSALS_PER_SECOND: f64 = 50.0;
/// Refusal answers a source may get at once.
pub const REFUSAL_BURST: f64 = 100.0;
/// Source addresses whose refusal budget is remembered.
const MAX_TRACKED_SOURCES: usize = 4096;
/// Connections (TCP and TLS) from one address.
pub const MAX_CONNS_PER_IP: usize = 128;
/// Connections (TCP and TLS) in all.
pub const MAX_CONNS: usize = 2048;
/// After a refusal that loses the stream: how long we go on reading (and
/// dropping) what the sender still sends before the socket is closed.
pub const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Why SIP input was refused, as counted (label `reason` of
/// `pbx_edge_sip_rejected_total`):
/// - the answer's kind ([`Refusal::kind`]): `too_large` (513),
///   `too_many_headers`, `too_many_vias`, `bad_content_length`,
///   `bad_request` (400), `sdp_limit`, `metadata_limit`, `body_limit`,
///   `not_acceptable` (488, an offer we cannot take);
/// - dropped without an answer: `unanswerable` (too broken to address a
///   response), `rate_limited` (over the source's refusal budget);
/// - connections closed: `tcp_idle`, `tcp_slow` (a message not finished in
///   time), `tcp_connections` (over the connection caps).
pub const REASONS: [&str; 14] = [
    "too_large",
    "too_many_headers",
    "too_many_vias",
    "bad_content_length",
    "bad_request",
    "sdp_limit",
    "metadata_limit",
    "body_limit",
    "not_acceptable",
    "unanswerable",
    "rate_limited",
    "tcp_idle",
    "tcp_slow",
    "tcp_connections",
];

/// Refusals by reason (shared by the SIP task, the connection tasks and the
/// status publisher).
#[derive(Debug, Default)]
pub struct GuardCounters {
    counts: [AtomicU64; REASONS.len()],
}

impl GuardCounters {
    /// Count one refusal (`reason` from [`REASONS`]; anything else is a bug
    /// and counted as `bad_request`).
    pub fn count(&self, reason: &str) {
        let i = REASONS.iter().position(|r| *r == reason).unwrap_or(4);
        if let Some(c) = self.counts.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn get(&self, reason: &str) -> u64 {
        REASONS
            .iter()
            .position(|r| *r == reason)
            .and_then(|i| self.counts.get(i))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Refusals of every reason together.
    pub(crate) fn total(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Every reason with its count (zeros included, so the metric exists
    /// from the start).
    pub(crate) fn snapshot(&self) -> BTreeMap<String, u64> {
        REASONS
            .iter()
            .zip(&self.counts)
            .map(|(r, c)| ((*r).to_string(), c.load(Ordering::Relaxed)))
            .collect()
    }
}

/// A token bucket per source address.
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: HashMap<IpAddr, (f64, Instant)>,
}

impl RateLimiter {
    /// Whether `ip` may get one more answer at `now` (and book it).
    pub fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.buckets.len() >= MAX_TRACKED_SOURCES && !self.buckets.contains_key(&ip) {
            // Forget sources whose budget has refilled; if that is not
            // enough, everyone starts afresh (bounded memory wins).
            self.buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * REFUSALS_PER_SECOND
                    < REFUSAL_BURST
            });
            if self.buckets.len() >= MAX_TRACKED_SOURCES {
                self.buckets.clear();
            }
        }
        let (tokens, at) = self.buckets.entry(ip).or_insert((REFUSAL_BURST, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * REFUSALS_PER_SECOND)
            .min(REFUSAL_BURST);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Answers what the parser or framer refused (see the module doc). Owned
/// by the SIP task.
#[derive(Debug)]
pub struct Refuser {
    counters: Arc<GuardCounters>,
    limiter: RateLimiter,
    /// Log lines are throttled too: at most one per [`LOG_EVERY`].
    last_log: Option<Instant>,
    unlogged: u64,
}

const LOG_EVERY: Duration = Duration::from_secs(10);

impl Refuser {
    pub fn new(counters: Arc<GuardCounters>) -> Refuser {
        Refuser {
            counters,
            limiter: RateLimiter::default(),
            last_log: None,
            unlogged: 0,
        }
    }

    pub fn counters(&self) -> &Arc<GuardCounters> {
        &self.counters
    }

    /// `bytes` (a datagram, a framed message, or the head the framer kept
    /// of a refused one) was refused with `error`: answer it through `uas`
    /// if it can be addressed and the source is within its budget; count it.
    /// `true` when an answer was queued.
    pub fn refuse(
        &mut self,
        uas: &mut Uas,
        bytes: &[u8],
        error: &SipError,
        peer: SocketAddr,
        transport: Transport,
    ) -> bool {
        self.refuse_at(uas, bytes, error, peer, transport, Instant::now())
    }

    /// [`Refuser::refuse`] at a given time (for the rate limit).
    pub(crate) fn refuse_at(
        &mut self,
        uas: &mut Uas,
        bytes: &[u8],
        error: &SipError,
        peer: SocketAddr,
        transport: Transport,
        now: Instant,
    ) -> bool {
        let Some(refusal) = Refusal::for_sip_error(error) else {
            return false; // an empty keep-alive, nothing to say
        };
        let Some(msg) = salvage_request(bytes) else {
            self.counters.count("unanswerable");
            self.log(peer, "unanswerable", error);
            return false;
        };
        if !self.limiter.allow(peer.ip(), now) {
            self.counters.count("rate_limited");
            return false;
        }
        self.counters.count(refusal.kind);
        self.log(peer, refusal.kind, error);
        uas.refuse(peer, transport, &msg, &refusal)
    }

    /// An offer refused by the SIP task itself (488): counted.
    pub(crate) fn count_offer(&self, refusal: &Refusal) {
        self.counters.count(refusal.kind);
    }

    /// A request that parsed but cannot be answered (no Via): dropped,
    /// counted as `unanswerable`.
    pub(crate) fn count_unanswerable(&self) {
        self.counters.count("unanswerable");
    }

    fn log(&mut self, peer: SocketAddr, reason: &str, error: &SipError) {
        let now = Instant::now();
        if self
            .last_log
            .is_some_and(|t| now.duration_since(t) < LOG_EVERY)
        {
            self.unlogged += 1;
            return;
        }
        self.last_log = Some(now);
        let more = std::mem::take(&mut self.unlogged);
        tracing::warn!(
            peer = %peer,
            reason,
            "SIP message refused: {error} ({more} more refused since the last such line; counted in pbx_edge_sip_rejected_total)"
        );
    }
}

/// Where calls are in progress (the SRC addresses of the SIP task's
/// sessions, and of the BYEs held until their recording is durable):
/// connections from there are not closed for being idle.
#[derive(Debug, Default, Clone)]
pub struct BusyPeers(Arc<RwLock<HashSet<SocketAddr>>>);

impl BusyPeers {
    pub fn set(&self, peers: impl IntoIterator<Item = SocketAddr>) {
        if let Ok(mut s) = self.0.write() {
            s.clear();
            s.extend(peers);
        }
    }

    pub fn contains(&self, peer: &SocketAddr) -> bool {
        self.0.read().is_ok_and(|s| s.contains(peer))
    }
}

/// Connections open, per address (see [`ConnSlot`]).
#[derive(Debug, Default, Clone)]
pub struct ConnLimits(Arc<Mutex<HashMap<IpAddr, usize>>>);

impl ConnLimits {
    /// A slot for one more connection from `ip`, `None` over the caps. The
    /// slot is given back when dropped (however the connection ends).
    pub(crate) fn acquire(&self, ip: IpAddr) -> Option<ConnSlot> {
        let mut m = self.0.lock().ok()?;
        let total: usize = m.values().sum();
        let here = m.get(&ip).copied().unwrap_or(0);
        if total >= MAX_CONNS || here >= MAX_CONNS_PER_IP {
            return None;
        }
        m.insert(ip, here + 1);
        Some(ConnSlot {
            limits: self.clone(),
            ip,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.0.lock().map(|m| m.values().sum()).unwrap_or(0)
    }
}

/// One connection's place in [`ConnLimits`].
#[derive(Debug)]
pub struct ConnSlot {
    limits: ConnLimits,
    ip: IpAddr,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        if let Ok(mut m) = self.limits.0.lock() {
            if let Some(n) = m.get_mut(&self.ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(&self.ip);
                }
            }
        }
    }
}

/// What a connection reader reports.
#[derive(Debug)]
pub enum ConnEvent {
    /// One complete message.
    Message(Vec<u8>),
    /// A message the framer refused: answer it from `head`.
    Refused { error: SipError, head: Vec<u8> },
    /// The connection is done reading (closed by the peer, an error, a
    /// timeout, or a refusal that lost the stream): forget its writer, which
    /// then sends what is queued and closes.
    Closed,
}

/// How a connection is read.
#[derive(Debug, Clone)]
pub struct ConnConfig {
    /// No byte for this long (and no call in progress over it): closed.
    pub idle_timeout: Duration,
    /// A message not complete this long after its first byte: closed.
    pub message_timeout: Duration,
    pub counters: Arc<GuardCounters>,
    pub busy: BusyPeers,
}

/// Reads one connection (TCP, or TLS after its handshake) until it ends,
/// framing SIP messages and reporting them as `wrap(event)` on `tx`; the
/// last event is always [`ConnEvent::Closed`] (unless the SIP task is gone).
/// `slot` is held until the end.
pub async fn read_connection<R, T>(
    mut rd: R,
    peer: SocketAddr,
    cfg: ConnConfig,
    slot: Option<ConnSlot>,
    tx: mpsc::Sender<T>,
    wrap: impl Fn(ConnEvent) -> T,
) where
    R: AsyncRead + Unpin,
{
    let _slot = slot;
    let mut framer = SipStreamFramer::new();
    let mut buf = vec![0u8; 16_384];
    let mut last_byte = Instant::now();
    // When the message now being received began.
    let mut message_since: Option<Instant> = None;
    let mut lost = false;
    loop {
        let deadline = match message_since {
            Some(t) => t + cfg.message_timeout,
            None => last_byte + cfg.idle_timeout,
        };
        let read = tokio::time::timeout_at(deadline.into(), rd.read(&mut buf)).await;
        let n = match read {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => n,
            Err(_) if message_since.is_some() => {
                cfg.counters.count("tcp_slow");
                tracing::info!(peer = %peer, "SIP connection closed: a message not complete within tcp_message_timeout ({:?})", cfg.message_timeout);
                break;
            }
            Err(_) if cfg.busy.contains(&peer) => {
                last_byte = Instant::now();
                continue;
            }
            Err(_) => {
                cfg.counters.count("tcp_idle");
                tracing::debug!(peer = %peer, "SIP connection closed: idle for tcp_idle_timeout ({:?})", cfg.idle_timeout);
                break;
            }
        };
        let now = Instant::now();
        last_byte = now;
        framer.push(buf.get(..n).unwrap_or_default());
        let mut framed = false;
        while let Some(frame) = framer.next_frame() {
            framed = true;
            let event = match frame {
                Frame::Message(m) => ConnEvent::Message(m),
                Frame::Refused { error, head, fatal } => {
                    lost |= fatal;
                    ConnEvent::Refused { error, head }
                }
            };
            if tx.send(wrap(event)).await.is_err() {
                return;
            }
            if lost {
                break;
            }
        }
        if lost {
            tracing::info!(peer = %peer, "SIP connection closed after a refusal that leaves its framing lost");
            break;
        }
        message_since = match (framer.in_message(), message_since) {
            (false, _) => None,
            (true, Some(t)) if !framed => Some(t),
            (true, _) => Some(now),
        };
    }
    if tx.send(wrap(ConnEvent::Closed)).await.is_err() {
        return;
    }
    if lost {
        // Our answer and FIN are on their way: read (and drop) what still
        // comes for a moment, so the sender reads the answer rather than a
        // reset.
        let until = tokio::time::Instant::now() + CLOSE_LINGER;
        while let Ok(Ok(n)) = tokio::time::timeout_at(until, rd.read(&mut buf)).await {
            if n == 0 {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_per_source_with_burst_and_refill() {
        let mut l = RateLimiter::default();
        let t0 = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let allowed = (0..1000).filter(|_| l.allow(a, t0)).count();
        assert_eq!(allowed, REFUSAL_BURST as usize);
        // Another source has its own budget.
        assert!(l.allow(b, t0));
        // A second later: REFUSALS_PER_SECOND more.
        let t1 = t0 + Duration::from_secs(1);
        let allowed = (0..1000).filter(|_| l.allow(a, t1)).count();
        assert_eq!(allowed, REFUSALS_PER_SECOND as usize);
    }

    #[test]
    fn rate_limiter_memory_is_bounded() {
        let mut l = RateLimiter::default();
        let t0 = Instant::now();
        for i in 0..(3 * MAX_TRACKED_SOURCES as u32) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            assert!(l.allow(ip, t0));
            assert!(l.buckets.len() <= MAX_TRACKED_SOURCES);
        }
    }

    #[test]
    fn connection_slots_are_capped_and_given_back() {
        let c = ConnLimits::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let slots: Vec<ConnSlot> = (0..MAX_CONNS_PER_IP)
            .map(|_| c.acquire(a).unwrap())
            .collect();
        assert!(c.acquire(a).is_none(), "per address");
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let other = c.acquire(b).unwrap();
        assert_eq!(c.open(), MAX_CONNS_PER_IP + 1);
        drop(slots);
        drop(other);
        assert_eq!(c.open(), 0);
        assert!(c.acquire(a).is_some());
    }

    #[test]
    fn counters_name_every_reason() {
        let c = GuardCounters::default();
        c.count("too_large");
        c.count("too_large");
        c.count("rate_limited");
        let s = c.snapshot();
        assert_eq!(s.len(), REASONS.len());
        assert_eq!(s["too_large"], 2);
        assert_eq!(s["rate_limited"], 1);
        assert_eq!(s["tcp_idle"], 0);
        // Every kind of answer has its reason.
        use pbx_core::sip::sdp::SdpError;
        use pbx_core::sip::siprec::SiprecError;
        let sip = [
            SipError::TooLarge(1),
            SipError::TooManyHeaders,
            SipError::TooManyVias(99),
            SipError::BadHeader("Content-Length"),
            SipError::BadHeader("From"),
            SipError::MissingHeader("CSeq"),
            SipError::BadStartLine,
        ];
        let offers = [
            SiprecError::Sdp(SdpError::TooManyMedia),
            SiprecError::TooLarge(1),
            SiprecError::TooManyElements,
            SiprecError::NoAudio,
        ];
        let kinds = sip
            .iter()
            .filter_map(Refusal::for_sip_error)
            .chain(offers.iter().map(Refusal::for_offer))
            .map(|r| r.kind);
        for k in kinds {
            assert!(REASONS.contains(&k), "{k}");
        }
    }

    fn uas() -> Uas {
        Uas::new(pbx_core::sip::uas::UasConfig {
            contact_host: "127.0.0.1".into(),
            contact_port: 5090,
            tls_port: None,
            user_agent: String::new(),
            tag_seed: 1,
        })
    }

    #[test]
    fn refuser_answers_counts_and_limits() {
        let counters = Arc::new(GuardCounters::default());
        let mut r = Refuser::new(counters.clone());
        let mut u = uas();
        let peer: SocketAddr = "192.0.2.9:5060".parse().unwrap();
        let mut many = String::from("OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\n");
        for i in 0..300 {
            many.push_str(&format!("X-{i}: v\r\n"));
        }
        many.push_str("\r\n");
        let err = pbx_core::sip::parse_message(many.as_bytes()).unwrap_err();
        let mut answered = 0;
        let t0 = Instant::now();
        for _ in 0..(REFUSAL_BURST as usize + 20) {
            if r.refuse_at(&mut u, many.as_bytes(), &err, peer, Transport::Udp, t0) {
                answered += 1;
            }
        }
        assert_eq!(answered, REFUSAL_BURST as usize);
        assert_eq!(counters.get("too_many_headers"), REFUSAL_BURST as u64);
        assert_eq!(counters.get("rate_limited"), 20);
        let mut sent = 0;
        while let Some(ev) = u.poll_event() {
            if let pbx_core::sip::uas::UasEvent::Send { bytes, .. } = ev {
                assert!(bytes.starts_with(b"SIP/2.0 400 Too Many Headers\r\n"));
                sent += 1;
            }
        }
        assert_eq!(sent, answered);
        // Not addressable: counted, not answered.
        let other: SocketAddr = "192.0.2.10:5060".parse().unwrap();
        let junk = b"GARBAGE\r\n\r\n";
        assert!(!r.refuse(&mut u, junk, &SipError::BadStartLine, other, Transport::Udp));
        assert_eq!(counters.get("unanswerable"), 1);
        // An empty keep-alive: nothing at all.
        assert!(!r.refuse(&mut u, b"\r\n\r\n", &SipError::Empty, other, Transport::Udp));
        assert_eq!(counters.get("unanswerable"), 1);
    }
}
