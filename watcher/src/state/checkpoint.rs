//! Crash-safe progress: which byte of which file has been delivered.
//!
//! The checkpoint only ever covers the *contiguous prefix* of lines whose
//! embeds were all acknowledged by Discord (or deliberately dead-lettered).
//! Moving it past an unacknowledged line would lose that line on a crash;
//! keeping it behind an acknowledged one only costs a duplicate of the
//! in-flight batch. It is written atomically (temp file, fsync, rename).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::tail::FileIdentity;
use crate::transcript::LinePos;

pub const FILE_NAME: &str = "checkpoint.json";
const FORMAT_VERSION: u32 = 1;

/// What survives a restart.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    #[serde(default)]
    pub version: u32,
    /// Per followed file (absolute path): where reading resumes.
    #[serde(default)]
    pub files: BTreeMap<String, FileCheckpoint>,
    /// The completion summary was delivered: never post it twice.
    #[serde(default)]
    pub summary_posted: bool,
    /// The sink loop's own state (header posted, running totals).
    #[serde(default, deserialize_with = "super::RunState::lenient")]
    pub totals: super::RunState,
    /// Committed record uuids as earlier versions kept them (the last 512).
    /// Read once to seed deduplication and moved into `delivered.log`
    /// ([`crate::delivered`]), which now keeps them; never written again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent_uuids: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileCheckpoint {
    /// End of the last line of the acknowledged prefix.
    pub offset: u64,
    /// The file that offset belongs to; a different file resumes from 0.
    pub identity: FileIdentity,
}

impl Checkpoint {
    /// Where to resume `path`, if the checkpoint covers that very file.
    pub fn resume_offset(&self, path: &str) -> Option<u64> {
        let fc = self.files.get(path)?;
        fc.identity.same_file(Path::new(path)).then_some(fc.offset)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot create the state directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid checkpoint: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// `STATE_DIR/checkpoint.json`.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    dir: PathBuf,
}

impl CheckpointStore {
    pub fn open(dir: &Path) -> Result<Self, CheckpointError> {
        crate::atomic_file::create_dir(dir).map_err(|source| CheckpointError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    /// The state directory it lives in.
    pub fn dir(&self) -> PathBuf {
        self.dir.clone()
    }

    /// The stored checkpoint; `None` on a first start.
    pub fn load(&self) -> Result<Option<Checkpoint>, CheckpointError> {
        let path = self.path();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(CheckpointError::Read { path, source }),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| CheckpointError::Parse { path, source })
    }

    /// Atomic replace: a crash leaves either the old or the new checkpoint.
    pub fn save(&self, cp: &Checkpoint) -> Result<(), CheckpointError> {
        let path = self.path();
        let write = |source| CheckpointError::Write {
            path: path.clone(),
            source,
        };
        let mut cp = cp.clone();
        cp.version = FORMAT_VERSION;
        let bytes = serde_json::to_vec_pretty(&cp).map_err(|e| write(std::io::Error::other(e)))?;
        crate::atomic_file::replace(&path, &bytes).map_err(write)
    }
}

/// One line waiting for its embeds to be acknowledged.
#[derive(Debug)]
struct Pending {
    start: u64,
    end: u64,
    outstanding: usize,
    identity: FileIdentity,
    uuid: Option<String>,
}

#[derive(Debug, Default)]
struct FileTrack {
    /// Lines in the order they were read (file order; after a rotation the
    /// offsets restart, the order still holds).
    pending: VecDeque<Pending>,
    /// End of the acknowledged prefix and the identity it belongs to.
    committed: Option<(u64, FileIdentity)>,
}

/// Turns per-line acknowledgements into a contiguous committed offset per file.
#[derive(Debug, Default)]
pub struct AckTracker {
    files: HashMap<String, FileTrack>,
    /// Uuids of records committed since the last [`take_committed`](Self::take_committed),
    /// oldest first: what the next checkpoint write adds to `delivered.log`.
    committed_uuids: Vec<String>,
}

impl AckTracker {
    /// The uuids committed since the last call, oldest first.
    pub fn take_committed(&mut self) -> Vec<String> {
        std::mem::take(&mut self.committed_uuids)
    }

    /// Registers a line (the record `uuid`, when it has one) that rendered to
    /// `units` messages-to-be; a line with none (filtered, metadata) is
    /// acknowledged at once.
    pub fn track(
        &mut self,
        pos: &LinePos,
        identity: &FileIdentity,
        units: usize,
        uuid: Option<&str>,
    ) {
        let t = self.files.entry(pos.file.to_string()).or_default();
        t.pending.push_back(Pending {
            start: pos.start,
            end: pos.end,
            outstanding: units,
            identity: identity.clone(),
            uuid: uuid.map(str::to_owned),
        });
        Self::advance(t, &mut self.committed_uuids);
    }

    /// One unit of the line at `pos` was acknowledged.
    pub fn ack(&mut self, pos: &LinePos) {
        let Some(t) = self.files.get_mut(&*pos.file) else {
            return;
        };
        if let Some(p) = t
            .pending
            .iter_mut()
            .find(|p| p.start == pos.start && p.end == pos.end && p.outstanding > 0)
        {
            p.outstanding -= 1;
        }
        Self::advance(t, &mut self.committed_uuids);
    }

    fn advance(t: &mut FileTrack, committed: &mut Vec<String>) {
        while t.pending.front().is_some_and(|p| p.outstanding == 0) {
            if let Some(p) = t.pending.pop_front() {
                t.committed = Some((p.end, p.identity));
                committed.extend(p.uuid);
            }
        }
    }

    /// The committed offset of `file`, if any line of it was committed.
    pub fn committed(&self, file: &str) -> Option<u64> {
        self.files.get(file)?.committed.as_ref().map(|(o, _)| *o)
    }

    /// Lines still waiting for an acknowledgement, over all files.
    pub fn in_flight(&self) -> usize {
        self.files.values().map(|t| t.pending.len()).sum()
    }

    /// Writes every file's committed offset and identity into `cp`.
    pub fn apply(&self, cp: &mut Checkpoint) {
        for (file, t) in &self.files {
            if let Some((offset, identity)) = &t.committed {
                cp.files.insert(
                    file.clone(),
                    FileCheckpoint {
                        offset: *offset,
                        identity: identity.clone(),
                    },
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn pos(start: u64, end: u64) -> LinePos {
        LinePos {
            file: Arc::from("/t/s.jsonl"),
            start,
            end,
        }
    }

    #[test]
    fn committed_offset_never_passes_an_unacknowledged_line() {
        let id = FileIdentity::default();
        let mut t = AckTracker::default();
        t.track(&pos(0, 10), &id, 1, None);
        t.track(&pos(10, 20), &id, 0, None); // metadata line: nothing to send
        t.track(&pos(20, 30), &id, 2, None);
        t.track(&pos(30, 40), &id, 1, None);
        assert_eq!(t.committed("/t/s.jsonl"), None);
        t.ack(&pos(30, 40)); // acked out of order: may not commit yet
        assert_eq!(t.committed("/t/s.jsonl"), None);
        t.ack(&pos(0, 10));
        assert_eq!(t.committed("/t/s.jsonl"), Some(20));
        t.ack(&pos(20, 30));
        assert_eq!(
            t.committed("/t/s.jsonl"),
            Some(20),
            "one of two units acked"
        );
        t.ack(&pos(20, 30));
        assert_eq!(t.committed("/t/s.jsonl"), Some(40));
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn after_a_rotation_offsets_restart_and_the_new_identity_is_kept() {
        let old = FileIdentity {
            inode: 1,
            ..Default::default()
        };
        let new = FileIdentity {
            inode: 2,
            ..Default::default()
        };
        let mut t = AckTracker::default();
        t.track(&pos(0, 100), &old, 0, None);
        t.track(&pos(0, 10), &new, 0, None);
        let mut cp = Checkpoint::default();
        t.apply(&mut cp);
        assert_eq!(cp.files["/t/s.jsonl"].offset, 10);
        assert_eq!(cp.files["/t/s.jsonl"].identity.inode, 2);
    }

    #[test]
    fn only_committed_uuids_are_handed_on_in_commit_order_once() {
        let id = FileIdentity::default();
        let mut t = AckTracker::default();
        t.track(&pos(0, 10), &id, 1, Some("a"));
        t.track(&pos(10, 20), &id, 0, Some("b"));
        assert!(t.take_committed().is_empty(), "nothing committed yet");
        t.ack(&pos(0, 10));
        assert_eq!(t.take_committed(), ["a", "b"]);
        assert!(t.take_committed().is_empty(), "handed on once");
        t.track(&pos(20, 30), &id, 0, None);
        t.track(&pos(30, 40), &id, 0, Some("c"));
        assert_eq!(t.take_committed(), ["c"]);
    }

    #[test]
    fn legacy_recent_uuids_are_read_but_not_written() {
        let cp: Checkpoint = serde_json::from_str(r#"{"version":1,"recent_uuids":["x"]}"#).unwrap();
        assert_eq!(cp.recent_uuids, ["x"]);
        let fresh = serde_json::to_string(&Checkpoint::default()).unwrap();
        assert!(!fresh.contains("recent_uuids"), "{fresh}");
    }

    /// Users upgrading keep their position: a checkpoint written by the
    /// version that stored the totals as untyped JSON loads with its offsets
    /// and totals, and one whose totals no longer parse keeps its offsets.
    #[test]
    fn a_checkpoint_of_the_untyped_totals_format_still_loads() {
        let old = r#"{"version":1,"files":{"/t/s.jsonl":{"offset":120,"identity":{"dev":1,"inode":2,"fingerprint":"ab","fingerprint_len":1}}},
            "summary_posted":false,
            "totals":{"header_posted":true,"stats":{"events":7,"embeds":5}}}"#;
        let cp: Checkpoint = serde_json::from_str(old).unwrap();
        assert_eq!(cp.files["/t/s.jsonl"].offset, 120);
        assert!(cp.totals.header_posted);
        let stats = cp.totals.stats.clone().unwrap();
        assert_eq!((stats.events, stats.embeds), (7, 5));
        let fresh: Checkpoint = serde_json::from_str(r#"{"version":1,"totals":null}"#).unwrap();
        assert_eq!(fresh.totals, crate::state::RunState::default());
        let odd = r#"{"version":1,"files":{"/a":{"offset":9,"identity":{"dev":1,"inode":2,"fingerprint":"","fingerprint_len":0}}},"totals":{"header_posted":"yes"}}"#;
        let cp: Checkpoint = serde_json::from_str(odd).unwrap();
        assert_eq!(
            cp.files["/a"].offset, 9,
            "offsets survive unreadable totals"
        );
        assert!(!cp.totals.header_posted);
        // And it writes the same shape back.
        let back = serde_json::to_value(&Checkpoint {
            totals: crate::state::RunState {
                header_posted: true,
                stats: None,
                next_seq: 0,
            },
            ..Checkpoint::default()
        })
        .unwrap();
        assert_eq!(back["totals"]["header_posted"], true);
    }

    #[test]
    fn store_round_trips_atomically_and_reports_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(&dir.path().join("state")).unwrap();
        assert_eq!(store.load().unwrap(), None);
        let mut cp = Checkpoint {
            summary_posted: true,
            ..Default::default()
        };
        cp.files.insert("/a".into(), FileCheckpoint::default());
        store.save(&cp).unwrap();
        let back = store.load().unwrap().unwrap();
        assert!(back.summary_posted);
        assert_eq!(back.files.len(), 1);
        fs::write(store.path(), b"{not json").unwrap();
        let err = store.load().unwrap_err().to_string();
        assert!(err.contains("checkpoint.json"), "{err}");
    }
}
