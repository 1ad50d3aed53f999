//! Live streaming (CONTRACT §5): each call's two channels sent over a
//! WebSocket while the call is recorded, besides (never instead of) the
//! recording, which stays the source of truth.
//!
//! In: the `[stream]` settings ([`StreamSettings::from_config`]) and, through
//! the [`AudioTap`] a [`StreamHub`] hands to the recording directories,
//! every recording's start, its audio as each chunk is written to the file
//! (when it leaves the engine's hold-back window) and its end.
//! Out: one WebSocket per call to `stream.url` speaking [`protocol`]
//! ([`client`]), and counters ([`StreamStatus`]) for `/status` and
//! `/metrics`.
//!
//! Promises:
//! - The engine and the recording never wait for a stream: a chunk goes to
//!   the call's stream task through a bounded queue; when the queue is full
//!   (a slow or absent receiver) it is dropped there and the task reads the
//!   missed audio back from the recording's file
//!   ([`crate::recording::RecordingFile::read_frames`]).
//! - A stream carries exactly the samples of the final WAV, in order, each
//!   binary message `stream.frame` long (the recording's chunks gathered;
//!   shorter only for audio that waited a whole frame, and the last one)
//!   and starting where the server says it holds (`ready`), so offsets
//!   never go back.
//! - Broken connections are retried with full-jitter backoff and resumed;
//!   a stream more than `stream.max_lag` behind (or without its receiver
//!   for that long) is given up for that call: `stop` with
//!   `"complete": false` when the receiver is reachable again. A server
//!   `error` ends that call's stream. Streams never affect `/readyz`.
//! - A stream broken by a crash is resumed at the next start for the
//!   recording completed from what the crash left
//!   ([`StreamHub::resume_recovered`]): `start` with `"resume": true`, the
//!   rest of the file, `stop`.
//! - The token goes only into the `Authorization` header (marked
//!   sensitive); audio, numbers and tokens are never logged.
//!
//! The receiver end is swappable: everything that speaks to it is
//! [`client`] (transport) and [`protocol`] (messages); the rest of the
//! daemon sees only [`StreamHub`] and the recording's [`AudioTap`].

pub mod client;
pub mod protocol;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Notify};
use tokio_rustls::rustls::ClientConfig;

use crate::config::Config;
use crate::recording::{AudioTap, CallTap, TapBegin, TapEnd};
use crate::status::{SharedStatus, StreamStatus};
use crate::upload::Secret;

/// Chunks (each ≥ 40 ms of audio) queued per call before the stream task
/// falls back to reading the file.
const QUEUE_CHUNKS: usize = 16;

/// How to reach the stream receiver.
pub struct StreamSettings {
    /// `stream.url`.
    pub url: String,
    /// The token as read at start or reload ...
    pub token: Option<Secret>,
    /// ... and its file, read again at every connection (a token rotated
    /// by rewriting the file is used without a reload, as uploads do).
    pub token_file: Option<std::path::PathBuf>,
    /// Audio per binary message.
    pub frame: Duration,
    pub max_lag: Duration,
    pub tls: Arc<ClientConfig>,
    /// `[filter]`: a call the filters keep on the machine is not streamed.
    pub filters: crate::config::filters::Filters,
}

impl std::fmt::Debug for StreamSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamSettings")
            .field("url", &self.url)
            .field("frame", &self.frame)
            .field("max_lag", &self.max_lag)
            .finish()
    }
}

impl StreamSettings {
    /// The settings of `[stream]`; `Ok(None)` when it is off. Reads the token
    /// (`stream.token_file`, else the cloud's) and the CA file.
    pub fn from_config(cfg: &Config) -> Result<Option<StreamSettings>, String> {
        let s = &cfg.stream;
        if !s.enabled {
            return Ok(None);
        }
        let token_file = s.token_path(&cfg.cloud).to_path_buf();
        let token =
            crate::upload::read_token(&token_file).map_err(|e| format!("stream token: {e}"))?;
        let tls = crate::sys::tls::client_config(cfg.cloud.ca_file.as_deref())
            .map_err(|e| format!("cloud.ca_file: {e}"))?;
        Ok(Some(StreamSettings {
            url: s.url.clone(),
            token,
            token_file: Some(token_file),
            frame: s.frame,
            max_lag: s.max_lag,
            tls,
            filters: crate::config::filters::Filters::from_config(cfg),
        }))
    }
}

/// Counters of every call's stream.
#[derive(Debug, Default)]
pub struct StreamStats {
    /// Streams whose task runs (connected or retrying).
    pub open: AtomicU64,
    /// Calls not streamed because `[filter]` keeps them on the machine.
    pub filtered: AtomicU64,
    pub started: AtomicU64,
    /// Binary message bytes (offset + PCM) handed to the sockets.
    pub bytes: AtomicU64,
    pub reconnects: AtomicU64,
    /// Streams that ended with `stop` … `complete: true` taken by the server.
    pub complete: AtomicU64,
    /// Streams given up or stopped incomplete.
    pub incomplete: AtomicU64,
    /// Streams ended by a server `error` (or a protocol violation).
    pub refused: AtomicU64,
    /// Chunks that did not fit a call's queue (read back from the file).
    pub dropped_chunks: AtomicU64,
    next_id: AtomicU64,
    /// Each open stream's lag in ms (audio written, not yet sent).
    lags: Mutex<HashMap<u64, u64>>,
    last_error: Mutex<Option<String>>,
    /// Where the counters are published when a stream starts, ends or
    /// reconnects (the daemon's tick publishes bytes and lag too).
    status: std::sync::OnceLock<SharedStatus>,
}

impl StreamStats {
    fn register(&self) -> u64 {
        self.open.fetch_add(1, Ordering::Relaxed);
        self.started.fetch_add(1, Ordering::Relaxed);
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn set_lag(&self, id: u64, ms: u64) {
        if let Ok(mut l) = self.lags.lock() {
            l.insert(id, ms);
        }
    }

    fn unregister(&self, id: u64) {
        if let Ok(mut l) = self.lags.lock() {
            l.remove(&id);
        }
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    fn error(&self, e: String) {
        if let Ok(mut l) = self.last_error.lock() {
            *l = Some(e);
        }
    }

    /// Copy the counters into the daemon's status (its `config_error` kept).
    pub(crate) fn publish(&self) {
        let Some(status) = self.status.get() else {
            return;
        };
        if let Ok(mut s) = status.lock() {
            let enabled = s.stream.enabled;
            s.stream = StreamStatus {
                config_error: s.stream.config_error.take(),
                ..self.snapshot(enabled)
            };
        }
    }

    pub fn snapshot(&self, enabled: bool) -> StreamStatus {
        let lag_ms = self
            .lags
            .lock()
            .map(|l| l.values().copied().max().unwrap_or(0))
            .unwrap_or(0);
        StreamStatus {
            enabled,
            open: self.open.load(Ordering::Relaxed),
            started: self.started.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            complete: self.complete.load(Ordering::Relaxed),
            incomplete: self.incomplete.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            dropped_chunks: self.dropped_chunks.load(Ordering::Relaxed),
            filtered: self.filtered.load(Ordering::Relaxed),
            max_lag_ms: lag_ms,
            last_error: self.last_error.lock().ok().and_then(|l| l.clone()),
            config_error: None,
        }
    }
}

struct HubInner {
    rt: tokio::runtime::Handle,
    settings: RwLock<Option<Arc<StreamSettings>>>,
    stats: Arc<StreamStats>,
    /// The daemon stops and its time is up: every stream still going says
    /// `stop` (`"complete": false`) where it is and ends.
    closing: tokio_util::sync::CancellationToken,
}

/// Starts a stream task for every recording that begins while streaming is
/// configured. Cheap to clone.
#[derive(Clone)]
pub struct StreamHub {
    inner: Arc<HubInner>,
}

impl std::fmt::Debug for StreamHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StreamHub")
    }
}

impl StreamHub {
    /// A hub whose stream tasks run on `rt`; off until [`StreamHub::configure`].
    pub fn new(rt: tokio::runtime::Handle) -> StreamHub {
        StreamHub {
            inner: Arc::new(HubInner {
                rt,
                settings: RwLock::new(None),
                stats: Arc::new(StreamStats::default()),
                closing: tokio_util::sync::CancellationToken::new(),
            }),
        }
    }

    /// New settings (start, reload): recordings that begin from now on use
    /// them; `None` turns streaming off for them. Streams in progress keep
    /// theirs.
    pub fn configure(&self, s: Option<StreamSettings>) {
        if let Ok(mut w) = self.inner.settings.write() {
            *w = s.map(Arc::new);
        }
    }

    pub fn enabled(&self) -> bool {
        self.inner
            .settings
            .read()
            .map(|s| s.is_some())
            .unwrap_or(false)
    }

    pub fn snapshot(&self) -> StreamStatus {
        self.inner.stats.snapshot(self.enabled())
    }

    /// Publish the counters into `status` whenever a stream starts, ends
    /// or reconnects (set once).
    pub fn publish_to(&self, status: SharedStatus) {
        let _ = self.inner.stats.status.set(status);
    }

    /// The tap to put into every live source's recording context.
    pub fn tap(&self) -> Arc<dyn AudioTap> {
        Arc::new(HubTap(self.inner.clone()))
    }

    /// A recording completed at start from what a crash left
    /// (`recording::recover`): the stream the crash broke is resumed
    /// (CONTRACT §5: `start` with `"resume": true`, the receiver's `ready`
    /// says where), sent to the recording's end and stopped — `"complete":
    /// false` if the daemon was down longer than `max_lag`. Only stereo WAV
    /// recordings (what is streamed); `meta` is the recording's JSON.
    pub fn resume_recovered(
        &self,
        dir: &std::path::Path,
        meta: serde_json::Value,
        keys: Option<Arc<crate::recording::Keyring>>,
    ) {
        let audio = &meta["audio"];
        let (Some(id), Some(rate), Some(bytes)) = (
            meta["recording_id"].as_str().map(str::to_string),
            audio["sample_rate"].as_u64(),
            audio["bytes"].as_u64(),
        ) else {
            return;
        };
        if audio["channels"].as_u64() != Some(2) || audio["format"].as_str() != Some("wav") {
            return;
        }
        let frames = bytes.saturating_sub(pbx_core::audio::wav::HEADER_LEN) / 4;
        // Down since the end of the audio kept (about the crash).
        let broken_for = meta["ended_at"]
            .as_str()
            .and_then(pbx_core::Timestamp::parse_rfc3339)
            .map(|t| {
                let ago_us = crate::sys::clock::now_ms()
                    .saturating_mul(1000)
                    .saturating_sub(t.as_micros());
                Duration::from_micros(ago_us.max(0) as u64)
            })
            .unwrap_or_default();
        let file = crate::recording::RecordingFile::new(
            dir.join(format!(".{id}.wav.part")),
            dir.join(format!("{id}.wav")),
            keys,
        );
        file.hold();
        let rec = TapBegin {
            recording_id: id,
            sample_rate: rate as u32,
            meta: meta.clone(),
            file,
        };
        let Some(tap) = HubTap(self.inner.clone()).start(rec, Some(broken_for)) else {
            return;
        };
        // Everything is in the file: the stream reads it from there.
        tap.shared.written.store(frames, Ordering::Release);
        Box::new(tap).end(TapEnd::Written { frames, meta });
    }

    /// Wait (at most `within`) for every stream to end, e.g. to let them
    /// send `stop` when the daemon stops.
    ///
    /// Streams still catching up then are told to end: each says `stop`
    /// with `"complete": false` at the frames its receiver holds (a restarted
    /// daemon does not resume them: without it the receiver would wait for
    /// an end that never comes), within `STOP_GRACE` more.
    pub async fn drain(&self, within: Duration) {
        const STOP_GRACE: Duration = Duration::from_secs(1);
        let open = || self.inner.stats.open.load(Ordering::Relaxed) > 0;
        let until = Instant::now() + within;
        while open() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.inner.closing.cancel();
        let until = Instant::now() + STOP_GRACE;
        while open() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

struct HubTap(Arc<HubInner>);

impl std::fmt::Debug for HubTap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StreamTap")
    }
}

/// What a call's recording side and its stream task share.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// Sample frames in the file.
    pub(crate) written: AtomicU64,
    /// Set once, when the recording ended.
    pub(crate) end: Mutex<Option<TapEnd>>,
    /// Something changed (a chunk dropped, the end).
    pub(crate) wake: Notify,
}

/// Audio written to the file: `pcm` (s16le interleaved) at frame `at`.
#[derive(Debug)]
pub(crate) struct Chunk {
    pub(crate) at: u64,
    pub(crate) pcm: Vec<u8>,
}

impl Chunk {
    pub(crate) fn end(&self) -> u64 {
        self.at + (self.pcm.len() / protocol::FRAME_BYTES) as u64
    }
}

impl AudioTap for HubTap {
    fn begin(&self, rec: TapBegin) -> Option<Box<dyn CallTap>> {
        self.start(rec, None)
            .map(|t| Box::new(t) as Box<dyn CallTap>)
    }
}

impl HubTap {
    /// A recording's stream ([`AudioTap::begin`]), or the resumption of
    /// one broken by a crash `broken_for` ago.
    fn start(&self, rec: TapBegin, broken_for: Option<Duration>) -> Option<Tapped> {
        let settings = self.0.settings.read().ok()?.clone()?;
        if let Some(why) = settings.filters.check_start(&rec.meta) {
            // (The reason may name a number pattern: debug only.)
            tracing::debug!(recording = %rec.recording_id, "not streamed: {why}");
            self.0.stats.filtered.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let (tx, rx) = mpsc::channel(QUEUE_CHUNKS);
        let shared = Arc::new(Shared::default());
        let call = client::CallStream {
            settings,
            rec,
            rx,
            shared: shared.clone(),
            stats: self.0.stats.clone(),
            closing: self.0.closing.clone(),
            broken_for,
        };
        let file = call.rec.file.clone();
        self.0.rt.spawn(client::run(call));
        Some(Tapped {
            tx,
            shared,
            stats: self.0.stats.clone(),
            file: Some(file),
        })
    }
}

/// One recording's side of its stream.
struct Tapped {
    tx: mpsc::Sender<Chunk>,
    shared: Arc<Shared>,
    stats: Arc<StreamStats>,
    /// The recording's file until it is held open (at the first audio).
    file: Option<crate::recording::RecordingFile>,
}

impl CallTap for Tapped {
    fn audio(&mut self, at: u64, frames: &[i16]) {
        if let Some(f) = self.file.take() {
            // The file exists now (the chunk is written): held open, the
            // stream can catch up from it even after delivery removed it.
            f.hold();
        }
        if self.tx.is_closed() {
            // The stream has ended (refused, given up): nothing to queue,
            // and nothing dropped to count.
            return;
        }
        let chunk = Chunk {
            at,
            pcm: protocol::pcm_bytes(frames),
        };
        let end = chunk.end();
        // Queued first, counted as written after: a stream task that finds
        // the queue empty and the file ahead knows a chunk was dropped.
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(chunk) {
            self.stats.dropped_chunks.fetch_add(1, Ordering::Relaxed);
        }
        self.shared.written.fetch_max(end, Ordering::Release);
        self.shared.wake.notify_one();
    }

    fn end(self: Box<Self>, end: TapEnd) {
        if let Ok(mut e) = self.shared.end.lock() {
            *e = Some(end);
        }
        self.shared.wake.notify_one();
    }
}

impl Drop for Tapped {
    /// A recording that goes without saying how it ended (a panic on the
    /// engine thread): its stream ends incomplete instead of waiting on a
    /// live connection for ever.
    fn drop(&mut self) {
        if let Ok(mut e) = self.shared.end.lock() {
            if e.is_none() {
                *e = Some(TapEnd::Discarded {
                    frames: self.shared.written.load(Ordering::Acquire),
                    reason: "the recording ended without an end".into(),
                });
            }
        }
        self.shared.wake.notify_one();
    }
}

#[cfg(test)]
mod tests;
