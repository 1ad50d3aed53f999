//! `protocol = "tus"` (CONTRACT §4): a resumable tus 1.0.0 upload of the WAV,
//! then `POST /v1/calls` with the recording JSON and the upload's location.
//!
//! In: a [`Job`] (maybe with the location and offset of an earlier attempt).
//! Out: [`Outcome::Delivered`] after `200`/`201` on `/v1/calls`, or the
//! policy's action for the first answer that stops the upload; every offset
//! the server confirms is reported through [`Progress::checkpoint`] (the
//! creation's location with offset 0 right after the `201`).
//!
//! Steps: with a saved location, `HEAD` it and continue from its
//! `Upload-Offset` (404/410: forget it and create a new upload); else
//! `POST {url}/v1/uploads` (`Upload-Length`, `Upload-Metadata` with
//! `filename`, `recording_id`, `agent_id`, `content_type`). Then `PATCH`
//! chunks of `chunk_size` bytes streamed from disk with `Upload-Offset` and
//! `Upload-Checksum: sha256 <base64>` when the server takes it; a 409 (or a
//! 460 checksum mismatch) `HEAD`s and continues from the server's offset.
//!
//! Checksums: before the first PATCH an `OPTIONS {url}/v1/uploads` asks the
//! server (once per [`Cloud`], i.e. per endpoint; asked again after no
//! answer, a 401/402/403, 408, 429 or a 5xx but 501). `Tus-Checksum-Algorithm` without `sha256`, or a `Tus-Extension`
//! without `checksum`: no `Upload-Checksum` is sent. No answer on either
//! (a server without `OPTIONS`): it is sent. A 400 to a PATCH that carried
//! one (tus: "the checksum algorithm is not supported") is sent again at
//! once without it; if that one is taken, the endpoint gets no checksums
//! from then on; a 400 to the PATCH without a checksum refuses the
//! recording as before. A location on another
//! origin than `cloud.url` is refused (recordings and the token go only to
//! the configured cloud; `localhost` and `127.0.0.1` with the same scheme
//! and port are one origin): a new upload's pauses every upload
//! ([`PauseKind::ForeignLocation`]: `/readyz` and `/status` say why, one
//! probe per `pause_retry`); a saved one is forgotten (a new upload is
//! created).

use std::sync::{Arc, Mutex};

use base64::Engine as _;
use reqwest::Method;
use sha2::{Digest, Sha256};

use super::policy::{Action, PauseKind, Step};
use super::{file_stream, BoxFuture, Cloud, HttpResult, Job, Outcome, Progress, Protocol};

/// The tus version spoken.
pub(crate) const TUS_VERSION: &str = "1.0.0";
/// How often one attempt may go back to `HEAD` or restart before it gives up
/// (as a transient failure) instead of looping.
const MAX_DETOURS: u32 = 8;

/// The tus protocol, and what its server (the [`Cloud`] it belongs to)
/// said about checksums.
#[derive(Debug, Default)]
pub struct Tus {
    /// `None`: not asked yet; `Some(true)`: send `Upload-Checksum: sha256`.
    sha256: Mutex<Option<bool>>,
}

impl Tus {
    fn sha256(&self) -> Option<bool> {
        self.sha256.lock().ok().and_then(|g| *g)
    }

    fn set_sha256(&self, v: bool) {
        if let Ok(mut g) = self.sha256.lock() {
            *g = Some(v);
        }
    }
}

impl Protocol for Tus {
    fn name(&self) -> &'static str {
        "tus"
    }

    fn deliver<'a>(
        &'a self,
        cloud: &'a Cloud,
        job: &'a Job,
        progress: &'a dyn Progress,
    ) -> BoxFuture<'a, Outcome> {
        Box::pin(deliver(self, cloud, job, progress))
    }
}

fn fail(a: Action) -> Outcome {
    Outcome::Failed(a)
}

fn retry(reason: impl Into<String>) -> Outcome {
    fail(Action::Retry {
        after: None,
        reason: reason.into(),
    })
}

/// `Upload-Metadata`: `key base64(value)` pairs.
pub(crate) fn upload_metadata(pairs: &[(&str, &str)]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    pairs
        .iter()
        .map(|(k, v)| {
            if v.is_empty() {
                (*k).to_string()
            } else {
                format!("{k} {}", b64.encode(v.as_bytes()))
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Base64 SHA-256 of `len` bytes of `path` from `offset` (read in pieces).
async fn chunk_checksum(
    path: &std::path::Path,
    keys: Option<&Arc<crate::spoolfile::Keyring>>,
    offset: u64,
    len: u64,
) -> std::io::Result<String> {
    use std::io::Read;
    let (path, keys) = (path.to_path_buf(), keys.cloned());
    tokio::task::spawn_blocking(move || {
        let mut r = super::open_at(&path, keys.as_deref(), offset)?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; super::PIECE];
        let mut left = len;
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            let Some(b) = buf.get_mut(..want) else { break };
            r.read_exact(b)?;
            h.update(&*b);
            left -= want as u64;
        }
        Ok(base64::engine::general_purpose::STANDARD.encode(h.finalize()))
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Whether `Upload-Checksum: sha256` may be sent, from an `OPTIONS`
/// answer's `Tus-Checksum-Algorithm` and `Tus-Extension` (`None`: they do
/// not say).
fn sha256_from_options(algorithms: Option<&str>, extensions: Option<&str>) -> Option<bool> {
    let has = |list: &str, want: &str| list.split(',').any(|a| a.trim().eq_ignore_ascii_case(want));
    if let Some(a) = algorithms {
        return Some(has(a, "sha256"));
    }
    match extensions {
        Some(e) if !has(e, "checksum") => Some(false),
        _ => None,
    }
}

/// Whether to send `Upload-Checksum: sha256` with this PATCH: asks the
/// server (`OPTIONS`) the first time; an answer that says nothing about it
/// counts as yes (a 400 teaches otherwise, [`patch`]); no answer, or a
/// transient or refused one, is asked again next time.
async fn wants_checksum(tus: &Tus, cloud: &Cloud) -> bool {
    if !cloud.settings.checksum {
        return false;
    }
    if let Some(v) = tus.sha256() {
        return v;
    }
    let Some(url) = cloud.resolve("v1/uploads") else {
        return true;
    };
    let r = cloud
        .send(
            cloud
                .request(Method::OPTIONS, url)
                .header("Tus-Resumable", TUS_VERSION),
            cloud.settings.timeout,
        )
        .await;
    let v = match r.status() {
        Some(200..=299) => sha256_from_options(
            r.header("tus-checksum-algorithm"),
            r.header("tus-extension"),
        )
        .unwrap_or(true),
        // A server without OPTIONS: it will not say.
        Some(400 | 404 | 405 | 501) => true,
        // No answer, or one that says nothing about it (a refused token,
        // a busy server): sent this time, asked again next time.
        _ => return true,
    };
    if !v {
        tracing::info!(
            "the tus server does not take Upload-Checksum: sha256 (OPTIONS): chunks go without a checksum"
        );
    }
    tus.set_sha256(v);
    v
}

fn parse_offset(r: &HttpResult) -> Option<u64> {
    r.header("upload-offset")?.trim().parse().ok()
}

/// The upload at `loc`: its offset and, when the server says, its length.
/// `None`: gone (404/410).
async fn head(cloud: &Cloud, loc: &url::Url) -> Result<Option<(u64, Option<u64>)>, Outcome> {
    let r = cloud
        .send(
            cloud
                .request(Method::HEAD, loc.clone())
                .header("Tus-Resumable", TUS_VERSION),
            cloud.settings.timeout,
        )
        .await;
    match r.action(Step::Location) {
        Action::Done => match parse_offset(&r) {
            Some(o) => Ok(Some((
                o,
                r.header("upload-length")
                    .and_then(|l| l.trim().parse().ok()),
            ))),
            None => Err(retry("tus HEAD answer without a valid Upload-Offset")),
        },
        Action::Restart => Ok(None),
        // 409 on HEAD makes no sense: transient.
        Action::Resume => Err(retry("tus HEAD answered 409")),
        a => Err(fail(a)),
    }
}

async fn create(cloud: &Cloud, job: &Job) -> Result<url::Url, Outcome> {
    let Some(url) = cloud.resolve("v1/uploads") else {
        return Err(retry("cannot build the upload URL"));
    };
    let agent = job.json["agent_id"].as_str().unwrap_or("");
    let filename = format!("{}.{}", job.id, job.ext);
    let meta = upload_metadata(&[
        ("filename", &filename),
        ("recording_id", &job.id),
        ("agent_id", agent),
        ("content_type", job.content_type),
    ]);
    let r = cloud
        .send(
            cloud
                .request(Method::POST, url)
                .header("Tus-Resumable", TUS_VERSION)
                .header("Upload-Length", job.size.to_string())
                .header("Upload-Metadata", meta)
                .header("Content-Length", "0"),
            cloud.settings.timeout,
        )
        .await;
    match r.action(Step::Create) {
        Action::Done => {}
        a => return Err(fail(a)),
    }
    let Some(loc) = r.header("location") else {
        return Err(retry("tus creation answer without Location"));
    };
    let Some(loc) = cloud.resolve(loc.trim()) else {
        return Err(retry("tus creation answered an invalid Location"));
    };
    check_origin(cloud, &loc)?;
    Ok(loc)
}

/// A location off `cloud.url`'s origin is the server's misconfiguration
/// (or worse): recordings leave the machine only to the configured cloud,
/// and the token goes only there. The same for every upload: all of them
/// pause, the recordings wait in the spool, and the reason (the two
/// origins, no recording's data) goes to the log once, `/readyz` and
/// `/status`. One name for this machine stands for another (`localhost`,
/// `127.0.0.1`, `[::1]`: the same scheme and port on loopback is the same
/// server, as a tus server that names itself by its listening address
/// answers).
fn check_origin(cloud: &Cloud, loc: &url::Url) -> Result<(), Outcome> {
    let base = cloud.resolve("");
    let same = base.as_ref().is_some_and(|b| {
        b.origin() == loc.origin()
            || (b.scheme() == loc.scheme()
                && b.port_or_known_default() == loc.port_or_known_default()
                && [b, loc]
                    .iter()
                    .all(|u| u.host().is_some_and(|h| super::is_loopback_host(&h))))
    });
    if !same {
        return Err(fail(Action::PauseAll {
            kind: PauseKind::ForeignLocation,
            reason: format!(
                "the tus server answered an upload Location on another origin ({}) than cloud.url ({}): \
                 refused (recordings and the token go only to cloud.url); a misconfigured or hostile \
                 server, recordings wait in the spool",
                loc.origin().ascii_serialization(),
                base.map(|b| b.origin().ascii_serialization())
                    .unwrap_or_else(|| "?".into())
            ),
        }));
    }
    Ok(())
}

enum PatchEnd {
    /// Server confirmed this offset.
    Offset(u64),
    /// HEAD and continue (409, 460, a bad offset).
    Rehead,
    /// 404/410.
    Restart,
}

async fn patch(
    tus: &Tus,
    cloud: &Cloud,
    job: &Job,
    loc: &url::Url,
    offset: u64,
) -> Result<PatchEnd, Outcome> {
    let len = cloud.settings.chunk_size.min(job.size - offset);
    let mut checksum = wants_checksum(tus, cloud).await;
    let mut without_after_400 = false;
    loop {
        let r = patch_once(cloud, job, loc, offset, len, checksum).await?;
        if checksum && r.status() == Some(400) {
            // tus: 400 is the answer to an algorithm the server does not
            // support. Again without: if that is taken, it was the checksum.
            tracing::info!(
                "the tus server answered 400 to a PATCH with Upload-Checksum: sha256: sent again without"
            );
            checksum = false;
            without_after_400 = true;
            continue;
        }
        if without_after_400 {
            if let Some(200..=299) = r.status() {
                tracing::warn!(
                    "the tus server refuses Upload-Checksum: sha256 (400) and takes chunks without: none sent to it from now on"
                );
                tus.set_sha256(false);
            }
        }
        if r.status() == Some(460) {
            return Ok(PatchEnd::Rehead);
        }
        return match r.action(Step::Location) {
            Action::Done => match parse_offset(&r) {
                Some(o) if o > offset && o <= job.size => Ok(PatchEnd::Offset(o)),
                _ => Ok(PatchEnd::Rehead),
            },
            Action::Resume => Ok(PatchEnd::Rehead),
            Action::Restart => Ok(PatchEnd::Restart),
            a => Err(fail(a)),
        };
    }
}

/// One PATCH of `len` bytes at `offset`, with `Upload-Checksum` or without.
async fn patch_once(
    cloud: &Cloud,
    job: &Job,
    loc: &url::Url,
    offset: u64,
    len: u64,
    checksum: bool,
) -> Result<HttpResult, Outcome> {
    let mut req = cloud
        .request(Method::PATCH, loc.clone())
        .header("Tus-Resumable", TUS_VERSION)
        .header("Content-Type", "application/offset+octet-stream")
        .header("Upload-Offset", offset.to_string())
        .header("Content-Length", len.to_string());
    if checksum {
        match chunk_checksum(&job.wav, job.keys.as_ref(), offset, len).await {
            Ok(sum) => req = req.header("Upload-Checksum", format!("sha256 {sum}")),
            Err(e) => {
                return Err(fail(Action::Retry {
                    after: None,
                    reason: format!("local file: {e}"),
                }))
            }
        }
    }
    let body = reqwest::Body::wrap_stream(file_stream(
        job.wav.clone(),
        offset,
        len,
        cloud.limiter.clone(),
        Arc::clone(&cloud.bytes_sent),
        job.keys.clone(),
    ));
    let timeout = super::body_timeout(cloud, len);
    Ok(cloud.send(req.body(body), timeout).await)
}

/// `POST /v1/calls` with the JSON plus `"upload": <location>`.
async fn post_call(cloud: &Cloud, job: &Job, location: &str) -> Outcome {
    let mut doc = job.json.clone();
    if let Some(o) = doc.as_object_mut() {
        o.insert("upload".into(), serde_json::Value::String(location.into()));
    }
    post_json_call(cloud, job, &doc).await
}

/// `POST {url}/v1/calls` with `Idempotency-Key: <recording id>`.
pub(crate) async fn post_json_call(cloud: &Cloud, job: &Job, doc: &serde_json::Value) -> Outcome {
    let Some(url) = cloud.resolve("v1/calls") else {
        return retry("cannot build the calls URL");
    };
    let body = match serde_json::to_vec(doc) {
        Ok(b) => b,
        Err(e) => return retry(format!("local: cannot encode the JSON: {e}")),
    };
    let r = cloud
        .send(
            cloud
                .request(Method::POST, url)
                .header("Content-Type", "application/json")
                .header("Idempotency-Key", job.id.as_str())
                .body(body),
            cloud.settings.timeout,
        )
        .await;
    match r.action(Step::Call) {
        Action::Done => Outcome::Delivered {
            status: r.status().unwrap_or(0),
        },
        a => fail(a),
    }
}

async fn deliver(tus: &Tus, cloud: &Cloud, job: &Job, progress: &dyn Progress) -> Outcome {
    let mut saved = match &job.resume {
        Some((l, _)) => match cloud.resolve(l) {
            Some(u) if check_origin(cloud, &u).is_ok() => Some(u),
            _ => None,
        },
        None => None,
    };
    let mut detours = 0u32;
    'upload: loop {
        detours += 1;
        if detours > MAX_DETOURS {
            return retry("tus: the upload kept moving (409/404 loop)");
        }
        // Where to continue.
        let (loc, mut offset) = match saved.take() {
            Some(loc) => match head(cloud, &loc).await {
                Ok(Some((o, len))) if o <= job.size && len.is_none_or(|l| l == job.size) => {
                    (loc, o)
                }
                Ok(Some(_)) | Ok(None) => {
                    // Gone, or not of this file (longer, or of another
                    // length: an upload of the WAV when the FLAC is sent now,
                    // or the other way round): start again.
                    progress.restart().await;
                    continue 'upload;
                }
                Err(out) => return out,
            },
            None => match create(cloud, job).await {
                Ok(loc) => {
                    progress.checkpoint(loc.as_str(), 0).await;
                    (loc, 0)
                }
                Err(out) => return out,
            },
        };
        while offset < job.size {
            match patch(tus, cloud, job, &loc, offset).await {
                Ok(PatchEnd::Offset(o)) => {
                    offset = o;
                    progress.checkpoint(loc.as_str(), offset).await;
                }
                Ok(PatchEnd::Rehead) => {
                    saved = Some(loc);
                    continue 'upload;
                }
                Ok(PatchEnd::Restart) => {
                    progress.restart().await;
                    continue 'upload;
                }
                Err(out) => return out,
            }
        }
        return post_call(cloud, job, loc.as_str()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_is_base64_pairs() {
        assert_eq!(
            upload_metadata(&[("filename", "a.wav"), ("recording_id", "a")]),
            "filename YS53YXY=,recording_id YQ=="
        );
        assert_eq!(upload_metadata(&[("agent_id", "")]), "agent_id");
    }

    #[test]
    fn sha256_is_sent_only_when_the_options_allow_it() {
        let f = sha256_from_options;
        assert_eq!(
            f(Some("md5, SHA256"), Some("creation,checksum")),
            Some(true)
        );
        assert_eq!(f(Some("sha1,md5"), Some("creation,checksum")), Some(false));
        assert_eq!(f(Some("sha1"), None), Some(false));
        assert_eq!(f(None, Some("creation,termination")), Some(false));
        // rustus lists the extension without the algorithms: unknown.
        assert_eq!(f(None, Some("creation,checksum")), None);
        assert_eq!(f(None, None), None);
    }

    #[tokio::test]
    async fn checksum_of_a_range() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x");
        std::fs::write(&p, b"0123456789").unwrap();
        let got = chunk_checksum(&p, None, 2, 3).await.unwrap();
        let want = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(b"234"));
        assert_eq!(got, want);
        assert!(chunk_checksum(&p, None, 8, 5).await.is_err());
    }
}
