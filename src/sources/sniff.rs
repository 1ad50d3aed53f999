//! Live sniffing: SIP and RTP captured on an interface with an AF_PACKET socket,
//! fed to the same [`CallEngine`] as `import`.
//!
//! One thread owns the socket and the engine: receive a frame with the time the
//! kernel received it (`SO_TIMESTAMPNS`, wall clock), hand it to the engine, which writes recordings into the spool.
//! The thread sleeps in `poll` on the socket, its control doorbell and the
//! stop token until a frame comes or the engine's next deadline
//! ([`EngineHost::wait`]): calls whose media stopped end by `rtp_timeout`,
//! the status snapshot is refreshed (kernel drop counters from
//! `PACKET_STATISTICS`) while anything happens, and an idle capture does
//! not wake up at all.
//!
//! The socket is `SOCK_DGRAM`: the kernel strips the link layer (and VLAN
//! tags), so frames arrive as raw IP whatever the interface type, including
//! `any`. Opening it needs `CAP_NET_RAW`; without it the error says so.
//!
//! `sources.sniff.filter` is a filter in pcap syntax (as for tcpdump),
//! compiled by libpcap (loaded at run time only when a filter is set: the
//! binary does not link it; a missing library is an error naming the
//! package) for `DLT_RAW` (what the socket delivers: packets
//! from the IP header on, IPv4 or IPv6) and attached to the socket in the
//! kernel (`SO_ATTACH_FILTER`, then `SO_LOCK_FILTER`), before the socket is
//! bound, so no unfiltered packet is ever queued. Link-layer primitives
//! (`ether host`, `vlan`) do not apply to raw IP and are refused when the
//! config is checked.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;

use pbx_core::call::{EndReason, EngineConfig};
use pbx_core::capture::LinkType;
use pbx_core::Timestamp;

use crate::config::Config;
use crate::health::Liveness;
use crate::recording::RecordingDir;
use crate::sources::engine_host::{EngineHost, HostControl};
use crate::sources::handle::{
    context, recording_settings, stop_blocking, Reload, SourceHandle, Stopping,
};
use crate::status::SharedStatus;
use crate::sys::shutdown::{wait_readable, Doorbell, Ready, Shutdown};

/// An open capture socket.
pub struct PacketSocket {
    fd: OwnedFd,
    drops: u64,
    /// Index of the loopback interface: on it every packet is seen twice
    /// (outgoing and incoming); the outgoing copy is skipped, as libpcap does.
    loopback: i32,
    /// What it was opened with (to open it again when a named interface
    /// goes away and comes back: a new interface has a new index).
    interface: String,
    filter: Option<String>,
}

impl PacketSocket {
    /// Open a capture on `interface` ("any" for all interfaces), keeping
    /// only the packets that match `filter` (pcap syntax; `None`: all).
    pub fn open(interface: &str, filter: Option<&str>) -> io::Result<PacketSocket> {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // Protocol 0: the socket receives nothing until it is bound below,
        // after the filter is in place.
        // SAFETY: plain socket(2) call; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            // EAFNOSUPPORT: the systemd unit's RestrictAddressFamilies= forbids
            // AF_PACKET unless the sniffing drop-in is installed.
            if matches!(
                e.raw_os_error(),
                Some(libc::EPERM) | Some(libc::EACCES) | Some(libc::EAFNOSUPPORT)
            ) {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "capturing on interface {interface} needs the CAP_NET_RAW capability and AF_PACKET sockets \
                         (under systemd install the drop-in /usr/share/doc/pbx-edge/examples/sniff.conf; or run as root): {e}"
                    ),
                ));
            }
            return Err(e);
        }
        // SAFETY: fd is a valid, owned descriptor from socket(2).
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: the literal is a valid C string.
        let loopback = unsafe { libc::if_nametoindex(c"lo".as_ptr()) } as i32;
        let sock = PacketSocket {
            fd,
            drops: 0,
            loopback,
            interface: interface.to_string(),
            filter: filter.map(str::to_string),
        };
        // A large receive buffer absorbs bursts. SO_RCVBUF is capped by
        // net.core.rmem_max (about 208 KiB by default: a few ms of a busy
        // link); SO_RCVBUFFORCE (CAP_NET_ADMIN) is not.
        let size: libc::c_int = 8 << 20;
        if sock
            .try_setsockopt(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &size)
            .is_err()
        {
            sock.setsockopt(libc::SOL_SOCKET, libc::SO_RCVBUF, &size);
            let granted = sock.rcvbuf();
            if granted < size as usize {
                tracing::info!(
                    interface,
                    granted,
                    "capture receive buffer limited by net.core.rmem_max (raise it, e.g. sysctl -w net.core.rmem_max=8388608, or grant CAP_NET_ADMIN) if sources.sniff drops packets"
                );
            }
        }
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        sock.setsockopt(libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv);
        // Arrival times from the kernel, as libpcap gives them: a busy moment
        // of this thread does not move the audio in time.
        let on: libc::c_int = 1;
        sock.setsockopt(libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, &on);
        if let Some(expr) = filter {
            // IP fragments after the first carry no UDP/TCP header, so a
            // port filter would drop them and with them every SIP message
            // larger than the MTU: fragments always pass (reassembled, then
            // decoded like any packet).
            let expr =
                format!("({expr}) or (ip and ip[6:2] & 0x3fff != 0) or (ip6 and ip6[6] == 44)");
            let prog = compile_filter(&expr).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("sources.sniff.filter: {e}"),
                )
            })?;
            sock.attach_filter(&prog)?;
        }
        let index = if interface == "any" {
            0
        } else {
            let name = CString::new(interface)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "bad interface name"))?;
            // SAFETY: name is a valid C string.
            let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
            if index == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("no network interface named {interface}"),
                ));
            }
            index as i32
        };
        // Binding with the protocol starts the capture (index 0: every interface).
        // SAFETY: zeroed sockaddr_ll is a valid value; fields set below.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = index;
        // SAFETY: sll is a properly initialised sockaddr_ll of the given size.
        let rc = unsafe {
            libc::bind(
                sock.fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        if index != 0 {
            // Promiscuous, as tcpdump: on a SPAN/mirror port the frames are
            // addressed to other machines, which the card drops otherwise.
            // (`any` cannot be.) Best effort: a failure is logged.
            // SAFETY: zeroed packet_mreq is valid; fields set below.
            let mut mreq: libc::packet_mreq = unsafe { std::mem::zeroed() };
            mreq.mr_ifindex = index;
            mreq.mr_type = libc::PACKET_MR_PROMISC as u16;
            if let Err(e) =
                sock.try_setsockopt(libc::SOL_PACKET, libc::PACKET_ADD_MEMBERSHIP, &mreq)
            {
                tracing::warn!(interface, "capture: promiscuous mode not set: {e}");
            }
        }
        Ok(sock)
    }

    /// The receive buffer granted (bytes).
    fn rcvbuf(&self) -> usize {
        let mut v: libc::c_int = 0;
        match self.try_getsockopt(libc::SOL_SOCKET, libc::SO_RCVBUF, &mut v) {
            Ok(()) => v.max(0) as usize,
            Err(_) => 0,
        }
    }

    /// The same capture opened again (a named interface that went away
    /// and came back under a new index).
    fn reopen(&self) -> io::Result<PacketSocket> {
        PacketSocket::open(&self.interface, self.filter.as_deref())
    }

    /// Whether `e` says the socket's interface went away (deleted, or
    /// down for good): it captures nothing more until opened again.
    fn lost_interface(&self, e: &io::Error) -> bool {
        self.interface != "any"
            && matches!(
                e.raw_os_error(),
                Some(libc::ENETDOWN) | Some(libc::ENODEV) | Some(libc::ENXIO)
            )
    }

    /// Attach a classic BPF program to the socket and lock it (a process that
    /// later got hold of the descriptor cannot widen the capture).
    fn attach_filter(&self, prog: &[libc::sock_filter]) -> io::Result<()> {
        let fprog = libc::sock_fprog {
            len: u16::try_from(prog.len())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "filter too long"))?,
            filter: prog.as_ptr().cast_mut(),
        };
        let named = |what: &str, e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"));
        self.try_setsockopt(libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &fprog)
            .map_err(|e| named("SO_ATTACH_FILTER", e))?;
        let one: libc::c_int = 1;
        self.try_setsockopt(libc::SOL_SOCKET, libc::SO_LOCK_FILTER, &one)
            .map_err(|e| named("SO_LOCK_FILTER", e))?;
        Ok(())
    }

    /// Best effort (buffer size and timeouts): errors are ignored on purpose.
    fn setsockopt<T>(&self, level: i32, name: i32, v: &T) {
        let _ = self.try_setsockopt(level, name, v);
    }

    fn try_getsockopt<T>(&self, level: i32, name: i32, v: &mut T) -> io::Result<()> {
        let mut len = std::mem::size_of::<T>() as libc::socklen_t;
        // SAFETY: v points to a T of the given size, writable for the call.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                (v as *mut T).cast(),
                &mut len,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    fn try_setsockopt<T>(&self, level: i32, name: i32, v: &T) -> io::Result<()> {
        // SAFETY: v points to a T of the given size, valid for the call (the
        // kernel copies what it keeps).
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                (v as *const T).cast(),
                std::mem::size_of::<T>() as u32,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Receive one frame (raw IP) with the time the kernel received it.
    /// `Ok(None)` on timeout (or a skipped duplicate); a frame larger than
    /// `buf` is an error (`InvalidData`, naming its length), never part of
    /// it taken for the whole.
    pub fn recv<'a>(&self, buf: &'a mut [u8]) -> io::Result<Option<(Timestamp, &'a [u8])>> {
        match self.recv_flags(buf, 0) {
            Ok(Got::Frame(ts, n, _)) => Ok(buf.get(..n).map(|f| (ts, f))),
            Ok(Got::Truncated(_, len)) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "a frame of {len} bytes does not fit the {} given",
                    buf.len()
                ),
            )),
            Ok(Got::Skipped) => Ok(None),
            Err(e) => match e.kind() {
                io::ErrorKind::WouldBlock
                | io::ErrorKind::TimedOut
                | io::ErrorKind::Interrupted => Ok(None),
                _ => Err(e),
            },
        }
    }

    /// One frame; a timeout or an empty queue (`MSG_DONTWAIT`) is an error
    /// (WouldBlock). Asked with `MSG_TRUNC`, the kernel says the frame's
    /// whole length: one longer than `buf` (a GRO/GSO super-packet, e.g.
    /// TCP coalesced on `lo` or a veth beyond 64 KiB with BIG TCP) is
    /// [`Got::Truncated`], not a frame.
    fn recv_flags(&self, buf: &mut [u8], flags: i32) -> io::Result<Got> {
        // SAFETY: zeroed sockaddr_ll and msghdr are valid; recvmsg fills them.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut control = [0u64; 8];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
        h.msg_name = (&mut from as *mut libc::sockaddr_ll).cast();
        h.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        h.msg_iov = &mut iov;
        h.msg_iovlen = 1;
        h.msg_control = control.as_mut_ptr().cast();
        h.msg_controllen = std::mem::size_of_val(&control) as _;
        // SAFETY: every pointer in h points at a live buffer of the stated size.
        let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut h, flags | libc::MSG_TRUNC) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if from.sll_pkttype == libc::PACKET_OUTGOING && from.sll_ifindex == self.loopback {
            return Ok(Got::Skipped);
        }
        // SAFETY: h was just filled by recvmsg; `control` is alive.
        let (ts, _) = unsafe { crate::sys::sockets::control_values(&h) };
        let ts = ts.unwrap_or_else(now);
        let n = n as usize;
        if n > buf.len() || h.msg_flags & libc::MSG_TRUNC != 0 {
            return Ok(Got::Truncated(ts, n.max(buf.len() + 1)));
        }
        Ok(Got::Frame(ts, n, u16::from_be(from.sll_protocol)))
    }

    /// Packets the kernel dropped since the socket was opened.
    pub fn kernel_drops(&mut self) -> u64 {
        let mut st = libc::tpacket_stats {
            tp_packets: 0,
            tp_drops: 0,
        };
        if self
            .try_getsockopt(libc::SOL_PACKET, libc::PACKET_STATISTICS, &mut st)
            .is_ok()
        {
            // The kernel resets the counters on each read.
            self.drops += u64::from(st.tp_drops);
        }
        self.drops
    }
}

/// What one receive gave.
#[derive(Debug, PartialEq, Eq)]
enum Got {
    /// A whole frame: its time, length and protocol (the ethertype the
    /// kernel gives it).
    Frame(Timestamp, usize, u16),
    /// A frame longer than the buffer: its time and whole length. Only its
    /// start was copied: never decoded.
    Truncated(Timestamp, usize),
    /// The outgoing copy of a frame on `lo` (the incoming one is taken).
    Skipped,
}

/// Frames of a capture that did not fit its buffer (see [`Got::Truncated`]):
/// counted, logged (the first, then at each power of two), and the buffer
/// grown to take the next one whole (up to [`MAX_FRAME`]).
#[derive(Debug, Default)]
struct Truncations {
    count: u64,
}

/// The largest frame the capture buffer grows to (Linux makes GSO/GRO
/// packets of at most 512 KiB).
const MAX_FRAME: usize = 1 << 20;
/// The capture buffer at the start: a 64 KiB IPv4 or IPv6 packet (a TSO
/// super-packet on `lo` or a veth) and its IPv6 header fit.
const FIRST_FRAME: usize = 65_536 + 1024;

impl Truncations {
    /// A frame of `len` bytes did not fit `buf` (its first `HEADROOM`
    /// bytes are the frame's headroom).
    fn note(&mut self, source: &str, len: usize, buf: &mut Vec<u8>) {
        self.count += 1;
        let had = buf.len() - HEADROOM;
        let want = len.next_power_of_two().min(MAX_FRAME);
        if want > had {
            buf.resize(HEADROOM + want, 0);
        }
        if self.count.is_power_of_two() {
            tracing::warn!(
                source,
                frame_bytes = len,
                buffer_bytes = had,
                truncated_frames = self.count,
                "capture: a frame larger than the receive buffer was cut by the kernel: not decoded (a GRO/GSO super-packet? turn off GRO/LRO on the interface); buffer now {} bytes",
                buf.len() - HEADROOM
            );
        }
    }
}

/// Frames both an old capture and the new one that replaces it saw (a
/// reload opens the new socket while the old one still runs): on the new
/// socket, those up to the newest frame read off the old ones are skipped.
#[derive(Debug, Default)]
struct SwapDedup {
    /// Frames of the current socket up to this time were read off an older
    /// one (cleared by the first newer frame).
    skip_until: Option<Timestamp>,
    /// The newest frame read from the current socket, taken or skipped.
    newest: Option<Timestamp>,
}

impl SwapDedup {
    /// A frame read from the current socket at `ts`: whether it is new
    /// (else an older socket gave it already).
    fn fresh(&mut self, ts: Timestamp) -> bool {
        self.newest = self.newest.max(Some(ts));
        if self.skip_until.is_some_and(|t| ts <= t) {
            return false;
        }
        self.skip_until = None;
        true
    }

    /// The current socket, read to its end (by the loop or the swap's
    /// drain), gives way to a new one.
    fn swapped(&mut self) {
        self.skip_until = self.skip_until.max(self.newest.take());
    }
}

pub use crate::sys::bpf::compile_filter;

pub use crate::sys::now;

/// What the daemon hands a running sniffing loop.
pub(crate) enum SniffControl {
    /// For the engine (recording settings for the calls that begin from
    /// now on, ...).
    Host(HostControl),
    /// A new capture (interface or filter changed), opened by the daemon
    /// while the old one still runs: the loop reads what the old socket
    /// still holds, then goes on with the new one; the engine and its calls
    /// in progress stay.
    Socket(PacketSocket),
}

/// The daemon's end of a sniffing loop's control queue: each message rings
/// the loop's doorbell, so the loop wakes from `poll` for it.
#[derive(Clone)]
pub(crate) struct SniffSender {
    tx: Sender<SniffControl>,
    bell: Arc<Doorbell>,
}

impl SniffSender {
    /// False when the loop has ended.
    pub(crate) fn send(&self, c: SniffControl) -> bool {
        let ok = self.tx.send(c).is_ok();
        self.bell.ring();
        ok
    }
}

/// The loop's end of the control queue.
pub(crate) struct SniffReceiver {
    rx: Receiver<SniffControl>,
    bell: Arc<Doorbell>,
}

/// A control queue for one sniffing loop.
pub(crate) fn control_channel() -> io::Result<(SniffSender, SniffReceiver)> {
    let bell = Arc::new(Doorbell::new()?);
    let (tx, rx) = std::sync::mpsc::channel();
    Ok((
        SniffSender {
            tx,
            bell: bell.clone(),
        },
        SniffReceiver { rx, bell },
    ))
}

/// The running sniffing source, as the daemon holds it.
pub(crate) struct SniffSource {
    stop: Shutdown,
    thread: std::thread::JoinHandle<()>,
    control: SniffSender,
    /// What its capture was opened with (interface, filter).
    capture: (String, Option<String>),
    status: SharedStatus,
}

impl SniffSource {
    /// Open the capture of `[sources.sniff]` and start the loop; on an
    /// error the status (readyz) and the log say why, and `None`.
    pub(crate) fn start(cfg: &Config, status: &SharedStatus, live: &Arc<Liveness>) -> Option<Self> {
        let sn = &cfg.sources.sniff;
        if !sn.enabled {
            if let Ok(mut s) = status.lock() {
                s.sources.remove("sniff");
            }
            return None;
        }
        let (iface, filter) = (sn.interface.clone(), sn.filter.clone());
        let set = |up: bool, error: Option<String>| {
            if let Ok(mut s) = status.lock() {
                let e = s.sources.entry("sniff".into()).or_default();
                e.up = up;
                e.error = error;
                e.listen = iface.clone();
            }
        };
        let started = PacketSocket::open(&iface, filter.as_deref())
            .map_err(|e| e.to_string())
            .and_then(|sock| {
                let out = RecordingDir::new(&cfg.spool.dir, context(cfg, "sniff"))
                    .map_err(|e| format!("spool: {e}"))?;
                let stop = Shutdown::new().map_err(|e| e.to_string())?;
                let (control, crx) = control_channel().map_err(|e| e.to_string())?;
                Ok((sock, out, stop, control, crx))
            });
        let (sock, out, stop, control, crx) = match started {
            Ok(v) => v,
            Err(e) => {
                tracing::error!("sniff: {e}");
                set(false, Some(e));
                return None;
            }
        };
        set(true, None);
        let (st, lv, sp) = (status.clone(), live.clone(), stop.clone());
        let ecfg = cfg.recording.engine_config();
        live.beat("sniff");
        let thread = std::thread::Builder::new()
            .name("sniff".into())
            .spawn(move || run("sniff", sock, ecfg, out, sp, st, lv, crx))
            .expect("spawn sniff thread");
        tracing::info!(interface = %iface, filter = filter.as_deref().unwrap_or(""), "sniffing");
        Some(SniffSource {
            stop,
            thread,
            control,
            capture: (iface, filter),
            status: status.clone(),
        })
    }
}

impl SourceHandle for SniffSource {
    fn name(&self) -> &'static str {
        "sniff"
    }

    /// Requests go on the loop's control queue, which rings its doorbell.
    fn api(&self) -> Option<crate::control::SendRequest> {
        let control = self.control.clone();
        Some(Box::new(move |req| {
            control.send(SniffControl::Host(HostControl::Api(req)))
        }))
    }

    /// Recording settings go to the running loop in place; a new interface
    /// or filter opens a new capture, handed to the running loop (same
    /// engine: calls in progress go on; if it cannot be opened the old one
    /// keeps capturing); disabled or ended: restart.
    fn reload(&mut self, cfg: &Config, _changed: &[&'static str]) -> Reload {
        let sn = &cfg.sources.sniff;
        if !sn.enabled || self.thread.is_finished() {
            return Reload::Restart;
        }
        self.control
            .send(SniffControl::Host(HostControl::Settings(Box::new(
                recording_settings(cfg, "sniff"),
            ))));
        let capture = (sn.interface.clone(), sn.filter.clone());
        if capture != self.capture {
            match PacketSocket::open(&sn.interface, sn.filter.as_deref()) {
                Ok(sock) => {
                    if self.control.send(SniffControl::Socket(sock)) {
                        tracing::info!(interface = %sn.interface, filter = sn.filter.as_deref().unwrap_or(""), "sniffing: new capture; calls in progress go on");
                        self.capture = capture;
                        if let Ok(mut s) = self.status.lock() {
                            if let Some(src) = s.sources.get_mut("sniff") {
                                src.listen = sn.interface.clone();
                            }
                        }
                    }
                }
                Err(e) => tracing::error!(
                    "sniffing keeps capturing on {} (the new capture could not be opened: {e})",
                    self.capture.0
                ),
            }
        }
        Reload::Applied
    }

    fn stop(self: Box<Self>) -> Stopping {
        let SniffSource { stop, thread, .. } = *self;
        stop_blocking(move || {
            stop.trigger();
            let _ = thread.join();
        })
    }
}

/// Most frames read off the old socket when a new capture takes over.
const SWAP_DRAIN_MAX: usize = 1 << 20;
/// Frames read per wake-up before the loop looks at its controls and clock.
const BATCH: usize = 64;

/// Room before each received frame for a link header ([`frame_of`]).
const HEADROOM: usize = 16;

/// The frame received into `buf[HEADROOM..HEADROOM + n]` with protocol
/// `proto`, as the engine takes it: IP as raw IP; anything else (the inner
/// tag of QinQ, MPLS, PPPoE on a mirror port: the kernel strips only one
/// VLAN tag) behind a Linux cooked header naming its ethertype, so the
/// link layer's walker unwraps it.
fn frame_of(buf: &mut [u8], n: usize, proto: u16) -> (LinkType, &[u8]) {
    const IPV4: u16 = 0x0800;
    const IPV6: u16 = 0x86dd;
    let data = &buf[HEADROOM..HEADROOM + n];
    // (Outgoing through a stacked VLAN device the protocol may name the tag
    // while the data already starts at IP: a header whose length field is
    // the frame's is IP.)
    let ip_here = || match data.first().map(|b| b >> 4) {
        Some(4) => data.len() >= 20 && usize::from(u16::from_be_bytes([data[2], data[3]])) == n,
        Some(6) => {
            data.len() >= 40 && usize::from(u16::from_be_bytes([data[4], data[5]])) + 40 == n
        }
        _ => false,
    };
    if proto == IPV4 || proto == IPV6 || proto == 0 || ip_here() {
        return (LinkType::RawIp, &buf[HEADROOM..HEADROOM + n]);
    }
    let head = &mut buf[..HEADROOM];
    head.fill(0);
    head[2..4].copy_from_slice(&1u16.to_be_bytes()); // ARPHRD_ETHER
    head[14..16].copy_from_slice(&proto.to_be_bytes());
    (LinkType::LinuxSll, &buf[..HEADROOM + n])
}

/// How often a capture whose named interface went away is opened again.
const REOPEN_EVERY: Duration = Duration::from_secs(1);

/// Run the sniffing loop until `stop` is triggered; then close every open
/// call (marked as cut by shutdown) and return.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run(
    name: &str,
    mut sock: PacketSocket,
    engine_cfg: EngineConfig,
    out: RecordingDir,
    stop: Shutdown,
    status: SharedStatus,
    live: Arc<Liveness>,
    control: SniffReceiver,
) {
    let mut host = EngineHost::new(name, engine_cfg, out, live);
    let mut buf = vec![0u8; HEADROOM + FIRST_FRAME];
    let mut errors = 0u64;
    let mut truncated = Truncations::default();
    // After a capture swap: the new socket's frames the old one gave.
    let mut dedup = SwapDedup::default();
    // The named interface went away: tried again every second until it
    // is back (then captured from anew; calls in progress go on).
    let mut lost: Option<std::time::Instant> = None;
    loop {
        if let Some(since) = lost {
            if since.elapsed() >= REOPEN_EVERY {
                match sock.reopen() {
                    Ok(mut new) => {
                        new.drops += sock.kernel_drops();
                        sock = new;
                        lost = None;
                        tracing::info!(source = name, interface = %sock.interface, "capture: the interface is back; capturing again");
                    }
                    Err(_) => lost = Some(std::time::Instant::now()),
                }
            }
        }
        let mut timeout = host.wait(now());
        if lost.is_some() {
            timeout = Some(timeout.map_or(REOPEN_EVERY, |t| t.min(REOPEN_EVERY)));
        }
        if timeout.is_none() {
            host.idle();
        }
        // (Not the socket of a lost interface: it has nothing to say.)
        let all = [control.bell.fd(), sock.fd.as_raw_fd()];
        let fds = if lost.is_some() { &all[..1] } else { &all[..] };
        if wait_readable(fds, &stop, timeout) == Ready::Stop {
            break;
        }
        let mut input = false;
        // The newest frame read while more wait in the socket: the clock
        // stays there (the wall clock would run ahead of the frames still
        // queued and make them late).
        let mut behind = None;
        for _ in 0..if lost.is_some() { 0 } else { BATCH } {
            match sock.recv_flags(&mut buf[HEADROOM..], libc::MSG_DONTWAIT) {
                Ok(Got::Frame(ts, n, proto)) => {
                    input = true;
                    behind = Some(ts);
                    if !dedup.fresh(ts) {
                        continue;
                    }
                    let (link, frame) = frame_of(&mut buf, n, proto);
                    host.engine.handle_frame(ts, link, frame, &mut host.out)
                }
                Ok(Got::Truncated(ts, len)) => {
                    input = true;
                    behind = Some(ts);
                    if dedup.fresh(ts) {
                        truncated.note(name, len, &mut buf);
                    }
                }
                Ok(Got::Skipped) => input = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    behind = None;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if sock.lost_interface(&e) => {
                    if lost.is_none() {
                        errors += 1;
                        tracing::warn!(source = name, interface = %sock.interface, "capture: the interface went away ({e}); capturing again as soon as it is back");
                        lost = Some(std::time::Instant::now());
                    }
                    break;
                }
                Err(e) => {
                    errors += 1;
                    input = true;
                    tracing::warn!(source = name, "capture error: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    break;
                }
            }
        }
        control.bell.clear();
        while let Ok(c) = control.rx.try_recv() {
            input = true;
            match c {
                SniffControl::Host(c) => host.apply(c),
                SniffControl::Socket(mut new) => {
                    // What the old socket still holds (it stops queuing
                    // when it is closed below), then the new one. (The old
                    // socket may be a new one of a swap just before, its
                    // frames that the one before gave still skipped.)
                    for _ in 0..SWAP_DRAIN_MAX {
                        match sock.recv_flags(&mut buf[HEADROOM..], libc::MSG_DONTWAIT) {
                            Ok(Got::Frame(ts, n, proto)) => {
                                if dedup.fresh(ts) {
                                    let (link, frame) = frame_of(&mut buf, n, proto);
                                    host.engine.handle_frame(ts, link, frame, &mut host.out);
                                }
                            }
                            Ok(Got::Truncated(ts, len)) => {
                                if dedup.fresh(ts) {
                                    truncated.note(name, len, &mut buf);
                                }
                            }
                            Ok(Got::Skipped) => {}
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(_) => break,
                        }
                    }
                    // (Emptied by the loop above or here: the newest frame
                    // read off it is the mark.)
                    dedup.swapped();
                    new.drops += sock.kernel_drops();
                    sock = new;
                    tracing::info!(
                        source = name,
                        "capture switched to the new interface/filter; calls in progress go on"
                    );
                }
            }
        }
        let clock = behind.map_or_else(now, |t| t.min(now()));
        if host.tick(clock, input) {
            publish(&host, &mut sock, errors, truncated.count, &status);
        }
    }
    host.finish(EndReason::Shutdown);
    publish(&host, &mut sock, errors, truncated.count, &status);
}

fn publish(
    host: &EngineHost,
    sock: &mut PacketSocket,
    errors: u64,
    truncated: u64,
    status: &SharedStatus,
) {
    let drops = sock.kernel_drops();
    if let Ok(mut s) = status.lock() {
        let src = s.sources.entry(host.name().to_string()).or_default();
        src.record_engine(&host.engine, &host.out.counters);
        src.kernel_drops = drops;
        src.truncated_frames = truncated;
        src.errors = errors + host.out.counters.failed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pbx_core::net::NetDecoder;

    /// An IPv4/UDP packet 10.0.0.1:5060 → 10.0.0.2:5060 holding `payload`.
    fn udp4(payload: &[u8]) -> Vec<u8> {
        let total = (28 + payload.len()) as u16;
        let mut p = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&5060u16.to_be_bytes());
        p.extend_from_slice(&5060u16.to_be_bytes());
        p.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(payload);
        p
    }

    /// What the decoder makes of the frame received as `data` with `proto`.
    fn payloads(data: &[u8], proto: u16) -> Vec<Vec<u8>> {
        let mut buf = vec![0u8; HEADROOM + data.len()];
        buf[HEADROOM..].copy_from_slice(data);
        let (link, frame) = frame_of(&mut buf, data.len(), proto);
        let mut got = Vec::new();
        let mut dec = NetDecoder::default();
        let _ = dec.decode(Timestamp::from_micros(1), link, frame, &mut |s| {
            got.push(s.payload.to_vec())
        });
        got
    }

    /// `unshare(CLONE_NEWNET)` for the calling thread, then `lo` up: a
    /// capture on `lo` sees only the test's own packets.
    fn isolate_network() -> io::Result<()> {
        // SAFETY: plain system calls on this thread and a socket it owns.
        unsafe {
            if libc::unshare(libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut req: libc::ifreq = std::mem::zeroed();
            for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
                *d = *s as libc::c_char;
            }
            let mut rc = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req);
            if rc == 0 {
                req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
                rc = libc::ioctl(fd, libc::SIOCSIFFLAGS, &req);
            }
            let e = io::Error::last_os_error();
            libc::close(fd);
            if rc != 0 {
                return Err(e);
            }
        }
        Ok(())
    }

    /// A frame longer than the receive buffer (here a 3,028-byte UDP
    /// datagram on `lo` into 1,500 bytes: a GRO/GSO super-packet beyond the
    /// capture buffer is the same case) is never handed on as if whole:
    /// the kernel's whole length is known, the loop counts it and grows its
    /// buffer so the next one is taken whole.
    #[test]
    fn a_frame_larger_than_the_buffer_is_never_taken_for_whole() {
        std::thread::spawn(|| {
            if let Err(e) = isolate_network().and_then(|()| PacketSocket::open("lo", None)) {
                eprintln!("skipped: needs a network namespace and CAP_NET_RAW ({e})");
                return;
            }
            let sock = PacketSocket::open("lo", None).unwrap();
            let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let to = rx.local_addr().unwrap();
            tx.send_to(&[7u8; 3000], to).unwrap();
            let mut small = vec![0u8; 1500];
            let mut got = None;
            for _ in 0..20 {
                match sock.recv(&mut small) {
                    Ok(None) => continue,
                    Ok(Some((_, f))) => panic!("a cut frame of {} bytes taken as a frame", f.len()),
                    Err(e) => {
                        got = Some(e);
                        break;
                    }
                }
            }
            let e = got.expect("the datagram was captured");
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
            assert!(e.to_string().contains("3028 bytes"), "{e}");
            // With room it comes whole.
            tx.send_to(&[8u8; 3000], to).unwrap();
            let mut big = vec![0u8; 4096];
            let f = (0..20)
                .find_map(|_| sock.recv(&mut big).unwrap().map(|(_, f)| f.to_vec()))
                .expect("the datagram was captured");
            assert_eq!(f.len(), 3028);
            assert!(f[28..].iter().all(|&b| b == 8));
            // The loop's buffer grows to the next power of two.
            let mut buf = vec![0u8; HEADROOM + 1500];
            let mut t = Truncations::default();
            t.note("test", 3028, &mut buf);
            assert_eq!((t.count, buf.len()), (1, HEADROOM + 4096));
            t.note("test", 10 << 20, &mut buf);
            assert_eq!((t.count, buf.len()), (2, HEADROOM + MAX_FRAME));
        })
        .join()
        .unwrap();
    }

    /// Frames read off the sockets of a capture and its replacements, in
    /// order, through [`SwapDedup`] as the loop does: the ones taken.
    fn taken(sockets: &[&[i64]]) -> Vec<i64> {
        let mut d = SwapDedup::default();
        let mut out = Vec::new();
        for (k, frames) in sockets.iter().enumerate() {
            if k > 0 {
                d.swapped();
            }
            for &t in *frames {
                if d.fresh(Timestamp::from_micros(t)) {
                    out.push(t);
                }
            }
        }
        out
    }

    /// Every frame once across capture swaps: the old socket emptied by the
    /// loop before the swap; two swaps in a row (the second drains the
    /// first's new socket, whose first frames the first socket gave); a
    /// swap while the new socket gave only frames already seen.
    #[test]
    fn a_capture_swap_takes_each_frame_once() {
        assert_eq!(
            taken(&[&[1, 2, 3, 4, 5], &[3, 4, 5, 6, 7]]),
            [1, 2, 3, 4, 5, 6, 7]
        );
        assert_eq!(
            taken(&[&[1, 2, 3, 4, 5], &[3, 4, 5, 6, 7], &[6, 7, 8]]),
            [1, 2, 3, 4, 5, 6, 7, 8]
        );
        assert_eq!(
            taken(&[&[1, 2, 3, 4, 5], &[3, 4, 5], &[4, 5, 6]]),
            [1, 2, 3, 4, 5, 6]
        );
        // A socket that gave nothing keeps the mark of the one before.
        assert_eq!(taken(&[&[1, 2, 3], &[], &[2, 3, 4]]), [1, 2, 3, 4]);
    }

    /// IP as the kernel gives it; the inner tag of QinQ (the kernel strips
    /// the outer one only) unwrapped; IP whose protocol names a tag (sent
    /// through a stacked VLAN device) still IP.
    #[test]
    fn frames_are_ip_or_unwrapped_by_their_protocol() {
        let ip = udp4(b"INVITE");
        assert_eq!(payloads(&ip, 0x0800), vec![b"INVITE".to_vec()]);
        // (Before: taken for IP, undecodable.)
        let mut tagged = vec![0xa0, 0xc8, 0x08, 0x00]; // PCP 5, VLAN 200, IPv4
        tagged.extend_from_slice(&ip);
        assert_eq!(payloads(&tagged, 0x8100), vec![b"INVITE".to_vec()]);
        assert_eq!(payloads(&ip, 0x8100), vec![b"INVITE".to_vec()]);
    }
}
