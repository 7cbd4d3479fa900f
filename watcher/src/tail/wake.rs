//! When to look at the files again: a `notify` watcher on the directories of
//! interest, and always a poll tick as the safety net.
//!
//! Notifications are only a latency optimisation. They can be unavailable
//! (no inotify in the container, watch limits), overflow, or miss a file
//! created before its directory was watched, so the poll keeps running
//! regardless and a notify error simply means "look now".

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::Notify;
use tokio::time::{Interval, MissedTickBehavior};

/// Wake-ups for the ingest loop.
pub struct Wake {
    signal: Arc<Notify>,
    /// `None` when notifications are unavailable: polling only.
    watcher: Option<RecommendedWatcher>,
    /// Directories watched so far (watching is idempotent per directory).
    watched: HashSet<PathBuf>,
    tick: Interval,
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
        let mut tick = tokio::time::interval(poll_interval.max(Duration::from_millis(1)));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self {
            signal,
            watcher,
            watched: HashSet::new(),
            tick,
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
