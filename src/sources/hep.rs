//! HEP collector (`[sources.hep]`): capture agents (heplify, Kamailio and
//! OpenSIPS `siptrace`, FreeSWITCH and Asterisk `res_hep`) send copies of
//! the SIP and RTP they see; the calls in them are recorded like sniffed
//! ones, without a mirror port or capabilities on the PBX.
//!
//! In: HEPv3 (and v2/v1) packets over UDP (one per datagram) and TCP (back
//! to back) on `listen`, from the addresses in `allow` (empty: any).
//! Out: recordings in the spool, through one [`CallEngine`] fed with the
//! packets' own capture times as arrival times; counters in the status
//! (packets per agent, refusals per reason).
//!
//! Threads: one receives UDP, one accepts TCP (a thread per connection,
//! which frames the stream by the HEP length and is closed on the first
//! thing that is not HEP); all of them queue the packets to the engine
//! thread, which owns the engine and the recording sink
//! ([`EngineHost`]: it sleeps until a packet or the engine's next deadline)
//! and applies reloads that come on the same queue. A full queue drops
//! packets (counted), never blocks a receiver. Stop: one [`Shutdown`]
//! token; every receiver waits on its socket and the token together, so
//! nothing wakes up while no agent sends.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::IpNet;
use pbx_core::call::{EndReason, EngineConfig};
use pbx_core::hep::{self, HepError};
use pbx_core::Timestamp;

use crate::config::Config;
use crate::control::ControlRequest;
use crate::health::Liveness;
use crate::recording::{RecordingDir, RecordingSettings};
use crate::sources::engine_host::{EngineHost, HostControl};
use crate::sources::handle::{
    context, recording_settings, stop_blocking, Reload, SourceHandle, Stopping,
};
use crate::status::SharedStatus;
use crate::sys::now;
use crate::sys::shutdown::{wait_readable, Ready, Shutdown};

/// Packets queued for the engine thread at most.
const QUEUE: usize = 65_536;
/// A pause after a socket error before trying again.
const ERROR_PAUSE: Duration = Duration::from_millis(200);
/// TCP connections served at once.
const MAX_TCP: usize = 256;

/// What the engine thread receives, in order.
enum Input {
    Packet {
        received: Timestamp,
        bytes: Vec<u8>,
    },
    Control(HostControl),
    /// A receiver refused something (counted in [`Shared`]): the status
    /// is due.
    Refused,
}

/// Counters shared by the receiving threads.
#[derive(Default)]
struct Shared {
    rejected: Mutex<BTreeMap<&'static str, u64>>,
    queue_drops: AtomicU64,
    tcp_open: AtomicU64,
}

impl Shared {
    fn reject(&self, reason: &'static str) {
        if let Ok(mut r) = self.rejected.lock() {
            *r.entry(reason).or_default() += 1;
        }
    }
}

fn reason(e: &HepError) -> &'static str {
    match e {
        HepError::NotHep => "not_hep",
        HepError::Truncated => "truncated",
        HepError::Malformed(_) => "malformed",
        HepError::Unsupported(_) => "unsupported",
    }
}

fn allowed(allow: &[IpNet], peer: SocketAddr) -> bool {
    allow.is_empty() || allow.iter().any(|n| n.contains(&peer.ip()))
}

/// Binds UDP and TCP on `listen` (the same port).
pub fn bind(listen: SocketAddr) -> io::Result<(UdpSocket, TcpListener)> {
    let udp = UdpSocket::bind(listen)?;
    let tcp = TcpListener::bind(udp.local_addr()?)?;
    Ok((udp, tcp))
}

/// A running collector.
pub struct HepHandle {
    stop: Shutdown,
    thread: std::thread::JoinHandle<()>,
    /// Into the engine's queue; dropped on stop (the engine ends when the
    /// receivers' senders and this one are gone).
    control: Arc<SyncSender<Input>>,
}

impl HepHandle {
    /// How the control API reaches the collector's engine (through its input
    /// queue; never keeps it open: the engine still ends on stop).
    pub(crate) fn api(&self) -> impl Fn(ControlRequest) -> bool + Send + Sync + 'static {
        let queue = Arc::downgrade(&self.control);
        move |req| {
            let Some(tx) = queue.upgrade() else {
                return false;
            };
            !matches!(
                tx.try_send(Input::Control(HostControl::Api(req))),
                Err(TrySendError::Disconnected(_))
            )
        }
    }

    /// New recording settings (a reload): for calls that begin from now on.
    pub fn settings(&self, s: RecordingSettings) {
        // Waits for room: a reload is rare, the queue drains fast.
        let _ = self
            .control
            .send(Input::Control(HostControl::Settings(Box::new(s))));
    }

    /// Stops taking packets, closes the calls in progress (cut by shutdown)
    /// and returns when the engine thread has ended.
    pub fn stop(self) {
        self.stop.trigger();
        drop(self.control);
        let _ = self.thread.join();
    }
}

/// `source` in the JSON of a recording made from HEP (CONTRACT §3 names
/// `siprec | sniff | pcap | folder`): copies of a call's SIP and RTP that a
/// capture agent saw and relayed are a passive capture, as sniffing is.
/// (Its metrics and status still go under `hep`.)
const HEP_SOURCE: &str = "sniff";

/// Start the collector of `[sources.hep]` if enabled; on an error the
/// status (readyz) and the log say why, and `None`.
pub(crate) fn start_source(
    cfg: &Config,
    status: &SharedStatus,
    live: &Arc<Liveness>,
) -> Option<HepHandle> {
    let h = &cfg.sources.hep;
    if !h.enabled {
        if let Ok(mut s) = status.lock() {
            s.sources.remove("hep");
        }
        return None;
    }
    let started = RecordingDir::new(&cfg.spool.dir, context(cfg, HEP_SOURCE))
        .map_err(|e| format!("spool {}: {e}", cfg.spool.dir.display()))
        .and_then(|out| {
            start(
                h.listen,
                h.allow.clone(),
                cfg.recording.engine_config(),
                out,
                status.clone(),
                live.clone(),
            )
            .map_err(|e| format!("sources.hep.listen {}: {e}", h.listen))
        });
    match started {
        Ok(handle) => {
            tracing::info!(listen = %h.listen, "HEP collector listening (UDP and TCP)");
            Some(handle)
        }
        Err(e) => {
            tracing::error!("hep: {e}");
            if let Ok(mut s) = status.lock() {
                let src = s.sources.entry("hep".into()).or_default();
                src.up = false;
                src.error = Some(e);
                src.listen = h.listen.to_string();
            }
            None
        }
    }
}

impl SourceHandle for HepHandle {
    fn name(&self) -> &'static str {
        "hep"
    }

    /// New recording settings in place; a new listener or spool: restart.
    fn reload(&mut self, cfg: &Config, changed: &[&'static str]) -> Reload {
        if !cfg.sources.hep.enabled
            || changed.contains(&"sources.hep")
            || changed.contains(&"spool.dir")
            || self.thread.is_finished()
        {
            return Reload::Restart;
        }
        self.settings(recording_settings(cfg, HEP_SOURCE));
        Reload::Applied
    }

    fn stop(self: Box<Self>) -> Stopping {
        stop_blocking(move || HepHandle::stop(*self))
    }

    fn api(&self) -> Option<crate::control::SendRequest> {
        Some(Box::new(HepHandle::api(self)))
    }
}

/// Binds `listen` (UDP and TCP) and starts the collector.
pub fn start(
    listen: SocketAddr,
    allow: Vec<IpNet>,
    engine_cfg: EngineConfig,
    out: RecordingDir,
    status: SharedStatus,
    live: Arc<Liveness>,
) -> io::Result<HepHandle> {
    let sockets = bind(listen)?;
    let stop = Shutdown::new()?;
    let (tx, rx) = sync_channel::<Input>(QUEUE);
    let control = tx.clone();
    let sp = stop.clone();
    if let Ok(mut s) = status.lock() {
        let src = s.sources.entry("hep".into()).or_default();
        src.up = true;
        src.error = None;
        src.listen = listen.to_string();
    }
    let thread = std::thread::Builder::new()
        .name("hep".into())
        .spawn(move || {
            run(
                "hep",
                sockets,
                allow,
                engine_cfg,
                out,
                sp,
                status,
                live,
                (tx, rx),
            )
        })?;
    Ok(HepHandle {
        stop,
        thread,
        control: Arc::new(control),
    })
}

/// Runs the collector until `stop` is triggered and every sender of
/// `queue` is gone; then closes every open call (marked as cut by
/// shutdown) and returns.
#[allow(clippy::too_many_arguments)]
fn run(
    name: &str,
    (udp, tcp): (UdpSocket, TcpListener),
    allow: Vec<IpNet>,
    engine_cfg: EngineConfig,
    out: RecordingDir,
    stop: Shutdown,
    status: SharedStatus,
    live: Arc<Liveness>,
    (tx, rx): (SyncSender<Input>, Receiver<Input>),
) {
    let shared = Arc::new(Shared::default());
    let allow = Arc::new(allow);
    let mut threads = Vec::new();
    {
        let (tx, stop, shared, allow) = (tx.clone(), stop.clone(), shared.clone(), allow.clone());
        threads.push(
            std::thread::Builder::new()
                .name("hep-udp".into())
                .spawn(move || udp_loop(udp, &allow, &tx, &stop, &shared))
                .expect("spawn hep-udp"),
        );
    }
    {
        let (stop, shared) = (stop.clone(), shared.clone());
        threads.push(
            std::thread::Builder::new()
                .name("hep-tcp".into())
                .spawn(move || tcp_accept(tcp, allow, tx, stop, shared))
                .expect("spawn hep-tcp"),
        );
    }
    let mut host = EngineHost::new(name, engine_cfg, out, live);
    // The agents' capture times are the engine's clock, not ours.
    host.clock = None;
    let mut agents: BTreeMap<String, u64> = BTreeMap::new();
    // The packets carry the agent's clock; the engine's timeouts must run
    // on the same clock: ours plus how far the agent's was ahead of it at
    // the latest packet (its capture time minus our receive time: network
    // delay and clock offset). Never backwards.
    // Before the first packet the agent's clock is not known: ours stands
    // in for the wait, and is not kept (kept, it was the floor of the
    // engine's clock: an agent whose clock is behind ours had every
    // packet rendered at once, as if older than the jitter window, until
    // its clock passed our start; reordered packets became silence).
    let mut offset_us = 0i64;
    let mut engine_now: Option<Timestamp> = None;
    let clock = |offset_us: i64, engine_now: &mut Option<Timestamp>| match engine_now {
        None => now(),
        Some(n) => {
            *n = (*n).max(now().add_micros(offset_us));
            *n
        }
    };
    loop {
        let t = clock(offset_us, &mut engine_now);
        let got = match host.wait(t) {
            Some(d) => rx.recv_timeout(d),
            None => {
                host.idle();
                rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
            }
        };
        // Only a wait that ran out says the queue is empty: then the clock
        // moves on with ours. After an input more may be queued behind it,
        // so the clock stays at the newest packet (ours, running on, would
        // write the queued packets' places as silence before they come).
        let drained = matches!(got, Err(RecvTimeoutError::Timeout));
        let input = match got {
            Ok(Input::Packet { received, bytes }) => {
                match hep::parse(&bytes) {
                    Ok(p) => {
                        count_agent(&mut agents, p.agent_id);
                        let seg = p.segment(received);
                        offset_us = seg.ts.micros_since(received);
                        engine_now = Some(engine_now.map_or(seg.ts, |n| n.max(seg.ts)));
                        host.engine.handle_segment(&seg, &mut host.out);
                    }
                    Err(e) => shared.reject(reason(&e)),
                }
                true
            }
            Ok(Input::Control(c)) => {
                host.apply(c);
                true
            }
            Ok(Input::Refused) => true,
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let t = match engine_now {
            Some(t) if !drained => t,
            _ => clock(offset_us, &mut engine_now),
        };
        if host.tick(t, input) {
            publish(&host, &shared, &agents, &status);
        }
    }
    for t in threads {
        let _ = t.join();
    }
    host.finish(EndReason::Shutdown);
    publish(&host, &shared, &agents, &status);
}

/// Capture agents counted apart (`/status` `hep_agents`, the `agent`
/// label of `pbx_edge_hep_packets_total`); the packets of any agent beyond
/// them are counted under [`OTHER_AGENTS`]. The ids come from the network:
/// without a cap every id sent would be a series kept for good.
pub(crate) const MAX_AGENTS: usize = 64;

/// The agent id the packets of agents beyond [`MAX_AGENTS`] count under.
pub(crate) const OTHER_AGENTS: &str = "other";

/// Count a packet of capture agent `id` (`-`: none given).
fn count_agent(agents: &mut BTreeMap<String, u64>, id: Option<u32>) {
    let id = id.map_or_else(|| "-".to_string(), |a| a.to_string());
    if let Some(n) = agents.get_mut(&id) {
        *n += 1;
        return;
    }
    let distinct = agents.len() - usize::from(agents.contains_key(OTHER_AGENTS));
    let key = if distinct < MAX_AGENTS {
        id
    } else {
        OTHER_AGENTS.to_string()
    };
    *agents.entry(key).or_default() += 1;
}

/// Count a refusal and let the engine thread publish it.
fn refuse(tx: &SyncSender<Input>, shared: &Shared, reason: &'static str) {
    shared.reject(reason);
    let _ = tx.try_send(Input::Refused);
}

fn queue(tx: &SyncSender<Input>, bytes: Vec<u8>, shared: &Shared) {
    let input = Input::Packet {
        received: now(),
        bytes,
    };
    if let Err(TrySendError::Full(_)) = tx.try_send(input) {
        shared.queue_drops.fetch_add(1, Ordering::Relaxed);
    }
}

fn udp_loop(
    udp: UdpSocket,
    allow: &[IpNet],
    tx: &SyncSender<Input>,
    stop: &Shutdown,
    shared: &Shared,
) {
    let _ = udp.set_nonblocking(true);
    let mut buf = vec![0u8; hep::MAX_PACKET];
    loop {
        match wait_readable(&[udp.as_raw_fd()], stop, None) {
            Ready::Stop => return,
            Ready::Timeout => continue,
            Ready::Input => {}
        }
        match udp.recv_from(&mut buf) {
            Ok((n, peer)) => {
                if !allowed(allow, peer) {
                    refuse(tx, shared, "not_allowed");
                    continue;
                }
                queue(tx, buf[..n].to_vec(), shared);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => {
                tracing::warn!("hep: UDP receive: {e}");
                std::thread::sleep(ERROR_PAUSE);
            }
        }
    }
}

fn tcp_accept(
    tcp: TcpListener,
    allow: Arc<Vec<IpNet>>,
    tx: SyncSender<Input>,
    stop: Shutdown,
    shared: Arc<Shared>,
) {
    let _ = tcp.set_nonblocking(true);
    let mut conns = Vec::new();
    loop {
        match wait_readable(&[tcp.as_raw_fd()], &stop, None) {
            Ready::Stop => break,
            Ready::Timeout => continue,
            Ready::Input => {}
        }
        match tcp.accept() {
            Ok((s, peer)) => {
                if !allowed(&allow, peer) {
                    refuse(&tx, &shared, "not_allowed");
                    continue;
                }
                if shared.tcp_open.load(Ordering::Relaxed) >= MAX_TCP as u64 {
                    refuse(&tx, &shared, "tcp_connections");
                    continue;
                }
                shared.tcp_open.fetch_add(1, Ordering::Relaxed);
                let (tx, stop, shared) = (tx.clone(), stop.clone(), shared.clone());
                conns.push(std::thread::spawn(move || {
                    tcp_conn(s, &tx, &stop, &shared);
                    shared.tcp_open.fetch_sub(1, Ordering::Relaxed);
                }));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => {
                tracing::warn!("hep: TCP accept: {e}");
                std::thread::sleep(ERROR_PAUSE);
            }
        }
        conns.retain(|c: &std::thread::JoinHandle<()>| !c.is_finished());
    }
    for c in conns {
        let _ = c.join();
    }
}

/// One agent's TCP stream: HEP packets back to back, cut by their length.
fn tcp_conn(mut s: TcpStream, tx: &SyncSender<Input>, stop: &Shutdown, shared: &Shared) {
    let _ = s.set_nonblocking(true);
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut chunk = vec![0u8; 65_536];
    loop {
        match wait_readable(&[s.as_raw_fd()], stop, None) {
            Ready::Stop => return,
            Ready::Timeout => continue,
            Ready::Input => {}
        }
        match s.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => return,
        }
        loop {
            match hep::frame_len(&buf) {
                Ok(Some(len)) if buf.len() >= len => {
                    let rest = buf.split_off(len);
                    queue(tx, std::mem::replace(&mut buf, rest), shared);
                }
                Ok(_) => break,
                Err(e) => {
                    // Out of step: nothing after this can be trusted.
                    refuse(tx, shared, reason(&e));
                    return;
                }
            }
        }
        if buf.len() > hep::MAX_PACKET {
            refuse(tx, shared, "malformed");
            return;
        }
    }
}

fn publish(
    host: &EngineHost,
    shared: &Shared,
    agents: &BTreeMap<String, u64>,
    status: &SharedStatus,
) {
    let rejected = shared
        .rejected
        .lock()
        .map(|r| r.iter().map(|(k, v)| (k.to_string(), *v)).collect())
        .unwrap_or_default();
    if let Ok(mut s) = status.lock() {
        let src = s.sources.entry(host.name().to_string()).or_default();
        src.record_engine(&host.engine, &host.out.counters);
        src.queue_drops = shared.queue_drops.load(Ordering::Relaxed);
        src.errors = host.out.counters.failed;
        src.hep_agents = agents.clone();
        src.hep_rejected = rejected;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_agents_beyond_the_cap_are_counted_as_other() {
        let mut agents = BTreeMap::new();
        count_agent(&mut agents, None);
        for id in 0..200u32 {
            count_agent(&mut agents, Some(id));
            count_agent(&mut agents, Some(id));
        }
        // 64 agents of their own ("-" among them), the rest folded.
        assert_eq!(agents.len(), MAX_AGENTS + 1);
        assert_eq!(agents["-"], 1);
        assert_eq!(agents["0"], 2);
        assert_eq!(agents["62"], 2);
        assert!(!agents.contains_key("63"));
        assert_eq!(agents[OTHER_AGENTS], 2 * (200 - 63));
        assert_eq!(agents.values().sum::<u64>(), 1 + 2 * 200);
        // An agent counted apart stays so.
        count_agent(&mut agents, Some(5));
        assert_eq!(agents["5"], 3);
    }
}
