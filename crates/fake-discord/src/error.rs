//! Discord-shaped error responses, and the marker that drops a connection.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::limiter::BucketState;
use crate::validate::{codes, Rejection};

/// Put in a response's extensions to close the connection instead of answering
/// (see [`crate::faults::FaultKind::Reset`]).
pub use fake_support::ResetConnection;

/// Who a 429 applies to (`X-RateLimit-Scope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    User,
    Shared,
    Global,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::User => "user",
            Scope::Shared => "shared",
            Scope::Global => "global",
        }
    }
}

/// A bucket to advertise: its state and Discord's opaque id for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertised {
    pub state: BucketState,
    pub bucket: String,
}

fn secs(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64())
}

fn set(h: &mut HeaderMap, name: &'static str, value: String) {
    if let Ok(v) = HeaderValue::from_str(&value) {
        h.insert(HeaderName::from_static(name), v);
    }
}

impl Advertised {
    /// `X-RateLimit-Limit/Remaining/Reset/Reset-After/Bucket`.
    pub fn headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        self.write(&mut h);
        h
    }

    pub fn write(&self, h: &mut HeaderMap) {
        let reset_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            + self.state.reset_after;
        set(h, "x-ratelimit-limit", self.state.limit.to_string());
        set(h, "x-ratelimit-remaining", self.state.remaining.to_string());
        set(h, "x-ratelimit-reset", secs(reset_at));
        set(h, "x-ratelimit-reset-after", secs(self.state.reset_after));
        set(h, "x-ratelimit-bucket", self.bucket.clone());
    }
}

/// A 429 as Discord sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimited {
    pub scope: Scope,
    pub retry_after: Duration,
    /// The route's bucket (absent for the global limit, as on Discord).
    pub bucket: Option<Advertised>,
}

impl IntoResponse for RateLimited {
    fn into_response(self) -> Response {
        let mut h = HeaderMap::new();
        if let Some(b) = &self.bucket {
            b.write(&mut h);
        }
        let global = self.scope == Scope::Global;
        let whole = self.retry_after.as_millis().div_ceil(1000).max(1);
        set(&mut h, "retry-after", whole.to_string());
        set(&mut h, "x-ratelimit-scope", self.scope.as_str().to_owned());
        if global {
            set(&mut h, "x-ratelimit-global", "true".into());
        }
        let retry = (self.retry_after.as_secs_f64() * 1000.0).ceil() / 1000.0;
        let mut body = json!({
            "message": "You are being rate limited.",
            "retry_after": retry,
            "global": global,
        });
        if self.scope == Scope::Shared {
            body["code"] = json!(codes::CHANNEL_WRITE_RATE_LIMIT);
        }
        (StatusCode::TOO_MANY_REQUESTS, h, Json(body)).into_response()
    }
}

/// Any non-success answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: Value,
}

impl ApiError {
    pub fn new(status: StatusCode, code: u32, message: &str) -> Self {
        Self {
            status,
            body: json!({"message": message, "code": code}),
        }
    }

    pub fn unknown_webhook() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            codes::UNKNOWN_WEBHOOK,
            "Unknown Webhook",
        )
    }

    pub fn unknown_channel() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            codes::UNKNOWN_CHANNEL,
            "Unknown Channel",
        )
    }

    pub fn unknown_guild() -> Self {
        Self::new(StatusCode::NOT_FOUND, codes::UNKNOWN_GUILD, "Unknown Guild")
    }

    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, 0, "401: Unauthorized")
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, 0, "404: Not Found")
    }

    /// The response, carrying a bucket's `X-RateLimit-*` headers.
    pub fn with_bucket(self, adv: &Advertised) -> Response {
        (self.status, adv.headers(), Json(self.body)).into_response()
    }
}

impl From<Rejection> for ApiError {
    fn from(r: Rejection) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            body: r.body(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}
