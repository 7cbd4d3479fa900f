//! bot-bridge's configuration: one documented struct, one `validate()`.
//!
//! Values come from CLI flags, environment variables, an optional `--config`
//! file (TOML or YAML, snake_case keys) and defaults, in that order of precedence
//! (see `ops::config::load`). Secrets are `Secret<String>` and every secret flag
//! carries `hide_env_values`, so neither `--help` nor the effective configuration
//! logged at start-up can show them. Required values are `Option` at the clap level
//! so that a config file may supply them; `validate()` enforces them and names the key.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, ValueEnum};
use ed25519_dalek::VerifyingKey;
use ops::config::ConfigError;
use ops::telemetry::LogFormat;
use ops::Secret;
use serde::{Deserialize, Serialize};

use crate::access::{InputUrlPolicy, Operators};

/// What the retention worker does with a completed run's channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RetentionAction {
    /// Move it into the archive category, read-only.
    Archive,
    /// Delete it.
    Delete,
}

/// Where each run's messages live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RunContainer {
    /// One text channel per run, in the runs category (≤ 500 per guild).
    Channel,
    /// One public thread per run under THREAD_PARENT_CHANNEL_ID (no guild limit).
    Thread,
}

/// Provisions one Discord channel and webhook per agent run, relays operator
/// input from slash commands to the run's watcher and archives channels.
#[derive(Parser, Debug)]
#[command(name = "bot-bridge", version, about, long_about = None)]
pub struct Cli {
    /// Config file (TOML or YAML) with snake_case keys, e.g. `retention = "24h"`.
    #[arg(long, env = "BOT_BRIDGE_CONFIG")]
    pub config: Option<PathBuf>,

    #[command(flatten)]
    pub options: Options,
}

/// Every configuration option. Argument ids are the config-file keys.
#[derive(Args, Debug, Clone)]
pub struct Options {
    /// Discord bot token (secret, required).
    #[arg(long, env = "DISCORD_BOT_TOKEN", hide_env_values = true)]
    pub discord_bot_token: Option<String>,
    /// Application id; enables slash-command registration.
    #[arg(long, env = "DISCORD_APPLICATION_ID")]
    pub discord_application_id: Option<String>,
    /// Application public key (hex ed25519); enables POST /interactions.
    #[arg(long, env = "DISCORD_PUBLIC_KEY")]
    pub discord_public_key: Option<String>,
    /// Discord REST base URL; point it at fake-discord in tests.
    #[arg(
        long,
        env = "DISCORD_API_BASE",
        default_value = "https://discord.com/api/v10"
    )]
    pub discord_api_base: String,
    /// The guild (server) run channels live in (required).
    #[arg(long, env = "GUILD_ID")]
    pub guild_id: Option<String>,
    /// Category of active run channels; overflow goes to "<name> 2", "<name> 3", ….
    #[arg(long, env = "RUNS_CATEGORY", default_value = "Agent Runs")]
    pub runs_category: String,
    /// Category archived channels move to (with the same overflow).
    #[arg(long, env = "ARCHIVE_CATEGORY", default_value = "Archived Runs")]
    pub archive_category: String,
    /// Listener for the runs API and interactions.
    #[arg(long, env = "API_ADDR", default_value = "0.0.0.0:8080")]
    pub api_addr: String,
    /// Bearer token callers of the runs API present (secret, required).
    #[arg(long, env = "API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Listener for /metrics /livez /readyz /healthz.
    #[arg(long, env = "OPS_ADDR", default_value = "0.0.0.0:9090")]
    pub ops_addr: String,
    /// Run store: `sqlite://PATH`, `sqlite::memory:` or `postgres://USER:PASSWORD@HOST/DB`
    /// (several replicas need Postgres; on it they also share Discord's rate limits, so
    /// together they pace as one bot). May contain credentials: secret.
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        default_value = "sqlite://./bot-bridge.db"
    )]
    pub database_url: String,
    /// Most connections to Postgres this replica opens (ignored for SQLite).
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 10)]
    pub database_max_connections: u32,
    /// The Lease (`NAMESPACE/NAME`, coordination.k8s.io/v1) replicas elect
    /// their leader with: only the leader runs retention and the reconciler.
    /// Needs KUBE_CONFIG. Unset: this replica is always the leader (one replica).
    #[arg(long, env = "LEADER_ELECTION_LEASE")]
    pub leader_election_lease: Option<String>,
    /// This replica's name in the Lease (the chart sets the pod name).
    /// Unset: `bot-bridge-` and a random suffix.
    #[arg(long, env = "LEADER_ELECTION_IDENTITY")]
    pub leader_election_identity: Option<String>,
    /// How long a leader that stopped renewing keeps the Lease: the longest
    /// time without a leader after a replica is killed.
    #[arg(long, env = "LEADER_ELECTION_LEASE_DURATION", default_value = "15s")]
    pub leader_election_lease_duration: String,
    /// How often the leader renews (and others retry); below the lease duration.
    #[arg(long, env = "LEADER_ELECTION_RENEW_INTERVAL", default_value = "5s")]
    pub leader_election_renew_interval: String,
    /// Time a completed run's channel stays before archive/delete (e.g. 72h).
    #[arg(long, env = "RETENTION", default_value = "72h")]
    pub retention: String,
    /// `archive` (move, read-only) or `delete`.
    #[arg(long, env = "RETENTION_ACTION", value_enum, default_value = "archive")]
    pub retention_action: RetentionAction,
    /// How often the retention worker looks for due runs.
    #[arg(long, env = "RETENTION_INTERVAL", default_value = "60s")]
    pub retention_interval: String,
    /// `channel` (one channel per run) or `thread` (one thread per run).
    #[arg(long, env = "RUN_CONTAINER", value_enum, default_value = "channel")]
    pub run_container: RunContainer,
    /// Parent channel of run threads (required when RUN_CONTAINER=thread).
    #[arg(long, env = "THREAD_PARENT_CHANNEL_ID")]
    pub thread_parent_channel_id: Option<String>,
    /// Time allowed between SIGTERM and exit.
    #[arg(long, env = "SHUTDOWN_TIMEOUT", default_value = "5s")]
    pub shutdown_timeout: String,
    /// Discord's per-channel webhook limit (messages per minute): the pace at
    /// which handed-off messages are delivered to a run's channel.
    #[arg(long, env = "CHANNEL_MESSAGES_PER_MINUTE", default_value_t = 30)]
    pub channel_messages_per_minute: u32,
    /// The window CHANNEL_MESSAGES_PER_MINUTE counts over: Discord's is 60s;
    /// shorter only against a fake Discord scaled down for tests.
    #[arg(long, env = "CHANNEL_WINDOW", default_value = "60s")]
    pub channel_window: String,
    /// Channels (categories included) the guild may hold: Discord's limit is
    /// 500; higher only against a fake Discord raised for a measurement.
    #[arg(long, env = "GUILD_CHANNEL_LIMIT", default_value_t = 500)]
    pub guild_channel_limit: usize,
    /// Discord role ids (comma-separated) whose members may send /input.
    /// With neither this nor OPERATOR_USER_IDS set, every /input is refused.
    #[arg(long, env = "OPERATOR_ROLE_IDS")]
    pub operator_role_ids: Option<String>,
    /// Discord user ids (comma-separated) who may send /input.
    #[arg(long, env = "OPERATOR_USER_IDS")]
    pub operator_user_ids: Option<String>,
    /// Hosts a run's input_url may name: comma-separated CIDRs, addresses, host
    /// names and *.suffix patterns. Loopback and link-local (cloud metadata) are
    /// refused unless listed.
    #[arg(
        long,
        env = "INPUT_URL_ALLOW",
        default_value = crate::access::DEFAULT_INPUT_URL_ALLOW
    )]
    pub input_url_allow: String,
    /// `json` or `pretty`.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,
    /// Log filter, RUST_LOG syntax.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log_filter: String,
    /// OTLP/HTTP endpoint for span export (off when unset).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otel_exporter_otlp_endpoint: Option<String>,
    /// Kubernetes API access for the run reconciler and pod Events: a
    /// kubeconfig file path, or `in-cluster` (the pod's ServiceAccount).
    /// Unset: no reconciler (runs still end by `complete` or silence).
    #[arg(long, env = "KUBE_CONFIG")]
    pub kube_config: Option<String>,
    /// Namespaces whose agent pods are watched (comma-separated); empty: all.
    #[arg(long, env = "RECONCILE_NAMESPACES")]
    pub reconcile_namespaces: Option<String>,
    /// Label selector of agent pods (what the chart's sidecar template sets).
    #[arg(
        long,
        env = "RECONCILE_LABEL_SELECTOR",
        default_value = crate::reconcile::DEFAULT_LABEL_SELECTOR
    )]
    pub reconcile_label_selector: String,
    /// Time a run's pod may be gone or finished before the run is finalised
    /// without `complete` (the watcher's own `complete` usually comes first).
    #[arg(long, env = "RECONCILE_GRACE", default_value = "30s")]
    pub reconcile_grace: String,
    /// A run with no heartbeat for this long is finalised ("silent"); 0: off.
    #[arg(long, env = "RUN_SILENCE_TIMEOUT", default_value = "10m")]
    pub run_silence_timeout: String,
    /// Accept agent pods' projected ServiceAccount tokens for this audience
    /// (checked with a TokenReview; needs KUBE_CONFIG). Such a caller may
    /// create, read, heartbeat and complete its own run only. Unset: only
    /// API_TOKEN is accepted.
    #[arg(long, env = "TOKEN_REVIEW_AUDIENCE")]
    pub token_review_audience: Option<String>,
}

/// The raw, layered values, before validation. Field names are the config keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub discord_bot_token: Option<Secret<String>>,
    pub discord_application_id: Option<String>,
    pub discord_public_key: Option<String>,
    pub discord_api_base: String,
    pub guild_id: Option<String>,
    pub runs_category: String,
    pub archive_category: String,
    pub api_addr: String,
    pub api_token: Option<Secret<String>>,
    pub ops_addr: String,
    pub database_url: Secret<String>,
    pub database_max_connections: u32,
    pub leader_election_lease: Option<String>,
    pub leader_election_identity: Option<String>,
    pub leader_election_lease_duration: String,
    pub leader_election_renew_interval: String,
    pub retention: String,
    pub retention_action: RetentionAction,
    pub retention_interval: String,
    pub run_container: RunContainer,
    pub thread_parent_channel_id: Option<String>,
    pub shutdown_timeout: String,
    pub channel_messages_per_minute: u32,
    pub channel_window: String,
    pub guild_channel_limit: usize,
    pub operator_role_ids: Option<String>,
    pub operator_user_ids: Option<String>,
    pub input_url_allow: String,
    pub log_format: LogFormat,
    pub log_filter: String,
    pub otel_exporter_otlp_endpoint: Option<String>,
    pub kube_config: Option<String>,
    pub reconcile_namespaces: Option<String>,
    pub reconcile_label_selector: String,
    pub reconcile_grace: String,
    pub run_silence_timeout: String,
    pub token_review_audience: Option<String>,
}

/// Where runs are stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Database {
    /// A SQLite file (single replica: see `store`).
    Sqlite { path: PathBuf },
    /// An in-memory SQLite database, lost at exit (tests, demos).
    Memory,
    /// A Postgres database shared by every replica.
    Postgres {
        /// Shown redacted: it carries the password.
        url: Secret<String>,
        max_connections: u32,
    },
}

/// The validated configuration bot-bridge runs with.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub discord_bot_token: Secret<String>,
    pub discord_application_id: Option<String>,
    /// Verifies interaction signatures; `None` disables `POST /interactions`.
    #[serde(skip)]
    pub discord_public_key: Option<VerifyingKey>,
    /// Without a trailing slash.
    pub discord_api_base: String,
    pub guild_id: String,
    pub runs_category: String,
    pub archive_category: String,
    pub api_addr: SocketAddr,
    pub api_token: Secret<String>,
    pub ops_addr: SocketAddr,
    pub database: Database,
    /// Leader election; `None`: this replica is always the leader.
    pub leader_election: Option<crate::leader::LeaderConfig>,
    #[serde(with = "ops::config::duration")]
    pub retention: Duration,
    pub retention_action: RetentionAction,
    #[serde(with = "ops::config::duration")]
    pub retention_interval: Duration,
    pub run_container: RunContainer,
    pub thread_parent_channel_id: Option<String>,
    #[serde(with = "ops::config::duration")]
    pub shutdown_timeout: Duration,
    /// Pace of hand-off deliveries per channel (see `handoff`).
    pub channel_messages_per_minute: u32,
    #[serde(with = "ops::config::duration")]
    pub channel_window: Duration,
    /// Channels the guild may hold (`GUILD_CHANNEL_LIMIT`, Discord's 500).
    pub guild_channel_limit: usize,
    /// Who may send /input (empty: nobody).
    pub operators: Operators,
    /// Where operator input may be relayed.
    #[serde(skip)]
    pub input_url_policy: InputUrlPolicy,
    pub log_format: LogFormat,
    pub log_filter: String,
    /// Shown without credentials (collectors often take a token in the URL).
    #[serde(serialize_with = "ops::secret::serialize_opt_url")]
    pub otel_exporter_otlp_endpoint: Option<String>,
    /// The run reconciler and silence detection (see `reconcile`).
    pub reconcile: crate::reconcile::ReconcileConfig,
    /// The audience pod tokens must carry; `None`: pod tokens are refused.
    pub token_review_audience: Option<String>,
}

fn duration(key: &str, s: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        ConfigError::invalid(
            key,
            format!("{s:?} is not a duration ({e}); examples: 1s, 30m, 72h"),
        )
    })
}

/// Longest accepted `RETENTION`: ten years. Larger values overflow timers.
pub const MAX_RETENTION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Longest accepted `RETENTION_INTERVAL`.
pub const MAX_RETENTION_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// Longest accepted `SHUTDOWN_TIMEOUT` (the chart's grace period is far shorter).
pub const MAX_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3600);

/// Longest accepted `CHANNEL_WINDOW`.
pub const MAX_CHANNEL_WINDOW: Duration = Duration::from_secs(3600);
/// Largest accepted `GUILD_CHANNEL_LIMIT` (Discord allows 500).
pub const MAX_GUILD_CHANNEL_LIMIT: usize = 100_000;

/// Largest accepted `CHANNEL_MESSAGES_PER_MINUTE` (Discord allows 30).
pub const MAX_CHANNEL_MESSAGES_PER_MINUTE: u32 = 10_000;

/// A duration within `(0, max]` (or `[0, max]` when `zero_ok`).
fn bounded(key: &str, s: &str, max: Duration, zero_ok: bool) -> Result<Duration, ConfigError> {
    let d = duration(key, s)?;
    if !zero_ok && d.is_zero() {
        return Err(ConfigError::invalid(key, "must be positive"));
    }
    if d > max {
        return Err(ConfigError::invalid(
            key,
            format!(
                "{s:?} is too long; at most {}",
                humantime::format_duration(max)
            ),
        ));
    }
    Ok(d)
}

/// A comma-separated list of Discord ids.
fn snowflakes(key: &str, s: Option<&str>) -> Result<BTreeSet<String>, ConfigError> {
    s.unwrap_or("")
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| snowflake(key, p))
        .collect()
}

fn addr(key: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.trim().parse().map_err(|_| {
        ConfigError::invalid(key, format!("{s:?} is not an address like 0.0.0.0:8080"))
    })
}

/// A Discord snowflake: a non-empty decimal number.
fn snowflake(key: &str, s: &str) -> Result<String, ConfigError> {
    let s = s.trim();
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ConfigError::invalid(
            key,
            format!("{s:?} is not a Discord id (digits only)"),
        ));
    }
    Ok(s.to_owned())
}

fn required_secret(key: &str, v: Option<Secret<String>>) -> Result<Secret<String>, ConfigError> {
    // One trailing newline (a Secret made from a file) is dropped; other
    // stray whitespace is refused: such a token would never match.
    ops::config::secret(key, v)?.ok_or_else(|| ConfigError::invalid(key, "required"))
}

/// Parses a hex ed25519 public key as Discord shows it in the developer portal.
pub fn parse_public_key(s: &str) -> Result<VerifyingKey, String> {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(s.trim(), &mut bytes)
        .map_err(|_| "expected 64 hex characters (the application's public key)".to_owned())?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| "not a valid ed25519 public key".to_owned())
}

/// Most `DATABASE_MAX_CONNECTIONS` accepted (Postgres' default server limit is 100).
pub const MAX_DATABASE_CONNECTIONS: u32 = 100;

fn database(url: &str, max_connections: u32) -> Result<Database, ConfigError> {
    let url = url.trim();
    if url == "sqlite::memory:" || url == "sqlite://:memory:" {
        return Ok(Database::Memory);
    }
    if let Some(path) = url.strip_prefix("sqlite://") {
        if path.is_empty() {
            return Err(ConfigError::invalid(
                "DATABASE_URL",
                "sqlite:// needs a file path",
            ));
        }
        return Ok(Database::Sqlite {
            path: PathBuf::from(path),
        });
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        if !(1..=MAX_DATABASE_CONNECTIONS).contains(&max_connections) {
            return Err(ConfigError::invalid(
                "DATABASE_MAX_CONNECTIONS",
                format!("must be 1 to {MAX_DATABASE_CONNECTIONS}"),
            ));
        }
        // The driver's parse error names the bad part, never the password.
        if let Err(e) = url.parse::<tokio_postgres::Config>() {
            return Err(ConfigError::invalid(
                "DATABASE_URL",
                format!("not a valid postgres:// URL: {e}"),
            ));
        }
        return Ok(Database::Postgres {
            url: Secret::new(url.to_owned()),
            max_connections,
        });
    }
    // The value may carry credentials, so it is not echoed.
    Err(ConfigError::invalid(
        "DATABASE_URL",
        "expected sqlite://PATH, sqlite::memory: or postgres://…",
    ))
}

impl RawConfig {
    /// Checks every value and derives the runtime configuration. Errors name the
    /// environment variable, the name operators set in Kubernetes manifests.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let discord_bot_token = required_secret("DISCORD_BOT_TOKEN", self.discord_bot_token)?;
        let api_token = required_secret("API_TOKEN", self.api_token)?;
        let guild_id = match self.guild_id.as_deref() {
            Some(g) => snowflake("GUILD_ID", g)?,
            None => return Err(ConfigError::invalid("GUILD_ID", "required")),
        };
        let discord_application_id = match self.discord_application_id.as_deref() {
            None | Some("") => None,
            Some(a) => Some(snowflake("DISCORD_APPLICATION_ID", a)?),
        };
        let discord_public_key = match self.discord_public_key.as_deref() {
            None | Some("") => None,
            Some(k) => Some(
                parse_public_key(k).map_err(|p| ConfigError::invalid("DISCORD_PUBLIC_KEY", p))?,
            ),
        };
        let base = self
            .discord_api_base
            .trim()
            .trim_end_matches('/')
            .to_owned();
        match url::Url::parse(&base) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            _ => {
                return Err(ConfigError::invalid(
                    "DISCORD_API_BASE",
                    format!("{base:?} is not an http(s) URL"),
                ))
            }
        }
        for (key, name) in [
            ("RUNS_CATEGORY", &self.runs_category),
            ("ARCHIVE_CATEGORY", &self.archive_category),
        ] {
            let len = name.trim().chars().count();
            // Room for the overflow suffix (" 10") within Discord's 100 characters.
            if len == 0 || len > 90 {
                return Err(ConfigError::invalid(key, "must be 1 to 90 characters"));
            }
        }
        if self.runs_category.trim() == self.archive_category.trim() {
            return Err(ConfigError::invalid(
                "ARCHIVE_CATEGORY",
                "must differ from RUNS_CATEGORY",
            ));
        }
        let thread_parent_channel_id = match self.thread_parent_channel_id.as_deref() {
            None | Some("") => None,
            Some(t) => Some(snowflake("THREAD_PARENT_CHANNEL_ID", t)?),
        };
        if self.run_container == RunContainer::Thread && thread_parent_channel_id.is_none() {
            return Err(ConfigError::invalid(
                "THREAD_PARENT_CHANNEL_ID",
                "required when RUN_CONTAINER=thread",
            ));
        }
        let retention = bounded("RETENTION", &self.retention, MAX_RETENTION, true)?;
        let retention_interval = bounded(
            "RETENTION_INTERVAL",
            &self.retention_interval,
            MAX_RETENTION_INTERVAL,
            false,
        )?;
        if !(2..=MAX_GUILD_CHANNEL_LIMIT).contains(&self.guild_channel_limit) {
            return Err(ConfigError::invalid(
                "GUILD_CHANNEL_LIMIT",
                format!(
                    "{} is not between 2 (a category and a channel) and {MAX_GUILD_CHANNEL_LIMIT}",
                    self.guild_channel_limit
                ),
            ));
        }
        if !(1..=MAX_CHANNEL_MESSAGES_PER_MINUTE).contains(&self.channel_messages_per_minute) {
            return Err(ConfigError::invalid(
                "CHANNEL_MESSAGES_PER_MINUTE",
                format!(
                    "{} is not between 1 and {MAX_CHANNEL_MESSAGES_PER_MINUTE}",
                    self.channel_messages_per_minute
                ),
            ));
        }
        let channel_window = bounded(
            "CHANNEL_WINDOW",
            &self.channel_window,
            MAX_CHANNEL_WINDOW,
            false,
        )?;
        if channel_window < Duration::from_secs(1) {
            return Err(ConfigError::invalid(
                "CHANNEL_WINDOW",
                format!("{:?} is shorter than 1s", self.channel_window),
            ));
        }
        let operators = Operators {
            role_ids: snowflakes("OPERATOR_ROLE_IDS", self.operator_role_ids.as_deref())?,
            user_ids: snowflakes("OPERATOR_USER_IDS", self.operator_user_ids.as_deref())?,
        };
        let input_url_policy = InputUrlPolicy::parse(&self.input_url_allow)
            .map_err(|p| ConfigError::invalid("INPUT_URL_ALLOW", p))?;
        let reconcile = crate::reconcile::ReconcileConfig::parse(
            self.kube_config.as_deref(),
            self.reconcile_namespaces.as_deref(),
            &self.reconcile_label_selector,
            bounded(
                "RECONCILE_GRACE",
                &self.reconcile_grace,
                MAX_RETENTION_INTERVAL,
                true,
            )?,
            bounded(
                "RUN_SILENCE_TIMEOUT",
                &self.run_silence_timeout,
                MAX_RETENTION,
                true,
            )?,
        )?;
        let token_review_audience =
            token_review_audience(self.token_review_audience.as_deref(), &reconcile)?;
        Ok(Config {
            discord_bot_token,
            discord_application_id,
            discord_public_key,
            discord_api_base: base,
            guild_id,
            runs_category: self.runs_category.trim().to_owned(),
            archive_category: self.archive_category.trim().to_owned(),
            api_addr: addr("API_ADDR", &self.api_addr)?,
            api_token,
            ops_addr: addr("OPS_ADDR", &self.ops_addr)?,
            database: database(self.database_url.expose(), self.database_max_connections)?,
            leader_election: crate::leader::LeaderConfig::parse(
                self.leader_election_lease.as_deref(),
                self.leader_election_identity.as_deref(),
                bounded(
                    "LEADER_ELECTION_LEASE_DURATION",
                    &self.leader_election_lease_duration,
                    crate::leader::MAX_LEASE_DURATION,
                    false,
                )?,
                bounded(
                    "LEADER_ELECTION_RENEW_INTERVAL",
                    &self.leader_election_renew_interval,
                    crate::leader::MAX_LEASE_DURATION,
                    false,
                )?,
                reconcile.kube.is_some(),
            )?,
            retention,
            retention_action: self.retention_action,
            retention_interval,
            run_container: self.run_container,
            thread_parent_channel_id,
            shutdown_timeout: bounded(
                "SHUTDOWN_TIMEOUT",
                &self.shutdown_timeout,
                MAX_SHUTDOWN_TIMEOUT,
                true,
            )?,
            channel_messages_per_minute: self.channel_messages_per_minute,
            channel_window,
            guild_channel_limit: self.guild_channel_limit,
            operators,
            input_url_policy,
            log_format: self.log_format,
            log_filter: self.log_filter,
            otel_exporter_otlp_endpoint: self.otel_exporter_otlp_endpoint.filter(|s| !s.is_empty()),
            reconcile,
            token_review_audience,
        })
    }
}

/// `TOKEN_REVIEW_AUDIENCE`: one audience string; needs Kubernetes access.
fn token_review_audience(
    raw: Option<&str>,
    reconcile: &crate::reconcile::ReconcileConfig,
) -> Result<Option<String>, ConfigError> {
    let Some(a) = raw.map(str::trim).filter(|a| !a.is_empty()) else {
        return Ok(None);
    };
    if a.len() > 253 || !a.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
        return Err(ConfigError::invalid(
            "TOKEN_REVIEW_AUDIENCE",
            "must be one audience of up to 253 printable characters, without spaces or commas",
        ));
    }
    if reconcile.kube.is_none() {
        return Err(ConfigError::invalid(
            "TOKEN_REVIEW_AUDIENCE",
            "needs KUBE_CONFIG (a kubeconfig path or `in-cluster`) to reach the TokenReview API",
        ));
    }
    Ok(Some(a.to_owned()))
}

/// Parses the command line and environment (and the `--config` file) into a
/// validated [`Config`].
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
    use clap::CommandFactory;

    use super::*;

    fn load_args(args: &[&str]) -> Result<Config, ConfigError> {
        let cmd = Cli::command();
        let m = cmd.clone().try_get_matches_from(args).unwrap();
        load(&cmd, &m).map(|(_, c)| c)
    }

    const BASE: &[&str] = &[
        "bot-bridge",
        "--discord-bot-token",
        "bot-secret-token",
        "--api-token",
        "api-secret-token",
        "--guild-id",
        "123",
    ];

    fn with(extra: &[&'static str]) -> Vec<&'static str> {
        BASE.iter().copied().chain(extra.iter().copied()).collect()
    }

    #[test]
    fn defaults_match_the_design() {
        let c = load_args(BASE).unwrap();
        assert_eq!(c.discord_api_base, "https://discord.com/api/v10");
        assert_eq!(c.runs_category, "Agent Runs");
        assert_eq!(c.archive_category, "Archived Runs");
        assert_eq!(c.api_addr.to_string(), "0.0.0.0:8080");
        assert_eq!(c.ops_addr.to_string(), "0.0.0.0:9090");
        assert_eq!(c.retention, Duration::from_secs(72 * 3600));
        assert_eq!(c.retention_action, RetentionAction::Archive);
        assert_eq!(c.run_container, RunContainer::Channel);
        assert!(!c.operators.is_configured());
        assert_eq!(c.input_url_policy, InputUrlPolicy::default());
        assert_eq!(c.token_review_audience, None);
        let c = load_args(&with(&[
            "--token-review-audience",
            "agentmon",
            "--kube-config",
            "in-cluster",
        ]))
        .unwrap();
        assert_eq!(c.token_review_audience.as_deref(), Some("agentmon"));
        let c = load_args(&with(&[
            "--operator-role-ids",
            " 11, 12 ",
            "--operator-user-ids",
            "13",
        ]))
        .unwrap();
        assert_eq!(c.operators.role_ids.len(), 2);
        assert!(c.operators.user_ids.contains("13"));
        assert_eq!(
            c.database,
            Database::Sqlite {
                path: PathBuf::from("./bot-bridge.db")
            }
        );
    }

    #[test]
    fn errors_name_the_key() {
        let cases: &[(&[&'static str], &str)] = &[
            (&["--api-addr", "nope"], "API_ADDR"),
            (&["--retention", "soon"], "RETENTION"),
            (&["--discord-public-key", "abc"], "DISCORD_PUBLIC_KEY"),
            (&["--run-container", "thread"], "THREAD_PARENT_CHANNEL_ID"),
            (&["--database-url", "mysql://u:pw@h/db"], "DATABASE_URL"),
            (
                &["--database-url", "postgres://u:pw@h/db?bogus=1"],
                "DATABASE_URL",
            ),
            (
                &[
                    "--database-url",
                    "postgres://h/db",
                    "--database-max-connections",
                    "0",
                ],
                "DATABASE_MAX_CONNECTIONS",
            ),
            (&["--leader-election-lease", "ns/lease"], "KUBE_CONFIG"),
            (
                &[
                    "--kube-config",
                    "in-cluster",
                    "--leader-election-lease",
                    "no-slash",
                ],
                "LEADER_ELECTION_LEASE",
            ),
            (
                &["--leader-election-lease-duration", "soon"],
                "LEADER_ELECTION_LEASE_DURATION",
            ),
            (
                &[
                    "--kube-config",
                    "in-cluster",
                    "--leader-election-lease",
                    "ns/l",
                    "--leader-election-renew-interval",
                    "20s",
                ],
                "LEADER_ELECTION_RENEW_INTERVAL",
            ),
            (&["--discord-api-base", "ftp://x"], "DISCORD_API_BASE"),
            (&["--retention", "100000000h"], "RETENTION"),
            (
                &["--retention-interval", "100000000h"],
                "RETENTION_INTERVAL",
            ),
            (&["--retention-interval", "0s"], "RETENTION_INTERVAL"),
            (&["--channel-window", "500ms"], "CHANNEL_WINDOW"),
            (&["--channel-window", "2h"], "CHANNEL_WINDOW"),
            (&["--channel-window", "soon"], "CHANNEL_WINDOW"),
            (
                &["--channel-messages-per-minute", "0"],
                "CHANNEL_MESSAGES_PER_MINUTE",
            ),
            (&["--guild-channel-limit", "1"], "GUILD_CHANNEL_LIMIT"),
            (&["--shutdown-timeout", "100000000h"], "SHUTDOWN_TIMEOUT"),
            (&["--operator-role-ids", "12,abc"], "OPERATOR_ROLE_IDS"),
            (&["--operator-user-ids", "@alice"], "OPERATOR_USER_IDS"),
            (&["--input-url-allow", "10.0.0.0/99"], "INPUT_URL_ALLOW"),
            (&["--token-review-audience", "agentmon"], "KUBE_CONFIG"),
            (
                &[
                    "--token-review-audience",
                    "a,b",
                    "--kube-config",
                    "in-cluster",
                ],
                "TOKEN_REVIEW_AUDIENCE",
            ),
        ];
        for (extra, key) in cases {
            let err = load_args(&with(extra)).unwrap_err().to_string();
            assert!(err.contains(key), "{extra:?}: {err}");
            assert!(!err.contains("pw@"), "credentials echoed: {err}");
        }
        let err = load_args(&["bot-bridge", "--guild-id", "1", "--api-token", "x"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("DISCORD_BOT_TOKEN"), "{err}");
        let err = load_args(&["bot-bridge", "--discord-bot-token", "x", "--guild-id", "1"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("API_TOKEN"), "{err}");
    }

    #[test]
    fn secrets_do_not_show_in_help_or_config() {
        let mut cmd = Cli::command();
        let help = cmd.render_long_help().to_string();
        assert!(help.contains("DISCORD_BOT_TOKEN"), "{help}");
        // hide_env_values on every secret flag.
        for arg in Cli::command().get_arguments() {
            let id = arg.get_id().as_str();
            if ["discord_bot_token", "api_token", "database_url"].contains(&id) {
                assert!(arg.is_hide_env_values_set(), "{id} must hide its env value");
            }
        }
        let mut args = BASE.to_vec();
        args.extend([
            "--otel-exporter-otlp-endpoint",
            "https://user:otlp-secret@collector:4318/v1?token=otlp-query-secret",
        ]);
        let c = load_args(&args).unwrap();
        let json = serde_json::to_string(&c).unwrap();
        let both = format!("{c:?} {json}");
        assert!(!both.contains("bot-secret-token"), "{both}");
        assert!(!both.contains("api-secret-token"), "{both}");
        // The config is logged at start as JSON: no collector credentials there.
        let shown = json;
        assert!(!shown.contains("otlp-secret"), "{shown}");
        assert!(!shown.contains("otlp-query-secret"), "{shown}");
        assert!(shown.contains("collector"), "{shown}");
    }

    #[test]
    fn public_key_parses() {
        let sk = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        let hex_key = hex::encode(sk.verifying_key().as_bytes());
        assert_eq!(parse_public_key(&hex_key).unwrap(), sk.verifying_key());
        assert!(parse_public_key("zz").is_err());
    }
}
