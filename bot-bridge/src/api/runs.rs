//! `POST /v1/runs`, `GET /v1/runs[/{id}]`, `POST /v1/runs/{id}/complete`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

use super::ApiError;
use crate::app::AppState;
use crate::runs::{NewRun, RunView, RunsError};
use crate::store::RunStatus;

/// Reads a JSON body, turning every failure into a JSON error answer.
pub(crate) fn json_body<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let body = body.map_err(|e| {
        let status = e.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(status, "payload_too_large", "request body too large")
        } else {
            ApiError::bad_request("cannot read the request body")
        }
    })?;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// `POST /v1/runs`: 201 when the run was created now, 200 when it existed.
pub async fn create(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: NewRun = json_body(body)?;
    let (provisioned, created) = state.provision(req).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    // The one answer that carries secrets, exposed explicitly for the caller.
    let body = json!({
        "run_id": provisioned.run_id,
        "channel_id": provisioned.channel_id,
        "webhook_url": provisioned.webhook_url.expose(),
        "input_secret": provisioned.input_secret.expose(),
    });
    Ok((status, Json(body)).into_response())
}

/// `GET /v1/runs/{run_id}`: the run without its secrets.
pub async fn get(
    State(state): State<AppState>,
    Path(run_id): Path<String>,
) -> Result<Json<RunView>, ApiError> {
    let run = state
        .store()
        .get_run(run_id)
        .await
        .map_err(|e| {
            state.report(crate::events::ErrorKind::Store, None, &e);
            RunsError::Store(e)
        })?
        .ok_or(RunsError::NotFound)?;
    Ok(Json(RunView::from(&run)))
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    status: Option<String>,
    /// At most this many runs (default 100, at most 1000), newest first.
    limit: Option<u32>,
}

/// Bounds a listing so one request cannot read the whole history.
const MAX_LIST: u32 = 1000;

/// `GET /v1/runs?status=active&limit=100`: `{"runs": [...]}`, newest first.
pub async fn list(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let status = match q.status.as_deref() {
        None | Some("") | Some("all") => None,
        Some(s) => Some(RunStatus::parse(s).ok_or_else(|| {
            ApiError::bad_request("status must be active, completed, archived or deleted")
        })?),
    };
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_LIST);
    let runs = state.store().list_runs(status, limit).await.map_err(|e| {
        state.report(crate::events::ErrorKind::Store, None, &e);
        RunsError::Store(e)
    })?;
    let views: Vec<RunView> = runs.iter().map(RunView::from).collect();
    Ok(Json(json!({ "runs": views })))
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CompleteRequest {
    #[serde(default)]
    summary: Option<serde_json::Value>,
}

/// `POST /v1/runs/{run_id}/complete`: 200 with the run, also when repeated.
pub async fn complete(
    State(state): State<AppState>,
    Path(run_id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<RunView>, ApiError> {
    let req: CompleteRequest = match &body {
        Ok(b) if b.iter().all(u8::is_ascii_whitespace) => CompleteRequest::default(),
        _ => json_body(body)?,
    };
    let run = state.complete(&run_id, req.summary).await?;
    Ok(Json(RunView::from(&run)))
}
