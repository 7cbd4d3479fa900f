//! The sink loop: records from the queue are rendered, batched and delivered
//! to a [`Sink`] (the run's webhook, a console, `watcher render`'s printer),
//! acknowledgements advance the run state ([`RunStore`]), and the session ends
//! with exactly one summary. The loop holds no shared state: what it holds
//! unacknowledged is published on a watch channel, telemetry goes through the
//! [`DeliveryObserver`]. Idle, it sleeps until a record, a checkpoint write,
//! an idle completion, a dead letter's retry or shutdown is due.
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
//! share whatever the earlier ones were doing. What the backlog's share could
//! not deliver is handed to bot-bridge with the summary, or kept in
//! `STATE_DIR/backlog.jsonl` for the next start (issue 18).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::future::BoxFuture;
use ops::health::Heartbeat;
use ops::Shutdown;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::deliver::batch::{Batch, Batcher, Unit};
use crate::deliver::{DeliveryObserver, Sent, Sink};
use crate::queue::{QueueRx, Record};
use crate::render::{Renderer, Stats};
use crate::state::atomic_file::StateFile;
use crate::state::backlog::Kept;
use crate::state::RunStore;
use crate::transcript::EventKind;

/// How often the checkpoint may be written (DESIGN.md: at most every 250 ms).
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(250);

/// At most this many dead letters go with a shutdown's hand-off (the rest
/// stay in the DLQ for the next start).
pub const HANDOFF_DEAD_LETTERS: usize = 500;

/// How often an idle loop still turns, to beat its heartbeat (liveness allows
/// 30 s of silence). Everything else it waits for wakes it: a record, the
/// checkpoint's next write, the idle-completion deadline, the next retry of
/// a dead letter, shutdown.
pub const IDLE_BEAT: Duration = Duration::from_secs(10);

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

    /// How long ingest may read the followed files to their end after the
    /// signal, and the sink loop wait for what it reads: the latest the
    /// backlog stage can end (its end when Discord answers at once).
    pub fn read_end(&self, deadline: Instant) -> Instant {
        self.plan(deadline, Duration::ZERO).backlog_end
    }

    /// Where the stages end for a drain ending at `deadline`, when a request
    /// to Discord takes up to `latency` (see [`DeliveryObserver::latency_estimate`]):
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

/// Which clock the header and the summary show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wall {
    /// The live run: when the watcher started, when the summary is posted.
    Now,
    /// A preview of a finished transcript (`watcher render`): the session's
    /// own first and last timestamps.
    Transcript,
}

/// Called once after the summary was delivered, with the final totals
/// (bot-bridge `complete`).
pub type OnComplete = Box<dyn FnOnce(Stats) -> BoxFuture<'static, ()> + Send>;

/// What a shutdown hands over to bot-bridge.
#[derive(Debug)]
pub struct HandOver {
    /// The messages it could not deliver, in order, keyed by `seq`, the
    /// summary last.
    pub kept: Vec<Kept>,
    /// The final totals, for `complete`.
    pub stats: Stats,
    /// How long ago the channel accepted the messages that still count
    /// against its window ([`Sink::channel_sends`]): bot-bridge keeps the
    /// channel's pace from there instead of starting a window of its own
    /// (which met Discord's per-channel limit with a 429 or two).
    pub channel_sends: Vec<Duration>,
}

/// Takes a [`HandOver`]: bot-bridge's `POST /v1/runs/{id}/handoff`. `Ok`
/// once the messages are stored durably there.
pub type HandOff = Box<dyn FnMut(HandOver) -> BoxFuture<'static, Result<(), String>> + Send>;

/// How the sink loop behaves; everything else it is given is a part.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Embeds per message (`BATCH_SIZE`).
    pub batch_size: usize,
    /// The longest one send may take before the loop counts as wedged:
    /// `DELIVERY_MAX_ELAPSED` plus [`SEND_SLACK`].
    pub send_bound: Duration,
    /// `IDLE_COMPLETE_AFTER`: post the summary after this long without records.
    pub idle_complete_after: Option<Duration>,
    pub wall: Wall,
}

impl PipelineConfig {
    pub fn from_config(cfg: &crate::config::Config) -> Self {
        Self {
            batch_size: cfg.batch_size,
            send_bound: cfg.delivery_max_elapsed + SEND_SLACK,
            idle_complete_after: cfg.idle_complete_after,
            wall: Wall::Now,
        }
    }
}

/// The sink loop. Its state is private: the run state lives in
/// [`RunStore`], what it holds unacknowledged is published on a watch channel
/// ([`Pipeline::pending`]), and telemetry goes through the observer.
pub struct Pipeline<S> {
    cfg: PipelineConfig,
    renderer: Renderer,
    batcher: Batcher,
    /// Checkpoint, acknowledgements and the delivered journal.
    state: RunStore,
    sink: S,
    observer: Arc<dyn DeliveryObserver>,
    heartbeat: Heartbeat,
    /// When the oldest unit the loop holds (batched, in flight, retried or
    /// waiting for a permit) was read; `None` when it holds none. Records
    /// still in the queue are the queue's to tell.
    pending: watch::Sender<Option<Instant>>,
    on_complete: Option<OnComplete>,
    /// Where the rest goes at shutdown when the budget cannot deliver it.
    handoff: Option<HandOff>,
    /// The backlog's send a drain cut: it may or may not have reached
    /// Discord, so it goes first in the hand-off (at most one repeat, never
    /// a loss).
    cut: Option<Batch>,
    /// Acknowledgements not yet written to the checkpoint.
    dirty: bool,
    last_save: Instant,
    last_record: Instant,
    started_wall: String,
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

impl<S: Sink> Pipeline<S> {
    /// A loop over `state` (whose totals the renderer continues from) into `sink`.
    pub fn new(
        cfg: PipelineConfig,
        mut renderer: Renderer,
        state: RunStore,
        sink: S,
        observer: Arc<dyn DeliveryObserver>,
        heartbeat: Heartbeat,
    ) -> Self {
        if let Some(stats) = state.run().stats.clone() {
            renderer.restore_stats(stats);
        }
        Self {
            batcher: Batcher::new(cfg.batch_size, None),
            cfg,
            renderer,
            state,
            sink,
            observer,
            heartbeat,
            pending: watch::Sender::new(None),
            on_complete: None,
            handoff: None,
            cut: None,
            dirty: false,
            last_save: Instant::now(),
            last_record: Instant::now(),
            started_wall: now_rfc3339(),
        }
    }

    /// Calls `complete` once the summary was delivered.
    #[must_use]
    pub fn on_complete(mut self, complete: OnComplete) -> Self {
        self.on_complete = Some(complete);
        self
    }

    /// Hands what a shutdown cannot deliver to `handoff` (bot-bridge).
    #[must_use]
    pub fn hand_off_to(mut self, handoff: HandOff) -> Self {
        self.handoff = Some(handoff);
        self
    }

    /// When the oldest unit the loop holds was read, as it changes (the sink
    /// watchdog's `watcher_oldest_pending_age_seconds`).
    pub fn pending(&self) -> watch::Receiver<Option<Instant>> {
        self.pending.subscribe()
    }

    /// Publishes what the loop holds on `pending`, a channel its watchers
    /// subscribed to before the loop existed (while the run was provisioned).
    #[must_use]
    pub fn publish_pending_on(mut self, pending: watch::Sender<Option<Instant>>) -> Self {
        self.pending = pending;
        self
    }

    /// Runs until the queue closes (ingest stopped), then posts the summary.
    /// `drain` starts the shutdown and bounds it from that moment. Idle, it
    /// sleeps until something happens (see [`IDLE_BEAT`]).
    pub async fn run(mut self, mut rx: QueueRx, drain: Drain) -> RunStore {
        self.deliver_backlog(&drain).await;
        loop {
            self.heartbeat.beat();
            let draining = drain.deadline().is_some();
            if self.batcher.is_empty() {
                let save_due = self.dirty.then(|| self.last_save + CHECKPOINT_INTERVAL);
                let idle_due = self.idle_complete_due();
                // Dead letters are retried only between live messages, and
                // not in a drain (the budget is the live backlog's).
                let redeliver_due = self.sink.redeliver_due().filter(|_| !draining);
                tokio::select! {
                    // Live records first: dead letters wait for a quiet moment.
                    biased;
                    rec = rx.recv() => match rec {
                        Some(r) => self.absorb(r),
                        None => break,
                    },
                    () = sleep_until(save_due) => {
                        self.maybe_save();
                        continue;
                    }
                    () = sleep_until(idle_due) => {
                        self.idle_complete(&drain).await;
                        continue;
                    }
                    () = sleep_until(redeliver_due) => {
                        let _waiting = self.heartbeat.waiting(self.cfg.send_bound);
                        self.sink.redeliver().await;
                        continue;
                    }
                    () = tokio::time::sleep(IDLE_BEAT) => continue,
                    _ = drain.started(), if !draining => continue,
                }
            }
            self.pull_available(&mut rx);
            if self.batcher.is_empty() {
                self.maybe_save();
                continue;
            }
            if self.backlog_spent(&drain) {
                // The backlog may not eat the summary's and `complete`'s shares,
                // nor start a send it cannot finish.
                tracing::warn!("shutdown budget for the backlog spent; handing the rest over");
                break;
            }
            self.deliver_one(&mut rx, &drain).await;
            self.maybe_save();
        }
        self.finish(&drain, &mut rx).await;
        self.state
    }

    /// When an idle transcript counts as a finished session
    /// (`IDLE_COMPLETE_AFTER`), if that is still to come.
    fn idle_complete_due(&self) -> Option<Instant> {
        let idle = self.cfg.idle_complete_after?;
        (self.state.run().header_posted && !self.state.summary_posted())
            .then(|| self.last_record + idle)
    }

    async fn idle_complete(&mut self, drain: &Drain) {
        if let Some(idle) = self.cfg.idle_complete_after {
            tracing::info!(
                idle_secs = idle.as_secs(),
                "transcript idle; treating the session as complete"
            );
        }
        self.post_summary(drain, None).await;
    }

    /// When a drain cuts a `stage` that is under way: never before shutdown
    /// starts, then at the stage's end in the drain's plan, re-planned while
    /// the request in flight shows how slow Discord is now.
    async fn cut(drain: &Drain, observer: &dyn DeliveryObserver, stage: Stage) {
        let deadline = drain.started().await;
        loop {
            let plan = drain.plan(deadline, observer.latency_estimate());
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

    /// Publishes the oldest unit the loop holds: the batcher's, or
    /// `in_flight`'s when older. Subscribers wake only on a change.
    fn publish_pending(&self, in_flight: Option<Instant>) {
        let oldest = match (in_flight, self.batcher.oldest()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.pending.send_if_modified(|held| {
            let changed = *held != oldest;
            *held = oldest;
            changed
        });
    }

    fn pull_available(&mut self, rx: &mut QueueRx) {
        while !self.batcher.has_full_message() {
            match rx.try_recv() {
                Some(r) => self.absorb(r),
                None => break,
            }
        }
        self.observer.queue(rx.depth(), rx.bytes());
        self.publish_pending(None);
    }

    fn absorb(&mut self, record: Record) {
        self.last_record = Instant::now();
        let mut units = Vec::new();
        for ev in &record.events {
            if let EventKind::Usage { usage, .. } = &ev.kind {
                self.observer.usage(usage);
            }
            let rendered = self.renderer.render(ev);
            self.sink.event(ev);
            for f in &rendered.truncated {
                self.observer.truncated(f.as_str());
            }
            if !rendered.embeds.is_empty() || !rendered.files.is_empty() {
                units.push(Unit {
                    embeds: rendered.embeds,
                    files: rendered.files,
                    pos: Some(record.pos.clone()),
                    read_at: record.read_at,
                });
            }
        }
        self.observer.cost(self.renderer.stats().priced_cost_usd);
        if !units.is_empty() && !self.state.run().header_posted {
            // After the first record rendered, so that it names the model.
            let started = self.wall_start();
            self.batcher.push(Unit {
                embeds: vec![self.renderer.header(&started)],
                files: vec![],
                pos: None,
                read_at: Instant::now(),
            });
            self.state.run_mut().header_posted = true;
        }
        let uuid = record.events.iter().find_map(|e| e.uuid.as_deref());
        self.state
            .track(&record.pos, &record.identity, units.len(), uuid);
        if units.is_empty() {
            self.observer.acked(record.read_at.elapsed());
            self.dirty = true;
        }
        for u in units {
            self.batcher.push(u);
        }
    }

    fn wall_start(&self) -> String {
        match self.cfg.wall {
            Wall::Now => self.started_wall.clone(),
            Wall::Transcript => self
                .renderer
                .stats()
                .first_timestamp
                .clone()
                .unwrap_or_else(now_rfc3339),
        }
    }

    fn wall_end(&self) -> String {
        match self.cfg.wall {
            Wall::Now => now_rfc3339(),
            Wall::Transcript => self
                .renderer
                .stats()
                .last_timestamp
                .clone()
                .unwrap_or_else(now_rfc3339),
        }
    }

    async fn deliver_one(&mut self, rx: &mut QueueRx, drain: &Drain) {
        // Waiting for a permit (rate limits, the channel window) is part of
        // the send's bound, and a drain cuts it like the send.
        let acquired = {
            let _waiting = self.heartbeat.waiting(self.cfg.send_bound);
            tokio::select! {
                () = self.sink.acquire() => true,
                () = Self::cut(drain, &*self.observer, Stage::Backlog) => false,
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
    /// (kept in `cut` for the hand-off when it was the backlog's).
    async fn send_batch(
        &mut self,
        mut batch: Batch,
        drain: &Drain,
        stage: Stage,
        acquired: bool,
    ) -> bool {
        for f in discord::truncate::fit_message(&mut batch.message) {
            self.observer.truncated(f.as_str());
        }
        self.publish_pending(batch.units.iter().map(|u| u.read_at).min());
        let outcome = {
            let _waiting = self.heartbeat.waiting(self.cfg.send_bound);
            tokio::select! {
                o = self.sink.send(&batch.message, acquired) => Some(o),
                () = Self::cut(drain, &*self.observer, stage) => None,
            }
        };
        self.publish_pending(None);
        let Some(outcome) = outcome else {
            tracing::warn!(
                stage = ?stage,
                "shutdown cut a send to keep the budget's later stages; it goes first in what is handed over or kept"
            );
            if stage == Stage::Backlog {
                self.cut = Some(batch);
            }
            return false;
        };
        if outcome != Sent::Delivered {
            tracing::debug!(?outcome, "message not delivered");
        }
        for unit in &batch.units {
            if let Some(pos) = &unit.pos {
                self.state.ack(pos);
                self.observer.acked(unit.read_at.elapsed());
            }
        }
        // Persist before the next send: a crash then re-sends at most the
        // batch in flight. One small fsync per webhook message is cheap next to
        // Discord's pace (≤ 30 messages per minute per channel).
        self.save();
        true
    }

    fn maybe_save(&mut self) {
        self.publish_pending(None);
        if self.dirty && self.last_save.elapsed() >= CHECKPOINT_INTERVAL {
            self.save();
        }
    }

    /// Writes the run state: each file's committed (contiguously
    /// acknowledged) offset, never beyond, and the totals.
    fn save(&mut self) {
        let _waiting = self.heartbeat.waiting(DISK_BOUND);
        let (state, stats, observer) = (&mut self.state, self.renderer.stats(), &self.observer);
        crate::state::off_the_runtime(|| state.save(stats, observer.as_ref()));
        self.dirty = false;
        self.last_save = Instant::now();
    }

    async fn post_summary(&mut self, drain: &Drain, mut rx: Option<&mut QueueRx>) {
        if self.state.summary_posted() {
            return;
        }
        if let (Some(rx), Some(deadline)) = (rx.as_mut(), drain.deadline()) {
            // Ingest reads every file to its end at shutdown: all of it is
            // this drain's to send, hand over or keep (issue 18).
            self.take_rest(rx, drain.read_end(deadline)).await;
        }
        let ended = self.wall_end();
        let mut posted = true;
        // Whatever is still batched goes first, then the summary last; in a
        // drain, only while the backlog's share lasts.
        while !self.batcher.is_empty() && !self.backlog_spent(drain) {
            let Some(batch) = self.batcher.next_batch() else {
                break;
            };
            if !self.send_batch(batch, drain, Stage::Backlog, false).await {
                break;
            }
        }
        if let Some(rx) = rx {
            if drain.deadline().is_some() && (!self.batcher.is_empty() || rx.depth() > 0) {
                // The drain's backlog stage is over: stop sending (nothing is
                // in flight now) and hand over the rest.
                if self.hand_over(drain, rx, &ended).await {
                    return;
                }
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
        self.batcher.push(Unit {
            embeds: vec![self.renderer.summary(&ended)],
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
        self.sink.ended(self.renderer.stats());
        // A summary cut by the drain is not posted: a restart with this state
        // (the same run) posts it then.
        self.state.set_summary_posted(posted);
        self.save();
        if let Some(complete) = self.on_complete.take() {
            let complete = complete(self.renderer.stats().clone());
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

    /// In a drain: takes every record until ingest closes the queue (it has
    /// read every followed file to its end), or until `until`, when ingest
    /// gives up reading too.
    async fn take_rest(&mut self, rx: &mut QueueRx, until: Instant) {
        loop {
            self.heartbeat.beat();
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(r)) => self.absorb(r),
                Ok(None) => return,
                Err(_) => {
                    tracing::warn!(
                        "shutdown: ingest did not finish reading the transcript within the backlog's share; the rest stays in it"
                    );
                    return;
                }
            }
        }
    }

    /// Whether a drain's backlog stage is over (or could not finish a send).
    fn backlog_spent(&self, drain: &Drain) -> bool {
        drain.deadline().is_some_and(|d| {
            let latency = self.observer.latency_estimate();
            Instant::now() + latency >= drain.plan(d, latency).backlog_end
        })
    }

    async fn finish(&mut self, drain: &Drain, rx: &mut QueueRx) {
        self.publish_pending(None);
        if !self.state.run().header_posted {
            // Nothing was ever posted: no header, no summary either (a
            // console still shows its summary line).
            self.sink.ended(self.renderer.stats());
            self.save();
            return;
        }
        self.post_summary(drain, Some(rx)).await;
        self.save();
    }

    /// At shutdown, once the backlog's share of the budget is spent: the
    /// rest (what is batched and what waits in the queue, rendered, in
    /// order) goes to bot-bridge with the summary as the last message and
    /// `complete` (true: bot-bridge delivers it and completes the run). When
    /// bot-bridge is unreachable or there is none (a static webhook), the
    /// rest is kept in `STATE_DIR/backlog.jsonl` for the next start and the
    /// summary is posted as before (false). Either way the checkpoint
    /// passes what was handed over or kept; nothing is left behind it
    /// unless it could not be written anywhere.
    async fn hand_over(&mut self, drain: &Drain, rx: &mut QueueRx, ended: &str) -> bool {
        while let Some(r) = rx.try_recv() {
            self.absorb(r);
        }
        let mut rest: Vec<Batch> = self.cut.take().into_iter().collect();
        while let Some(mut batch) = self.batcher.next_batch() {
            for f in discord::truncate::fit_message(&mut batch.message) {
                self.observer.truncated(f.as_str());
            }
            rest.push(batch);
        }
        if rest.is_empty() {
            return false;
        }
        let summary = Unit {
            embeds: vec![self.renderer.summary(ended)],
            files: vec![],
            pos: None,
            read_at: Instant::now(),
        };
        let mut with_summary = Batcher::new(1, None);
        with_summary.push(summary);
        let summary = with_summary.next_batch();
        // Dead letters worth retrying go first, in their order: they are
        // older than anything still batched.
        let dead = if self.handoff.is_some() {
            self.sink.retryable_dead_letters(HANDOFF_DEAD_LETTERS)
        } else {
            Vec::new()
        };
        let dead_seqs = self.state.take_seqs(dead.len());
        let seqs = self.state.take_seqs(rest.len() + 1);
        // The sequence numbers are saved before they are used.
        self.save();
        let kept: Vec<Kept> = rest
            .iter()
            .zip(seqs.clone())
            .map(|(b, seq)| Kept {
                seq,
                payload: b.message.clone(),
            })
            .collect();
        let messages = kept.len();
        if let (Some(handoff), Some(summary), Some(deadline)) =
            (self.handoff.as_mut(), summary.as_ref(), drain.deadline())
        {
            let mut all: Vec<Kept> = dead
                .iter()
                .zip(dead_seqs)
                .map(|(payload, seq)| Kept {
                    seq,
                    payload: payload.clone(),
                })
                .collect();
            all.extend(kept.iter().cloned());
            all.push(Kept {
                seq: seqs.end - 1,
                payload: summary.message.clone(),
            });
            let messages = all.len();
            // Half of what is left for the summary: the other half posts it
            // live if bot-bridge does not take it.
            let plan = drain.plan(deadline, self.observer.latency_estimate());
            let now = Instant::now();
            let bound = now + plan.summary_end.saturating_duration_since(now) / 2;
            let over = HandOver {
                kept: all,
                stats: self.renderer.stats().clone(),
                channel_sends: self.sink.channel_sends(),
            };
            match tokio::time::timeout_at(bound, handoff(over)).await {
                Ok(Ok(())) => {
                    self.observer.handoff("accepted", messages);
                    tracing::info!(
                        messages,
                        dead_letters = dead.len(),
                        "shutdown: handed the rest and the summary to bot-bridge, which delivers them and completes the run"
                    );
                    self.sink.forget_dead_letters(dead.len());
                    self.acknowledge(&rest);
                    self.state.set_summary_posted(true);
                    self.on_complete = None;
                    self.save();
                    return true;
                }
                Ok(Err(e)) => {
                    self.observer.handoff("failed", messages);
                    tracing::warn!(error = %e, "shutdown: bot-bridge did not take the hand-off");
                }
                Err(_) => {
                    self.observer.handoff("failed", messages);
                    tracing::warn!("shutdown: bot-bridge did not answer the hand-off in time");
                }
            }
        }
        let Some(backlog) = self.state.backlog().cloned() else {
            // Nowhere to keep it (`watcher render`): it stays in the transcript.
            self.requeue(rest);
            return false;
        };
        match backlog.append(&kept) {
            Ok(()) => {
                self.observer.written(StateFile::Backlog);
                self.observer.handoff("kept", messages);
                tracing::warn!(
                    messages,
                    file = %backlog.path().display(),
                    "shutdown: the rest of the backlog is kept in STATE_DIR; a watcher started on the same STATE_DIR delivers it first"
                );
                self.acknowledge(&rest);
                self.save();
            }
            Err(e) => {
                self.observer.write_failed(StateFile::Backlog, &e);
                self.requeue(rest);
            }
        }
        false
    }

    /// Acknowledges every unit of `batches` (handed over or kept).
    fn acknowledge(&mut self, batches: &[Batch]) {
        for unit in batches.iter().flat_map(|b| &b.units) {
            if let Some(pos) = &unit.pos {
                self.state.ack(pos);
            }
        }
    }

    /// Puts `batches` back, unacknowledged: their records stay behind the
    /// checkpoint, in the transcript.
    fn requeue(&mut self, batches: Vec<Batch>) {
        for unit in batches.into_iter().flat_map(|b| b.units) {
            self.batcher.push(unit);
        }
    }

    /// Delivers what an earlier run kept in `backlog.jsonl`, before anything
    /// new, removing each message once it is acknowledged.
    async fn deliver_backlog(&mut self, drain: &Drain) {
        let Some(backlog) = self.state.backlog().cloned() else {
            return;
        };
        let mut kept = match backlog.load() {
            Ok(k) => k,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the kept backlog; it stays for the next start");
                return;
            }
        };
        if kept.is_empty() {
            return;
        }
        tracing::info!(
            messages = kept.len(),
            "delivering the backlog an earlier run kept"
        );
        while !kept.is_empty() && drain.deadline().is_none() {
            self.heartbeat.beat();
            let msg = kept[0].payload.clone();
            let outcome = {
                let _waiting = self.heartbeat.waiting(self.cfg.send_bound);
                tokio::select! {
                    o = self.sink.send(&msg, false) => Some(o),
                    () = Self::cut(drain, &*self.observer, Stage::Backlog) => None,
                }
            };
            if outcome.is_none() {
                break;
            }
            kept.remove(0);
            match crate::state::off_the_runtime(|| backlog.store(&kept)) {
                Ok(()) => self.observer.written(StateFile::Backlog),
                Err(e) => self.observer.write_failed(StateFile::Backlog, &e),
            }
        }
    }
}

/// Sleeps until `at`; forever when there is nothing to wait for.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod sink_tests;

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
