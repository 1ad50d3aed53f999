//! The answer policy of CONTRACT §4 as a pure function.
//!
//! In: what one request to the cloud produced ([`Answer`]: an HTTP status with
//! its `Retry-After` header and body, or a transport failure) and the wall
//! clock for HTTP dates. Out: an [`Action`] the uploader and the scheduler
//! follow. Promises: exactly the table of CONTRACT §4 — 2xx done; 401/403/402
//! pause every upload (retried every 5 min); 408/425/429/5xx, connection errors
//! and timeouts retried with exponential backoff and full jitter (1 s base,
//! 5 min cap) unless `Retry-After` says otherwise; 409 resumes from a `HEAD`;
//! 400/413/415/422 fail the recording with the server's body kept, never
//! retried by itself. TLS certificate errors pause uploads (they are not
//! transient). Nothing here does I/O or reads the clock.

use std::time::{Duration, SystemTime};

/// Backoff base (CONTRACT §4).
pub(crate) const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Backoff cap (CONTRACT §4).
pub(crate) const BACKOFF_CAP: Duration = Duration::from_secs(300);
/// How often a paused delivery tries again (CONTRACT §4).
pub const PAUSE_RETRY: Duration = Duration::from_secs(300);
/// A `Retry-After` longer than this is clamped (a broken header must not stop
/// a recording for days).
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(6 * 3600);
/// At most this much of an answer body is kept in the spool.
pub const BODY_KEEP: usize = 4096;

/// How a request failed below HTTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetFailure {
    /// Connect refused / reset / closed early, DNS failure.
    Connection(String),
    /// No answer in time.
    Timeout(String),
    /// The server's certificate was refused (unknown issuer, wrong name,
    /// expired) or our client certificate was: a configuration problem.
    Certificate(String),
    /// The local file could not be read (the recording vanished or the disk
    /// failed).
    LocalIo(String),
}

/// What one request produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer<'a> {
    Http {
        status: u16,
        /// The raw `Retry-After` header, if any.
        retry_after: Option<&'a str>,
        body: &'a str,
    },
    Transport(NetFailure),
}

/// Why uploads pause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PauseKind {
    /// 401/403: the token was refused.
    Auth,
    /// 402: the account balance is depleted.
    Payment,
    /// The TLS certificate check failed.
    Tls,
    /// 429: the cloud rate-limits this account (every upload waits its
    /// `Retry-After`, not just the one that was told).
    RateLimit,
    /// The tus server answered an upload `Location` on another origin
    /// (scheme, host or port) than `cloud.url`: a misconfigured or hostile
    /// server. Nothing goes there (recordings leave the machine only to the
    /// configured cloud, and the token would follow); every upload waits
    /// for the operator, with one probe per `pause_retry`.
    ForeignLocation,
    /// A fixed endpoint (`POST /v1/uploads`, `POST /v1/calls`) answered as
    /// if it did not exist there (404, 405, 501) or redirected (3xx, not
    /// followed: the token would follow): most likely a wrong `cloud.url`.
    /// Every upload waits for the operator, with one probe per
    /// `pause_retry`.
    Endpoint,
}

impl PauseKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PauseKind::Auth => "auth",
            PauseKind::Payment => "payment",
            PauseKind::Tls => "tls",
            PauseKind::RateLimit => "rate_limit",
            PauseKind::ForeignLocation => "foreign_location",
            PauseKind::Endpoint => "endpoint",
        }
    }
}

/// What to do after an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// 200/201/204: go on with the next step.
    Done,
    /// 409 on a tus PATCH: `HEAD` the upload and continue from its offset.
    Resume,
    /// 404/410 on a tus location: start the upload again.
    Restart,
    /// Transient: try this recording again, after `after` if the server said
    /// so, else after the scheduler's backoff.
    Retry {
        after: Option<Duration>,
        reason: String,
    },
    /// Stop every upload; try again after [`PAUSE_RETRY`].
    PauseAll { kind: PauseKind, reason: String },
    /// The cloud refused this recording: keep it failed with the answer.
    Fail { status: u16, body: String },
}

impl Action {
    /// A short metrics label for failures (`None` for success and resumes).
    pub fn failure_label(&self) -> Option<&'static str> {
        match self {
            Action::Done | Action::Resume | Action::Restart => None,
            Action::Retry { reason, .. } => Some(if reason.starts_with("HTTP 429") {
                "throttled"
            } else if reason.starts_with("HTTP ") {
                "server"
            } else if reason.starts_with("timeout") {
                "timeout"
            } else if reason.starts_with("local") {
                "local_io"
            } else {
                "connection"
            }),
            Action::PauseAll { kind, .. } => Some(kind.as_str()),
            Action::Fail { .. } => Some("refused"),
        }
    }
}

/// Which request an answer belongs to (404 means different things).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// tus creation `POST /v1/uploads`.
    Create,
    /// tus `PATCH` or `HEAD` on an upload location.
    Location,
    /// `POST /v1/calls` (either protocol).
    Call,
}

impl Step {
    /// The request, for messages.
    pub fn request(self) -> &'static str {
        match self {
            Step::Create => "POST /v1/uploads",
            Step::Location => "upload location",
            Step::Call => "POST /v1/calls",
        }
    }
}

/// CONTRACT §4's table. `now` only serves HTTP-date `Retry-After` values.
pub fn classify(step: Step, answer: &Answer<'_>, now: SystemTime) -> Action {
    match answer {
        Answer::Transport(t) => match t {
            NetFailure::Certificate(e) => Action::PauseAll {
                kind: PauseKind::Tls,
                reason: format!("TLS certificate refused: {e}"),
            },
            NetFailure::Connection(e) => Action::Retry {
                after: None,
                reason: format!("connection: {e}"),
            },
            NetFailure::Timeout(e) => Action::Retry {
                after: None,
                reason: format!("timeout: {e}"),
            },
            NetFailure::LocalIo(e) => Action::Retry {
                after: None,
                reason: format!("local file: {e}"),
            },
        },
        Answer::Http {
            status,
            retry_after,
            body,
        } => {
            let status = *status;
            match status {
                // (A call is delivered only on 200/201, CONTRACT §4: a 204
                // from a wrong URL's server that answers anything must not
                // let the recording be removed.)
                200 | 201 => Action::Done,
                204 if step != Step::Call => Action::Done,
                401 | 403 => Action::PauseAll {
                    kind: PauseKind::Auth,
                    reason: format!("the cloud refused the token (HTTP {status})"),
                },
                402 => Action::PauseAll {
                    kind: PauseKind::Payment,
                    reason: "the cloud account balance is depleted (HTTP 402)".into(),
                },
                409 if step == Step::Location => Action::Resume,
                404 | 410 if step == Step::Location => Action::Restart,
                300..=399 => Action::PauseAll {
                    kind: PauseKind::Endpoint,
                    reason: format!(
                        "the cloud redirected {} (HTTP {status}; not followed): check cloud.url",
                        step.request()
                    ),
                },
                404 | 405 | 501 if step != Step::Location => Action::PauseAll {
                    kind: PauseKind::Endpoint,
                    reason: format!(
                        "the cloud has no {} (HTTP {status}): check cloud.url and cloud.protocol",
                        step.request()
                    ),
                },
                400 | 413 | 415 | 422 => Action::Fail {
                    status,
                    body: truncate(body, BODY_KEEP),
                },
                408 | 425 | 429 | 500 | 502 | 503 | 504 => Action::Retry {
                    after: retry_after.and_then(|v| parse_retry_after(v, now)),
                    reason: format!("HTTP {status}"),
                },
                // Not in the table (other 5xx, 3xx, 404 on a fixed endpoint,
                // 409 outside tus): nothing is lost by treating it as
                // transient, and the reason shows in `spool list` and the
                // log. Not the body: a gateway's error page may echo what
                // was sent (the parties' names and numbers).
                _ => Action::Retry {
                    after: retry_after.and_then(|v| parse_retry_after(v, now)),
                    reason: format!("HTTP {status} (unexpected; a {}-byte answer)", body.len()),
                },
            }
        }
    }
}

/// `Retry-After`: delay-seconds or an HTTP date; clamped to [`RETRY_AFTER_MAX`].
pub fn parse_retry_after(v: &str, now: SystemTime) -> Option<Duration> {
    let v = v.trim();
    let d = if let Ok(secs) = v.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let at = httpdate::parse_http_date(v).ok()?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(d.min(RETRY_AFTER_MAX))
}

/// Exponential backoff with full jitter: uniform in `[0, min(cap, base·2^n)]`
/// for the `n`-th consecutive failure (`n` from 0); `unit` is a uniform random
/// number in `[0, 1)`.
pub(crate) fn backoff(n: u32, unit: f64, base: Duration, cap: Duration) -> Duration {
    let ceiling = base
        .checked_mul(1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX))
        .unwrap_or(cap)
        .min(cap);
    ceiling.mul_f64(unit.clamp(0.0, 1.0))
}

/// The first `max` bytes of `s` on a char boundary.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn http(status: u16) -> Answer<'static> {
        Answer::Http {
            status,
            retry_after: None,
            body: "b",
        }
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    #[test]
    fn success_codes_are_done() {
        for s in [200, 201, 204] {
            for step in [Step::Create, Step::Location, Step::Call] {
                if (s, step) == (204, Step::Call) {
                    // Not a delivery: retried (the contract's 200/201 only).
                    assert!(matches!(
                        classify(step, &http(s), now()),
                        Action::Retry { .. }
                    ));
                } else {
                    assert_eq!(classify(step, &http(s), now()), Action::Done);
                }
            }
        }
    }

    #[test]
    fn auth_and_payment_pause_everything() {
        for s in [401, 403] {
            let a = classify(Step::Call, &http(s), now());
            assert!(
                matches!(a, Action::PauseAll { kind: PauseKind::Auth, ref reason } if reason.contains(&s.to_string())),
                "{a:?}"
            );
        }
        let a = classify(Step::Create, &http(402), now());
        assert!(matches!(
            a,
            Action::PauseAll {
                kind: PauseKind::Payment,
                ..
            }
        ));
        assert_eq!(a.failure_label(), Some("payment"));
    }

    #[test]
    fn transient_codes_retry() {
        for s in [408, 425, 429, 500, 502, 503, 504] {
            let a = classify(Step::Location, &http(s), now());
            assert_eq!(
                a,
                Action::Retry {
                    after: None,
                    reason: format!("HTTP {s}")
                }
            );
        }
        assert_eq!(
            classify(Step::Call, &http(429), now()).failure_label(),
            Some("throttled")
        );
    }

    #[test]
    fn retry_after_seconds_and_dates_override() {
        let a = classify(
            Step::Call,
            &Answer::Http {
                status: 429,
                retry_after: Some("7"),
                body: "",
            },
            now(),
        );
        assert!(matches!(a, Action::Retry { after: Some(d), .. } if d == Duration::from_secs(7)));
        let date = httpdate::fmt_http_date(now() + Duration::from_secs(90));
        let a = classify(
            Step::Call,
            &Answer::Http {
                status: 503,
                retry_after: Some(&date),
                body: "",
            },
            now(),
        );
        assert!(matches!(a, Action::Retry { after: Some(d), .. } if d == Duration::from_secs(90)));
        // A date in the past: now.
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now()),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now()), None);
        assert_eq!(parse_retry_after("99999999", now()), Some(RETRY_AFTER_MAX));
    }

    #[test]
    fn conflict_resumes_and_gone_restarts_only_on_a_location() {
        assert_eq!(classify(Step::Location, &http(409), now()), Action::Resume);
        assert_eq!(classify(Step::Location, &http(404), now()), Action::Restart);
        assert_eq!(classify(Step::Location, &http(410), now()), Action::Restart);
        assert!(matches!(
            classify(Step::Call, &http(409), now()),
            Action::Retry { .. }
        ));
    }

    /// A fixed endpoint that is not there, or redirects, is most likely a
    /// wrong `cloud.url`: every upload pauses with a reason that says so
    /// (before: each recording retried on its own, forever, `/readyz` ok).
    #[test]
    fn a_missing_or_moved_endpoint_pauses_everything() {
        for step in [Step::Create, Step::Call] {
            for s in [301, 302, 307, 308, 404, 405, 501] {
                let Action::PauseAll { kind, reason } = classify(step, &http(s), now()) else {
                    panic!("{s} {step:?}")
                };
                assert_eq!(kind, PauseKind::Endpoint);
                assert!(reason.contains("cloud.url"), "{reason}");
                assert!(reason.contains(step.request()), "{reason}");
            }
        }
        // On an upload's location, 404 means the upload expired (§4).
        assert_eq!(classify(Step::Location, &http(404), now()), Action::Restart);
        assert!(matches!(
            classify(Step::Location, &http(307), now()),
            Action::PauseAll {
                kind: PauseKind::Endpoint,
                ..
            }
        ));
    }

    #[test]
    fn refusals_fail_with_the_body() {
        for s in [400, 413, 415, 422] {
            let a = classify(
                Step::Call,
                &Answer::Http {
                    status: s,
                    retry_after: Some("1"),
                    body: "{\"error\":\"bad\"}",
                },
                now(),
            );
            assert_eq!(
                a,
                Action::Fail {
                    status: s,
                    body: "{\"error\":\"bad\"}".into()
                }
            );
        }
        let long = "é".repeat(BODY_KEEP);
        let Action::Fail { body, .. } = classify(
            Step::Call,
            &Answer::Http {
                status: 422,
                retry_after: None,
                body: &long,
            },
            now(),
        ) else {
            panic!()
        };
        assert!(body.len() <= BODY_KEEP + 3);
    }

    #[test]
    fn transport_errors() {
        let c = |t| classify(Step::Location, &Answer::Transport(t), now());
        assert!(matches!(
            c(NetFailure::Connection("reset".into())),
            Action::Retry { after: None, .. }
        ));
        assert!(matches!(
            c(NetFailure::Timeout("30s".into())),
            Action::Retry { after: None, .. }
        ));
        let a = c(NetFailure::Certificate("UnknownIssuer".into()));
        assert!(matches!(
            a,
            Action::PauseAll {
                kind: PauseKind::Tls,
                ref reason
            } if reason.contains("UnknownIssuer")
        ));
        assert_eq!(a.failure_label(), Some("tls"));
    }

    #[test]
    fn backoff_bounds() {
        assert_eq!(
            backoff(0, 0.999_999, BACKOFF_BASE, BACKOFF_CAP).as_secs(),
            0
        );
        assert!(backoff(3, 0.999_999, BACKOFF_BASE, BACKOFF_CAP) < Duration::from_secs(8));
        assert!(backoff(3, 0.999_999, BACKOFF_BASE, BACKOFF_CAP) > Duration::from_millis(7990));
        assert!(backoff(40, 0.999_999, BACKOFF_BASE, BACKOFF_CAP) <= BACKOFF_CAP);
        assert_eq!(backoff(40, 0.0, BACKOFF_BASE, BACKOFF_CAP), Duration::ZERO);
    }

    proptest! {
        #[test]
        fn backoff_is_within_full_jitter_range(n in 0u32..100, u in 0.0f64..1.0) {
            let d = backoff(n, u, BACKOFF_BASE, BACKOFF_CAP);
            let ceil = if n >= 9 { BACKOFF_CAP } else { (BACKOFF_BASE * (1 << n)).min(BACKOFF_CAP) };
            prop_assert!(d <= ceil);
        }

        #[test]
        fn every_status_has_an_action(status in 100u16..600, step in 0u8..3) {
            let step = [Step::Create, Step::Location, Step::Call][step as usize];
            let a = classify(step, &Answer::Http { status, retry_after: None, body: "x" }, now());
            // Nothing in the table silently drops a recording: only the four
            // refusal codes fail it.
            if let Action::Fail { status: s, .. } = a {
                prop_assert!([400, 413, 415, 422].contains(&s));
            }
        }
    }
}
