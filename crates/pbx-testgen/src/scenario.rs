//! Calls whose audio is known: SIP dialog + two RTP legs, with controlled network
//! trouble, turned into timestamped link-layer frames, and the ground truth that
//! a correct recorder must reproduce.

use std::net::{IpAddr, SocketAddr};

use crate::codec::{Encoder, TestCodec};
use crate::frame::{self, Framing};
use crate::pcap::Link;

mod sip;
use sip::{sdp, Dialog, SipFlow};

/// One party of a call.
#[derive(Debug, Clone)]
pub struct Party {
    pub ip: IpAddr,
    pub sip_port: u16,
    pub rtp_port: u16,
    pub number: String,
    pub name: String,
}

/// Sender hold: no packets between `from_ms` and `to_ms` (leg time).
#[derive(Debug, Clone, Copy)]
pub struct Hold {
    pub from_ms: u32,
    pub to_ms: u32,
    /// Whether RTP timestamps advance over the pause (false: they continue
    /// where they stopped, as some phones do).
    pub timestamps_continue: bool,
    /// Also send a re-INVITE with `a=sendonly` at `from_ms` and one with
    /// `a=sendrecv` at `to_ms`.
    pub signal: bool,
}

/// Network and sender trouble on one leg.
#[derive(Debug, Clone, Default)]
pub struct Impairments {
    /// Probability that a packet is lost.
    pub loss: f64,
    /// Probability that a packet is delivered twice.
    pub duplicate: f64,
    /// Uniform extra delay 0..jitter_ms per packet (reorders when > ptime).
    pub jitter_ms: u32,
    /// Probability that a packet is held back by 3 packet times (reordering).
    pub reorder: f64,
    /// The sender switches to a new SSRC (new sequence and timestamp bases) here.
    pub ssrc_change_at_ms: Option<u32>,
    /// Frames quieter than this RMS are not sent (silence suppression / DTX).
    pub silence_suppression_rms: Option<f64>,
    pub hold: Option<Hold>,
    /// Sender clock error in parts per million (positive: the sender's clock is
    /// slow, so packets come later than their timestamps say).
    pub drift_ppm: i32,
    /// From `.0` ms (leg time) on the sender's clock is `.1` ppm off instead
    /// of `drift_ppm` (its send times go on from where they were): a call
    /// handed from one source to another behind an SBC that keeps the SSRC
    /// and timestamps going (an IVR on a server's clock, then an agent's
    /// ATA), or a sender's oscillator disciplined mid-call.
    pub drift_change: Option<(u32, i32)>,
    /// Packets leave from this address instead of the one in the SDP (NAT).
    pub nat_source: Option<SocketAddr>,
    /// The leg sends nothing at all.
    pub mute: bool,
    /// The first `late_first_packets` delivered packets arrive this much
    /// later (a late start: the envelope, not the first packet, is the truth).
    pub late_first_ms: u32,
    pub late_first_packets: u32,
    /// Probability per packet that a burst of `burst_len` lost packets starts.
    pub loss_burst: f64,
    pub burst_len: u32,
    /// Probability per delivered packet that a stray follows it 1 ms later:
    /// the same SSRC, a sequence number a little ahead (or anywhere), a
    /// timestamp 2 s to 2^31 ticks ahead and loud noise as payload (a
    /// corrupted or injected packet). It belongs nowhere in the recording.
    pub stray: f64,
    /// The link stalls at `.0` ms for `.1` ms (an outage with a queue
    /// behind it): what would have arrived meanwhile arrives when it ends,
    /// back to back (0.1 ms apart), in order, and what comes while that
    /// queue drains waits behind it.
    pub stall: Option<(u32, u32)>,
    /// A queue on the way fills at `.0` ms for `.1` ms: what is sent then
    /// arrives `.2` ms later than it would, and drains when it ends (the
    /// packets after it wait behind the last queued one, 0.1 ms apart).
    /// The sequence numbers and timestamps go on.
    pub congestion: Option<(u32, u32, u32)>,
    /// The congestion's delay grows over its first this many ms and
    /// shrinks over its last as many (0: a step up, a drain at once).
    pub congestion_ramp_ms: u32,
    /// The first packet's sequence number and timestamp instead of random
    /// ones (a start just before the 16-bit and 32-bit wraps).
    pub rtp_start: Option<(u16, u32)>,
    /// At `.0` ms (leg time) the sender's timestamps jump by `.1` ticks
    /// (either way) while its SSRC and sequence numbers go on: a media
    /// source switched behind a constant SSRC (a transfer, a
    /// music-on-hold server, an SBC). `.2`: the first packet after it has
    /// the marker bit set (as RFC 3550 asks; some senders do not).
    pub ts_jump: Option<(u32, i32, bool)>,
    /// At `.0` ms (leg time) the sender numbers its packets afresh under
    /// the same SSRC: the sequence number goes back by `.1` and the
    /// timestamps jump by `.2` ticks (0: they go on). The first packet
    /// after it has the marker bit set.
    pub seq_restart: Option<(u32, u16, i32)>,
    /// From `.0` ms (leg time) on the sender's packet time is `.1` ms (a
    /// transcoder or a re-negotiation changing it mid-call): the timestamps
    /// go on consistently, each packet's advancing by its own length.
    pub ptime_change: Option<(u32, u32)>,
    /// The timestamps advance this many times as fast as the RTP clock says
    /// (0 or 1: as it says; 2: a G.722 sender counting at 16000 instead of
    /// RFC 3551's 8000). The audio and the send times are as usual.
    pub ts_clock_mult: u32,
    /// The sender's timer releases its packets in groups of this many
    /// (0 or 1: one by one): each leaves with the last of its group, when
    /// that one's audio is there (a VM's coarse timer: 5 packets of 20 ms
    /// every 100 ms, a sawtooth of delays).
    pub bunch: u32,
    /// The leg's SSRC instead of a random one (a B2BUA or PBX giving both
    /// legs the same SSRC). The random draws are made as usual.
    pub ssrc: Option<u32>,
    /// After every pause of silence suppression the sender starts its
    /// timestamps afresh at a random value (its SSRC and sequence numbers go
    /// on, the marker bit is set): a gateway restarting its clock at every
    /// talk spurt.
    pub ts_restart_each_spurt: bool,
    /// From `.0` ms (leg time) on the sender codes with `.1` (a mid-call
    /// switch PCMU <-> G.722; both have an RTP clock of 8000, so the
    /// timestamps go on). The leg's audio stays at its own codec's rate: a
    /// 16 kHz codec after an 8 kHz one gets each sample twice, an 8 kHz one
    /// after a 16 kHz one every other sample. The SDP offers both codecs.
    pub codec_change: Option<(u32, TestCodec)>,
    /// Every audio packet has the marker bit set (a sender that sets it
    /// always, not only at a talk spurt's start).
    pub marker_always: bool,
    /// Correlated extra delay: a queue whose depth walks between 0 and
    /// this many ms, from a random depth, each delivered packet's step
    /// uniform within an eighth of it either way, reflected at both ends
    /// (cross traffic on a busy uplink): the delay wanders for seconds and
    /// touches its floor only now and then. Drawn from a generator of its
    /// own: the other impairments' draws are those of the call without it.
    pub jitter_walk_ms: u32,
    /// Normally distributed extra delay, this standard deviation (ms)
    /// around four times it (below zero: none), each packet's drawn
    /// afresh (netem's `delay 4S S distribution normal`): no floor the
    /// packets pile up against, the least delay seen falling further the
    /// more packets come. From a generator of its own, as above.
    pub jitter_normal_ms: u32,
}

/// One leg: what one party says.
#[derive(Debug, Clone, Default)]
pub struct LegSpec {
    /// Mono audio at the codec's audio rate ([`TestCodec::audio_rate`]).
    pub audio: Vec<i16>,
    /// Delay of the first packet after the answer.
    pub start_ms: u32,
    pub impair: Impairments,
    /// RFC 4733 digits: (digit, at_ms of leg audio, duration_ms). The audio
    /// packets in that time are replaced by telephone-event packets.
    pub dtmf: Vec<(char, u32, u32)>,
    /// This leg's codec when it differs from the call's (mixed wideband and
    /// narrowband legs). Its audio is at this codec's rate.
    pub codec: Option<TestCodec>,
}

/// How SIP travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SipTransport {
    Udp,
    Tcp,
}

/// A whole call.
#[derive(Debug, Clone)]
pub struct CallSpec {
    pub call_id: String,
    pub caller: Party,
    pub callee: Party,
    pub codec: TestCodec,
    pub ptime_ms: u32,
    /// Time of the INVITE, ns since the epoch.
    pub start_ns: i64,
    /// INVITE → 200 OK.
    pub ring_ms: u32,
    pub caller_leg: LegSpec,
    pub callee_leg: LegSpec,
    /// Send a BYE at the end (else the capture just stops).
    pub bye: bool,
    pub transport: SipTransport,
    pub seed: u64,
    /// The callee answers with a 183 carrying SDP and starts sending this
    /// long before the 200 OK (early media: ring-back, announcements).
    pub early_media_ms: Option<u32>,
    /// (ms after media start, new port): the caller moves its media to a new
    /// port with a re-INVITE; the callee sends there afterwards.
    pub caller_moves_media: Option<(u32, u16)>,
}

impl CallSpec {
    /// The codec of leg `ch` (0 caller, 1 callee).
    pub fn leg_codec(&self, ch: usize) -> TestCodec {
        let leg = if ch == 0 {
            &self.caller_leg
        } else {
            &self.callee_leg
        };
        leg.codec.unwrap_or(self.codec)
    }

    fn codecs(&self) -> Vec<TestCodec> {
        let mut v = vec![self.leg_codec(0)];
        if self.leg_codec(1) != v[0] {
            v.push(self.leg_codec(1));
        }
        for leg in [&self.caller_leg, &self.callee_leg] {
            if let Some((_, c)) = leg.impair.codec_change {
                if !v.contains(&c) {
                    v.push(c);
                }
            }
        }
        v
    }

    /// A plain call between two hosts with the given audio.
    pub fn simple(
        call_id: &str,
        codec: TestCodec,
        caller_audio: Vec<i16>,
        callee_audio: Vec<i16>,
    ) -> Self {
        CallSpec {
            call_id: call_id.to_string(),
            caller: Party {
                ip: "10.0.0.1".parse().expect("literal"),
                sip_port: 5060,
                rtp_port: 40000,
                number: "1001".into(),
                name: "Alice".into(),
            },
            callee: Party {
                ip: "10.0.0.2".parse().expect("literal"),
                sip_port: 5060,
                rtp_port: 50000,
                number: "2002".into(),
                name: "Bob".into(),
            },
            codec,
            ptime_ms: 20,
            start_ns: 1_795_576_576_000_000_000,
            ring_ms: 1000,
            caller_leg: LegSpec {
                audio: caller_audio,
                ..LegSpec::default()
            },
            callee_leg: LegSpec {
                audio: callee_audio,
                ..LegSpec::default()
            },
            bye: true,
            transport: SipTransport::Udp,
            seed: 1,
            early_media_ms: None,
            caller_moves_media: None,
        }
    }
}

/// What a correct recording of the call contains.
#[derive(Debug, Clone)]
pub struct CallTruth {
    pub call_id: String,
    /// Time zero of the WAV, ns: the arrival of the first RTP packet, or
    /// when it was sent if it came late (see the engine's envelope).
    pub t0_ns: i64,
    /// Audio rate of `expected` (the higher of the two legs' rates).
    pub rate: u32,
    /// Audio rate of each leg's codec.
    pub rates: [u32; 2],
    /// Per channel (0 = caller, 1 = callee): what should be heard, on the
    /// recording's timeline, at `rate`. Lost / suppressed / held parts are zero.
    pub expected: [Vec<i16>; 2],
    /// Digits sent: (channel, digit, at_ms on the timeline, duration_ms).
    pub dtmf: Vec<(usize, char, i64, i64)>,
    /// RTP packets sent per channel (before loss).
    pub sent: [u64; 2],
    pub lost: [u64; 2],
}

/// Deterministic PRNG (SplitMix64).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A frame with its capture time.
pub type TimedFrame = (i64, Vec<u8>);

struct LegOut {
    frames: Vec<TimedFrame>,
    /// (send time of the packet in ns, position in leg audio samples, samples) for delivered audio
    delivered: Vec<(i64, usize, usize)>,
    dtmf: Vec<(i64, char, u32)>,
    sent: u64,
    lost: u64,
    first_arrival: Option<i64>,
}

#[allow(clippy::too_many_arguments)]
fn rtp_leg(
    spec: &CallSpec,
    leg: &LegSpec,
    from: &Party,
    to: &Party,
    media_start_ns: i64,
    link: Link,
    framing: &Framing,
    seed: u64,
    move_port: Option<(u32, u16)>,
    moves_src: bool,
) -> LegOut {
    let mut out = LegOut {
        frames: Vec::new(),
        delivered: Vec::new(),
        dtmf: Vec::new(),
        sent: 0,
        lost: 0,
        first_arrival: None,
    };
    if leg.impair.mute {
        return out;
    }
    let codec = leg.codec.unwrap_or(spec.codec);
    let mut rng = Rng::new(seed);
    let rate = codec.audio_rate() as usize;
    let n = rate * spec.ptime_ms as usize / 1000;
    let ts_step = codec.rtp_clock() * spec.ptime_ms / 1000;
    let ts_mult = leg.impair.ts_clock_mult.max(1);
    // Packet boundaries (start and length in leg audio samples): the call's
    // packet time, from `ptime_change`'s time on its own.
    let mut bounds: Vec<(usize, usize)> = Vec::new();
    let mut s = 0usize;
    while s < leg.audio.len() {
        let p = match leg.impair.ptime_change {
            Some((at, p)) if (s as u64 * 1000 / rate as u64) >= u64::from(at) => p,
            _ => spec.ptime_ms,
        };
        let len = rate * p as usize / 1000;
        bounds.push((s, len));
        s += len;
    }
    // Timestamp ticks from the leg's start to leg audio sample `s`.
    let ts_off = |s: usize| -> u32 {
        ((s as u64 * u64::from(codec.rtp_clock()) / rate as u64) as u32).wrapping_mul(ts_mult)
    };
    let mut enc = Encoder::for_leg(codec, &leg.audio, n);
    let src = leg
        .impair
        .nat_source
        .unwrap_or(SocketAddr::new(from.ip, from.rtp_port));
    let mut dst = SocketAddr::new(to.ip, to.rtp_port);
    let mut src = src;
    let mut ssrc = rng.next_u64() as u32;
    if let Some(s) = leg.impair.ssrc {
        ssrc = s;
    }
    let mut seq = rng.next_u64() as u16;
    let mut ts_base = rng.next_u64() as u32;
    if let Some((s0, t0)) = leg.impair.rtp_start {
        (seq, ts_base) = (s0, t0);
    }
    let mut queue_end = 0i64;
    let mut walk_rng = Rng::new(seed ^ 0x5741_4c4b_0000_0001);
    let walk_max = f64::from(leg.impair.jitter_walk_ms);
    let mut walk = walk_rng.unit() * walk_max;
    let mut ts_held: u32 = 0; // timestamps not advanced during a hold
    let mut marker = true;
    let mut ssrc_changed = false;
    let mut ts_jumped = false;
    let mut seq_restarted = false;
    let mut dtmf_done: Vec<bool> = vec![false; leg.dtmf.len()];
    let ptime_ns = i64::from(spec.ptime_ms) * 1_000_000;
    let imp = &leg.impair;
    let mut ip_id: u16 = rng.next_u64() as u16;
    let mut frame_buf = vec![0i16; n];
    let mut burst_left = 0u32;
    let mut delivered_count = 0u32;
    let mut paused = false;
    // (Its own draws: the other impairments' draws stay as they were.)
    let mut ts_rng = Rng::new(seed ^ 0x7473_7273);
    let mut enc2 = leg.impair.codec_change.map(|(_, c)| (c, Encoder::new(c)));
    for (i, &(start, n)) in bounds.iter().enumerate() {
        let t_ms = (start as u64 * 1000 / rate as u64) as u32;
        let end = (start + n).min(leg.audio.len());
        frame_buf.clear();
        frame_buf.resize(n, 0);
        frame_buf[..end - start].copy_from_slice(&leg.audio[start..end]);
        // Every frame goes through the encoder (real encoders keep state).
        let mut payload = enc.encode(&frame_buf);
        let mut pt = codec.payload_type();
        if let (Some((at, _)), Some((c2, e2))) = (imp.codec_change, enc2.as_mut()) {
            if t_ms >= at {
                let other: Vec<i16> = if c2.audio_rate() > codec.audio_rate() {
                    frame_buf.iter().flat_map(|s| [*s, *s]).collect()
                } else if c2.audio_rate() < codec.audio_rate() {
                    frame_buf.iter().step_by(2).copied().collect()
                } else {
                    frame_buf.clone()
                };
                payload = e2.encode(&other);
                pt = c2.payload_type();
            }
        }
        let nominal = (start as i128 * 1_000_000_000 / rate as i128) as i64;
        let send_ns = media_start_ns
            + i64::from(leg.start_ms) * 1_000_000
            + nominal
            + drift_offset_ns(nominal, imp);
        if let Some((at_ms, port)) = move_port {
            if send_ns >= media_start_ns + i64::from(at_ms) * 1_000_000 {
                if moves_src {
                    src.set_port(port);
                } else {
                    dst.set_port(port);
                }
            }
        }
        if let (Some(at), false) = (imp.ssrc_change_at_ms, ssrc_changed) {
            if t_ms >= at {
                ssrc_changed = true;
                ssrc = rng.next_u64() as u32;
                seq = rng.next_u64() as u16;
                ts_base = (rng.next_u64() as u32).wrapping_sub(ts_off(start));
                marker = true;
            }
        }
        if let (Some((at, ticks, mark)), false) = (imp.ts_jump, ts_jumped) {
            if t_ms >= at {
                ts_jumped = true;
                ts_base = ts_base.wrapping_add(ticks as u32);
                marker |= mark;
            }
        }
        if let (Some((at, back, ticks)), false) = (imp.seq_restart, seq_restarted) {
            if t_ms >= at {
                seq_restarted = true;
                seq = seq.wrapping_sub(back);
                ts_base = ts_base.wrapping_add(ticks as u32);
                marker = true;
            }
        }
        if let Some(h) = imp.hold {
            if t_ms >= h.from_ms && t_ms < h.to_ms {
                if !h.timestamps_continue {
                    ts_held = ts_held.wrapping_add(ts_off(start + n).wrapping_sub(ts_off(start)));
                }
                marker = true;
                continue;
            }
        }
        let ts = ts_base.wrapping_add(ts_off(start)).wrapping_sub(ts_held);
        // DTMF replaces the audio of its window.
        let mut in_dtmf = None;
        for (k, (d, at, dur)) in leg.dtmf.iter().enumerate() {
            if t_ms >= *at && t_ms < at + dur {
                in_dtmf = Some((k, *d, *at, *dur));
            }
        }
        if let Some((k, digit, at, dur)) = in_dtmf {
            let ev = crate::codec::dtmf_event(digit);
            let ev_ts = ts_base
                .wrapping_add((at / spec.ptime_ms).wrapping_mul(ts_step))
                .wrapping_sub(ts_held);
            let elapsed = (t_ms - at + spec.ptime_ms).min(dur);
            let last = t_ms + spec.ptime_ms >= at + dur;
            let duration = (elapsed * codec.rtp_clock() / 1000) as u16;
            let te = [
                ev,
                if last { 0x80 | 10 } else { 10 },
                (duration >> 8) as u8,
                duration as u8,
            ];
            if !dtmf_done[k] {
                dtmf_done[k] = true;
                out.dtmf.push((send_ns, digit, dur));
            }
            let reps = if last { 3 } else { 1 };
            for r in 0..reps {
                let pkt = rtp_packet(101, marker && r == 0, seq, ev_ts, ssrc, &te);
                seq = seq.wrapping_add(1);
                ip_id = ip_id.wrapping_add(1);
                for f in frame::udp_frames(link, framing, src, dst, &pkt, ip_id) {
                    out.frames.push((send_ns + r * 1000, f));
                }
            }
            marker = false;
            continue;
        }
        if let Some(th) = imp.silence_suppression_rms {
            let rms =
                (frame_buf.iter().map(|s| f64::from(*s).powi(2)).sum::<f64>() / n as f64).sqrt();
            if rms < th {
                marker = true;
                paused = true;
                continue;
            }
        }
        let mut ts = ts;
        if imp.ts_restart_each_spurt && paused {
            ts_base = (ts_rng.next_u64() as u32)
                .wrapping_sub(ts_off(start))
                .wrapping_add(ts_held);
            ts = ts_base.wrapping_add(ts_off(start)).wrapping_sub(ts_held);
            marker = true;
        }
        paused = false;
        let pkt = rtp_packet(pt, marker || imp.marker_always, seq, ts, ssrc, &payload);
        marker = false;
        seq = seq.wrapping_add(1);
        out.sent += 1;
        if burst_left == 0 && imp.loss_burst > 0.0 && rng.unit() < imp.loss_burst {
            burst_left = imp.burst_len;
        }
        if burst_left > 0 {
            burst_left -= 1;
            out.lost += 1;
            continue;
        }
        if rng.unit() < imp.loss {
            out.lost += 1;
            continue;
        }
        let mut arrival = send_ns;
        if imp.bunch > 1 {
            // Leaves with the last packet of its group.
            let behind = i64::from(imp.bunch - 1 - i as u32 % imp.bunch);
            arrival += behind * (n as i64 * 1_000_000_000 / rate as i64);
        }
        if delivered_count < imp.late_first_packets {
            arrival += i64::from(imp.late_first_ms) * 1_000_000;
        }
        delivered_count += 1;
        if imp.jitter_ms > 0 {
            arrival += (rng.unit() * f64::from(imp.jitter_ms) * 1e6) as i64;
        }
        if leg.impair.jitter_normal_ms > 0 {
            // Box-Muller.
            let (a, b) = (walk_rng.unit().max(1e-300), walk_rng.unit());
            let z = (-2.0 * a.ln()).sqrt() * (2.0 * std::f64::consts::PI * b).cos();
            let sigma = f64::from(leg.impair.jitter_normal_ms);
            arrival += ((4.0 * sigma + z * sigma).max(0.0) * 1e6) as i64;
        }
        if walk_max > 0.0 {
            walk += (walk_rng.unit() * 2.0 - 1.0) * walk_max / 8.0;
            walk = walk.abs();
            if walk > walk_max {
                walk = 2.0 * walk_max - walk;
            }
            arrival += (walk * 1e6) as i64;
        }
        if rng.unit() < imp.reorder {
            arrival += 3 * ptime_ns;
        }
        if let Some((at, len)) = imp.stall {
            // One queue: what comes while it drains waits behind it.
            let from = media_start_ns + i64::from(at) * 1_000_000;
            let drained = (media_start_ns + i64::from(at + len) * 1_000_000).max(queue_end);
            if (from..drained).contains(&arrival) {
                arrival = drained;
                queue_end = drained + 100_000;
            }
        }
        if let Some((at, len, extra)) = imp.congestion {
            let from = media_start_ns + i64::from(at) * 1_000_000;
            let to = from + i64::from(len) * 1_000_000;
            if (from..to).contains(&send_ns) {
                // (Ramped: up from the start, down to the end, first in
                // first out all the way.)
                let ramp = i64::from(imp.congestion_ramp_ms) * 1_000_000;
                let edge = (send_ns - from).min(to - send_ns);
                let extra = i64::from(extra) * 1_000_000;
                arrival += if edge < ramp {
                    extra * edge / ramp
                } else {
                    extra
                };
                if arrival <= queue_end {
                    arrival = queue_end + 100_000;
                }
                queue_end = queue_end.max(arrival);
            } else if send_ns >= to && arrival <= queue_end {
                arrival = queue_end + 100_000;
                queue_end = arrival;
            }
        }
        ip_id = ip_id.wrapping_add(1);
        for f in frame::udp_frames(link, framing, src, dst, &pkt, ip_id) {
            out.frames.push((arrival, f.clone()));
            if rng.unit() < imp.duplicate {
                out.frames.push((arrival + 2_000_000, f));
            }
        }
        // (No draw without strays: the other impairments' draws stay as they were.)
        if imp.stray > 0.0 && rng.unit() < imp.stray {
            let r = rng.next_u64();
            let stray_seq = if r & 1 == 0 {
                seq.wrapping_add(1 + (r >> 8) as u16 % 20)
            } else {
                (r >> 8) as u16
            };
            let ahead = 2 * codec.rtp_clock() + (r >> 32) as u32 % (1 << 31);
            let noise: Vec<u8> = (0..payload.len()).map(|_| rng.next_u64() as u8).collect();
            let stray = rtp_packet(
                codec.payload_type(),
                false,
                stray_seq,
                ts.wrapping_add(ahead),
                ssrc,
                &noise,
            );
            ip_id = ip_id.wrapping_add(1);
            for f in frame::udp_frames(link, framing, src, dst, &stray, ip_id) {
                out.frames.push((arrival + 1_000_000, f));
            }
        }
        out.first_arrival = Some(out.first_arrival.map_or(arrival, |a: i64| a.min(arrival)));
        out.delivered.push((send_ns, start, end - start));
    }
    out
}

/// RTP header + payload.
pub fn rtp_packet(pt: u8, marker: bool, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(12 + payload.len());
    p.push(0x80);
    p.push(pt | if marker { 0x80 } else { 0 });
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// Frames of one call (unsorted) and its truth.
pub fn generate_call(
    spec: &CallSpec,
    link: Link,
    framing: &Framing,
) -> (Vec<TimedFrame>, CallTruth) {
    let mut frames: Vec<TimedFrame> = Vec::new();
    let transport = match spec.transport {
        SipTransport::Udp => "UDP",
        SipTransport::Tcp => "TCP",
    };
    let d = Dialog { spec, transport };
    let mut flow = SipFlow {
        link,
        framing: framing.clone(),
        transport: spec.transport,
        caller: SocketAddr::new(spec.caller.ip, spec.caller.sip_port),
        callee: SocketAddr::new(spec.callee.ip, spec.callee.sip_port),
        seq: [1000 + spec.seed as u32, 5000 + spec.seed as u32],
        ip_id: spec.seed as u16,
        rng: Rng::new(spec.seed ^ 0x5151),
    };
    let t = spec.start_ns;
    let ms = 1_000_000i64;
    flow.handshake(&mut frames, t);
    let codecs = spec.codecs();
    let offer = sdp(&spec.caller, spec.caller.rtp_port, &codecs, "sendrecv", 1);
    let invite = d.request(
        "INVITE",
        1,
        true,
        false,
        &format!("inv{}", spec.seed),
        Some(&offer),
    );
    flow.send(&mut frames, t, true, &invite);
    flow.send(
        &mut frames,
        t + 5 * ms,
        false,
        &d.response(100, "Trying", &invite, false, None),
    );
    flow.send(
        &mut frames,
        t + 50 * ms,
        false,
        &d.response(180, "Ringing", &invite, true, None),
    );
    let answer_ns = t + i64::from(spec.ring_ms) * ms;
    let answer = sdp(&spec.callee, spec.callee.rtp_port, &codecs, "sendrecv", 1);
    let mut callee_media_start = answer_ns + 20 * ms;
    if let Some(early) = spec.early_media_ms {
        let at = answer_ns - i64::from(early) * ms;
        flow.send(
            &mut frames,
            at,
            false,
            &d.response(183, "Session Progress", &invite, true, Some(&answer)),
        );
        callee_media_start = at + 20 * ms;
    }
    flow.send(
        &mut frames,
        answer_ns,
        false,
        &d.response(200, "OK", &invite, true, Some(&answer)),
    );
    flow.send(
        &mut frames,
        answer_ns + 10 * ms,
        true,
        &d.request("ACK", 1, true, true, &format!("ack{}", spec.seed), None),
    );

    let media_start = answer_ns + 20 * ms;
    let legs = [
        rtp_leg(
            spec,
            &spec.caller_leg,
            &spec.caller,
            &spec.callee,
            media_start,
            link,
            framing,
            spec.seed.wrapping_mul(31).wrapping_add(7),
            spec.caller_moves_media,
            true,
        ),
        rtp_leg(
            spec,
            &spec.callee_leg,
            &spec.callee,
            &spec.caller,
            callee_media_start,
            link,
            framing,
            spec.seed.wrapping_mul(37).wrapping_add(11),
            spec.caller_moves_media.map(|(at, p)| {
                let shift = (media_start - callee_media_start) / ms;
                ((i64::from(at) + shift).max(0) as u32, p)
            }),
            false,
        ),
    ];
    let mut cseq = 2;
    if let Some((at, port)) = spec.caller_moves_media {
        let at_ns = media_start + i64::from(at) * ms - 5 * ms;
        let body = sdp(&spec.caller, port, &codecs, "sendrecv", 2);
        let req = d.request(
            "INVITE",
            cseq,
            true,
            true,
            &format!("mv{}", spec.seed),
            Some(&body),
        );
        let ans = sdp(&spec.callee, spec.callee.rtp_port, &codecs, "sendrecv", 2);
        flow.send(&mut frames, at_ns, true, &req);
        flow.send(
            &mut frames,
            at_ns + 2 * ms,
            false,
            &d.response(200, "OK", &req, true, Some(&ans)),
        );
        flow.send(
            &mut frames,
            at_ns + 3 * ms,
            true,
            &d.request(
                "ACK",
                cseq,
                true,
                true,
                &format!("mvack{}", spec.seed),
                None,
            ),
        );
        cseq += 1;
    }

    // Hold signalling (re-INVITE from the holding party).
    for (ch, leg) in [&spec.caller_leg, &spec.callee_leg].iter().enumerate() {
        if let Some(h) = leg.impair.hold.filter(|h| h.signal) {
            let from_caller = ch == 0;
            let me = if from_caller {
                &spec.caller
            } else {
                &spec.callee
            };
            let other = if from_caller {
                &spec.callee
            } else {
                &spec.caller
            };
            for (at, dir, back, v) in [
                (h.from_ms, "sendonly", "recvonly", 2),
                (h.to_ms, "sendrecv", "sendrecv", 3),
            ] {
                let at_ns = media_start + i64::from(leg.start_ms + at) * ms - 5 * ms;
                let body = sdp(me, me.rtp_port, &codecs, dir, v);
                let req = d.request(
                    "INVITE",
                    cseq,
                    from_caller,
                    true,
                    &format!("re{}x{}", spec.seed, cseq),
                    Some(&body),
                );
                let ans = sdp(other, other.rtp_port, &codecs, back, v);
                flow.send(&mut frames, at_ns, from_caller, &req);
                let resp = d.response(200, "OK", &req, true, Some(&ans));
                flow.send(&mut frames, at_ns + 2 * ms, !from_caller, &resp);
                cseq += 1;
            }
        }
    }

    let rates = [
        spec.leg_codec(0).audio_rate(),
        spec.leg_codec(1).audio_rate(),
    ];
    let rate = rates[0].max(rates[1]);
    // Time zero: the first RTP packet's arrival, or where the envelope puts
    // it if it was itself late (its send time: the generator's least delay
    // is 0), by at most the recorder's 500 ms jitter window.
    let first_arrival = legs
        .iter()
        .filter_map(|l| l.first_arrival)
        .min()
        .unwrap_or(media_start);
    let first_send = legs
        .iter()
        .filter_map(|l| l.delivered.iter().map(|d| d.0).min())
        .min()
        .unwrap_or(first_arrival);
    let t0 = first_send.clamp(first_arrival - 500_000_000, first_arrival);
    let mut expected: [Vec<i16>; 2] = [Vec::new(), Vec::new()];
    let mut dtmf = Vec::new();
    let mut end_ns = media_start;
    for (ch, (l, spec_leg)) in legs
        .iter()
        .zip([&spec.caller_leg, &spec.callee_leg])
        .enumerate()
    {
        for (send_ns, start, len) in &l.delivered {
            let pos = ((send_ns - t0) as i128 * i128::from(rate) / 1_000_000_000) as i64;
            // A narrowband leg in a wideband truth: each sample twice.
            let factor = (rate / rates[ch]) as usize;
            let end = pos + (len * factor) as i64;
            if end <= 0 {
                continue;
            }
            let e = &mut expected[ch];
            if e.len() < end as usize {
                e.resize(end as usize, 0);
            }
            // Samples before time zero (a first packet that came late) are
            // not on the timeline.
            for (i, v) in spec_leg.audio[*start..start + len].iter().enumerate() {
                for k in 0..factor {
                    let at = pos + (i * factor + k) as i64;
                    if at >= 0 {
                        e[at as usize] = *v;
                    }
                }
            }
        }
        for (send_ns, digit, dur) in &l.dtmf {
            dtmf.push((ch, *digit, (send_ns - t0) / ms, i64::from(*dur)));
        }
        if let Some(last) = l.frames.iter().map(|f| f.0).max() {
            end_ns = end_ns.max(last);
        }
    }
    let n = expected[0].len().max(expected[1].len());
    expected[0].resize(n, 0);
    expected[1].resize(n, 0);
    for l in &legs {
        frames.extend(l.frames.iter().cloned());
    }
    if spec.bye {
        let bye = d.request("BYE", cseq, true, true, &format!("bye{}", spec.seed), None);
        let bye_ns = end_ns + 200 * ms;
        flow.send(&mut frames, bye_ns, true, &bye);
        flow.send(
            &mut frames,
            bye_ns + 5 * ms,
            false,
            &d.response(200, "OK", &bye, true, None),
        );
    }
    let truth = CallTruth {
        call_id: spec.call_id.clone(),
        t0_ns: t0,
        rate,
        rates,
        expected,
        dtmf,
        sent: [legs[0].sent, legs[1].sent],
        lost: [legs[0].lost, legs[1].lost],
    };
    (frames, truth)
}

/// Frames of several calls, in capture order, and their truths.
/// How far a leg's sender clock has run off by `nominal` ns of its audio
/// ([`Impairments::drift_ppm`], [`Impairments::drift_change`]).
fn drift_offset_ns(nominal: i64, imp: &Impairments) -> i64 {
    let ppm = |ns: i64, ppm: i32| ns * i64::from(ppm) / 1_000_000;
    match imp.drift_change {
        Some((at_ms, to)) if nominal > i64::from(at_ms) * 1_000_000 => {
            let at = i64::from(at_ms) * 1_000_000;
            ppm(at, imp.drift_ppm) + ppm(nominal - at, to)
        }
        _ => ppm(nominal, imp.drift_ppm),
    }
}

pub fn generate(
    calls: &[CallSpec],
    link: Link,
    framing: &Framing,
) -> (Vec<TimedFrame>, Vec<CallTruth>) {
    let mut all = Vec::new();
    let mut truths = Vec::new();
    for c in calls {
        let (f, t) = generate_call(c, link, framing);
        all.extend(f);
        truths.push(t);
    }
    all.sort_by_key(|f| f.0);
    (all, truths)
}
