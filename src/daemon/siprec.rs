//! The SIPREC source's life in the daemon: started (its state in the
//! status either way), reloaded without cutting calls in progress (in
//! place, or a new instance beside the draining old one), replaced once
//! its calls have ended.

use super::*;

/// SIGHUP for the SIPREC source. Calls in progress are never cut:
/// - same sockets (listen, tls_listen): the running instance takes the new
///   allow / max_calls / rtp_ports / rtp_timeout for new INVITEs and the new
///   recording settings for new recordings; TLS files are re-read;
/// - new addresses that do not collide with the running ones: the new
///   instance binds first, the old one drains (no new calls, 503; its dialogs
///   go on until they end), sharing the RTP port pool;
/// - new addresses sharing a port with the running ones: the running instance
///   keeps serving (with the in-place settings) and is replaced as soon as
///   no call is in progress;
/// - disabled: the running instance drains.
#[allow(clippy::too_many_arguments)]
pub(super) async fn reload_siprec(
    cfg: &Config,
    status: &SharedStatus,
    live: &Arc<Liveness>,
    controls: &Controls,
    siprec: &mut Option<crate::sources::siprec::SiprecHandle>,
    draining: &mut Vec<crate::sources::siprec::SiprecHandle>,
    pending: &mut bool,
    gen: &mut u64,
) {
    let sc = &cfg.sources.siprec;
    let drain = |draining: &mut Vec<_>,
                 gen: &mut u64,
                 h: crate::sources::siprec::SiprecHandle,
                 why: &str| {
        *gen += 1;
        let name = format!("siprec.draining.{gen}");
        let n = h.calls();
        h.drain(&name);
        tracing::info!(
            "SIPREC listener {} {why}: it takes no new calls and closes when its {n} calls in progress end",
            h.listen
        );
        draining.push(h);
    };
    // A listener that was waiting for its calls to end and just did.
    if siprec.as_ref().is_some_and(|h| h.finished()) {
        if let Some(h) = siprec.take() {
            draining.push(h);
        }
    }
    let Some(h) = siprec.take() else {
        *pending = false;
        if sc.enabled {
            let ports = draining.last().map(|h| h.ports());
            *siprec = start_siprec(cfg, status, live, controls, ports).await;
        } else if let Ok(mut s) = status.lock() {
            s.sources.remove("siprec");
        }
        return;
    };
    if !sc.enabled {
        *pending = false;
        if let Ok(mut s) = status.lock() {
            s.sources.remove("siprec");
        }
        drain(draining, gen, h, "disabled");
        return;
    }
    // Whatever happens to the sockets, new calls get the new settings;
    // certificates renewed on disk are taken for new TLS connections.
    let mut h = h;
    if h.reload(cfg, &[]) == Reload::Applied {
        if *pending {
            *pending = false;
            h.stop_when_idle(false);
            tracing::info!("SIPREC: back to the running listen addresses, nothing to replace");
        }
        tracing::info!("SIPREC settings applied to new calls; calls in progress go on");
        *siprec = Some(h);
        return;
    }
    let ports_of = |a: SocketAddr, b: Option<SocketAddr>| {
        std::iter::once(a.port())
            .chain(b.map(|b| b.port()))
            .collect::<Vec<_>>()
    };
    let old = ports_of(h.listen, h.tls_listen);
    let collides = ports_of(sc.listen, sc.tls_listen)
        .iter()
        .any(|p| old.contains(p));
    if !collides {
        match start_siprec_with(cfg, status, live, controls, Some(h.ports()), false).await {
            Some(new) => {
                drain(draining, gen, h, "replaced by a new listen address");
                *siprec = Some(new);
                *pending = false;
                if let Ok(mut s) = status.lock() {
                    if let Some(src) = s.sources.get_mut("siprec") {
                        src.listen = sc.listen.to_string();
                    }
                }
            }
            None => {
                tracing::error!(
                    "SIPREC keeps listening on {} (the new address could not be bound; see above)",
                    h.listen
                );
                *siprec = Some(h);
            }
        }
        return;
    }
    // The new sockets need a port the running listener holds: replace it
    // when no call is in progress (at once, if none is).
    h.stop_when_idle(true);
    let deadline = Instant::now() + Duration::from_millis(500);
    while !h.finished() && h.calls() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if h.finished() {
        *pending = false;
        *siprec = replace_siprec(Some(h), cfg, status, live, controls).await;
    } else {
        let n = h.calls();
        tracing::warn!(
            listen = %h.listen,
            "SIPREC listen change applied when the {n} calls in progress end (the new addresses share a port with the running listener); until then new calls are taken on {}",
            h.listen
        );
        *pending = true;
        *siprec = Some(h);
    }
}

/// Stop `old` (its calls have ended) and start the configured SIPREC source
/// in its place, with its RTP port pool.
pub(super) async fn replace_siprec(
    old: Option<crate::sources::siprec::SiprecHandle>,
    cfg: &Config,
    status: &SharedStatus,
    live: &Arc<Liveness>,
    controls: &Controls,
) -> Option<crate::sources::siprec::SiprecHandle> {
    let ports = match old {
        Some(h) => {
            let p = h.ports();
            h.stop().await;
            Some(p)
        }
        None => None,
    };
    start_siprec(cfg, status, live, controls, ports).await
}

/// Start the SIPREC server if enabled; its state goes to the status either way.
pub(super) async fn start_siprec(
    cfg: &Config,
    status: &SharedStatus,
    live: &Arc<Liveness>,
    controls: &Controls,
    ports: Option<crate::sources::siprec::SharedPorts>,
) -> Option<crate::sources::siprec::SiprecHandle> {
    start_siprec_with(cfg, status, live, controls, ports, true).await
}

/// `report_error`: false while another instance still serves (a reload that
/// could not bind the new address keeps the running one).
async fn start_siprec_with(
    cfg: &Config,
    status: &SharedStatus,
    live: &Arc<Liveness>,
    controls: &Controls,
    ports: Option<crate::sources::siprec::SharedPorts>,
    report_error: bool,
) -> Option<crate::sources::siprec::SiprecHandle> {
    let sc = &cfg.sources.siprec;
    if !sc.enabled {
        if let Ok(mut s) = status.lock() {
            s.sources.remove("siprec");
        }
        return None;
    }
    let set_error = |e: String| {
        if !report_error {
            return;
        }
        if let Ok(mut s) = status.lock() {
            let src = s
                .sources
                .entry("siprec".into())
                .or_insert_with(SourceStatus::default);
            src.up = false;
            src.error = Some(e);
            src.listen = sc.listen.to_string();
            src.tls = None;
        }
    };
    let out = match RecordingDir::new(&cfg.spool.dir, context(cfg, "siprec")) {
        Ok(o) => o,
        Err(e) => {
            set_error(format!("spool: {e}"));
            return None;
        }
    };
    match crate::sources::siprec::start(
        sc.clone(),
        pbx_core::call::EngineConfig {
            siprec_server: true,
            ..cfg.recording.engine_config()
        },
        cfg.recording.rtp_timeout,
        out,
        status.clone(),
        live.clone(),
        ports,
    )
    .await
    {
        Ok(h) => {
            controls.register("siprec", h.api());
            if let Ok(mut s) = status.lock() {
                let src = s
                    .sources
                    .entry("siprec".into())
                    .or_insert_with(SourceStatus::default);
                src.up = true;
                src.error = None;
                src.listen = sc.listen.to_string();
                src.tls = tls_description(sc);
            }
            tracing::info!(listen = %sc.listen, rtp_ports = ?sc.rtp_ports, "SIPREC recording server listening (UDP and TCP)");
            if let Some(tls) = tls_description(sc) {
                tracing::info!("SIPREC over TLS listening on {tls}");
            }
            Some(h)
        }
        Err(e) => {
            tracing::error!("SIPREC: cannot listen on {}: {e}", sc.listen);
            set_error(format!("cannot listen on {}: {e}", sc.listen));
            None
        }
    }
}

/// The TLS listener for /status and /readyz: address and client check.
fn tls_description(sc: &crate::config::SiprecConfig) -> Option<String> {
    let addr = sc.tls_listen?;
    Some(if sc.tls_client_ca.is_some() {
        format!("{addr} (client certificates required)")
    } else {
        format!("{addr}")
    })
}
