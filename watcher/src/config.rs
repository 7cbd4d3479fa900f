//! The watcher's configuration: one documented struct, one `validate()`.
//!
//! Values come from CLI flags, environment variables, an optional `--config`
//! file (TOML or YAML, snake_case keys) and defaults, in that order of
//! precedence (see `ops::config::load`). Secrets are `Secret<String>` so the
//! effective configuration can be logged at start-up as is.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ops::config::ConfigError;
use ops::telemetry::LogFormat;
use ops::Secret;
use serde::{Deserialize, Serialize};

/// Where to start reading a transcript that already exists at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    /// Only what is appended from now on.
    End,
    /// Replay the whole file first.
    Beginning,
}

/// Follows a Claude Code transcript and streams it to a Discord webhook.
///
/// Without DISCORD_WEBHOOK_URL or BRIDGE_URL the watcher prints what it would
/// post to stdout (the console sink) and logs to stderr.
#[derive(Parser, Debug)]
#[command(name = "watcher", version, about, long_about = None)]
pub struct Cli {
    /// Config file (TOML or YAML) with snake_case keys, e.g. `poll_interval_ms = 200`.
    #[arg(long, env = "WATCHER_CONFIG", global = true)]
    pub config: Option<PathBuf>,

    #[command(flatten)]
    pub options: Options,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Run the watcher (the default).
    Run,
    /// Print what would be posted for a transcript file, then exit.
    Render {
        /// The transcript file (.jsonl).
        file: PathBuf,
        /// `text` for people, `json` for the webhook payloads, one per line.
        #[arg(long, value_enum, default_value_t = RenderFormat::Text)]
        format: RenderFormat,
    },
    /// Inspect or replay the dead-letter queue in STATE_DIR/dlq.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Validate the configuration and print it (secrets redacted), then exit.
    CheckConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RenderFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug, Clone)]
pub enum DlqCommand {
    /// List dead-lettered messages (one line each).
    List,
    /// Re-send dead-lettered messages in order to the configured webhook,
    /// removing each one once Discord accepted it. Safe to interrupt.
    Replay,
}

/// Every configuration option. Argument ids are the config-file keys.
#[derive(Args, Debug, Clone)]
pub struct Options {
    /// Follow exactly this transcript file instead of discovering one.
    #[arg(
        long = "transcript",
        id = "transcript_path",
        env = "TRANSCRIPT_PATH",
        global = true
    )]
    pub transcript_path: Option<PathBuf>,
    /// The agent's working directory; picks the project directory to watch.
    #[arg(
        long = "workspace",
        id = "workspace_path",
        env = "WORKSPACE_PATH",
        default_value = "/workspace",
        global = true
    )]
    pub workspace_path: String,
    /// Where Claude Code keeps projects [default: $HOME/.claude/projects].
    #[arg(long, env = "CLAUDE_PROJECTS_DIR", global = true)]
    pub claude_projects_dir: Option<PathBuf>,
    /// Static webhook to post to (secret): http(s)://host[:port]/api[/vN]/webhooks/{id}/{token}.
    #[arg(
        long,
        env = "DISCORD_WEBHOOK_URL",
        hide_env_values = true,
        global = true
    )]
    pub discord_webhook_url: Option<String>,
    /// bot-bridge base URL, to provision the run's channel and webhook.
    #[arg(long, env = "BRIDGE_URL", global = true)]
    pub bridge_url: Option<String>,
    /// Bearer token for bot-bridge (secret).
    #[arg(long, env = "BRIDGE_TOKEN", hide_env_values = true, global = true)]
    pub bridge_token: Option<String>,
    /// File holding the bearer token for bot-bridge, read on every call (a
    /// projected ServiceAccount token the kubelet rotates). Instead of
    /// BRIDGE_TOKEN, not with it.
    #[arg(long, env = "BRIDGE_TOKEN_FILE", global = true)]
    pub bridge_token_file: Option<PathBuf>,
    /// Task identifier shown in the header embed.
    #[arg(long, env = "TASK_ID", global = true)]
    pub task_id: Option<String>,
    /// Attempt number shown in the header embed.
    #[arg(long, env = "ATTEMPT", global = true)]
    pub attempt: Option<String>,
    /// Short run identifier (used in the channel name).
    #[arg(long, env = "SHORT_ID", global = true)]
    pub short_id: Option<String>,
    /// Run identifier shown in logs and the header.
    #[arg(long, env = "RUN_ID", global = true)]
    pub run_id: Option<String>,
    /// For a transcript that exists at start-up: `end` (live only) or `beginning`.
    #[arg(
        long,
        env = "START_AT",
        value_enum,
        default_value = "end",
        global = true
    )]
    pub start_at: StartAt,
    /// Checkpoints, DLQ and completion state.
    #[arg(
        long,
        env = "STATE_DIR",
        default_value = "./.watcher-state",
        global = true
    )]
    pub state_dir: PathBuf,
    /// Poll interval when file notifications are unavailable (ms).
    #[arg(long, env = "POLL_INTERVAL_MS", default_value_t = 100, global = true)]
    pub poll_interval_ms: u64,
    /// Embeds per message (1-10).
    #[arg(long, env = "BATCH_SIZE", default_value_t = 10, global = true)]
    pub batch_size: usize,
    /// Queue bound in events; a full queue pauses reading.
    #[arg(long, env = "QUEUE_MAX_EVENTS", default_value_t = 1024, global = true)]
    pub queue_max_events: usize,
    /// Queue bound in bytes (e.g. 8MiB); a full queue pauses reading.
    #[arg(long, env = "QUEUE_MAX_BYTES", default_value = "8MiB", global = true)]
    pub queue_max_bytes: String,
    /// Transcript lines longer than this are skipped and counted (e.g. 16MiB).
    #[arg(long, env = "MAX_LINE_BYTES", default_value = "16MiB", global = true)]
    pub max_line_bytes: String,
    /// Post everything (thinking, all outputs), no soft caps.
    #[arg(long, env = "PARITY_MODE", default_value = "false", global = true)]
    pub parity_mode: bool,
    /// JSON {includeTools, includePatterns, minStdoutLength}.
    #[arg(long, env = "FILTERS", global = true)]
    pub filters: Option<String>,
    /// JSON model -> USD per million tokens {input, output, cache_write, cache_read}.
    #[arg(long, env = "MODEL_COSTS", global = true)]
    pub model_costs: Option<String>,
    /// Listener for /metrics /livez /readyz /healthz.
    #[arg(
        long,
        env = "OPS_ADDR",
        default_value = "127.0.0.1:9090",
        global = true
    )]
    pub ops_addr: String,
    /// Listener for operator input (POST /v1/input); disabled when unset.
    #[arg(long, env = "INPUT_ADDR", global = true)]
    pub input_addr: Option<String>,
    /// HMAC secret for operator input (secret); from bot-bridge when provisioned.
    #[arg(long, env = "INPUT_SECRET", hide_env_values = true, global = true)]
    pub input_secret: Option<String>,
    /// FIFO the agent reads operator input from.
    #[arg(long, env = "AGENT_INPUT_FIFO", global = true)]
    pub agent_input_fifo: Option<PathBuf>,
    /// URL bot-bridge should call for input [default: http://<INPUT_ADDR>].
    #[arg(long, env = "INPUT_URL", global = true)]
    pub input_url: Option<String>,
    /// At most this many subagent transcript files open at once; idle ones
    /// beyond it are closed and reopened at their offset when they grow.
    #[arg(long, env = "SUBAGENT_MAX_OPEN", default_value_t = 64, global = true)]
    pub subagent_max_open: usize,
    /// Discord's per-channel webhook limit (messages per minute), paced proactively.
    #[arg(
        long,
        env = "CHANNEL_MESSAGES_PER_MINUTE",
        default_value_t = 30,
        global = true
    )]
    pub channel_messages_per_minute: u32,
    /// The window CHANNEL_MESSAGES_PER_MINUTE counts over: Discord's is 60s;
    /// shorter only against a fake Discord scaled down for tests.
    #[arg(long, env = "CHANNEL_WINDOW", default_value = "60s", global = true)]
    pub channel_window: String,
    /// Give up retrying a message after this long and dead-letter it.
    #[arg(
        long,
        env = "DELIVERY_MAX_ELAPSED",
        default_value = "10m",
        global = true
    )]
    pub delivery_max_elapsed: String,
    /// /readyz fails when no delivery succeeded for this long while work is pending.
    #[arg(
        long,
        env = "SINK_UNHEALTHY_AFTER",
        default_value = "5s",
        global = true
    )]
    pub sink_unhealthy_after: String,
    /// How often the run is heartbeated to bot-bridge (its RUN_SILENCE_TIMEOUT ends runs
    /// whose watcher went silent); at least 1s.
    #[arg(
        long,
        env = "BRIDGE_HEARTBEAT_INTERVAL",
        default_value = "60s",
        global = true
    )]
    pub bridge_heartbeat_interval: String,
    /// Treat this much transcript silence as the end of the session (off when unset).
    #[arg(long, env = "IDLE_COMPLETE_AFTER", global = true)]
    pub idle_complete_after: Option<String>,
    /// Time allowed between SIGTERM and exit, for draining and the summary.
    #[arg(long, env = "SHUTDOWN_TIMEOUT", default_value = "5s", global = true)]
    pub shutdown_timeout: String,
    /// Total size cap of the dead-letter queue (e.g. 64MiB); oldest files go first.
    #[arg(long, env = "DLQ_MAX_BYTES", default_value = "64MiB", global = true)]
    pub dlq_max_bytes: String,
    /// `json` or `pretty`.
    #[arg(
        long,
        env = "LOG_FORMAT",
        value_enum,
        default_value = "json",
        global = true
    )]
    pub log_format: LogFormat,
    /// Log filter, RUST_LOG syntax.
    #[arg(long, env = "RUST_LOG", default_value = "info", global = true)]
    pub log_filter: String,
    /// OTLP/HTTP endpoint for span export (off when unset).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", global = true)]
    pub otel_exporter_otlp_endpoint: Option<String>,
}

/// The raw, layered values, before validation. Field names are the config keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub transcript_path: Option<PathBuf>,
    pub workspace_path: String,
    pub claude_projects_dir: Option<PathBuf>,
    pub discord_webhook_url: Option<Secret<String>>,
    pub bridge_url: Option<String>,
    pub bridge_token: Option<Secret<String>>,
    pub bridge_token_file: Option<PathBuf>,
    pub task_id: Option<String>,
    pub attempt: Option<String>,
    pub short_id: Option<String>,
    pub run_id: Option<String>,
    pub start_at: StartAt,
    pub state_dir: PathBuf,
    pub poll_interval_ms: u64,
    pub batch_size: usize,
    pub queue_max_events: usize,
    pub queue_max_bytes: String,
    pub max_line_bytes: String,
    pub parity_mode: bool,
    pub filters: Option<String>,
    pub model_costs: Option<String>,
    pub ops_addr: String,
    pub input_addr: Option<String>,
    pub input_secret: Option<Secret<String>>,
    pub agent_input_fifo: Option<PathBuf>,
    pub input_url: Option<String>,
    pub subagent_max_open: usize,
    pub channel_messages_per_minute: u32,
    pub channel_window: String,
    pub delivery_max_elapsed: String,
    pub sink_unhealthy_after: String,
    pub bridge_heartbeat_interval: String,
    pub idle_complete_after: Option<String>,
    pub shutdown_timeout: String,
    pub dlq_max_bytes: String,
    pub log_format: LogFormat,
    pub log_filter: String,
    pub otel_exporter_otlp_endpoint: Option<String>,
}

/// Where rendered messages go.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SinkConfig {
    /// Print to stdout (the embedded default).
    Console,
    /// A static webhook.
    Webhook {
        url: discord::webhook_url::WebhookUrl,
    },
    /// Provision the webhook from bot-bridge.
    Bridge {
        /// Shown without credentials (`user:pass@`, query values).
        #[serde(serialize_with = "ops::secret::serialize_url")]
        url: url::Url,
        token: crate::deliver::bridge::BridgeAuth,
    },
}

/// Operator-input settings, when enabled.
#[derive(Debug, Clone, Serialize)]
pub struct InputConfig {
    pub addr: SocketAddr,
    /// `None` until bot-bridge provisions one.
    pub secret: Option<Secret<String>>,
    pub fifo: PathBuf,
    /// Shown without credentials.
    #[serde(serialize_with = "ops::secret::serialize_url")]
    pub url: String,
}

/// The validated configuration the watcher runs with.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub transcript_path: Option<PathBuf>,
    pub workspace_path: String,
    pub claude_projects_dir: PathBuf,
    pub sink: SinkConfig,
    pub task_id: Option<String>,
    pub attempt: Option<String>,
    pub short_id: Option<String>,
    pub run_id: Option<String>,
    pub start_at: StartAt,
    pub state_dir: PathBuf,
    #[serde(with = "ops::config::duration")]
    pub poll_interval: Duration,
    pub batch_size: usize,
    pub queue_max_events: usize,
    pub queue_max_bytes: usize,
    pub max_line_bytes: usize,
    pub parity_mode: bool,
    pub filters: Option<String>,
    pub model_costs: Option<String>,
    pub ops_addr: SocketAddr,
    pub input: Option<InputConfig>,
    /// Subagent files open at once (`SUBAGENT_MAX_OPEN`).
    pub subagent_max_open: usize,
    pub channel_messages_per_minute: u32,
    #[serde(with = "ops::config::duration")]
    pub channel_window: Duration,
    #[serde(with = "ops::config::duration")]
    pub delivery_max_elapsed: Duration,
    #[serde(with = "ops::config::duration")]
    pub sink_unhealthy_after: Duration,
    /// Heartbeats of the run to bot-bridge (bridge sink only).
    #[serde(with = "ops::config::duration")]
    pub bridge_heartbeat_interval: Duration,
    #[serde(with = "opt_duration")]
    pub idle_complete_after: Option<Duration>,
    #[serde(with = "ops::config::duration")]
    pub shutdown_timeout: Duration,
    pub dlq_max_bytes: usize,
    pub log_format: LogFormat,
    pub log_filter: String,
    /// Shown without credentials (collectors often take a token in the URL).
    #[serde(serialize_with = "ops::secret::serialize_opt_url")]
    pub otel_exporter_otlp_endpoint: Option<String>,
    /// Settings that were given but have no effect, each naming its key: shown
    /// by `check-config` and logged at start, so a half-done setup is visible.
    pub warnings: Vec<String>,
}

mod opt_duration {
    use std::time::Duration;

    use serde::Serializer;

    pub fn serialize<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }
}

/// Parses sizes like `8MiB`, `512KiB`, `16MB`, `1048576`.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: usize = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (examples: 8MiB, 512KiB, 1048576)"))?;
    let mult: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1024,
        "m" | "mb" => 1000 * 1000,
        "mib" => 1024 * 1024,
        "g" | "gb" => 1000 * 1000 * 1000,
        "gib" => 1024 * 1024 * 1024,
        other => return Err(format!("unknown size unit {other:?} in {s:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// The longest any watcher duration may be. Each key has its own bound
/// below; all of them keep `Instant + duration` far from overflowing.
const MAX_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3600);
const MAX_DELIVERY_MAX_ELAPSED: Duration = Duration::from_secs(7 * 24 * 3600);
const MAX_SINK_UNHEALTHY_AFTER: Duration = Duration::from_secs(24 * 3600);
const MAX_IDLE_COMPLETE_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);
const MAX_CHANNEL_WINDOW: Duration = Duration::from_secs(3600);
/// The longest `BRIDGE_HEARTBEAT_INTERVAL` accepted (a day): larger values only hide a typo.
const MAX_BRIDGE_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(24 * 3600);

fn duration(key: &str, s: &str, max: Duration) -> Result<Duration, ConfigError> {
    ops::config::duration_at_most(key, s, max)
}

fn size(key: &str, s: &str) -> Result<usize, ConfigError> {
    parse_size(s).map_err(|p| ConfigError::invalid(key, p))
}

fn addr(key: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.trim().parse().map_err(|_| {
        ConfigError::invalid(key, format!("{s:?} is not an address like 127.0.0.1:9090"))
    })
}

/// The bearer for bot-bridge: `BRIDGE_TOKEN` or `BRIDGE_TOKEN_FILE`, exactly
/// one (the file is read on every call, so it is not opened here).
fn bridge_auth(
    token: Option<&Secret<String>>,
    file: Option<&std::path::Path>,
) -> Result<crate::deliver::bridge::BridgeAuth, ConfigError> {
    use crate::deliver::bridge::BridgeAuth;
    let token = token.filter(|t| !t.expose().trim().is_empty());
    let file = file.filter(|f| !f.as_os_str().is_empty());
    match (token, file) {
        (Some(_), Some(_)) => Err(ConfigError::invalid(
            "BRIDGE_TOKEN_FILE",
            "set BRIDGE_TOKEN or BRIDGE_TOKEN_FILE, not both",
        )),
        (Some(t), None) => Ok(BridgeAuth::Token(t.clone())),
        (None, Some(f)) => Ok(BridgeAuth::File(f.to_owned())),
        (None, None) => Err(ConfigError::invalid(
            "BRIDGE_TOKEN",
            "required when BRIDGE_URL is set (or BRIDGE_TOKEN_FILE, a token file read on every call)",
        )),
    }
}

impl RawConfig {
    /// Checks every value and derives the runtime configuration. Errors name the
    /// environment variable, the name operators set in Kubernetes manifests.
    pub fn validate(mut self) -> Result<Config, ConfigError> {
        self.bridge_token = ops::config::secret("BRIDGE_TOKEN", self.bridge_token)?;
        self.input_secret = ops::config::secret("INPUT_SECRET", self.input_secret)?;
        let mut warnings = Vec::new();
        let given = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.trim().is_empty());
        if self.discord_webhook_url.is_some() && given(&self.bridge_url) {
            warnings.push(
                "BRIDGE_URL is ignored: DISCORD_WEBHOOK_URL is set and takes precedence".to_owned(),
            );
        } else if self.bridge_token.is_some() && !given(&self.bridge_url) {
            warnings.push("BRIDGE_TOKEN is ignored: BRIDGE_URL is not set".to_owned());
        } else if self.bridge_token_file.is_some() && !given(&self.bridge_url) {
            warnings.push("BRIDGE_TOKEN_FILE is ignored: BRIDGE_URL is not set".to_owned());
        }
        let sink = match (&self.discord_webhook_url, &self.bridge_url) {
            (Some(url), _) => SinkConfig::Webhook {
                url: discord::webhook_url::WebhookUrl::parse(url.expose())
                    .map_err(|e| ConfigError::invalid("DISCORD_WEBHOOK_URL", e.to_string()))?,
            },
            (None, Some(bridge)) => {
                let url = url::Url::parse(bridge)
                    .ok()
                    .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
                    .ok_or_else(|| {
                        ConfigError::invalid(
                            "BRIDGE_URL",
                            format!(
                                "{:?} is not an http(s) URL",
                                ops::secret::redact_url(bridge)
                            ),
                        )
                    })?;
                let token = bridge_auth(
                    self.bridge_token.as_ref(),
                    self.bridge_token_file.as_deref(),
                )?;
                SinkConfig::Bridge { url, token }
            }
            (None, None) => SinkConfig::Console,
        };
        if !(1..=10).contains(&self.batch_size) {
            return Err(ConfigError::invalid(
                "BATCH_SIZE",
                format!("{} is not between 1 and 10", self.batch_size),
            ));
        }
        if self.queue_max_events == 0 {
            return Err(ConfigError::invalid(
                "QUEUE_MAX_EVENTS",
                "must be at least 1",
            ));
        }
        if self.poll_interval_ms == 0 || self.poll_interval_ms > 60_000 {
            return Err(ConfigError::invalid(
                "POLL_INTERVAL_MS",
                format!("{} is not between 1 and 60000", self.poll_interval_ms),
            ));
        }
        if !(1..=4096).contains(&self.subagent_max_open) {
            return Err(ConfigError::invalid(
                "SUBAGENT_MAX_OPEN",
                format!("{} is not between 1 and 4096", self.subagent_max_open),
            ));
        }
        if self.channel_messages_per_minute == 0 {
            return Err(ConfigError::invalid(
                "CHANNEL_MESSAGES_PER_MINUTE",
                "must be at least 1",
            ));
        }
        let channel_window = duration("CHANNEL_WINDOW", &self.channel_window, MAX_CHANNEL_WINDOW)?;
        if !(Duration::from_secs(1)..=MAX_CHANNEL_WINDOW).contains(&channel_window) {
            return Err(ConfigError::invalid(
                "CHANNEL_WINDOW",
                format!("{:?} is not between 1s and 1h", self.channel_window),
            ));
        }
        let queue_max_bytes = size("QUEUE_MAX_BYTES", &self.queue_max_bytes)?;
        if queue_max_bytes < 1024 {
            return Err(ConfigError::invalid(
                "QUEUE_MAX_BYTES",
                "must be at least 1KiB",
            ));
        }
        let max_line_bytes = size("MAX_LINE_BYTES", &self.max_line_bytes)?;
        if max_line_bytes < 1024 {
            return Err(ConfigError::invalid(
                "MAX_LINE_BYTES",
                "must be at least 1KiB",
            ));
        }
        let input = match &self.input_addr {
            None => None,
            Some(a) => {
                let addr = addr("INPUT_ADDR", a)?;
                let fifo = self.agent_input_fifo.clone().ok_or_else(|| {
                    ConfigError::invalid("AGENT_INPUT_FIFO", "required when INPUT_ADDR is set")
                })?;
                let secret = self.input_secret.clone().filter(|s| !s.expose().is_empty());
                if secret.is_none() && !matches!(sink, SinkConfig::Bridge { .. }) {
                    return Err(ConfigError::invalid(
                        "INPUT_SECRET",
                        "required when INPUT_ADDR is set without BRIDGE_URL",
                    ));
                }
                let url = match &self.input_url {
                    Some(u) => {
                        url::Url::parse(u)
                            .map_err(|e| ConfigError::invalid("INPUT_URL", e.to_string()))?;
                        u.trim_end_matches('/').to_owned()
                    }
                    None => format!("http://{addr}"),
                };
                Some(InputConfig {
                    addr,
                    secret,
                    fifo,
                    url,
                })
            }
        };
        if let Some(f) = &self.filters {
            serde_json::from_str::<serde_json::Value>(f)
                .map_err(|e| ConfigError::invalid("FILTERS", format!("not valid JSON: {e}")))?;
        }
        if let Some(c) = &self.model_costs {
            serde_json::from_str::<serde_json::Value>(c)
                .map_err(|e| ConfigError::invalid("MODEL_COSTS", format!("not valid JSON: {e}")))?;
        }
        let claude_projects_dir = match self.claude_projects_dir.clone() {
            Some(d) => d,
            None => std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/"))
                .join(".claude/projects"),
        };
        let idle_complete_after = match self.idle_complete_after.as_deref() {
            None | Some("") | Some("off") => None,
            Some(s) => Some(duration("IDLE_COMPLETE_AFTER", s, MAX_IDLE_COMPLETE_AFTER)?),
        };
        Ok(Config {
            transcript_path: self.transcript_path,
            workspace_path: self.workspace_path,
            claude_projects_dir,
            sink,
            // An empty value is an unset one (a template that renders
            // `TASK_ID=""`): sent as is, bot-bridge would refuse the run with
            // 400 on every provisioning attempt.
            task_id: non_empty(self.task_id),
            attempt: non_empty(self.attempt),
            short_id: non_empty(self.short_id),
            run_id: non_empty(self.run_id),
            start_at: self.start_at,
            state_dir: self.state_dir,
            poll_interval: Duration::from_millis(self.poll_interval_ms),
            batch_size: self.batch_size,
            queue_max_events: self.queue_max_events,
            queue_max_bytes,
            max_line_bytes,
            parity_mode: self.parity_mode,
            filters: self.filters,
            model_costs: self.model_costs,
            ops_addr: addr("OPS_ADDR", &self.ops_addr)?,
            input,
            subagent_max_open: self.subagent_max_open,
            channel_messages_per_minute: self.channel_messages_per_minute,
            channel_window,
            delivery_max_elapsed: duration(
                "DELIVERY_MAX_ELAPSED",
                &self.delivery_max_elapsed,
                MAX_DELIVERY_MAX_ELAPSED,
            )?,
            sink_unhealthy_after: duration(
                "SINK_UNHEALTHY_AFTER",
                &self.sink_unhealthy_after,
                MAX_SINK_UNHEALTHY_AFTER,
            )?,
            bridge_heartbeat_interval: {
                let d = duration(
                    "BRIDGE_HEARTBEAT_INTERVAL",
                    &self.bridge_heartbeat_interval,
                    MAX_BRIDGE_HEARTBEAT_INTERVAL,
                )?;
                if d < Duration::from_secs(1) {
                    return Err(ConfigError::invalid(
                        "BRIDGE_HEARTBEAT_INTERVAL",
                        "must be at least 1s",
                    ));
                }
                d
            },
            idle_complete_after,
            shutdown_timeout: duration(
                "SHUTDOWN_TIMEOUT",
                &self.shutdown_timeout,
                MAX_SHUTDOWN_TIMEOUT,
            )?,
            dlq_max_bytes: size("DLQ_MAX_BYTES", &self.dlq_max_bytes)?,
            log_format: self.log_format,
            log_filter: self.log_filter,
            otel_exporter_otlp_endpoint: self.otel_exporter_otlp_endpoint.filter(|s| !s.is_empty()),
            warnings,
        })
    }
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.trim().is_empty())
}

/// Layers env, file and defaults under the parsed command line into a [`Config`].
pub fn load(
    command: &clap::Command,
    matches: &clap::ArgMatches,
) -> Result<(Cli, Config), ConfigError> {
    ops::config::load_cli(command, matches, RawConfig::validate)
}

impl ops::config::ConfigFileArg for Cli {
    fn config_file(&self) -> Option<&std::path::Path> {
        self.config.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("8MiB").unwrap(), 8 * 1024 * 1024);
        assert_eq!(parse_size("512KiB").unwrap(), 512 * 1024);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert!(parse_size("8 parsecs").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn the_bridge_bearer_is_a_token_or_a_file_not_both() {
        use crate::deliver::bridge::BridgeAuth;
        let tok = Secret::new("api-SeCrEt".to_owned());
        let file = std::path::Path::new("/var/run/secrets/agentmon/token");
        let both = bridge_auth(Some(&tok), Some(file)).unwrap_err().to_string();
        assert!(
            both.contains("BRIDGE_TOKEN_FILE") && both.contains("not both"),
            "{both}"
        );
        assert!(!both.contains("SeCrEt"), "{both}");
        let neither = bridge_auth(None, None).unwrap_err().to_string();
        assert!(neither.contains("BRIDGE_TOKEN"), "{neither}");
        let blank = Secret::new("  ".to_owned());
        assert!(bridge_auth(Some(&blank), None).is_err());
        assert!(matches!(
            bridge_auth(Some(&tok), None),
            Ok(BridgeAuth::Token(_))
        ));
        assert!(matches!(
            bridge_auth(Some(&blank), Some(file)),
            Ok(BridgeAuth::File(p)) if p == file
        ));
    }
}
