//! One RTP packet's audio to its leg's timeline: decoded in order by the
//! decoder for its payload type (the tail its filters still hold placed
//! across a switch or a gap), or, for a codec without a decoder or an
//! encrypted payload, silence as long as its audio.
//!
//! In: a packet of a leg, in sequence order ([`super::seq`]). Out: PCM (or
//! G.711 bytes) inserted into the leg's [`LegTimeline`]; warnings for
//! codecs that cannot be decoded.

use crate::audio::codec::{new_decoder, Codec};
use crate::audio::g711::Law;
use crate::call::tail::LastOut;
use crate::call::timeline::{Packet, PacketAudio};

use super::leg::*;
use super::{engine::*, seq::*};

pub(super) struct DecodeCtx<'a> {
    pub(super) rate: u32,
    pub(super) warnings: &'a mut Vec<String>,
    pub(super) scratch: &'a mut Vec<i16>,
    pub(super) stats: &'a mut EngineStats,
}

/// Decode one packet of `leg` (choosing the decoder for its payload type)
/// and hand the PCM to the leg's timeline.
pub(super) fn decode_and_place(
    leg: &mut Leg,
    ctx: &mut DecodeCtx<'_>,
    pkt: &InPacket,
    codec: &Codec,
    payload: &[u8],
) {
    let rate = ctx.rate;
    let need_new = leg
        .decoder
        .as_ref()
        .is_none_or(|d| d.pt != pkt.pt || d.codec != *codec);
    // What the decoder's filters still hold of the packets before, when
    // this one may not follow them at once (`call::tail`): a new decoder,
    // another stream, a timestamp that does not follow.
    let mut tail = Vec::new();
    if let Some(last) = leg.last_out {
        let same = last.ssrc == pkt.ssrc;
        if need_new || !same || last.raw_next != pkt.ts {
            if let Some(dec) = leg.decoder.as_ref().and_then(|d| d.decoder.as_ref()) {
                dec.tail(&mut tail);
            }
        }
    }
    if need_new {
        let dec = new_decoder(codec, rate);
        if dec.is_none() && !leg.warned_codecs.contains(&pkt.pt) {
            leg.warned_codecs.push(pkt.pt);
            let w = format!(
                "channel {}: codec {} (payload type {}) cannot be decoded: that audio is silence",
                leg.party.channel(),
                codec.name(),
                pkt.pt
            );
            push_warning(ctx.warnings, w);
        }
        if dec.is_some() {
            if leg.meta.codec.is_empty() {
                leg.meta.codec = codec.name().to_string();
            }
            if codec.is_wideband() && rate < 16000 {
                leg.narrowed = true;
                let w = format!(
                    "channel {}: wideband {} recorded at {} Hz (the call started narrowband)",
                    leg.party.channel(),
                    codec.name(),
                    rate
                );
                push_warning(ctx.warnings, w);
            }
        } else if leg.meta.codec.is_empty() {
            leg.meta.codec = codec.name().to_string();
        }
        if !leg.meta.codecs.iter().any(|c| c == codec.name()) {
            leg.meta.codecs.push(codec.name().to_string());
        }
        leg.decoder = Some(ActiveDecoder {
            pt: pkt.pt,
            codec: codec.clone(),
            decoder: dec,
        });
    }
    let Some(dec) = leg.decoder.as_mut().and_then(|d| d.decoder.as_mut()) else {
        // Undecodable: the old decoder's tail goes after its last packet.
        if let Some(mut last) = leg.last_out.take() {
            last.place(&mut leg.timeline, &tail);
        }
        place_silence(leg, ctx, pkt, codec, payload);
        return;
    };
    // G.711 recorded at its own rate goes to the timeline as it came (a
    // byte a sample in the hold-back window, expanded when rendered: the
    // same table as the decoder's); anything else decoded now.
    let mut law = match codec {
        Codec::Pcmu if rate == 8000 => Some(Law::Ulaw),
        Codec::Pcma if rate == 8000 => Some(Law::Alaw),
        _ => None,
    };
    let mut delay = 0;
    if law.is_none() {
        ctx.scratch.clear();
        if dec.decode(payload, ctx.scratch).is_err() {
            ctx.stats.rtp_malformed += 1;
            return;
        }
        // Resampling decoders delay their output by a known amount.
        delay = dec.delay_samples() as i64;
    }
    let len = if law.is_some() {
        payload.len()
    } else {
        ctx.scratch.len()
    };
    // Its audio in RTP ticks (whole for every codec and rate used; 0, which
    // tells nothing, if not).
    let clock_rate = codec.rtp_clock_rate();
    let ticks = len as u64 * u64::from(clock_rate);
    let ticks = if ticks % u64::from(rate) == 0 {
        u32::try_from(ticks / u64::from(rate)).unwrap_or(0)
    } else {
        0
    };
    let ts = leg
        .ts_clock
        .map(pkt.ssrc, pkt.seq, pkt.ts, ticks, len as i64, pkt.arrival);
    if let Some(last) = leg.last_out.as_mut() {
        if last.continued_by(pkt.ssrc, ts, clock_rate) {
            if need_new && !tail.is_empty() {
                // A new decoder without a gap: the old one's tail belongs
                // in this packet's first samples.
                if law.take().is_some() {
                    ctx.scratch.clear();
                    // (G.711 never fails.)
                    let _ = dec.decode(payload, ctx.scratch);
                }
                delay = super::tail::merge(ctx.scratch, &tail, delay, last.delay);
            }
        } else if !tail.is_empty() {
            // A gap: the tail goes after the packet it belongs to, and off
            // this one's start (the same decoder still held it).
            last.place(&mut leg.timeline, &tail);
            if !need_new && law.is_none() {
                super::tail::subtract(ctx.scratch, &tail);
            }
        }
    }
    let audio = match law {
        Some(law) => PacketAudio::G711(law, payload),
        None => PacketAudio::Pcm(ctx.scratch),
    };
    leg.timeline.insert(&Packet {
        arrival: pkt.arrival,
        ssrc: pkt.ssrc,
        ts,
        clock_rate,
        ticks,
        newest: pkt.newest,
        restart: pkt.restart,
        delay,
        pcm: audio,
    });
    // A packet decoded after its successor (late) leaves the decoder's
    // state to itself: the tail of the one before it was placed above.
    let after = leg
        .last_out
        .is_none_or(|l| l.before(pkt.ssrc, ts, clock_rate));
    let raw_per_tick = leg.ts_clock.ticks_per_tick();
    leg.last_out = (after && ticks != 0 && dec.holds_tail()).then_some(LastOut {
        ssrc: pkt.ssrc,
        ts_end: ts.wrapping_add(ticks),
        clock_rate,
        raw_next: pkt.ts.wrapping_add(ticks.wrapping_mul(raw_per_tick)),
        delay,
        arrival_end: pkt.arrival + len as i64,
        placed: false,
    });
}

/// A packet of a codec without a decoder still holds its time: silence as
/// long as its audio goes to the timeline at its timestamp (CONTRACT §3:
/// what is missing is silence, the channels in sync), so a call in such a
/// codec is as long as it was (before: a G.729 call alone gave a WAV of no
/// frames) and its time zero, gaps and end are those of its packets.
pub(super) fn place_silence(
    leg: &mut Leg,
    ctx: &mut DecodeCtx<'_>,
    pkt: &InPacket,
    codec: &Codec,
    payload: &[u8],
) {
    let clock = codec.rtp_clock_rate();
    // (At most 200 ms, the longest packet time in use: a packet claiming
    // more is not taken at its word.)
    let us = undecodable_frame_us(codec, payload.len()).min(200_000);
    let n = (u64::from(ctx.rate) * us / 1_000_000) as usize;
    let ticks = u32::try_from(u64::from(clock) * us / 1_000_000).unwrap_or(0);
    if n == 0 || clock == 0 {
        return;
    }
    ctx.scratch.clear();
    ctx.scratch.resize(n, 0);
    let ts = leg
        .ts_clock
        .map(pkt.ssrc, pkt.seq, pkt.ts, ticks, n as i64, pkt.arrival);
    leg.timeline.insert(&Packet {
        arrival: pkt.arrival,
        ssrc: pkt.ssrc,
        ts,
        clock_rate: clock,
        ticks,
        newest: pkt.newest,
        restart: pkt.restart,
        delay: 0,
        pcm: PacketAudio::Pcm(ctx.scratch),
    });
}

/// How much audio a payload of `len` bytes of an undecodable codec holds
/// (µs): by its frame size where RTP fixes one (RFC 3551 4.5: G.729 10
/// bytes a 10 ms frame, a 2-byte SID one; G.723.1 frames of 30 ms; G.728
/// 5 bytes a 2.5 ms; G.726 by its bit rate; iLBC 38 bytes 20 ms, 50 bytes
/// 30 ms), else (and for an encrypted payload, `len` 0) the usual 20 ms.
fn undecodable_frame_us(codec: &Codec, len: usize) -> u64 {
    let name = codec.name().to_ascii_uppercase();
    let len = len as u64;
    let per = |bytes: u64, us: u64| (len.div_ceil(bytes)).max(1) * us;
    match name.as_str() {
        _ if len == 0 => 20_000,
        "G729" | "G729A" | "G729B" | "G729AB" => per(10, 10_000),
        "G723" => 30_000 * (len / 24).max(1),
        "G728" => per(5, 2_500),
        "ILBC" if len % 50 == 0 && len > 0 => len / 50 * 30_000,
        "ILBC" => per(38, 20_000),
        n if n.starts_with("G726-") => match n[5..].parse::<u64>() {
            Ok(kbps @ 16..=40) => (len * 8 * 1000 / kbps).max(1),
            _ => 20_000,
        },
        _ => 20_000,
    }
}
