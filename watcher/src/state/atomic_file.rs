//! The one writer of the watcher's state files.
//!
//! Replacing a state file so that a crash leaves the old or the new content,
//! never a mix: write a temp file beside it, fsync, rename over, fsync the
//! directory so that the rename itself survives. The checkpoint, the
//! delivered journal's compaction and the DLQ's rewrite after a replay all
//! need exactly this.
//!
//! State holds what the agent's run produced (DLQ payloads carry transcript
//! text and webhook messages), and the agent's container may share the
//! volume: files are created `0600` and directories `0700`, and files or
//! directories an earlier version left wider are narrowed when touched.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The state files, by role (a closed set: a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum StateFile {
    /// `checkpoint.json`.
    Checkpoint,
    /// `delivered.log`.
    Delivered,
    /// `dlq/*.jsonl`.
    Dlq,
    /// `input-ids.log`, the replay guard of operator input.
    InputIds,
    /// `backlog.jsonl`, what a shutdown kept for the next start.
    Backlog,
}

impl StateFile {
    pub const ALL: [StateFile; 5] = [
        StateFile::Checkpoint,
        StateFile::Delivered,
        StateFile::Dlq,
        StateFile::InputIds,
        StateFile::Backlog,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Checkpoint => "checkpoint",
            Self::Delivered => "delivered",
            Self::Dlq => "dlq",
            Self::InputIds => "input_ids",
            Self::Backlog => "backlog",
        }
    }
}

/// Told about every state write that failed, and about the next that
/// succeeded, so that a full or read-only `STATE_DIR` shows in metrics and
/// `/healthz`, not only in logs.
pub trait StateObserver: Send + Sync {
    fn write_failed(&self, file: StateFile, error: &dyn std::fmt::Display);
    fn written(&self, file: StateFile);
}

impl StateObserver for crate::deliver::NoopObserver {
    fn write_failed(&self, _: StateFile, _: &dyn std::fmt::Display) {}
    fn written(&self, _: StateFile) {}
}

/// Mode of every state file.
pub const FILE_MODE: u32 = 0o600;
/// Mode of every state directory.
pub const DIR_MODE: u32 = 0o700;

/// Creates `dir` (and missing parents) with [`DIR_MODE`]; an existing `dir`
/// is narrowed to it when the watcher owns it (a mount point it does not
/// own is left as the platform made it).
pub fn create_dir(dir: &Path) -> std::io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    narrow(dir, DIR_MODE);
    Ok(())
}

/// Opens `path` for appending, creating it with [`FILE_MODE`].
pub fn open_append(path: &Path) -> std::io::Result<File> {
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(FILE_MODE)
        .open(path)?;
    narrow_file(&f);
    Ok(f)
}

/// Best effort: a file created by an earlier version (0644) is narrowed.
fn narrow_file(f: &File) {
    if let Ok(m) = f.metadata() {
        if m.permissions().mode() & 0o777 != FILE_MODE {
            let _ = f.set_permissions(fs::Permissions::from_mode(FILE_MODE));
        }
    }
}

fn narrow(path: &Path, mode: u32) {
    if let Ok(m) = fs::metadata(path) {
        if m.permissions().mode() & 0o777 != mode {
            let _ = fs::set_permissions(path, fs::Permissions::from_mode(mode));
        }
    }
}

/// Atomically replaces `path` with `bytes`. The temp file is `.<name>.tmp`
/// in the same directory (a rename across filesystems would not be atomic).
pub fn replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("not a file path"))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(&tmp)?;
    // A temp file a crash left behind keeps its old mode through the open.
    narrow_file(&f);
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path)?;
    // Best effort: not every filesystem lets a directory be fsynced.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_content_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        replace(&path, b"one").unwrap();
        replace(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.json"]);
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn every_state_file_is_0600_and_every_state_dir_0700() {
        use crate::checkpoint::{Checkpoint, CheckpointStore};
        use crate::deliver::dlq::{Dlq, DlqEntry, DlqReason};
        use crate::delivered::DeliveredLog;
        let root = tempfile::tempdir().unwrap();
        let state = root.path().join("state");
        let store = CheckpointStore::open(&state).unwrap();
        store.save(&Checkpoint::default()).unwrap();
        let (mut log, _) = DeliveredLog::open(&state, 2).unwrap();
        for i in 0..5 {
            log.append(&[format!("u{i}")]).unwrap(); // appends, then compacts
        }
        let mut dlq = Dlq::open(&state, 1 << 20).unwrap();
        let msg = discord::embed::WebhookMessage::default();
        let entry = DlqEntry::new(
            &msg,
            DlqReason::Rejected,
            "400".into(),
            1,
            std::time::SystemTime::now(),
        );
        dlq.append(&entry).unwrap();
        dlq.append(&entry).unwrap();
        let first = dlq.files().unwrap()[0].clone();
        dlq.remove_head(&first, 1).unwrap(); // the atomic rewrite
        let mut seen = 0;
        let mut stack = vec![state.clone()];
        while let Some(dir) = stack.pop() {
            assert_eq!(mode(&dir), DIR_MODE, "{}", dir.display());
            for e in fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    assert_eq!(mode(&p), FILE_MODE, "{}", p.display());
                    seen += 1;
                }
            }
        }
        assert_eq!(seen, 3, "checkpoint, journal, one DLQ file");
    }

    #[test]
    fn wider_files_and_dirs_of_an_earlier_version_are_narrowed() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("state");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let log = dir.join("delivered.log");
        fs::write(&log, b"a\n").unwrap();
        fs::set_permissions(&log, fs::Permissions::from_mode(0o644)).unwrap();
        create_dir(&dir).unwrap();
        drop(open_append(&log).unwrap());
        assert_eq!(mode(&dir), DIR_MODE);
        assert_eq!(mode(&log), FILE_MODE);
    }
}
