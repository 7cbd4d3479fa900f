//! Wiring for `watcher run`: config → telemetry → ops server → ingest →
//! the sink loop (render → deliver → run state). The other subcommands are in
//! [`crate::cli`]; `main.rs` only parses and calls in here.

use std::sync::Arc;
use std::time::Duration;

use ops::health::{Health, Status};
use ops::telemetry::{LogTarget, TelemetryConfig};
use ops::{Metrics, Shutdown};
use tokio::time::Instant;

use crate::checkpoint::CheckpointStore;
use crate::config::{Config, SinkConfig, StartAt};
use crate::deliver::bridge::{BridgeClient, ProvisionOutcome, Provisioned, RunRequest};
use crate::deliver::dlq::Dlq;
use crate::deliver::webhook::{SenderConfig, WebhookSender};
use crate::deliver::{ConsoleSink, DeliveryObserver};
use crate::delivered::{Delivered, DeliveredLog};
use crate::events::{SinkVerdict, Telemetry, WatcherMetrics};
use crate::ingest::{IngestConfig, IngestObserver};
use crate::pipeline::{Pipeline, PipelineConfig};
use crate::render::{CostTable, Filters, RenderConfig, Renderer, RunInfo};
use crate::state::RunStore;
use crate::tail::TailConfig;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Why the watcher stopped with an error; each maps to an exit code.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Bind(#[from] ops::server::BindError),
    #[error(transparent)]
    Telemetry(#[from] ops::telemetry::TelemetryError),
    #[error(transparent)]
    Metrics(#[from] ops::metrics::MetricsError),
    #[error("state directory: {0}")]
    State(String),
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Other(String),
}

impl AppError {
    /// 2 for configuration problems (like clap), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Config(_) | Self::Bind(_) | Self::Telemetry(_) => 2,
            _ => 1,
        }
    }
}

pub(crate) fn init_telemetry(
    cfg: &Config,
    target: LogTarget,
) -> Result<ops::telemetry::TelemetryGuard, AppError> {
    Ok(ops::telemetry::init(&TelemetryConfig {
        service: "watcher",
        format: cfg.log_format,
        target,
        filter: Some(cfg.log_filter.clone()),
        otlp_endpoint: cfg.otel_exporter_otlp_endpoint.clone(),
    })?)
}

pub(crate) fn render_config(cfg: &Config) -> Result<RenderConfig, AppError> {
    let filters = match &cfg.filters {
        Some(f) => {
            Filters::from_json(f).map_err(|e| AppError::Config(format!("invalid FILTERS: {e}")))?
        }
        None => Filters::default(),
    };
    let costs = match &cfg.model_costs {
        Some(c) => CostTable::from_json(c)
            .map_err(|e| AppError::Config(format!("invalid MODEL_COSTS: {e}")))?,
        None => CostTable::builtin(),
    };
    Ok(RenderConfig {
        parity: cfg.parity_mode,
        filters,
        costs,
        run: RunInfo {
            task_id: cfg.task_id.clone(),
            attempt: cfg.attempt.clone(),
            run_id: cfg.run_id.clone(),
            short_id: cfg.short_id.clone(),
        },
        inline_output_chars: 1000,
    })
}

pub(crate) fn run_request(cfg: &Config) -> RunRequest {
    let fallback = || cfg.run_id.clone().unwrap_or_else(|| "run".to_owned());
    RunRequest {
        task_id: cfg.task_id.clone().unwrap_or_else(fallback),
        attempt: cfg.attempt.clone().unwrap_or_else(|| "1".to_owned()),
        short_id: cfg
            .short_id
            .clone()
            .unwrap_or_else(|| cfg.run_id.clone().unwrap_or_else(|| "0".to_owned())),
        input_url: cfg.input.as_ref().map(|i| i.url.clone()),
        pod: crate::deliver::bridge::PodIdentity::from_env(),
        heartbeats: true,
        run_token_file: Some(cfg.state_dir.join("run-token")),
    }
}

/// Records the decoder remembers as seen; also how many delivered uuids the
/// state directory keeps for a restart.
const DEDUPE_CAPACITY: usize = 100_000;

/// The delivered-records journal and the uuids it seeds deduplication with.
/// Uuids a checkpoint of an earlier version kept are taken out of it and
/// moved into the journal (a failure to move them is logged: it costs only
/// possible reposts after a rewrite).
fn open_delivered(
    dir: &std::path::Path,
    checkpoint: Option<&mut crate::checkpoint::Checkpoint>,
) -> Result<(DeliveredLog, Delivered), AppError> {
    let legacy = checkpoint
        .map(|c| std::mem::take(&mut c.recent_uuids))
        .unwrap_or_default();
    let (mut log, mut delivered) =
        DeliveredLog::open(dir, DEDUPE_CAPACITY).map_err(|e| AppError::State(e.to_string()))?;
    if !legacy.is_empty() {
        if let Err(e) = log.append(&legacy) {
            tracing::error!(error = %e, "cannot move the checkpoint's uuids into the delivered journal");
        }
        delivered.extend(&legacy);
    }
    if !delivered.is_empty() {
        tracing::info!(records = delivered.len(), "remembering delivered records");
    }
    Ok((log, delivered))
}

/// Retry schedule of `POST /v1/runs` while bot-bridge is unreachable or
/// unavailable: a cap of 3 s, so the run gets its channel within seconds of
/// bot-bridge's return (a refused connection costs bot-bridge nothing).
const PROVISION_RETRY: ops::Backoff = ops::Backoff {
    base: Duration::from_millis(250),
    cap: Duration::from_secs(3),
};

/// Retry schedule while bot-bridge refuses the request (token, identity):
/// only a configuration change helps, so there is no hurry.
const PROVISION_REFUSED_RETRY: ops::Backoff = ops::Backoff {
    base: Duration::from_secs(1),
    cap: Duration::from_secs(30),
};

/// Provisions the run's webhook from bot-bridge, retrying with backoff while it
/// is unavailable (transcript events wait in the bounded queue and the file).
/// Each call and each backoff sleep is a bounded wait of the `heartbeat`, so
/// a bot-bridge outage never fails liveness; the sink check and
/// `watcher_provision_attempts_total` say why there is no channel yet.
/// Shutdown ends it at once (`None`), mid-call included.
///
/// A run bot-bridge already completed (a watcher restarted after its summary,
/// or a rerun with the old identity) is not retried: it would fail forever.
/// The watcher then waits, not ready, for its shutdown instead of exiting,
/// because a native sidecar that exits is restarted into the same refusal.
async fn provision_until_ready(
    bridge: &BridgeClient,
    telemetry: &Telemetry,
    sink: &ops::health::Component,
    heartbeat: &ops::health::Heartbeat,
    shutdown: &Shutdown,
) -> Option<Provisioned> {
    let mut attempt = 0u32;
    loop {
        heartbeat.beat();
        let result = tokio::select! {
            r = heartbeat.within(
                crate::deliver::bridge::REQUEST_TIMEOUT + Duration::from_secs(5),
                bridge.provision(),
            ) => r,
            () = shutdown.wait() => return None,
        };
        let e = match result {
            Ok(p) => return Some(p),
            Err(e) => e,
        };
        let why = e.outcome().explain();
        // The watchdog keeps these current; set at once so /readyz says why
        // from the first failure.
        if e.is_run_completed() {
            let detail = format!(
                "no channel: {why}; nothing is delivered (a new run needs a new ATTEMPT): {e}"
            );
            sink.failed(detail.clone());
            telemetry.no_channel(Some(detail));
            tracing::error!(
                error = %e,
                hint = "a new run needs a new ATTEMPT",
                "bot-bridge already completed this run; not retrying"
            );
            // Parked on purpose, not stuck: keep beating until shutdown.
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => heartbeat.beat(),
                    () = shutdown.wait() => return None,
                }
            }
        }
        let detail = match e.outcome() {
            ProvisionOutcome::Unreachable => format!("no channel yet: {e}"),
            _ => format!("no channel yet: {why}: {e}"),
        };
        sink.failed(detail.clone());
        telemetry.no_channel(Some(detail));
        let backoff = if e.is_transient() {
            PROVISION_RETRY
        } else {
            tracing::error!(error = %e, "bot-bridge refused to provision the run; check BRIDGE_TOKEN (or BRIDGE_TOKEN_FILE) and the run identity");
            PROVISION_REFUSED_RETRY
        };
        let delay = backoff.delay(attempt);
        attempt = attempt.saturating_add(1);
        tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "no channel yet; will retry provisioning");
        tokio::select! {
            () = heartbeat.within(delay + Duration::from_secs(1), tokio::time::sleep(delay)) => {}
            () = shutdown.wait() => return None,
        }
    }
}

/// Operator input is signed with the secret bot-bridge issued for this run,
/// and names bot-bridge's run id.
fn set_input_secret(
    shared: &crate::input::SharedSecret,
    run_id: &crate::input::SharedRunId,
    p: &Provisioned,
) {
    if let Some(secret) = &p.input_secret {
        if let Ok(mut g) = shared.write() {
            *g = Some(secret.clone());
        }
    }
    if let Ok(mut g) = run_id.write() {
        *g = Some(p.run_id.clone());
    }
}

/// Keeps operator input signed with the secret of the run's current webhook:
/// each re-provisioning the sender publishes replaces the secret and run id
/// the input listener checks.
fn follow_provisioning(
    mut provisioned: tokio::sync::watch::Receiver<Option<Provisioned>>,
    secret: crate::input::SharedSecret,
    run_id: crate::input::SharedRunId,
) {
    tokio::spawn(async move {
        while provisioned.changed().await.is_ok() {
            let latest = provisioned.borrow_and_update().clone();
            if let Some(p) = latest {
                set_input_secret(&secret, &run_id, &p);
            }
        }
    });
}

/// Keeps the sink's health current: `/readyz`'s `sink` check, `/healthz`'s
/// data, `watcher_sink_up` and `watcher_oldest_pending_age_seconds`, from
/// what the delivery stage reported ([`crate::events::SinkTrack`]), what the
/// sink loop holds (`pending`, published as it changes) and what waits in the
/// queue. While something is pending or the sink is in trouble it refreshes
/// every [`WATCHDOG_TICK`] (an age grows, a verdict turns with time); idle, it
/// sleeps until the loop holds something again.
fn spawn_sink_watchdog(
    mut pending: tokio::sync::watch::Receiver<Option<Instant>>,
    queue: crate::queue::QueueProbe,
    component: ops::health::Component,
    telemetry: Arc<Telemetry>,
    unhealthy_after: Duration,
) {
    tokio::spawn(async move {
        loop {
            let now = Instant::now();
            let held = *pending.borrow_and_update();
            let oldest = match (held, queue.oldest()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let age = oldest.map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64());
            telemetry.metrics.oldest_pending_age.set(age);
            let (verdict, last_wall, sending, calm) = {
                let track = telemetry.sink();
                (
                    track.verdict(now, unhealthy_after),
                    track.last_success_wall.clone(),
                    track.attempt_started.is_some(),
                    track.trouble_since.is_none() && track.no_channel.is_none(),
                )
            };
            component.set_data(serde_json::json!({
                "queue_depth": queue.depth(),
                "queue_bytes": queue.bytes(),
                "oldest_pending_age_seconds": age,
                "last_delivery": last_wall,
                "last_error": telemetry.last_error(),
                "sending": sending,
            }));
            telemetry
                .metrics
                .sink_up
                .set(i64::from(verdict == SinkVerdict::Up));
            match verdict {
                SinkVerdict::Up => {
                    if component.status() != Some(Status::Ok) {
                        component.ok("delivering");
                    }
                }
                SinkVerdict::NoChannel(why) | SinkVerdict::Failing(why) => component.failed(why),
            }
            let idle = oldest.is_none() && calm;
            let wait = if idle { WATCHDOG_IDLE } else { WATCHDOG_TICK };
            tokio::select! {
                changed = pending.changed() => {
                    if changed.is_err() {
                        // The sink loop ended; its last state stays shown.
                        return;
                    }
                }
                () = tokio::time::sleep(wait) => {}
            }
        }
    });
}

/// How often the sink watchdog refreshes while something is pending.
const WATCHDOG_TICK: Duration = Duration::from_millis(200);

/// How often it refreshes while the sink is idle and well (the queue may
/// still hold a record the loop has not taken: it takes it at once, and
/// publishes what it then holds).
const WATCHDOG_IDLE: Duration = Duration::from_secs(10);

/// The watcher's routes, pre-registered in `http_server_requests_total` so an
/// error-ratio `rate()` sees a series from start-up, not from the first request.
const HTTP_ROUTES: &[(&str, &str)] = &[
    ("GET", "/livez"),
    ("GET", "/readyz"),
    ("GET", "/healthz"),
    ("GET", "/metrics"),
    ("POST", "/v1/input"),
];

/// `watcher` (run): follow, render, deliver until SIGTERM, then drain, post the
/// summary and exit within the shutdown budget.
pub async fn run(cfg: Config) -> Result<(), AppError> {
    let console = matches!(cfg.sink, SinkConfig::Console);
    let _guard = init_telemetry(
        &cfg,
        if console {
            LogTarget::Stderr
        } else {
            LogTarget::Stdout
        },
    )?;
    let metrics = Metrics::new("watcher", VERSION)?;
    let watcher_metrics = WatcherMetrics::new(&metrics)?;
    let http_metrics = ops::http::HttpMetrics::new(&metrics)?;
    http_metrics.preregister("watcher", HTTP_ROUTES, &["200", "500"]);
    let health = Health::new(VERSION);
    let transcript_health =
        health.component("transcript", true, Status::Failed, "no transcript yet");
    let sink_health = health.component("sink", true, Status::Ok, "idle");
    let state_health = health.component("state", false, Status::Ok, "writable");
    let telemetry = Arc::new(
        Telemetry::new(watcher_metrics, transcript_health).with_state_component(state_health),
    );
    let heartbeat = health.heartbeat("pipeline", Duration::from_secs(30));

    let shutdown = Shutdown::on_signals()
        .map_err(|e| AppError::Other(format!("cannot install signal handlers: {e}")))?;
    // One deadline for every stage, fixed the moment the signal arrives.
    let drain = crate::pipeline::Drain::new(shutdown.clone(), cfg.shutdown_timeout);
    tokio::spawn({
        let drain = drain.clone();
        async move {
            drain.started().await;
        }
    });
    let ops_listener = ops::server::bind("OPS_ADDR", cfg.ops_addr).await?;
    let ops_addr = ops_listener
        .local_addr()
        .map_err(|e| AppError::Io(e.to_string()))?;
    let layer = http_layer(http_metrics.clone());
    let ops_router = ops::http::instrument(
        ops::server::ops_router(health.clone(), metrics.clone()),
        &layer,
    );
    let server_stop = Shutdown::new();
    let ops_server = tokio::spawn(ops::server::serve_ops(
        ops_listener,
        ops_router,
        server_stop.clone(),
    ));

    // Operator input listens before provisioning: its URL goes to bot-bridge.
    let input_secret: crate::input::SharedSecret = Arc::new(std::sync::RwLock::new(
        cfg.input.as_ref().and_then(|i| i.secret.clone()),
    ));
    let input_run_id: crate::input::SharedRunId =
        Arc::new(std::sync::RwLock::new(cfg.run_id.clone()));
    let mut input_url = None;
    if let Some(input) = &cfg.input {
        let listener = ops::server::bind("INPUT_ADDR", input.addr).await?;
        let bound = listener
            .local_addr()
            .map_err(|e| AppError::Io(e.to_string()))?;
        // An ephemeral port (`:0`) is only known now.
        input_url = Some(
            if input.addr.port() == 0 && input.url == format!("http://{}", input.addr) {
                format!("http://{bound}")
            } else {
                input.url.clone()
            },
        );
        let router = crate::input::router(
            crate::input::InputConfig {
                fifo: input.fifo.clone(),
                secret: input_secret.clone(),
                run_id: input_run_id.clone(),
                state_dir: Some(cfg.state_dir.clone()),
                rate_per_second: 20.0,
                burst: 40.0,
                queue: 64,
            },
            telemetry.clone(),
        );
        let router = ops::http::instrument(router, &layer);
        tokio::spawn(ops::server::serve(listener, router, server_stop.clone()));
        tracing::info!(input_addr = %bound, fifo = %input.fifo.display(), "operator input listening");
    }

    let effective = serde_json::to_value(&cfg).unwrap_or_default();
    tracing::info!(version = VERSION, ops_addr = %ops_addr, config = %effective, "started");
    for warning in &cfg.warnings {
        tracing::warn!(warning = %warning, "configuration has no effect");
    }

    let store =
        CheckpointStore::open(&cfg.state_dir).map_err(|e| AppError::State(e.to_string()))?;
    let checkpoint = match store.load() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "checkpoint unreadable; starting without it");
            None
        }
    };
    if let Some(c) = &checkpoint {
        tracing::info!(
            files = c.files.len(),
            summary_posted = c.summary_posted,
            "resuming from checkpoint"
        );
    }
    let mut checkpoint = checkpoint;
    let (delivered_log, delivered) = open_delivered(&cfg.state_dir, checkpoint.as_mut())?;

    let (tx, rx) = crate::queue::bounded(cfg.queue_max_events, cfg.queue_max_bytes);
    let drain_for_sink = drain.clone();
    let ingest_cfg = IngestConfig {
        transcript_path: cfg.transcript_path.clone(),
        workspace: cfg.workspace_path.clone(),
        projects_dir: cfg.claude_projects_dir.clone(),
        start_at: match cfg.start_at {
            StartAt::Beginning => crate::ingest::StartAt::Beginning,
            StartAt::End => crate::ingest::StartAt::End,
        },
        tail: TailConfig {
            max_line_bytes: cfg.max_line_bytes,
            poll_interval: cfg.poll_interval,
            read_chunk: 64 * 1024,
        },
        dedupe_capacity: DEDUPE_CAPACITY,
        subagent_max_open: cfg.subagent_max_open,
    };
    let ingest_observer: Arc<dyn IngestObserver> = telemetry.clone();
    let ingest = tokio::spawn(crate::ingest::run(
        ingest_cfg,
        tx,
        checkpoint.clone(),
        delivered,
        ingest_observer,
        drain.clone(),
    ));

    let renderer = Renderer::new(render_config(&cfg)?);
    let run_store = RunStore::on_disk(store, delivered_log, checkpoint.unwrap_or_default());
    // The watchdog runs from here, provisioning included: records wait in
    // the queue for a channel, and their age shows.
    let pending = tokio::sync::watch::Sender::new(None);
    if matches!(cfg.sink, SinkConfig::Bridge { .. }) {
        // Before the watchdog's first look: seeing no trouble and nothing
        // pending, it would sleep its idle interval while provisioning fails.
        telemetry.no_channel(Some("no channel yet: provisioning from bot-bridge".into()));
    }
    spawn_sink_watchdog(
        pending.subscribe(),
        rx.probe(),
        sink_health.clone(),
        telemetry.clone(),
        cfg.sink_unhealthy_after,
    );
    let mut bridge_run: Option<(BridgeClient, String)> = None;
    let remote = match &cfg.sink {
        SinkConfig::Console => None,
        SinkConfig::Webhook { url } => {
            if !url.is_discord_host() {
                tracing::warn!(webhook = %url, "DISCORD_WEBHOOK_URL does not point at Discord; fine for fakes and proxies");
            }
            Some((url.clone(), None))
        }
        SinkConfig::Bridge { url, token } => {
            let mut request = run_request(&cfg);
            request.input_url = input_url.clone();
            let observer: Arc<dyn crate::deliver::bridge::ProvisionObserver> = telemetry.clone();
            let bridge = BridgeClient::new(url.clone(), token.clone(), request)
                .map_err(|e| AppError::Other(e.to_string()))?
                .with_observer(observer);
            // Provisioning sets the sink's state (/readyz) itself as it goes.
            let Some(p) =
                provision_until_ready(&bridge, &telemetry, &sink_health, &heartbeat, &shutdown)
                    .await
            else {
                tracing::info!("stopped before a channel was provisioned");
                server_stop.trigger();
                let _ = tokio::time::timeout(Duration::from_millis(200), ops_server).await;
                return Ok(());
            };
            telemetry.no_channel(None);
            set_input_secret(&input_secret, &input_run_id, &p);
            tracing::info!(run_id = %p.run_id, channel_id = %p.channel_id, webhook = %p.webhook, "run provisioned by bot-bridge");
            bridge_run = Some((bridge.clone(), p.run_id.clone()));
            crate::deliver::bridge::spawn_heartbeat(
                bridge.clone(),
                p.run_id.clone(),
                cfg.bridge_heartbeat_interval,
                shutdown.clone(),
            );
            Some((p.webhook, Some(bridge)))
        }
    };
    let pipeline_cfg = PipelineConfig::from_config(&cfg);
    let observer: Arc<dyn DeliveryObserver> = telemetry.clone();
    let sink_task = match remote {
        None => {
            let sink = ConsoleSink::new(std::io::IsTerminal::is_terminal(&std::io::stdout()));
            let pipeline =
                Pipeline::new(pipeline_cfg, renderer, run_store, sink, observer, heartbeat)
                    .publish_pending_on(pending);
            tokio::spawn(async move {
                pipeline.run(rx, drain_for_sink).await;
            })
        }
        Some((target, bridge)) => {
            let dlq = Dlq::open(&cfg.state_dir, cfg.dlq_max_bytes)
                .map_err(|e| AppError::State(e.to_string()))?;
            let sender = WebhookSender::new(
                &SenderConfig::from_config(&cfg),
                target,
                bridge,
                dlq,
                observer.clone(),
            )
            .map_err(|e| AppError::Other(e.to_string()))?;
            follow_provisioning(
                sender.provisioned(),
                input_secret.clone(),
                input_run_id.clone(),
            );
            let mut pipeline = Pipeline::new(
                pipeline_cfg,
                renderer,
                run_store,
                sender,
                observer,
                heartbeat,
            )
            .publish_pending_on(pending);
            if let Some((bridge, run_id)) = bridge_run {
                let (handoff_bridge, handoff_run) = (bridge.clone(), run_id.clone());
                pipeline = pipeline.hand_off_to(Box::new(move |over| {
                    let (bridge, run_id) = (handoff_bridge.clone(), handoff_run.clone());
                    Box::pin(async move {
                        let messages: Vec<_> =
                            over.kept.into_iter().map(|k| (k.seq, k.payload)).collect();
                        let summary = serde_json::to_value(over.stats).unwrap_or_default();
                        let answer = bridge
                            .handoff(&run_id, &messages, &summary, &over.channel_sends)
                            .await
                            .map_err(|e| e.to_string())?;
                        tracing::info!(run_id = %run_id, accepted = answer.accepted, duplicates = answer.duplicates, pending = answer.pending, "bot-bridge took the hand-off");
                        Ok(())
                    })
                }));
                pipeline = pipeline.on_complete(Box::new(move |stats| {
                    Box::pin(async move {
                        let summary = serde_json::to_value(stats).unwrap_or_default();
                        match bridge.complete(&run_id, &summary).await {
                            Ok(()) => tracing::info!(run_id = %run_id, "run completed at bot-bridge"),
                            Err(e) => {
                                tracing::warn!(run_id = %run_id, error = %e, "could not report completion to bot-bridge")
                            }
                        }
                    })
                }));
            }
            tokio::spawn(async move {
                pipeline.run(rx, drain_for_sink).await;
            })
        }
    };
    let mut sink_task = sink_task;

    // Run until SIGTERM/SIGINT, or until the pipeline ends on its own.
    let mut ingest = ingest;
    tokio::select! {
        _ = shutdown.wait() => {}
        res = &mut ingest => {
            match res {
                Ok(Ok(())) => tracing::info!("ingest finished"),
                Ok(Err(e)) => tracing::error!(error = %e, "ingest failed"),
                Err(e) => tracing::error!(error = %e, "ingest task panicked"),
            }
            shutdown.trigger();
        }
    }
    let deadline = drain.started().await;
    tracing::info!(budget_ms = drain.budget().as_millis() as u64, "draining");
    // The pipeline keeps to the deadline itself; a little grace lets it end
    // the call it cut at the deadline before it is aborted.
    if tokio::time::timeout_at(deadline + Duration::from_millis(100), &mut sink_task)
        .await
        .is_err()
    {
        tracing::warn!("shutdown budget exceeded; exiting with what is not handed over or kept still in the transcript");
        sink_task.abort();
    }
    server_stop.trigger();
    let _ = tokio::time::timeout(Duration::from_millis(200), ops_server).await;
    tracing::info!("stopped");
    Ok(())
}

/// The middleware stack of the watcher's listeners (ops and input): one
/// input's body at most, ten seconds per request.
pub fn http_layer(metrics: ops::http::HttpMetrics) -> ops::http::HttpLayer {
    ops::http::HttpLayer {
        service: "watcher",
        metrics,
        body_limit: crate::input::MAX_BODY,
        timeout: Duration::from_secs(10),
    }
}
