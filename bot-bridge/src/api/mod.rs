//! The HTTP API of bot-bridge: the runs API (bearer auth) and Discord's
//! interactions endpoint (ed25519 signatures instead of the bearer token).

pub mod interactions;
pub mod runs;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::app::AppState;
use crate::runs::RunsError;

/// Largest accepted request body: run requests and interactions are small;
/// a completion summary is the largest thing sent.
pub const BODY_LIMIT: usize = 256 * 1024;

/// An error answer: `{"error":{"code","message"}}` with a stable `code`. The
/// message is generic for server-side failures; their detail is logged once
/// where they happen.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn unauthorized(message: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

impl From<RunsError> for ApiError {
    fn from(e: RunsError) -> Self {
        match e {
            RunsError::BadRequest(m) => Self::bad_request(m),
            RunsError::NotFound => Self::new(StatusCode::NOT_FOUND, "not_found", "run not found"),
            RunsError::RunFinished => Self::new(
                StatusCode::CONFLICT,
                "run_finished",
                "the run already completed; start a new attempt",
            ),
            RunsError::GuildFull => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "guild_full",
                "the guild has no room for another channel (Discord allows 500); \
                 set RUN_CONTAINER=thread or let retention delete channels",
            ),
            RunsError::Discord(_) => Self::new(
                StatusCode::BAD_GATEWAY,
                "discord_error",
                "Discord refused or failed the request; retry later",
            ),
            RunsError::Store(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "the run store failed; retry later",
            ),
        }
    }
}

/// Rejects requests without `Authorization: Bearer <API_TOKEN>`. The compare
/// is constant-time so response timing does not reveal the token.
async fn require_bearer(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(presented) = presented else {
        return ApiError::unauthorized("missing bearer token").into_response();
    };
    let expected = state.settings().api_token.expose().as_bytes();
    if bool::from(presented.as_bytes().ct_eq(expected)) {
        next.run(req).await
    } else {
        ApiError::unauthorized("invalid bearer token").into_response()
    }
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

/// The API router (`API_ADDR`): runs API behind bearer auth, `/interactions`
/// behind signature verification. `main` wraps it in `ops::http::instrument`.
pub fn api_router(state: AppState) -> Router {
    let runs = Router::new()
        .route("/v1/runs", post(runs::create).get(runs::list))
        .route("/v1/runs/{run_id}", get(runs::get))
        .route("/v1/runs/{run_id}/complete", post(runs::complete))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_bearer,
        ));
    Router::new()
        .merge(runs)
        .route("/interactions", post(interactions::handle))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use crate::app::fixture;

    #[tokio::test]
    async fn runs_api_requires_the_bearer_token() {
        let (state, _) = fixture::state(fixture::settings());
        let base = fixture::serve(state).await;
        let http = reqwest::Client::new();
        let body = serde_json::json!({"task_id": "t", "attempt": 1, "short_id": "a"});
        for auth in [
            None,
            Some("Bearer wrong"),
            Some("Basic api-token-secret"),
            Some("Bearer "),
        ] {
            let mut req = http.post(format!("{base}/v1/runs")).json(&body);
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 401, "{auth:?}");
            let v: Value = resp.json().await.unwrap();
            assert_eq!(v["error"]["code"], "unauthorized");
        }
        let ok = http
            .post(format!("{base}/v1/runs"))
            .bearer_auth("api-token-secret")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 201);
    }

    #[tokio::test]
    async fn errors_are_json() {
        let (state, _) = fixture::state(fixture::settings());
        let base = fixture::serve(state).await;
        let http = reqwest::Client::new();
        let cases = [
            (
                http.post(format!("{base}/v1/runs")).body("{not json"),
                400,
                "bad_request",
            ),
            (http.get(format!("{base}/v1/runs/nope")), 404, "not_found"),
            (
                http.get(format!("{base}/v1/runs?status=weird")),
                400,
                "bad_request",
            ),
            (
                http.post(format!("{base}/v1/runs"))
                    .body(vec![b' '; super::BODY_LIMIT + 10]),
                413,
                "payload_too_large",
            ),
        ];
        for (req, status, code) in cases {
            let resp = req.bearer_auth("api-token-secret").send().await.unwrap();
            assert_eq!(resp.status(), status);
            let v: Value = resp.json().await.unwrap();
            assert_eq!(v["error"]["code"], code, "{v}");
        }
    }
}
