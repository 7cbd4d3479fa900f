//! `fake-kube`: the fake Kubernetes API as a process (e2e tests, demos).
//!
//! Prints one JSON line on stdout once listening:
//! `{"listening":"127.0.0.1:PORT","url":"http://127.0.0.1:PORT","kubeconfig":PATH}`
//! (`kubeconfig` only with `--kubeconfig`); logs go to stderr. Exits 0 on
//! SIGTERM or SIGINT after ending watches and draining connections.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use fake_kube::{FakeKube, FakeKubeConfig, DEFAULT_API_AUDIENCE};
use fake_support::cli::{init_logging, print_listening_line, wait_for_signal, LogFormat};

/// A fake Kubernetes API for tests: pods list/watch (resourceVersions,
/// bookmarks, 410 Gone), TokenReviews from a table of test tokens, Events and
/// Leases, with an admin API under /_admin to script pods, tokens and faults.
/// The real kube client reaches it through the kubeconfig it writes.
#[derive(Debug, Parser)]
#[command(name = "fake-kube", version)]
struct Cli {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, env = "FAKE_KUBE_ADDR", default_value = "127.0.0.1:0")]
    addr: SocketAddr,
    /// Write a kubeconfig for this cluster to this path (its path is printed).
    #[arg(long, env = "FAKE_KUBE_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// The bearer token API requests must carry (written into the kubeconfig).
    #[arg(
        long,
        env = "FAKE_KUBE_CLIENT_TOKEN",
        default_value = "fake-kube-client-token",
        hide_env_values = true
    )]
    client_token: String,
    /// Pod changes kept for watches to resume from; older ones are compacted
    /// (a watch from before them gets 410 Expired).
    #[arg(long, env = "FAKE_KUBE_HISTORY_LIMIT", default_value_t = 10_000)]
    history_limit: usize,
    /// How often a watch that asked for bookmarks gets one, in ms.
    #[arg(long, env = "FAKE_KUBE_BOOKMARK_INTERVAL_MS", default_value_t = 60_000)]
    bookmark_interval_ms: u64,
    /// Audiences a TokenReview without spec.audiences is checked against
    /// (the apiserver's --api-audiences); comma-separated.
    #[arg(long, env = "FAKE_KUBE_API_AUDIENCES", value_delimiter = ',', default_value = DEFAULT_API_AUDIENCE)]
    api_audiences: Vec<String>,
    /// Log format on stderr.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "json")]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    if cli.client_token.trim().is_empty() {
        anyhow::bail!("--client-token (FAKE_KUBE_CLIENT_TOKEN) must not be empty");
    }
    if cli.history_limit == 0 {
        anyhow::bail!("--history-limit (FAKE_KUBE_HISTORY_LIMIT) must be at least 1");
    }
    if cli.bookmark_interval_ms == 0 {
        anyhow::bail!("--bookmark-interval-ms (FAKE_KUBE_BOOKMARK_INTERVAL_MS) must be at least 1");
    }
    let config = FakeKubeConfig {
        addr: cli.addr,
        client_token: cli.client_token,
        history_limit: cli.history_limit,
        bookmark_interval: Duration::from_millis(cli.bookmark_interval_ms),
        api_audiences: cli.api_audiences,
        ..FakeKubeConfig::default()
    };
    let fake = FakeKube::start_with(config).await?;
    let mut line = serde_json::json!({
        "listening": fake.addr().to_string(),
        "url": fake.url(),
    });
    if let Some(path) = &cli.kubeconfig {
        let written = fake.kubeconfig(path)?;
        line["kubeconfig"] = written.display().to_string().into();
    }
    print_listening_line(&line).context("writing the listening line")?;
    tracing::info!(addr = %fake.addr(), "started");
    wait_for_signal()
        .await
        .context("installing the SIGTERM and SIGINT handlers")?;
    tracing::info!("shutting down");
    fake.stop().await;
    Ok(())
}
