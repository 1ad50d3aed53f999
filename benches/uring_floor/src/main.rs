//! The receive floor of benches/receive_floor.sh with io_uring instead of
//! epoll + recvmmsg: one multishot `recvmsg` per socket (kernel 6.0+), the
//! datagrams landing in a provided buffer ring, the ring's deferred task work
//! run once a 40 ms round (`IORING_SETUP_DEFER_TASKRUN`), every completion
//! reaped and its buffer given back. Usage: uring-floor STREAMS (ports 31000,
//! 31002, ...; the C sender of receive_floor.sh sends to them). Prints the
//! same table row as the C receiver.
use io_uring::{cqueue, opcode, types, IoUring};
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

const BASE: u16 = 31000;
const ENTRIES: usize = 16384;
const BUF: usize = 512;

fn cpu() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .expect("STREAMS");
    let on: libc::c_int = 1;
    let socks: Vec<UdpSocket> = (0..n)
        .map(|i| {
            let s = UdpSocket::bind(("127.0.0.1", BASE + 2 * i as u16)).expect("bind");
            s.set_nonblocking(true).unwrap();
            for opt in [libc::SO_TIMESTAMPNS, libc::SO_RXQ_OVFL] {
                // SAFETY: an int option on our socket.
                unsafe {
                    libc::setsockopt(
                        s.as_raw_fd(),
                        libc::SOL_SOCKET,
                        opt,
                        (&on as *const i32).cast(),
                        4,
                    )
                };
            }
            s
        })
        .collect();
    let mut ring: IoUring = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_cqsize(65536)
        .build(1024)
        .expect("io_uring (kernel 6.1+, not disabled)");
    let fds: Vec<i32> = socks.iter().map(|s| s.as_raw_fd()).collect();
    ring.submitter().register_files(&fds).unwrap();
    let layout = std::alloc::Layout::from_size_align(ENTRIES * 16, 4096).unwrap();
    // SAFETY: a page-aligned zeroed block for the ring, never freed.
    let ring_mem = unsafe { std::alloc::alloc_zeroed(layout) } as *mut types::BufRingEntry;
    let mut data = vec![0u8; ENTRIES * BUF];
    // SAFETY: the ring memory lives as long as the process.
    unsafe {
        ring.submitter()
            .register_buf_ring_with_flags(ring_mem as u64, ENTRIES as u16, 0, 0)
    }
    .unwrap();
    // SAFETY: the ring's first entry is initialised (zeroed).
    let tail = unsafe { AtomicU16::from_ptr(types::BufRingEntry::tail(ring_mem) as *mut u16) };
    let mut t: u16 = 0;
    let give = |bid: u16, t: &mut u16, data: &mut [u8]| {
        // SAFETY: the entry is inside the ring; the buffer inside `data`.
        let e = unsafe { &mut *ring_mem.add((*t as usize) & (ENTRIES - 1)) };
        e.set_addr(data[bid as usize * BUF..].as_mut_ptr() as u64);
        e.set_len(BUF as u32);
        e.set_bid(bid);
        *t = t.wrapping_add(1);
    };
    for b in 0..ENTRIES as u16 {
        give(b, &mut t, &mut data);
    }
    tail.store(t, Ordering::Release);
    // SAFETY: all-zero is a valid msghdr; only the two lengths matter.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
    msg.msg_controllen = 64;
    let arm = |ring: &mut IoUring, i: usize| {
        let e = opcode::RecvMsgMulti::new(types::Fixed(i as u32), &msg, 0)
            .build()
            .user_data(i as u64);
        // SAFETY: `msg` outlives the ring's use of it.
        while unsafe { ring.submission().push(&e) }.is_err() {
            ring.submit().unwrap();
        }
    };
    for i in 0..n {
        arm(&mut ring, i);
    }
    ring.submit().unwrap();
    let (mut got, mut sum) = (0u64, 0u64);
    let (mut c0, mut c1, mut t0, mut last) = (0.0, 0.0, Instant::now(), Instant::now());
    let mut rearm = Vec::new();
    loop {
        let round = Instant::now();
        let before = got;
        loop {
            // SAFETY: GETEVENTS without a wait: runs the deferred task work.
            unsafe { ring.submitter().enter::<libc::sigset_t>(0, 0, 1, None) }.unwrap();
            let mut seen = 0;
            for cqe in ring.completion() {
                seen += 1;
                if cqe.result() >= 0 {
                    let bid = cqueue::buffer_select(cqe.flags()).unwrap();
                    let buf = &data[bid as usize * BUF..(bid as usize + 1) * BUF];
                    let out = types::RecvMsgOut::parse(buf, &msg).unwrap();
                    sum += u64::from(out.payload_data()[0]) + out.control_data().len() as u64;
                    got += 1;
                    give(bid, &mut t, &mut data);
                }
                if !cqueue::more(cqe.flags()) {
                    rearm.push(cqe.user_data() as usize);
                }
            }
            tail.store(t, Ordering::Release);
            if seen == 0 {
                break;
            }
        }
        for i in rearm.drain(..) {
            arm(&mut ring, i);
        }
        ring.submit().unwrap();
        if got > before {
            if before == 0 {
                c0 = cpu();
                t0 = round;
            }
            last = Instant::now();
            c1 = cpu();
        } else if got > 0 && last.elapsed() > Duration::from_secs(1) {
            break;
        }
        if let Some(d) = Duration::from_millis(40).checked_sub(round.elapsed()) {
            std::thread::sleep(d);
        }
    }
    let secs = (last - t0).as_secs_f64();
    println!(
        "| io_uring, a socket per stream | {n} | {got} | {:.1} |",
        (c1 - c0) / secs * 100.0
    );
    assert!(sum > 0);
}
