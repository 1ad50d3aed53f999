//! The SIP side of the SIPREC server: UDP, TCP and TLS transports, the
//! answers (SDP with our media ports), sessions and their RTP ports.

use super::*;

mod conn;
pub(super) use conn::*;

/// The address we put in our SDP: the listen address, or (when listening on
/// all addresses) the local address the kernel would use towards the SRC.
///
/// An IPv4 peer reaching a dual-stack listener (`[::]`) is seen as
/// `::ffff:a.b.c.d`: the address is given as the IPv4 one it is (an
/// IPv4-only SBC refuses `c=IN IP6 ::ffff:…` and a Contact of that form).
pub(super) fn media_ip(listen: IpAddr, peer: SocketAddr) -> IpAddr {
    if !listen.is_unspecified() {
        return listen.to_canonical();
    }
    let probe = std::net::UdpSocket::bind(SocketAddr::new(listen, 0)).and_then(|s| {
        s.connect(peer)?;
        s.local_addr()
    });
    probe.map(|a| a.ip()).unwrap_or(listen).to_canonical()
}

/// What the connection tasks (TCP and TLS) tell the SIP task.
pub(super) enum SipIn {
    /// A TLS connection finished its handshake: where to write to it.
    Opened {
        peer: SocketAddr,
        transport: uas::Transport,
        writer: ConnWriter,
    },
    /// What a connection's reader reports (messages, refusals, its end).
    Conn {
        peer: SocketAddr,
        transport: uas::Transport,
        ev: ConnEvent,
    },
}

/// The sockets of one SIPREC instance.
pub(super) struct SipSockets {
    pub(super) udp: Arc<UdpSocket>,
    pub(super) tcp: TcpListener,
    pub(super) tls: Option<(TcpListener, TlsShared)>,
}

/// What the SIP task shares with the daemon.
pub(super) struct Shared {
    /// The daemon's status: whether the spool can take recordings.
    pub(super) status: SharedStatus,
    pub(super) ports: SharedPorts,
    pub(super) calls: Arc<AtomicUsize>,
    pub(super) control: mpsc::UnboundedReceiver<Control>,
    pub(super) guard: Arc<GuardCounters>,
    /// Where answered calls are noted before their 200 OK.
    pub(super) answered: AnsweredCalls,
}

/// The spool's state while the daemon starts (`delivery`, `daemon`).
const OPENING: &str = "opening the spool database";

/// `Retry-After` (seconds) of the 503s given while no new calls are taken.
pub(super) const RETRY_AFTER_S: u32 = 30;

/// Whether new calls are taken, as out-of-dialog OPTIONS are told
/// ([`Uas::set_unavailable`]): not while draining (a reload's or the
/// daemon's), not while the spool is unusable.
pub(super) struct Availability {
    status: SharedStatus,
    /// Draining: no new calls.
    pub(super) draining: bool,
    /// The daemon drains (`pbx-edge drain`): read from the status as each
    /// probe or new INVITE arrives, so it holds from the moment the drain
    /// was answered, before the daemon's loop tells this task.
    pub(super) daemon_draining: bool,
    /// The spool problem last seen (logged when it changes).
    spool: Option<String>,
    /// A 503 for the spool's sake was logged (its end is logged too).
    warned: bool,
}

impl Availability {
    /// The state as it is now. The spool database still being opened at
    /// start is no news (not logged when the first probe sees it); any other
    /// spool problem is logged with the first 503 it causes, however early.
    pub(super) fn new(status: SharedStatus) -> Self {
        let spool = status
            .lock()
            .ok()
            .and_then(|s| crate::status::spool_unusable(&s))
            .filter(|why| why.contains(OPENING));
        Availability {
            status,
            draining: false,
            daemon_draining: false,
            spool,
            warned: false,
        }
    }

    /// Reads the spool's state and the daemon's drain now and tells the UAS.
    pub(super) fn refresh(&mut self, uas: &mut Uas) {
        let (spool, daemon_draining) = match self.status.lock() {
            Ok(s) => (crate::status::spool_unusable(&s), s.draining),
            Err(_) => (self.spool.clone(), self.daemon_draining),
        };
        self.daemon_draining = daemon_draining;
        if spool != self.spool {
            match &spool {
                Some(why) => {
                    tracing::warn!(
                        "SIPREC: OPTIONS answered 503 while the spool is unusable ({why}): a dispatcher probing with OPTIONS sends new calls elsewhere"
                    );
                    self.warned = true;
                }
                None if self.warned => {
                    tracing::info!("SIPREC: the spool is usable again: OPTIONS answered 200");
                    self.warned = false;
                }
                None => {}
            }
            self.spool = spool;
        }
        let off = self.draining || self.daemon_draining || self.spool.is_some();
        uas.set_unavailable(off.then_some(RETRY_AFTER_S));
    }
}

/// How long a drained instance still answers retransmissions after its last
/// dialog ended (while server transactions remain).
pub(super) const DRAIN_LINGER: Duration = Duration::from_secs(2);

/// Refusals are reported to the engine thread at most this often.
const NUDGE_EVERY: Duration = Duration::from_millis(200);

/// How often the timers run while calls are in progress.
const TICK: Duration = Duration::from_millis(100);

/// Longest sleep between calls (a deadline further away, or a wall clock
/// stepped back, is looked at again then).
const MAX_SLEEP: Duration = Duration::from_secs(5);

#[allow(clippy::too_many_arguments)]
pub(super) async fn sip_loop(
    mut cfg: SiprecConfig,
    sockets: SipSockets,
    etx: SyncSender<EngineInput>,
    media: MediaControl,
    stop: Shutdown,
    drops: Arc<AtomicI64>,
    mut rtp_timeout: Duration,
    shared: Shared,
) {
    let SipSockets { udp, tcp, tls } = sockets;
    let Shared {
        status,
        ports: pool,
        calls,
        control: mut control_rx,
        guard,
        answered,
    } = shared;
    // Refused input answered and counted; connections capped and timed.
    let mut refuser = Refuser::new(guard.clone());
    let busy = BusyPeers::default();
    let conn_limits = ConnLimits::default();
    let conn_config = |cfg: &SiprecConfig| ConnConfig {
        idle_timeout: cfg.tcp_idle_timeout,
        message_timeout: cfg.tcp_message_timeout,
        counters: guard.clone(),
        busy: busy.clone(),
    };
    let mut ports = RtpPorts::new(pool, media, cfg.listen.ip(), Instant::now());
    // Draining: no new calls and end after the last one (a reload's);
    // `no_new_calls`: no new calls, keep answering until stopped (the
    // daemon's drain); `StopWhenIdle`: end as soon as no call is left.
    let (mut draining, mut no_new_calls, mut stop_when_idle) = (false, false, false);
    let mut avail = Availability::new(status);
    let mut idle_since: Option<Instant> = None;
    let local = cfg.listen;
    let mut uas = Uas::new(UasConfig {
        contact_host: local.ip().to_string(),
        contact_port: local.port(),
        tls_port: cfg.tls_listen.map(|a| a.port()),
        user_agent: format!("pbx-edge/{}", env!("CARGO_PKG_VERSION")),
        tag_seed: now().as_micros() as u64 ^ u64::from(std::process::id()),
    });
    // A BYE is answered when the call's recording is on disk (ByeDurable).
    uas.hold_byes(true);
    avail.refresh(&mut uas);
    let mut sessions: HashMap<DialogId, Session> = HashMap::new();
    // The SRC's address of each BYE held for its recording: a connection
    // whose BYE awaits its answer carries a call (not closed as idle).
    let mut held: HashMap<DialogId, SocketAddr> = HashMap::new();
    let mut tcp_writers: HashMap<(uas::Transport, SocketAddr), ConnWriter> = HashMap::new();
    let (tcp_tx, mut tcp_rx) = mpsc::channel::<SipIn>(1024);
    let mut buf = vec![0u8; 65_536];
    // Timers (UAS retransmissions, silent sessions, the busy set, retired
    // RTP ports, draining). While calls are in progress (or BYEs held, a
    // drain) they run every TICK. Between calls the task sleeps until the
    // next deadline (a SIP transaction's timer, a retired port's time, the
    // port state's save): after a call it wakes a few times, not ten times
    // a second for the half minute its transactions are kept. Idle, never.
    let wake = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(wake);
    let (mut wake_at, mut last_tick) = (None::<Instant>, Instant::now());
    // Peers in the busy set at the last tick: one more tick empties it.
    let mut published_busy = 0usize;
    let (mut published_refusals, mut last_nudge) = (0u64, None);
    loop {
        if stop.is_set() {
            break;
        }
        // Refusals reach the status through the engine thread, which
        // publishes on input: tell it, at most every 200 ms.
        let refused = guard.total();
        if refused != published_refusals
            && last_nudge.is_none_or(|t: Instant| t.elapsed() >= NUDGE_EVERY)
            && etx.try_send(EngineInput::Refused).is_ok()
        {
            published_refusals = refused;
            last_nudge = Some(Instant::now());
        }
        let cadence = !sessions.is_empty()
            || !held.is_empty()
            || published_busy > 0
            || draining
            || stop_when_idle
            || refused != published_refusals;
        let due = if cadence {
            Some(last_tick + TICK)
        } else {
            let sip = uas.poll_timeout().map(|t| {
                let us = t.micros_since(now()).clamp(0, MAX_SLEEP.as_micros() as i64);
                // A millisecond late: the timer is due when it runs.
                Instant::now() + Duration::from_micros(us as u64) + Duration::from_millis(1)
            });
            sip.into_iter().chain(ports.next_due()).min()
        };
        if due != wake_at {
            if let Some(d) = due {
                wake.as_mut().reset(d.into());
            }
            wake_at = due;
        }
        calls.store(sessions.len() + uas.held_bye_count(), Ordering::Relaxed);
        // A BYE still held for its recording keeps the listener open.
        if sessions.is_empty() && (draining || stop_when_idle) && uas.held_bye_count() == 0 {
            if stop_when_idle {
                tracing::info!(listen = %local, "SIPREC: no call in progress any more, closing this listener for the new settings");
                break;
            }
            let since = *idle_since.get_or_insert_with(Instant::now);
            if uas.transaction_count() == 0 || since.elapsed() >= DRAIN_LINGER {
                tracing::info!(listen = %local, "SIPREC: the last call on the replaced listener ended, closing it");
                break;
            }
        } else {
            idle_since = None;
        }
        tokio::select! {
            _ = stop.wait() => break,
            Some(c) = control_rx.recv() => match c {
                Control::Update { cfg: new, rtp_timeout: t } => {
                    cfg.allow = new.allow;
                    cfg.max_calls = new.max_calls;
                    cfg.rtp_ports = new.rtp_ports;
                    cfg.tcp_idle_timeout = new.tcp_idle_timeout;
                    cfg.tcp_message_timeout = new.tcp_message_timeout;
                    rtp_timeout = t;
                }
                Control::Drain => {
                    draining = true;
                    avail.draining = true;
                    avail.refresh(&mut uas);
                }
                Control::NoNewCalls => {
                    if !no_new_calls {
                        tracing::info!(listen = %local, calls = sessions.len(), "SIPREC: draining: new INVITEs and OPTIONS answered 503, the calls in progress go on");
                    }
                    no_new_calls = true;
                    avail.draining = true;
                    avail.refresh(&mut uas);
                }
                Control::StopWhenIdle(on) => stop_when_idle = on,
                Control::ByeDurable(d) => {
                    uas.answer_bye(&d, now());
                    // Its peer leaves the busy set at the next tick.
                    held.remove(&d);
                }
            },
            r = udp.recv_from(&mut buf) => {
                if let Ok((n, peer)) = r {
                    let bytes = buf[..n].to_vec();
                    on_message(&mut uas, &mut refuser, &mut avail, &bytes, peer, local, uas::Transport::Udp, &etx, &drops);
                }
            }
            acc = tcp.accept() => {
                if let Ok((sock, peer)) = acc {
                    if let Some(slot) = conn_slot(&conn_limits, &guard, peer) {
                        let (wtx, reader) = stream_tasks(sock, peer, uas::Transport::Tcp, tcp_tx.clone(), conn_config(&cfg), slot);
                        tcp_writers.insert((uas::Transport::Tcp, peer), wtx);
                        tokio::spawn(reader);
                    }
                }
            }
            acc = accept_tls(&tls) => {
                if let (Ok((sock, peer)), Some((_, shared))) = (acc, &tls) {
                    let acceptor = shared.read().map(|c| TlsAcceptor::from(c.clone()));
                    let slot = conn_slot(&conn_limits, &guard, peer);
                    if let (Ok(acceptor), Some(slot)) = (acceptor, slot) {
                        tokio::spawn(tls_connection(acceptor, sock, peer, tcp_tx.clone(), conn_config(&cfg), slot));
                    }
                }
            }
            Some(m) = tcp_rx.recv() => {
                match m {
                    SipIn::Opened { peer, transport, writer } => { tcp_writers.insert((transport, peer), writer); }
                    SipIn::Conn { peer, transport, ev } => match ev {
                        ConnEvent::Message(bytes) => on_message(&mut uas, &mut refuser, &mut avail, &bytes, peer, local, transport, &etx, &drops),
                        ConnEvent::Refused { error, head } => { refuser.refuse(&mut uas, &head, &error, peer, transport); }
                        ConnEvent::Closed => { tcp_writers.remove(&(transport, peer)); }
                    },
                }
            }
            _ = &mut wake, if wake_at.is_some() => {
                (wake_at, last_tick) = (None, Instant::now());
                uas.handle(UasInput::Timeout(now()));
                // A held BYE the UAS answered on its own (its time limit)
                // holds nothing any more: its peer is not kept busy, nor
                // the ticks going, for want of a ByeDurable.
                held.retain(|d, _| uas.holds_bye(d));
                // Calls in progress and BYEs awaiting their answer: their
                // connections are not closed for being idle.
                busy.set(sessions.values().map(|s| s.peer).chain(held.values().copied()));
                published_busy = sessions.len() + held.len();
                // Hang up sessions whose media stopped long ago.
                let limit = i64::try_from(rtp_timeout.as_micros()).unwrap_or(i64::MAX);
                let t = now().as_micros();
                let silent: Vec<DialogId> = sessions
                    .iter()
                    // (A paused session sends nothing by design: it is
                    // given the hold timeout, an hour, as a held call is.)
                    .filter(|(_, s)| {
                        let limit = if s.held { limit.max(pbx_core::call::HOLD_TIMEOUT_US) } else { limit };
                        t - s.last_rtp.load(Ordering::Relaxed) > limit
                    })
                    .map(|(d, _)| d.clone())
                    .collect();
                for d in silent {
                    // Our BYE, then the UAS's `Ended` (below): the engine
                    // sees the BYE before it is told the call ended, as for
                    // the SRC's own BYE, and the recording is finished now
                    // (with no audio at all: the answered call's empty one).
                    if !uas.hangup(&d, now()) {
                        // No dialog left to end: ended here.
                        if let Some(s) = sessions.remove(&d) {
                            release(s, &mut ports);
                            tell_ended(&etx, &d, "rtp_timeout", false);
                        }
                    }
                }
                ports.tick(Instant::now(), std::time::SystemTime::now());
            }
        }
        // Act on what the UAS decided.
        while let Some(ev) = uas.poll_event() {
            match ev {
                UasEvent::Send {
                    to,
                    transport,
                    bytes,
                } => {
                    // The engine sees our answers too (the SDP with our
                    // ports), before the SRC can send RTP to them.
                    feed(&etx, &drops, local, to, bytes.clone());
                    send_sip(&udp, &tcp_writers, transport, to, bytes).await;
                }
                UasEvent::NewCall {
                    dialog,
                    invite,
                    from,
                } => {
                    let at = now();
                    if no_new_calls || avail.daemon_draining {
                        tracing::info!(peer = %from, listen = %local, "SIPREC INVITE while draining: 503");
                        uas.reject_unavailable(&dialog, RETRY_AFTER_S, at);
                        continue;
                    }
                    if draining {
                        tracing::info!(peer = %from, listen = %local, "SIPREC INVITE to a listener replaced by a reload: 503 (send new calls to the new sources.siprec.listen)");
                        uas.reject_unavailable(&dialog, RETRY_AFTER_S, at);
                        continue;
                    }
                    if !cfg.allows(from.ip()) {
                        tracing::warn!(peer = %from, "SIPREC INVITE from an address outside sources.siprec.allow: 403");
                        uas.reject_because(
                            &dialog,
                            403,
                            "Forbidden",
                            "source address not allowed (sources.siprec.allow)",
                            None,
                            at,
                        );
                        continue;
                    }
                    if sessions.len() >= cfg.max_calls as usize {
                        tracing::warn!(limit = cfg.max_calls, "SIPREC call limit reached: 503");
                        let why = format!(
                            "call limit reached ({} calls, sources.siprec.max_calls)",
                            cfg.max_calls
                        );
                        uas.reject_because(
                            &dialog,
                            503,
                            "Service Unavailable",
                            &why,
                            Some(RETRY_AFTER_S),
                            at,
                        );
                        continue;
                    }
                    let offer = match siprec_parts(&invite) {
                        Ok((sdp, Some(_meta))) => sdp,
                        Ok((sdp, None)) => {
                            // Taken (nothing is lost): the streams in m-line
                            // order until metadata says otherwise.
                            tracing::warn!(peer = %from, "SIPREC INVITE without metadata: channels follow the order of the SDP's audio streams");
                            sdp
                        }
                        Err(e) => {
                            tracing::warn!(peer = %from, "unusable SIPREC offer: {e}");
                            let refusal = Refusal::for_offer(&e);
                            refuser.count_offer(&refusal);
                            uas.reject_refusal(&dialog, &refusal, at);
                            continue;
                        }
                    };
                    let mut session = Session {
                        ports: Vec::new(),
                        last_rtp: Arc::new(AtomicI64::new(at.as_micros())),
                        version: 1,
                        line_ports: Vec::new(),
                        line_keys: Vec::new(),
                        peer: from,
                        sdp: String::new(),
                        held: pbx_core::sip::siprec::offer_sends_nothing(&offer),
                    };
                    match answer_for(&offer, &mut session, &mut ports, local.ip(), from) {
                        Ok(answer) => {
                            // On disk before the 200 goes out: from now on a
                            // crash still leaves a recording of this call.
                            // Not writable (no inodes, a quota, EIO): the
                            // call is not taken (503: the SRC may try
                            // another recorder) rather than answered with
                            // nothing on disk to recover it from.
                            if let Err(e) = answered.answered(&answered_call(
                                &dialog,
                                &invite,
                                &answer,
                                answered.rate_policy(),
                                at,
                                now(),
                            )) {
                                tracing::error!("spool: cannot note an answered call ({e}): SIPREC INVITE answered 503");
                                release(session, &mut ports);
                                uas.reject_unavailable(&dialog, RETRY_AFTER_S, at);
                                continue;
                            }
                            uas.accept(&dialog, &answer, at);
                            session.sdp = answer;
                            sessions.insert(dialog, session);
                        }
                        Err(why) => {
                            release(session, &mut ports);
                            let (code, reason) = why.status();
                            uas.reject(&dialog, code, reason, at);
                        }
                    }
                }
                // The SRC's answer in the ACK, to our offer in a 200 to a
                // re-INVITE without one: whether it pauses, and where its
                // streams come from now.
                UasEvent::AckAnswer { dialog, msg } => {
                    let Some(session) = sessions.get_mut(&dialog) else {
                        continue;
                    };
                    let Some(Ok(sdp)) = msg.sdp() else {
                        continue;
                    };
                    let held = pbx_core::sip::siprec::offer_sends_nothing(&sdp);
                    if session.held && !held {
                        session
                            .last_rtp
                            .fetch_max(now().as_micros(), Ordering::Relaxed);
                    }
                    session.held = held;
                    for (i, m) in sdp.media.iter().enumerate() {
                        let Some(p) = session.line_ports.get(i).copied().filter(|p| *p != 0) else {
                            continue;
                        };
                        if m.port == 0 {
                            continue;
                        }
                        if let Some(local) = session.ports.iter().find(|a| a.port() == p) {
                            ports.set_origin(
                                *local,
                                StreamOrigin {
                                    announced_ip: m.effective_connection(&sdp),
                                    announced_port: m.port,
                                    signalling: session.peer.ip().to_canonical(),
                                },
                            );
                        }
                    }
                }
                ev @ (UasEvent::Reinvite { .. } | UasEvent::Update { .. }) => {
                    let (dialog, msg, invite) = match ev {
                        UasEvent::Reinvite { dialog, msg } => (dialog, msg, true),
                        UasEvent::Update { dialog, msg } => (dialog, msg, false),
                        _ => unreachable!(),
                    };
                    let at = now();
                    let Some(session) = sessions.get_mut(&dialog) else {
                        uas.reject(&dialog, 481, "Call/Transaction Does Not Exist", at);
                        continue;
                    };
                    match siprec_parts(&msg) {
                        Ok((offer, _)) => {
                            session.version += 1;
                            let peer = session.peer;
                            match answer_for(&offer, session, &mut ports, local.ip(), peer) {
                                Ok(answer) => {
                                    uas.accept(&dialog, &answer, at);
                                    session.sdp = answer;
                                    let held = pbx_core::sip::siprec::offer_sends_nothing(&offer);
                                    if session.held && !held {
                                        // Resumed: the media timeout counts
                                        // from now, not from before the pause.
                                        session
                                            .last_rtp
                                            .fetch_max(at.as_micros(), Ordering::Relaxed);
                                    }
                                    session.held = held;
                                }
                                Err(why) => {
                                    // Refused: the session stays as it was
                                    // (its SDP version with it).
                                    session.version -= 1;
                                    let (code, reason) = why.status();
                                    uas.reject(&dialog, code, reason, at);
                                }
                            }
                        }
                        // No offer: a session refresh (RFC 4028) or a
                        // metadata update (RFC 7866 §6.2) -- the engine reads
                        // the metadata from the request itself. Media stay as
                        // they are: an UPDATE gets a 200 without a body, a
                        // re-INVITE our SDP in force as the offer (RFC 3261
                        // 14.2; the answer in the ACK changes nothing here).
                        Err(SiprecError::NoSdp) => {
                            let body = if invite {
                                session.sdp.clone()
                            } else {
                                String::new()
                            };
                            uas.accept(&dialog, &body, at);
                        }
                        Err(e) => {
                            tracing::warn!(peer = %session.peer, "unusable SIPREC re-offer: {e}");
                            let refusal = Refusal::for_offer(&e);
                            refuser.count_offer(&refusal);
                            uas.reject_refusal(&dialog, &refusal, at);
                        }
                    }
                }
                UasEvent::Ended { dialog, reason } => {
                    tracing::debug!(call_id = %dialog.call_id, ?reason, "SIPREC session ended");
                    let bye = reason == uas::EndCause::Bye;
                    if let Some(s) = sessions.remove(&dialog) {
                        let peer = s.peer;
                        release(s, &mut ports);
                        let why = match reason {
                            uas::EndCause::Bye => "bye",
                            uas::EndCause::AckTimeout => "ack_timeout",
                            _ => "rtp_timeout",
                        };
                        let sent = tell_ended(&etx, &dialog, why, bye);
                        if bye && !sent {
                            uas.answer_bye(&dialog, now());
                        } else if bye {
                            // Busy already (its session was); the ticks
                            // keep it so while the BYE is held.
                            held.insert(dialog, peer);
                        }
                    } else if bye {
                        uas.answer_bye(&dialog, now());
                    }
                }
            }
        }
    }
    calls.store(0, Ordering::Relaxed);
    // Shutdown: hang up every session (the SRC learns the recording stopped).
    // Our BYEs are not fed to the engine: its calls end as cut by shutdown
    // (`truncated`), not as hung up, when the engine thread finishes them.
    let at = now();
    for (d, s) in sessions.drain() {
        uas.hangup(&d, at);
        release(s, &mut ports);
    }
    send_events(&mut uas, &udp, &tcp_writers).await;
    // BYEs still waiting for their recording: the engine thread finishes
    // every recording as this source stops, once its input is gone (this
    // task's sender, dropped here, and the media thread's, which the
    // handle stops meanwhile), and reports each BYE's recording durable
    // then. Each is answered as that report comes, never before: an SRC
    // that sees 200 to its BYE finds the recording complete on disk. The
    // wait is bounded ([`SHUTDOWN_BYE_WAIT`]); past it (an engine stuck
    // on a disk), or once the engine thread is gone, the rest are answered.
    drop(etx);
    let deadline = tokio::time::Instant::now() + SHUTDOWN_BYE_WAIT;
    while uas.held_bye_count() > 0 {
        match tokio::time::timeout_at(deadline, control_rx.recv()).await {
            Ok(Some(Control::ByeDurable(d))) => {
                uas.answer_bye(&d, now());
                send_events(&mut uas, &udp, &tcp_writers).await;
            }
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(_) => {
                tracing::warn!(
                    byes = uas.held_bye_count(),
                    "SIPREC: stopping: BYEs answered before their recordings were reported on disk (not done within {} s)",
                    SHUTDOWN_BYE_WAIT.as_secs()
                );
                break;
            }
        }
    }
    uas.answer_held_byes(now());
    send_events(&mut uas, &udp, &tcp_writers).await;
}

/// How long a stopping SIP task waits for the engine thread to report the
/// recordings of its held BYEs durable before it answers them anyway
/// (within the daemon's 9 s stop budget).
const SHUTDOWN_BYE_WAIT: Duration = Duration::from_secs(6);

/// Sends what the UAS has to send (a stopping task: nothing fed to the
/// engine any more, other events dropped).
async fn send_events(
    uas: &mut Uas,
    udp: &UdpSocket,
    tcp_writers: &HashMap<(uas::Transport, SocketAddr), ConnWriter>,
) {
    while let Some(ev) = uas.poll_event() {
        if let UasEvent::Send {
            to,
            transport,
            bytes,
        } = ev
        {
            send_sip(udp, tcp_writers, transport, to, bytes).await;
        }
    }
}

/// What is known of a call as it is answered (with `answer`, our SDP): the
/// parties as the metadata names them (the same assignment the engine
/// makes), the recorded call's id, the PBX's ids from the INVITE's headers
/// and the WAV's rate (`rate`: `recording.sample_rate`; auto is 16000 when
/// a stream was answered with a wideband codec, as the engine decides it
/// when media start): what a recording without audio still says.
pub(super) fn answered_call(
    dialog: &DialogId,
    invite: &pbx_core::sip::message::SipMessage,
    answer: &str,
    rate: pbx_core::call::SampleRatePolicy,
    started_at: Timestamp,
    answered_at: Timestamp,
) -> AnsweredCall {
    use pbx_core::audio::codec::Codec;
    use pbx_core::call::{Party, PartyInfo, SampleRatePolicy};
    let mut call = AnsweredCall {
        call_id: dialog.call_id.clone(),
        started_at,
        answered_at,
        ..AnsweredCall::default()
    };
    pbx_core::call::ids::collect(invite, &mut call.ids);
    call.sample_rate = Some(match rate {
        SampleRatePolicy::Fixed(r) => r,
        SampleRatePolicy::Auto => {
            let wide = pbx_core::sip::sdp::parse_sdp(answer).is_ok_and(|sdp| {
                sdp.media.iter().filter(|m| m.port != 0).any(|m| {
                    pbx_core::sip::siprec::decodable_codec(m).is_some_and(|c| {
                        Codec::from_rtpmap(&c.encoding, c.clock_rate, c.channels).is_wideband()
                    })
                })
            });
            if wide {
                16000
            } else {
                8000
            }
        }
    });
    let Ok((sdp, Some(meta))) = siprec_parts(invite) else {
        return call;
    };
    call.recorded_call_id = meta.call_id_hint.clone();
    let assigned = pbx_core::sip::siprec::assign_streams(&sdp, &meta).unwrap_or_default();
    for (party, slot) in [
        (Party::Caller, &mut call.from),
        (Party::Callee, &mut call.to),
    ] {
        let p = assigned
            .iter()
            .find(|a| a.party == Some(party))
            .and_then(|a| a.participant.as_deref())
            .and_then(|id| meta.participant(id));
        if let Some(p) = p {
            *slot = PartyInfo {
                number: p.number.clone().unwrap_or_default(),
                name: p.name.clone().unwrap_or_default(),
                uri: p.aor.clone().unwrap_or_default(),
            };
        }
    }
    call
}

#[allow(clippy::too_many_arguments)]
pub(super) fn on_message(
    uas: &mut Uas,
    refuser: &mut Refuser,
    avail: &mut Availability,
    bytes: &[u8],
    peer: SocketAddr,
    local: SocketAddr,
    transport: uas::Transport,
    etx: &SyncSender<EngineInput>,
    drops: &AtomicI64,
) {
    let msg = match parse_message(bytes) {
        Ok(msg) => msg,
        Err(e) => {
            // Answered if it can be (513 / 400 with a Warning), counted.
            refuser.refuse(uas, bytes, &e, peer, transport);
            return;
        }
    };
    // The engine records what the UAS takes up only: a BYE it answers
    // 481 must not end a recording, nor an INVITE it cannot answer (no
    // Via) or refuses for its Call-ID start one.
    if uas.takes(&msg) {
        feed(etx, drops, peer, local, bytes.to_vec());
    } else if msg.is_request() && !Uas::answerable(&msg) {
        refuser.count_unanswerable();
    }
    if matches!(
        msg.method(),
        Some(pbx_core::sip::message::Method::Options | pbx_core::sip::message::Method::Invite)
    ) && msg.to.tag.is_none()
    {
        // A probe or a new call: answered by the spool's state and the
        // daemon's drain as they are now.
        avail.refresh(uas);
    }
    if uas.needs_local_ip(peer.ip()) {
        // Listening on all interfaces: Contact and Via name the address
        // this peer reaches (an SBC may open new connections to it).
        uas.learn_local_ip(peer.ip(), media_ip(local.ip(), peer));
    }
    uas.handle(UasInput::Message {
        at: now(),
        from: peer,
        transport,
        msg: &msg,
        raw_len: bytes.len(),
    });
}

/// Why an offer gets no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NoAnswer {
    /// No line can be taken (codecs, SRTP suites, no audio): 488.
    NotAcceptable,
    /// A line we could take found no free RTP port (`rtp_ports` used up):
    /// 503, rather than a call recorded without one of its streams.
    NoPorts,
}

impl NoAnswer {
    pub(super) fn status(self) -> (u16, &'static str) {
        match self {
            NoAnswer::NotAcceptable => (488, "Not Acceptable Here"),
            NoAnswer::NoPorts => (503, "Service Unavailable"),
        }
    }
}

/// Ports for every offered audio line (reusing the session's), the RTP
/// receivers, and the SDP answer.
pub(super) fn answer_for(
    offer: &SessionDescription,
    session: &mut Session,
    rtp: &mut RtpPorts,
    listen_ip: IpAddr,
    peer: SocketAddr,
) -> Result<String, NoAnswer> {
    let ip = media_ip(listen_ip, peer);
    let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
    let mut ports = Vec::with_capacity(offer.media.len());
    // Ports this offer opened: closed again if it is refused (a refused
    // re-offer leaves the session as it was).
    let mut opened: Vec<SocketAddr> = Vec::new();
    // New origins of the streams kept: applied only if the offer is taken.
    let mut moved: Vec<(SocketAddr, StreamOrigin)> = Vec::new();
    // Streams kept whose SRTP keys the offer changes: applied likewise.
    let mut rekeyed: Vec<(
        SocketAddr,
        Option<Box<crate::sources::siprec::srtp::SrtpStream>>,
    )> = Vec::new();
    let mut keys: Vec<Option<(String, String)>> = vec![None; offer.media.len()];
    let mut crypto: Vec<Option<(String, String)>> = vec![None; offer.media.len()];
    for (i, m) in offer.media.iter().enumerate() {
        let secure = m.proto.to_ascii_uppercase().contains("SAVP");
        // SDES: the first offered suite we support, with the SRC's key.
        let sdes = if secure {
            m.crypto.iter().find_map(|c| {
                crate::sources::siprec::srtp::usable(&c.suite, &c.key_params)
                    .then(|| (c.suite.clone(), c.key_params.clone()))
            })
        } else {
            None
        };
        keys[i] = sdes.clone();
        // Audio with a codec we decode (no port for AMR, G.729, ...: with no
        // such line at all the offer gets 488).
        let usable = m.media.eq_ignore_ascii_case("audio")
            && m.port != 0
            && (!secure || sdes.is_some())
            && pbx_core::sip::siprec::decodable_codec(m).is_some();
        if !usable {
            ports.push(0);
            continue;
        }
        let decrypt = match &sdes {
            Some((suite, params)) => {
                match crate::sources::siprec::srtp::SrtpStream::new(suite, params) {
                    Some(d) => {
                        crypto[i] = Some((suite.clone(), crate::sources::siprec::srtp::new_key()));
                        // Boxed: an RTP port's state stays small for the
                        // many plain streams.
                        Some(Box::new(d))
                    }
                    None => {
                        ports.push(0);
                        continue;
                    }
                }
            }
            None => None,
        };
        // Where this stream may come from (see crate::sources::siprec::admission).
        let origin = StreamOrigin {
            announced_ip: m.effective_connection(offer),
            announced_port: m.port,
            signalling: peer.ip(),
        };
        if let Some(p) = session.line_ports.get(i).copied().filter(|p| *p != 0) {
            // Re-offer of a line we already receive: same port; the running
            // SRTP context (its rollover counter) unless the keys changed.
            if let Some(local) = session.ports.iter().find(|a| a.port() == p) {
                moved.push((*local, origin));
                if session.line_keys.get(i).cloned().flatten() != sdes {
                    rekeyed.push((*local, decrypt));
                }
            }
            ports.push(p);
            continue;
        }
        // A new line: a port from the pool.
        let Some(local) = rtp.open(
            ip,
            session.last_rtp.clone(),
            decrypt,
            Admission::new(origin),
            Instant::now(),
        ) else {
            tracing::warn!("SIPREC: no free RTP port (rtp_ports used up): 503; widen rtp_ports");
            close_ports(session, rtp, &opened);
            return Err(NoAnswer::NoPorts);
        };
        session.ports.push(local);
        opened.push(local);
        ports.push(local.port());
    }
    if ports.iter().all(|p| *p == 0) {
        close_ports(session, rtp, &opened);
        return Err(NoAnswer::NotAcceptable);
    }
    // Streams the new offer no longer has (removed, port 0): their ports go.
    let gone: Vec<SocketAddr> = session
        .ports
        .iter()
        .filter(|a| !ports.contains(&a.port()))
        .copied()
        .collect();
    close_ports(session, rtp, &gone);
    for (local, origin) in moved {
        rtp.set_origin(local, origin);
    }
    for (local, decrypt) in rekeyed {
        rtp.set_decrypt(local, decrypt);
    }
    session.line_keys = keys;
    session.line_ports = ports.clone();
    let crypto_refs: Vec<Option<(&str, &str)>> = crypto
        .iter()
        .map(|c| c.as_ref().map(|(s, k)| (s.as_str(), k.as_str())))
        .collect();
    Ok(answer_sdp(offer, ip, &ports, &crypto_refs, session.version))
}

/// Closes `which` of the session's ports and forgets them.
fn close_ports(session: &mut Session, rtp: &mut RtpPorts, which: &[SocketAddr]) {
    if which.is_empty() {
        return;
    }
    let now = Instant::now();
    for local in which {
        rtp.close(*local, now);
    }
    session.ports.retain(|a| !which.contains(a));
}

pub(super) fn release(s: Session, ports: &mut RtpPorts) {
    let now = Instant::now();
    for local in s.ports {
        ports.close(local, now);
    }
}

/// Send one SIP message on the transport it belongs to.
pub(super) async fn send_sip(
    udp: &UdpSocket,
    tcp_writers: &HashMap<(uas::Transport, SocketAddr), ConnWriter>,
    transport: uas::Transport,
    to: SocketAddr,
    bytes: Vec<u8>,
) {
    match transport {
        uas::Transport::Udp => {
            let _ = udp.send_to(&bytes, to).await;
        }
        _ => {
            // Never waits: one peer that does not read its connection must
            // not stall the signalling of every call (see [`ConnWriter`]).
            if let Some(w) = tcp_writers.get(&(transport, to)) {
                w.send(bytes);
            }
        }
    }
}

/// Tells the engine a session ended (after whatever of its media is in the
/// engine's queue: the engine has seen it). Never dropped (a call without
/// audio would lose its recording): waits for room. False when the engine
/// is gone. `bye`: the SRC's BYE, answered once the pair is durable.
fn tell_ended(
    etx: &SyncSender<EngineInput>,
    dialog: &DialogId,
    reason: &'static str,
    bye: bool,
) -> bool {
    let ended = EngineInput::DialogEnded {
        call_id: dialog.call_id.clone(),
        reason,
        bye: bye.then(|| dialog.clone()),
    };
    match etx.try_send(ended) {
        Ok(()) => true,
        Err(TrySendError::Full(ended)) => {
            let tx = etx.clone();
            tokio::task::block_in_place(move || tx.send(ended).is_ok())
        }
        Err(TrySendError::Disconnected(_)) => false,
    }
}

#[cfg(test)]
mod tests;
