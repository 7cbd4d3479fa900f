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

/// A turn to read and parse a hand-off body
/// ([`crate::handoff::CONCURRENT_BODIES`] at once): taken before the body
/// extractor runs, held until the answer.
pub struct BodySlot(#[allow(dead_code)] tokio::sync::OwnedSemaphorePermit);

impl axum::extract::FromRequestParts<AppState> for BodySlot {
    type Rejection = ApiError;

    async fn from_request_parts(
        _parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        state
            .inner
            .handoff_bodies
            .clone()
            .acquire_owned()
            .await
            .map(BodySlot)
            .map_err(|_| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "shutting down",
                )
            })
    }
}

/// 202 `{"accepted", "duplicates", "pending"}` once the messages are stored;
/// 200 with `accepted: 0` for a retry on a run that already completed.
pub async fn accept(
    State(state): State<AppState>,
    Extension(bearer): Extension<Bearer>,
    run_id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    _slot: BodySlot,
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::{json, Value};
    use tokio::io::AsyncWriteExt;

    use crate::app::fixture;

    const TOKEN: &str = "api-token-secret";

    /// A hand-off whose body never finishes arriving: holds a body slot.
    async fn stalled_handoff(addr: &str, run_id: &str) -> tokio::net::TcpStream {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /v1/runs/{run_id}/handoff HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\n\
             content-type: application/json\r\ncontent-length: 100000\r\n\r\n{{\"messages\": ["
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s
    }

    /// A burst of large hand-offs cannot hold more than CONCURRENT_BODIES
    /// bodies in memory at once: the next one waits its turn (before its body
    /// is read), and goes once a slot frees; the rest of the API is not held.
    #[tokio::test]
    async fn hand_off_bodies_are_read_a_few_at_a_time() {
        let (state, _) = fixture::state(fixture::settings());
        let base = fixture::serve(state).await;
        let addr = base.trim_start_matches("http://").to_owned();
        let http = reqwest::Client::new();
        let run: Value = http
            .post(format!("{base}/v1/runs"))
            .bearer_auth(TOKEN)
            .json(&json!({"task_id": "t", "attempt": 1, "short_id": "a"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let run_id = run["run_id"].as_str().unwrap().to_owned();
        let mut stalled = Vec::new();
        for _ in 0..crate::handoff::CONCURRENT_BODIES {
            stalled.push(stalled_handoff(&addr, &run_id).await);
        }
        let handoff = {
            let (http, base, run_id) = (http.clone(), base.clone(), run_id.clone());
            let token = run["run_token"].as_str().unwrap_or_default().to_owned();
            tokio::spawn(async move {
                http.post(format!("{base}/v1/runs/{run_id}/handoff"))
                    .bearer_auth(TOKEN)
                    .header("x-agentmon-run-token", token)
                    .json(&json!({"messages": [{"seq": 1, "payload": {"content": "m1"}}]}))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        };
        // The rest of the API answers meanwhile.
        let listed = http
            .get(format!("{base}/v1/runs"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(listed.status(), 200);
        // Bounded look (not synchronisation): the hand-off is still waiting.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!handoff.is_finished(), "a third body was read at once");
        // One stalled client goes away: its slot frees, the hand-off goes.
        drop(stalled.pop());
        let status = tokio::time::timeout(Duration::from_secs(10), handoff)
            .await
            .expect("the waiting hand-off went once a slot freed")
            .unwrap();
        assert_eq!(status, 202);
    }
}
