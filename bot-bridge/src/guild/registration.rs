//! Slash-command registration, off the start-up path: bot-bridge serves
//! runs (what watchers need) whether or not Discord answers, and keeps
//! trying to register its commands in the background with backoff.

use std::time::Duration;

use ops::backoff::Backoff;
use ops::Shutdown;

use crate::app::AppState;
use crate::events::ErrorKind;

/// The retry schedule between failed registrations (each failed
/// registration already includes the REST client's own retries).
pub const BACKOFF: Backoff = Backoff {
    base: Duration::from_secs(1),
    cap: Duration::from_secs(60),
};

/// Registers the slash commands until Discord accepts them, or `shutdown`.
/// Each failure is counted in `bridge_errors_total{kind="discord"}` and
/// shown in the `commands` health component (degraded until registered).
pub async fn run(state: AppState, backoff: Backoff, shutdown: Shutdown) {
    let commands = state.inner.health.as_ref().map(|h| h.commands.clone());
    if state.settings().application_id.is_none() {
        if let Some(c) = &commands {
            c.ok("slash commands off (no DISCORD_APPLICATION_ID)");
        }
        return;
    }
    let mut failures = 0u32;
    loop {
        let result = tokio::select! {
            () = shutdown.wait() => return,
            r = crate::api::interactions::register_commands(&state) => r,
        };
        match result {
            Ok(()) => {
                state.discord_ok();
                if let Some(c) = &commands {
                    c.ok("registered");
                }
                tracing::info!(failures, "slash commands registered");
                return;
            }
            Err(e) => {
                let delay = backoff.delay(failures);
                failures = failures.saturating_add(1);
                state.report(
                    ErrorKind::Discord,
                    None,
                    &format_args!("cannot register slash commands (attempt {failures}): {e}"),
                );
                if let Some(c) = &commands {
                    c.degraded(format!(
                        "registration failed {failures} time(s), retrying in {:.1}s: {e}",
                        delay.as_secs_f64()
                    ));
                }
                tokio::select! {
                    () = shutdown.wait() => return,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use serde_json::Value;

    use super::*;
    use crate::app::fixture;
    use crate::guild::memory::MockDiscord;
    use crate::guild::{
        Channel, DiscordApi, DiscordError, DiscordFuture, ListedWebhook, NewChannel, Webhook,
    };

    /// The in-memory Discord, failing the first `fail` registrations.
    struct Flaky {
        inner: MockDiscord,
        fail: AtomicU32,
    }

    impl DiscordApi for Flaky {
        fn list_guild_channels(&self, g: &str) -> DiscordFuture<'_, Vec<Channel>> {
            self.inner.list_guild_channels(g)
        }
        fn get_channel(&self, c: &str) -> DiscordFuture<'_, Option<Channel>> {
            self.inner.get_channel(c)
        }
        fn create_channel(&self, g: &str, c: &NewChannel, r: &str) -> DiscordFuture<'_, Channel> {
            self.inner.create_channel(g, c, r)
        }
        fn modify_channel(&self, c: &str, p: &Value, r: &str) -> DiscordFuture<'_, ()> {
            self.inner.modify_channel(c, p, r)
        }
        fn delete_channel(&self, c: &str, r: &str) -> DiscordFuture<'_, ()> {
            self.inner.delete_channel(c, r)
        }
        fn create_thread(&self, c: &str, n: &str, r: &str) -> DiscordFuture<'_, Channel> {
            self.inner.create_thread(c, n, r)
        }
        fn create_webhook(&self, c: &str, n: &str, r: &str) -> DiscordFuture<'_, Webhook> {
            self.inner.create_webhook(c, n, r)
        }
        fn list_channel_webhooks(&self, c: &str) -> DiscordFuture<'_, Vec<ListedWebhook>> {
            self.inner.list_channel_webhooks(c)
        }
        fn webhook_exists(&self, w: &str) -> DiscordFuture<'_, bool> {
            self.inner.webhook_exists(w)
        }
        fn delete_webhook(&self, w: &str, r: &str) -> DiscordFuture<'_, ()> {
            self.inner.delete_webhook(w, r)
        }
        fn bulk_overwrite_guild_commands(
            &self,
            a: &str,
            g: &str,
            c: &Value,
        ) -> DiscordFuture<'_, ()> {
            let left = self.fail.load(Ordering::SeqCst);
            if left > 0 {
                self.fail.store(left - 1, Ordering::SeqCst);
                return Box::pin(async { Err(DiscordError::Transport("timed out".into())) });
            }
            self.inner.bulk_overwrite_guild_commands(a, g, c)
        }
        fn edit_original_interaction_response(
            &self,
            a: &str,
            t: &ops::Secret<String>,
            b: &Value,
        ) -> DiscordFuture<'_, ()> {
            self.inner.edit_original_interaction_response(a, t, b)
        }
        fn execute_webhook(
            &self,
            w: &str,
            t: &ops::Secret<String>,
            thread: Option<&str>,
            b: &Value,
        ) -> DiscordFuture<'_, ()> {
            self.inner.execute_webhook(w, t, thread, b)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failed_registrations_are_retried_counted_and_shown() {
        let health = ops::Health::new("0");
        let parts = crate::app::HealthParts::register(&health);
        let flaky = Arc::new(Flaky {
            inner: MockDiscord::default(),
            fail: AtomicU32::new(3),
        });
        let metrics = ops::Metrics::new("bridge", "0").unwrap();
        let state = AppState::new(
            fixture::settings(),
            Arc::new(crate::store::sqlite::SqliteStore::memory().unwrap()),
            flaky.clone(),
            crate::events::BridgeMetrics::new(&metrics).unwrap(),
            crate::relay::Relay::new(Duration::from_secs(1)).unwrap(),
            Some(parts.clone()),
        );
        assert_eq!(parts.commands.status(), Some(ops::Status::Degraded));
        let task = tokio::spawn(run(state, BACKOFF, Shutdown::new()));
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("registration gave up or hung")
            .unwrap();
        assert!(flaky.inner.with(|s| s.commands.is_some()));
        assert_eq!(parts.commands.status(), Some(ops::Status::Ok));
        assert!(
            metrics
                .encode()
                .contains("bridge_errors_total{kind=\"discord\"} 3"),
            "{}",
            metrics.encode()
        );
        assert!(health.ready().0, "commands must not gate readiness");
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_stops_a_registration_that_never_succeeds() {
        let flaky = Arc::new(Flaky {
            inner: MockDiscord::default(),
            fail: AtomicU32::new(u32::MAX),
        });
        let (mut state, _) = fixture::state(fixture::settings());
        let inner = Arc::get_mut(&mut state.inner).unwrap();
        inner.discord = flaky;
        let shutdown = Shutdown::new();
        let task = tokio::spawn(run(state, BACKOFF, shutdown.clone()));
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert!(!task.is_finished());
        shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("shutdown ignored")
            .unwrap();
    }
}
