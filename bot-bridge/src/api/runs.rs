//! `POST /v1/runs`, `GET /v1/runs[/{id}]`, `POST /v1/runs/{id}/complete`.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

use super::ApiError;
use crate::access::{Bearer, Caller};
use crate::app::AppState;
use crate::runs::{NewRun, RunView, RunsError};
use crate::store::{ListCursor, RunStatus};

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

/// `POST /v1/runs`: 201 when the run was created now, 200 when it existed
/// (only for its owner: see `AppState::provision`).
pub async fn create(
    State(state): State<AppState>,
    Extension(bearer): Extension<Bearer>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    // `pod` (the watcher's pod, for the reconciler) is read apart from the run's key.
    let mut raw: serde_json::Value = json_body(body)?;
    let pod = crate::reconcile::take_pod(&mut raw)?;
    let req: NewRun = serde_json::from_value(raw)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    let caller = Caller::of(&bearer, &headers);
    let heartbeats = req.heartbeats;
    let (provisioned, created) = state.provision(req, &caller).await?;
    if heartbeats {
        state.provisioned_alive(&provisioned.run_id).await?;
    }
    match caller.pod() {
        // A reviewed pod was bound (verified) at creation; its claim in the
        // body adds nothing.
        Some(verified) => {
            if created {
                state.announce_provisioned(&provisioned.run_id, &provisioned.channel_id, verified);
            }
        }
        None => {
            if let Some(pod) = pod {
                state
                    .bind_pod(&provisioned.run_id, &provisioned.channel_id, pod)
                    .await?;
            }
        }
    }
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    // The one answer that carries secrets, exposed explicitly for the caller.
    let body = protocol::RunCreated {
        run_id: provisioned.run_id,
        channel_id: provisioned.channel_id,
        webhook_url: provisioned.webhook_url,
        input_secret: Some(provisioned.input_secret),
        run_token: provisioned.run_token,
    }
    .to_json();
    Ok((status, Json(body)).into_response())
}

/// Turns a path or query extraction failure into the contract's JSON error.
fn bad_params(e: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("invalid request parameters: {e}"))
}

/// `GET /v1/runs/{run_id}`: the run without its secrets.
pub async fn get(
    State(state): State<AppState>,
    Extension(bearer): Extension<Bearer>,
    headers: HeaderMap,
    run_id: Result<Path<String>, PathRejection>,
) -> Result<Json<RunView>, ApiError> {
    let Path(run_id) = run_id.map_err(bad_params)?;
    let run = state.stored_run(&run_id).await?;
    // Behind API_TOKEN any run may be inspected; a pod reads its own only.
    let caller = Caller::of(&bearer, &headers);
    if caller.pod().is_some() {
        state.authorize(&run, &caller).await?;
    }
    Ok(Json(RunView::from(&run)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    status: Option<String>,
    /// At most this many runs (default 100, at most [`MAX_LIST`]), newest first.
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// Bounds one page so one request cannot build the whole history in memory;
/// callers page on with `cursor`.
pub const MAX_LIST: u32 = 200;

/// `(created_at, run_id)` of the last run of a page, as `{created_at}_{run_id}`.
fn parse_cursor(c: &str) -> Option<ListCursor> {
    let (at, id) = c.split_once('_')?;
    Some(ListCursor {
        created_at: at.parse().ok()?,
        run_id: id.to_owned(),
    })
}

/// `GET /v1/runs?status=active&limit=100&cursor=...`:
/// `{"runs": [...], "next_cursor": "..."|null}`, newest first.
pub async fn list(
    State(state): State<AppState>,
    Extension(bearer): Extension<Bearer>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if bearer != Bearer::ApiToken {
        state.metrics().auth.record(
            crate::auth::AuthMethod::PodToken,
            crate::auth::AuthOutcome::Forbidden,
        );
        return Err(RunsError::Forbidden("listing runs needs API_TOKEN".into()).into());
    }
    let Query(q) = q.map_err(bad_params)?;
    let status = match q.status.as_deref() {
        None | Some("") | Some("all") => None,
        Some(s) => Some(RunStatus::parse(s).ok_or_else(|| {
            ApiError::bad_request("status must be active, completed, archived or deleted")
        })?),
    };
    let after = match q.cursor.as_deref().filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => Some(parse_cursor(c).ok_or_else(|| {
            ApiError::bad_request("cursor must be the next_cursor of a previous page")
        })?),
    };
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_LIST);
    let runs = state
        .store()
        .list_runs(status, limit, after)
        .await
        .map_err(|e| {
            state.report(crate::events::ErrorKind::Store, None, &e);
            RunsError::Store(e)
        })?;
    let next = (runs.len() == limit as usize)
        .then(|| {
            runs.last()
                .map(|r| format!("{}_{}", r.created_at, r.run_id))
        })
        .flatten();
    let views: Vec<RunView> = runs.iter().map(RunView::from).collect();
    Ok(Json(json!({ "runs": views, "next_cursor": next })))
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
    Extension(bearer): Extension<Bearer>,
    run_id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<RunView>, ApiError> {
    let Path(run_id) = run_id.map_err(bad_params)?;
    let req: CompleteRequest = match &body {
        Ok(b) if b.iter().all(u8::is_ascii_whitespace) => CompleteRequest::default(),
        _ => json_body(body)?,
    };
    let caller = Caller::of(&bearer, &headers);
    let run = state.complete(&run_id, req.summary, &caller).await?;
    Ok(Json(RunView::from(&run)))
}

/// `POST /v1/runs/{run_id}/heartbeat` (owner only): 204; the run is alive
/// (see `reconcile`: silent runs are finalised).
pub async fn heartbeat(
    State(state): State<AppState>,
    Extension(bearer): Extension<Bearer>,
    run_id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let Path(run_id) = run_id.map_err(bad_params)?;
    state
        .heartbeat(&run_id, &Caller::of(&bearer, &headers))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::MAX_LIST;
    use crate::app::fixture;
    use crate::store::{RunKey, RunRecord, RunStatus};

    fn record(i: usize) -> RunRecord {
        RunRecord {
            run_id: format!("00000000-0000-0000-0000-{i:012}"),
            key: RunKey {
                task_id: "t".into(),
                attempt: "1".into(),
                short_id: format!("s{i}"),
            },
            channel_id: None,
            webhook_id: None,
            webhook_token: None,
            input_url: None,
            input_secret: ops::Secret::new("s".into()),
            token_hash: None,
            status: RunStatus::Active,
            // Several runs share a second, as in a burst of starts.
            created_at: 1_700_000_000 + i64::try_from(i / 3).unwrap(),
            completed_at: None,
            archive_due_at: None,
            summary: None,
            retention_note: None,
        }
    }

    #[tokio::test]
    async fn listing_is_capped_and_pages_with_a_cursor() {
        let (state, _) = fixture::state(fixture::settings());
        let total = MAX_LIST as usize + 25;
        for i in 0..total {
            state.store().insert_run(record(i)).await.unwrap();
        }
        let base = fixture::serve(state).await;
        let http = reqwest::Client::new();
        let page = |q: String| {
            let req = http
                .get(format!("{base}/v1/runs?{q}"))
                .bearer_auth("api-token-secret");
            async move { req.send().await.unwrap().json::<Value>().await.unwrap() }
        };
        let big = page("limit=1000".into()).await;
        assert_eq!(big["runs"].as_array().unwrap().len(), MAX_LIST as usize);
        assert!(big["next_cursor"].is_string(), "{}", big["next_cursor"]);
        // Small pages walk every run once, newest first, then stop.
        let mut seen = Vec::new();
        let mut cursor = String::new();
        loop {
            let v = page(format!("limit=7&cursor={cursor}")).await;
            for r in v["runs"].as_array().unwrap() {
                seen.push(r["run_id"].as_str().unwrap().to_owned());
            }
            match v["next_cursor"].as_str() {
                Some(c) => cursor = c.to_owned(),
                None => break,
            }
        }
        assert_eq!(seen.len(), total);
        let mut unique = seen.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), total, "a run listed twice");
        assert_eq!(seen[0], record(total - 1).run_id, "newest first");
    }
}
