//! Relays operator input to a run's watcher: `POST {input_url}/v1/input`,
//! signed with the run's input secret (DESIGN.md §3 "Operator input").
//!
//! The signature is `sha256=<hex hmac-sha256(secret, timestamp + "." + body)>`
//! with the key being the UTF-8 bytes of the `input_secret` string as returned by
//! `POST /v1/runs`. The timestamp is unix seconds in `X-Agentmon-Timestamp`; the
//! watcher rejects stale ones and replayed `id`s.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ops::Secret;
use protocol::headers::{SIGNATURE as SIGNATURE_HEADER, TIMESTAMP as TIMESTAMP_HEADER};
pub use protocol::InputRequest as InputMessage;

/// How the watcher answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayOutcome {
    /// 2xx: the input went to the agent.
    Forwarded,
    /// 429: the agent's input queue is full.
    Busy,
    /// 503 or no answer: the agent cannot take input now.
    Unavailable,
    /// Any other status, a redirect included: the watcher refused (bad
    /// signature, bad body…).
    Rejected(u16),
}

impl RelayOutcome {
    /// The ephemeral reply shown to the operator.
    pub fn message(self) -> &'static str {
        match self {
            Self::Forwarded => "forwarded",
            Self::Busy => "agent busy, try again",
            Self::Unavailable => "agent unavailable",
            Self::Rejected(_) => "the agent's watcher refused the input",
        }
    }
}

/// `sha256=<hex>` over `timestamp + "." + body` ([`protocol::sign`]).
pub fn sign(secret: &Secret<String>, timestamp: &str, body: &[u8]) -> String {
    protocol::sign(secret.expose().as_bytes(), timestamp, body)
}

/// Why a relay could not even be attempted.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// The HTTP client for watcher calls. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Relay {
    http: reqwest::Client,
}

impl Relay {
    /// `timeout` bounds one call; the interaction handler defers long before.
    pub fn new(timeout: Duration) -> Result<Self, RelayError> {
        // Redirects are never followed: a watcher (or whatever answers at its
        // address) must not bounce the signed input to another host or path.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(3)))
            .build()
            .map_err(|e| RelayError::Client(e.to_string()))?;
        Ok(Self { http })
    }

    /// Sends `msg` to the watcher at `input_url` and classifies the answer.
    pub async fn forward(
        &self,
        input_url: &str,
        secret: &Secret<String>,
        msg: &InputMessage,
    ) -> RelayOutcome {
        let body = match serde_json::to_vec(msg) {
            Ok(b) => b,
            Err(_) => return RelayOutcome::Rejected(0),
        };
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            .to_string();
        let signature = sign(secret, &timestamp, &body);
        let mut headers = http::HeaderMap::new();
        ops::trace::inject(&mut headers);
        let url = format!("{}/v1/input", input_url.trim_end_matches('/'));
        let result = self
            .http
            .post(url)
            .headers(headers)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(TIMESTAMP_HEADER, timestamp)
            .header(SIGNATURE_HEADER, signature)
            .body(body)
            .send()
            .await;
        match result {
            Ok(r) => match r.status().as_u16() {
                200..=299 => RelayOutcome::Forwarded,
                429 => RelayOutcome::Busy,
                503 => RelayOutcome::Unavailable,
                other => RelayOutcome::Rejected(other),
            },
            Err(e) => {
                tracing::warn!(
                    run_id = %msg.run_id,
                    error = %e.without_url(),
                    "watcher unreachable"
                );
                RelayOutcome::Unavailable
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    async fn serve(app: axum::Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn redirects_are_not_followed() {
        let hits = Arc::new(AtomicUsize::new(0));
        let counted = hits.clone();
        let target = serve(axum::Router::new().fallback(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async { "ok" }
        }))
        .await;
        let location = format!("{target}/internal/admin/delete?confirm=yes");
        let watcher = serve(axum::Router::new().fallback(move || {
            let location = location.clone();
            async move {
                (
                    http::StatusCode::TEMPORARY_REDIRECT,
                    [(http::header::LOCATION, location)],
                )
            }
        }))
        .await;
        let relay = Relay::new(Duration::from_secs(5)).unwrap();
        let msg = InputMessage {
            run_id: "r".into(),
            user: "u".into(),
            text: "t".into(),
            id: "1".into(),
        };
        let outcome = relay
            .forward(&watcher, &Secret::new("k".into()), &msg)
            .await;
        assert_eq!(outcome, RelayOutcome::Rejected(307));
        assert_eq!(hits.load(Ordering::SeqCst), 0, "the redirect was followed");
    }

    #[test]
    fn signature_matches_a_reference_hmac() {
        // Reference: python3 -c 'import hmac,hashlib;
        //   print(hmac.new(b"key", b"1700000000.{}", hashlib.sha256).hexdigest())'
        let s = sign(&Secret::new("key".into()), "1700000000", b"{}");
        assert_eq!(
            s,
            "sha256=9d713ed406bb7076d4123f0dc2c39d2df5c654ed4b0cd56b52c8b4c940bd63ae"
        );
        assert_eq!(s.len(), 7 + 64);
        assert_ne!(s, sign(&Secret::new("other".into()), "1700000000", b"{}"));
        assert_ne!(s, sign(&Secret::new("key".into()), "1700000001", b"{}"));
    }
}
