//! How a fake Discord behaves: which limits it enforces and who it lets in.

use std::net::SocketAddr;
use std::time::Duration;

/// How the fake counts the unadvertised per-channel message limit. Discord
/// does not document it, so a client must keep to both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChannelWindowKind {
    /// At most the limit in any stretch of one window (less the clock
    /// tolerance).
    #[default]
    Sliding,
    /// At most the limit in each window `[phase + k·window, phase + (k+1)·window)`
    /// counted from the fake's start; `phase: None` picks a random one at start.
    Fixed { phase: Option<Duration> },
}

/// Settings of one [`crate::FakeDiscord`]. `Default` is Discord as agentmon
/// meets it: 5 requests / 2 s per webhook, 30 messages / 60 s per channel,
/// 50 requests / s globally, guild `"1"`, any bot token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeConfig {
    /// Where to listen; port 0 picks a free one (tests bind `127.0.0.1:0`).
    pub addr: SocketAddr,
    /// Base URL printed and returned in place of `http://{addr}` (e.g.
    /// `http://fake-discord:8081` in compose, where the bind address is `0.0.0.0`).
    pub public_url: Option<String>,
    /// `false` disables every rate limit (headers are still sent).
    pub rate_limits: bool,
    /// Requests per webhook per [`FakeConfig::webhook_window`], advertised in
    /// `X-RateLimit-*` headers.
    pub webhook_limit: u32,
    pub webhook_window: Duration,
    /// Messages per channel (webhooks together) per [`FakeConfig::channel_window`];
    /// NOT advertised, a 429 with `X-RateLimit-Scope: shared` when exceeded.
    pub channel_messages_per_minute: u32,
    /// The per-channel window: 60 s as on Discord; shorter to scale a test down.
    pub channel_window: Duration,
    /// How the per-channel window counts.
    pub channel_window_kind: ChannelWindowKind,
    /// Requests per second over everything (webhook executes and REST).
    pub global_per_second: u32,
    /// Requests per REST route and major parameter per [`FakeConfig::rest_window`].
    pub rest_limit: u32,
    pub rest_window: Duration,
    /// Slack for the sliding windows (channel, global, and the maxima in the
    /// stats): a request is counted in a window of `window - tolerance`, so a
    /// client that paces by its own send times is not refused because network
    /// latency moved two requests closer together on arrival.
    pub clock_tolerance: Duration,
    /// The one guild that exists.
    pub guild_id: String,
    /// Channels (categories included) the guild may hold: Discord's 500
    /// ([`crate::validate::limits::CHANNELS_PER_GUILD`]); higher only to
    /// measure a client with more runs than one guild takes.
    pub guild_channel_limit: usize,
    /// When set, REST calls must carry `Authorization: Bot <this>`; otherwise
    /// any non-empty bot token is accepted.
    pub bot_token: Option<String>,
}

impl Default for FakeConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            public_url: None,
            rate_limits: true,
            webhook_limit: 5,
            webhook_window: Duration::from_secs(2),
            channel_messages_per_minute: 30,
            channel_window: Duration::from_secs(60),
            channel_window_kind: ChannelWindowKind::Sliding,
            global_per_second: 50,
            rest_limit: 10,
            rest_window: Duration::from_secs(1),
            clock_tolerance: Duration::from_millis(100),
            guild_id: "1".into(),
            guild_channel_limit: crate::validate::limits::CHANNELS_PER_GUILD,
            bot_token: None,
        }
    }
}

impl FakeConfig {
    /// Defaults with every rate limit off (for tests of something else).
    pub fn without_rate_limits() -> Self {
        Self {
            rate_limits: false,
            ..Self::default()
        }
    }
}
