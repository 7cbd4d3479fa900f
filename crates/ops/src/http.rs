//! The one middleware stack every HTTP server of agentmon goes through.
//!
//! It records RED metrics labelled by *route template* (axum's `MatchedPath`),
//! never the raw path, so `/v1/runs/{id}` is one series however many runs exist;
//! it opens a span per request that continues an incoming `traceparent`; it sets
//! and echoes `x-request-id`; and it bounds request bodies and handling time.

use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use http::HeaderValue;
use prometheus::{HistogramVec, IntCounterVec};
use tokio::time::Instant;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tracing::Instrument;

use crate::metrics::{latency_buckets, Metrics, MetricsError};
use crate::trace::{self, TraceContext};

/// Header carrying a request id, set when the client did not send one.
pub const REQUEST_ID: &str = "x-request-id";

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
pub fn instrument<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    layer: &HttpLayer,
) -> Router<S> {
    router
        .layer(TimeoutLayer::with_status_code(
            http::StatusCode::REQUEST_TIMEOUT,
            layer.timeout,
        ))
        .layer(RequestBodyLimitLayer::new(layer.body_limit))
        .layer(axum::middleware::from_fn_with_state(layer.clone(), observe))
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
