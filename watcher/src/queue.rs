//! The bounded queue between ingest and the sink loop.
//!
//! Bounded twice: by records (`QUEUE_MAX_EVENTS`) and by bytes
//! (`QUEUE_MAX_BYTES`). When either bound is reached `send` waits, so the
//! tailer stops reading and the transcript file stays the buffer: memory stays
//! flat and nothing is dropped.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::tail::FileIdentity;
use crate::transcript::{Event, LinePos};

/// One transcript line that decoded into events (possibly none), ready for the
/// sink. Lines without events still travel so the checkpoint can move past them.
#[derive(Debug, Clone)]
pub struct Record {
    pub pos: LinePos,
    /// Identity of the file the line was read from, stored in the checkpoint.
    pub identity: FileIdentity,
    pub events: Vec<Event>,
    /// When the line was read: the start of `watcher_latency_seconds`.
    pub read_at: Instant,
    /// Raw line length, charged against `QUEUE_MAX_BYTES`.
    pub bytes: usize,
}

/// The queue was closed by the other side.
#[derive(Debug, thiserror::Error)]
#[error("the pipeline queue is closed")]
pub struct Closed;

struct Shared {
    depth: AtomicUsize,
    bytes: AtomicUsize,
    /// `read_at` of every queued record, oldest first (FIFO like the
    /// channel): the head is the oldest record not yet taken by the sink.
    read_at: Mutex<VecDeque<Instant>>,
}

impl Shared {
    fn read_at(&self) -> MutexGuard<'_, VecDeque<Instant>> {
        // Pushes and pops only: a panic cannot leave it torn.
        self.read_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A read-only view of the queue for telemetry (depth, bytes, oldest record),
/// cheap to clone into a watchdog.
#[derive(Clone)]
pub struct QueueProbe {
    shared: Arc<Shared>,
}

impl QueueProbe {
    /// When the oldest queued record was read; `None` when the queue is empty.
    pub fn oldest(&self) -> Option<Instant> {
        self.shared.read_at().front().copied()
    }

    pub fn depth(&self) -> usize {
        self.shared.depth.load(Ordering::Relaxed)
    }

    pub fn bytes(&self) -> usize {
        self.shared.bytes.load(Ordering::Relaxed)
    }
}

/// Sending half, owned by ingest.
#[derive(Clone)]
pub struct QueueTx {
    tx: mpsc::Sender<(Record, OwnedSemaphorePermit)>,
    budget: Arc<Semaphore>,
    max_bytes: usize,
    shared: Arc<Shared>,
}

/// Receiving half, owned by the sink loop.
pub struct QueueRx {
    rx: mpsc::Receiver<(Record, OwnedSemaphorePermit)>,
    shared: Arc<Shared>,
}

/// A queue holding at most `max_events` records and `max_bytes` bytes. A single
/// record larger than `max_bytes` is charged as `max_bytes` so it can still pass
/// (alone).
pub fn bounded(max_events: usize, max_bytes: usize) -> (QueueTx, QueueRx) {
    let max_bytes = max_bytes.clamp(1, Semaphore::MAX_PERMITS);
    let (tx, rx) = mpsc::channel(max_events.max(1));
    let shared = Arc::new(Shared {
        depth: AtomicUsize::new(0),
        bytes: AtomicUsize::new(0),
        read_at: Mutex::new(VecDeque::new()),
    });
    (
        QueueTx {
            tx,
            budget: Arc::new(Semaphore::new(max_bytes)),
            max_bytes,
            shared: shared.clone(),
        },
        QueueRx { rx, shared },
    )
}

impl QueueTx {
    /// Waits until the record fits both bounds, then enqueues it.
    pub async fn send(&self, record: Record) -> Result<(), Closed> {
        let charge = record.bytes.clamp(1, self.max_bytes);
        let permits = u32::try_from(charge).unwrap_or(u32::MAX);
        let permit = self
            .budget
            .clone()
            .acquire_many_owned(permits)
            .await
            .map_err(|_| Closed)?;
        let slot = self.tx.reserve().await.map_err(|_| Closed)?;
        self.shared.depth.fetch_add(1, Ordering::Relaxed);
        self.shared.bytes.fetch_add(charge, Ordering::Relaxed);
        // Under the lock, so the order of `read_at` is the channel's order
        // even with several senders.
        let mut read_at = self.shared.read_at();
        read_at.push_back(record.read_at);
        slot.send((record, permit));
        Ok(())
    }

    /// Whether the receiving side is gone (the sink loop ended).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

impl QueueRx {
    fn took(&self, (record, permit): (Record, OwnedSemaphorePermit)) -> Record {
        self.shared.read_at().pop_front();
        self.shared.depth.fetch_sub(1, Ordering::Relaxed);
        self.shared
            .bytes
            .fetch_sub(permit.num_permits(), Ordering::Relaxed);
        drop(permit);
        record
    }

    /// The next record; `None` once ingest has stopped and the queue is empty.
    pub async fn recv(&mut self) -> Option<Record> {
        let item = self.rx.recv().await?;
        Some(self.took(item))
    }

    /// The next record if one is waiting.
    pub fn try_recv(&mut self) -> Option<Record> {
        let item = self.rx.try_recv().ok()?;
        Some(self.took(item))
    }

    /// A view for telemetry.
    pub fn probe(&self) -> QueueProbe {
        QueueProbe {
            shared: self.shared.clone(),
        }
    }

    /// Records waiting (`watcher_queue_depth`).
    pub fn depth(&self) -> usize {
        self.shared.depth.load(Ordering::Relaxed)
    }

    /// Bytes waiting (`watcher_queue_bytes`).
    pub fn bytes(&self) -> usize {
        self.shared.bytes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn record(start: u64, bytes: usize) -> Record {
        Record {
            pos: LinePos {
                file: Arc::from("f"),
                start,
                end: start + bytes as u64,
            },
            identity: FileIdentity::default(),
            events: vec![],
            read_at: Instant::now(),
            bytes,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn full_queue_blocks_the_sender_until_the_receiver_takes() {
        let (tx, mut rx) = bounded(2, 1000);
        tx.send(record(0, 10)).await.unwrap();
        tx.send(record(10, 10)).await.unwrap();
        assert_eq!((rx.depth(), rx.bytes()), (2, 20));
        let blocked = tokio::time::timeout(Duration::from_secs(1), tx.send(record(20, 10))).await;
        assert!(
            blocked.is_err(),
            "third record must wait: the event bound is 2"
        );
        assert_eq!(rx.recv().await.unwrap().pos.start, 0);
        tx.send(record(20, 10)).await.unwrap();
        assert_eq!(rx.try_recv().unwrap().pos.start, 10);
        assert_eq!(rx.try_recv().unwrap().pos.start, 20);
        assert_eq!((rx.depth(), rx.bytes()), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn byte_bound_blocks_and_oversize_records_pass_alone() {
        let (tx, mut rx) = bounded(100, 100);
        tx.send(record(0, 60)).await.unwrap();
        let blocked = tokio::time::timeout(Duration::from_secs(1), tx.send(record(60, 60))).await;
        assert!(blocked.is_err(), "120 bytes exceed the 100-byte bound");
        rx.recv().await.unwrap();
        // Larger than the whole bound: charged as the bound, passes when empty.
        tx.send(record(60, 10_000)).await.unwrap();
        assert_eq!(rx.bytes(), 100);
        assert_eq!(rx.recv().await.unwrap().bytes, 10_000);
    }

    #[tokio::test(start_paused = true)]
    async fn the_probe_tells_when_the_oldest_queued_record_was_read() {
        let (tx, mut rx) = bounded(8, 1000);
        let probe = rx.probe();
        assert_eq!(probe.oldest(), None);
        let first = record(0, 10);
        let first_read = first.read_at;
        tx.send(first).await.unwrap();
        tokio::time::advance(Duration::from_secs(3)).await;
        let second = record(10, 10);
        let second_read = second.read_at;
        tx.send(second).await.unwrap();
        assert_eq!(probe.oldest(), Some(first_read));
        rx.recv().await.unwrap();
        assert_eq!(probe.oldest(), Some(second_read));
        rx.try_recv().unwrap();
        assert_eq!((probe.oldest(), probe.depth()), (None, 0));
    }

    #[tokio::test]
    async fn closing_the_sender_ends_the_receiver() {
        let (tx, mut rx) = bounded(4, 100);
        tx.send(record(0, 1)).await.unwrap();
        drop(tx);
        assert!(rx.recv().await.is_some());
        assert!(rx.recv().await.is_none());
    }
}
