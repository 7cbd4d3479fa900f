//! Following one transcript file: notifications with a poll fallback, partial
//! lines held until complete, rotation and rewrite detection, oversize lines
//! skipped in bounded memory.
//!
//! - [`lines`]: the pure incremental line splitter with the line-length cap;
//! - [`follow`]: reads one file from an offset and detects truncation,
//!   in-place rewrite, replacement and vanishing;
//! - [`identity`]: (device, inode) + fingerprint, what a checkpoint belongs to;
//! - [`open`]: opening without blocking, regular files only (a FIFO the agent
//!   creates must not wedge a reader);
//! - [`wake`]: `notify` wake-ups with the poll tick as a safety net.

pub mod follow;
pub mod identity;
pub mod lines;
pub mod open;
pub mod wake;

use std::time::Duration;

pub use follow::{Follower, Rotation, Start, Step};
pub use identity::FileIdentity;
pub use lines::{LineSplitter, Piece};
pub use open::{open_regular, Opened};
pub use wake::Wake;

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
