//! The SIPREC engine thread: SIP messages and media batches → the call
//! engine → recordings; reloads and stops applied between inputs; the
//! status report published.

use super::*;

/// What the engine thread publishes to the status snapshot.
pub(super) struct Report {
    pub(super) status: SharedStatus,
    /// SIP messages the engine missed because its queue was full.
    pub(super) drops: Arc<AtomicI64>,
    pub(super) media: Arc<MediaCounters>,
    pub(super) listen: String,
    /// "siprec", or the name of a draining instance.
    pub(super) name: Arc<Mutex<String>>,
    /// SIP input refused ([`crate::sources::siprec::guard`]).
    pub(super) guard: Arc<GuardCounters>,
}

impl Report {
    pub(super) fn name(&self) -> String {
        self.name
            .lock()
            .map(|n| n.clone())
            .unwrap_or_else(|_| "siprec".into())
    }
}

/// The engine thread: runs until every sender (SIP task, media thread) is
/// gone, then closes every open call as cut by shutdown (calls answered
/// whose audio never came become empty recordings, cut by shutdown too).
/// It sleeps until input comes or the engine's next deadline
/// ([`EngineHost::wait`]): no wake-ups while no call is in progress.
pub(super) fn engine_loop(
    engine_cfg: EngineConfig,
    out: RecordingDir,
    rx: std_mpsc::Receiver<EngineInput>,
    live: Arc<Liveness>,
    report: Report,
    recycler: Recycler,
    durable: mpsc::UnboundedSender<Control>,
) {
    let mut host = EngineHost::new(&report.name(), engine_cfg, out, live);
    // BYEs waiting for their call's recording, by Call-ID.
    let mut byes: HashMap<String, Vec<DialogId>> = HashMap::new();
    loop {
        let got = match host.wait(now()) {
            Some(d) => rx.recv_timeout(d),
            None => {
                host.idle();
                rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
            }
        };
        let input = match got {
            Ok(EngineInput::DialogEnded {
                call_id,
                reason,
                bye,
            }) => {
                host.out.end_answered(&call_id, reason);
                if let Some(d) = bye {
                    if host.out.is_recording(&call_id) {
                        byes.entry(call_id).or_default().push(d);
                    } else {
                        let _ = durable.send(Control::ByeDurable(d));
                    }
                }
                true
            }
            Ok(input) => {
                handle_input(&mut host, input, &recycler);
                true
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        host.rename(&report.name());
        if host.tick(now(), input) {
            publish(&host, &report);
        }
        // Pairs made durable by this input or tick: their BYEs are answered.
        for call_id in host.out.take_closed() {
            if host.out.is_recording(&call_id) {
                continue;
            }
            for d in byes.remove(&call_id).unwrap_or_default() {
                let _ = durable.send(Control::ByeDurable(d));
            }
        }
    }
    host.finish(EndReason::Shutdown);
    host.out.finish_answered("shutdown");
    publish(&host, &report);
    let name = report.name();
    if name != "siprec" {
        // A drained instance: its calls are recorded, its entry goes.
        if let Ok(mut s) = report.status.lock() {
            s.sources.remove(&name);
        }
    }
}

pub(super) fn handle_input(host: &mut EngineHost, input: EngineInput, recycler: &Recycler) {
    let udp = |ts, src, dst, payload| Segment {
        ts,
        src,
        dst,
        transport: Transport::Udp,
        payload,
        tcp_gap: false,
    };
    let (engine, out) = (&mut host.engine, &mut host.out);
    match input {
        EngineInput::Udp {
            ts,
            src,
            dst,
            payload,
        } => engine.handle_segment(&udp(ts, src, dst, &payload), out),
        EngineInput::Media(batch) => {
            for (d, bytes) in batch.iter() {
                engine.handle_segment(&udp(d.ts, d.src, d.dst, bytes), out);
            }
            recycler.give_back(batch);
        }
        EngineInput::Control(c) => host.apply(c),
        EngineInput::Refused | EngineInput::DialogEnded { .. } => {}
    }
}

pub(super) fn publish(host: &EngineHost, r: &Report) {
    let (engine, out) = (&host.engine, &host.out);
    let name = r.name();
    if let Ok(mut s) = r.status.lock() {
        let draining = name != "siprec";
        let src = s.sources.entry(name).or_default();
        if draining {
            src.up = true;
        }
        src.record_engine(engine, &out.counters);
        src.listen = r.listen.clone();
        src.queue_drops = r.drops.load(Ordering::Relaxed).max(0) as u64;
        src.kernel_drops = r.media.kernel_drops.load(Ordering::Relaxed);
        src.srtp_failures = r.media.srtp_failures.load(Ordering::Relaxed);
        src.rtp_rejected = r.media.rejected().into();
        src.errors = out.counters.failed;
        src.sip_rejected = r.guard.snapshot();
    }
}

pub(super) fn feed(
    etx: &SyncSender<EngineInput>,
    drops: &AtomicI64,
    src: SocketAddr,
    dst: SocketAddr,
    payload: Vec<u8>,
) {
    let input = EngineInput::Udp {
        ts: now(),
        src,
        dst,
        payload,
    };
    if let Err(TrySendError::Full(_)) = etx.try_send(input) {
        drops.fetch_add(1, Ordering::Relaxed);
    }
}
