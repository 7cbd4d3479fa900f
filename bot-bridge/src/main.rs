//! `bot-bridge` binary: parse config, initialise telemetry, wire, serve, exit.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bot_bridge::config::{self, Config, Database};
use bot_bridge::events::BridgeMetrics;
use bot_bridge::guild::rest::{MetricsObserver, RestDiscord};
use bot_bridge::leader::{self, Leadership, LeadershipChanged};
use bot_bridge::relay::Relay;
use bot_bridge::store::postgres::PostgresStore;
use bot_bridge::store::sqlite::SqliteStore;
use bot_bridge::store::{RunStore, StoreError};
use bot_bridge::{AppState, HealthParts, Settings};
use clap::CommandFactory;
use ops::http::HttpMetrics;
use ops::telemetry::{LogTarget, TelemetryConfig};
use ops::{Health, Metrics, Shutdown};

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn main() -> ExitCode {
    let command = config::Cli::command();
    let matches = match command.clone().try_get_matches() {
        Ok(m) => m,
        // Prints help/version (exit 0) or a usage error (exit 2).
        Err(e) => e.exit(),
    };
    let cfg = match config::load(&command, &matches) {
        Ok((_, cfg)) => cfg,
        Err(e) => {
            eprintln!("bot-bridge: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bot-bridge: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        // A rollback onto a schema this binary does not know: a configuration
        // problem an operator must fix (exit 2, like a bad setting), not a crash.
        Err(e) if matches!(e.downcast_ref(), Some(StoreError::SchemaTooNew { .. })) => {
            eprintln!("bot-bridge: {e:#}");
            tracing::error!(error = %format!("{e:#}"), "refusing to start");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("bot-bridge: {e:#}");
            tracing::error!(error = %format!("{e:#}"), "bot-bridge failed");
            ExitCode::from(1)
        }
    }
}

async fn run(cfg: Config) -> anyhow::Result<()> {
    let _telemetry = ops::telemetry::init(&TelemetryConfig {
        service: "bot-bridge",
        format: cfg.log_format,
        target: LogTarget::Stdout,
        filter: Some(cfg.log_filter.clone()),
        otlp_endpoint: cfg.otel_exporter_otlp_endpoint.clone(),
    })?;
    tracing::info!(config = %serde_json::to_string(&cfg).unwrap_or_default(), "starting bot-bridge");
    if !cfg.operators.is_configured() {
        tracing::warn!(
            "no operators configured: every /input is refused; set OPERATOR_ROLE_IDS or OPERATOR_USER_IDS"
        );
    }
    let shutdown = Shutdown::on_signals().context("cannot install signal handlers")?;

    let metrics = Metrics::new("bridge", VERSION)?;
    let bridge_metrics = BridgeMetrics::new(&metrics)?;
    let http_metrics = HttpMetrics::new(&metrics)?;
    http_metrics.preregister(
        "bot-bridge",
        bot_bridge::app::HTTP_ROUTES,
        bot_bridge::app::HTTP_STATUSES,
    );
    let health = Health::new(VERSION);
    let parts = HealthParts::register(&health);

    let store: Arc<dyn RunStore> = match &cfg.database {
        Database::Sqlite { path } => match SqliteStore::open(path) {
            Ok(s) => Arc::new(s),
            Err(e @ StoreError::SchemaTooNew { .. }) => return Err(e.into()),
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("cannot open DATABASE_URL {}", path.display())))
            }
        },
        Database::Memory => Arc::new(SqliteStore::memory()?),
        Database::Postgres {
            url,
            max_connections,
        } => {
            let max = usize::try_from(*max_connections).unwrap_or(10);
            match PostgresStore::connect(url, max).await {
                Ok(s) => Arc::new(s),
                Err(e @ StoreError::SchemaTooNew { .. }) => return Err(e.into()),
                // The URL is not repeated: it carries the password.
                Err(e) => {
                    return Err(
                        anyhow::Error::new(e).context("cannot open the Postgres DATABASE_URL")
                    )
                }
            }
        }
    };
    let discord = RestDiscord::new(
        &cfg.discord_api_base,
        cfg.discord_bot_token.clone(),
        Duration::from_secs(10),
        Arc::new(MetricsObserver(bridge_metrics.clone())),
    )
    .context("cannot set up the Discord client")?;
    // Replicas on one Postgres share Discord's global budget through it.
    let discord = match &cfg.database {
        Database::Postgres { .. } => discord.with_shared_budget(store.clone()),
        _ => discord,
    };
    let state = AppState::new(
        Settings::from_config(&cfg),
        store,
        Arc::new(discord),
        bridge_metrics,
        Relay::new(Duration::from_secs(10))?,
        Some(parts.clone()),
    );
    state.init_gauges().await?;
    parts.store.ok("open");

    let layer = bot_bridge::api::http_layer(http_metrics.clone());
    let api = ops::http::instrument(bot_bridge::api_router(state.clone()), &layer);
    let ops_router = ops::http::instrument(
        ops::server::ops_router(health.clone(), metrics.clone()),
        &layer,
    );
    let api_listener = ops::server::bind("API_ADDR", cfg.api_addr).await?;
    let ops_listener = ops::server::bind("OPS_ADDR", cfg.ops_addr).await?;
    let shown = |l: &tokio::net::TcpListener, fallback| {
        l.local_addr()
            .map_or_else(|_| fallback, |a: std::net::SocketAddr| a.to_string())
    };
    tracing::info!(
        api_addr = %shown(&api_listener, cfg.api_addr.to_string()),
        ops_addr = %shown(&ops_listener, cfg.ops_addr.to_string()),
        version = VERSION,
        "started"
    );

    // Nothing that waits on Discord runs before the ports are open: the
    // commands register in the background, retried with backoff.
    let registration = tokio::spawn(bot_bridge::guild::registration::run(
        state.clone(),
        bot_bridge::guild::registration::BACKOFF,
        shutdown.clone(),
    ));
    let store_watch = tokio::spawn(bot_bridge::app::watch_store(
        state.clone(),
        bot_bridge::app::STORE_CHECK_EVERY,
        bot_bridge::app::STORE_CHECK_WITHIN,
        shutdown.clone(),
        Some(health.heartbeat("store_check", bot_bridge::app::STORE_CHECK_MAX_SILENCE)),
    ));
    let runs_active = tokio::spawn(bot_bridge::app::watch_runs_active(
        state.clone(),
        bot_bridge::app::RUNS_ACTIVE_REFRESH,
        shutdown.clone(),
    ));
    let kube = match &cfg.reconcile.kube {
        Some(source) => {
            let client = bot_bridge::reconcile::kube_client(source).await?;
            state.set_pod_events(bot_bridge::reconcile::PodEvents::new(client.clone()));
            if let Some(audience) = &cfg.token_review_audience {
                let reviews = bot_bridge::auth::review_client(source).await?;
                state.set_token_reviewer(bot_bridge::auth::TokenReviewer::new(
                    reviews,
                    audience.clone(),
                ));
            }
            Some(client)
        }
        None => None,
    };
    // Leader election: only the leader runs retention and the reconciler.
    let (leadership, elector) = match (&cfg.leader_election, &cfg.reconcile.kube) {
        (Some(lease), Some(source)) => {
            let client = bot_bridge::reconcile::kube_client(source).await?;
            let api = kube::Api::namespaced(client, &lease.namespace);
            let (tx, leadership) = Leadership::channel();
            state.metrics().set_leader(false);
            let elector = tokio::spawn(leader::run(
                api,
                lease.clone(),
                tx,
                state.metrics().clone(),
                shutdown.clone(),
            ));
            (leadership, Some(elector))
        }
        _ => {
            LeadershipChanged {
                leading: true,
                identity: "single replica",
                why: "no LEADER_ELECTION_LEASE configured",
            }
            .emit(state.metrics());
            (Leadership::always(), None)
        }
    };
    let retention_heartbeat = health.heartbeat(
        "retention",
        cfg.retention_interval * 3 + Duration::from_secs(300),
    );
    let retention = tokio::spawn({
        let (state, interval) = (state.clone(), cfg.retention_interval);
        let beat = retention_heartbeat.clone();
        leader::while_leading(
            leadership.clone(),
            shutdown.clone(),
            Some(retention_heartbeat),
            move |stop| {
                bot_bridge::retention::run(state.clone(), interval, stop, Some(beat.clone()))
            },
        )
    });
    let reconcile_heartbeat = health.heartbeat("reconcile", Duration::from_secs(300));
    let reconciler = tokio::spawn({
        let (state, reconcile) = (state.clone(), cfg.reconcile.clone());
        let beat = reconcile_heartbeat.clone();
        leader::while_leading(
            leadership.clone(),
            shutdown.clone(),
            Some(reconcile_heartbeat),
            move |stop| {
                bot_bridge::reconcile::run(
                    state.clone(),
                    reconcile.clone(),
                    kube.clone(),
                    stop,
                    Some(beat.clone()),
                )
            },
        )
    });
    // Only the leader drains hand-offs: one request in flight per webhook
    // across the fleet.
    let handoff_heartbeat = health.heartbeat("handoff", Duration::from_secs(300));
    let handoff = tokio::spawn({
        let state = state.clone();
        let drain = bot_bridge::handoff::DrainConfig {
            channel_messages_per_minute: cfg.channel_messages_per_minute,
            channel_window: cfg.channel_window,
            ..bot_bridge::handoff::DrainConfig::default()
        };
        let beat = handoff_heartbeat.clone();
        leader::while_leading(
            leadership.clone(),
            shutdown.clone(),
            Some(handoff_heartbeat),
            move |stop| bot_bridge::handoff::run(state.clone(), drain, stop, Some(beat.clone())),
        )
    });
    let api_server = tokio::spawn(ops::server::serve(api_listener, api, shutdown.clone()));
    let ops_server = tokio::spawn(ops::server::serve_ops(
        ops_listener,
        ops_router,
        shutdown.clone(),
    ));

    shutdown.wait().await;
    tracing::info!("draining");
    let drain = async {
        let _ = registration.await;
        let _ = store_watch.await;
        let _ = runs_active.await;
        let _ = retention.await;
        let _ = reconciler.await;
        let _ = handoff.await;
        // After the leader-only work stopped: releasing the Lease hands over.
        if let Some(e) = elector {
            let _ = e.await;
        }
        let _ = api_server.await;
        let _ = ops_server.await;
    };
    if tokio::time::timeout(cfg.shutdown_timeout, drain)
        .await
        .is_err()
    {
        tracing::warn!("drain deadline passed; exiting with requests in flight");
    }
    tracing::info!("stopped");
    Ok(())
}
