//! Graceful shutdown as a value passed to every server and loop.
//!
//! A `Shutdown` is triggered once (by SIGTERM/SIGINT or by a test); loops select on
//! [`Shutdown::wait`], stop taking new work and drain within the caller's deadline.

use tokio_util::sync::CancellationToken;

/// A cloneable shutdown signal.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts the shutdown; idempotent.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once shutdown has been triggered.
    pub async fn wait(&self) {
        self.token.cancelled().await;
    }

    /// A shutdown that triggers on the first SIGTERM or SIGINT. A second one
    /// ends the process at once (exit code 128 + the signal number, as a
    /// shell reports a death by signal): an operator or a kubelet that asks
    /// twice does not want to wait for the drain.
    pub fn on_signals() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        let shutdown = Self::new();
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let trigger = shutdown.clone();
        tokio::spawn(async move {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            tracing::info!(signal = name, "shutdown requested");
            trigger.trigger();
            let (name, code) = tokio::select! {
                _ = term.recv() => ("SIGTERM", 128 + 15),
                _ = int.recv() => ("SIGINT", 128 + 2),
            };
            tracing::warn!(
                signal = name,
                "second signal during shutdown; exiting at once without finishing the drain"
            );
            std::process::exit(code);
        });
        Ok(shutdown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn clones_see_the_trigger() {
        let a = Shutdown::new();
        let b = a.clone();
        assert!(!b.is_triggered());
        a.trigger();
        b.wait().await;
        assert!(b.is_triggered());
    }
}
