//! Which records were delivered, remembered across restarts.
//!
//! The checkpoint says where reading resumes, which is enough while the file
//! only grows. But the CLI sometimes rewrites a transcript (a removed record
//! truncates the file and writes the rest back; garbage collection renames a
//! new file over it), and a watcher that was down meanwhile must read it again
//! from the top. Without this list every record it had already delivered would
//! be posted a second time. `STATE_DIR/delivered.log` is an append-only journal
//! of committed record uuids, one per line, that seeds the decoder's
//! deduplication on start. It keeps the newest `capacity` (the decoder's
//! window) and is compacted when it reaches twice that, so it stays bounded.
//!
//! Appends happen with each checkpoint write and before it: a crash between
//! the two leaves uuids in the journal whose records lie past the checkpoint.
//! They were acknowledged, so skipping them on restart is right.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

pub const FILE_NAME: &str = "delivered.log";

#[derive(Debug, thiserror::Error)]
pub enum DeliveredError {
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

/// Delivered uuids, oldest first, as one newline-separated buffer: a single
/// allocation for up to 100 000 of them, handed back to the system when
/// dropped after seeding (a `Vec<String>` of them kept 8 MiB resident).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Delivered(String);

impl Delivered {
    pub fn from_uuids(uuids: &[String]) -> Self {
        let mut d = Self(String::with_capacity(
            uuids.iter().map(|u| u.len() + 1).sum(),
        ));
        d.extend(uuids);
        d
    }

    /// Adds `uuids` after the ones held, each as one line (an empty one, or
    /// one with a newline in it, never seen, is left out).
    pub fn extend(&mut self, uuids: &[String]) {
        for u in uuids.iter().filter(|u| !u.is_empty() && !u.contains('\n')) {
            self.0.push_str(u);
            self.0.push('\n');
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.split('\n').filter(|u| !u.is_empty())
    }

    pub fn len(&self) -> usize {
        self.iter().count()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The journal in one state directory.
#[derive(Debug)]
pub struct DeliveredLog {
    dir: PathBuf,
    capacity: usize,
    /// Lines in the file, so that compaction needs no re-count.
    lines: usize,
    /// The file ends without a newline (a crash mid-append): the next append
    /// starts a new line first, so the torn tail cannot swallow a uuid.
    torn: bool,
}

impl DeliveredLog {
    /// Opens the journal of `dir`, keeping `capacity` uuids, and returns it
    /// with the newest `capacity` uuids it holds.
    pub fn open(dir: &Path, capacity: usize) -> Result<(Self, Delivered), DeliveredError> {
        let mut log = Self {
            dir: dir.to_path_buf(),
            capacity,
            lines: 0,
            torn: false,
        };
        (log.lines, log.torn) = log.scan()?;
        let recent = log.newest()?;
        Ok((log, recent))
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    /// Appends `uuids` and makes them durable; compacts when the journal
    /// holds twice its capacity.
    pub fn append(&mut self, uuids: &[String]) -> Result<(), DeliveredError> {
        if uuids.is_empty() || self.capacity == 0 {
            return Ok(());
        }
        let path = self.path();
        let write = |source| DeliveredError::Write {
            path: path.clone(),
            source,
        };
        let lines = Delivered::from_uuids(uuids);
        let mut f = crate::atomic_file::open_append(&path).map_err(write)?;
        if self.torn {
            f.write_all(b"\n").map_err(write)?;
        }
        f.write_all(lines.0.as_bytes()).map_err(write)?;
        f.sync_data().map_err(write)?;
        self.torn = false;
        self.lines += lines.len();
        if self.lines >= self.capacity.saturating_mul(2) {
            self.compact()?;
        }
        Ok(())
    }

    /// Rewrites the journal with its newest `capacity` lines (temp file,
    /// fsync, rename: a crash leaves the old or the new journal).
    fn compact(&mut self) -> Result<(), DeliveredError> {
        let keep = self.newest()?;
        let path = self.path();
        crate::atomic_file::replace(&path, keep.0.as_bytes())
            .map_err(|source| DeliveredError::Write { path, source })?;
        self.lines = keep.len();
        Ok(())
    }

    /// Lines in the file and whether it ends torn (without a newline), read in
    /// chunks: the journal is never held in memory whole (a 3.7 MB read at
    /// start-up measured 3 MiB more resident memory for good).
    fn scan(&self) -> Result<(usize, bool), DeliveredError> {
        let Some(mut reader) = self.reader()? else {
            return Ok((0, false));
        };
        let (mut newlines, mut last) = (0, b'\n');
        loop {
            let chunk = reader.fill_buf().map_err(|e| self.read_error(e))?;
            let Some(&end) = chunk.last() else { break };
            newlines += chunk.iter().filter(|&&b| b == b'\n').count();
            last = end;
            let n = chunk.len();
            reader.consume(n);
        }
        let torn = last != b'\n';
        Ok((newlines + usize::from(torn), torn))
    }

    /// The newest `capacity` uuids, oldest first. Lines that are not text are
    /// skipped; a torn last line (a crash mid-append) reads as a uuid no record
    /// has, which is harmless.
    fn newest(&self) -> Result<Delivered, DeliveredError> {
        let Some(reader) = self.reader()? else {
            return Ok(Delivered::default());
        };
        // 37 bytes a canonical uuid line.
        let mut out = String::with_capacity(self.lines.min(self.capacity) * 37);
        for line in reader
            .split(b'\n')
            .skip(self.lines.saturating_sub(self.capacity))
        {
            let line = line.map_err(|e| self.read_error(e))?;
            if let Ok(uuid) = std::str::from_utf8(&line) {
                if !uuid.is_empty() {
                    out.push_str(uuid);
                    out.push('\n');
                }
            }
        }
        Ok(Delivered(out))
    }

    fn reader(&self) -> Result<Option<BufReader<File>>, DeliveredError> {
        match File::open(self.path()) {
            Ok(f) => Ok(Some(BufReader::with_capacity(64 * 1024, f))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.read_error(e)),
        }
    }

    fn read_error(&self, source: std::io::Error) -> DeliveredError {
        DeliveredError::Read {
            path: self.path(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn ids(range: std::ops::Range<usize>) -> Vec<String> {
        range.map(|i| format!("uuid-{i}")).collect()
    }

    /// The uuids a fresh open of `dir` seeds deduplication with.
    fn recent(dir: &Path, capacity: usize) -> Vec<String> {
        let (_, d) = DeliveredLog::open(dir, capacity).unwrap();
        d.iter().map(str::to_owned).collect()
    }

    #[test]
    fn appended_uuids_survive_a_reopen_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, seeded) = DeliveredLog::open(dir.path(), 100).unwrap();
        assert!(seeded.is_empty(), "no journal yet");
        log.append(&ids(0..3)).unwrap();
        log.append(&ids(3..5)).unwrap();
        assert_eq!(recent(dir.path(), 100), ids(0..5));
    }

    #[test]
    fn only_the_newest_capacity_are_kept_and_the_file_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = DeliveredLog::open(dir.path(), 10).unwrap();
        for chunk in 0..7 {
            log.append(&ids(chunk * 5..chunk * 5 + 5)).unwrap();
        }
        assert_eq!(recent(dir.path(), 10), ids(25..35));
        let text = fs::read_to_string(log.path()).unwrap();
        assert!(
            text.lines().count() < 20,
            "compacted at twice the capacity: {} lines",
            text.lines().count()
        );
        // Reopened, the line count is right again: compaction comes when due.
        let (mut log, _) = DeliveredLog::open(dir.path(), 10).unwrap();
        log.append(&ids(35..50)).unwrap();
        let text = fs::read_to_string(log.path()).unwrap();
        assert!(text.lines().count() < 20, "{} lines", text.lines().count());
        assert_eq!(recent(dir.path(), 10), ids(40..50));
    }

    #[test]
    fn a_torn_last_line_and_garbage_are_skipped_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        fs::write(&path, b"uuid-0\n\xff\xfe\n\nuuid-1\nuuid-2-tor").unwrap();
        let got = recent(dir.path(), 100);
        assert_eq!(&got[..2], &ids(0..2)[..]);
        // The torn tail reads as a (harmless) unknown uuid, never as an error.
        assert_eq!(got.len(), 3, "{got:?}");
        // An append after the torn tail starts a line of its own.
        let (mut log, _) = DeliveredLog::open(dir.path(), 100).unwrap();
        log.append(&ids(3..4)).unwrap();
        let got = recent(dir.path(), 100);
        assert_eq!(got.last().map(String::as_str), Some("uuid-3"), "{got:?}");
    }

    #[test]
    fn delivered_from_uuids_skips_what_cannot_be_one_line() {
        let d = Delivered::from_uuids(&["a".into(), String::new(), "b\nc".into(), "d".into()]);
        assert_eq!(d.iter().collect::<Vec<_>>(), ["a", "d"]);
        assert_eq!(d.len(), 2);
        assert!(Delivered::default().is_empty());
    }

    #[test]
    fn zero_capacity_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = DeliveredLog::open(dir.path(), 0).unwrap();
        log.append(&ids(0..3)).unwrap();
        assert!(!log.path().exists());
    }
}
