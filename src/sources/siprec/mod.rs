//! The SIPREC recording server (RFC 7866): the PBX or SBC (the SRC) sends an
//! INVITE with SDP and recording metadata; we answer with one RTP port per
//! stream and record what arrives.
//!
//! Shape:
//! - one tokio task owns the SIP side: the UDP socket, the TCP listener, the
//!   optional TLS listener (`tls_listen`; each connection's handshake runs in
//!   its own task, then TCP and TLS connections share the same stream framer
//!   and writer code), and the sans-IO [`Uas`] (transactions, retransmissions,
//!   dialogs). It decides on each new call (allow list → 403, call limit → 503,
//!   unusable offer → 488, no free RTP port for a stream → 503, never a call
//!   recorded without one of its streams), hands out RTP ports from
//!   `rtp_ports`, and answers.
//! - one thread reads every RTP port ([`crate::sources::siprec::media`]: epoll + `recvmmsg`,
//!   kernel receive timestamps, SRTP decryption) and hands the engine a batch
//!   of datagrams per reading round. Only the stream's source gets through
//!   ([`crate::sources::siprec::admission`]): the address the SRC's SDP announces for the
//!   stream, or a source on the SRC's signalling host latched after a quorum
//!   of in-sequence packets, its SSRC locked; the rest is counted
//!   (`pbx_edge_rtp_rejected_total`). Ports come from [`crate::sources::siprec::ports`]:
//!   a random start, least recently used first, a cooling-off after a call
//!   and across restarts.
//! - one thread owns the [`CallEngine`] and the spool writer, exactly as for
//!   `import` and sniffing. It is fed the SIP messages as they were received
//!   and sent (the INVITE with its metadata, our 200 OK with the answer, BYE)
//!   and the RTP datagrams with their addresses, so a SIPREC session and a
//!   capture of the same packets give the same recording: the engine reads the
//!   metadata's `participantstreamassoc` to know whose voice each stream is.
//! - a dialog whose media has been silent for `rtp_timeout` is hung up (BYE).
//! - SIP input over the limits or malformed is answered (513 / 400 / 488 with
//!   a Warning), rate-limited per source, and counted; TCP/TLS connections
//!   are capped in number and closed when idle, trickling or their framing is
//!   lost ([`crate::sources::siprec::guard`]).
//! - durability (docs/durability.md): before the `200 OK` to an INVITE goes
//!   out, the call is noted on disk ([`AnsweredCalls`]), so a crash at any
//!   later moment still leaves a recording of it; the `200 OK` to the SRC's
//!   BYE is held ([`Uas::hold_byes`]) until the engine thread reports the
//!   call's recording pair durable (or that it has none), at most
//!   [`uas::BYE_HOLD_MAX_US`]: a BYE answered means a recording complete on disk.
//! - reload (SIGHUP): [`SiprecHandle::update`] gives the running SIP task new
//!   allow / max_calls / rtp_timeout / rtp_ports and the engine thread new
//!   recording settings (new calls take them, calls in progress go on). A
//!   listener replaced by a new address [`SiprecHandle::drain`]s: new INVITEs
//!   get 503, its dialogs go on, it ends after the last one; the RTP port
//!   pool is shared with its successor.

pub mod admission;
pub mod guard;
pub mod media;
pub mod ports;
pub mod srtp;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::mpsc::{self as std_mpsc, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use pbx_core::call::{CallEngine, EndReason, EngineConfig};
use pbx_core::net::{Segment, Transport};
use pbx_core::sip::message::parse_message;
use pbx_core::sip::sdp::SessionDescription;
use pbx_core::sip::siprec::{answer_sdp, siprec_parts, SiprecError};
use pbx_core::sip::uas::{self, DialogId, Uas, UasConfig, UasEvent, UasInput};
use pbx_core::sip::Refusal;
use pbx_core::Timestamp;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use crate::config::SiprecConfig;
use crate::health::Liveness;
use crate::recording::{AnsweredCall, AnsweredCalls, RecordingDir, RecordingSettings};
use crate::sources::siprec::admission::{Admission, StreamOrigin};
use crate::sources::siprec::guard::{
    read_connection, BusyPeers, ConnConfig, ConnEvent, ConnLimits, ConnSlot, GuardCounters, Refuser,
};
use crate::sources::siprec::media::{
    BatchSink, DatagramBatch, MediaControl, MediaCounters, MediaReceiver, Recycler,
};
use crate::sources::siprec::ports::RtpPorts;
use crate::status::SharedStatus;
use crate::sys::now;

/// What the engine thread is fed: SIP messages (as received and as sent) from
/// the SIP task, RTP in batches from the media thread. Both go through one
/// channel, so our 200 OK (fed before it is sent) is always ahead of the RTP
/// it asks for.
enum EngineInput {
    Udp {
        ts: Timestamp,
        src: SocketAddr,
        dst: SocketAddr,
        payload: Vec<u8>,
    },
    Media(DatagramBatch),
    /// New recording settings (reload): for calls that begin from now on.
    Settings(Box<RecordingSettings>),
    /// An answered dialog ended (after the messages that ended it): a call
    /// whose audio never began becomes an empty recording (`reason`); with
    /// `bye` (the SRC's BYE, held) report [`Control::ByeDurable`] once the
    /// call's recording is on disk.
    DialogEnded {
        call_id: String,
        reason: &'static str,
        bye: Option<DialogId>,
    },
}

/// What the daemon tells the running SIP task.
enum Control {
    /// Settings that apply to new INVITEs (allow, max_calls, rtp_timeout).
    Update {
        cfg: Box<SiprecConfig>,
        rtp_timeout: Duration,
    },
    /// Take no new calls (503), keep the dialogs in progress, end after the
    /// last one (its listener was replaced or the source disabled).
    Drain,
    /// Keep taking calls, end as soon as none is in progress (the new
    /// listener needs this one's address); `false` cancels it.
    StopWhenIdle(bool),
    /// From the engine thread: the recording of the dialog the SRC's BYE
    /// ended is durable (or there is none): answer the BYE.
    ByeDurable(DialogId),
}

/// The media thread's way into the engine: it waits when the queue is full
/// (the sockets' queues absorb that), it never drops a batch. How much media
/// can wait is bounded by the media thread's batch pool ([`crate::sources::siprec::media`]).
struct EngineSink(SyncSender<EngineInput>);

impl BatchSink for EngineSink {
    fn deliver(&mut self, batch: DatagramBatch) -> bool {
        self.0.send(EngineInput::Media(batch)).is_ok()
    }
}

pub use crate::sources::siprec::ports::{PortPool, SharedPorts};

struct Session {
    /// Our RTP addresses (one per stream taken).
    ports: Vec<SocketAddr>,
    last_rtp: Arc<AtomicI64>,
    version: u64,
    /// Port per offered m-line (0 = rejected).
    line_ports: Vec<u16>,
    /// The SRC's address (picks our media address when listening on all).
    peer: SocketAddr,
    /// Our SDP now in force (offered again in the 200 to a re-INVITE that
    /// carries no offer).
    sdp: String,
}

/// The TLS settings new connections are accepted with (swapped on reload).
type TlsShared = Arc<RwLock<Arc<ServerConfig>>>;

/// How long a TLS client has to finish its handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A running SIPREC source.
pub struct SiprecHandle {
    stop: Arc<AtomicBool>,
    sip_task: JoinHandle<()>,
    media: MediaReceiver,
    engine_thread: std::thread::JoinHandle<()>,
    tls: Option<TlsShared>,
    control: mpsc::UnboundedSender<Control>,
    /// Into the engine thread, for settings; dropped before the engine is
    /// joined (the engine ends when every sender is gone).
    settings: Option<SyncSender<EngineInput>>,
    /// Dialogs in progress (kept by the SIP task).
    calls: Arc<AtomicUsize>,
    ports: SharedPorts,
    /// The status / liveness name the engine thread reports under.
    name: Arc<Mutex<String>>,
    /// The addresses this instance is bound to.
    pub listen: SocketAddr,
    pub tls_listen: Option<SocketAddr>,
}

impl SiprecHandle {
    /// Apply the settings that need no new socket: `allow`, `max_calls`,
    /// `rtp_timeout` and `rtp_ports` for new INVITEs; `recording` and the
    /// agent id for recordings that begin from now on. Calls in progress go on.
    pub fn update(&self, cfg: &SiprecConfig, rtp_timeout: Duration, rec: RecordingSettings) {
        if let Ok(mut p) = self.ports.lock() {
            p.set_range(cfg.rtp_ports.clone());
        }
        let _ = self.control.send(Control::Update {
            cfg: Box::new(cfg.clone()),
            rtp_timeout,
        });
        if let Some(tx) = &self.settings {
            let input = EngineInput::Settings(Box::new(rec));
            // The queue is deep and drained fast; wait for room if it is full.
            if let Err(TrySendError::Full(input)) = tx.try_send(input) {
                let tx = tx.clone();
                tokio::task::block_in_place(move || {
                    let _ = tx.send(input);
                });
            }
        }
    }

    /// Take no new calls (answered 503), let the calls in progress finish
    /// (in-dialog requests answered, their recordings complete), then end.
    /// Its status moves to `name`. See [`SiprecHandle::finished`].
    pub fn drain(&self, name: &str) {
        if let Ok(mut n) = self.name.lock() {
            *n = name.to_string();
        }
        let _ = self.control.send(Control::Drain);
    }

    /// Keep taking calls, end as soon as no call is in progress (`false`:
    /// keep running after all).
    pub fn stop_when_idle(&self, on: bool) {
        let _ = self.control.send(Control::StopWhenIdle(on));
    }

    /// The SIP task has ended (drained, idle, or stopped): [`stop`] returns at once.
    pub fn finished(&self) -> bool {
        self.sip_task.is_finished()
    }

    /// Dialogs in progress.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::Relaxed)
    }

    /// The RTP port pool (shared with the instance replacing this one).
    pub fn ports(&self) -> SharedPorts {
        self.ports.clone()
    }

    /// Re-read the TLS certificate, key and client CA files (SIGHUP): new
    /// connections use them, established ones keep theirs. On an error the
    /// running settings stay. `Ok(false)`: TLS is not on.
    pub fn reload_tls(&self, cfg: &SiprecConfig) -> Result<bool, crate::sys::tls::TlsError> {
        let (Some(shared), Some(cert), Some(key)) = (&self.tls, &cfg.tls_cert, &cfg.tls_key) else {
            return Ok(false);
        };
        let new = crate::sys::tls::server_config(cert, key, cfg.tls_client_ca.as_deref())?;
        if let Ok(mut w) = shared.write() {
            *w = new;
        }
        Ok(true)
    }

    /// Stop taking calls, close every recording (marked `shutdown`), return.
    ///
    /// The SIP task hangs up and ends first, then the media thread delivers
    /// what its sockets still hold; the engine thread ends when both are gone
    /// (its channel disconnects), so nothing received is left unrecorded.
    pub async fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.settings = None;
        let _ = self.sip_task.await;
        let (media, engine) = (self.media, self.engine_thread);
        let _ = tokio::task::spawn_blocking(move || {
            media.stop();
            engine.join()
        })
        .await;
    }
}

/// Bind the sockets and start the source.
pub async fn start(
    cfg: SiprecConfig,
    engine_cfg: EngineConfig,
    rtp_timeout: Duration,
    out: RecordingDir,
    status: SharedStatus,
    live: Arc<Liveness>,
    ports: Option<SharedPorts>,
) -> std::io::Result<SiprecHandle> {
    let udp = Arc::new(UdpSocket::bind(cfg.listen).await?);
    // Room for bursts (an SBC hanging up hundreds of calls at once); the
    // kernel caps this at net.core.rmem_max.
    {
        use std::os::fd::AsRawFd;
        let _ = crate::sys::sockets::set_int_option(
            udp.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            SIP_RCVBUF,
        );
    }
    let tcp = TcpListener::bind(cfg.listen).await?;
    let tls = match (cfg.tls_listen, &cfg.tls_cert, &cfg.tls_key) {
        (Some(addr), Some(cert), Some(key)) => {
            let sc = crate::sys::tls::server_config(cert, key, cfg.tls_client_ca.as_deref())
                .map_err(|e| {
                    std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
                })?;
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|e| std::io::Error::new(e.kind(), format!("TLS listener {addr}: {e}")))?;
            Some((listener, Arc::new(RwLock::new(sc))))
        }
        _ => None,
    };
    let tls_shared = tls.as_ref().map(|(_, t)| t.clone());
    let ports = match ports {
        Some(p) => {
            if let Ok(mut g) = p.lock() {
                g.set_range(cfg.rtp_ports.clone());
            }
            p
        }
        None => Arc::new(Mutex::new(PortPool::restore(
            cfg.rtp_ports.clone(),
            &out.dir().join(crate::sources::siprec::ports::STATE_FILE),
            std::time::SystemTime::now(),
            Instant::now(),
        ))),
    };
    let name = Arc::new(Mutex::new("siprec".to_string()));
    let calls = Arc::new(AtomicUsize::new(0));
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let (listen, tls_listen) = (cfg.listen, cfg.tls_listen);
    let stop = Arc::new(AtomicBool::new(false));
    let answered = out.answered_calls();
    let mut out = out;
    // The engine thread tells the SIP task when a call's pair is durable.
    out.track_closed(true);
    let (etx, erx) = std_mpsc::sync_channel::<EngineInput>(ENGINE_QUEUE);
    let drops = Arc::new(AtomicI64::new(0));
    let counters = Arc::new(MediaCounters::default());
    let guard = Arc::new(GuardCounters::default());
    let (media, recycler) = MediaReceiver::start(EngineSink(etx.clone()), counters.clone())?;
    let engine_thread = {
        let (status, live, drops) = (status.clone(), live.clone(), drops.clone());
        let report = Report {
            status,
            drops,
            media: counters,
            listen: cfg.listen.to_string(),
            name: name.clone(),
            guard: guard.clone(),
        };
        let durable = control_tx.clone();
        std::thread::Builder::new()
            .name("siprec-engine".into())
            .spawn(move || engine_loop(engine_cfg, out, erx, live, report, recycler, durable))?
    };
    live.beat("siprec");
    let sip_task = tokio::spawn(sip_loop(
        cfg,
        SipSockets { udp, tcp, tls },
        etx.clone(),
        media.control(),
        stop.clone(),
        drops,
        rtp_timeout,
        Shared {
            ports: ports.clone(),
            calls: calls.clone(),
            control: control_rx,
            guard,
            answered,
        },
    ));
    Ok(SiprecHandle {
        stop,
        sip_task,
        media,
        engine_thread,
        tls: tls_shared,
        control: control_tx,
        settings: Some(etx),
        calls,
        ports,
        name,
        listen,
        tls_listen,
    })
}

/// Receive buffer asked for the SIP UDP socket.
const SIP_RCVBUF: libc::c_int = 4 << 20;

/// Messages the engine queue holds (SIP messages and media batches of one
/// reading round each; the media thread has far fewer batches than this, so
/// SIP messages always find room).
const ENGINE_QUEUE: usize = 4096;

/// What the engine thread publishes to the status snapshot.
struct Report {
    status: SharedStatus,
    /// SIP messages the engine missed because its queue was full.
    drops: Arc<AtomicI64>,
    media: Arc<MediaCounters>,
    listen: String,
    /// "siprec", or the name of a draining instance.
    name: Arc<Mutex<String>>,
    /// SIP input refused ([`crate::sources::siprec::guard`]).
    guard: Arc<GuardCounters>,
}

impl Report {
    fn name(&self) -> String {
        self.name
            .lock()
            .map(|n| n.clone())
            .unwrap_or_else(|_| "siprec".into())
    }
}

/// The engine thread: runs until every sender (SIP task, media thread) is
/// gone, then closes every open call as cut by shutdown (calls answered
/// whose audio never came become empty recordings, cut by shutdown too).
fn engine_loop(
    engine_cfg: EngineConfig,
    mut out: RecordingDir,
    rx: std_mpsc::Receiver<EngineInput>,
    live: Arc<Liveness>,
    report: Report,
    recycler: Recycler,
    durable: mpsc::UnboundedSender<Control>,
) {
    let mut engine = CallEngine::new(engine_cfg);
    let mut last_tick = Instant::now();
    // BYEs waiting for their call's recording, by Call-ID.
    let mut byes: HashMap<String, Vec<DialogId>> = HashMap::new();
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(EngineInput::DialogEnded {
                call_id,
                reason,
                bye,
            }) => {
                out.end_answered(&call_id, reason);
                if let Some(d) = bye {
                    if out.is_recording(&call_id) {
                        byes.entry(call_id).or_default().push(d);
                    } else {
                        let _ = durable.send(Control::ByeDurable(d));
                    }
                }
            }
            Ok(input) => handle_input(&mut engine, input, &mut out, &recycler),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if last_tick.elapsed() >= Duration::from_millis(200) {
            last_tick = Instant::now();
            engine.handle_timeout(now(), &mut out);
            let name = report.name();
            if name != "siprec" {
                live.forget("siprec");
            }
            live.beat(&name);
            publish(&engine, &out, &report);
        }
        // Pairs made durable by this input or tick: their BYEs are answered.
        for call_id in out.take_closed() {
            if out.is_recording(&call_id) {
                continue;
            }
            for d in byes.remove(&call_id).unwrap_or_default() {
                let _ = durable.send(Control::ByeDurable(d));
            }
        }
    }
    engine.finish(EndReason::Shutdown, &mut out);
    out.finish_answered("shutdown");
    publish(&engine, &out, &report);
    let name = report.name();
    live.forget(&name);
    if name != "siprec" {
        // A drained instance: its calls are recorded, its entry goes.
        if let Ok(mut s) = report.status.lock() {
            s.sources.remove(&name);
        }
    }
}

fn handle_input(
    engine: &mut CallEngine,
    input: EngineInput,
    out: &mut RecordingDir,
    recycler: &Recycler,
) {
    let udp = |ts, src, dst, payload| Segment {
        ts,
        src,
        dst,
        transport: Transport::Udp,
        payload,
        tcp_gap: false,
    };
    match input {
        EngineInput::Udp {
            ts,
            src,
            dst,
            payload,
        } => engine.handle_segment(&udp(ts, src, dst, &payload), out),
        EngineInput::Media(batch) => {
            for (d, bytes) in batch.iter() {
                engine.handle_segment(&udp(d.ts, d.src, d.dst, bytes), out);
            }
            recycler.give_back(batch);
        }
        EngineInput::Settings(s) => crate::recording::apply_settings(engine, out, *s),
        EngineInput::DialogEnded { .. } => {}
    }
}

fn publish(engine: &CallEngine, out: &RecordingDir, r: &Report) {
    let name = r.name();
    if let Ok(mut s) = r.status.lock() {
        let draining = name != "siprec";
        let src = s.sources.entry(name).or_default();
        if draining {
            src.up = true;
        }
        src.record_engine(engine, &out.counters);
        src.listen = r.listen.clone();
        src.queue_drops = r.drops.load(Ordering::Relaxed).max(0) as u64;
        src.kernel_drops = r.media.kernel_drops.load(Ordering::Relaxed);
        src.srtp_failures = r.media.srtp_failures.load(Ordering::Relaxed);
        src.rtp_rejected = r.media.rejected().into();
        src.errors = out.counters.failed;
        src.sip_rejected = r.guard.snapshot();
    }
}

fn feed(
    etx: &SyncSender<EngineInput>,
    drops: &AtomicI64,
    src: SocketAddr,
    dst: SocketAddr,
    payload: Vec<u8>,
) {
    let input = EngineInput::Udp {
        ts: now(),
        src,
        dst,
        payload,
    };
    if let Err(TrySendError::Full(_)) = etx.try_send(input) {
        drops.fetch_add(1, Ordering::Relaxed);
    }
}

/// The address we put in our SDP: the listen address, or (when listening on
/// all addresses) the local address the kernel would use towards the SRC.
fn media_ip(listen: IpAddr, peer: SocketAddr) -> IpAddr {
    if !listen.is_unspecified() {
        return listen;
    }
    let probe = std::net::UdpSocket::bind(SocketAddr::new(listen, 0)).and_then(|s| {
        s.connect(peer)?;
        s.local_addr()
    });
    probe.map(|a| a.ip()).unwrap_or(listen)
}

/// What the connection tasks (TCP and TLS) tell the SIP task.
enum SipIn {
    /// A TLS connection finished its handshake: where to write to it.
    Opened {
        peer: SocketAddr,
        transport: uas::Transport,
        writer: mpsc::Sender<Vec<u8>>,
    },
    /// What a connection's reader reports (messages, refusals, its end).
    Conn {
        peer: SocketAddr,
        transport: uas::Transport,
        ev: ConnEvent,
    },
}

/// The sockets of one SIPREC instance.
struct SipSockets {
    udp: Arc<UdpSocket>,
    tcp: TcpListener,
    tls: Option<(TcpListener, TlsShared)>,
}

/// What the SIP task shares with the daemon.
struct Shared {
    ports: SharedPorts,
    calls: Arc<AtomicUsize>,
    control: mpsc::UnboundedReceiver<Control>,
    guard: Arc<GuardCounters>,
    /// Where answered calls are noted before their 200 OK.
    answered: AnsweredCalls,
}

/// How long a drained instance still answers retransmissions after its last
/// dialog ended (while server transactions remain).
const DRAIN_LINGER: Duration = Duration::from_secs(2);

#[allow(clippy::too_many_arguments)]
async fn sip_loop(
    mut cfg: SiprecConfig,
    sockets: SipSockets,
    etx: SyncSender<EngineInput>,
    media: MediaControl,
    stop: Arc<AtomicBool>,
    drops: Arc<AtomicI64>,
    mut rtp_timeout: Duration,
    shared: Shared,
) {
    let SipSockets { udp, tcp, tls } = sockets;
    let Shared {
        ports: pool,
        calls,
        control: mut control_rx,
        guard,
        answered,
    } = shared;
    // Refused input answered and counted; connections capped and timed.
    let mut refuser = Refuser::new(guard.clone());
    let busy = BusyPeers::default();
    let conn_limits = ConnLimits::default();
    let conn_config = |cfg: &SiprecConfig| ConnConfig {
        idle_timeout: cfg.tcp_idle_timeout,
        message_timeout: cfg.tcp_message_timeout,
        counters: guard.clone(),
        busy: busy.clone(),
    };
    let mut ports = RtpPorts::new(pool, media, cfg.listen.ip(), Instant::now());
    // Draining: no new calls; `StopWhenIdle`: end as soon as no call is left.
    let (mut draining, mut stop_when_idle) = (false, false);
    let mut idle_since: Option<Instant> = None;
    let local = cfg.listen;
    let mut uas = Uas::new(UasConfig {
        contact_host: local.ip().to_string(),
        contact_port: local.port(),
        tls_port: cfg.tls_listen.map(|a| a.port()),
        user_agent: format!("pbx-edge/{}", env!("CARGO_PKG_VERSION")),
        tag_seed: now().as_micros() as u64 ^ u64::from(std::process::id()),
    });
    // A BYE is answered when the call's recording is on disk (ByeDurable).
    uas.hold_byes(true);
    let mut sessions: HashMap<DialogId, Session> = HashMap::new();
    let mut tcp_writers: HashMap<(uas::Transport, SocketAddr), mpsc::Sender<Vec<u8>>> =
        HashMap::new();
    let (tcp_tx, mut tcp_rx) = mpsc::channel::<SipIn>(1024);
    let mut buf = vec![0u8; 65_536];
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        calls.store(sessions.len(), Ordering::Relaxed);
        // A BYE still held for its recording keeps the listener open.
        if sessions.is_empty() && (draining || stop_when_idle) && uas.held_bye_count() == 0 {
            if stop_when_idle {
                tracing::info!(listen = %local, "SIPREC: no call in progress any more, closing this listener for the new settings");
                break;
            }
            let since = *idle_since.get_or_insert_with(Instant::now);
            if uas.transaction_count() == 0 || since.elapsed() >= DRAIN_LINGER {
                tracing::info!(listen = %local, "SIPREC: the last call on the replaced listener ended, closing it");
                break;
            }
        } else {
            idle_since = None;
        }
        tokio::select! {
            Some(c) = control_rx.recv() => match c {
                Control::Update { cfg: new, rtp_timeout: t } => {
                    cfg.allow = new.allow;
                    cfg.max_calls = new.max_calls;
                    cfg.rtp_ports = new.rtp_ports;
                    cfg.tcp_idle_timeout = new.tcp_idle_timeout;
                    cfg.tcp_message_timeout = new.tcp_message_timeout;
                    rtp_timeout = t;
                }
                Control::Drain => draining = true,
                Control::StopWhenIdle(on) => stop_when_idle = on,
                Control::ByeDurable(d) => {
                    uas.answer_bye(&d, now());
                }
            },
            r = udp.recv_from(&mut buf) => {
                if let Ok((n, peer)) = r {
                    let bytes = buf[..n].to_vec();
                    on_message(&mut uas, &mut refuser, &bytes, peer, local, uas::Transport::Udp, &etx, &drops);
                }
            }
            acc = tcp.accept() => {
                if let Ok((sock, peer)) = acc {
                    if let Some(slot) = conn_slot(&conn_limits, &guard, peer) {
                        let (wtx, reader) = stream_tasks(sock, peer, uas::Transport::Tcp, tcp_tx.clone(), conn_config(&cfg), slot);
                        tcp_writers.insert((uas::Transport::Tcp, peer), wtx);
                        tokio::spawn(reader);
                    }
                }
            }
            acc = accept_tls(&tls) => {
                if let (Ok((sock, peer)), Some((_, shared))) = (acc, &tls) {
                    let acceptor = shared.read().map(|c| TlsAcceptor::from(c.clone()));
                    let slot = conn_slot(&conn_limits, &guard, peer);
                    if let (Ok(acceptor), Some(slot)) = (acceptor, slot) {
                        tokio::spawn(tls_connection(acceptor, sock, peer, tcp_tx.clone(), conn_config(&cfg), slot));
                    }
                }
            }
            Some(m) = tcp_rx.recv() => {
                match m {
                    SipIn::Opened { peer, transport, writer } => { tcp_writers.insert((transport, peer), writer); }
                    SipIn::Conn { peer, transport, ev } => match ev {
                        ConnEvent::Message(bytes) => on_message(&mut uas, &mut refuser, &bytes, peer, local, transport, &etx, &drops),
                        ConnEvent::Refused { error, head } => { refuser.refuse(&mut uas, &head, &error, peer, transport); }
                        ConnEvent::Closed => { tcp_writers.remove(&(transport, peer)); }
                    },
                }
            }
            _ = tick.tick() => {
                uas.handle(UasInput::Timeout(now()));
                busy.set(sessions.values().map(|s| s.peer));
                // Hang up sessions whose media stopped long ago.
                let limit = i64::try_from(rtp_timeout.as_micros()).unwrap_or(i64::MAX);
                let t = now().as_micros();
                let silent: Vec<DialogId> = sessions
                    .iter()
                    .filter(|(_, s)| t - s.last_rtp.load(Ordering::Relaxed) > limit)
                    .map(|(d, _)| d.clone())
                    .collect();
                for d in silent {
                    uas.hangup(&d, now());
                    if let Some(s) = sessions.remove(&d) { release(s, &mut ports); }
                }
                ports.tick(Instant::now(), std::time::SystemTime::now());
            }
        }
        // Act on what the UAS decided.
        while let Some(ev) = uas.poll_event() {
            match ev {
                UasEvent::Send {
                    to,
                    transport,
                    bytes,
                } => {
                    // The engine sees our answers too (the SDP with our
                    // ports), before the SRC can send RTP to them.
                    feed(&etx, &drops, local, to, bytes.clone());
                    send_sip(&udp, &tcp_writers, transport, to, bytes).await;
                }
                UasEvent::NewCall {
                    dialog,
                    invite,
                    from,
                } => {
                    let at = now();
                    if draining {
                        tracing::info!(peer = %from, listen = %local, "SIPREC INVITE to a listener replaced by a reload: 503 (send new calls to the new sources.siprec.listen)");
                        uas.reject(&dialog, 503, "Service Unavailable", at);
                        continue;
                    }
                    if !cfg.allows(from.ip()) {
                        tracing::warn!(peer = %from, "SIPREC INVITE from an address outside sources.siprec.allow: 403");
                        uas.reject(&dialog, 403, "Forbidden", at);
                        continue;
                    }
                    if sessions.len() >= cfg.max_calls as usize {
                        tracing::warn!(limit = cfg.max_calls, "SIPREC call limit reached: 503");
                        uas.reject(&dialog, 503, "Service Unavailable", at);
                        continue;
                    }
                    let offer = match siprec_parts(&invite) {
                        Ok((sdp, Some(_meta))) => sdp,
                        Ok((sdp, None)) => {
                            // Taken (nothing is lost): the streams in m-line
                            // order until metadata says otherwise.
                            tracing::warn!(peer = %from, "SIPREC INVITE without metadata: channels follow the order of the SDP's audio streams");
                            sdp
                        }
                        Err(e) => {
                            tracing::warn!(peer = %from, "unusable SIPREC offer: {e}");
                            let refusal = Refusal::for_offer(&e);
                            refuser.count_offer(&refusal);
                            uas.reject_refusal(&dialog, &refusal, at);
                            continue;
                        }
                    };
                    let mut session = Session {
                        ports: Vec::new(),
                        last_rtp: Arc::new(AtomicI64::new(at.as_micros())),
                        version: 1,
                        line_ports: Vec::new(),
                        peer: from,
                        sdp: String::new(),
                    };
                    match answer_for(&offer, &mut session, &mut ports, local.ip(), from) {
                        Ok(answer) => {
                            // On disk before the 200 goes out: from now on a
                            // crash still leaves a recording of this call.
                            if let Err(e) =
                                answered.answered(&answered_call(&dialog, &invite, at, now()))
                            {
                                tracing::error!("spool: cannot note an answered call: {e}");
                            }
                            uas.accept(&dialog, &answer, at);
                            session.sdp = answer;
                            sessions.insert(dialog, session);
                        }
                        Err(why) => {
                            release(session, &mut ports);
                            let (code, reason) = why.status();
                            uas.reject(&dialog, code, reason, at);
                        }
                    }
                }
                ev @ (UasEvent::Reinvite { .. } | UasEvent::Update { .. }) => {
                    let (dialog, msg, invite) = match ev {
                        UasEvent::Reinvite { dialog, msg } => (dialog, msg, true),
                        UasEvent::Update { dialog, msg } => (dialog, msg, false),
                        _ => unreachable!(),
                    };
                    let at = now();
                    let Some(session) = sessions.get_mut(&dialog) else {
                        uas.reject(&dialog, 481, "Call/Transaction Does Not Exist", at);
                        continue;
                    };
                    match siprec_parts(&msg) {
                        Ok((offer, _)) => {
                            session.version += 1;
                            let peer = session.peer;
                            match answer_for(&offer, session, &mut ports, local.ip(), peer) {
                                Ok(answer) => {
                                    uas.accept(&dialog, &answer, at);
                                    session.sdp = answer;
                                }
                                Err(why) => {
                                    let (code, reason) = why.status();
                                    uas.reject(&dialog, code, reason, at);
                                }
                            }
                        }
                        // No offer: a session refresh (RFC 4028) or a
                        // metadata update (RFC 7866 §6.2) -- the engine reads
                        // the metadata from the request itself. Media stay as
                        // they are: an UPDATE gets a 200 without a body, a
                        // re-INVITE our SDP in force as the offer (RFC 3261
                        // 14.2; the answer in the ACK changes nothing here).
                        Err(SiprecError::NoSdp) => {
                            let body = if invite {
                                session.sdp.clone()
                            } else {
                                String::new()
                            };
                            uas.accept(&dialog, &body, at);
                        }
                        Err(e) => {
                            tracing::warn!(peer = %session.peer, "unusable SIPREC re-offer: {e}");
                            let refusal = Refusal::for_offer(&e);
                            refuser.count_offer(&refusal);
                            uas.reject_refusal(&dialog, &refusal, at);
                        }
                    }
                }
                UasEvent::Ended { dialog, reason } => {
                    tracing::debug!(call_id = %dialog.call_id, ?reason, "SIPREC session ended");
                    let bye = reason == uas::EndCause::Bye;
                    if let Some(s) = sessions.remove(&dialog) {
                        release(s, &mut ports);
                        // After the BYE in the engine's queue: the engine
                        // has seen it. Never dropped (a call without audio
                        // would lose its recording): waits for room.
                        let ended = EngineInput::DialogEnded {
                            call_id: dialog.call_id.clone(),
                            reason: if bye { "bye" } else { "rtp_timeout" },
                            bye: bye.then(|| dialog.clone()),
                        };
                        let sent = match etx.try_send(ended) {
                            Ok(()) => true,
                            Err(TrySendError::Full(ended)) => {
                                let tx = etx.clone();
                                tokio::task::block_in_place(move || tx.send(ended).is_ok())
                            }
                            Err(TrySendError::Disconnected(_)) => false,
                        };
                        if bye && !sent {
                            uas.answer_bye(&dialog, now());
                        }
                    } else if bye {
                        uas.answer_bye(&dialog, now());
                    }
                }
            }
        }
    }
    calls.store(0, Ordering::Relaxed);
    // Shutdown: hang up every session (the SRC learns the recording stopped).
    // Our BYEs are not fed to the engine: its calls end as cut by shutdown
    // (`truncated`), not as hung up, when the engine thread finishes them.
    let at = now();
    for (d, s) in sessions.drain() {
        uas.hangup(&d, at);
        release(s, &mut ports);
    }
    // BYEs still waiting for their recording: the engine finishes every
    // recording as this source stops.
    uas.answer_held_byes(at);
    while let Some(ev) = uas.poll_event() {
        if let UasEvent::Send {
            to,
            transport,
            bytes,
        } = ev
        {
            send_sip(&udp, &tcp_writers, transport, to, bytes).await;
        }
    }
}

/// What is known of a call as it is answered: the parties as the metadata
/// names them (the same assignment the engine makes), the recorded call's id.
fn answered_call(
    dialog: &DialogId,
    invite: &pbx_core::sip::message::SipMessage,
    started_at: Timestamp,
    answered_at: Timestamp,
) -> AnsweredCall {
    use pbx_core::call::{Party, PartyInfo};
    let mut call = AnsweredCall {
        call_id: dialog.call_id.clone(),
        started_at,
        answered_at,
        ..AnsweredCall::default()
    };
    let Ok((sdp, Some(meta))) = siprec_parts(invite) else {
        return call;
    };
    call.recorded_call_id = meta.call_id_hint.clone();
    let assigned = pbx_core::sip::siprec::assign_streams(&sdp, &meta).unwrap_or_default();
    for (party, slot) in [
        (Party::Caller, &mut call.from),
        (Party::Callee, &mut call.to),
    ] {
        let p = assigned
            .iter()
            .find(|a| a.party == Some(party))
            .and_then(|a| a.participant.as_deref())
            .and_then(|id| meta.participant(id));
        if let Some(p) = p {
            *slot = PartyInfo {
                number: p.number.clone().unwrap_or_default(),
                name: p.name.clone().unwrap_or_default(),
                uri: p.aor.clone().unwrap_or_default(),
            };
        }
    }
    call
}

/// The next connection on the TLS listener (never, without one).
async fn accept_tls(
    tls: &Option<(TcpListener, TlsShared)>,
) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
    match tls {
        Some((l, _)) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// One TLS connection: the handshake (bounded in time; with `tls_client_ca`
/// the client's certificate is verified here), then the same framing as TCP.
async fn tls_connection(
    acceptor: TlsAcceptor,
    sock: tokio::net::TcpStream,
    peer: SocketAddr,
    tx: mpsc::Sender<SipIn>,
    conn: ConnConfig,
    slot: ConnSlot,
) {
    let stream = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(sock)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::warn!(peer = %peer, "SIP over TLS: handshake refused: {e}");
            return;
        }
        Err(_) => {
            tracing::warn!(peer = %peer, "SIP over TLS: handshake not finished in time");
            return;
        }
    };
    let transport = uas::Transport::Tls;
    let (writer, reader) = stream_tasks(stream, peer, transport, tx.clone(), conn, slot);
    // Registered before the first message is read, so answers find their way.
    if tx
        .send(SipIn::Opened {
            peer,
            transport,
            writer,
        })
        .await
        .is_ok()
    {
        reader.await;
    }
}

/// Split a connected stream (TCP or TLS): a writer task fed by the returned
/// channel, and the reader (to be run) that frames SIP messages off it.
fn stream_tasks<S>(
    stream: S,
    peer: SocketAddr,
    transport: uas::Transport,
    tx: mpsc::Sender<SipIn>,
    conn: ConnConfig,
    slot: ConnSlot,
) -> (
    mpsc::Sender<Vec<u8>>,
    impl std::future::Future<Output = ()> + Send + 'static,
)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, mut wr) = tokio::io::split(stream);
    let (wtx, mut wrx) = mpsc::channel::<Vec<u8>>(64);
    tokio::spawn(async move {
        while let Some(b) = wrx.recv().await {
            if wr.write_all(&b).await.is_err() || wr.flush().await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    let wrap = move |ev| SipIn::Conn {
        peer,
        transport,
        ev,
    };
    (wtx, read_connection(rd, peer, conn, Some(slot), tx, wrap))
}

/// A place for one more connection from `peer`, or `None` (counted and
/// logged; the socket is dropped, i.e. closed) over the caps.
fn conn_slot(limits: &ConnLimits, guard: &GuardCounters, peer: SocketAddr) -> Option<ConnSlot> {
    let slot = limits.acquire(peer.ip());
    if slot.is_none() {
        guard.count("tcp_connections");
        tracing::debug!(peer = %peer, "SIP connection refused: too many connections");
    }
    slot
}

#[allow(clippy::too_many_arguments)]
fn on_message(
    uas: &mut Uas,
    refuser: &mut Refuser,
    bytes: &[u8],
    peer: SocketAddr,
    local: SocketAddr,
    transport: uas::Transport,
    etx: &SyncSender<EngineInput>,
    drops: &AtomicI64,
) {
    let msg = match parse_message(bytes) {
        Ok(msg) => msg,
        Err(e) => {
            // Answered if it can be (513 / 400 with a Warning), counted.
            refuser.refuse(uas, bytes, &e, peer, transport);
            return;
        }
    };
    feed(etx, drops, peer, local, bytes.to_vec());
    if uas.needs_local_ip(peer.ip()) {
        // Listening on all interfaces: Contact and Via name the address
        // this peer reaches (an SBC may open new connections to it).
        uas.learn_local_ip(peer.ip(), media_ip(local.ip(), peer));
    }
    uas.handle(UasInput::Message {
        at: now(),
        from: peer,
        transport,
        msg: &msg,
        raw_len: bytes.len(),
    });
}

/// Why an offer gets no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NoAnswer {
    /// No line can be taken (codecs, SRTP suites, no audio): 488.
    NotAcceptable,
    /// A line we could take found no free RTP port (`rtp_ports` used up):
    /// 503, rather than a call recorded without one of its streams.
    NoPorts,
}

impl NoAnswer {
    fn status(self) -> (u16, &'static str) {
        match self {
            NoAnswer::NotAcceptable => (488, "Not Acceptable Here"),
            NoAnswer::NoPorts => (503, "Service Unavailable"),
        }
    }
}

/// Ports for every offered audio line (reusing the session's), the RTP
/// receivers, and the SDP answer.
fn answer_for(
    offer: &SessionDescription,
    session: &mut Session,
    rtp: &mut RtpPorts,
    listen_ip: IpAddr,
    peer: SocketAddr,
) -> Result<String, NoAnswer> {
    let ip = media_ip(listen_ip, peer);
    let mut ports = Vec::with_capacity(offer.media.len());
    let mut crypto: Vec<Option<(String, String)>> = vec![None; offer.media.len()];
    for (i, m) in offer.media.iter().enumerate() {
        let secure = m.proto.to_ascii_uppercase().contains("SAVP");
        // SDES: the first offered suite we support, with the SRC's key.
        let sdes = if secure {
            m.crypto.iter().find_map(|c| {
                crate::sources::siprec::srtp::SUITES
                    .contains(&c.suite.as_str())
                    .then(|| (c.suite.clone(), c.key_params.clone()))
            })
        } else {
            None
        };
        // Audio with a codec we decode (no port for AMR, G.729, ...: with no
        // such line at all the offer gets 488).
        let usable = m.media.eq_ignore_ascii_case("audio")
            && m.port != 0
            && (!secure || sdes.is_some())
            && pbx_core::sip::siprec::decodable_codec(m).is_some();
        if !usable {
            ports.push(0);
            continue;
        }
        let decrypt = match &sdes {
            Some((suite, params)) => {
                match crate::sources::siprec::srtp::SrtpStream::new(suite, params) {
                    Some(d) => {
                        crypto[i] = Some((suite.clone(), crate::sources::siprec::srtp::new_key()));
                        Some(d)
                    }
                    None => {
                        ports.push(0);
                        continue;
                    }
                }
            }
            None => None,
        };
        // Where this stream may come from (see crate::sources::siprec::admission).
        let origin = StreamOrigin {
            announced_ip: m.effective_connection(offer),
            announced_port: m.port,
            signalling: peer.ip(),
        };
        if let Some(p) = session.line_ports.get(i).copied().filter(|p| *p != 0) {
            // Re-offer of a line we already receive: same port (an SRTP key
            // change would need a new context; keep the running one).
            if let Some(local) = session.ports.iter().find(|a| a.port() == p) {
                rtp.set_origin(*local, origin);
            }
            ports.push(p);
            continue;
        }
        // A new line: a port from the pool.
        let Some(local) = rtp.open(
            ip,
            session.last_rtp.clone(),
            decrypt,
            Admission::new(origin),
            Instant::now(),
        ) else {
            tracing::warn!("SIPREC: no free RTP port (rtp_ports used up): 503; widen rtp_ports");
            return Err(NoAnswer::NoPorts);
        };
        session.ports.push(local);
        ports.push(local.port());
    }
    session.line_ports = ports.clone();
    if ports.iter().all(|p| *p == 0) {
        return Err(NoAnswer::NotAcceptable);
    }
    let crypto_refs: Vec<Option<(&str, &str)>> = crypto
        .iter()
        .map(|c| c.as_ref().map(|(s, k)| (s.as_str(), k.as_str())))
        .collect();
    Ok(answer_sdp(offer, ip, &ports, &crypto_refs, session.version))
}

fn release(s: Session, ports: &mut RtpPorts) {
    let now = Instant::now();
    for local in s.ports {
        ports.close(local, now);
    }
}

/// Send one SIP message on the transport it belongs to.
async fn send_sip(
    udp: &UdpSocket,
    tcp_writers: &HashMap<(uas::Transport, SocketAddr), mpsc::Sender<Vec<u8>>>,
    transport: uas::Transport,
    to: SocketAddr,
    bytes: Vec<u8>,
) {
    match transport {
        uas::Transport::Udp => {
            let _ = udp.send_to(&bytes, to).await;
        }
        _ => {
            if let Some(w) = tcp_writers.get(&(transport, to)) {
                let _ = w.send(bytes).await;
            }
        }
    }
}
