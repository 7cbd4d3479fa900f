//! `STATE_DIR/backlog.jsonl`: rendered messages a shutdown could neither
//! deliver nor hand to bot-bridge (bot-bridge unreachable, or a static
//! webhook). One `{"seq": .., "payload": {..}}` per line, in channel order,
//! 0600, replaced atomically. A watcher started on the same state delivers
//! it before anything new, removing each message once Discord took it (a
//! crash in between re-sends at most that one).
//!
//! Attachments are not kept: a payload is the JSON part of the message.

use std::path::{Path, PathBuf};

use discord::embed::WebhookMessage;
use serde::{Deserialize, Serialize};

pub const FILE_NAME: &str = "backlog.jsonl";

/// One message of the backlog, keyed by the run's message sequence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Kept {
    pub seq: u64,
    pub payload: WebhookMessage,
}

#[derive(Debug, thiserror::Error)]
pub enum BacklogError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The backlog file of a state directory.
#[derive(Debug, Clone)]
pub struct Backlog {
    path: PathBuf,
}

impl Backlog {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            path: state_dir.join(FILE_NAME),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The kept messages, in order; none when there is no file. A line that
    /// does not parse (a torn write cannot happen: the file is replaced
    /// whole) is skipped with a warning rather than blocking the rest.
    pub fn load(&self) -> Result<Vec<Kept>, BacklogError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(BacklogError::Read {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        Ok(text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .filter_map(|l| match serde_json::from_str(l) {
                Ok(k) => Some(k),
                Err(e) => {
                    tracing::warn!(error = %e, "skipping an unreadable line of backlog.jsonl");
                    None
                }
            })
            .collect())
    }

    /// Replaces the backlog with `kept` (removes the file when empty).
    pub fn store(&self, kept: &[Kept]) -> Result<(), BacklogError> {
        let write = |source| BacklogError::Write {
            path: self.path.clone(),
            source,
        };
        if kept.is_empty() {
            return match std::fs::remove_file(&self.path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(write(e)),
                _ => Ok(()),
            };
        }
        let mut bytes = Vec::new();
        for k in kept {
            serde_json::to_writer(&mut bytes, k).map_err(|e| write(std::io::Error::other(e)))?;
            bytes.push(b'\n');
        }
        super::atomic_file::replace(&self.path, &bytes).map_err(write)
    }

    /// Adds `more` after what is kept already.
    pub fn append(&self, more: &[Kept]) -> Result<(), BacklogError> {
        let mut all = self.load()?;
        all.extend_from_slice(more);
        self.store(&all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn kept(seq: u64) -> Kept {
        Kept {
            seq,
            payload: WebhookMessage {
                content: Some(format!("m{seq}")),
                ..WebhookMessage::default()
            },
        }
    }

    #[test]
    fn kept_messages_round_trip_in_order_private_and_vanish_when_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let b = Backlog::new(dir.path());
        assert!(b.load().unwrap().is_empty());
        b.append(&[kept(3), kept(4)]).unwrap();
        b.append(&[kept(5)]).unwrap();
        assert_eq!(b.load().unwrap(), [kept(3), kept(4), kept(5)]);
        let mode = std::fs::metadata(b.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        b.store(&[kept(5)]).unwrap();
        assert_eq!(b.load().unwrap(), [kept(5)]);
        b.store(&[]).unwrap();
        assert!(!b.path().exists());
    }
}
