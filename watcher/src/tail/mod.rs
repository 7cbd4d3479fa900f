//! Following one transcript file: notifications with a poll fallback, partial
//! lines held until complete, rotation and rewrite detection, oversize lines
//! skipped in bounded memory.

pub mod identity;

use std::time::Duration;

pub use identity::FileIdentity;

/// How files are read.
#[derive(Debug, Clone)]
pub struct TailConfig {
    /// Lines longer than this are skipped (and counted), never buffered whole.
    pub max_line_bytes: usize,
    /// Poll interval when notifications are unavailable or missed.
    pub poll_interval: Duration,
    /// Bytes read per read call.
    pub read_chunk: usize,
}
