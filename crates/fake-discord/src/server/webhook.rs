//! "Execute Webhook" and the token-authenticated webhook routes.
//!
//! Order of checks, as on Discord: injected fault → webhook and token →
//! global and per-webhook limit (429 `user`/`global`) → `thread_id` → body
//! (400) → unadvertised per-channel limit (429 `shared`) → record.
//! A request refused with 429 uses up no slot; one refused with 400 uses the
//! webhook's and the global slot but not the channel's (no message exists).

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State as AxumState};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Map, Value};
use tokio::time::Instant;

use super::{error_with_bucket, serve_fault, unify, App, FaultOutcome, Handled, MAX_BODY};
use crate::error::ApiError;
use crate::faults::EXECUTE_ROUTE;
use crate::state::{kind, AttachmentRecord, MessageRecord};
use crate::validate::{self, codes, limits, Rejection, Violation};

pub fn routes() -> Router<App> {
    Router::new().route(
        "/webhooks/{webhook_id}/{webhook_token}",
        post(execute).get(get_by_token).delete(delete_by_token),
    )
}

/// The parsed body of an execute.
struct ExecuteBody {
    payload: Value,
    attachments: Vec<AttachmentRecord>,
    multipart: bool,
}

fn parse_wait(q: &HashMap<String, String>) -> Result<bool, Rejection> {
    match q.get("wait").map(|s| s.to_ascii_lowercase()).as_deref() {
        None | Some("false" | "0" | "") => Ok(false),
        Some("true" | "1") => Ok(true),
        Some(_) => Err(Rejection::form(vec![Violation {
            path: vec!["wait".into()],
            code: "BASE_TYPE_BOOLEAN",
            message: "Must be either true or false.".into(),
            reason: "query",
        }])),
    }
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        codes::REQUEST_TOO_LARGE,
        "Request entity too large",
    )
}

fn invalid_json() -> Rejection {
    Rejection::plain(
        codes::INVALID_JSON,
        "The request body contains invalid JSON.",
        "invalid_json",
    )
}

enum BodyError {
    Rejected(Rejection),
    Other(ApiError),
}

async fn read_body(req: Request) -> Result<ExecuteBody, BodyError> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if content_type.starts_with("multipart/form-data") {
        return read_multipart(req).await;
    }
    if !content_type.starts_with("application/json") {
        // Discord reads no fields from such a body: an empty message.
        return Err(BodyError::Rejected(Rejection::plain(
            codes::EMPTY_MESSAGE,
            "Cannot send an empty message",
            "unsupported_content_type",
        )));
    }
    let bytes = axum::body::to_bytes(req.into_body(), MAX_BODY)
        .await
        .map_err(|_| BodyError::Other(too_large()))?;
    let payload: Value =
        serde_json::from_slice(&bytes).map_err(|_| BodyError::Rejected(invalid_json()))?;
    Ok(ExecuteBody {
        payload,
        attachments: Vec::new(),
        multipart: false,
    })
}

async fn read_multipart(req: Request) -> Result<ExecuteBody, BodyError> {
    let bad = || {
        BodyError::Other(ApiError::new(
            StatusCode::BAD_REQUEST,
            codes::INVALID_FORM_BODY,
            "Invalid Form Body",
        ))
    };
    let mut form = Multipart::from_request(req, &()).await.map_err(|_| bad())?;
    let mut payload: Option<Value> = None;
    let mut fields = Map::new();
    let mut attachments = Vec::new();
    let mut total = 0usize;
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(BodyError::Other(too_large()))
            }
            Err(_) => return Err(bad()),
        };
        let name = field.name().unwrap_or("").to_owned();
        let filename = field.file_name().map(str::to_owned);
        let content_type = field.content_type().map(str::to_owned);
        if name == "payload_json" {
            let text = field.text().await.map_err(|_| bad())?;
            payload =
                Some(serde_json::from_str(&text).map_err(|_| BodyError::Rejected(invalid_json()))?);
        } else if let Some(filename) = filename {
            let bytes = field
                .bytes()
                .await
                .map_err(|_| BodyError::Other(too_large()))?;
            total += bytes.len();
            attachments.push(AttachmentRecord {
                field: name,
                filename,
                size: bytes.len(),
                content_type,
            });
        } else {
            // Discord also reads plain form fields (`content`, `username`…).
            let text = field.text().await.map_err(|_| bad())?;
            fields.insert(name, Value::String(text));
        }
    }
    if total > limits::ATTACHMENT_BYTES {
        return Err(BodyError::Other(too_large()));
    }
    let mut payload = payload.unwrap_or_else(|| Value::Object(Map::new()));
    if let Some(obj) = payload.as_object_mut() {
        for (k, v) in fields {
            obj.entry(k).or_insert(v);
        }
    }
    Ok(ExecuteBody {
        payload,
        attachments,
        multipart: true,
    })
}

async fn execute(
    AxumState(app): AxumState<App>,
    Path((id, token)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    req: Request,
) -> Response {
    let _in_flight = InFlight::enter(&app, &id);
    unify(execute_inner(app.clone(), id, token, query, req).await)
}

/// Counts an execute of one webhook as in flight until dropped (its answer
/// is built, or the client went away), for
/// `Stats::max_concurrent_executes_by_webhook`.
struct InFlight {
    app: App,
    webhook_id: String,
}

impl InFlight {
    fn enter(app: &App, webhook_id: &str) -> Self {
        app.with(|s| {
            let now = s
                .stats
                .executes_in_flight
                .entry(webhook_id.to_owned())
                .or_default();
            *now += 1;
            let now = *now;
            let max = s
                .stats
                .max_concurrent_executes_by_webhook
                .entry(webhook_id.to_owned())
                .or_default();
            *max = (*max).max(now);
        });
        Self {
            app: app.clone(),
            webhook_id: webhook_id.to_owned(),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.app.with(|s| {
            if let Some(n) = s.stats.executes_in_flight.get_mut(&self.webhook_id) {
                *n = n.saturating_sub(1);
            }
        });
    }
}

async fn execute_inner(
    app: App,
    id: String,
    token: String,
    query: HashMap<String, String>,
    req: Request,
) -> Handled {
    app.with(|s| s.stats.requests += 1);
    let fault = serve_fault(&app, EXECUTE_ROUTE, Some(&id), |s| {
        Some(s.webhook_bucket(&id, Instant::now()))
    })
    .await;
    if let FaultOutcome::Respond(r) = fault {
        return Err(r);
    }
    let now = Instant::now();
    let hook = app.with(|s| {
        let hook = s
            .webhooks
            .get(&id)
            .filter(|w| !w.deleted && w.token == token)
            .cloned();
        if hook.is_none() {
            s.stats.not_found += 1;
        }
        hook
    });
    let Some(hook) = hook else {
        return Err(ApiError::unknown_webhook().into_response());
    };
    let limited = app.with(|s| {
        s.limit_execute(&id, now)
            .inspect_err(|r| s.count_rate_limited(r.scope))
    });
    let bucket = match limited {
        Ok(b) => b,
        Err(r) => {
            tracing::info!(webhook_id = %id, scope = r.scope.as_str(), "execute rate limited");
            return Err(r.into_response());
        }
    };
    let reject = |reasons: &[&str], e: ApiError| {
        app.with(|s| s.count_rejected(reasons));
        error_with_bucket(e, &bucket)
    };
    let wait = parse_wait(&query).map_err(|r| reject(&r.reasons(), r.into()))?;
    let thread_id = query.get("thread_id").cloned();
    if let Some(thread) = &thread_id {
        let check = app.with(|s| {
            let Some(t) = s
                .channels
                .get_mut(thread)
                .filter(|t| kind::is_thread(t.kind))
            else {
                s.stats.not_found += 1;
                return Err(None);
            };
            if t.parent_id.as_deref() != Some(hook.channel_id.as_str()) {
                return Err(Some((
                    "thread_not_in_channel",
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        codes::UNKNOWN_CHANNEL,
                        "Unknown Channel",
                    ),
                )));
            }
            if t.locked {
                return Err(Some((
                    "thread_locked",
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        codes::THREAD_LOCKED,
                        "Thread is locked",
                    ),
                )));
            }
            // Posting into an archived (unlocked) thread unarchives it.
            t.archived = false;
            Ok(())
        });
        match check {
            Ok(()) => {}
            Err(None) => return Err(error_with_bucket(ApiError::unknown_channel(), &bucket)),
            Err(Some((reason, e))) => return Err(reject(&[reason], e)),
        }
    }
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(BodyError::Rejected(r)) => return Err(reject(&r.reasons(), r.into())),
        Err(BodyError::Other(e)) => return Err(reject(&["body"], e)),
    };
    let sizes: Vec<usize> = body.attachments.iter().map(|a| a.size).collect();
    let info = match validate::execute(&body.payload, &sizes) {
        Ok(info) => info,
        Err(r) => {
            tracing::info!(webhook_id = %id, reasons = ?r.reasons(), "execute rejected");
            return Err(reject(&r.reasons(), r.into()));
        }
    };
    let channel_key = thread_id.clone().unwrap_or_else(|| hook.channel_id.clone());
    let recorded = app.with(|s| {
        if let Err(retry_after) = s.channel_check(&channel_key, now) {
            s.count_rate_limited(crate::error::Scope::Shared);
            return Err(crate::error::RateLimited {
                scope: crate::error::Scope::Shared,
                retry_after,
                bucket: Some(bucket.clone()),
            });
        }
        s.count_message(&channel_key, now);
        let m = MessageRecord {
            seq: s.next_seq(),
            id: s.snowflake(),
            webhook_id: id.clone(),
            channel_id: hook.channel_id.clone(),
            thread_id: thread_id.clone(),
            received_at_unix_ms: crate::state::unix_ms(),
            received_at_mono_ms: s.mono_ms(now),
            wait,
            multipart: body.multipart,
            payload: body.payload,
            attachments: body.attachments,
        };
        s.count_accepted(&m, info.allowed_mentions, info.mentions_parse_nonempty);
        s.messages.push(m.clone());
        Ok(m)
    });
    let message = match recorded {
        Ok(m) => m,
        Err(r) => {
            tracing::info!(channel_id = %channel_key, "channel write limit hit");
            return Err(r.into_response());
        }
    };
    app.recorded.notify_waiters();
    tracing::debug!(webhook_id = %id, seq = message.seq, embeds = info.embeds, "message accepted");
    if wait {
        Ok((
            StatusCode::OK,
            bucket.headers(),
            Json(message.to_json(&hook.name)),
        )
            .into_response())
    } else {
        Ok((StatusCode::NO_CONTENT, bucket.headers(), Body::empty()).into_response())
    }
}

/// `GET /webhooks/{id}/{token}`: the webhook without its owner.
async fn get_by_token(
    AxumState(app): AxumState<App>,
    Path((id, token)): Path<(String, String)>,
) -> Response {
    let hook = app.with(|s| {
        s.webhooks
            .get(&id)
            .filter(|w| !w.deleted && w.token == token)
            .cloned()
    });
    match hook {
        Some(w) => Json(w.to_json()).into_response(),
        None => ApiError::unknown_webhook().into_response(),
    }
}

/// `DELETE /webhooks/{id}/{token}`.
async fn delete_by_token(
    AxumState(app): AxumState<App>,
    Path((id, token)): Path<(String, String)>,
) -> Response {
    let deleted = app.with(|s| {
        let ok = s
            .webhooks
            .get(&id)
            .is_some_and(|w| !w.deleted && w.token == token);
        ok && s.delete_webhook(&id)
    });
    if deleted {
        StatusCode::NO_CONTENT.into_response()
    } else {
        ApiError::unknown_webhook().into_response()
    }
}
