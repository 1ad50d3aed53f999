//! One call's stream: a task that connects to `stream.url`, speaks
//! [`super::protocol`] and sends the call's audio as it is recorded.
//!
//! In: a [`CallStream`]: the settings, what the recording said when it began
//! ([`TapBegin`]: id, rate, metadata so far, its file), the queue of chunks
//! and the shared state (frames written, the end).
//! Out: WebSocket messages; the counters in [`StreamStats`].
//!
//! The state kept is one number, `held`: the sample frames the server has
//! (from its `ready`) plus those sent since. Each round sends the next audio
//! from `held` on: from the queued chunk when it starts there, else from
//! the recording's file (chunks dropped while the queue was full, audio
//! missed while the connection was down). Frames before `held` are never
//! sent again on that connection.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::{
    HeaderValue, AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL, USER_AGENT,
};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use super::protocol::{self, ServerMsg, FRAME_BYTES};
use super::{Chunk, Shared, StreamSettings, StreamStats};
use crate::recording::{TapBegin, TapEnd};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Connecting (TCP, TLS, upgrade) may take this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The server answers `start` and `stop` within this.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Backoff between attempts: full jitter up to min(CAP, BASE · 2^n).
const BACKOFF_BASE: Duration = Duration::from_millis(200);
const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// After the call ended, a receiver that is gone is tried this long (to
/// tell it `stop`); then the stream is dropped without a word.
const RETRY_AFTER_END: Duration = Duration::from_secs(300);
/// The largest message taken from the server (its messages are short texts).
const MAX_SERVER_MESSAGE: usize = 64 << 10;
/// Audio read from the file at once when catching up.
const CATCH_UP_SECONDS: u64 = 2;

/// Queued audio not sent yet: the frames from `held` on, gathered until
/// they make one message of `stream.frame` (CONTRACT §5: "about `frame` of
/// audio each"; the recording hands over chunks of 40 ms and more), until
/// the first of them has waited a `frame`, or until something else is sent
/// (audio read from the file, `stop`).
#[derive(Default)]
struct Staged {
    pcm: Vec<u8>,
    /// When its oldest frame was queued.
    since: Option<tokio::time::Instant>,
}

impl Staged {
    fn frames(&self) -> u64 {
        (self.pcm.len() / FRAME_BYTES) as u64
    }

    fn push(&mut self, pcm: &[u8]) {
        if pcm.is_empty() {
            return;
        }
        self.since.get_or_insert_with(tokio::time::Instant::now);
        self.pcm.extend_from_slice(pcm);
    }

    /// Send the whole messages it holds (all of it with `all`, at most
    /// `cap` frames past `held` in any case).
    async fn send(
        &mut self,
        c: &CallStream,
        ws: &mut Ws,
        held: &mut u64,
        per_msg: usize,
        all: bool,
        cap: u64,
    ) -> Result<(), Session> {
        let room = cap.saturating_sub(*held).min(self.frames()) as usize;
        let whole = if all { room } else { room / per_msg * per_msg };
        if whole > 0 {
            let n = whole * FRAME_BYTES;
            send_pcm(c, ws, held, &self.pcm[..n], per_msg).await?;
            self.pcm.drain(..n);
        }
        if all {
            self.pcm.clear();
        }
        self.since = if self.pcm.is_empty() {
            None
        } else {
            Some(tokio::time::Instant::now())
        };
        Ok(())
    }
}

/// Everything one call's stream task owns.
pub(crate) struct CallStream {
    pub(crate) settings: Arc<StreamSettings>,
    pub(crate) rec: TapBegin,
    pub(crate) rx: mpsc::Receiver<Chunk>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) stats: Arc<StreamStats>,
    /// Cancelled when the daemon stops and the streams' time is up.
    pub(crate) closing: tokio_util::sync::CancellationToken,
    /// A stream broken by a crash this long ago, resumed for its recording
    /// completed at the next start: its first `start` says `resume: true`,
    /// and the receiver counts as gone since then (`max_lag`).
    pub(crate) broken_for: Option<Duration>,
}

/// How a connection ended.
#[derive(Debug)]
enum Session {
    /// The stream is over (`stop` taken, or nothing more to say).
    Finished { complete: bool },
    /// The server said `error` or broke the protocol: not retried.
    Refused(String),
    /// The connection broke: connect again and resume.
    Broken(String),
    /// Never connected: the call ended shorter than `filter.min_duration`
    /// (or was discarded, or the daemon stopped) before it was long enough
    /// to stream.
    Filtered,
}

/// Full-jitter backoff before attempt `n` (0-based).
pub(crate) fn backoff(n: u32) -> Duration {
    let cap = BACKOFF_BASE
        .saturating_mul(1u32 << n.min(16))
        .min(BACKOFF_CAP);
    Duration::from_secs_f64(cap.as_secs_f64() * fastrand::f64())
}

/// Run one call's stream to its end.
pub(crate) async fn run(mut c: CallStream) {
    let id = c.stats.register();
    c.stats.publish();
    let outcome = stream_call(&mut c, id).await;
    match &outcome {
        Session::Filtered => {
            c.stats.filtered.fetch_add(1, Ordering::Relaxed);
        }
        Session::Finished { complete: true } => {
            c.stats.complete.fetch_add(1, Ordering::Relaxed);
        }
        Session::Finished { complete: false } => {
            c.stats.incomplete.fetch_add(1, Ordering::Relaxed);
        }
        Session::Refused(why) | Session::Broken(why) => {
            if matches!(outcome, Session::Refused(_)) {
                c.stats.refused.fetch_add(1, Ordering::Relaxed);
            } else {
                c.stats.incomplete.fetch_add(1, Ordering::Relaxed);
            }
            if why.starts_with("receiver error:") {
                // Its words may echo the call (numbers): not in the log at
                // warn level (/status shows them to the operator).
                tracing::warn!(recording = %c.rec.recording_id, "live stream ended: the receiver answered error");
                tracing::debug!(recording = %c.rec.recording_id, "live stream ended: {why}");
            } else {
                tracing::warn!(recording = %c.rec.recording_id, "live stream ended: {why}");
            }
            c.stats.error(why.clone());
        }
    }
    c.stats.unregister(id);
    c.stats.publish();
}

/// With `filter.min_duration`, a stream connects once that much audio is
/// written: a shorter call is filtered out by delivery, and its audio must
/// not leave the machine by the stream either (what it missed meanwhile is
/// read from the file). `Some(session)`: the call ended first (or the
/// daemon stopped); it is never streamed.
async fn wait_min_duration(c: &mut CallStream) -> Option<Session> {
    let min = c.settings.filters.min_duration;
    if min.is_zero() {
        return None;
    }
    let need = (min.as_millis() as u64).saturating_mul(u64::from(c.rec.sample_rate)) / 1000;
    loop {
        let woken = c.shared.wake.notified();
        if c.shared.written.load(Ordering::Acquire) >= need {
            return None;
        }
        let end = c.shared.end.lock().ok().and_then(|e| e.clone());
        if let Some(end) = end {
            return match end {
                TapEnd::Written { meta, .. } if c.settings.filters.check(&meta).is_none() => None,
                _ => Some(Session::Filtered),
            };
        }
        // (Queued audio is read back from the file once connected.)
        while c.rx.try_recv().is_ok() {}
        tokio::select! {
            _ = woken => {}
            _ = c.closing.cancelled() => return Some(Session::Filtered),
        }
    }
}

async fn stream_call(c: &mut CallStream, id: u64) -> Session {
    if let Some(s) = wait_min_duration(c).await {
        return s;
    }
    let max_lag = c.settings.max_lag;
    let mut held = 0u64;
    let mut resume = c.broken_for.is_some();
    let mut gave_up = false;
    let mut attempt = 0u32;
    let mut down_since: Option<Instant> = None;
    if let Some(d) = c.broken_for {
        if d > max_lag {
            gave_up = true;
            tracing::warn!(recording = %c.rec.recording_id, "live stream given up: the daemon was down longer than stream.max_lag");
        } else {
            down_since = Some(Instant::now().checked_sub(d).unwrap_or_else(Instant::now));
        }
    }
    let mut ended_at: Option<Instant> = None;
    loop {
        if ended_at.is_none() && c.shared.end.lock().map(|e| e.is_some()).unwrap_or(true) {
            ended_at = Some(Instant::now());
        }
        if down_since.is_some_and(|t| t.elapsed() > max_lag) && !gave_up {
            gave_up = true;
            tracing::warn!(recording = %c.rec.recording_id, "live stream given up: its receiver was gone longer than stream.max_lag");
        }
        if ended_at.is_some_and(|t| t.elapsed() > RETRY_AFTER_END.max(max_lag)) {
            return Session::Broken("the receiver did not come back".into());
        }
        if c.closing.is_cancelled() {
            return Session::Broken("the daemon stopped before the receiver came back".into());
        }
        let ws = match connect(&c.settings).await {
            Ok(ws) => ws,
            Err(NoConnection::Refused(e)) => return Session::Refused(e),
            Err(NoConnection::Retry(e)) => {
                if down_since.is_none() {
                    down_since = Some(Instant::now());
                    tracing::warn!(recording = %c.rec.recording_id, "live stream: {e}; retrying");
                    c.stats.error(e);
                }
                c.stats.set_lag(id, lag_ms(c, held, 0));
                // Audio queued meanwhile is read back from the file.
                while c.rx.try_recv().is_ok() {}
                tokio::select! {
                    _ = tokio::time::sleep(backoff(attempt)) => {}
                    _ = c.closing.cancelled() => {}
                }
                attempt = attempt.saturating_add(1);
                continue;
            }
        };
        let (s, sent_here, ready) = session(c, id, ws, resume, gave_up, &mut held).await;
        match s {
            Session::Broken(e) => {
                c.stats.set_lag(id, lag_ms(c, held, 0));
                tracing::info!(recording = %c.rec.recording_id, "live stream connection lost ({e}); resuming");
                c.stats.error(e);
                resume = true;
                // The receiver was there if it answered `start`; one that
                // accepts connections and breaks them before that is as
                // gone as one that is down (`max_lag` counts on).
                if ready || down_since.is_none() {
                    down_since = Some(Instant::now());
                }
                // A receiver that takes audio earns a quick retry; one that
                // breaks before taking any backs off further each time.
                if sent_here > 0 {
                    attempt = 0;
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff(attempt)) => {}
                    _ = c.closing.cancelled() => {}
                }
                attempt = attempt.saturating_add(1);
            }
            other => return other,
        }
    }
}

/// Milliseconds of audio written and not yet with the receiver: not sent
/// yet, and `in_flight` frames sent that it has not taken yet.
fn lag_ms(c: &CallStream, held: u64, in_flight: u64) -> u64 {
    let written = c.shared.written.load(Ordering::Acquire);
    (written.saturating_sub(held) + in_flight) * 1000 / u64::from(c.rec.sample_rate.max(1))
}

/// How often a stream sends a ping carrying the frames sent so far: the
/// receiver's pong (RFC 6455 §5.5.3: it answers each ping as it reads it,
/// behind the audio sent before) says how much of the audio it has taken.
/// A receiver that reads slower than real time has the rest waiting in
/// the socket buffers (many seconds of audio), where nothing else shows.
const PING_EVERY: Duration = Duration::from_secs(1);

/// The frames a pong says the receiver has read up to.
fn pong_frames(p: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(p.try_into().ok()?))
}

/// Why [`connect`] did not connect.
enum NoConnection {
    /// Down, unreachable, timed out: tried again.
    Retry(String),
    /// The receiver refused us (401/403 on the upgrade: the token): not
    /// tried again for this call, like its `error` message.
    Refused(String),
}

async fn connect(s: &StreamSettings) -> Result<Ws, NoConnection> {
    let mut req = s
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| NoConnection::Refused(format!("stream.url: {e}")))?;
    let h = req.headers_mut();
    h.insert(
        SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(protocol::SUBPROTOCOL),
    );
    h.insert(
        USER_AGENT,
        HeaderValue::from_static(crate::upload::USER_AGENT),
    );
    // The file as it is now (rotated without a reload); the token read at
    // start or reload if it cannot be read.
    let fresh = match &s.token_file {
        Some(p) => {
            let p = p.clone();
            tokio::task::spawn_blocking(move || crate::upload::read_token(&p).ok().flatten())
                .await
                .ok()
                .flatten()
        }
        None => None,
    };
    if let Some(t) = fresh.as_ref().or(s.token.as_ref()) {
        let bearer = zeroize::Zeroizing::new(format!("Bearer {}", t.expose()));
        if let Ok(mut v) = HeaderValue::from_str(&bearer) {
            v.set_sensitive(true);
            h.insert(AUTHORIZATION, v);
        }
    }
    // Small buffers: the server only says a few short texts (anything
    // larger is refused), and each audio message is written at once.
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(1 << 20)
        .max_message_size(Some(MAX_SERVER_MESSAGE))
        .max_frame_size(Some(MAX_SERVER_MESSAGE));
    let fut = tokio_tungstenite::connect_async_tls_with_config(
        req,
        Some(ws_config),
        true,
        Some(Connector::Rustls(s.tls.clone())),
    );
    let (ws, resp) = tokio::time::timeout(CONNECT_TIMEOUT, fut)
        .await
        .map_err(|_| NoConnection::Retry("connecting to the stream receiver timed out".into()))?
        .map_err(|e| match &e {
            tokio_tungstenite::tungstenite::Error::Http(r)
                if matches!(r.status().as_u16(), 401 | 403) =>
            {
                NoConnection::Refused(format!(
                    "the stream receiver refused the connection (HTTP {}: check stream.token_file)",
                    r.status().as_u16()
                ))
            }
            // tungstenite checks the subprotocol itself: a receiver that
            // does not speak ours (a wrong stream.url) is refused, not asked
            // again with the token every few seconds.
            tokio_tungstenite::tungstenite::Error::Protocol(
                tokio_tungstenite::tungstenite::error::ProtocolError::SecWebSocketSubProtocolError(
                    _,
                ),
            ) => NoConnection::Refused(format!(
                "the stream receiver did not accept subprotocol {}",
                protocol::SUBPROTOCOL
            )),
            _ => NoConnection::Retry(format!("cannot connect to the stream receiver: {e}")),
        })?;
    let proto = resp
        .headers()
        .get(SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok());
    if proto != Some(protocol::SUBPROTOCOL) {
        // Not a receiver of this protocol (a wrong stream.url): asking it
        // again, with the token, every few seconds would not change that.
        return Err(NoConnection::Refused(format!(
            "the stream receiver did not accept subprotocol {}",
            protocol::SUBPROTOCOL
        )));
    }
    Ok(ws)
}

/// Send a message; a connection that takes longer than `limit` is broken.
async fn send(ws: &mut Ws, m: Message, limit: Duration) -> Result<(), Session> {
    match tokio::time::timeout(limit, ws.send(m)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Session::Broken(format!("sending: {e}"))),
        Err(_) => Err(Session::Broken("the receiver stopped reading".into())),
    }
}

/// The next server message that means something. A receiver still taking
/// the audio sent before (it reads slower than real time: its pongs to the
/// pings sent with the audio, [`PING_EVERY`], keep coming) is waited for as
/// long as it reads; one that neither answers nor reads for
/// [`ANSWER_TIMEOUT`] is broken.
async fn answer(ws: &mut Ws) -> Result<ServerMsg, Session> {
    let mut until = tokio::time::Instant::now() + ANSWER_TIMEOUT;
    loop {
        let m = match tokio::time::timeout_at(until, ws.next()).await {
            Err(_) => return Err(Session::Broken("no answer from the receiver".into())),
            Ok(None) => return Err(Session::Broken("the receiver closed".into())),
            Ok(Some(Err(e))) => return Err(Session::Broken(format!("receiving: {e}"))),
            Ok(Some(Ok(m))) => m,
        };
        match m {
            Message::Text(t) => match protocol::parse_server(t.as_str()) {
                Ok(ServerMsg::Other(_)) => {}
                Ok(m) => return Ok(m),
                Err(e) => return Err(Session::Refused(e)),
            },
            Message::Close(_) => return Err(Session::Broken("the receiver closed".into())),
            Message::Pong(_) => until = tokio::time::Instant::now() + ANSWER_TIMEOUT,
            _ => {}
        }
    }
}

/// `stop`, then wait for `done` and close.
async fn stop(ws: &mut Ws, complete: bool, frames: u64, meta: &serde_json::Value) -> Session {
    let m = Message::Text(protocol::stop(complete, frames, meta).into());
    if let Err(s) = send(ws, m, ANSWER_TIMEOUT).await {
        return s;
    }
    let r = match answer(ws).await {
        Ok(ServerMsg::Done) => Session::Finished { complete },
        Ok(ServerMsg::Error { reason }) => {
            Session::Refused(format!("receiver error: {}", short_reason(&reason)))
        }
        Ok(other) => Session::Refused(format!("unexpected answer to stop: {other:?}")),
        Err(s) => s,
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    r
}

/// Send `pcm` (whole frames) from `*held` on, in messages of at most
/// `per_msg` frames.
async fn send_pcm(
    c: &CallStream,
    ws: &mut Ws,
    held: &mut u64,
    pcm: &[u8],
    per_msg: usize,
) -> Result<(), Session> {
    let limit = c.settings.max_lag.max(Duration::from_secs(1));
    for piece in pcm.chunks(per_msg * FRAME_BYTES) {
        let msg = protocol::audio(*held, piece);
        let n = msg.len() as u64;
        send(ws, Message::Binary(msg.into()), limit).await?;
        *held += (piece.len() / FRAME_BYTES) as u64;
        c.stats.bytes.fetch_add(n, Ordering::Relaxed);
    }
    Ok(())
}

/// `stop` with `complete: false` at `held`, with the final metadata if the
/// recording ended, else the start's.
async fn stop_incomplete(c: &CallStream, ws: &mut Ws, held: u64) -> Session {
    let meta = match c.shared.end.lock().ok().and_then(|e| e.clone()) {
        Some(TapEnd::Written { meta, .. }) => meta,
        _ => c.rec.meta.clone(),
    };
    stop(ws, false, held, &meta).await
}

/// Frames `[*held, to)` from the recording's file.
async fn send_from_file(
    c: &CallStream,
    ws: &mut Ws,
    held: &mut u64,
    to: u64,
    per_msg: usize,
) -> Result<(), Session> {
    let step = u64::from(c.rec.sample_rate) * CATCH_UP_SECONDS;
    while *held < to {
        if c.closing.is_cancelled() {
            return Err(stop_incomplete(c, ws, *held).await);
        }
        let want = (to - *held).min(step) as usize;
        // Off the async workers (SIPREC's signalling runs there too): a
        // sealed part is opened by checking its records.
        let (file, from) = (c.rec.file.clone(), *held);
        let read = tokio::task::spawn_blocking(move || file.read_frames(from, want))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        let frames = match read {
            Ok(f) if !f.is_empty() => f,
            // The file is gone (discarded, or delivered and removed) or
            // shorter than said: the receiver is told the stream ends here.
            Ok(_) => {
                tracing::warn!(recording = %c.rec.recording_id, "live stream: the recording's file ends early; stopped incomplete");
                return Err(stop_incomplete(c, ws, *held).await);
            }
            Err(e) => {
                tracing::warn!(recording = %c.rec.recording_id, "live stream: cannot read the recording's file ({e}); stopped incomplete");
                return Err(stop_incomplete(c, ws, *held).await);
            }
        };
        send_pcm(c, ws, held, &protocol::pcm_bytes(&frames), per_msg).await?;
    }
    Ok(())
}

async fn session(
    c: &mut CallStream,
    id: u64,
    mut ws: Ws,
    resume: bool,
    gave_up: bool,
    held: &mut u64,
) -> (Session, u64, bool) {
    let first = *held;
    let mut ready = false;
    let r = session_inner(c, id, &mut ws, resume, gave_up, held, &mut ready).await;
    (r, held.saturating_sub(first.min(*held)), ready)
}

async fn session_inner(
    c: &mut CallStream,
    id: u64,
    ws: &mut Ws,
    resume: bool,
    gave_up: bool,
    held: &mut u64,
    ready: &mut bool,
) -> Session {
    let start = protocol::start(&c.rec.recording_id, resume, c.rec.sample_rate, &c.rec.meta);
    if let Err(s) = send(ws, Message::Text(start.into()), ANSWER_TIMEOUT).await {
        return s;
    }
    let offset = match answer(ws).await {
        Ok(ServerMsg::Ready { offset }) => {
            *ready = true;
            if resume {
                // (Counted when the receiver takes the stream back, not at
                // each attempt: one that never answers resumes nothing.)
                c.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                c.stats.publish();
            }
            offset
        }
        Ok(ServerMsg::Error { reason }) => {
            return Session::Refused(format!("receiver error: {}", short_reason(&reason)))
        }
        Ok(other) => return Session::Refused(format!("unexpected answer to start: {other:?}")),
        Err(s) => return s,
    };
    let end_meta = |c: &CallStream| -> Option<(u64, serde_json::Value, bool)> {
        match c.shared.end.lock().ok()?.as_ref()? {
            TapEnd::Written { frames, meta } => Some((*frames, meta.clone(), true)),
            TapEnd::Discarded { frames, .. } => Some((*frames, c.rec.meta.clone(), false)),
        }
    };
    if gave_up {
        let meta = end_meta(c)
            .map(|e| e.1)
            .unwrap_or_else(|| c.rec.meta.clone());
        return stop(ws, false, offset, &meta).await;
    }
    let written = c.shared.written.load(Ordering::Acquire);
    if offset > written {
        let _ = ws.close(None).await;
        return Session::Refused(format!(
            "the receiver says it holds {offset} frames of {written} recorded"
        ));
    }
    *held = offset;
    let per_msg = ((c.settings.frame.as_micros() * u128::from(c.rec.sample_rate) / 1_000_000)
        as usize)
        .max(1);
    let max_lag_frames =
        c.settings.max_lag.as_millis() as u64 * u64::from(c.rec.sample_rate) / 1000;
    let mut pending: Option<Chunk> = None;
    let mut queue_open = true;
    let mut staged = Staged::default();
    // The frames the receiver's latest pong said it has read.
    let mut taken: Option<u64> = None;
    let mut pinged: Option<Instant> = None;
    loop {
        let written = c.shared.written.load(Ordering::Acquire);
        if pinged.is_none_or(|t| t.elapsed() >= PING_EVERY) {
            pinged = Some(Instant::now());
            let ping = Message::Ping(held.to_be_bytes().to_vec().into());
            if let Err(s) = send(ws, ping, ANSWER_TIMEOUT).await {
                return s;
            }
        }
        let in_flight = taken.map_or(0, |t| held.saturating_sub(t));
        c.stats.set_lag(id, lag_ms(c, *held, in_flight));
        if written.saturating_sub(*held) + in_flight > max_lag_frames {
            tracing::warn!(recording = %c.rec.recording_id, "live stream given up: more than stream.max_lag behind");
            let meta = end_meta(c)
                .map(|e| e.1)
                .unwrap_or_else(|| c.rec.meta.clone());
            return stop(ws, false, *held, &meta).await;
        }
        if let Some(ch) = pending.take() {
            let mut staged_end = *held + staged.frames();
            if ch.end() <= staged_end {
                continue;
            }
            if ch.at > staged_end {
                // Chunks before this one were dropped: the file has them.
                let sent = staged.send(c, ws, held, per_msg, true, u64::MAX).await;
                if let Err(s) = sent {
                    return s;
                }
                if let Err(s) = send_from_file(c, ws, held, ch.at, per_msg).await {
                    return s;
                }
                staged_end = *held;
            }
            staged.push(&ch.pcm[(staged_end - ch.at) as usize * FRAME_BYTES..]);
            if let Err(s) = staged.send(c, ws, held, per_msg, false, u64::MAX).await {
                return s;
            }
            continue;
        }
        match c.rx.try_recv() {
            Ok(ch) => {
                pending = Some(ch);
                continue;
            }
            Err(mpsc::error::TryRecvError::Disconnected) => queue_open = false,
            Err(mpsc::error::TryRecvError::Empty) => {}
        }
        if let Some((frames, meta, kept)) = end_meta(c) {
            if !kept {
                return stop(ws, false, *held, &meta).await;
            }
            if c.settings.filters.check(&meta).is_some() {
                // Filtered out by what became known during the call (its
                // numbers, its direction): no more audio, and the final
                // metadata stays on the machine with the recording.
                return stop(ws, false, *held, &c.rec.meta).await;
            }
            // (Never past the final WAV's frames.)
            if let Err(s) = staged.send(c, ws, held, per_msg, true, frames).await {
                return s;
            }
            if *held >= frames {
                return stop(ws, true, frames, &meta).await;
            }
            if let Err(s) = send_from_file(c, ws, held, frames, per_msg).await {
                return s;
            }
            continue;
        }
        if *held + staged.frames() < written {
            // The queue is empty and the file is ahead: chunks were dropped.
            if let Err(s) = staged.send(c, ws, held, per_msg, true, u64::MAX).await {
                return s;
            }
            if let Err(s) = send_from_file(c, ws, held, written, per_msg).await {
                return s;
            }
            continue;
        }
        let due = staged.since.map(|t| t + c.settings.frame);
        tokio::select! {
            m = ws.next() => match m {
                None => return Session::Broken("the receiver closed".into()),
                Some(Err(e)) => return Session::Broken(format!("receiving: {e}")),
                Some(Ok(Message::Close(_))) => return Session::Broken("the receiver closed".into()),
                Some(Ok(Message::Text(t))) => match protocol::parse_server(t.as_str()) {
                    Ok(ServerMsg::Error { reason }) => {
                        let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
                        return Session::Refused(format!("receiver error: {}", short_reason(&reason)));
                    }
                    Ok(_) => {}
                    Err(e) => return Session::Refused(e),
                },
                Some(Ok(Message::Pong(p))) => {
                    if let Some(f) = pong_frames(&p).filter(|f| *f <= *held) {
                        taken = Some(taken.map_or(f, |t| t.max(f)));
                    }
                }
                Some(Ok(_)) => {}
            },
            ch = c.rx.recv(), if queue_open => match ch {
                Some(ch) => pending = Some(ch),
                None => queue_open = false,
            },
            _ = c.shared.wake.notified() => {}
            // The daemon stops and the time for this stream is up.
            _ = c.closing.cancelled() => {
                if let Err(s) = staged.send(c, ws, held, per_msg, true, u64::MAX).await {
                    return s;
                }
                return stop_incomplete(c, ws, *held).await;
            }
            // Staged audio has waited a whole frame: sent as it is.
            _ = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if due.is_some() => {
                if let Err(s) = staged.send(c, ws, held, per_msg, true, u64::MAX).await {
                    return s;
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// A receiver's error reason as logged and shown in /status: one line of at
/// most 120 characters (what it echoes of the call stays short).
fn short_reason(reason: &str) -> String {
    let mut out: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(120)
        .collect();
    if reason.chars().count() > 120 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_full_jitter_under_a_cap() {
        for n in 0..40 {
            let d = backoff(n);
            assert!(d <= BACKOFF_CAP, "{d:?}");
            let cap = BACKOFF_BASE.saturating_mul(1 << n.min(16)).min(BACKOFF_CAP);
            assert!(d <= cap);
        }
        // Jittered: not always the same.
        let v: std::collections::BTreeSet<_> = (0..50).map(|_| backoff(5)).collect();
        assert!(v.len() > 10);
    }
}
