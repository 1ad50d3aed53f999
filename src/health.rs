//! The HTTP health endpoint: `/healthz` (liveness), `/readyz` (readiness with a
//! reason per component), `/metrics` (Prometheus text), `/status` (JSON for
//! people and for `pbx-edge status`), and the control API under `/v1/calls`
//! ([`crate::control`]: calls in progress, pause and resume).
//!
//! One more control request: `POST /v1/drain` (from a loopback address
//! only, else `403`) asks the daemon to drain (see `pbx-edge drain`); it
//! answers `202` with the drain's state as JSON.
//!
//! A deliberately small HTTP/1.1 server on tokio: GET (and POST for the
//! control API and drain; a body is read up to 8 KiB), one request per
//! connection, headers capped at 8 KiB, a 5 s read timeout, and a semaphore
//! capping concurrent connections (mini-redis style). It never touches
//! recordings: it copies the [`Status`] snapshot, and hands control requests
//! to the engines. `health.listen` is loopback by default: the control API
//! pauses recordings, so whoever can reach it can.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};

use crate::control::Controls;
use crate::status::{degraded, readiness, render_metrics, SharedStatus, Status};

const MAX_CONNECTIONS: usize = 64;
const MAX_REQUEST: usize = 8192;

/// Liveness: the time of the last heartbeat of each main loop.
///
/// A loop that blocks until there is work (the folder source waiting for
/// inotify events) says so with [`Liveness::waiting`]: it is not stalled
/// while it waits, and its next [`Liveness::beat`] starts the clock again.
#[derive(Debug)]
pub struct Liveness {
    /// Name, last beat; `None` while the loop waits for work.
    pub beats: std::sync::Mutex<Vec<(String, Option<Instant>)>>,
}

impl Liveness {
    pub fn new() -> Arc<Self> {
        Arc::new(Liveness {
            beats: std::sync::Mutex::new(Vec::new()),
        })
    }
    fn set(&self, name: &str, at: Option<Instant>) {
        let mut b = self.beats.lock().unwrap_or_else(|e| e.into_inner());
        match b.iter_mut().find(|(n, _)| n == name) {
            Some(e) => e.1 = at,
            None => b.push((name.to_string(), at)),
        }
    }
    /// Record that loop `name` is alive.
    pub fn beat(&self, name: &str) {
        self.set(name, Some(Instant::now()));
    }
    /// Loop `name` is idle, blocked until work arrives: not stalled until
    /// its next beat.
    pub fn waiting(&self, name: &str) {
        self.set(name, None);
    }
    /// Stop watching loop `name` (it ended on purpose).
    pub fn forget(&self, name: &str) {
        let mut b = self.beats.lock().unwrap_or_else(|e| e.into_inner());
        b.retain(|(n, _)| n != name);
    }
    /// Loops that have not beaten within `limit` (and are not waiting).
    pub fn stalled(&self, limit: Duration) -> Vec<String> {
        let b = self.beats.lock().unwrap_or_else(|e| e.into_inner());
        b.iter()
            .filter(|(_, t)| t.is_some_and(|t| t.elapsed() > limit))
            .map(|(n, _)| n.clone())
            .collect()
    }
}

/// Bind the listener (so a bind error is reported at start).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serve until `shutdown` turns true. `POST /v1/drain` wakes `drain`.
pub(crate) async fn serve(
    listener: TcpListener,
    status: SharedStatus,
    live: Arc<Liveness>,
    controls: Controls,
    mut shutdown: watch::Receiver<bool>,
    drain: Arc<Notify>,
) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        tokio::select! {
            _ = shutdown.changed() => {
                if *shutdown.borrow() { return; }
            }
            acc = listener.accept() => {
                let Ok((sock, _)) = acc else { continue };
                let Ok(permit) = limit.clone().try_acquire_owned() else {
                    drop(sock);
                    continue;
                };
                let status = status.clone();
                let live = live.clone();
                let controls = controls.clone();
                let drain = drain.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(5), handle(sock, status, live, controls, drain)).await;
                    drop(permit);
                });
            }
        }
    }
}

async fn handle(
    mut sock: TcpStream,
    status: SharedStatus,
    live: Arc<Liveness>,
    controls: Controls,
    drain: Arc<Notify>,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_REQUEST {
            return respond(&mut sock, 431, "text/plain", "request header too large\n").await;
        }
    }
    // A body (a control request may come with one, which is not used) is
    // read before answering: closing with unread input would reset the
    // connection before the client read the answer.
    let head_end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .or_else(|| buf.windows(2).position(|w| w == b"\n\n").map(|p| p + 2))
        .unwrap_or(buf.len());
    let length = String::from_utf8_lossy(&buf[..head_end])
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())
                .flatten()
        })
        .unwrap_or(0);
    if length > MAX_REQUEST {
        return respond(&mut sock, 413, "text/plain", "request body too large\n").await;
    }
    while buf.len() < head_end + length {
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("");
    let target = parts.next().unwrap_or("");
    let path = target.split('?').next().unwrap_or("");
    // HEAD: the same answer without its body (RFC 9110 §9.3.2).
    let head_only = method == "HEAD";
    if method == "POST" && path == "/v1/drain" {
        let local_peer = sock.peer_addr().is_ok_and(|p| match p.ip() {
            std::net::IpAddr::V6(v6) => {
                v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
            }
            ip => ip.is_loopback(),
        });
        if !local_peer {
            return reply(
                &mut sock,
                head_only,
                403,
                "text/plain",
                "drain: loopback only\n",
            )
            .await;
        }
        // Draining from this answer on (/readyz, SIPREC OPTIONS read it),
        // not from when the daemon's loop gets to the request.
        if let Ok(mut s) = status.lock() {
            s.draining = true;
        }
        drain.notify_one();
        let snapshot: Status = status.lock().map(|s| s.clone()).unwrap_or_default();
        let body = serde_json::to_string_pretty(&serde_json::json!({
            "draining": true,
            "drain": snapshot.drain,
        }))
        .unwrap_or_default()
            + "\n";
        return reply(&mut sock, head_only, 202, "application/json", &body).await;
    }
    if path == "/v1/calls" || path.starts_with("/v1/calls/") {
        let taken = sock.peer_addr().is_ok_and(|p| controls.allows(p.ip()));
        if !taken {
            let body = "{\"error\": \"the control API takes requests from loopback and health.control_allow only\"}\n";
            return reply(&mut sock, head_only, 403, "application/json", body).await;
        }
    }
    if let Some(a) = controls.http(method, path).await {
        return reply(&mut sock, head_only, a.code, "application/json", &a.body).await;
    }
    if method != "GET" && method != "HEAD" {
        return reply(
            &mut sock,
            head_only,
            405,
            "text/plain",
            "only GET (POST: /v1/calls/{call_id}/pause|resume, /v1/drain)\n",
        )
        .await;
    }
    let mut snapshot: Status = status.lock().map(|s| s.clone()).unwrap_or_default();
    if let Some(t) = snapshot.started {
        snapshot.uptime_s = t.elapsed().as_secs();
    }
    match path {
        "/healthz" => {
            let stalled = live.stalled(Duration::from_secs(30));
            if stalled.is_empty() {
                // Alive; degraded, but recording, is still alive (200).
                let why = degraded(&snapshot);
                let body = if why.is_empty() {
                    "ok\n".to_string()
                } else {
                    format!("degraded: {}\n", why.join("; "))
                };
                reply(&mut sock, head_only, 200, "text/plain", &body).await
            } else {
                let body = format!("stalled: {}\n", stalled.join(", "));
                reply(&mut sock, head_only, 503, "text/plain", &body).await
            }
        }
        "/readyz" => {
            let (ok, parts) = readiness(&snapshot);
            let body = serde_json::to_string_pretty(&serde_json::json!({
                "ready": ok,
                "components": parts,
            }))
            .unwrap_or_default()
                + "\n";
            reply(
                &mut sock,
                head_only,
                if ok { 200 } else { 503 },
                "application/json",
                &body,
            )
            .await
        }
        "/metrics" => {
            snapshot.heap_bytes = crate::sys::heap_in_use();
            reply(
                &mut sock,
                head_only,
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                &render_metrics(&snapshot),
            )
            .await
        }
        "/status" => {
            let body = serde_json::to_string_pretty(&snapshot).unwrap_or_default() + "\n";
            reply(&mut sock, head_only, 200, "application/json", &body).await
        }
        _ => {
            reply(
                &mut sock,
                head_only,
                404,
                "text/plain",
                "not found: try /healthz /readyz /metrics /status /v1/calls\n",
            )
            .await
        }
    }
}

/// [`respond`] to a request whose method is known: without the body for
/// `HEAD`.
async fn reply(
    sock: &mut TcpStream,
    head_only: bool,
    code: u16,
    ctype: &str,
    body: &str,
) -> std::io::Result<()> {
    write_answer(sock, code, ctype, body, !head_only).await
}

async fn respond(sock: &mut TcpStream, code: u16, ctype: &str, body: &str) -> std::io::Result<()> {
    write_answer(sock, code, ctype, body, true).await
}

async fn write_answer(
    sock: &mut TcpStream,
    code: u16,
    ctype: &str,
    body: &str,
    with_body: bool,
) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        202 => "Accepted",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    };
    // (405: what the endpoints take between them; the body says which.)
    let allow = if code == 405 {
        "Allow: GET, HEAD, POST\r\n"
    } else {
        ""
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{allow}Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await?;
    if with_body {
        sock.write_all(body.as_bytes()).await?;
    }
    sock.shutdown().await
}

/// A blocking GET for `pbx-edge status` (no HTTP client dependency needed for
/// loopback plain HTTP).
pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    request(addr, "GET", path)
}

fn request(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let body = if method == "POST" {
        "Content-Length: 0\r\n"
    } else {
        ""
    };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{body}Connection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// A blocking `POST path` with an empty body (for `pbx-edge drain`).
pub fn post(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    request(addr, "POST", path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the server answers `req` with, whole.
    async fn exchange(req: &str) -> String {
        let l = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = l.local_addr().unwrap();
        let (_stop, stop_rx) = watch::channel(false);
        let server = tokio::spawn(serve(
            l,
            SharedStatus::default(),
            Liveness::new(),
            Controls::new(),
            stop_rx,
            Arc::new(Notify::new()),
        ));
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        c.read_to_end(&mut out).await.unwrap();
        server.abort();
        String::from_utf8(out).unwrap()
    }

    /// HEAD gets GET's head without the body (RFC 9110 §9.3.2); a 405 says
    /// which methods there are.
    #[tokio::test]
    async fn head_has_no_body_and_405_says_allow() {
        let get = exchange("GET /status HTTP/1.1\r\n\r\n").await;
        let head = exchange("HEAD /status HTTP/1.1\r\n\r\n").await;
        let (get_head, get_body) = get.split_once("\r\n\r\n").unwrap();
        assert!(!get_body.is_empty());
        assert!(head.ends_with("\r\n\r\n"), "{head}");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(get_head.contains("Content-Length:"));
        let del = exchange("DELETE /status HTTP/1.1\r\n\r\n").await;
        assert!(del.starts_with("HTTP/1.1 405"), "{del}");
        assert!(del.contains("\r\nAllow: GET, HEAD, POST\r\n"), "{del}");
    }

    #[test]
    fn a_waiting_loop_is_not_stalled_until_it_beats_again() {
        let live = Liveness::new();
        live.beat("a");
        live.beat("b");
        live.waiting("b");
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(
            live.stalled(Duration::from_millis(1)),
            vec!["a".to_string()]
        );
        live.beat("b");
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(live.stalled(Duration::from_millis(1)).len(), 2);
        live.forget("a");
        assert_eq!(
            live.stalled(Duration::from_millis(1)),
            vec!["b".to_string()]
        );
    }
}
