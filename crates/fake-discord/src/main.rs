//! `fake-discord`: the strict fake Discord as a process (e2e tests, compose demo).
//!
//! Prints one JSON line on stdout once listening:
//! `{"listening":"127.0.0.1:PORT","api_base":"http://127.0.0.1:PORT/api/v10","webhook_url":…}`
//! (`webhook_url` only with `--create-webhook`); logs go to stderr. Exits 0 on
//! SIGTERM or SIGINT after draining connections.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use fake_discord::{ChannelWindowKind, FakeConfig, FakeDiscord};
use fake_support::cli::{init_logging, print_listening_line, wait_for_signal, LogFormat};

/// How the per-channel message limit counts (Discord does not say).
#[derive(Debug, Clone, Copy, ValueEnum)]
enum ChannelWindowArg {
    /// At most the limit in any stretch of one window.
    Sliding,
    /// At most the limit in each fixed window (see --channel-window-phase-ms).
    Fixed,
}

/// A strict fake of the Discord API agentmon uses (webhooks and bot REST),
/// with Discord's limits, rate-limit headers, an admin API under /_admin and
/// fault injection.
#[derive(Debug, Parser)]
#[command(name = "fake-discord", version)]
struct Cli {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, env = "FAKE_DISCORD_ADDR", default_value = "127.0.0.1:0")]
    addr: SocketAddr,
    /// Base URL printed and used in webhook URLs instead of http://ADDR (e.g.
    /// http://fake-discord:8081 in compose).
    #[arg(long, env = "FAKE_DISCORD_PUBLIC_URL")]
    public_url: Option<String>,
    /// Create a text channel and a webhook in it at start; its URL is printed.
    #[arg(long, env = "FAKE_DISCORD_CREATE_WEBHOOK")]
    create_webhook: bool,
    /// Enforce no rate limit (headers are still sent).
    #[arg(long, env = "FAKE_DISCORD_NO_RATE_LIMITS")]
    no_rate_limits: bool,
    /// Requests per webhook per window (advertised in X-RateLimit-*).
    #[arg(long, env = "FAKE_DISCORD_WEBHOOK_LIMIT", default_value_t = 5)]
    webhook_limit: u32,
    /// Length of the per-webhook window, in ms.
    #[arg(long, env = "FAKE_DISCORD_WEBHOOK_WINDOW_MS", default_value_t = 2000)]
    webhook_window_ms: u64,
    /// Messages per channel per window (not advertised; 429 scope shared beyond).
    #[arg(
        long,
        env = "FAKE_DISCORD_CHANNEL_MESSAGES_PER_MINUTE",
        default_value_t = 30
    )]
    channel_messages_per_minute: u32,
    /// Length of the per-channel window, in ms (Discord: 60000; shorter to
    /// scale a test down).
    #[arg(long, env = "FAKE_DISCORD_CHANNEL_WINDOW_MS", default_value_t = 60_000)]
    channel_window_ms: u64,
    /// How the per-channel window counts.
    #[arg(
        long,
        env = "FAKE_DISCORD_CHANNEL_WINDOW",
        value_enum,
        default_value = "sliding"
    )]
    channel_window: ChannelWindowArg,
    /// With --channel-window fixed: where windows start, in ms after the
    /// fake's start (modulo the window); random when unset.
    #[arg(long, env = "FAKE_DISCORD_CHANNEL_WINDOW_PHASE_MS")]
    channel_window_phase_ms: Option<u64>,
    /// Requests per second over all routes (429 global beyond).
    #[arg(long, env = "FAKE_DISCORD_GLOBAL_PER_SECOND", default_value_t = 50)]
    global_per_second: u32,
    /// Requests per REST route and major parameter per window.
    #[arg(long, env = "FAKE_DISCORD_REST_LIMIT", default_value_t = 10)]
    rest_limit: u32,
    /// Length of the per-route REST window, in ms.
    #[arg(long, env = "FAKE_DISCORD_REST_WINDOW_MS", default_value_t = 1000)]
    rest_window_ms: u64,
    /// Slack for the sliding windows (channel, global), in ms: forgives
    /// arrival jitter of clients that pace by their own send times.
    #[arg(long, env = "FAKE_DISCORD_CLOCK_TOLERANCE_MS", default_value_t = 100)]
    clock_tolerance_ms: u64,
    /// The one guild that exists.
    #[arg(long, env = "FAKE_DISCORD_GUILD_ID", default_value = "1")]
    guild_id: String,
    /// Channels (categories included) the guild holds at most: Discord's
    /// 500. Raise it only to measure a client past one guild's worth of runs.
    #[arg(long, env = "FAKE_DISCORD_GUILD_CHANNEL_LIMIT", default_value_t = fake_discord::validate::limits::CHANNELS_PER_GUILD)]
    guild_channel_limit: usize,
    /// Require `Authorization: Bot <this>` on REST calls (default: any bot token).
    #[arg(long, env = "FAKE_DISCORD_BOT_TOKEN", hide_env_values = true)]
    bot_token: Option<String>,
    /// Log format on stderr.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "json")]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let config = FakeConfig {
        addr: cli.addr,
        public_url: cli.public_url.map(|u| u.trim_end_matches('/').to_owned()),
        rate_limits: !cli.no_rate_limits,
        webhook_limit: cli.webhook_limit,
        webhook_window: Duration::from_millis(cli.webhook_window_ms),
        channel_messages_per_minute: cli.channel_messages_per_minute,
        channel_window: Duration::from_millis(cli.channel_window_ms.max(1)),
        channel_window_kind: match cli.channel_window {
            ChannelWindowArg::Sliding => ChannelWindowKind::Sliding,
            ChannelWindowArg::Fixed => ChannelWindowKind::Fixed {
                phase: cli.channel_window_phase_ms.map(Duration::from_millis),
            },
        },
        global_per_second: cli.global_per_second,
        rest_limit: cli.rest_limit,
        rest_window: Duration::from_millis(cli.rest_window_ms),
        clock_tolerance: Duration::from_millis(cli.clock_tolerance_ms),
        guild_id: cli.guild_id,
        guild_channel_limit: cli.guild_channel_limit,
        bot_token: cli.bot_token,
    };
    let fake = FakeDiscord::start(config).await?;
    let mut line = serde_json::json!({
        "listening": fake.addr().to_string(),
        "api_base": fake.api_base(),
    });
    if cli.create_webhook {
        let hook = fake.create_webhook("fake-webhook")?;
        line["webhook_url"] = hook.url.clone().into();
        line["webhook_id"] = hook.id.clone().into();
        line["channel_id"] = hook.channel_id.clone().into();
    }
    print_listening_line(&line).context("writing the listening line")?;
    tracing::info!(addr = %fake.addr(), api_base = %fake.api_base(), "started");
    wait_for_signal()
        .await
        .context("installing the SIGTERM and SIGINT handlers")?;
    tracing::info!("shutting down");
    fake.stop().await;
    Ok(())
}
