//! Test harness: bot-bridge's API served in-process on 127.0.0.1:0 over a
//! SQLite file in a temp dir, talking to a Discord backend, with every log line
//! captured so tests can prove no secret is ever logged.

// Test support: each test file uses a different part, and failing fast is the point.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bot_bridge::config::{RetentionAction, RunContainer};
use bot_bridge::events::BridgeMetrics;
use bot_bridge::guild::memory::MockDiscord;
use bot_bridge::guild::DiscordApi;
use bot_bridge::relay::Relay;
use bot_bridge::store::sqlite::SqliteStore;
use bot_bridge::{AppState, Settings};
use ed25519_dalek::SigningKey;
use ops::Secret;
use serde_json::Value;

pub const BOT_TOKEN: &str = "bot-token-SECRET-b07b07b07";
pub const API_TOKEN: &str = "api-token-SECRET-a91a91a91";
pub const GUILD_ID: &str = "4242";
pub const APPLICATION_ID: &str = "7777";
pub const FAKE_API_BASE: &str = "http://discord.invalid/api/v10";

/// The interactions key the tests sign with.
pub fn signing_key() -> SigningKey {
    SigningKey::from_bytes(&[7u8; 32])
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs (once per test binary) a subscriber that keeps every log line at
/// debug level and above, from every crate.
fn logs() -> &'static Captured {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    LOGS.get_or_init(|| {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_env_filter("debug")
            .with_writer(move || writer.clone())
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
        captured
    })
}

pub fn captured_logs() -> String {
    String::from_utf8_lossy(&logs().0.lock().unwrap()).into_owned()
}

/// A channel as the tests inspect it.
#[derive(Debug, Clone)]
pub struct SeenChannel {
    pub id: String,
    pub name: String,
    pub kind: u8,
    pub parent_id: Option<String>,
    pub overwrites: Vec<bot_bridge::guild::Overwrite>,
}

/// A running bot-bridge.
pub struct Bridge {
    pub base: String,
    pub state: AppState,
    pub discord: Arc<MockDiscord>,
    settings: Settings,
    dir: Arc<tempfile::TempDir>,
    secrets: Mutex<Vec<String>>,
    shutdown: ops::Shutdown,
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

pub fn settings() -> Settings {
    Settings {
        guild_id: GUILD_ID.into(),
        runs_category: "Agent Runs".into(),
        archive_category: "Archived Runs".into(),
        discord_api_base: FAKE_API_BASE.into(),
        api_token: Secret::new(API_TOKEN.into()),
        public_key: Some(signing_key().verifying_key()),
        application_id: Some(APPLICATION_ID.into()),
        retention: Duration::from_secs(72 * 3600),
        retention_action: RetentionAction::Archive,
        run_container: RunContainer::Channel,
        thread_parent_channel_id: None,
        defer_after: Duration::from_secs(2),
        operators: bot_bridge::access::Operators {
            role_ids: Default::default(),
            user_ids: ["42".to_owned()].into(),
        },
        input_url_policy: bot_bridge::access::InputUrlPolicy::parse("127.0.0.1/32").unwrap(),
        shared_rate_limits: false,
        guild_channel_limit: bot_bridge::runs::MAX_CHANNELS_PER_GUILD,
    }
}

/// The run token every request of these tests presents: they play one watcher.
pub const RUN_TOKEN: &str = "harness-run-token-0123456789abcdef";

impl Bridge {
    pub async fn start() -> Bridge {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(f: impl FnOnce(&mut Settings)) -> Bridge {
        let mut s = settings();
        f(&mut s);
        let dir = Arc::new(tempfile::tempdir().unwrap());
        Self::build(s, Arc::new(MockDiscord::default()), dir).await
    }

    async fn build(
        settings: Settings,
        discord: Arc<MockDiscord>,
        dir: Arc<tempfile::TempDir>,
    ) -> Bridge {
        logs();
        let store = Arc::new(SqliteStore::open(&dir.path().join("bridge.db")).unwrap());
        let api: Arc<dyn DiscordApi> = discord.clone();
        let state = AppState::new(
            settings.clone(),
            store,
            api,
            BridgeMetrics::unregistered().unwrap(),
            Relay::new(Duration::from_secs(5)).unwrap(),
            None,
        );
        state.init_gauges().await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = ops::Shutdown::new();
        let router = bot_bridge::api_router(state.clone());
        tokio::spawn(ops::server::serve(listener, router, shutdown.clone()));
        Bridge {
            base,
            state,
            discord,
            settings,
            dir,
            secrets: Mutex::new(Vec::new()),
            shutdown,
        }
    }

    /// A new process on the same database file and the same Discord.
    pub async fn restart(self) -> Bridge {
        self.shutdown.trigger();
        let (settings, discord, dir) = (
            self.settings.clone(),
            self.discord.clone(),
            self.dir.clone(),
        );
        let secrets = std::mem::take(&mut *self.secrets.lock().unwrap());
        drop(self);
        let b = Self::build(settings, discord, dir).await;
        *b.secrets.lock().unwrap() = secrets;
        b
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let resp = reqwest::Client::new()
            .post(format!("{}{path}", self.base))
            .bearer_auth(API_TOKEN)
            .header(bot_bridge::access::RUN_TOKEN_HEADER, RUN_TOKEN)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let resp = reqwest::Client::new()
            .get(format!("{}{path}", self.base))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// `POST /v1/runs`, remembering the secrets it returned.
    pub async fn create_run(&self, body: &Value) -> (u16, Value) {
        let (status, v) = self.post("/v1/runs", body).await;
        let mut secrets = self.secrets.lock().unwrap();
        if let Some(s) = v["input_secret"].as_str() {
            secrets.push(s.to_owned());
        }
        if let Some(token) = v["webhook_url"]
            .as_str()
            .and_then(|u| u.split('?').next()?.rsplit('/').next())
        {
            secrets.push(token.to_owned());
        }
        (status, v)
    }

    pub fn fake_api_base(&self) -> String {
        FAKE_API_BASE.to_owned()
    }

    pub fn fake_channels(&self) -> Vec<SeenChannel> {
        self.discord.with(|s| {
            s.channels
                .values()
                .map(|c| SeenChannel {
                    id: c.id.clone(),
                    name: c.name.clone(),
                    kind: c.kind,
                    parent_id: c.parent_id.clone(),
                    overwrites: s.overwrites.get(&c.id).cloned().unwrap_or_default(),
                })
                .collect()
        })
    }

    pub fn fake_channel(&self, id: &str) -> SeenChannel {
        self.fake_channels()
            .into_iter()
            .find(|c| c.id == id)
            .unwrap_or_else(|| panic!("no channel {id} in Discord"))
    }

    pub fn fake_webhook_count(&self) -> usize {
        self.discord.with(|s| s.webhooks.len())
    }

    /// Simulates someone deleting every webhook in Discord.
    pub async fn fake_delete_all_webhooks(&self) {
        self.discord.with(|s| s.webhooks.clear());
    }

    /// Simulates someone deleting a channel in Discord.
    pub async fn fake_delete_channel(&self, id: &str) {
        self.discord.with(|s| s.channels.remove(id));
    }

    /// Ephemeral replies edited after a deferral.
    pub fn interaction_edits(&self) -> Vec<Value> {
        self.discord.with(|s| s.edits.clone())
    }

    /// No secret this bridge handed out (nor the tokens) is in any log line.
    pub async fn assert_no_secret_leaked(&self) {
        let logs = captured_logs();
        assert!(!logs.is_empty(), "no logs were captured");
        let secrets = self.secrets.lock().unwrap().clone();
        for s in secrets
            .iter()
            .map(String::as_str)
            .chain([BOT_TOKEN, API_TOKEN])
        {
            assert!(!logs.contains(s), "a secret appears in the logs:\n{logs}");
        }
    }
}
