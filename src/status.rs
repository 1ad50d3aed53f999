//! What the daemon knows about itself: one [`Status`] snapshot per source,
//! published by each engine thread once a second, read by the health endpoint
//! (`/status`, `/metrics`, `/readyz`) and by `pbx-edge status`.
//!
//! One mutex around plain data, written by its owner and copied by readers: no
//! atomics sprinkled through the code, no locks held across I/O.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use pbx_core::call::EngineStats;
use serde::Serialize;

/// Counters and state of one source (sniff, siprec, ...).
#[derive(Debug, Default, Clone, Serialize)]
pub struct SourceStatus {
    /// Whether the source is bound / capturing.
    pub up: bool,
    /// Why not, if not.
    pub error: Option<String>,
    /// Where it listens (address or interface).
    pub listen: String,
    /// SIPREC: the SIP-over-TLS listener, if on (address, and whether client
    /// certificates are required).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<String>,
    /// Folder: how changes are noticed ("inotify", or "polling every 1s"
    /// and why, e.g. the inotify watch limit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watch: Option<String>,
    pub active_calls: u64,
    pub recording_calls: u64,
    pub engine: EngineCounters,
    /// Packets the kernel dropped before we saw them (sniffing).
    pub kernel_drops: u64,
    /// Sniffing: frames larger than the capture buffer (cut by the kernel,
    /// not decoded; a GRO/GSO super-packet).
    #[serde(skip_serializing_if = "is_zero")]
    pub truncated_frames: u64,
    /// Packets dropped because the engine could not keep up.
    pub queue_drops: u64,
    /// SRTP packets that failed authentication (wrong key, corrupted, replays).
    pub srtp_failures: u64,
    /// SIPREC: RTP datagrams refused by media admission, by reason.
    pub rtp_rejected: RtpRejected,
    /// SIPREC: how far the engine is behind the media received (ms; the
    /// machine too slow for its load a while): their audio waits in memory
    /// meanwhile, and beyond 4 s it is late for the recording.
    pub media_behind_ms: u64,
    /// SIPREC: the most it has been behind since the start.
    pub media_behind_max_ms: u64,
    pub errors: u64,
    pub recordings_written: u64,
    pub recordings_failed: u64,
    /// Calls or PBX recordings shorter than `recording.min_duration`: not kept.
    pub recordings_too_short: u64,
    /// Folder source: PBX recordings in a format pbx-edge cannot decode
    /// (counted in `recordings_failed` too).
    #[serde(skip_serializing_if = "is_zero")]
    pub recordings_unsupported: u64,
    pub bytes_written: u64,
    /// Failed attempts to start it in a row (a bind error, a missing
    /// interface); while above 0 the daemon tries again with a backoff.
    #[serde(skip_serializing_if = "is_zero")]
    pub start_failures: u64,
    /// SIPREC: SIP input refused, by reason (see [`crate::sources::siprec::guard::REASONS`]).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub sip_rejected: BTreeMap<String, u64>,
    /// HEP: packets received per capture agent id ("-": none given); the
    /// first 64 agents seen are counted apart, any more as "other".
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub hep_agents: BTreeMap<String, u64>,
    /// HEP: packets or connections refused, by reason (not_allowed, not_hep,
    /// truncated, malformed, unsupported, tcp_connections).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub hep_rejected: BTreeMap<String, u64>,
}

impl SourceStatus {
    /// Refresh what every engine-driven source reports: up, calls, engine
    /// counters and the recordings it wrote.
    pub fn record_engine(
        &mut self,
        engine: &pbx_core::call::CallEngine,
        written: &crate::recording::RecordingCounters,
    ) {
        self.up = true;
        self.error = None;
        self.active_calls = engine.active_calls() as u64;
        self.recording_calls = engine.recording_calls() as u64;
        self.engine = EngineCounters::from(engine.stats());
        self.recordings_written = written.written;
        self.recordings_failed = written.failed;
        self.recordings_too_short = written.too_short;
        self.bytes_written = written.bytes;
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Datagrams refused by media admission ([`crate::sources::siprec::admission`]), by reason.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct RtpRejected {
    /// Not from the stream's source.
    pub source: u64,
    /// An SSRC interleaved with the stream's locked one.
    pub ssrc: u64,
    /// To a port that carries no stream (any more).
    pub unknown_port: u64,
}

/// The subset of [`EngineStats`] exported.
#[derive(Debug, Default, Clone, Serialize)]
pub struct EngineCounters {
    pub frames: u64,
    pub sip_messages: u64,
    pub sip_malformed: u64,
    pub rtp_packets: u64,
    pub rtp_malformed: u64,
    pub rtp_unmatched: u64,
    pub calls_seen: u64,
    pub calls_recorded: u64,
    pub calls_without_media: u64,
    pub packets_lost: u64,
    pub packets_late: u64,
    pub capture_clock_steps_back: u64,
}

impl From<&EngineStats> for EngineCounters {
    fn from(s: &EngineStats) -> Self {
        EngineCounters {
            // What a source received: frames when it captures, datagrams
            // (and TCP pieces) when it owns the sockets.
            frames: s.frames + s.segments,
            sip_messages: s.sip_messages,
            sip_malformed: s.sip_malformed,
            rtp_packets: s.rtp_packets,
            rtp_malformed: s.rtp_malformed,
            rtp_unmatched: s.rtp_unmatched,
            calls_seen: s.calls_seen,
            calls_recorded: s.calls_recorded,
            calls_without_media: s.calls_without_media,
            packets_lost: s.rtp_lost,
            packets_late: s.rtp_late,
            capture_clock_steps_back: s.capture_clock_steps_back,
        }
    }
}

/// Spool figures.
#[derive(Debug, Default, Clone, Serialize)]
pub struct SpoolStatus {
    pub dir: String,
    pub writable: bool,
    pub files: u64,
    pub bytes: u64,
    pub max_size: u64,
    pub free_bytes: u64,
    /// Since the start, by every source (never decreases:
    /// [`crate::recording::TOTALS`]).
    pub recordings_written: u64,
    pub recordings_failed: u64,
    pub bytes_written: u64,
    pub repaired_at_start: u64,
    /// Files the start's recovery could not complete, waiting for a later
    /// try while the daemon runs (`daemon::retry_recovery`).
    pub recovery_pending: u64,
    /// Recordings such a later try completed.
    pub repaired_later: u64,
    /// Damaged records of sealed `.part`s that recovery replaced by
    /// silence, keeping the audio after them ([`crate::recording::DAMAGED_RECORDS`]).
    pub damaged_records: u64,
}

/// Everything `/status` shows.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Status {
    pub version: &'static str,
    pub agent_id: String,
    pub started_at: String,
    /// Seconds since `started` (filled in when the status is read).
    pub uptime_s: u64,
    #[serde(skip)]
    pub started: Option<std::time::Instant>,
    pub config_file: Option<String>,
    pub sources: BTreeMap<String, SourceStatus>,
    pub spool: SpoolStatus,
    pub cloud: CloudStatus,
    /// The live streams (`[stream]`).
    pub stream: StreamStatus,
    pub shutting_down: bool,
    /// Draining (`pbx-edge drain`, SIGUSR1): no new calls, the calls in
    /// progress finish, the spool is delivered, then the daemon exits.
    pub draining: bool,
    /// The drain's progress while draining.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain: Option<DrainStatus>,
    /// Heap in use, read for a metrics scrape only (see
    /// [`crate::sys::heap_in_use`]).
    #[serde(skip)]
    pub heap_bytes: Option<u64>,
}

/// Where a drain is.
#[derive(Debug, Default, Clone, Serialize)]
pub struct DrainStatus {
    /// `calls` (waiting for the calls in progress to end), `delivery`
    /// (delivering the spool), `exiting`.
    pub phase: String,
    /// Seconds since the drain began.
    pub since_s: u64,
    /// SIPREC dialogs still in progress.
    pub calls_in_progress: u64,
}

impl Status {
    /// Work in progress: a call on any source, or recordings not yet
    /// delivered or failed (the daemon's timers run faster while it has).
    pub fn busy(&self) -> bool {
        self.sources.values().any(|s| s.active_calls > 0)
            || self.stream.open > 0
            || self.cloud.in_flight > 0
            || self.cloud.queue.iter().any(|(state, n)| {
                *n > 0
                    && (state == "recorded"
                        || (self.cloud.configured
                            // (Uploads paused, 402, 401, TLS, 429, waiting
                            // for hours: the spool's figures need not be
                            // taken every second meanwhile.)
                            && self.cloud.paused.is_none()
                            && matches!(state.as_str(), "queued" | "uploading")))
            })
    }
}

/// The live streams at one moment (published by the daemon once a second).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StreamStatus {
    pub enabled: bool,
    /// Streams whose task runs (connected or retrying).
    pub open: u64,
    pub started: u64,
    /// Binary message bytes handed to the sockets.
    pub bytes: u64,
    pub reconnects: u64,
    /// Streams the receiver took whole (`stop` with `complete: true`).
    pub complete: u64,
    /// Streams given up or stopped incomplete.
    pub incomplete: u64,
    /// Streams ended by a receiver's `error` (or a protocol violation).
    pub refused: u64,
    /// Chunks that did not fit a call's queue (read back from the file).
    pub dropped_chunks: u64,
    /// Calls not streamed: `[filter]` keeps them on the machine.
    pub filtered: u64,
    /// The largest lag of an open stream, ms.
    pub max_lag_ms: u64,
    /// Why the last stream had trouble (no numbers, no tokens).
    pub last_error: Option<String>,
    /// Streaming could not be set up (token or CA file).
    pub config_error: Option<String>,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct CloudStatus {
    pub configured: bool,
    pub url_host: Option<String>,
    /// "tus" or "multipart".
    pub protocol: String,
    /// Spool rows per state (recorded, queued, uploading, delivered, failed, filtered).
    pub queue: BTreeMap<String, u64>,
    /// Age of the oldest recording not yet delivered (seconds).
    pub oldest_undelivered_s: Option<u64>,
    /// Recordings delivered / filtered, all time (kept in the spool database).
    pub delivered_total: u64,
    pub filtered_total: u64,
    /// Uploads running now.
    pub in_flight: u64,
    /// Body bytes sent since start.
    pub bytes_uploaded: u64,
    /// Upload attempts since start.
    pub attempts: u64,
    /// Failed attempts since start, by reason (server, throttled, timeout,
    /// connection, local_io, auth, payment, tls, refused).
    pub failures: BTreeMap<String, u64>,
    pub last_error: Option<String>,
    /// Why every upload is paused (401/403/402, TLS certificate), if it is.
    pub paused: Option<String>,
    /// auth | payment | tls
    pub pause_kind: Option<String>,
    /// Outside the daily upload window: no upload starts.
    pub outside_upload_window: bool,
    /// The spool database cannot be used.
    pub spool_error: Option<String>,
    /// Times the spool database was rebuilt since start (corrupt or missing).
    pub spool_repairs: u64,
    /// The last rebuild: when, why, and what it found.
    pub spool_repaired: Option<String>,
}

/// Shared handle on the daemon's status.
pub type SharedStatus = Arc<Mutex<Status>>;

/// Readiness: (ready, per-component reasons).
pub fn readiness(s: &Status) -> (bool, BTreeMap<String, String>) {
    let mut ok = true;
    let mut parts = BTreeMap::new();
    for (name, src) in &s.sources {
        if src.up {
            parts.insert(format!("source.{name}"), "ok".to_string());
            if let Some(tls) = &src.tls {
                parts.insert(
                    format!("source.{name}.tls"),
                    format!("ok, listening on {tls}"),
                );
            }
            if let Some(w) = &src.watch {
                parts.insert(format!("source.{name}.watch"), w.clone());
            }
        } else {
            ok = false;
            let mut why = src.error.clone().unwrap_or_else(|| "not running".into());
            if src.start_failures > 0 {
                let _ = write!(
                    why,
                    " (could not start, {} attempts; retrying)",
                    src.start_failures
                );
            }
            parts.insert(format!("source.{name}"), why);
        }
    }
    let sp = &s.spool;
    if let Some(why) = spool_dir_problem(sp) {
        ok = false;
        parts.insert("spool".into(), why);
    } else if sp.max_size > 0 && sp.bytes > sp.max_size {
        ok = false;
        parts.insert(
            "spool".into(),
            format!(
                "spool holds {} bytes, above max_size {}",
                sp.bytes, sp.max_size
            ),
        );
    } else {
        parts.insert("spool".into(), "ok".into());
    }
    if let Some(e) = spool_db_problem(s) {
        ok = false;
        parts.insert("spool.queue".into(), e);
    } else if let Some(r) = &s.cloud.spool_repaired {
        parts.insert("spool.queue".into(), format!("ok (rebuilt {r})"));
    }
    if let (true, Some(reason)) = (s.cloud.configured, &s.cloud.paused) {
        // A refused token or certificate is the operator's to fix: not
        // ready. A depleted balance (402) is the customer's account: the
        // daemon records and spools as before (CONTRACT §4), so it stays
        // ready (a dispatcher must not send its calls elsewhere for it).
        // A rate limit (429) likewise: it passes by itself.
        if !matches!(
            s.cloud.pause_kind.as_deref(),
            Some("payment" | "rate_limit")
        ) {
            ok = false;
        }
        parts.insert("cloud".into(), format!("uploads paused: {reason}"));
    } else if s.cloud.configured {
        parts.insert("cloud".into(), "ok".into());
    } else {
        parts.insert(
            "cloud".into(),
            "not configured (recording and spooling only)".into(),
        );
    }
    // Best effort: a stream's trouble is shown, never makes /readyz fail.
    let st = &s.stream;
    if let Some(e) = &st.config_error {
        parts.insert("stream".into(), format!("not streaming: {e}"));
    } else if st.enabled {
        let mut t = format!("ok, {} open", st.open);
        if st.max_lag_ms > 0 {
            let _ = write!(t, ", up to {} ms behind", st.max_lag_ms);
        }
        if let Some(e) = &st.last_error {
            let _ = write!(t, "; last trouble: {e}");
        }
        parts.insert("stream".into(), t);
    }
    if s.shutting_down {
        ok = false;
        parts.insert("daemon".into(), "shutting down".into());
    } else if s.draining {
        ok = false;
        let phase = s.drain.as_ref().map_or("calls", |d| d.phase.as_str());
        parts.insert("daemon".into(), format!("draining ({phase})"));
    }
    (ok, parts)
}

/// What makes the daemon's health degraded while it records as before
/// (CONTRACT §2: above `spool.max_size`, "health degraded, new calls still
/// recorded while the disk has room"; uploads paused by a depleted balance
/// or a rate limit): shown by `/healthz` beside its 200.
pub fn degraded(s: &Status) -> Vec<String> {
    let mut out = Vec::new();
    let sp = &s.spool;
    if sp.max_size > 0 && sp.bytes > sp.max_size {
        out.push(format!(
            "spool holds {} bytes, above max_size {}",
            sp.bytes, sp.max_size
        ));
    }
    if let (true, Some(reason), Some("payment" | "rate_limit")) = (
        s.cloud.configured,
        &s.cloud.paused,
        s.cloud.pause_kind.as_deref(),
    ) {
        out.push(format!("uploads paused: {reason}"));
    }
    out
}

/// Free space below which the spool counts as full.
pub const SPOOL_MIN_FREE: u64 = 64 * 1024 * 1024;

/// The spool directory cannot take recordings: not writable, or its disk
/// almost full (below [`SPOOL_MIN_FREE`]).
fn spool_dir_problem(sp: &SpoolStatus) -> Option<String> {
    if !sp.writable {
        Some(format!("{} is not writable", sp.dir))
    } else if sp.free_bytes < SPOOL_MIN_FREE {
        Some(format!(
            "disk almost full: {} free",
            crate::spool::human_size(sp.free_bytes)
        ))
    } else {
        None
    }
}

/// The spool database cannot be used (broken, locked, not opened yet).
fn spool_db_problem(s: &Status) -> Option<String> {
    s.cloud
        .spool_error
        .as_ref()
        .map(|e| format!("spool database: {e}"))
}

/// Why the spool cannot take a new call's recording now, if it cannot: the
/// directory is not writable, its disk is almost full, or the spool database
/// is unusable -- the same verdicts `/readyz` gives for `spool` and
/// `spool.queue` (a spool above `max_size` is not one: new calls are still
/// recorded). The SIPREC server answers OPTIONS `503` while this is `Some`.
pub fn spool_unusable(s: &Status) -> Option<String> {
    spool_dir_problem(&s.spool).or_else(|| spool_db_problem(s))
}

/// A label value escaped for the text format (backslash, quote, newline).
fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Prometheus text exposition (version 0.0.4).
pub fn render_metrics(s: &Status) -> String {
    let mut o = String::with_capacity(4096);
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(o, "# HELP {name} {help}");
        let _ = writeln!(o, "# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(o, "{name}{labels} {v}");
        }
    };
    let per_source = |f: &dyn Fn(&SourceStatus) -> u64| -> Vec<(String, f64)> {
        s.sources
            .iter()
            .map(|(n, st)| (format!("{{source=\"{n}\"}}"), f(st) as f64))
            .collect()
    };
    family(
        "pbx_edge_up",
        "gauge",
        "Whether each source is running (1) or not (0).",
        &per_source(&|x| u64::from(x.up)),
    );
    family(
        "pbx_edge_active_calls",
        "gauge",
        "Calls currently followed (with or without media).",
        &per_source(&|x| x.active_calls),
    );
    family(
        "pbx_edge_recording_calls",
        "gauge",
        "Calls currently being recorded.",
        &per_source(&|x| x.recording_calls),
    );
    family(
        "pbx_edge_calls_recorded_total",
        "counter",
        "Calls whose recording was completed.",
        &per_source(&|x| x.engine.calls_recorded),
    );
    family(
        "pbx_edge_calls_without_media_total",
        "counter",
        "Calls that ended without any media (nothing to record).",
        &per_source(&|x| x.engine.calls_without_media),
    );
    family(
        "pbx_edge_packets_received_total",
        "counter",
        "Packets (frames or datagrams) received by each source.",
        &per_source(&|x| x.engine.frames),
    );
    family(
        "pbx_edge_rtp_packets_total",
        "counter",
        "RTP packets matched to a call.",
        &per_source(&|x| x.engine.rtp_packets),
    );
    family(
        "pbx_edge_rtp_packets_lost_total",
        "counter",
        "RTP packets missing from the sequence numbers of recorded calls (counted when the recording ends).",
        &per_source(&|x| x.engine.packets_lost),
    );
    family(
        "pbx_edge_rtp_packets_late_total",
        "counter",
        "RTP packets of recorded calls that came after their place in the recording was written (beyond recording.jitter): dropped, not placed (counted when the recording ends).",
        &per_source(&|x| x.engine.packets_late),
    );
    family(
        "pbx_edge_capture_clock_steps_back_total",
        "counter",
        "Times a capture's clock stepped back beyond the jitter window (sniffing): the time after each continued from before it.",
        &per_source(&|x| x.engine.capture_clock_steps_back),
    );
    family(
        "pbx_edge_rtp_unmatched_total",
        "counter",
        "RTP packets that belonged to no known call.",
        &per_source(&|x| x.engine.rtp_unmatched),
    );
    family(
        "pbx_edge_sip_messages_total",
        "counter",
        "SIP messages parsed.",
        &per_source(&|x| x.engine.sip_messages),
    );
    family(
        "pbx_edge_malformed_total",
        "counter",
        "Malformed SIP or RTP packets dropped.",
        &per_source(&|x| x.engine.sip_malformed + x.engine.rtp_malformed),
    );
    family(
        "pbx_edge_packets_dropped_total",
        "counter",
        "Packets dropped before the engine: by the kernel (reason=kernel), because the engine queue was full (reason=queue), or cut by the kernel, larger than the capture buffer (reason=truncated, sniffing; shown once it happened).",
        &s.sources
            .iter()
            .flat_map(|(n, st)| {
                [
                    (
                        format!("{{source=\"{n}\",reason=\"kernel\"}}"),
                        st.kernel_drops as f64,
                    ),
                    (
                        format!("{{source=\"{n}\",reason=\"queue\"}}"),
                        st.queue_drops as f64,
                    ),
                ]
                .into_iter()
                .chain((st.truncated_frames > 0).then(|| {
                    (
                        format!("{{source=\"{n}\",reason=\"truncated\"}}"),
                        st.truncated_frames as f64,
                    )
                }))
            })
            .collect::<Vec<_>>(),
    );
    family(
        "pbx_edge_sip_rejected_total",
        "counter",
        "SIP input refused by the SIPREC server, by reason: answered 513/400/488 (too_large, too_many_headers, too_many_vias, bad_content_length, bad_request, sdp_limit, metadata_limit, body_limit, not_acceptable), dropped (unanswerable, rate_limited), connections closed (tcp_idle, tcp_slow, tcp_connections).",
        &s.sources
            .iter()
            .flat_map(|(n, st)| {
                st.sip_rejected.iter().map(move |(reason, v)| {
                    (
                        format!("{{source=\"{n}\",reason=\"{reason}\"}}"),
                        *v as f64,
                    )
                })
            })
            .collect::<Vec<_>>(),
    );
    let labelled = |f: &dyn Fn(&SourceStatus) -> &BTreeMap<String, u64>, label: &str| {
        s.sources
            .iter()
            .flat_map(|(n, st)| {
                f(st)
                    .iter()
                    .map(move |(k, v)| (format!("{{source=\"{n}\",{label}=\"{k}\"}}"), *v as f64))
            })
            .collect::<Vec<_>>()
    };
    family(
        "pbx_edge_hep_packets_total",
        "counter",
        "HEP packets received, by capture agent id (\"-\": none given; the first 64 agents seen get a series each, later ones count as agent=\"other\").",
        &labelled(&|x| &x.hep_agents, "agent"),
    );
    family(
        "pbx_edge_hep_rejected_total",
        "counter",
        "HEP packets or connections refused, by reason: not_allowed, not_hep, truncated, malformed, unsupported, tcp_connections.",
        &labelled(&|x| &x.hep_rejected, "reason"),
    );
    family(
        "pbx_edge_recordings_too_short_total",
        "counter",
        "Calls or PBX recordings not kept because they were shorter than recording.min_duration, by source.",
        &per_source(&|x| x.recordings_too_short),
    );
    family(
        "pbx_edge_recordings_unsupported_total",
        "counter",
        "PBX recordings the folder source cannot decode (their format), by source; counted as failed too.",
        &per_source(&|x| x.recordings_unsupported),
    );
    family(
        "pbx_edge_srtp_auth_failures_total",
        "counter",
        "SRTP packets dropped because they failed authentication (or were replays).",
        &per_source(&|x| x.srtp_failures),
    );
    family(
        "pbx_edge_rtp_rejected_total",
        "counter",
        "RTP datagrams on SIPREC ports kept from the recording by media admission: not from the stream's source (reason=source), an SSRC interleaved with the stream's (reason=ssrc), to a port without a stream (reason=unknown_port).",
        &s.sources
            .iter()
            .filter(|(n, _)| n.starts_with("siprec"))
            .flat_map(|(n, st)| {
                let r = st.rtp_rejected;
                [
                    ("source", r.source),
                    ("ssrc", r.ssrc),
                    ("unknown_port", r.unknown_port),
                ]
                .map(|(reason, v)| (format!("{{reason=\"{reason}\",source=\"{n}\"}}"), v as f64))
            })
            .collect::<Vec<_>>(),
    );
    family(
        "pbx_edge_media_behind_seconds",
        "gauge",
        "How far the SIPREC engine is behind the media received (the machine too slow for its load a while); the audio waits in memory meanwhile, and what is more than 4 s behind is late for the recording. max=\"true\": the most since the start.",
        &s.sources
            .iter()
            .filter(|(n, _)| n.starts_with("siprec"))
            .flat_map(|(n, st)| {
                [
                    (format!("{{source=\"{n}\"}}"), st.media_behind_ms),
                    (format!("{{max=\"true\",source=\"{n}\"}}"), st.media_behind_max_ms),
                ]
                .map(|(l, v)| (l, v as f64 / 1000.0))
            })
            .collect::<Vec<_>>(),
    );
    family(
        "pbx_edge_source_errors_total",
        "counter",
        "Errors of each source (socket errors, unwritable recordings).",
        &per_source(&|x| x.errors),
    );
    let sp = &s.spool;
    family(
        "pbx_edge_spool_files",
        "gauge",
        "Files in the spool.",
        &[(String::new(), sp.files as f64)],
    );
    family(
        "pbx_edge_spool_bytes",
        "gauge",
        "Bytes in the spool.",
        &[(String::new(), sp.bytes as f64)],
    );
    family(
        "pbx_edge_spool_free_bytes",
        "gauge",
        "Free bytes on the spool's file system.",
        &[(String::new(), sp.free_bytes as f64)],
    );
    family(
        "pbx_edge_spool_recovery_pending",
        "gauge",
        "Files the start's crash recovery could not complete (an I/O error), tried again while the daemon runs.",
        &[(String::new(), sp.recovery_pending as f64)],
    );
    family(
        "pbx_edge_spool_damaged_records_total",
        "counter",
        "Records of encrypted recordings cut off by a crash that failed authentication in the middle (damaged on disk) and were replaced by silence of their length by recovery (since start).",
        &[(String::new(), sp.damaged_records as f64)],
    );
    family(
        "pbx_edge_recordings_written_total",
        "counter",
        "Recordings written to the spool since the daemon started (by every source, replaced ones included).",
        &[(String::new(), sp.recordings_written as f64)],
    );
    family(
        "pbx_edge_recordings_failed_total",
        "counter",
        "Recordings that could not be written (disk full, I/O error) since the daemon started.",
        &[(String::new(), sp.recordings_failed as f64)],
    );
    family(
        "pbx_edge_bytes_written_total",
        "counter",
        "Audio bytes written to the spool since the daemon started.",
        &[(String::new(), sp.bytes_written as f64)],
    );
    let c = &s.cloud;
    family(
        "pbx_edge_delivery_queue",
        "gauge",
        "Recordings in the spool queue by state.",
        &c.queue
            .iter()
            .map(|(st, n)| (format!("{{state=\"{st}\"}}"), *n as f64))
            .collect::<Vec<_>>(),
    );
    family(
        "pbx_edge_delivery_oldest_undelivered_seconds",
        "gauge",
        "Age of the oldest recording not yet delivered (0 when none).",
        &[(String::new(), c.oldest_undelivered_s.unwrap_or(0) as f64)],
    );
    family(
        "pbx_edge_delivery_in_flight",
        "gauge",
        "Uploads running now.",
        &[(String::new(), c.in_flight as f64)],
    );
    family(
        "pbx_edge_upload_bytes_total",
        "counter",
        "Recording bytes sent to the cloud.",
        &[(String::new(), c.bytes_uploaded as f64)],
    );
    family(
        "pbx_edge_upload_attempts_total",
        "counter",
        "Upload attempts started.",
        &[(String::new(), c.attempts as f64)],
    );
    family(
        "pbx_edge_upload_failures_total",
        "counter",
        "Failed upload attempts by reason.",
        &c.failures
            .iter()
            .map(|(r, n)| (format!("{{reason=\"{r}\"}}"), *n as f64))
            .collect::<Vec<_>>(),
    );
    family(
        "pbx_edge_recordings_delivered_total",
        "counter",
        "Recordings delivered to the cloud (all time).",
        &[(String::new(), c.delivered_total as f64)],
    );
    family(
        "pbx_edge_spool_repairs_total",
        "counter",
        "Times the spool database was found corrupt or missing and rebuilt from the recordings on disk (since start).",
        &[(String::new(), c.spool_repairs as f64)],
    );
    family(
        "pbx_edge_recordings_filtered_total",
        "counter",
        "Recordings stopped by the local filters (all time).",
        &[(String::new(), c.filtered_total as f64)],
    );
    family(
        "pbx_edge_delivery_paused",
        "gauge",
        "1 while every upload is paused, labelled with the reason (auth, payment, tls, rate_limit, foreign_location, endpoint).",
        &[(
            c.pause_kind
                .as_ref()
                .map(|k| format!("{{reason=\"{k}\"}}"))
                .unwrap_or_default(),
            f64::from(u8::from(c.paused.is_some())),
        )],
    );
    let st = &s.stream;
    let one = |v: u64| vec![(String::new(), v as f64)];
    family(
        "pbx_edge_stream_open",
        "gauge",
        "Live streams in progress (connected or retrying).",
        &one(st.open),
    );
    family(
        "pbx_edge_stream_bytes_total",
        "counter",
        "Bytes of live audio messages sent.",
        &one(st.bytes),
    );
    family(
        "pbx_edge_stream_reconnects_total",
        "counter",
        "Live streams resumed after a broken connection.",
        &one(st.reconnects),
    );
    family(
        "pbx_edge_stream_lag_seconds",
        "gauge",
        "How far the most delayed live stream is behind the recording.",
        &[(String::new(), st.max_lag_ms as f64 / 1000.0)],
    );
    family(
        "pbx_edge_streams_total",
        "counter",
        "Live streams ended, by outcome (complete, incomplete, refused).",
        &[
            ("{outcome=\"complete\"}".to_string(), st.complete as f64),
            ("{outcome=\"incomplete\"}".to_string(), st.incomplete as f64),
            ("{outcome=\"refused\"}".to_string(), st.refused as f64),
        ],
    );
    family(
        "pbx_edge_stream_filtered_total",
        "counter",
        "Calls not streamed live because [filter] keeps them on the machine.",
        &one(st.filtered),
    );
    family(
        "pbx_edge_stream_chunks_from_file_total",
        "counter",
        "Audio chunks a slow stream read back from the recording's file.",
        &one(st.dropped_chunks),
    );
    let (ready, _) = readiness(s);
    family(
        "pbx_edge_ready",
        "gauge",
        "1 when /readyz answers 200.",
        &[(String::new(), f64::from(u8::from(ready)))],
    );
    family(
        "pbx_edge_info",
        "gauge",
        "Always 1; its labels name this agent (agent.id, as in every upload) and its version, for a fleet view across instances.",
        &[(
            format!(
                "{{agent_id=\"{}\",version=\"{}\"}}",
                label_value(&s.agent_id),
                label_value(s.version)
            ),
            1.0,
        )],
    );
    family(
        "pbx_edge_draining",
        "gauge",
        "1 while draining (pbx-edge drain, SIGUSR1): no new calls, OPTIONS and INVITE answered 503.",
        &[(String::new(), f64::from(u8::from(s.draining)))],
    );
    family(
        "pbx_edge_spool_usable",
        "gauge",
        "1 when the spool can take new recordings (writable, disk not full, spool database usable); 0 makes the SIPREC server answer OPTIONS 503.",
        &[(
            String::new(),
            f64::from(u8::from(spool_unusable(s).is_none())),
        )],
    );
    if let Some(b) = s.heap_bytes {
        family(
            "pbx_edge_heap_bytes",
            "gauge",
            "Heap in use by the process (the C allocator's count of bytes allocated and not freed; the resident memory also holds the allocator's free space, stacks and the binary).",
            &[(String::new(), b as f64)],
        );
    }
    family(
        "pbx_edge_uptime_seconds",
        "gauge",
        "Seconds since the daemon started.",
        &[(String::new(), s.uptime_s as f64)],
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Recordings waiting while uploads are paused (402 for days) do not
    /// keep the daemon's supervision on its fast, busy tick (a stat of the
    /// whole spool every second); waiting for an upload otherwise does.
    #[test]
    fn a_paused_queue_is_not_busy() {
        let mut s = Status::default();
        s.cloud.configured = true;
        s.cloud.queue = [("queued".to_string(), 5000u64)].into_iter().collect();
        assert!(s.busy());
        s.cloud.paused = Some("the cloud account balance is depleted (HTTP 402)".into());
        assert!(!s.busy());
        s.cloud.queue.insert("recorded".into(), 1);
        assert!(s.busy(), "a recording to look at");
    }

    #[test]
    fn metrics_are_prometheus_text() {
        let mut s = Status {
            version: "0",
            ..Status::default()
        };
        s.sources.insert(
            "sniff".into(),
            SourceStatus {
                up: true,
                active_calls: 3,
                truncated_frames: 2,
                ..SourceStatus::default()
            },
        );
        s.sources.insert(
            "folder".into(),
            SourceStatus {
                up: true,
                recordings_too_short: 4,
                recordings_unsupported: 1,
                ..SourceStatus::default()
            },
        );
        s.spool.writable = true;
        s.spool.free_bytes = 1 << 40;
        let m = render_metrics(&s);
        assert!(
            m.contains("pbx_edge_packets_dropped_total{source=\"sniff\",reason=\"truncated\"} 2")
        );
        assert!(m.contains("pbx_edge_recordings_too_short_total{source=\"folder\"} 4"));
        assert!(m.contains("pbx_edge_recordings_unsupported_total{source=\"folder\"} 1"));
        assert!(m.contains("# TYPE pbx_edge_active_calls gauge"));
        assert!(m.contains("pbx_edge_active_calls{source=\"sniff\"} 3"));
        assert!(m.contains("pbx_edge_ready 1"));
        for line in m.lines().filter(|l| !l.starts_with('#')) {
            let mut parts = line.rsplitn(2, ' ');
            let v = parts.next().unwrap();
            assert!(v.parse::<f64>().is_ok(), "bad sample line {line}");
        }
    }

    #[test]
    fn readiness_names_the_reason() {
        let mut s = Status::default();
        s.spool.writable = true;
        s.spool.free_bytes = 1 << 40;
        s.sources.insert(
            "siprec".into(),
            SourceStatus {
                up: false,
                error: Some("cannot bind 127.0.0.1:5090: address in use".into()),
                ..SourceStatus::default()
            },
        );
        let (ok, parts) = readiness(&s);
        assert!(!ok);
        assert!(parts["source.siprec"].contains("address in use"));
        assert!(parts["cloud"].contains("not configured"));
    }

    #[test]
    fn spool_unusable_follows_the_readiness_verdicts_and_draining_is_not_ready() {
        let mut s = Status::default();
        s.spool.dir = "/spool".into();
        s.spool.writable = true;
        s.spool.free_bytes = 1 << 40;
        assert_eq!(spool_unusable(&s), None);
        assert!(readiness(&s).0);
        // Above max_size: degraded, but new calls are still recorded.
        assert!(degraded(&s).is_empty());
        s.spool.max_size = 10;
        s.spool.bytes = 11;
        assert!(!readiness(&s).0);
        assert_eq!(spool_unusable(&s), None);
        assert_eq!(
            degraded(&s),
            vec!["spool holds 11 bytes, above max_size 10".to_string()]
        );
        s.spool.max_size = 0;
        s.spool.free_bytes = SPOOL_MIN_FREE - 1;
        assert!(spool_unusable(&s).unwrap().contains("disk almost full"));
        assert_eq!(readiness(&s).1["spool"], spool_unusable(&s).unwrap());
        s.spool.free_bytes = 1 << 40;
        s.spool.writable = false;
        assert!(spool_unusable(&s).unwrap().contains("not writable"));
        s.spool.writable = true;
        s.cloud.spool_error = Some("database disk image is malformed".into());
        assert!(spool_unusable(&s).unwrap().contains("malformed"));
        assert_eq!(readiness(&s).1["spool.queue"], spool_unusable(&s).unwrap());
        assert!(render_metrics(&s).contains("pbx_edge_spool_usable 0"));
        s.cloud.spool_error = None;
        assert!(render_metrics(&s).contains("pbx_edge_spool_usable 1"));
        s.draining = true;
        let (ok, parts) = readiness(&s);
        assert!(!ok);
        assert_eq!(parts["daemon"], "draining (calls)");
        assert!(render_metrics(&s).contains("pbx_edge_draining 1"));
        s.agent_id = "edge \"a\"\\1".into();
        assert!(render_metrics(&s)
            .contains("pbx_edge_info{agent_id=\"edge \\\"a\\\"\\\\1\",version=\"\"} 1"));
    }

    #[test]
    fn the_grafana_dashboard_uses_only_metrics_that_exist() {
        let dash = include_str!("../docs/grafana-dashboard.json");
        let m = render_metrics(&Status::default());
        let mut names: Vec<&str> = dash
            .match_indices("pbx_edge_")
            .map(|(i, _)| {
                let rest = &dash[i..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                &rest[..end]
            })
            .filter(|n| *n != "pbx_edge_fleet")
            .collect();
        names.sort_unstable();
        names.dedup();
        assert!(names.len() >= 10, "{names:?}");
        for n in names {
            assert!(m.contains(&format!("# TYPE {n} ")), "{n} is not exported");
        }
    }
}
