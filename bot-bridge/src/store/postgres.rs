//! The Postgres [`RunStore`]: one database shared by every replica.
//!
//! Driver and pool: `tokio-postgres` with `deadpool-postgres`. sqlx was the
//! other candidate; this pair has a far smaller dependency tree (no proc
//! macros, no offline query cache) and this store writes its SQL by hand
//! anyway. TLS to the database is not built in: run Postgres in-cluster, or
//! behind a TLS-terminating proxy/sidecar (docs/OPERATIONS.md).
//!
//! Extending it: a new table is one more entry in [`MIGRATIONS`] (never edit
//! one that shipped), a new trait method one `async fn` body in the `impl`
//! below, using [`PostgresStore::client`] and the `db` error mapper.
//!
//! Concurrency between replicas is the database's: key uniqueness by a
//! unique constraint (`insert_run` is `ON CONFLICT DO NOTHING` + read), the
//! provisioning critical section by a session advisory lock
//! ([`RunStore::provision_lock`]), interaction ids by a primary key
//! ([`RunStore::claim_interaction`]), migrations by a transaction-scoped
//! advisory lock so two replicas starting together migrate once.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use ops::Secret;
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

use super::{bucket_from_row, store_millis, BucketSnapshot, GLOBAL_BACKLOG_MS};
use super::{
    CategoryKind, CategoryRecord, HandoffMessage, HandoffOutcome, HandoffRun, HandoffStored,
    IdentitySource, Inserted, ListCursor, PodIdentity, ProvisionGuard, RunKey, RunLiveness,
    RunRecord, RunStatus, RunStore, StoreError, StoreFuture, StoredWebhook,
};

/// The database server's clock in unix milliseconds: every replica reads
/// and writes shared rate-limit times on it, so their clocks never meet.
const NOW_MS: &str = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT";

/// Schema migrations, applied in order; never edit one that shipped. The
/// Postgres history is its own (types differ from SQLite's), but every
/// version adds the same tables as the SQLite migration of the same number.
const MIGRATIONS: &[&str] = &[
    r"
CREATE TABLE runs (
    run_id          TEXT PRIMARY KEY,
    task_id         TEXT NOT NULL,
    attempt         TEXT NOT NULL,
    short_id        TEXT NOT NULL,
    channel_id      TEXT,
    webhook_id      TEXT,
    webhook_token   TEXT,
    input_url       TEXT,
    input_secret    TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('active','completed','archived','deleted')),
    created_at      BIGINT NOT NULL,
    completed_at    BIGINT,
    archive_due_at  BIGINT,
    summary         TEXT,
    retention_note  TEXT,
    token_hash      TEXT,
    UNIQUE (task_id, attempt, short_id)
);
CREATE INDEX runs_channel ON runs (channel_id);
CREATE INDEX runs_due ON runs (status, archive_due_at);
CREATE TABLE categories (
    id     TEXT PRIMARY KEY,
    name   TEXT NOT NULL,
    kind   TEXT NOT NULL CHECK (kind IN ('runs','archive')),
    idx    BIGINT NOT NULL
);
CREATE TABLE shared_webhooks (
    channel_id     TEXT PRIMARY KEY,
    webhook_id     TEXT NOT NULL,
    webhook_token  TEXT NOT NULL
);
",
    // SQLite's migration 2 added token_hash; here it is in the first one, so
    // this version is empty and the numbers stay aligned.
    "",
    r"
CREATE TABLE run_liveness (
    run_id          TEXT PRIMARY KEY REFERENCES runs (run_id),
    pod_namespace   TEXT,
    pod_name        TEXT,
    pod_uid         TEXT,
    identity_source TEXT CHECK (identity_source IN ('claimed','verified')),
    heartbeat_at    BIGINT
);
",
    r"
CREATE TABLE claimed_interactions (
    id          TEXT PRIMARY KEY,
    claimed_at  BIGINT NOT NULL
);
CREATE INDEX claimed_interactions_at ON claimed_interactions (claimed_at);
",
    // Hand-offs (issue 18), as SQLite's migration 5.
    r"
CREATE TABLE handoff_messages (
    run_id     TEXT NOT NULL REFERENCES runs (run_id),
    seq        BIGINT NOT NULL,
    payload    TEXT,
    state      TEXT NOT NULL CHECK (state IN ('pending','delivered','rejected')),
    stored_at  BIGINT NOT NULL,
    done_at    BIGINT,
    PRIMARY KEY (run_id, seq)
);
CREATE INDEX handoff_by_state ON handoff_messages (state, run_id, seq);
CREATE TABLE handoff_completions (
    run_id     TEXT PRIMARY KEY REFERENCES runs (run_id),
    summary    TEXT,
    stored_at  BIGINT NOT NULL
);
",
    // When the watcher's channel accepted its last messages before a hand-off
    // (unix ms, a JSON array): the drainer keeps the channel's pace from there.
    r"
CREATE TABLE handoff_pacing (
    run_id     TEXT PRIMARY KEY REFERENCES runs (run_id),
    sends      TEXT NOT NULL,
    stored_at  BIGINT NOT NULL
);
",
    // Discord rate limits shared by replicas (issue 21), as SQLite's
    // migration of the same number. Times are unix milliseconds on the database server's
    // clock, the one clock every replica shares.
    r"
CREATE TABLE discord_buckets (
    route          TEXT PRIMARY KEY,
    lim            BIGINT,
    remaining      BIGINT,
    reset_at       BIGINT,
    blocked_until  BIGINT
);
CREATE TABLE discord_global (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    next  BIGINT NOT NULL
);
INSERT INTO discord_global (id, next) VALUES (1, 0);
",
];

/// Advisory-lock keys (one 64-bit namespace per database): arbitrary
/// constants, spelled so they are recognisable in `pg_locks`.
const MIGRATION_LOCK: i64 = 0x6167_6d6f_6e00_0001;
const PROVISION_LOCK: i64 = 0x6167_6d6f_6e00_0002;
/// The first key of every run's finish lock ([`RunStore::finish_lock`]).
const FINISH_LOCK_CLASS: i32 = 0x6167_0003;

/// How long a statement may run before the server cancels it.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long provisioning waits for another replica's to finish.
const PROVISION_WAIT: Duration = Duration::from_secs(60);
/// How long getting a pooled connection (or making one) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A Postgres-backed store. Cheap to clone.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    /// Provisioning in this process queues here first, so waiting callers do
    /// not each hold a pooled connection blocked on the advisory lock.
    local: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").finish_non_exhaustive()
    }
}

/// Driver errors carry no row values, but a connection error may name the
/// host and user; never the password (tokio-postgres does not print it).
fn db(e: tokio_postgres::Error) -> StoreError {
    // `Display` of a server error is only "db error"; the detail is in the source.
    match e.as_db_error() {
        Some(d) => StoreError::Database(format!("{}: {}", d.code().code(), d.message())),
        // The kind ("error connecting to server") and its cause ("Connection refused").
        None => match std::error::Error::source(&e) {
            Some(cause) => StoreError::Database(format!("{e}: {cause}")),
            None => StoreError::Database(e.to_string()),
        },
    }
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => db(e),
        other => StoreError::Database(format!("connection pool: {other}")),
    }
}

impl PostgresStore {
    /// Connects with a pool of at most `max_connections` and applies the
    /// migrations. Fails with [`StoreError::SchemaTooNew`] when the database
    /// was migrated by a newer bot-bridge (rollback guard).
    pub async fn connect(url: &Secret<String>, max_connections: usize) -> Result<Self, StoreError> {
        let mut pg: tokio_postgres::Config =
            url.expose().parse().map_err(|e: tokio_postgres::Error| {
                StoreError::Database(format!("DATABASE_URL: {e}"))
            })?;
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(CONNECT_TIMEOUT);
        }
        pg.options(format!(
            "-c statement_timeout={}",
            STATEMENT_TIMEOUT.as_millis()
        ));
        let manager = Manager::from_config(
            pg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(max_connections.max(2))
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Database(format!("connection pool: {e}")))?;
        let store = Self {
            pool,
            local: Arc::new(tokio::sync::Mutex::new(())),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// A pooled connection (one statement or transaction at a time).
    pub async fn client(&self) -> Result<Object, StoreError> {
        self.pool.get().await.map_err(pool_error)
    }

    /// Applies every migration newer than `schema_version`, all in one
    /// transaction under an advisory lock: two replicas starting at once
    /// migrate once, and a failed migration leaves the schema as it was.
    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(db)?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
            .await
            .map_err(db)?;
        let current: i64 = tx
            .query_one("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[])
            .await
            .map_err(db)?
            .get(0);
        let known = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
        if current > known {
            return Err(StoreError::SchemaTooNew {
                found: current,
                known,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate() {
            let version = i64::try_from(i + 1).unwrap_or(i64::MAX);
            if version <= current {
                continue;
            }
            tx.batch_execute(sql).await.map_err(db)?;
        }
        if known > current {
            tx.execute("DELETE FROM schema_version", &[])
                .await
                .map_err(db)?;
            tx.execute(
                "INSERT INTO schema_version (version) VALUES ($1)",
                &[&known],
            )
            .await
            .map_err(db)?;
        }
        tx.commit().await.map_err(db)
    }

    async fn runs(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<RunRecord>, StoreError> {
        let client = self.client().await?;
        let rows = client.query(sql, params).await.map_err(db)?;
        rows.iter().map(run_from_row).collect()
    }

    async fn one_run(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<RunRecord>, StoreError> {
        Ok(self.runs(sql, params).await?.into_iter().next())
    }

    async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, StoreError> {
        let client = self.client().await?;
        client.execute(sql, params).await.map_err(db)
    }
}

const RUN_COLUMNS: &str = "run_id, task_id, attempt, short_id, channel_id, webhook_id, \
    webhook_token, input_url, input_secret, status, created_at, completed_at, archive_due_at, \
    summary, retention_note, token_hash";

fn run_from_row(row: &Row) -> Result<RunRecord, StoreError> {
    let get_err = |e: tokio_postgres::Error| StoreError::Corrupt(e.to_string());
    let status: String = row.try_get(9).map_err(get_err)?;
    let status = RunStatus::parse(&status)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown run status {status:?}")))?;
    let summary: Option<String> = row.try_get(13).map_err(get_err)?;
    let summary = summary
        .map(|s| serde_json::from_str(&s))
        .transpose()
        .map_err(|e| StoreError::Corrupt(format!("run summary: {e}")))?;
    Ok(RunRecord {
        run_id: row.try_get(0).map_err(get_err)?,
        key: RunKey {
            task_id: row.try_get(1).map_err(get_err)?,
            attempt: row.try_get(2).map_err(get_err)?,
            short_id: row.try_get(3).map_err(get_err)?,
        },
        channel_id: row.try_get(4).map_err(get_err)?,
        webhook_id: row.try_get(5).map_err(get_err)?,
        webhook_token: row
            .try_get::<_, Option<String>>(6)
            .map_err(get_err)?
            .map(Secret::new),
        input_url: row.try_get(7).map_err(get_err)?,
        input_secret: Secret::new(row.try_get(8).map_err(get_err)?),
        status,
        created_at: row.try_get(10).map_err(get_err)?,
        completed_at: row.try_get(11).map_err(get_err)?,
        archive_due_at: row.try_get(12).map_err(get_err)?,
        summary,
        retention_note: row.try_get(14).map_err(get_err)?,
        token_hash: row.try_get(15).map_err(get_err)?,
    })
}

fn summary_text(run: &RunRecord) -> Option<String> {
    run.summary.as_ref().map(ToString::to_string)
}

/// Holds the provisioning advisory lock on one pooled connection; dropping
/// it unlocks (in a spawned task: `Drop` cannot await). A connection whose
/// unlock fails is detached from the pool and closed, which ends its session
/// and so its lock: the lock can never outlive the guard by more than that.
struct AdvisoryGuard {
    client: Option<Object>,
    lock: Advisory,
    _local: Option<tokio::sync::OwnedMutexGuard<()>>,
}

/// Which session-level advisory lock a guard holds.
enum Advisory {
    Provision,
    /// A run's finish lock: the two-key form (a key space apart from the
    /// provisioning lock's one key), the run id hashed into the second key.
    Finish(String),
}

impl AdvisoryGuard {
    /// The guard of `lock`, just asked for on `pending`'s connection with
    /// the outcome `locked`. On an error the session is closed (`pending`'s
    /// drop): whatever state it is in (lock held or not, a longer timeout),
    /// that is the clean way out.
    fn hold(
        pending: Unlocked,
        locked: Result<(), tokio_postgres::Error>,
        lock: Advisory,
        local: Option<tokio::sync::OwnedMutexGuard<()>>,
    ) -> Result<ProvisionGuard, StoreError> {
        locked.map_err(db)?;
        Ok(ProvisionGuard::new(Self {
            client: pending.keep(),
            lock,
            _local: local,
        }))
    }
}

impl Drop for AdvisoryGuard {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        let lock = std::mem::replace(&mut self.lock, Advisory::Provision);
        let unlock = async move {
            let unlocked = match &lock {
                Advisory::Provision => {
                    client
                        .execute("SELECT pg_advisory_unlock($1)", &[&PROVISION_LOCK])
                        .await
                }
                Advisory::Finish(run_id) => {
                    client
                        .execute(
                            "SELECT pg_advisory_unlock($1, hashtext($2))",
                            &[&FINISH_LOCK_CLASS, run_id],
                        )
                        .await
                }
            };
            if unlocked.is_err() {
                drop(Object::take(client));
            }
        };
        // No runtime (process exit): the connection closes with the process.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(unlock);
        }
    }
}

/// A pooled connection asking for an advisory lock: closed, not
/// returned to the pool, unless [`Unlocked::keep`] takes it once the lock is
/// held.
struct Unlocked(Option<Object>);

impl Unlocked {
    fn keep(mut self) -> Option<Object> {
        self.0.take()
    }
}

impl Drop for Unlocked {
    fn drop(&mut self) {
        if let Some(client) = self.0.take() {
            drop(Object::take(client));
        }
    }
}

impl RunStore for PostgresStore {
    fn insert_run(&self, run: RunRecord) -> StoreFuture<'_, Inserted> {
        Box::pin(async move {
            let changed = self
                .execute(
                    &format!(
                        "INSERT INTO runs ({RUN_COLUMNS}) VALUES \
                         ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
                         ON CONFLICT (task_id, attempt, short_id) DO NOTHING"
                    ),
                    &[
                        &run.run_id,
                        &run.key.task_id,
                        &run.key.attempt,
                        &run.key.short_id,
                        &run.channel_id,
                        &run.webhook_id,
                        &run.webhook_token.as_ref().map(|t| t.expose().as_str()),
                        &run.input_url,
                        &run.input_secret.expose().as_str(),
                        &run.status.as_str(),
                        &run.created_at,
                        &run.completed_at,
                        &run.archive_due_at,
                        &summary_text(&run),
                        &run.retention_note,
                        &run.token_hash,
                    ],
                )
                .await?;
            if changed == 1 {
                return Ok(Inserted::New);
            }
            let existing = self
                .find_by_key(run.key)
                .await?
                .ok_or_else(|| StoreError::Database("insert conflicted on a missing row".into()))?;
            Ok(Inserted::Existing(Box::new(existing)))
        })
    }

    fn update_run(&self, run: RunRecord) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            self.execute(
                "UPDATE runs SET channel_id = $2, webhook_id = $3, webhook_token = $4, \
                 input_url = $5, status = $6, completed_at = $7, archive_due_at = $8, \
                 summary = $9, retention_note = $10, token_hash = $11 WHERE run_id = $1",
                &[
                    &run.run_id,
                    &run.channel_id,
                    &run.webhook_id,
                    &run.webhook_token.as_ref().map(|t| t.expose().as_str()),
                    &run.input_url,
                    &run.status.as_str(),
                    &run.completed_at,
                    &run.archive_due_at,
                    &summary_text(&run),
                    &run.retention_note,
                    &run.token_hash,
                ],
            )
            .await?;
            Ok(())
        })
    }

    fn get_run(&self, run_id: String) -> StoreFuture<'_, Option<RunRecord>> {
        Box::pin(async move {
            self.one_run(
                &format!("SELECT {RUN_COLUMNS} FROM runs WHERE run_id = $1"),
                &[&run_id],
            )
            .await
        })
    }

    fn find_by_key(&self, key: RunKey) -> StoreFuture<'_, Option<RunRecord>> {
        Box::pin(async move {
            self.one_run(
                &format!(
                    "SELECT {RUN_COLUMNS} FROM runs \
                     WHERE task_id = $1 AND attempt = $2 AND short_id = $3"
                ),
                &[&key.task_id, &key.attempt, &key.short_id],
            )
            .await
        })
    }

    fn find_by_channel(&self, channel_id: String) -> StoreFuture<'_, Option<RunRecord>> {
        Box::pin(async move {
            self.one_run(
                &format!(
                    "SELECT {RUN_COLUMNS} FROM runs WHERE channel_id = $1 \
                     ORDER BY created_at DESC LIMIT 1"
                ),
                &[&channel_id],
            )
            .await
        })
    }

    fn list_runs(
        &self,
        status: Option<RunStatus>,
        limit: u32,
        after: Option<ListCursor>,
    ) -> StoreFuture<'_, Vec<RunRecord>> {
        Box::pin(async move {
            // NULLs switch a filter off, so one statement serves every query.
            let (at, id) = after.map_or((None, None), |c| (Some(c.created_at), Some(c.run_id)));
            let status = status.map(RunStatus::as_str);
            let limit = i64::from(limit);
            self.runs(
                &format!(
                    "SELECT {RUN_COLUMNS} FROM runs \
                     WHERE ($1::TEXT IS NULL OR status = $1) \
                     AND ($2::BIGINT IS NULL OR created_at < $2 \
                          OR (created_at = $2 AND run_id < $3::TEXT)) \
                     ORDER BY created_at DESC, run_id DESC LIMIT $4"
                ),
                &[&status, &at, &id, &limit],
            )
            .await
        })
    }

    fn due_runs(&self, now: i64) -> StoreFuture<'_, Vec<RunRecord>> {
        Box::pin(async move {
            self.runs(
                &format!(
                    "SELECT {RUN_COLUMNS} FROM runs WHERE status = 'completed' \
                     AND archive_due_at IS NOT NULL AND archive_due_at <= $1 \
                     ORDER BY archive_due_at, run_id"
                ),
                &[&now],
            )
            .await
        })
    }

    fn count_runs(&self, status: RunStatus) -> StoreFuture<'_, u64> {
        Box::pin(async move {
            let client = self.client().await?;
            let n: i64 = client
                .query_one(
                    "SELECT COUNT(*) FROM runs WHERE status = $1",
                    &[&status.as_str()],
                )
                .await
                .map_err(db)?
                .get(0);
            Ok(u64::try_from(n).unwrap_or(0))
        })
    }

    fn categories(&self) -> StoreFuture<'_, Vec<CategoryRecord>> {
        Box::pin(async move {
            let client = self.client().await?;
            let rows = client
                .query(
                    "SELECT id, name, kind, idx FROM categories ORDER BY kind, idx",
                    &[],
                )
                .await
                .map_err(db)?;
            rows.iter()
                .map(|r| {
                    let kind: String = r.get(2);
                    let kind = match kind.as_str() {
                        "runs" => CategoryKind::Runs,
                        "archive" => CategoryKind::Archive,
                        other => {
                            return Err(StoreError::Corrupt(format!(
                                "unknown category kind {other:?}"
                            )))
                        }
                    };
                    Ok(CategoryRecord {
                        id: r.get(0),
                        name: r.get(1),
                        kind,
                        index: u32::try_from(r.get::<_, i64>(3)).unwrap_or(0),
                    })
                })
                .collect()
        })
    }

    fn put_category(&self, c: CategoryRecord) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            self.execute(
                "INSERT INTO categories (id, name, kind, idx) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (id) DO UPDATE SET name = $2, kind = $3, idx = $4",
                &[&c.id, &c.name, &c.kind.as_str(), &i64::from(c.index)],
            )
            .await?;
            Ok(())
        })
    }

    fn remove_category(&self, id: String) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            self.execute("DELETE FROM categories WHERE id = $1", &[&id])
                .await?;
            Ok(())
        })
    }

    fn shared_webhook(&self, channel_id: String) -> StoreFuture<'_, Option<StoredWebhook>> {
        Box::pin(async move {
            let client = self.client().await?;
            let row = client
                .query_opt(
                    "SELECT webhook_id, webhook_token FROM shared_webhooks WHERE channel_id = $1",
                    &[&channel_id],
                )
                .await
                .map_err(db)?;
            Ok(row.map(|r| StoredWebhook {
                id: r.get(0),
                token: Secret::new(r.get(1)),
            }))
        })
    }

    fn put_shared_webhook(
        &self,
        channel_id: String,
        webhook: StoredWebhook,
    ) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            self.execute(
                "INSERT INTO shared_webhooks (channel_id, webhook_id, webhook_token) \
                 VALUES ($1, $2, $3) ON CONFLICT (channel_id) \
                 DO UPDATE SET webhook_id = $2, webhook_token = $3",
                &[&channel_id, &webhook.id, &webhook.token.expose().as_str()],
            )
            .await?;
            Ok(())
        })
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            // A standby (read-only) server answers reads: only a transaction
            // that is allowed to write proves a run could be inserted.
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(db)?;
            tx.batch_execute("SET TRANSACTION READ WRITE")
                .await
                .map_err(db)?;
            tx.rollback().await.map_err(db)
        })
    }

    fn bind_pod(
        &self,
        run_id: String,
        pod: PodIdentity,
        source: IdentitySource,
    ) -> StoreFuture<'_, bool> {
        Box::pin(async move {
            // A claim never overwrites a verified identity.
            let changed = self
                .execute(
                    "INSERT INTO run_liveness \
                     (run_id, pod_namespace, pod_name, pod_uid, identity_source) \
                     VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (run_id) DO UPDATE SET pod_namespace = $2, pod_name = $3, \
                     pod_uid = $4, identity_source = $5 \
                     WHERE run_liveness.identity_source IS NULL \
                        OR run_liveness.identity_source = 'claimed' OR $5 = 'verified'",
                    &[
                        &run_id,
                        &pod.namespace,
                        &pod.name,
                        &pod.uid,
                        &source.as_str(),
                    ],
                )
                .await?;
            Ok(changed > 0)
        })
    }

    fn heartbeat(&self, run_id: String, at: i64) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            self.execute(
                "INSERT INTO run_liveness (run_id, heartbeat_at) VALUES ($1, $2) \
                 ON CONFLICT (run_id) DO UPDATE SET heartbeat_at = \
                 GREATEST(COALESCE(run_liveness.heartbeat_at, 0), $2)",
                &[&run_id, &at],
            )
            .await?;
            Ok(())
        })
    }

    fn run_pod(&self, run_id: String) -> StoreFuture<'_, Option<PodIdentity>> {
        Box::pin(async move {
            let client = self.client().await?;
            let row = client
                .query_opt(
                    "SELECT pod_namespace, pod_name, pod_uid FROM run_liveness WHERE run_id = $1",
                    &[&run_id],
                )
                .await
                .map_err(db)?;
            Ok(row.and_then(|r| {
                Some(PodIdentity {
                    namespace: r.get::<_, Option<String>>(0)?,
                    name: r.get::<_, Option<String>>(1)?,
                    uid: r.get::<_, Option<String>>(2)?,
                })
            }))
        })
    }

    fn active_liveness(&self) -> StoreFuture<'_, Vec<RunLiveness>> {
        Box::pin(async move {
            let client = self.client().await?;
            let rows = client
                .query(
                    "SELECT r.run_id, l.pod_namespace, l.pod_name, l.pod_uid, \
                     l.identity_source, l.heartbeat_at \
                     FROM runs r LEFT JOIN run_liveness l ON l.run_id = r.run_id \
                     WHERE r.status = 'active' ORDER BY r.created_at, r.run_id",
                    &[],
                )
                .await
                .map_err(db)?;
            Ok(rows
                .iter()
                .map(|r| {
                    let pod = match (
                        r.get::<_, Option<String>>(1),
                        r.get::<_, Option<String>>(2),
                        r.get::<_, Option<String>>(3),
                    ) {
                        (Some(namespace), Some(name), Some(uid)) => Some(PodIdentity {
                            namespace,
                            name,
                            uid,
                        }),
                        _ => None,
                    };
                    let source: Option<String> = r.get(4);
                    RunLiveness {
                        run_id: r.get(0),
                        pod,
                        source: source.as_deref().and_then(IdentitySource::parse),
                        last_heartbeat: r.get(5),
                    }
                })
                .collect())
        })
    }

    fn provision_lock(&self) -> StoreFuture<'_, ProvisionGuard> {
        Box::pin(async move {
            let local = self.local.clone().lock_owned().await;
            // Until the lock is ours, dropping this future (a request
            // cancelled by its client or the server's timeout while it
            // waits) closes the connection rather than returning it to the
            // pool: the server would otherwise grant the pending lock to an
            // idle pooled session that never unlocks, wedging provisioning
            // for every replica (seen in the fleet bench's 1000-run burst).
            let pending = Unlocked(Some(self.client().await?));
            // Session-scoped: if this replica dies the server ends its session
            // and the lock with it, so a crash never wedges provisioning.
            // The wait may outlast STATEMENT_TIMEOUT (another replica's
            // provisioning behind Discord rate limits), but not forever.
            let sql = format!(
                "SET statement_timeout = {}; SELECT pg_advisory_lock({PROVISION_LOCK}); \
                 SET statement_timeout = {}",
                PROVISION_WAIT.as_millis(),
                STATEMENT_TIMEOUT.as_millis()
            );
            let locked = match &pending.0 {
                Some(client) => client.batch_execute(&sql).await,
                None => Ok(()),
            };
            AdvisoryGuard::hold(pending, locked, Advisory::Provision, Some(local))
        })
    }

    fn finish_lock(&self, run_id: String) -> StoreFuture<'_, ProvisionGuard> {
        Box::pin(async move {
            // Cancel-safe like the provisioning lock: a wait dropped half-way
            // closes its connection instead of leaving a pending lock on a
            // pooled session.
            let pending = Unlocked(Some(self.client().await?));
            // Session-scoped like the provisioning lock: a replica that dies
            // mid-finish releases it with its connection. Waits at most
            // STATEMENT_TIMEOUT (another finish of this run, or a hand-off's
            // transaction, holds it only briefly).
            let locked = match &pending.0 {
                Some(client) => client
                    .execute(
                        "SELECT pg_advisory_lock($1, hashtext($2))",
                        &[&FINISH_LOCK_CLASS, &run_id],
                    )
                    .await
                    .map(drop),
                None => Ok(()),
            };
            AdvisoryGuard::hold(pending, locked, Advisory::Finish(run_id), None)
        })
    }

    fn claim_interaction(&self, id: String, at: i64) -> StoreFuture<'_, bool> {
        Box::pin(async move {
            let n = self
                .execute(
                    "INSERT INTO claimed_interactions (id, claimed_at) VALUES ($1, $2) \
                     ON CONFLICT (id) DO NOTHING",
                    &[&id, &at],
                )
                .await?;
            Ok(n == 1)
        })
    }

    fn pace_handoff(
        &self,
        run_id: String,
        sends_unix_ms: Vec<i64>,
        now: i64,
    ) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let sends = serde_json::to_string(&sends_unix_ms)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            self.execute(
                "INSERT INTO handoff_pacing (run_id, sends, stored_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (run_id) DO NOTHING",
                &[&run_id, &sends, &now],
            )
            .await?;
            Ok(())
        })
    }

    fn handoff_pacing(&self, run_id: String) -> StoreFuture<'_, Vec<i64>> {
        Box::pin(async move {
            let client = self.client().await?;
            let sends: Option<String> = client
                .query_opt(
                    "SELECT sends FROM handoff_pacing WHERE run_id = $1",
                    &[&run_id],
                )
                .await
                .map_err(db)?
                .map(|r| r.get(0));
            Ok(sends
                .and_then(|s| serde_json::from_str(&s).ok())
                .unwrap_or_default())
        })
    }

    fn prune_handoffs(&self) -> StoreFuture<'_, u64> {
        Box::pin(async move {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(db)?;
            let n = tx
                .execute(
                    "DELETE FROM handoff_messages WHERE run_id IN \
                     (SELECT run_id FROM runs WHERE status IN ('archived', 'deleted'))",
                    &[],
                )
                .await
                .map_err(db)?;
            for table in ["handoff_completions", "handoff_pacing"] {
                tx.execute(
                    &format!(
                        "DELETE FROM {table} WHERE run_id IN \
                         (SELECT run_id FROM runs WHERE status IN ('archived', 'deleted'))"
                    ),
                    &[],
                )
                .await
                .map_err(db)?;
            }
            tx.commit().await.map_err(db)?;
            Ok(n)
        })
    }

    fn prune_interactions(&self, before: i64) -> StoreFuture<'_, u64> {
        Box::pin(async move {
            self.execute(
                "DELETE FROM claimed_interactions WHERE claimed_at < $1",
                &[&before],
            )
            .await
        })
    }

    fn discord_buckets(&self) -> StoreFuture<'_, Vec<BucketSnapshot>> {
        Box::pin(async move {
            let client = self.client().await?;
            let rows = client
                .query(
                    &format!(
                        "SELECT route, lim, remaining, reset_at, blocked_until, {NOW_MS} \
                         FROM discord_buckets ORDER BY route"
                    ),
                    &[],
                )
                .await
                .map_err(db)?;
            Ok(rows
                .iter()
                .filter_map(|r| {
                    bucket_from_row(r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5))
                })
                .collect())
        })
    }

    fn put_discord_buckets(&self, buckets: Vec<BucketSnapshot>) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(db)?;
            tx.execute("DELETE FROM discord_buckets", &[])
                .await
                .map_err(db)?;
            let insert = format!(
                "INSERT INTO discord_buckets (route, lim, remaining, reset_at, blocked_until) \
                 VALUES ($1, $2, $3, {NOW_MS} + $4, {NOW_MS} + $5)"
            );
            for b in &buckets {
                let reset = b.reset_after.map(store_millis);
                let blocked = b.blocked_for.map(store_millis);
                tx.execute(
                    &insert,
                    &[
                        &b.route,
                        &b.limit.map(i64::from),
                        &b.remaining.map(i64::from),
                        &reset,
                        &blocked,
                    ],
                )
                .await
                .map_err(db)?;
            }
            tx.commit().await.map_err(db)
        })
    }

    fn reserve_discord_request(&self, interval: Duration) -> StoreFuture<'_, Duration> {
        Box::pin(async move {
            let step = store_millis(interval);
            let client = self.client().await?;
            // One row, updated in place: the row lock orders concurrent
            // reservations, and each takes the slot after the last one.
            let row = client
                .query_one(
                    &format!(
                        "UPDATE discord_global \
                         SET next = LEAST(GREATEST(next, n.now), n.now + $2) + $1 \
                         FROM (SELECT {NOW_MS} AS now) n WHERE id = 1 \
                         RETURNING next - $1 - n.now"
                    ),
                    &[&step, &GLOBAL_BACKLOG_MS],
                )
                .await
                .map_err(db)?;
            let wait: i64 = row.get(0);
            Ok(Duration::from_millis(
                u64::try_from(wait.max(0)).unwrap_or(0),
            ))
        })
    }

    fn put_handoff(
        &self,
        run_id: String,
        messages: Vec<HandoffMessage>,
        complete: Option<Option<serde_json::Value>>,
        now: i64,
    ) -> StoreFuture<'_, HandoffStored> {
        Box::pin(async move {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(db)?;
            // Not while the run is being finished (see `finish_lock`): its
            // lock, taken for this transaction, waits for a finish to end.
            tx.execute(
                "SELECT pg_advisory_xact_lock($1, hashtext($2))",
                &[&FINISH_LOCK_CLASS, &run_id],
            )
            .await
            .map_err(db)?;
            // The run's row stays locked until commit, so a second hand-off
            // of the run waits for this one.
            let status: Option<String> = tx
                .query_opt(
                    "SELECT status FROM runs WHERE run_id = $1 FOR UPDATE",
                    &[&run_id],
                )
                .await
                .map_err(db)?
                .map(|r| r.get(0));
            let Some(status) = status else {
                return Ok(HandoffStored::UnknownRun);
            };
            let total = u64::try_from(messages.len()).unwrap_or(u64::MAX);
            let seqs = messages
                .iter()
                .map(|m| seq_sql(m.seq))
                .collect::<Result<Vec<i64>, _>>()?;
            if status != RunStatus::Active.as_str() {
                let known: i64 = tx
                    .query_one(
                        "SELECT COUNT(*) FROM handoff_messages WHERE run_id = $1 AND seq = ANY($2)",
                        &[&run_id, &seqs],
                    )
                    .await
                    .map_err(db)?
                    .get(0);
                let known = u64::try_from(known).unwrap_or(0);
                if known < total {
                    return Ok(HandoffStored::Finished { new: total - known });
                }
                let pending = pending_of(&tx, &run_id).await?;
                return Ok(HandoffStored::Stored {
                    accepted: 0,
                    duplicates: total,
                    pending,
                });
            }
            let insert = tx
                .prepare(
                    "INSERT INTO handoff_messages (run_id, seq, payload, state, stored_at) \
                     VALUES ($1, $2, $3, 'pending', $4) ON CONFLICT (run_id, seq) DO NOTHING",
                )
                .await
                .map_err(db)?;
            let mut accepted = 0u64;
            for (m, seq) in messages.iter().zip(&seqs) {
                accepted += tx
                    .execute(&insert, &[&run_id, seq, &m.payload.to_string(), &now])
                    .await
                    .map_err(db)?;
            }
            if let Some(summary) = complete {
                let summary = summary.map(|s| s.to_string());
                tx.execute(
                    "INSERT INTO handoff_completions (run_id, summary, stored_at) \
                     VALUES ($1, $2, $3) ON CONFLICT (run_id) DO NOTHING",
                    &[&run_id, &summary, &now],
                )
                .await
                .map_err(db)?;
            }
            let pending = pending_of(&tx, &run_id).await?;
            tx.commit().await.map_err(db)?;
            Ok(HandoffStored::Stored {
                accepted,
                duplicates: total - accepted,
                pending,
            })
        })
    }

    fn handoff_runs(&self) -> StoreFuture<'_, Vec<HandoffRun>> {
        Box::pin(async move {
            let client = self.client().await?;
            let mut runs: std::collections::BTreeMap<String, HandoffRun> =
                std::collections::BTreeMap::new();
            let rows = client
                .query(
                    "SELECT run_id, COUNT(*), MIN(stored_at) FROM handoff_messages \
                     WHERE state = 'pending' GROUP BY run_id",
                    &[],
                )
                .await
                .map_err(db)?;
            for r in &rows {
                let run_id: String = r.get(0);
                let pending: i64 = r.get(1);
                runs.insert(
                    run_id.clone(),
                    HandoffRun {
                        run_id,
                        pending: u64::try_from(pending).unwrap_or(0),
                        oldest_pending_at: r.get(2),
                        complete: None,
                    },
                );
            }
            let rows = client
                .query(
                    "SELECT c.run_id, c.summary FROM handoff_completions c \
                     JOIN runs r ON r.run_id = c.run_id \
                     WHERE r.status = 'active' OR c.run_id IN \
                     (SELECT run_id FROM handoff_messages WHERE state = 'pending')",
                    &[],
                )
                .await
                .map_err(db)?;
            for r in &rows {
                let run_id: String = r.get(0);
                let summary: Option<String> = r.get(1);
                let summary = summary
                    .map(|s| serde_json::from_str(&s))
                    .transpose()
                    .map_err(|e| StoreError::Corrupt(format!("hand-off summary: {e}")))?;
                runs.entry(run_id.clone())
                    .or_insert_with(|| HandoffRun {
                        run_id,
                        pending: 0,
                        oldest_pending_at: None,
                        complete: None,
                    })
                    .complete = Some(summary);
            }
            let mut out: Vec<HandoffRun> = runs.into_values().collect();
            out.sort_by(|a, b| {
                (a.oldest_pending_at.unwrap_or(i64::MAX), &a.run_id)
                    .cmp(&(b.oldest_pending_at.unwrap_or(i64::MAX), &b.run_id))
            });
            Ok(out)
        })
    }

    fn next_handoff(&self, run_id: String) -> StoreFuture<'_, Option<HandoffMessage>> {
        Box::pin(async move {
            let client = self.client().await?;
            let row = client
                .query_opt(
                    "SELECT seq, payload FROM handoff_messages \
                     WHERE run_id = $1 AND state = 'pending' ORDER BY seq LIMIT 1",
                    &[&run_id],
                )
                .await
                .map_err(db)?;
            let Some(row) = row else {
                return Ok(None);
            };
            let seq: i64 = row.get(0);
            let payload: Option<String> = row.get(1);
            let seq = u64::try_from(seq)
                .map_err(|_| StoreError::Corrupt(format!("negative hand-off seq {seq}")))?;
            let payload = payload.ok_or_else(|| {
                StoreError::Corrupt(format!("pending hand-off {seq} has no payload"))
            })?;
            let payload = serde_json::from_str(&payload)
                .map_err(|e| StoreError::Corrupt(format!("hand-off {seq} payload: {e}")))?;
            Ok(Some(HandoffMessage { seq, payload }))
        })
    }

    fn mark_handoff(
        &self,
        run_id: String,
        seq: u64,
        outcome: HandoffOutcome,
        now: i64,
    ) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let sql = match outcome {
                HandoffOutcome::Delivered => {
                    "UPDATE handoff_messages SET state = 'delivered', done_at = $3, payload = NULL \
                     WHERE run_id = $1 AND seq = $2 AND state = 'pending'"
                }
                HandoffOutcome::Rejected => {
                    "UPDATE handoff_messages SET state = 'rejected', done_at = $3 \
                     WHERE run_id = $1 AND seq = $2 AND state = 'pending'"
                }
            };
            self.execute(sql, &[&run_id, &seq_sql(seq)?, &now]).await?;
            Ok(())
        })
    }
}

/// A hand-off `seq` as SQL's signed 64-bit integer (the API refuses larger).
fn seq_sql(seq: u64) -> Result<i64, StoreError> {
    i64::try_from(seq).map_err(|_| StoreError::Database(format!("hand-off seq {seq} too large")))
}

/// Undelivered hand-off messages of `run_id`.
async fn pending_of(
    tx: &deadpool_postgres::Transaction<'_>,
    run_id: &str,
) -> Result<u64, StoreError> {
    let n: i64 = tx
        .query_one(
            "SELECT COUNT(*) FROM handoff_messages WHERE run_id = $1 AND state = 'pending'",
            &[&run_id],
        )
        .await
        .map_err(db)?
        .get(0);
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Throw-away databases on the test server (`scripts/test` starts one and
/// exports its URL); used by the store suite and the end-to-end tests.
#[doc(hidden)]
pub mod test_support;

#[cfg(test)]
mod tests;
