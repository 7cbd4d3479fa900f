//! The subcommands besides `run`: `render` (what would be posted, through the
//! real sink loop), `dlq` (list and replay dead letters), `check-config`.

pub mod dlq;
pub mod render;

use crate::app::AppError;
use crate::config::Config;

pub use dlq::dlq;
pub use render::render_file;

/// `watcher check-config`: prints the effective configuration, secrets redacted.
pub fn check_config(cfg: &Config) -> Result<(), AppError> {
    let text = serde_json::to_string_pretty(cfg).map_err(|e| AppError::Other(e.to_string()))?;
    println!("{text}");
    Ok(())
}
