//! Where runs, their channels and webhooks are remembered across restarts.
//!
//! The trait is asynchronous and every operation is a single statement or a
//! single transaction keyed by ids, so a networked database (Postgres) can back
//! several replicas later: uniqueness of (task_id, attempt, short_id) is enforced
//! by the database, not by the process, and [`RunStore::insert_run`] reports an
//! existing row instead of failing. The SQLite implementation is for one replica
//! (the file lives on one volume); Postgres ([`postgres`]) serves several, whose
//! provisioning is serialised by [`RunStore::provision_lock`] (an advisory lock
//! in the database) and whose interactions are claimed once each
//! ([`RunStore::claim_interaction`]). Only the elected leader runs retention and
//! the reconciler (`leader`).
//!
//! Each backend has its own migration list and a `schema_version` table; a
//! database migrated by a newer bot-bridge is refused at start
//! ([`StoreError::SchemaTooNew`], exit code 2), so a rollback never runs old
//! code on a schema it does not know.
//!
//! Secrets (webhook tokens, input secrets) are stored because bot-bridge must
//! hand them out again to a restarted watcher; in memory they are
//! `Secret<String>`, so a record can be logged or `Debug`-printed without
//! leaking them, and no query result is ever logged as raw rows.

pub mod postgres;
pub mod sqlite;
#[cfg(test)]
mod suite;

use std::future::Future;
use std::pin::Pin;

pub use discord::ratelimit::BucketSnapshot;
use ops::Secret;
use serde::Serialize;
use serde_json::Value;

/// A boxed future, so the trait stays object-safe (`Arc<dyn RunStore>`).
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Store failures. Messages never contain stored values.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(String),
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    #[error("database task failed: {0}")]
    Task(String),
    /// The database was migrated by a newer bot-bridge (rollback guard).
    #[error(
        "the database schema is version {found} but this bot-bridge knows only up to {known}: \
         it was migrated by a newer release; run that release (or restore the backup taken \
         before the upgrade, see docs/OPERATIONS.md)"
    )]
    SchemaTooNew { found: i64, known: i64 },
}

/// The furthest ahead the shared global budget hands out a slot, in ms: a
/// store clock stepped back (or a slot reserved by a replica that then
/// died) never holds requests longer than the REST client's longest wait.
pub(crate) const GLOBAL_BACKLOG_MS: i64 = 60_000;

/// A duration as whole milliseconds for the store, rounded up (a wait is
/// never shortened) and capped at the limiter's longest wait, so adding it
/// to a clock reading cannot overflow.
pub(crate) fn store_millis(d: std::time::Duration) -> i64 {
    let d = d.min(discord::ratelimit::MAX_WAIT);
    i64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(i64::MAX)
}

/// A stored deadline (unix ms on the store's clock) as a duration from
/// `now_ms`; `None` once it has passed.
fn ms_until(at: Option<i64>, now_ms: i64) -> Option<std::time::Duration> {
    let left = at?.checked_sub(now_ms).filter(|ms| *ms > 0)?;
    Some(std::time::Duration::from_millis(u64::try_from(left).ok()?))
}

/// One `discord_buckets` row read at `now_ms`: `None` when nothing in it is
/// still open (the next holder learns that much from one request).
pub(crate) fn bucket_from_row(
    route: String,
    limit: Option<i64>,
    remaining: Option<i64>,
    reset_at: Option<i64>,
    blocked_until: Option<i64>,
    now_ms: i64,
) -> Option<BucketSnapshot> {
    let reset_after = ms_until(reset_at, now_ms);
    let blocked_for = ms_until(blocked_until, now_ms);
    if reset_after.is_none() && blocked_for.is_none() {
        return None;
    }
    Some(BucketSnapshot {
        route,
        limit: limit.and_then(|v| u32::try_from(v).ok()),
        remaining: remaining.and_then(|v| u32::try_from(v).ok()),
        reset_after,
        blocked_for,
    })
}

/// Held while a run is provisioned or finished: while one guard lives, no
/// other of the same lock (in this process or, for Postgres, in any replica)
/// is handed out. Dropping it releases the lock.
pub struct ProvisionGuard(#[allow(dead_code)] Box<dyn Send + Sync>);

impl ProvisionGuard {
    pub fn new(inner: impl Send + Sync + 'static) -> Self {
        Self(Box::new(inner))
    }
}

impl std::fmt::Debug for ProvisionGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProvisionGuard")
    }
}

/// A run's lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// The agent runs; the webhook accepts posts.
    Active,
    /// The agent finished; the webhook is revoked, the channel awaits retention.
    Completed,
    /// The channel was moved to the archive category.
    Archived,
    /// The channel was deleted.
    Deleted,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Completed => "completed",
            Self::Archived => "archived",
            Self::Deleted => "deleted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "active" => Self::Active,
            "completed" => Self::Completed,
            "archived" => Self::Archived,
            "deleted" => Self::Deleted,
            _ => return None,
        })
    }
}

/// What identifies a run to its caller (the watcher): idempotency key of `POST /v1/runs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunKey {
    pub task_id: String,
    pub attempt: String,
    pub short_id: String,
}

/// One run as stored.
#[derive(Debug, Clone)]
pub struct RunRecord {
    /// bot-bridge's id of the run (a UUID), used in API paths.
    pub run_id: String,
    pub key: RunKey,
    /// The run's channel, or its thread in thread mode; `None` until Discord
    /// created it (the row is written first, so a crash leaves no orphan).
    pub channel_id: Option<String>,
    /// The webhook the watcher posts to (in thread mode one on the parent
    /// channel per run; older versions shared one per parent).
    pub webhook_id: Option<String>,
    pub webhook_token: Option<Secret<String>>,
    /// Base URL of the watcher's input listener.
    pub input_url: Option<String>,
    /// HMAC key for relayed operator input, hex of 32 random bytes.
    pub input_secret: Secret<String>,
    /// Hex SHA-256 of the run token its creator holds (`access::hash_token`);
    /// `None` for runs created before run tokens existed.
    pub token_hash: Option<String>,
    pub status: RunStatus,
    /// Unix seconds.
    pub created_at: i64,
    pub completed_at: Option<i64>,
    /// When retention acts on the channel (unix seconds).
    pub archive_due_at: Option<i64>,
    /// The summary the watcher sent at completion.
    pub summary: Option<Value>,
    /// Outcome of the last retention attempt, for operators.
    pub retention_note: Option<String>,
}

/// Category kinds: active runs or archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CategoryKind {
    Runs,
    Archive,
}

impl CategoryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Runs => "runs",
            Self::Archive => "archive",
        }
    }
}

/// A category bot-bridge created (index 1 = the base name, 2.. = overflow).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CategoryRecord {
    pub id: String,
    pub name: String,
    pub kind: CategoryKind,
    pub index: u32,
}

/// A webhook shared by all runs (thread mode: one per parent channel).
#[derive(Debug, Clone)]
pub struct StoredWebhook {
    pub id: String,
    pub token: Secret<String>,
}

/// Where a page of [`RunStore::list_runs`] continues: after this run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListCursor {
    pub created_at: i64,
    pub run_id: String,
}

/// Result of inserting a run whose key may already exist.
#[derive(Debug, Clone)]
pub enum Inserted {
    /// The new row was written.
    New,
    /// Another call created the run first; this is the stored row.
    Existing(Box<RunRecord>),
}

/// The pod a run belongs to (Kubernetes downward API: `metadata.namespace`,
/// `metadata.name`, `metadata.uid`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodIdentity {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// Where a run's pod identity came from. The watcher's claim is what this
/// build stores; a verified identity (TokenReview) replaces a claimed one and
/// is never replaced by a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IdentitySource {
    Claimed,
    Verified,
}

impl IdentitySource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Claimed => "claimed",
            Self::Verified => "verified",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "claimed" => Self::Claimed,
            "verified" => Self::Verified,
            _ => return None,
        })
    }
}

/// What tells an active run's end without `complete`: its pod and its last
/// heartbeat (see `reconcile`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunLiveness {
    pub run_id: String,
    pub pod: Option<PodIdentity>,
    pub source: Option<IdentitySource>,
    /// Unix seconds of the last heartbeat; `None` when its watcher never sent
    /// one (a watcher from before heartbeats: never finalised for silence).
    pub last_heartbeat: Option<i64>,
}

/// One message of a hand-off (`POST /v1/runs/{id}/handoff`): the watcher's
/// sequence number and the webhook body it would have posted.
#[derive(Debug, Clone, PartialEq)]
pub struct HandoffMessage {
    /// The watcher's message sequence: the order in the channel, unique per
    /// run. At most `i64::MAX` (validated by the API), so SQL stores it as a
    /// signed 64-bit integer.
    pub seq: u64,
    pub payload: Value,
}

/// What [`RunStore::put_handoff`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandoffStored {
    /// Written (or nothing new to write): counts after the transaction.
    Stored {
        /// Messages stored now.
        accepted: u64,
        /// Messages whose `(run_id, seq)` was stored before, ignored.
        duplicates: u64,
        /// Undelivered messages of this run now.
        pending: u64,
    },
    /// The run is no longer active and the hand-off carries `new` messages
    /// not stored before; nothing was written.
    Finished { new: u64 },
    /// No run has this id; nothing was written.
    UnknownRun,
}

/// How a handed-off message ended ([`RunStore::mark_handoff`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandoffOutcome {
    /// Discord answered 2xx. The payload is dropped; the row stays as the
    /// record that `seq` was handled (a later duplicate is ignored).
    Delivered,
    /// Discord answered 400: dead-lettered, payload kept for a person.
    Rejected,
}

impl HandoffOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Rejected => "rejected",
        }
    }
}

/// A run whose hand-off is not finished ([`RunStore::handoff_runs`]): it has
/// pending messages, or its hand-off asked for `complete` and the run is
/// still active.
#[derive(Debug, Clone, PartialEq)]
pub struct HandoffRun {
    pub run_id: String,
    /// Undelivered messages.
    pub pending: u64,
    /// When the oldest pending message was stored (unix seconds).
    pub oldest_pending_at: Option<i64>,
    /// `Some(summary)` when a hand-off carried `complete` (the summary may be
    /// `None`: `"complete": {}`).
    pub complete: Option<Option<Value>>,
}

/// Persistent state of bot-bridge. See the module docs for the replica model.
pub trait RunStore: Send + Sync + 'static {
    /// Inserts `run` unless a run with the same key exists.
    fn insert_run(&self, run: RunRecord) -> StoreFuture<'_, Inserted>;
    /// Overwrites the stored run with the same `run_id`.
    fn update_run(&self, run: RunRecord) -> StoreFuture<'_, ()>;
    fn get_run(&self, run_id: String) -> StoreFuture<'_, Option<RunRecord>>;
    fn find_by_key(&self, key: RunKey) -> StoreFuture<'_, Option<RunRecord>>;
    /// The run whose channel (or thread) is `channel_id`.
    fn find_by_channel(&self, channel_id: String) -> StoreFuture<'_, Option<RunRecord>>;
    /// At most `limit` runs, newest first (`created_at`, then `run_id`, both
    /// descending), optionally only one status and only after `after`.
    fn list_runs(
        &self,
        status: Option<RunStatus>,
        limit: u32,
        after: Option<ListCursor>,
    ) -> StoreFuture<'_, Vec<RunRecord>>;
    /// Completed runs whose `archive_due_at` is at or before `now`.
    fn due_runs(&self, now: i64) -> StoreFuture<'_, Vec<RunRecord>>;
    fn count_runs(&self, status: RunStatus) -> StoreFuture<'_, u64>;
    fn categories(&self) -> StoreFuture<'_, Vec<CategoryRecord>>;
    fn put_category(&self, category: CategoryRecord) -> StoreFuture<'_, ()>;
    fn remove_category(&self, id: String) -> StoreFuture<'_, ()>;
    fn shared_webhook(&self, channel_id: String) -> StoreFuture<'_, Option<StoredWebhook>>;
    fn put_shared_webhook(&self, channel_id: String, webhook: StoredWebhook)
        -> StoreFuture<'_, ()>;
    /// A cheap, time-bounded check that the store could take a write now (a
    /// read alone can succeed while writes are locked out), for readiness.
    /// Writes nothing.
    fn ping(&self) -> StoreFuture<'_, ()>;
    /// Binds `run_id` to its pod. A verified identity replaces anything; a
    /// claimed one never replaces a verified one. Returns whether it changed.
    fn bind_pod(
        &self,
        run_id: String,
        pod: PodIdentity,
        source: IdentitySource,
    ) -> StoreFuture<'_, bool>;
    /// Records a heartbeat of `run_id` at `at` (unix seconds).
    fn heartbeat(&self, run_id: String, at: i64) -> StoreFuture<'_, ()>;
    /// The pod `run_id` is bound to, if any.
    fn run_pod(&self, run_id: String) -> StoreFuture<'_, Option<PodIdentity>>;
    /// Every active run with its pod and last sign of life.
    fn active_liveness(&self) -> StoreFuture<'_, Vec<RunLiveness>>;

    /// Stores a hand-off in one transaction: each message whose
    /// `(run_id, seq)` is new is inserted pending (`stored_at` = `now`),
    /// others are counted as duplicates and left alone (not compared); a
    /// `complete` is recorded unless one was before (the first one wins).
    /// On a run that is not active, nothing is written and
    /// [`HandoffStored::Finished`] says how many messages were new (none: a
    /// retry of a stored hand-off, answered with its counts).
    fn put_handoff(
        &self,
        run_id: String,
        messages: Vec<HandoffMessage>,
        complete: Option<Option<Value>>,
        now: i64,
    ) -> StoreFuture<'_, HandoffStored>;
    /// Every run whose hand-off is not finished (see [`HandoffRun`]), oldest
    /// pending first: the drainer's work list and the backlog gauges.
    fn handoff_runs(&self) -> StoreFuture<'_, Vec<HandoffRun>>;
    /// The pending message of `run_id` with the lowest `seq`: the next one
    /// to deliver. Dead-lettered and delivered messages are skipped.
    fn next_handoff(&self, run_id: String) -> StoreFuture<'_, Option<HandoffMessage>>;
    /// Records how the pending message `(run_id, seq)` ended, at `now`.
    fn mark_handoff(
        &self,
        run_id: String,
        seq: u64,
        outcome: HandoffOutcome,
        now: i64,
    ) -> StoreFuture<'_, ()>;
    /// Keeps when the watcher's channel accepted its last messages before
    /// `run_id`'s hand-off (unix ms, oldest first); the first one stored wins.
    fn pace_handoff(
        &self,
        run_id: String,
        sends_unix_ms: Vec<i64>,
        now: i64,
    ) -> StoreFuture<'_, ()>;
    /// What [`Self::pace_handoff`] kept for `run_id` (empty: nothing).
    fn handoff_pacing(&self, run_id: String) -> StoreFuture<'_, Vec<i64>>;
    /// Forgets the hand-off messages and completion of every run retention
    /// has archived or deleted (nothing can be handed over to it any more, and
    /// delivered payloads would otherwise stay forever); returns how many
    /// messages went.
    fn prune_handoffs(&self) -> StoreFuture<'_, u64>;
    /// Waits for the provisioning lock: one holder at a time across every
    /// process sharing the store, so two replicas handling the same
    /// `POST /v1/runs` (or the last free slot of a category) create one
    /// channel, and the second finds the first's run by its key.
    fn provision_lock(&self) -> StoreFuture<'_, ProvisionGuard>;
    /// Waits for `run_id`'s finish lock, held while the run is finished
    /// (its webhook revoked, the run marked completed): [`Self::put_handoff`]
    /// for that run waits until the guard is dropped, so a hand-off is never
    /// stored under a run that is finishing without it. Per run, so a
    /// watcher's hand-off at shutdown (a fraction of a second to land) never
    /// waits on another run's provisioning behind Discord's rate limits.
    /// Take it after [`Self::provision_lock`], never before.
    fn finish_lock(&self, run_id: String) -> StoreFuture<'_, ProvisionGuard>;
    /// Claims Discord interaction `id` at `at` (unix seconds): `true` for the
    /// first claim only, across every replica, so an interaction is acted on once.
    fn claim_interaction(&self, id: String, at: i64) -> StoreFuture<'_, bool>;
    /// Forgets interaction claims older than `before` (Discord gives an
    /// interaction 15 minutes of life); returns how many.
    fn prune_interactions(&self, before: i64) -> StoreFuture<'_, u64>;

    /// The Discord buckets the last holder of the provisioning lock left
    /// (see [`RunStore::put_discord_buckets`]), durations counted from now on
    /// the store's clock; windows and blocks that have ended are left out.
    fn discord_buckets(&self) -> StoreFuture<'_, Vec<BucketSnapshot>>;
    /// Replaces the stored Discord buckets with `buckets` (durations from
    /// now), written by the holder of the provisioning lock before it lets
    /// go, so the next holder paces the guild's routes from where it left off.
    fn put_discord_buckets(&self, buckets: Vec<BucketSnapshot>) -> StoreFuture<'_, ()>;
    /// Reserves the next slot of a request budget shared by every process on
    /// this store, one slot per `interval` (Discord's global limit: 20 ms
    /// for 50 a second), and returns how long to wait before sending in it
    /// (zero when the budget has room now). Slots are handed out in order on
    /// the store's clock, so no two processes ever take the same one.
    fn reserve_discord_request(
        &self,
        interval: std::time::Duration,
    ) -> StoreFuture<'_, std::time::Duration>;
}
