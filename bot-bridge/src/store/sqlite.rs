//! The SQLite [`RunStore`]: embedded, one file, one replica.
//!
//! Calls run on tokio's blocking pool behind one connection; bot-bridge's write
//! rate (a few runs per minute) is far below what one connection handles.
//! Migrations are embedded and numbered; `schema_version` records the last one
//! applied, so opening the same file again (restart, second binary version) is
//! idempotent.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ops::Secret;
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{bucket_from_row, store_millis, BucketSnapshot, GLOBAL_BACKLOG_MS};
use super::{
    CategoryKind, CategoryRecord, HandoffMessage, HandoffOutcome, HandoffRun, HandoffStored,
    IdentitySource, Inserted, ListCursor, PodIdentity, ProvisionGuard, RunKey, RunLiveness,
    RunRecord, RunStatus, RunStore, StoreError, StoreFuture, StoredWebhook,
};

/// Schema migrations, applied in order; never edit one that shipped.
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
    created_at      INTEGER NOT NULL,
    completed_at    INTEGER,
    archive_due_at  INTEGER,
    summary         TEXT,
    retention_note  TEXT,
    UNIQUE (task_id, attempt, short_id)
);
CREATE INDEX runs_channel ON runs (channel_id);
CREATE INDEX runs_due ON runs (status, archive_due_at);
CREATE TABLE categories (
    id     TEXT PRIMARY KEY,
    name   TEXT NOT NULL,
    kind   TEXT NOT NULL CHECK (kind IN ('runs','archive')),
    idx    INTEGER NOT NULL
);
CREATE TABLE shared_webhooks (
    channel_id     TEXT PRIMARY KEY,
    webhook_id     TEXT NOT NULL,
    webhook_token  TEXT NOT NULL
);
",
    r"
ALTER TABLE runs ADD COLUMN token_hash TEXT;
",
    r"
CREATE TABLE run_liveness (
    run_id          TEXT PRIMARY KEY REFERENCES runs (run_id),
    pod_namespace   TEXT,
    pod_name        TEXT,
    pod_uid         TEXT,
    identity_source TEXT CHECK (identity_source IN ('claimed','verified')),
    heartbeat_at    INTEGER
);
",
    r"
CREATE TABLE claimed_interactions (
    id          TEXT PRIMARY KEY,
    claimed_at  INTEGER NOT NULL
);
CREATE INDEX claimed_interactions_at ON claimed_interactions (claimed_at);
",
    // Hand-offs (issue 18): messages a watcher could not deliver before its
    // pod ended, delivered by bot-bridge. A delivered row keeps its key (a
    // later duplicate is ignored) but not its payload.
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
    // Discord rate limits shared by replicas (issue 21): the buckets the
    // provisioning lock's last holder knew, and the global budget's next
    // free slot. Times are unix milliseconds on the store's clock.
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

/// How long a statement waits for another connection's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// The same for the health check ([`RunStore::ping`]): short, so a locked
/// store shows in readiness within about a second.
const PING_BUSY_TIMEOUT: Duration = Duration::from_millis(500);

/// A SQLite-backed store. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    /// The provisioning lock: one process owns the file, so an in-process
    /// lock is the whole of it.
    provision: Arc<tokio::sync::Mutex<()>>,
    /// Finish locks ([`RunStore::finish_lock`]), striped by run id: runs that
    /// share a stripe only ever wait for each other's short finish.
    finishing: Arc<[Arc<tokio::sync::Mutex<()>>]>,
}

/// Stripes of the finish lock: enough that unrelated runs rarely share one.
const FINISH_STRIPES: usize = 64;

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

/// Creates `path` owner-only if missing, or makes an existing file so.
#[cfg(unix)]
fn restrict(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |e: std::io::Error| StoreError::Database(format!("{}: {e}", path.display()));
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)
}

#[cfg(not(unix))]
fn restrict(_path: &Path) -> Result<(), StoreError> {
    Ok(())
}

fn db(e: rusqlite::Error) -> StoreError {
    StoreError::Database(e.to_string())
}

fn lock(m: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    // A panic inside a statement leaves the connection usable (SQLite rolls back
    // an unfinished transaction), so a poisoned lock is safe to keep using.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and applies migrations.
    ///
    /// The file holds webhook tokens and input secrets, so it is made
    /// owner-only (0600) before SQLite opens it; SQLite gives its `-wal` and
    /// `-shm` files the database file's mode, and existing ones are fixed too.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        restrict(path)?;
        let store = Self::init(Connection::open(path).map_err(db)?)?;
        for suffix in ["-wal", "-shm", "-journal"] {
            let mut side = path.as_os_str().to_owned();
            side.push(suffix);
            let side = std::path::PathBuf::from(side);
            if side.exists() {
                restrict(&side)?;
            }
        }
        Ok(store)
    }

    /// A private in-memory database (tests, demos).
    pub fn memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory().map_err(db)?)
    }

    fn init(mut conn: Connection) -> Result<Self, StoreError> {
        conn.busy_timeout(BUSY_TIMEOUT).map_err(db)?;
        // WAL keeps readers from blocking the writer; memory databases ignore it.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(db)?;
        migrate(&mut conn)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            provision: Arc::new(tokio::sync::Mutex::new(())),
            finishing: (0..FINISH_STRIPES)
                .map(|_| Arc::new(tokio::sync::Mutex::new(())))
                .collect(),
        })
    }

    /// The finish-lock stripe of `run_id` (a fixed hash, so every handle on
    /// this store agrees).
    fn finish_stripe(&self, run_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        run_id.hash(&mut h);
        let i = usize::try_from(h.finish() % FINISH_STRIPES as u64).unwrap_or(0);
        self.finishing[i].clone()
    }

    fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> StoreFuture<'_, T> {
        let conn = self.conn.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || f(&mut lock(&conn)))
                .await
                .map_err(|e| StoreError::Task(e.to_string()))?
        })
    }
}

/// Applies every migration newer than the recorded `schema_version`, each in
/// its own transaction.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    conn.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        .map_err(db)?;
    let current: i64 = conn
        .query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_version",
            [],
            |r| r.get(0),
        )
        .map_err(db)?;
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
        let tx = conn.transaction().map_err(db)?;
        tx.execute_batch(sql).map_err(db)?;
        tx.execute("DELETE FROM schema_version", []).map_err(db)?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES (?1)",
            [version],
        )
        .map_err(db)?;
        tx.commit().map_err(db)?;
    }
    Ok(())
}

const RUN_COLUMNS: &str = "run_id, task_id, attempt, short_id, channel_id, webhook_id, \
    webhook_token, input_url, input_secret, status, created_at, completed_at, archive_due_at, \
    summary, retention_note, token_hash";

fn run_from_row(row: &Row<'_>) -> rusqlite::Result<Result<RunRecord, StoreError>> {
    let status: String = row.get(9)?;
    let summary: Option<String> = row.get(13)?;
    let Some(status) = RunStatus::parse(&status) else {
        return Ok(Err(StoreError::Corrupt(format!(
            "unknown run status {status:?}"
        ))));
    };
    let summary = match summary.map(|s| serde_json::from_str(&s)).transpose() {
        Ok(s) => s,
        Err(e) => return Ok(Err(StoreError::Corrupt(format!("run summary: {e}")))),
    };
    Ok(Ok(RunRecord {
        run_id: row.get(0)?,
        key: RunKey {
            task_id: row.get(1)?,
            attempt: row.get(2)?,
            short_id: row.get(3)?,
        },
        channel_id: row.get(4)?,
        webhook_id: row.get(5)?,
        webhook_token: row.get::<_, Option<String>>(6)?.map(Secret::new),
        input_url: row.get(7)?,
        input_secret: Secret::new(row.get(8)?),
        status,
        created_at: row.get(10)?,
        completed_at: row.get(11)?,
        archive_due_at: row.get(12)?,
        summary,
        retention_note: row.get(14)?,
        token_hash: row.get(15)?,
    }))
}

fn query_runs(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<RunRecord>, StoreError> {
    let mut stmt = conn.prepare(sql).map_err(db)?;
    let rows = stmt.query_map(params, run_from_row).map_err(db)?;
    let mut out = Vec::new();
    for row in rows {
        out.push(row.map_err(db)??);
    }
    Ok(out)
}

fn one_run(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Option<RunRecord>, StoreError> {
    Ok(query_runs(conn, sql, params)?.into_iter().next())
}

fn summary_text(run: &RunRecord) -> Option<String> {
    run.summary.as_ref().map(|s| s.to_string())
}

impl RunStore for SqliteStore {
    fn insert_run(&self, run: RunRecord) -> StoreFuture<'_, Inserted> {
        self.run(move |conn| {
            let changed = conn
                .execute(
                    &format!(
                        "INSERT INTO runs ({RUN_COLUMNS}) VALUES \
                         (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16) \
                         ON CONFLICT (task_id, attempt, short_id) DO NOTHING"
                    ),
                    params![
                        run.run_id,
                        run.key.task_id,
                        run.key.attempt,
                        run.key.short_id,
                        run.channel_id,
                        run.webhook_id,
                        run.webhook_token.as_ref().map(|t| t.expose().clone()),
                        run.input_url,
                        run.input_secret.expose(),
                        run.status.as_str(),
                        run.created_at,
                        run.completed_at,
                        run.archive_due_at,
                        summary_text(&run),
                        run.retention_note,
                        run.token_hash,
                    ],
                )
                .map_err(db)?;
            if changed == 1 {
                return Ok(Inserted::New);
            }
            let existing = one_run(
                conn,
                &format!(
                    "SELECT {RUN_COLUMNS} FROM runs \
                     WHERE task_id = ?1 AND attempt = ?2 AND short_id = ?3"
                ),
                params![run.key.task_id, run.key.attempt, run.key.short_id],
            )?
            .ok_or_else(|| StoreError::Database("insert conflicted on a missing row".into()))?;
            Ok(Inserted::Existing(Box::new(existing)))
        })
    }

    fn update_run(&self, run: RunRecord) -> StoreFuture<'_, ()> {
        self.run(move |conn| {
            conn.execute(
                "UPDATE runs SET channel_id = ?2, webhook_id = ?3, webhook_token = ?4, \
                 input_url = ?5, status = ?6, completed_at = ?7, archive_due_at = ?8, \
                 summary = ?9, retention_note = ?10, token_hash = ?11 WHERE run_id = ?1",
                params![
                    run.run_id,
                    run.channel_id,
                    run.webhook_id,
                    run.webhook_token.as_ref().map(|t| t.expose().clone()),
                    run.input_url,
                    run.status.as_str(),
                    run.completed_at,
                    run.archive_due_at,
                    summary_text(&run),
                    run.retention_note,
                    run.token_hash,
                ],
            )
            .map_err(db)?;
            Ok(())
        })
    }

    fn get_run(&self, run_id: String) -> StoreFuture<'_, Option<RunRecord>> {
        self.run(move |conn| {
            one_run(
                conn,
                &format!("SELECT {RUN_COLUMNS} FROM runs WHERE run_id = ?1"),
                [run_id],
            )
        })
    }

    fn find_by_key(&self, key: RunKey) -> StoreFuture<'_, Option<RunRecord>> {
        self.run(move |conn| {
            one_run(
                conn,
                &format!(
                    "SELECT {RUN_COLUMNS} FROM runs \
                     WHERE task_id = ?1 AND attempt = ?2 AND short_id = ?3"
                ),
                params![key.task_id, key.attempt, key.short_id],
            )
        })
    }

    fn find_by_channel(&self, channel_id: String) -> StoreFuture<'_, Option<RunRecord>> {
        self.run(move |conn| {
            one_run(
                conn,
                &format!(
                    "SELECT {RUN_COLUMNS} FROM runs WHERE channel_id = ?1 \
                     ORDER BY created_at DESC LIMIT 1"
                ),
                [channel_id],
            )
        })
    }

    fn list_runs(
        &self,
        status: Option<RunStatus>,
        limit: u32,
        after: Option<ListCursor>,
    ) -> StoreFuture<'_, Vec<RunRecord>> {
        self.run(move |conn| {
            // NULLs switch a filter off, so one statement serves every query.
            let (at, id) = after.map_or((None, None), |c| (Some(c.created_at), Some(c.run_id)));
            query_runs(
                conn,
                &format!(
                    "SELECT {RUN_COLUMNS} FROM runs \
                     WHERE (?1 IS NULL OR status = ?1) \
                     AND (?2 IS NULL OR created_at < ?2 OR (created_at = ?2 AND run_id < ?3)) \
                     ORDER BY created_at DESC, run_id DESC LIMIT ?4"
                ),
                params![status.map(RunStatus::as_str), at, id, limit],
            )
        })
    }

    fn due_runs(&self, now: i64) -> StoreFuture<'_, Vec<RunRecord>> {
        self.run(move |conn| {
            query_runs(
                conn,
                &format!(
                    "SELECT {RUN_COLUMNS} FROM runs WHERE status = 'completed' \
                     AND archive_due_at IS NOT NULL AND archive_due_at <= ?1 \
                     ORDER BY archive_due_at, run_id"
                ),
                [now],
            )
        })
    }

    fn count_runs(&self, status: RunStatus) -> StoreFuture<'_, u64> {
        self.run(move |conn| {
            let n: i64 = conn
                .query_row(
                    "SELECT COUNT(*) FROM runs WHERE status = ?1",
                    [status.as_str()],
                    |r| r.get(0),
                )
                .map_err(db)?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
    }

    fn categories(&self) -> StoreFuture<'_, Vec<CategoryRecord>> {
        self.run(move |conn| {
            let mut stmt = conn
                .prepare("SELECT id, name, kind, idx FROM categories ORDER BY kind, idx")
                .map_err(db)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)?,
                    ))
                })
                .map_err(db)?;
            let mut out = Vec::new();
            for row in rows {
                let (id, name, kind, idx) = row.map_err(db)?;
                let kind = match kind.as_str() {
                    "runs" => CategoryKind::Runs,
                    "archive" => CategoryKind::Archive,
                    other => {
                        return Err(StoreError::Corrupt(format!(
                            "unknown category kind {other:?}"
                        )))
                    }
                };
                out.push(CategoryRecord {
                    id,
                    name,
                    kind,
                    index: u32::try_from(idx).unwrap_or(0),
                });
            }
            Ok(out)
        })
    }

    fn put_category(&self, c: CategoryRecord) -> StoreFuture<'_, ()> {
        self.run(move |conn| {
            conn.execute(
                "INSERT INTO categories (id, name, kind, idx) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (id) DO UPDATE SET name = ?2, kind = ?3, idx = ?4",
                params![c.id, c.name, c.kind.as_str(), c.index],
            )
            .map_err(db)?;
            Ok(())
        })
    }

    fn remove_category(&self, id: String) -> StoreFuture<'_, ()> {
        self.run(move |conn| {
            conn.execute("DELETE FROM categories WHERE id = ?1", [id])
                .map_err(db)?;
            Ok(())
        })
    }

    fn shared_webhook(&self, channel_id: String) -> StoreFuture<'_, Option<StoredWebhook>> {
        self.run(move |conn| {
            conn.query_row(
                "SELECT webhook_id, webhook_token FROM shared_webhooks WHERE channel_id = ?1",
                [channel_id],
                |r| {
                    Ok(StoredWebhook {
                        id: r.get(0)?,
                        token: Secret::new(r.get(1)?),
                    })
                },
            )
            .optional()
            .map_err(db)
        })
    }

    fn put_shared_webhook(
        &self,
        channel_id: String,
        webhook: StoredWebhook,
    ) -> StoreFuture<'_, ()> {
        self.run(move |conn| {
            conn.execute(
                "INSERT INTO shared_webhooks (channel_id, webhook_id, webhook_token) \
                 VALUES (?1, ?2, ?3) ON CONFLICT (channel_id) \
                 DO UPDATE SET webhook_id = ?2, webhook_token = ?3",
                params![channel_id, webhook.id, webhook.token.expose()],
            )
            .map_err(db)?;
            Ok(())
        })
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        self.run(|conn| {
            // A read proves little: WAL readers go on while another process
            // holds the write lock. Taking the write lock (and dropping it at
            // once, nothing written) proves a run could be inserted now.
            conn.busy_timeout(PING_BUSY_TIMEOUT).map_err(db)?;
            let result = conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK;").map_err(db);
            if !conn.is_autocommit() {
                // BEGIN worked but ROLLBACK did not: never leave the shared
                // connection inside a transaction.
                let _ = conn.execute_batch("ROLLBACK");
            }
            conn.busy_timeout(BUSY_TIMEOUT).map_err(db)?;
            result
        })
    }

    fn bind_pod(
        &self,
        run_id: String,
        pod: PodIdentity,
        source: IdentitySource,
    ) -> StoreFuture<'_, bool> {
        self.run(move |conn| {
            // A claim never overwrites a verified identity.
            let changed = conn
                .execute(
                    "INSERT INTO run_liveness \
                     (run_id, pod_namespace, pod_name, pod_uid, identity_source) \
                     VALUES (?1, ?2, ?3, ?4, ?5) \
                     ON CONFLICT (run_id) DO UPDATE SET pod_namespace = ?2, pod_name = ?3, \
                     pod_uid = ?4, identity_source = ?5 \
                     WHERE run_liveness.identity_source IS NULL \
                        OR run_liveness.identity_source = 'claimed' OR ?5 = 'verified'",
                    params![run_id, pod.namespace, pod.name, pod.uid, source.as_str()],
                )
                .map_err(db)?;
            Ok(changed > 0)
        })
    }

    fn heartbeat(&self, run_id: String, at: i64) -> StoreFuture<'_, ()> {
        self.run(move |conn| {
            conn.execute(
                "INSERT INTO run_liveness (run_id, heartbeat_at) VALUES (?1, ?2) \
                 ON CONFLICT (run_id) DO UPDATE SET heartbeat_at = MAX(COALESCE(heartbeat_at, 0), ?2)",
                params![run_id, at],
            )
            .map_err(db)?;
            Ok(())
        })
    }

    fn run_pod(&self, run_id: String) -> StoreFuture<'_, Option<PodIdentity>> {
        self.run(move |conn| {
            let row: Option<(Option<String>, Option<String>, Option<String>)> = conn
                .query_row(
                    "SELECT pod_namespace, pod_name, pod_uid FROM run_liveness WHERE run_id = ?1",
                    [run_id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
                .map_err(db)?;
            Ok(match row {
                Some((Some(namespace), Some(name), Some(uid))) => Some(PodIdentity {
                    namespace,
                    name,
                    uid,
                }),
                _ => None,
            })
        })
    }

    fn active_liveness(&self) -> StoreFuture<'_, Vec<RunLiveness>> {
        self.run(move |conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT r.run_id, l.pod_namespace, l.pod_name, l.pod_uid, \
                     l.identity_source, l.heartbeat_at \
                     FROM runs r LEFT JOIN run_liveness l ON l.run_id = r.run_id \
                     WHERE r.status = 'active' ORDER BY r.created_at, r.run_id",
                )
                .map_err(db)?;
            let rows = stmt
                .query_map([], |r| {
                    let ns: Option<String> = r.get(1)?;
                    let name: Option<String> = r.get(2)?;
                    let uid: Option<String> = r.get(3)?;
                    let source: Option<String> = r.get(4)?;
                    let pod = match (ns, name, uid) {
                        (Some(namespace), Some(name), Some(uid)) => Some(PodIdentity {
                            namespace,
                            name,
                            uid,
                        }),
                        _ => None,
                    };
                    Ok(RunLiveness {
                        run_id: r.get(0)?,
                        pod,
                        source: source.as_deref().and_then(IdentitySource::parse),
                        last_heartbeat: r.get(5)?,
                    })
                })
                .map_err(db)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db)
        })
    }

    fn put_handoff(
        &self,
        run_id: String,
        messages: Vec<HandoffMessage>,
        complete: Option<Option<serde_json::Value>>,
        now: i64,
    ) -> StoreFuture<'_, HandoffStored> {
        let stripe = self.finish_stripe(&run_id);
        let stored = self.run(move |conn| {
            let tx = conn.transaction().map_err(db)?;
            let status: Option<String> = tx
                .query_row(
                    "SELECT status FROM runs WHERE run_id = ?1",
                    [&run_id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db)?;
            let Some(status) = status else {
                return Ok(HandoffStored::UnknownRun);
            };
            let total = u64::try_from(messages.len()).unwrap_or(u64::MAX);
            if status != RunStatus::Active.as_str() {
                let mut known = 0u64;
                for m in &messages {
                    let found: Option<i64> = tx
                        .query_row(
                            "SELECT seq FROM handoff_messages WHERE run_id = ?1 AND seq = ?2",
                            params![run_id, seq_sql(m.seq)?],
                            |r| r.get(0),
                        )
                        .optional()
                        .map_err(db)?;
                    known += u64::from(found.is_some());
                }
                if known < total {
                    return Ok(HandoffStored::Finished { new: total - known });
                }
                let pending = pending_of(&tx, &run_id)?;
                return Ok(HandoffStored::Stored {
                    accepted: 0,
                    duplicates: total,
                    pending,
                });
            }
            let mut accepted = 0u64;
            {
                let mut insert = tx
                    .prepare(
                        "INSERT INTO handoff_messages (run_id, seq, payload, state, stored_at) \
                         VALUES (?1, ?2, ?3, 'pending', ?4) ON CONFLICT (run_id, seq) DO NOTHING",
                    )
                    .map_err(db)?;
                for m in &messages {
                    let changed = insert
                        .execute(params![run_id, seq_sql(m.seq)?, m.payload.to_string(), now])
                        .map_err(db)?;
                    accepted += u64::try_from(changed).unwrap_or(0);
                }
            }
            if let Some(summary) = complete {
                tx.execute(
                    "INSERT INTO handoff_completions (run_id, summary, stored_at) \
                     VALUES (?1, ?2, ?3) ON CONFLICT (run_id) DO NOTHING",
                    params![run_id, summary.map(|s| s.to_string()), now],
                )
                .map_err(db)?;
            }
            let pending = pending_of(&tx, &run_id)?;
            tx.commit().map_err(db)?;
            Ok(HandoffStored::Stored {
                accepted,
                duplicates: total - accepted,
                pending,
            })
        });
        Box::pin(async move {
            // Not while the run is being finished (see `finish_lock`); the
            // transaction above only runs when awaited.
            let _finishing = stripe.lock_owned().await;
            stored.await
        })
    }

    fn finish_lock(&self, run_id: String) -> StoreFuture<'_, ProvisionGuard> {
        let stripe = self.finish_stripe(&run_id);
        Box::pin(async move { Ok(ProvisionGuard::new(stripe.lock_owned().await)) })
    }

    fn handoff_runs(&self) -> StoreFuture<'_, Vec<HandoffRun>> {
        self.run(move |conn| {
            let mut runs: std::collections::BTreeMap<String, HandoffRun> =
                std::collections::BTreeMap::new();
            let mut stmt = conn
                .prepare(
                    "SELECT run_id, COUNT(*), MIN(stored_at) FROM handoff_messages \
                     WHERE state = 'pending' GROUP BY run_id",
                )
                .map_err(db)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get(2)?))
                })
                .map_err(db)?;
            for row in rows {
                let (run_id, pending, oldest) = row.map_err(db)?;
                runs.insert(
                    run_id.clone(),
                    HandoffRun {
                        run_id,
                        pending: u64::try_from(pending).unwrap_or(0),
                        oldest_pending_at: oldest,
                        complete: None,
                    },
                );
            }
            let mut stmt = conn
                .prepare(
                    "SELECT c.run_id, c.summary, r.status FROM handoff_completions c \
                     JOIN runs r ON r.run_id = c.run_id \
                     WHERE r.status = 'active' OR c.run_id IN \
                     (SELECT run_id FROM handoff_messages WHERE state = 'pending')",
                )
                .map_err(db)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
                })
                .map_err(db)?;
            for row in rows {
                let (run_id, summary) = row.map_err(db)?;
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
        self.run(move |conn| {
            let row: Option<(i64, Option<String>)> = conn
                .query_row(
                    "SELECT seq, payload FROM handoff_messages \
                     WHERE run_id = ?1 AND state = 'pending' ORDER BY seq LIMIT 1",
                    [run_id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(db)?;
            let Some((seq, payload)) = row else {
                return Ok(None);
            };
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
        self.run(move |conn| {
            let sql = match outcome {
                HandoffOutcome::Delivered => {
                    "UPDATE handoff_messages SET state = 'delivered', done_at = ?3, payload = NULL \
                     WHERE run_id = ?1 AND seq = ?2 AND state = 'pending'"
                }
                HandoffOutcome::Rejected => {
                    "UPDATE handoff_messages SET state = 'rejected', done_at = ?3 \
                     WHERE run_id = ?1 AND seq = ?2 AND state = 'pending'"
                }
            };
            conn.execute(sql, params![run_id, seq_sql(seq)?, now])
                .map_err(db)?;
            Ok(())
        })
    }

    fn provision_lock(&self) -> StoreFuture<'_, ProvisionGuard> {
        let lock = self.provision.clone();
        Box::pin(async move { Ok(ProvisionGuard::new(lock.lock_owned().await)) })
    }

    fn claim_interaction(&self, id: String, at: i64) -> StoreFuture<'_, bool> {
        self.run(move |conn| {
            let n = conn
                .execute(
                    "INSERT INTO claimed_interactions (id, claimed_at) VALUES (?1, ?2) \
                     ON CONFLICT (id) DO NOTHING",
                    params![id, at],
                )
                .map_err(db)?;
            Ok(n == 1)
        })
    }

    fn pace_handoff(
        &self,
        run_id: String,
        sends_unix_ms: Vec<i64>,
        now: i64,
    ) -> StoreFuture<'_, ()> {
        self.run(move |conn| {
            let sends = serde_json::to_string(&sends_unix_ms)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            conn.execute(
                "INSERT INTO handoff_pacing (run_id, sends, stored_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (run_id) DO NOTHING",
                params![run_id, sends, now],
            )
            .map_err(db)?;
            Ok(())
        })
    }

    fn handoff_pacing(&self, run_id: String) -> StoreFuture<'_, Vec<i64>> {
        self.run(move |conn| {
            let sends: Option<String> = conn
                .query_row(
                    "SELECT sends FROM handoff_pacing WHERE run_id = ?1",
                    [&run_id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db)?;
            Ok(sends
                .and_then(|s| serde_json::from_str(&s).ok())
                .unwrap_or_default())
        })
    }

    fn prune_handoffs(&self) -> StoreFuture<'_, u64> {
        self.run(|conn| {
            let tx = conn.transaction().map_err(db)?;
            let n = tx
                .execute(
                    "DELETE FROM handoff_messages WHERE run_id IN \
                     (SELECT run_id FROM runs WHERE status IN ('archived', 'deleted'))",
                    [],
                )
                .map_err(db)?;
            for table in ["handoff_completions", "handoff_pacing"] {
                tx.execute(
                    &format!(
                        "DELETE FROM {table} WHERE run_id IN \
                         (SELECT run_id FROM runs WHERE status IN ('archived', 'deleted'))"
                    ),
                    [],
                )
                .map_err(db)?;
            }
            tx.commit().map_err(db)?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
    }

    fn prune_interactions(&self, before: i64) -> StoreFuture<'_, u64> {
        self.run(move |conn| {
            let n = conn
                .execute(
                    "DELETE FROM claimed_interactions WHERE claimed_at < ?1",
                    [before],
                )
                .map_err(db)?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
    }

    fn discord_buckets(&self) -> StoreFuture<'_, Vec<BucketSnapshot>> {
        self.run(|conn| {
            let now = now_ms();
            let mut stmt = conn
                .prepare(
                    "SELECT route, lim, remaining, reset_at, blocked_until FROM discord_buckets \
                     ORDER BY route",
                )
                .map_err(db)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(bucket_from_row(
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        now,
                    ))
                })
                .map_err(db)?;
            let mut out = Vec::new();
            for row in rows {
                out.extend(row.map_err(db)?);
            }
            Ok(out)
        })
    }

    fn put_discord_buckets(&self, buckets: Vec<BucketSnapshot>) -> StoreFuture<'_, ()> {
        self.run(move |conn| {
            let now = now_ms();
            let tx = conn.transaction().map_err(db)?;
            tx.execute("DELETE FROM discord_buckets", []).map_err(db)?;
            for b in &buckets {
                tx.execute(
                    "INSERT INTO discord_buckets (route, lim, remaining, reset_at, blocked_until) \
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![
                        b.route,
                        b.limit,
                        b.remaining,
                        b.reset_after.map(|d| now.saturating_add(store_millis(d))),
                        b.blocked_for.map(|d| now.saturating_add(store_millis(d))),
                    ],
                )
                .map_err(db)?;
            }
            tx.commit().map_err(db)
        })
    }

    fn reserve_discord_request(&self, interval: Duration) -> StoreFuture<'_, Duration> {
        self.run(move |conn| {
            let (now, step) = (now_ms(), store_millis(interval));
            let next: i64 = conn
                .query_row(
                    "UPDATE discord_global SET next = MIN(MAX(next, ?1), ?1 + ?3) + ?2 \
                     WHERE id = 1 RETURNING next",
                    params![now, step, GLOBAL_BACKLOG_MS],
                    |r| r.get(0),
                )
                .map_err(db)?;
            let wait = next.saturating_sub(step).saturating_sub(now).max(0);
            Ok(Duration::from_millis(u64::try_from(wait).unwrap_or(0)))
        })
    }
}

/// This process's clock in unix milliseconds: the store's clock for SQLite,
/// which one process owns.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A hand-off `seq` as SQL's signed 64-bit integer (the API refuses larger).
fn seq_sql(seq: u64) -> Result<i64, StoreError> {
    i64::try_from(seq).map_err(|_| StoreError::Database(format!("hand-off seq {seq} too large")))
}

/// Undelivered hand-off messages of `run_id`.
fn pending_of(conn: &Connection, run_id: &str) -> Result<u64, StoreError> {
    let n: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM handoff_messages WHERE run_id = ?1 AND state = 'pending'",
            [run_id],
            |r| r.get(0),
        )
        .map_err(db)?;
    Ok(u64::try_from(n).unwrap_or(0))
}

#[cfg(test)]
mod tests;
