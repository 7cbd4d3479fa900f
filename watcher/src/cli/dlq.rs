//! `watcher dlq list|replay`: what was dead-lettered, and sending it again.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use discord::embed::WebhookMessage;

use crate::app::AppError;
use crate::config::{Config, DlqCommand, SinkConfig};
use crate::deliver::bridge::BridgeClient;
use crate::deliver::dlq::Dlq;
use crate::deliver::webhook::{SenderConfig, WebhookSender};
use crate::deliver::{NoopObserver, Sent};

/// `watcher dlq list|replay`.
pub async fn dlq(cfg: &Config, cmd: DlqCommand) -> Result<(), AppError> {
    let dlq =
        Dlq::open(&cfg.state_dir, cfg.dlq_max_bytes).map_err(|e| AppError::State(e.to_string()))?;
    let entries = dlq.entries().map_err(|e| AppError::State(e.to_string()))?;
    match cmd {
        DlqCommand::List => {
            for (path, entry) in &entries {
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                match entry {
                    Ok(e) => println!(
                        "{name}\t{}\t{} embeds\tattempts={}\tlast_error_at={}\t{}",
                        e.reason.as_str(),
                        e.payload.embeds.len(),
                        e.attempts,
                        e.last_error_at,
                        e.error.chars().take(160).collect::<String>()
                    ),
                    Err(err) => println!("{name}\tunreadable\t{err}"),
                }
            }
            eprintln!(
                "{} dead-lettered message(s) in {}",
                entries.len(),
                dlq.dir().display()
            );
            Ok(())
        }
        DlqCommand::Replay => replay(cfg, dlq).await,
    }
}

async fn replay(cfg: &Config, dlq: Dlq) -> Result<(), AppError> {
    let _guard = crate::app::init_telemetry(cfg, ops::telemetry::LogTarget::Stderr)?;
    let target = match &cfg.sink {
        SinkConfig::Webhook { url } => url.clone(),
        SinkConfig::Bridge { url, token } => {
            let bridge =
                BridgeClient::new(url.clone(), token.clone(), crate::app::run_request(cfg))
                    .map_err(|e| AppError::Other(e.to_string()))?;
            bridge
                .provision()
                .await
                .map_err(|e| AppError::Other(e.to_string()))?
                .webhook
        }
        SinkConfig::Console => {
            return Err(AppError::Config(
                "dlq replay needs DISCORD_WEBHOOK_URL or BRIDGE_URL to send to".into(),
            ))
        }
    };
    // Failures during replay are not re-queued into the DLQ being replayed: a
    // scratch DLQ keeps them apart and the original entry stays in place.
    let scratch = tempfile_dir(&cfg.state_dir)?;
    let scratch_dlq =
        Dlq::open(&scratch, cfg.dlq_max_bytes).map_err(|e| AppError::State(e.to_string()))?;
    // A replay tries each message for a minute: someone is waiting for it.
    let settings = SenderConfig {
        max_elapsed: Duration::from_secs(60),
        backoff: ops::Backoff::default(),
        ..SenderConfig::from_config(cfg)
    };
    let mut sender =
        WebhookSender::new(&settings, target, None, scratch_dlq, Arc::new(NoopObserver))
            .map_err(|e| AppError::Other(e.to_string()))?;
    let mut replayed = 0usize;
    let mut failed = false;
    'files: for path in dlq.files().map_err(|e| AppError::State(e.to_string()))? {
        let entries: Vec<_> = dlq
            .entries()
            .map_err(|e| AppError::State(e.to_string()))?
            .into_iter()
            .filter(|(p, _)| *p == path)
            .collect();
        for (_, entry) in entries {
            let Ok(entry) = entry else {
                eprintln!(
                    "watcher: {}: unreadable entry left in place",
                    path.display()
                );
                failed = true;
                break 'files;
            };
            let msg: WebhookMessage = entry.message();
            match sender.send(&msg, false).await {
                Sent::Delivered => {
                    dlq.remove_head(&path, 1)
                        .map_err(|e| AppError::State(e.to_string()))?;
                    replayed += 1;
                }
                Sent::DeadLettered(reason) => {
                    eprintln!(
                        "watcher: replay stopped: message failed again ({})",
                        reason.as_str()
                    );
                    failed = true;
                    break 'files;
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    eprintln!("replayed {replayed} message(s)");
    if failed {
        Err(AppError::Other(format!(
            "replay incomplete after {replayed} message(s); the rest stays in the DLQ"
        )))
    } else {
        Ok(())
    }
}

fn tempfile_dir(state_dir: &Path) -> Result<std::path::PathBuf, AppError> {
    let p = state_dir.join(format!(".replay-{}", std::process::id()));
    std::fs::create_dir_all(&p).map_err(|e| AppError::State(format!("{}: {e}", p.display())))?;
    Ok(p)
}
