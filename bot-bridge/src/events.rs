//! Telemetry as typed events: each thing that happens is one small struct whose
//! `emit()` writes the log line and moves the metric. Business code calls
//! `emit`, never the registry. Labels come only from the closed enums below,
//! never from user data, so no caller can create new series.

use ops::metrics::{Metrics, MetricsError};
use prometheus::{IntCounter, IntCounterVec, IntGauge};

/// `bridge_errors_total{kind}`: a closed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A Discord REST call failed.
    Discord,
    /// The run store failed.
    Store,
    /// Relaying operator input to a watcher failed.
    Relay,
    /// A retention action failed (retried next tick).
    Retention,
    /// No room for another channel in the guild.
    GuildFull,
    /// An interaction had a bad signature or body.
    Interaction,
}

impl ErrorKind {
    pub const ALL: [Self; 6] = [
        Self::Discord,
        Self::Store,
        Self::Relay,
        Self::Retention,
        Self::GuildFull,
        Self::Interaction,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Discord => "discord",
            Self::Store => "store",
            Self::Relay => "relay",
            Self::Retention => "retention",
            Self::GuildFull => "guild_full",
            Self::Interaction => "interaction",
        }
    }
}

/// `bridge_interactions_total{command}`: a closed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Ping,
    Input,
    Status,
    Unknown,
}

impl Command {
    pub const ALL: [Self; 4] = [Self::Ping, Self::Input, Self::Status, Self::Unknown];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ping => "ping",
            Self::Input => "input",
            Self::Status => "status",
            Self::Unknown => "unknown",
        }
    }
}

/// `bridge_interactions_total{outcome}`: a closed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// PONG or a status answer.
    Ok,
    /// The watcher accepted the input.
    Forwarded,
    /// The watcher answered 429.
    Busy,
    /// The watcher answered 503, or could not be reached.
    Unavailable,
    /// The watcher refused the input (another 4xx/5xx).
    Rejected,
    /// The channel is not a run's.
    NotRunChannel,
    /// The run already finished.
    RunFinished,
    /// Unknown command or malformed body.
    Invalid,
    /// The invoking member is not an operator (or none is configured).
    Forbidden,
    /// Another replica (or an earlier delivery) already acted on this
    /// interaction id: nothing is relayed twice.
    Duplicate,
}

impl Outcome {
    pub const ALL: [Self; 10] = [
        Self::Ok,
        Self::Forwarded,
        Self::Busy,
        Self::Unavailable,
        Self::Rejected,
        Self::NotRunChannel,
        Self::RunFinished,
        Self::Invalid,
        Self::Forbidden,
        Self::Duplicate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Forwarded => "forwarded",
            Self::Busy => "busy",
            Self::Unavailable => "unavailable",
            Self::Rejected => "rejected",
            Self::NotRunChannel => "not_run_channel",
            Self::RunFinished => "run_finished",
            Self::Invalid => "invalid",
            Self::Forbidden => "forbidden",
            Self::Duplicate => "duplicate",
        }
    }
}

/// The bot-bridge metrics of DESIGN.md §5, registered once per process.
#[derive(Clone, Debug)]
pub struct BridgeMetrics {
    forwarded: IntCounter,
    errors: IntCounterVec,
    runs_active: IntGauge,
    /// 1 while this replica is the elected leader (`leader`).
    leader: IntGauge,
    runs_created: IntCounter,
    discord_requests: IntCounterVec,
    rate_limited: IntCounterVec,
    interactions: IntCounterVec,
    /// Run ends, reconciler errors, guild channels (`reconcile::telemetry`).
    pub(crate) lifecycle: crate::reconcile::telemetry::LifecycleMetrics,
    /// `bridge_auth_total{method,outcome}` (`auth`).
    pub auth: crate::auth::AuthMetrics,
    /// Hand-off messages and backlog (`handoff`).
    pub(crate) handoff: HandoffMetrics,
}

/// Every `route` label value of `bridge_discord_requests_total`: the REST
/// client's routes.
pub fn discord_routes() -> impl Iterator<Item = &'static str> {
    ::discord::rest::routes::ALL.into_iter()
}

/// The `status` values of `bridge_discord_requests_total` that exist from
/// start-up for every route: success, and `0` (no answer: connect error or
/// timeout). Other statuses appear when Discord first answers them.
pub const PRE_REGISTERED_STATUSES: [&str; 2] = ["200", "0"];

/// The `scope` label values of `bridge_discord_rate_limited_total`.
pub const RATE_LIMIT_SCOPES: [&str; 4] = ["route", "global", "shared", "other"];

impl BridgeMetrics {
    pub fn new(metrics: &Metrics) -> Result<Self, MetricsError> {
        let m = Self {
            forwarded: metrics.counter(
                "bridge_forwarded_messages_total",
                "Operator inputs the run's watcher accepted.",
            )?,
            errors: metrics.counter_vec(
                "bridge_errors_total",
                "Failures by kind (discord, store, relay, retention, guild_full, interaction).",
                &["kind"],
            )?,
            runs_active: metrics.gauge("bridge_runs_active", "Runs currently active.")?,
            leader: metrics.gauge(
                "bridge_leader",
                "1 while this replica leads (runs retention and the reconciler).",
            )?,
            runs_created: metrics.counter("bridge_runs_created_total", "Runs provisioned.")?,
            discord_requests: metrics.counter_vec(
                "bridge_discord_requests_total",
                "Discord REST requests by route template and status.",
                &["route", "status"],
            )?,
            rate_limited: metrics.counter_vec(
                "bridge_discord_rate_limited_total",
                "Discord 429 answers by scope (route, global, shared).",
                &["scope"],
            )?,
            interactions: metrics.counter_vec(
                "bridge_interactions_total",
                "Interactions handled by command and outcome.",
                &["command", "outcome"],
            )?,
            lifecycle: crate::reconcile::telemetry::LifecycleMetrics::new(metrics)?,
            auth: crate::auth::AuthMetrics::new(metrics)?,
            handoff: HandoffMetrics::new(metrics)?,
        };
        // Closed sets start at 0 so alerts on rate() see the series from the start.
        for kind in ErrorKind::ALL {
            m.errors.with_label_values(&[kind.as_str()]);
        }
        for route in discord_routes() {
            for status in PRE_REGISTERED_STATUSES {
                m.discord_requests.with_label_values(&[route, status]);
            }
        }
        for scope in RATE_LIMIT_SCOPES {
            m.rate_limited.with_label_values(&[scope]);
        }
        for command in Command::ALL {
            for outcome in Outcome::ALL {
                m.interactions
                    .with_label_values(&[command.as_str(), outcome.as_str()]);
            }
        }
        Ok(m)
    }

    /// Metrics in a private registry, for tests and tools that export nothing.
    pub fn unregistered() -> Result<Self, MetricsError> {
        Self::new(&Metrics::new("bridge", "0")?)
    }

    /// `bridge_interactions_total{command,outcome}` now (tests).
    #[cfg(test)]
    pub(crate) fn interactions_count(&self, command: &str, outcome: &str) -> u64 {
        self.interactions
            .with_label_values(&[command, outcome])
            .get()
    }

    /// Sets `bridge_runs_active` from the store's count (at start-up and
    /// every `app::RUNS_ACTIVE_REFRESH`).
    pub fn set_runs_active(&self, n: u64) {
        self.runs_active.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// `bridge_runs_active` now (tests).
    #[cfg(test)]
    pub(crate) fn runs_active(&self) -> i64 {
        self.runs_active.get()
    }

    /// Sets `bridge_leader` (`leader::LeadershipChanged`).
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Records one Discord REST answer (called by the REST client's observer).
    pub fn discord_request(&self, route: &'static str, status: u16) {
        self.discord_requests
            .with_label_values(&[route, &status.to_string()])
            .inc();
    }

    /// Records one 429 (called by the REST client's observer); the scope is
    /// one of [`RATE_LIMIT_SCOPES`].
    pub fn discord_rate_limited(&self, scope: &'static str) {
        let scope = match scope {
            "global" => "global",
            "shared" => "shared",
            "user" | "route" => "route",
            _ => "other",
        };
        self.rate_limited.with_label_values(&[scope]).inc();
    }
}

/// A run was provisioned (first call for its key).
#[derive(Debug)]
pub struct RunCreated<'a> {
    pub run_id: &'a str,
    pub channel_id: &'a str,
}

impl RunCreated<'_> {
    pub fn emit(&self, m: &BridgeMetrics) {
        tracing::info!(
            run_id = self.run_id,
            channel_id = self.channel_id,
            "run created"
        );
        m.runs_created.inc();
    }
}

/// A new run's row was written: the store's count of active runs grew, so
/// `bridge_runs_active` grows now, not after Discord answered (a recount in
/// between would already include it and the gauge would read one high).
#[derive(Debug)]
pub struct RunStored<'a> {
    pub run_id: &'a str,
}

impl RunStored<'_> {
    pub fn emit(&self, m: &BridgeMetrics) {
        tracing::debug!(run_id = self.run_id, "run stored");
        m.runs_active.inc();
    }
}

/// A known run's channel or webhook was replaced because Discord lost it.
#[derive(Debug)]
pub struct RunRepaired<'a> {
    pub run_id: &'a str,
    pub channel_id: &'a str,
    pub what: &'static str,
}

impl RunRepaired<'_> {
    pub fn emit(&self) {
        tracing::warn!(
            run_id = self.run_id,
            channel_id = self.channel_id,
            replaced = self.what,
            "run re-provisioned"
        );
    }
}

/// A run took over a channel or webhook Discord holds but the store never
/// recorded: a replica died between creating it and saving it.
#[derive(Debug)]
pub struct OrphanAdopted<'a> {
    pub run_id: &'a str,
    pub channel_id: &'a str,
    /// `channel` or `webhook`.
    pub what: &'static str,
}

impl OrphanAdopted<'_> {
    pub fn emit(&self) {
        tracing::warn!(
            run_id = self.run_id,
            channel_id = self.channel_id,
            adopted = self.what,
            "run adopted an unrecorded Discord object instead of creating a second one"
        );
    }
}

/// A run was marked completed (its webhook revoked).
#[derive(Debug)]
pub struct RunCompleted<'a> {
    pub run_id: &'a str,
    pub archive_due_at: i64,
}

impl RunCompleted<'_> {
    pub fn emit(&self, m: &BridgeMetrics) {
        tracing::info!(
            run_id = self.run_id,
            archive_due_at = self.archive_due_at,
            "run completed"
        );
        m.runs_active.dec();
    }
}

/// Retention archived or deleted a run's channel.
#[derive(Debug)]
pub struct RetentionApplied<'a> {
    pub run_id: &'a str,
    pub channel_id: &'a str,
    /// `archived`, `deleted`, or `gone` (the channel no longer existed).
    pub outcome: &'static str,
}

impl RetentionApplied<'_> {
    pub fn emit(&self) {
        tracing::info!(
            run_id = self.run_id,
            channel_id = self.channel_id,
            outcome = self.outcome,
            "retention applied"
        );
    }
}

/// Something failed; logged once with its cause and counted by kind.
pub struct BridgeError<'a> {
    pub kind: ErrorKind,
    pub run_id: Option<&'a str>,
    pub error: &'a dyn std::fmt::Display,
}

impl BridgeError<'_> {
    pub fn emit(&self, m: &BridgeMetrics) {
        tracing::warn!(
            kind = self.kind.as_str(),
            run_id = self.run_id.unwrap_or(""),
            error = %self.error,
            "bridge error"
        );
        m.errors.with_label_values(&[self.kind.as_str()]).inc();
    }
}

/// A request to `/interactions` failed signature verification. Anyone can
/// send those (Discord itself probes with bad signatures), so the caller logs
/// only some of them ([`crate::api::interactions`] throttles) and carries how
/// many went unlogged since; every one is counted.
pub struct SignatureRefused<'a> {
    pub error: &'a dyn std::fmt::Display,
    /// Whether this one is written to the log.
    pub log: bool,
    /// Refusals not logged since the last line.
    pub unlogged: u64,
}

impl SignatureRefused<'_> {
    pub fn emit(&self, m: &BridgeMetrics) {
        if self.log {
            tracing::warn!(
                kind = ErrorKind::Interaction.as_str(),
                error = %self.error,
                unlogged_since_last = self.unlogged,
                "interaction signature refused"
            );
        }
        m.errors
            .with_label_values(&[ErrorKind::Interaction.as_str()])
            .inc();
    }
}

/// An interaction was answered.
#[derive(Debug)]
pub struct InteractionHandled<'a> {
    pub command: Command,
    pub outcome: Outcome,
    pub run_id: Option<&'a str>,
}

impl InteractionHandled<'_> {
    pub fn emit(&self, m: &BridgeMetrics) {
        tracing::info!(
            command = self.command.as_str(),
            outcome = self.outcome.as_str(),
            run_id = self.run_id.unwrap_or(""),
            "interaction handled"
        );
        m.interactions
            .with_label_values(&[self.command.as_str(), self.outcome.as_str()])
            .inc();
        if self.outcome == Outcome::Forwarded {
            m.forwarded.inc();
        }
    }
}

/// `bridge_handoff_messages_total{outcome}`: a closed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandoffMessageOutcome {
    /// Stored by a hand-off request (new `seq`).
    Accepted,
    /// A `seq` stored before; ignored.
    Duplicate,
    /// Discord answered 2xx.
    Delivered,
    /// Discord answered 400: dead-lettered in the store.
    Rejected,
}

impl HandoffMessageOutcome {
    pub const ALL: [Self; 4] = [
        Self::Accepted,
        Self::Duplicate,
        Self::Delivered,
        Self::Rejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Duplicate => "duplicate",
            Self::Delivered => "delivered",
            Self::Rejected => "rejected",
        }
    }
}

/// The hand-off metrics of DESIGN.md §5.
#[derive(Clone, Debug)]
pub struct HandoffMetrics {
    messages: IntCounterVec,
    pending: IntGauge,
    oldest_age: IntGauge,
}

impl HandoffMetrics {
    pub fn new(metrics: &Metrics) -> Result<Self, MetricsError> {
        let m = Self {
            messages: metrics.counter_vec(
                "bridge_handoff_messages_total",
                "Handed-off messages by outcome (accepted, duplicate, delivered, rejected).",
                &["outcome"],
            )?,
            pending: metrics.gauge(
                "bridge_handoff_pending_messages",
                "Handed-off messages not delivered yet, all runs.",
            )?,
            oldest_age: metrics.gauge(
                "bridge_handoff_oldest_pending_age_seconds",
                "Age of the oldest undelivered handed-off message (0 when none).",
            )?,
        };
        for outcome in HandoffMessageOutcome::ALL {
            m.messages.with_label_values(&[outcome.as_str()]);
        }
        Ok(m)
    }

    /// `bridge_handoff_messages_total{outcome}` now (tests).
    #[cfg(test)]
    pub(crate) fn count(&self, outcome: HandoffMessageOutcome) -> u64 {
        self.messages.with_label_values(&[outcome.as_str()]).get()
    }
}

/// Hand-off messages of one run reached `outcome` (`n` of them at once for a
/// request's accepted and duplicate messages; nothing happens for `n == 0`).
#[derive(Debug)]
pub struct HandoffCounted<'a> {
    pub run_id: &'a str,
    pub outcome: HandoffMessageOutcome,
    pub n: u64,
}

impl HandoffCounted<'_> {
    pub fn emit(&self, m: &HandoffMetrics) {
        if self.n == 0 {
            return;
        }
        match self.outcome {
            // One line per request, not per message: a hand-off holds up to 1000.
            HandoffMessageOutcome::Accepted | HandoffMessageOutcome::Duplicate => tracing::info!(
                run_id = self.run_id,
                outcome = self.outcome.as_str(),
                messages = self.n,
                "hand-off stored"
            ),
            HandoffMessageOutcome::Delivered => tracing::debug!(
                run_id = self.run_id,
                outcome = self.outcome.as_str(),
                "hand-off message delivered"
            ),
            // Logged with its cause where Discord refused it.
            HandoffMessageOutcome::Rejected => {}
        }
        m.messages
            .with_label_values(&[self.outcome.as_str()])
            .inc_by(self.n);
    }
}

/// The undelivered hand-off backlog after a scan of the store.
#[derive(Debug)]
pub struct HandoffBacklog {
    pub pending: u64,
    pub oldest_age_seconds: i64,
}

impl HandoffBacklog {
    pub fn emit(&self, m: &HandoffMetrics) {
        m.pending
            .set(i64::try_from(self.pending).unwrap_or(i64::MAX));
        m.oldest_age.set(self.oldest_age_seconds);
    }
}

/// A run's hand-off cannot go on: its webhook is gone (401/403/404) or was
/// revoked. Its messages stay pending; counted in `bridge_errors_total{kind="discord"}`
/// each time, logged once per stall (`log`).
pub struct HandoffStalled<'a> {
    pub run_id: &'a str,
    pub error: &'a dyn std::fmt::Display,
    pub log: bool,
}

impl HandoffStalled<'_> {
    pub fn emit(&self, m: &BridgeMetrics) {
        if self.log {
            tracing::warn!(
                run_id = self.run_id,
                error = %self.error,
                "hand-off stalled: the run's webhook is gone; its messages stay pending"
            );
        }
        m.errors
            .with_label_values(&[ErrorKind::Discord.as_str()])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_labelled_series_exists_before_anything_happens() {
        let metrics = Metrics::new("bridge", "0").unwrap();
        let _m = BridgeMetrics::new(&metrics).unwrap();
        let text = metrics.encode();
        for series in [
            "bridge_discord_requests_total{route=\"POST /guilds/{guild_id}/channels\",status=\"200\"} 0",
            "bridge_discord_requests_total{route=\"PUT /applications/{application_id}/guilds/{guild_id}/commands\",status=\"0\"} 0",
            "bridge_discord_requests_total{route=\"GET /webhooks/{webhook_id}\",status=\"200\"} 0",
            "bridge_errors_total{kind=\"discord\"} 0",
            "bridge_discord_rate_limited_total{scope=\"global\"} 0",
            "bridge_interactions_total{command=\"input\",outcome=\"busy\"} 0",
        ] {
            assert!(text.contains(series), "missing {series}:\n{text}");
        }
    }

    #[test]
    fn spec_metric_names_are_exported() {
        let metrics = Metrics::new("bridge", "0").unwrap();
        let m = BridgeMetrics::new(&metrics).unwrap();
        m.discord_request("/channels/{channel_id}", 200);
        m.discord_rate_limited("global");
        RunCreated {
            run_id: "r",
            channel_id: "c",
        }
        .emit(&m);
        RunStored { run_id: "r" }.emit(&m);
        InteractionHandled {
            command: Command::Input,
            outcome: Outcome::Forwarded,
            run_id: None,
        }
        .emit(&m);
        let text = metrics.encode();
        for name in [
            "bridge_forwarded_messages_total 1",
            "bridge_errors_total{kind=\"guild_full\"} 0",
            "bridge_runs_active 1",
            "bridge_runs_created_total 1",
            "bridge_discord_requests_total{route=\"/channels/{channel_id}\",status=\"200\"} 1",
            "bridge_discord_rate_limited_total{scope=\"global\"} 1",
            "bridge_discord_rate_limited_total{scope=\"route\"} 0",
            "bridge_interactions_total{command=\"input\",outcome=\"forwarded\"} 1",
            "bridge_interactions_total{command=\"input\",outcome=\"forbidden\"} 0",
        ] {
            assert!(text.contains(name), "missing {name}:\n{text}");
        }
    }
}
