//! The Discord operations bot-bridge needs, behind one small trait.
//!
//! Provisioning, retention and interactions talk to [`DiscordApi`], not to the
//! REST client, so their logic is tested against an in-memory fake and the one
//! production implementation (`rest`) stays a thin mapping onto
//! `discord::rest::RestClient`.

use std::future::Future;
use std::pin::Pin;

use ops::Secret;
use serde_json::Value;

use crate::access::Operators;

/// A boxed future, so the trait stays object-safe (`Arc<dyn DiscordApi>`).
pub type DiscordFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, DiscordError>> + Send + 'a>>;

use discord::error_code;
/// Webhooks one channel may hold.
pub use discord::limits::WEBHOOKS_PER_CHANNEL as MAX_WEBHOOKS_PER_CHANNEL;
/// Permission bits used in overwrites.
pub use discord::permission as perm;
use discord::ratelimit::BucketSnapshot;
/// Channel types bot-bridge creates or reads (Discord's, from the model crate).
pub use discord::rest::channel_kind as kind;

/// A guild channel, category or thread as far as bot-bridge cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel {
    pub id: String,
    pub name: String,
    pub kind: u8,
    pub parent_id: Option<String>,
}

/// One permission overwrite; `kind` 0 = role, 1 = member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overwrite {
    pub id: String,
    pub kind: u8,
    pub allow: u64,
    pub deny: u64,
}

impl Overwrite {
    /// The JSON shape Discord expects (bit sets as decimal strings).
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "id": self.id,
            "type": self.kind,
            "allow": self.allow.to_string(),
            "deny": self.deny.to_string(),
        })
    }
}

/// A channel to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewChannel {
    pub name: String,
    pub kind: u8,
    pub parent_id: Option<String>,
    pub overwrites: Vec<Overwrite>,
}

/// A webhook with its token (only known right after creation).
#[derive(Debug, Clone)]
pub struct Webhook {
    pub id: String,
    pub token: Secret<String>,
}

/// A webhook as a channel's list shows it ("Get Channel Webhooks"): Discord
/// returns the token of every incoming webhook there, so bot-bridge can adopt
/// one it created but never stored (a crash between the two).
#[derive(Debug, Clone)]
pub struct ListedWebhook {
    pub id: String,
    pub name: String,
    /// Type 1: the kind bot-bridge creates (others are followers or apps').
    pub incoming: bool,
    pub token: Option<Secret<String>>,
}

/// Why a Discord call failed. Never carries a token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DiscordError {
    /// 404: the channel, webhook or interaction is gone.
    #[error("not found")]
    NotFound,
    /// Any other non-success answer from Discord, with its JSON error code.
    #[error("discord answered {status} (code {code}): {message}")]
    Http {
        status: u16,
        code: u64,
        message: String,
    },
    /// The request did not complete (connect, timeout, rate-limit budget…).
    #[error("discord request failed: {0}")]
    Transport(String),
}

impl DiscordError {
    /// Whether the guild refused a channel because it holds 500 already.
    pub fn is_guild_full(&self) -> bool {
        matches!(self, Self::Http { code, .. } if *code == error_code::MAX_GUILD_CHANNELS)
    }

    /// Whether a channel refused a webhook because it holds the maximum.
    pub fn is_webhook_limit(&self) -> bool {
        matches!(self, Self::Http { code, .. } if *code == error_code::MAX_WEBHOOKS)
    }
}

/// The Discord operations of bot-bridge. `reason` goes to the guild audit log.
pub trait DiscordApi: Send + Sync + 'static {
    fn list_guild_channels(&self, guild_id: &str) -> DiscordFuture<'_, Vec<Channel>>;
    /// `Ok(None)` when the channel (or thread) no longer exists.
    fn get_channel(&self, channel_id: &str) -> DiscordFuture<'_, Option<Channel>>;
    fn create_channel(
        &self,
        guild_id: &str,
        channel: &NewChannel,
        reason: &str,
    ) -> DiscordFuture<'_, Channel>;
    fn modify_channel(
        &self,
        channel_id: &str,
        patch: &Value,
        reason: &str,
    ) -> DiscordFuture<'_, ()>;
    /// Deleting a channel that is already gone is `Err(NotFound)`.
    fn delete_channel(&self, channel_id: &str, reason: &str) -> DiscordFuture<'_, ()>;
    fn create_thread(
        &self,
        channel_id: &str,
        name: &str,
        reason: &str,
    ) -> DiscordFuture<'_, Channel>;
    fn create_webhook(
        &self,
        channel_id: &str,
        name: &str,
        reason: &str,
    ) -> DiscordFuture<'_, Webhook>;
    /// The webhooks of a channel; `Err(NotFound)` when the channel is gone.
    fn list_channel_webhooks(&self, channel_id: &str) -> DiscordFuture<'_, Vec<ListedWebhook>>;
    /// Whether the webhook still exists (someone may have deleted it in Discord).
    fn webhook_exists(&self, webhook_id: &str) -> DiscordFuture<'_, bool>;
    fn delete_webhook(&self, webhook_id: &str, reason: &str) -> DiscordFuture<'_, ()>;
    fn bulk_overwrite_guild_commands(
        &self,
        application_id: &str,
        guild_id: &str,
        commands: &Value,
    ) -> DiscordFuture<'_, ()>;
    fn edit_original_interaction_response(
        &self,
        application_id: &str,
        interaction_token: &Secret<String>,
        body: &Value,
    ) -> DiscordFuture<'_, ()>;
    /// Posts `body` through a run's webhook (into `thread_id` in thread mode);
    /// a deleted webhook is `Err(NotFound)`.
    fn execute_webhook(
        &self,
        webhook_id: &str,
        webhook_token: &Secret<String>,
        thread_id: Option<&str>,
        body: &Value,
    ) -> DiscordFuture<'_, ()>;
    /// What the rate limiter knows of Discord's open buckets, handed to the
    /// next holder of the provisioning lock (`AppState::provision_lock`).
    /// Stand-ins without a limiter know nothing.
    fn rate_limits(&self) -> Vec<BucketSnapshot> {
        Vec::new()
    }
    /// Takes over the last lock holder's view of the buckets.
    fn restore_rate_limits(&self, _buckets: &[BucketSnapshot]) {}
}

/// The overwrites of a live run channel: everyone may read, nobody but the
/// webhook may post, and only operators may use the slash commands (the
/// @everyone role's id is the guild id). Discord applies a member's own
/// overwrite over its roles' and the roles' over @everyone's, so the allows
/// of the operator roles and users win over the @everyone deny. bot-bridge
/// checks the operator lists itself too (`access::Operators`): an admin can
/// re-open the command in Discord's settings, never the relay.
pub fn run_overwrites(guild_id: &str, operators: &Operators) -> Vec<Overwrite> {
    let mut out = vec![Overwrite {
        id: guild_id.to_owned(),
        kind: 0,
        allow: perm::VIEW_CHANNEL | perm::READ_MESSAGE_HISTORY,
        deny: perm::SEND_MESSAGES
            | perm::SEND_MESSAGES_IN_THREADS
            | perm::CREATE_PUBLIC_THREADS
            | perm::CREATE_PRIVATE_THREADS
            | perm::USE_APPLICATION_COMMANDS,
    }];
    let operator = |id: &String, kind: u8| Overwrite {
        id: id.clone(),
        kind,
        allow: perm::VIEW_CHANNEL | perm::USE_APPLICATION_COMMANDS,
        deny: 0,
    };
    // The @everyone role is never an operator overwrite: it would undo the deny.
    out.extend(
        operators
            .role_ids
            .iter()
            .filter(|r| r.as_str() != guild_id)
            .map(|r| operator(r, 0)),
    );
    out.extend(operators.user_ids.iter().map(|u| operator(u, 1)));
    out
}

/// The overwrites of an archived channel: readable history, nothing else.
pub fn archive_overwrites(guild_id: &str, operators: &Operators) -> Vec<Overwrite> {
    let mut o = run_overwrites(guild_id, operators);
    for w in &mut o {
        w.deny |= perm::ADD_REACTIONS;
    }
    o
}

/// `default_member_permissions` of the slash commands: `"0"` hides them from
/// every member without ADMINISTRATOR until a guild admin grants them to the
/// operator role in Server Settings → Integrations (bot tokens cannot set
/// per-command permissions). `null` would let everyone use them.
pub const COMMAND_DEFAULT_MEMBER_PERMISSIONS: &str = "0";

/// The slash commands bot-bridge answers, as registered with Discord.
pub fn commands() -> Value {
    serde_json::json!([
        {
            "name": "input",
            "type": 1,
            "description": "Send text to the agent of this run",
            "default_member_permissions": COMMAND_DEFAULT_MEMBER_PERMISSIONS,
            "options": [{
                "type": 3,
                "name": "text",
                "description": "What to send to the agent",
                "required": true,
                "max_length": 4000
            }]
        },
        {
            "name": "status",
            "type": 1,
            "description": "Show the status of this run",
            "default_member_permissions": COMMAND_DEFAULT_MEMBER_PERMISSIONS
        }
    ])
}

/// The production [`DiscordApi`]: a mapping onto `discord::rest::RestClient`,
/// so every call (reads included) goes through its rate limiter and its
/// invalid-request guard.
pub mod rest {
    use std::sync::Arc;
    use std::time::Duration;

    use discord::rest::{
        CreateChannel, Overwrite as RestOverwrite, RestClient, RestConfig, RestError, RestObserver,
        SharedBudget,
    };
    use ops::Secret;
    use serde_json::Value;

    use super::{
        Channel, DiscordApi, DiscordError, DiscordFuture, ListedWebhook, NewChannel, Webhook,
    };
    use crate::events::BridgeMetrics;
    use crate::store::RunStore;

    /// Maps the REST client's hooks onto `bridge_discord_*` metrics.
    #[derive(Debug, Clone)]
    pub struct MetricsObserver(pub BridgeMetrics);

    impl RestObserver for MetricsObserver {
        fn request_done(&self, route: &'static str, status: u16) {
            self.0.discord_request(route, status);
        }
        fn rate_limited(&self, scope: &'static str) {
            self.0.discord_rate_limited(scope);
        }
    }

    /// [`DiscordApi`] over HTTP.
    #[derive(Clone, Debug)]
    pub struct RestDiscord {
        client: RestClient,
    }

    impl RestDiscord {
        pub fn new(
            base_url: &str,
            bot_token: Secret<String>,
            timeout: Duration,
            observer: Arc<dyn RestObserver>,
        ) -> Result<Self, DiscordError> {
            let client = RestClient::new(
                RestConfig {
                    base_url: base_url.to_owned(),
                    bot_token,
                    timeout,
                    max_retries: 3,
                },
                observer,
            )
            .map_err(map_err)?;
            Ok(Self { client })
        }
    }

    fn map_err(e: RestError) -> DiscordError {
        match e {
            RestError::Http { status: 404, .. } => DiscordError::NotFound,
            RestError::Http {
                status,
                code,
                message,
            } => DiscordError::Http {
                status,
                code: code.unwrap_or(0),
                message,
            },
            other => DiscordError::Transport(other.to_string()),
        }
    }

    fn channel(c: discord::rest::Channel) -> Channel {
        Channel {
            id: c.id,
            name: c.name,
            kind: c.kind,
            parent_id: c.parent_id,
        }
    }

    fn reason(r: &str) -> Option<&str> {
        Some(r).filter(|r| !r.is_empty())
    }

    impl RestDiscord {
        /// Paces every request by the global budget replicas share through
        /// `store` as well (Discord's 50 a second is per bot, not per replica).
        #[must_use]
        pub fn with_shared_budget(mut self, store: Arc<dyn RunStore>) -> Self {
            self.client = self
                .client
                .with_shared_budget(Arc::new(StoreBudget { store }));
            self
        }
    }

    /// Discord's global budget as one slot every 20 ms handed out by the
    /// store ([`RunStore::reserve_discord_request`]): strictly spaced, so no
    /// second ever holds more than 50 of every replica's requests together.
    /// One small write per request is the price; requests under the
    /// provisioning lock are seconds apart from each other anyway, pacing
    /// Discord's 10-a-second guild buckets.
    struct StoreBudget {
        store: Arc<dyn RunStore>,
    }

    impl SharedBudget for StoreBudget {
        fn reserve(
            &self,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<Duration, String>> + Send + '_>,
        > {
            Box::pin(async move {
                let interval =
                    Duration::from_secs(1) / discord::ratelimit::DEFAULT_GLOBAL_PER_SECOND.max(1);
                self.store
                    .reserve_discord_request(interval)
                    .await
                    .map_err(|e| e.to_string())
            })
        }
    }

    impl DiscordApi for RestDiscord {
        fn rate_limits(&self) -> Vec<discord::ratelimit::BucketSnapshot> {
            self.client.rate_limits()
        }
        fn restore_rate_limits(&self, buckets: &[discord::ratelimit::BucketSnapshot]) {
            self.client.restore_rate_limits(buckets);
        }
        fn list_guild_channels(&self, guild_id: &str) -> DiscordFuture<'_, Vec<Channel>> {
            let guild_id = guild_id.to_owned();
            Box::pin(async move {
                let list = self
                    .client
                    .list_guild_channels(&guild_id)
                    .await
                    .map_err(map_err)?;
                Ok(list.into_iter().map(channel).collect())
            })
        }

        fn get_channel(&self, channel_id: &str) -> DiscordFuture<'_, Option<Channel>> {
            let channel_id = channel_id.to_owned();
            Box::pin(async move {
                let found = self
                    .client
                    .get_channel(&channel_id)
                    .await
                    .map_err(map_err)?;
                Ok(found.map(channel))
            })
        }

        fn create_channel(
            &self,
            guild_id: &str,
            new: &NewChannel,
            why: &str,
        ) -> DiscordFuture<'_, Channel> {
            let guild_id = guild_id.to_owned();
            let why = why.to_owned();
            let body = CreateChannel {
                name: new.name.clone(),
                kind: new.kind,
                parent_id: new.parent_id.clone(),
                permission_overwrites: new
                    .overwrites
                    .iter()
                    .map(|o| RestOverwrite {
                        id: o.id.clone(),
                        kind: o.kind,
                        allow: o.allow.to_string(),
                        deny: o.deny.to_string(),
                    })
                    .collect(),
            };
            Box::pin(async move {
                self.client
                    .create_channel(&guild_id, &body, reason(&why))
                    .await
                    .map(channel)
                    .map_err(map_err)
            })
        }

        fn modify_channel(
            &self,
            channel_id: &str,
            patch: &Value,
            why: &str,
        ) -> DiscordFuture<'_, ()> {
            let (channel_id, patch, why) = (channel_id.to_owned(), patch.clone(), why.to_owned());
            Box::pin(async move {
                self.client
                    .modify_channel(&channel_id, &patch, reason(&why))
                    .await
                    .map(drop)
                    .map_err(map_err)
            })
        }

        fn delete_channel(&self, channel_id: &str, why: &str) -> DiscordFuture<'_, ()> {
            let (channel_id, why) = (channel_id.to_owned(), why.to_owned());
            Box::pin(async move {
                self.client
                    .delete_channel(&channel_id, reason(&why))
                    .await
                    .map_err(map_err)
            })
        }

        fn create_thread(
            &self,
            channel_id: &str,
            name: &str,
            why: &str,
        ) -> DiscordFuture<'_, Channel> {
            let (channel_id, name, why) = (channel_id.to_owned(), name.to_owned(), why.to_owned());
            Box::pin(async move {
                self.client
                    .create_thread(&channel_id, &name, reason(&why))
                    .await
                    .map(channel)
                    .map_err(map_err)
            })
        }

        fn create_webhook(
            &self,
            channel_id: &str,
            name: &str,
            why: &str,
        ) -> DiscordFuture<'_, Webhook> {
            let (channel_id, name, why) = (channel_id.to_owned(), name.to_owned(), why.to_owned());
            Box::pin(async move {
                let w = self
                    .client
                    .create_webhook(&channel_id, &name, reason(&why))
                    .await
                    .map_err(map_err)?;
                let token = w.token.ok_or_else(|| {
                    DiscordError::Transport("Discord returned a webhook without a token".into())
                })?;
                Ok(Webhook { id: w.id, token })
            })
        }

        fn list_channel_webhooks(&self, channel_id: &str) -> DiscordFuture<'_, Vec<ListedWebhook>> {
            let channel_id = channel_id.to_owned();
            Box::pin(async move {
                let list = self
                    .client
                    .list_channel_webhooks(&channel_id)
                    .await
                    .map_err(map_err)?;
                Ok(list
                    .into_iter()
                    .map(|w| ListedWebhook {
                        id: w.id,
                        name: w.name,
                        incoming: w.kind == 1,
                        token: w.token,
                    })
                    .collect())
            })
        }

        fn webhook_exists(&self, webhook_id: &str) -> DiscordFuture<'_, bool> {
            let webhook_id = webhook_id.to_owned();
            Box::pin(async move {
                let found = self
                    .client
                    .get_webhook(&webhook_id)
                    .await
                    .map_err(map_err)?;
                Ok(found.is_some())
            })
        }

        fn delete_webhook(&self, webhook_id: &str, why: &str) -> DiscordFuture<'_, ()> {
            let (webhook_id, why) = (webhook_id.to_owned(), why.to_owned());
            Box::pin(async move {
                self.client
                    .delete_webhook(&webhook_id, reason(&why))
                    .await
                    .map_err(map_err)
            })
        }

        fn bulk_overwrite_guild_commands(
            &self,
            application_id: &str,
            guild_id: &str,
            commands: &Value,
        ) -> DiscordFuture<'_, ()> {
            let (app, guild, commands) = (
                application_id.to_owned(),
                guild_id.to_owned(),
                commands.clone(),
            );
            Box::pin(async move {
                self.client
                    .bulk_overwrite_guild_commands(&app, &guild, &commands)
                    .await
                    .map(drop)
                    .map_err(map_err)
            })
        }

        fn edit_original_interaction_response(
            &self,
            application_id: &str,
            interaction_token: &Secret<String>,
            body: &Value,
        ) -> DiscordFuture<'_, ()> {
            let (app, token, body) = (
                application_id.to_owned(),
                interaction_token.clone(),
                body.clone(),
            );
            Box::pin(async move {
                self.client
                    .edit_original_interaction_response(&app, &token, &body)
                    .await
                    .map(drop)
                    .map_err(map_err)
            })
        }

        fn execute_webhook(
            &self,
            webhook_id: &str,
            webhook_token: &Secret<String>,
            thread_id: Option<&str>,
            body: &Value,
        ) -> DiscordFuture<'_, ()> {
            let (id, token, thread, body) = (
                webhook_id.to_owned(),
                webhook_token.clone(),
                thread_id.map(str::to_owned),
                body.clone(),
            );
            Box::pin(async move {
                self.client
                    .execute_webhook(&id, &token, thread.as_deref(), &body)
                    .await
                    .map_err(map_err)
            })
        }
    }

    #[cfg(test)]
    mod tests {
        use axum::http::{HeaderMap, StatusCode};
        use axum::routing::{get, post};
        use axum::Json;
        use std::sync::atomic::{AtomicUsize, Ordering};

        use super::*;
        use crate::guild::NewChannel;

        static CHANNEL_GETS: AtomicUsize = AtomicUsize::new(0);

        /// A Discord stand-in that checks the bot token and answers fixed bodies.
        async fn stub() -> String {
            fn authed(h: &HeaderMap) -> bool {
                h.get("authorization").and_then(|v| v.to_str().ok()) == Some("Bot bot-SECRET")
            }
            let app = axum::Router::new()
                .route(
                    "/api/v10/webhooks/{id}",
                    get(|h: HeaderMap, axum::extract::Path(id): axum::extract::Path<String>| async move {
                        if !authed(&h) {
                            return (StatusCode::UNAUTHORIZED, Json(serde_json::json!({"code": 0})));
                        }
                        if id == "1" {
                            (StatusCode::OK, Json(serde_json::json!({"id": "1", "type": 1})))
                        } else {
                            (
                                StatusCode::NOT_FOUND,
                                Json(serde_json::json!({"code": 10015, "message": "Unknown Webhook"})),
                            )
                        }
                    }),
                )
                .route(
                    "/api/v10/channels/{id}",
                    get(|| async {
                        // Rate limited once, then found: the limited client
                        // waits the 429 out and asks again.
                        if CHANNEL_GETS.fetch_add(1, Ordering::SeqCst) == 0 {
                            return (
                                StatusCode::TOO_MANY_REQUESTS,
                                [("retry-after", "0.05"), ("x-ratelimit-scope", "user")],
                                Json(serde_json::json!({
                                    "message": "You are being rate limited.",
                                    "retry_after": 0.05,
                                    "global": false
                                })),
                            );
                        }
                        (
                            StatusCode::OK,
                            [("retry-after", "0"), ("x-ratelimit-scope", "user")],
                            Json(serde_json::json!({"id": "7", "name": "run-x", "type": 0})),
                        )
                    }),
                )
                .route(
                    "/api/v10/guilds/{g}/channels",
                    post(|| async {
                        (
                            StatusCode::BAD_REQUEST,
                            Json(serde_json::json!({
                                "code": 30013,
                                "message": "Maximum number of guild channels reached (500)"
                            })),
                        )
                    }),
                );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            format!("http://{addr}/api/v10")
        }

        #[tokio::test]
        async fn rest_errors_map_to_the_trait() {
            let base = stub().await;
            let metrics = BridgeMetrics::unregistered().unwrap();
            let d = RestDiscord::new(
                &base,
                Secret::new("bot-SECRET".into()),
                Duration::from_secs(5),
                Arc::new(MetricsObserver(metrics)),
            )
            .unwrap();
            assert!(d.webhook_exists("1").await.unwrap());
            assert!(!d.webhook_exists("2").await.unwrap());
            let new = NewChannel {
                name: "run-x".into(),
                kind: 0,
                parent_id: None,
                overwrites: Vec::new(),
            };
            let err = d.create_channel("9", &new, "test").await.unwrap_err();
            assert!(err.is_guild_full(), "{err}");
            assert!(!format!("{d:?} {err}").contains("SECRET"));
            // Reads go through the rate-limited client: a 429 is waited out,
            // not returned (the second client they once used returned it).
            let found = d.get_channel("7").await.unwrap().unwrap();
            assert_eq!(found.name, "run-x");
            assert_eq!(CHANNEL_GETS.load(Ordering::SeqCst), 2);
        }
    }
}

#[cfg(any(test, feature = "test-util"))]
pub mod memory;

pub mod registration;
