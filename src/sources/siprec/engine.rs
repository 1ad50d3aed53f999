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
    host.clock = Some(now);
    let mut endings = Endings::default();
    // The engine's clock is held back to what the media path has handed
    // over (SIP messages and timers carry the wall clock, which runs ahead
    // of media still queued when the machine is busy).
    let mut media = MediaHorizon::new(now());
    let idle = &report.media.idle;
    loop {
        let clock = hold_back(&mut host, &mut media, idle);
        let got = match host.wait(clock) {
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
                endings.dialog_ended(&mut host, call_id, reason, bye, &durable);
                true
            }
            Ok(input) => {
                handle_input(&mut host, input, &recycler, &mut media);
                true
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        host.rename(&report.name());
        let clock = hold_back(&mut host, &mut media, idle);
        if host.tick(clock, input) {
            publish(&host, &report, &media);
        }
        endings.settle(&mut host, &durable);
    }
    host.finish(EndReason::Shutdown);
    endings.finish(&mut host, &durable);
    host.out.finish_answered("shutdown", now());
    publish(&host, &report, &media);
    let name = report.name();
    if name != "siprec" {
        // A drained instance: its calls are recorded, its entry goes.
        if let Ok(mut s) = report.status.lock() {
            s.sources.remove(&name);
        }
    }
}

/// Dialogs the SIP task ended, followed until their recording is settled,
/// and the SRC's BYEs held until then.
///
/// A call hung up before any of its audio reached the engine is not yet
/// known to have none: the engine lingers one jitter window after the BYE
/// ([`pbx_core::call::CallEngine::is_ending`]), and media the SRC sent before its BYE
/// (received on another thread, or held by admission until its quorum)
/// still begins the recording then. Only once the engine has ended the
/// call is "no audio arrived" decided ([`RecordingDir::end_answered`]:
/// an empty recording); deciding it at the BYE made two recordings of one
/// call, an empty one and the real one.
///
/// A BYE the engine missed (its queue was full) still ends the call
/// there, as the SIP task says ([`pbx_core::call::CallEngine::hang_up`]).
/// A held BYE is answered ([`Control::ByeDurable`]) once the call's
/// recording is durable on disk, or there is none.
#[derive(Default)]
pub(super) struct Endings {
    /// Ended by the SIP task, still lingering in the engine: the reason,
    /// when it ended (a call without audio ended then, not when the linger
    /// is over) and the BYEs to answer, by Call-ID.
    lingering: HashMap<String, (&'static str, Timestamp, Vec<DialogId>)>,
    /// BYEs waiting for their call's recording to be durable, by Call-ID.
    byes: HashMap<String, Vec<DialogId>>,
}

impl Endings {
    /// The SIP task ended a dialog (after the messages that ended it, so
    /// the engine has seen its BYE).
    pub(super) fn dialog_ended(
        &mut self,
        host: &mut EngineHost,
        call_id: String,
        reason: &'static str,
        bye: Option<DialogId>,
        durable: &mpsc::UnboundedSender<Control>,
    ) {
        let at = now();
        // Its BYE never reached the engine (the queue was full and the
        // message dropped): the call ends now as if it had.
        if bye.is_some() {
            host.engine.hang_up(&call_id, at, EndReason::Bye);
        }
        // Our BYE for a 200 never acknowledged ended it: the missing ACK
        // is why.
        if reason == "ack_timeout" {
            host.engine.end_with(&call_id, at, EndReason::AckTimeout);
        }
        if host.engine.is_ending(&call_id) {
            let (_, _, byes) = self
                .lingering
                .entry(call_id)
                .or_insert((reason, at, Vec::new()));
            byes.extend(bye);
            return;
        }
        let byes = bye.into_iter().collect();
        self.settle_call(host, call_id, reason, at, byes, durable);
    }

    /// After every input or wake-up: the lingering calls the engine has
    /// ended are settled; the BYEs of the recordings now durable answered.
    pub(super) fn settle(
        &mut self,
        host: &mut EngineHost,
        durable: &mpsc::UnboundedSender<Control>,
    ) {
        if !self.lingering.is_empty() {
            let done: Vec<String> = self
                .lingering
                .keys()
                .filter(|c| !host.engine.is_ending(c))
                .cloned()
                .collect();
            for call_id in done {
                if let Some((reason, at, byes)) = self.lingering.remove(&call_id) {
                    self.settle_call(host, call_id, reason, at, byes, durable);
                }
            }
        }
        for call_id in host.out.take_closed() {
            if host.out.is_recording(&call_id) {
                continue;
            }
            for d in self.byes.remove(&call_id).unwrap_or_default() {
                let _ = durable.send(Control::ByeDurable(d));
            }
        }
    }

    /// The source stops, every call ended and its recording finished
    /// ([`EngineHost::finish`] waits for the finisher): the calls hung up
    /// without audio become their empty recordings, as hung up; then every
    /// BYE still held is reported durable, its recording being on disk now.
    /// (The SIP task, which waits for these as it stops, answers them.)
    pub(super) fn finish(
        &mut self,
        host: &mut EngineHost,
        durable: &mpsc::UnboundedSender<Control>,
    ) {
        let mut byes: Vec<DialogId> = Vec::new();
        for (call_id, (reason, at, held)) in self.lingering.drain() {
            host.out.end_answered(&call_id, reason, at);
            byes.extend(held);
        }
        host.out.wait_finished();
        byes.extend(self.byes.drain().flat_map(|(_, b)| b));
        for d in byes {
            let _ = durable.send(Control::ByeDurable(d));
        }
    }

    /// The engine is done with the call (ended `at`): with no audio, its
    /// answered note becomes an empty recording; its BYEs are answered now,
    /// or once its recording is durable.
    fn settle_call(
        &mut self,
        host: &mut EngineHost,
        call_id: String,
        reason: &'static str,
        at: Timestamp,
        byes: Vec<DialogId>,
        durable: &mpsc::UnboundedSender<Control>,
    ) {
        host.out.end_answered(&call_id, reason, at);
        if byes.is_empty() {
            return;
        }
        if host.out.is_recording(&call_id) {
            self.byes.entry(call_id).or_default().extend(byes);
        } else {
            for d in byes {
                let _ = durable.send(Control::ByeDurable(d));
            }
        }
    }
}

/// The engine's horizon set from what the media path has handed over; the
/// clock its host waits and ticks by (the wall clock, held back to it).
fn hold_back(host: &mut EngineHost, media: &mut MediaHorizon, idle: &IdleMark) -> Timestamp {
    let (h, clock) = media.hold(idle, now());
    host.engine.set_horizon(h);
    clock
}

pub(super) fn handle_input(
    host: &mut EngineHost,
    input: EngineInput,
    recycler: &Recycler,
    media: &mut MediaHorizon,
) {
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
            media.processed(&batch);
            recycler.give_back(batch);
        }
        EngineInput::Control(c) => host.apply(c),
        EngineInput::Refused | EngineInput::DialogEnded { .. } => {}
    }
}

pub(super) fn publish(host: &EngineHost, r: &Report, media: &MediaHorizon) {
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
        src.media_behind_ms = (media.behind_us / 1000) as u64;
        src.media_behind_max_ms = (media.behind_max_us / 1000) as u64;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recording::{RecordingContext, RoleRules};
    use pbx_testgen::audio::speechlike;
    use pbx_testgen::codec::Encoder;
    use pbx_testgen::scenario::rtp_packet;
    use pbx_testgen::TestCodec;

    const SRC: &str = "127.0.0.1:5070";
    const SRS: &str = "127.0.0.1:5060";
    /// The SRC's media ports (offer) and ours (answer), m-line order.
    const OFFER: [u16; 2] = [40100, 40102];
    const ANSWER: [u16; 2] = [30000, 30002];

    fn sdp(ports: [u16; 2], dir: &str) -> String {
        format!(
            "v=0\r\no=x 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
             m=audio {} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=label:1\r\na={dir}\r\n\
             m=audio {} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=label:2\r\na={dir}\r\n",
            ports[0], ports[1]
        )
    }

    fn metadata() -> String {
        r#"<?xml version="1.0" encoding="UTF-8"?>
<recording xmlns="urn:ietf:params:xml:ns:recording:1">
  <datamode>complete</datamode>
  <session session_id="c2Vzc2lvbjE="><sipSessionID>rec-1</sipSessionID></session>
  <participant participant_id="UEFSVDE="><nameID aor="sip:+15551001@pbx.example"/></participant>
  <participant participant_id="UEFSVDI="><nameID aor="sip:+15552002@pbx.example"/></participant>
  <stream stream_id="U1RSMQ==" session_id="c2Vzc2lvbjE="><label>1</label></stream>
  <stream stream_id="U1RSMg==" session_id="c2Vzc2lvbjE="><label>2</label></stream>
  <participantstreamassoc participant_id="UEFSVDE="><send>U1RSMQ==</send><recv>U1RSMg==</recv></participantstreamassoc>
  <participantstreamassoc participant_id="UEFSVDI="><send>U1RSMg==</send><recv>U1RSMQ==</recv></participantstreamassoc>
</recording>"#
            .to_string()
    }

    /// A SIPREC offer with `metadata`: (Content-Type, body).
    fn offer_with(metadata: &str) -> (String, String) {
        let boundary = "b0undary";
        let body = format!(
            "--{boundary}\r\nContent-Type: application/sdp\r\n\r\n{}\r\n--{boundary}\r\n\
             Content-Type: application/rs-metadata+xml\r\nContent-Disposition: recording-session\r\n\r\n{metadata}\r\n--{boundary}--\r\n",
            sdp(OFFER, "sendonly"),
        );
        (format!("multipart/mixed;boundary={boundary}"), body)
    }

    fn message(first: &str, call_id: &str, cseq: &str, ctype: &str, body: &str) -> Vec<u8> {
        let ctype = if ctype.is_empty() {
            String::new()
        } else {
            format!("Content-Type: {ctype}\r\n")
        };
        format!(
            "{first}\r\nVia: SIP/2.0/UDP {SRC};branch=z9hG4bK{cseq}\r\n\
             From: <sip:src@127.0.0.1>;tag=src\r\nTo: <sip:srs@127.0.0.1>;tag=srs\r\n\
             Call-ID: {call_id}\r\nCSeq: {cseq}\r\nContact: <sip:{SRC}>\r\n\
             {ctype}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    struct Call {
        host: EngineHost,
        endings: Endings,
        durable: mpsc::UnboundedSender<Control>,
        answers: mpsc::UnboundedReceiver<Control>,
        dir: tempfile::TempDir,
        t: Timestamp,
    }

    impl Call {
        /// A SIPREC call answered (the SIP task's note written, the INVITE
        /// and our 200 OK fed to the engine), at `t`.
        fn answered(call_id: &str) -> Call {
            Call::answered_with(call_id, Some(metadata()))
        }

        /// [`Call::answered`], the INVITE with `metadata` (or its SDP alone).
        fn answered_with(call_id: &str, metadata: Option<String>) -> Call {
            let dir = tempfile::tempdir().unwrap();
            let ctx = RecordingContext {
                agent_id: "agent-a".into(),
                source: "siprec",
                min_duration: Duration::ZERO,
                seal: None,
                tap: None,
                roles: RoleRules::default(),
            };
            let mut out = RecordingDir::new(dir.path(), ctx).unwrap();
            out.track_closed(true);
            let cfg = EngineConfig {
                siprec_server: true,
                ..EngineConfig::default()
            };
            let host = EngineHost::new("siprec", cfg, out, Liveness::new());
            let (durable, answers) = mpsc::unbounded_channel();
            let mut c = Call {
                host,
                endings: Endings::default(),
                durable,
                answers,
                dir,
                t: Timestamp::from_secs(1_800_000_000),
            };
            let (ctype, body) = match &metadata {
                Some(m) => offer_with(m),
                None => ("application/sdp".to_string(), sdp(OFFER, "sendonly")),
            };
            c.offer_answered(call_id, 1, &ctype, &body);
            let note = crate::sources::siprec::sip::answered_call(
                &dialog(call_id),
                &parse_message(&message(
                    &format!("INVITE sip:srs@{SRS} SIP/2.0"),
                    call_id,
                    "1 INVITE",
                    &ctype,
                    &body,
                ))
                .unwrap(),
                &sdp(ANSWER, "recvonly"),
                pbx_core::call::SampleRatePolicy::Auto,
                c.t,
                c.t,
            );
            c.host.out.answered_calls().answered(&note).unwrap();
            c
        }

        /// The SRC's INVITE (CSeq `cseq`) with `body`, and our 200 OK with
        /// our SDP, as the engine sees them.
        fn offer_answered(&mut self, call_id: &str, cseq: u32, ctype: &str, body: &str) {
            let cseq = format!("{cseq} INVITE");
            let invite = message(
                &format!("INVITE sip:srs@{SRS} SIP/2.0"),
                call_id,
                &cseq,
                ctype,
                body,
            );
            self.sip(SRC, SRS, invite);
            let ok = message(
                "SIP/2.0 200 OK",
                call_id,
                &cseq,
                "application/sdp",
                &sdp(ANSWER, "recvonly"),
            );
            self.sip(SRS, SRC, ok);
        }

        fn input(&mut self, input: EngineInput) {
            match input {
                EngineInput::DialogEnded {
                    call_id,
                    reason,
                    bye,
                } => self
                    .endings
                    .dialog_ended(&mut self.host, call_id, reason, bye, &self.durable),
                EngineInput::Udp {
                    ts,
                    src,
                    dst,
                    payload,
                } => {
                    let seg = Segment {
                        ts,
                        src,
                        dst,
                        transport: Transport::Udp,
                        payload: &payload,
                        tcp_gap: false,
                    };
                    self.host.engine.handle_segment(&seg, &mut self.host.out)
                }
                _ => unreachable!(),
            }
            self.host.tick(self.t, true);
            self.endings.settle(&mut self.host, &self.durable);
        }

        fn sip(&mut self, src: &str, dst: &str, payload: Vec<u8>) {
            self.input(EngineInput::Udp {
                ts: self.t,
                src: src.parse().unwrap(),
                dst: dst.parse().unwrap(),
                payload,
            });
        }

        /// `n` 20 ms PCMU packets from the SRC on both streams, stamped
        /// from `t0` on.
        fn rtp(&mut self, t0: Timestamp, n: usize) {
            self.rtp_from(t0, 0, n);
        }

        /// Packets `first..first + n` of both streams (SSRC 0x1000 the
        /// first m-line's, 0x1001 the second's), packet `first` at `t0`.
        fn rtp_from(&mut self, t0: Timestamp, first: usize, n: usize) {
            self.rtp_sent_from(OFFER, t0, first, n);
        }

        /// [`Call::rtp_from`], the streams sent from `ports`.
        fn rtp_sent_from(&mut self, ports: [u16; 2], t0: Timestamp, first: usize, n: usize) {
            let audio = speechlike(7, 20 * (first + n) as u32, 8000);
            for (k, (from, to)) in ports.iter().zip(ANSWER).enumerate() {
                let mut enc = Encoder::new(TestCodec::Pcmu);
                for i in first..first + n {
                    let pkt = rtp_packet(
                        0,
                        i == 0,
                        i as u16,
                        (i * 160) as u32,
                        0x1000 + k as u32,
                        &enc.encode(&audio[i * 160..(i + 1) * 160]),
                    );
                    self.input(EngineInput::Udp {
                        ts: t0.add_micros(20_000 * (i - first) as i64),
                        src: SocketAddr::from(([127, 0, 0, 1], *from)),
                        dst: SocketAddr::from(([127, 0, 0, 1], to)),
                        payload: pkt,
                    });
                }
            }
        }

        /// Time passes without input (`ms`), the host waking as it asks;
        /// then the pairs ended meanwhile are finished (on the finisher's
        /// threads) and collected.
        fn wait(&mut self, ms: i64) {
            let end = self.t.add_micros(ms * 1000);
            while self.t < end {
                self.t = self.t.add_micros(10_000);
                self.host.tick(self.t, false);
                self.endings.settle(&mut self.host, &self.durable);
            }
            self.host.out.wait_finished();
            self.endings.settle(&mut self.host, &self.durable);
        }

        /// The SRC's BYE, and the SIP task's news that it ended the dialog.
        fn bye(&mut self, call_id: &str) {
            let bye = message(
                &format!("BYE sip:srs@{SRS} SIP/2.0"),
                call_id,
                "2 BYE",
                "",
                "",
            );
            self.sip(SRC, SRS, bye);
            self.input(EngineInput::DialogEnded {
                call_id: call_id.into(),
                reason: "bye",
                bye: Some(dialog(call_id)),
            });
        }

        fn byes_answered(&mut self) -> usize {
            let mut n = 0;
            while let Ok(c) = self.answers.try_recv() {
                assert!(matches!(c, Control::ByeDurable(_)));
                n += 1;
            }
            n
        }

        /// The recordings' JSON documents on disk.
        fn documents(&self) -> Vec<serde_json::Value> {
            std::fs::read_dir(self.dir.path())
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.extension().is_some_and(|x| x == "json")
                        && !p.file_name().unwrap().to_string_lossy().starts_with('.')
                })
                .map(|p| serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap())
                .collect()
        }

        /// The recordings on disk: (duration in ms, warnings).
        fn recordings(&self) -> Vec<(i64, String)> {
            let mut v: Vec<(i64, String)> = self
                .documents()
                .into_iter()
                .map(|j| {
                    (
                        j["duration_ms"].as_i64().unwrap_or(-1),
                        j["warnings"].to_string(),
                    )
                })
                .collect();
            v.sort();
            v
        }
    }

    fn dialog(call_id: &str) -> DialogId {
        DialogId {
            call_id: call_id.into(),
            local_tag: "srs".into(),
            remote_tag: "src".into(),
        }
    }

    /// The race `tests/scale_out.rs` met under load: a short call's audio,
    /// sent before its BYE, reaches the engine after the BYE and the SIP
    /// task's "dialog ended" (the media thread's batch, or admission's
    /// quorum, held it). One recording, with the audio; the BYE answered
    /// once it is on disk.
    #[test]
    fn audio_arriving_after_the_bye_makes_one_recording_not_an_empty_one_too() {
        let mut c = Call::answered("late-audio@src");
        let sent = c.t.add_micros(20_000);
        c.t = c.t.add_micros(140_000);
        c.bye("late-audio@src");
        assert_eq!(c.byes_answered(), 0, "answered before the call was settled");
        assert!(c.recordings().is_empty(), "{:?}", c.recordings());
        c.rtp(sent, 5);
        c.wait(1_000);
        let recs = c.recordings();
        assert_eq!(recs.len(), 1, "{recs:?}");
        assert_eq!(recs[0].0, 100, "{recs:?}");
        assert!(!recs[0].1.contains("no audio arrived"), "{recs:?}");
        assert_eq!(c.byes_answered(), 1);
    }

    /// A call hung up with no audio at all: an empty recording once the
    /// engine has given up waiting (one jitter window), then the BYE's
    /// answer; never before.
    #[test]
    fn a_call_hung_up_without_audio_is_one_empty_recording_after_the_linger() {
        let mut c = Call::answered("no-audio@src");
        c.t = c.t.add_micros(500_000);
        c.bye("no-audio@src");
        assert!(c.recordings().is_empty());
        assert_eq!(c.byes_answered(), 0);
        c.wait(1_000);
        let recs = c.recordings();
        assert_eq!(recs.len(), 1, "{recs:?}");
        assert_eq!(recs[0].0, 0);
        assert!(recs[0].1.contains("no audio arrived"), "{recs:?}");
        assert_eq!(c.byes_answered(), 1);
    }

    /// The BYE itself never reached the engine (its queue was full, the
    /// message dropped), only the SIP task's news that the dialog ended:
    /// the call still ends there and then, lingers, and takes its late
    /// audio; one recording, ended by the BYE.
    #[test]
    fn a_bye_the_engine_missed_still_ends_the_call_there() {
        let mut c = Call::answered("missed-bye@src");
        let sent = c.t.add_micros(20_000);
        c.t = c.t.add_micros(140_000);
        c.input(EngineInput::DialogEnded {
            call_id: "missed-bye@src".into(),
            reason: "bye",
            bye: Some(dialog("missed-bye@src")),
        });
        assert!(c.host.engine.is_ending("missed-bye@src"));
        assert_eq!(c.byes_answered(), 0);
        c.rtp(sent, 5);
        c.wait(1_000);
        let recs = c.recordings();
        assert_eq!(recs.len(), 1, "{recs:?}");
        assert_eq!(recs[0].0, 100, "{recs:?}");
        assert_eq!(c.byes_answered(), 1);
        assert_eq!(c.host.engine.active_calls(), 0);
    }

    /// A BYE naming our tag but another From tag is no request of the
    /// dialog (its UAS answers 481): the call goes on, and its recording
    /// holds all its audio, up to the real BYE.
    #[test]
    fn a_bye_with_another_from_tag_does_not_end_the_recording() {
        let mut c = Call::answered("other-tag@src");
        let bye = message(
            &format!("BYE sip:srs@{SRS} SIP/2.0"),
            "other-tag@src",
            "2 BYE",
            "",
            "",
        );
        let bye = String::from_utf8(bye)
            .unwrap()
            .replace("tag=src", "tag=WRONG");
        c.sip(SRC, SRS, bye.into_bytes());
        assert!(!c.host.engine.is_ending("other-tag@src"));
        let sent = c.t.add_micros(20_000);
        c.rtp(sent, 50);
        c.t = c.t.add_micros(1_100_000);
        c.bye("other-tag@src");
        c.wait(1_000);
        let recs = c.recordings();
        assert_eq!(recs.len(), 1, "{recs:?}");
        assert_eq!(recs[0].0, 1000, "{recs:?}");
    }

    /// Metadata first sent in a re-INVITE after the media began (RFC 7866
    /// allows it), naming the second m-line's stream as the first
    /// participant's: the streams keep the channels the SDP's order gave
    /// them (before, they swapped mid-recording: each channel held one
    /// party, then the other); from/to name who is on each.
    #[test]
    fn metadata_after_the_media_began_keeps_each_stream_on_its_channel() {
        let mut c = Call::answered_with("late-meta@src", None);
        let t0 = c.t.add_micros(20_000);
        c.rtp_from(t0, 0, 25);
        c.t = c.t.add_micros(600_000);
        let swapped = metadata()
            .replace(
                "<send>U1RSMQ==</send><recv>U1RSMg==</recv>",
                "<send>X</send><recv>Y</recv>",
            )
            .replace(
                "<send>U1RSMg==</send><recv>U1RSMQ==</recv>",
                "<send>U1RSMQ==</send><recv>U1RSMg==</recv>",
            )
            .replace(
                "<send>X</send><recv>Y</recv>",
                "<send>U1RSMg==</send><recv>U1RSMQ==</recv>",
            );
        let (ctype, body) = offer_with(&swapped);
        c.offer_answered("late-meta@src", 2, &ctype, &body);
        c.rtp_from(t0.add_micros(500_000), 25, 25);
        c.t = c.t.add_micros(600_000);
        c.bye("late-meta@src");
        c.wait(1_000);
        let docs = c.documents();
        assert_eq!(docs.len(), 1);
        let j = &docs[0];
        assert_eq!(
            j["channels"][0]["ssrcs"],
            serde_json::json!([0x1000]),
            "{j}"
        );
        assert_eq!(
            j["channels"][1]["ssrcs"],
            serde_json::json!([0x1001]),
            "{j}"
        );
        assert_eq!(j["channels"][0]["packets"], 50, "{j}");
        assert_eq!(j["from"]["number"], "+15552002", "{j}");
        assert_eq!(j["to"]["number"], "+15551001", "{j}");
        assert!(
            j["warnings"]
                .to_string()
                .contains("metadata came after the media began"),
            "{j}"
        );
    }

    /// The SRC moves its streams to other source ports by a re-INVITE and
    /// sends from them the moment it has our 200, the SSRCs and numbers
    /// going on: the stream moved, taken at once (before, its first two
    /// packets were taken for a copy while the old port had not been quiet
    /// for 60 ms, and lost).
    #[test]
    fn a_stream_moved_to_another_source_port_loses_nothing() {
        let mut c = Call::answered("moved@src");
        let t0 = c.t.add_micros(20_000);
        c.rtp_from(t0, 0, 25);
        c.rtp_sent_from([40200, 40202], t0.add_micros(500_000), 25, 25);
        c.t = c.t.add_micros(1_100_000);
        c.bye("moved@src");
        c.wait(1_000);
        let docs = c.documents();
        assert_eq!(docs.len(), 1);
        for m in docs[0]["channels"].as_array().unwrap() {
            assert_eq!(
                (m["packets"].as_u64(), m["lost"].as_u64()),
                (Some(50), Some(0)),
                "{m}"
            );
        }
        assert_eq!(docs[0]["duration_ms"], 1000);
    }

    /// Our 200 was never acknowledged: the SIP task hung up with a BYE
    /// (which the engine sees, as every message we send) and ended the
    /// session for that; the recording says why (docs/siprec.md), not
    /// "bye".
    #[test]
    fn a_session_never_acknowledged_ends_as_ack_timeout() {
        let mut c = Call::answered("no-ack@src");
        let sent = c.t.add_micros(20_000);
        c.rtp(sent, 25);
        // (32 s after the 200, the media still coming: here sooner.)
        c.t = c.t.add_micros(2_000_000);
        let ours = message(
            &format!("BYE sip:src@{SRC} SIP/2.0"),
            "no-ack@src",
            "1 BYE",
            "",
            "",
        );
        c.sip(SRS, SRC, ours);
        c.input(EngineInput::DialogEnded {
            call_id: "no-ack@src".into(),
            reason: "ack_timeout",
            bye: None,
        });
        c.wait(1_000);
        let docs = c.documents();
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0]["end_reason"], "ack_timeout", "{}", docs[0]);
        assert_eq!(docs[0]["duration_ms"], 500, "{}", docs[0]);
    }

    /// The source stops while the call lingers: still one empty recording,
    /// ended by the BYE (not cut by the shutdown).
    #[test]
    fn a_stop_during_the_linger_keeps_the_bye_as_the_end() {
        let mut c = Call::answered("stop@src");
        c.bye("stop@src");
        assert_eq!(c.byes_answered(), 0, "held while the call lingers");
        c.host.finish(EndReason::Shutdown);
        c.endings.finish(&mut c.host, &c.durable);
        // Its BYE is reported durable once the recording is on disk.
        assert_eq!(c.byes_answered(), 1);
        c.host.out.finish_answered("shutdown", c.t);
        let recs = c.recordings();
        assert_eq!(recs.len(), 1, "{recs:?}");
        assert!(recs[0].1.contains("no audio arrived"), "{recs:?}");
    }
}
