//! The one middleware stack every HTTP server of agentmon goes through.
//!
//! It records RED metrics labelled by *route template* (axum's `MatchedPath`),
//! never the raw path, so `/v1/runs/{id}` is one series however many runs exist;
//! it opens a span per request that continues an incoming `traceparent`; it sets
//! and echoes `x-request-id`; it bounds request bodies, request targets and
//! handling time; and it gives every error answer the contract's JSON body
//! (DESIGN.md §4), whichever layer or extractor produced it.

use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use http::{HeaderValue, StatusCode};
use prometheus::{HistogramVec, IntCounterVec};
use tokio::time::Instant;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tracing::Instrument;

use crate::metrics::{latency_buckets, Metrics, MetricsError};
use crate::trace::{self, TraceContext};

/// Header carrying a request id, set when the client did not send one.
pub const REQUEST_ID: &str = "x-request-id";

/// Longest request target (path and query) served; longer ones get 414.
/// RFC 9110 §4.1 asks servers to take at least 8000 octets; it is below the
/// 16 KiB head cap of [`crate::server::MAX_HEADER_BYTES`], so a long URI is
/// answered here, in JSON and counted, rather than by hyper's bare 431.
pub const MAX_URI_BYTES: usize = 8 * 1024;

/// The contract's error answer: `status` with `{"error":{"code","message"}}`.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

/// The HTTP server metrics, registered once per process and shared by every
/// server in it (the `service` label tells the servers apart).
#[derive(Clone, Debug)]
pub struct HttpMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
}

impl HttpMetrics {
    pub fn new(metrics: &Metrics) -> Result<Self, MetricsError> {
        Ok(Self {
            requests: metrics.counter_vec(
                "http_server_requests_total",
                "HTTP requests served, by route template and status.",
                &["service", "method", "route", "status"],
            )?,
            duration: metrics.histogram_vec(
                "http_server_request_duration_seconds",
                "Time to produce the response head, by route template.",
                &["service", "method", "route"],
                latency_buckets(),
            )?,
        })
    }
}

impl HttpMetrics {
    /// Creates the series of `service`'s known `(method, route)` pairs with each
    /// of `statuses` at zero, so a `rate()` over them (an error ratio, a request
    /// panel) has a series from the first scrape instead of none until a route
    /// is first called.
    pub fn preregister(&self, service: &str, routes: &[(&str, &str)], statuses: &[&str]) {
        for (method, route) in routes {
            for status in statuses {
                self.requests
                    .with_label_values(&[service, method, route, status]);
            }
            self.duration.with_label_values(&[service, method, route]);
        }
    }
}

/// How one server is instrumented and bounded.
#[derive(Clone, Debug)]
pub struct HttpLayer {
    /// Value of the `service` label and span field (`watcher`, `bot-bridge`).
    pub service: &'static str,
    pub metrics: HttpMetrics,
    /// Largest accepted request body; larger bodies get 413.
    pub body_limit: usize,
    /// Longest time a handler may take; slower requests get 408.
    pub timeout: Duration,
}

/// Wraps every route of `router` in the agentmon middleware stack.
///
/// From the outside in: `observe` (metrics, span, request id: it sees the
/// final status), `json_errors` (the contract's body on every error answer
/// from here inwards: the limits below, axum's 404/405 and extractor
/// rejections, a handler's plain-text error), the URI cap, the body limit,
/// the handler timeout.
pub fn instrument<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    layer: &HttpLayer,
) -> Router<S> {
    router
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            layer.timeout,
        ))
        .layer(RequestBodyLimitLayer::new(layer.body_limit))
        .layer(axum::middleware::from_fn(refuse_long_uri))
        .layer(axum::middleware::from_fn(json_errors))
        .layer(axum::middleware::from_fn_with_state(layer.clone(), observe))
}

/// 414 for a request target over [`MAX_URI_BYTES`], before the handler runs.
async fn refuse_long_uri(req: Request, next: Next) -> Response {
    let len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if len > MAX_URI_BYTES {
        return error_response(
            StatusCode::URI_TOO_LONG,
            code_of(StatusCode::URI_TOO_LONG),
            "request target too long",
        );
    }
    next.run(req).await
}

/// The stable `code` of an error status a layer, the router or an extractor
/// produced (a handler's own errors carry their own, more specific codes).
fn code_of(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 422 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "request_timeout",
        413 => "payload_too_large",
        414 => "uri_too_long",
        415 => "unsupported_media_type",
        429 => "rate_limited",
        503 => "unavailable",
        s if s >= 500 => "internal",
        _ => "error",
    }
}

/// Gives every error answer without a JSON body the contract's one: tower's
/// 408 (empty) and 413 ("length limit exceeded"), axum's 404/405 (empty) and
/// rejections (plain text). A client parses one shape whatever failed. The
/// headers that tell a client how to proceed (`Allow`, `Retry-After`) are kept.
async fn json_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let message = status
        .canonical_reason()
        .unwrap_or("request failed")
        .to_ascii_lowercase();
    let mut out = error_response(status, code_of(status), &message);
    for name in [http::header::ALLOW, http::header::RETRY_AFTER] {
        if let Some(v) = resp.headers().get(&name) {
            out.headers_mut().insert(name, v.clone());
        }
    }
    out
}

fn method_label(m: &http::Method) -> &'static str {
    // A closed set, so a client inventing methods cannot create new series.
    match *m {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

async fn observe(State(layer): State<HttpLayer>, mut req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = method_label(req.method());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let cx = match trace::extract(req.headers()) {
        Some(parent) => parent.child(),
        None => TraceContext::new_root(),
    };
    let request_id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map_or_else(|| cx.span_id(), str::to_owned);
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        req.headers_mut().insert(REQUEST_ID, v);
    }
    let span = tracing::info_span!(
        "request",
        service = layer.service,
        method,
        route = %route,
        request_id = %request_id,
        trace_id = %cx.trace_id(),
        span_id = %cx.span_id(),
    );
    let mut response = cx.scope(next.run(req)).instrument(span.clone()).await;
    let status = response.status();
    layer
        .metrics
        .requests
        .with_label_values(&[layer.service, method, &route, status.as_str()])
        .inc();
    let elapsed = start.elapsed();
    layer
        .metrics
        .duration
        .with_label_values(&[layer.service, method, &route])
        .observe(elapsed.as_secs_f64());
    span.in_scope(|| {
        tracing::debug!(
            status = status.as_u16(),
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            "request served"
        );
    });
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, v);
    }
    response
}

#[cfg(test)]
mod tests {
    use axum::body::{Body, Bytes};
    use axum::routing::{get, post};
    use tower::ServiceExt;

    use super::*;

    fn stack() -> (Router, HttpLayer) {
        let metrics = Metrics::new("test", "0").unwrap();
        let layer = HttpLayer {
            service: "test",
            metrics: HttpMetrics::new(&metrics).unwrap(),
            body_limit: 16,
            timeout: Duration::from_secs(5),
        };
        let router = Router::new()
            .route("/ok", get(|| async { "fine" }))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    "late"
                }),
            )
            .route(
                "/body",
                post(|body: Bytes| async move { body.len().to_string() }),
            )
            .route(
                "/own",
                get(|| async { error_response(StatusCode::CONFLICT, "mine", "the handler's own") }),
            )
            .route(
                "/plain",
                get(|| async {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        [("retry-after", "7")],
                        "down",
                    )
                }),
            );
        (instrument(router, &layer), layer)
    }

    async fn call(
        router: &Router,
        req: http::Request<Body>,
    ) -> (StatusCode, http::HeaderMap, String) {
        let resp = router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }

    fn counted(layer: &HttpLayer, method: &str, route: &str, status: &str) -> u64 {
        layer
            .metrics
            .requests
            .with_label_values(&["test", method, route, status])
            .get()
    }

    /// The contract's code of an answer, or a panic naming the body.
    fn code(headers: &http::HeaderMap, body: &str) -> String {
        assert_eq!(
            headers.get(http::header::CONTENT_TYPE).unwrap(),
            "application/json",
            "{body}"
        );
        assert!(
            headers.contains_key(REQUEST_ID),
            "request id kept on errors"
        );
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(v["error"]["message"].is_string(), "{v}");
        v["error"]["code"].as_str().unwrap().to_owned()
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_a_json_413_by_length_and_by_stream() {
        let (router, layer) = stack();
        // Decided on Content-Length alone: tower-http's "length limit exceeded".
        let req = http::Request::post("/body")
            .header(http::header::CONTENT_LENGTH, "17")
            .body(Body::from(vec![b'x'; 17]))
            .unwrap();
        let (status, headers, body) = call(&router, req).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(code(&headers, &body), "payload_too_large");
        // No length (a chunked upload): axum's rejection while reading.
        let req = http::Request::post("/body")
            .body(Body::from(vec![b'x'; 40]))
            .unwrap();
        let (status, headers, body) = call(&router, req).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(code(&headers, &body), "payload_too_large");
        assert_eq!(counted(&layer, "POST", "/body", "413"), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_handler_over_the_timeout_is_a_json_408_and_counted() {
        let (router, layer) = stack();
        let req = http::Request::get("/slow").body(Body::empty()).unwrap();
        let (status, headers, body) = call(&router, req).await;
        assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
        assert_eq!(code(&headers, &body), "request_timeout");
        assert_eq!(counted(&layer, "GET", "/slow", "408"), 1);
    }

    #[tokio::test]
    async fn a_uri_over_the_cap_is_a_json_414_before_the_handler() {
        let (router, layer) = stack();
        let at_cap = format!("/ok?{}", "a".repeat(MAX_URI_BYTES - 4));
        let req = http::Request::get(at_cap).body(Body::empty()).unwrap();
        assert_eq!(call(&router, req).await.0, StatusCode::OK);
        let over = format!("/ok?{}", "a".repeat(MAX_URI_BYTES - 3));
        let req = http::Request::get(over).body(Body::empty()).unwrap();
        let (status, headers, body) = call(&router, req).await;
        assert_eq!(status, StatusCode::URI_TOO_LONG);
        assert_eq!(code(&headers, &body), "uri_too_long");
        assert_eq!(counted(&layer, "GET", "/ok", "414"), 1);
    }

    #[tokio::test]
    async fn router_and_handler_errors_are_json_and_keep_their_headers() {
        let (router, layer) = stack();
        let req = http::Request::get("/no/such").body(Body::empty()).unwrap();
        let (status, headers, body) = call(&router, req).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(code(&headers, &body), "not_found");
        assert_eq!(counted(&layer, "GET", "unmatched", "404"), 1);

        let req = http::Request::delete("/ok").body(Body::empty()).unwrap();
        let (status, headers, body) = call(&router, req).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(code(&headers, &body), "method_not_allowed");
        assert!(headers.get(http::header::ALLOW).is_some(), "Allow kept");

        let req = http::Request::get("/plain").body(Body::empty()).unwrap();
        let (status, headers, body) = call(&router, req).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(code(&headers, &body), "unavailable");
        assert_eq!(headers.get(http::header::RETRY_AFTER).unwrap(), "7");

        // A handler's own JSON error and a success pass through untouched.
        let req = http::Request::get("/own").body(Body::empty()).unwrap();
        let (status, headers, body) = call(&router, req).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(code(&headers, &body), "mine");
        let req = http::Request::get("/ok").body(Body::empty()).unwrap();
        assert_eq!(call(&router, req).await.2, "fine");
    }
}
