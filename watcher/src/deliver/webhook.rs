//! Sending one message to the run's webhook with the retry classes of DESIGN.md:
//! 429 → wait `retry_after`, not a failure; 5xx, timeouts and resets →
//! exponential backoff with full jitter until `DELIVERY_MAX_ELAPSED`, then the
//! DLQ; 400 → DLQ at once with Discord's error; 401/404 → re-provision through
//! bot-bridge when configured, else the DLQ. `DELIVERY_MAX_ELAPSED` counts from
//! when the message began waiting for its first send permit, so a message held
//! up by rate limits is dead-lettered on time too.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use discord::embed::WebhookMessage;
use discord::ratelimit::{Limiter, Permit, RateLimitHeaders, MAX_WAIT};
use discord::webhook::{ExecuteOutcome, WebhookClient};
use discord::webhook_url::WebhookUrl;
use ops::Backoff;
use tokio::time::Instant;

use super::bridge::{BridgeClient, Provisioned};
use super::dlq::{Dlq, DlqEntry, DlqReason};
use super::DeliveryObserver;
use crate::atomic_file::StateFile;
use crate::state::off_the_runtime;

pub use super::sink::Sent;

/// The retry schedule after a 5xx, a timeout or a reset: full jitter from
/// 250 ms, capped at 3 s, so that delivery resumes within ~3 s of Discord
/// recovering however long the outage was. A retry every 1.5 s on average stays
/// far below the webhook's 5 requests per 2 s, and 5xx answers do not count
/// towards Cloudflare's invalid-request ban.
pub const RETRY_BACKOFF: Backoff = Backoff {
    base: Duration::from_millis(250),
    cap: Duration::from_secs(3),
};

/// How long one webhook request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Discord's global limit per bot/IP, which the limiter keeps below.
const GLOBAL_PER_SECOND: u32 = 50;

/// What a sender is built from: the channel's pace (`CHANNEL_MESSAGES_PER_MINUTE`,
/// `CHANNEL_WINDOW`) and how long a message may try (`DELIVERY_MAX_ELAPSED`).
#[derive(Debug, Clone)]
pub struct SenderConfig {
    pub channel_messages_per_minute: u32,
    pub channel_window: Duration,
    pub max_elapsed: Duration,
    pub backoff: Backoff,
}

impl SenderConfig {
    /// The live watcher's sender, from its configuration.
    pub fn from_config(cfg: &crate::config::Config) -> Self {
        Self {
            channel_messages_per_minute: cfg.channel_messages_per_minute,
            channel_window: cfg.channel_window,
            max_elapsed: cfg.delivery_max_elapsed,
            backoff: RETRY_BACKOFF,
        }
    }
}

/// The webhook could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the webhook client: {0}")]
pub struct BuildError(#[from] discord::webhook::ClientError);

/// Why a message could not be delivered (what its DLQ entry says).
#[derive(Debug)]
struct Failed {
    reason: DlqReason,
    detail: String,
    attempts: u32,
    first_error: Option<SystemTime>,
}

/// Retry schedule of dead letters while their cause may still be there: a
/// probe with the oldest entry, then one a minute at most. Any delivery of a
/// live message shows the cause passed and ends the wait.
pub const REDELIVER_BACKOFF: Backoff = Backoff {
    base: Duration::from_secs(2),
    cap: Duration::from_secs(60),
};

/// How long one redelivery may take: a probe, not a send that holds up the
/// live messages behind it for `DELIVERY_MAX_ELAPSED`.
pub const REDELIVER_BOUND: Duration = Duration::from_secs(10);

/// When dead letters are tried again (issue 18: the DLQ drains itself).
#[derive(Debug, Default)]
struct Redeliver {
    /// When the next entry may be tried; `None` when none is worth trying.
    next: Option<Instant>,
    /// Redeliveries failed in a row (their backoff).
    failures: u32,
}

impl Redeliver {
    /// A live message was delivered: the entries may go now.
    fn cause_passed(&mut self) {
        if self.next.is_some() {
            self.next = Some(Instant::now());
            self.failures = 0;
        }
    }

    /// Something was dead-lettered, or a redelivery failed: try later.
    fn failed(&mut self) {
        let delay = REDELIVER_BACKOFF.delay(self.failures);
        self.failures = self.failures.saturating_add(1);
        self.next = Some(Instant::now() + delay);
    }
}

/// Where a sender's requests go: Discord over HTTP ([`WebhookClient`]), or a
/// scripted Discord in tests, which then run on a paused clock.
pub trait Transport: Send + Sync {
    /// One request: what Discord answered, or why there was no answer.
    fn execute(
        &self,
        url: &WebhookUrl,
        msg: &WebhookMessage,
    ) -> impl std::future::Future<Output = ExecuteOutcome> + Send;
}

impl Transport for WebhookClient {
    fn execute(
        &self,
        url: &WebhookUrl,
        msg: &WebhookMessage,
    ) -> impl std::future::Future<Output = ExecuteOutcome> + Send {
        WebhookClient::execute(self, url, msg)
    }
}

/// The one sender of a run's webhook.
pub struct WebhookSender<T = WebhookClient> {
    client: T,
    limiter: Limiter,
    target: WebhookUrl,
    bridge: Option<BridgeClient>,
    /// Publishes each re-provisioning (a new webhook, a new input secret):
    /// the input listener follows it without delivery knowing about input.
    provisioned: tokio::sync::watch::Sender<Option<Provisioned>>,
    backoff: Backoff,
    max_elapsed: Duration,
    dlq: Dlq,
    observer: Arc<dyn DeliveryObserver>,
    /// When dead letters are tried again.
    redeliver: Redeliver,
    /// A permit taken by [`Self::acquire`] for the next message.
    permit: Option<Permit>,
    /// When the next message began waiting for its permit: its
    /// `DELIVERY_MAX_ELAPSED` runs from there.
    waiting_since: Option<Instant>,
}

impl WebhookSender {
    /// The sender of `target` (re-provisioned through `bridge` when Discord
    /// says it is gone), dead-lettering into `dlq`. The one place a webhook
    /// sender is built, for the live watcher and `dlq replay` alike.
    pub fn new(
        cfg: &SenderConfig,
        target: WebhookUrl,
        bridge: Option<BridgeClient>,
        dlq: Dlq,
        observer: Arc<dyn DeliveryObserver>,
    ) -> Result<Self, BuildError> {
        let limiter = Limiter::new(discord::ratelimit::LimiterConfig {
            global_per_second: GLOBAL_PER_SECOND,
            channel_messages_per_minute: Some(cfg.channel_messages_per_minute),
            channel_window: cfg.channel_window,
        });
        Ok(Self::with_parts(
            WebhookClient::new(REQUEST_TIMEOUT)?,
            limiter,
            target,
            bridge,
            cfg.backoff,
            cfg.max_elapsed,
            dlq,
            observer,
        ))
    }
}

impl<T: Transport> WebhookSender<T> {
    /// A sender over `client` (a scripted Discord in tests).
    #[allow(clippy::too_many_arguments)]
    pub fn with_parts(
        client: T,
        limiter: Limiter,
        target: WebhookUrl,
        bridge: Option<BridgeClient>,
        backoff: Backoff,
        max_elapsed: Duration,
        dlq: Dlq,
        observer: Arc<dyn DeliveryObserver>,
    ) -> Self {
        Self {
            client,
            limiter,
            target,
            bridge,
            provisioned: tokio::sync::watch::Sender::new(None),
            backoff,
            max_elapsed,
            dlq,
            observer,
            // A restart tries what an earlier run left in the DLQ.
            redeliver: Redeliver {
                next: Some(Instant::now()),
                failures: 0,
            },
            permit: None,
            waiting_since: None,
        }
    }

    /// Each re-provisioning, as it happens (the input listener's secret).
    pub fn provisioned(&self) -> tokio::sync::watch::Receiver<Option<Provisioned>> {
        self.provisioned.subscribe()
    }

    pub fn target(&self) -> &WebhookUrl {
        &self.target
    }

    fn route(&self) -> String {
        format!("webhook:{}", self.target.id())
    }

    fn channel(&self) -> String {
        self.target.id().to_owned()
    }

    /// Waits for a send permit (rate limits). The pipeline calls this before
    /// taking a batch so that what arrives meanwhile joins the message. Gives
    /// up at `DELIVERY_MAX_ELAPSED`; [`Self::send`] then dead-letters.
    pub async fn acquire(&mut self) {
        if self.permit.is_some() {
            return;
        }
        let since = *self.waiting_since.get_or_insert_with(Instant::now);
        let (route, channel) = (self.route(), self.channel());
        self.permit = self
            .limiter
            .acquire_until(&route, Some(&channel), since + self.max_elapsed)
            .await;
    }

    /// Sends `msg` until it is delivered or dead-lettered. Never gives up early
    /// on a transient failure and never retries a permanent one. With
    /// `acquired`, the first attempt uses the permit from [`Self::acquire`]
    /// and the message's time runs from when that wait began.
    pub async fn send(&mut self, msg: &WebhookMessage, acquired: bool) -> Sent {
        let since = self.waiting_since.take();
        let started = since.filter(|_| acquired).unwrap_or_else(Instant::now);
        let deadline = started + self.max_elapsed;
        // A permit taken for an earlier batch that never came is used here: left
        // unused it would hold the bucket and the channel slot it reserved.
        let held = self.permit.take();
        match self.attempt(msg, deadline, held).await {
            Ok(()) => {
                // Discord takes messages again: what was dead-lettered for a
                // passing cause may go now.
                self.redeliver.cause_passed();
                Sent::Delivered
            }
            Err(failed) => {
                let reason = failed.reason;
                self.dead_letter(msg, failed).await;
                if reason != DlqReason::Rejected {
                    self.redeliver.failed();
                }
                Sent::DeadLettered(reason)
            }
        }
    }

    /// Tries `msg` until it is delivered or `deadline` passes; why it failed
    /// otherwise. Never gives up early on a transient failure and never
    /// retries a permanent one.
    async fn attempt(
        &mut self,
        msg: &WebhookMessage,
        deadline: Instant,
        mut held: Option<Permit>,
    ) -> Result<(), Failed> {
        let mut first_error: Option<SystemTime> = None;
        let mut attempts: u32 = 0;
        let mut retries: u32 = 0;
        loop {
            let route = self.route();
            let permit = match held.take() {
                Some(p) => p,
                None => {
                    let channel = self.channel();
                    match self
                        .limiter
                        .acquire_until(&route, Some(&channel), deadline)
                        .await
                    {
                        Some(p) => p,
                        None => {
                            first_error.get_or_insert_with(SystemTime::now);
                            return Err(Failed {
                                reason: DlqReason::RetriesExhausted,
                                detail: "rate limited: no send permit within DELIVERY_MAX_ELAPSED"
                                    .into(),
                                attempts,
                                first_error,
                            });
                        }
                    }
                }
            };
            attempts += 1;
            self.observer.attempt();
            let outcome = Transport::execute(&self.client, &self.target, msg).await;
            let (reason, detail) = match outcome {
                ExecuteOutcome::Delivered { headers, .. } => {
                    permit.done(&headers);
                    let bytes = serde_json::to_vec(msg).map_or(0, |v| v.len())
                        + msg.files.iter().map(|f| f.bytes.len()).sum::<usize>();
                    self.observer.sent(msg.embeds.len(), bytes);
                    return Ok(());
                }
                ExecuteOutcome::RateLimited {
                    retry_after,
                    scope,
                    global,
                } => {
                    // The limiter caps the wait; a longer one is Discord's (or a
                    // proxy's) mistake, and DELIVERY_MAX_ELAPSED still applies.
                    permit.rate_limited(&RateLimitHeaders {
                        retry_after: Some(retry_after),
                        scope,
                        global,
                        ..RateLimitHeaders::default()
                    });
                    let label = if global {
                        "global"
                    } else {
                        scope.map_or("unknown", |s| s.as_str())
                    };
                    self.observer.rate_limited(label);
                    let capped = retry_after > MAX_WAIT;
                    tracing::warn!(
                        scope = label,
                        retry_after_ms = u64::try_from(retry_after.min(MAX_WAIT).as_millis())
                            .unwrap_or(u64::MAX),
                        capped,
                        "webhook rate limited; waiting"
                    );
                    continue;
                }
                ExecuteOutcome::Rejected { status, body } => {
                    permit.refused(&RateLimitHeaders::default());
                    first_error.get_or_insert_with(SystemTime::now);
                    return Err(Failed {
                        reason: DlqReason::Rejected,
                        detail: format!("{status}: {body}"),
                        attempts,
                        first_error,
                    });
                }
                ExecuteOutcome::Gone { status } => {
                    permit.refused(&RateLimitHeaders::default());
                    first_error.get_or_insert_with(SystemTime::now);
                    if self.bridge.is_none() {
                        return Err(Failed {
                            reason: DlqReason::WebhookGone,
                            detail: format!("webhook answered {status}"),
                            attempts,
                            first_error,
                        });
                    }
                    match self.reprovision().await {
                        Ok(()) => continue,
                        Err(e) => ("provision", e),
                    }
                }
                ExecuteOutcome::ServerError { status, headers } => {
                    permit.refused(&headers);
                    ("server_error", format!("status {status}"))
                }
                ExecuteOutcome::Network { error, maybe_sent } => {
                    if maybe_sent {
                        // Discord may have taken the message: it keeps its
                        // channel slot (the permit's drop does that).
                        drop(permit);
                    } else {
                        permit.lost();
                    }
                    ("network", error)
                }
            };
            first_error.get_or_insert_with(SystemTime::now);
            let delay = self.backoff.delay(retries);
            retries = retries.saturating_add(1);
            if Instant::now() + delay > deadline {
                let dlq_reason = if reason == "provision" {
                    DlqReason::WebhookGone
                } else {
                    DlqReason::RetriesExhausted
                };
                return Err(Failed {
                    reason: dlq_reason,
                    detail,
                    attempts,
                    first_error,
                });
            }
            self.observer.retry(reason);
            tracing::warn!(reason, error = %detail, attempt = attempts, delay_ms = delay.as_millis() as u64, "delivery failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// When [`Self::redeliver_one`] has something to try; `None` while the
    /// DLQ holds nothing worth retrying.
    pub fn redeliver_due(&self) -> Option<Instant> {
        self.redeliver.next
    }

    /// Tries the oldest dead letter whose cause may have passed (a 5xx or
    /// network outage; a gone webhook when bot-bridge can re-provision it),
    /// at the channel's pace: delivered, it leaves the DLQ
    /// (`watcher_dlq_replayed_total`); failed, it stays in place and the next
    /// try waits ([`REDELIVER_BACKOFF`]); rejected now (400), it stays for a
    /// person (`watcher dlq replay`) with the new reason. Entries keep their
    /// order relative to each other.
    pub async fn redeliver_one(&mut self) {
        let next = match self.next_redeliverable() {
            Ok(Some(next)) => next,
            Ok(None) => {
                self.redeliver = Redeliver::default();
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the DLQ to retry it");
                self.redeliver.failed();
                return;
            }
        };
        let (path, index, entry) = next;
        let msg = entry.message();
        let deadline = Instant::now() + REDELIVER_BOUND;
        let held = self.permit.take();
        match self.attempt(&msg, deadline, held).await {
            Ok(()) => {
                let removed = off_the_runtime(|| self.dlq.remove_at(&path, index));
                if let Err(e) = removed {
                    // Left in place it would be sent again: say so loudly.
                    self.observer.write_failed(StateFile::Dlq, &e);
                    self.redeliver.failed();
                    return;
                }
                self.observer.written(StateFile::Dlq);
                self.observer.dlq_replayed();
                tracing::info!(
                    reason = entry.reason.as_str(),
                    "dead-lettered message delivered"
                );
                self.redeliver.failures = 0;
                self.redeliver.next = Some(Instant::now());
            }
            Err(failed) if failed.reason == DlqReason::Rejected => {
                // Discord's final word now: kept for a person, not retried.
                self.dead_letter(&msg, failed).await;
                if let Err(e) = off_the_runtime(|| self.dlq.remove_at(&path, index)) {
                    self.observer.write_failed(StateFile::Dlq, &e);
                }
                self.redeliver.next = Some(Instant::now());
            }
            Err(failed) => {
                tracing::debug!(reason = failed.reason.as_str(), error = %failed.detail, "dead letter still undeliverable; will retry");
                self.redeliver.failed();
            }
        }
    }

    /// The oldest entry worth retrying: its file, its index there, the entry.
    fn next_redeliverable(
        &self,
    ) -> Result<Option<(std::path::PathBuf, usize, DlqEntry)>, super::dlq::DlqError> {
        let reprovisions = self.bridge.is_some();
        self.dlq.first(|entry| entry.retryable(reprovisions))
    }

    async fn reprovision(&mut self) -> Result<(), String> {
        let Some(bridge) = &self.bridge else {
            return Err("no bot-bridge configured".into());
        };
        match bridge.provision().await {
            Ok(p) => {
                tracing::info!(webhook = %p.webhook, run_id = %p.run_id, channel_id = %p.channel_id, "webhook re-provisioned");
                self.target = p.webhook.clone();
                self.provisioned.send_replace(Some(p));
                self.observer.reprovisioned();
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Writes `msg` to the DLQ and only then reports it dead-lettered. A
    /// failed write (a full or read-only `STATE_DIR`) is retried with backoff
    /// until it succeeds: returning would let the checkpoint pass a message
    /// that is nowhere. Meanwhile delivery waits, readiness fails after
    /// `SINK_UNHEALTHY_AFTER`, and each failure is counted
    /// (`watcher_state_write_errors_total{file="dlq"}`); a shutdown that
    /// comes first leaves the record before the checkpoint, to be read again.
    async fn dead_letter(&mut self, msg: &WebhookMessage, failed: Failed) {
        let Failed {
            reason,
            detail,
            attempts,
            first_error,
        } = failed;
        let entry = DlqEntry::new(
            msg,
            reason,
            detail.clone(),
            attempts,
            first_error.unwrap_or_else(SystemTime::now),
        );
        let mut failures = 0u32;
        let dropped = loop {
            match off_the_runtime(|| self.dlq.append(&entry)) {
                Ok(dropped) => {
                    self.observer.written(StateFile::Dlq);
                    break dropped;
                }
                Err(e) => {
                    self.observer.write_failed(StateFile::Dlq, &e);
                    tokio::time::sleep(self.backoff.delay(failures)).await;
                    failures = failures.saturating_add(1);
                }
            }
        };
        self.observer
            .dead_lettered(reason.as_str(), &detail, dropped);
    }
}

impl<T: Transport> super::Sink for WebhookSender<T> {
    async fn acquire(&mut self) {
        WebhookSender::acquire(self).await;
    }

    fn redeliver_due(&self) -> Option<Instant> {
        WebhookSender::redeliver_due(self)
    }

    async fn redeliver(&mut self) {
        self.redeliver_one().await;
    }

    fn channel_sends(&self) -> Vec<Duration> {
        self.limiter.channel_sends(&self.channel())
    }

    fn retryable_dead_letters(&self, max: usize) -> Vec<WebhookMessage> {
        let reprovisions = self.bridge.is_some();
        match self.dlq.retryable(max, reprovisions) {
            Ok(found) => found.iter().map(DlqEntry::message).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the DLQ for the hand-off");
                Vec::new()
            }
        }
    }

    fn forget_dead_letters(&mut self, n: usize) {
        let reprovisions = self.bridge.is_some();
        for _ in 0..n {
            let removed =
                self.dlq
                    .first(|e| e.retryable(reprovisions))
                    .and_then(|found| match found {
                        Some((path, index, _)) => self.dlq.remove_at(&path, index),
                        None => Ok(()),
                    });
            if let Err(e) = removed {
                // Left in place it is delivered twice (by bot-bridge and by a
                // later start): a duplicate, not a loss.
                self.observer.write_failed(StateFile::Dlq, &e);
                return;
            }
        }
    }

    async fn send(&mut self, msg: &WebhookMessage, acquired: bool) -> Sent {
        WebhookSender::send(self, msg, acquired).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::NoopObserver;
    use discord::ratelimit::{LimiterConfig, Scope};

    fn sender(limiter: Limiter, state: &std::path::Path, max_elapsed: Duration) -> WebhookSender {
        // Nothing listens there: no request may be made while rate limited.
        let url = WebhookUrl::parse("http://127.0.0.1:9/api/webhooks/1/token").unwrap();
        WebhookSender::with_parts(
            WebhookClient::new(Duration::from_secs(1)).unwrap(),
            limiter,
            url,
            None,
            RETRY_BACKOFF,
            max_elapsed,
            Dlq::open(state, 1 << 20).unwrap(),
            Arc::new(NoopObserver),
        )
    }

    fn rate_limited_for(limiter: &Limiter, wait: Duration) {
        let permit = limiter.try_acquire("webhook:1", Some("1")).unwrap();
        permit.rate_limited(&RateLimitHeaders {
            scope: Some(Scope::User),
            retry_after: Some(wait),
            ..RateLimitHeaders::default()
        });
    }

    /// issue 15: a message waiting for a permit was never dead-lettered, however
    /// long the wait; DELIVERY_MAX_ELAPSED covers that wait too.
    #[tokio::test(start_paused = true)]
    async fn a_message_waiting_for_a_permit_past_the_deadline_is_dead_lettered() {
        let dir = tempfile::tempdir().unwrap();
        let limiter = Limiter::new(LimiterConfig::default());
        // Discord (or a broken proxy) asks for an absurd wait: capped, no panic.
        rate_limited_for(&limiter, Duration::from_secs(10_000_000_000_000_000_000));
        let mut s = sender(limiter, dir.path(), Duration::from_secs(600));
        let start = Instant::now();
        s.acquire().await;
        let msg = WebhookMessage::default();
        assert_eq!(
            s.send(&msg, true).await,
            Sent::DeadLettered(DlqReason::RetriesExhausted)
        );
        assert_eq!(Instant::now() - start, Duration::from_secs(600));
        let entries = s.dlq.entries().unwrap();
        assert_eq!(entries.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_rate_limit_is_waited_out_within_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let limiter = Limiter::new(LimiterConfig::default());
        rate_limited_for(&limiter, Duration::from_secs(5));
        let mut s = sender(limiter, dir.path(), Duration::from_secs(600));
        let start = Instant::now();
        s.acquire().await;
        assert_eq!(Instant::now() - start, Duration::from_secs(5));
        assert!(s.permit.is_some());
    }

    /// A permit taken for a batch that never came must not hold the bucket:
    /// the next send (here the summary, sent without `acquire`) uses it.
    #[tokio::test(start_paused = true)]
    async fn a_permit_left_over_is_used_not_leaked() {
        let dir = tempfile::tempdir().unwrap();
        // No headers ever: the bucket stays unknown, one request at a time.
        let limiter = Limiter::new(LimiterConfig::default());
        let mut s = sender(limiter.clone(), dir.path(), Duration::from_secs(600));
        s.acquire().await;
        assert!(s.permit.is_some());
        assert!(limiter.try_acquire("webhook:1", Some("1")).is_err());
        // Nothing listens at the URL: the attempt fails at once and is retried
        // until the deadline; what matters is that it was made at all.
        let sent = tokio::time::timeout(
            Duration::from_secs(5),
            s.send(&WebhookMessage::default(), false),
        )
        .await;
        assert!(sent.is_err(), "still retrying the unreachable webhook");
        assert!(s.permit.is_none());
    }
}
