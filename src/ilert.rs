//! The HTTP edge towards ilert: send one deployment event and classify the answer.
//! Knows nothing of Kubernetes; never logs or returns the integration key.

use std::fmt;
use std::time::Duration;

use serde_json::Value;

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
}

impl fmt::Debug for IntegrationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IntegrationKey([redacted])")
    }
}

/// Why a send did not succeed, and what to do about it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SendError {
    /// 429: ilert's per-key budget is spent.
    #[error("ilert rate limit reached (429){}", .retry_after.map(|d| format!(", retry after {} s", d.as_secs())).unwrap_or_default())]
    RateLimited { retry_after: Option<Duration> },
    /// Network errors, time-outs, 5xx: try again later.
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
        let response = self
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
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = response.text().await.unwrap_or_default();
        Err(classify(
            status.as_u16(),
            retry_after.as_deref(),
            &text,
            key,
        ))
    }
}

/// Maps an HTTP answer to what the controller does next (ilert's guidance: retry network errors,
/// 5xx and 429; 400/401/403/404 are permanent).
pub fn classify(
    status: u16,
    retry_after: Option<&str>,
    body: &str,
    key: &IntegrationKey,
) -> SendError {
    // Redacted before the message is cut: a key across the cut must not leave a prefix behind.
    let message = error_message(&key.redact(body));
    match status {
        429 => SendError::RateLimited {
            retry_after: retry_after
                .and_then(|h| h.trim().parse().ok())
                .map(Duration::from_secs),
        },
        401 | 403 | 404 => SendError::KeyRejected { status, message },
        408 | 500..=599 => SendError::Unavailable(format!("ilert answered {status}: {message}")),
        _ => SendError::EventRejected { status, message },
    }
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
    crate::report::truncate(&text, 200)
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

    #[test]
    fn classifies_answers_as_ilert_documents_them() {
        let key = IntegrationKey::new("ilapi-secret");
        let body = r#"{"status":401,"message":"Invalid key ilapi-secret","code":"INVALID_KEY"}"#;
        match classify(401, None, body, &key) {
            SendError::KeyRejected { status, message } => {
                assert_eq!(status, 401);
                assert_eq!(message, "Invalid key [redacted] (INVALID_KEY)");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            classify(429, Some("17"), "", &key),
            SendError::RateLimited {
                retry_after: Some(Duration::from_secs(17))
            }
        );
        assert!(matches!(
            classify(503, None, "", &key),
            SendError::Unavailable(_)
        ));
        assert!(matches!(
            classify(400, None, "bad", &key),
            SendError::EventRejected { status: 400, .. }
        ));
        assert!(matches!(
            classify(404, None, "", &key),
            SendError::KeyRejected { status: 404, .. }
        ));
        assert_eq!(format!("{key:?}"), "IntegrationKey([redacted])");
    }
}
