//! The HTTP API of bot-bridge: the runs API (bearer auth) and Discord's
//! interactions endpoint (ed25519 signatures instead of the bearer token).

pub mod handoff;
pub mod interactions;
pub mod runs;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use subtle::ConstantTimeEq;

use ops::Secret;

use crate::access::Bearer;
use crate::app::AppState;
use crate::auth::{AuthMethod, AuthOutcome, ReviewError};
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
        ops::http::error_response(self.status, self.code, &self.message)
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
            RunsError::Forbidden(m) => Self::new(StatusCode::FORBIDDEN, "forbidden", m),
            RunsError::WebhookLimit => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "webhook_limit",
                "the thread parent channel holds Discord's 15 webhooks (one per active run); \
                 retry when a run completes, or use RUN_CONTAINER=channel",
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

/// The credentials of a `Bearer` authorization (the scheme is
/// case-insensitive, RFC 9110 §11.1).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim())
        .filter(|t| !t.is_empty())
}

/// Refused pod tokens and TokenReview failures are counted each
/// (`bridge_auth_total`) but logged at most once per 10 s with the number
/// unlogged, so a flood or an outage costs a counter, not a log line each.
static REFUSED_LOG: interactions::LogThrottle = interactions::LogThrottle::new();
static UNAVAILABLE_LOG: interactions::LogThrottle = interactions::LogThrottle::new();

/// Rejects requests without `Authorization: Bearer <API_TOKEN>` or, when
/// `TOKEN_REVIEW_AUDIENCE` is set, a pod token a TokenReview accepts (401;
/// 503 when the TokenReview API cannot answer for a token not cached). The
/// `API_TOKEN` compare is constant-time so response timing does not reveal
/// it. The handlers get the proven [`Bearer`] as a request extension.
async fn require_bearer(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let auth = &state.metrics().auth;
    let presented = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
        .map(|t| Secret::new(t.to_owned()));
    let reviewer = state.token_reviewer();
    let method = if reviewer.is_some() {
        AuthMethod::PodToken
    } else {
        AuthMethod::ApiToken
    };
    let Some(presented) = presented else {
        auth.record(method, AuthOutcome::Unauthenticated);
        return ApiError::unauthorized("missing bearer token").into_response();
    };
    let expected = state.settings().api_token.expose().as_bytes();
    let bearer = if bool::from(presented.expose().as_bytes().ct_eq(expected)) {
        auth.record(AuthMethod::ApiToken, AuthOutcome::Ok);
        Bearer::ApiToken
    } else if let Some(reviewer) = reviewer {
        match reviewer.review(&presented).await {
            Ok(pod) => {
                auth.record(AuthMethod::PodToken, AuthOutcome::Ok);
                Bearer::Pod(pod)
            }
            Err(e @ ReviewError::Unauthenticated(_)) => {
                auth.record(AuthMethod::PodToken, AuthOutcome::Unauthenticated);
                let (log, unlogged) = REFUSED_LOG.admit(tokio::time::Instant::now());
                if log {
                    tracing::info!(error = %e, unlogged, "pod token refused");
                }
                return ApiError::unauthorized("invalid bearer token").into_response();
            }
            Err(e @ ReviewError::Unavailable(_)) => {
                auth.record(AuthMethod::PodToken, AuthOutcome::Unavailable);
                let (log, unlogged) = UNAVAILABLE_LOG.admit(tokio::time::Instant::now());
                if log {
                    tracing::warn!(error = %e, unlogged, "TokenReview failed; pod token not checked");
                }
                let mut resp = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "auth_unavailable",
                    "the Kubernetes TokenReview API did not answer; retry later",
                )
                .into_response();
                resp.headers_mut().insert(
                    http::header::RETRY_AFTER,
                    http::HeaderValue::from_static("5"),
                );
                return resp;
            }
        }
    } else {
        auth.record(AuthMethod::ApiToken, AuthOutcome::Unauthenticated);
        return ApiError::unauthorized("invalid bearer token").into_response();
    };
    req.extensions_mut().insert(bearer);
    next.run(req).await
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

/// The API router (`API_ADDR`): runs API behind bearer auth, `/interactions`
/// behind signature verification. `main` wraps it in `ops::http::instrument`
/// with [`http_layer`].
pub fn api_router(state: AppState) -> Router {
    let runs = Router::new()
        .route("/v1/runs", post(runs::create).get(runs::list))
        .route("/v1/runs/{run_id}", get(runs::get))
        .route("/v1/runs/{run_id}/complete", post(runs::complete))
        .route("/v1/runs/{run_id}/heartbeat", post(runs::heartbeat))
        .route(
            "/v1/runs/{run_id}/handoff",
            post(handoff::accept).layer(DefaultBodyLimit::max(crate::handoff::BODY_LIMIT)),
        )
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

/// The middleware stack of bot-bridge's listeners (API and ops): the
/// hand-off route's 16 MiB is the hard body cap (every other route keeps the
/// API's 256 KiB through the router's own limit), thirty seconds per request.
/// Its layers also give every error the contract's JSON body.
pub fn http_layer(metrics: ops::http::HttpMetrics) -> ops::http::HttpLayer {
    ops::http::HttpLayer {
        service: "bot-bridge",
        metrics,
        body_limit: crate::handoff::BODY_LIMIT,
        timeout: std::time::Duration::from_secs(30),
    }
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
            Some("Bearerapi-token-secret"),
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
        // The scheme is case-insensitive (RFC 9110): lower-case bearer works.
        let lower = http
            .get(format!("{base}/v1/runs"))
            .header("authorization", "bearer api-token-secret")
            .send()
            .await
            .unwrap();
        assert_eq!(lower.status(), 200);
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
            (
                http.get(format!("{base}/v1/runs?limit=lots")),
                400,
                "bad_request",
            ),
            (
                http.get(format!("{base}/v1/runs?cursor=garbage")),
                400,
                "bad_request",
            ),
            (
                http.delete(format!("{base}/v1/runs")),
                405,
                "method_not_allowed",
            ),
            (
                http.put(format!("{base}/interactions")),
                405,
                "method_not_allowed",
            ),
            (
                http.get(format!("{base}/v1/runs/%FF%FE")),
                400,
                "bad_request",
            ),
            // Above the stack's 16 MiB cap, refused on its Content-Length by
            // ops::http's body limit, outside this router.
            (
                http.post(format!("{base}/v1/runs/r/handoff")).body(vec![
                    b' ';
                    crate::handoff::BODY_LIMIT
                        + 1
                ]),
                413,
                "payload_too_large",
            ),
            (
                http.get(format!("{base}/v1/runs?{}", "a".repeat(9000))),
                414,
                "uri_too_long",
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
