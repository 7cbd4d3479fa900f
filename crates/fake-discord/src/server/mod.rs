//! The HTTP side: routes and fault handling shared by the webhook and REST
//! handlers. The connection loop is [`fake_support::serve`]: the router marks
//! a response with [`ResetConnection`] to close the connection without
//! answering.

mod admin;
mod rest;
mod webhook;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::sync::Notify;

use crate::error::{Advertised, ApiError, RateLimited, ResetConnection, Scope};
use crate::faults::{FaultKind, StormScope};
use crate::state::State;

/// Largest request body read (Discord: 25 MiB uploads plus the JSON).
pub const MAX_BODY: usize = 26 * 1024 * 1024;

/// What every handler shares.
#[derive(Debug)]
pub struct Shared {
    pub state: Mutex<State>,
    /// Woken whenever a message or an interaction edit is recorded.
    pub recorded: Notify,
    /// Woken when the faults are cleared: releases `hang` requests.
    pub faults_cleared: Notify,
}

impl Shared {
    pub fn new(state: State) -> Self {
        Self {
            state: Mutex::new(state),
            recorded: Notify::new(),
            faults_cleared: Notify::new(),
        }
    }

    /// Runs `f` on the state. A panic elsewhere cannot leave it inconsistent
    /// (every update is plain data), so a poisoned lock is used as is.
    pub fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

pub type App = Arc<Shared>;

/// All routes: the API under `/api/v10`, `/api/v9` and `/api`, plus `/_admin`.
pub fn router(app: App) -> Router {
    let api = webhook::routes().merge(rest::routes());
    Router::new()
        .nest("/api/v10", api.clone())
        .nest("/api/v9", api.clone())
        .nest("/api", api)
        .nest("/_admin", admin::routes())
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .fallback(|| async { ApiError::not_found() })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(app)
}

/// What a served fault means for the handler.
pub enum FaultOutcome {
    /// Go on (no fault, or a `slow` one already waited out).
    Proceed,
    /// Answer this instead.
    Respond(Response),
}

fn reset_response() -> Response {
    let mut r = StatusCode::INTERNAL_SERVER_ERROR.into_response();
    r.extensions_mut().insert(ResetConnection);
    r
}

/// Takes and serves the next fault for `route` (and `webhook_id`), counting it.
/// `bucket` is what a storm 429 advertises for non-global scopes.
pub async fn serve_fault(
    app: &App,
    route: &str,
    webhook_id: Option<&str>,
    bucket: impl FnOnce(&mut State) -> Option<Advertised>,
) -> FaultOutcome {
    // Registered before the fault is taken, so a clear in between releases it.
    let cleared = app.faults_cleared.notified();
    let taken = app.with(|s| {
        let now = tokio::time::Instant::now();
        let fault = s.faults.take(route, webhook_id, now)?;
        s.count_fault(fault.label());
        s.stats.last_fault_at_mono_ms = Some(s.mono_ms(now));
        let adv = match fault {
            FaultKind::RateLimitStorm {
                scope: StormScope::User | StormScope::Shared,
                ..
            } => bucket(s),
            _ => None,
        };
        match &fault {
            FaultKind::NotFound if webhook_id.is_some() => s.stats.not_found += 1,
            FaultKind::RateLimitStorm { scope, .. } if webhook_id.is_some() => {
                s.count_rate_limited(storm_scope(*scope));
            }
            FaultKind::RateLimitStorm { scope, .. } => {
                *s.stats
                    .rest_rate_limited
                    .entry(storm_scope(*scope).as_str().to_owned())
                    .or_default() += 1;
            }
            _ => {}
        }
        Some((fault, adv))
    });
    let Some((fault, adv)) = taken else {
        return FaultOutcome::Proceed;
    };
    tracing::info!(route, fault = fault.label(), "serving injected fault");
    match fault {
        FaultKind::Slow { delay_ms } => {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            FaultOutcome::Proceed
        }
        FaultKind::Hang { max_ms } => {
            tokio::select! {
                () = cleared => {}
                () = tokio::time::sleep(Duration::from_millis(max_ms)) => {}
            }
            FaultOutcome::Proceed
        }
        FaultKind::Status { status, body } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let body = body.unwrap_or_else(
                || json!({"message": format!("{status} (injected by fake-discord)"), "code": 0}),
            );
            FaultOutcome::Respond((status, Json(body)).into_response())
        }
        FaultKind::Reset => FaultOutcome::Respond(reset_response()),
        FaultKind::NotFound => FaultOutcome::Respond(if webhook_id.is_some() {
            ApiError::unknown_webhook().into_response()
        } else {
            ApiError::not_found().into_response()
        }),
        FaultKind::RateLimitStorm {
            retry_after_ms,
            scope,
        } => FaultOutcome::Respond(
            RateLimited {
                scope: storm_scope(scope),
                retry_after: Duration::from_millis(retry_after_ms),
                bucket: adv,
            }
            .into_response(),
        ),
        // Applied when posted, never queued; nothing to do for a request.
        FaultKind::DeleteWebhook { .. } => FaultOutcome::Proceed,
    }
}

fn storm_scope(s: StormScope) -> Scope {
    match s {
        StormScope::User => Scope::User,
        StormScope::Shared => Scope::Shared,
        StormScope::Global => Scope::Global,
    }
}

/// A JSON answer carrying a bucket's headers.
pub fn with_bucket(status: StatusCode, adv: &Advertised, body: serde_json::Value) -> Response {
    (status, adv.headers(), Json(body)).into_response()
}

/// An error carrying a bucket's headers.
pub fn error_with_bucket(e: ApiError, adv: &Advertised) -> Response {
    e.with_bucket(adv)
}

/// `Infallible`-free helper so handlers can `?` on `Response` errors.
pub type Handled = Result<Response, Response>;

pub fn unify(r: Handled) -> Response {
    match r {
        Ok(r) | Err(r) => r,
    }
}

/// The Authorization header's bot token, if well formed.
pub fn bot_token(h: &HeaderMap) -> Option<&str> {
    h.get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bot ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
}
