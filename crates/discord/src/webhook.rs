//! Executing a webhook: one request, classified.
//!
//! The client does exactly one HTTP request per call and says what happened in an
//! [`ExecuteOutcome`]; the watcher's deliverer owns pacing and the retry policy
//! (wait on 429, back off on 5xx, DLQ on 400, re-provision on 401/404). Nothing it
//! returns contains the webhook token.

use std::time::Duration;

use reqwest::multipart::{Form, Part};

use crate::embed::WebhookMessage;
use crate::ratelimit::{self, RateLimitHeaders, Scope};
use crate::webhook_url::WebhookUrl;

/// `User-Agent` for every request agentmon sends to Discord (Discord asks bots to
/// identify themselves this way).
pub const USER_AGENT: &str = "DiscordBot (agentmon, 0.1)";

/// The most of a refusal's body kept for the DLQ.
pub const MAX_ERROR_BODY: usize = 16 * 1024;

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("building the HTTP client failed: {0}")]
    Build(String),
}

/// What became of one "Execute Webhook" request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecuteOutcome {
    /// 2xx: Discord stored the message.
    Delivered {
        /// The new message's id (present with `?wait=true`).
        message_id: Option<String>,
        headers: RateLimitHeaders,
    },
    /// 429: wait `retry_after`, then send again; not a failure.
    RateLimited {
        retry_after: Duration,
        scope: Option<Scope>,
        global: bool,
    },
    /// Another 4xx: Discord will never accept this payload.
    Rejected {
        status: u16,
        /// Discord's error JSON (capped), for the DLQ.
        body: String,
    },
    /// 401/404: the webhook was deleted or its token revoked.
    Gone { status: u16 },
    /// 5xx: Discord failed; retry with backoff.
    ServerError {
        status: u16,
        headers: RateLimitHeaders,
    },
    /// No response (connect, TLS, timeout, reset); retry with backoff.
    Network {
        /// The error chain, without the URL (and so without the token).
        error: String,
        /// The request may have reached Discord (it timed out waiting for the
        /// answer): the message may exist, and counts against the channel.
        maybe_sent: bool,
    },
}

/// Posts [`WebhookMessage`]s. Cheap to clone; share one per process so connections
/// are reused.
#[derive(Debug, Clone)]
pub struct WebhookClient {
    http: reqwest::Client,
}

/// The error and its sources, without any URL, with `token` masked should a
/// layer below have echoed it anyway.
pub(crate) fn describe_error(e: reqwest::Error, token: &str) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    if token.is_empty() {
        text
    } else {
        text.replace(token, "****")
    }
}

/// Cuts `body` to at most `max` bytes at a char boundary.
pub(crate) fn capped_text(body: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(max)]).into_owned();
    text.trim_end_matches('\u{FFFD}').to_owned()
}

impl WebhookClient {
    /// A client whose requests give up after `timeout` (connect to last byte).
    pub fn new(timeout: Duration) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(USER_AGENT)
            .build()
            .map_err(|e| ClientError::Build(describe_error(e, "")))?;
        Ok(Self { http })
    }

    /// Sends `msg` to `url` once: JSON, or multipart (`payload_json` + `files[n]`)
    /// when it carries files. The message should have been through
    /// [`crate::truncate::fit_message`].
    pub async fn execute(&self, url: &WebhookUrl, msg: &WebhookMessage) -> ExecuteOutcome {
        let token = url.token().expose();
        let request = match self.request(url, msg) {
            Ok(r) => r,
            Err(error) => {
                return ExecuteOutcome::Network {
                    error,
                    maybe_sent: false,
                }
            }
        };
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                return ExecuteOutcome::Network {
                    maybe_sent: e.is_timeout(),
                    error: describe_error(e, token),
                }
            }
        };
        let status = response.status().as_u16();
        let headers = ratelimit::parse_headers(response.headers());
        // A body that fails to arrive after the status did is not worth a retry
        // for a 2xx (the message exists); for the rest, an empty body will do.
        let body = response.bytes().await.unwrap_or_default();
        classify(status, headers, &body)
    }

    fn request(
        &self,
        url: &WebhookUrl,
        msg: &WebhookMessage,
    ) -> Result<reqwest::RequestBuilder, String> {
        // Lets a trace follow an event from the transcript to Discord (and through
        // fakes and proxies that log it).
        let mut trace = http::HeaderMap::new();
        ops::trace::inject(&mut trace);
        let builder = self.http.post(url.execute_url()).headers(trace);
        if msg.files.is_empty() {
            return Ok(builder.json(msg));
        }
        let mut payload =
            serde_json::to_value(msg).map_err(|e| format!("encoding payload: {e}"))?;
        let attachments: Vec<_> = msg
            .files
            .iter()
            .enumerate()
            .map(|(i, f)| serde_json::json!({ "id": i, "filename": f.filename }))
            .collect();
        if let Some(obj) = payload.as_object_mut() {
            obj.insert("attachments".into(), attachments.into());
        }
        let mut form = Form::new().text("payload_json", payload.to_string());
        for (i, file) in msg.files.iter().enumerate() {
            let part = Part::bytes(file.bytes.clone()).file_name(file.filename.clone());
            form = form.part(format!("files[{i}]"), part);
        }
        Ok(builder.multipart(form))
    }
}

/// Sorts a response into an [`ExecuteOutcome`]; pure, so every status is tested.
pub fn classify(status: u16, headers: RateLimitHeaders, body: &[u8]) -> ExecuteOutcome {
    match status {
        200..=299 => ExecuteOutcome::Delivered {
            message_id: serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v.get("id")?.as_str().map(str::to_owned)),
            headers,
        },
        429 => ExecuteOutcome::RateLimited {
            retry_after: ratelimit::retry_after_from_body(body)
                .or(headers.retry_after)
                .or(headers.reset_after)
                .unwrap_or(Duration::from_secs(1)),
            scope: headers.scope,
            global: headers.global || ratelimit::global_from_body(body),
        },
        401 | 404 => ExecuteOutcome::Gone { status },
        500..=599 => ExecuteOutcome::ServerError { status, headers },
        _ => ExecuteOutcome::Rejected {
            status,
            body: capped_text(body, MAX_ERROR_BODY),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let h = RateLimitHeaders::default();
        assert_eq!(
            classify(200, h.clone(), br#"{"id":"42","content":"x"}"#),
            ExecuteOutcome::Delivered {
                message_id: Some("42".into()),
                headers: h.clone()
            }
        );
        assert!(matches!(
            classify(204, h.clone(), b""),
            ExecuteOutcome::Delivered {
                message_id: None,
                ..
            }
        ));
        let limited = RateLimitHeaders {
            retry_after: Some(Duration::from_secs(2)),
            scope: Some(Scope::User),
            ..h.clone()
        };
        assert_eq!(
            classify(
                429,
                limited.clone(),
                br#"{"retry_after":1.5,"global":false}"#
            ),
            ExecuteOutcome::RateLimited {
                retry_after: Duration::from_millis(1500),
                scope: Some(Scope::User),
                global: false
            }
        );
        assert!(matches!(
            classify(429, limited, b"<html>"),
            ExecuteOutcome::RateLimited { retry_after, .. } if retry_after == Duration::from_secs(2)
        ));
        assert_eq!(
            classify(404, h.clone(), b""),
            ExecuteOutcome::Gone { status: 404 }
        );
        assert_eq!(
            classify(401, h.clone(), b""),
            ExecuteOutcome::Gone { status: 401 }
        );
        assert!(matches!(
            classify(502, h.clone(), b""),
            ExecuteOutcome::ServerError { status: 502, .. }
        ));
        assert_eq!(
            classify(400, h.clone(), br#"{"code":50035}"#),
            ExecuteOutcome::Rejected {
                status: 400,
                body: r#"{"code":50035}"#.into()
            }
        );
        let huge = "é".repeat(MAX_ERROR_BODY);
        let ExecuteOutcome::Rejected { body, .. } = classify(413, h, huge.as_bytes()) else {
            panic!("413 must be a rejection");
        };
        assert!(body.len() <= MAX_ERROR_BODY && body.chars().all(|c| c == 'é'));
    }
}
