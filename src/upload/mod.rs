//! The uploader: one recording from the spool to the cloud (CONTRACT §4).
//!
//! In: a [`Job`] (recording id, WAV path and size, the recording JSON, and the
//! tus location/offset saved by an earlier attempt) and a [`Cloud`] (HTTPS
//! client, bearer token, settings). Out: an [`Outcome`] — delivered, or the
//! [`policy::Action`] the answer calls for — plus checkpoints reported through
//! [`Progress`] while the upload runs.
//!
//! Promises:
//! - The cloud API lives behind the [`Protocol`] trait: [`tus::Tus`] and
//!   [`multipart::Multipart`] are its two implementations; changing the API
//!   touches one module.
//! - HTTPS through `reqwest` with rustls only (no OpenSSL): the system roots
//!   plus `ca_file`, an optional client certificate, `HTTPS_PROXY` or an
//!   explicit proxy; plain `http://` only to loopback hosts. Redirects are
//!   not followed.
//! - Bodies stream from disk in 256 KiB pieces: memory does not depend on the
//!   file size. An optional shared bandwidth limit paces every upload.
//! - Every request carries `User-Agent: pbx-edge/<version>` and, when a token
//!   is configured, `Authorization: Bearer …` (marked sensitive; the token is
//!   never logged, shown or put into an error).
//! - Transport errors are classified for the policy: certificate problems are
//!   never reported as transient.

pub mod multipart;
pub mod policy;
pub mod tus;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::Stream;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, RETRY_AFTER};

use crate::spoolfile::{open_recording, Keyring, OpenMode, RecordingReader};
use zeroize::{Zeroize, Zeroizing};

use crate::config::{AudioFormat, CloudProtocol};
use policy::{Action, Answer, NetFailure, Step};

/// `User-Agent` of every request.
pub(crate) const USER_AGENT: &str = concat!("pbx-edge/", env!("CARGO_PKG_VERSION"));
/// Size of each read from disk while streaming a body (each one a hop to
/// the blocking pool and back). 1 MiB pieces raised the uploader's RSS from
/// 12-15 to 16-23 MiB for no clear gain on this machine (BENCHMARKS.md,
/// "Upload throughput").
pub(crate) const PIECE: usize = 256 * 1024;
/// The systemd credential name looked up in `$CREDENTIALS_DIRECTORY`.
pub(crate) const CREDENTIAL_NAME: &str = "cloud-token";

/// A boxed future (the [`Protocol`] trait is object safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Errors setting up the uploader (never from a single upload: those are
/// [`Outcome`]s).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UploadError {
    #[error("cloud.url {0:?} is not a valid URL")]
    BadUrl(String),
    #[error("cloud.url: plain http:// is accepted only for loopback hosts, not {0:?}")]
    InsecureUrl(String),
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {path}: {message}")]
    BadPem {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
    /// The proxy as it may be shown ([`crate::logmask::url_for_log`]).
    #[error("cloud.proxy {0:?} is not a valid proxy URL")]
    BadProxy(String),
    #[error("cannot build the HTTPS client: {0}")]
    Client(String),
}

/// How to reach the cloud.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudSettings {
    /// `cloud.url`, base of every request.
    pub url: String,
    /// `cloud.protocol`.
    pub protocol: CloudProtocol,
    /// `cloud.audio_format`: the spooled WAV, or a FLAC encoding of it.
    pub audio_format: AudioFormat,
    /// `cloud.token_file` (empty: `$CREDENTIALS_DIRECTORY/cloud-token`, if present).
    pub token_file: PathBuf,
    /// `cloud.ca_file`: PEM certificates trusted besides the system roots.
    pub ca_file: Option<PathBuf>,
    /// `cloud.client_cert` + `cloud.client_key`: PEM, for mutual TLS.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// `cloud.proxy`: explicit proxy URL (else `HTTPS_PROXY`/`NO_PROXY`).
    pub proxy: Option<String>,
    /// `cloud.chunk_size`: tus PATCH body size.
    pub chunk_size: u64,
    /// Send `Upload-Checksum: sha256` with tus PATCHes (to a server that
    /// takes it: [`tus`]).
    pub checksum: bool,
    /// `cloud.timeout`: limit for small requests (HEAD, creation, /v1/calls)
    /// and for a stalled answer; a PATCH gets this plus time for its body.
    pub timeout: Duration,
}

impl CloudSettings {
    /// Settings with the defaults for everything but `url` and `protocol`.
    pub fn new(url: &str, protocol: CloudProtocol) -> CloudSettings {
        CloudSettings {
            url: url.trim_end_matches('/').to_string(),
            protocol,
            audio_format: AudioFormat::Wav,
            token_file: PathBuf::new(),
            ca_file: None,
            client_cert: None,
            client_key: None,
            proxy: None,
            chunk_size: 4 << 20,
            checksum: true,
            timeout: Duration::from_secs(60),
        }
    }
}

/// The bearer token. Debug and Display never show it; its bytes are
/// overwritten with zeros when it is dropped (and so is the text of the
/// file it was read from).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl zeroize::ZeroizeOnDrop for Secret {}

impl Secret {
    /// The token itself, for a request header (marked sensitive there);
    /// never to be logged or put into an error.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Where the token comes from: `token_file` if set, else the systemd
/// credential `cloud-token` when `$CREDENTIALS_DIRECTORY` holds one.
pub(crate) fn token_path(token_file: &Path, credentials_dir: Option<&Path>) -> Option<PathBuf> {
    if !token_file.as_os_str().is_empty() {
        return Some(token_file.to_path_buf());
    }
    credentials_dir
        .map(|d| d.join(CREDENTIAL_NAME))
        .filter(|p| p.is_file())
}

/// Read the token (first line, trimmed). `Ok(None)` when none is configured.
pub(crate) fn read_token(token_file: &Path) -> Result<Option<Secret>, UploadError> {
    let creds = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
    let Some(path) = token_path(token_file, creds.as_deref()) else {
        return Ok(None);
    };
    let text =
        Zeroizing::new(
            std::fs::read_to_string(&path).map_err(|source| UploadError::Read {
                what: "cloud.token_file",
                path: path.clone(),
                source,
            })?,
        );
    let tok = text.lines().next().unwrap_or("").trim().to_string();
    if tok.is_empty() {
        return Ok(None);
    }
    Ok(Some(Secret(tok)))
}

/// Whether `host` (from a URL) names this machine.
pub(crate) fn is_loopback_host(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(a) => a.is_loopback(),
        url::Host::Ipv6(a) => a.is_loopback(),
    }
}

/// A token bucket shared by every upload (`bandwidth_limit`, bytes/s).
#[derive(Debug)]
pub struct RateLimiter {
    rate: AtomicU64,
    /// Uploads that may share the rate at once (`max_parallel`).
    sharers: AtomicU64,
    next_free: Mutex<Instant>,
}

impl RateLimiter {
    /// How far ahead of the schedule a sender may be (a small burst).
    const BURST: Duration = Duration::from_millis(250);

    /// `rate` bytes per second; 0: unlimited.
    pub fn new(rate: u64) -> RateLimiter {
        RateLimiter {
            rate: AtomicU64::new(rate),
            sharers: AtomicU64::new(1),
            next_free: Mutex::new(Instant::now()),
        }
    }

    /// How many uploads may share the rate at once (`max_parallel`).
    pub fn set_sharers(&self, n: u32) {
        self.sharers.store(u64::from(n.max(1)), Ordering::Relaxed);
    }

    /// The least rate one upload can count on: its share of the limit when
    /// all run, capped at [`BODY_FLOOR`] (an unlimited link too).
    pub fn body_floor(&self) -> u64 {
        match self.rate() {
            0 => BODY_FLOOR,
            r => (r / self.sharers.load(Ordering::Relaxed).max(1)).clamp(1, BODY_FLOOR),
        }
    }

    pub fn set_rate(&self, rate: u64) {
        self.rate.store(rate, Ordering::Relaxed);
    }

    pub fn rate(&self) -> u64 {
        self.rate.load(Ordering::Relaxed)
    }

    /// How long to wait before sending `n` bytes (and book them).
    pub fn reserve(&self, n: u64, now: Instant) -> Duration {
        let rate = self.rate();
        if rate == 0 {
            return Duration::ZERO;
        }
        let Ok(mut next) = self.next_free.lock() else {
            return Duration::ZERO;
        };
        // Idle time is not saved up: a sender may run BURST ahead, no more.
        let start = (*next).max(now);
        *next = start + Duration::from_secs_f64(n as f64 / rate as f64);
        next.saturating_duration_since(now + Self::BURST)
    }

    pub async fn acquire(&self, n: u64) {
        let d = self.reserve(n, Instant::now());
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
    }
}

/// Marks a failure to read the local file inside a streamed body, so it is
/// not mistaken for a network error.
#[derive(Debug, thiserror::Error)]
#[error("reading the recording: {0}")]
pub struct LocalReadError(#[source] pub std::io::Error);

/// The rate a request body is given time for at least (bytes a second):
/// its limit is `cloud.timeout` plus its size at this rate.
pub const BODY_FLOOR: u64 = 16 << 10;

/// The time limit of a request with a body of `len` bytes: `cloud.timeout`
/// plus the body at the least rate it can count on (its share of
/// `bandwidth_limit` when every parallel upload runs; a limit per upload
/// timed out every long recording when several shared a slow link).
pub(crate) fn body_timeout(cloud: &Cloud, len: u64) -> Duration {
    let floor = cloud
        .limiter
        .as_ref()
        .map_or(BODY_FLOOR, |l| l.body_floor());
    cloud.settings.timeout + Duration::from_secs(len / floor + 1)
}

/// Stream `len` bytes of the plaintext of the spool file `path` from
/// `offset` in [`PIECE`]s, paced by `limiter`, adding each piece to `sent`.
/// A sealed file (encryption at rest) is decrypted on the fly with `keys`
/// (reads run on the blocking pool: [`crate::spoolfile::open_recording`]).
pub(crate) fn file_stream(
    path: PathBuf,
    offset: u64,
    len: u64,
    limiter: Option<Arc<RateLimiter>>,
    sent: Arc<AtomicU64>,
    keys: Option<Arc<Keyring>>,
) -> impl Stream<Item = Result<Bytes, LocalReadError>> + Send + 'static {
    struct St {
        reader: Option<RecordingReader>,
        path: PathBuf,
        keys: Option<Arc<Keyring>>,
        offset: u64,
        left: u64,
        limiter: Option<Arc<RateLimiter>>,
        sent: Arc<AtomicU64>,
    }
    let st = St {
        reader: None,
        path,
        keys,
        offset,
        left: len,
        limiter,
        sent,
    };
    futures_util::stream::try_unfold(st, |mut st| async move {
        if st.left == 0 {
            return Ok(None);
        }
        let want = st.left.min(PIECE as u64) as usize;
        if let Some(l) = &st.limiter {
            l.acquire(want as u64).await;
        }
        let (reader, path, keys, offset) = (
            st.reader.take(),
            st.path.clone(),
            st.keys.clone(),
            st.offset,
        );
        let (reader, buf) = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
            let mut r = match reader {
                Some(r) => r,
                None => open_at(&path, keys.as_deref(), offset)?,
            };
            let buf = r.read_piece(want)?;
            Ok((r, buf))
        })
        .await
        .map_err(|e| LocalReadError(std::io::Error::other(e)))?
        .map_err(LocalReadError)?;
        st.reader = Some(reader);
        st.left -= want as u64;
        st.sent.fetch_add(want as u64, Ordering::Relaxed);
        Ok(Some((Bytes::from(buf), st)))
    })
}

/// A spool file's plaintext reader placed at `offset`.
pub(crate) fn open_at(
    path: &Path,
    keys: Option<&Keyring>,
    offset: u64,
) -> std::io::Result<RecordingReader> {
    use std::io::Seek;
    let mut r = open_recording(path, keys, OpenMode::Strict)?;
    r.seek(std::io::SeekFrom::Start(offset))?;
    Ok(r)
}

/// A recording to deliver.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: String,
    /// The file uploaded: the spooled WAV, or its FLAC ([`flac_job`]).
    pub wav: PathBuf,
    /// Its size in bytes (read when the job starts).
    pub size: u64,
    /// `wav` or `flac`: the uploaded file's extension (`<id>.<ext>`).
    pub ext: &'static str,
    /// `audio/wav` or `audio/flac`.
    pub content_type: &'static str,
    /// The recording JSON (CONTRACT §3) as it is in the spool (for a FLAC
    /// upload, `audio` describes the FLAC: format, bytes, sha256).
    pub json: serde_json::Value,
    /// tus: the upload URL and offset of an earlier attempt.
    pub resume: Option<(String, u64)>,
    /// The keys that open the spool's sealed files (encryption at rest).
    pub keys: Option<Arc<Keyring>>,
}

/// Reports from a running upload.
pub trait Progress: Send + Sync {
    /// The server holds `offset` bytes of the upload at `location` (tus).
    fn checkpoint<'a>(&'a self, location: &'a str, offset: u64) -> BoxFuture<'a, ()>;
    /// The saved upload location is gone (404/410): a new upload starts.
    fn restart(&self) -> BoxFuture<'_, ()>;
}

/// How an upload ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `/v1/calls` answered 200 or 201: the recording is delivered.
    Delivered { status: u16 },
    /// Anything else, as the policy says (never `Done`/`Resume`/`Restart`).
    Failed(Action),
}

/// One cloud API. Implementations: [`tus::Tus`], [`multipart::Multipart`].
pub trait Protocol: Send + Sync {
    fn name(&self) -> &'static str;
    fn deliver<'a>(
        &'a self,
        cloud: &'a Cloud,
        job: &'a Job,
        progress: &'a dyn Progress,
    ) -> BoxFuture<'a, Outcome>;
}

/// The HTTPS client and what every request needs.
pub struct Cloud {
    pub settings: CloudSettings,
    base: url::Url,
    http: reqwest::Client,
    token: RwLock<Option<Secret>>,
    pub limiter: Option<Arc<RateLimiter>>,
    /// Body bytes handed to the network (all uploads).
    pub bytes_sent: Arc<AtomicU64>,
    protocol: Box<dyn Protocol>,
}

impl std::fmt::Debug for Cloud {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cloud")
            .field("url", &self.settings.url)
            .field("protocol", &self.protocol.name())
            .finish()
    }
}

fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, UploadError> {
    std::fs::read(path).map_err(|source| UploadError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

impl Cloud {
    /// Build the client: checks the URL, reads the CA file, client
    /// certificate and token.
    pub fn new(
        settings: CloudSettings,
        limiter: Option<Arc<RateLimiter>>,
        bytes_sent: Arc<AtomicU64>,
    ) -> Result<Cloud, UploadError> {
        let base = url::Url::parse(&format!("{}/", settings.url.trim_end_matches('/')))
            .map_err(|_| UploadError::BadUrl(settings.url.clone()))?;
        match base.scheme() {
            "https" => {}
            "http" if base.host().as_ref().is_some_and(is_loopback_host) => {}
            "http" => return Err(UploadError::InsecureUrl(settings.url.clone())),
            _ => return Err(UploadError::BadUrl(settings.url.clone())),
        }
        let mut b = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(15).min(settings.timeout))
            // No `read_timeout`: reqwest runs it from the request's start to
            // the answer's headers without renewing it while the body is
            // sent, which cut off every upload longer than `cloud.timeout`.
            // Each request has its own limit instead ([`Cloud::send`]:
            // `cloud.timeout`, plus the body's size at its least rate).
            .pool_idle_timeout(Duration::from_secs(60))
            .tls_built_in_native_certs(true);
        if let Some(ca) = &settings.ca_file {
            let pem = read_file("cloud.ca_file", ca)?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| UploadError::BadPem {
                    what: "cloud.ca_file",
                    path: ca.clone(),
                    message: e.to_string(),
                })?;
            if certs.is_empty() {
                return Err(UploadError::BadPem {
                    what: "cloud.ca_file",
                    path: ca.clone(),
                    message: "no certificate found".into(),
                });
            }
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        match (&settings.client_cert, &settings.client_key) {
            (Some(cert), key) => {
                // Holds the private key too: wiped when dropped.
                let mut pem = Zeroizing::new(read_file("cloud.client_cert", cert)?);
                if let Some(key) = key {
                    pem.push(b'\n');
                    pem.extend_from_slice(&Zeroizing::new(read_file("cloud.client_key", key)?));
                }
                let id = reqwest::Identity::from_pem(&pem).map_err(|e| UploadError::BadPem {
                    what: "cloud.client_cert",
                    path: cert.clone(),
                    message: e.to_string(),
                })?;
                b = b.identity(id);
            }
            (None, Some(key)) => {
                return Err(UploadError::BadPem {
                    what: "cloud.client_key",
                    path: key.clone(),
                    message: "given without cloud.client_cert".into(),
                })
            }
            (None, None) => {}
        }
        if base.scheme() == "http" {
            // Plain http is for loopback only: never through a proxy (from
            // `cloud.proxy` or the environment's HTTP_PROXY), which would
            // carry the token and the recording off the machine in clear.
            b = b.no_proxy();
        } else if let Some(p) = &settings.proxy {
            let proxy = reqwest::Proxy::all(p)
                .map_err(|_| UploadError::BadProxy(crate::logmask::url_for_log(p)))?;
            b = b.proxy(proxy);
        }
        let http = b.build().map_err(|e| UploadError::Client(e.to_string()))?;
        let token = read_token(&settings.token_file)?;
        let protocol: Box<dyn Protocol> = match settings.protocol {
            CloudProtocol::Tus => Box::new(tus::Tus::default()),
            CloudProtocol::Multipart => Box::new(multipart::Multipart),
        };
        Ok(Cloud {
            settings,
            base,
            http,
            token: RwLock::new(token),
            limiter,
            bytes_sent,
            protocol,
        })
    }

    /// Re-read the token file (after a reload, or before retrying a pause).
    pub fn reload_token(&self) -> Result<(), UploadError> {
        let t = read_token(&self.settings.token_file)?;
        if let Ok(mut w) = self.token.write() {
            *w = t;
        }
        Ok(())
    }

    pub fn has_token(&self) -> bool {
        self.token.read().map(|t| t.is_some()).unwrap_or(false)
    }

    pub fn protocol(&self) -> &dyn Protocol {
        self.protocol.as_ref()
    }

    /// Deliver one recording with the configured protocol.
    pub async fn deliver(&self, job: &Job, progress: &dyn Progress) -> Outcome {
        self.protocol.deliver(self, job, progress).await
    }

    /// `path` (like `v1/uploads`) or an absolute URL, resolved against the base URL.
    pub fn resolve(&self, path_or_url: &str) -> Option<url::Url> {
        // RFC 3986 reference resolution: `v1/uploads` is below the base path,
        // `/files/x` keeps the base's host, a full URL stands for itself.
        self.base.join(path_or_url).ok()
    }

    /// A request with the common headers.
    pub fn request(&self, method: reqwest::Method, url: url::Url) -> reqwest::RequestBuilder {
        let mut h = HeaderMap::new();
        if let Ok(t) = self.token.read() {
            if let Some(Secret(tok)) = t.as_ref() {
                let bearer = Zeroizing::new(format!("Bearer {tok}"));
                if let Ok(mut v) = HeaderValue::from_str(&bearer) {
                    v.set_sensitive(true);
                    h.insert(AUTHORIZATION, v);
                }
            }
        }
        self.http.request(method, url).headers(h)
    }

    /// Send, and turn the result into an [`HttpResult`] (body read up to a
    /// few KiB).
    pub async fn send(&self, req: reqwest::RequestBuilder, timeout: Duration) -> HttpResult {
        match req.timeout(timeout).send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let headers = resp.headers().clone();
                let body = read_body(resp, policy::BODY_KEEP * 2).await;
                HttpResult::Answer {
                    status,
                    headers,
                    body,
                }
            }
            Err(e) => HttpResult::Transport(classify_error(&e)),
        }
    }
}

/// An answer, or why there was none.
#[derive(Debug)]
pub enum HttpResult {
    Answer {
        status: u16,
        headers: HeaderMap,
        body: String,
    },
    Transport(NetFailure),
}

impl HttpResult {
    /// The policy's view of this result.
    pub fn action(&self, step: Step) -> Action {
        match self {
            HttpResult::Answer {
                status,
                headers,
                body,
            } => policy::classify(
                step,
                &Answer::Http {
                    status: *status,
                    retry_after: headers.get(RETRY_AFTER).and_then(|v| v.to_str().ok()),
                    body,
                },
                SystemTime::now(),
            ),
            HttpResult::Transport(t) => {
                policy::classify(step, &Answer::Transport(t.clone()), SystemTime::now())
            }
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        match self {
            HttpResult::Answer { headers, .. } => headers.get(name).and_then(|v| v.to_str().ok()),
            HttpResult::Transport(_) => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            HttpResult::Answer { status, .. } => Some(*status),
            HttpResult::Transport(_) => None,
        }
    }
}

async fn read_body(mut resp: reqwest::Response, max: usize) -> String {
    let mut buf = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        let room = max.saturating_sub(buf.len());
        buf.extend_from_slice(chunk.get(..room.min(chunk.len())).unwrap_or(&[]));
        if buf.len() >= max {
            break;
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Classify a reqwest error for the policy. Certificate problems (ours or
/// theirs) are [`NetFailure::Certificate`]; a local read failure inside a body
/// is [`NetFailure::LocalIo`]. The message never contains the token (reqwest
/// errors carry the URL, which has no credentials: config refuses them).
pub(crate) fn classify_error(e: &reqwest::Error) -> NetFailure {
    let mut chain = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(l) = err.downcast_ref::<LocalReadError>() {
            return NetFailure::LocalIo(l.0.to_string());
        }
        chain.push(err.to_string());
        cur = err.source();
    }
    let text = chain.join(": ");
    let lower = text.to_ascii_lowercase();
    if lower.contains("certificate") || lower.contains("unknownissuer") {
        return NetFailure::Certificate(text);
    }
    if e.is_timeout() {
        NetFailure::Timeout(text)
    } else {
        NetFailure::Connection(text)
    }
}

/// Read the recording JSON (at most 4 MiB) and the WAV size for a job:
/// their plaintext when they are sealed (decrypted with `keys`; a missing or
/// wrong key is an error that changes nothing).
pub async fn load_job(
    id: &str,
    wav: PathBuf,
    json: &Path,
    resume: Option<(String, u64)>,
    keys: Option<Arc<Keyring>>,
) -> std::io::Result<Job> {
    let meta = tokio::fs::metadata(json).await?;
    if meta.len() > 4 << 20 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "recording JSON larger than 4 MiB",
        ));
    }
    let (json_path, wav_path, k) = (json.to_path_buf(), wav.clone(), keys.clone());
    let (text, size) = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
        let text = crate::spoolfile::read_recording(&json_path, k.as_deref())?;
        let size = open_recording(&wav_path, k.as_deref(), OpenMode::Strict)?.len();
        Ok((text, size))
    })
    .await
    .map_err(std::io::Error::other)??;
    let doc: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    if !doc.is_object() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "recording JSON is not an object",
        ));
    }
    Ok(Job {
        id: id.to_string(),
        wav,
        size,
        ext: "wav",
        content_type: "audio/wav",
        json: doc,
        resume,
        keys,
    })
}

/// The FLAC kept beside a spooled WAV for upload: `.<id>.flac` (hidden:
/// never taken for a recording; removed with the recording's files).
pub fn flac_path(wav: &Path, id: &str) -> PathBuf {
    wav.with_file_name(format!(".{id}.flac"))
}

/// Turns a WAV job into a FLAC one (`cloud.audio_format = "flac"`): the
/// FLAC kept beside the WAV from an earlier attempt is used, else the WAV
/// is encoded once (temp file, fsync, rename, directory fsync). The encoding
/// is deterministic, so a tus upload resumed after the file was lost still
/// gets the same bytes. The job's JSON `audio` then describes the FLAC
/// (`format`, `bytes`, `sha256`, CONTRACT §3). Blocking work runs off the
/// async threads.
pub async fn flac_job(mut job: Job) -> std::io::Result<Job> {
    let wav = job.wav.clone();
    let id = job.id.clone();
    let keys = job.keys.clone();
    let (path, info) = tokio::task::spawn_blocking(move || flac_beside(&wav, &id, keys.as_deref()))
        .await
        .map_err(std::io::Error::other)??;
    job.wav = path;
    job.size = info.0;
    job.ext = "flac";
    job.content_type = "audio/flac";
    if let Some(a) = job.json.get_mut("audio").and_then(|a| a.as_object_mut()) {
        a.insert("format".into(), "flac".into());
        a.insert("bytes".into(), info.0.into());
        a.insert("sha256".into(), info.1.into());
    }
    Ok(job)
}

/// The FLAC of `wav` (encoded now unless kept from before): its path, and
/// its plaintext's size and hex SHA-256. With `keys` the WAV is read and the
/// FLAC written sealed, like every spool file.
fn flac_beside(
    wav: &Path,
    id: &str,
    keys: Option<&Keyring>,
) -> std::io::Result<(PathBuf, (u64, String))> {
    use std::io::Write;
    let path = flac_path(wav, id);
    if path.is_file() {
        return Ok((path.clone(), crate::spoolfile::hash_recording(&path, keys)?));
    }
    let tmp = wav.with_file_name(format!(".{id}.flac.tmp"));
    let made = (|| -> std::io::Result<(u64, String)> {
        let f = crate::sys::create_private_file(&tmp)?;
        let mut out = crate::spoolfile::SpoolWriter::new(
            std::io::BufWriter::with_capacity(256 * 1024, f),
            keys,
        )?;
        let info = crate::spoolfile::flac::encode_wav(
            || {
                open_recording(wav, keys, OpenMode::Strict)
                    .map(|r| std::io::BufReader::with_capacity(256 * 1024, r))
            },
            &mut out,
        )?;
        let mut out = out.finish()?;
        out.flush()?;
        let f = out.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &path)?;
        if let Some(dir) = path.parent() {
            crate::sys::sync_dir(dir)?;
        }
        Ok((info.bytes, info.sha256))
    })();
    if made.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    Ok((path, made?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_wiped_when_dropped() {
        fn wiped_on_drop<T: zeroize::ZeroizeOnDrop>(_: &T) {}
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("t");
        std::fs::write(&f, "s3cr3t-token\n").unwrap();
        let t = read_token(&f).unwrap().unwrap();
        wiped_on_drop(&t);
        // What the drop does: the bytes become zeros, then the string is empty.
        let mut copy = t.clone();
        let ptr = copy.0.as_ptr();
        let len = copy.0.len();
        copy.0.zeroize();
        // SAFETY: zeroize keeps the allocation (it clears, it does not free).
        let after = unsafe { std::slice::from_raw_parts(ptr, len) };
        assert!(after.iter().all(|b| *b == 0));
        assert_eq!(t.0, "s3cr3t-token");
    }

    #[test]
    fn token_paths() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(token_path(Path::new(""), None), None);
        assert_eq!(token_path(Path::new(""), Some(d.path())), None);
        std::fs::write(d.path().join(CREDENTIAL_NAME), "abc\n").unwrap();
        assert_eq!(
            token_path(Path::new(""), Some(d.path())),
            Some(d.path().join(CREDENTIAL_NAME))
        );
        assert_eq!(
            token_path(Path::new("/x/t"), Some(d.path())),
            Some(PathBuf::from("/x/t"))
        );
        let t = read_token(&d.path().join(CREDENTIAL_NAME))
            .unwrap()
            .unwrap();
        assert_eq!(format!("{t:?}"), "Secret(***)");
        assert_eq!(t.0, "abc");
    }

    #[test]
    fn urls_are_checked_and_resolved() {
        let mk = |u: &str| {
            Cloud::new(
                CloudSettings::new(u, CloudProtocol::Tus),
                None,
                Arc::default(),
            )
        };
        assert!(matches!(
            mk("http://example.com"),
            Err(UploadError::InsecureUrl(_))
        ));
        assert!(matches!(mk("ftp://x"), Err(UploadError::BadUrl(_))));
        let c = mk("http://127.0.0.1:9/api").unwrap();
        assert_eq!(
            c.resolve("v1/uploads").unwrap().as_str(),
            "http://127.0.0.1:9/api/v1/uploads"
        );
        assert_eq!(
            c.resolve("/files/abc").unwrap().as_str(),
            "http://127.0.0.1:9/files/abc"
        );
        assert_eq!(
            c.resolve("https://other/x?y=1").unwrap().as_str(),
            "https://other/x?y=1"
        );
        assert!(mk("http://[::1]:9").is_ok());
        assert!(mk("http://localhost:9").is_ok());
    }

    /// A request body's time limit counts on the upload's share of the
    /// link when every parallel upload runs (a slow link shared by two no
    /// longer times out each long recording and retries it for ever).
    #[test]
    fn a_body_is_given_time_for_its_share_of_a_limited_link() {
        let l = RateLimiter::new(8 << 10);
        assert_eq!(l.body_floor(), 8 << 10);
        l.set_sharers(2);
        assert_eq!(l.body_floor(), 4 << 10);
        l.set_rate(0);
        assert_eq!(l.body_floor(), BODY_FLOOR, "unlimited");
        l.set_rate(1 << 30);
        assert_eq!(l.body_floor(), BODY_FLOOR, "a fast link: the floor");
        l.set_rate(1);
        l.set_sharers(8);
        assert_eq!(l.body_floor(), 1, "never zero");
    }

    #[test]
    fn rate_limiter_paces() {
        let l = RateLimiter::new(1000);
        let t0 = Instant::now();
        // 250 ms of sending may go ahead of the schedule, then 1 s per 1000 bytes.
        assert_eq!(l.reserve(250, t0), Duration::ZERO);
        let d = l.reserve(250, t0);
        assert!(
            d > Duration::from_millis(240) && d <= Duration::from_millis(250),
            "{d:?}"
        );
        let d = l.reserve(1000, t0);
        assert!(
            d > Duration::from_millis(1240) && d <= Duration::from_millis(1250),
            "{d:?}"
        );
        // Later, idle time is not saved up beyond the burst.
        let t1 = t0 + Duration::from_secs(100);
        assert_eq!(l.reserve(250, t1), Duration::ZERO);
        assert!(l.reserve(250, t1) > Duration::from_millis(240));
        let u = RateLimiter::new(0);
        assert_eq!(u.reserve(1 << 30, t0), Duration::ZERO);
    }

    #[tokio::test]
    async fn file_stream_reads_the_range() {
        use futures_util::TryStreamExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let sent = Arc::new(AtomicU64::new(0));
        let parts: Vec<Bytes> = file_stream(p.clone(), 1000, 150_000, None, sent.clone(), None)
            .try_collect()
            .await
            .unwrap();
        let got: Vec<u8> = parts.concat();
        assert_eq!(got, data[1000..151_000]);
        assert_eq!(sent.load(Ordering::Relaxed), 150_000);
        assert!(parts.iter().all(|b| b.len() <= PIECE));
        // Past the end: a local read error, not a panic.
        let r: Result<Vec<Bytes>, _> = file_stream(p, 199_000, 5000, None, sent, None)
            .try_collect()
            .await;
        assert!(r.is_err());
    }

    /// Several pieces: the bytes in order, none twice, and a file cut
    /// short while it is streamed ends the stream with an error (never
    /// short data).
    #[tokio::test]
    async fn file_stream_reads_pieces_in_order() {
        use futures_util::{StreamExt, TryStreamExt};
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        let data: Vec<u8> = (0..(3 * PIECE + 12_345) as u32)
            .map(|i| (i % 253) as u8 ^ (i >> 11) as u8)
            .collect();
        std::fs::write(&p, &data).unwrap();
        let sent = Arc::new(AtomicU64::new(0));
        let len = (data.len() - 7) as u64;
        let parts: Vec<Bytes> = file_stream(p.clone(), 7, len, None, sent.clone(), None)
            .try_collect()
            .await
            .unwrap();
        assert_eq!(parts.len(), 4);
        assert_eq!(parts.concat(), data[7..]);
        assert_eq!(sent.load(Ordering::Relaxed), len);
        // The file shrinks after the first piece was handed over.
        let mut s = Box::pin(file_stream(
            p.clone(),
            0,
            data.len() as u64,
            None,
            sent,
            None,
        ));
        let first = s.next().await.unwrap().unwrap();
        assert_eq!(first[..], data[..PIECE]);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(PIECE as u64 + 10)
            .unwrap();
        let mut rest = Vec::new();
        let mut failed = false;
        while let Some(r) = s.next().await {
            match r {
                Ok(b) => rest.extend_from_slice(&b),
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        assert!(failed, "a file cut short ends in an error");
        // What came before the error is the file's own bytes, in order.
        assert_eq!(rest[..], data[PIECE..PIECE + rest.len()]);
    }
}
