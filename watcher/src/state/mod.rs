//! Everything the watcher keeps in `STATE_DIR` about a run, in one place:
//! where reading resumes (`checkpoint`, advanced by the `AckTracker` over
//! acknowledged lines only), which records were delivered (`delivered`, the
//! journal that keeps a rewritten transcript from being re-posted), and the
//! crash-safe write they share (`atomic_file`). [`RunState`] is the sink
//! loop's own part of the checkpoint.

pub mod atomic_file;
pub mod backlog;
pub mod checkpoint;
pub mod delivered;

use serde::{Deserialize, Deserializer, Serialize};

use crate::render::summary::Stats;

/// Runs `write`, a blocking file write, with this worker's other tasks and
/// the runtime's drivers handed to another thread meanwhile: a stalled disk
/// then blocks only the sink loop, never the ops server's `/livez` nor the
/// timers of every other task. On a current-thread runtime (paused-clock
/// tests, `watcher render`) it runs in place.
pub fn off_the_runtime<R>(write: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(write),
        _ => write(),
    }
}

/// What the sink loop persists beside the file offsets, so that a restart
/// neither re-posts the header nor loses the running totals of the summary.
///
/// Stored as the checkpoint's `totals` object, in the very shape earlier
/// versions wrote as untyped JSON (`{"header_posted": .., "stats": {..}}`), so
/// an upgraded watcher resumes from an old checkpoint without a migration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// The run's header embed went into a batch: never post it twice.
    #[serde(default)]
    pub header_posted: bool,
    /// The renderer's running totals (tokens, cost, tools, counts) at the
    /// last save; `None` before the first save.
    #[serde(default)]
    pub stats: Option<Stats>,
    /// The next message sequence number (`seq` of a hand-off or of
    /// `backlog.jsonl`): persisted before it is used, so a restarted
    /// watcher never reuses one and bot-bridge can drop duplicates by it.
    #[serde(default)]
    pub next_seq: u64,
}

impl RunState {
    /// Reads `totals` leniently: `null` (a checkpoint saved before anything
    /// was rendered) or totals this version cannot read cost the totals only,
    /// never the file offsets beside them, which are what a restart needs most.
    pub(crate) fn lenient<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        if value.is_null() {
            return Ok(Self::default());
        }
        Ok(serde_json::from_value(value).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "checkpoint totals unreadable; the summary restarts its counts");
            Self::default()
        }))
    }
}

use self::atomic_file::{StateFile, StateObserver};
use self::checkpoint::{AckTracker, Checkpoint, CheckpointStore};
use self::delivered::DeliveredLog;
use crate::tail::FileIdentity;
use crate::transcript::LinePos;

/// The run state the sink loop advances, and where it is written.
///
/// Invariant: the checkpoint never passes a line whose messages were not
/// acknowledged (delivered or dead-lettered). Passing one would lose it on a
/// crash; staying behind an acknowledged one costs at most a re-send of the
/// batch in flight, since every acknowledgement of a sent message is saved
/// before the next send.
#[derive(Debug)]
pub struct RunStore {
    /// Where it is persisted; `None` for a run that keeps nothing
    /// (`watcher render`).
    disk: Option<(CheckpointStore, DeliveredLog)>,
    /// Messages kept for the next start (`backlog.jsonl`).
    backlog: Option<backlog::Backlog>,
    checkpoint: Checkpoint,
    tracker: AckTracker,
}

impl RunStore {
    /// Resumes `checkpoint`, saving into `store` and journaling into `delivered`.
    pub fn on_disk(
        store: CheckpointStore,
        delivered: DeliveredLog,
        checkpoint: Checkpoint,
    ) -> Self {
        Self {
            backlog: Some(backlog::Backlog::new(&store.dir())),
            disk: Some((store, delivered)),
            checkpoint,
            tracker: AckTracker::default(),
        }
    }

    /// A run that is never written anywhere.
    pub fn in_memory() -> Self {
        Self {
            disk: None,
            backlog: None,
            checkpoint: Checkpoint::default(),
            tracker: AckTracker::default(),
        }
    }

    /// The sink loop's own state.
    pub fn run(&self) -> &RunState {
        &self.checkpoint.totals
    }

    pub fn run_mut(&mut self) -> &mut RunState {
        &mut self.checkpoint.totals
    }

    /// The completion summary was delivered: never post it twice.
    pub fn summary_posted(&self) -> bool {
        self.checkpoint.summary_posted
    }

    pub fn set_summary_posted(&mut self, posted: bool) {
        self.checkpoint.summary_posted = posted;
    }

    /// The checkpoint as the last save left it (tests, diagnostics).
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    /// Takes the next `n` message sequence numbers (saved with the next save).
    pub fn take_seqs(&mut self, n: usize) -> std::ops::Range<u64> {
        let first = self.checkpoint.totals.next_seq;
        self.checkpoint.totals.next_seq = first.saturating_add(n as u64);
        first..self.checkpoint.totals.next_seq
    }

    /// The backlog an earlier run kept; `None` when this run keeps none.
    pub fn backlog(&self) -> Option<&backlog::Backlog> {
        self.backlog.as_ref()
    }

    /// Registers a line that rendered to `units` messages-to-be (see
    /// [`AckTracker::track`]).
    pub fn track(
        &mut self,
        pos: &LinePos,
        identity: &FileIdentity,
        units: usize,
        uuid: Option<&str>,
    ) {
        self.tracker.track(pos, identity, units, uuid);
    }

    /// One unit of the line at `pos` was acknowledged.
    pub fn ack(&mut self, pos: &LinePos) {
        self.tracker.ack(pos);
    }

    /// Writes the committed offsets and `stats` as the run's totals. The
    /// journal goes first: a crash between the two leaves delivered uuids
    /// whose records lie past the checkpoint, which a restart then rightly
    /// skips. Failures are reported to `observer` and retried by the next save.
    pub fn save(&mut self, stats: &crate::render::summary::Stats, observer: &dyn StateObserver) {
        let committed = self.tracker.take_committed();
        self.tracker.apply(&mut self.checkpoint);
        self.checkpoint.totals.stats = Some(stats.clone());
        let Some((store, delivered)) = &mut self.disk else {
            return;
        };
        match delivered.append(&committed) {
            Ok(()) => observer.written(StateFile::Delivered),
            // A restart may then repost records of a rewritten transcript.
            Err(e) => observer.write_failed(StateFile::Delivered, &e),
        }
        match store.save(&self.checkpoint) {
            Ok(()) => observer.written(StateFile::Checkpoint),
            Err(e) => observer.write_failed(StateFile::Checkpoint, &e),
        }
    }
}
