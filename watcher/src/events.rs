//! The watcher's telemetry: every metric of DESIGN.md §5 and the log lines that
//! go with them, behind the observer traits the pipeline reports to.
//!
//! Pipeline code never touches a registry; it calls the observer traits
//! (`IngestObserver`, `DeliveryObserver`), and this module is the one place that
//! turns those calls into metrics, health and logs.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use ops::health::Component;
use ops::metrics::{Metrics, MetricsError};
use prometheus::{Gauge, Histogram, IntCounter, IntCounterVec, IntGauge};

use crate::atomic_file::{StateFile, StateObserver};
use crate::deliver::DeliveryObserver;
use crate::ingest::IngestObserver;
use crate::input::InputObserver;

/// Buckets of `watcher_latency_seconds` (append → acknowledged), DESIGN.md §5.
pub fn latency_buckets() -> Vec<f64> {
    vec![
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ]
}

/// All watcher metrics, registered once at start-up.
#[derive(Clone)]
pub struct WatcherMetrics {
    pub events_processed: IntCounterVec,
    pub embeds_sent: IntCounter,
    pub messages_sent: IntCounter,
    pub bytes_sent: IntCounter,
    pub rate_limit_hits: IntCounterVec,
    pub webhook_retries: IntCounterVec,
    pub delivery_failures: IntCounterVec,
    pub dlq_messages: IntCounter,
    pub dlq_dropped: IntCounter,
    pub dlq_replayed: IntCounter,
    pub truncations: IntCounterVec,
    pub parse_errors: IntCounterVec,
    pub repaired_lines: IntCounterVec,
    pub bytes_read: IntCounter,
    pub rotations: IntCounter,
    pub oversize_lines: IntCounter,
    pub queue_depth: IntGauge,
    pub queue_bytes: IntGauge,
    pub latency: Histogram,
    pub last_delivery: Gauge,
    pub last_event: Gauge,
    pub session_cost: Gauge,
    pub tokens: IntCounterVec,
    pub input_requests: IntCounterVec,
    pub state_write_errors: IntCounterVec,
}

/// The closed label sets, pre-registered so every series exists (at 0) from
/// the first scrape: alerts on `rate()` and `absent()` then behave.
const EVENT_KINDS: &[&str] = &[
    "session_meta",
    "user_prompt",
    "assistant_text",
    "thinking",
    "tool_use",
    "tool_result",
    "notice",
    "usage",
    "title",
];
const RATE_LIMIT_SCOPES: &[&str] = &["user", "shared", "global"];
const RETRY_REASONS: &[&str] = &["server_error", "network", "provision"];
const FAILURE_REASONS: &[&str] = &["rejected", "webhook_gone", "retries_exhausted"];
const PARSE_REASONS: &[&str] = &[
    "torn",
    "nul",
    "invalid_utf8",
    "surrogate",
    "not_object",
    "oversize",
];
const TOKEN_TYPES: &[&str] = &["input", "output", "cache_write", "cache_read"];
const INPUT_OUTCOMES: &[&str] = &[
    "accepted",
    "bad_request",
    "unauthorized",
    "forbidden",
    "duplicate",
    "too_large",
    "rate_limited",
    "unavailable",
];

fn preregister(vec: &IntCounterVec, labels: &[&str]) {
    for l in labels {
        let _ = vec.with_label_values(&[l]);
    }
}

impl WatcherMetrics {
    pub fn new(m: &Metrics) -> Result<Self, MetricsError> {
        let metrics = Self::register(m)?;
        preregister(&metrics.events_processed, EVENT_KINDS);
        preregister(&metrics.rate_limit_hits, RATE_LIMIT_SCOPES);
        preregister(&metrics.webhook_retries, RETRY_REASONS);
        preregister(&metrics.delivery_failures, FAILURE_REASONS);
        preregister(&metrics.parse_errors, PARSE_REASONS);
        let repairs: Vec<&str> = crate::transcript::decode::Repair::ALL
            .iter()
            .map(|r| r.reason())
            .collect();
        preregister(&metrics.repaired_lines, &repairs);
        preregister(&metrics.tokens, TOKEN_TYPES);
        preregister(&metrics.input_requests, INPUT_OUTCOMES);
        let files: Vec<&str> = StateFile::ALL.iter().map(|f| f.as_str()).collect();
        preregister(&metrics.state_write_errors, &files);
        let fields: Vec<&str> = discord::truncate::Field::ALL
            .iter()
            .map(|f| f.as_str())
            .collect();
        preregister(&metrics.truncations, &fields);
        Ok(metrics)
    }

    fn register(m: &Metrics) -> Result<Self, MetricsError> {
        Ok(Self {
            events_processed: m.counter_vec(
                "watcher_events_processed_total",
                "Transcript events decoded, by kind.",
                &["kind"],
            )?,
            embeds_sent: m.counter("watcher_embeds_sent_total", "Embeds accepted by Discord.")?,
            messages_sent: m.counter(
                "watcher_messages_sent_total",
                "Webhook messages accepted by Discord.",
            )?,
            bytes_sent: m.counter(
                "watcher_bytes_sent_total",
                "Payload bytes of accepted webhook messages.",
            )?,
            rate_limit_hits: m.counter_vec(
                "watcher_rate_limit_hits_total",
                "429 answers received, by scope (honoured, not failures).",
                &["scope"],
            )?,
            webhook_retries: m.counter_vec(
                "watcher_webhook_retries_total",
                "Webhook sends retried after a transient failure, by reason.",
                &["reason"],
            )?,
            delivery_failures: m.counter_vec(
                "watcher_delivery_failures_total",
                "Messages that could not be delivered (dead-lettered), by reason.",
                &["reason"],
            )?,
            dlq_messages: m.counter(
                "watcher_dlq_messages_total",
                "Messages written to the dead-letter queue.",
            )?,
            dlq_dropped: m.counter(
                "watcher_dlq_dropped_total",
                "Dead-lettered messages removed by the DLQ size cap.",
            )?,
            dlq_replayed: m.counter(
                "watcher_dlq_replayed_total",
                "Dead-lettered messages re-sent successfully.",
            )?,
            truncations: m.counter_vec(
                "watcher_truncations_total",
                "Text cut to fit Discord's limits, by field.",
                &["field"],
            )?,
            parse_errors: m.counter_vec(
                "watcher_transcript_parse_errors_total",
                "Transcript lines that could not be decoded, by reason.",
                &["reason"],
            )?,
            repaired_lines: m.counter_vec(
                "watcher_transcript_repaired_lines_total",
                "Damaged transcript lines that decoded after a repair, by what was repaired.",
                &["reason"],
            )?,
            bytes_read: m.counter(
                "watcher_transcript_bytes_read_total",
                "Bytes read from transcript files.",
            )?,
            rotations: m.counter(
                "watcher_transcript_rotations_total",
                "Transcript truncations, replacements and rewrites detected.",
            )?,
            oversize_lines: m.counter(
                "watcher_transcript_oversize_lines_total",
                "Transcript lines skipped for exceeding MAX_LINE_BYTES.",
            )?,
            queue_depth: m.gauge(
                "watcher_queue_depth",
                "Records waiting between tail and delivery.",
            )?,
            queue_bytes: m.gauge(
                "watcher_queue_bytes",
                "Bytes of records waiting between tail and delivery.",
            )?,
            latency: m.histogram(
                "watcher_latency_seconds",
                "Time from reading a transcript line to Discord acknowledging it.",
                latency_buckets(),
            )?,
            last_delivery: m.float_gauge(
                "watcher_last_delivery_timestamp_seconds",
                "Unix time of the last accepted webhook message.",
            )?,
            last_event: m.float_gauge(
                "watcher_last_event_timestamp_seconds",
                "Unix time the last transcript record was read.",
            )?,
            session_cost: m.float_gauge(
                "watcher_session_cost_usd",
                "Estimated cost of the session so far (priced models only).",
            )?,
            tokens: m.counter_vec(
                "watcher_tokens_total",
                "Tokens used by the session, by type.",
                &["type"],
            )?,
            input_requests: m.counter_vec(
                "watcher_input_requests_total",
                "Operator input requests on /v1/input, by outcome.",
                &["outcome"],
            )?,
            state_write_errors: m.counter_vec(
                "watcher_state_write_errors_total",
                "Writes to STATE_DIR that failed, by file (checkpoint, delivered, dlq, input_ids).",
                &["file"],
            )?,
        })
    }
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The observer handed to ingest and delivery.
pub struct Telemetry {
    pub metrics: WatcherMetrics,
    /// Readiness: "no transcript yet" until a file is followed.
    pub transcript: Component,
    /// Last delivery error, shown in `/healthz`.
    pub last_error: Mutex<Option<String>>,
    /// `/healthz` component "state": degraded while a state file cannot be
    /// written (not a readiness check: a restart does not fix a full disk).
    state: Option<Component>,
    /// The files whose last write failed, with the error.
    failing_state: Mutex<std::collections::BTreeMap<StateFile, String>>,
}

impl Telemetry {
    pub fn new(metrics: WatcherMetrics, transcript: Component) -> Self {
        Self {
            metrics,
            transcript,
            last_error: Mutex::new(None),
            state: None,
            failing_state: Mutex::new(std::collections::BTreeMap::new()),
        }
    }

    /// Reports state write failures in `component` as well.
    #[must_use]
    pub fn with_state_component(mut self, component: Component) -> Self {
        self.state = Some(component);
        self
    }

    fn show_state(&self, failing: &std::collections::BTreeMap<StateFile, String>) {
        let Some(c) = &self.state else { return };
        if failing.is_empty() {
            c.ok("writable");
        } else {
            let detail: Vec<String> = failing
                .iter()
                .map(|(f, e)| format!("cannot write {}: {e}", f.as_str()))
                .collect();
            c.degraded(detail.join("; "));
        }
    }

    fn set_error(&self, e: String) {
        if let Ok(mut g) = self.last_error.lock() {
            *g = Some(e);
        }
    }

    /// Token growth of one API response (`watcher_tokens_total{type}`).
    pub fn usage(&self, u: &crate::transcript::Usage) {
        for (kind, n) in [
            ("input", u.input_tokens),
            ("output", u.output_tokens),
            ("cache_write", u.cache_creation_input_tokens),
            ("cache_read", u.cache_read_input_tokens),
        ] {
            if n > 0 {
                self.metrics.tokens.with_label_values(&[kind]).inc_by(n);
            }
        }
    }

    /// The session's estimated cost over the priced models (an unpriced
    /// model adds nothing here; the summary names it as unknown).
    pub fn cost(&self, usd: f64) {
        self.metrics.session_cost.set(usd);
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|g| g.clone())
    }
}

impl IngestObserver for Telemetry {
    fn bytes_read(&self, n: u64) {
        self.metrics.bytes_read.inc_by(n);
    }
    fn parse_error(&self, reason: &'static str, file: &str, offset: u64) {
        self.metrics.parse_errors.with_label_values(&[reason]).inc();
        tracing::warn!(
            reason,
            file,
            offset,
            "skipped a transcript line that could not be decoded"
        );
    }
    fn repaired(&self, reason: &'static str, file: &str, offset: u64) {
        self.metrics
            .repaired_lines
            .with_label_values(&[reason])
            .inc();
        tracing::info!(reason, file, offset, "repaired a damaged transcript line");
    }
    fn oversize_line(&self, file: &str, offset: u64, len: u64) {
        self.metrics.oversize_lines.inc();
        self.metrics
            .parse_errors
            .with_label_values(&["oversize"])
            .inc();
        tracing::warn!(file, offset, len, "skipped an oversize transcript line");
    }
    fn rotation(&self, file: &str, reason: &'static str) {
        self.metrics.rotations.inc();
        tracing::info!(
            file,
            reason,
            "transcript rotated; re-reading from the start (delivered records are not re-posted)"
        );
    }
    fn event(&self, kind: &'static str) {
        self.metrics
            .events_processed
            .with_label_values(&[kind])
            .inc();
    }
    fn record_seen(&self) {
        self.metrics.last_event.set(now_secs());
    }
    fn waiting_for_transcript(&self, detail: &str) {
        self.transcript
            .failed(format!("no transcript yet: {detail}"));
    }
    fn following(&self, file: &str) {
        self.transcript.ok(format!("following {file}"));
        tracing::info!(file, "following transcript");
    }
    fn session_switched(&self, file: &str) {
        self.transcript.ok(format!("following {file}"));
        tracing::info!(file, "switched to a new session file");
    }
}

impl DeliveryObserver for Telemetry {
    fn sent(&self, embeds: usize, bytes: usize) {
        self.metrics.messages_sent.inc();
        self.metrics.embeds_sent.inc_by(embeds as u64);
        self.metrics.bytes_sent.inc_by(bytes as u64);
        self.metrics.last_delivery.set(now_secs());
    }
    fn rate_limited(&self, scope: &'static str) {
        self.metrics
            .rate_limit_hits
            .with_label_values(&[scope])
            .inc();
    }
    fn retry(&self, reason: &'static str) {
        self.metrics
            .webhook_retries
            .with_label_values(&[reason])
            .inc();
        self.set_error(format!("retrying: {reason}"));
    }
    fn dead_lettered(&self, reason: &'static str, detail: &str, dropped_by_cap: u64) {
        self.metrics
            .delivery_failures
            .with_label_values(&[reason])
            .inc();
        self.metrics.dlq_messages.inc();
        self.metrics.dlq_dropped.inc_by(dropped_by_cap);
        self.set_error(format!("dead-lettered ({reason}): {detail}"));
        tracing::error!(reason, error = %detail, "message dead-lettered; see `watcher dlq list`");
        if dropped_by_cap > 0 {
            tracing::warn!(
                dropped = dropped_by_cap,
                "DLQ size cap reached; oldest entries removed"
            );
        }
    }
    fn acked(&self, latency: Duration) {
        self.metrics.latency.observe(latency.as_secs_f64());
    }
    fn truncated(&self, field: &'static str) {
        self.metrics.truncations.with_label_values(&[field]).inc();
    }
    fn reprovisioned(&self) {}
}

impl StateObserver for Telemetry {
    fn write_failed(&self, file: StateFile, error: &dyn std::fmt::Display) {
        self.metrics
            .state_write_errors
            .with_label_values(&[file.as_str()])
            .inc();
        tracing::error!(file = file.as_str(), error = %error, "cannot write state file");
        if let Ok(mut failing) = self.failing_state.lock() {
            failing.insert(file, error.to_string());
            self.show_state(&failing);
        }
    }
    fn written(&self, file: StateFile) {
        if let Ok(mut failing) = self.failing_state.lock() {
            if failing.remove(&file).is_some() {
                tracing::info!(file = file.as_str(), "state file writable again");
                self.show_state(&failing);
            }
        }
    }
}

impl InputObserver for Telemetry {
    fn outcome(&self, outcome: &'static str) {
        self.metrics
            .input_requests
            .with_label_values(&[outcome])
            .inc();
    }
}
