//! The sink loop: records from the queue are rendered, batched and delivered,
//! acknowledgements advance the checkpoint, and the session ends with exactly
//! one summary.
//!
//! Liveness: the loop beats its heartbeat on every turn, and every long wait in
//! it declares its bound (a send, with its permit waits, attempts, retries and
//! re-provisioning, is bounded by `DELIVERY_MAX_ELAPSED` plus [`SEND_SLACK`]; a
//! checkpoint write by [`DISK_BOUND`]), so an outage never fails `/livez`; only
//! a wait that outlives its bound does.
//!
//! Shutdown: one deadline, fixed when shutdown starts ([`Drain`]), is split in
//! three stages: the backlog (the send in flight included, cut at the stage's
//! end), the summary, and bot-bridge's `complete`; each later stage keeps its
//! share whatever the earlier ones were doing.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use ops::health::Heartbeat;
use ops::Shutdown;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::atomic_file::{StateFile, StateObserver};
use crate::checkpoint::{AckTracker, Checkpoint, CheckpointStore};
use crate::deliver::batch::{Batch, Batcher, Unit};
use crate::deliver::webhook::{Sent, WebhookSender};
use crate::deliver::DeliveryObserver;
use crate::delivered::DeliveredLog;
use crate::events::Telemetry;
use crate::queue::{QueueRx, Record};
use crate::render::{console, Renderer};
use crate::transcript::EventKind;

/// How often the checkpoint may be written (DESIGN.md: at most every 250 ms).
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(250);

/// Beyond `DELIVERY_MAX_ELAPSED`, what one send may still take before the loop
/// counts as wedged: the last request's timeout, a re-provisioning call and the
/// dead-letter write.
pub const SEND_SLACK: Duration = Duration::from_secs(120);

/// Longest a checkpoint or journal write may take before the loop counts as
/// wedged (a slow disk is not stuck; a hung one is).
pub const DISK_BOUND: Duration = Duration::from_secs(120);

/// The share of the shutdown budget kept for bot-bridge's `complete` call
/// (at most this, at most a fifth of the budget).
pub const COMPLETE_SHARE: Duration = Duration::from_millis(750);

/// The least time kept for the summary, however fast Discord was.
const MIN_SUMMARY_SHARE: Duration = Duration::from_millis(500);

/// The shutdown deadline: one instant, fixed when shutdown starts (by whichever
/// stage sees it first: `app` notes it as soon as the signal arrives), shared
/// by every stage. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Drain {
    shutdown: Shutdown,
    budget: Duration,
    deadline: Arc<OnceLock<Instant>>,
}

impl Drain {
    pub fn new(shutdown: Shutdown, budget: Duration) -> Self {
        Self {
            shutdown,
            budget,
            deadline: Arc::new(OnceLock::new()),
        }
    }

    pub fn budget(&self) -> Duration {
        self.budget
    }

    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    /// `None` until shutdown starts; then the one deadline of the drain.
    pub fn deadline(&self) -> Option<Instant> {
        self.shutdown
            .is_triggered()
            .then(|| *self.deadline.get_or_init(|| Instant::now() + self.budget))
    }

    /// Waits for shutdown to start; its deadline.
    pub async fn started(&self) -> Instant {
        self.shutdown.wait().await;
        *self.deadline.get_or_init(|| Instant::now() + self.budget)
    }

    /// Where the stages end for a drain ending at `deadline`, when a request
    /// to Discord takes up to `latency` (see [`Pipeline::latency_estimate`]):
    /// `complete` keeps [`COMPLETE_SHARE`] (at most a fifth of the budget);
    /// the summary keeps two such requests (at least [`MIN_SUMMARY_SHARE`], at
    /// most four fifths of the rest); the backlog gets what is left before.
    pub fn plan(&self, deadline: Instant, latency: Duration) -> DrainPlan {
        let complete = COMPLETE_SHARE.min(self.budget / 5);
        let summary_max = (self.budget.saturating_sub(complete)) * 4 / 5;
        let summary = (latency * 2 + Duration::from_millis(250))
            .clamp(MIN_SUMMARY_SHARE.min(summary_max), summary_max);
        let summary_end = deadline.checked_sub(complete).unwrap_or(deadline);
        DrainPlan {
            backlog_end: summary_end.checked_sub(summary).unwrap_or(summary_end),
            summary_end,
            complete_end: deadline,
        }
    }
}

/// When each stage of a drain must be done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainPlan {
    /// The backlog (with the send in flight at the signal) is cut here.
    pub backlog_end: Instant,
    /// The summary is cut here.
    pub summary_end: Instant,
    /// bot-bridge's `complete` is cut here: the drain's deadline.
    pub complete_end: Instant,
}

/// Which stage a send belongs to, for where a drain cuts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Backlog,
    Summary,
}

/// What the pipeline persists beside the file offsets, in `Checkpoint::totals`,
/// so that a restart neither re-posts the header nor posts a second summary.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunState {
    pub header_posted: bool,
    #[serde(default)]
    pub stats: Option<serde_json::Value>,
}

/// Where rendered output goes.
pub enum Sink {
    /// Human-readable lines on stdout.
    Console { color: bool },
    /// The run's webhook.
    Webhook(Box<WebhookSender>),
}

/// Shared between the pipeline and the sink watchdog (metrics).
#[derive(Debug, Default)]
pub struct SinkState {
    /// When the oldest unit the pipeline holds (batched, in flight, retried or
    /// waiting for a permit) was read; `None` when it holds none. Records
    /// still in the queue are the queue's to tell.
    pub oldest_unacked: Option<Instant>,
}

pub struct Pipeline {
    pub renderer: Renderer,
    pub batcher: Batcher,
    pub tracker: AckTracker,
    pub store: CheckpointStore,
    /// Committed record uuids, journaled with each checkpoint write.
    pub delivered: DeliveredLog,
    pub checkpoint: Checkpoint,
    pub run_state: RunState,
    pub sink: Sink,
    pub telemetry: Arc<Telemetry>,
    pub sink_state: Arc<Mutex<SinkState>>,
    pub heartbeat: Heartbeat,
    /// The longest one send may take (see [`SEND_SLACK`]).
    pub send_bound: Duration,
    pub idle_complete_after: Option<Duration>,
    /// Called once after the summary was delivered (bot-bridge `complete`).
    pub on_complete: Option<
        Box<dyn FnOnce(serde_json::Value) -> futures::future::BoxFuture<'static, ()> + Send>,
    >,
    dirty: bool,
    last_save: Instant,
    last_record: Instant,
    started_wall: String,
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

impl Pipeline {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        renderer: Renderer,
        batcher: Batcher,
        store: CheckpointStore,
        delivered: DeliveredLog,
        checkpoint: Checkpoint,
        sink: Sink,
        telemetry: Arc<Telemetry>,
        sink_state: Arc<Mutex<SinkState>>,
        heartbeat: Heartbeat,
        idle_complete_after: Option<Duration>,
    ) -> Self {
        let run_state: RunState =
            serde_json::from_value(checkpoint.totals.clone()).unwrap_or_default();
        let mut renderer = renderer;
        if let Some(stats) = run_state
            .stats
            .clone()
            .and_then(|s| serde_json::from_value(s).ok())
        {
            renderer.restore_stats(stats);
        }
        Self {
            renderer,
            batcher,
            tracker: AckTracker::default(),
            store,
            delivered,
            checkpoint,
            run_state,
            sink,
            telemetry,
            sink_state,
            heartbeat,
            send_bound: Duration::from_secs(600) + SEND_SLACK,
            idle_complete_after,
            on_complete: None,
            dirty: false,
            last_save: Instant::now(),
            last_record: Instant::now(),
            started_wall: now_rfc3339(),
        }
    }

    /// Runs until the queue closes (ingest stopped), then posts the summary.
    /// `drain` starts the shutdown and bounds it from that moment.
    pub async fn run(mut self, mut rx: QueueRx, drain: Drain) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.heartbeat.beat();
            let draining = drain.deadline().is_some();
            if self.batcher.is_empty() {
                tokio::select! {
                    rec = rx.recv() => match rec {
                        Some(r) => self.absorb(r),
                        None => break,
                    },
                    _ = tick.tick() => {
                        self.on_tick(&rx, &drain).await;
                        continue;
                    }
                    _ = drain.started(), if !draining => continue,
                }
            }
            self.pull_available(&mut rx);
            if self.batcher.is_empty() {
                self.maybe_save();
                continue;
            }
            if let Some(d) = drain.deadline() {
                // The backlog may not eat the summary's and `complete`'s shares,
                // nor start a send it cannot finish.
                let latency = Self::latency_estimate(&self.telemetry);
                if Instant::now() + latency >= drain.plan(d, latency).backlog_end {
                    tracing::warn!(
                        "shutdown budget for the backlog spent; leaving the rest in the transcript"
                    );
                    break;
                }
            }
            self.deliver_one(&mut rx, &drain).await;
            self.maybe_save();
        }
        self.finish(&drain).await;
    }

    /// How long a request to Discord takes now: the slowest of the last few,
    /// or the one in flight if it has already taken longer.
    fn latency_estimate(telemetry: &Telemetry) -> Duration {
        let sink = telemetry.sink();
        let in_flight = sink
            .attempt_started
            .map(|t| t.elapsed())
            .unwrap_or_default();
        sink.recent_latency().max(in_flight)
    }

    /// When a drain cuts a `stage` that is under way: never before shutdown
    /// starts, then at the stage's end in the drain's plan, re-planned while
    /// the request in flight shows how slow Discord is now.
    async fn cut(drain: &Drain, telemetry: &Telemetry, stage: Stage) {
        let deadline = drain.started().await;
        loop {
            let plan = drain.plan(deadline, Self::latency_estimate(telemetry));
            let end = match stage {
                Stage::Backlog => plan.backlog_end,
                Stage::Summary => plan.summary_end,
            };
            let now = Instant::now();
            if now >= end {
                return;
            }
            tokio::time::sleep_until(end.min(now + Duration::from_millis(50))).await;
        }
    }

    /// Tells the watchdog the oldest unit the pipeline holds: the batcher's,
    /// or `in_flight`'s when older.
    fn publish_pending(&self, in_flight: Option<Instant>) {
        let oldest = match (in_flight, self.batcher.oldest()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Ok(mut s) = self.sink_state.lock() {
            s.oldest_unacked = oldest;
        }
    }

    fn pull_available(&mut self, rx: &mut QueueRx) {
        while !self.batcher.has_full_message() {
            match rx.try_recv() {
                Some(r) => self.absorb(r),
                None => break,
            }
        }
        self.telemetry.metrics.queue_depth.set(rx.depth() as i64);
        self.telemetry.metrics.queue_bytes.set(rx.bytes() as i64);
        self.publish_pending(None);
    }

    fn absorb(&mut self, record: Record) {
        self.last_record = Instant::now();
        let mut units = Vec::new();
        for ev in &record.events {
            if let EventKind::Usage { usage, .. } = &ev.kind {
                self.telemetry.usage(usage);
            }
            let rendered = self.renderer.render(ev);
            for f in &rendered.truncated {
                self.telemetry.truncated(f.as_str());
            }
            match &self.sink {
                Sink::Console { color } => {
                    if let Some(line) = console::line(ev, *color) {
                        println!("{line}");
                    }
                }
                Sink::Webhook(_) => {
                    if !rendered.embeds.is_empty() || !rendered.files.is_empty() {
                        units.push(Unit {
                            embeds: rendered.embeds,
                            files: rendered.files,
                            pos: Some(record.pos.clone()),
                            read_at: record.read_at,
                        });
                    }
                }
            }
        }
        self.telemetry.cost(self.renderer.stats().priced_cost_usd);
        if !units.is_empty() && !self.run_state.header_posted {
            let header = self.renderer.header(&self.started_wall);
            self.batcher.push(Unit {
                embeds: vec![header],
                files: vec![],
                pos: None,
                read_at: Instant::now(),
            });
            self.run_state.header_posted = true;
        }
        let uuid = record.events.iter().find_map(|e| e.uuid.as_deref());
        self.tracker
            .track(&record.pos, &record.identity, units.len(), uuid);
        if units.is_empty() {
            self.telemetry.acked(record.read_at.elapsed());
            self.dirty = true;
        }
        for u in units {
            self.batcher.push(u);
        }
    }

    async fn deliver_one(&mut self, rx: &mut QueueRx, drain: &Drain) {
        let Sink::Webhook(sender) = &mut self.sink else {
            return;
        };
        // Waiting for a permit (rate limits, the channel window) is part of
        // the send's bound, and a drain cuts it like the send.
        let acquired = {
            let _waiting = self.heartbeat.waiting(self.send_bound);
            tokio::select! {
                () = sender.acquire() => true,
                () = Self::cut(drain, &self.telemetry, Stage::Backlog) => false,
            }
        };
        if !acquired {
            return;
        }
        // Coalesce what arrived while waiting for the permit.
        self.pull_available(rx);
        let Some(batch) = self.batcher.next_batch() else {
            return;
        };
        self.send_batch(batch, drain, Stage::Backlog, true).await;
    }

    /// Sends one batch and acknowledges its units; `false` when a drain cut it
    /// (its records stay unacknowledged in the transcript).
    async fn send_batch(
        &mut self,
        mut batch: Batch,
        drain: &Drain,
        stage: Stage,
        acquired: bool,
    ) -> bool {
        let Sink::Webhook(sender) = &mut self.sink else {
            return false;
        };
        for f in discord::truncate::fit_message(&mut batch.message) {
            self.telemetry.truncated(f.as_str());
        }
        let in_flight = batch.units.iter().map(|u| u.read_at).min();
        let oldest = match (in_flight, self.batcher.oldest()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Ok(mut s) = self.sink_state.lock() {
            s.oldest_unacked = oldest;
        }
        let outcome = {
            let _waiting = self.heartbeat.waiting(self.send_bound);
            tokio::select! {
                o = sender.send(&batch.message, acquired) => Some(o),
                () = Self::cut(drain, &self.telemetry, stage) => None,
            }
        };
        let Some(outcome) = outcome else {
            tracing::warn!(
                stage = ?stage,
                "shutdown cut a send to keep the budget's later stages; its records stay in the transcript"
            );
            self.publish_pending(None);
            return false;
        };
        if outcome != Sent::Delivered {
            tracing::debug!(?outcome, "message not delivered");
        }
        self.publish_pending(None);
        for unit in &batch.units {
            if let Some(pos) = &unit.pos {
                self.tracker.ack(pos);
                self.telemetry.acked(unit.read_at.elapsed());
            }
        }
        // Persist before the next send: a crash then re-sends at most the
        // batch in flight. One small fsync per webhook message is cheap next to
        // Discord's pace (≤ 30 messages per minute per channel).
        self.save();
        true
    }

    async fn on_tick(&mut self, rx: &QueueRx, drain: &Drain) {
        self.telemetry.metrics.queue_depth.set(rx.depth() as i64);
        self.telemetry.metrics.queue_bytes.set(rx.bytes() as i64);
        self.maybe_save();
        if let Some(idle) = self.idle_complete_after {
            if self.run_state.header_posted
                && !self.checkpoint.summary_posted
                && self.last_record.elapsed() >= idle
            {
                tracing::info!(
                    idle_secs = idle.as_secs(),
                    "transcript idle; treating the session as complete"
                );
                self.post_summary(drain).await;
            }
        }
    }

    fn maybe_save(&mut self) {
        self.publish_pending(None);
        if self.dirty && self.last_save.elapsed() >= CHECKPOINT_INTERVAL {
            self.save();
        }
    }

    /// Writes the checkpoint: each file's committed (contiguously acknowledged)
    /// offset, never beyond; plus the run state.
    pub fn save(&mut self) {
        let _waiting = self.heartbeat.waiting(DISK_BOUND);
        // Journal first: a crash between the two leaves delivered uuids whose
        // records lie past the checkpoint, which a restart then rightly skips.
        let committed = self.tracker.take_committed();
        match self.delivered.append(&committed) {
            Ok(()) => self.telemetry.written(StateFile::Delivered),
            // A restart may then repost records of a rewritten transcript.
            Err(e) => self.telemetry.write_failed(StateFile::Delivered, &e),
        }
        self.tracker.apply(&mut self.checkpoint);
        self.run_state.stats = serde_json::to_value(self.renderer.stats()).ok();
        self.checkpoint.totals = serde_json::to_value(&self.run_state).unwrap_or_default();
        match self.store.save(&self.checkpoint) {
            Ok(()) => self.telemetry.written(StateFile::Checkpoint),
            Err(e) => self.telemetry.write_failed(StateFile::Checkpoint, &e),
        }
        self.dirty = false;
        self.last_save = Instant::now();
    }

    async fn post_summary(&mut self, drain: &Drain) {
        if self.checkpoint.summary_posted {
            return;
        }
        let ended = now_rfc3339();
        let mut posted = true;
        match &self.sink {
            Sink::Console { color } => {
                println!("{}", console::summary_line(self.renderer.stats(), *color));
            }
            Sink::Webhook(_) => {
                // Whatever is still batched goes first, then the summary last;
                // in a drain, only while the backlog's share lasts.
                while !self.batcher.is_empty() && !self.backlog_spent(drain) {
                    let Some(batch) = self.batcher.next_batch() else {
                        break;
                    };
                    if !self.send_batch(batch, drain, Stage::Backlog, false).await {
                        break;
                    }
                }
                let mut left = 0usize;
                while let Some(batch) = self.batcher.next_batch() {
                    left += batch.units.len();
                }
                if left > 0 {
                    tracing::warn!(
                        units = left,
                        "shutdown: the summary goes before the rest of the backlog, which stays in the transcript"
                    );
                }
                let summary = self.renderer.summary(&ended);
                self.batcher.push(Unit {
                    embeds: vec![summary],
                    files: vec![],
                    pos: None,
                    read_at: Instant::now(),
                });
                while let Some(batch) = self.batcher.next_batch() {
                    if !self.send_batch(batch, drain, Stage::Summary, false).await {
                        posted = false;
                        break;
                    }
                }
            }
        }
        // A summary cut by the drain is not posted: a restart with this state
        // (the same run) posts it then.
        self.checkpoint.summary_posted = posted;
        self.save();
        if let Some(cb) = self.on_complete.take() {
            let stats = serde_json::to_value(self.renderer.stats()).unwrap_or_default();
            let complete = cb(stats);
            match drain.deadline() {
                Some(d) => {
                    if tokio::time::timeout_at(d, complete).await.is_err() {
                        tracing::warn!(
                            "shutdown deadline reached before bot-bridge confirmed completion"
                        );
                    }
                }
                None => {
                    self.heartbeat
                        .within(crate::deliver::bridge::REQUEST_TIMEOUT * 2, complete)
                        .await;
                }
            }
        }
    }

    /// Whether a drain's backlog stage is over (or could not finish a send).
    fn backlog_spent(&self, drain: &Drain) -> bool {
        drain.deadline().is_some_and(|d| {
            let latency = Self::latency_estimate(&self.telemetry);
            Instant::now() + latency >= drain.plan(d, latency).backlog_end
        })
    }

    async fn finish(&mut self, drain: &Drain) {
        self.publish_pending(None);
        if !self.run_state.header_posted && matches!(self.sink, Sink::Webhook(_)) {
            // Nothing was ever posted: no header, no summary either.
            self.save();
            return;
        }
        self.post_summary(drain).await;
        self.save();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_drain_deadline_is_fixed_once_from_the_signal() {
        let shutdown = Shutdown::new();
        let drain = Drain::new(shutdown.clone(), Duration::from_secs(5));
        assert_eq!(drain.deadline(), None);
        let signal = Instant::now();
        shutdown.trigger();
        let deadline = drain.started().await;
        assert_eq!(deadline, signal + Duration::from_secs(5));
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(
            drain.clone().deadline(),
            Some(deadline),
            "a stage that looks later sees the same deadline"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_plan_keeps_the_summary_and_complete_their_shares() {
        let drain = Drain::new(Shutdown::new(), Duration::from_secs(5));
        let d = Instant::now() + Duration::from_secs(5);
        // Discord answering in 2.5 s: the summary keeps room for one such
        // request, `complete` its second, the backlog gets the rest.
        let slow = drain.plan(d, Duration::from_millis(2500));
        assert_eq!(slow.complete_end, d);
        assert_eq!(slow.summary_end, d - COMPLETE_SHARE);
        assert!(slow.summary_end - slow.backlog_end >= Duration::from_millis(2600));
        assert!(slow.backlog_end > Instant::now(), "{slow:?}");
        // A fast Discord leaves most of the budget to the backlog.
        let fast = drain.plan(d, Duration::from_millis(80));
        assert_eq!(fast.summary_end - fast.backlog_end, MIN_SUMMARY_SHARE);
        // A tiny budget still orders the stages.
        let tiny = Drain::new(Shutdown::new(), Duration::from_millis(500));
        let d = Instant::now() + Duration::from_millis(500);
        let p = tiny.plan(d, Duration::from_secs(3));
        assert!(Instant::now() <= p.backlog_end);
        assert!(p.backlog_end <= p.summary_end && p.summary_end <= p.complete_end);
    }
}
