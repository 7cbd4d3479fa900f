//! The shared state of every handler and worker, built once by `main` (or a test).

use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use ops::health::Component;
use ops::Secret;

use crate::config::{Config, RetentionAction, RunContainer};
use crate::discord::DiscordApi;
use crate::events::{BridgeError, BridgeMetrics, ErrorKind};
use crate::relay::Relay;
use crate::store::RunStore;

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
        }
    }
}

/// Health components bot-bridge reports (`/readyz`, `/healthz`).
#[derive(Debug, Clone)]
pub struct HealthParts {
    /// The run store: failed when it cannot answer (readiness).
    pub store: Component,
    /// Discord: degraded after a failed call, ok after a success (not readiness:
    /// a Discord outage must not take the API out of the Service).
    pub discord: Component,
}

pub(crate) struct Inner {
    pub settings: Settings,
    pub store: Arc<dyn RunStore>,
    pub discord: Arc<dyn DiscordApi>,
    pub metrics: BridgeMetrics,
    pub relay: Relay,
    /// Serialises provisioning in this process, so two calls for the same run
    /// or for the last free slot of a category do not race each other.
    pub provision: tokio::sync::Mutex<()>,
    pub health: Option<HealthParts>,
    /// Kubernetes Events on agent pods, when `KUBE_CONFIG` is set.
    pub pod_events: std::sync::OnceLock<crate::reconcile::PodEvents>,
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
                provision: tokio::sync::Mutex::new(()),
                health,
                pod_events: std::sync::OnceLock::new(),
            }),
        }
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
                h.store.ok("reachable");
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod fixture {
    //! A state over the in-memory Discord and an in-memory store.

    use super::*;
    use crate::discord::memory::MockDiscord;
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

    /// Serves the API router on 127.0.0.1:0; returns its base URL.
    pub async fn serve(state: AppState) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, crate::api_router(state))
                .await
                .unwrap();
        });
        format!("http://{addr}")
    }
}
