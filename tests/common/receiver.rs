//! A reference cloud receiver for the delivery tests: a small real HTTP(S)
//! server on 127.0.0.1 implementing CONTRACT §4 — tus 1.0.0 creation, HEAD,
//! PATCH (with `Upload-Checksum: sha256`), `POST /v1/calls` as JSON (with
//! `"upload"`) or `multipart/form-data` (`metadata` + `audio`) — storing
//! uploads on disk, checking the stored audio's sha256 and length against the
//! JSON's `audio`, keeping one call per `Idempotency-Key`.
//!
//! Fault injection: scripted answers for the next matching requests (status
//! with `Retry-After`, connection reset mid-body, delay), random faults from
//! a seeded generator (5xx, 429, resets, slow answers), 402 until a given
//! time, a required bearer token, refused recording ids (422), expired
//! uploads (410), TLS with a given certificate and optional client
//! certificate check.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use sha2::{Digest, Sha256};

type Resp = Response<Full<Bytes>>;
type BoxErr = Box<dyn std::error::Error + Send + Sync>;

/// What a scripted fault does.
#[derive(Debug, Clone)]
pub enum FaultAction {
    /// Answer this status (body "injected"), with an optional Retry-After.
    Status(u16, Option<String>),
    /// Read this many body bytes, then drop the connection.
    ResetAfter(u64),
    /// Wait, then handle normally.
    Delay(Duration),
}

/// A scripted fault for the next request matching `method` and `path_prefix`.
#[derive(Debug, Clone)]
pub struct Fault {
    pub method: Option<Method>,
    pub path_prefix: String,
    pub action: FaultAction,
}

impl Fault {
    pub fn new(method: Option<Method>, path_prefix: &str, action: FaultAction) -> Fault {
        Fault {
            method,
            path_prefix: path_prefix.to_string(),
            action,
        }
    }
}

/// Random faults (per request, seeded).
#[derive(Debug, Clone)]
pub struct RandomFaults {
    pub seed: u64,
    /// 500/502/503/504.
    pub p_5xx: f64,
    /// 429 with `Retry-After: 1`.
    pub p_429: f64,
    /// Connection dropped in the middle of a request body.
    pub p_reset: f64,
    /// Answer delayed by `slow`.
    pub p_slow: f64,
    pub slow: Duration,
}

/// TLS for the receiver.
#[derive(Clone)]
pub struct TlsSetup {
    pub cert_chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    pub key_der: Vec<u8>,
    /// Require a client certificate issued by this CA.
    pub client_ca: Option<rustls::pki_types::CertificateDer<'static>>,
}

use tokio_rustls::rustls;

/// How the receiver starts.
#[derive(Clone, Default)]
pub struct ReceiverOptions {
    /// Require `Authorization: Bearer <token>`.
    pub token: Option<String>,
    pub tls: Option<TlsSetup>,
    /// Answer tus creation with an absolute URL in Location.
    pub absolute_location: bool,
    pub random: Option<RandomFaults>,
}

#[derive(Debug)]
struct Upload {
    length: u64,
    offset: u64,
    path: PathBuf,
    metadata: BTreeMap<String, String>,
    expired: bool,
}

/// One accepted call.
#[derive(Debug, Clone)]
pub struct StoredCall {
    pub json: serde_json::Value,
    pub sha256: String,
    pub bytes: u64,
    /// How many times this key was posted (accepted answers).
    pub posts: u32,
    pub protocol: &'static str,
    /// The audio as received (kept in the receiver's store).
    pub audio: PathBuf,
    /// The audio's content type and file name (tus: `Upload-Metadata`
    /// `content_type` and `filename`; multipart: the `audio` part's).
    pub content_type: String,
    pub filename: String,
}

/// Everything the receiver saw.
#[derive(Debug, Default)]
pub struct RxState {
    uploads: HashMap<String, Upload>,
    next_upload: u64,
    pub calls: BTreeMap<String, StoredCall>,
    /// Same key posted again with different audio.
    pub conflicts: Vec<String>,
    /// (method, path, status) of every answered request (status 0: reset).
    pub log: Vec<(String, String, u16)>,
    /// When each `log` entry was answered (same order).
    pub log_at: Vec<Instant>,
    pub script: VecDeque<Fault>,
    pub payment_required_until: Option<Instant>,
    pub refuse_ids: Vec<String>,
    pub token: Option<String>,
    pub authorization_seen: Vec<String>,
    pub user_agents: Vec<String>,
    /// Uploads whose creation is answered, then expire (410) on first PATCH.
    pub expire_next_upload: bool,
    /// Answer tus creation with a Location on this origin (`scheme://host:port`)
    /// instead of the receiver's own: a misconfigured or hostile server.
    pub foreign_location: Option<String>,
    pub bytes_received: u64,
    /// A tus server with the checksum extension and only these algorithms:
    /// a PATCH whose `Upload-Checksum` names another one is answered 400
    /// (tus), and `OPTIONS /v1/uploads` says them in
    /// `Tus-Checksum-Algorithm` unless `options_silent`. `None`: sha256
    /// checked, no `OPTIONS`.
    pub checksum_algorithms: Option<Vec<&'static str>>,
    /// `OPTIONS` answered 404 (a server that does not say).
    pub options_silent: bool,
    /// Whether each PATCH carried `Upload-Checksum`, in order.
    pub patch_checksums: Vec<bool>,
    /// The next this many PATCHes are answered 400 (their body read).
    pub patch_400: u32,
    /// Requests being handled now, and the most at once.
    pub in_flight: usize,
    pub max_in_flight: usize,
}

impl RxState {
    pub fn count(&self, method: &str, path_prefix: &str, status: u16) -> usize {
        self.log
            .iter()
            .filter(|(m, p, s)| m == method && p.starts_with(path_prefix) && *s == status)
            .count()
    }

    /// When the requests matching `method`, `path_prefix` and `status` were
    /// answered, in order.
    pub fn answered_at(&self, method: &str, path_prefix: &str, status: u16) -> Vec<Instant> {
        self.log
            .iter()
            .zip(&self.log_at)
            .filter(|((m, p, s), _)| m == method && p.starts_with(path_prefix) && *s == status)
            .map(|(_, t)| *t)
            .collect()
    }
}

/// A running receiver (stops when dropped).
pub struct Receiver {
    pub addr: SocketAddr,
    pub url: String,
    pub state: Arc<Mutex<RxState>>,
    pub store: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Ctx {
    state: Arc<Mutex<RxState>>,
    store: PathBuf,
    absolute_location: bool,
    base: String,
    rng: Mutex<Option<(fastrand::Rng, RandomFaults)>>,
}

impl Receiver {
    pub fn start(opts: ReceiverOptions) -> Receiver {
        Self::start_on("127.0.0.1:0", opts)
    }

    pub fn start_on(bind: &str, opts: ReceiverOptions) -> Receiver {
        let std_listener = std::net::TcpListener::bind(bind).expect("bind receiver");
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let scheme = if opts.tls.is_some() { "https" } else { "http" };
        let host = if opts.tls.is_some() {
            format!("localhost:{}", addr.port())
        } else {
            addr.to_string()
        };
        let url = format!("{scheme}://{host}");
        let store = tempfile::tempdir().expect("receiver store");
        let state = Arc::new(Mutex::new(RxState {
            token: opts.token.clone(),
            ..RxState::default()
        }));
        let ctx = Arc::new(Ctx {
            state: state.clone(),
            store: store.path().to_path_buf(),
            absolute_location: opts.absolute_location,
            base: url.clone(),
            rng: Mutex::new(
                opts.random
                    .clone()
                    .map(|r| (fastrand::Rng::with_seed(r.seed), r)),
            ),
        });
        let acceptor = opts.tls.as_ref().map(tls_acceptor);
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                loop {
                    tokio::select! {
                        _ = &mut rx => break,
                        a = listener.accept() => {
                            let Ok((tcp, _)) = a else { continue };
                            let ctx = ctx.clone();
                            let acceptor = acceptor.clone();
                            tokio::spawn(async move {
                                let svc = hyper::service::service_fn(move |req| {
                                    let ctx = ctx.clone();
                                    async move { handle(ctx, req).await }
                                });
                                let b = hyper::server::conn::http1::Builder::new();
                                match acceptor {
                                    Some(acc) => {
                                        if let Ok(s) = acc.accept(tcp).await {
                                            let _ = b.serve_connection(hyper_util::rt::TokioIo::new(s), svc).await;
                                        }
                                    }
                                    None => {
                                        let _ = b.serve_connection(hyper_util::rt::TokioIo::new(tcp), svc).await;
                                    }
                                }
                            });
                        }
                    }
                }
            });
            rt.shutdown_timeout(Duration::from_millis(200));
        });
        Receiver {
            addr,
            url,
            state,
            store,
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, RxState> {
        self.state.lock().unwrap()
    }

    pub fn push_fault(&self, f: Fault) {
        self.lock().script.push_back(f);
    }

    pub fn calls(&self) -> BTreeMap<String, StoredCall> {
        self.lock().calls.clone()
    }
}

fn tls_acceptor(t: &TlsSetup) -> tokio_rustls::TlsAcceptor {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let b = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let b = match &t.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.clone()).unwrap();
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            b.with_client_cert_verifier(v)
        }
        None => b.with_no_client_auth(),
    };
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(t.key_der.clone().into());
    let cfg = b.with_single_cert(t.cert_chain.clone(), key).unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

/// A test PKI: a CA, a server certificate for localhost/127.0.0.1, a client
/// certificate, all signed by the CA.
pub struct TestPki {
    pub ca_pem: String,
    pub ca_der: rustls::pki_types::CertificateDer<'static>,
    pub server_chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    pub server_key_der: Vec<u8>,
    pub client_cert_pem: String,
    pub client_key_pem: String,
}

impl TestPki {
    pub fn new(name: &str) -> TestPki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let srv_key = KeyPair::generate().unwrap();
        let srv = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&srv_key, &ca_cert, &ca_key)
            .unwrap();
        let cl_key = KeyPair::generate().unwrap();
        let mut clp = CertificateParams::new(vec!["pbx-edge-client".to_string()]).unwrap();
        clp.distinguished_name
            .push(DnType::CommonName, "pbx-edge client");
        let cl = clp.signed_by(&cl_key, &ca_cert, &ca_key).unwrap();
        TestPki {
            ca_pem: ca_cert.pem(),
            ca_der: ca_cert.der().clone(),
            server_chain: vec![srv.der().clone()],
            server_key_der: srv_key.serialize_der(),
            client_cert_pem: cl.pem(),
            client_key_pem: cl_key.serialize_pem(),
        }
    }

    pub fn tls(&self, require_client_cert: bool) -> TlsSetup {
        TlsSetup {
            cert_chain: self.server_chain.clone(),
            key_der: self.server_key_der.clone(),
            client_ca: require_client_cert.then(|| self.ca_der.clone()),
        }
    }
}

fn reset_error() -> BoxErr {
    Box::new(std::io::Error::other("injected connection reset"))
}

fn answer(status: u16, body: &str) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r
}

fn header<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Read the whole body, dropping the connection after `reset_after` bytes.
async fn read_body(
    body: Incoming,
    reset_after: Option<u64>,
    mut sink: impl FnMut(&[u8]),
) -> Result<u64, BoxErr> {
    let mut body = body;
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => return Err(Box::new(e)),
        };
        if let Ok(data) = frame.into_data() {
            let mut d: &[u8] = &data;
            if let Some(limit) = reset_after {
                if n + d.len() as u64 >= limit {
                    d = &d[..(limit - n) as usize];
                    sink(d);
                    return Err(reset_error());
                }
            }
            n += d.len() as u64;
            sink(d);
        }
    }
    Ok(n)
}

async fn handle(ctx: Arc<Ctx>, req: Request<Incoming>) -> Result<Resp, std::io::Error> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    {
        let mut st = ctx.state.lock().unwrap();
        st.in_flight += 1;
        st.max_in_flight = st.max_in_flight.max(st.in_flight);
    }
    // Counted down even when the client goes away mid-request.
    struct Done(Arc<Ctx>);
    impl Drop for Done {
        fn drop(&mut self) {
            if let Ok(mut st) = self.0.state.lock() {
                st.in_flight -= 1;
            }
        }
    }
    let _done = Done(ctx.clone());
    let r = handle_inner(&ctx, req).await;
    let status = match &r {
        Ok(resp) => resp.status().as_u16(),
        Err(_) => 0,
    };
    let mut st = ctx.state.lock().unwrap();
    st.log.push((method.to_string(), path, status));
    st.log_at.push(Instant::now());
    drop(st);
    r.map_err(|e| std::io::Error::other(e.to_string()))
}

async fn handle_inner(ctx: &Arc<Ctx>, req: Request<Incoming>) -> Result<Resp, BoxErr> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    // Scripted and random faults.
    let mut reset_after = None;
    let mut delay = None;
    {
        let mut st = ctx.state.lock().unwrap();
        if let Some(a) = header(&req, "authorization") {
            st.authorization_seen.push(a.to_string());
        }
        if let Some(ua) = header(&req, "user-agent") {
            if !st.user_agents.iter().any(|x| x == ua) {
                st.user_agents.push(ua.to_string());
            }
        }
        if let Some(tok) = &st.token {
            if header(&req, "authorization") != Some(&format!("Bearer {tok}")) {
                return Ok(answer(401, "{\"error\":\"token refused\"}"));
            }
        }
        if let Some(until) = st.payment_required_until {
            if Instant::now() < until {
                return Ok(answer(402, "{\"error\":\"balance depleted\"}"));
            }
        }
        let pos = st.script.iter().position(|f| {
            f.method.as_ref().is_none_or(|m| *m == method) && path.starts_with(&f.path_prefix)
        });
        if let Some(f) = pos.and_then(|i| st.script.remove(i)) {
            match f.action {
                FaultAction::Status(s, ra) => {
                    let mut r = answer(s, "{\"error\":\"injected\"}");
                    if let Some(ra) = ra {
                        r.headers_mut().insert("retry-after", ra.parse().unwrap());
                    }
                    return Ok(r);
                }
                FaultAction::ResetAfter(n) => reset_after = Some(n),
                FaultAction::Delay(d) => delay = Some(d),
            }
        }
    }
    if let Some((rng, rf)) = ctx.rng.lock().unwrap().as_mut() {
        let x = rng.f64();
        let has_body = method == Method::PATCH || method == Method::POST;
        if x < rf.p_5xx {
            let s = [500, 502, 503, 504][rng.usize(0..4)];
            return Ok(answer(s, "injected"));
        } else if x < rf.p_5xx + rf.p_429 {
            let mut r = answer(429, "slow down");
            r.headers_mut().insert("retry-after", "1".parse().unwrap());
            return Ok(r);
        } else if has_body && x < rf.p_5xx + rf.p_429 + rf.p_reset {
            reset_after = Some(rng.u64(0..64 * 1024));
        } else if x < rf.p_5xx + rf.p_429 + rf.p_reset + rf.p_slow {
            delay = Some(rf.slow);
        }
    }
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    let tus_prefix = "/v1/uploads";
    match (method.clone(), path.as_str()) {
        (Method::OPTIONS, p) if p == tus_prefix || p == "/v1/uploads/" => Ok(tus_options(ctx)),
        (Method::POST, p) if p == tus_prefix || p == "/v1/uploads/" => tus_create(ctx, &req),
        (Method::HEAD, p) if p.starts_with("/v1/uploads/") => Ok(tus_head(ctx, &p[12..])),
        (Method::PATCH, p) if p.starts_with("/v1/uploads/") => {
            let id = p[12..].to_string();
            tus_patch(ctx, req, &id, reset_after).await
        }
        (Method::POST, "/v1/calls") => post_call(ctx, req, reset_after).await,
        _ => Ok(answer(404, "not found")),
    }
}

fn parse_metadata(v: &str) -> BTreeMap<String, String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    v.split(',')
        .filter_map(|kv| {
            let kv = kv.trim();
            let (k, v) = kv.split_once(' ').unwrap_or((kv, ""));
            let v = b64.decode(v).ok()?;
            Some((k.to_string(), String::from_utf8(v).ok()?))
        })
        .collect()
}

fn tus_create(ctx: &Arc<Ctx>, req: &Request<Incoming>) -> Result<Resp, BoxErr> {
    if header(req, "tus-resumable") != Some("1.0.0") {
        return Ok(answer(412, "Tus-Resumable 1.0.0 required"));
    }
    let Some(length) = header(req, "upload-length").and_then(|v| v.parse::<u64>().ok()) else {
        return Ok(answer(400, "Upload-Length required"));
    };
    let metadata = header(req, "upload-metadata")
        .map(parse_metadata)
        .unwrap_or_default();
    if !metadata.contains_key("filename") || !metadata.contains_key("recording_id") {
        return Ok(answer(
            400,
            "Upload-Metadata needs filename and recording_id",
        ));
    }
    let mut st = ctx.state.lock().unwrap();
    st.next_upload += 1;
    let id = format!("u{:06}", st.next_upload);
    let path = ctx.store.join(format!("{id}.bin"));
    std::fs::File::create(&path)?;
    let expired = std::mem::take(&mut st.expire_next_upload);
    st.uploads.insert(
        id.clone(),
        Upload {
            length,
            offset: 0,
            path,
            metadata,
            expired,
        },
    );
    let loc = if let Some(origin) = &st.foreign_location {
        format!("{origin}/v1/uploads/{id}")
    } else if ctx.absolute_location {
        format!("{}/v1/uploads/{id}", ctx.base)
    } else {
        format!("/v1/uploads/{id}")
    };
    let mut r = answer(201, "");
    r.headers_mut().insert("location", loc.parse().unwrap());
    r.headers_mut()
        .insert("tus-resumable", "1.0.0".parse().unwrap());
    Ok(r)
}

fn tus_options(ctx: &Arc<Ctx>) -> Resp {
    let st = ctx.state.lock().unwrap();
    match &st.checksum_algorithms {
        Some(algs) if !st.options_silent => {
            let mut r = answer(204, "");
            let h = r.headers_mut();
            h.insert("tus-resumable", "1.0.0".parse().unwrap());
            h.insert("tus-version", "1.0.0".parse().unwrap());
            h.insert("tus-extension", "creation,checksum".parse().unwrap());
            h.insert("tus-checksum-algorithm", algs.join(",").parse().unwrap());
            r
        }
        _ => answer(404, "not found"),
    }
}

fn tus_head(ctx: &Arc<Ctx>, id: &str) -> Resp {
    let st = ctx.state.lock().unwrap();
    match st.uploads.get(id) {
        None => answer(404, ""),
        Some(u) if u.expired => answer(410, ""),
        Some(u) => {
            let mut r = answer(200, "");
            let h = r.headers_mut();
            h.insert("upload-offset", u.offset.to_string().parse().unwrap());
            h.insert("upload-length", u.length.to_string().parse().unwrap());
            h.insert("cache-control", "no-store".parse().unwrap());
            h.insert("tus-resumable", "1.0.0".parse().unwrap());
            r
        }
    }
}

async fn tus_patch(
    ctx: &Arc<Ctx>,
    req: Request<Incoming>,
    id: &str,
    reset_after: Option<u64>,
) -> Result<Resp, BoxErr> {
    if header(&req, "content-type") != Some("application/offset+octet-stream") {
        return Ok(answer(415, "bad content type"));
    }
    let Some(offset) = header(&req, "upload-offset").and_then(|v| v.parse::<u64>().ok()) else {
        return Ok(answer(400, "Upload-Offset required"));
    };
    let checksum = header(&req, "upload-checksum").map(str::to_string);
    let refuse = {
        let mut st = ctx.state.lock().unwrap();
        st.patch_checksums.push(checksum.is_some());
        let bad_alg = match (&st.checksum_algorithms, &checksum) {
            (Some(algs), Some(c)) => {
                let alg = c.split(' ').next().unwrap_or("");
                !algs.iter().any(|a| a.eq_ignore_ascii_case(alg))
            }
            _ => false,
        };
        if bad_alg {
            Some("checksum algorithm not supported")
        } else if st.patch_400 > 0 {
            st.patch_400 -= 1;
            Some("bad request")
        } else {
            None
        }
    };
    if let Some(why) = refuse {
        // Answered after the body is read (else the client may see the
        // connection closed under its body instead of the answer).
        let _ = req.into_body().collect().await;
        return Ok(answer(400, why));
    }
    let (path, length) = {
        let st = ctx.state.lock().unwrap();
        match st.uploads.get(id) {
            None => return Ok(answer(404, "")),
            Some(u) if u.expired => return Ok(answer(410, "")),
            Some(u) if u.offset != offset => return Ok(answer(409, "offset mismatch")),
            Some(u) => (u.path.clone(), u.length),
        }
    };
    let mut f = std::fs::OpenOptions::new().write(true).open(&path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut hasher = Sha256::new();
    let mut written = 0u64;
    let mut too_long = false;
    let mut io_err = None;
    let res = read_body(req.into_body(), reset_after, |d| {
        if offset + written + d.len() as u64 > length {
            too_long = true;
            return;
        }
        hasher.update(d);
        if let Err(e) = f.write_all(d) {
            io_err = Some(e);
        }
        written += d.len() as u64;
    })
    .await;
    if let Some(e) = io_err {
        return Err(e.into());
    }
    f.flush()?;
    if too_long {
        return Ok(answer(413, "beyond Upload-Length"));
    }
    let complete = res.is_ok();
    let mut st = ctx.state.lock().unwrap();
    st.bytes_received += written;
    // A checksummed chunk counts only when it is complete and matches (as
    // real tus servers do); without a checksum the bytes received count.
    let accept = match &checksum {
        Some(c) if complete => {
            let want = c.strip_prefix("sha256 ").unwrap_or("");
            let got = base64::engine::general_purpose::STANDARD.encode(hasher.finalize());
            if want != got {
                return Ok(answer(460, "checksum mismatch"));
            }
            true
        }
        Some(_) => false,
        None => true,
    };
    if accept {
        if let Some(u) = st.uploads.get_mut(id) {
            u.offset = offset + written;
        }
    }
    res?;
    let new = st.uploads.get(id).map(|u| u.offset).unwrap_or(0);
    let mut r = answer(204, "");
    r.headers_mut()
        .insert("upload-offset", new.to_string().parse().unwrap());
    r.headers_mut()
        .insert("tus-resumable", "1.0.0".parse().unwrap());
    Ok(r)
}

fn file_sha(path: &Path) -> std::io::Result<(u64, String)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let n = std::io::copy(&mut f, &mut h)?;
    Ok((n, hex::encode(h.finalize())))
}

/// Where a call's audio came in.
enum Received {
    /// A finished tus upload.
    Upload(PathBuf),
    /// The audio part of a multipart call.
    Part(tempfile::NamedTempFile),
}

async fn post_call(
    ctx: &Arc<Ctx>,
    req: Request<Incoming>,
    reset_after: Option<u64>,
) -> Result<Resp, BoxErr> {
    let Some(key) = header(&req, "idempotency-key").map(str::to_string) else {
        return Ok(answer(400, "Idempotency-Key required"));
    };
    let ctype = header(&req, "content-type").unwrap_or("").to_string();
    let (json, bytes, sha, protocol, received, audio_type) =
        if ctype.starts_with("application/json") {
            let mut buf = Vec::new();
            read_body(req.into_body(), reset_after, |d| buf.extend_from_slice(d)).await?;
            let json: serde_json::Value = match serde_json::from_slice(&buf) {
                Ok(v) => v,
                Err(e) => return Ok(answer(400, &format!("bad JSON: {e}"))),
            };
            let Some(upload) = json["upload"].as_str() else {
                return Ok(answer(422, "no upload in the call"));
            };
            let uid = upload.rsplit('/').next().unwrap_or("").to_string();
            let (path, audio_type) = {
                let st = ctx.state.lock().unwrap();
                match st.uploads.get(&uid) {
                    Some(u) if u.offset == u.length => (
                        u.path.clone(),
                        (
                            u.metadata.get("content_type").cloned().unwrap_or_default(),
                            u.metadata.get("filename").cloned().unwrap_or_default(),
                        ),
                    ),
                    Some(_) => return Ok(answer(422, "upload incomplete")),
                    None => return Ok(answer(422, "unknown upload")),
                }
            };
            let (n, sha) = file_sha(&path)?;
            (json, n, sha, "tus", Received::Upload(path), audio_type)
        } else if ctype.starts_with("multipart/form-data") {
            let boundary = multer::parse_boundary(&ctype)?;
            let stream = body_stream(req.into_body(), reset_after);
            let mut mp = multer::Multipart::new(stream, boundary);
            let mut json = None;
            let mut audio = None;
            let mut audio_type = (String::new(), String::new());
            let tmp = tempfile::NamedTempFile::new_in(&ctx.store)?;
            while let Some(mut field) = mp.next_field().await? {
                match field.name() {
                    Some("metadata") => {
                        let b = field.bytes().await?;
                        json = serde_json::from_slice::<serde_json::Value>(&b).ok();
                    }
                    Some("audio") => {
                        audio_type = (
                            field
                                .content_type()
                                .map(|m| m.to_string())
                                .unwrap_or_default(),
                            field.file_name().unwrap_or("").to_string(),
                        );
                        let mut h = Sha256::new();
                        let mut n = 0u64;
                        let mut f = tmp.as_file();
                        while let Some(c) = field.chunk().await? {
                            h.update(&c);
                            f.write_all(&c)?;
                            n += c.len() as u64;
                        }
                        audio = Some((n, hex::encode(h.finalize())));
                    }
                    _ => {}
                }
            }
            let (Some(json), Some((n, sha))) = (json, audio) else {
                return Ok(answer(400, "parts metadata and audio required"));
            };
            (json, n, sha, "multipart", Received::Part(tmp), audio_type)
        } else {
            return Ok(answer(415, "unsupported content type"));
        };
    let rid = json["recording_id"].as_str().unwrap_or("").to_string();
    if json["audio"]["sha256"].as_str() != Some(sha.as_str())
        || json["audio"]["bytes"].as_u64() != Some(bytes)
    {
        return Ok(answer(
            422,
            &format!("audio does not match the JSON: {bytes} bytes, sha256 {sha}"),
        ));
    }
    let mut st = ctx.state.lock().unwrap();
    if st.refuse_ids.contains(&rid) {
        return Ok(answer(422, "{\"error\":\"recording refused by policy\"}"));
    }
    if let Some(c) = st.calls.get_mut(&key) {
        c.posts += 1;
        if c.sha256 != sha {
            let msg = format!("{key}: {} vs {sha}", c.sha256);
            st.conflicts.push(msg);
        }
        return Ok(answer(200, "{\"status\":\"already accepted\"}"));
    }
    let audio = match received {
        Received::Upload(p) => p,
        Received::Part(t) => t.into_temp_path().keep()?,
    };
    st.calls.insert(
        key,
        StoredCall {
            json,
            sha256: sha,
            bytes,
            posts: 1,
            protocol,
            audio,
            content_type: audio_type.0,
            filename: audio_type.1,
        },
    );
    Ok(answer(201, "{\"status\":\"created\"}"))
}

/// The request body as a stream for multer, dropping the connection after
/// `reset_after` bytes.
fn body_stream(
    body: Incoming,
    reset_after: Option<u64>,
) -> impl futures_util::Stream<Item = Result<Bytes, BoxErr>> + Send + 'static {
    futures_util::stream::unfold(Some((body, 0u64)), move |st| async move {
        let (mut body, mut seen) = st?;
        loop {
            match body.frame().await {
                None => return None,
                Some(Err(e)) => return Some((Err(Box::new(e) as BoxErr), None)),
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        seen += d.len() as u64;
                        if reset_after.is_some_and(|l| seen >= l) {
                            return Some((Err(reset_error()), None));
                        }
                        return Some((Ok(d), Some((body, seen))));
                    }
                }
            }
        }
    })
}
