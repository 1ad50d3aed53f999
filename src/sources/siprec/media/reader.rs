//! The receive thread's side of [`super`]: its sockets ([`Slot`]), the
//! `recvmmsg` buffers ([`RecvBuffers`]) and the loop that reads each round
//! ([`Reader`]).

use super::*;

pub(super) struct Slot {
    port: MediaPort,
    /// The socket's cumulative overflow count last seen.
    overflow: u32,
}

/// Control-message space per datagram: a timespec and a u32.
pub(super) const CMSG_SPACE: usize = 64;

/// The `recvmmsg` buffers, allocated once.
pub(super) struct RecvBuffers {
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

pub(super) fn sockaddr_to_std(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
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

pub(super) struct Reader {
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
    /// A batch a round took and left empty (it read only commands): the
    /// next round's, not freed and made again (its room is reserved once).
    unused: Option<DatagramBatch>,
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
    pub(super) fn new(
        ep: OwnedFd,
        wake: Arc<OwnedFd>,
        commands: Receiver<Command>,
        counters: Arc<MediaCounters>,
        spare: Receiver<DatagramBatch>,
        wall_step: fn() -> i64,
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
            unused: None,
            delivered: 0,
            unfinished: Vec::new(),
            keys: Vec::new(),
            step: 0,
            wall_step,
        }
    }

    pub(super) fn run(&mut self, mut sink: impl BatchSink) {
        // SAFETY: all-zero epoll_event values are valid.
        let mut events: Vec<libc::epoll_event> =
            vec![unsafe { MaybeUninit::zeroed().assume_init() }; 1024];
        loop {
            // Wait for the first readable socket (or a command). Nothing
            // ready: everything received so far has been handed over, and
            // the engine may follow the wall clock while the thread sleeps.
            // Every datagram that arrived before `through` leaves its socket
            // readable for the `wait(0)` after it: it is read in this round.
            let mut through = self.round_start();
            let Some(mut n) = (match self.wait(&mut events, 0) {
                Some(0) if self.unfinished.is_empty() => {
                    self.counters.idle.set(self.delivered);
                    let woke = self.wait(&mut events, -1);
                    self.counters.idle.clear();
                    // Stamped now, not at the idle start. The sockets the
                    // wait reported are read below (edge-triggered, they
                    // are not reported again); those that became readable
                    // since are asked for and read with them.
                    through = self.round_start();
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
                // Nothing read (only commands): no batch is out; the next
                // round takes this one.
                self.unused = Some(batch);
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

    /// A round begins now: how far the wall clock has been stepped is
    /// taken for its receive stamps, and now on the steady clock returned.
    fn round_start(&mut self) -> Timestamp {
        self.step = (self.wall_step)();
        crate::sys::steady_of(crate::sys::now(), self.step)
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
        if let Some(b) = self.unused.take() {
            return Some(b);
        }
        if let Ok(b) = self.spare.try_recv() {
            return Some(b);
        }
        if self.batches < BATCHES {
            self.batches += 1;
            return Some(DatagramBatch::with_room());
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
                    // (Retired at its next datagram after the grace, or
                    // when the port is given a new stream.)
                    let at = crate::sys::steady_of(crate::sys::now(), self.step)
                        .add_micros(RETIRE_GRACE_US);
                    if let Some(slot) = self.slot_of(local) {
                        slot.port.retire_at = Some(at);
                    }
                }
                Command::Reuse {
                    local,
                    decrypt,
                    last_rtp,
                    admission,
                } => {
                    let mut rejected = RejectCounts::default();
                    match self.slot_of(local) {
                        Some(slot) => {
                            // (What a retiring port held is refused: a
                            // switch of SSRC in progress.)
                            if slot.port.retire_at.is_some() {
                                slot.port.retire(&mut rejected);
                            }
                            slot.port.decrypt = decrypt;
                            slot.port.previous = None;
                            slot.port.last_rtp = last_rtp;
                            // What still came to the retired port is no
                            // candidate for its new stream.
                            let stale = slot.port.admission.stale_sources().to_vec();
                            let ended = slot.port.admission.ended_streams().to_vec();
                            slot.port.admission = admission.excluding(&stale, &ended);
                        }
                        None => {
                            tracing::error!(port = %local, "media receive: no retired port to reuse")
                        }
                    }
                    self.counters.add_rejected(&rejected);
                }
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
                if port.retire_at.is_some_and(|at| ts > at) {
                    port.retire(&mut rejected);
                }
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
