//! Everything the fake holds: guild channels, webhooks, commands, recorded
//! messages and interaction edits, rate-limit windows, faults and stats.
//!
//! One `State` behind one mutex; handlers lock it for plain data updates only
//! (never across an await), so the order of arrival is the order of record.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::distr::{Alphanumeric, SampleString};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::config::ChannelWindowKind;
use crate::config::FakeConfig;
use crate::error::{Advertised, RateLimited, Scope};
use crate::faults::FaultQueue;
use crate::limiter::{FixedWindow, MaxInWindow, PhasedWindow, SlidingWindow};

/// Discord's epoch (2015-01-01) in unix milliseconds.
const DISCORD_EPOCH_MS: u64 = 1_420_070_400_000;
/// Channel types.
pub mod kind {
    pub const TEXT: u8 = 0;
    pub const CATEGORY: u8 = 4;
    pub const PUBLIC_THREAD: u8 = 11;
    pub const PRIVATE_THREAD: u8 = 12;
    pub const FORUM: u8 = 15;

    pub fn is_thread(k: u8) -> bool {
        matches!(k, PUBLIC_THREAD | PRIVATE_THREAD | 10)
    }
}
/// Discord's window of the unadvertised per-channel webhook limit.
pub const CHANNEL_WINDOW: Duration = Duration::from_secs(60);
const GLOBAL_WINDOW: Duration = Duration::from_secs(1);
/// Closed windows are forgotten above this many tracked keys.
const PRUNE_ABOVE: usize = 4096;

pub fn unix_ms() -> u64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// RFC 3339 UTC time with milliseconds for a unix time in ms.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}+00:00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// Stable FNV-1a hash as hex: the `X-RateLimit-Bucket` of a key.
pub fn bucket_hash(key: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// A guild channel, category or thread.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChannelRecord {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: u8,
    pub name: String,
    pub guild_id: String,
    pub parent_id: Option<String>,
    pub position: i64,
    pub permission_overwrites: Vec<Value>,
    pub topic: Option<String>,
    /// Threads only.
    pub archived: bool,
    pub locked: bool,
    pub auto_archive_duration: u32,
}

impl ChannelRecord {
    /// The channel object Discord returns.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "id": self.id,
            "type": self.kind,
            "name": self.name,
            "guild_id": self.guild_id,
            "parent_id": self.parent_id,
            "position": self.position,
            "permission_overwrites": self.permission_overwrites,
            "nsfw": false,
            "flags": 0,
        });
        if kind::is_thread(self.kind) {
            v["thread_metadata"] = json!({
                "archived": self.archived,
                "locked": self.locked,
                "auto_archive_duration": self.auto_archive_duration,
                "archive_timestamp": Value::Null,
            });
            v["owner_id"] = json!("0");
            v["message_count"] = json!(0);
            v["member_count"] = json!(0);
            if let Some(o) = v.as_object_mut() {
                o.remove("permission_overwrites");
                o.remove("position");
            }
        } else if matches!(self.kind, kind::TEXT | kind::FORUM) {
            v["topic"] = json!(self.topic);
            v["rate_limit_per_user"] = json!(0);
            v["last_message_id"] = Value::Null;
        }
        v
    }
}

/// A webhook; deleted ones are kept (marked) so executes answer 404 and the
/// admin API can show them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WebhookRecord {
    pub id: String,
    pub token: String,
    pub channel_id: String,
    pub guild_id: String,
    pub name: String,
    pub deleted: bool,
}

impl WebhookRecord {
    /// The webhook object Discord returns (with its token, as for its creator).
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "type": 1,
            "guild_id": self.guild_id,
            "channel_id": self.channel_id,
            "name": self.name,
            "avatar": Value::Null,
            "token": self.token,
            "application_id": Value::Null,
        })
    }
}

/// A file uploaded with a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttachmentRecord {
    /// The multipart field, e.g. `files[0]`.
    pub field: String,
    pub filename: String,
    pub size: usize,
    pub content_type: Option<String>,
}

/// An accepted webhook message.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MessageRecord {
    /// 1, 2, … in arrival order.
    pub seq: u64,
    /// The message's snowflake.
    pub id: String,
    pub webhook_id: String,
    /// The webhook's channel (the thread's parent for thread posts).
    pub channel_id: String,
    pub thread_id: Option<String>,
    pub received_at_unix_ms: u64,
    /// Milliseconds since the fake started (tokio clock: pausable, monotonic).
    pub received_at_mono_ms: u64,
    /// `?wait=true` was given.
    pub wait: bool,
    /// Sent as multipart (`payload_json` + files).
    pub multipart: bool,
    /// The JSON payload exactly as received.
    pub payload: Value,
    pub attachments: Vec<AttachmentRecord>,
}

impl MessageRecord {
    /// The message object "Execute Webhook" answers with `?wait=true`.
    pub fn to_json(&self, webhook_name: &str) -> Value {
        let p = &self.payload;
        let embeds: Vec<Value> = p
            .get("embeds")
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .map(|e| {
                        let mut e = e.clone();
                        if e.get("type").is_none() {
                            e["type"] = json!("rich");
                        }
                        e
                    })
                    .collect()
            })
            .unwrap_or_default();
        let attachments: Vec<Value> = self
            .attachments
            .iter()
            .enumerate()
            .map(|(i, a)| {
                json!({
                    "id": format!("{}{i}", self.id),
                    "filename": a.filename,
                    "size": a.size,
                    "content_type": a.content_type,
                    "url": format!("https://cdn.fake-discord.invalid/attachments/{}/{}", self.id, a.filename),
                })
            })
            .collect();
        json!({
            "id": self.id,
            "type": 0,
            "channel_id": self.thread_id.as_ref().unwrap_or(&self.channel_id),
            "author": {
                "id": self.webhook_id,
                "username": p.get("username").and_then(Value::as_str).unwrap_or(webhook_name),
                "avatar": Value::Null,
                "discriminator": "0000",
                "bot": true,
            },
            "content": p.get("content").and_then(Value::as_str).unwrap_or(""),
            "timestamp": rfc3339(self.received_at_unix_ms),
            "edited_timestamp": Value::Null,
            "tts": p.get("tts").and_then(Value::as_bool).unwrap_or(false),
            "mention_everyone": false,
            "mentions": [],
            "mention_roles": [],
            "attachments": attachments,
            "embeds": embeds,
            "pinned": false,
            "webhook_id": self.webhook_id,
            "flags": p.get("flags").and_then(Value::as_u64).unwrap_or(0),
            "components": [],
        })
    }
}

/// A `PATCH /webhooks/{app}/{token}/messages/@original`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InteractionEdit {
    pub seq: u64,
    pub application_id: String,
    pub interaction_token: String,
    pub received_at_unix_ms: u64,
    pub received_at_mono_ms: u64,
    pub body: Value,
}

/// What the fake advertises in rate-limit headers when limits are off: a budget
/// no client exhausts, so header-driven limiters do not pace either.
pub const UNLIMITED_BUDGET: u32 = 1_000_000;

/// Counters since start (or the last `POST /_admin/reset`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Webhook execute requests received (every outcome).
    pub requests: u64,
    /// Messages accepted and recorded.
    pub accepted: u64,
    pub accepted_by_webhook: BTreeMap<String, u64>,
    pub attachments: u64,
    /// Executes refused with 400 (validation, empty message, bad thread…).
    pub rejected_400: u64,
    /// The rules broken by those, each counted once per request.
    pub rejected_400_by_reason: BTreeMap<String, u64>,
    /// Executes refused with 429, by scope (`user`, `shared`, `global`),
    /// injected storms included.
    pub rate_limited: BTreeMap<String, u64>,
    /// Executes answered 404 (unknown/deleted webhook or token mismatch, or a
    /// `not_found` fault).
    pub not_found: u64,
    /// Accepted messages without `allowed_mentions`.
    pub missing_allowed_mentions: u64,
    /// Accepted messages whose `allowed_mentions.parse` allows a ping.
    pub allowed_mentions_parse_nonempty: u64,
    /// Most execute requests seen per webhook in any sliding window of the
    /// webhook bucket's length (429s included). Discord's buckets are fixed
    /// windows, so a client obeying the headers can reach up to 2 × the limit.
    pub max_webhook_requests_per_window: BTreeMap<String, u64>,
    /// Most messages accepted per channel in any 60 s (less the clock
    /// tolerance) window: at most 30 for a compliant client.
    pub max_channel_messages_per_minute: BTreeMap<String, u64>,
    /// Most requests (executes and REST) in any 1 s (less tolerance) window.
    pub max_global_requests_per_second: u64,
    /// Faults served, by kind.
    pub faults_served: BTreeMap<String, u64>,
    /// When the last fault was served (ms since start, as
    /// `received_at_mono_ms`): the end of an injected outage.
    pub last_fault_at_mono_ms: Option<u64>,
    /// REST requests by route template.
    pub rest_requests: BTreeMap<String, u64>,
    /// REST requests refused with 429, by scope.
    pub rest_rate_limited: BTreeMap<String, u64>,
    pub rest_unauthorized: u64,
    /// REST requests refused with 400, by route template.
    pub rest_rejected_400: BTreeMap<String, u64>,
    pub interaction_edits: u64,
    /// Most executes of one webhook being handled at once (request received,
    /// answer not sent), faults' delays included: 1 for a client that never
    /// has two requests in flight on one webhook.
    pub max_concurrent_executes_by_webhook: BTreeMap<String, u64>,
    /// Executes of each webhook being handled now.
    #[serde(skip)]
    pub executes_in_flight: BTreeMap<String, u64>,
}

fn bump(map: &mut BTreeMap<String, u64>, key: &str) {
    *map.entry(key.to_owned()).or_default() += 1;
}

/// One channel's message window, counted as configured.
#[derive(Debug)]
enum ChannelWindow {
    Sliding(SlidingWindow),
    Fixed(PhasedWindow),
}

impl ChannelWindow {
    fn peek(&mut self, now: Instant) -> Result<(), Duration> {
        match self {
            ChannelWindow::Sliding(w) => w.peek(now),
            ChannelWindow::Fixed(w) => w.peek(now),
        }
    }

    fn take(&mut self, now: Instant) {
        match self {
            ChannelWindow::Sliding(w) => w.take(now),
            ChannelWindow::Fixed(w) => w.take(now),
        }
    }

    fn count(&mut self, now: Instant) -> usize {
        match self {
            ChannelWindow::Sliding(w) => w.count(now),
            ChannelWindow::Fixed(w) => w.count(now),
        }
    }
}

/// Windows a request is checked against: `(global, bucket)`.
#[derive(Debug)]
struct Windows {
    global: SlidingWindow,
    webhooks: HashMap<String, FixedWindow>,
    channels: HashMap<String, ChannelWindow>,
    rest: HashMap<String, FixedWindow>,
}

/// Stats trackers that outlive a window.
#[derive(Debug)]
struct Trackers {
    webhooks: HashMap<String, MaxInWindow>,
    channels: HashMap<String, MaxInWindow>,
    global: MaxInWindow,
}

/// See the module docs.
#[derive(Debug)]
pub struct State {
    pub config: FakeConfig,
    /// `http://host:port` clients reach the fake at (the public URL when set).
    pub base_url: String,
    pub started: Instant,
    /// The phase of fixed per-channel windows (drawn at start when the config
    /// leaves it random); `None` for a sliding window.
    pub channel_phase: Option<Duration>,
    last_snowflake: u64,
    pub channels: BTreeMap<String, ChannelRecord>,
    pub webhooks: BTreeMap<String, WebhookRecord>,
    /// `(application_id, guild_id or None for global)` → the last PUT, echoed.
    pub commands: BTreeMap<(String, Option<String>), Vec<Value>>,
    /// Command ids stay stable per (scope, name) across overwrites, as on Discord.
    command_ids: HashMap<(String, Option<String>, String), String>,
    pub messages: Vec<MessageRecord>,
    pub edits: Vec<InteractionEdit>,
    pub faults: FaultQueue,
    pub stats: Stats,
    windows: Windows,
    trackers: Trackers,
    next_seq: u64,
}

impl State {
    pub fn new(config: FakeConfig) -> Self {
        let windows = Windows {
            global: SlidingWindow::new(
                config.global_per_second,
                Self::effective(&config, GLOBAL_WINDOW),
            ),
            webhooks: HashMap::new(),
            channels: HashMap::new(),
            rest: HashMap::new(),
        };
        let trackers = Trackers {
            webhooks: HashMap::new(),
            channels: HashMap::new(),
            global: MaxInWindow::new(Self::effective(&config, GLOBAL_WINDOW)),
        };
        let base_url = config
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", config.addr));
        let channel_phase = match config.channel_window_kind {
            ChannelWindowKind::Sliding => None,
            ChannelWindowKind::Fixed { phase: Some(p) } => Some(p),
            ChannelWindowKind::Fixed { phase: None } => {
                let window_ms = u64::try_from(config.channel_window.as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1);
                Some(Duration::from_millis(rand::random_range(0..window_ms)))
            }
        };
        Self {
            config,
            base_url,
            started: Instant::now(),
            channel_phase,
            last_snowflake: 0,
            channels: BTreeMap::new(),
            webhooks: BTreeMap::new(),
            commands: BTreeMap::new(),
            command_ids: HashMap::new(),
            messages: Vec::new(),
            edits: Vec::new(),
            faults: FaultQueue::default(),
            stats: Stats::default(),
            windows,
            trackers,
            next_seq: 0,
        }
    }

    fn effective(config: &FakeConfig, window: Duration) -> Duration {
        window
            .saturating_sub(config.clock_tolerance)
            .max(window / 2)
    }

    /// A fresh snowflake: time-based like Discord's, strictly increasing.
    pub fn snowflake(&mut self) -> String {
        let now = unix_ms().saturating_sub(DISCORD_EPOCH_MS) << 22;
        self.last_snowflake = now.max(self.last_snowflake + 1);
        self.last_snowflake.to_string()
    }

    /// `{base}/api/v10`.
    pub fn api_base(&self) -> String {
        format!("{}/api/v10", self.base_url.trim_end_matches('/'))
    }

    /// The execute URL of a webhook.
    pub fn webhook_url(&self, id: &str, token: &str) -> String {
        format!("{}/webhooks/{id}/{token}", self.api_base())
    }

    pub fn mono_ms(&self, now: Instant) -> u64 {
        u64::try_from((now - self.started).as_millis()).unwrap_or(u64::MAX)
    }

    /// Clears messages, edits and stats (the guild, webhooks, faults and
    /// rate-limit windows stay: they are Discord's state, not the record).
    pub fn reset(&mut self) {
        self.messages.clear();
        self.edits.clear();
        self.stats = Stats::default();
        self.trackers.webhooks.clear();
        self.trackers.channels.clear();
        self.trackers.global = MaxInWindow::new(Self::effective(&self.config, GLOBAL_WINDOW));
        self.next_seq = 0;
    }

    pub fn next_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    // ---- guild -------------------------------------------------------------

    /// Channels counted against the 500-per-guild limit (threads are not).
    pub fn guild_channel_count(&self) -> usize {
        self.channels
            .values()
            .filter(|c| !kind::is_thread(c.kind))
            .count()
    }

    /// Channels under `category` (threads are not counted).
    pub fn category_children(&self, category: &str) -> usize {
        self.channels
            .values()
            .filter(|c| !kind::is_thread(c.kind) && c.parent_id.as_deref() == Some(category))
            .count()
    }

    pub fn insert_channel(
        &mut self,
        name: String,
        kind: u8,
        parent_id: Option<String>,
        permission_overwrites: Vec<Value>,
        topic: Option<String>,
    ) -> ChannelRecord {
        let id = self.snowflake();
        let position = i64::try_from(self.channels.len()).unwrap_or(i64::MAX);
        let c = ChannelRecord {
            id: id.clone(),
            kind,
            name,
            guild_id: self.config.guild_id.clone(),
            parent_id,
            position,
            permission_overwrites,
            topic,
            archived: false,
            locked: false,
            auto_archive_duration: 4320,
        };
        self.channels.insert(id, c.clone());
        c
    }

    /// Deletes a channel with its threads and webhooks; a category's children
    /// lose their parent, as on Discord.
    pub fn remove_channel(&mut self, id: &str) -> Option<ChannelRecord> {
        let removed = self.channels.remove(id)?;
        let threads: Vec<String> = self
            .channels
            .values()
            .filter(|c| kind::is_thread(c.kind) && c.parent_id.as_deref() == Some(id))
            .map(|c| c.id.clone())
            .collect();
        for t in threads {
            self.channels.remove(&t);
        }
        for c in self.channels.values_mut() {
            if c.parent_id.as_deref() == Some(id) {
                c.parent_id = None;
            }
        }
        for w in self.webhooks.values_mut() {
            if w.channel_id == id {
                w.deleted = true;
            }
        }
        Some(removed)
    }

    pub fn insert_webhook(&mut self, channel_id: &str, name: &str) -> WebhookRecord {
        let id = self.snowflake();
        let w = WebhookRecord {
            id: id.clone(),
            token: Alphanumeric.sample_string(&mut rand::rng(), 68),
            channel_id: channel_id.to_owned(),
            guild_id: self.config.guild_id.clone(),
            name: name.to_owned(),
            deleted: false,
        };
        self.webhooks.insert(id, w.clone());
        w
    }

    /// Live webhooks of a channel.
    pub fn channel_webhooks(&self, channel_id: &str) -> usize {
        self.webhooks
            .values()
            .filter(|w| !w.deleted && w.channel_id == channel_id)
            .count()
    }

    /// Marks a webhook deleted; `false` when unknown or already deleted.
    pub fn delete_webhook(&mut self, id: &str) -> bool {
        match self.webhooks.get_mut(id) {
            Some(w) if !w.deleted => {
                w.deleted = true;
                true
            }
            _ => false,
        }
    }

    /// Stores a command overwrite and returns the echo (with ids).
    pub fn put_commands(
        &mut self,
        application_id: &str,
        guild_id: Option<&str>,
        commands: &[Value],
    ) -> Vec<Value> {
        let scope = (application_id.to_owned(), guild_id.map(str::to_owned));
        let mut out = Vec::with_capacity(commands.len());
        for c in commands {
            let name = c
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            let key = (scope.0.clone(), scope.1.clone(), name);
            let id = match self.command_ids.get(&key) {
                Some(id) => id.clone(),
                None => {
                    let id = self.snowflake();
                    self.command_ids.insert(key, id.clone());
                    id
                }
            };
            let mut c = c.clone();
            if let Some(o) = c.as_object_mut() {
                o.insert("id".into(), json!(id));
                o.insert("application_id".into(), json!(application_id));
                o.entry("type").or_insert(json!(1));
                o.entry("default_member_permissions").or_insert(Value::Null);
                o.insert("version".into(), json!(id));
                if let Some(g) = guild_id {
                    o.insert("guild_id".into(), json!(g));
                }
            }
            out.push(c);
        }
        self.commands.insert(scope, out.clone());
        out
    }

    // ---- rate limits -------------------------------------------------------

    fn count_global(&mut self, now: Instant) {
        self.windows.global.take(now);
        self.trackers.global.record(now);
        self.stats.max_global_requests_per_second = self.trackers.global.max() as u64;
    }

    fn global_check(&mut self, now: Instant) -> Result<(), RateLimited> {
        if !self.config.rate_limits {
            return Ok(());
        }
        self.windows
            .global
            .peek(now)
            .map_err(|retry_after| RateLimited {
                scope: Scope::Global,
                retry_after,
                bucket: None,
            })
    }

    fn advertised(window: &mut FixedWindow, key: &str, now: Instant) -> Advertised {
        Advertised {
            state: window.state(now),
            bucket: bucket_hash(key),
        }
    }

    /// The webhook's advertised bucket, as headers would show it now.
    pub fn webhook_bucket(&mut self, webhook_id: &str, now: Instant) -> Advertised {
        let (limit, window) = (self.config.webhook_limit, self.config.webhook_window);
        let w = self
            .windows
            .webhooks
            .entry(webhook_id.to_owned())
            .or_insert_with(|| FixedWindow::new(limit, window));
        Self::advertised(w, &format!("webhook:{webhook_id}"), now)
    }

    /// Global and per-webhook limits for an execute; on success both count it
    /// and the webhook bucket after it is returned.
    pub fn limit_execute(
        &mut self,
        webhook_id: &str,
        now: Instant,
    ) -> Result<Advertised, RateLimited> {
        let (limit, window) = (self.config.webhook_limit, self.config.webhook_window);
        let tracker_window = window;
        self.trackers
            .webhooks
            .entry(webhook_id.to_owned())
            .or_insert_with(|| MaxInWindow::new(tracker_window))
            .record(now);
        if let Some(t) = self.trackers.webhooks.get(webhook_id) {
            self.stats
                .max_webhook_requests_per_window
                .insert(webhook_id.to_owned(), t.max() as u64);
        }
        self.global_check(now)?;
        if self.windows.webhooks.len() >= PRUNE_ABOVE
            && !self.windows.webhooks.contains_key(webhook_id)
        {
            self.windows.webhooks.retain(|_, w| !w.idle(now));
        }
        let enforce = self.config.rate_limits;
        let key = format!("webhook:{webhook_id}");
        let w = self
            .windows
            .webhooks
            .entry(webhook_id.to_owned())
            .or_insert_with(|| FixedWindow::new(limit, window));
        if enforce {
            if let Err(retry_after) = w.peek(now) {
                return Err(RateLimited {
                    scope: Scope::User,
                    retry_after,
                    bucket: Some(Self::advertised(w, &key, now)),
                });
            }
        }
        w.take(now);
        let mut bucket = Self::advertised(w, &key, now);
        if !enforce {
            // Limits off: advertise a budget no client will exhaust, so a
            // header-driven limiter does not pace either.
            bucket.state.limit = UNLIMITED_BUDGET;
            bucket.state.remaining = UNLIMITED_BUDGET;
        }
        self.count_global(now);
        Ok(bucket)
    }

    /// The unadvertised per-channel message limit (checked after validation;
    /// only accepted messages count).
    pub fn channel_check(
        &mut self,
        channel_id: &str,
        now: Instant,
    ) -> Result<(), std::time::Duration> {
        if !self.config.rate_limits {
            return Ok(());
        }
        match self.windows.channels.get_mut(channel_id) {
            Some(w) => w.peek(now),
            None => Ok(()),
        }
    }

    /// Records an accepted message in its channel's window and the stats.
    pub fn count_message(&mut self, channel_id: &str, now: Instant) {
        let max = self.config.channel_messages_per_minute;
        let effective = Self::effective(&self.config, self.config.channel_window);
        if self.windows.channels.len() >= PRUNE_ABOVE
            && !self.windows.channels.contains_key(channel_id)
        {
            self.windows.channels.retain(|_, w| w.count(now) > 0);
        }
        let (window, phase, started) =
            (self.config.channel_window, self.channel_phase, self.started);
        self.windows
            .channels
            .entry(channel_id.to_owned())
            .or_insert_with(|| match phase {
                None => ChannelWindow::Sliding(SlidingWindow::new(max, effective)),
                Some(phase) => ChannelWindow::Fixed(PhasedWindow::new(max, window, started, phase)),
            })
            .take(now);
        let t = self
            .trackers
            .channels
            .entry(channel_id.to_owned())
            .or_insert_with(|| MaxInWindow::new(effective));
        t.record(now);
        let m = t.max() as u64;
        self.stats
            .max_channel_messages_per_minute
            .insert(channel_id.to_owned(), m);
    }

    /// Global and per-route limits for a REST call; `major` is the top-level
    /// resource (guild, channel, webhook id).
    pub fn limit_rest(
        &mut self,
        route: &str,
        major: &str,
        now: Instant,
    ) -> Result<Advertised, RateLimited> {
        bump(&mut self.stats.rest_requests, route);
        let result = self.limit_rest_inner(route, major, now);
        if let Err(r) = &result {
            bump(&mut self.stats.rest_rate_limited, r.scope.as_str());
        }
        result
    }

    fn limit_rest_inner(
        &mut self,
        route: &str,
        major: &str,
        now: Instant,
    ) -> Result<Advertised, RateLimited> {
        self.global_check(now)?;
        let (limit, window) = (self.config.rest_limit, self.config.rest_window);
        if self.windows.rest.len() >= PRUNE_ABOVE {
            self.windows.rest.retain(|_, w| !w.idle(now));
        }
        let key = format!("{route} {major}");
        let enforce = self.config.rate_limits;
        let w = self
            .windows
            .rest
            .entry(key)
            .or_insert_with(|| FixedWindow::new(limit, window));
        // The bucket id leaves the major parameter out, as Discord's does.
        if enforce {
            if let Err(retry_after) = w.peek(now) {
                return Err(RateLimited {
                    scope: Scope::User,
                    retry_after,
                    bucket: Some(Self::advertised(w, route, now)),
                });
            }
        }
        w.take(now);
        let bucket = Self::advertised(w, route, now);
        self.count_global(now);
        Ok(bucket)
    }

    // ---- stats helpers -----------------------------------------------------

    pub fn count_rate_limited(&mut self, scope: Scope) {
        bump(&mut self.stats.rate_limited, scope.as_str());
    }

    pub fn count_fault(&mut self, label: &str) {
        bump(&mut self.stats.faults_served, label);
    }

    pub fn count_rejected(&mut self, reasons: &[&str]) {
        self.stats.rejected_400 += 1;
        for r in reasons {
            bump(&mut self.stats.rejected_400_by_reason, r);
        }
    }

    pub fn count_rest_rejected(&mut self, route: &str) {
        bump(&mut self.stats.rest_rejected_400, route);
    }

    pub fn count_accepted(
        &mut self,
        m: &MessageRecord,
        allowed_mentions: bool,
        parse_nonempty: bool,
    ) {
        self.stats.accepted += 1;
        bump(&mut self.stats.accepted_by_webhook, &m.webhook_id);
        self.stats.attachments += m.attachments.len() as u64;
        if !allowed_mentions {
            self.stats.missing_allowed_mentions += 1;
        }
        if parse_nonempty {
            self.stats.allowed_mentions_parse_nonempty += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> FakeConfig {
        FakeConfig {
            clock_tolerance: Duration::ZERO,
            ..FakeConfig::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn sixth_execute_in_two_seconds_is_refused_and_not_counted() {
        let mut s = State::new(config());
        for left in (0..5).rev() {
            let b = s.limit_execute("1", Instant::now()).unwrap();
            assert_eq!(b.state.remaining, left);
            assert_eq!(b.bucket, bucket_hash("webhook:1"));
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        let r = s.limit_execute("1", Instant::now()).unwrap_err();
        assert_eq!(r.scope, Scope::User);
        assert_eq!(r.retry_after, Duration::from_millis(1500));
        // Another webhook has its own bucket.
        assert!(s.limit_execute("2", Instant::now()).is_ok());
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(
            s.limit_execute("1", Instant::now())
                .unwrap()
                .state
                .remaining,
            4
        );
        // Seen (refusal included) in the 2 s up to 2.0 s: 100..400, 500 and 2000 ms.
        assert_eq!(s.stats.max_webhook_requests_per_window["1"], 6);
    }

    #[tokio::test(start_paused = true)]
    async fn thirty_first_message_in_a_minute_is_shared_scope() {
        let mut s = State::new(config());
        for _ in 0..30 {
            assert_eq!(s.channel_check("c", Instant::now()), Ok(()));
            s.count_message("c", Instant::now());
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert_eq!(
            s.channel_check("c", Instant::now()),
            Err(Duration::from_secs(30))
        );
        assert_eq!(s.channel_check("other", Instant::now()), Ok(()));
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(s.channel_check("c", Instant::now()), Ok(()));
        assert_eq!(s.stats.max_channel_messages_per_minute["c"], 30);
    }

    #[tokio::test(start_paused = true)]
    async fn channel_limit_as_fixed_windows_of_a_phase_and_scaled() {
        let mut s = State::new(FakeConfig {
            channel_messages_per_minute: 3,
            channel_window: Duration::from_secs(6),
            channel_window_kind: ChannelWindowKind::Fixed {
                phase: Some(Duration::from_secs(4)),
            },
            ..config()
        });
        assert_eq!(s.channel_phase, Some(Duration::from_secs(4)));
        // Windows [-2 s, 4 s), [4 s, 10 s): three at 3 s, three more at 4 s.
        tokio::time::advance(Duration::from_secs(3)).await;
        for _ in 0..3 {
            assert_eq!(s.channel_check("c", Instant::now()), Ok(()));
            s.count_message("c", Instant::now());
        }
        assert_eq!(
            s.channel_check("c", Instant::now()),
            Err(Duration::from_secs(1))
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        for _ in 0..3 {
            assert_eq!(s.channel_check("c", Instant::now()), Ok(()));
            s.count_message("c", Instant::now());
        }
        assert_eq!(
            s.channel_check("c", Instant::now()),
            Err(Duration::from_secs(6))
        );
        // A random phase lies within the window.
        let random = State::new(FakeConfig {
            channel_window_kind: ChannelWindowKind::Fixed { phase: None },
            ..config()
        });
        assert!(random
            .channel_phase
            .is_some_and(|p| p < Duration::from_secs(60)));
    }

    #[tokio::test(start_paused = true)]
    async fn global_limit_spans_webhooks_and_rest() {
        let mut s = State::new(FakeConfig {
            webhook_limit: 1000,
            ..config()
        });
        for i in 0..25 {
            s.limit_execute(&i.to_string(), Instant::now()).unwrap();
            s.limit_rest(
                "GET /guilds/{guild_id}/channels",
                &i.to_string(),
                Instant::now(),
            )
            .unwrap();
        }
        let r = s.limit_execute("x", Instant::now()).unwrap_err();
        assert_eq!((r.scope, r.bucket), (Scope::Global, None));
        assert_eq!(r.retry_after, Duration::from_secs(1));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(s.limit_execute("x", Instant::now()).is_ok());
        assert_eq!(s.stats.max_global_requests_per_second, 50);
    }

    #[tokio::test(start_paused = true)]
    async fn tolerance_forgives_arrival_jitter() {
        let mut s = State::new(FakeConfig::default());
        for _ in 0..30 {
            s.count_message("c", Instant::now());
        }
        // A client that waited its 60 s but whose request arrived 50 ms early.
        tokio::time::advance(Duration::from_millis(59_950)).await;
        assert_eq!(s.channel_check("c", Instant::now()), Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn disabled_limits_never_refuse() {
        let mut s = State::new(FakeConfig::without_rate_limits());
        for _ in 0..100 {
            let b = s.limit_execute("1", Instant::now()).unwrap();
            assert_eq!(b.state.limit, UNLIMITED_BUDGET);
            assert_eq!(b.state.remaining, UNLIMITED_BUDGET);
            s.count_message("c", Instant::now());
            assert_eq!(s.channel_check("c", Instant::now()), Ok(()));
        }
    }

    #[test]
    fn snowflakes_increase_and_times_format() {
        let mut s = State::new(config());
        let a: u64 = s.snowflake().parse().unwrap();
        let b: u64 = s.snowflake().parse().unwrap();
        assert!(b > a && a > 1 << 22);
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000+00:00");
        assert_eq!(rfc3339(1_735_787_045_678), "2025-01-02T03:04:05.678+00:00");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000+00:00");
    }
}
