//! `POST /apis/authentication.k8s.io/v1/tokenreviews`: answers from the
//! table of test tokens (see [`crate::state::tokens`]).

use axum::body::Bytes;
use axum::extract::State as AxumState;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use k8s_openapi::api::authentication::v1::TokenReview;
use tokio::time::Instant;

use super::{decode, json_response, serve_fault, App};
use crate::faults::Route;
use crate::state::tokens;
use crate::status::ApiError;

pub fn routes() -> Router<App> {
    Router::new().route(
        "/apis/authentication.k8s.io/v1/tokenreviews",
        post(create).fallback(|| async { ApiError::method_not_allowed() }),
    )
}

async fn create(AxumState(app): AxumState<App>, body: Bytes) -> Response {
    if let Some(r) = serve_fault(&app, Route::TokenReviews).await {
        return r;
    }
    let mut review: TokenReview = match decode(&body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let token = review.spec.token.clone().unwrap_or_default();
    if token.is_empty() {
        return ApiError::bad_request("token is required for TokenReview in authentication")
            .into_response();
    }
    let audiences = review.spec.audiences.clone().unwrap_or_default();
    let status = app.with(|s| {
        s.stats.token_reviews += 1;
        tokens::review(
            &s.tokens,
            &token,
            &audiences,
            &s.config.api_audiences,
            Instant::now(),
            |key| s.pods.pods.get(key).and_then(|p| p.metadata.uid.clone()),
        )
    });
    review.status = Some(status);
    json_response(StatusCode::CREATED, &review)
}
