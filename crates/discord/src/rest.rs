//! The bot REST client bot-bridge provisions channels, webhooks and commands with.
//!
//! Every request goes through the [`Limiter`] (per-route buckets from headers,
//! the global 50/s), a 429 is waited out and retried (it is rate limiting, not a
//! failure), 5xx and network errors are retried with [`Backoff`], and 401/403/429
//! responses are counted so the client refuses to go on before Cloudflare's ban
//! (10,000 invalid requests per 10 minutes). The bot token and interaction
//! tokens never appear in errors, routes or metric labels: observers see route
//! templates such as `"POST /guilds/{guild_id}/channels"`.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method};
use ops::{Backoff, Secret};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use tokio::time::Instant;

use crate::ratelimit::{self, Limiter, LimiterConfig, RateLimitHeaders, Scope};
use crate::webhook::{capped_text, describe_error, USER_AGENT};
use crate::webhook_url::{WebhookUrl, WebhookUrlError};

/// Route templates: the `route` metric label and the observer's vocabulary.
pub mod routes {
    pub const LIST_GUILD_CHANNELS: &str = "GET /guilds/{guild_id}/channels";
    pub const CREATE_CHANNEL: &str = "POST /guilds/{guild_id}/channels";
    pub const MODIFY_CHANNEL: &str = "PATCH /channels/{channel_id}";
    pub const DELETE_CHANNEL: &str = "DELETE /channels/{channel_id}";
    pub const CREATE_WEBHOOK: &str = "POST /channels/{channel_id}/webhooks";
    pub const LIST_CHANNEL_WEBHOOKS: &str = "GET /channels/{channel_id}/webhooks";
    pub const DELETE_WEBHOOK: &str = "DELETE /webhooks/{webhook_id}";
    pub const CREATE_THREAD: &str = "POST /channels/{channel_id}/threads";
    pub const GUILD_COMMANDS: &str =
        "PUT /applications/{application_id}/guilds/{guild_id}/commands";
    pub const GLOBAL_COMMANDS: &str = "PUT /applications/{application_id}/commands";
    pub const EDIT_ORIGINAL_RESPONSE: &str =
        "PATCH /webhooks/{application_id}/{interaction_token}/messages/@original";
    pub const EXECUTE_WEBHOOK: &str = "POST /webhooks/{webhook_id}/{webhook_token}";
    pub const GET_CHANNEL: &str = "GET /channels/{channel_id}";
    pub const GET_WEBHOOK: &str = "GET /webhooks/{webhook_id}";

    /// Every route, for pre-registering metric label values.
    pub const ALL: [&str; 14] = [
        LIST_GUILD_CHANNELS,
        CREATE_CHANNEL,
        MODIFY_CHANNEL,
        DELETE_CHANNEL,
        CREATE_WEBHOOK,
        DELETE_WEBHOOK,
        CREATE_THREAD,
        GUILD_COMMANDS,
        GLOBAL_COMMANDS,
        EDIT_ORIGINAL_RESPONSE,
        EXECUTE_WEBHOOK,
        GET_CHANNEL,
        GET_WEBHOOK,
        LIST_CHANNEL_WEBHOOKS,
    ];
}

/// Channel `type` values agentmon uses.
pub mod channel_kind {
    pub const GUILD_TEXT: u8 = 0;
    pub const GUILD_CATEGORY: u8 = 4;
    pub const PUBLIC_THREAD: u8 = 11;
}

/// Overwrite `type` values.
pub mod overwrite_kind {
    pub const ROLE: u8 = 0;
    pub const MEMBER: u8 = 1;
}

/// Cloudflare bans an IP after 10,000 401/403/429 responses in 10 minutes.
pub const INVALID_REQUEST_WINDOW: Duration = Duration::from_secs(600);
/// Where this client stops, leaving headroom below Cloudflare's 10,000.
pub const INVALID_REQUEST_BUDGET: usize = 9_000;
/// A 429 asking for a longer wait than this fails the call instead.
pub const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(60);
/// Consecutive 429s on one call after which it fails.
pub const MAX_RATE_LIMITED_ATTEMPTS: u32 = 5;
/// Discord's limit on `X-Audit-Log-Reason`, in chars.
pub const AUDIT_LOG_REASON_MAX: usize = 512;

/// How to reach Discord.
#[derive(Debug, Clone)]
pub struct RestConfig {
    /// API root including the version, e.g. `https://discord.com/api/v10`; a
    /// fake-discord URL in tests.
    pub base_url: String,
    pub bot_token: Secret<String>,
    /// Per request, connect to last byte.
    pub timeout: Duration,
    /// Retries after a 5xx or network error (429s are not counted).
    pub max_retries: u32,
}

/// Hooks for metrics; bot-bridge maps them to `bridge_discord_requests_total{route,status}`
/// and `bridge_discord_rate_limited_total{scope}`.
pub trait RestObserver: Send + Sync {
    /// A response arrived (`status` 0: none did, a network error).
    fn request_done(&self, route: &'static str, status: u16);
    /// A 429 arrived; `scope` is `user`, `global` or `shared`.
    fn rate_limited(&self, scope: &'static str);
}

/// A request budget shared with other processes of the same bot (replicas),
/// taken after this client's own [`Limiter`] for every request: Discord's
/// global limit is per bot, so replicas pacing only their own requests would
/// spend it twice over. bot-bridge backs it with its database.
pub trait SharedBudget: Send + Sync {
    /// Reserves one request and says how long to wait before sending it. An
    /// error (the shared store unreachable) sends on this client's own
    /// pacing: a store outage can cost a 429, never a request.
    fn reserve(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Duration, String>> + Send + '_>>;
}

/// An observer that ignores everything, for tools and tests.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopObserver;

impl RestObserver for NoopObserver {
    fn request_done(&self, _: &'static str, _: u16) {}
    fn rate_limited(&self, _: &'static str) {}
}

/// Why a REST call failed. Never contains a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestError {
    /// Discord refused (4xx) or kept failing (5xx after the retries).
    #[error("Discord answered {status} (code {code:?}): {message}")]
    Http {
        status: u16,
        /// Discord's JSON error code, e.g. 10003 "Unknown Channel".
        code: Option<u64>,
        message: String,
    },
    #[error("request to Discord failed: {0}")]
    Network(String),
    #[error("refusing to call Discord: {INVALID_REQUEST_BUDGET} invalid requests in 10 minutes")]
    InvalidRequestBudget,
    #[error("unexpected response body from Discord: {0}")]
    Decode(String),
    #[error("rate limited for too long")]
    RateLimitedTooLong,
    #[error("invalid REST client configuration: {0}")]
    Config(String),
}

impl RestError {
    /// Discord's JSON error code, when it sent one.
    pub fn code(&self) -> Option<u64> {
        match self {
            RestError::Http { code, .. } => *code,
            _ => None,
        }
    }

    /// 404: the resource is gone (already deleted); deletes treat it as done.
    pub fn is_not_found(&self) -> bool {
        matches!(self, RestError::Http { status: 404, .. })
    }
}

/// Reads `null` as the type's default: Discord sends `null` for some fields we
/// treat as plain values.
fn null_as_default<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(
    d: D,
) -> Result<T, D::Error> {
    Option::<T>::deserialize(d).map(Option::unwrap_or_default)
}

/// A permission overwrite on a channel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overwrite {
    /// Role or member id.
    pub id: String,
    /// [`overwrite_kind::ROLE`] or [`overwrite_kind::MEMBER`].
    #[serde(rename = "type")]
    pub kind: u8,
    /// Permission bit set, as Discord's decimal string.
    pub allow: String,
    pub deny: String,
}

/// A guild channel, category or thread (the fields agentmon reads).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Channel {
    pub id: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub name: String,
    /// See [`channel_kind`].
    #[serde(rename = "type")]
    pub kind: u8,
    #[serde(default)]
    pub parent_id: Option<String>,
    #[serde(default)]
    pub guild_id: Option<String>,
    #[serde(default)]
    pub position: Option<i64>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub permission_overwrites: Vec<Overwrite>,
}

/// A webhook; `token` is present on incoming webhooks (type 1) when they
/// come from creation or from a channel's list ("Get Channel Webhooks").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Webhook {
    pub id: String,
    /// 1 = incoming (the kind agentmon creates), 2 = channel follower, 3 = application.
    #[serde(rename = "type", default)]
    pub kind: u8,
    #[serde(default, deserialize_with = "null_as_default")]
    pub name: String,
    #[serde(default)]
    pub token: Option<Secret<String>>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub channel_id: String,
}

impl Webhook {
    /// `{api_base}/webhooks/{id}/{token}`, parsed; fails without a token.
    pub fn url(&self, api_base: &str) -> Result<WebhookUrl, WebhookUrlError> {
        let token = self.token.as_ref().ok_or(WebhookUrlError::Token)?;
        let base = api_base.trim_end_matches('/');
        WebhookUrl::parse(&format!("{base}/webhooks/{}/{}", self.id, token.expose()))
    }
}

/// Body of "Create Guild Channel".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CreateChannel {
    pub name: String,
    /// See [`channel_kind`].
    #[serde(rename = "type")]
    pub kind: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub permission_overwrites: Vec<Overwrite>,
}

/// Percent-encodes everything but RFC 3986 unreserved characters: Discord reads
/// `X-Audit-Log-Reason` URL-encoded, and path segments must not smuggle `/`.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A read's answer with 404 as `None`: the resource is gone.
fn found<T>(r: Result<T, RestError>) -> Result<Option<T>, RestError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// One request as the retry loop sees it.
struct Call<'a> {
    method: Method,
    route: &'static str,
    path: String,
    /// Discord's "major parameter" (channel, guild, webhook id): buckets are per
    /// route and major parameter.
    major: String,
    body: Option<Vec<u8>>,
    reason: Option<&'a str>,
    /// Send the bot token (interaction webhooks must not need it).
    auth: bool,
    /// A secret inside the path, masked in any error text.
    path_secret: Option<&'a str>,
}

/// Discord's bot REST API. Cheap to clone; clones share the limiter and the
/// invalid-request budget.
#[derive(Clone)]
pub struct RestClient {
    http: reqwest::Client,
    base_url: String,
    /// `Bot <token>`, marked sensitive so `http` never prints it.
    auth: HeaderValue,
    limiter: Limiter,
    observer: Arc<dyn RestObserver>,
    /// The global budget shared with other replicas, when there are any.
    shared: Option<Arc<dyn SharedBudget>>,
    backoff: Backoff,
    max_retries: u32,
    /// Times of recent 401/403/429 responses, oldest first.
    invalid: Arc<Mutex<VecDeque<Instant>>>,
}

impl fmt::Debug for RestClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RestClient")
            .field("base_url", &self.base_url)
            .field("max_retries", &self.max_retries)
            .finish_non_exhaustive()
    }
}

impl RestClient {
    pub fn new(config: RestConfig, observer: Arc<dyn RestObserver>) -> Result<Self, RestError> {
        let base_url = config.base_url.trim_end_matches('/').to_owned();
        let parsed =
            url::Url::parse(&base_url).map_err(|e| RestError::Config(format!("base_url: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(RestError::Config("base_url must be http or https".into()));
        }
        let mut auth = HeaderValue::from_str(&format!("Bot {}", config.bot_token.expose()))
            .map_err(|_| {
                RestError::Config("bot token contains characters not allowed in a header".into())
            })?;
        auth.set_sensitive(true);
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .user_agent(USER_AGENT)
            .build()
            .map_err(|e| RestError::Config(describe_error(e, "")))?;
        Ok(Self {
            http,
            base_url,
            auth,
            limiter: Limiter::new(LimiterConfig {
                global_per_second: ratelimit::DEFAULT_GLOBAL_PER_SECOND,
                channel_messages_per_minute: None,
                ..LimiterConfig::default()
            }),
            observer,
            shared: None,
            backoff: Backoff::default(),
            max_retries: config.max_retries,
            invalid: Arc::new(Mutex::new(VecDeque::new())),
        })
    }

    /// Paces every request by `budget` as well (see [`SharedBudget`]).
    pub fn with_shared_budget(mut self, budget: Arc<dyn SharedBudget>) -> Self {
        self.shared = Some(budget);
        self
    }

    /// What the limiter knows about Discord's open buckets, to hand on to
    /// the next process that calls the same routes ([`Limiter::snapshot`]).
    pub fn rate_limits(&self) -> Vec<ratelimit::BucketSnapshot> {
        self.limiter.snapshot()
    }

    /// Takes over another process's view of the buckets ([`Limiter::restore`]).
    pub fn restore_rate_limits(&self, buckets: &[ratelimit::BucketSnapshot]) {
        self.limiter.restore(buckets);
    }

    /// Replaces the retry schedule (tests use a short one).
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// 401/403/429 responses counted in the last 10 minutes.
    pub fn invalid_requests(&self) -> usize {
        let mut invalid = self.invalid.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        while invalid
            .front()
            .is_some_and(|t| *t + INVALID_REQUEST_WINDOW <= now)
        {
            invalid.pop_front();
        }
        invalid.len()
    }

    fn record_invalid(&self) {
        let mut invalid = self.invalid.lock().unwrap_or_else(PoisonError::into_inner);
        invalid.push_back(Instant::now());
    }

    pub async fn list_guild_channels(&self, guild_id: &str) -> Result<Vec<Channel>, RestError> {
        let path = format!("/guilds/{}/channels", percent_encode(guild_id));
        self.json(self.call(Method::GET, routes::LIST_GUILD_CHANNELS, path, guild_id))
            .await
    }

    /// A channel or thread; `Ok(None)` when it no longer exists (404).
    pub async fn get_channel(&self, channel_id: &str) -> Result<Option<Channel>, RestError> {
        let path = format!("/channels/{}", percent_encode(channel_id));
        let call = self.call(Method::GET, routes::GET_CHANNEL, path, channel_id);
        found(self.json(call).await)
    }

    /// A webhook (without its token); `Ok(None)` when it no longer exists (404).
    pub async fn get_webhook(&self, webhook_id: &str) -> Result<Option<Webhook>, RestError> {
        let path = format!("/webhooks/{}", percent_encode(webhook_id));
        let call = self.call(Method::GET, routes::GET_WEBHOOK, path, webhook_id);
        found(self.json(call).await)
    }

    pub async fn create_channel(
        &self,
        guild_id: &str,
        channel: &CreateChannel,
        reason: Option<&str>,
    ) -> Result<Channel, RestError> {
        let path = format!("/guilds/{}/channels", percent_encode(guild_id));
        let call = self.call(Method::POST, routes::CREATE_CHANNEL, path, guild_id);
        self.json(Call {
            reason,
            ..with_body(call, channel)?
        })
        .await
    }

    pub async fn modify_channel(
        &self,
        channel_id: &str,
        changes: &serde_json::Value,
        reason: Option<&str>,
    ) -> Result<Channel, RestError> {
        let path = format!("/channels/{}", percent_encode(channel_id));
        let call = self.call(Method::PATCH, routes::MODIFY_CHANNEL, path, channel_id);
        self.json(Call {
            reason,
            ..with_body(call, changes)?
        })
        .await
    }

    pub async fn delete_channel(
        &self,
        channel_id: &str,
        reason: Option<&str>,
    ) -> Result<(), RestError> {
        let path = format!("/channels/{}", percent_encode(channel_id));
        let call = self.call(Method::DELETE, routes::DELETE_CHANNEL, path, channel_id);
        self.send(Call { reason, ..call }).await.map(drop)
    }

    pub async fn create_webhook(
        &self,
        channel_id: &str,
        name: &str,
        reason: Option<&str>,
    ) -> Result<Webhook, RestError> {
        let path = format!("/channels/{}/webhooks", percent_encode(channel_id));
        let call = self.call(Method::POST, routes::CREATE_WEBHOOK, path, channel_id);
        let body = serde_json::json!({ "name": name });
        self.json(Call {
            reason,
            ..with_body(call, &body)?
        })
        .await
    }

    /// The webhooks of a channel, with the tokens of incoming ones (needs
    /// Manage Webhooks, which creating them needs too).
    pub async fn list_channel_webhooks(&self, channel_id: &str) -> Result<Vec<Webhook>, RestError> {
        let path = format!("/channels/{}/webhooks", percent_encode(channel_id));
        let call = self.call(Method::GET, routes::LIST_CHANNEL_WEBHOOKS, path, channel_id);
        self.json(call).await
    }

    pub async fn delete_webhook(
        &self,
        webhook_id: &str,
        reason: Option<&str>,
    ) -> Result<(), RestError> {
        let path = format!("/webhooks/{}", percent_encode(webhook_id));
        let call = self.call(Method::DELETE, routes::DELETE_WEBHOOK, path, webhook_id);
        self.send(Call { reason, ..call }).await.map(drop)
    }

    /// A public thread (type 11) without a starter message.
    pub async fn create_thread(
        &self,
        channel_id: &str,
        name: &str,
        reason: Option<&str>,
    ) -> Result<Channel, RestError> {
        let path = format!("/channels/{}/threads", percent_encode(channel_id));
        let call = self.call(Method::POST, routes::CREATE_THREAD, path, channel_id);
        let body = serde_json::json!({ "name": name, "type": channel_kind::PUBLIC_THREAD });
        self.json(Call {
            reason,
            ..with_body(call, &body)?
        })
        .await
    }

    pub async fn bulk_overwrite_guild_commands(
        &self,
        application_id: &str,
        guild_id: &str,
        commands: &serde_json::Value,
    ) -> Result<serde_json::Value, RestError> {
        let path = format!(
            "/applications/{}/guilds/{}/commands",
            percent_encode(application_id),
            percent_encode(guild_id)
        );
        let call = self.call(Method::PUT, routes::GUILD_COMMANDS, path, guild_id);
        self.json(with_body(call, commands)?).await
    }

    pub async fn bulk_overwrite_global_commands(
        &self,
        application_id: &str,
        commands: &serde_json::Value,
    ) -> Result<serde_json::Value, RestError> {
        let path = format!("/applications/{}/commands", percent_encode(application_id));
        let call = self.call(Method::PUT, routes::GLOBAL_COMMANDS, path, application_id);
        self.json(with_body(call, commands)?).await
    }

    /// Edits the reply to an interaction (interaction webhooks need no bot token).
    pub async fn edit_original_interaction_response(
        &self,
        application_id: &str,
        interaction_token: &Secret<String>,
        message: &serde_json::Value,
    ) -> Result<serde_json::Value, RestError> {
        let token = interaction_token.expose();
        let path = format!(
            "/webhooks/{}/{}/messages/@original",
            percent_encode(application_id),
            percent_encode(token)
        );
        // The bucket key leaves the token out: the limiter's keys are not secrets.
        let call = self.call(
            Method::PATCH,
            routes::EDIT_ORIGINAL_RESPONSE,
            path,
            application_id,
        );
        let call = Call {
            auth: false,
            path_secret: Some(token),
            ..with_body(call, message)?
        };
        self.json(call).await
    }

    /// Posts `message` through a webhook (no bot token; the webhook token is
    /// in the path and masked in errors), into `thread_id` when given. Paced
    /// with this client's other requests under the global limit.
    pub async fn execute_webhook(
        &self,
        webhook_id: &str,
        webhook_token: &Secret<String>,
        thread_id: Option<&str>,
        message: &serde_json::Value,
    ) -> Result<(), RestError> {
        let token = webhook_token.expose();
        let mut path = format!(
            "/webhooks/{}/{}?wait=true",
            percent_encode(webhook_id),
            percent_encode(token)
        );
        if let Some(t) = thread_id {
            path.push_str(&format!("&thread_id={}", percent_encode(t)));
        }
        let call = self.call(Method::POST, routes::EXECUTE_WEBHOOK, path, webhook_id);
        let call = Call {
            auth: false,
            path_secret: Some(token),
            ..with_body(call, message)?
        };
        self.send(call).await.map(|_| ())
    }

    fn call(
        &self,
        method: Method,
        route: &'static str,
        path: String,
        major: &str,
    ) -> Call<'static> {
        Call {
            method,
            route,
            path,
            major: major.to_owned(),
            body: None,
            reason: None,
            auth: true,
            path_secret: None,
        }
    }

    async fn json<T: DeserializeOwned>(&self, call: Call<'_>) -> Result<T, RestError> {
        let body = self.send(call).await?;
        serde_json::from_slice(&body).map_err(|e| {
            // serde's message can quote the input; keep only where it failed.
            RestError::Decode(format!(
                "{:?} error at line {} column {}",
                e.classify(),
                e.line(),
                e.column()
            ))
        })
    }

    /// Sends `call` until it succeeds, fails for good, or runs out of retries.
    async fn send(&self, call: Call<'_>) -> Result<Vec<u8>, RestError> {
        let url = format!("{}{}", self.base_url, call.path);
        let bucket = format!("{} {}", call.route, call.major);
        let secret = call.path_secret.unwrap_or("");
        let mut failures = 0u32;
        let mut rate_limited = 0u32;
        loop {
            if self.invalid_requests() >= INVALID_REQUEST_BUDGET {
                return Err(RestError::InvalidRequestBudget);
            }
            // A bucket blocked longer than a caller should wait fails the call
            // instead of holding it (and an API request behind it) for that long.
            let deadline = Instant::now() + MAX_RATE_LIMIT_WAIT;
            let Some(permit) = self.limiter.acquire_until(&bucket, None, deadline).await else {
                return Err(RestError::RateLimitedTooLong);
            };
            if let Some(shared) = &self.shared {
                // An error leaves this client's own pacing (see SharedBudget).
                if let Ok(wait) = shared.reserve().await {
                    tokio::time::sleep(wait.min(MAX_RATE_LIMIT_WAIT)).await;
                }
            }
            let mut request = self
                .http
                .request(call.method.clone(), &url)
                .headers(self.headers(&call));
            if let Some(body) = &call.body {
                request = request.body(body.clone());
            }
            let result = match request.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let headers = ratelimit::parse_headers(response.headers());
                    response.bytes().await.map(|body| (status, headers, body))
                }
                Err(e) => Err(e),
            };
            let (status, headers, body) = match result {
                Ok(r) => r,
                Err(e) => {
                    // Discord's answer, if any, is unknown: the reservation
                    // ends with the permit and takes nothing for good.
                    drop(permit);
                    self.observer.request_done(call.route, 0);
                    failures += 1;
                    if failures > self.max_retries {
                        return Err(RestError::Network(describe_error(e, secret)));
                    }
                    tokio::time::sleep(self.backoff.delay(failures - 1)).await;
                    continue;
                }
            };
            self.observer.request_done(call.route, status);
            match status {
                200..=299 => {
                    permit.done(&headers);
                    return Ok(body.to_vec());
                }
                429 => {
                    let global = headers.global || ratelimit::global_from_body(&body);
                    let scope = if global {
                        Scope::Global
                    } else {
                        headers.scope.unwrap_or(Scope::User)
                    };
                    if scope != Scope::Shared {
                        // Shared-scope 429s do not count towards the ban.
                        self.record_invalid();
                    }
                    self.observer.rate_limited(scope.as_str());
                    let retry_after = ratelimit::retry_after_from_body(&body)
                        .or(headers.retry_after)
                        .or(headers.reset_after)
                        .unwrap_or(Duration::from_secs(1));
                    permit.rate_limited(&RateLimitHeaders {
                        retry_after: Some(retry_after),
                        global,
                        ..headers
                    });
                    rate_limited += 1;
                    if retry_after > MAX_RATE_LIMIT_WAIT || rate_limited > MAX_RATE_LIMITED_ATTEMPTS
                    {
                        return Err(RestError::RateLimitedTooLong);
                    }
                }
                500..=599 => {
                    permit.refused(&headers);
                    failures += 1;
                    if failures > self.max_retries {
                        return Err(http_error(status, &body, secret));
                    }
                    tokio::time::sleep(self.backoff.delay(failures - 1)).await;
                }
                _ => {
                    permit.refused(&headers);
                    if matches!(status, 401 | 403) {
                        self.record_invalid();
                    }
                    return Err(http_error(status, &body, secret));
                }
            }
        }
    }

    fn headers(&self, call: &Call<'_>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if call.auth {
            headers.insert(AUTHORIZATION, self.auth.clone());
        }
        if call.body.is_some() {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        if let Some(reason) = call.reason.filter(|r| !r.is_empty()) {
            let reason: String = reason.chars().take(AUDIT_LOG_REASON_MAX).collect();
            // Percent-encoded text is ASCII, always a valid header value.
            if let Ok(v) = HeaderValue::from_str(&percent_encode(&reason)) {
                headers.insert("x-audit-log-reason", v);
            }
        }
        ops::trace::inject(&mut headers);
        headers
    }
}

fn with_body<'a, B: Serialize>(call: Call<'a>, body: &B) -> Result<Call<'a>, RestError> {
    let body = serde_json::to_vec(body)
        .map_err(|e| RestError::Decode(format!("encoding request: {e}")))?;
    Ok(Call {
        body: Some(body),
        ..call
    })
}

/// Discord's error JSON (`{"code": 10003, "message": "Unknown Channel"}`) as a
/// [`RestError::Http`]; a non-JSON body is kept as text, capped.
fn http_error(status: u16, body: &[u8], secret: &str) -> RestError {
    #[derive(Deserialize)]
    struct DiscordError {
        code: Option<u64>,
        message: Option<String>,
    }
    let parsed = serde_json::from_slice::<DiscordError>(body).ok();
    let code = parsed.as_ref().and_then(|e| e.code);
    let mut message = parsed
        .and_then(|e| e.message)
        .unwrap_or_else(|| capped_text(body, 512));
    if !secret.is_empty() {
        message = message.replace(secret, "****");
    }
    RestError::Http {
        status,
        code,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_reasons_and_path_segments_are_percent_encoded() {
        assert_eq!(
            percent_encode("run 42: done/ok é"),
            "run%2042%3A%20done%2Fok%20%C3%A9"
        );
        assert_eq!(percent_encode("123-abc_~."), "123-abc_~.");
    }

    #[test]
    fn discord_types_decode() {
        let channel: Channel = serde_json::from_str(
            r#"{"id":"1","name":null,"type":4,"guild_id":"9","position":3,"permission_overwrites":[{"id":"9","type":0,"allow":"0","deny":"2048"}],"nsfw":false}"#,
        )
        .unwrap();
        assert_eq!(channel.kind, channel_kind::GUILD_CATEGORY);
        assert_eq!(channel.name, "");
        assert_eq!(channel.permission_overwrites[0].deny, "2048");
        let hook: Webhook =
            serde_json::from_str(r#"{"id":"5","token":"tok_SECRET","channel_id":null,"type":1}"#)
                .unwrap();
        assert!(!format!("{hook:?}").contains("SECRET"));
        let url = hook.url("http://fake:1/api/v10/").unwrap();
        assert_eq!(
            url.execute_url(),
            "http://fake:1/api/v10/webhooks/5/tok_SECRET?wait=true"
        );
        let no_token = Webhook {
            token: None,
            ..hook
        };
        assert_eq!(no_token.url("http://fake/api"), Err(WebhookUrlError::Token));
    }

    #[test]
    fn create_channel_serialises_discord_names() {
        let body = serde_json::to_value(CreateChannel {
            name: "run-1".into(),
            kind: channel_kind::GUILD_TEXT,
            parent_id: Some("7".into()),
            permission_overwrites: vec![Overwrite {
                id: "9".into(),
                kind: overwrite_kind::ROLE,
                allow: "1024".into(),
                deny: "2048".into(),
            }],
        })
        .unwrap();
        assert_eq!(
            body,
            serde_json::json!({"name":"run-1","type":0,"parent_id":"7",
                "permission_overwrites":[{"id":"9","type":0,"allow":"1024","deny":"2048"}]})
        );
    }

    #[test]
    fn http_errors_keep_discord_code_and_hide_secrets() {
        let e = http_error(404, br#"{"message":"Unknown Channel","code":10003}"#, "");
        assert_eq!(e.code(), Some(10003));
        assert!(e.is_not_found());
        let e = http_error(400, b"bad token abc123 here", "abc123");
        assert_eq!(
            e.to_string(),
            "Discord answered 400 (code None): bad token **** here"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn stops_before_the_invalid_request_ban() {
        let config = RestConfig {
            // Nothing listens there: the guard must refuse before any request.
            base_url: "http://127.0.0.1:9/api/v10".into(),
            bot_token: Secret::new("t".into()),
            timeout: Duration::from_secs(5),
            max_retries: 0,
        };
        let client = RestClient::new(config, Arc::new(NoopObserver)).unwrap();
        for _ in 0..INVALID_REQUEST_BUDGET {
            client.record_invalid();
        }
        assert_eq!(
            client.list_guild_channels("1").await,
            Err(RestError::InvalidRequestBudget)
        );
        // The window slides: ten minutes later the budget is back.
        tokio::time::advance(INVALID_REQUEST_WINDOW).await;
        assert_eq!(client.invalid_requests(), 0);
    }

    #[test]
    fn bad_config_is_refused_without_echoing_the_token() {
        let config = RestConfig {
            base_url: "https://discord.com/api/v10".into(),
            bot_token: Secret::new("bad\ntoken-SECRET".into()),
            timeout: Duration::from_secs(5),
            max_retries: 1,
        };
        let err = RestClient::new(config, Arc::new(NoopObserver)).unwrap_err();
        assert!(!err.to_string().contains("SECRET"));
    }
}
