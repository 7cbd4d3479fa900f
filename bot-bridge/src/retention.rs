//! The retention worker: archives or deletes the channels of completed runs once
//! `RETENTION` has passed, and removes overflow categories that became empty.
//!
//! Everything it needs is in the store (`archive_due_at`), so it resumes after a
//! restart; each action is idempotent (a channel that is already gone counts as
//! done) and a failed one is retried on the next tick. Only one instance may run
//! it: with SQLite there is one replica by construction; with several replicas
//! on Postgres only the elected leader runs it (`leader::while_leading`).

use std::time::Duration;

use ops::health::Heartbeat;
use ops::Shutdown;
use serde_json::json;

use crate::app::AppState;
use crate::config::{RetentionAction, RunContainer};
use crate::events::{ErrorKind, RetentionApplied};
use crate::guild::{self, Channel, DiscordError};
use crate::runs::{family, RunsError};
use crate::store::{CategoryKind, RunRecord, RunStatus};

/// Seconds an interaction id stays claimed (`RunStore::claim_interaction`).
pub const INTERACTION_CLAIM_TTL: i64 = 3600;

/// What one tick did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TickReport {
    pub archived: usize,
    pub deleted: usize,
    /// Channels that no longer existed (someone deleted them): marked done.
    pub gone: usize,
    /// Actions that failed and will be retried.
    pub failed: usize,
    pub categories_removed: usize,
}

enum Applied {
    Archived,
    Deleted,
    Gone,
}

/// Runs [`tick`] every `interval` until `shutdown`.
pub async fn run(
    state: AppState,
    interval: Duration,
    shutdown: Shutdown,
    heartbeat: Option<Heartbeat>,
) {
    let mut timer = tokio::time::interval(interval);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.wait() => break,
            _ = timer.tick() => {}
        }
        if let Some(h) = &heartbeat {
            h.beat();
        }
        let report = tokio::select! {
            () = shutdown.wait() => break,
            r = tick(&state, crate::runs::now_unix()) => r,
        };
        if report != TickReport::default() {
            tracing::info!(?report, "retention tick");
        }
        if let Some(h) = &heartbeat {
            h.beat();
        }
    }
}

/// One pass: acts on every run due at `now` (unix seconds).
pub async fn tick(state: &AppState, now: i64) -> TickReport {
    let mut report = TickReport::default();
    let due = match state.store().due_runs(now).await {
        Ok(d) => d,
        Err(e) => {
            state.report(ErrorKind::Store, None, &e);
            report.failed += 1;
            return report;
        }
    };
    // A run completes only after its hand-off drained, so this is a guard:
    // a channel with handed-off messages still pending is never archived
    // or deleted under them.
    let draining = match state.store().handoff_runs().await {
        Ok(h) => h
            .into_iter()
            .filter(|r| r.pending > 0)
            .map(|r| r.run_id)
            .collect::<std::collections::HashSet<_>>(),
        Err(e) => {
            state.report(ErrorKind::Store, None, &e);
            report.failed += 1;
            return report;
        }
    };
    let due: Vec<_> = due
        .into_iter()
        .filter(|r| !draining.contains(&r.run_id))
        .collect();
    let guild = state.settings().guild_id.clone();
    let channel_mode = state.settings().run_container == RunContainer::Channel;
    let mut listing: Option<Vec<Channel>> = None;
    for mut run in due {
        // One run at a time under the provisioning lock: category placement and
        // cleanup must not race a run being created.
        let _guard = match state.provision_lock().await {
            Ok(g) => g,
            Err(e) => {
                state.report(ErrorKind::Store, None, &e);
                report.failed += 1;
                return report;
            }
        };
        if channel_mode && listing.is_none() {
            match state.discord().list_guild_channels(&guild).await {
                Ok(l) => listing = Some(l),
                Err(e) => {
                    state.report(ErrorKind::Retention, None, &e);
                    report.failed += 1;
                    return report;
                }
            }
        }
        let result = apply(state, &run, listing.as_mut()).await;
        let (status, note) = match result {
            Ok(Applied::Archived) => {
                report.archived += 1;
                (RunStatus::Archived, "archived")
            }
            Ok(Applied::Deleted) => {
                report.deleted += 1;
                (RunStatus::Deleted, "deleted")
            }
            Ok(Applied::Gone) => {
                report.gone += 1;
                let status = match state.settings().retention_action {
                    RetentionAction::Archive => RunStatus::Archived,
                    RetentionAction::Delete => RunStatus::Deleted,
                };
                (status, "channel was already gone")
            }
            Err(e) => {
                report.failed += 1;
                state.report(ErrorKind::Retention, Some(&run.run_id), &e);
                run.retention_note = Some(format!("retrying: {e}"));
                if let Err(e) = state.store().update_run(run).await {
                    state.report(ErrorKind::Store, None, &e);
                }
                continue;
            }
        };
        RetentionApplied {
            run_id: &run.run_id,
            channel_id: run.channel_id.as_deref().unwrap_or(""),
            outcome: note,
        }
        .emit();
        run.status = status;
        run.retention_note = Some(note.to_owned());
        if let Err(e) = state.store().update_run(run).await {
            state.report(ErrorKind::Store, None, &e);
            report.failed += 1;
        }
    }
    if channel_mode {
        match state.provision_lock().await {
            Ok(_guard) => report.categories_removed = remove_empty_overflow(state).await,
            Err(e) => {
                state.report(ErrorKind::Store, None, &e);
                report.failed += 1;
            }
        }
    }
    // Hand-offs of runs whose channel is archived or gone are done for good.
    match state.store().prune_handoffs().await {
        Ok(n) if n > 0 => tracing::debug!(messages = n, "pruned finished hand-offs"),
        Ok(_) => {}
        Err(e) => state.report(ErrorKind::Store, None, &e),
    }
    // Interaction claims only matter while Discord may still deliver the
    // interaction (15 minutes); an hour is ample.
    if let Err(e) = state
        .store()
        .prune_interactions(now.saturating_sub(INTERACTION_CLAIM_TTL))
        .await
    {
        state.report(ErrorKind::Store, None, &e);
    }
    report
}

async fn apply(
    state: &AppState,
    run: &RunRecord,
    listing: Option<&mut Vec<Channel>>,
) -> Result<Applied, RunsError> {
    let Some(channel_id) = run.channel_id.clone() else {
        return Ok(Applied::Gone);
    };
    let d = state.discord();
    let reason = format!("agentmon run {} retention", run.run_id);
    let done = |r: Result<(), DiscordError>, ok: Applied| match r {
        Ok(()) => Ok(ok),
        Err(DiscordError::NotFound) => Ok(Applied::Gone),
        Err(e) => Err(RunsError::Discord(e)),
    };
    match (state.settings().retention_action, listing) {
        (RetentionAction::Delete, listing) => {
            if let Some(l) = &listing {
                if !l.iter().any(|c| c.id == channel_id) {
                    return Ok(Applied::Gone);
                }
            }
            let r = d.delete_channel(&channel_id, &reason).await;
            if let Some(l) = listing {
                l.retain(|c| c.id != channel_id);
            }
            done(r, Applied::Deleted)
        }
        (RetentionAction::Archive, None) => {
            // Thread mode: archive and lock the thread (it stays readable).
            let patch = json!({"archived": true, "locked": true});
            done(
                d.modify_channel(&channel_id, &patch, &reason).await,
                Applied::Archived,
            )
        }
        (RetentionAction::Archive, Some(listing)) => {
            if !listing.iter().any(|c| c.id == channel_id) {
                return Ok(Applied::Gone);
            }
            let mut category = state
                .category(listing, CategoryKind::Archive, Some(&run.run_id))
                .await?;
            if !listing.iter().any(|c| c.id == category) {
                // A new archive category: refresh so later runs count it.
                *listing = d
                    .list_guild_channels(&state.settings().guild_id)
                    .await
                    .map_err(RunsError::Discord)?;
                if !listing.iter().any(|c| c.id == category) {
                    category = state
                        .category(listing, CategoryKind::Archive, Some(&run.run_id))
                        .await?;
                }
            }
            let overwrites: Vec<_> =
                guild::archive_overwrites(&state.settings().guild_id, &state.settings().operators)
                    .iter()
                    .map(guild::Overwrite::to_json)
                    .collect();
            let patch = json!({"parent_id": category, "permission_overwrites": overwrites});
            let r = d.modify_channel(&channel_id, &patch, &reason).await;
            if r.is_ok() {
                if let Some(c) = listing.iter_mut().find(|c| c.id == channel_id) {
                    c.parent_id = Some(category);
                }
            }
            done(r, Applied::Archived)
        }
    }
}

/// Deletes overflow categories (index ≥ 2) bot-bridge created that hold no
/// channel any more. Returns how many went.
async fn remove_empty_overflow(state: &AppState) -> usize {
    let known = match state.store().categories().await {
        Ok(k) => k,
        Err(e) => {
            state.report(ErrorKind::Store, None, &e);
            return 0;
        }
    };
    if !known.iter().any(|c| c.index >= 2) {
        return 0;
    }
    let d = state.discord();
    let listing = match d.list_guild_channels(&state.settings().guild_id).await {
        Ok(l) => l,
        Err(e) => {
            state.report(ErrorKind::Retention, None, &e);
            return 0;
        }
    };
    let mut removed = 0;
    for base in [
        state.settings().runs_category.clone(),
        state.settings().archive_category.clone(),
    ] {
        for (index, id, children) in family(&listing, &base) {
            if index < 2 || children > 0 || !known.iter().any(|k| k.id == id) {
                continue;
            }
            match d
                .delete_channel(&id, "agentmon: empty overflow category")
                .await
            {
                Ok(()) | Err(DiscordError::NotFound) => {
                    removed += 1;
                    if let Err(e) = state.store().remove_category(id).await {
                        state.report(ErrorKind::Store, None, &e);
                    }
                }
                Err(e) => state.report(ErrorKind::Retention, None, &e),
            }
        }
    }
    // Categories deleted by hand in Discord are forgotten too.
    for k in known {
        if !listing.iter().any(|c| c.id == k.id) {
            if let Err(e) = state.store().remove_category(k.id).await {
                state.report(ErrorKind::Store, None, &e);
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::fixture;
    use crate::app::fixture::{new_run, owner};

    #[tokio::test]
    async fn due_channels_move_to_the_archive_once() {
        let (state, discord) = fixture::state(fixture::settings());
        let (a, _) = state.provision(new_run("a"), &owner()).await.unwrap();
        let (b, _) = state.provision(new_run("b"), &owner()).await.unwrap();
        let run = state.complete(&a.run_id, None, &owner()).await.unwrap();
        let due = run.archive_due_at.unwrap();
        assert_eq!(tick(&state, due - 1).await, TickReport::default());
        let report = tick(&state, due).await;
        assert_eq!(report.archived, 1, "{report:?}");
        discord.with(|s| {
            let parent = s.channels[&a.channel_id].parent_id.clone().unwrap();
            assert_eq!(s.channels[&parent].name, "Archived Runs");
            let other = s.channels[&b.channel_id].parent_id.clone().unwrap();
            assert_eq!(s.channels[&other].name, "Agent Runs");
        });
        let stored = state
            .store()
            .get_run(a.run_id.clone())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.status, RunStatus::Archived);
        // Idempotent: nothing is due any more.
        assert_eq!(tick(&state, due + 10).await, TickReport::default());
    }

    #[tokio::test]
    async fn a_channel_deleted_by_hand_counts_as_done() {
        let mut settings = fixture::settings();
        settings.retention_action = RetentionAction::Delete;
        let (state, discord) = fixture::state(settings);
        let (a, _) = state.provision(new_run("a"), &owner()).await.unwrap();
        let (b, _) = state.provision(new_run("b"), &owner()).await.unwrap();
        state.complete(&a.run_id, None, &owner()).await.unwrap();
        let run = state.complete(&b.run_id, None, &owner()).await.unwrap();
        discord.with(|s| s.channels.remove(&a.channel_id));
        let report = tick(&state, run.archive_due_at.unwrap()).await;
        assert_eq!((report.deleted, report.gone), (1, 1), "{report:?}");
        discord.with(|s| assert!(!s.channels.contains_key(&b.channel_id)));
        let stored = state.store().get_run(a.run_id).await.unwrap().unwrap();
        assert_eq!(stored.status, RunStatus::Deleted);
    }

    #[tokio::test]
    async fn empty_overflow_categories_are_removed() {
        let mut settings = fixture::settings();
        settings.retention_action = RetentionAction::Delete;
        let (state, discord) = fixture::state(settings);
        let mut runs = Vec::new();
        for i in 0..51 {
            runs.push(
                state
                    .provision(new_run(&format!("s{i}")), &owner())
                    .await
                    .unwrap()
                    .0,
            );
        }
        let last = runs.last().unwrap();
        let run = state.complete(&last.run_id, None, &owner()).await.unwrap();
        let report = tick(&state, run.archive_due_at.unwrap()).await;
        assert_eq!(report.categories_removed, 1, "{report:?}");
        discord.with(|s| assert!(!s.channels.values().any(|c| c.name == "Agent Runs 2")));
        assert_eq!(state.store().categories().await.unwrap().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_loop_stops_on_shutdown() {
        let (state, _) = fixture::state(fixture::settings());
        let shutdown = Shutdown::new();
        let task = tokio::spawn(run(state, Duration::from_secs(60), shutdown.clone(), None));
        tokio::time::advance(Duration::from_secs(120)).await;
        shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("retention loop did not stop")
            .unwrap();
    }
}
