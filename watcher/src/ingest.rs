//! Ingest: discover → tail → decode → queue, with the checkpoint deciding
//! where each file resumes. (STUB: being written.)

use std::path::PathBuf;
use std::sync::Arc;

use ops::Shutdown;

use crate::checkpoint::Checkpoint;
use crate::queue::QueueTx;
use crate::tail::TailConfig;

/// Where to start a file that already exists at start-up (no checkpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    Beginning,
    End,
}

#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub transcript_path: Option<PathBuf>,
    pub workspace: String,
    pub projects_dir: PathBuf,
    pub start_at: StartAt,
    pub tail: TailConfig,
    /// How many uuids the decoder remembers for deduplication.
    pub dedupe_capacity: usize,
}

/// Telemetry of the ingest stage; implemented by `events::Telemetry`.
pub trait IngestObserver: Send + Sync {
    fn bytes_read(&self, n: u64);
    fn parse_error(&self, reason: &'static str, file: &str, offset: u64);
    fn oversize_line(&self, file: &str, offset: u64, len: u64);
    fn rotation(&self, file: &str, reason: &'static str);
    fn event(&self, kind: &'static str);
    fn record_seen(&self);
    fn waiting_for_transcript(&self, detail: &str);
    fn following(&self, file: &str);
    fn session_switched(&self, file: &str);
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Runs until `stop` triggers; dropping `tx` on return closes the queue.
pub async fn run(
    _cfg: IngestConfig,
    _tx: QueueTx,
    _checkpoint: Option<Checkpoint>,
    _observer: Arc<dyn IngestObserver>,
    stop: Shutdown,
) -> Result<(), IngestError> {
    stop.wait().await;
    Ok(())
}
