//! A strict fake of the Discord API endpoints agentmon uses, for tests, benches
//! and the compose demo.
//!
//! It enforces what Discord enforces (payload limits, per-webhook, per-channel
//! and global rate limits, 50 channels per category, 500 per guild), answers
//! with Discord's status codes, headers and error bodies, records every
//! accepted message, and injects faults on request. Start it in-process with
//! [`FakeDiscord::start`] or as the `fake-discord` binary; read and steer it
//! through the methods here or the `/_admin` HTTP API (see `README.md` beside
//! this crate's `Cargo.toml`).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let fake = fake_discord::FakeDiscord::start(fake_discord::FakeConfig::default()).await?;
//! let hook = fake.create_webhook("runs")?;
//! // … point a client at hook.url …
//! assert!(fake.messages().is_empty());
//! fake.stop().await;
//! # Ok(()) }
//! ```

pub mod config;
pub mod error;
pub mod faults;
pub mod limiter;
pub mod server;
pub mod state;
pub mod validate;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fake_support::Serving;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::time::Instant;

pub use config::{ChannelWindowKind, FakeConfig};
pub use faults::{Fault, FaultKind, StormScope};
pub use state::{ChannelRecord, InteractionEdit, MessageRecord, State, Stats, WebhookRecord};

use server::Shared;

/// Why the fake could not start or do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum FakeError {
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("channel {0} cannot hold a webhook (unknown, or not a text channel)")]
    NotATextChannel(String),
    #[error("channel {0} is not a text channel")]
    NoSuchChannel(String),
}

/// A webhook made through the library or `POST /_admin/webhooks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CreatedWebhook {
    pub id: String,
    pub token: String,
    pub channel_id: String,
    /// `{api_base}/webhooks/{id}/{token}`.
    pub url: String,
}

/// Creates a webhook in `channel`: an existing text channel's id, or else the
/// name of a text channel to create (no limits checked: this is set-up).
pub(crate) fn create_webhook_in(
    s: &mut State,
    channel: &str,
    name: Option<&str>,
) -> Result<CreatedWebhook, FakeError> {
    let channel_id = match s.channels.get(channel) {
        Some(c) if matches!(c.kind, state::kind::TEXT | state::kind::FORUM) => c.id.clone(),
        Some(_) => return Err(FakeError::NotATextChannel(channel.to_owned())),
        None => {
            s.insert_channel(
                channel.to_owned(),
                state::kind::TEXT,
                None,
                Vec::new(),
                None,
            )
            .id
        }
    };
    let w = s.insert_webhook(&channel_id, name.unwrap_or("agentmon"));
    Ok(CreatedWebhook {
        url: s.webhook_url(&w.id, &w.token),
        id: w.id,
        token: w.token,
        channel_id,
    })
}

/// The `/_admin/stats` document: [`Stats`] plus current sizes.
pub(crate) fn stats_json(s: &State, now: Instant) -> Value {
    let mut v = serde_json::to_value(&s.stats).unwrap_or_else(|_| json!({}));
    let rate_limited_total: u64 = s.stats.rate_limited.values().sum();
    if let Some(o) = v.as_object_mut() {
        o.insert("rate_limited_total".into(), json!(rate_limited_total));
        o.insert("messages".into(), json!(s.messages.len()));
        o.insert("faults_pending".into(), json!(s.faults.pending().len()));
        o.insert("channels".into(), json!(s.guild_channel_count()));
        o.insert(
            "webhooks".into(),
            json!(s.webhooks.values().filter(|w| !w.deleted).count()),
        );
        o.insert("uptime_ms".into(), json!(s.mono_ms(now)));
        o.insert(
            "channel_limit".into(),
            json!({
                "kind": if s.channel_phase.is_some() { "fixed" } else { "sliding" },
                "messages": s.config.channel_messages_per_minute,
                "window_ms": u64::try_from(s.config.channel_window.as_millis()).unwrap_or(u64::MAX),
                "phase_ms": s.channel_phase.map(|p| u64::try_from(p.as_millis()).unwrap_or(u64::MAX)),
            }),
        );
    }
    v
}

/// A running fake. Dropping it stops the server (in the background); use
/// [`FakeDiscord::stop`] to wait for that.
#[derive(Debug)]
pub struct FakeDiscord {
    shared: Arc<Shared>,
    addr: SocketAddr,
    serving: Serving,
}

impl FakeDiscord {
    /// Binds `config.addr` and serves until stopped.
    pub async fn start(config: FakeConfig) -> Result<Self, FakeError> {
        let (listener, addr) =
            fake_support::bind(config.addr)
                .await
                .map_err(|source| FakeError::Bind {
                    addr: config.addr,
                    source,
                })?;
        let mut state = State::new(config);
        if state.config.public_url.is_none() {
            state.base_url = format!("http://{addr}");
        }
        let shared = Arc::new(Shared::new(state));
        let serving = Serving::spawn(listener, server::router(shared.clone()));
        Ok(Self {
            shared,
            addr,
            serving,
        })
    }

    /// The bound address (the real port when 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://host:port` (or the configured public URL).
    pub fn base_url(&self) -> String {
        self.with_state(|s| s.base_url.clone())
    }

    /// `{base_url}/api/v10`: what `DISCORD_API_BASE` should be.
    pub fn api_base(&self) -> String {
        self.with_state(|s| s.api_base())
    }

    /// `{base_url}/_admin/{path}`.
    pub fn admin_url(&self, path: &str) -> String {
        format!(
            "{}/_admin/{}",
            self.base_url(),
            path.trim_start_matches('/')
        )
    }

    /// Runs `f` on the fake's state (to inspect it, or to arrange a scenario).
    pub fn with_state<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        self.shared.with(f)
    }

    /// A webhook in `channel`: an existing text channel's id, or the name of a
    /// new text channel.
    pub fn create_webhook(&self, channel: &str) -> Result<CreatedWebhook, FakeError> {
        self.with_state(|s| create_webhook_in(s, channel, None))
    }

    /// A guild channel (no limits checked: this is set-up). `kind` 0 text, 4
    /// category, 15 forum.
    pub fn create_channel(&self, name: &str, kind: u8, parent_id: Option<&str>) -> ChannelRecord {
        self.with_state(|s| {
            s.insert_channel(
                name.to_owned(),
                kind,
                parent_id.map(str::to_owned),
                Vec::new(),
                None,
            )
        })
    }

    /// A public thread in text channel `channel_id`.
    pub fn create_thread(&self, channel_id: &str, name: &str) -> Result<ChannelRecord, FakeError> {
        self.with_state(|s| {
            if s.channels
                .get(channel_id)
                .is_none_or(|c| c.kind != state::kind::TEXT)
            {
                return Err(FakeError::NoSuchChannel(channel_id.to_owned()));
            }
            Ok(s.insert_channel(
                name.to_owned(),
                state::kind::PUBLIC_THREAD,
                Some(channel_id.to_owned()),
                Vec::new(),
                None,
            ))
        })
    }

    /// Deletes a webhook as someone in Discord would; `false` if unknown.
    pub fn delete_webhook(&self, id: &str) -> bool {
        self.with_state(|s| s.delete_webhook(id))
    }

    /// Accepted messages in arrival order.
    pub fn messages(&self) -> Vec<MessageRecord> {
        self.with_state(|s| s.messages.clone())
    }

    pub fn stats(&self) -> Stats {
        self.with_state(|s| s.stats.clone())
    }

    /// The `/_admin/stats` JSON document.
    pub fn stats_json(&self) -> Value {
        self.with_state(|s| stats_json(s, Instant::now()))
    }

    pub fn channels(&self) -> Vec<ChannelRecord> {
        self.with_state(|s| s.channels.values().cloned().collect())
    }

    /// All webhooks, deleted ones included (`deleted: true`).
    pub fn webhooks(&self) -> Vec<WebhookRecord> {
        self.with_state(|s| s.webhooks.values().cloned().collect())
    }

    pub fn interaction_edits(&self) -> Vec<InteractionEdit> {
        self.with_state(|s| s.edits.clone())
    }

    /// The last command overwrite for `application_id` in `guild_id` (or global).
    pub fn commands(&self, application_id: &str, guild_id: Option<&str>) -> Option<Vec<Value>> {
        self.with_state(|s| {
            s.commands
                .get(&(application_id.to_owned(), guild_id.map(str::to_owned)))
                .cloned()
        })
    }

    /// Queues a fault (a `delete_webhook` one is applied at once).
    pub fn inject(&self, fault: Fault) {
        self.with_state(|s| {
            if let FaultKind::DeleteWebhook { id } = &fault.kind {
                if s.delete_webhook(id) {
                    s.count_fault(fault.kind.label());
                }
            } else {
                s.faults.push(fault);
            }
        });
    }

    /// Removes every pending fault and releases the requests `hang` holds.
    pub fn clear_faults(&self) {
        self.with_state(|s| s.faults.clear());
        self.shared.faults_cleared.notify_waiters();
    }

    /// Clears messages, interaction edits and stats.
    pub fn reset(&self) {
        self.with_state(State::reset);
    }

    /// Waits until at least `n` messages were accepted, up to `timeout`;
    /// returns the messages so far either way.
    pub async fn wait_for_messages(&self, n: usize, timeout: Duration) -> Vec<MessageRecord> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.shared.recorded.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let messages = self.messages();
            if messages.len() >= n {
                return messages;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.messages();
            }
        }
    }

    /// Stops accepting, lets open connections finish (bounded), and returns
    /// when the server task has ended.
    pub async fn stop(mut self) {
        self.serving.stop().await;
    }
}
