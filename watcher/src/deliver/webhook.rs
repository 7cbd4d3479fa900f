//! Sending one message to the run's webhook with the retry classes of DESIGN.md:
//! 429 → wait `retry_after`, not a failure; 5xx, timeouts and resets →
//! exponential backoff with full jitter until `DELIVERY_MAX_ELAPSED`, then the
//! DLQ; 400 → DLQ at once with Discord's error; 401/404 → re-provision through
//! bot-bridge when configured, else the DLQ.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use discord::embed::WebhookMessage;
use discord::ratelimit::{Limiter, RateLimitHeaders};
use discord::webhook::{ExecuteOutcome, WebhookClient};
use discord::webhook_url::WebhookUrl;
use ops::Backoff;
use tokio::time::Instant;

use super::bridge::{BridgeClient, Provisioned};
use super::dlq::{Dlq, DlqEntry, DlqReason};
use super::DeliveryObserver;
use crate::atomic_file::StateFile;

/// How a message ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    Delivered,
    DeadLettered(DlqReason),
}

/// Notified when the webhook changes (re-provisioning), so the input listener
/// can pick up the new HMAC secret.
pub type OnProvisioned = Arc<dyn Fn(&Provisioned) + Send + Sync>;

/// The one sender of a run's webhook.
pub struct WebhookSender {
    client: WebhookClient,
    limiter: Limiter,
    target: WebhookUrl,
    bridge: Option<BridgeClient>,
    on_provisioned: Option<OnProvisioned>,
    backoff: Backoff,
    max_elapsed: Duration,
    dlq: Dlq,
    observer: Arc<dyn DeliveryObserver>,
}

impl WebhookSender {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: WebhookClient,
        limiter: Limiter,
        target: WebhookUrl,
        bridge: Option<BridgeClient>,
        on_provisioned: Option<OnProvisioned>,
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
            on_provisioned,
            backoff,
            max_elapsed,
            dlq,
            observer,
        }
    }

    pub fn target(&self) -> &WebhookUrl {
        &self.target
    }

    fn route(&self) -> String {
        format!("webhook:{}", self.target.id())
    }

    /// Waits for a send permit (rate limits). The pipeline calls this before
    /// taking a batch so that what arrives meanwhile joins the message.
    pub async fn acquire(&self) {
        let route = self.route();
        let channel = self.target.id().to_owned();
        self.limiter.acquire_message(&route, &channel).await;
    }

    /// Sends `msg` until it is delivered or dead-lettered. Never gives up early
    /// on a transient failure and never retries a permanent one. With
    /// `acquired`, the first attempt uses the permit from [`Self::acquire`].
    pub async fn send(&mut self, msg: &WebhookMessage, mut acquired: bool) -> Sent {
        let started = Instant::now();
        let mut first_error: Option<SystemTime> = None;
        let mut attempts: u32 = 0;
        let mut retries: u32 = 0;
        loop {
            let route = self.route();
            if !std::mem::take(&mut acquired) {
                self.acquire().await;
            }
            attempts += 1;
            let outcome = self.client.execute(&self.target, msg).await;
            let (reason, detail) = match outcome {
                ExecuteOutcome::Delivered { headers, .. } => {
                    self.limiter.update(&route, &headers);
                    let bytes = serde_json::to_vec(msg).map_or(0, |v| v.len())
                        + msg.files.iter().map(|f| f.bytes.len()).sum::<usize>();
                    self.observer.sent(msg.embeds.len(), bytes);
                    return Sent::Delivered;
                }
                ExecuteOutcome::RateLimited {
                    retry_after,
                    scope,
                    global,
                } => {
                    let headers = RateLimitHeaders {
                        retry_after: Some(retry_after),
                        scope,
                        global,
                        ..RateLimitHeaders::default()
                    };
                    self.limiter.on_429(&route, &headers);
                    let label = if global {
                        "global"
                    } else {
                        scope.map_or("unknown", |s| s.as_str())
                    };
                    self.observer.rate_limited(label);
                    tracing::warn!(
                        scope = label,
                        retry_after_ms = retry_after.as_millis() as u64,
                        "webhook rate limited; waiting"
                    );
                    continue;
                }
                ExecuteOutcome::Rejected { status, body } => {
                    first_error.get_or_insert_with(SystemTime::now);
                    return self
                        .dead_letter(
                            msg,
                            DlqReason::Rejected,
                            format!("{status}: {body}"),
                            attempts,
                            first_error,
                        )
                        .await;
                }
                ExecuteOutcome::Gone { status } => {
                    first_error.get_or_insert_with(SystemTime::now);
                    if self.bridge.is_none() {
                        return self
                            .dead_letter(
                                msg,
                                DlqReason::WebhookGone,
                                format!("webhook answered {status}"),
                                attempts,
                                first_error,
                            )
                            .await;
                    }
                    match self.reprovision().await {
                        Ok(()) => continue,
                        Err(e) => ("provision", e),
                    }
                }
                ExecuteOutcome::ServerError { status, headers } => {
                    self.limiter.update(&route, &headers);
                    ("server_error", format!("status {status}"))
                }
                ExecuteOutcome::Network { error } => ("network", error),
            };
            first_error.get_or_insert_with(SystemTime::now);
            let delay = self.backoff.delay(retries);
            retries = retries.saturating_add(1);
            if started.elapsed() + delay > self.max_elapsed {
                let dlq_reason = if reason == "provision" {
                    DlqReason::WebhookGone
                } else {
                    DlqReason::RetriesExhausted
                };
                return self
                    .dead_letter(msg, dlq_reason, detail, attempts, first_error)
                    .await;
            }
            self.observer.retry(reason);
            tracing::warn!(reason, error = %detail, attempt = attempts, delay_ms = delay.as_millis() as u64, "delivery failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    async fn reprovision(&mut self) -> Result<(), String> {
        let Some(bridge) = &self.bridge else {
            return Err("no bot-bridge configured".into());
        };
        match bridge.provision().await {
            Ok(p) => {
                tracing::info!(webhook = %p.webhook, run_id = %p.run_id, channel_id = %p.channel_id, "webhook re-provisioned");
                self.target = p.webhook.clone();
                if let Some(cb) = &self.on_provisioned {
                    cb(&p);
                }
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
    async fn dead_letter(
        &mut self,
        msg: &WebhookMessage,
        reason: DlqReason,
        detail: String,
        attempts: u32,
        first_error: Option<SystemTime>,
    ) -> Sent {
        let entry = DlqEntry::new(
            msg,
            reason,
            detail.clone(),
            attempts,
            first_error.unwrap_or_else(SystemTime::now),
        );
        let mut failures = 0u32;
        let dropped = loop {
            match self.dlq.append(&entry) {
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
        Sent::DeadLettered(reason)
    }
}
