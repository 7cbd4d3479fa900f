//! The sink loop: records from the queue are rendered, batched and delivered,
//! acknowledgements advance the checkpoint, and the session ends with exactly
//! one summary.

use std::sync::{Arc, Mutex};
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

/// Shared between the pipeline and the sink watchdog (readiness).
#[derive(Debug)]
pub struct SinkState {
    /// When the batch now being sent started waiting; `None` when idle.
    pub pending_since: Option<Instant>,
    pub last_success: Option<Instant>,
    pub last_success_wall: Option<String>,
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
            idle_complete_after,
            on_complete: None,
            dirty: false,
            last_save: Instant::now(),
            last_record: Instant::now(),
            started_wall: now_rfc3339(),
        }
    }

    /// Runs until the queue closes (ingest stopped), then posts the summary.
    /// `shutdown` starts the drain; `budget` bounds it from that moment.
    pub async fn run(mut self, mut rx: QueueRx, shutdown: Shutdown, budget: Duration) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut deadline: Option<Instant> = None;
        loop {
            self.heartbeat.beat();
            if deadline.is_none() && shutdown.is_triggered() {
                deadline = Some(Instant::now() + budget);
            }
            if self.batcher.is_empty() {
                tokio::select! {
                    rec = rx.recv() => match rec {
                        Some(r) => self.absorb(r),
                        None => break,
                    },
                    _ = tick.tick() => {
                        self.on_tick(&rx).await;
                        continue;
                    }
                    _ = shutdown.wait(), if deadline.is_none() => continue,
                }
            }
            self.pull_available(&mut rx);
            if self.batcher.is_empty() {
                self.maybe_save();
                continue;
            }
            if let Some(d) = deadline {
                // Keep enough of the budget for the summary.
                if Instant::now() + Duration::from_millis(1500) > d {
                    tracing::warn!("shutdown budget nearly spent; leaving the rest of the backlog in the transcript");
                    break;
                }
            }
            self.deliver_one(&mut rx, deadline).await;
            self.maybe_save();
        }
        self.finish(deadline).await;
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

    async fn deliver_one(&mut self, rx: &mut QueueRx, deadline: Option<Instant>) {
        let Sink::Webhook(sender) = &mut self.sink else {
            return;
        };
        if let Ok(mut s) = self.sink_state.lock() {
            s.pending_since.get_or_insert_with(Instant::now);
        }
        sender.acquire().await;
        // Coalesce what arrived while waiting for the permit.
        self.pull_available(rx);
        let Some(batch) = self.batcher.next_batch() else {
            return;
        };
        self.send_batch(batch, deadline, true).await;
    }

    async fn send_batch(
        &mut self,
        mut batch: Batch,
        deadline: Option<Instant>,
        acquired: bool,
    ) -> bool {
        let Sink::Webhook(sender) = &mut self.sink else {
            return false;
        };
        for f in discord::truncate::fit_message(&mut batch.message) {
            self.telemetry.truncated(f.as_str());
        }
        let send = sender.send(&batch.message, acquired);
        let outcome = match deadline {
            Some(d) => match tokio::time::timeout_at(
                d - Duration::from_millis(1000).min(d - Instant::now()),
                send,
            )
            .await
            {
                Ok(o) => o,
                Err(_) => {
                    tracing::warn!(
                        "shutdown budget spent while sending; batch left for the next start"
                    );
                    return false;
                }
            },
            None => send.await,
        };
        if let Ok(mut s) = self.sink_state.lock() {
            if outcome == Sent::Delivered {
                s.last_success = Some(Instant::now());
                s.last_success_wall = Some(now_rfc3339());
            }
            s.pending_since = None;
        }
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

    async fn on_tick(&mut self, rx: &QueueRx) {
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
                self.post_summary(None).await;
            }
        }
    }

    fn maybe_save(&mut self) {
        if self.dirty && self.last_save.elapsed() >= CHECKPOINT_INTERVAL {
            self.save();
        }
    }

    /// Writes the checkpoint: each file's committed (contiguously acknowledged)
    /// offset, never beyond; plus the run state.
    pub fn save(&mut self) {
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

    async fn post_summary(&mut self, deadline: Option<Instant>) {
        if self.checkpoint.summary_posted {
            return;
        }
        let ended = now_rfc3339();
        match &self.sink {
            Sink::Console { color } => {
                println!("{}", console::summary_line(self.renderer.stats(), *color));
            }
            Sink::Webhook(_) => {
                // Whatever is still batched goes first, then the summary last.
                while let Some(batch) = self.batcher.next_batch() {
                    if !self.send_batch(batch, deadline, false).await {
                        break;
                    }
                }
                let summary = self.renderer.summary(&ended);
                self.batcher.push(Unit {
                    embeds: vec![summary],
                    files: vec![],
                    pos: None,
                    read_at: Instant::now(),
                });
                while let Some(batch) = self.batcher.next_batch() {
                    if !self.send_batch(batch, deadline, false).await {
                        break;
                    }
                }
            }
        }
        self.checkpoint.summary_posted = true;
        self.save();
        if let Some(cb) = self.on_complete.take() {
            let stats = serde_json::to_value(self.renderer.stats()).unwrap_or_default();
            cb(stats).await;
        }
    }

    async fn finish(&mut self, deadline: Option<Instant>) {
        if !self.run_state.header_posted && matches!(self.sink, Sink::Webhook(_)) {
            // Nothing was ever posted: no header, no summary either.
            self.save();
            return;
        }
        self.post_summary(deadline).await;
        self.save();
    }
}
