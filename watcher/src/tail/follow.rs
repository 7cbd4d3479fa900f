//! Reading one file as it grows, and noticing when it stops being the same file.
//!
//! The follower keeps its own descriptor open and reads with positioned reads,
//! so a file renamed over or deleted can still be drained to its end before
//! the follower moves on to whatever now sits at the path. Every step is
//! non-blocking in the sense that matters: it reads at most one chunk and then
//! returns, so the caller can hand lines on (and wait on backpressure) between
//! reads and memory stays at one chunk plus one capped line.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use super::identity::{fingerprint, FileIdentity, FINGERPRINT_BYTES};
use super::lines::{LineSplitter, Piece};
use super::open::{open_regular, Opened};
use super::TailConfig;

/// Why reading restarted from the top of the file (the `reason` of
/// `IngestObserver::rotation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    /// The file shrank below the read offset.
    Truncated,
    /// Same inode, but its first bytes changed.
    Rewritten,
    /// A different file (new device/inode) now sits at the path.
    Replaced,
    /// The path no longer exists; reading resumes from 0 if it comes back.
    Vanished,
}

impl Rotation {
    pub fn reason(self) -> &'static str {
        match self {
            Self::Truncated => "truncated",
            Self::Rewritten => "rewritten",
            Self::Replaced => "replaced",
            Self::Vanished => "vanished",
        }
    }
}

/// Where the first open of a file starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// At this offset (0, a checkpoint, or where an earlier follower stopped).
    At(u64),
    /// After the last complete line within the first `limit` bytes: skip what
    /// existed at start-up, but not a partial line still being written.
    EndOfLines { limit: u64 },
}

/// What one step did.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Read this many bytes; complete lines were appended to the output.
    Read(u64),
    /// Reading restarts from the top (a new or rewritten file).
    Rotated(Rotation),
    /// Nothing to read now (at EOF, or the file does not exist).
    Idle,
    /// The path is not a regular file (a FIFO, a device …): nothing is read
    /// from it; it is looked at again on the next step.
    NotRegular,
}

/// The open file and what was last seen of it.
struct Open {
    file: File,
    identity: FileIdentity,
    /// Size and mtime at the last check: the identity is re-verified only when
    /// they change.
    seen: (u64, Option<SystemTime>),
}

/// Follows one path.
pub struct Follower {
    path: PathBuf,
    /// The path as text: `LinePos.file` and the checkpoint key.
    label: Arc<str>,
    open: Option<Open>,
    /// Where the next open starts (the configured start at first, 0 after a
    /// rotation).
    next_start: Start,
    splitter: LineSplitter,
    /// Read buffer, allocated while the file is open (a parked follower
    /// holds no buffer and no descriptor).
    buf: Vec<u8>,
    read_chunk: usize,
    /// Set while parked: the file it was reading and what was seen of it, so
    /// that a grown file resumes at its offset and another file at the path
    /// is read from the top.
    parked: Option<Parked>,
}

/// What a parked follower remembers of its file.
#[derive(Debug, Clone)]
struct Parked {
    identity: FileIdentity,
    seen: (u64, Option<SystemTime>),
}

impl Follower {
    pub fn new(path: PathBuf, start: Start, cfg: &TailConfig) -> Self {
        let label: Arc<str> = Arc::from(path.to_string_lossy().as_ref());
        Self {
            path,
            label,
            open: None,
            next_start: start,
            splitter: LineSplitter::new(cfg.max_line_bytes, 0),
            buf: Vec::new(),
            read_chunk: cfg.read_chunk.max(1),
            parked: None,
        }
    }

    /// Whether the follower is parked (see [`park`](Self::park)).
    pub fn is_parked(&self) -> bool {
        self.parked.is_some()
    }

    /// Closes the file and frees the buffers, remembering where the last
    /// complete line ended: the next step reopens it there (or from the top
    /// when another file now sits at the path). A partial line is read again.
    /// Returns `false` when nothing was open.
    pub fn park(&mut self) -> bool {
        let Some(open) = self.open.take() else {
            return false;
        };
        let offset = self.splitter.line_start();
        self.splitter.reset(offset);
        self.next_start = Start::At(offset);
        self.buf = Vec::new();
        self.parked = Some(Parked {
            identity: open.identity,
            seen: open.seen,
        });
        true
    }

    /// For a parked follower: whether the file at the path looks different
    /// from when it was parked (grew, changed, replaced or gone), so it is
    /// worth reopening. One `stat`, no open.
    pub fn changed_since_parked(&self) -> bool {
        let Some(p) = &self.parked else {
            return false;
        };
        match std::fs::metadata(&self.path) {
            Ok(m) => {
                m.dev() != p.identity.dev
                    || m.ino() != p.identity.inode
                    || (m.len(), m.modified().ok()) != p.seen
            }
            Err(_) => true,
        }
    }

    /// The complete record a writer left without its newline, taken at
    /// shutdown: the held partial line when the whole file has been read
    /// (nothing after it) and `complete` says it is a whole record.
    pub fn take_final_line(&mut self, complete: impl Fn(&[u8]) -> bool) -> Option<Piece> {
        let open = self.open.as_ref()?;
        let len = open.file.metadata().ok()?.len();
        if len != self.splitter.pos() || !complete(self.splitter.peek_partial()?) {
            return None;
        }
        self.splitter.take_partial()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn label(&self) -> &Arc<str> {
        &self.label
    }

    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// Identity of the file being read (default while none is open).
    pub fn identity(&self) -> FileIdentity {
        self.open
            .as_ref()
            .map(|o| o.identity.clone())
            .unwrap_or_default()
    }

    /// Where a later follower of the same file can resume without loss: the
    /// end of the last complete line, with the identity it belongs to.
    pub fn resume_point(&self) -> Option<(FileIdentity, u64)> {
        if let Some(o) = self.open.as_ref() {
            return Some((o.identity.clone(), self.splitter.line_start()));
        }
        // Parked: where it will reopen.
        let p = self.parked.as_ref()?;
        Some((p.identity.clone(), self.splitter.line_start()))
    }

    /// Reads at most one chunk, or detects a rotation. Call until `Idle`.
    pub fn step(&mut self, out: &mut Vec<Piece>) -> io::Result<Step> {
        let Some(open) = self.open.as_mut() else {
            return self.try_open();
        };
        let meta = open.file.metadata()?;
        let seen = (meta.len(), meta.modified().ok());
        if seen != open.seen {
            open.seen = seen;
            let offset = self.splitter.pos();
            if meta.len() < offset {
                return Ok(self.restart(Rotation::Truncated));
            }
            if !head_matches(&open.file, &open.identity)? {
                return Ok(self.restart(Rotation::Rewritten));
            }
            let fp_len = open.identity.fingerprint_len;
            if fp_len < FINGERPRINT_BYTES as u64 && meta.len() > fp_len {
                open.identity = identity_of(&open.file, &meta)?;
            }
        }
        if self.buf.len() != self.read_chunk {
            self.buf = vec![0; self.read_chunk];
        }
        let n = open.file.read_at(&mut self.buf, self.splitter.pos())?;
        if n > 0 {
            self.splitter.push(&self.buf[..n], out);
            return Ok(Step::Read(n as u64));
        }
        // Drained our descriptor: only now look at what the path points to, so
        // a replaced or deleted file is read to its end first.
        match std::fs::metadata(&self.path) {
            Ok(now) if now.dev() == open.identity.dev && now.ino() == open.identity.inode => {
                Ok(Step::Idle)
            }
            Ok(_) => {
                self.open = None;
                self.next_start = Start::At(0);
                Ok(Step::Rotated(Rotation::Replaced))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.open = None;
                self.next_start = Start::At(0);
                Ok(Step::Rotated(Rotation::Vanished))
            }
            Err(e) => Err(e),
        }
    }

    fn try_open(&mut self) -> io::Result<Step> {
        // Never a blocking open: the agent can put a FIFO at the path.
        let (file, meta) = match open_regular(&self.path) {
            Ok(Opened::File(f, m)) => (f, m),
            Ok(Opened::NotRegular) => return Ok(Step::NotRegular),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Step::Idle),
            Err(e) => return Err(e),
        };
        let identity = identity_of(&file, &meta)?;
        let mut offset = match self.next_start {
            Start::At(o) => o,
            Start::EndOfLines { limit } => last_line_end(&file, limit.min(meta.len()))?,
        };
        let mut step = Step::Read(0);
        if let Some(p) = self.parked.take() {
            let same = p.identity.dev == identity.dev
                && p.identity.inode == identity.inode
                && head_matches(&file, &p.identity)?;
            if !same {
                offset = 0;
                step = Step::Rotated(Rotation::Replaced);
            }
        }
        self.splitter.reset(offset);
        self.open = Some(Open {
            file,
            identity,
            // Forces a check on the first step: a checkpoint offset past the
            // end is a truncation.
            seen: (u64::MAX, None),
        });
        Ok(step)
    }

    /// Starts over at the top of the same (rewritten or truncated) file.
    fn restart(&mut self, why: Rotation) -> Step {
        self.splitter.reset(0);
        if let Some(open) = self.open.as_mut() {
            if let Ok(meta) = open.file.metadata() {
                if let Ok(id) = identity_of(&open.file, &meta) {
                    open.identity = id;
                }
            }
        }
        Step::Rotated(why)
    }
}

fn read_head(file: &File, len: u64) -> io::Result<Vec<u8>> {
    let len = usize::try_from(len.min(FINGERPRINT_BYTES as u64)).unwrap_or(FINGERPRINT_BYTES);
    let mut head = vec![0; len];
    let mut filled = 0;
    while filled < len {
        let n = file.read_at(&mut head[filled..], filled as u64)?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    head.truncate(filled);
    Ok(head)
}

fn identity_of(file: &File, meta: &std::fs::Metadata) -> io::Result<FileIdentity> {
    let head = read_head(file, meta.len())?;
    Ok(FileIdentity {
        dev: meta.dev(),
        inode: meta.ino(),
        fingerprint: fingerprint(&head),
        fingerprint_len: head.len() as u64,
    })
}

/// Whether the file still starts with the bytes the identity was taken of.
fn head_matches(file: &File, id: &FileIdentity) -> io::Result<bool> {
    let head = read_head(file, id.fingerprint_len)?;
    Ok(head.len() as u64 == id.fingerprint_len && fingerprint(&head) == id.fingerprint)
}

/// Offset just after the last `\n` in the first `limit` bytes (0 if none).
pub fn last_line_end(file: &File, limit: u64) -> io::Result<u64> {
    const BACK: u64 = 8 * 1024;
    let mut buf = vec![0u8; BACK as usize];
    let mut end = limit;
    while end > 0 {
        let start = end.saturating_sub(BACK);
        let want = (end - start) as usize;
        let n = file.read_at(&mut buf[..want], start)?;
        if let Some(i) = memchr::memrchr(b'\n', &buf[..n]) {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::Duration;

    fn cfg() -> TailConfig {
        TailConfig {
            max_line_bytes: 64,
            poll_interval: Duration::from_millis(10),
            read_chunk: 7,
        }
    }

    fn append(p: &Path, bytes: &[u8]) {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .unwrap()
            .write_all(bytes)
            .unwrap();
    }

    /// Steps until idle; returns the line texts and the rotations seen.
    fn drain(f: &mut Follower) -> (Vec<String>, Vec<Rotation>) {
        let mut pieces = Vec::new();
        let mut rotations = Vec::new();
        loop {
            match f.step(&mut pieces).unwrap() {
                Step::Read(_) => {}
                Step::Rotated(r) => rotations.push(r),
                Step::Idle | Step::NotRegular => break,
            }
        }
        let lines = pieces
            .into_iter()
            .map(|p| match p {
                Piece::Line { bytes, .. } => String::from_utf8(bytes).unwrap(),
                Piece::Oversize { .. } => "<oversize>".into(),
            })
            .collect();
        (lines, rotations)
    }

    #[test]
    fn follows_appends_and_holds_partial_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.jsonl");
        let mut f = Follower::new(p.clone(), Start::At(0), &cfg());
        assert_eq!(drain(&mut f), (vec![], vec![]), "missing file is idle");
        append(&p, b"first line\nsecond ha");
        assert_eq!(drain(&mut f).0, vec!["first line"]);
        append(&p, b"lf\n");
        assert_eq!(drain(&mut f).0, vec!["second half"]);
        assert_eq!(f.resume_point().unwrap().1, 23);
    }

    #[test]
    fn end_of_lines_start_skips_existing_lines_but_not_a_partial_one() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.jsonl");
        append(&p, b"old 1\nold 2\npart");
        let mut f = Follower::new(p.clone(), Start::EndOfLines { limit: 16 }, &cfg());
        assert_eq!(drain(&mut f).0, Vec::<String>::new());
        append(&p, b"ial\nnew\n");
        assert_eq!(drain(&mut f).0, vec!["partial", "new"]);
    }

    #[test]
    fn truncation_rewrite_replacement_and_vanishing_restart_from_the_top() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.jsonl");
        append(&p, b"a\nb\nc\n");
        let mut f = Follower::new(p.clone(), Start::At(0), &cfg());
        assert_eq!(drain(&mut f).0, vec!["a", "b", "c"]);

        std::fs::write(&p, b"a\n").unwrap(); // shrank, same inode
        assert_eq!(drain(&mut f), (vec!["a".into()], vec![Rotation::Truncated]));

        std::fs::write(&p, b"X\nY\nZ\n").unwrap(); // longer, first bytes differ
        assert_eq!(
            drain(&mut f),
            (
                vec!["X".into(), "Y".into(), "Z".into()],
                vec![Rotation::Rewritten]
            )
        );

        // Renamed over: the old file's last lines are read first.
        append(&p, b"tail of old\n");
        let tmp = dir.path().join("tmp");
        std::fs::write(&tmp, b"new 1\n").unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        assert_eq!(
            drain(&mut f),
            (
                vec!["tail of old".into(), "new 1".into()],
                vec![Rotation::Replaced]
            )
        );

        std::fs::remove_file(&p).unwrap();
        assert_eq!(drain(&mut f), (vec![], vec![Rotation::Vanished]));
        assert_eq!(drain(&mut f), (vec![], vec![]), "reported once");
        append(&p, b"back\n");
        assert_eq!(drain(&mut f).0, vec!["back"]);
    }

    #[test]
    fn a_checkpoint_offset_past_the_end_is_a_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.jsonl");
        append(&p, b"a\n");
        let mut f = Follower::new(p.clone(), Start::At(100), &cfg());
        assert_eq!(drain(&mut f), (vec!["a".into()], vec![Rotation::Truncated]));
    }

    #[test]
    fn a_parked_follower_resumes_at_its_offset_or_from_the_top_of_a_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agent-a.jsonl");
        append(&p, b"one\ntw");
        let mut f = Follower::new(p.clone(), Start::At(0), &cfg());
        assert_eq!(drain(&mut f).0, vec!["one"]);
        assert!(f.park());
        assert!(f.is_parked() && !f.is_open());
        assert!(!f.changed_since_parked());
        append(&p, b"o\nthree\n");
        assert!(f.changed_since_parked());
        // The partial line is read again, nothing twice.
        assert_eq!(drain(&mut f).0, vec!["two", "three"]);
        assert!(!f.is_parked());
        // Replaced while parked: the new file is read from its start.
        assert!(f.park());
        let tmp = dir.path().join("tmp");
        std::fs::write(&tmp, b"fresh\n").unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        assert!(f.changed_since_parked());
        assert_eq!(
            drain(&mut f),
            (vec!["fresh".into()], vec![Rotation::Replaced])
        );
    }

    #[test]
    fn a_fifo_at_the_path_is_reported_not_opened() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.jsonl");
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let mut f = Follower::new(p.clone(), Start::At(0), &cfg());
        assert_eq!(f.step(&mut Vec::new()).unwrap(), Step::NotRegular);
        assert!(!f.is_open());
        std::fs::remove_file(&p).unwrap();
        append(&p, b"now a file\n");
        assert_eq!(drain(&mut f).0, vec!["now a file"]);
    }

    #[test]
    fn the_final_line_without_newline_is_taken_only_when_complete() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.jsonl");
        append(&p, b"{\"a\":1}\n{\"b\":");
        let mut f = Follower::new(p.clone(), Start::At(0), &cfg());
        drain(&mut f);
        let complete = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).is_ok();
        assert_eq!(f.take_final_line(complete), None, "torn: wait for more");
        append(&p, b"2}");
        drain(&mut f);
        assert_eq!(
            f.take_final_line(complete),
            Some(Piece::Line {
                start: 8,
                end: 15,
                bytes: b"{\"b\":2}".to_vec()
            })
        );
        assert_eq!(f.take_final_line(complete), None, "taken once");
    }

    #[test]
    fn last_line_end_finds_the_last_newline() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        let mut text = vec![b'x'; 20_000];
        text[3] = b'\n';
        std::fs::write(&p, &text).unwrap();
        let f = File::open(&p).unwrap();
        assert_eq!(last_line_end(&f, 20_000).unwrap(), 4);
        assert_eq!(last_line_end(&f, 3).unwrap(), 0);
        assert_eq!(last_line_end(&f, 0).unwrap(), 0);
    }
}
