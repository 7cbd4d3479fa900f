//! When to look at the files again: a `notify` watcher on the directories of
//! interest, and always a poll tick as the safety net.
//!
//! Notifications are only a latency optimisation. They can be unavailable
//! (no inotify in the container, watch limits), overflow, or miss a file
//! created before its directory was watched, so the poll keeps running
//! regardless and a notify error simply means "look now". While every
//! directory is watched the poll relaxes to [`SAFETY_POLL`] (an idle sidecar
//! should cost nothing); `POLL_INTERVAL_MS` applies when notifications are
//! unavailable or a directory could not be watched.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::Notify;
use tokio::time::{Interval, MissedTickBehavior};

/// The poll interval while notifications cover every directory.
pub const SAFETY_POLL: Duration = Duration::from_secs(1);

fn interval(period: Duration) -> Interval {
    let mut tick = tokio::time::interval(period.max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick
}

/// Wake-ups for the ingest loop.
pub struct Wake {
    signal: Arc<Notify>,
    /// `None` when notifications are unavailable: polling only.
    watcher: Option<RecommendedWatcher>,
    /// Directories watched so far (watching is idempotent per directory).
    watched: HashSet<PathBuf>,
    tick: Interval,
    /// `POLL_INTERVAL_MS`, used once notifications cannot be relied on.
    fallback: Duration,
    /// Whether the tick runs at `fallback` already.
    polling: bool,
}

impl Wake {
    pub fn new(poll_interval: Duration) -> Self {
        let signal = Arc::new(Notify::new());
        let tx = signal.clone();
        // Any event, error or overflow included, just means "look now".
        let watcher = notify::recommended_watcher(move |_res: notify::Result<notify::Event>| {
            tx.notify_one();
        });
        let watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "file notifications unavailable; polling only");
                None
            }
        };
        let polling = watcher.is_none();
        let period = if polling {
            poll_interval
        } else {
            poll_interval.max(SAFETY_POLL)
        };
        Self {
            signal,
            watcher,
            watched: HashSet::new(),
            tick: interval(period),
            fallback: poll_interval,
            polling,
        }
    }

    /// The current poll period (tests, diagnostics).
    pub fn poll_period(&self) -> Duration {
        self.tick.period()
    }

    fn fall_back_to_polling(&mut self) {
        if !self.polling {
            self.polling = true;
            self.tick = interval(self.fallback);
        }
    }

    /// Watches `dir` (not recursively) if it exists and is not watched yet.
    /// Failure is fine: the poll still covers it.
    pub fn watch_dir(&mut self, dir: &Path) {
        if self.watched.contains(dir) || !dir.is_dir() {
            return;
        }
        let Some(w) = self.watcher.as_mut() else {
            return;
        };
        match w.watch(dir, RecursiveMode::NonRecursive) {
            Ok(()) => {
                self.watched.insert(dir.to_path_buf());
            }
            Err(e) => {
                tracing::debug!(dir = %dir.display(), error = %e, "cannot watch directory; polling it");
                // Do not retry on every pass.
                self.watched.insert(dir.to_path_buf());
                self.fall_back_to_polling();
            }
        }
    }

    /// Stops watching directories no longer of interest.
    pub fn retain(&mut self, keep: &HashSet<PathBuf>) {
        let gone: Vec<PathBuf> = self.watched.difference(keep).cloned().collect();
        for dir in gone {
            if let Some(w) = self.watcher.as_mut() {
                let _ = w.unwatch(&dir);
            }
            self.watched.remove(&dir);
        }
    }

    /// Resolves on the next notification or poll tick, whichever comes first.
    pub async fn wait(&mut self) {
        tokio::select! {
            () = self.signal.notified() => {}
            _ = self.tick.tick() => {}
        }
    }

    /// Sleeps for `delay` (backoff while nothing exists yet), cut short by a
    /// notification.
    pub async fn wait_at_most(&mut self, delay: Duration) {
        tokio::select! {
            () = self.signal.notified() => {}
            () = tokio::time::sleep(delay) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn notifications_relax_the_poll_and_still_wake_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut wake = Wake::new(Duration::from_millis(100));
        if wake.watcher.is_none() {
            eprintln!("skipped: no file notifications on this machine");
            assert_eq!(wake.poll_period(), Duration::from_millis(100));
            return;
        }
        assert_eq!(wake.poll_period(), SAFETY_POLL);
        wake.watch_dir(dir.path());
        // The first tick of an interval fires at once; consume it.
        wake.wait().await;
        let start = tokio::time::Instant::now();
        std::fs::write(dir.path().join("s.jsonl"), b"{}\n").unwrap();
        tokio::time::timeout(SAFETY_POLL / 2, wake.wait())
            .await
            .expect("a write in a watched directory wakes before the safety poll");
        assert!(start.elapsed() < SAFETY_POLL / 2);
    }

    #[tokio::test]
    async fn an_unwatchable_directory_brings_the_fast_poll_back() {
        let mut wake = Wake::new(Duration::from_millis(100));
        wake.fall_back_to_polling();
        assert_eq!(wake.poll_period(), Duration::from_millis(100));
        // Idempotent.
        wake.fall_back_to_polling();
        assert_eq!(wake.poll_period(), Duration::from_millis(100));
    }
}
