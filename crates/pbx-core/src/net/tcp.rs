//! TCP reassembly: segments of one direction → the stream's bytes, in order, once.
//!
//! Each direction (source socket, destination socket) is its own flow. Sequence
//! numbers are turned into 64-bit stream offsets relative to the next expected
//! byte (a signed 32-bit difference), so u32 wrap-around needs no special case.
//! A flow starts at its SYN, or at the first data segment seen when the capture
//! begins mid-stream (that first delivery is marked as a gap: the consumer has
//! to find a message boundary).
//!
//! - In-order data is delivered straight from the caller's frame (no copy).
//! - Retransmitted and overlapping bytes are delivered once: the part already
//!   delivered is trimmed off.
//! - Out-of-order data is copied into a per-flow buffer ordered by offset and
//!   released as soon as the hole before it is filled.
//! - A hole that will not be filled is skipped and the next delivery carries
//!   `tcp_gap: true`: when the flow's buffer (or the global buffer) would exceed
//!   its cap, when the hole is older than `tcp_hole_timeout`, when a segment is
//!   more than `tcp_resync_window` bytes away from the expected position (the
//!   sender restarted, or the port was reused), and on RST, expiry and
//!   [`super::NetDecoder::finish`].
//! - FIN ends the flow once every byte before it was delivered; RST ends it at
//!   once. An ended flow keeps no buffers, only a small record of where its
//!   stream ended, so that late retransmissions are recognised as such; that
//!   record goes after `tcp_closed_linger`, or when a new SYN or new data reopens
//!   the flow.
//! - Idle flows expire after `tcp_idle_timeout`; when `max_tcp_flows` is
//!   reached, ended and idle flows go first, then the least recently active.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;

use super::{NetLimits, NetStats, Segment, Transport};
use crate::Timestamp;

pub(super) type FlowKey = (SocketAddr, SocketAddr);

#[derive(Debug, Clone, Copy, Default)]
pub(super) struct TcpFlags {
    pub syn: bool,
    pub fin: bool,
    pub rst: bool,
}

#[derive(Debug)]
struct Chunk {
    ts: Timestamp,
    data: Vec<u8>,
}

#[derive(Debug)]
struct Flow {
    /// Sequence number of stream offset 0.
    isn: u32,
    /// Stream offset of the next byte to deliver.
    next: u64,
    /// Out-of-order data by stream offset.
    ooo: BTreeMap<u64, Chunk>,
    ooo_bytes: usize,
    /// Since when the hole before the first buffered chunk has been open.
    hole_since: Timestamp,
    last_seen: Timestamp,
    last_emit: Timestamp,
    /// The next delivery follows lost bytes.
    pending_gap: bool,
    /// Stream offset of the FIN.
    fin_at: Option<u64>,
    closed: bool,
}

impl Flow {
    fn new(isn: u32, ts: Timestamp, pending_gap: bool) -> Flow {
        Flow {
            isn,
            next: 0,
            ooo: BTreeMap::new(),
            ooo_bytes: 0,
            hole_since: ts,
            last_seen: ts,
            last_emit: ts,
            pending_gap,
            fin_at: None,
            closed: false,
        }
    }

    /// Stream offset of sequence number `seq` (negative: before the stream start).
    fn pos_of(&self, seq: u32) -> i64 {
        let next_seq = self.isn.wrapping_add(self.next as u32);
        let d = i64::from(seq.wrapping_sub(next_seq) as i32);
        self.next as i64 + d
    }
}

/// What every flow operation needs besides the flow itself.
struct Ctx<'a> {
    key: FlowKey,
    limits: &'a NetLimits,
    stats: &'a mut NetStats,
    buffered_total: &'a mut usize,
}

#[derive(Debug, Default)]
pub(super) struct TcpReassembler {
    flows: HashMap<FlowKey, Flow>,
    /// Flows that hold out-of-order data (checked for hole timeouts).
    holey: HashSet<FlowKey>,
    buffered_total: usize,
}

impl TcpReassembler {
    pub fn flow_count(&self) -> usize {
        self.flows.len()
    }

    pub fn buffered_bytes(&self) -> usize {
        self.buffered_total
    }

    /// One TCP segment of direction `key`.
    #[allow(clippy::too_many_arguments)]
    pub fn segment(
        &mut self,
        ts: Timestamp,
        key: FlowKey,
        seq: u32,
        flags: TcpFlags,
        payload: &[u8],
        limits: &NetLimits,
        stats: &mut NetStats,
        out: &mut dyn FnMut(&Segment<'_>),
    ) {
        let data_seq = if flags.syn { seq.wrapping_add(1) } else { seq };
        // Find the flow, or start one.
        let fresh = match self.flows.get(&key) {
            None if flags.syn || !payload.is_empty() => {
                // Without a SYN the stream is picked up in the middle.
                Some(!flags.syn)
            }
            None => return,
            Some(f) if flags.syn && (f.closed || f.isn != data_seq) => {
                // A new connection on the same addresses: the old stream ends here.
                let delivered = f.next > 0 || !f.ooo.is_empty();
                self.end_flow(key, limits, stats, out);
                Some(delivered)
            }
            Some(_) => None,
        };
        if let Some(pending_gap) = fresh {
            if self.flows.len() >= limits.max_tcp_flows.max(1) {
                self.make_room(ts, limits, stats, out);
            }
            if self.flows.len() >= limits.max_tcp_flows.max(1) {
                stats.tcp_flows_evicted += 1;
                return;
            }
            if pending_gap {
                stats.tcp_gaps += 1;
            }
            stats.tcp_flows += 1;
            self.flows.insert(key, Flow::new(data_seq, ts, pending_gap));
        }
        let Some(flow) = self.flows.get_mut(&key) else {
            return;
        };
        let mut ctx = Ctx {
            key,
            limits,
            stats,
            buffered_total: &mut self.buffered_total,
        };
        let had_hole = !flow.ooo.is_empty();
        flow.last_seen = ts;

        if flow.closed {
            if payload.is_empty() {
                return;
            }
            let pos = flow.pos_of(data_seq);
            let next = flow.next as i64;
            let window = i64::from(limits.tcp_resync_window);
            if pos + payload.len() as i64 <= next && next - pos <= window {
                ctx.stats.tcp_retransmits += 1;
                return;
            }
            // New data after the end: a new stream without a visible SYN.
            *flow = Flow::new(data_seq, ts, true);
            ctx.stats.tcp_gaps += 1;
        }

        check_hole_timeout(flow, ts, &mut ctx, out);
        if !payload.is_empty() {
            accept(flow, ts, data_seq, payload, &mut ctx, out);
        }
        if flags.fin {
            let end = flow.pos_of(data_seq) + payload.len() as i64;
            if end >= 0 {
                flow.fin_at = Some(end as u64);
            }
        }
        if flags.rst {
            flush_all(flow, &mut ctx, out);
            flow.closed = true;
        }
        maybe_close(flow);
        let has_hole = !flow.ooo.is_empty();
        if has_hole != had_hole {
            if has_hole {
                self.holey.insert(key);
            } else {
                self.holey.remove(&key);
            }
        }
    }

    /// Skips holes older than the timeout.
    pub fn check_holes(
        &mut self,
        now: Timestamp,
        limits: &NetLimits,
        stats: &mut NetStats,
        out: &mut dyn FnMut(&Segment<'_>),
    ) {
        let flows = &mut self.flows;
        let buffered_total = &mut self.buffered_total;
        self.holey.retain(|key| {
            let Some(flow) = flows.get_mut(key) else {
                return false;
            };
            let mut ctx = Ctx {
                key: *key,
                limits,
                stats: &mut *stats,
                buffered_total: &mut *buffered_total,
            };
            check_hole_timeout(flow, now, &mut ctx, out);
            maybe_close(flow);
            !flow.ooo.is_empty()
        });
    }

    /// Ends flows idle too long and forgets ended flows after their linger time.
    pub fn expire_idle(
        &mut self,
        now: Timestamp,
        limits: &NetLimits,
        stats: &mut NetStats,
        out: &mut dyn FnMut(&Segment<'_>),
    ) {
        let idle = limits.tcp_idle_timeout_us();
        let linger = limits.tcp_closed_linger_us();
        let holey = &mut self.holey;
        let buffered_total = &mut self.buffered_total;
        self.flows.retain(|key, flow| {
            let age = now.micros_since(flow.last_seen);
            if flow.closed {
                return age < linger;
            }
            if age < idle {
                return true;
            }
            let mut ctx = Ctx {
                key: *key,
                limits,
                stats: &mut *stats,
                buffered_total: &mut *buffered_total,
            };
            flush_all(flow, &mut ctx, out);
            ctx.stats.tcp_flows_expired += 1;
            holey.remove(key);
            false
        });
    }

    /// Delivers everything still buffered (skipping holes) and forgets all flows.
    pub fn finish(
        &mut self,
        limits: &NetLimits,
        stats: &mut NetStats,
        out: &mut dyn FnMut(&Segment<'_>),
    ) {
        let buffered_total = &mut self.buffered_total;
        for (key, flow) in self.flows.iter_mut() {
            let mut ctx = Ctx {
                key: *key,
                limits,
                stats: &mut *stats,
                buffered_total: &mut *buffered_total,
            };
            flush_all(flow, &mut ctx, out);
        }
        self.flows.clear();
        self.holey.clear();
        self.buffered_total = 0;
    }

    /// Flushes and removes one flow.
    fn end_flow(
        &mut self,
        key: FlowKey,
        limits: &NetLimits,
        stats: &mut NetStats,
        out: &mut dyn FnMut(&Segment<'_>),
    ) {
        if let Some(mut flow) = self.flows.remove(&key) {
            let mut ctx = Ctx {
                key,
                limits,
                stats,
                buffered_total: &mut self.buffered_total,
            };
            flush_all(&mut flow, &mut ctx, out);
        }
        self.holey.remove(&key);
    }

    /// The flow table is full: drop ended and idle flows, then the least
    /// recently active eighth.
    fn make_room(
        &mut self,
        now: Timestamp,
        limits: &NetLimits,
        stats: &mut NetStats,
        out: &mut dyn FnMut(&Segment<'_>),
    ) {
        self.flows.retain(|_, f| !f.closed);
        self.expire_idle(now, limits, stats, out);
        let cap = limits.max_tcp_flows.max(1);
        if self.flows.len() < cap {
            return;
        }
        let mut seen: Vec<Timestamp> = self.flows.values().map(|f| f.last_seen).collect();
        let nth = (seen.len() / 8).min(seen.len().saturating_sub(1));
        let (_, &mut threshold, _) = seen.select_nth_unstable(nth);
        let holey = &mut self.holey;
        let buffered_total = &mut self.buffered_total;
        self.flows.retain(|key, flow| {
            if flow.last_seen > threshold {
                return true;
            }
            let mut ctx = Ctx {
                key: *key,
                limits,
                stats: &mut *stats,
                buffered_total: &mut *buffered_total,
            };
            flush_all(flow, &mut ctx, out);
            ctx.stats.tcp_flows_evicted += 1;
            holey.remove(key);
            false
        });
    }
}

/// Hands bytes to the consumer.
fn deliver(
    flow: &mut Flow,
    ts: Timestamp,
    data: &[u8],
    ctx: &mut Ctx<'_>,
    out: &mut dyn FnMut(&Segment<'_>),
) {
    if data.is_empty() {
        return;
    }
    let gap = std::mem::take(&mut flow.pending_gap);
    let ts = ts.max(flow.last_emit);
    flow.last_emit = ts;
    ctx.stats.tcp_bytes += data.len() as u64;
    out(&Segment {
        ts,
        src: ctx.key.0,
        dst: ctx.key.1,
        transport: Transport::Tcp,
        payload: data,
        tcp_gap: gap,
    });
}

/// Data starting at sequence number `seq`.
fn accept(
    flow: &mut Flow,
    ts: Timestamp,
    seq: u32,
    payload: &[u8],
    ctx: &mut Ctx<'_>,
    out: &mut dyn FnMut(&Segment<'_>),
) {
    let len = payload.len() as i64;
    let window = i64::from(ctx.limits.tcp_resync_window);
    // Terminates: every pass returns, or shrinks the buffer, or leaves the data
    // in order for the next pass.
    loop {
        let pos = flow.pos_of(seq);
        let next = flow.next as i64;
        if (pos - next).abs() > window {
            // Far from where the stream is: it restarted. Resynchronise here.
            flush_all(flow, ctx, out);
            flow.isn = seq;
            flow.next = 0;
            flow.fin_at = None;
            if !flow.pending_gap {
                flow.pending_gap = true;
                ctx.stats.tcp_gaps += 1;
            }
            continue;
        }
        let end = pos + len;
        if end <= next {
            ctx.stats.tcp_retransmits += 1;
            return;
        }
        if pos <= next {
            let skip = (next - pos) as usize;
            deliver(flow, ts, payload.get(skip..).unwrap_or(&[]), ctx, out);
            flow.next = end as u64;
            drain(flow, ctx, out);
            return;
        }
        // Ahead of the stream: keep it for later.
        let (upos, uend) = (pos as u64, end as u64);
        if let Some((&k, c)) = flow.ooo.range(..=upos).next_back() {
            if k + c.data.len() as u64 >= uend {
                ctx.stats.tcp_retransmits += 1;
                return;
            }
        }
        let fits = flow.ooo_bytes + payload.len() <= ctx.limits.max_tcp_ooo_bytes
            && *ctx.buffered_total + payload.len() <= ctx.limits.max_tcp_ooo_total;
        if !fits {
            if flow.ooo.is_empty() {
                // Nothing to wait for that would fit: skip straight to this data.
                flow.next = upos;
                flow.pending_gap = true;
                ctx.stats.tcp_gaps += 1;
            } else {
                skip_first_hole(flow, ctx, out);
            }
            continue;
        }
        // Chunks the new one covers completely are replaced by it.
        let covered: Vec<u64> = flow
            .ooo
            .range(upos..uend)
            .filter(|(k, c)| *k + c.data.len() as u64 <= uend)
            .map(|(k, _)| *k)
            .collect();
        for k in covered {
            if let Some(c) = flow.ooo.remove(&k) {
                flow.ooo_bytes -= c.data.len();
                *ctx.buffered_total -= c.data.len();
            }
        }
        if flow.ooo.is_empty() {
            flow.hole_since = ts;
        }
        ctx.stats.tcp_out_of_order += 1;
        flow.ooo_bytes += payload.len();
        *ctx.buffered_total += payload.len();
        flow.ooo.insert(
            upos,
            Chunk {
                ts,
                data: payload.to_vec(),
            },
        );
        return;
    }
}

/// Releases buffered chunks that the stream has reached.
fn drain(flow: &mut Flow, ctx: &mut Ctx<'_>, out: &mut dyn FnMut(&Segment<'_>)) {
    while let Some(entry) = flow.ooo.first_entry() {
        let k = *entry.key();
        if k > flow.next {
            flow.hole_since = entry.get().ts;
            return;
        }
        let chunk = entry.remove();
        flow.ooo_bytes -= chunk.data.len();
        *ctx.buffered_total -= chunk.data.len();
        let end = k + chunk.data.len() as u64;
        if end <= flow.next {
            continue;
        }
        let skip = (flow.next - k) as usize;
        deliver(
            flow,
            chunk.ts,
            chunk.data.get(skip..).unwrap_or(&[]),
            ctx,
            out,
        );
        flow.next = end;
    }
}

/// Gives up on the bytes missing before the first buffered chunk.
fn skip_first_hole(flow: &mut Flow, ctx: &mut Ctx<'_>, out: &mut dyn FnMut(&Segment<'_>)) {
    let Some((&k, _)) = flow.ooo.first_key_value() else {
        return;
    };
    if k > flow.next {
        flow.next = k;
        flow.pending_gap = true;
        ctx.stats.tcp_gaps += 1;
    }
    drain(flow, ctx, out);
}

fn flush_all(flow: &mut Flow, ctx: &mut Ctx<'_>, out: &mut dyn FnMut(&Segment<'_>)) {
    while !flow.ooo.is_empty() {
        skip_first_hole(flow, ctx, out);
    }
}

fn check_hole_timeout(
    flow: &mut Flow,
    now: Timestamp,
    ctx: &mut Ctx<'_>,
    out: &mut dyn FnMut(&Segment<'_>),
) {
    let timeout = ctx.limits.tcp_hole_timeout_us();
    while !flow.ooo.is_empty() && now.micros_since(flow.hole_since) >= timeout {
        skip_first_hole(flow, ctx, out);
    }
}

fn maybe_close(flow: &mut Flow) {
    if let Some(fin) = flow.fin_at {
        if flow.next >= fin && flow.ooo.is_empty() {
            flow.closed = true;
        }
    }
}
