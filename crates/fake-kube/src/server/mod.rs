//! The HTTP side: routes, client authentication and fault serving. The
//! connection loop is [`fake_support::serve`]: a handler marks a response
//! with [`ResetConnection`] to close the connection without answering.

mod admin;
mod events;
mod leases;
mod pods;
mod tokenreviews;
mod watch;

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use axum::extract::{Request, State as AxumState};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use std::sync::Arc;
use tokio::sync::{watch as tokio_watch, Notify};

use crate::faults::{FaultKind, Route};
use crate::state::State;
use crate::status::ApiError;

/// Longest a `hang` fault holds a request.
const MAX_HANG: Duration = Duration::from_secs(600);

/// What every handler shares.
#[derive(Debug)]
pub struct Shared {
    state: Mutex<State>,
    /// Ticks whenever something a watch stream looks at changed.
    changes: tokio_watch::Sender<u64>,
    /// Woken when an Event is recorded or faults are cleared.
    pub recorded: Notify,
}

impl Shared {
    pub fn new(state: State) -> Self {
        Self {
            state: Mutex::new(state),
            changes: tokio_watch::channel(0).0,
            recorded: Notify::new(),
        }
    }

    /// Runs `f` on the state, then wakes watch streams if it changed
    /// anything they serve. Every update is plain data, so a lock poisoned
    /// by a panic elsewhere is used as is.
    pub fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let out = f(&mut s);
        let dirty = std::mem::take(&mut s.dirty);
        drop(s);
        if dirty {
            self.changes.send_modify(|n| *n = n.wrapping_add(1));
        }
        out
    }

    pub fn subscribe(&self) -> tokio_watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

pub type App = Arc<Shared>;

/// Put in a response's extensions to close the connection instead.
pub use fake_support::ResetConnection;

/// All routes: the Kubernetes API (bearer token required), `/version`,
/// `/healthz` and `/_admin`.
pub fn router(app: App) -> Router {
    let api = Router::new()
        .merge(pods::routes())
        .merge(tokenreviews::routes())
        .merge(events::routes())
        .merge(leases::routes())
        .route_layer(middleware::from_fn_with_state(app.clone(), authenticate));
    Router::new()
        .merge(api)
        .nest("/_admin", admin::routes())
        .route("/healthz", get(|| async { "ok" }))
        .route("/version", get(version))
        .fallback(|| async { ApiError::path_not_found() })
        .with_state(app)
}

async fn version() -> Response {
    Json(json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0-fake-kube",
        "platform": "linux/amd64"
    }))
    .into_response()
}

/// Refuses API requests without the kubeconfig's bearer token (401
/// `Unauthorized` Status, as the apiserver answers).
async fn authenticate(AxumState(app): AxumState<App>, req: Request, next: Next) -> Response {
    let ok = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| app.with(|s| t.trim() == s.config.client_token));
    if !ok {
        app.with(|s| s.stats.unauthorized += 1);
        return ApiError::unauthorized().into_response();
    }
    next.run(req).await
}

/// Counts the request and serves the next fault for `route`, if any:
/// `Some(response)` means answer that instead.
pub async fn serve_fault(app: &App, route: Route) -> Option<Response> {
    let (fault, cleared_at) = app.with(|s| {
        s.count_request(route.as_str());
        let f = s.faults.take(route)?;
        let label = match &f {
            FaultKind::Status { .. } => "status",
            FaultKind::Hang => "hang",
            FaultKind::Reset => "reset",
        };
        *s.stats.faults_served.entry(label.to_owned()).or_default() += 1;
        Some((f, s.faults_cleared))
    })?;
    tracing::info!(route = route.as_str(), fault = ?fault, "serving injected fault");
    match fault {
        FaultKind::Status {
            status,
            retry_after_seconds,
        } => {
            let mut r = ApiError::injected(status).into_response();
            if let Some(secs) = retry_after_seconds {
                if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                    r.headers_mut().insert(http::header::RETRY_AFTER, v);
                }
            }
            Some(r)
        }
        FaultKind::Reset => {
            let mut r = StatusCode::INTERNAL_SERVER_ERROR.into_response();
            r.extensions_mut().insert(ResetConnection);
            Some(r)
        }
        FaultKind::Hang => {
            // Held until the faults are cleared (then served normally).
            let deadline = tokio::time::Instant::now() + MAX_HANG;
            loop {
                let cleared = app.recorded.notified();
                tokio::pin!(cleared);
                cleared.as_mut().enable();
                if app.with(|s| s.faults_cleared != cleared_at) {
                    return None;
                }
                if tokio::time::timeout_at(deadline, cleared).await.is_err() {
                    return Some(ApiError::injected(504).into_response());
                }
            }
        }
    }
}

/// Parses a JSON request body into `T`, answering 400 like the apiserver
/// on a body it cannot decode.
pub fn decode<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("the body of the request could not be decoded: {e}"))
    })
}

/// A `201 Created` / `200 OK` JSON answer.
pub fn json_response(status: StatusCode, value: &impl serde::Serialize) -> Response {
    (status, Json(value)).into_response()
}
