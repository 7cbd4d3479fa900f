//! The dead-letter queue: messages Discord refused for good, kept for a human.
//!
//! A message that Discord rejects (400), whose webhook is gone with no way to
//! re-provision, or that kept failing for `DELIVERY_MAX_ELAPSED` is appended here
//! instead of blocking the pipeline; the checkpoint then moves past it
//! ("deliberately dead-lettered"). Files are JSON Lines under `STATE_DIR/dlq/`,
//! rotated by size, with the total capped (the oldest files go first, counted) so
//! a broken webhook cannot fill the volume. `watcher dlq replay` re-sends in order
//! and rewrites each file without what was delivered, so it can be interrupted.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use base64::Engine as _;
use discord::embed::{Attachment, WebhookMessage};
use serde::{Deserialize, Serialize};

/// Size at which the current DLQ file is closed and a new one started.
pub const ROTATE_BYTES: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("dead-letter queue {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("dead-letter entry could not be encoded: {0}")]
    Encode(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DlqError + '_ {
    move |source| DlqError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Why a message was dead-lettered (a closed set: it is a metric label too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DlqReason {
    /// Discord answered 400: the payload is invalid.
    Rejected,
    /// The webhook is gone (401/404) and could not be re-provisioned.
    WebhookGone,
    /// Retries ran out after `DELIVERY_MAX_ELAPSED`.
    RetriesExhausted,
}

impl DlqReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rejected => "rejected",
            Self::WebhookGone => "webhook_gone",
            Self::RetriesExhausted => "retries_exhausted",
        }
    }
}

/// A file attached to a dead-lettered message, base64 in the JSON line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredFile {
    pub filename: String,
    pub base64: String,
}

/// One dead-lettered message.
/// One stored entry, or why it could not be read (kept in place).
pub type EntryResult = Result<DlqEntry, String>;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DlqEntry {
    pub payload: WebhookMessage,
    #[serde(default)]
    pub files: Vec<StoredFile>,
    pub reason: DlqReason,
    /// The last error: Discord's error body or the transport error.
    pub error: String,
    pub attempts: u32,
    pub first_error_at: String,
    pub last_error_at: String,
}

impl DlqEntry {
    pub fn new(
        msg: &WebhookMessage,
        reason: DlqReason,
        error: String,
        attempts: u32,
        first: SystemTime,
    ) -> Self {
        let files = msg
            .files
            .iter()
            .map(|f| StoredFile {
                filename: f.filename.clone(),
                base64: base64::engine::general_purpose::STANDARD.encode(&f.bytes),
            })
            .collect();
        Self {
            payload: msg.clone(),
            files,
            reason,
            error,
            attempts,
            first_error_at: humantime::format_rfc3339_millis(first).to_string(),
            last_error_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        }
    }

    /// The message to re-send, with its files restored.
    /// Whether retrying may help once the cause passed: not for a 400
    /// (kept for a person); for a gone webhook only where bot-bridge can
    /// re-provision it (`reprovisions`).
    pub fn retryable(&self, reprovisions: bool) -> bool {
        match self.reason {
            DlqReason::Rejected => false,
            DlqReason::RetriesExhausted => true,
            DlqReason::WebhookGone => reprovisions,
        }
    }

    pub fn message(&self) -> WebhookMessage {
        let mut msg = self.payload.clone();
        msg.files = self
            .files
            .iter()
            .filter_map(|f| {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(&f.base64)
                    .ok()?;
                Some(Attachment {
                    filename: f.filename.clone(),
                    bytes,
                })
            })
            .collect();
        msg
    }
}

/// The DLQ directory.
#[derive(Debug)]
pub struct Dlq {
    dir: PathBuf,
    max_total_bytes: u64,
    seq: u64,
}

impl Dlq {
    pub fn open(state_dir: &Path, max_total_bytes: usize) -> Result<Self, DlqError> {
        let dir = state_dir.join("dlq");
        crate::atomic_file::create_dir(&dir).map_err(io(&dir))?;
        Ok(Self {
            dir,
            max_total_bytes: max_total_bytes as u64,
            seq: 0,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// DLQ files, oldest first (names sort by creation time).
    pub fn files(&self) -> Result<Vec<PathBuf>, DlqError> {
        let mut files: Vec<PathBuf> = fs::read_dir(&self.dir)
            .map_err(io(&self.dir))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
            .collect();
        files.sort();
        Ok(files)
    }

    /// Appends an entry; returns how many old entries the size cap removed.
    pub fn append(&mut self, entry: &DlqEntry) -> Result<u64, DlqError> {
        let mut line = serde_json::to_vec(entry).map_err(|e| DlqError::Encode(e.to_string()))?;
        line.push(b'\n');
        let files = self.files()?;
        let current = match files.last() {
            Some(p) if fs::metadata(p).map(|m| m.len()).unwrap_or(u64::MAX) < ROTATE_BYTES => {
                p.clone()
            }
            _ => self.new_file_path(),
        };
        let mut f = crate::atomic_file::open_append(&current).map_err(io(&current))?;
        f.write_all(&line).map_err(io(&current))?;
        f.sync_data().map_err(io(&current))?;
        self.enforce_cap(&current)
    }

    fn new_file_path(&mut self) -> PathBuf {
        self.seq += 1;
        let ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        self.dir.join(format!("dlq-{ms:015}-{:06}.jsonl", self.seq))
    }

    /// Removes the oldest files (never `keep`) while the total exceeds the cap.
    fn enforce_cap(&self, keep: &Path) -> Result<u64, DlqError> {
        let files = self.files()?;
        let mut sizes: Vec<(PathBuf, u64)> = files
            .into_iter()
            .map(|p| {
                let len = fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
                (p, len)
            })
            .collect();
        let mut total: u64 = sizes.iter().map(|(_, l)| l).sum();
        let mut dropped = 0;
        for (path, len) in sizes.drain(..) {
            if total <= self.max_total_bytes || path == keep {
                break;
            }
            dropped += count_lines(&path);
            fs::remove_file(&path).map_err(io(&path))?;
            total -= len;
        }
        Ok(dropped)
    }

    /// Every entry, oldest first. Unreadable lines are reported, not fatal.
    pub fn entries(&self) -> Result<Vec<(PathBuf, EntryResult)>, DlqError> {
        let mut out = Vec::new();
        for path in self.files()? {
            let f = File::open(&path).map_err(io(&path))?;
            for line in BufReader::new(f).lines() {
                let line = line.map_err(io(&path))?;
                if line.trim().is_empty() {
                    continue;
                }
                out.push((
                    path.clone(),
                    serde_json::from_str(&line).map_err(|e| e.to_string()),
                ));
            }
        }
        Ok(out)
    }

    /// The oldest readable entry `worth` accepts: its file, its index there
    /// (counting non-empty lines) and the entry. Reads no further than it.
    pub fn first(
        &self,
        worth: impl Fn(&DlqEntry) -> bool,
    ) -> Result<Option<(PathBuf, usize, DlqEntry)>, DlqError> {
        for path in self.files()? {
            let f = File::open(&path).map_err(io(&path))?;
            let lines = BufReader::new(f).lines();
            for (index, line) in lines
                .map_while(Result::ok)
                .filter(|l| !l.trim().is_empty())
                .enumerate()
            {
                if let Ok(entry) = serde_json::from_str::<DlqEntry>(&line) {
                    if worth(&entry) {
                        return Ok(Some((path, index, entry)));
                    }
                }
            }
        }
        Ok(None)
    }

    /// Up to `max` entries worth retrying ([`DlqEntry::retryable`]), oldest
    /// first, with their files.
    pub fn retryable(&self, max: usize, reprovisions: bool) -> Result<Vec<DlqEntry>, DlqError> {
        let mut found = Vec::new();
        for path in self.files()? {
            let f = File::open(&path).map_err(io(&path))?;
            for line in BufReader::new(f).lines().map_while(Result::ok) {
                if found.len() >= max {
                    return Ok(found);
                }
                if let Ok(entry) = serde_json::from_str::<DlqEntry>(&line) {
                    if entry.retryable(reprovisions) {
                        found.push(entry);
                    }
                }
            }
        }
        Ok(found)
    }

    /// Rewrites `path` without its `index`th entry (counting non-empty lines),
    /// atomically; removes the file when nothing is left.
    pub fn remove_at(&self, path: &Path, index: usize) -> Result<(), DlqError> {
        let f = File::open(path).map_err(io(path))?;
        let rest: Vec<String> = BufReader::new(f)
            .lines()
            .map_while(Result::ok)
            .filter(|l| !l.trim().is_empty())
            .enumerate()
            .filter(|(i, _)| *i != index)
            .map(|(_, l)| l)
            .collect();
        Self::keep(path, &rest)
    }

    fn keep(path: &Path, rest: &[String]) -> Result<(), DlqError> {
        if rest.is_empty() {
            return fs::remove_file(path).map_err(io(path));
        }
        let mut bytes = Vec::with_capacity(rest.iter().map(|l| l.len() + 1).sum());
        for l in rest {
            bytes.extend_from_slice(l.as_bytes());
            bytes.push(b'\n');
        }
        crate::atomic_file::replace(path, &bytes).map_err(io(path))
    }

    /// Rewrites `path` keeping only its lines after the first `delivered` ones,
    /// atomically; removes the file when nothing is left.
    pub fn remove_head(&self, path: &Path, delivered: usize) -> Result<(), DlqError> {
        let f = File::open(path).map_err(io(path))?;
        let rest: Vec<String> = BufReader::new(f)
            .lines()
            .map_while(Result::ok)
            .filter(|l| !l.trim().is_empty())
            .skip(delivered)
            .collect();
        Self::keep(path, &rest)
    }
}

fn count_lines(path: &Path) -> u64 {
    File::open(path)
        .map(|f| BufReader::new(f).lines().count() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(text: &str) -> WebhookMessage {
        WebhookMessage {
            content: Some(text.to_owned()),
            files: vec![Attachment {
                filename: "out.txt".into(),
                bytes: b"full output".to_vec(),
            }],
            ..Default::default()
        }
    }

    /// The background retry takes the oldest entry worth it, skipping the
    /// ones that wait for a person, and removes exactly that one.
    #[test]
    fn the_first_retryable_entry_is_found_and_removed_alone() {
        let dir = tempfile::tempdir().unwrap();
        let mut dlq = Dlq::open(dir.path(), 1 << 20).unwrap();
        for (i, reason) in [
            DlqReason::Rejected,
            DlqReason::RetriesExhausted,
            DlqReason::RetriesExhausted,
        ]
        .into_iter()
        .enumerate()
        {
            let e = DlqEntry::new(
                &msg(&format!("m{i}")),
                reason,
                "x".into(),
                1,
                SystemTime::now(),
            );
            dlq.append(&e).unwrap();
        }
        let worth = |e: &DlqEntry| e.reason != DlqReason::Rejected;
        let (path, index, entry) = dlq.first(worth).unwrap().unwrap();
        assert_eq!((index, entry.payload.content.as_deref()), (1, Some("m1")));
        dlq.remove_at(&path, index).unwrap();
        let left: Vec<_> = dlq
            .entries()
            .unwrap()
            .into_iter()
            .map(|(_, e)| e.unwrap().payload.content.unwrap())
            .collect();
        assert_eq!(left, ["m0", "m2"]);
        let (_, index, entry) = dlq.first(worth).unwrap().unwrap();
        assert_eq!((index, entry.payload.content.as_deref()), (1, Some("m2")));
    }

    #[test]
    fn entries_round_trip_in_order_with_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut dlq = Dlq::open(dir.path(), 1 << 20).unwrap();
        for i in 0..3 {
            let e = DlqEntry::new(
                &msg(&format!("m{i}")),
                DlqReason::Rejected,
                "400".into(),
                1,
                SystemTime::now(),
            );
            dlq.append(&e).unwrap();
        }
        let entries = dlq.entries().unwrap();
        let texts: Vec<_> = entries
            .iter()
            .map(|(_, e)| e.as_ref().unwrap().payload.content.clone().unwrap())
            .collect();
        assert_eq!(texts, ["m0", "m1", "m2"]);
        let restored = entries[0].1.as_ref().unwrap().message();
        assert_eq!(restored.files[0].bytes, b"full output");
        let path = entries[0].0.clone();
        dlq.remove_head(&path, 2).unwrap();
        let left = dlq.entries().unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(
            left[0].1.as_ref().unwrap().payload.content.as_deref(),
            Some("m2")
        );
        dlq.remove_head(&path, 1).unwrap();
        assert!(dlq.files().unwrap().is_empty());
    }

    #[test]
    fn total_size_is_capped_by_dropping_oldest_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut dlq = Dlq::open(dir.path(), 3 * ROTATE_BYTES as usize).unwrap();
        let big = "x".repeat(200 * 1024);
        let mut dropped = 0;
        for _ in 0..40 {
            let e = DlqEntry::new(
                &msg(&big),
                DlqReason::RetriesExhausted,
                "5xx".into(),
                9,
                SystemTime::now(),
            );
            dropped += dlq.append(&e).unwrap();
        }
        let total: u64 = dlq
            .files()
            .unwrap()
            .iter()
            .map(|p| fs::metadata(p).unwrap().len())
            .sum();
        assert!(total <= 3 * ROTATE_BYTES + 300 * 1024, "total {total}");
        assert!(dropped > 0);
        let kept = dlq.entries().unwrap().len() as u64;
        assert_eq!(
            kept + dropped,
            40,
            "every entry is either kept or counted as dropped"
        );
    }
}
