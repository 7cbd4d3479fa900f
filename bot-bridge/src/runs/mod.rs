//! The run lifecycle: provision a channel + webhook, repair it when Discord lost
//! either, complete it. HTTP lives in `api::runs`; this is the logic.
//!
//! Provisioning writes the run row *before* touching Discord and saves each
//! Discord object as soon as it exists, so a retry by the watcher never
//! creates a second channel for the same (task, attempt, short id). A crash
//! between Discord creating an object and the store saving it leaves one
//! nobody recorded; the run's retry adopts it (the channel by its
//! deterministic name, the webhook by its name on that channel).

use std::time::{SystemTime, UNIX_EPOCH};

use ops::Secret;
use rand::RngCore;
use serde::Serialize;

use crate::access::{hash_token, Caller};
use crate::app::AppState;
use crate::config::RunContainer;
use crate::events::{ErrorKind, OrphanAdopted, RunCompleted, RunCreated, RunRepaired, RunStored};
use crate::guild::{self, kind, Channel, DiscordError, NewChannel, Webhook};
use crate::reconcile::telemetry::FinalizeReason;
use crate::store::{
    CategoryKind, CategoryRecord, Inserted, RunKey, RunRecord, RunStatus, StoreError,
};

/// Discord's limits on channels (DESIGN.md §4), from the model crate.
pub use discord::limits::{
    CHANNELS_PER_CATEGORY as MAX_CHANNELS_PER_CATEGORY,
    CHANNELS_PER_GUILD as MAX_CHANNELS_PER_GUILD, CHANNEL_NAME as MAX_CHANNEL_NAME,
};
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
        guild::MAX_WEBHOOKS_PER_CHANNEL
    )]
    WebhookLimit,
    #[error("discord: {0}")]
    Discord(#[from] DiscordError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// What the watcher sends to `POST /v1/runs` (the shared contract).
pub use protocol::{AttemptValue, NewRun};

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
        .filter(|c| c.kind == kind::GUILD_CATEGORY)
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
/// `GuildFull` when the guild (`guild_limit` channels: Discord's 500) cannot
/// take the channel (and the category).
pub fn place(channels: &[Channel], base: &str, guild_limit: usize) -> Result<Placement, RunsError> {
    let total = channels.len();
    let fam = family(channels, base);
    if let Some((index, id, _)) = fam.iter().find(|(_, _, n)| *n < MAX_CHANNELS_PER_CATEGORY) {
        if total >= guild_limit {
            return Err(RunsError::GuildFull);
        }
        return Ok(Placement::Existing {
            id: id.clone(),
            index: *index,
        });
    }
    if total + 2 > guild_limit {
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
        fut: guild::DiscordFuture<'_, T>,
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
        let _guard = self.stored(self.provision_lock()).await?;
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
                    Inserted::New => {
                        RunStored {
                            run_id: &fresh.run_id,
                        }
                        .emit(self.metrics());
                        (fresh, true)
                    }
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
        let mut alive = run
            .channel_id
            .as_ref()
            .is_some_and(|id| channels.iter().any(|c| &c.id == id));
        if !alive {
            if let Some(orphan) = self.orphan_channel(&channels, run).await? {
                OrphanAdopted {
                    run_id: &run_id,
                    channel_id: &orphan,
                    what: "channel",
                }
                .emit();
                run.channel_id = Some(orphan);
                run.webhook_id = None;
                run.webhook_token = None;
                self.stored(self.store().update_run(run.clone())).await?;
                alive = true;
            }
        }
        // A channel found (not created) here may already hold this run's
        // webhook; a freshly created one cannot, so it is not asked.
        let mut fresh_channel = false;
        if !alive {
            let parent = self
                .category(&channels, CategoryKind::Runs, Some(&run_id))
                .await?;
            let new = NewChannel {
                name: channel_name(&run.key),
                kind: kind::GUILD_TEXT,
                parent_id: Some(parent),
                overwrites: guild::run_overwrites(&guild, &self.settings().operators),
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
            fresh_channel = true;
            self.stored(self.store().update_run(run.clone())).await?;
        }
        let webhook_alive = match &run.webhook_id {
            Some(id) => self.call(Some(&run_id), d.webhook_exists(id)).await?,
            None => false,
        };
        if !webhook_alive {
            let channel_id = run.channel_id.clone().unwrap_or_default();
            let orphan = if fresh_channel {
                None
            } else {
                self.orphan_webhook(&channel_id, &run_id).await?
            };
            let hook = match orphan {
                Some(hook) => {
                    OrphanAdopted {
                        run_id: &run_id,
                        channel_id: &channel_id,
                        what: "webhook",
                    }
                    .emit();
                    hook
                }
                None => {
                    let reason = format!("agentmon run {run_id}");
                    self.call(
                        Some(&run_id),
                        d.create_webhook(&channel_id, WEBHOOK_NAME, &reason),
                    )
                    .await?
                }
            };
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

    /// A channel this run can take over instead of creating one: named for
    /// the run, in one of the runs categories, and bound to no run in the
    /// store. Only a replica that died between Discord creating the channel
    /// and the store saving it leaves such a channel; the caller holds the
    /// provisioning lock, so no other replica is creating it right now.
    async fn orphan_channel(
        &self,
        channels: &[Channel],
        run: &RunRecord,
    ) -> Result<Option<String>, RunsError> {
        let name = channel_name(&run.key);
        let categories = family(channels, &self.settings().runs_category);
        let candidates = channels.iter().filter(|c| {
            c.kind == kind::GUILD_TEXT
                && c.name == name
                && c.parent_id
                    .as_ref()
                    .is_some_and(|p| categories.iter().any(|(_, id, _)| id == p))
        });
        for c in candidates {
            // Two keys can share a name ("a_b" and "a-b"): a channel a run
            // holds (or held: its history) is never taken over.
            let owner = self
                .stored(self.store().find_by_channel(c.id.clone()))
                .await?;
            if owner.is_none_or(|o| o.run_id == run.run_id) {
                return Ok(Some(c.id.clone()));
            }
        }
        Ok(None)
    }

    /// An incoming webhook named [`WEBHOOK_NAME`] on the run's own channel
    /// (channel mode: nothing else creates one there) that the store never
    /// recorded, with its token as Discord lists it.
    async fn orphan_webhook(
        &self,
        channel_id: &str,
        run_id: &str,
    ) -> Result<Option<Webhook>, RunsError> {
        let listed = match self
            .call(
                Some(run_id),
                self.discord().list_channel_webhooks(channel_id),
            )
            .await
        {
            Ok(l) => l,
            // The channel went away since the guild list: creating the
            // webhook fails the same way and the watcher's retry repairs.
            Err(DiscordError::NotFound) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(listed
            .into_iter()
            .filter(|w| w.incoming && w.name == WEBHOOK_NAME)
            .find_map(|w| {
                Some(Webhook {
                    id: w.id,
                    token: w.token?,
                })
            }))
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
        match place(channels, &base, self.settings().guild_channel_limit)? {
            Placement::Existing { id, .. } => Ok(id),
            Placement::Create { name, index } => {
                let new = NewChannel {
                    name: name.clone(),
                    kind: kind::GUILD_CATEGORY,
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
        let _guard = self.stored(self.provision_lock()).await?;
        let run = self.stored_run(run_id).await?;
        self.authorize(&run, caller).await?;
        if run.status != RunStatus::Active {
            return Ok(run);
        }
        // A hand-off stored from here on waits for this finish (and then
        // finds the run completed), so none is left behind under it.
        let finishing = self
            .stored(self.store().finish_lock(run_id.to_owned()))
            .await?;
        if self.handing_off(run_id).await? {
            // Completing now would revoke the webhook under the pending
            // messages: the summary joins the hand-off (unless it carried its
            // own) and the drainer completes the run once they are delivered.
            drop(finishing);
            self.stored(self.store().put_handoff(
                run_id.to_owned(),
                Vec::new(),
                Some(summary),
                now_unix(),
            ))
            .await?;
            self.inner.handoff_wake.notify_one();
            return Ok(run);
        }
        self.finish(run, summary, FinalizeReason::Completed).await
    }

    /// The end of every run, by `complete` or by the reconciler: revokes the
    /// webhook, marks the run completed with `summary`, schedules retention
    /// and counts `reason`. The caller holds the provisioning lock and the
    /// run's finish lock, and has checked that the run is active and has no
    /// hand-off pending.
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
mod tests;
