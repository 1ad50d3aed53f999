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
    pub decrypt: Option<SrtpStream>,
    /// The context the stream was decrypted with before a re-key (a
    /// re-INVITE's new `a=crypto`): packets the SRC sent before it had our
    /// answer still use it. Dropped once a packet decrypts with the new one.
    pub previous: Option<SrtpStream>,
    /// Set to the arrival time (µs) of the newest datagram admitted: the
    /// session's RTP inactivity timeout reads it.
    pub last_rtp: Arc<AtomicI64>,
    /// Which datagrams are the stream's.
    pub admission: Admission,
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
        decrypt: Option<SrtpStream>,
        last_rtp: Arc<AtomicI64>,
        admission: Admission,
    },
    SetOrigin(SocketAddr, StreamOrigin),
    /// The stream's SRTP keys changed (a re-offer with a new `a=crypto`).
    SetDecrypt(SocketAddr, Option<SrtpStream>),
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
        decrypt: Option<SrtpStream>,
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
    pub fn set_decrypt(&self, local: SocketAddr, decrypt: Option<SrtpStream>) {
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
                let mut r = Reader::new(ep, wake_fd, rx, counters, spare_rx);
                r.wall_step = wall_step;
                r.run(sink);
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

struct Slot {
    port: MediaPort,
    /// The socket's cumulative overflow count last seen.
    overflow: u32,
}

/// Control-message space per datagram: a timespec and a u32.
const CMSG_SPACE: usize = 64;

/// The `recvmmsg` buffers, allocated once.
struct RecvBuffers {
    data: Vec<[u8; MAX_DATAGRAM]>,
    names: Vec<libc::sockaddr_storage>,
    iovecs: Vec<libc::iovec>,
    /// u64 for the alignment control messages need.
    cmsgs: Vec<[u64; CMSG_SPACE / 8]>,
    headers: Vec<libc::mmsghdr>,
    /// Headers the kernel filled in the last call (their lengths and flags
    /// to set back); the rest are as they were set up.
    used: usize,
}

impl RecvBuffers {
    fn new() -> RecvBuffers {
        // SAFETY: all-zero is a valid value of these plain C structs.
        let zero_name: libc::sockaddr_storage = unsafe { MaybeUninit::zeroed().assume_init() };
        let zero_hdr: libc::mmsghdr = unsafe { MaybeUninit::zeroed().assume_init() };
        let mut b = RecvBuffers {
            data: vec![[0u8; MAX_DATAGRAM]; VLEN],
            names: vec![zero_name; VLEN],
            iovecs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0
                };
                VLEN
            ],
            cmsgs: vec![[0u64; CMSG_SPACE / 8]; VLEN],
            headers: vec![zero_hdr; VLEN],
            used: 0,
        };
        // The pointers into the buffers, set once: the buffers never move
        // (their Vecs are never resized) and the kernel does not change them.
        for i in 0..VLEN {
            b.iovecs[i] = libc::iovec {
                iov_base: b.data[i].as_mut_ptr().cast(),
                iov_len: MAX_DATAGRAM,
            };
            let h = &mut b.headers[i].msg_hdr;
            h.msg_name = (&mut b.names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_iov = &mut b.iovecs[i];
            h.msg_iovlen = 1;
            h.msg_control = b.cmsgs[i].as_mut_ptr().cast();
        }
        b.used = VLEN;
        b.reset();
        b
    }

    /// Sets back what the kernel changed in the headers it filled: the
    /// lengths of the name and control buffers, the flags, the length.
    fn reset(&mut self) {
        for m in &mut self.headers[..self.used] {
            m.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            m.msg_hdr.msg_controllen = CMSG_SPACE as _;
            m.msg_hdr.msg_flags = 0;
            m.msg_len = 0;
        }
        self.used = 0;
    }

    /// Receive up to VLEN datagrams without waiting; how many.
    fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        // Only the headers the last call filled need setting back (4,000
        // sockets read 25 times a second, two datagrams each: setting up
        // all 32 every time was most of this thread's own work).
        self.reset();
        // SAFETY: every header points into buffers owned by self that outlive
        // the call; lengths are the buffers' sizes.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.headers.as_mut_ptr(),
                VLEN as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return Ok(0);
            }
            // Whatever the failed call touched is set back next time.
            self.used = VLEN;
            return Err(e);
        }
        // The one after the last filled too, in case a failure after
        // receiving it left it half written.
        self.used = (n as usize + 1).min(VLEN);
        Ok(n as usize)
    }

    fn bytes(&self, i: usize) -> &[u8] {
        let n = (self.headers[i].msg_len as usize).min(MAX_DATAGRAM);
        &self.data[i][..n]
    }

    fn source(&self, i: usize) -> Option<SocketAddr> {
        sockaddr_to_std(&self.names[i])
    }

    /// The kernel timestamp and overflow counter of datagram `i`.
    fn control(&self, i: usize) -> (Option<Timestamp>, Option<u32>) {
        // SAFETY: the header was filled by the last recvmmsg.
        unsafe { crate::sys::sockets::control_values(&self.headers[i].msg_hdr) }
    }
}

fn sockaddr_to_std(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(s.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says it is a sockaddr_in.
            let a: libc::sockaddr_in =
                unsafe { std::ptr::read((s as *const libc::sockaddr_storage).cast()) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says it is a sockaddr_in6.
            let a: libc::sockaddr_in6 =
                unsafe { std::ptr::read((s as *const libc::sockaddr_storage).cast()) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

struct Reader {
    ep: OwnedFd,
    wake: Arc<OwnedFd>,
    commands: Receiver<Command>,
    counters: Arc<MediaCounters>,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    live: usize,
    bufs: RecvBuffers,
    spare: Receiver<DatagramBatch>,
    /// Batches made so far (at most [`BATCHES`]).
    batches: usize,
    /// Batches handed to the engine so far.
    delivered: u64,
    /// Slots left with datagrams queued at [`DRAIN_CALLS`] (edge-triggered
    /// epoll reports them again only when more arrive): read next round.
    unfinished: Vec<usize>,
    /// The other list of [`Self::unfinished`] (the two swap each round).
    keys: Vec<usize>,
    /// How far the wall clock had been stepped when this round began
    /// ([`crate::sys::wall_step`]): the kernel's receive stamps are wall
    /// clock, the engine's clock is the steady one.
    step: i64,
    /// Where [`Self::step`] comes from.
    wall_step: fn() -> i64,
}

impl Reader {
    fn new(
        ep: OwnedFd,
        wake: Arc<OwnedFd>,
        commands: Receiver<Command>,
        counters: Arc<MediaCounters>,
        spare: Receiver<DatagramBatch>,
    ) -> Reader {
        Reader {
            ep,
            wake,
            commands,
            counters,
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            bufs: RecvBuffers::new(),
            spare,
            batches: 0,
            delivered: 0,
            unfinished: Vec::new(),
            keys: Vec::new(),
            step: 0,
            wall_step: crate::sys::wall_step,
        }
    }

    fn run(&mut self, mut sink: impl BatchSink) {
        // SAFETY: all-zero epoll_event values are valid.
        let mut events: Vec<libc::epoll_event> =
            vec![unsafe { MaybeUninit::zeroed().assume_init() }; 1024];
        loop {
            // Wait for the first readable socket (or a command). Nothing
            // ready: everything received so far has been handed over, and
            // the engine may follow the wall clock while the thread sleeps.
            // Every datagram that arrived before `through` leaves its socket
            // readable for the `wait(0)` after it: it is read in this round.
            self.step = (self.wall_step)();
            let mut through = crate::sys::steady_of(crate::sys::now(), self.step);
            let Some(mut n) = (match self.wait(&mut events, 0) {
                Some(0) if self.unfinished.is_empty() => {
                    self.counters.idle.set(self.delivered);
                    let woke = self.wait(&mut events, -1);
                    self.counters.idle.clear();
                    // Stamped now, not at the idle start. The sockets the
                    // wait reported are read below (edge-triggered, they
                    // are not reported again); those that became readable
                    // since are asked for and read with them.
                    self.step = (self.wall_step)();
                    through = crate::sys::steady_of(crate::sys::now(), self.step);
                    match woke {
                        Some(m) if m < events.len() => {
                            self.wait(&mut events[m..], 0).map(|more| m + more)
                        }
                        other => other,
                    }
                }
                n => n,
            }) else {
                return;
            };
            let round = Instant::now();
            let Some(mut batch) = self.free_batch() else {
                return;
            };
            let mut stop = false;
            let mut read = false;
            // The sockets a flood left with datagrams queued first, then
            // those reported ready, commands in their place among them (a
            // command given before a datagram was sent, such as a port's
            // reuse, is mostly reported before its socket).
            let spare = std::mem::take(&mut self.keys);
            let mut keys = std::mem::replace(&mut self.unfinished, spare);
            for &key in &keys {
                read = true;
                if !self.read_slot(key, &mut batch, &mut sink) {
                    return;
                }
            }
            keys.clear();
            self.keys = keys;
            loop {
                for e in &events[..n] {
                    let key = e.u64;
                    if key == WAKE {
                        stop |= self.commands_due();
                        continue;
                    }
                    read = true;
                    if !self.read_slot(key as usize, &mut batch, &mut sink) {
                        return;
                    }
                }
                // ...then take every socket that is ready in this round.
                if n < events.len() {
                    break;
                }
                match self.wait(&mut events, 0) {
                    Some(0) | None => break,
                    Some(m) => n = m,
                }
            }
            if stop {
                // Read what the sockets still hold before ending (a
                // flooded one: a few rounds' worth).
                for k in 0..self.slots.len() {
                    for _ in 0..4 {
                        if self.drain(k, &mut batch) {
                            break;
                        }
                    }
                }
            }
            if batch.is_empty() && !read {
                // Nothing read (only commands): no batch is out.
                self.batches -= 1;
                if stop {
                    return;
                }
                continue;
            }
            // Delivered even when admission kept everything out (a port
            // flooded by another source): the stamp still moves on.
            let admitted = !batch.is_empty();
            batch.through = Some(through);
            if !self.deliver(&mut sink, batch) || stop {
                return;
            }
            if !admitted {
                continue;
            }
            // Let the next round find many sockets ready at once.
            if let Some(rest) = ROUND.checked_sub(round.elapsed()) {
                std::thread::sleep(rest);
            }
        }
    }

    /// Reads slot `k` into `batch` ([`Self::drain`]; the slot is read on next
    /// round if a flood left it more), handing `batch` over and taking a
    /// fresh one when it is full. False when the engine is gone.
    fn read_slot(
        &mut self,
        k: usize,
        batch: &mut DatagramBatch,
        sink: &mut impl BatchSink,
    ) -> bool {
        if !self.drain(k, batch) {
            self.unfinished.push(k);
        }
        if batch.data.len() >= BATCH_BYTES {
            let full = std::mem::take(batch);
            if !self.deliver(sink, full) {
                return false;
            }
            let Some(b) = self.free_batch() else {
                return false;
            };
            *batch = b;
        }
        true
    }

    /// Counts `batch` and hands it to the engine; false when it is gone.
    fn deliver(&mut self, sink: &mut impl BatchSink, batch: DatagramBatch) -> bool {
        self.delivered += 1;
        self.counters
            .datagrams
            .fetch_add(batch.items.len() as u64, Ordering::Relaxed);
        sink.deliver(batch)
    }

    /// A batch to fill: a given-back one, a new one while fewer than
    /// [`BATCHES`] exist, or else the next one the engine gives back (the
    /// sockets queue meanwhile). `None` when the engine is gone.
    fn free_batch(&mut self) -> Option<DatagramBatch> {
        if let Ok(b) = self.spare.try_recv() {
            return Some(b);
        }
        if self.batches < BATCHES {
            self.batches += 1;
            return Some(DatagramBatch::default());
        }
        self.spare.recv().ok()
    }

    /// `epoll_wait`; the number of events, `None` on a fatal error.
    fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: i32) -> Option<usize> {
        loop {
            // SAFETY: the buffer holds events.len() events.
            let n = unsafe {
                libc::epoll_wait(
                    self.ep.as_raw_fd(),
                    events.as_mut_ptr(),
                    events.len() as i32,
                    timeout_ms,
                )
            };
            if n >= 0 {
                return Some(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                tracing::error!("media receive: epoll_wait: {e}");
                return None;
            }
        }
    }

    /// Apply queued commands; true when told to stop.
    fn commands_due(&mut self) -> bool {
        let mut v = 0u64;
        // SAFETY: an 8-byte read from our non-blocking eventfd.
        unsafe { libc::read(self.wake.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
        while let Ok(c) = self.commands.try_recv() {
            match c {
                Command::Add(port) => self.add(port),
                Command::Remove(local) => self.remove(local),
                Command::Retire(local) => {
                    let mut rejected = RejectCounts::default();
                    if let Some(slot) = self.slot_of(local) {
                        slot.port.admission.retire(&mut rejected);
                        slot.port.decrypt = None;
                        slot.port.previous = None;
                        slot.port.last_rtp = Arc::default();
                    }
                    self.counters.add_rejected(&rejected);
                }
                Command::Reuse {
                    local,
                    decrypt,
                    last_rtp,
                    admission,
                } => match self.slot_of(local) {
                    Some(slot) => {
                        slot.port.decrypt = decrypt;
                        slot.port.previous = None;
                        slot.port.last_rtp = last_rtp;
                        // What still came to the retired port is no
                        // candidate for its new stream.
                        let stale = slot.port.admission.stale_sources().to_vec();
                        slot.port.admission = admission.excluding(&stale);
                    }
                    None => {
                        tracing::error!(port = %local, "media receive: no retired port to reuse")
                    }
                },
                Command::SetOrigin(local, origin) => {
                    let mut rejected = RejectCounts::default();
                    if let Some(slot) = self.slot_of(local) {
                        slot.port.admission.set_origin(origin, &mut rejected);
                    }
                    self.counters.add_rejected(&rejected);
                }
                Command::SetDecrypt(local, decrypt) => {
                    if let Some(slot) = self.slot_of(local) {
                        slot.port.previous = std::mem::replace(&mut slot.port.decrypt, decrypt);
                    }
                }
                Command::Stop => return true,
            }
        }
        false
    }

    fn add(&mut self, port: MediaPort) {
        let k = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        // Edge-triggered: every socket reported is read empty (`drain`), and
        // level-triggered epoll would poll each reported socket once more at
        // the next wait only to find it empty (5 % of the daemon's CPU at
        // 2,000 calls, BENCHMARKS.md).
        if let Err(e) = epoll_add(&self.ep, port.socket.as_raw_fd(), k as u64, true) {
            tracing::error!(port = %port.local, "media receive: cannot watch the RTP port: {e}");
            self.free.push(k);
            return;
        }
        self.slots[k] = Some(Slot { port, overflow: 0 });
        self.live += 1;
    }

    fn slot_of(&mut self, local: SocketAddr) -> Option<&mut Slot> {
        self.slots
            .iter_mut()
            .flatten()
            .find(|s| s.port.local == local)
    }

    fn remove(&mut self, local: SocketAddr) {
        let found = self
            .slots
            .iter()
            .position(|s| s.as_ref().is_some_and(|s| s.port.local == local));
        if let Some(k) = found {
            // Closing the socket removes it from the epoll set.
            self.slots[k] = None;
            self.free.push(k);
            self.live -= 1;
        }
    }

    /// Read the datagrams queued on slot `k` into `batch`, at most
    /// [`DRAIN_CALLS`] `recvmmsg` calls' worth. True when the socket was
    /// left empty (it is watched edge-triggered); false when more may be
    /// queued (read on next round).
    fn drain(&mut self, k: usize, batch: &mut DatagramBatch) -> bool {
        let Some(Some(slot)) = self.slots.get_mut(k) else {
            return true;
        };
        let port = &mut slot.port;
        let fd = port.socket.as_raw_fd();
        let local = port.local;
        let mut newest = None;
        let mut rejected = RejectCounts::default();
        let mut emptied = false;
        for _ in 0..DRAIN_CALLS {
            let n = match self.bufs.recv(fd) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!(port = %local, "RTP receive: {e}");
                    0
                }
            };
            for i in 0..n {
                let (ts, ovfl) = self.bufs.control(i);
                if let Some(o) = ovfl {
                    let lost = o.wrapping_sub(slot.overflow);
                    slot.overflow = o;
                    self.counters
                        .kernel_drops
                        .fetch_add(u64::from(lost), Ordering::Relaxed);
                }
                let Some(src) = self.bufs.source(i) else {
                    continue;
                };
                let ts = crate::sys::steady_of(ts.unwrap_or_else(crate::sys::now), self.step);
                let pkt = self.bufs.bytes(i);
                let mut admit = |ts: Timestamp, src: SocketAddr, b: &[u8]| {
                    batch.push(ts, src, local, b);
                    newest = newest.max(Some(ts));
                };
                let srtp = port.decrypt.is_some() || port.previous.is_some();
                if srtp && pbx_core::rtp::is_rtcp(pkt) {
                    // RTCP (rtcp-mux) is not needed for recording: dropped.
                    continue;
                }
                // The current context, then the one before a re-key.
                let plain = match port.decrypt.as_mut().map(|d| d.decrypt(pkt)) {
                    Some(Some(p)) => {
                        port.previous = None;
                        Some(Some(p))
                    }
                    current => match port.previous.as_mut().map(|d| d.decrypt(pkt)) {
                        Some(Some(p)) => Some(Some(p)),
                        _ if current.is_some() => Some(None),
                        // Re-keyed to plain RTP: what the old key does not
                        // open is the new plain stream.
                        _ => {
                            port.previous = None;
                            None
                        }
                    },
                };
                match plain {
                    Some(Some(plain)) => {
                        port.admission
                            .offer(ts, src, &plain, &mut rejected, &mut admit)
                    }
                    Some(None) => {
                        self.counters.srtp_failures.fetch_add(1, Ordering::Relaxed);
                    }
                    None => port
                        .admission
                        .offer(ts, src, pkt, &mut rejected, &mut admit),
                }
            }
            if n < VLEN {
                emptied = true;
                break;
            }
        }
        self.counters.add_rejected(&rejected);
        if let Some(ts) = newest {
            port.last_rtp.store(ts.as_micros(), Ordering::Relaxed);
        }
        emptied
    }
}

#[cfg(test)]
mod tests;
