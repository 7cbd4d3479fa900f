//! Where the sink loop's messages go. The loop ([`crate::pipeline`]) renders,
//! batches, acknowledges and checkpoints the same way whatever the sink is;
//! only the last step differs: the run's webhook ([`super::webhook::WebhookSender`]),
//! a console showing the session as lines ([`ConsoleSink`]), or `watcher render`
//! printing the payloads it would post.

use std::future::Future;
use std::io::Write;

use discord::embed::WebhookMessage;

use super::dlq::DlqReason;
use crate::render::{console, Stats};
use crate::transcript::Event;

/// How a message ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    Delivered,
    DeadLettered(DlqReason),
}

/// The last stage of the sink loop. A message is acknowledged (its lines may
/// pass the checkpoint) when `send` returns, delivered or dead-lettered.
pub trait Sink: Send {
    /// Waits for a permit to send the next message (rate limits). The loop
    /// calls this before it cuts a batch, so that what arrives meanwhile joins
    /// the message. A sink without pacing is ready at once.
    fn acquire(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Delivers `msg`, or dead-letters it. With `acquired`, the permit from
    /// [`Sink::acquire`] is used for the first attempt.
    fn send(&mut self, msg: &WebhookMessage, acquired: bool) -> impl Future<Output = Sent> + Send;

    /// When the sink has dead letters to try again ([`Sink::redeliver`]).
    fn redeliver_due(&self) -> Option<tokio::time::Instant> {
        None
    }

    /// Tries one dead letter again (the loop calls this when idle, once
    /// [`Sink::redeliver_due`] has come).
    fn redeliver(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Up to `max` dead letters worth retrying, oldest first, for a
    /// shutdown's hand-off to bot-bridge.
    fn retryable_dead_letters(&self, _max: usize) -> Vec<WebhookMessage> {
        Vec::new()
    }

    /// The first `n` of [`Sink::retryable_dead_letters`] were handed over:
    /// they leave the DLQ.
    fn forget_dead_letters(&mut self, _n: usize) {}

    /// How long ago the channel accepted the messages that still hold its
    /// window, for a shutdown's hand-off (a sink without pacing: none).
    fn channel_sends(&self) -> Vec<std::time::Duration> {
        Vec::new()
    }

    /// Sees each event as it is rendered (a console shows it as a line).
    fn event(&mut self, _ev: &Event) {}

    /// The session ended with these totals (a console prints its summary line).
    fn ended(&mut self, _stats: &Stats) {}
}

/// Shows the session on stdout as human-readable lines (no webhook
/// configured, or `watcher render --format text`). Messages are taken as
/// delivered: the lines were shown as the events came.
#[derive(Debug)]
pub struct ConsoleSink {
    color: bool,
}

impl ConsoleSink {
    pub fn new(color: bool) -> Self {
        Self { color }
    }
}

impl Sink for ConsoleSink {
    async fn send(&mut self, _msg: &WebhookMessage, _acquired: bool) -> Sent {
        Sent::Delivered
    }

    fn event(&mut self, ev: &Event) {
        if let Some(line) = console::line(ev, self.color) {
            // A closed stdout (`| head`) is not the sink loop's failure.
            let _ = writeln!(std::io::stdout().lock(), "{line}");
        }
    }

    fn ended(&mut self, stats: &Stats) {
        let _ = writeln!(
            std::io::stdout().lock(),
            "{}",
            console::summary_line(stats, self.color)
        );
    }
}

/// Prints each message as the JSON payload the webhook would receive, one per
/// line (`watcher render --format json`).
#[derive(Debug, Default)]
pub struct PayloadSink;

impl Sink for PayloadSink {
    async fn send(&mut self, msg: &WebhookMessage, _acquired: bool) -> Sent {
        if let Ok(json) = serde_json::to_string(msg) {
            let _ = writeln!(std::io::stdout().lock(), "{json}");
        }
        Sent::Delivered
    }
}
