//! The SIPREC media receive path: every RTP port of every session, read by one
//! thread in batches.
//!
//! In: bound UDP sockets (one per offered stream), each with its optional SRTP
//! context, added and removed by the SIP task ([`MediaControl::add`],
//! [`MediaControl::remove`]). Out: [`DatagramBatch`]es of plain RTP, each
//! datagram with the kernel's arrival time and its addresses, sent to the
//! engine thread.
//!
//! Why one thread and batches: a task and a `recv` per packet per port (what
//! this replaced) costs a wake-up, a syscall and a channel hop for every RTP
//! packet; at 2,000 calls that is 200,000 of each per second and it lost
//! packets from 1,500 calls on 2 cores. Here the thread waits in `epoll`
//! until some socket is readable, reads every readable socket with
//! `recvmmsg` (all its queued datagrams in one call), hands the round's
//! datagrams to the engine in one message, then sleeps until [`ROUND`] has
//! passed since the round began, so the next round finds many sockets ready
//! at once and the per-round costs (epoll, channel, wake-ups) are shared by
//! hundreds of packets. Idle (no packets), the thread sleeps in `epoll` and
//! costs nothing.
//!
//! Reading late does not move the audio in time: every datagram carries the
//! kernel's receive timestamp (`SO_TIMESTAMPNS`), which is what the engine's
//! clock anchoring sees, exactly as when it reads a capture. A socket whose
//! queue overflowed reports how many datagrams the kernel dropped
//! (`SO_RXQ_OVFL`); they are summed into [`MediaCounters::kernel_drops`].
//! The socket queues hold seconds of audio at 50 packets/s, so a round of
//! [`ROUND`] or a short engine stall loses nothing.
//!
//! How far the media are complete: the last batch of each round carries
//! the time the round began ([`DatagramBatch::through`]): every datagram
//! that arrived before it is in that batch or an earlier one (except on a
//! socket flooded past [`DRAIN_CALLS`] reads a round, whose rest waits for
//! the next rounds: one flooded port does not hold the others back). While the
//! thread waits for the first datagram of a round with everything handed
//! over, it says so ([`IdleMark`]). The engine thread turns both into its
//! horizon ([`MediaHorizon`], [`pbx_core::CallEngine::set_horizon`]): it
//! renders no further than the media are complete, so when the engine or
//! this thread falls behind (a burst of call starts, a slow disk, a busy
//! machine), the SIP messages and the wall clock, which do not wait, do not
//! make the queued audio late. Before, a daemon 4 s behind at the start of
//! 2,000 calls wrote 3-15 % of their audio as silence (BENCHMARKS.md).
//!
//! Back-pressure: the thread owns [`BATCHES`] batch buffers, which the engine
//! gives back once processed ([`Recycler`]). With all of them waiting in the
//! engine, the thread waits too and the sockets queue: the engine's backlog
//! is at most that many rounds, whatever the load. A round that reads more
//! than [`BATCH_BYTES`] (a burst) is cut into several batches, so the
//! backlog's memory is bounded too. When the engine is gone
//! (its recycler dropped), the thread ends.
//!
//! Media admission: every port has an [`Admission`] (see
//! [`crate::sources::siprec::admission`]), given with the port and updated by the SIP task on
//! a re-offer ([`MediaControl::set_origin`]). Each datagram (after SRTP
//! decryption) goes through it here, where it is cheap: only the stream's
//! source reaches the engine; the rest is counted by reason in
//! [`MediaCounters`] (`pbx_edge_rtp_rejected_total`). A port whose call ended
//! can stay open a while as a *retired* port ([`MediaControl::retire`]): what
//! still arrives on it is counted (`unknown_port`) and dropped, and the SIP
//! task may give it to a new stream ([`MediaControl::reuse`]) or close it.
//!
//! Promises: datagrams of one socket reach the engine in the order the kernel
//! received them (a datagram held by admission until its source is latched
//! keeps its place and its arrival time); nothing rejected by admission
//! reaches the engine; a removed port is closed before its slot is reused; the
//! thread ends when it is told to stop or when the engine is gone; a packet
//! that fails SRTP authentication is counted and dropped (it never counts
//! towards latching); RTCP on an SRTP port (rtcp-mux) is dropped (recording
//! does not need it).

use std::io;
use std::mem::{size_of, MaybeUninit};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pbx_core::Timestamp;

use crate::sources::siprec::admission::{Admission, RejectCounts, StreamOrigin};
use crate::sources::siprec::srtp::SrtpStream;

/// Shortest time between two reading rounds while media flows. 80 ms
/// took 8 % off the daemon's CPU at 2,000 calls (BENCHMARKS.md, "Reading
/// rounds of 80 ms"), but packets then wait up to 80 ms in the sockets
/// before the engine sees them, which the crash durability window
/// (`recording.jitter` + 200 ms, docs/durability.md) cannot spare: a
/// SIGKILL under load then lost 720 ms of a call, past its 700. Kept at 40.
pub const ROUND: Duration = Duration::from_millis(40);

/// Datagrams read from one socket per `recvmmsg` call.
const VLEN: usize = 32;

/// `recvmmsg` calls per socket per round: at most 256 datagrams, 6,400 a
/// second at [`ROUND`], 128 times what a stream sends. A socket with more
/// queued (a flood) is read on in the next rounds, after the others, and
/// what it is sent beyond that rate overflows its own queue (counted in
/// `kernel_drops`): one flooded port can neither hold up the other calls'
/// ports nor take the thread.
const DRAIN_CALLS: usize = 8;

/// Largest datagram kept (RTP over UDP on an Ethernet path is far smaller;
/// a longer one is truncated and then dropped by the engine as malformed).
const MAX_DATAGRAM: usize = 2048;

/// epoll data of the wake-up eventfd (sockets use their slot index).
const WAKE: u64 = u64::MAX;

/// One received datagram inside a [`DatagramBatch`].
#[derive(Debug, Clone)]
pub struct Datagram {
    /// When the kernel received it (wall clock).
    pub ts: Timestamp,
    pub src: SocketAddr,
    /// Our address it was sent to.
    pub dst: SocketAddr,
    /// Where its bytes are in [`DatagramBatch::data`].
    pub range: Range<usize>,
}

/// The datagrams of one reading round, their bytes in one buffer.
#[derive(Debug, Default)]
pub struct DatagramBatch {
    pub data: Vec<u8>,
    pub items: Vec<Datagram>,
    /// On the last batch of a reading round: when the round began. Every
    /// datagram that arrived before it is in this batch or an earlier one.
    pub through: Option<Timestamp>,
}

impl DatagramBatch {
    /// An empty batch with room for [`BATCH_BYTES`] and one socket's read
    /// beyond it (a batch is handed over once it reaches that): taken at
    /// once, so the buffers are not grown by doubling past what a batch
    /// holds (a 256 KiB batch's bytes grew to 512 KiB, and its datagrams'
    /// records likewise).
    pub(crate) fn with_room() -> Self {
        DatagramBatch {
            data: Vec::with_capacity(BATCH_BYTES + BATCH_SLACK),
            items: Vec::with_capacity((BATCH_BYTES + BATCH_SLACK) / TYPICAL_DATAGRAM),
            through: None,
        }
    }

    fn push(&mut self, ts: Timestamp, src: SocketAddr, dst: SocketAddr, bytes: &[u8]) {
        let start = self.data.len();
        self.data.extend_from_slice(bytes);
        self.items.push(Datagram {
            ts,
            src,
            dst,
            range: start..self.data.len(),
        });
    }

    /// Every datagram with its bytes, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&Datagram, &[u8])> {
        self.items.iter().map(|d| (d, &self.data[d.range.clone()]))
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// Gives processed batches back to the receive thread, which refills them:
/// the buffers of a busy server are allocated once, not every round (and not
/// freed on another thread than the one that allocated them).
pub struct Recycler(mpsc::SyncSender<DatagramBatch>);

impl Recycler {
    pub(crate) fn give_back(&self, mut batch: DatagramBatch) {
        batch.data.clear();
        batch.items.clear();
        batch.through = None;
        // Room for every batch there is: never full.
        let _ = self.0.try_send(batch);
    }
}

/// Batches the receive thread may have out at once: the engine's backlog.
/// Beyond it the datagrams wait in the sockets' kernel queues (seconds of
/// audio each, and with their arrival times), not in the daemon's memory:
/// 32 batches of 1 MiB made the peak RSS of a busy daemon 30 KiB per call
/// higher (BENCHMARKS.md, "Memory per call").
const BATCHES: usize = 8;

/// A batch holding this many bytes of datagrams goes to the engine at once,
/// even in the middle of a round, and the round goes on in another one: after
/// a burst (a sender catching up) the batches, which keep their buffers,
/// are not each as large as the burst. With [`BATCHES`] of them, the engine's
/// backlog holds at most about 3.5 MiB (2 MiB of datagrams and their
/// addresses), about 100 ms of 2,000 G.711 calls.
const BATCH_BYTES: usize = 256 << 10;

/// What a batch may take beyond [`BATCH_BYTES`] before it is handed over:
/// one socket's read (its datagrams at their usual size).
const BATCH_SLACK: usize = DRAIN_CALLS * VLEN * TYPICAL_DATAGRAM;

/// A G.711 packet of 20 ms (12 bytes of RTP header, 160 of audio): a
/// batch's records are reserved for datagrams of this size (smaller ones
/// grow them).
const TYPICAL_DATAGRAM: usize = 172;

/// What the receive path counts (read by the status snapshot).
#[derive(Debug, Default)]
pub struct MediaCounters {
    /// Datagrams handed to the engine.
    pub datagrams: AtomicU64,
    /// Datagrams the kernel dropped because a socket queue was full.
    pub kernel_drops: AtomicU64,
    /// SRTP packets that failed authentication (or were replays).
    pub srtp_failures: AtomicU64,
    /// Datagrams refused by admission: not from the stream's source.
    pub rejected_source: AtomicU64,
    /// Datagrams refused by admission: an SSRC interleaved with the locked one.
    pub rejected_ssrc: AtomicU64,
    /// Datagrams to a port that carries no stream (any more).
    pub rejected_unknown_port: AtomicU64,
    /// Whether the receive thread is idle, and after which batch.
    pub idle: IdleMark,
}

/// The receive thread's idle mark: waiting for the first datagram of a
/// round, with every earlier one handed over in the batches counted so
/// far (`batches + 1` is stored; 0 while a round is under way).
#[derive(Debug, Default)]
pub struct IdleMark(AtomicU64);

impl IdleMark {
    fn set(&self, delivered: u64) {
        self.0.store(delivered + 1, Ordering::Release);
    }

    fn clear(&self) {
        self.0.store(0, Ordering::Release);
    }

    /// The batches handed over before the thread went idle, if it is.
    fn after(&self) -> Option<u64> {
        self.0.load(Ordering::Acquire).checked_sub(1)
    }
}

/// The engine side of [`DatagramBatch::through`] and [`IdleMark`]: how
/// far the media the engine has processed are complete, its horizon
/// ([`pbx_core::CallEngine::set_horizon`]).
#[derive(Debug)]
pub struct MediaHorizon {
    processed: u64,
    /// Every datagram that arrived before it has been processed.
    through: Timestamp,
    /// How far behind the wall clock the horizon was last (µs), and at most.
    pub behind_us: i64,
    pub behind_max_us: i64,
}

/// How far behind the wall clock the horizon may hold the engine: audio
/// waits in memory meanwhile (16 KB a second for each G.711 call), so a
/// machine too slow for its load for longer gives up the lateness rather
/// than its memory.
pub const MAX_BEHIND_US: i64 = 4_000_000;

impl MediaHorizon {
    /// At `now`, before any media port exists (nothing can be pending).
    pub fn new(now: Timestamp) -> MediaHorizon {
        MediaHorizon {
            processed: 0,
            through: now,
            behind_us: 0,
            behind_max_us: 0,
        }
    }

    /// A batch processed by the engine.
    pub fn processed(&mut self, batch: &DatagramBatch) {
        self.processed += 1;
        if let Some(t) = batch.through {
            self.through = self.through.max(t);
        }
    }

    /// The engine's horizon at `wall`: none while the receive thread is
    /// idle and every batch it handed over has been processed (nothing
    /// received is pending anywhere: what arrived up to now is complete);
    /// else how far it was complete when last known, at most
    /// [`MAX_BEHIND_US`] behind.
    pub fn horizon(&mut self, idle: &IdleMark, wall: Timestamp) -> Option<Timestamp> {
        if idle.after() == Some(self.processed) {
            self.through = self.through.max(wall);
            self.behind_us = 0;
            return None;
        }
        let h = self.through.max(wall.add_micros(-MAX_BEHIND_US));
        self.behind_us = wall.micros_since(h).max(0);
        self.behind_max_us = self.behind_max_us.max(self.behind_us);
        Some(h)
    }

    /// The horizon at `wall` and the clock the engine host waits and ticks
    /// by: the wall clock, held back to the horizon.
    pub fn hold(&mut self, idle: &IdleMark, wall: Timestamp) -> (Option<Timestamp>, Timestamp) {
        let h = self.horizon(idle, wall);
        (h, h.map_or(wall, |h| h.min(wall)))
    }
}

impl MediaCounters {
    fn add_rejected(&self, r: &RejectCounts) {
        for (c, n) in [
            (&self.rejected_source, r.source),
            (&self.rejected_ssrc, r.ssrc),
            (&self.rejected_unknown_port, r.unknown_port),
        ] {
            if n > 0 {
                c.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    /// What admission refused so far, by reason.
    pub fn rejected(&self) -> RejectCounts {
        RejectCounts {
            source: self.rejected_source.load(Ordering::Relaxed),
            ssrc: self.rejected_ssrc.load(Ordering::Relaxed),
            unknown_port: self.rejected_unknown_port.load(Ordering::Relaxed),
        }
    }
}

/// One RTP port to read.
pub struct MediaPort {
    pub socket: UdpSocket,
    /// Its local address (what the engine sees as the destination).
    pub local: SocketAddr,
    /// Boxed: most streams are plain RTP, and a port's state stays small
    /// (two ports a call).
    pub decrypt: Option<Box<SrtpStream>>,
    /// The context the stream was decrypted with before a re-key (a
    /// re-INVITE's new `a=crypto`): packets the SRC sent before it had our
    /// answer still use it. Dropped once a packet decrypts with the new one.
    pub previous: Option<Box<SrtpStream>>,
    /// Set to the arrival time (µs) of the newest datagram admitted: the
    /// session's RTP inactivity timeout reads it.
    pub last_rtp: Arc<AtomicI64>,
    /// Which datagrams are the stream's.
    pub admission: Admission,
    /// The stream ended (BYE) and the port retires after this arrival time
    /// ([`RETIRE_GRACE_US`]): what the SRC sent before its BYE, still on
    /// the way, is taken until then.
    pub retire_at: Option<Timestamp>,
}

/// How long after its stream ended a port still takes the stream's
/// packets (arrival time, µs): those the SRC sent before its BYE that came
/// after it (the media's path is not the signalling's). The engine lingers
/// one jitter window (default 500 ms) after a BYE for them; before, the
/// port refused them at the BYE (`unknown_port`) and the call's last words
/// were lost.
pub const RETIRE_GRACE_US: i64 = 500_000;

impl MediaPort {
    /// The port's stream is over: nothing more is taken, SRTP keys and
    /// state go. What its admission refused of held packets is counted.
    pub fn retire(&mut self, rejected: &mut RejectCounts) {
        self.admission.retire(rejected);
        self.decrypt = None;
        self.previous = None;
        self.last_rtp = Arc::default();
        self.retire_at = None;
    }
}

impl MediaPort {
    /// Bind a port for media (non-blocking, with kernel timestamps and drop
    /// counters on; plain RTP until `decrypt` is set).
    pub fn bind(
        local: SocketAddr,
        last_rtp: Arc<AtomicI64>,
        admission: Admission,
    ) -> io::Result<MediaPort> {
        let socket = UdpSocket::bind(local)?;
        socket.set_nonblocking(true)?;
        let fd = socket.as_raw_fd();
        set_int_option(fd, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1)?;
        set_int_option(fd, libc::SOL_SOCKET, libc::SO_RXQ_OVFL, 1)?;
        let local = socket.local_addr()?;
        Ok(MediaPort {
            socket,
            local,
            decrypt: None,
            previous: None,
            last_rtp,
            admission,
            retire_at: None,
        })
    }
}

pub use crate::sys::sockets::{control_values, set_int_option};

enum Command {
    Add(MediaPort),
    Remove(SocketAddr),
    Retire(SocketAddr),
    Reuse {
        local: SocketAddr,
        decrypt: Option<Box<SrtpStream>>,
        last_rtp: Arc<AtomicI64>,
        admission: Admission,
    },
    SetOrigin(SocketAddr, StreamOrigin),
    /// The stream's SRTP keys changed (a re-offer with a new `a=crypto`).
    SetDecrypt(SocketAddr, Option<Box<SrtpStream>>),
    Stop,
}

/// Where the receive path sends its batches.
pub trait BatchSink: Send + 'static {
    /// Deliver one batch; `false` when the receiver is gone (the thread ends).
    fn deliver(&mut self, batch: DatagramBatch) -> bool;
}

/// The running receive thread.
pub struct MediaReceiver {
    commands: Sender<Command>,
    wake: Arc<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

/// A handle the SIP task uses to add and remove ports (cheap to clone).
#[derive(Clone)]
pub struct MediaControl {
    commands: Sender<Command>,
    wake: Arc<OwnedFd>,
}

impl MediaControl {
    /// Start reading `port`.
    pub fn add(&self, port: MediaPort) {
        self.send(Command::Add(port));
    }

    /// Stop reading the port bound to `local` and close it.
    pub fn remove(&self, local: SocketAddr) {
        self.send(Command::Remove(local));
    }

    /// The stream on `local` ended: keep the port open, count what still
    /// arrives on it (`unknown_port`) and drop it.
    pub fn retire(&self, local: SocketAddr) {
        self.send(Command::Retire(local));
    }

    /// A retired port carries a new stream.
    pub fn reuse(
        &self,
        local: SocketAddr,
        decrypt: Option<Box<SrtpStream>>,
        last_rtp: Arc<AtomicI64>,
        admission: Admission,
    ) {
        self.send(Command::Reuse {
            local,
            decrypt,
            last_rtp,
            admission,
        });
    }

    /// The SRC re-offered the stream on `local` (see [`Admission::set_origin`]).
    pub fn set_origin(&self, local: SocketAddr, origin: StreamOrigin) {
        self.send(Command::SetOrigin(local, origin));
    }

    /// The SRC re-offered the stream on `local` with other SRTP keys (RFC
    /// 4568 §7.1.4: a new key, or none): what comes next is decrypted with
    /// them.
    pub fn set_decrypt(&self, local: SocketAddr, decrypt: Option<Box<SrtpStream>>) {
        self.send(Command::SetDecrypt(local, decrypt));
    }

    fn send(&self, c: Command) {
        if self.commands.send(c).is_ok() {
            wake(&self.wake);
        }
    }
}

fn wake(fd: &OwnedFd) {
    let one: u64 = 1;
    // SAFETY: an 8-byte write to an eventfd we own.
    unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
}

impl MediaReceiver {
    /// Start the receive thread, sending batches to `sink`; the consumer
    /// gives each processed batch back through the [`Recycler`].
    pub fn start(
        sink: impl BatchSink,
        counters: Arc<MediaCounters>,
    ) -> io::Result<(MediaReceiver, Recycler)> {
        Self::start_stepped(sink, counters, crate::sys::wall_step)
    }

    /// [`Self::start`], told how far the wall clock has been stepped by
    /// `wall_step` (tests step it without touching the host's clock).
    fn start_stepped(
        sink: impl BatchSink,
        counters: Arc<MediaCounters>,
        wall_step: fn() -> i64,
    ) -> io::Result<(MediaReceiver, Recycler)> {
        // SAFETY: plain syscalls; results checked.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: ep is a new fd we own.
        let ep = unsafe { OwnedFd::from_raw_fd(ep) };
        let ev = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if ev < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: ev is a new fd we own.
        let ev = Arc::new(unsafe { OwnedFd::from_raw_fd(ev) });
        epoll_add(&ep, ev.as_raw_fd(), WAKE, false)?;
        let (tx, rx) = mpsc::channel();
        let (spare_tx, spare_rx) = mpsc::sync_channel(BATCHES);
        let wake_fd = ev.clone();
        let thread = std::thread::Builder::new()
            .name("siprec-media".into())
            .spawn(move || {
                Reader::new(ep, wake_fd, rx, counters, spare_rx, wall_step).run(sink);
            })?;
        let media = MediaReceiver {
            commands: tx,
            wake: ev,
            thread: Some(thread),
        };
        Ok((media, Recycler(spare_tx)))
    }

    pub fn control(&self) -> MediaControl {
        MediaControl {
            commands: self.commands.clone(),
            wake: self.wake.clone(),
        }
    }

    /// Read what is queued, deliver it, close every port and end the thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = self.commands.send(Command::Stop);
            wake(&self.wake);
            let _ = t.join();
        }
    }
}

impl Drop for MediaReceiver {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Watches `fd` for input: level-triggered, or edge-triggered (`edge`:
/// reported once per arrival after the last read, for a reader that always
/// reads the socket empty).
fn epoll_add(ep: &OwnedFd, fd: RawFd, data: u64, edge: bool) -> io::Result<()> {
    let flags = if edge {
        libc::EPOLLIN | libc::EPOLLET
    } else {
        libc::EPOLLIN
    };
    let mut e = libc::epoll_event {
        events: flags as u32,
        u64: data,
    };
    // SAFETY: valid epoll fd and event struct.
    let rc = unsafe { libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut e) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

mod reader;
use reader::*;

#[cfg(test)]
mod tests;
