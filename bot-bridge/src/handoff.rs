//! Hand-offs (issue 18): a watcher whose pod ends hands its undelivered
//! messages to bot-bridge (`POST /v1/runs/{id}/handoff`, see
//! `api::handoff`), which stores them before answering and delivers them
//! through the run's webhook at the channel's pace, in `seq` order, then
//! takes `complete`'s path when the hand-off asked for it.
//!
//! The store is the queue: a message is pending until Discord answered 2xx
//! (delivered) or 400 (dead-lettered, kept). The drainer ([`run`]) reads its
//! work from the store on every scan, so a restart resumes where the last
//! process stopped; a kill between Discord's answer and the mark re-sends
//! that one message.
//!
//! One request at a time per webhook: each run is drained by one worker, one
//! message after the other, and every send holds a permit of the drainer's
//! own [`Limiter`] keyed by the webhook, whose bucket (no headers recorded)
//! admits one request until the previous one settled. The same limiter keeps
//! each channel within its per-minute message window.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use ::discord::ratelimit::{Limiter, LimiterConfig, RateLimitHeaders};
use ops::backoff::Backoff;
use ops::health::Heartbeat;
use ops::Shutdown;
use serde::Deserialize;
use serde_json::Value;

use crate::app::AppState;
use crate::config::RunContainer;
use crate::events::{
    ErrorKind, HandoffBacklog, HandoffCounted, HandoffMessageOutcome, HandoffStalled,
};
use crate::guild::DiscordError;
use crate::reconcile::telemetry::FinalizeReason;
use crate::runs::{now_unix, RunsError};
use crate::store::{HandoffMessage, HandoffOutcome, HandoffStored, RunStatus};

/// Most messages one hand-off request may carry; larger backlogs come in
/// several requests, each idempotent.
pub const MAX_MESSAGES: usize = 1000;
/// Largest hand-off request body (the rest of the API takes 256 KiB).
pub const BODY_LIMIT: usize = 16 * 1024 * 1024;
/// Hand-off bodies read and parsed at once; more wait their turn before
/// their body is read. A body's parsed form takes about twice its size, so
/// this keeps a burst of pods ending at once to ~100 MiB of the chart's
/// 256 MiB limit (a typical hand-off is far smaller and takes milliseconds).
pub const CONCURRENT_BODIES: usize = 2;
/// Discord's limit on embeds per message.
pub const MAX_EMBEDS: usize = 10;

/// The body of `POST /v1/runs/{id}/handoff`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandoffRequest {
    #[serde(default)]
    pub messages: Vec<WireMessage>,
    /// Present: complete the run once every message is delivered.
    #[serde(default)]
    pub complete: Option<WireComplete>,
    /// When the watcher's channel accepted its last messages (unix ms,
    /// oldest first): delivery continues the channel's pace from there
    /// instead of starting a window of its own.
    #[serde(default)]
    pub channel_sends_unix_ms: Vec<u64>,
}

/// At most this many of a hand-off's `channel_sends_unix_ms` are kept (the
/// newest): a channel window holds 30.
pub const MAX_CHANNEL_SENDS: usize = 100;

/// One message as the watcher sends it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireMessage {
    pub seq: u64,
    pub payload: Value,
}

/// `complete` of a hand-off: what `POST .../complete` would carry.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireComplete {
    #[serde(default)]
    pub summary: Option<Value>,
}

/// Why a hand-off request is refused before anything is stored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Invalid {
    /// 413: more than [`MAX_MESSAGES`].
    #[error(
        "{0} messages in one hand-off; at most {MAX_MESSAGES}, send the rest in another request"
    )]
    TooMany(usize),
    /// 400, naming the field and the seq.
    #[error("{0}")]
    Bad(String),
}

/// A validated hand-off: its messages in `seq` order and its `complete`.
#[derive(Debug)]
pub struct Handoff {
    pub messages: Vec<HandoffMessage>,
    pub complete: Option<Option<Value>>,
    /// The newest [`MAX_CHANNEL_SENDS`] of `channel_sends_unix_ms`, oldest
    /// first (advisory: never a reason to refuse a hand-off).
    pub channel_sends: Vec<i64>,
}

/// Checks a request against the contract (DESIGN.md §3): at most
/// [`MAX_MESSAGES`], `seq` strictly increasing and at most `i64::MAX`, each
/// payload an object with `content` or `embeds` (at most [`MAX_EMBEDS`]).
/// The first bad message is named by its index and `seq`.
pub fn validate(req: HandoffRequest) -> Result<Handoff, Invalid> {
    if req.messages.len() > MAX_MESSAGES {
        return Err(Invalid::TooMany(req.messages.len()));
    }
    let mut previous: Option<u64> = None;
    for (i, m) in req.messages.iter().enumerate() {
        let seq = m.seq;
        let at = |what: String| Invalid::Bad(format!("messages[{i}] (seq {seq}): {what}"));
        if i64::try_from(seq).is_err() {
            return Err(at(format!(
                "seq is above the largest allowed, {}",
                i64::MAX
            )));
        }
        if let Some(p) = previous.filter(|p| seq <= *p) {
            return Err(at(format!(
                "seq must be greater than the previous message's seq {p}"
            )));
        }
        previous = Some(seq);
        check_payload(&m.payload).map_err(at)?;
    }
    let mut channel_sends: Vec<i64> = req
        .channel_sends_unix_ms
        .iter()
        .filter_map(|t| i64::try_from(*t).ok())
        .collect();
    channel_sends.sort_unstable();
    let skip = channel_sends.len().saturating_sub(MAX_CHANNEL_SENDS);
    channel_sends.drain(..skip);
    Ok(Handoff {
        channel_sends,
        messages: req
            .messages
            .into_iter()
            .map(|m| HandoffMessage {
                seq: m.seq,
                payload: m.payload,
            })
            .collect(),
        complete: req.complete.map(|c| c.summary),
    })
}

/// The basic shape of a webhook body; the watcher's renderer already kept it
/// within Discord's limits, so this only catches a body Discord cannot take.
fn check_payload(payload: &Value) -> Result<(), String> {
    let Some(body) = payload.as_object() else {
        return Err("payload must be a JSON object".into());
    };
    let embeds = match body.get("embeds") {
        None | Some(Value::Null) => 0,
        Some(Value::Array(e)) if e.len() <= MAX_EMBEDS => {
            if !e.iter().all(Value::is_object) {
                return Err("payload.embeds must hold objects".into());
            }
            e.len()
        }
        Some(Value::Array(e)) => {
            return Err(format!(
                "payload.embeds has {} embeds; Discord takes at most {MAX_EMBEDS}",
                e.len()
            ))
        }
        Some(_) => return Err("payload.embeds must be an array".into()),
    };
    let content = match body.get("content") {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) => !s.is_empty(),
        Some(_) => return Err("payload.content must be a string".into()),
    };
    if embeds == 0 && !content {
        return Err("payload needs content or embeds".into());
    }
    Ok(())
}

/// What a stored hand-off answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    pub accepted: u64,
    pub duplicates: u64,
    pub pending: u64,
    /// Whether the run was active (202) or already finished (a retry: 200).
    pub active: bool,
}

impl AppState {
    /// `POST /v1/runs/{id}/handoff`: authorises like `complete`, stores the
    /// messages in one transaction (and the channel's recent sends, for the
    /// drainer's pace) and wakes the drainer.
    pub async fn accept_handoff(
        &self,
        run_id: &str,
        handoff: Handoff,
        caller: &crate::access::Caller,
    ) -> Result<Accepted, RunsError> {
        // No provisioning lock: the store keeps this run's finish and this
        // hand-off apart (`finish_lock`), and waiting here behind another
        // run's provisioning would outlast the watcher's shutdown budget.
        let run = self.stored_run(run_id).await?;
        self.authorize(&run, caller).await?;
        if !handoff.channel_sends.is_empty() {
            // Before the messages, so the drainer they wake finds it.
            self.stored(self.store().pace_handoff(
                run_id.to_owned(),
                handoff.channel_sends,
                now_unix(),
            ))
            .await?;
        }
        let stored = self
            .stored(self.store().put_handoff(
                run_id.to_owned(),
                handoff.messages,
                handoff.complete,
                now_unix(),
            ))
            .await?;
        match stored {
            HandoffStored::Stored {
                accepted,
                duplicates,
                pending,
            } => {
                let m = &self.metrics().handoff;
                HandoffCounted {
                    run_id,
                    outcome: HandoffMessageOutcome::Accepted,
                    n: accepted,
                }
                .emit(m);
                HandoffCounted {
                    run_id,
                    outcome: HandoffMessageOutcome::Duplicate,
                    n: duplicates,
                }
                .emit(m);
                self.inner.handoff_wake.notify_one();
                Ok(Accepted {
                    accepted,
                    duplicates,
                    pending,
                    active: run.status == RunStatus::Active,
                })
            }
            HandoffStored::Finished { .. } => Err(RunsError::RunFinished),
            HandoffStored::UnknownRun => Err(RunsError::NotFound),
        }
    }
}

/// How the drainer paces and retries.
#[derive(Debug, Clone, Copy)]
pub struct DrainConfig {
    /// Messages per channel per `channel_window` (Discord: 30 per 60 s).
    pub channel_messages_per_minute: u32,
    pub channel_window: Duration,
    /// Between retries of a 5xx or network failure (after the REST client's
    /// own retries).
    pub backoff: Backoff,
    /// How often the store is scanned for work (a new hand-off wakes it at
    /// once) and the backlog gauges are refreshed.
    pub scan_every: Duration,
    /// How long a run whose webhook is gone (401/403/404) waits before the
    /// next try; its messages stay pending meanwhile.
    pub stalled_retry: Duration,
}

impl Default for DrainConfig {
    fn default() -> Self {
        Self {
            channel_messages_per_minute: ::discord::ratelimit::DEFAULT_CHANNEL_MESSAGES_PER_MINUTE,
            channel_window: ::discord::ratelimit::CHANNEL_WINDOW,
            backoff: Backoff::default(),
            scan_every: Duration::from_secs(2),
            stalled_retry: Duration::from_secs(600),
        }
    }
}

/// How one run's worker ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WorkerEnd {
    /// Nothing left to deliver (and the run completed when asked).
    Drained,
    /// The webhook is gone; retry after [`DrainConfig::stalled_retry`].
    Stalled,
    /// Shutdown.
    Stopped,
}

/// The drainer: scans the store, keeps one worker per run with an unfinished
/// hand-off, refreshes the backlog gauges; until `shutdown`. Workers finish
/// the send in flight, then stop.
pub async fn run(
    state: AppState,
    cfg: DrainConfig,
    shutdown: Shutdown,
    heartbeat: Option<Heartbeat>,
) {
    let limiter = Limiter::new(LimiterConfig {
        // bot-bridge's REST client keeps the global limit.
        global_per_second: 0,
        channel_messages_per_minute: Some(cfg.channel_messages_per_minute),
        channel_window: cfg.channel_window,
    });
    let mut workers: HashMap<String, tokio::task::JoinHandle<WorkerEnd>> = HashMap::new();
    let mut stalled: HashMap<String, tokio::time::Instant> = HashMap::new();
    // Runs that had a worker since their hand-off last drained cleanly: only
    // the first of their workers logs a stall, so a run whose webhook is
    // gone is logged once, not every `stalled_retry`.
    let mut tried: HashSet<String> = HashSet::new();
    loop {
        if let Some(h) = &heartbeat {
            h.beat();
        }
        let finished: Vec<String> = workers
            .iter()
            .filter(|(_, h)| h.is_finished())
            .map(|(id, _)| id.clone())
            .collect();
        for run_id in finished {
            if let Some(h) = workers.remove(&run_id) {
                match h.await {
                    Ok(WorkerEnd::Stalled) => {
                        stalled.insert(run_id, tokio::time::Instant::now() + cfg.stalled_retry);
                    }
                    Ok(_) => {
                        tried.remove(&run_id);
                    }
                    Err(e) => tracing::error!(run_id, error = %e, "hand-off worker failed"),
                }
            }
        }
        match state.store().handoff_runs().await {
            Ok(runs) => {
                // No `store_ok` here: a read succeeds while another process
                // holds the write lock; readiness follows `watch_store`.
                let now = now_unix();
                HandoffBacklog {
                    pending: runs.iter().map(|r| r.pending).sum(),
                    oldest_age_seconds: runs
                        .iter()
                        .filter_map(|r| r.oldest_pending_at)
                        .min()
                        .map_or(0, |t| now.saturating_sub(t).max(0)),
                }
                .emit(&state.metrics().handoff);
                let now = tokio::time::Instant::now();
                stalled.retain(|_, until| *until > now);
                for r in runs {
                    if workers.contains_key(&r.run_id) || stalled.contains_key(&r.run_id) {
                        continue;
                    }
                    let first_try = tried.insert(r.run_id.clone());
                    let worker = Worker {
                        state: state.clone(),
                        limiter: limiter.clone(),
                        cfg,
                        shutdown: shutdown.clone(),
                        run_id: r.run_id.clone(),
                        log_stall: first_try,
                        seed_pace: first_try,
                    };
                    workers.insert(r.run_id, tokio::spawn(worker.drain()));
                }
            }
            Err(e) => state.report(ErrorKind::Store, None, &e),
        }
        tokio::select! {
            () = shutdown.wait() => break,
            () = tokio::time::sleep(cfg.scan_every) => {}
            () = state.inner.handoff_wake.notified() => {}
        }
    }
    for (_, h) in workers {
        let _ = h.await;
    }
}

/// Drains one run's pending messages in `seq` order.
struct Worker {
    state: AppState,
    limiter: Limiter,
    cfg: DrainConfig,
    shutdown: Shutdown,
    run_id: String,
    /// Whether a stall of this run is logged (once per stall, not per try).
    log_stall: bool,
    /// Whether the watcher's recent channel sends are counted first (once:
    /// a later worker of the run would count them twice).
    seed_pace: bool,
}

/// A store read of the drainer: failures are reported like every store
/// failure, but a success does not mark the store healthy (unlike
/// `AppState::stored`): reads succeed while another process holds the write
/// lock, and the drainer reads all the time while it works, which would
/// flip readiness back while `watch_store` sees the store locked.
async fn read<T>(
    state: &AppState,
    fut: crate::store::StoreFuture<'_, T>,
) -> Result<T, crate::store::StoreError> {
    fut.await
        .inspect_err(|e| state.report(ErrorKind::Store, None, e))
}

/// How one message's delivery ended (retries happen before).
enum Sent {
    Delivered,
    /// 400 and other 4xx: Discord will never take it.
    Rejected(DiscordError),
    /// 401/403/404: the webhook is gone.
    Gone(DiscordError),
}

impl Worker {
    async fn drain(self) -> WorkerEnd {
        if self.seed_pace {
            self.keep_the_channels_pace().await;
        }
        let mut failures = 0u32;
        loop {
            if self.shutdown.is_triggered() {
                return WorkerEnd::Stopped;
            }
            match self.step().await {
                Ok(Some(end)) => return end,
                Ok(None) => failures = 0,
                Err(e) => {
                    // Store or Discord failure outside a send (reported where
                    // it happened): try again after a backoff.
                    tracing::debug!(run_id = self.run_id, error = %e, "hand-off step failed");
                    if !self.pause(failures).await {
                        return WorkerEnd::Stopped;
                    }
                    failures = failures.saturating_add(1);
                }
            }
        }
    }

    /// Counts the messages the watcher's channel accepted just before the
    /// hand-off as this drainer's own, so delivery continues the channel's
    /// pace instead of starting a fresh window (which Discord answered with
    /// a 429 or two). Best effort: without it the first messages may meet one.
    async fn keep_the_channels_pace(&self) {
        let state = &self.state;
        let pacing = state.store().handoff_pacing(self.run_id.clone()).await;
        let run = state.store().get_run(self.run_id.clone()).await;
        let (Ok(sends), Ok(Some(run))) = (pacing, run) else {
            return;
        };
        let Some(channel_key) = run.channel_id.as_deref().or(run.webhook_id.as_deref()) else {
            return;
        };
        let now_ms = i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis(),
        )
        .unwrap_or(i64::MAX);
        // A send time ahead of this clock (skew between pods) counts as now.
        let ages: Vec<Duration> = sends
            .iter()
            .map(|t| Duration::from_millis(u64::try_from(now_ms - t).unwrap_or(0)))
            .collect();
        self.limiter.seed_channel(channel_key, &ages);
    }

    /// Waits the backoff of retry `attempt`; `false` on shutdown.
    async fn pause(&self, attempt: u32) -> bool {
        tokio::select! {
            () = self.shutdown.wait() => false,
            () = tokio::time::sleep(self.cfg.backoff.delay(attempt)) => true,
        }
    }

    /// Delivers the next message, or completes the run when none is left:
    /// `Some(end)` when this worker is done.
    async fn step(&self) -> Result<Option<WorkerEnd>, RunsError> {
        let state = &self.state;
        let run_id = self.run_id.as_str();
        let next = read(state, state.store().next_handoff(run_id.to_owned())).await?;
        let Some(message) = next else {
            return self.complete().await;
        };
        let run = read(state, state.store().get_run(run_id.to_owned()))
            .await?
            .ok_or(RunsError::NotFound)?;
        let (Some(webhook_id), Some(token)) = (&run.webhook_id, &run.webhook_token) else {
            self.stall(&DiscordError::NotFound);
            return Ok(Some(WorkerEnd::Stalled));
        };
        let thread = match state.settings().run_container {
            RunContainer::Thread => run.channel_id.as_deref(),
            RunContainer::Channel => None,
        };
        let channel_key = run.channel_id.as_deref().unwrap_or(webhook_id);
        let route = format!("webhook:{webhook_id}");
        let mut attempt = 0u32;
        let outcome: Sent = loop {
            let permit = tokio::select! {
                () = self.shutdown.wait() => return Ok(Some(WorkerEnd::Stopped)),
                p = self.limiter.acquire_message(&route, channel_key) => p,
            };
            // Not cancelled by shutdown: the answer decides the mark, and an
            // abandoned request would be re-sent after the restart.
            let result = state
                .discord()
                .execute_webhook(webhook_id, token, thread, &message.payload)
                .await;
            let retry = match result {
                Ok(()) => {
                    permit.done(&RateLimitHeaders::default());
                    break Sent::Delivered;
                }
                Err(e @ DiscordError::NotFound) => {
                    permit.refused(&RateLimitHeaders::default());
                    break Sent::Gone(e);
                }
                Err(e @ DiscordError::Http { status, .. }) => {
                    permit.refused(&RateLimitHeaders::default());
                    match status {
                        401 | 403 => break Sent::Gone(e),
                        400..=499 if status != 429 => break Sent::Rejected(e),
                        _ => e,
                    }
                }
                // Discord may have taken it: the slot stays taken (dropped
                // unrecorded), the message is sent again.
                Err(e @ DiscordError::Transport(_)) => {
                    drop(permit);
                    e
                }
            };
            // 429 past the REST client's own waits, 5xx, network: retry.
            state.report(ErrorKind::Discord, Some(run_id), &retry);
            if !self.pause(attempt).await {
                return Ok(Some(WorkerEnd::Stopped));
            }
            attempt = attempt.saturating_add(1);
        };
        let (mark, counted) = match outcome {
            Sent::Delivered => {
                state.discord_ok();
                (HandoffOutcome::Delivered, HandoffMessageOutcome::Delivered)
            }
            Sent::Rejected(e) => {
                tracing::warn!(
                    run_id,
                    seq = message.seq,
                    error = %e,
                    "hand-off message rejected by Discord; dead-lettered"
                );
                (HandoffOutcome::Rejected, HandoffMessageOutcome::Rejected)
            }
            Sent::Gone(e) => {
                self.stall(&e);
                return Ok(Some(WorkerEnd::Stalled));
            }
        };
        state
            .stored(
                state
                    .store()
                    .mark_handoff(run_id.to_owned(), message.seq, mark, now_unix()),
            )
            .await?;
        HandoffCounted {
            run_id,
            outcome: counted,
            n: 1,
        }
        .emit(&state.metrics().handoff);
        Ok(None)
    }

    /// No message left: takes `complete`'s path if the hand-off asked for it
    /// and the run is still active. Under the provisioning lock and the run's
    /// finish lock, re-checking that nothing arrived meanwhile.
    /// `None` when messages arrived meanwhile (the next step delivers them).
    async fn complete(&self) -> Result<Option<WorkerEnd>, RunsError> {
        let state = &self.state;
        let _guard = state.stored(state.provision_lock()).await?;
        let _finishing = state
            .stored(state.store().finish_lock(self.run_id.clone()))
            .await?;
        let runs = read(state, state.store().handoff_runs()).await?;
        let Some(entry) = runs.into_iter().find(|r| r.run_id == self.run_id) else {
            return Ok(Some(WorkerEnd::Drained));
        };
        if entry.pending > 0 {
            return Ok(None);
        }
        let Some(summary) = entry.complete else {
            return Ok(Some(WorkerEnd::Drained));
        };
        let run = read(state, state.store().get_run(self.run_id.clone()))
            .await?
            .ok_or(RunsError::NotFound)?;
        if run.status == RunStatus::Active {
            state
                .finish(run, summary, FinalizeReason::Completed)
                .await?;
        }
        Ok(Some(WorkerEnd::Drained))
    }

    fn stall(&self, error: &DiscordError) {
        HandoffStalled {
            run_id: &self.run_id,
            error,
            log: self.log_stall,
        }
        .emit(self.state.metrics());
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::app::fixture;
    use crate::app::fixture::{new_run, owner};
    use crate::events::HandoffMessageOutcome as Counted;

    fn request(seqs: &[u64], complete: bool) -> HandoffRequest {
        HandoffRequest {
            messages: seqs
                .iter()
                .map(|&seq| WireMessage {
                    seq,
                    payload: json!({"content": format!("m{seq}")}),
                })
                .collect(),
            complete: complete.then(|| WireComplete {
                summary: Some(json!({"events": seqs.len()})),
            }),
            channel_sends_unix_ms: Vec::new(),
        }
    }

    #[test]
    fn validation_names_the_first_bad_message() {
        let bad = |req: HandoffRequest| match validate(req) {
            Err(Invalid::Bad(m)) => m,
            other => panic!("not refused: {other:?}"),
        };
        let m = bad(request(&[1, 3, 3], false));
        assert!(m.starts_with("messages[2] (seq 3)"), "{m}");
        let m = bad(request(&[5, 4], false));
        assert!(m.contains("previous message's seq 5"), "{m}");
        let m = bad(request(&[u64::MAX], false));
        assert!(m.contains("largest allowed"), "{m}");
        for (payload, names) in [
            (json!("text"), "JSON object"),
            (json!({"embeds": "x"}), "payload.embeds"),
            (json!({"embeds": vec![json!({}); 11]}), "11 embeds"),
            (json!({"embeds": [1]}), "objects"),
            (json!({"content": 5}), "payload.content"),
            (json!({"content": ""}), "content or embeds"),
            (json!({}), "content or embeds"),
        ] {
            let mut req = request(&[1, 2], false);
            req.messages[1].payload = payload;
            let m = bad(req);
            assert!(
                m.starts_with("messages[1] (seq 2)") && m.contains(names),
                "{m}"
            );
        }
        let many: Vec<u64> = (1..=1001).collect();
        assert_eq!(
            validate(request(&many, false)).unwrap_err(),
            Invalid::TooMany(1001)
        );
        let ok = validate(request(&[1, 2, 10], true)).unwrap();
        assert_eq!(ok.messages.len(), 3);
        assert_eq!(ok.complete, Some(Some(json!({"events": 3}))));
        // Only `complete`, no message, is a valid hand-off.
        assert!(validate(request(&[], true)).unwrap().messages.is_empty());
        // The channel's recent sends: sorted, the newest MAX_CHANNEL_SENDS kept.
        let mut req = request(&[1], false);
        req.channel_sends_unix_ms = (0..150).rev().collect();
        let sends = validate(req).unwrap().channel_sends;
        assert_eq!(sends.len(), MAX_CHANNEL_SENDS);
        assert_eq!((sends[0], sends[99]), (50, 149));
    }

    async fn handed_off(state: &AppState, short: &str, seqs: &[u64]) -> String {
        let (run, _) = state.provision(new_run(short), &owner()).await.unwrap();
        let handoff = validate(request(seqs, true)).unwrap();
        let a = state
            .accept_handoff(&run.run_id, handoff, &owner())
            .await
            .unwrap();
        assert_eq!(a.accepted, seqs.len() as u64);
        run.run_id
    }

    fn fast() -> DrainConfig {
        DrainConfig {
            scan_every: Duration::from_millis(20),
            backoff: Backoff::new(Duration::from_millis(10), Duration::from_millis(50)),
            ..DrainConfig::default()
        }
    }

    async fn status(state: &AppState, run_id: &str) -> RunStatus {
        state.stored_run(run_id).await.unwrap().status
    }

    #[tokio::test]
    async fn a_handoff_is_posted_in_order_then_the_run_completes() {
        let (state, discord) = fixture::state(fixture::settings());
        let run_id = handed_off(&state, "a", &[10, 20, 30]).await;
        let shutdown = Shutdown::new();
        let drainer = tokio::spawn(run(state.clone(), fast(), shutdown.clone(), None));
        tokio::time::timeout(Duration::from_secs(10), async {
            while status(&state, &run_id).await == RunStatus::Active {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the run was not completed after its hand-off");
        let posted: Vec<Value> = discord.with(|s| s.posts.clone());
        let contents: Vec<&str> = posted
            .iter()
            .filter_map(|p| p["content"].as_str())
            .collect();
        assert_eq!(contents, ["m10", "m20", "m30"]);
        // `complete`'s path: webhook revoked, summary stored.
        let run = state.stored_run(&run_id).await.unwrap();
        assert!(run.webhook_id.is_none());
        assert_eq!(run.summary, Some(json!({"events": 3})));
        assert!(discord.with(|s| s.webhooks.is_empty()));
        assert_eq!(state.metrics().handoff.count(Counted::Delivered), 3);
        shutdown.trigger();
        drainer.await.unwrap();
    }

    /// A watcher has a fraction of a second at shutdown: its hand-off must not
    /// queue behind another run's provisioning (which holds the fleet-wide
    /// lock across Discord calls).
    #[tokio::test]
    async fn a_handoff_never_waits_behind_another_runs_provisioning() {
        let (state, _discord) = fixture::state(fixture::settings());
        let (run, _) = state.provision(new_run("a"), &owner()).await.unwrap();
        let provisioning = state.store().provision_lock().await.unwrap();
        let handoff = validate(request(&[1, 2], true)).unwrap();
        let accepted = tokio::time::timeout(
            Duration::from_secs(5),
            state.accept_handoff(&run.run_id, handoff, &owner()),
        )
        .await
        .expect("the hand-off waited for the provisioning lock")
        .unwrap();
        assert_eq!(accepted.accepted, 2);
        drop(provisioning);
    }

    #[tokio::test]
    async fn the_reconciler_and_complete_leave_a_draining_run_to_the_drainer() {
        let (state, discord) = fixture::state(fixture::settings());
        let run_id = handed_off(&state, "a", &[1, 2]).await;
        let ending = crate::reconcile::Ending {
            reason: FinalizeReason::Deleted,
            detail: "pod deleted".into(),
        };
        // The pod is gone after handing off: that is no reason to end the run.
        assert!(!state.finalize(&run_id, &ending).await.unwrap());
        // An explicit complete joins the hand-off instead of revoking the
        // webhook under its pending messages.
        let run = state.complete(&run_id, None, &owner()).await.unwrap();
        assert_eq!(run.status, RunStatus::Active);
        assert!(discord.with(|s| s.posts.is_empty()));
        let shutdown = Shutdown::new();
        let drainer = tokio::spawn(run_drain(state.clone(), shutdown.clone()));
        tokio::time::timeout(Duration::from_secs(10), async {
            while status(&state, &run_id).await == RunStatus::Active {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("not completed");
        assert_eq!(discord.with(|s| s.posts.len()), 2);
        // The hand-off's own summary won: it came first.
        assert_eq!(
            state.stored_run(&run_id).await.unwrap().summary,
            Some(json!({"events": 2}))
        );
        shutdown.trigger();
        drainer.await.unwrap();
    }

    async fn run_drain(state: AppState, shutdown: Shutdown) {
        run(state, fast(), shutdown, None).await;
    }

    /// The watcher filled the channel's window just before it handed over:
    /// delivery waits for that window instead of starting one of its own
    /// (which met Discord's per-channel limit with a 429).
    #[tokio::test(start_paused = true)]
    async fn delivery_continues_the_watchers_channel_pace() {
        let (state, discord) = fixture::state(fixture::settings());
        let (run, _) = state.provision(new_run("a"), &owner()).await.unwrap();
        let now_ms = u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis(),
        )
        .unwrap();
        let mut req = request(&[1, 2], true);
        // 30 messages accepted over the last 10 s: the window (60 s) is full
        // until 50 s from now.
        req.channel_sends_unix_ms = (0..30).map(|i| now_ms - 10_000 + i * 300).collect();
        let handoff = validate(req).unwrap();
        state
            .accept_handoff(&run.run_id, handoff, &owner())
            .await
            .unwrap();
        let start = tokio::time::Instant::now();
        let shutdown = Shutdown::new();
        let drainer = tokio::spawn(run_drain(state.clone(), shutdown.clone()));
        while discord.with(|s| s.posts.is_empty()) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_secs(49) && waited <= Duration::from_secs(53),
            "first hand-off message after {waited:?}"
        );
        shutdown.trigger();
        drainer.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_gone_webhook_keeps_messages_pending_without_spinning() {
        let (state, discord) = fixture::state(fixture::settings());
        let run_id = handed_off(&state, "a", &[1, 2, 3]).await;
        // Someone deleted the webhook in Discord.
        discord.with(|s| s.webhooks.clear());
        let cfg = DrainConfig {
            stalled_retry: Duration::from_secs(600),
            ..fast()
        };
        let shutdown = Shutdown::new();
        let drainer = tokio::spawn(run(state.clone(), cfg, shutdown.clone(), None));
        tokio::time::sleep(Duration::from_secs(900)).await;
        let tries = discord.with(|s| {
            s.calls
                .iter()
                .filter(|c| c.starts_with("execute_webhook"))
                .count()
        });
        // One try, one more after `stalled_retry`: no spinning on a 404.
        assert_eq!(tries, 2, "{:?}", discord.with(|s| s.calls.clone()));
        let left = state.store().handoff_runs().await.unwrap();
        assert_eq!(left[0].pending, 3);
        assert_eq!(status(&state, &run_id).await, RunStatus::Active);
        shutdown.trigger();
        drainer.await.unwrap();
    }
}
