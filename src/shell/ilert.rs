//! The HTTP edge towards ilert: send one deployment event and classify the answer.
//! Knows nothing of Kubernetes; never logs or returns the integration key.

use std::fmt;
use std::time::Duration;

use jiff::Timestamp;
use serde_json::Value;

/// Most of an error body the controller reads: ilert's `{status, message, code}` fits many times
/// over, and an answer of any size costs no more memory than this.
pub const ERROR_BODY_LIMIT: usize = 4096;

/// An integration key. Its Debug and Display never show it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct IntegrationKey(String);

impl IntegrationKey {
    pub fn new(key: impl Into<String>) -> Self {
        IntegrationKey(key.into().trim().to_string())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// Removes the key from `text` (an error body that might echo it back).
    pub fn redact(&self, text: &str) -> String {
        if self.0.is_empty() {
            text.to_string()
        } else {
            text.replace(&self.0, "[redacted]")
        }
    }

    /// Drops the end of a body cut at `ERROR_BODY_LIMIT` when it is the start of the key: a key
    /// across the cut would otherwise leave a prefix behind that `redact` cannot recognise.
    fn strip_cut_prefix(&self, body: &mut Vec<u8>) {
        let key = self.0.as_bytes();
        if let Some(n) = (1..key.len().min(body.len() + 1))
            .rev()
            .find(|n| body.ends_with(&key[..*n]))
        {
            body.truncate(body.len() - n);
        }
    }
}

impl fmt::Debug for IntegrationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IntegrationKey([redacted])")
    }
}

/// Why a send did not succeed, and what to do about it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SendError {
    /// 429: ilert's per-key budget is spent. `retry_after` is what ilert asked for, uncapped:
    /// the sender caps it (`pacing::retry_wait`).
    #[error("ilert rate limit reached (429){}", .retry_after.map(|d| format!(", retry after {} s", d.as_secs())).unwrap_or_default())]
    RateLimited { retry_after: Option<Duration> },
    /// Network errors, time-outs, 5xx, redirects (never followed): try again later.
    #[error("{0}")]
    Unavailable(String),
    /// 401/403/404: the integration key is wrong or the pipeline was deleted in ilert.
    #[error("ilert rejected the integration key ({status}): {message}")]
    KeyRejected { status: u16, message: String },
    /// 400 and other 4xx: this payload will never be accepted.
    #[error("ilert rejected the event ({status}): {message}")]
    EventRejected { status: u16, message: String },
}

impl SendError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            SendError::RateLimited { .. } => "rate_limited",
            SendError::Unavailable(_) => "unavailable",
            SendError::KeyRejected { .. } => "key_rejected",
            SendError::EventRejected { .. } => "event_rejected",
        }
    }
}

#[derive(Clone, Debug)]
pub struct IlertClient {
    http: reqwest::Client,
    deployment_events_url: String,
    events_url: String,
}

impl IlertClient {
    /// `api_url` is ilert's base URL (`https://api.ilert.com`). Proxies come from
    /// HTTPS_PROXY / NO_PROXY as usual.
    pub fn new(api_url: &str, timeout: Duration) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            // ilert's API does not redirect, and a followed 307 would carry the body, key and
            // all, to whatever host the answer names (a 301/302 would turn the POST into a GET).
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .user_agent(concat!(
                "ilert-rollout-controller/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()?;
        Ok(IlertClient {
            http,
            deployment_events_url: format!(
                "{}/api/deployment-events",
                api_url.trim_end_matches('/')
            ),
            events_url: format!("{}/api/events", api_url.trim_end_matches('/')),
        })
    }

    /// Posts one deployment event. `body` must already hold the key (see `report::body`).
    pub async fn send_deployment_event(
        &self,
        body: &Value,
        key: &IntegrationKey,
    ) -> Result<(), SendError> {
        self.post(&self.deployment_events_url, body, key).await
    }

    /// Posts one alert event (Events API). `body` must already hold the alert source's key.
    pub async fn send_alert_event(
        &self,
        body: &Value,
        key: &IntegrationKey,
    ) -> Result<(), SendError> {
        self.post(&self.events_url, body, key).await
    }

    async fn post(&self, url: &str, body: &Value, key: &IntegrationKey) -> Result<(), SendError> {
        let mut response = self
            .http
            .post(url)
            .json(body)
            .send()
            .await
            .map_err(|e| SendError::Unavailable(describe_transport_error(&e)))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let header = |name| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let retry_after = header(reqwest::header::RETRY_AFTER);
        let location = header(reqwest::header::LOCATION);
        let (mut text, cut) = read_bounded(&mut response, ERROR_BODY_LIMIT).await;
        // The rest of the body is never read: dropping the answer closes its connection.
        drop(response);
        if cut {
            key.strip_cut_prefix(&mut text);
        }
        let text = String::from_utf8_lossy(&text);
        Err(classify(
            &Answer {
                status: status.as_u16(),
                retry_after: retry_after.as_deref(),
                location: location.as_deref(),
                body: &text,
            },
            key,
            Timestamp::now(),
        ))
    }
}

/// Reads at most `limit` bytes of a body, chunk by chunk; true when there was more.
async fn read_bounded(response: &mut reqwest::Response, limit: usize) -> (Vec<u8>, bool) {
    let mut body = Vec::new();
    while body.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = limit - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if chunk.len() > room {
                    return (body, true);
                }
            }
            // A body that breaks off says no more than what came of it.
            Ok(None) | Err(_) => return (body, false),
        }
    }
    (body, true)
}

/// What ilert answered, as much of it as the controller reads.
#[derive(Clone, Copy, Debug, Default)]
pub struct Answer<'a> {
    pub status: u16,
    pub retry_after: Option<&'a str>,
    pub location: Option<&'a str>,
    /// At most [`ERROR_BODY_LIMIT`] bytes of the body.
    pub body: &'a str,
}

/// Maps an HTTP answer to what the controller does next (ilert's guidance: retry network errors,
/// 5xx and 429; 400/401/403/404 are permanent). A redirect is never followed: ilert's API does not
/// redirect, so one means a wrong `--api-url` or something in between, and is retried.
/// `now` dates a `Retry-After` given as an HTTP date.
pub fn classify(answer: &Answer<'_>, key: &IntegrationKey, now: Timestamp) -> SendError {
    let status = answer.status;
    // Redacted before the message is cut: a key across the cut must not leave a prefix behind.
    let message = error_message(&key.redact(answer.body));
    match status {
        300..=399 => SendError::Unavailable(format!(
            "ilert answered {status} redirecting to {}; the controller follows no redirects (the body holds the integration key): check --api-url (https, not http)",
            key.redact(&redirect_target(answer.location)),
        )),
        429 => SendError::RateLimited {
            retry_after: answer.retry_after.and_then(|h| parse_retry_after(h, now)),
        },
        401 | 403 | 404 => SendError::KeyRejected { status, message },
        408 | 500..=599 => SendError::Unavailable(format!("ilert answered {status}: {message}")),
        _ => SendError::EventRejected { status, message },
    }
}

/// Where a redirect pointed, as host and port only: the path and query of a `Location` may hold
/// anything, and they say nothing an operator needs to fix `--api-url`.
fn redirect_target(location: Option<&str>) -> String {
    let Some(location) = location.map(str::trim).filter(|l| !l.is_empty()) else {
        return "nowhere (no Location)".into();
    };
    match reqwest::Url::parse(location) {
        Ok(url) => match (url.host_str(), url.port()) {
            (Some(host), Some(port)) => {
                crate::domain::text::truncate(&format!("{host}:{port}"), 100)
            }
            (Some(host), None) => crate::domain::text::truncate(host, 100),
            (None, _) => "a location without a host".into(),
        },
        Err(_) if location.starts_with('/') => "another path on the same host".into(),
        Err(_) => "an unreadable location".into(),
    }
}

/// `Retry-After` as delta-seconds or an HTTP date (RFC 9110), relative to `now`; None when it is
/// neither. Seconds past what fits are as long as can be (the caller caps every wait); a date in
/// the past means now.
pub fn parse_retry_after(value: &str, now: Timestamp) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    // IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT") is an RFC 2822 date.
    static DATES: jiff::fmt::rfc2822::DateTimeParser = jiff::fmt::rfc2822::DateTimeParser::new();
    let at = DATES.parse_timestamp(value).ok()?;
    let wait = now.duration_until(at);
    Some(Duration::try_from(wait).unwrap_or(Duration::ZERO))
}

/// ilert's error bodies are `{status, message, code}`; fall back to the first 200 characters.
fn error_message(body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let from_json = parsed.as_ref().and_then(|v| {
        let msg = v.get("message").and_then(Value::as_str)?;
        Some(match v.get("code").and_then(Value::as_str) {
            Some(code) => format!("{msg} ({code})"),
            None => msg.to_string(),
        })
    });
    let text = from_json.unwrap_or_else(|| body.trim().to_string());
    let text = if text.is_empty() {
        "no details given".to_string()
    } else {
        text
    };
    crate::domain::text::truncate(&text, 200)
}

fn describe_transport_error(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    // The source chain names the cause (refused, DNS, TLS) without the body, so never the key.
    let mut cause = String::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    if cause.is_empty() {
        format!("ilert {what}")
    } else {
        format!("ilert {what}: {cause}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> Answer<'_> {
        Answer {
            status,
            body,
            ..Answer::default()
        }
    }

    fn now() -> Timestamp {
        "2026-03-01T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn classifies_answers_as_ilert_documents_them() {
        let key = IntegrationKey::new("ilapi-secret");
        let body = r#"{"status":401,"message":"Invalid key ilapi-secret","code":"INVALID_KEY"}"#;
        match classify(&answer(401, body), &key, now()) {
            SendError::KeyRejected { status, message } => {
                assert_eq!(status, 401);
                assert_eq!(message, "Invalid key [redacted] (INVALID_KEY)");
            }
            other => panic!("{other:?}"),
        }
        let limited = Answer {
            retry_after: Some("17"),
            ..answer(429, "")
        };
        assert_eq!(
            classify(&limited, &key, now()),
            SendError::RateLimited {
                retry_after: Some(Duration::from_secs(17))
            }
        );
        assert!(matches!(
            classify(&answer(503, ""), &key, now()),
            SendError::Unavailable(_)
        ));
        assert!(matches!(
            classify(&answer(400, "bad"), &key, now()),
            SendError::EventRejected { status: 400, .. }
        ));
        assert!(matches!(
            classify(&answer(404, ""), &key, now()),
            SendError::KeyRejected { status: 404, .. }
        ));
        assert_eq!(format!("{key:?}"), "IntegrationKey([redacted])");
    }

    #[test]
    fn a_redirect_is_retried_and_names_only_the_host_it_pointed_to() {
        let key = IntegrationKey::new("ilapid-secret");
        let cases = [
            (
                307,
                Some("http://other.example:8080/api/deployment-events?token=abc"),
                "other.example:8080",
            ),
            (
                308,
                Some("https://api.ilert.com/api/deployment-events"),
                "api.ilert.com",
            ),
            (301, Some("http://[::1]:9/x"), "[::1]:9"),
            (
                302,
                Some("/api/v2/deployment-events?q=1"),
                "another path on the same host",
            ),
            (303, Some("::not a url::"), "an unreadable location"),
            (300, None, "nowhere (no Location)"),
            (
                307,
                Some("http://ilapid-secret.example/"),
                "[redacted].example",
            ),
        ];
        for (status, location, target) in cases {
            let a = Answer {
                location,
                ..answer(status, "moved ilapid-secret")
            };
            let SendError::Unavailable(message) = classify(&a, &key, now()) else {
                panic!("{status} {location:?} is not retried");
            };
            assert_eq!(
                message,
                format!(
                    "ilert answered {status} redirecting to {target}; the controller follows no redirects (the body holds the integration key): check --api-url (https, not http)"
                )
            );
            assert!(
                !message.contains("token") && !message.contains("q=1"),
                "{message}"
            );
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates_and_nothing_else() {
        let secs = |s| Some(Duration::from_secs(s));
        let cases = [
            ("17", secs(17)),
            (" 86400 ", secs(86400)),
            ("0", secs(0)),
            ("18446744073709551615", secs(u64::MAX)),
            // Past u64: as long as can be, which the sender caps.
            ("99999999999999999999999", secs(u64::MAX)),
            ("Sun, 01 Mar 2026 12:00:30 GMT", secs(30)),
            ("Sun, 01 Mar 2026 13:00:00 GMT", secs(3600)),
            // A date in the past: now.
            ("Sun, 06 Nov 1994 08:49:37 GMT", secs(0)),
            ("Sun, 01 Mar 2026 11:59:59 GMT", secs(0)),
            ("", None),
            ("-5", None),
            ("+5", None),
            ("1.5", None),
            ("soon", None),
            ("Sun, 99 Mar 2026 12:00:30 GMT", None),
        ];
        for (value, want) in cases {
            assert_eq!(parse_retry_after(value, now()), want, "{value:?}");
        }
    }

    #[test]
    fn a_body_cut_through_the_key_keeps_no_part_of_it() {
        let key = IntegrationKey::new("ilapid-secret");
        let mut body = b"echo: ilapid-se".to_vec();
        key.strip_cut_prefix(&mut body);
        assert_eq!(body, b"echo: ");
        let mut body = b"nothing of it".to_vec();
        key.strip_cut_prefix(&mut body);
        assert_eq!(body, b"nothing of it");
    }
}
