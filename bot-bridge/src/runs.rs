//! The run lifecycle: provision a channel + webhook, repair it when Discord lost
//! either, complete it. HTTP lives in `api::runs`; this is the logic.
//!
//! Provisioning writes the run row *before* touching Discord and saves each
//! Discord object as soon as it exists, so a crash or a retry by the watcher
//! never creates a second channel for the same (task, attempt, short id).

use std::time::{SystemTime, UNIX_EPOCH};

use ops::Secret;
use rand::RngCore;
use serde::Serialize;

use crate::access::{hash_token, Caller};
use crate::app::AppState;
use crate::config::RunContainer;
use crate::discord::{self, kind, Channel, DiscordError, NewChannel};
use crate::events::{ErrorKind, RunCompleted, RunCreated, RunRepaired};
use crate::reconcile::telemetry::FinalizeReason;
use crate::store::{
    CategoryKind, CategoryRecord, Inserted, RunKey, RunRecord, RunStatus, StoreError,
};

/// Discord's limits on channels (DESIGN.md §4).
pub const MAX_CHANNELS_PER_CATEGORY: usize = 50;
pub const MAX_CHANNELS_PER_GUILD: usize = 500;
/// Discord's channel name limit.
pub const MAX_CHANNEL_NAME: usize = 100;
/// Longest accepted identity part; longer values are rejected, not truncated,
/// so two different runs never map to one key.
pub const MAX_KEY_PART: usize = 200;
/// Name of the webhook bot-bridge creates in each run channel.
pub const WEBHOOK_NAME: &str = "agentmon";

/// Why a run operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RunsError {
    #[error("{0}")]
    BadRequest(String),
    #[error("run not found")]
    NotFound,
    #[error("the run already finished")]
    RunFinished,
    #[error(
        "the guild holds {MAX_CHANNELS_PER_GUILD} channels; set RUN_CONTAINER=thread or free channels"
    )]
    GuildFull,
    /// The caller does not own the run (no or a wrong run token).
    #[error("{0}")]
    Forbidden(String),
    /// The thread parent channel holds Discord's maximum of webhooks.
    #[error(
        "the thread parent channel holds {} webhooks, one per active run",
        discord::MAX_WEBHOOKS_PER_CHANNEL
    )]
    WebhookLimit,
    #[error("discord: {0}")]
    Discord(#[from] DiscordError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// What the watcher sends to `POST /v1/runs`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRun {
    pub task_id: String,
    /// A number or a string; both are accepted.
    pub attempt: AttemptValue,
    pub short_id: String,
    #[serde(default)]
    pub input_url: Option<String>,
    /// The watcher will heartbeat this run: provisioning counts as its first
    /// beat, so a watcher killed before its first heartbeat is still
    /// finalised as silent (a watcher that never heartbeats leaves it unset).
    #[serde(default)]
    pub heartbeats: bool,
}

/// `attempt` as JSON number or string.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(untagged)]
pub enum AttemptValue {
    Number(u64),
    Text(String),
}

impl AttemptValue {
    fn as_string(&self) -> String {
        match self {
            Self::Number(n) => n.to_string(),
            Self::Text(s) => s.trim().to_owned(),
        }
    }
}

/// What `POST /v1/runs` answers: everything the watcher needs to post and to
/// verify relayed input. The only place secrets leave bot-bridge.
#[derive(Debug, Clone, Serialize)]
pub struct Provisioned {
    pub run_id: String,
    pub channel_id: String,
    pub webhook_url: Secret<String>,
    pub input_secret: Secret<String>,
    /// The run token, when bot-bridge generated it in this call (creation
    /// without a proposed token); returned once, stored only as a hash.
    pub run_token: Option<Secret<String>>,
}

/// The public view of a run (`GET /v1/runs/...`): no token, no secret.
#[derive(Debug, Clone, Serialize)]
pub struct RunView {
    pub run_id: String,
    pub task_id: String,
    pub attempt: String,
    pub short_id: String,
    pub channel_id: Option<String>,
    pub status: RunStatus,
    pub input_url: Option<String>,
    pub created_at: String,
    pub completed_at: Option<String>,
    pub archive_due_at: Option<String>,
    pub summary: Option<serde_json::Value>,
    pub retention_note: Option<String>,
}

fn rfc3339(unix: i64) -> String {
    let t = UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(unix).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

impl From<&RunRecord> for RunView {
    fn from(r: &RunRecord) -> Self {
        Self {
            run_id: r.run_id.clone(),
            task_id: r.key.task_id.clone(),
            attempt: r.key.attempt.clone(),
            short_id: r.key.short_id.clone(),
            channel_id: r.channel_id.clone(),
            status: r.status,
            input_url: r.input_url.clone(),
            created_at: rfc3339(r.created_at),
            completed_at: r.completed_at.map(rfc3339),
            archive_due_at: r.archive_due_at.map(rfc3339),
            summary: r.summary.clone(),
            retention_note: r.retention_note.clone(),
        }
    }
}

/// Unix seconds now (wall clock: stored timestamps must survive restarts).
pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `run-{task}-{attempt}-{short}`, lowercased, only `[a-z0-9-]` (anything else
/// becomes `-`), no repeated or edge dashes, at most 100 characters.
pub fn channel_name(key: &RunKey) -> String {
    let raw = format!("run-{}-{}-{}", key.task_id, key.attempt, key.short_id);
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars().flat_map(char::to_lowercase) {
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() {
            c
        } else {
            '-'
        };
        if c == '-' && (out.is_empty() || out.ends_with('-')) {
            continue;
        }
        out.push(c);
    }
    out.truncate(MAX_CHANNEL_NAME);
    let trimmed = out.trim_end_matches('-');
    if trimmed.is_empty() {
        "run".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// Name of the category with `index` (1 = the base name, then "Base 2", …).
pub fn category_name(base: &str, index: u32) -> String {
    if index <= 1 {
        base.to_owned()
    } else {
        format!("{base} {index}")
    }
}

/// The index of `name` as a category of `base`, if it is one.
fn category_index(base: &str, name: &str) -> Option<u32> {
    if name == base {
        return Some(1);
    }
    let n: u32 = name.strip_prefix(base)?.strip_prefix(' ')?.parse().ok()?;
    (n >= 2).then_some(n)
}

/// Where the next channel of a category family goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// An existing category with room.
    Existing { id: String, index: u32 },
    /// Every category is full (or none exists): create this one.
    Create { name: String, index: u32 },
}

/// The guild's categories of family `base` with their channel counts, by index.
pub fn family(channels: &[Channel], base: &str) -> Vec<(u32, String, usize)> {
    let mut out: Vec<(u32, String, usize)> = channels
        .iter()
        .filter(|c| c.kind == kind::CATEGORY)
        .filter_map(|c| {
            let index = category_index(base, &c.name)?;
            let n = channels
                .iter()
                .filter(|x| x.parent_id.as_deref() == Some(c.id.as_str()))
                .count();
            Some((index, c.id.clone(), n))
        })
        .collect();
    out.sort();
    out
}

/// Picks the first category of `base` with room, or the next one to create;
/// `GuildFull` when the guild cannot take the channel (and the category).
pub fn place(channels: &[Channel], base: &str) -> Result<Placement, RunsError> {
    let total = channels.len();
    let fam = family(channels, base);
    if let Some((index, id, _)) = fam.iter().find(|(_, _, n)| *n < MAX_CHANNELS_PER_CATEGORY) {
        if total >= MAX_CHANNELS_PER_GUILD {
            return Err(RunsError::GuildFull);
        }
        return Ok(Placement::Existing {
            id: id.clone(),
            index: *index,
        });
    }
    if total + 2 > MAX_CHANNELS_PER_GUILD {
        return Err(RunsError::GuildFull);
    }
    let mut index = 1;
    while fam.iter().any(|(i, _, _)| *i == index) {
        index += 1;
    }
    Ok(Placement::Create {
        name: category_name(base, index),
        index,
    })
}

fn random_secret() -> Secret<String> {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    Secret::new(hex::encode(bytes))
}

fn check_part(name: &str, v: &str) -> Result<String, RunsError> {
    let v = v.trim();
    if v.is_empty() || v.chars().count() > MAX_KEY_PART || v.chars().any(char::is_control) {
        return Err(RunsError::BadRequest(format!(
            "{name} must be 1 to {MAX_KEY_PART} printable characters"
        )));
    }
    Ok(v.to_owned())
}

/// The refusal for a caller that does not own an existing run.
fn not_owner() -> RunsError {
    RunsError::Forbidden(format!(
        "this run was created by another caller; present its run token in {}",
        crate::access::RUN_TOKEN_HEADER
    ))
}

impl AppState {
    /// Wraps a Discord result: health and error counting in one place.
    pub(crate) async fn call<T>(
        &self,
        run_id: Option<&str>,
        fut: discord::DiscordFuture<'_, T>,
    ) -> Result<T, DiscordError> {
        match fut.await {
            Ok(v) => {
                self.discord_ok();
                Ok(v)
            }
            Err(DiscordError::NotFound) => {
                self.discord_ok();
                Err(DiscordError::NotFound)
            }
            Err(e) => {
                self.report(ErrorKind::Discord, run_id, &e);
                Err(e)
            }
        }
    }

    /// The stored run `run_id`, or [`RunsError::NotFound`].
    pub(crate) async fn stored_run(&self, run_id: &str) -> Result<RunRecord, RunsError> {
        self.stored(self.store().get_run(run_id.to_owned()))
            .await?
            .ok_or(RunsError::NotFound)
    }

    pub(crate) async fn stored<T>(
        &self,
        fut: crate::store::StoreFuture<'_, T>,
    ) -> Result<T, StoreError> {
        match fut.await {
            Ok(v) => {
                self.store_ok();
                Ok(v)
            }
            Err(e) => {
                self.report(ErrorKind::Store, None, &e);
                Err(e)
            }
        }
    }

    /// `POST /v1/runs`: returns the run and whether it was created now.
    ///
    /// The caller that creates a run owns it: it proposed a run token
    /// (`X-Agentmon-Run-Token`, as the watcher does, so a lost answer never
    /// locks it out) or receives one generated here. Re-posting the key of an
    /// existing run returns its secrets only to its owner; `input_url` is
    /// fixed once set.
    pub async fn provision(
        &self,
        req: NewRun,
        caller: &Caller,
    ) -> Result<(Provisioned, bool), RunsError> {
        let key = RunKey {
            task_id: check_part("task_id", &req.task_id)?,
            attempt: check_part("attempt", &req.attempt.as_string())?,
            short_id: check_part("short_id", &req.short_id)?,
        };
        let policy = &self.settings().input_url_policy;
        let input_url = req
            .input_url
            .as_deref()
            .map(|u| policy.check(u).map_err(RunsError::BadRequest))
            .transpose()?;
        let proposed = caller.proposed_token().map_err(RunsError::BadRequest)?;
        let _guard = self.stored(self.store().provision_lock()).await?;
        let store = self.store();
        let mut issued = None;
        let (mut run, created) = match self.stored(store.find_by_key(key.clone())).await? {
            Some(r) => (r, false),
            None => {
                let token = match proposed.clone() {
                    Some(t) => t,
                    None => {
                        let t = random_secret();
                        issued = Some(t.clone());
                        t
                    }
                };
                let fresh = RunRecord {
                    run_id: uuid::Uuid::new_v4().to_string(),
                    key: key.clone(),
                    channel_id: None,
                    webhook_id: None,
                    webhook_token: None,
                    input_url: input_url.clone(),
                    input_secret: random_secret(),
                    token_hash: Some(hash_token(&token)),
                    status: RunStatus::Active,
                    created_at: now_unix(),
                    completed_at: None,
                    archive_due_at: None,
                    summary: None,
                    retention_note: None,
                };
                match self.stored(store.insert_run(fresh.clone())).await? {
                    Inserted::New => (fresh, true),
                    Inserted::Existing(r) => {
                        issued = None;
                        (*r, false)
                    }
                }
            }
        };
        if created {
            if let Some(pod) = caller.pod() {
                // Bound before anyone else can see the run, so the pod's own
                // retry finds it its own.
                self.stored(store.bind_pod(
                    run.run_id.clone(),
                    pod,
                    crate::store::IdentitySource::Verified,
                ))
                .await?;
            }
        } else if caller.pod().is_some() {
            self.authorize(&run, caller).await?;
        } else {
            match &run.token_hash {
                Some(hash) if caller.owns(hash) => {}
                Some(_) => return Err(not_owner()),
                None => {
                    // A run created before run tokens existed: the first caller
                    // to re-provision it after the upgrade becomes its owner.
                    let token = match proposed {
                        Some(t) => t,
                        None => {
                            let t = random_secret();
                            issued = Some(t.clone());
                            t
                        }
                    };
                    run.token_hash = Some(hash_token(&token));
                    self.stored(store.update_run(run.clone())).await?;
                    tracing::warn!(
                        run_id = %run.run_id,
                        "a run created before run tokens was adopted by its first caller"
                    );
                }
            }
        }
        if run.status != RunStatus::Active {
            return Err(RunsError::RunFinished);
        }
        // input_url is fixed once set: at creation, or by the owner's first
        // call that names one (a run created before its watcher started).
        match (&input_url, &run.input_url) {
            (Some(new), Some(old)) if new != old => {
                return Err(RunsError::BadRequest(
                    "input_url is fixed once set and this one differs; \
                     a new input address needs a new ATTEMPT"
                        .into(),
                ));
            }
            (Some(_), None) => {
                run.input_url = input_url;
                self.stored(store.update_run(run.clone())).await?;
            }
            _ => {}
        }
        let result = match self.settings().run_container {
            RunContainer::Channel => self.ensure_channel(&mut run, created).await,
            RunContainer::Thread => self.ensure_thread(&mut run, created).await,
        };
        if let Err(e) = result {
            if matches!(e, RunsError::GuildFull) {
                self.report(ErrorKind::GuildFull, Some(&run.run_id), &e);
            }
            return Err(e);
        }
        let (Some(channel_id), Some(webhook_id), Some(token)) =
            (&run.channel_id, &run.webhook_id, &run.webhook_token)
        else {
            return Err(RunsError::Store(StoreError::Corrupt(
                "run provisioned without channel or webhook".into(),
            )));
        };
        let base = &self.settings().discord_api_base;
        let mut url = format!("{base}/webhooks/{webhook_id}/{}", token.expose());
        if self.settings().run_container == RunContainer::Thread {
            url.push_str(&format!("?thread_id={channel_id}"));
        }
        if created {
            RunCreated {
                run_id: &run.run_id,
                channel_id,
            }
            .emit(self.metrics());
        }
        Ok((
            Provisioned {
                run_id: run.run_id.clone(),
                channel_id: channel_id.clone(),
                webhook_url: Secret::new(url),
                input_secret: run.input_secret.clone(),
                run_token: issued,
            },
            created,
        ))
    }

    /// Channel mode: makes sure the run has a live channel and webhook.
    async fn ensure_channel(&self, run: &mut RunRecord, created: bool) -> Result<(), RunsError> {
        let guild = self.settings().guild_id.clone();
        let run_id = run.run_id.clone();
        let d = self.discord();
        let channels = self
            .call(Some(&run_id), d.list_guild_channels(&guild))
            .await?;
        self.metrics().lifecycle.set_guild_channels(channels.len());
        let alive = run
            .channel_id
            .as_ref()
            .is_some_and(|id| channels.iter().any(|c| &c.id == id));
        if !alive {
            let parent = self
                .category(&channels, CategoryKind::Runs, Some(&run_id))
                .await?;
            let new = NewChannel {
                name: channel_name(&run.key),
                kind: kind::TEXT,
                parent_id: Some(parent),
                overwrites: discord::run_overwrites(&guild, &self.settings().operators),
            };
            let reason = format!("agentmon run {run_id}");
            let channel = match self
                .call(Some(&run_id), d.create_channel(&guild, &new, &reason))
                .await
            {
                Ok(c) => c,
                Err(e) if e.is_guild_full() => return Err(RunsError::GuildFull),
                Err(e) => return Err(e.into()),
            };
            if !created {
                RunRepaired {
                    run_id: &run_id,
                    channel_id: &channel.id,
                    what: "channel",
                }
                .emit();
            }
            run.channel_id = Some(channel.id);
            run.webhook_id = None;
            run.webhook_token = None;
            self.stored(self.store().update_run(run.clone())).await?;
        }
        let webhook_alive = match &run.webhook_id {
            Some(id) => self.call(Some(&run_id), d.webhook_exists(id)).await?,
            None => false,
        };
        if !webhook_alive {
            let channel_id = run.channel_id.clone().unwrap_or_default();
            let reason = format!("agentmon run {run_id}");
            let hook = self
                .call(
                    Some(&run_id),
                    d.create_webhook(&channel_id, WEBHOOK_NAME, &reason),
                )
                .await?;
            if run.webhook_id.is_some() {
                RunRepaired {
                    run_id: &run_id,
                    channel_id: &channel_id,
                    what: "webhook",
                }
                .emit();
            }
            run.webhook_id = Some(hook.id);
            run.webhook_token = Some(hook.token);
            self.stored(self.store().update_run(run.clone())).await?;
        }
        Ok(())
    }

    /// Thread mode: one thread per run, and one webhook per run on the parent
    /// (Discord allows 15 per channel: [`RunsError::WebhookLimit`] beyond).
    async fn ensure_thread(&self, run: &mut RunRecord, created: bool) -> Result<(), RunsError> {
        let parent = self
            .settings()
            .thread_parent_channel_id
            .clone()
            .ok_or_else(|| RunsError::BadRequest("THREAD_PARENT_CHANNEL_ID is not set".into()))?;
        let run_id = run.run_id.clone();
        let d = self.discord();
        let alive = match &run.channel_id {
            Some(id) => self.call(Some(&run_id), d.get_channel(id)).await?.is_some(),
            None => false,
        };
        let reason = format!("agentmon run {run_id}");
        if !alive {
            let thread = self
                .call(
                    Some(&run_id),
                    d.create_thread(&parent, &channel_name(&run.key), &reason),
                )
                .await?;
            if !created {
                RunRepaired {
                    run_id: &run_id,
                    channel_id: &thread.id,
                    what: "thread",
                }
                .emit();
            }
            run.channel_id = Some(thread.id);
            self.stored(self.store().update_run(run.clone())).await?;
        }
        // One webhook per run on the parent, deleted at completion, so a
        // finished run's URL stops working. Older versions shared one webhook
        // per parent (still in `shared_webhooks`); a run on it gets its own.
        let shared = self
            .stored(self.store().shared_webhook(parent.clone()))
            .await?
            .map(|w| w.id);
        let own = run
            .webhook_id
            .clone()
            .filter(|id| shared.as_deref() != Some(id.as_str()));
        let alive = match &own {
            Some(id) => self.call(Some(&run_id), d.webhook_exists(id)).await?,
            None => false,
        };
        if !alive {
            let hook = match self
                .call(
                    Some(&run_id),
                    d.create_webhook(&parent, WEBHOOK_NAME, &reason),
                )
                .await
            {
                Ok(h) => h,
                Err(e) if e.is_webhook_limit() => return Err(RunsError::WebhookLimit),
                Err(e) => return Err(e.into()),
            };
            run.webhook_id = Some(hook.id);
            run.webhook_token = Some(hook.token);
            self.stored(self.store().update_run(run.clone())).await?;
        }
        Ok(())
    }

    /// The id of a category of `kind` with room, creating the next overflow
    /// category when all are full.
    pub(crate) async fn category(
        &self,
        channels: &[Channel],
        kind: CategoryKind,
        run_id: Option<&str>,
    ) -> Result<String, RunsError> {
        let base = match kind {
            CategoryKind::Runs => self.settings().runs_category.clone(),
            CategoryKind::Archive => self.settings().archive_category.clone(),
        };
        match place(channels, &base)? {
            Placement::Existing { id, .. } => Ok(id),
            Placement::Create { name, index } => {
                let new = NewChannel {
                    name: name.clone(),
                    kind: kind::CATEGORY,
                    parent_id: None,
                    overwrites: Vec::new(),
                };
                let guild = self.settings().guild_id.clone();
                let created = match self
                    .call(
                        run_id,
                        self.discord()
                            .create_channel(&guild, &new, "agentmon category"),
                    )
                    .await
                {
                    Ok(c) => c,
                    Err(e) if e.is_guild_full() => return Err(RunsError::GuildFull),
                    Err(e) => return Err(e.into()),
                };
                tracing::info!(category = %name, category_id = %created.id, "category created");
                self.stored(self.store().put_category(CategoryRecord {
                    id: created.id.clone(),
                    name,
                    kind,
                    index,
                }))
                .await?;
                Ok(created.id)
            }
        }
    }

    /// `POST /v1/runs/{id}/complete`: revokes the run's webhook, marks the run
    /// completed and schedules retention. Only the run's owner may complete it
    /// (see [`Self::provision`]); calling it again is a no-op.
    pub async fn complete(
        &self,
        run_id: &str,
        summary: Option<serde_json::Value>,
        caller: &Caller,
    ) -> Result<RunRecord, RunsError> {
        let _guard = self.stored(self.store().provision_lock()).await?;
        let run = self.stored_run(run_id).await?;
        self.authorize(&run, caller).await?;
        if run.status != RunStatus::Active {
            return Ok(run);
        }
        self.finish(run, summary, FinalizeReason::Completed).await
    }

    /// The end of every run, by `complete` or by the reconciler: revokes the
    /// webhook, marks the run completed with `summary`, schedules retention
    /// and counts `reason`. The caller holds the provisioning lock and has
    /// checked that the run is active.
    pub(crate) async fn finish(
        &self,
        mut run: RunRecord,
        summary: Option<serde_json::Value>,
        reason: FinalizeReason,
    ) -> Result<RunRecord, RunsError> {
        let run_id = run.run_id.clone();
        let run_id = run_id.as_str();
        if let Some(hook) = &run.webhook_id {
            // A run provisioned before per-run thread webhooks may still use the
            // parent's shared webhook, which other such runs post through.
            let shared = match (
                &self.settings().thread_parent_channel_id,
                self.settings().run_container,
            ) {
                (Some(parent), RunContainer::Thread) => self
                    .stored(self.store().shared_webhook(parent.clone()))
                    .await?
                    .map(|w| w.id),
                _ => None,
            };
            if shared.as_deref() != Some(hook.as_str()) {
                let why = format!("agentmon run {run_id} completed");
                match self
                    .call(Some(run_id), self.discord().delete_webhook(hook, &why))
                    .await
                {
                    Ok(()) | Err(DiscordError::NotFound) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        run.webhook_id = None;
        run.webhook_token = None;
        let now = now_unix();
        let retention = i64::try_from(self.settings().retention.as_secs()).unwrap_or(i64::MAX);
        run.status = RunStatus::Completed;
        run.completed_at = Some(now);
        run.archive_due_at = Some(now.saturating_add(retention));
        run.summary = summary;
        self.stored(self.store().update_run(run.clone())).await?;
        RunCompleted {
            run_id,
            archive_due_at: run.archive_due_at.unwrap_or(now),
        }
        .emit(self.metrics());
        self.metrics().lifecycle.finalized(reason);
        self.announce_finalized(run_id, reason).await;
        Ok(run)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(t: &str, a: &str, s: &str) -> RunKey {
        RunKey {
            task_id: t.into(),
            attempt: a.into(),
            short_id: s.into(),
        }
    }

    #[test]
    fn channel_names_follow_discord_rules() {
        assert_eq!(channel_name(&key("T-42", "1", "ab12")), "run-t-42-1-ab12");
        assert_eq!(
            channel_name(&key("Fix  bug!!", "2", "x_y")),
            "run-fix-bug-2-x-y"
        );
        assert_eq!(channel_name(&key("--Ünï--", "3", "-")), "run-n-3");
        let long = channel_name(&key(&"a".repeat(300), "1", "z"));
        assert_eq!(long.len(), 100);
        assert!(long
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
        let edge = channel_name(&key(&format!("{}-b", "a".repeat(94)), "1", "z"));
        assert!(!edge.ends_with('-'), "{edge}");
    }

    fn cat(id: &str, name: &str) -> Channel {
        Channel {
            id: id.into(),
            name: name.into(),
            kind: kind::CATEGORY,
            parent_id: None,
        }
    }

    fn children(parent: &str, n: usize, from: usize) -> Vec<Channel> {
        (0..n)
            .map(|i| Channel {
                id: format!("c{}", from + i),
                name: "x".into(),
                kind: kind::TEXT,
                parent_id: Some(parent.into()),
            })
            .collect()
    }

    #[test]
    fn placement_overflows_into_numbered_categories() {
        assert_eq!(
            place(&[], "Agent Runs").unwrap(),
            Placement::Create {
                name: "Agent Runs".into(),
                index: 1
            }
        );
        let mut g = vec![cat("1", "Agent Runs")];
        g.extend(children("1", 49, 0));
        assert!(matches!(
            place(&g, "Agent Runs").unwrap(),
            Placement::Existing { index: 1, .. }
        ));
        g.extend(children("1", 1, 100));
        assert_eq!(
            place(&g, "Agent Runs").unwrap(),
            Placement::Create {
                name: "Agent Runs 2".into(),
                index: 2
            }
        );
        g.push(cat("2", "Agent Runs 2"));
        assert!(matches!(
            place(&g, "Agent Runs").unwrap(),
            Placement::Existing { index: 2, .. }
        ));
        // An unrelated category with a similar name is not part of the family.
        assert_eq!(category_index("Agent Runs", "Agent Runs Old"), None);
        assert_eq!(category_index("Agent Runs", "Agent Runs 1"), None);
    }

    #[test]
    fn full_guild_is_reported() {
        let mut g = vec![cat("1", "Agent Runs")];
        g.extend(children("1", 50, 0));
        g.extend(children("other", 449, 1000));
        assert_eq!(g.len(), 500);
        assert!(matches!(place(&g, "Agent Runs"), Err(RunsError::GuildFull)));
        g.pop();
        assert!(matches!(place(&g, "Agent Runs"), Err(RunsError::GuildFull)));
        g.pop();
        assert!(matches!(
            place(&g, "Agent Runs"),
            Ok(Placement::Create { .. })
        ));
    }

    use crate::app::fixture;
    use crate::discord::perm;

    /// The watcher that creates the runs of these tests.
    fn owner() -> Caller {
        Caller::RunToken(Secret::new("owner-token-".repeat(4)))
    }

    fn new_run(task: &str, short: &str) -> NewRun {
        NewRun {
            task_id: task.into(),
            attempt: AttemptValue::Number(1),
            short_id: short.into(),
            input_url: Some("http://10.0.0.1:8081".into()),
            heartbeats: false,
        }
    }

    #[tokio::test]
    async fn provisioning_is_idempotent_and_channels_are_read_only() {
        let (state, discord) = fixture::state(fixture::settings());
        let (a, created) = state
            .provision(new_run("T-1", "ab"), &owner())
            .await
            .unwrap();
        assert!(created);
        let (b, created) = state
            .provision(new_run("T-1", "ab"), &owner())
            .await
            .unwrap();
        assert!(!created);
        assert_eq!(a.run_id, b.run_id);
        assert_eq!(a.channel_id, b.channel_id);
        assert_eq!(a.webhook_url.expose(), b.webhook_url.expose());
        assert_eq!(a.input_secret.expose(), b.input_secret.expose());
        assert_eq!(a.input_secret.expose().len(), 64);
        assert!(a
            .webhook_url
            .expose()
            .starts_with("http://discord.test/api/v10/webhooks/"));
        discord.with(|s| {
            let ch = &s.channels[&a.channel_id];
            assert_eq!(ch.name, "run-t-1-1-ab");
            let parent = &s.channels[ch.parent_id.as_ref().unwrap()];
            assert_eq!(parent.name, "Agent Runs");
            let ow = &s.overwrites[&a.channel_id][0];
            assert_eq!(ow.id, fixture::GUILD);
            assert_eq!(ow.allow & perm::VIEW_CHANNEL, perm::VIEW_CHANNEL);
            assert_eq!(ow.deny & perm::SEND_MESSAGES, perm::SEND_MESSAGES);
            assert_eq!(s.webhooks.len(), 1);
        });
    }

    #[tokio::test]
    async fn a_deleted_webhook_or_channel_is_replaced() {
        let (state, discord) = fixture::state(fixture::settings());
        let (a, _) = state.provision(new_run("t", "x"), &owner()).await.unwrap();
        discord.with(|s| s.webhooks.clear());
        let (b, created) = state.provision(new_run("t", "x"), &owner()).await.unwrap();
        assert!(!created);
        assert_eq!(a.channel_id, b.channel_id);
        assert_ne!(a.webhook_url.expose(), b.webhook_url.expose());
        discord.with(|s| s.channels.remove(&b.channel_id));
        let (c, _) = state.provision(new_run("t", "x"), &owner()).await.unwrap();
        assert_ne!(c.channel_id, b.channel_id);
        assert_eq!(c.run_id, a.run_id);
        discord.with(|s| assert!(s.webhooks.values().any(|ch| *ch == c.channel_id)));
    }

    #[tokio::test]
    async fn the_51st_run_goes_to_an_overflow_category() {
        let (state, discord) = fixture::state(fixture::settings());
        let mut last = None;
        for i in 0..51 {
            last = Some(
                state
                    .provision(new_run("t", &format!("s{i}")), &owner())
                    .await
                    .unwrap()
                    .0,
            );
        }
        let last = last.unwrap();
        discord.with(|s| {
            let parent = s.channels[&last.channel_id].parent_id.clone().unwrap();
            assert_eq!(s.channels[&parent].name, "Agent Runs 2");
        });
        let cats = state.store().categories().await.unwrap();
        assert_eq!(cats.len(), 2);
        assert_eq!(cats[1].index, 2);
    }

    #[tokio::test]
    async fn a_full_guild_is_refused_with_guild_full() {
        let (state, discord) = fixture::state(fixture::settings());
        discord.with(|s| {
            for i in 0..500 {
                s.channels.insert(
                    format!("x{i}"),
                    Channel {
                        id: format!("x{i}"),
                        name: "other".into(),
                        kind: kind::TEXT,
                        parent_id: None,
                    },
                );
            }
        });
        let err = state
            .provision(new_run("t", "a"), &owner())
            .await
            .unwrap_err();
        assert!(matches!(err, RunsError::GuildFull), "{err}");
    }

    #[tokio::test]
    async fn complete_revokes_the_webhook_once() {
        let (state, discord) = fixture::state(fixture::settings());
        let (a, _) = state.provision(new_run("t", "a"), &owner()).await.unwrap();
        let summary = serde_json::json!({"cost": 1.5});
        let run = state
            .complete(&a.run_id, Some(summary.clone()), &owner())
            .await
            .unwrap();
        assert_eq!(run.status, RunStatus::Completed);
        assert_eq!(run.archive_due_at, Some(run.completed_at.unwrap() + 1));
        assert!(run.webhook_token.is_none());
        discord.with(|s| assert!(s.webhooks.is_empty()));
        let again = state.complete(&a.run_id, None, &owner()).await.unwrap();
        assert_eq!(again.summary, Some(summary));
        let deletes = discord.with(|s| {
            s.calls
                .iter()
                .filter(|c| c.starts_with("delete_webhook"))
                .count()
        });
        assert_eq!(deletes, 1);
        assert!(matches!(
            state.provision(new_run("t", "a"), &owner()).await,
            Err(RunsError::RunFinished)
        ));
        assert!(matches!(
            state.complete("nope", None, &owner()).await,
            Err(RunsError::NotFound)
        ));
    }

    fn thread_state() -> (
        AppState,
        std::sync::Arc<crate::discord::memory::MockDiscord>,
    ) {
        let mut settings = fixture::settings();
        settings.run_container = RunContainer::Thread;
        settings.thread_parent_channel_id = Some("555".into());
        let (state, discord) = fixture::state(settings);
        discord.with(|s| {
            s.channels.insert(
                "555".into(),
                Channel {
                    id: "555".into(),
                    name: "runs".into(),
                    kind: kind::TEXT,
                    parent_id: None,
                },
            )
        });
        (state, discord)
    }

    #[tokio::test]
    async fn thread_mode_gives_each_run_its_own_webhook_revoked_at_completion() {
        let (state, discord) = thread_state();
        let (a, _) = state.provision(new_run("t", "a"), &owner()).await.unwrap();
        let (b, _) = state.provision(new_run("t", "b"), &owner()).await.unwrap();
        assert_ne!(a.channel_id, b.channel_id);
        assert!(a
            .webhook_url
            .expose()
            .ends_with(&format!("?thread_id={}", a.channel_id)));
        let hook_of = |url: &str| url.split('/').nth(6).unwrap_or_default().to_owned();
        let (ha, hb) = (
            hook_of(a.webhook_url.expose()),
            hook_of(b.webhook_url.expose()),
        );
        assert_ne!(ha, hb, "runs share a webhook");
        discord.with(|s| {
            assert_eq!(s.webhooks.len(), 2);
            assert_eq!(s.channels[&a.channel_id].kind, kind::PUBLIC_THREAD);
        });
        // Completing A revokes A's URL only.
        state.complete(&a.run_id, None, &owner()).await.unwrap();
        discord.with(|s| {
            assert!(
                !s.webhooks.contains_key(&ha),
                "A's webhook survived completion"
            );
            assert!(s.webhooks.contains_key(&hb));
        });
    }

    #[tokio::test]
    async fn thread_mode_past_the_webhook_limit_is_a_clear_error() {
        let (state, _) = thread_state();
        for i in 0..crate::discord::MAX_WEBHOOKS_PER_CHANNEL {
            state
                .provision(new_run("t", &format!("s{i}")), &owner())
                .await
                .unwrap();
        }
        let err = state
            .provision(new_run("t", "one-too-many"), &owner())
            .await
            .unwrap_err();
        assert!(matches!(err, RunsError::WebhookLimit), "{err}");
        // A completed run frees its slot.
        let first = state
            .store()
            .find_by_key(RunKey {
                task_id: "t".into(),
                attempt: "1".into(),
                short_id: "s0".into(),
            })
            .await
            .unwrap()
            .unwrap();
        state.complete(&first.run_id, None, &owner()).await.unwrap();
        state
            .provision(new_run("t", "one-too-many"), &owner())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_run_belongs_to_the_caller_that_created_it() {
        let (state, _) = fixture::state(fixture::settings());
        let (a, created) = state.provision(new_run("t", "a"), &owner()).await.unwrap();
        assert!(created);
        assert!(a.run_token.is_none(), "a proposed token is not echoed");
        for intruder in [
            Caller::Anonymous,
            Caller::RunToken(Secret::new("intruder-token-".repeat(3))),
        ] {
            let err = state
                .provision(new_run("t", "a"), &intruder)
                .await
                .unwrap_err();
            assert!(matches!(err, RunsError::Forbidden(_)), "{err}");
            let err = state
                .complete(&a.run_id, None, &intruder)
                .await
                .unwrap_err();
            assert!(matches!(err, RunsError::Forbidden(_)), "{err}");
        }
        // input_url is fixed at creation, even for the owner.
        let mut moved = new_run("t", "a");
        moved.input_url = Some("http://10.9.9.9:8081".into());
        let err = state.provision(moved, &owner()).await.unwrap_err();
        assert!(err.to_string().contains("fixed"), "{err}");
        // Without a proposed token, bot-bridge issues one, once.
        let (b, _) = state
            .provision(new_run("t", "b"), &Caller::Anonymous)
            .await
            .unwrap();
        let token = b.run_token.clone().expect("a token for the creator");
        assert!(token.expose().len() >= crate::access::MIN_RUN_TOKEN);
        let (again, created) = state
            .provision(new_run("t", "b"), &Caller::RunToken(token.clone()))
            .await
            .unwrap();
        assert!(!created && again.run_token.is_none());
        assert_eq!(again.input_secret.expose(), b.input_secret.expose());
        let stored = state
            .store()
            .get_run(b.run_id.clone())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            stored.token_hash.as_deref(),
            Some(crate::access::hash_token(&token).as_str())
        );
        state
            .complete(&b.run_id, None, &Caller::RunToken(token))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_run_from_before_run_tokens_is_adopted_once() {
        let (state, _) = fixture::state(fixture::settings());
        let (a, _) = state.provision(new_run("t", "a"), &owner()).await.unwrap();
        let mut legacy = state
            .store()
            .get_run(a.run_id.clone())
            .await
            .unwrap()
            .unwrap();
        legacy.token_hash = None;
        state.store().update_run(legacy).await.unwrap();
        let (adopted, _) = state
            .provision(new_run("t", "a"), &Caller::Anonymous)
            .await
            .unwrap();
        let token = adopted.run_token.expect("the adopter gets a token");
        assert!(matches!(
            state.provision(new_run("t", "a"), &Caller::Anonymous).await,
            Err(RunsError::Forbidden(_))
        ));
        state
            .provision(new_run("t", "a"), &Caller::RunToken(token))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn bad_identities_are_rejected() {
        let (state, _) = fixture::state(fixture::settings());
        let mut r = new_run("", "a");
        assert!(matches!(
            state.provision(r.clone(), &owner()).await,
            Err(RunsError::BadRequest(_))
        ));
        r.task_id = "t".into();
        r.input_url = Some("http://169.254.169.254".into());
        assert!(matches!(
            state.provision(r, &owner()).await,
            Err(RunsError::BadRequest(_))
        ));
    }
}
