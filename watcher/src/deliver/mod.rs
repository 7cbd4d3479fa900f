//! Delivery: rendered units → batched messages → a sink, with acknowledgements
//! flowing back to the checkpoint.
//!
//! The hot path has no fixed linger: when a send permit is free, what is queued
//! goes out at once; whatever arrives while the sender waits for a permit (rate
//! limits, a slow Discord) coalesces into the next message, up to `BATCH_SIZE`
//! embeds and 6000 characters. One message is in flight at a time per webhook,
//! so acknowledgements arrive in file order and the checkpoint's contiguous
//! prefix is simply "everything up to the last acknowledged line".

pub mod batch;
pub mod bridge;
pub mod dlq;
pub mod sink;
pub mod webhook;

pub use sink::{ConsoleSink, PayloadSink, Sent, Sink};

use std::time::Duration;

/// Telemetry of the delivery stage. Pipeline code reports through this trait
/// only; the binary turns the calls into metrics and log lines.
pub trait DeliveryObserver: crate::atomic_file::StateObserver + Send + Sync {
    /// A request to Discord is about to go out (its answer, or its failure,
    /// follows as one of the calls below). Tells an unanswered request apart
    /// from waiting for a permit, which is our own pacing.
    fn attempt(&self) {}
    /// A message was accepted by Discord.
    fn sent(&self, embeds: usize, bytes: usize);
    /// A 429 was received (and will be honoured).
    fn rate_limited(&self, scope: &'static str);
    /// A send is retried after a transient failure (`server_error`, `network`, `provision`).
    fn retry(&self, reason: &'static str);
    /// A message could not be delivered and was dead-lettered for `reason`.
    fn dead_lettered(&self, reason: &'static str, detail: &str, dropped_by_cap: u64);
    /// A line's embeds were all acknowledged, `latency` after it was read.
    fn acked(&self, latency: Duration);
    /// A field had to be cut to fit Discord's limits.
    fn truncated(&self, field: &'static str);
    /// The webhook was re-provisioned after Discord said it is gone.
    fn reprovisioned(&self);
    /// At shutdown, `messages` were handed to bot-bridge (`accepted`), could
    /// not be (`failed`), or were kept in `STATE_DIR/backlog.jsonl` (`kept`).
    fn handoff(&self, _outcome: &'static str, _messages: usize) {}
    /// A dead-lettered message was delivered after all (its cause passed).
    fn dlq_replayed(&self) {}
    /// The records waiting in the queue between ingest and the sink loop.
    fn queue(&self, _depth: usize, _bytes: usize) {}
    /// One API response's token usage, as the sink loop rendered it.
    fn usage(&self, _usage: &crate::transcript::Usage) {}
    /// The session's estimated cost so far (priced models only).
    fn cost(&self, _usd: f64) {}
    /// How long a request to Discord takes now (the slowest of the last few,
    /// or the one in flight if it has taken longer): what a shutdown plans
    /// its stages with. Not telemetry but what telemetry saw.
    fn latency_estimate(&self) -> Duration {
        Duration::ZERO
    }
}

/// An observer that records nothing, for tools and tests.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopObserver;

impl DeliveryObserver for NoopObserver {
    fn sent(&self, _: usize, _: usize) {}
    fn rate_limited(&self, _: &'static str) {}
    fn retry(&self, _: &'static str) {}
    fn dead_lettered(&self, _: &'static str, _: &str, _: u64) {}
    fn acked(&self, _: Duration) {}
    fn truncated(&self, _: &'static str) {}
    fn reprovisioned(&self) {}
}
