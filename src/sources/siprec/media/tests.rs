use super::*;
use std::sync::mpsc::sync_channel;

struct ToChannel(mpsc::SyncSender<DatagramBatch>);
impl BatchSink for ToChannel {
    fn deliver(&mut self, batch: DatagramBatch) -> bool {
        self.0.send(batch).is_ok()
    }
}

/// A port on loopback that takes every source, its last RTP time in `last`.
fn loopback_port(last: &Arc<AtomicI64>) -> MediaPort {
    MediaPort::bind(
        "127.0.0.1:0".parse().unwrap(),
        last.clone(),
        Admission::unrestricted(),
    )
    .unwrap()
}

fn collect(
    rx: &mpsc::Receiver<DatagramBatch>,
    recycler: &Recycler,
    want: usize,
) -> Vec<(Datagram, Vec<u8>)> {
    let mut got = Vec::new();
    while got.len() < want {
        let b = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("datagrams arrive");
        got.extend(b.iter().map(|(d, p)| (d.clone(), p.to_vec())));
        recycler.give_back(b);
    }
    got
}

#[test]
fn reads_every_port_in_order_with_kernel_timestamps() {
    let (tx, rx) = sync_channel(64);
    let counters = Arc::new(MediaCounters::default());
    let (media, recycler) = MediaReceiver::start(ToChannel(tx), counters.clone()).unwrap();
    let ctl = media.control();
    let last = Arc::new(AtomicI64::new(0));
    let a = loopback_port(&last);
    let b = loopback_port(&last);
    let (la, lb) = (a.local, b.local);
    ctl.add(a);
    ctl.add(b);
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    let before = crate::sys::now();
    // Wait until both ports are watched: a probe on each comes back.
    sender.send_to(b"probe-a", la).unwrap();
    sender.send_to(b"probe-b", lb).unwrap();
    collect(&rx, &recycler, 2);
    for i in 0..200u32 {
        let to = if i % 2 == 0 { la } else { lb };
        sender.send_to(&i.to_be_bytes(), to).unwrap();
    }
    let got = collect(&rx, &recycler, 200);
    let after = crate::sys::now();
    for port in [la, lb] {
        let seq: Vec<u32> = got
            .iter()
            .filter(|(d, _)| d.dst == port)
            .map(|(_, p)| u32::from_be_bytes(p[..4].try_into().unwrap()))
            .collect();
        assert_eq!(seq.len(), 100, "every datagram of {port}");
        assert!(seq.windows(2).all(|w| w[0] < w[1]), "in order on {port}");
    }
    let src = sender.local_addr().unwrap();
    for (d, _) in &got {
        assert_eq!(d.src, src);
        assert!(d.ts >= before && d.ts <= after, "kernel timestamp in range");
    }
    assert!(last.load(Ordering::Relaxed) >= before.as_micros());
    assert_eq!(counters.datagrams.load(Ordering::Relaxed), 202);
    media.stop();
}

#[test]
fn a_removed_port_is_closed_and_its_slot_reused() {
    let (tx, rx) = sync_channel(64);
    let (media, recycler) = MediaReceiver::start(ToChannel(tx), Arc::default()).unwrap();
    let ctl = media.control();
    let last = Arc::new(AtomicI64::new(0));
    let a = loopback_port(&last);
    let la = a.local;
    ctl.add(a);
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    sender.send_to(b"x", la).unwrap();
    collect(&rx, &recycler, 1);
    ctl.remove(la);
    // The port becomes free once the thread closed it.
    let mut rebound = None;
    for _ in 0..500 {
        if let Ok(p) = MediaPort::bind(la, last.clone(), Admission::unrestricted()) {
            rebound = Some(p);
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let again = rebound.expect("the removed port is closed");
    ctl.add(again);
    sender.send_to(b"y", la).unwrap();
    let got = collect(&rx, &recycler, 1);
    assert_eq!(got[0].1, b"y");
    media.stop();
}

/// Hands batches on, but holds the thread in the delivery that brings
/// its `hold_at`-th datagram until told to go on (the sockets queue
/// meanwhile). The probes of several ports may come in several rounds:
/// holding in the first delivery could keep the last probes out.
struct Held {
    out: mpsc::SyncSender<DatagramBatch>,
    hold_at: usize,
    seen: usize,
    go: Option<mpsc::Receiver<()>>,
}
impl BatchSink for Held {
    fn deliver(&mut self, batch: DatagramBatch) -> bool {
        self.seen += batch.items.len();
        let ok = self.out.send(batch).is_ok();
        if self.seen >= self.hold_at {
            if let Some(go) = self.go.take() {
                // Bounded: a failing test must not hang in the
                // receiver's join (the go sender outlives it).
                let _ = go.recv_timeout(Duration::from_secs(60));
            }
        }
        ok
    }
}

#[test]
fn a_burst_is_cut_into_batches_of_bounded_size() {
    let (tx, rx) = sync_channel(64);
    let (go_tx, go_rx) = sync_channel(1);
    const PORTS: usize = 20;
    const EACH: usize = 60;
    let sink = Held {
        out: tx,
        hold_at: PORTS,
        seen: 0,
        go: Some(go_rx),
    };
    let (media, recycler) = MediaReceiver::start(sink, Arc::default()).unwrap();
    let ctl = media.control();
    let mut ports = Vec::new();
    for _ in 0..PORTS {
        let p = MediaPort::bind(
            "127.0.0.1:0".parse().unwrap(),
            Arc::default(),
            Admission::unrestricted(),
        )
        .unwrap();
        ports.push(p.local);
        ctl.add(p);
    }
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    // One probe per port until all are watched; the thread is then held
    // in the delivery that brings the last probe.
    for &p in &ports {
        sender.send_to(b"probe", p).unwrap();
    }
    collect(&rx, &recycler, PORTS);
    // 1.2 MB queued in the sockets while the thread waits.
    let payload = [7u8; 1000];
    for i in 0..EACH {
        for &p in &ports {
            let mut d = payload;
            d[..4].copy_from_slice(&(i as u32).to_be_bytes());
            sender.send_to(&d, p).unwrap();
        }
    }
    go_tx.send(()).unwrap();
    let mut got = 0;
    let mut batches = 0;
    let mut per_port = vec![Vec::new(); PORTS];
    while got < PORTS * EACH {
        let b = rx.recv_timeout(Duration::from_secs(10)).expect("the burst");
        // At most one socket's queue beyond the limit.
        assert!(b.data.len() < BATCH_BYTES + EACH * 1000, "{}", b.data.len());
        for (d, bytes) in b.iter() {
            let k = ports.iter().position(|p| *p == d.dst).unwrap();
            per_port[k].push(u32::from_be_bytes(bytes[..4].try_into().unwrap()));
        }
        got += b.items.len();
        batches += 1;
        recycler.give_back(b);
    }
    assert!(batches >= 2, "1.2 MB in {batches} batch(es)");
    let want: Vec<u32> = (0..EACH as u32).collect();
    assert!(
        per_port.iter().all(|v| *v == want),
        "every datagram, in order"
    );
    media.stop();
}

#[test]
fn admission_keeps_other_sources_out_and_a_retired_port_counts_what_comes() {
    let (tx, rx) = sync_channel(64);
    let counters = Arc::new(MediaCounters::default());
    let (media, recycler) = MediaReceiver::start(ToChannel(tx), counters.clone()).unwrap();
    let ctl = media.control();
    let src = UdpSocket::bind("127.0.0.1:0").unwrap();
    let other = UdpSocket::bind("127.0.0.1:0").unwrap();
    let origin = StreamOrigin {
        announced_ip: Some(src.local_addr().unwrap().ip()),
        announced_port: src.local_addr().unwrap().port(),
        signalling: src.local_addr().unwrap().ip(),
    };
    let last = Arc::new(AtomicI64::new(0));
    let p = MediaPort::bind(
        "127.0.0.1:0".parse().unwrap(),
        last.clone(),
        Admission::new(origin),
    )
    .unwrap();
    let local = p.local;
    ctl.add(p);
    let rtp = |seq: u16| {
        let mut b = vec![0x80u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        b[2..4].copy_from_slice(&seq.to_be_bytes());
        b.extend_from_slice(&[0u8; 160]);
        b
    };
    // Another port of the SRC's host first: held, then rejected.
    for i in 0..5 {
        other.send_to(&rtp(100 + i), local).unwrap();
    }
    for i in 0..20 {
        src.send_to(&rtp(i), local).unwrap();
    }
    let got = collect(&rx, &recycler, 20);
    assert!(got.iter().all(|(d, _)| d.src == src.local_addr().unwrap()));
    let seqs: Vec<u16> = got
        .iter()
        .map(|(_, p)| u16::from_be_bytes([p[2], p[3]]))
        .collect();
    assert_eq!(seqs, (0..20).collect::<Vec<_>>());
    assert!(last.load(Ordering::Relaxed) > 0);
    // The rejections are counted once the thread got to them.
    let t = Instant::now();
    while counters.rejected().source < 5 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{:?}",
            counters.rejected()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Retired: the stream's packets still come through for the grace
    // after its end (sent before the BYE, they came after it); from then
    // on nothing gets through, and everything is counted.
    ctl.retire(local);
    let retired_at = Instant::now();
    let mut seq = 20;
    let mut after_end = Vec::new();
    while counters.rejected().unknown_port < 10 {
        src.send_to(&rtp(seq), local).unwrap();
        seq += 1;
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{:?}",
            counters.rejected()
        );
        std::thread::sleep(Duration::from_millis(10));
        while let Ok(b) = rx.try_recv() {
            after_end.extend(b.iter().map(|(d, _)| d.ts));
            recycler.give_back(b);
        }
    }
    let grace = Duration::from_micros(RETIRE_GRACE_US as u64);
    assert!(retired_at.elapsed() >= grace);
    assert!(
        after_end.len() >= 20,
        "the stream's packets during the grace: {}",
        after_end.len()
    );
    // Reused for a new stream from `other`.
    let origin2 = StreamOrigin {
        announced_ip: Some(other.local_addr().unwrap().ip()),
        announced_port: other.local_addr().unwrap().port(),
        signalling: other.local_addr().unwrap().ip(),
    };
    ctl.reuse(local, None, Arc::default(), Admission::new(origin2));
    other.send_to(&rtp(7), local).unwrap();
    // Skip what src got in before the port was retired.
    let first_of_other = loop {
        let got = collect(&rx, &recycler, 1);
        if let Some((d, _)) = got
            .into_iter()
            .find(|(d, _)| d.src != src.local_addr().unwrap())
        {
            break d;
        }
    };
    assert_eq!(first_of_other.src, other.local_addr().unwrap());
    assert_eq!(counters.rejected().source, 5);
    assert_eq!(counters.rejected().ssrc, 0);
    media.stop();
}

#[test]
fn stop_delivers_what_is_queued() {
    let (tx, rx) = sync_channel(64);
    let (media, recycler) = MediaReceiver::start(ToChannel(tx), Arc::default()).unwrap();
    let ctl = media.control();
    let a = MediaPort::bind(
        "127.0.0.1:0".parse().unwrap(),
        Arc::default(),
        Admission::unrestricted(),
    )
    .unwrap();
    let la = a.local;
    ctl.add(a);
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    sender.send_to(b"first", la).unwrap();
    collect(&rx, &recycler, 1);
    for _ in 0..10 {
        sender.send_to(b"more", la).unwrap();
    }
    media.stop();
    let n: usize = rx.try_iter().map(|b| b.items.len()).sum();
    assert_eq!(n, 10);
}

#[test]
fn sockaddr_conversion_round_trips() {
    for a in ["10.1.2.3:4000", "[2001:db8::7]:5004"] {
        let want: SocketAddr = a.parse().unwrap();
        let s = UdpSocket::bind(if want.is_ipv4() {
            "127.0.0.1:0"
        } else {
            "[::1]:0"
        });
        let Ok(_s) = s else { continue };
        // SAFETY: zeroed sockaddr_storage is valid.
        let mut st: libc::sockaddr_storage = unsafe { MaybeUninit::zeroed().assume_init() };
        match want {
            SocketAddr::V4(v) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as u16,
                    sin_port: v.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from(*v.ip()).to_be(),
                    },
                    sin_zero: [0; 8],
                };
                unsafe { std::ptr::write((&mut st as *mut libc::sockaddr_storage).cast(), sin) };
            }
            SocketAddr::V6(v) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as u16,
                    sin6_port: v.port().to_be(),
                    sin6_flowinfo: 0,
                    sin6_addr: libc::in6_addr {
                        s6_addr: v.ip().octets(),
                    },
                    sin6_scope_id: 0,
                };
                unsafe { std::ptr::write((&mut st as *mut libc::sockaddr_storage).cast(), sin6) };
            }
        }
        assert_eq!(sockaddr_to_std(&st), Some(want));
    }
}

/// Every round's last batch says from when on it is complete: no datagram
/// that arrived before that comes in a later batch. When the thread is idle
/// with every batch processed, the engine follows the wall clock; while a
/// batch is out, its horizon stays where the media are complete.
#[test]
fn each_round_says_how_far_the_media_are_complete() {
    let (tx, rx) = sync_channel(64);
    let counters = Arc::new(MediaCounters::default());
    let (media, recycler) = MediaReceiver::start(ToChannel(tx), counters.clone()).unwrap();
    let ctl = media.control();
    let last = Arc::new(AtomicI64::new(0));
    let mut ports = Vec::new();
    for _ in 0..3 {
        let p = MediaPort::bind(
            "127.0.0.1:0".parse().unwrap(),
            last.clone(),
            Admission::unrestricted(),
        )
        .unwrap();
        ports.push(p.local);
        ctl.add(p);
    }
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    let start = crate::sys::now();
    let mut horizon = MediaHorizon::new(start);
    // Datagrams over about 300 ms, to all ports in turn.
    let send = std::thread::spawn(move || {
        for i in 0..300u32 {
            sender
                .send_to(&i.to_be_bytes(), ports[i as usize % 3])
                .unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    let mut complete = start;
    let mut got = 0;
    let mut throughs = 0;
    while got < 300 {
        let b = rx.recv_timeout(Duration::from_secs(10)).expect("batches");
        for (d, _) in b.iter() {
            assert!(
                d.ts >= complete,
                "a datagram of {} came after a batch complete from {complete}",
                d.ts
            );
        }
        got += b.items.len();
        if let Some(t) = b.through {
            assert!(t >= complete);
            complete = t;
            throughs += 1;
        }
        horizon.processed(&b);
        // A batch processed, the thread maybe still reading: the horizon is
        // where the media are complete (at most 4 s behind).
        let wall = crate::sys::now();
        if let Some(h) = horizon.horizon(&counters.idle, wall) {
            assert_eq!(h, complete.max(wall.add_micros(-MAX_BEHIND_US)));
        }
        recycler.give_back(b);
    }
    send.join().unwrap();
    assert!(throughs >= 2, "rounds end with their stamp");
    // Nothing more comes: the thread goes idle after the batches handed
    // over, all processed here: no limit, and the clock is the wall clock.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let wall = crate::sys::now();
        if horizon.horizon(&counters.idle, wall).is_none() {
            assert_eq!(horizon.hold(&counters.idle, wall), (None, wall));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the thread goes idle");
        std::thread::sleep(Duration::from_millis(5));
    }
    media.stop();
}

/// The engine side alone: idle with every batch processed, no limit; a
/// batch still to process, the last complete point; never more than
/// [`MAX_BEHIND_US`] behind the wall clock.
#[test]
fn the_horizon_follows_the_idle_mark_and_the_batches() {
    let t0 = Timestamp::from_micros(1_800_000_000_000_000);
    let idle = IdleMark::default();
    let mut h = MediaHorizon::new(t0);
    // The thread is reading (not idle): complete only up to t0.
    assert_eq!(h.horizon(&idle, t0.add_micros(100_000)), Some(t0));
    // Idle after 0 batches, none processed: nothing pending.
    idle.set(0);
    assert_eq!(h.horizon(&idle, t0.add_micros(200_000)), None);
    // Woken: two batches out, the first processed (cut from a round, no
    // stamp); the horizon stays where the media were last complete.
    idle.clear();
    let mut cut = DatagramBatch::default();
    h.processed(&cut);
    assert_eq!(
        h.horizon(&idle, t0.add_micros(300_000)),
        Some(t0.add_micros(200_000))
    );
    cut.through = Some(t0.add_micros(260_000));
    h.processed(&cut);
    assert_eq!(
        h.horizon(&idle, t0.add_micros(320_000)),
        Some(t0.add_micros(260_000))
    );
    assert_eq!(
        h.hold(&idle, t0.add_micros(320_000)),
        (Some(t0.add_micros(260_000)), t0.add_micros(260_000))
    );
    // Idle after 3 batches, only 2 processed: one is still pending.
    idle.set(3);
    assert!(h.horizon(&idle, t0.add_micros(400_000)).is_some());
    // Far behind: at most MAX_BEHIND_US.
    let late = t0.add_micros(60_000_000);
    assert_eq!(
        h.horizon(&idle, late),
        Some(late.add_micros(-MAX_BEHIND_US))
    );
    assert_eq!(h.behind_us, MAX_BEHIND_US);
    assert_eq!(h.behind_max_us, MAX_BEHIND_US);
    h.processed(&DatagramBatch::default());
    assert_eq!(h.horizon(&idle, late), None);
    assert_eq!(h.behind_us, 0);
}

/// A round in which admission kept everything out (a port flooded by
/// another source) still hands over its stamp: the engine's horizon moves
/// on instead of falling behind the wall clock.
#[test]
fn a_round_of_rejected_datagrams_still_moves_the_stamp_on() {
    let (tx, rx) = sync_channel(64);
    let counters = Arc::new(MediaCounters::default());
    let (media, recycler) = MediaReceiver::start(ToChannel(tx), counters.clone()).unwrap();
    let ctl = media.control();
    let src = UdpSocket::bind("127.0.0.1:0").unwrap();
    let intruder = UdpSocket::bind("127.0.0.2:0").unwrap();
    let origin = StreamOrigin {
        announced_ip: Some(src.local_addr().unwrap().ip()),
        announced_port: src.local_addr().unwrap().port(),
        signalling: src.local_addr().unwrap().ip(),
    };
    let p = MediaPort::bind(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(AtomicI64::new(0)),
        Admission::new(origin),
    )
    .unwrap();
    let local = p.local;
    ctl.add(p);
    let before = crate::sys::now();
    let mut b = vec![0x80u8, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9];
    b.extend_from_slice(&[0u8; 160]);
    intruder.send_to(&b, local).unwrap();
    let got = rx.recv_timeout(Duration::from_secs(10)).expect("a batch");
    assert!(got.is_empty(), "nothing of the intruder's");
    assert!(got.through.is_some_and(|t| t >= before));
    assert_eq!(counters.rejected().source, 1);
    recycler.give_back(got);
    media.stop();
}

/// A port flooded with more than a round's worth of datagrams is read a
/// round's worth at a time: the other ports' datagrams come with the first
/// round, not after the whole flood; the flooded port's come on in order
/// in the next rounds, none lost.
#[test]
fn a_flooded_port_does_not_hold_up_the_others() {
    let (tx, rx) = sync_channel(64);
    let (go_tx, go_rx) = sync_channel(1);
    let counters = Arc::new(MediaCounters::default());
    let sink = Held {
        out: tx,
        hold_at: 2,
        seen: 0,
        go: Some(go_rx),
    };
    let (media, recycler) = MediaReceiver::start(sink, counters.clone()).unwrap();
    let ctl = media.control();
    let bind = || {
        MediaPort::bind(
            "127.0.0.1:0".parse().unwrap(),
            Arc::default(),
            Admission::unrestricted(),
        )
        .unwrap()
    };
    let (flooded, other) = (bind(), bind());
    set_int_option(
        flooded.socket.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_RCVBUF,
        1 << 20,
    )
    .unwrap();
    let (a, b) = (flooded.local, other.local);
    ctl.add(flooded);
    ctl.add(other);
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    sender.send_to(b"probe", a).unwrap();
    sender.send_to(b"probe", b).unwrap();
    // The thread is held in the delivery that brings the second probe.
    collect(&rx, &recycler, 2);
    const FLOOD: u32 = 3 * (DRAIN_CALLS * VLEN) as u32 / 2;
    for i in 0..FLOOD {
        sender.send_to(&i.to_be_bytes(), a).unwrap();
    }
    sender.send_to(b"other", b).unwrap();
    go_tx.send(()).unwrap();
    let mut flood_before_other = None;
    let mut seen_a = Vec::new();
    while seen_a.len() < FLOOD as usize || flood_before_other.is_none() {
        let batch = rx.recv_timeout(Duration::from_secs(10)).expect("datagrams");
        for (d, bytes) in batch.iter() {
            if d.dst == b {
                flood_before_other = Some(seen_a.len());
            } else {
                seen_a.push(u32::from_be_bytes(bytes[..4].try_into().unwrap()));
            }
        }
        recycler.give_back(batch);
    }
    assert_eq!(
        counters.kernel_drops.load(Ordering::Relaxed),
        0,
        "all queued"
    );
    assert_eq!(
        seen_a,
        (0..FLOOD).collect::<Vec<_>>(),
        "all of it, in order"
    );
    let before = flood_before_other.unwrap();
    assert!(
        before <= DRAIN_CALLS * VLEN,
        "{before} flood datagrams read before the other port's one"
    );
    media.stop();
}

/// The wall clock set back by 2 s (NTP stepping it): the kernel's receive
/// stamps are wall clock, so each is moved on by the step, as is the
/// round's `through`, onto the steady clock the engine runs on (a
/// datagram stamped on the stepped clock would land 2 s early, over audio
/// already written).
#[test]
fn stamps_are_put_on_the_steady_clock_after_a_wall_clock_step() {
    let (tx, rx) = sync_channel(64);
    let counters = Arc::new(MediaCounters::default());
    let (media, recycler) =
        MediaReceiver::start_stepped(ToChannel(tx), counters, || -2_000_000).unwrap();
    let ctl = media.control();
    let last = Arc::new(AtomicI64::new(0));
    let a = loopback_port(&last);
    let la = a.local;
    ctl.add(a);
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    let before = crate::sys::now().add_micros(2_000_000);
    sender.send_to(b"probe", la).unwrap();
    let mut got = Vec::new();
    while got.is_empty() {
        let b = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("datagrams arrive");
        assert!(
            b.through.is_some_and(|t| t >= before),
            "the round's through on the steady clock"
        );
        got.extend(b.iter().map(|(d, _)| d.ts));
        recycler.give_back(b);
    }
    let after = crate::sys::now().add_micros(2_000_000);
    assert!(
        got.iter().all(|ts| *ts >= before && *ts <= after),
        "{got:?} not within {before:?}..{after:?}"
    );
    assert!(last.load(Ordering::Relaxed) >= before.as_micros());
}
