//! The ops endpoints (`/livez`, `/readyz`, `/healthz`, `/metrics`) and the
//! bind/serve helpers every listener uses.

use std::net::SocketAddr;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;

use crate::health::Health;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

#[derive(Clone)]
struct OpsState {
    health: Health,
    metrics: Metrics,
}

/// The ops router of DESIGN.md §5. Wrap it with [`crate::http::instrument`].
pub fn ops_router(health: Health, metrics: Metrics) -> Router {
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .with_state(OpsState { health, metrics })
}

async fn livez(State(s): State<OpsState>) -> Response {
    let (alive, body) = s.health.live();
    let code = if alive {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn readyz(State(s): State<OpsState>) -> Response {
    let (ready, body) = s.health.ready();
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn healthz(State(s): State<OpsState>) -> Response {
    (StatusCode::OK, Json(s.health.report())).into_response()
}

async fn metrics_text(State(s): State<OpsState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.encode(),
    )
        .into_response()
}

/// A listener that could not be bound, naming the config key it came from so
/// the operator knows what to change.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {key}={addr}: {source}")]
pub struct BindError {
    pub key: &'static str,
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// Binds `addr`, the value of config key `key`.
pub async fn bind(key: &'static str, addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { key, addr, source })
}

/// Serves `router` until `shutdown` triggers, then stops accepting and lets
/// in-flight requests finish (the caller bounds the whole drain).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    axum::serve(listener, router.into_make_service())
        .with_graceful_shutdown(async move { shutdown.wait().await })
        .await
}
