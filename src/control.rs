//! The control API: calls in progress, pause and resume (CONTRACT §6).
//!
//! In: `GET /v1/calls`, `POST /v1/calls/{call_id}/pause` and `…/resume` on
//! the health listener (loopback by default; `{call_id}` is the raw SIP
//! Call-ID, percent-encoded as a URL path segment, or the recording id).
//! Out: a [`ControlRequest`] to every engine that registered with
//! [`Controls::register`] (one per running source instance; the request
//! travels the path that wakes the engine's loop, and is answered on the
//! engine's own thread by [`answer`]), and a JSON answer:
//!
//! - `GET /v1/calls` → 200 `{"calls": [{"call_id", "recording_id",
//!   "source", "started_at", "paused"}]}` (`recording_id` null until media
//!   started);
//! - `POST …/pause` → 200 `{"call_id", "recording_id", "source", "paused":
//!   true}`; 404 when no engine knows the call; 409 when it is already paused
//!   (`…/resume`: when it is not paused).
//!
//! A pause takes effect at the engine's current time (see
//! `pbx_core::call::pause` for what is guaranteed around it). The log line
//! of a pause names the recording id only.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pbx_core::call::engine::{CallInProgress, PauseError};
use pbx_core::call::{CallEngine, PauseBy, RecordingSink};
use pbx_core::Timestamp;
use serde::Serialize;
use tokio::sync::oneshot;

/// How long an engine may take to answer (it answers between inputs, at
/// least every 200 ms).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(3);

/// What the API asks of an engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlCommand {
    List,
    Pause(String),
    Resume(String),
}

/// An engine's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlReply {
    Calls(Vec<CallInProgress>),
    /// Paused or resumed: the call's Call-ID and recording id.
    Done {
        call_id: String,
        recording_id: Option<String>,
    },
    Refused(PauseError),
}

/// One request to one engine, with where its answer goes.
#[derive(Debug)]
pub struct ControlRequest {
    pub command: ControlCommand,
    pub reply: oneshot::Sender<ControlReply>,
}

/// The engines that take requests: each running source instance registers
/// one channel; a channel whose engine has stopped is dropped when next used.
#[derive(Clone, Default)]
pub struct Controls {
    engines: Arc<Mutex<Vec<Registered>>>,
    /// `health.control_allow`: networks besides loopback taken.
    allow: Arc<Mutex<Vec<ipnet::IpNet>>>,
}

impl std::fmt::Debug for Controls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.engines.lock().map(|e| e.len()).unwrap_or(0);
        write!(f, "Controls({n} engines)")
    }
}

/// Hands a request to an engine; false once the engine has ended (it must
/// not keep the engine's input queue open: engines end when it closes).
pub type SendRequest = Box<dyn Fn(ControlRequest) -> bool + Send + Sync>;

/// A source's name and how to reach its engine.
type Registered = (String, SendRequest);

/// One call of `GET /v1/calls`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallEntry {
    pub call_id: String,
    pub recording_id: Option<String>,
    pub source: String,
    pub started_at: String,
    pub paused: bool,
}

/// What the HTTP side answers: status code and JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiAnswer {
    pub code: u16,
    pub body: String,
}

impl ApiAnswer {
    fn json(code: u16, v: serde_json::Value) -> Self {
        ApiAnswer {
            code,
            body: serde_json::to_string_pretty(&v).unwrap_or_default() + "\n",
        }
    }
    fn error(code: u16, message: &str) -> Self {
        Self::json(code, serde_json::json!({ "error": message }))
    }
}

impl Controls {
    pub fn new() -> Self {
        Self::default()
    }

    /// Networks besides loopback whose requests are taken (at start and on
    /// every reload: `health.control_allow`).
    pub fn set_allow(&self, nets: &[ipnet::IpNet]) {
        if let Ok(mut a) = self.allow.lock() {
            *a = nets.to_vec();
        }
    }

    /// Whether a request from `peer` may use the control API: loopback, or
    /// a network of `health.control_allow` (CONTRACT §6: loopback by
    /// default; pausing a recording is not for whoever reaches the port).
    pub fn allows(&self, peer: std::net::IpAddr) -> bool {
        let peer = match peer {
            std::net::IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
            ip => ip,
        };
        peer.is_loopback()
            || self
                .allow
                .lock()
                .is_ok_and(|a| a.iter().any(|n| n.contains(&peer)))
    }

    /// The engine of source `source` ("siprec", "sniff", "hep") takes
    /// requests through `send`, and answers each with [`answer`]. It is
    /// forgotten when `send` says it has ended.
    pub fn register(
        &self,
        source: &str,
        send: impl Fn(ControlRequest) -> bool + Send + Sync + 'static,
    ) {
        if let Ok(mut e) = self.engines.lock() {
            e.push((source.to_string(), Box::new(send)));
        }
    }

    /// Send `command` to every engine; their answers with their source
    /// names, and how many engines did not answer within [`ANSWER_TIMEOUT`]
    /// (one deadline for all), or dropped the request (their queue full).
    async fn ask(&self, command: &ControlCommand) -> (Vec<(String, ControlReply)>, usize) {
        let mut waiting = Vec::new();
        if let Ok(mut engines) = self.engines.lock() {
            engines.retain(|(source, tx)| {
                let (reply, rx) = oneshot::channel();
                let sent = tx(ControlRequest {
                    command: command.clone(),
                    reply,
                });
                if sent {
                    waiting.push((source.clone(), rx));
                }
                sent
            });
        }
        let mut answers = Vec::new();
        let mut unanswered = 0;
        let deadline = tokio::time::Instant::now() + ANSWER_TIMEOUT;
        for (source, rx) in waiting {
            match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(a)) => answers.push((source, a)),
                _ => unanswered += 1,
            }
        }
        (answers, unanswered)
    }

    /// Calls in progress in every engine; `Err`: an engine did not answer
    /// (the list would be incomplete).
    pub async fn list(&self) -> Result<Vec<CallEntry>, ApiAnswer> {
        let mut out = Vec::new();
        let (answers, unanswered) = self.ask(&ControlCommand::List).await;
        if unanswered > 0 {
            return Err(busy());
        }
        for (source, reply) in answers {
            if let ControlReply::Calls(calls) = reply {
                out.extend(calls.into_iter().map(|c| CallEntry {
                    call_id: c.call_id,
                    recording_id: c.recording_id,
                    source: source.clone(),
                    started_at: c.started_at.to_rfc3339(),
                    paused: c.paused,
                }));
            }
        }
        Ok(out)
    }

    /// Pause (`pause`) or resume the call `id` in whichever engine has it.
    pub async fn set_paused(&self, id: &str, pause: bool) -> ApiAnswer {
        let command = if pause {
            ControlCommand::Pause(id.to_string())
        } else {
            ControlCommand::Resume(id.to_string())
        };
        let mut refused = None;
        let (answers, unanswered) = self.ask(&command).await;
        for (source, reply) in answers {
            match reply {
                ControlReply::Done {
                    call_id,
                    recording_id,
                } => {
                    tracing::info!(
                        recording = recording_id.as_deref().unwrap_or("(media not started)"),
                        %source,
                        "recording {} by the control API",
                        if pause { "paused" } else { "resumed" }
                    );
                    return ApiAnswer::json(
                        200,
                        serde_json::json!({
                            "call_id": call_id,
                            "recording_id": recording_id,
                            "source": source,
                            "paused": pause,
                        }),
                    );
                }
                ControlReply::Refused(PauseError::UnknownCall) | ControlReply::Calls(_) => {}
                ControlReply::Refused(e) => refused = Some(e),
            }
        }
        match refused {
            Some(e) => ApiAnswer::error(409, &e.to_string()),
            // Not "no such call": the engine that has it may be the one that
            // did not answer (and may still act on the request).
            None if unanswered > 0 => busy(),
            None => ApiAnswer::error(404, "no call in progress has that Call-ID or recording id"),
        }
    }

    /// Answer an HTTP request for a `/v1/calls` path (`None`: not such a path).
    pub async fn http(&self, method: &str, path: &str) -> Option<ApiAnswer> {
        let rest = path.strip_prefix("/v1/calls")?;
        if rest.is_empty() || rest == "/" {
            if method != "GET" && method != "HEAD" {
                return Some(ApiAnswer::error(405, "GET /v1/calls"));
            }
            return Some(match self.list().await {
                Ok(calls) => ApiAnswer::json(200, serde_json::json!({ "calls": calls })),
                Err(a) => a,
            });
        }
        let rest = rest.strip_prefix('/')?;
        let (id, action) = rest.rsplit_once('/')?;
        let pause = match action {
            "pause" => true,
            "resume" => false,
            _ => return None,
        };
        if method != "POST" {
            return Some(ApiAnswer::error(
                405,
                "POST /v1/calls/{call_id}/pause|resume",
            ));
        }
        let Some(id) = percent_decode(id).filter(|i| !i.is_empty()) else {
            return Some(ApiAnswer::error(404, "not a Call-ID"));
        };
        Some(self.set_paused(&id, pause).await)
    }
}

/// 503: a recording source did not answer in time (or its queue was full).
fn busy() -> ApiAnswer {
    ApiAnswer::error(
        503,
        "a recording source did not answer in time (busy); try again (a pause or resume asked may still take effect: see GET /v1/calls)",
    )
}

/// `%XX` escapes of a path segment decoded (UTF-8); `None` if malformed.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    let s = String::from_utf8(out).ok()?;
    (!s.chars().any(char::is_control)).then_some(s)
}

/// Answer one request with `engine` (on the engine's thread). A pause or
/// resume first brings the engine to `now` (the clock its inputs are
/// stamped with, if it is the shell's), so it takes effect at the moment it
/// is handled; without, at the engine's latest time.
pub fn answer(
    engine: &mut CallEngine,
    req: ControlRequest,
    now: Option<Timestamp>,
    sink: &mut dyn RecordingSink,
) {
    let reply = match &req.command {
        ControlCommand::List => ControlReply::Calls(engine.calls_in_progress()),
        ControlCommand::Pause(id) | ControlCommand::Resume(id) => {
            if let Some(now) = now {
                engine.handle_timeout(now, sink);
            }
            let r = if matches!(req.command, ControlCommand::Pause(_)) {
                engine.pause(id, PauseBy::Api)
            } else {
                engine.resume(id, PauseBy::Api)
            };
            match r {
                Ok(key) => {
                    let c = engine
                        .calls_in_progress()
                        .into_iter()
                        .find(|c| c.key == key);
                    ControlReply::Done {
                        call_id: c.as_ref().map(|c| c.call_id.clone()).unwrap_or_default(),
                        recording_id: c.and_then(|c| c.recording_id),
                    }
                }
                Err(e) => ControlReply::Refused(e),
            }
        }
    };
    let _ = req.reply.send(reply);
}

#[cfg(test)]
mod tests;
