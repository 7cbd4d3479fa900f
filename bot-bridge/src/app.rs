//! The shared state of every handler and worker, built once by `main` (or a test).

use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use ops::health::{Component, Heartbeat};
use ops::{Secret, Shutdown};

use crate::config::{Config, RetentionAction, RunContainer};
use crate::events::{BridgeError, BridgeMetrics, ErrorKind};
use crate::guild::DiscordApi;
use crate::relay::Relay;
use crate::store::{ProvisionGuard, RunStore};

/// The business settings handlers need: the subset of [`Config`] that is not
/// about listeners, logging or storage location, so tests build it directly.
#[derive(Debug, Clone)]
pub struct Settings {
    pub guild_id: String,
    pub runs_category: String,
    pub archive_category: String,
    /// Prefix of returned webhook URLs, without a trailing slash.
    pub discord_api_base: String,
    pub api_token: Secret<String>,
    /// `None` disables `POST /interactions`.
    pub public_key: Option<VerifyingKey>,
    pub application_id: Option<String>,
    pub retention: Duration,
    pub retention_action: RetentionAction,
    pub run_container: RunContainer,
    pub thread_parent_channel_id: Option<String>,
    /// How long an interaction waits for the watcher before deferring (Discord
    /// drops interactions not answered within 3 s).
    pub defer_after: Duration,
    /// Who may send /input (empty: nobody).
    pub operators: crate::access::Operators,
    /// Where operator input may be relayed.
    pub input_url_policy: crate::access::InputUrlPolicy,
    /// Replicas share one store (Postgres): Discord's buckets move between
    /// them with the provisioning lock ([`AppState::provision_lock`]).
    pub shared_rate_limits: bool,
    /// Channels the guild may hold (`GUILD_CHANNEL_LIMIT`: Discord's 500).
    pub guild_channel_limit: usize,
}

impl Settings {
    pub fn from_config(c: &Config) -> Self {
        Self {
            guild_id: c.guild_id.clone(),
            runs_category: c.runs_category.clone(),
            archive_category: c.archive_category.clone(),
            discord_api_base: c.discord_api_base.clone(),
            api_token: c.api_token.clone(),
            public_key: c.discord_public_key,
            application_id: c.discord_application_id.clone(),
            retention: c.retention,
            retention_action: c.retention_action,
            run_container: c.run_container,
            thread_parent_channel_id: c.thread_parent_channel_id.clone(),
            defer_after: Duration::from_secs(2),
            operators: c.operators.clone(),
            input_url_policy: c.input_url_policy.clone(),
            guild_channel_limit: c.guild_channel_limit,
            shared_rate_limits: matches!(c.database, crate::config::Database::Postgres { .. }),
        }
    }
}

/// The provisioning lock held with the Discord buckets: on release, the
/// buckets are written back first and the lock let go after, so the next
/// holder reads what this one knew (see [`AppState::provision_lock`]).
struct BucketsHandedOn {
    guard: Option<ProvisionGuard>,
    store: Arc<dyn RunStore>,
    discord: Arc<dyn DiscordApi>,
}

impl Drop for BucketsHandedOn {
    fn drop(&mut self) {
        let Some(guard) = self.guard.take() else {
            return;
        };
        let buckets = self.discord.rate_limits();
        let store = self.store.clone();
        let hand_on = async move {
            if let Err(e) = store.put_discord_buckets(buckets).await {
                tracing::warn!(error = %e, "Discord buckets not written to the store");
            }
            drop(guard);
        };
        // No runtime (process exit): the lock goes with the process.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(hand_on);
        }
    }
}

/// Health components bot-bridge reports (`/readyz`, `/healthz`).
#[derive(Debug, Clone)]
pub struct HealthParts {
    /// The run store: failed when it cannot take a write (readiness). Never
    /// latched: [`watch_store`] checks it every [`STORE_CHECK_EVERY`], so it
    /// clears on its own once the store recovers, with no request needed.
    pub store: Component,
    /// Discord: degraded after a failed call, ok after a success (not readiness:
    /// a Discord outage must not take the API out of the Service).
    pub discord: Component,
    /// Slash-command registration (not readiness): degraded until Discord
    /// accepted the commands. Provisioning runs, which is what watchers need
    /// from the Service, works without them; making the pod not ready over them
    /// would turn an `/input` outage into a provisioning outage for every new run.
    pub commands: Component,
}

impl HealthParts {
    /// Registers bot-bridge's components in `health`, each in its start state.
    pub fn register(health: &ops::Health) -> Self {
        Self {
            store: health.component("store", true, ops::Status::Ok, "opening"),
            discord: health.component("discord", false, ops::Status::Ok, "no request yet"),
            commands: health.component(
                "commands",
                false,
                ops::Status::Degraded,
                "slash commands not registered yet",
            ),
        }
    }
}

/// The `(method, route)` pairs of bot-bridge's servers (route templates as
/// `http_server_requests_total` labels them), pre-registered with
/// [`HTTP_STATUSES`] so that the API's error-ratio alert and the request panels
/// see series from start-up. A route missing here still gets its series when
/// first called.
pub const HTTP_ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/runs"),
    ("GET", "/v1/runs"),
    ("GET", "/v1/runs/{run_id}"),
    ("POST", "/v1/runs/{run_id}/complete"),
    ("POST", "/interactions"),
    ("POST", "/v1/runs/{run_id}/handoff"),
    ("GET", "/livez"),
    ("GET", "/readyz"),
    ("GET", "/healthz"),
    ("GET", "/metrics"),
];
/// The statuses [`HTTP_ROUTES`] start with: success and a server error.
pub const HTTP_STATUSES: &[&str] = &["200", "500"];

/// How often [`watch_store`] checks the store.
pub const STORE_CHECK_EVERY: Duration = Duration::from_secs(1);
/// How long one store check may take before the store counts as failed.
pub const STORE_CHECK_WITHIN: Duration = Duration::from_secs(2);
/// How long the store check may go without an answer before `/livez` fails:
/// far beyond any busy wait (5 s), so only a wedged connection trips it.
pub const STORE_CHECK_MAX_SILENCE: Duration = Duration::from_secs(60);

/// Checks every `every` that the store can take a write ([`RunStore::ping`]),
/// and sets the `store` readiness component from the result, until `shutdown`.
///
/// This is what keeps readiness true in both directions: a store that another
/// process holds locked, or a volume gone read-only, makes bot-bridge not ready
/// even while no request arrives, and the first good check makes it ready again
/// (a failed request alone would leave it not ready until the next successful
/// request, which a Service without ready endpoints never sends). A check that
/// does not answer within `within` counts as failed; it is still awaited, so
/// slow checks never pile up on the store's connection. `heartbeat` beats once
/// per answered check: only a check that never returns (a wedged connection,
/// which a restart cures) silences it; a failing store does not.
pub async fn watch_store(
    state: AppState,
    every: Duration,
    within: Duration,
    shutdown: Shutdown,
    heartbeat: Option<Heartbeat>,
) {
    loop {
        if let Some(h) = &heartbeat {
            h.beat();
        }
        let mut check = state.inner.store.ping();
        let result = tokio::select! {
            () = shutdown.wait() => return,
            r = tokio::time::timeout(within, &mut check) => match r {
                Ok(r) => r,
                Err(_) => {
                    state.store_failed(&format!("store check did not answer within {within:?}"));
                    tokio::select! {
                        () = shutdown.wait() => return,
                        r = check => r,
                    }
                }
            },
        };
        match result {
            Ok(()) => state.store_ok(),
            Err(e) => state.store_failed(&e),
        }
        tokio::select! {
            () = shutdown.wait() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// How often every replica re-reads `bridge_runs_active` from the store.
pub const RUNS_ACTIVE_REFRESH: Duration = Duration::from_secs(10);

/// Keeps `bridge_runs_active` the fleet's count of active runs, until
/// `shutdown`: every `every` it counts them in the store, which every
/// replica shares, so each replica shows the same value whichever replica
/// created or completed the runs (its own creations and completions still
/// move the gauge at once in between). Every replica counts, not only the
/// leader: the value never depends on a Lease hand-over, and one `COUNT`
/// per replica every few seconds is nothing next to provisioning.
pub async fn watch_runs_active(state: AppState, every: Duration, shutdown: Shutdown) {
    loop {
        tokio::select! {
            () = shutdown.wait() => return,
            () = tokio::time::sleep(every) => {}
        }
        match state
            .inner
            .store
            .count_runs(crate::store::RunStatus::Active)
            .await
        {
            Ok(n) => state.inner.metrics.set_runs_active(n),
            // `watch_store` reports the store's health; the gauge keeps
            // its last value until the store answers again.
            Err(e) => tracing::debug!(error = %e, "active runs not counted"),
        }
    }
}

pub(crate) struct Inner {
    pub settings: Settings,
    pub store: Arc<dyn RunStore>,
    pub discord: Arc<dyn DiscordApi>,
    pub metrics: BridgeMetrics,
    pub relay: Relay,
    pub health: Option<HealthParts>,
    /// Kubernetes Events on agent pods, when `KUBE_CONFIG` is set.
    pub pod_events: std::sync::OnceLock<crate::reconcile::PodEvents>,
    /// Pod-token checks, when `TOKEN_REVIEW_AUDIENCE` is set.
    pub token_reviewer: std::sync::OnceLock<crate::auth::TokenReviewer>,
    /// Wakes the hand-off drainer when a hand-off was stored.
    pub handoff_wake: tokio::sync::Notify,
    /// Hand-off bodies read and parsed at once
    /// ([`crate::handoff::CONCURRENT_BODIES`]).
    pub handoff_bodies: Arc<tokio::sync::Semaphore>,
}

/// Everything a handler or worker needs. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

impl AppState {
    pub fn new(
        settings: Settings,
        store: Arc<dyn RunStore>,
        discord: Arc<dyn DiscordApi>,
        metrics: BridgeMetrics,
        relay: Relay,
        health: Option<HealthParts>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings,
                store,
                discord,
                metrics,
                relay,
                health,
                pod_events: std::sync::OnceLock::new(),
                token_reviewer: std::sync::OnceLock::new(),
                handoff_wake: tokio::sync::Notify::new(),
                handoff_bodies: Arc::new(tokio::sync::Semaphore::new(
                    crate::handoff::CONCURRENT_BODIES,
                )),
            }),
        }
    }

    /// Turns on pod-token authentication (once; later calls are ignored).
    pub fn set_token_reviewer(&self, reviewer: crate::auth::TokenReviewer) {
        let _ = self.inner.token_reviewer.set(reviewer);
    }

    pub fn token_reviewer(&self) -> Option<&crate::auth::TokenReviewer> {
        self.inner.token_reviewer.get()
    }

    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    pub fn store(&self) -> &Arc<dyn RunStore> {
        &self.inner.store
    }

    pub fn discord(&self) -> &Arc<dyn DiscordApi> {
        &self.inner.discord
    }

    pub fn metrics(&self) -> &BridgeMetrics {
        &self.inner.metrics
    }

    /// Takes the provisioning lock ([`RunStore::provision_lock`]) and, when
    /// replicas share the store, the Discord buckets with it.
    ///
    /// Every call on the guild's routes (list and create channels, archive,
    /// category clean-up) is made under this lock, so with several replicas
    /// they take turns on the same buckets; each replica's limiter learns
    /// Discord's buckets only from its own answers, and pacing from its own
    /// view of a window the other replica has since spent draws 429s. So the
    /// holder reads the buckets the last holder left (`discord_buckets`, on
    /// the store's clock) when it takes the lock, and writes its own back
    /// before the lock is released: the buckets move with the lock, at one
    /// read and one write per lock, and no request waits on the store.
    /// Failing either only costs what pacing alone would: a 429 at worst.
    pub fn provision_lock(&self) -> crate::store::StoreFuture<'_, ProvisionGuard> {
        Box::pin(async move {
            let guard = self.store().provision_lock().await?;
            if !self.settings().shared_rate_limits {
                return Ok(guard);
            }
            match self.store().discord_buckets().await {
                Ok(buckets) => self.discord().restore_rate_limits(&buckets),
                Err(e) => tracing::warn!(error = %e, "Discord buckets not read from the store"),
            }
            Ok(ProvisionGuard::new(BucketsHandedOn {
                guard: Some(guard),
                store: self.store().clone(),
                discord: self.discord().clone(),
            }))
        })
    }

    /// Loads the active-runs gauge from the store (after a restart).
    pub async fn init_gauges(&self) -> Result<(), crate::store::StoreError> {
        let n = self
            .inner
            .store
            .count_runs(crate::store::RunStatus::Active)
            .await?;
        self.inner.metrics.set_runs_active(n);
        Ok(())
    }

    /// Records a failure: log line, error counter and health component.
    pub(crate) fn report(
        &self,
        kind: ErrorKind,
        run_id: Option<&str>,
        error: &dyn std::fmt::Display,
    ) {
        BridgeError {
            kind,
            run_id,
            error,
        }
        .emit(&self.inner.metrics);
        if let Some(h) = &self.inner.health {
            match kind {
                ErrorKind::Store => h.store.failed(error.to_string()),
                ErrorKind::Discord | ErrorKind::Retention => h.discord.degraded(error.to_string()),
                _ => {}
            }
        }
    }

    /// Marks Discord reachable again after a successful call.
    pub(crate) fn discord_ok(&self) {
        if let Some(h) = &self.inner.health {
            if h.discord.status() != Some(ops::Status::Ok) {
                h.discord.ok("last request succeeded");
            }
        }
    }

    /// Marks the store healthy again after a successful call.
    pub(crate) fn store_ok(&self) {
        if let Some(h) = &self.inner.health {
            if h.store.status() != Some(ops::Status::Ok) {
                tracing::info!("run store reachable again");
                h.store.ok("reachable");
            }
        }
    }

    /// A store check failed: counted and logged once per outage (the check
    /// repeats every second), while the component always shows the latest cause.
    fn store_failed(&self, error: &dyn std::fmt::Display) {
        let Some(h) = &self.inner.health else {
            return;
        };
        if h.store.status() == Some(ops::Status::Failed) {
            h.store.failed(format!("store check failed: {error}"));
        } else {
            self.report(
                ErrorKind::Store,
                None,
                &format_args!("store check failed: {error}"),
            );
        }
    }
}

#[cfg(test)]
pub(crate) mod fixture {
    //! A state over the in-memory Discord and an in-memory store.

    use super::*;
    use crate::guild::memory::MockDiscord;
    use crate::store::sqlite::SqliteStore;

    pub const GUILD: &str = "900";

    pub fn settings() -> Settings {
        Settings {
            guild_id: GUILD.into(),
            runs_category: "Agent Runs".into(),
            archive_category: "Archived Runs".into(),
            discord_api_base: "http://discord.test/api/v10".into(),
            api_token: Secret::new("api-token-secret".into()),
            public_key: Some(ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]).verifying_key()),
            application_id: Some("77".into()),
            retention: Duration::from_secs(1),
            retention_action: RetentionAction::Archive,
            run_container: RunContainer::Channel,
            thread_parent_channel_id: None,
            defer_after: Duration::from_secs(2),
            operators: crate::access::Operators {
                role_ids: ["10".to_owned()].into(),
                user_ids: ["5".to_owned()].into(),
            },
            input_url_policy: crate::access::InputUrlPolicy::parse("127.0.0.1/32,10.0.0.0/8")
                .unwrap(),
            shared_rate_limits: false,
            guild_channel_limit: crate::runs::MAX_CHANNELS_PER_GUILD,
        }
    }

    pub fn state(settings: Settings) -> (AppState, Arc<MockDiscord>) {
        let discord = Arc::new(MockDiscord::default());
        let store = Arc::new(SqliteStore::memory().unwrap());
        let state = AppState::new(
            settings,
            store,
            discord.clone(),
            BridgeMetrics::unregistered().unwrap(),
            Relay::new(Duration::from_secs(5)).unwrap(),
            None,
        );
        (state, discord)
    }

    /// The caller that owns the runs a test provisions (a run token).
    pub fn owner() -> crate::access::Caller {
        crate::access::Caller::RunToken(Secret::new("owner-token-".repeat(4)))
    }

    /// A run key as a watcher posts it: task `t`, attempt 1, `short`.
    pub fn new_run(short: &str) -> crate::runs::NewRun {
        crate::runs::NewRun {
            task_id: "t".into(),
            attempt: crate::runs::AttemptValue::Text("1".into()),
            short_id: short.into(),
            input_url: None,
            heartbeats: false,
        }
    }

    /// Serves the API router on 127.0.0.1:0 through the middleware stack
    /// and server production uses (`main`); returns its base URL.
    pub async fn serve(state: AppState) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = ops::Metrics::new("bridge", "test").unwrap();
        let layer = crate::api::http_layer(ops::http::HttpMetrics::new(&metrics).unwrap());
        let router = ops::http::instrument(crate::api_router(state), &layer);
        tokio::spawn(ops::server::serve(listener, router, ops::Shutdown::new()));
        format!("http://{addr}")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::store::sqlite::SqliteStore;
    use crate::store::{
        CategoryRecord, Inserted, RunKey, RunRecord, RunStatus, StoreError, StoreFuture,
        StoredWebhook,
    };

    /// SQLite in memory, with a switch that makes every check fail ("locked").
    struct Switchable {
        inner: SqliteStore,
        locked: AtomicBool,
    }

    impl RunStore for Switchable {
        fn insert_run(&self, run: RunRecord) -> StoreFuture<'_, Inserted> {
            self.inner.insert_run(run)
        }
        fn update_run(&self, run: RunRecord) -> StoreFuture<'_, ()> {
            self.inner.update_run(run)
        }
        fn get_run(&self, run_id: String) -> StoreFuture<'_, Option<RunRecord>> {
            self.inner.get_run(run_id)
        }
        fn find_by_key(&self, key: RunKey) -> StoreFuture<'_, Option<RunRecord>> {
            self.inner.find_by_key(key)
        }
        fn find_by_channel(&self, channel_id: String) -> StoreFuture<'_, Option<RunRecord>> {
            self.inner.find_by_channel(channel_id)
        }
        fn list_runs(
            &self,
            s: Option<RunStatus>,
            limit: u32,
            after: Option<crate::store::ListCursor>,
        ) -> StoreFuture<'_, Vec<RunRecord>> {
            self.inner.list_runs(s, limit, after)
        }
        fn due_runs(&self, now: i64) -> StoreFuture<'_, Vec<RunRecord>> {
            self.inner.due_runs(now)
        }
        fn count_runs(&self, status: RunStatus) -> StoreFuture<'_, u64> {
            self.inner.count_runs(status)
        }
        fn categories(&self) -> StoreFuture<'_, Vec<CategoryRecord>> {
            self.inner.categories()
        }
        fn put_category(&self, category: CategoryRecord) -> StoreFuture<'_, ()> {
            self.inner.put_category(category)
        }
        fn remove_category(&self, id: String) -> StoreFuture<'_, ()> {
            self.inner.remove_category(id)
        }
        fn shared_webhook(&self, channel_id: String) -> StoreFuture<'_, Option<StoredWebhook>> {
            self.inner.shared_webhook(channel_id)
        }
        fn put_shared_webhook(&self, c: String, w: StoredWebhook) -> StoreFuture<'_, ()> {
            self.inner.put_shared_webhook(c, w)
        }
        fn bind_pod(
            &self,
            run_id: String,
            pod: crate::store::PodIdentity,
            source: crate::store::IdentitySource,
        ) -> StoreFuture<'_, bool> {
            self.inner.bind_pod(run_id, pod, source)
        }
        fn heartbeat(&self, run_id: String, at: i64) -> StoreFuture<'_, ()> {
            self.inner.heartbeat(run_id, at)
        }
        fn run_pod(&self, run_id: String) -> StoreFuture<'_, Option<crate::store::PodIdentity>> {
            self.inner.run_pod(run_id)
        }
        fn active_liveness(&self) -> StoreFuture<'_, Vec<crate::store::RunLiveness>> {
            self.inner.active_liveness()
        }
        fn put_handoff(
            &self,
            run_id: String,
            messages: Vec<crate::store::HandoffMessage>,
            complete: Option<Option<serde_json::Value>>,
            now: i64,
        ) -> StoreFuture<'_, crate::store::HandoffStored> {
            self.inner.put_handoff(run_id, messages, complete, now)
        }
        fn handoff_runs(&self) -> StoreFuture<'_, Vec<crate::store::HandoffRun>> {
            self.inner.handoff_runs()
        }
        fn next_handoff(
            &self,
            run_id: String,
        ) -> StoreFuture<'_, Option<crate::store::HandoffMessage>> {
            self.inner.next_handoff(run_id)
        }
        fn mark_handoff(
            &self,
            run_id: String,
            seq: u64,
            outcome: crate::store::HandoffOutcome,
            now: i64,
        ) -> StoreFuture<'_, ()> {
            self.inner.mark_handoff(run_id, seq, outcome, now)
        }
        fn pace_handoff(
            &self,
            run_id: String,
            sends_unix_ms: Vec<i64>,
            now: i64,
        ) -> StoreFuture<'_, ()> {
            self.inner.pace_handoff(run_id, sends_unix_ms, now)
        }
        fn handoff_pacing(&self, run_id: String) -> StoreFuture<'_, Vec<i64>> {
            self.inner.handoff_pacing(run_id)
        }
        fn prune_handoffs(&self) -> StoreFuture<'_, u64> {
            self.inner.prune_handoffs()
        }
        fn provision_lock(&self) -> StoreFuture<'_, crate::store::ProvisionGuard> {
            self.inner.provision_lock()
        }
        fn finish_lock(&self, run_id: String) -> StoreFuture<'_, crate::store::ProvisionGuard> {
            self.inner.finish_lock(run_id)
        }
        fn claim_interaction(&self, id: String, at: i64) -> StoreFuture<'_, bool> {
            self.inner.claim_interaction(id, at)
        }
        fn prune_interactions(&self, before: i64) -> StoreFuture<'_, u64> {
            self.inner.prune_interactions(before)
        }
        fn discord_buckets(&self) -> StoreFuture<'_, Vec<crate::store::BucketSnapshot>> {
            self.inner.discord_buckets()
        }
        fn put_discord_buckets(
            &self,
            buckets: Vec<crate::store::BucketSnapshot>,
        ) -> StoreFuture<'_, ()> {
            self.inner.put_discord_buckets(buckets)
        }
        fn reserve_discord_request(
            &self,
            interval: std::time::Duration,
        ) -> StoreFuture<'_, std::time::Duration> {
            self.inner.reserve_discord_request(interval)
        }
        fn ping(&self) -> StoreFuture<'_, ()> {
            let locked = self.locked.load(Ordering::SeqCst);
            Box::pin(async move {
                if locked {
                    Err(StoreError::Database("database is locked".into()))
                } else {
                    Ok(())
                }
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn store_readiness_follows_the_checks_both_ways_without_requests() {
        let health = ops::Health::new("0");
        let parts = HealthParts::register(&health);
        let store = Arc::new(Switchable {
            inner: SqliteStore::memory().unwrap(),
            locked: AtomicBool::new(false),
        });
        let metrics = ops::Metrics::new("bridge", "0").unwrap();
        let (base, _) = fixture::state(fixture::settings());
        let state = AppState::new(
            base.settings().clone(),
            store.clone(),
            base.discord().clone(),
            BridgeMetrics::new(&metrics).unwrap(),
            Relay::new(Duration::from_secs(1)).unwrap(),
            Some(parts.clone()),
        );
        let shutdown = Shutdown::new();
        let heartbeat = health.heartbeat("store_check", STORE_CHECK_MAX_SILENCE);
        let task = tokio::spawn(watch_store(
            state,
            STORE_CHECK_EVERY,
            STORE_CHECK_WITHIN,
            shutdown.clone(),
            Some(heartbeat),
        ));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(health.ready().0);

        store.locked.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(10)).await;
        let (ready, body) = health.ready();
        assert!(!ready, "{body}");
        assert!(
            body["checks"]["store"]["detail"]
                .as_str()
                .unwrap()
                .contains("locked"),
            "{body}"
        );
        // Ten failed checks, one outage: counted once.
        assert!(
            metrics
                .encode()
                .contains("bridge_errors_total{kind=\"store\"} 1"),
            "{}",
            metrics.encode()
        );
        assert!(health.live().0, "a failing store is not a wedged loop");

        store.locked.store(false, Ordering::SeqCst);
        tokio::time::sleep(STORE_CHECK_EVERY + Duration::from_millis(100)).await;
        assert!(health.ready().0, "{}", health.ready().1);

        shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .unwrap()
            .unwrap();
    }

    /// The hand-off drainer reads the store all the time; a read succeeds
    /// while another process holds the write lock, so it must not mark the
    /// store healthy (it did, and readiness came back under a locked store).
    #[tokio::test(start_paused = true)]
    async fn a_draining_handoff_does_not_make_a_locked_store_ready() {
        let health = ops::Health::new("0");
        let parts = HealthParts::register(&health);
        let store = Arc::new(Switchable {
            inner: SqliteStore::memory().unwrap(),
            locked: AtomicBool::new(false),
        });
        let (base, discord) = fixture::state(fixture::settings());
        let state = AppState::new(
            base.settings().clone(),
            store.clone(),
            base.discord().clone(),
            BridgeMetrics::unregistered().unwrap(),
            Relay::new(Duration::from_secs(1)).unwrap(),
            Some(parts.clone()),
        );
        let owner = crate::access::Caller::RunToken(Secret::new("owner-token-".repeat(4)));
        let new_run = crate::runs::NewRun {
            task_id: "t".into(),
            attempt: crate::runs::AttemptValue::Text("1".into()),
            short_id: "a".into(),
            input_url: None,
            heartbeats: false,
        };
        let (run, _) = state.provision(new_run, &owner).await.unwrap();
        let body: crate::handoff::HandoffRequest = serde_json::from_value(serde_json::json!({
            "messages": [{"seq": 1, "payload": {"content": "x"}}],
        }))
        .unwrap();
        let handoff = crate::handoff::validate(body).unwrap();
        state
            .accept_handoff(&run.run_id, handoff, &owner)
            .await
            .unwrap();
        // The webhook is gone: the message stays pending, the drainer keeps scanning.
        discord.with(|s| s.webhooks.clear());
        let shutdown = Shutdown::new();
        let watch = tokio::spawn(watch_store(
            state.clone(),
            STORE_CHECK_EVERY,
            STORE_CHECK_WITHIN,
            shutdown.clone(),
            None,
        ));
        let drainer = tokio::spawn(crate::handoff::run(
            state.clone(),
            crate::handoff::DrainConfig {
                scan_every: Duration::from_millis(100),
                ..crate::handoff::DrainConfig::default()
            },
            shutdown.clone(),
            None,
        ));
        store.locked.store(true, Ordering::SeqCst);
        for _ in 0..50 {
            if parts.store.status() == Some(ops::Status::Failed) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(parts.store.status(), Some(ops::Status::Failed));
        // Ten seconds of drainer scans (reads that all succeed) later, the
        // locked store still keeps bot-bridge not ready.
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(!health.ready().0, "ready under a locked store");
        }
        shutdown.trigger();
        watch.await.unwrap();
        drainer.await.unwrap();
    }

    /// Two replicas (two states on one store, each with its own Discord
    /// client and limiter): what the first knew of a guild bucket when it
    /// let go of the provisioning lock is what the second paces from when
    /// it takes the lock. With the hand-on off, the second knows nothing and
    /// would spend the bucket the first already spent.
    async fn handed_on(shared: bool) -> Vec<crate::store::BucketSnapshot> {
        use crate::guild::rest::{MetricsObserver, RestDiscord};
        use crate::store::BucketSnapshot;
        let store: Arc<dyn RunStore> = Arc::new(SqliteStore::memory().unwrap());
        let replica = || {
            let discord = RestDiscord::new(
                "http://127.0.0.1:9/api/v10",
                Secret::new("bot-token".into()),
                Duration::from_secs(1),
                Arc::new(MetricsObserver(BridgeMetrics::unregistered().unwrap())),
            )
            .unwrap();
            AppState::new(
                Settings {
                    shared_rate_limits: shared,
                    ..fixture::settings()
                },
                store.clone(),
                Arc::new(discord),
                BridgeMetrics::unregistered().unwrap(),
                Relay::new(Duration::from_secs(5)).unwrap(),
                None,
            )
        };
        let (a, b) = (replica(), replica());
        let guard = a.provision_lock().await.unwrap();
        // What replica a learnt from Discord's answers while it held the lock.
        a.discord().restore_rate_limits(&[BucketSnapshot {
            route: "POST /guilds/{guild_id}/channels 900".into(),
            limit: Some(10),
            remaining: Some(1),
            reset_after: Some(Duration::from_secs(30)),
            blocked_for: None,
        }]);
        drop(guard);
        let _guard = tokio::time::timeout(Duration::from_secs(10), b.provision_lock())
            .await
            .expect("the lock is let go after the hand-on")
            .unwrap();
        b.discord().rate_limits()
    }

    #[tokio::test]
    async fn the_guild_buckets_move_with_the_provisioning_lock() {
        let got = handed_on(true).await;
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!((got[0].limit, got[0].remaining), (Some(10), Some(1)));
        assert!(got[0].reset_after.unwrap() > Duration::from_secs(25));
        assert!(handed_on(false).await.is_empty());
    }

    /// Two replicas on one store: each shows every active run, not only the
    /// ones it created or completed since it started.
    #[tokio::test(start_paused = true)]
    async fn every_replica_reports_the_fleets_active_runs() {
        let (a, discord) = fixture::state(fixture::settings());
        let b = AppState::new(
            a.settings().clone(),
            a.store().clone(),
            discord,
            BridgeMetrics::unregistered().unwrap(),
            Relay::new(Duration::from_secs(1)).unwrap(),
            None,
        );
        let shutdown = Shutdown::new();
        let watches = [a.clone(), b.clone()]
            .map(|s| tokio::spawn(watch_runs_active(s, RUNS_ACTIVE_REFRESH, shutdown.clone())));
        let owner = fixture::owner();
        let (first, _) = a.provision(fixture::new_run("a1"), &owner).await.unwrap();
        a.provision(fixture::new_run("a2"), &owner).await.unwrap();
        b.provision(fixture::new_run("b1"), &owner).await.unwrap();
        b.complete(&first.run_id, None, &owner).await.unwrap();

        tokio::time::sleep(RUNS_ACTIVE_REFRESH + Duration::from_millis(100)).await;
        assert_eq!(a.metrics().runs_active(), 2);
        assert_eq!(b.metrics().runs_active(), 2);

        shutdown.trigger();
        for w in watches {
            w.await.unwrap();
        }
    }
}
