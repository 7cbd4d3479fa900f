//! The fake binaries' edges: logs on stderr, one JSON line on stdout once
//! listening, and the wait for SIGTERM or SIGINT.

use std::io::Write;

use clap::ValueEnum;

/// The `--log-format` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Json,
    Plain,
}

/// Logs to stderr in `format`, filtered by `RUST_LOG` (default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        LogFormat::Plain => builder.init(),
    }
}

/// Prints the listening line (one JSON object) on stdout and flushes it: the
/// harnesses wait for it.
pub fn print_listening_line(line: &serde_json::Value) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()
}

/// Waits for SIGTERM or SIGINT. Fails only if a handler cannot be installed.
pub async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
