//! `protocol = "multipart"` (CONTRACT §4): one `POST {url}/v1/calls` with
//! `Idempotency-Key: <recording_id>` and a `multipart/form-data` body of two
//! parts, `metadata` (the recording JSON, `application/json`) and `audio`
//! (the WAV, `audio/wav`, streamed from disk with its length known, so the
//! request has a `Content-Length`).
//!
//! In: a [`Job`]. Out: [`Outcome::Delivered`] on `200`/`201`, else the
//! policy's action. Nothing to resume: a broken request is sent again whole.

use std::sync::Arc;

use reqwest::multipart::{Form, Part};
use reqwest::Method;

use super::policy::{Action, Step};
use super::{file_stream, BoxFuture, Cloud, Job, Outcome, Progress, Protocol};

/// The multipart protocol.
#[derive(Debug, Clone, Copy, Default)]
pub struct Multipart;

impl Protocol for Multipart {
    fn name(&self) -> &'static str {
        "multipart"
    }

    fn deliver<'a>(
        &'a self,
        cloud: &'a Cloud,
        job: &'a Job,
        _progress: &'a dyn Progress,
    ) -> BoxFuture<'a, Outcome> {
        Box::pin(deliver(cloud, job))
    }
}

async fn deliver(cloud: &Cloud, job: &Job) -> Outcome {
    let retry = |reason: String| {
        Outcome::Failed(Action::Retry {
            after: None,
            reason,
        })
    };
    let Some(url) = cloud.resolve("v1/calls") else {
        return retry("cannot build the calls URL".into());
    };
    let meta = match serde_json::to_vec(&job.json) {
        Ok(b) => b,
        Err(e) => return retry(format!("local: cannot encode the JSON: {e}")),
    };
    let meta = match Part::bytes(meta).mime_str("application/json") {
        Ok(p) => p,
        Err(e) => return retry(format!("local: {e}")),
    };
    let body = reqwest::Body::wrap_stream(file_stream(
        job.wav.clone(),
        0,
        job.size,
        cloud.limiter.clone(),
        Arc::clone(&cloud.bytes_sent),
        job.keys.clone(),
    ));
    let audio = match Part::stream_with_length(body, job.size)
        .file_name(format!("{}.{}", job.id, job.ext))
        .mime_str(job.content_type)
    {
        Ok(p) => p,
        Err(e) => return retry(format!("local: {e}")),
    };
    let form = Form::new().part("metadata", meta).part("audio", audio);
    let timeout = super::body_timeout(cloud, job.size);
    let r = cloud
        .send(
            cloud
                .request(Method::POST, url)
                .header("Idempotency-Key", job.id.as_str())
                .multipart(form),
            timeout,
        )
        .await;
    match r.action(Step::Call) {
        Action::Done => Outcome::Delivered {
            status: r.status().unwrap_or(0),
        },
        a => Outcome::Failed(a),
    }
}
