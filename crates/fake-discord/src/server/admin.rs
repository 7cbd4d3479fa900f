//! `/_admin`: what tests read and steer. Not part of Discord; no auth, no limits.

use std::collections::HashMap;

use axum::extract::{Path, Query, State as AxumState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::App;
use crate::error::ApiError;
use crate::faults::{Fault, FaultKind};
use crate::state::kind;

pub fn routes() -> Router<App> {
    Router::new()
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/messages", get(messages))
        .route("/stats", get(stats))
        .route(
            "/faults",
            get(list_faults).post(add_faults).delete(clear_faults),
        )
        .route("/reset", post(reset))
        .route("/channels", get(channels).post(create_channel))
        .route("/webhooks", get(webhooks).post(create_webhook))
        .route("/webhooks/{id}", delete(delete_webhook))
        .route("/commands", get(commands))
        .route("/interaction_edits", get(edits))
}

/// `GET /_admin/messages[?webhook_id=..][&channel_id=..][&thread_id=..]`.
async fn messages(
    AxumState(app): AxumState<App>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let list = app.with(|s| {
        s.messages
            .iter()
            .filter(|m| q.get("webhook_id").is_none_or(|w| *w == m.webhook_id))
            .filter(|m| q.get("channel_id").is_none_or(|c| *c == m.channel_id))
            .filter(|m| {
                q.get("thread_id")
                    .is_none_or(|t| m.thread_id.as_ref() == Some(t))
            })
            .cloned()
            .collect::<Vec<_>>()
    });
    Json(list).into_response()
}

async fn stats(AxumState(app): AxumState<App>) -> Response {
    Json(app.with(|s| crate::stats_json(s, Instant::now()))).into_response()
}

async fn add_faults(AxumState(app): AxumState<App>, body: axum::body::Bytes) -> Response {
    let faults = match fake_support::one_or_many::<Fault>(&body) {
        Ok(faults) => faults,
        Err(detail) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"message": format!("bad fault: {detail}"), "code": 0})),
            )
                .into_response();
        }
    };
    let result = app.with(|s| {
        for f in faults {
            if let FaultKind::DeleteWebhook { id } = &f.kind {
                if !s.delete_webhook(id) {
                    return Err(ApiError::unknown_webhook());
                }
                s.count_fault(f.kind.label());
                continue;
            }
            tracing::info!(fault = f.kind.label(), count = f.count, "fault queued");
            s.faults.push(f);
        }
        Ok(json!({"pending": s.faults.pending()}))
    });
    match result {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn list_faults(AxumState(app): AxumState<App>) -> Response {
    Json(app.with(|s| json!({"pending": s.faults.pending()}))).into_response()
}

async fn clear_faults(AxumState(app): AxumState<App>) -> Response {
    app.with(|s| s.faults.clear());
    app.faults_cleared.notify_waiters();
    Json(json!({"pending": []})).into_response()
}

async fn reset(AxumState(app): AxumState<App>) -> Response {
    app.with(crate::state::State::reset);
    Json(json!({"status": "reset"})).into_response()
}

async fn channels(AxumState(app): AxumState<App>) -> Response {
    Json(app.with(|s| s.channels.values().map(|c| c.to_json()).collect::<Vec<_>>())).into_response()
}

#[derive(Debug, Deserialize)]
struct NewChannel {
    name: String,
    #[serde(default, rename = "type")]
    kind: u8,
    #[serde(default)]
    parent_id: Option<String>,
}

/// `POST /_admin/channels {name, type?, parent_id?}`: no limits checked
/// beyond the parent existing (for setting up scenarios, e.g. a full guild).
async fn create_channel(AxumState(app): AxumState<App>, Json(c): Json<NewChannel>) -> Response {
    let created = app.with(|s| {
        if let Some(p) = &c.parent_id {
            if s.channels.get(p).is_none_or(|p| p.kind != kind::CATEGORY) {
                return None;
            }
        }
        Some(s.insert_channel(
            c.name.clone(),
            c.kind,
            c.parent_id.clone(),
            Vec::new(),
            None,
        ))
    });
    match created {
        Some(ch) => (StatusCode::CREATED, Json(ch.to_json())).into_response(),
        None => ApiError::unknown_channel().into_response(),
    }
}

async fn webhooks(AxumState(app): AxumState<App>) -> Response {
    Json(app.with(|s| {
        s.webhooks
            .values()
            .map(|w| {
                let mut v = serde_json::to_value(w).unwrap_or(Value::Null);
                v["url"] = json!(s.webhook_url(&w.id, &w.token));
                v
            })
            .collect::<Vec<_>>()
    }))
    .into_response()
}

#[derive(Debug, Default, Deserialize)]
struct NewWebhook {
    /// An existing channel id, or the name of a text channel to create.
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

/// `POST /_admin/webhooks {channel?, name?}` → the created webhook with `url`.
async fn create_webhook(AxumState(app): AxumState<App>, body: axum::body::Bytes) -> Response {
    let req: NewWebhook = if body.is_empty() {
        NewWebhook::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return (
                    StatusCode::BAD_REQUEST,
                    Json(json!({"message": e.to_string(), "code": 0})),
                )
                    .into_response()
            }
        }
    };
    let created = app.with(|s| {
        crate::create_webhook_in(
            s,
            req.channel.as_deref().unwrap_or("fake-webhook"),
            req.name.as_deref(),
        )
    });
    match created {
        Ok(w) => (StatusCode::CREATED, Json(w)).into_response(),
        Err(e) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"message": e.to_string(), "code": 0})),
        )
            .into_response(),
    }
}

async fn delete_webhook(AxumState(app): AxumState<App>, Path(id): Path<String>) -> Response {
    if app.with(|s| s.delete_webhook(&id)) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        ApiError::unknown_webhook().into_response()
    }
}

async fn commands(AxumState(app): AxumState<App>) -> Response {
    Json(app.with(|s| {
        s.commands
            .iter()
            .map(|((app_id, guild), cmds)| json!({"application_id": app_id, "guild_id": guild, "commands": cmds}))
            .collect::<Vec<_>>()
    }))
    .into_response()
}

async fn edits(AxumState(app): AxumState<App>) -> Response {
    Json(app.with(|s| s.edits.clone())).into_response()
}
