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
//! - availability: out-of-dialog OPTIONS (a dispatcher's or SBC's probe) are
//!   answered `200` while new calls are taken, `503` + `Retry-After` while
//!   the daemon drains ([`SiprecHandle::refuse_new_calls`]; INVITEs get the
//!   same 503) or while the spool cannot take recordings
//!   ([`crate::status::spool_unusable`], the verdicts `/readyz` gives; the
//!   status is read as each OPTIONS arrives). In-dialog requests of calls in
//!   progress are always answered.

pub mod admission;
pub mod guard;
pub mod media;
pub mod ports;
pub mod srtp;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::mpsc::{self as std_mpsc, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use pbx_core::call::{EndReason, EngineConfig};
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

use crate::config::{Config, SiprecConfig};
use crate::control::ControlRequest;
use crate::health::Liveness;
use crate::recording::{AnsweredCall, AnsweredCalls, RecordingDir, RecordingSettings};
use crate::sources::engine_host::{EngineHost, HostControl};
use crate::sources::siprec::admission::{Admission, StreamOrigin};
use crate::sources::siprec::guard::{
    read_connection, BusyPeers, ConnConfig, ConnEvent, ConnLimits, ConnSlot, GuardCounters, Refuser,
};
use crate::sources::siprec::media::{
    BatchSink, DatagramBatch, IdleMark, MediaControl, MediaCounters, MediaHorizon, MediaReceiver,
    Recycler,
};
use crate::sources::siprec::ports::RtpPorts;
use crate::status::SharedStatus;
// The steady wall clock: every time the engine is given (media stamps,
// SIP messages, timers) is on it, so a step of the wall clock moves no
// call's audio (docs/timing.md).
use crate::sys::shutdown::Shutdown;
use crate::sys::steady_now as now;

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
    /// From the daemon (new recording settings on a reload, ...).
    Control(HostControl),
    /// The SIP task refused input (counted in the guard's counters): the
    /// status is due.
    Refused,
    /// An answered dialog ended (after the messages that ended it): a call
    /// whose audio never began, once the engine has ended it too, becomes an
    /// empty recording (`reason`; see [`engine::Endings`]); with
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
    /// The daemon drains: take no new calls (INVITE and OPTIONS get 503 with
    /// Retry-After), keep the dialogs in progress, keep answering until
    /// stopped.
    NoNewCalls,
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

mod engine;
use engine::*;
mod sip;
use sip::*;

struct Session {
    /// Our RTP addresses (one per stream taken).
    ports: Vec<SocketAddr>,
    last_rtp: Arc<AtomicI64>,
    version: u64,
    /// Port per offered m-line (0 = rejected).
    line_ports: Vec<u16>,
    /// The SDES suite and key parameters each m-line's stream is decrypted
    /// with (None: plain RTP), to notice a re-offer's new key.
    line_keys: Vec<Option<(String, String)>>,
    /// The SRC's address (picks our media address when listening on all).
    peer: SocketAddr,
    /// Our SDP now in force (offered again in the 200 to a re-INVITE that
    /// carries no offer).
    sdp: String,
    /// The SRC's offer in force sends nothing (every stream inactive: a
    /// paused recording, RFC 7866 §7.1.1.2): no media timeout hangs it up.
    held: bool,
}

/// The TLS settings new connections are accepted with (swapped on reload).
type TlsShared = Arc<RwLock<Arc<ServerConfig>>>;

/// How long a TLS client has to finish its handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A running SIPREC source.
pub struct SiprecHandle {
    stop: Shutdown,
    sip_task: JoinHandle<()>,
    media: MediaReceiver,
    engine_thread: std::thread::JoinHandle<()>,
    tls: Option<TlsShared>,
    control: mpsc::UnboundedSender<Control>,
    /// Into the engine thread, for settings; dropped before the engine is
    /// joined (the engine ends when every sender is gone).
    settings: Option<Arc<SyncSender<EngineInput>>>,
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
    /// How the control API reaches this instance's engine (through its input
    /// queue; never keeps it open: the engine still ends on stop).
    pub(crate) fn api(&self) -> impl Fn(ControlRequest) -> bool + Send + Sync + 'static {
        let queue = self.settings.as_ref().map(Arc::downgrade);
        move |req| {
            let Some(tx) = queue.as_ref().and_then(std::sync::Weak::upgrade) else {
                return false;
            };
            // A full queue drops the request (its reply goes unanswered).
            !matches!(
                tx.try_send(EngineInput::Control(HostControl::Api(req))),
                Err(TrySendError::Disconnected(_))
            )
        }
    }

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
            let input = EngineInput::Control(HostControl::Settings(Box::new(rec)));
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

    /// The daemon drains: no new calls (INVITE and out-of-dialog OPTIONS are
    /// answered `503` with `Retry-After`, so a dispatcher probing with
    /// OPTIONS stops sending), the calls in progress go on (BYE, re-INVITE,
    /// UPDATE answered); unlike [`SiprecHandle::drain`] the listener keeps
    /// answering until [`SiprecHandle::stop`]. See [`SiprecHandle::calls`].
    pub fn refuse_new_calls(&self) {
        let _ = self.control.send(Control::NoNewCalls);
    }

    /// Keep taking calls, end as soon as no call is in progress (`false`:
    /// keep running after all).
    pub(crate) fn stop_when_idle(&self, on: bool) {
        let _ = self.control.send(Control::StopWhenIdle(on));
    }

    /// The SIP task has ended (drained, idle, or stopped): [`stop`] returns at once.
    pub fn finished(&self) -> bool {
        self.sip_task.is_finished()
    }

    /// Dialogs in progress, counting ended ones whose BYE is still held
    /// until their recording is on disk.
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
    pub(crate) fn reload_tls(&self, cfg: &SiprecConfig) -> Result<bool, crate::sys::tls::TlsError> {
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
    /// The SIP task hangs up and lets go of the engine's input while the
    /// media thread delivers what its sockets still hold and stops; the
    /// engine thread ends when both are gone (its channel disconnects), so
    /// nothing received is left unrecorded. The SIP task answers the BYEs
    /// it holds as the engine reports their recordings durable, so it ends
    /// after the engine has finished them (the two run at once: the engine
    /// cannot finish before the SIP task let go of its input).
    pub async fn stop(self) {
        let SiprecHandle {
            stop,
            sip_task,
            media,
            engine_thread,
            control,
            settings,
            ..
        } = self;
        stop.trigger();
        drop(settings);
        // The engine thread's report of the last durable BYE closes the
        // SIP task's control channel: nothing else holds it then.
        drop(control);
        let engine = tokio::task::spawn_blocking(move || {
            media.stop();
            engine_thread.join()
        });
        let _ = sip_task.await;
        let _ = engine.await;
    }
}

impl crate::sources::handle::SourceHandle for SiprecHandle {
    fn name(&self) -> &'static str {
        "siprec"
    }

    /// In place: `allow`, `max_calls`, `rtp_ports`, `rtp_timeout` and the
    /// recording settings for new calls, TLS files re-read. New listen
    /// addresses or disabled: [`Reload::Restart`](crate::sources::handle::Reload),
    /// which the daemon carries out without cutting a call (the old
    /// listener drains; see `daemon::reload_siprec`).
    fn reload(
        &mut self,
        cfg: &Config,
        _changed: &[&'static str],
    ) -> crate::sources::handle::Reload {
        let sc = &cfg.sources.siprec;
        if !sc.enabled {
            return crate::sources::handle::Reload::Restart;
        }
        self.update(
            sc,
            cfg.recording.rtp_timeout,
            crate::sources::handle::recording_settings(cfg, "siprec"),
        );
        if self.listen != sc.listen || self.tls_listen != sc.tls_listen {
            return crate::sources::handle::Reload::Restart;
        }
        match self.reload_tls(sc) {
            Ok(true) => tracing::info!("SIPREC TLS certificate and key re-read"),
            Ok(false) => {}
            Err(e) => tracing::error!("SIPREC TLS keeps its running certificate: {e}"),
        }
        crate::sources::handle::Reload::Applied
    }

    fn stop(self: Box<Self>) -> crate::sources::handle::Stopping {
        Box::pin(SiprecHandle::stop(*self))
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
    let stop = Shutdown::new()?;
    let answered = out.answered_calls();
    answered.set_rate_policy(engine_cfg.sample_rate);
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
            status: status.clone(),
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
        settings: Some(Arc::new(etx)),
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
