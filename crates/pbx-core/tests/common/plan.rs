//! The ground-truth plan of the placement tests (`placement.rs`,
//! `flows.rs`): packets whose every sample is known, a call run through
//! the public [`CallEngine`] API, and the check that each packet lies at
//! its place, sample-exact, with nothing else in either channel.

use std::net::SocketAddr;

use pbx_core::audio::g711::{alaw_to_linear, linear_to_alaw, ulaw_to_linear};
use pbx_core::call::{
    CallEngine, CallKey, CallMeta, EndReason, EngineConfig, RecordingSink, RecordingStart,
};
use pbx_core::capture::LinkType;
use pbx_core::net::{Segment, Transport};
use pbx_core::Timestamp;

use super::*;

// ------------------------------------------------------------ sink

#[derive(Default)]
pub struct Sink {
    pub begins: u32,
    pub audio: Vec<i16>,
    pub meta: Option<CallMeta>,
}

impl RecordingSink for Sink {
    fn begin(&mut self, _call: CallKey, _start: &RecordingStart) {
        self.begins += 1;
        assert_eq!(self.begins, 1, "one recording");
    }
    fn audio(&mut self, _call: CallKey, frames: &[i16]) {
        assert!(self.meta.is_none(), "audio after end");
        assert_eq!(frames.len() % 2, 0);
        self.audio.extend_from_slice(frames);
    }
    fn end(&mut self, _call: CallKey, meta: CallMeta) {
        assert!(self.meta.is_none(), "end twice");
        assert_eq!(meta.frames as usize * 2, self.audio.len());
        self.meta = Some(meta);
    }
}

// ------------------------------------------------------------ the plan

pub const T0_US: i64 = 1_790_000_000_000_000;
pub const MEDIA_US: i64 = T0_US + 1_020_000;
pub const SSRC: [u32; 2] = [0x1111_0000, 0x2222_0000];

/// One RTP packet: what it is, when its first sample was captured (true
/// clock), when it reaches the capture point, and the timestamp the capture
/// gives it (usually the arrival).
#[derive(Clone, Debug)]
pub struct Tx {
    pub leg: usize,
    pub sent_us: i64,
    pub arrive_us: i64,
    pub stamp_us: Option<i64>,
    pub seq: u16,
    pub ts: u32,
    pub ssrc: u32,
    pub pt: u8,
    pub marker: bool,
    pub payload: Vec<u8>,
    /// Whether the recording must hold it at its place (false: lost, too
    /// late, DTMF, a duplicate whose first copy counts).
    pub expect: bool,
    /// Samples it may lie later than its place (beyond `tol`), where the
    /// design defers a correction.
    pub slack: i64,
    /// Source and destination when not the leg's usual addresses.
    pub path: Option<(SocketAddr, SocketAddr)>,
    /// The datagram when not [`rtp`] of the fields (padding, extensions).
    pub raw: Option<Vec<u8>>,
}

/// G.711 bytes whose value is loud and distinct: negative ones for the
/// caller, positive ones for the callee.
pub fn loud(leg: usize) -> Vec<u8> {
    (0u8..=255)
        .filter(|b| {
            let v = ulaw_to_linear(*b);
            v.unsigned_abs() >= 1000 && (v < 0) == (leg == 0)
        })
        .collect()
}

/// The μ-law byte of packet `k` of `leg`.
pub fn ubyte(leg: usize, k: usize) -> u8 {
    let l = loud(leg);
    l[(k * 7) % l.len()]
}

/// A-law byte for the same value's neighbourhood (distinct per packet too).
pub fn abyte(leg: usize, k: usize) -> u8 {
    linear_to_alaw(ulaw_to_linear(ubyte(leg, k)))
}

/// A leg's sender: sequence and timestamp counters, its packets.
pub struct Sender {
    pub leg: usize,
    pub seq: u16,
    pub ts: u32,
    pub ssrc: u32,
    pub k: usize,
    pub out: Vec<Tx>,
}

impl Sender {
    pub fn new(leg: usize, seq: u16, ts: u32) -> Self {
        Sender {
            leg,
            seq,
            ts,
            ssrc: SSRC[leg],
            k: 0,
            out: Vec::new(),
        }
    }

    /// One audio packet of `samples` (8 kHz) sent at `sent_us`, arriving
    /// `delay_us` later; PCMU (pt 0) or PCMA (pt 8).
    pub fn audio(&mut self, sent_us: i64, samples: usize, pt: u8, delay_us: i64) -> usize {
        let b = if pt == 8 {
            abyte(self.leg, self.k)
        } else {
            ubyte(self.leg, self.k)
        };
        self.out.push(Tx {
            leg: self.leg,
            sent_us,
            arrive_us: sent_us + delay_us,
            stamp_us: None,
            seq: self.seq,
            ts: self.ts,
            ssrc: self.ssrc,
            pt,
            marker: false,
            payload: vec![b; samples],
            expect: true,
            slack: 0,
            path: None,
            raw: None,
        });
        self.seq = self.seq.wrapping_add(1);
        self.ts = self.ts.wrapping_add(samples as u32);
        self.k += 1;
        self.out.len() - 1
    }

    /// `n` packets of 20 ms from `from_us`, PCMU, on time.
    pub fn talk(&mut self, from_us: i64, n: usize) -> i64 {
        for i in 0..n {
            self.audio(from_us + i as i64 * 20_000, 160, 0, 0);
        }
        from_us + n as i64 * 20_000
    }
}

pub fn value_of(t: &Tx) -> i16 {
    if t.pt == 8 {
        alaw_to_linear(t.payload[0])
    } else {
        ulaw_to_linear(t.payload[0])
    }
}

/// A datagram on the wire: capture time, source, destination, bytes.
pub type Wire = (i64, SocketAddr, SocketAddr, Vec<u8>);

pub fn sip(at_us: i64, by_caller: bool, data: Vec<u8>) -> Wire {
    if by_caller {
        (at_us, caller_sip(), callee_sip(), data)
    } else {
        (at_us, callee_sip(), caller_sip(), data)
    }
}

/// Runs the call: INVITE/200/ACK, the packets (sorted by arrival, stable),
/// BYE 300 ms after the last arrival. Returns the two channels and meta.
pub fn record(txs: &[Tx]) -> (Vec<i16>, Vec<i16>, CallMeta) {
    record_with(txs, &[0, 8, 101])
}

/// [`record`] with the payload types both sides announce.
pub fn record_with(txs: &[Tx], pts: &[u8]) -> (Vec<i16>, Vec<i16>, CallMeta) {
    record_fed_with(txs, pts, false)
}

/// [`record_with`], the packets fed as segments or as a capture's frames
/// ([`record_fed`]).
pub fn record_fed_with(txs: &[Tx], pts: &[u8], frames: bool) -> (Vec<i16>, Vec<i16>, CallMeta) {
    let d = Dialog::new("placement@10.0.0.1");
    let offer = sdp("10.0.0.1", 40000, pts, "sendrecv");
    let answer = sdp("10.0.0.2", 50000, pts, "sendrecv");
    let sig = vec![
        sip(T0_US, true, d.request("INVITE", 1, true, Some(&offer))),
        sip(
            T0_US + 1_000_000,
            false,
            d.response(200, "OK", 1, "INVITE", true, Some(&answer)),
        ),
        sip(T0_US + 1_010_000, true, d.request("ACK", 1, true, None)),
    ];
    record_fed(txs, sig, &d, frames)
}

/// Runs a call whose signalling before the BYE is `sig` (any order: sorted
/// by time with the media, signalling first at equal times).
pub fn record_sig(txs: &[Tx], sig: Vec<Wire>, d: &Dialog) -> (Vec<i16>, Vec<i16>, CallMeta) {
    record_fed(txs, sig, d, false)
}

/// [`record`], the packets fed as a capture's frames (IPv4), in the order
/// they arrived, with their stamps ([`CallEngine::handle_frame`]: a
/// sniffer, an import), and the timer on the stamps' clock (the host's).
pub fn record_frames(txs: &[Tx]) -> (Vec<i16>, Vec<i16>, CallMeta) {
    record_fed_with(txs, &[0, 8, 101], true)
}

/// An IPv4 packet (LINKTYPE_IPV4) carrying one UDP datagram.
pub fn ipv4_udp(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let (SocketAddr::V4(s), SocketAddr::V4(d)) = (src, dst) else {
        panic!("IPv4 addresses only");
    };
    let total = 20 + 8 + payload.len();
    let mut p = Vec::with_capacity(total);
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
    p.extend_from_slice(&s.ip().octets());
    p.extend_from_slice(&d.ip().octets());
    let sum = p
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum::<u32>();
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(&s.port().to_be_bytes());
    p.extend_from_slice(&d.port().to_be_bytes());
    p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

pub fn record_fed(
    txs: &[Tx],
    sig: Vec<Wire>,
    d: &Dialog,
    frames: bool,
) -> (Vec<i16>, Vec<i16>, CallMeta) {
    // (Sorted by arrival: the capture's stamps may go back.)
    let mut pkts: Vec<(i64, Wire)> = sig.into_iter().map(|p| (p.0, p)).collect();
    let mut media: Vec<&Tx> = txs.iter().collect();
    media.sort_by_key(|t| t.arrive_us);
    // (On the capture's clock, as the media: after the last to arrive.)
    let last = media
        .last()
        .map_or(MEDIA_US, |t| t.stamp_us.unwrap_or(t.arrive_us));
    for t in &media {
        let (src, dst) = t.path.unwrap_or(if t.leg == 0 {
            (caller_rtp(), callee_rtp())
        } else {
            (callee_rtp(), caller_rtp())
        });
        pkts.push((
            t.arrive_us,
            (
                t.stamp_us.unwrap_or(t.arrive_us),
                src,
                dst,
                t.raw
                    .clone()
                    .unwrap_or_else(|| rtp(t.pt, t.marker, t.seq, t.ts, t.ssrc, &t.payload)),
            ),
        ));
    }
    pkts.sort_by_key(|p| p.0);
    let mut pkts: Vec<_> = pkts.into_iter().map(|p| p.1).collect();
    pkts.push(sip(last + 300_000, true, d.request("BYE", 90, true, None)));
    pkts.push(sip(
        last + 320_000,
        false,
        d.response(200, "OK", 90, "BYE", true, None),
    ));
    let mut engine = CallEngine::new(EngineConfig::default());
    let mut sink = Sink::default();
    let mut tick = T0_US;
    for (at, src, dst, data) in &pkts {
        if frames {
            // The host's timer on its own clock, which the capture's
            // stamps are (stepped with them).
            if *at < tick - 200_000 {
                tick = *at;
            }
            while tick + 200_000 <= *at {
                tick += 200_000;
                engine.handle_timeout(Timestamp::from_micros(tick), &mut sink);
            }
            let f = ipv4_udp(*src, *dst, data);
            engine.handle_frame(Timestamp::from_micros(*at), LinkType::Ipv4, &f, &mut sink);
            continue;
        }
        // The daemon's timer, every 200 ms of capture time.
        while tick + 200_000 <= *at {
            tick += 200_000;
            engine.handle_timeout(Timestamp::from_micros(tick), &mut sink);
        }
        let seg = Segment {
            ts: Timestamp::from_micros(*at),
            src: *src,
            dst: *dst,
            transport: Transport::Udp,
            payload: data,
            tcp_gap: false,
        };
        engine.handle_segment(&seg, &mut sink);
    }
    engine.finish(EndReason::CaptureEnd, &mut sink);
    let meta = sink.meta.expect("recording ended");
    let ch = |c: usize| -> Vec<i16> { sink.audio.iter().skip(c).step_by(2).copied().collect() };
    (ch(0), ch(1), meta)
}

/// Checks the recording against the plan; `tol`: samples a packet may be
/// off its place. Returns the largest misplacement seen.
pub fn check(name: &str, txs: &[Tx], tol: usize) -> i64 {
    check_rec(name, txs, tol, record(txs))
}

/// [`check`] of a recording made otherwise.
pub fn check_rec(name: &str, txs: &[Tx], tol: usize, rec: (Vec<i16>, Vec<i16>, CallMeta)) -> i64 {
    let (c0, c1, meta) = rec;
    assert_eq!(meta.sample_rate, 8000, "{name}");
    let frame0 = meta
        .media_started_at
        .micros_since(Timestamp::from_micros(0));
    let chans = [c0, c1];
    let pos = |us: i64| -> i64 { (us - frame0) * 8 / 1000 };
    let mut worst = 0i64;
    let mut errors: Vec<String> = Vec::new();
    for (leg, ch) in chans.iter().enumerate() {
        // Samples some packet may cover (± tol).
        let mut covered = vec![false; ch.len()];
        let mut expect_end = 0i64;
        for (i, t) in txs.iter().enumerate().filter(|(_, t)| t.leg == leg) {
            if t.pt != 0 && t.pt != 8 {
                continue;
            }
            let p = pos(t.sent_us);
            let n = t.payload.len() as i64;
            if !t.expect {
                // Silence (unless a packet expected there covers it).
                continue;
            }
            expect_end = expect_end.max(p + n);
            let v = value_of(t);
            let fits = |s: i64| {
                s >= 0
                    && (s + n) as usize <= ch.len()
                    && ch[s as usize..(s + n) as usize].iter().all(|x| *x == v)
            };
            let found = (0..=tol as i64)
                .flat_map(|o| [p + o, p - o])
                .chain(p + tol as i64 + 1..=p + tol as i64 + t.slack)
                .find(|s| fits(*s));
            match found {
                Some(s) => {
                    if s - p <= tol as i64 {
                        worst = worst.max((s - p).abs());
                    }
                    for c in &mut covered[s as usize..(s + n) as usize] {
                        *c = true;
                    }
                }
                None => {
                    let got = ch.get(p.max(0) as usize..((p + n) as usize).min(ch.len()));
                    let near = ch
                        .iter()
                        .position(|x| *x == v)
                        .map(|q| q as i64 - p)
                        .filter(|d| d.abs() < 80_000);
                    errors.push(format!(
                        "leg {leg} tx #{i} (seq {} ts {} sent {} ms) value {v} not at {p} ±{tol}: got {:?}.. (value first seen at offset {near:?})",
                        t.seq,
                        t.ts,
                        (t.sent_us - frame0) / 1000,
                        got.map(|g| &g[..g.len().min(6)])
                    ));
                }
            }
        }
        // Nothing anywhere else: silence where nothing was expected.
        let stray: Vec<usize> = (0..ch.len())
            .filter(|i| !covered[*i] && ch[*i] != 0)
            .take(5)
            .collect();
        if !stray.is_empty() {
            errors.push(format!(
                "leg {leg}: audio where none belongs at {stray:?} ({:?})",
                stray.iter().map(|i| ch[*i]).collect::<Vec<_>>()
            ));
        }
        // None of the other party's audio.
        if ch.iter().any(|x| (*x > 0) == (leg == 0) && *x != 0) {
            errors.push(format!(
                "leg {leg}: the other party's audio in this channel"
            ));
        }
        // The recording runs to this leg's last audio.
        if (ch.len() as i64) < expect_end - tol as i64 {
            errors.push(format!(
                "leg {leg}: recording ends at {} before its audio's end {expect_end}",
                ch.len()
            ));
        }
    }
    // ... and not much beyond the last audio of either leg (a packet).
    let last = txs
        .iter()
        .filter(|t| t.expect)
        .map(|t| pos(t.sent_us) + t.payload.len() as i64)
        .max()
        .unwrap_or(0);
    if chans[0].len() as i64 > last + 160 + tol as i64 {
        errors.push(format!(
            "recording of {} frames runs on past the last audio at {last}",
            chans[0].len()
        ));
    }
    assert!(
        errors.is_empty(),
        "{name}: {} problems (channels {:?}):\n{}",
        errors.len(),
        meta.channels
            .iter()
            .map(|c| (c.packets, c.lost, c.late, c.reanchors, c.timing_corrections))
            .collect::<Vec<_>>(),
        errors
            .iter()
            .take(if std::env::var_os("ALL_PROBLEMS").is_some() {
                usize::MAX
            } else {
                12
            })
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    worst
}

/// The usual INVITE/200/ACK of [`record_with`] with the given SDP bodies.
pub fn setup(d: &Dialog, offer: &str, answer: &str) -> Vec<Wire> {
    vec![
        sip(T0_US, true, d.request("INVITE", 1, true, Some(offer))),
        sip(
            T0_US + 1_000_000,
            false,
            d.response(200, "OK", 1, "INVITE", true, Some(answer)),
        ),
        sip(T0_US + 1_010_000, true, d.request("ACK", 1, true, None)),
    ]
}

/// A re-INVITE at `at_us` by the caller (or the callee) with `body`, its
/// 200 OK (`answer`) 20 ms later and the ACK.
pub fn reinvite(
    d: &Dialog,
    at_us: i64,
    cseq: u32,
    by_caller: bool,
    body: &str,
    answer: &str,
) -> Vec<Wire> {
    vec![
        sip(
            at_us,
            by_caller,
            d.request("INVITE", cseq, by_caller, Some(body)),
        ),
        sip(
            at_us + 20_000,
            !by_caller,
            d.response(200, "OK", cseq, "INVITE", by_caller, Some(answer)),
        ),
        sip(
            at_us + 30_000,
            by_caller,
            d.request("ACK", cseq, by_caller, None),
        ),
    ]
}
