//! The watcher's telemetry: every metric of DESIGN.md §5 and the log lines that
//! go with them, behind the observer traits the pipeline reports to.
//!
//! Pipeline code never touches a registry; it calls the observer traits
//! (`IngestObserver`, `DeliveryObserver`), and this module is the one place that
//! turns those calls into metrics, health and logs.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use ops::health::Component;
use ops::metrics::{Metrics, MetricsError};
use prometheus::{Gauge, Histogram, IntCounter, IntCounterVec, IntGauge};
use tokio::time::Instant;

use crate::atomic_file::{StateFile, StateObserver};
use crate::deliver::bridge::{ProvisionObserver, ProvisionOutcome};
use crate::deliver::DeliveryObserver;
use crate::ingest::IngestObserver;
use crate::input::InputObserver;
use crate::transcript::EventKind;

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
    pub skipped_records: IntCounterVec,
    pub files_skipped: IntCounterVec,
    pub subagent_files_open: IntGauge,
    pub subagent_files_parked: IntCounter,
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
    pub sink_up: IntGauge,
    pub oldest_pending_age: Gauge,
    pub provision_attempts: IntCounterVec,
    pub state_write_errors: IntCounterVec,
    pub handoffs: IntCounterVec,
    pub handoff_messages: IntCounter,
}

/// The closed label sets, pre-registered so every series exists (at 0) from
/// the first scrape: alerts on `rate()` and `absent()` then behave.
const RATE_LIMIT_SCOPES: &[&str] = &["user", "shared", "global", "unknown"];
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
const FILE_SKIP_REASONS: &[&str] = &["not_regular_file"];
const HANDOFF_OUTCOMES: &[&str] = &["accepted", "failed", "kept"];
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
        preregister(&metrics.events_processed, &EventKind::LABELS);
        preregister(&metrics.rate_limit_hits, RATE_LIMIT_SCOPES);
        preregister(&metrics.webhook_retries, RETRY_REASONS);
        preregister(&metrics.delivery_failures, FAILURE_REASONS);
        preregister(&metrics.parse_errors, PARSE_REASONS);
        let repairs: Vec<&str> = crate::transcript::decode::Repair::ALL
            .iter()
            .map(|r| r.reason())
            .collect();
        preregister(&metrics.repaired_lines, &repairs);
        let skips: Vec<&str> = crate::transcript::decode::Skip::ALL
            .iter()
            .map(|r| r.reason())
            .collect();
        preregister(&metrics.skipped_records, &skips);
        preregister(&metrics.files_skipped, FILE_SKIP_REASONS);
        preregister(&metrics.tokens, TOKEN_TYPES);
        preregister(&metrics.handoffs, HANDOFF_OUTCOMES);
        preregister(&metrics.input_requests, INPUT_OUTCOMES);
        let files: Vec<&str> = StateFile::ALL.iter().map(|f| f.as_str()).collect();
        preregister(&metrics.state_write_errors, &files);
        let fields: Vec<&str> = discord::truncate::Field::ALL
            .iter()
            .map(|f| f.as_str())
            .collect();
        preregister(&metrics.truncations, &fields);
        let outcomes: Vec<&str> = ProvisionOutcome::ALL.iter().map(|o| o.as_str()).collect();
        preregister(&metrics.provision_attempts, &outcomes);
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
            skipped_records: m.counter_vec(
                "watcher_transcript_skipped_records_total",
                "Transcript records of a known kind dropped for their shape, by reason.",
                &["reason"],
            )?,
            files_skipped: m.counter_vec(
                "watcher_transcript_files_skipped_total",
                "Transcript paths not opened (e.g. a FIFO or device instead of a regular file), by reason.",
                &["reason"],
            )?,
            subagent_files_open: m.gauge(
                "watcher_subagent_files_open",
                "Subagent transcript files open now (at most SUBAGENT_MAX_OPEN).",
            )?,
            subagent_files_parked: m.counter(
                "watcher_subagent_files_parked_total",
                "Idle subagent files closed to stay within SUBAGENT_MAX_OPEN (reopened at their offset when they grow).",
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
            sink_up: m.gauge(
                "watcher_sink_up",
                "1 while the sink works: a channel is provisioned and no request to Discord has been unanswered or failing for SINK_UNHEALTHY_AFTER; else 0.",
            )?,
            oldest_pending_age: m.float_gauge(
                "watcher_oldest_pending_age_seconds",
                "Age of the oldest record read but not yet acknowledged by Discord (queued, batched, in flight, retried or waiting for a channel); 0 when nothing is pending.",
            )?,
            provision_attempts: m.counter_vec(
                "watcher_provision_attempts_total",
                "Calls to bot-bridge POST /v1/runs (provisioning and re-provisioning), by outcome.",
                &["outcome"],
            )?,
            state_write_errors: m.counter_vec(
                "watcher_state_write_errors_total",
                "Writes to STATE_DIR that failed, by file (checkpoint, delivered, dlq, input_ids, backlog).",
                &["file"],
            )?,
            handoffs: m.counter_vec(
                "watcher_handoff_total",
                "Shutdowns that could not deliver their backlog in the budget, by what became of it: handed to bot-bridge (accepted), refused or unanswered (failed), kept in STATE_DIR/backlog.jsonl (kept).",
                &["outcome"],
            )?,
            handoff_messages: m.counter(
                "watcher_handoff_messages_total",
                "Messages handed to bot-bridge or kept in STATE_DIR/backlog.jsonl at shutdown.",
            )?,
        })
    }
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Request latencies remembered for the shutdown plan (the largest counts).
const LATENCY_SAMPLES: usize = 8;

/// What the delivery stage's reports say about the sink, for `/readyz`'s
/// `sink` check and `watcher_sink_up`. Our own pacing (rate-limit and channel
/// window waits) is not trouble: only a request to Discord that is unanswered
/// or failing, or a run without a channel, is.
#[derive(Debug, Default)]
pub struct SinkTrack {
    /// Why there is no webhook to send to (provisioning); `None` once there is.
    pub no_channel: Option<String>,
    /// Since when requests to Discord have been unanswered or failing: set
    /// when a request goes out, kept across retries, cleared by any answer that
    /// shows Discord working (a success, a 429, a 400).
    pub trouble_since: Option<Instant>,
    /// What the last failure was (`server_error`, `network`, `provision`...).
    pub trouble: Option<String>,
    /// When the request now in flight went out.
    pub attempt_started: Option<Instant>,
    pub last_success: Option<Instant>,
    pub last_success_wall: Option<String>,
    /// The latencies of the last few successful requests.
    latencies: VecDeque<Duration>,
}

/// The sink's state as `/readyz` and `watcher_sink_up` show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkVerdict {
    /// Delivering (or idle with nothing wrong known).
    Up,
    /// No channel yet, and why.
    NoChannel(String),
    /// Requests unanswered or failing for longer than `SINK_UNHEALTHY_AFTER`.
    Failing(String),
}

impl SinkTrack {
    /// The verdict at `now`, failing only after `unhealthy_after` of trouble.
    pub fn verdict(&self, now: Instant, unhealthy_after: Duration) -> SinkVerdict {
        if let Some(why) = &self.no_channel {
            return SinkVerdict::NoChannel(why.clone());
        }
        match self.trouble_since {
            Some(since) if now.saturating_duration_since(since) > unhealthy_after => {
                let what = match (&self.trouble, self.attempt_started) {
                    (Some(t), _) => format!("retrying ({t})"),
                    (None, Some(_)) => "a request is unanswered".to_owned(),
                    (None, None) => "failing".to_owned(),
                };
                SinkVerdict::Failing(format!(
                    "no successful delivery for more than {}: {what}",
                    humantime::format_duration(unhealthy_after)
                ))
            }
            _ => SinkVerdict::Up,
        }
    }

    /// The largest latency of the last few successful requests (0 if none).
    pub fn recent_latency(&self) -> Duration {
        self.latencies.iter().copied().max().unwrap_or_default()
    }

    fn attempt(&mut self, now: Instant) {
        self.attempt_started = Some(now);
        self.trouble_since.get_or_insert(now);
    }

    /// Discord answered in a way that shows it works.
    fn answered(&mut self) {
        self.attempt_started = None;
        self.trouble_since = None;
        self.trouble = None;
    }

    fn delivered(&mut self, now: Instant) {
        if let Some(started) = self.attempt_started {
            if self.latencies.len() == LATENCY_SAMPLES {
                self.latencies.pop_front();
            }
            self.latencies
                .push_back(now.saturating_duration_since(started));
        }
        self.answered();
        self.last_success = Some(now);
        self.last_success_wall =
            Some(humantime::format_rfc3339_millis(SystemTime::now()).to_string());
    }

    fn failed(&mut self, reason: &str, now: Instant) {
        self.attempt_started = None;
        self.trouble_since.get_or_insert(now);
        self.trouble = Some(reason.to_owned());
    }
}

/// The observer handed to ingest and delivery.
pub struct Telemetry {
    pub metrics: WatcherMetrics,
    /// Readiness: "no transcript yet" until a file is followed.
    pub transcript: Component,
    /// Last delivery error, shown in `/healthz`.
    pub last_error: Mutex<Option<String>>,
    sink: Mutex<SinkTrack>,
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
            sink: Mutex::new(SinkTrack::default()),
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

    /// What the delivery stage reported about the sink so far.
    pub fn sink(&self) -> MutexGuard<'_, SinkTrack> {
        // Every update is a few assignments: a panic cannot leave it torn.
        self.sink
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// No channel to send to yet (provisioning), and why; `None` once there is.
    pub fn no_channel(&self, why: Option<String>) {
        self.sink().no_channel = why;
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
    fn skipped_record(&self, reason: &'static str, file: &str, offset: u64) {
        self.metrics
            .skipped_records
            .with_label_values(&[reason])
            .inc();
        tracing::warn!(
            reason,
            file,
            offset,
            "dropped a transcript record of the wrong shape"
        );
    }
    fn file_skipped(&self, reason: &'static str, file: &str) {
        self.metrics
            .files_skipped
            .with_label_values(&[reason])
            .inc();
        tracing::warn!(
            reason,
            file,
            "not reading a transcript path that is not a regular file"
        );
    }
    fn subagent_files_open(&self, open: usize) {
        self.metrics
            .subagent_files_open
            .set(i64::try_from(open).unwrap_or(i64::MAX));
    }
    fn subagent_parked(&self) {
        self.metrics.subagent_files_parked.inc();
    }
    fn subagent_cap_reached(&self, cap: usize, tracked: usize) {
        tracing::warn!(
            cap,
            tracked,
            "SUBAGENT_MAX_OPEN reached: idle subagent files are closed and reopened at their offset when they grow"
        );
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
    fn attempt(&self) {
        self.sink().attempt(Instant::now());
    }
    fn sent(&self, embeds: usize, bytes: usize) {
        self.sink().delivered(Instant::now());
        self.metrics.messages_sent.inc();
        self.metrics.embeds_sent.inc_by(embeds as u64);
        self.metrics.bytes_sent.inc_by(bytes as u64);
        self.metrics.last_delivery.set(now_secs());
    }
    fn rate_limited(&self, scope: &'static str) {
        self.sink().answered();
        self.metrics
            .rate_limit_hits
            .with_label_values(&[scope])
            .inc();
    }
    fn retry(&self, reason: &'static str) {
        self.sink().failed(reason, Instant::now());
        self.metrics
            .webhook_retries
            .with_label_values(&[reason])
            .inc();
        self.set_error(format!("retrying: {reason}"));
    }
    fn dead_lettered(&self, reason: &'static str, detail: &str, dropped_by_cap: u64) {
        if reason == "rejected" {
            // Discord answered (400): it works, the message was wrong.
            self.sink().answered();
        } else {
            self.sink().failed(reason, Instant::now());
        }
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
    fn dlq_replayed(&self) {
        self.metrics.dlq_replayed.inc();
    }
    fn handoff(&self, outcome: &'static str, messages: usize) {
        self.metrics.handoffs.with_label_values(&[outcome]).inc();
        if outcome != "failed" {
            self.metrics.handoff_messages.inc_by(messages as u64);
        }
    }
    fn queue(&self, depth: usize, bytes: usize) {
        self.metrics
            .queue_depth
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
        self.metrics
            .queue_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }
    fn usage(&self, usage: &crate::transcript::Usage) {
        Telemetry::usage(self, usage);
    }
    fn cost(&self, usd: f64) {
        Telemetry::cost(self, usd);
    }
    fn latency_estimate(&self) -> Duration {
        let sink = self.sink();
        let in_flight = sink
            .attempt_started
            .map(|t| t.elapsed())
            .unwrap_or_default();
        sink.recent_latency().max(in_flight)
    }
}

impl ProvisionObserver for Telemetry {
    fn provision_attempt(&self, outcome: ProvisionOutcome) {
        self.metrics
            .provision_attempts
            .with_label_values(&[outcome.as_str()])
            .inc();
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    const AFTER: Duration = Duration::from_secs(5);

    #[tokio::test(start_paused = true)]
    async fn an_unanswered_request_fails_the_sink_after_the_threshold_and_a_success_clears_it() {
        let mut t = SinkTrack::default();
        assert_eq!(t.verdict(Instant::now(), AFTER), SinkVerdict::Up);
        t.attempt(Instant::now());
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(t.verdict(Instant::now(), AFTER), SinkVerdict::Up);
        tokio::time::advance(Duration::from_secs(2)).await;
        let SinkVerdict::Failing(why) = t.verdict(Instant::now(), AFTER) else {
            panic!("a request unanswered for 6 s fails the sink");
        };
        assert!(why.contains("no successful delivery"), "{why}");
        t.delivered(Instant::now());
        assert_eq!(t.verdict(Instant::now(), AFTER), SinkVerdict::Up);
        assert_eq!(t.recent_latency(), Duration::from_secs(6));
    }

    #[tokio::test(start_paused = true)]
    async fn failures_keep_the_trouble_clock_across_retries_and_pacing_is_no_trouble() {
        let mut t = SinkTrack::default();
        for _ in 0..3 {
            t.attempt(Instant::now());
            t.failed("server_error", Instant::now());
            tokio::time::advance(Duration::from_secs(2)).await;
        }
        let SinkVerdict::Failing(why) = t.verdict(Instant::now(), AFTER) else {
            panic!("6 s of 503s fail the sink");
        };
        assert!(why.contains("server_error"), "{why}");
        t.attempt(Instant::now());
        t.answered(); // a 429: Discord works, we wait our turn
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(
            t.verdict(Instant::now(), AFTER),
            SinkVerdict::Up,
            "waiting for a permit is not an outage"
        );
    }

    #[test]
    fn no_channel_wins_and_names_why() {
        let t = SinkTrack {
            no_channel: Some("no channel yet: bot-bridge unreachable".into()),
            ..SinkTrack::default()
        };
        assert_eq!(
            t.verdict(Instant::now(), AFTER),
            SinkVerdict::NoChannel("no channel yet: bot-bridge unreachable".into())
        );
    }
}
