//! `POST /v1/runs/{run_id}/handoff`: a watcher hands its undelivered
//! messages to bot-bridge (see `crate::handoff` for the contract and the drain).

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::json;

use super::ApiError;
use crate::access::{Bearer, Caller};
use crate::app::AppState;
use crate::handoff::{validate, HandoffRequest, Invalid};

/// 202 `{"accepted", "duplicates", "pending"}` once the messages are stored;
/// 200 with `accepted: 0` for a retry on a run that already completed.
pub async fn accept(
    State(state): State<AppState>,
    Extension(bearer): Extension<Bearer>,
    run_id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let Path(run_id) =
        run_id.map_err(|e| ApiError::bad_request(format!("invalid request parameters: {e}")))?;
    let req: HandoffRequest = super::runs::json_body(body)?;
    let handoff = validate(req).map_err(|e| match e {
        Invalid::TooMany(_) => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            e.to_string(),
        ),
        Invalid::Bad(m) => ApiError::bad_request(m),
    })?;
    let caller = Caller::of(&bearer, &headers);
    let a = state.accept_handoff(&run_id, handoff, &caller).await?;
    let status = if a.active {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(json!({
            "accepted": a.accepted,
            "duplicates": a.duplicates,
            "pending": a.pending,
        })),
    ))
}
