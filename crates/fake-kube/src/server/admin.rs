//! `/_admin`: what tests read and steer. Not part of Kubernetes; no auth.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State as AxumState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::App;
use crate::faults::Fault;
use crate::state::pods::{Lifecycle, NewPod};
use crate::state::tokens::TestToken;
use crate::state::{AdminError, DropMode};

pub fn routes() -> Router<App> {
    Router::new()
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/stats", get(stats))
        .route("/pods", get(pods).post(create_pod))
        .route(
            "/pods/{ns}/{name}",
            get(pod).put(replace_pod).delete(delete_pod),
        )
        .route("/pods/{ns}/{name}/lifecycle", post(lifecycle))
        .route("/pods/{ns}/{name}/remove", post(remove_pod))
        .route("/tokens", get(tokens).post(add_token))
        .route("/tokens/expire", post(expire_token))
        .route("/tokens/remove", post(remove_token))
        .route("/faults", get(faults).post(add_faults).delete(clear_faults))
        .route("/watches/drop", post(drop_watches))
        .route("/watches/expire", post(expire_watches))
        .route("/watches/bookmark", post(bookmark))
        .route("/watches/pause", post(pause))
        .route("/watches/resume", post(resume))
        .route("/compact", post(compact))
        .route("/events", get(events))
        .route("/leases", get(leases))
}

fn bad(message: impl std::fmt::Display) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": message.to_string()})),
    )
        .into_response()
}

fn admin_error(e: &AdminError) -> Response {
    let status = match e {
        AdminError::NoSuchPod(..) | AdminError::NoSuchToken => StatusCode::NOT_FOUND,
        AdminError::PodExists(..) => StatusCode::CONFLICT,
        AdminError::Invalid(_) => StatusCode::BAD_REQUEST,
    };
    (status, Json(json!({"error": e.to_string()}))).into_response()
}

fn pod_answer(status: StatusCode, r: Result<Pod, AdminError>) -> Response {
    match r {
        Ok(p) => (status, Json(p)).into_response(),
        Err(e) => admin_error(&e),
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Box<Response>> {
    serde_json::from_slice(body).map_err(|e| Box::new(bad(e)))
}

async fn stats(AxumState(app): AxumState<App>) -> Response {
    Json(app.with(|s| {
        let mut v = serde_json::to_value(&s.stats).unwrap_or(Value::Null);
        v["resource_version"] = json!(s.rv);
        v["oldest_valid_resource_version"] = json!(s.oldest_valid_rv);
        v["pods"] = json!(s.pods.pods.len());
        v["history"] = json!(s.pods.history.len());
        v["events"] = json!(s.events.len());
        v["leases"] = json!(s.leases.len());
        v["watch_control"] = serde_json::to_value(&s.watch).unwrap_or(Value::Null);
        v
    }))
    .into_response()
}

async fn pods(AxumState(app): AxumState<App>) -> Response {
    Json(app.with(|s| s.pods.pods.values().cloned().collect::<Vec<_>>())).into_response()
}

async fn pod(AxumState(app): AxumState<App>, Path((ns, name)): Path<(String, String)>) -> Response {
    let p = app.with(|s| s.pods.pods.get(&(ns.clone(), name.clone())).cloned());
    pod_answer(StatusCode::OK, p.ok_or(AdminError::NoSuchPod(ns, name)))
}

/// Either the short form or a whole Pod object.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PodBody {
    Short(NewPod),
    Full(Box<Pod>),
}

/// `POST /_admin/pods` `{namespace, name, labels?, service_account?,
/// node_name?, containers?}` or a Pod object.
async fn create_pod(AxumState(app): AxumState<App>, body: Bytes) -> Response {
    let pod = match parse::<PodBody>(&body) {
        Ok(PodBody::Short(p)) => p.into_pod(),
        Ok(PodBody::Full(p)) => *p,
        Err(r) => return *r,
    };
    pod_answer(StatusCode::CREATED, app.with(|s| s.create_pod(pod)))
}

/// `PUT /_admin/pods/{ns}/{name}`: the pod becomes the body (identity and
/// resourceVersion stay the server's).
async fn replace_pod(
    AxumState(app): AxumState<App>,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let new: Pod = match parse(&body) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    pod_answer(
        StatusCode::OK,
        app.with(|s| s.update_pod(&ns, &name, |p| *p = new)),
    )
}

async fn lifecycle(
    AxumState(app): AxumState<App>,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let step: Lifecycle = match parse(&body) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    pod_answer(
        StatusCode::OK,
        app.with(|s| s.pod_lifecycle(&ns, &name, &step)),
    )
}

/// `DELETE /_admin/pods/{ns}/{name}[?grace_seconds=N]` (default 0: gone at
/// once; N > 0: deletionTimestamp set, removed by `POST …/remove`).
async fn delete_pod(
    AxumState(app): AxumState<App>,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let grace = match q.get("grace_seconds").map(|g| g.parse::<i64>()) {
        None => 0,
        Some(Ok(g)) => g,
        Some(Err(e)) => return bad(format!("grace_seconds: {e}")),
    };
    pod_answer(
        StatusCode::OK,
        app.with(|s| s.delete_pod(&ns, &name, grace)),
    )
}

async fn remove_pod(
    AxumState(app): AxumState<App>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    pod_answer(StatusCode::OK, app.with(|s| s.remove_pod(&ns, &name)))
}

async fn tokens(AxumState(app): AxumState<App>) -> Response {
    Json(app.with(|s| {
        let now = Instant::now();
        s.tokens
            .values()
            .map(|e| {
                let mut v = serde_json::to_value(&e.token).unwrap_or(Value::Null);
                v["expired"] = json!(e.expires_at.is_some_and(|at| now >= at));
                v
            })
            .collect::<Vec<_>>()
    }))
    .into_response()
}

async fn add_token(AxumState(app): AxumState<App>, body: Bytes) -> Response {
    let token: TestToken = match parse(&body) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    if token.token.is_empty() {
        return bad("token must not be empty");
    }
    app.with(|s| s.add_token(token, Instant::now()));
    StatusCode::CREATED.into_response()
}

#[derive(Debug, Deserialize)]
struct TokenRef {
    token: String,
}

async fn expire_token(AxumState(app): AxumState<App>, body: Bytes) -> Response {
    let t: TokenRef = match parse(&body) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    match app.with(|s| s.expire_token(&t.token, Instant::now())) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => admin_error(&e),
    }
}

async fn remove_token(AxumState(app): AxumState<App>, body: Bytes) -> Response {
    let t: TokenRef = match parse(&body) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    match app.with(|s| s.tokens.remove(&t.token)) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => admin_error(&AdminError::NoSuchToken),
    }
}

async fn faults(AxumState(app): AxumState<App>) -> Response {
    Json(app.with(|s| json!({"pending": s.faults.pending()}))).into_response()
}

async fn add_faults(AxumState(app): AxumState<App>, body: Bytes) -> Response {
    let list = match fake_support::one_or_many::<Fault>(&body) {
        Ok(list) => list,
        Err(detail) => return bad(format!("bad fault: {detail}")),
    };
    Json(app.with(|s| {
        for f in list {
            tracing::info!(route = f.route.as_str(), fault = ?f.kind, count = ?f.count, "fault queued");
            s.faults.push(f);
        }
        json!({"pending": s.faults.pending()})
    }))
    .into_response()
}

async fn clear_faults(AxumState(app): AxumState<App>) -> Response {
    app.with(crate::state::State::clear_faults);
    // Hung requests wait for this.
    app.recorded.notify_waiters();
    Json(json!({"pending": []})).into_response()
}

#[derive(Debug, Default, Deserialize)]
struct DropBody {
    #[serde(default)]
    mode: DropMode,
}

async fn drop_watches(AxumState(app): AxumState<App>, body: Bytes) -> Response {
    let b: DropBody = if body.is_empty() {
        DropBody::default()
    } else {
        match parse(&body) {
            Ok(b) => b,
            Err(r) => return *r,
        }
    };
    app.with(|s| s.drop_watches(b.mode));
    StatusCode::NO_CONTENT.into_response()
}

async fn expire_watches(AxumState(app): AxumState<App>) -> Response {
    app.with(|s| s.expire_watches());
    StatusCode::NO_CONTENT.into_response()
}

async fn bookmark(AxumState(app): AxumState<App>) -> Response {
    app.with(|s| s.send_bookmarks());
    StatusCode::NO_CONTENT.into_response()
}

async fn pause(AxumState(app): AxumState<App>) -> Response {
    app.with(|s| s.pause_watches(true));
    StatusCode::NO_CONTENT.into_response()
}

async fn resume(AxumState(app): AxumState<App>) -> Response {
    app.with(|s| s.pause_watches(false));
    StatusCode::NO_CONTENT.into_response()
}

async fn compact(AxumState(app): AxumState<App>) -> Response {
    let rv = app.with(|s| {
        s.compact();
        s.oldest_valid_rv
    });
    Json(json!({"oldest_valid_resource_version": rv})).into_response()
}

async fn events(AxumState(app): AxumState<App>) -> Response {
    Json(app.with(|s| s.events.clone())).into_response()
}

async fn leases(AxumState(app): AxumState<App>) -> Response {
    Json(app.with(|s| s.leases.values().cloned().collect::<Vec<_>>())).into_response()
}
