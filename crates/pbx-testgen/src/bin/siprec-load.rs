//! `siprec-load --srs HOST:PORT --calls N --seconds S [--setup-rate CPS] [--end-spread S]`
//!
//! A SIPREC load generator for capacity benchmarks: sets up N concurrent
//! two-stream SIPREC sessions against a recording server over UDP, sends PCMU
//! RTP on both streams of every session at the real packet rate (one packet per
//! stream every 20 ms) for S seconds, hangs up, and prints one JSON line with
//! what it did (sessions answered, packets sent, setup failures, how late the
//! sender ran behind real time, and the setup latency: INVITE sent to its
//! 200 received, p50/p99/max in ms).

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use pbx_testgen::audio::speechlike;
use pbx_testgen::codec::Encoder;
use pbx_testgen::scenario::rtp_packet;
use pbx_testgen::TestCodec;

const BOUNDARY: &str = "loadboundary";

/// Reads one answer (5 ms at most); 1 when it answers a BYE of a call
/// still in `open` (then removed from it).
fn take_bye_answer(
    sip: &UdpSocket,
    buf: &mut [u8],
    open: &mut std::collections::BTreeSet<usize>,
) -> usize {
    let Ok((n, _)) = sip.recv_from(buf) else {
        return 0;
    };
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    match parse_answer(&msg) {
        Some((call, code, _, _, m)) if m == "BYE" && code >= 200 && open.remove(&call) => 1,
        _ => 0,
    }
}

fn invite(n: usize, local: SocketAddr, srs: SocketAddr) -> String {
    let sdp = format!(
        "v=0\r\no=load {n} 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio {p0} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=label:1\r\na=sendonly\r\n\
         m=audio {p1} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=label:2\r\na=sendonly\r\n",
        ip = local.ip(),
        p0 = 40000 + (n % 10000) * 2,
        p1 = 40000 + (n % 10000) * 2 + 1
    );
    let meta = format!(
        "<?xml version=\"1.0\"?><recording xmlns=\"urn:ietf:params:xml:ns:recording:1\"><datamode>complete</datamode>\
         <session session_id=\"s{n}\"/>\
         <participant participant_id=\"a{n}\"><nameID aor=\"sip:1{n:05}@load\"/></participant>\
         <participant participant_id=\"b{n}\"><nameID aor=\"sip:2{n:05}@load\"/></participant>\
         <stream stream_id=\"x{n}\" session_id=\"s{n}\"><label>1</label></stream>\
         <stream stream_id=\"y{n}\" session_id=\"s{n}\"><label>2</label></stream>\
         <participantstreamassoc participant_id=\"a{n}\"><send>x{n}</send></participantstreamassoc>\
         <participantstreamassoc participant_id=\"b{n}\"><send>y{n}</send></participantstreamassoc></recording>"
    );
    let body = format!(
        "--{BOUNDARY}\r\nContent-Type: application/sdp\r\n\r\n{sdp}\r\n--{BOUNDARY}\r\nContent-Type: application/rs-metadata+xml\r\nContent-Disposition: recording-session\r\n\r\n{meta}\r\n--{BOUNDARY}--\r\n"
    );
    format!(
        "INVITE sip:srs@{srs} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKload{n}\r\nMax-Forwards: 70\r\n\
         From: <sip:src@{ip}>;tag=load{n}\r\nTo: <sip:srs@{srs}>\r\nCall-ID: load-{n}@siprec-load\r\nCSeq: 1 INVITE\r\n\
         Contact: <sip:src@{local}>;+sip.src\r\nRequire: siprec\r\nContent-Type: multipart/mixed;boundary={BOUNDARY}\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len(),
        ip = local.ip()
    )
}

fn in_dialog(
    method: &str,
    n: usize,
    cseq: u32,
    to: &str,
    local: SocketAddr,
    srs: SocketAddr,
) -> String {
    format!(
        "{method} sip:srs@{srs} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{method}{n}\r\nMax-Forwards: 70\r\n\
         From: <sip:src@{ip}>;tag=load{n}\r\nTo: {to}\r\nCall-ID: load-{n}@siprec-load\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n",
        ip = local.ip()
    )
}

struct Session {
    to: String,
    ports: [u16; 2],
}

fn parse_answer(msg: &str) -> Option<(usize, u16, String, Vec<u16>, String)> {
    let code: u16 = msg.split_whitespace().nth(1)?.parse().ok()?;
    let mut call = None;
    let mut to = String::new();
    let mut method = String::new();
    for l in msg.lines() {
        if let Some(v) = l.strip_prefix("Call-ID:") {
            call = v
                .trim()
                .strip_prefix("load-")?
                .split('@')
                .next()?
                .parse()
                .ok();
        } else if let Some(v) = l.strip_prefix("To:") {
            to = v.trim().to_string();
        } else if let Some(v) = l.strip_prefix("CSeq:") {
            method = v.split_whitespace().nth(1).unwrap_or("").to_string();
        }
    }
    let ports = msg
        .lines()
        .filter(|l| l.starts_with("m=audio "))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect();
    Some((call?, code, to, ports, method))
}

/// Send every datagram of `batch` from `sock` with as few `sendmmsg` calls
/// as the kernel allows; (sent, failed).
fn send_batch(sock: &UdpSocket, batch: &[(Vec<u8>, SocketAddr)]) -> (u64, u64) {
    use std::os::fd::AsRawFd;
    let (mut sent, mut failed) = (0u64, 0u64);
    for chunk in batch.chunks(256) {
        let mut names: Vec<libc::sockaddr_in> = chunk
            .iter()
            .map(|(_, to)| match to {
                SocketAddr::V4(v) => libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: v.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from(*v.ip()).to_be(),
                    },
                    sin_zero: [0; 8],
                },
                SocketAddr::V6(_) => panic!("siprec-load sends over IPv4"),
            })
            .collect();
        let mut iovecs: Vec<libc::iovec> = chunk
            .iter()
            .map(|(p, _)| libc::iovec {
                iov_base: p.as_ptr() as *mut libc::c_void,
                iov_len: p.len(),
            })
            .collect();
        let mut headers: Vec<libc::mmsghdr> = (0..chunk.len())
            .map(|i| {
                // SAFETY: all-zero is a valid mmsghdr; the pointers set below
                // point into vectors that outlive the sendmmsg call.
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_name = (&mut names[i] as *mut libc::sockaddr_in).cast();
                h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
                h.msg_hdr.msg_iov = &mut iovecs[i];
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        let mut done = 0usize;
        while done < headers.len() {
            // SAFETY: headers[done..] are valid mmsghdrs (see above).
            let n = unsafe {
                libc::sendmmsg(
                    sock.as_raw_fd(),
                    headers[done..].as_mut_ptr(),
                    (headers.len() - done) as u32,
                    0,
                )
            };
            if n <= 0 {
                // Skip the datagram the kernel refused and go on.
                failed += 1;
                done += 1;
            } else {
                sent += n as u64;
                done += n as usize;
            }
        }
    }
    (sent, failed)
}

fn main() {
    let mut srs: SocketAddr = "127.0.0.1:5090".parse().expect("literal");
    let mut calls = 100usize;
    let mut seconds = 30u64;
    let mut setup_rate = 200usize;
    let mut end_spread = 0f64;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i + 1 < args.len() {
        let v = &args[i + 1];
        match args[i].as_str() {
            "--srs" => srs = v.parse().expect("--srs HOST:PORT"),
            "--calls" => calls = v.parse().expect("--calls N"),
            "--seconds" => seconds = v.parse().expect("--seconds S"),
            "--setup-rate" => setup_rate = v.parse().expect("--setup-rate CPS"),
            "--end-spread" => end_spread = v.parse().expect("--end-spread SECONDS"),
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    let sip = UdpSocket::bind("127.0.0.1:0").expect("bind SIP socket");
    let local = sip.local_addr().expect("local addr");
    {
        // Room for a burst of answers (every BYE's 200 at once).
        use std::os::fd::AsRawFd;
        let size: libc::c_int = 4 << 20;
        // SAFETY: an int option of the right size.
        unsafe {
            libc::setsockopt(
                sip.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
    }
    sip.set_read_timeout(Some(Duration::from_millis(5)))
        .expect("timeout");
    let media: Vec<UdpSocket> = (0..8)
        .map(|_| UdpSocket::bind("127.0.0.1:0").expect("bind RTP socket"))
        .collect();

    // Set up the sessions at `setup_rate` calls per second.
    let mut sessions: HashMap<usize, Session> = HashMap::new();
    let mut failed = 0usize;
    let start = Instant::now();
    let mut next = 0usize;
    let mut buf = vec![0u8; 65536];
    // When each INVITE left, and how long its final answer took.
    let mut sent_at: Vec<Option<Instant>> = vec![None; calls];
    let mut setup_ms: Vec<f64> = Vec::with_capacity(calls);
    let mut last_answer = Instant::now();
    while (sessions.len() + failed) < calls && start.elapsed() < Duration::from_secs(120) {
        // Every INVITE sent and nothing heard for 5 s: the rest are lost.
        if next == calls && last_answer.elapsed() > Duration::from_secs(5) {
            break;
        }
        let due = (start.elapsed().as_secs_f64() * setup_rate as f64) as usize + 1;
        while next < calls && next < due {
            let _ = sip.send_to(invite(next, local, srs).as_bytes(), srs);
            sent_at[next] = Some(Instant::now());
            next += 1;
        }
        while let Ok((n, _)) = sip.recv_from(&mut buf) {
            last_answer = Instant::now();
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            if let Some((call, code, to, ports, method)) = parse_answer(&msg) {
                if method != "INVITE" || code < 200 || sessions.contains_key(&call) {
                    continue;
                }
                if let Some(t) = sent_at.get(call).copied().flatten() {
                    setup_ms.push(t.elapsed().as_secs_f64() * 1000.0);
                }
                if code == 200 && ports.len() == 2 {
                    let _ = sip.send_to(in_dialog("ACK", call, 1, &to, local, srs).as_bytes(), srs);
                    sessions.insert(
                        call,
                        Session {
                            to,
                            ports: [ports[0], ports[1]],
                        },
                    );
                } else {
                    failed += 1;
                }
            }
        }
    }
    let setup_s = start.elapsed().as_secs_f64();
    setup_ms.sort_by(f64::total_cmp);
    let pct = |q: f64| -> f64 {
        if setup_ms.is_empty() {
            return 0.0;
        }
        setup_ms[((setup_ms.len() - 1) as f64 * q).round() as usize]
    };
    let (setup_p50, setup_p99, setup_max) = (pct(0.5), pct(0.99), pct(1.0));

    // Media: 20 ms packets on both streams of every session, real time.
    let speech = speechlike(7, 1000, 8000);
    let mut enc = Encoder::new(TestCodec::Pcmu);
    let frames: Vec<Vec<u8>> = speech.chunks(160).map(|c| enc.encode(c)).collect();
    let mut ids: Vec<usize> = sessions.keys().copied().collect();
    ids.sort_unstable();
    let packets_per_stream = seconds * 50;
    // Two sender threads, each with its own sockets and half the sessions.
    let targets: Vec<(usize, [u16; 2])> = ids.iter().map(|id| (*id, sessions[id].ports)).collect();
    let threads = 2usize;
    let t0 = Instant::now();
    let results: Vec<(u64, u64, Duration)> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let mine: Vec<(usize, [u16; 2])> =
                    targets.iter().skip(t).step_by(threads).copied().collect();
                let frames = &frames;
                let media = &media;
                sc.spawn(move || {
                    let (mut sent, mut errors, mut worst) = (0u64, 0u64, Duration::ZERO);
                    // Each stream always leaves from the same one of this
                    // thread's four sockets; a tick's packets go out with one
                    // sendmmsg per socket and batch.
                    let mut per_socket: Vec<Vec<(Vec<u8>, SocketAddr)>> = vec![Vec::new(); 4];
                    for k in 0..packets_per_stream {
                        let due = Duration::from_millis(20 * k);
                        match due.checked_sub(t0.elapsed()) {
                            Some(w) => std::thread::sleep(w),
                            None => worst = worst.max(t0.elapsed() - due),
                        }
                        let payload = &frames[(k as usize) % frames.len()];
                        for (j, (id, ports)) in mine.iter().enumerate() {
                            for (stream, port) in ports.iter().enumerate() {
                                let ssrc = (*id as u32) << 1 | stream as u32;
                                let pkt = rtp_packet(
                                    0,
                                    k == 0,
                                    k as u16,
                                    (k * 160) as u32,
                                    ssrc,
                                    payload,
                                );
                                per_socket[(j * 2 + stream) % 4]
                                    .push((pkt, SocketAddr::new(srs.ip(), *port)));
                            }
                        }
                        for (q, batch) in per_socket.iter_mut().enumerate() {
                            let (ok, failed) = send_batch(&media[t * 4 + q], batch);
                            sent += ok;
                            errors += failed;
                            batch.clear();
                        }
                    }
                    (sent, errors, worst)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("sender thread"))
            .collect()
    });
    let sent: u64 = results.iter().map(|r| r.0).sum();
    let send_errors: u64 = results.iter().map(|r| r.1).sum();
    let worst_lag = results.iter().map(|r| r.2).max().unwrap_or_default();
    while sip.recv_from(&mut buf).is_ok() {}
    let media_s = t0.elapsed().as_secs_f64();

    // Hang up, retransmitting unanswered BYEs as a UAC does (RFC 3261 timer E:
    // 500 ms doubling to 4 s) for up to 10 s.
    let mut open: std::collections::BTreeSet<usize> = ids.iter().copied().collect();
    // With --end-spread, the first BYEs leave evenly over that many seconds
    // (calls ending one after another, as on a busy PBX), not all at once.
    let mut byes = 0usize;
    if end_spread > 0.0 && !ids.is_empty() {
        let t_end = Instant::now();
        let step = end_spread / ids.len() as f64;
        for (k, id) in ids.iter().enumerate() {
            let due = t_end + Duration::from_secs_f64(step * k as f64);
            loop {
                byes += take_bye_answer(&sip, &mut buf, &mut open);
                if Instant::now() >= due {
                    break;
                }
            }
            let s = &sessions[id];
            let _ = sip.send_to(in_dialog("BYE", *id, 2, &s.to, local, srs).as_bytes(), srs);
        }
    }
    let bye_deadline = Instant::now() + Duration::from_secs(10);
    let mut interval = Duration::from_millis(500);
    let mut bye_retransmissions = 0usize;
    let mut first = end_spread <= 0.0;
    if !first {
        // The paced BYEs went already: wait before retransmitting.
        let until = Instant::now() + interval;
        while Instant::now() < until && !open.is_empty() {
            byes += take_bye_answer(&sip, &mut buf, &mut open);
        }
    }
    while !open.is_empty() && Instant::now() < bye_deadline {
        for id in &open {
            let s = &sessions[id];
            let _ = sip.send_to(in_dialog("BYE", *id, 2, &s.to, local, srs).as_bytes(), srs);
            if !first {
                bye_retransmissions += 1;
            }
        }
        first = false;
        let until = Instant::now() + interval;
        while Instant::now() < until && !open.is_empty() {
            byes += take_bye_answer(&sip, &mut buf, &mut open);
        }
        interval = (interval * 2).min(Duration::from_secs(4));
    }
    println!(
        "{{\"calls\":{calls},\"answered\":{},\"failed\":{failed},\"setup_s\":{setup_s:.2},\"unanswered\":{},\"setup_p50_ms\":{setup_p50:.1},\"setup_p99_ms\":{setup_p99:.1},\"setup_max_ms\":{setup_max:.1},\"media_s\":{media_s:.2},\"packets_per_stream\":{packets_per_stream},\"packets_sent\":{sent},\"send_errors\":{send_errors},\"sender_worst_lag_ms\":{},\"byes_answered\":{byes},\"bye_retransmissions\":{bye_retransmissions}}}",
        sessions.len(),
        calls - sessions.len() - failed,
        worst_lag.as_millis()
    );
}
