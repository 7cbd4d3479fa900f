//! `ingest::run` against real files in a temporary directory: what the agent
//! CLI does to its transcripts (TRANSCRIPT_FORMAT.md §2, §6) while the watcher
//! follows them, with a real bounded queue and a recording observer.
//!
//! Every record is resolved back to the bytes the test wrote to that very file
//! (by inode), and the uuids of the events are checked too (dedupe across
//! rotations).
//! No sleeps as synchronisation: every wait is on a condition with a deadline.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ops::Shutdown;
use rand::{Rng, SeedableRng};
use tokio::task::JoinHandle;
use watcher::checkpoint::{Checkpoint, FileCheckpoint};
use watcher::ingest::{IngestConfig, IngestError, IngestObserver, StartAt};
use watcher::queue::{self, QueueRx, Record};
use watcher::tail::{FileIdentity, TailConfig};
use watcher::transcript::Source;

const DEADLINE: Duration = Duration::from_secs(10);
const WORKSPACE: &str = "/w";

// ---------------------------------------------------------------- fixtures

/// A user line in the real format, unique by `uuid`.
fn user_line(uuid: &str, text: &str) -> String {
    format!(
        "{{\"type\":\"user\",\"uuid\":\"{uuid}\",\"sessionId\":\"s\",\"message\":{{\"role\":\"user\",\"content\":\"{text}\"}},\"timestamp\":\"2026-01-01T00:00:00.000Z\",\"cwd\":\"{WORKSPACE}\"}}\n"
    )
}

fn lines(prefix: &str, n: usize) -> Vec<String> {
    (1..=n)
        .map(|i| user_line(&format!("{prefix}{i}"), &format!("hello {prefix}{i} é😀")))
        .collect()
}

#[derive(Debug, Clone, PartialEq)]
enum Seen {
    ParseError(&'static str, String, u64),
    Repaired(&'static str, String, u64),
    Oversize(String, u64, u64),
    SkippedRecord(&'static str, String, u64),
    FileSkipped(&'static str, String),
    CapReached(usize, usize),
    Rotation(String, &'static str),
    Waiting(String),
    Following(String),
    Switched(String),
}

#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<Seen>>,
    bytes_read: Mutex<u64>,
    records_seen: Mutex<u64>,
    events: Mutex<Vec<&'static str>>,
    /// The most subagent files reported open at once.
    max_open: Mutex<usize>,
    parked: Mutex<u64>,
}

impl Recorder {
    fn push(&self, s: Seen) {
        self.seen.lock().unwrap().push(s);
    }
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
    fn bytes_read(&self) -> u64 {
        *self.bytes_read.lock().unwrap()
    }
    /// How damaged lines were reported: skipped (parse error) or repaired.
    fn line_reports(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| matches!(s, Seen::ParseError(..) | Seen::Repaired(..)))
            .collect()
    }
    fn rotations(&self) -> Vec<&'static str> {
        self.seen()
            .into_iter()
            .filter_map(|s| match s {
                Seen::Rotation(_, r) => Some(r),
                _ => None,
            })
            .collect()
    }
}

impl IngestObserver for Recorder {
    fn bytes_read(&self, n: u64) {
        *self.bytes_read.lock().unwrap() += n;
    }
    fn parse_error(&self, reason: &'static str, file: &str, offset: u64) {
        self.push(Seen::ParseError(reason, file.into(), offset));
    }
    fn repaired(&self, reason: &'static str, file: &str, offset: u64) {
        self.push(Seen::Repaired(reason, file.into(), offset));
    }
    fn oversize_line(&self, file: &str, offset: u64, len: u64) {
        self.push(Seen::Oversize(file.into(), offset, len));
    }
    fn skipped_record(&self, reason: &'static str, file: &str, offset: u64) {
        self.push(Seen::SkippedRecord(reason, file.into(), offset));
    }
    fn file_skipped(&self, reason: &'static str, file: &str) {
        self.push(Seen::FileSkipped(reason, file.into()));
    }
    fn subagent_files_open(&self, open: usize) {
        let mut m = self.max_open.lock().unwrap();
        *m = (*m).max(open);
    }
    fn subagent_parked(&self) {
        *self.parked.lock().unwrap() += 1;
    }
    fn subagent_cap_reached(&self, cap: usize, tracked: usize) {
        self.push(Seen::CapReached(cap, tracked));
    }
    fn rotation(&self, file: &str, reason: &'static str) {
        self.push(Seen::Rotation(file.into(), reason));
    }
    fn event(&self, kind: &'static str) {
        self.events.lock().unwrap().push(kind);
    }
    fn record_seen(&self) {
        *self.records_seen.lock().unwrap() += 1;
    }
    fn waiting_for_transcript(&self, detail: &str) {
        self.push(Seen::Waiting(detail.into()));
    }
    fn following(&self, file: &str) {
        self.push(Seen::Following(file.into()));
    }
    fn session_switched(&self, file: &str) {
        self.push(Seen::Switched(file.into()));
    }
}

/// Writes files the way the agent CLI does and remembers what each inode
/// holds, so a record (file identity + byte range) can be read back even after
/// the path was renamed over.
#[derive(Default)]
struct Disk {
    content: Mutex<HashMap<u64, Vec<u8>>>,
}

impl Disk {
    fn ino(path: &Path) -> u64 {
        std::fs::metadata(path).unwrap().ino()
    }

    fn append(&self, path: &Path, bytes: &[u8]) {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).unwrap();
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(bytes).unwrap();
        f.flush().unwrap();
        let ino = Self::ino(path);
        self.content
            .lock()
            .unwrap()
            .entry(ino)
            .or_default()
            .extend_from_slice(bytes);
    }

    fn append_lines(&self, path: &Path, lines: &[String]) {
        self.append(path, lines.concat().as_bytes());
    }

    /// Truncates and writes `bytes` (same inode).
    fn truncate_to(&self, path: &Path, bytes: &[u8]) {
        std::fs::write(path, bytes).unwrap();
        self.content
            .lock()
            .unwrap()
            .insert(Self::ino(path), bytes.to_vec());
    }

    /// Overwrites the start in place without truncating (same inode; `bytes`
    /// at least as long as the file).
    fn overwrite(&self, path: &Path, bytes: &[u8]) {
        let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        f.write_all_at(bytes, 0).unwrap();
        self.content
            .lock()
            .unwrap()
            .insert(Self::ino(path), bytes.to_vec());
    }

    /// Writes a temp file and renames it over `path` (new inode).
    fn replace(&self, path: &Path, bytes: &[u8]) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes).unwrap();
        let ino = Self::ino(&tmp);
        std::fs::rename(&tmp, path).unwrap();
        self.content.lock().unwrap().insert(ino, bytes.to_vec());
    }

    /// The bytes of the record's line as written, newline included.
    fn line_of(&self, r: &Record) -> String {
        let content = self.content.lock().unwrap();
        let bytes = content
            .get(&r.identity.inode)
            .unwrap_or_else(|| panic!("record from an unknown inode: {r:?}"));
        let (s, e) = (r.pos.start as usize, r.pos.end as usize);
        assert!(e <= bytes.len(), "record past the written bytes: {r:?}");
        String::from_utf8(bytes[s..e].to_vec()).expect("a whole line, never a cut character")
    }
}

fn set_mtime(path: &Path, t: SystemTime) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(t)
        .unwrap();
}

struct Opts {
    transcript: Option<PathBuf>,
    start_at: StartAt,
    checkpoint: Option<Checkpoint>,
    delivered: watcher::delivered::Delivered,
    max_line_bytes: usize,
    read_chunk: usize,
    queue_events: usize,
    subagent_max_open: usize,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            transcript: None,
            start_at: StartAt::Beginning,
            checkpoint: None,
            delivered: Default::default(),
            max_line_bytes: 64 * 1024,
            read_chunk: 61,
            queue_events: 1024,
            subagent_max_open: 64,
        }
    }
}

/// A running ingest over `<tmp>/projects`, for workspace `/w` (project dir `-w`).
struct Live {
    _tmp: tempfile::TempDir,
    projects: PathBuf,
    disk: Disk,
    rx: QueueRx,
    obs: Arc<Recorder>,
    shutdown: Shutdown,
    task: Option<JoinHandle<Result<(), IngestError>>>,
}

impl Live {
    fn new_dirs() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let projects = tmp.path().join("projects");
        (tmp, projects)
    }

    /// Starts on a session `-w/s.jsonl` holding one main-agent line ("m1")
    /// and takes it: where the subagent scenarios begin.
    async fn start_after_main_line(opts: Opts) -> Self {
        let (tmp, projects) = Self::new_dirs();
        let disk = Disk::default();
        disk.append_lines(&projects.join("-w/s.jsonl"), &[user_line("m1", "main")]);
        let mut live = Self::start(tmp, projects, disk, opts);
        live.take(1).await;
        live
    }

    fn project(&self) -> PathBuf {
        self.projects.join("-w")
    }

    fn start(tmp: tempfile::TempDir, projects: PathBuf, disk: Disk, opts: Opts) -> Self {
        let (tx, rx) = queue::bounded(opts.queue_events, 8 * 1024 * 1024);
        let obs = Arc::new(Recorder::default());
        let stop = Shutdown::new();
        let cfg = IngestConfig {
            transcript_path: opts.transcript,
            workspace: WORKSPACE.into(),
            projects_dir: projects.clone(),
            start_at: opts.start_at,
            tail: TailConfig {
                max_line_bytes: opts.max_line_bytes,
                poll_interval: Duration::from_millis(20),
                read_chunk: opts.read_chunk,
            },
            dedupe_capacity: 10_000,
            subagent_max_open: opts.subagent_max_open,
        };
        let observer: Arc<dyn IngestObserver> = obs.clone();
        let task = tokio::spawn(watcher::ingest::run(
            cfg,
            tx,
            opts.checkpoint,
            opts.delivered,
            observer,
            watcher::pipeline::Drain::new(stop.clone(), Duration::from_secs(10)),
        ));
        Self {
            _tmp: tmp,
            projects,
            disk,
            rx,
            obs,
            shutdown: stop,
            task: Some(task),
        }
    }

    /// The next `n` records, or a panic naming what did arrive by the deadline.
    async fn take(&mut self, n: usize) -> Vec<Record> {
        let mut got = Vec::with_capacity(n);
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while got.len() < n {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(r)) => got.push(r),
                Ok(None) => panic!("queue closed after {} of {n} records", got.len()),
                Err(_) => panic!(
                    "only {} of {n} records by the deadline: {:?}\nobserved: {:?}",
                    got.len(),
                    got.iter().map(|r| self.disk.line_of(r)).collect::<Vec<_>>(),
                    self.obs.seen()
                ),
            }
        }
        got
    }

    /// Records until one reads back as `last` (inclusive).
    async fn take_through(&mut self, last: &str) -> Vec<Record> {
        let mut got = Vec::new();
        loop {
            let r = self.take(1).await.remove(0);
            let done = self.disk.line_of(&r) == last;
            got.push(r);
            if done {
                return got;
            }
        }
    }

    /// Nothing more arrives within several poll intervals (absence can only be
    /// checked against a bound; every positive wait is on a condition).
    async fn assert_quiet(&mut self) {
        let extra = tokio::time::timeout(Duration::from_millis(150), self.rx.recv()).await;
        if let Ok(Some(r)) = extra {
            panic!("unexpected record {:?}: {}", r.pos, self.disk.line_of(&r));
        }
    }

    async fn wait_for(&self, what: &str, cond: impl Fn(&Recorder) -> bool) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while !cond(&self.obs) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; observed {:?}",
                self.obs.seen()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn texts(&self, records: &[Record]) -> Vec<String> {
        records.iter().map(|r| self.disk.line_of(r)).collect()
    }

    /// Stops the ingest and checks it ended cleanly and promptly.
    async fn stop(mut self) {
        self.shutdown.trigger();
        let task = self.task.take().unwrap();
        let res = tokio::time::timeout(DEADLINE, task)
            .await
            .expect("ingest stops promptly")
            .expect("ingest task did not panic");
        assert!(res.is_ok(), "{res:?}");
    }
}

/// The uuid of every record that yielded events (a line's events share its
/// uuid; with dedupe, a re-read line yields none).
fn event_uuids(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .filter_map(|r| r.events.iter().find_map(|e| e.uuid.clone()))
        .collect()
}

fn contiguous_from(records: &[Record], mut at: u64) {
    for r in records {
        assert_eq!(r.pos.start, at, "records tile the file: {:?}", r.pos);
        at = r.pos.end;
    }
}

// ---------------------------------------------------------------- scenarios

#[tokio::test]
async fn appends_in_random_chunks_arrive_as_whole_lines() {
    let (tmp, projects) = Live::new_dirs();
    let session = projects.join("-w/s1.jsonl");
    let disk = Disk::default();
    disk.append(&session, b"");
    let mut live = Live::start(tmp, projects, disk, Opts::default());
    let want = lines("a", 40);
    let text = want.concat().into_bytes();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut at = 0;
    while at < text.len() {
        // Cuts fall anywhere: inside JSON, inside é and 😀, before a '\n'.
        let n = rng.random_range(1..=97).min(text.len() - at);
        live.disk.append(&session, &text[at..at + n]);
        at += n;
        // Let the tailer see this partial state before the next write.
        let seen = at as u64;
        live.wait_for("the chunk to be read", |o| o.bytes_read() >= seen)
            .await;
    }
    let got = live.take(want.len()).await;
    assert_eq!(live.texts(&got), want);
    contiguous_from(&got, 0);
    assert!(got
        .iter()
        .all(|r| r.pos.file.ends_with("/projects/-w/s1.jsonl")));
    let want_uuids: Vec<String> = (1..=40).map(|i| format!("a{i}")).collect();
    assert_eq!(event_uuids(&got), want_uuids);
    live.assert_quiet().await;
    assert_eq!(live.obs.bytes_read(), text.len() as u64);
    assert!(live
        .obs
        .seen()
        .contains(&Seen::Following(session.display().to_string())));
    live.stop().await;
}

#[tokio::test]
async fn a_transcript_created_after_start_is_read_from_its_beginning() {
    let (tmp, projects) = Live::new_dirs();
    let mut live = Live::start(
        tmp,
        projects,
        Disk::default(),
        Opts {
            start_at: StartAt::End,
            ..Opts::default()
        },
    );
    live.wait_for("readiness to say there is no transcript", |o| {
        o.seen().iter().any(|s| matches!(s, Seen::Waiting(_)))
    })
    .await;
    let session = live.project().join("late.jsonl");
    let want = lines("l", 3);
    live.disk.append_lines(&session, &want);
    let got = live.take(3).await;
    assert_eq!(
        live.texts(&got),
        want,
        "START_AT=end only applies to files existing at start-up"
    );
    contiguous_from(&got, 0);
    assert!(live
        .obs
        .seen()
        .contains(&Seen::Following(session.display().to_string())));
    live.stop().await;
}

#[tokio::test]
async fn transcript_path_wins_and_may_appear_later() {
    let (tmp, projects) = Live::new_dirs();
    let elsewhere = tmp.path().join("explicit/t.jsonl");
    let disk = Disk::default();
    // A session in the discovered place that must be ignored.
    disk.append_lines(&projects.join("-w/other.jsonl"), &lines("x", 2));
    let mut live = Live::start(
        tmp,
        projects,
        disk,
        Opts {
            transcript: Some(elsewhere.clone()),
            ..Opts::default()
        },
    );
    live.wait_for("waiting for TRANSCRIPT_PATH", |o| {
        o.seen()
            .iter()
            .any(|s| matches!(s, Seen::Waiting(d) if d.contains("t.jsonl")))
    })
    .await;
    let want = lines("t", 2);
    live.disk.append_lines(&elsewhere, &want);
    let got = live.take(2).await;
    assert_eq!(live.texts(&got), want);
    live.assert_quiet().await;
    live.stop().await;
}

#[tokio::test]
async fn a_new_session_file_is_followed_after_the_old_one_is_finished() {
    let (tmp, projects) = Live::new_dirs();
    let old = projects.join("-w/old.jsonl");
    let disk = Disk::default();
    disk.append_lines(&old, &lines("o", 2));
    let mut live = Live::start(tmp, projects, disk, Opts::default());
    let got = live.take(2).await;
    assert_eq!(live.texts(&got), lines("o", 2));

    // `/clear`: the last lines of the old session and the new file land
    // together; the new one is the most recently modified.
    let tail = vec![
        user_line("o3", "last words"),
        user_line("o4", "really last"),
    ];
    live.disk.append_lines(&old, &tail);
    let new = live.project().join("new.jsonl");
    let fresh = lines("n", 3);
    live.disk.append_lines(&new, &fresh);
    set_mtime(&old, SystemTime::now() - Duration::from_secs(30));

    let got = live.take(5).await;
    let texts = live.texts(&got);
    assert_eq!(texts[..2], tail[..], "the old session is finished first");
    assert_eq!(texts[2..], fresh[..], "then the new one, from its start");
    assert!(got[..2].iter().all(|r| r.pos.file.ends_with("old.jsonl")));
    assert!(got[2..].iter().all(|r| r.pos.file.ends_with("new.jsonl")));
    contiguous_from(&got[2..], 0);
    assert!(live
        .obs
        .seen()
        .contains(&Seen::Switched(new.display().to_string())));
    // The old file is no longer followed.
    live.disk
        .append_lines(&old, &[user_line("o5", "after the switch")]);
    set_mtime(&old, SystemTime::now() - Duration::from_secs(30));
    live.assert_quiet().await;
    live.stop().await;
}

#[tokio::test]
async fn a_truncated_file_is_reread_without_loss() {
    let (tmp, projects) = Live::new_dirs();
    let session = projects.join("-w/s.jsonl");
    let disk = Disk::default();
    let first = lines("a", 4);
    disk.append_lines(&session, &first);
    let mut live = Live::start(tmp, projects, disk, Opts::default());
    let got = live.take(4).await;
    assert_eq!(live.texts(&got), first);

    // A record is removed: the file is cut and the rest written back shorter.
    let kept = [first[0].clone(), first[1].clone(), first[3].clone()];
    live.disk.truncate_to(&session, kept.concat().as_bytes());
    let later = user_line("a5", "after the cut");
    live.disk
        .append_lines(&session, std::slice::from_ref(&later));
    let got = live.take_through(&later).await;
    assert_eq!(
        live.texts(&got),
        [&kept[..], std::slice::from_ref(&later)].concat()
    );
    contiguous_from(&got, 0);
    assert_eq!(live.obs.rotations(), vec!["truncated"]);
    // Re-read lines are deduplicated: only the new one yields events.
    assert_eq!(event_uuids(&got), vec!["a5".to_owned()]);
    live.assert_quiet().await;
    live.stop().await;
}

#[tokio::test]
async fn an_in_place_rewrite_is_detected_by_fingerprint() {
    let (tmp, projects) = Live::new_dirs();
    let session = projects.join("-w/s.jsonl");
    let disk = Disk::default();
    let first = lines("a", 3);
    disk.append_lines(&session, &first);
    let mut live = Live::start(tmp, projects, disk, Opts::default());
    let got = live.take(3).await;
    assert_eq!(live.texts(&got), first);

    // Same inode, no truncation, longer: only the first bytes tell.
    let rewritten = [
        vec![user_line("z0", "inserted at the top")],
        first.clone(),
        vec![user_line("a4", "new at the end")],
    ]
    .concat();
    let inode = Disk::ino(&session);
    live.disk.overwrite(&session, rewritten.concat().as_bytes());
    assert_eq!(Disk::ino(&session), inode);
    let got = live.take_through(&rewritten[4]).await;
    assert_eq!(
        live.texts(&got),
        rewritten,
        "re-read from the top, nothing torn"
    );
    contiguous_from(&got, 0);
    assert_eq!(live.obs.rotations(), vec!["rewritten"]);
    assert_eq!(event_uuids(&got), vec!["z0".to_owned(), "a4".to_owned()]);
    live.stop().await;
}

#[tokio::test]
async fn a_file_renamed_over_is_drained_then_followed_anew() {
    let (tmp, projects) = Live::new_dirs();
    let session = projects.join("-w/s.jsonl");
    let disk = Disk::default();
    let first = lines("a", 2);
    disk.append_lines(&session, &first);
    let mut live = Live::start(tmp, projects, disk, Opts::default());
    let got = live.take(2).await;
    assert_eq!(live.texts(&got), first);

    // The last line of the old file and the replacement land together.
    let last_old = user_line("a3", "written just before the rename");
    live.disk
        .append_lines(&session, std::slice::from_ref(&last_old));
    let replacement = [first[1].clone(), last_old.clone(), user_line("b1", "new")];
    live.disk.replace(&session, replacement.concat().as_bytes());
    let got = live.take_through(&replacement[2]).await;
    let texts = live.texts(&got);
    assert_eq!(texts[0], last_old, "the old inode is read to its end first");
    assert_eq!(texts[1..], replacement[..]);
    contiguous_from(&got[1..], 0);
    assert_ne!(got[0].identity.inode, got[1].identity.inode);
    assert_eq!(live.obs.rotations(), vec!["replaced"]);
    assert_eq!(event_uuids(&got), vec!["a3".to_owned(), "b1".to_owned()]);
    live.stop().await;
}

#[tokio::test]
async fn an_oversize_line_is_skipped_and_counted() {
    let (tmp, projects) = Live::new_dirs();
    let session = projects.join("-w/s.jsonl");
    let disk = Disk::default();
    let before = user_line("a1", "before");
    // A 1 MiB base64-ish image line against a 4 KiB cap.
    let huge = user_line("big", &"A".repeat(1024 * 1024));
    let after = user_line("a2", "after");
    disk.append_lines(&session, &[before.clone(), huge.clone(), after.clone()]);
    let mut live = Live::start(
        tmp,
        projects,
        disk,
        Opts {
            max_line_bytes: 4096,
            read_chunk: 64 * 1024,
            ..Opts::default()
        },
    );
    let got = live.take(3).await;
    assert_eq!(live.disk.line_of(&got[0]), before);
    assert_eq!(live.disk.line_of(&got[2]), after);
    let skipped = &got[1];
    assert!(skipped.events.is_empty());
    assert_eq!(
        (skipped.pos.start, skipped.pos.end),
        (before.len() as u64, (before.len() + huge.len()) as u64),
        "the checkpoint can move past it"
    );
    assert!(
        skipped.bytes < 4096,
        "the queue is not charged for bytes never held"
    );
    assert_eq!(
        live.obs
            .seen()
            .into_iter()
            .filter(|s| matches!(s, Seen::Oversize(..)))
            .collect::<Vec<_>>(),
        vec![Seen::Oversize(
            session.display().to_string(),
            before.len() as u64,
            huge.len() as u64
        )]
    );
    live.stop().await;
}

#[tokio::test]
async fn subagent_files_in_both_layouts_are_followed_as_subagents() {
    let mut live = Live::start_after_main_line(Opts::default()).await;
    let project = live.project();

    let agent_line =
        |uuid: &str, agent: &str| agent_line(uuid, agent, &format!("task for {agent}"));
    // Old layout beside the session; new layout under <session>/subagents.
    let flat = project.join("agent-f1.jsonl");
    let nested = project.join("s/subagents/agent-n1.jsonl");
    std::fs::create_dir_all(nested.parent().unwrap()).unwrap();
    std::fs::write(
        nested.with_extension("meta.json"),
        r#"{"agentType":"general-purpose","description":"Find the flaky test"}"#,
    )
    .unwrap();
    // Files that are not transcripts stay unread.
    live.disk.append(
        &project.join("s/tool-results/t1.txt"),
        b"{\"not\":\"json lines\"}\n",
    );
    live.disk.append(
        &project.join("s/subagents/workflows/journal.jsonl"),
        user_line("j1", "journal").as_bytes(),
    );
    live.disk
        .append(&project.join("sessions-index.json"), b"{}\n");
    live.disk.append_lines(&flat, &[agent_line("f1-1", "f1")]);
    live.disk.append_lines(&nested, &[agent_line("n1-1", "n1")]);
    // An old-layout file of another session is not ours.
    live.disk.append_lines(
        &project.join("agent-x.jsonl"),
        &[agent_line("x-1", "x").replace("\"sessionId\":\"s\"", "\"sessionId\":\"other\"")],
    );

    let mut got = live.take(2).await;
    got.sort_by(|a, b| a.pos.file.cmp(&b.pos.file));
    assert_eq!(&*got[0].pos.file, flat.display().to_string());
    assert_eq!(&*got[1].pos.file, nested.display().to_string());
    let sources: Vec<Source> = got
        .iter()
        .flat_map(|r| r.events.iter().map(|e| e.source.clone()))
        .collect();
    assert!(sources.contains(&Source::Subagent {
        agent_id: Some("f1".into()),
        description: None,
        workflow: None,
    }));
    assert!(sources.contains(&Source::Subagent {
        agent_id: Some("n1".into()),
        description: Some("Find the flaky test".into()),
        workflow: None,
    }));
    assert!(!sources.contains(&Source::Main));
    live.assert_quiet().await;
    live.stop().await;
}

#[tokio::test]
async fn start_at_end_skips_what_existed_but_not_a_line_being_written() {
    let (tmp, projects) = Live::new_dirs();
    let session = projects.join("-w/s.jsonl");
    let disk = Disk::default();
    let partial = user_line("p1", "half written at start-up");
    let (head, rest) = partial.split_at(40);
    disk.append_lines(&session, &lines("old", 3));
    disk.append(&session, head.as_bytes());
    let mut live = Live::start(
        tmp,
        projects,
        disk,
        Opts {
            start_at: StartAt::End,
            ..Opts::default()
        },
    );
    live.wait_for("the file to be followed", |o| {
        o.seen().iter().any(|s| matches!(s, Seen::Following(_)))
    })
    .await;
    let new = user_line("n1", "live");
    live.disk.append(&session, rest.as_bytes());
    live.disk.append_lines(&session, std::slice::from_ref(&new));
    let got = live.take(2).await;
    assert_eq!(live.texts(&got), vec![partial, new]);
    live.assert_quiet().await;
    live.stop().await;
}

#[tokio::test]
async fn a_checkpoint_offset_is_honoured_and_a_stale_one_ignored() {
    let (tmp, projects) = Live::new_dirs();
    let project = projects.join("-w");
    let resumed = project.join("s.jsonl");
    let agent = project.join("s/subagents/agent-a.jsonl");
    let disk = Disk::default();
    let done = lines("d", 2);
    disk.append_lines(&resumed, &done);
    disk.append_lines(&resumed, &[user_line("d3", "not yet acknowledged")]);
    disk.append_lines(&agent, &lines("g", 2));
    let mut cp = Checkpoint::default();
    cp.files.insert(
        resumed.display().to_string(),
        FileCheckpoint {
            offset: done.concat().len() as u64,
            identity: FileIdentity::of(&resumed).unwrap(),
        },
    );
    // Taken of another file: this offset must not be used.
    cp.files.insert(
        agent.display().to_string(),
        FileCheckpoint {
            offset: 5,
            identity: FileIdentity::default(),
        },
    );
    let mut live = Live::start(
        tmp,
        projects,
        disk,
        Opts {
            checkpoint: Some(cp),
            start_at: StartAt::Beginning,
            ..Opts::default()
        },
    );
    let got = live.take(3).await;
    let mut texts = live.texts(&got);
    texts.sort();
    let mut want = [lines("g", 2), vec![user_line("d3", "not yet acknowledged")]].concat();
    want.sort();
    assert_eq!(texts, want);
    let main: Vec<_> = got
        .iter()
        .filter(|r| r.pos.file.ends_with("s.jsonl"))
        .collect();
    assert_eq!(main.len(), 1);
    assert_eq!(main[0].pos.start, done.concat().len() as u64);
    live.assert_quiet().await;
    live.stop().await;
}

#[tokio::test]
async fn stop_ends_ingest_even_while_the_queue_is_full() {
    let (tmp, projects) = Live::new_dirs();
    let session = projects.join("-w/s.jsonl");
    let disk = Disk::default();
    disk.append_lines(&session, &lines("a", 50));
    let mut live = Live::start(
        tmp,
        projects,
        disk,
        Opts {
            queue_events: 2,
            ..Opts::default()
        },
    );
    // Backpressure: the tailer stops after filling the queue.
    live.wait_for("the queue to fill", |o| {
        *o.records_seen.lock().unwrap() >= 3
    })
    .await;
    assert!(*live.obs.records_seen.lock().unwrap() < 50);
    assert_eq!(live.rx.depth(), 2);
    let got = live.take(2).await;
    assert_eq!(live.texts(&got), lines("a", 2));
    let stop = live.shutdown.clone();
    let task = live.task.take().unwrap();
    stop.trigger();
    let res = tokio::time::timeout(DEADLINE, task).await;
    assert!(matches!(res, Ok(Ok(Ok(())))), "{res:?}");
    // The queue drains what was in it, then reports closed.
    let mut rest = 0;
    while let Some(_r) = tokio::time::timeout(DEADLINE, live.rx.recv())
        .await
        .unwrap()
    {
        rest += 1;
    }
    assert!(rest <= 2);
}

#[tokio::test]
async fn a_torn_line_is_reported_with_its_offset_and_the_stream_goes_on() {
    let (tmp, projects) = Live::new_dirs();
    let session = projects.join("-w/s.jsonl");
    let disk = Disk::default();
    let before = user_line("a1", "before");
    let torn = "{\"type\":\"user\",\"uuid\":\"cut-off-mid-wr\n".to_owned();
    let after = user_line("a2", "after");
    disk.append_lines(&session, &[before.clone(), torn.clone(), after.clone()]);
    let mut live = Live::start(tmp, projects, disk, Opts::default());
    let got = live.take(3).await;
    assert_eq!(live.texts(&got), vec![before.clone(), torn, after]);
    assert!(
        got[1].events.is_empty(),
        "the checkpoint can still move past it"
    );
    assert_eq!(event_uuids(&got), vec!["a1".to_owned(), "a2".to_owned()]);
    assert_eq!(
        live.obs.line_reports(),
        vec![Seen::ParseError(
            "torn",
            session.display().to_string(),
            before.len() as u64
        )]
    );
    assert!(live.obs.events.lock().unwrap().contains(&"user_prompt"));
    live.stop().await;
}

#[tokio::test]
async fn a_repaired_line_is_delivered_and_reported_with_its_offset() {
    let (tmp, projects) = Live::new_dirs();
    let session = projects.join("-w/s.jsonl");
    let disk = Disk::default();
    let before = user_line("r1", "before");
    // A lone high surrogate escape: serde_json refuses it, the decoder repairs it.
    let damaged = user_line("r2", r"half an emoji: \ud83d!");
    let after = user_line("r3", "after");
    disk.append_lines(&session, &[before.clone(), damaged.clone(), after.clone()]);
    let mut live = Live::start(tmp, projects, disk, Opts::default());
    let got = live.take(3).await;
    assert_eq!(live.texts(&got), vec![before.clone(), damaged, after]);
    assert_eq!(event_uuids(&got), ["r1", "r2", "r3"].map(String::from));
    assert_eq!(
        live.obs.line_reports(),
        vec![Seen::Repaired(
            "surrogate",
            session.display().to_string(),
            before.len() as u64
        )]
    );
    live.stop().await;
}

#[tokio::test]
async fn a_new_session_with_the_same_mtime_as_the_old_one_still_takes_over() {
    let (tmp, projects) = Live::new_dirs();
    // Named so that the old file sorts after the new one: ties are not
    // decided by name.
    let old = projects.join("-w/zz-old.jsonl");
    let disk = Disk::default();
    disk.append_lines(&old, &lines("o", 1));
    let mut live = Live::start(tmp, projects, disk, Opts::default());
    let got = live.take(1).await;
    assert_eq!(live.texts(&got), lines("o", 1));

    // Coarse file times: the old file's last line and the new file's first
    // land within one tick.
    let last = user_line("o2", "last of the old session");
    live.disk.append_lines(&old, std::slice::from_ref(&last));
    let tick = SystemTime::now() - Duration::from_secs(5);
    set_mtime(&old, tick);
    // Staged outside the project directory and renamed in (rename keeps the
    // mtime and the inode), so the watcher only ever sees the exact tie.
    let staged = live.projects.join("staging/aa-new.jsonl");
    let fresh = lines("n", 2);
    live.disk.append_lines(&staged, &fresh);
    set_mtime(&staged, tick);
    let new = live.project().join("aa-new.jsonl");
    std::fs::rename(&staged, &new).unwrap();
    assert_eq!(
        std::fs::metadata(&old).unwrap().modified().unwrap(),
        std::fs::metadata(&new).unwrap().modified().unwrap()
    );

    let got = live.take(3).await;
    assert_eq!(live.texts(&got), [vec![last], fresh].concat());
    assert!(got[1..]
        .iter()
        .all(|r| r.pos.file.ends_with("aa-new.jsonl")));
    // And it does not flap back to the old file of the same mtime.
    live.assert_quiet().await;
    assert_eq!(
        live.obs
            .seen()
            .iter()
            .filter(|s| matches!(s, Seen::Switched(_)))
            .count(),
        1
    );
    live.stop().await;
}

/// A subagent line as the agent CLI writes it in an agent file.
fn agent_line(uuid: &str, agent: &str, text: &str) -> String {
    format!(
        "{{\"type\":\"user\",\"uuid\":\"{uuid}\",\"sessionId\":\"s\",\"isSidechain\":true,\"agentId\":\"{agent}\",\"message\":{{\"role\":\"user\",\"content\":\"{text}\"}},\"timestamp\":\"2026-01-01T00:00:01.000Z\",\"cwd\":\"/w\"}}\n"
    )
}

fn mkfifo(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::S_IRWXU).unwrap();
}

#[tokio::test]
async fn workflow_subagents_at_any_depth_are_followed_and_named_after_their_run() {
    let mut live = Live::start_after_main_line(Opts::default()).await;
    let project = live.project();
    let session = project.join("s.jsonl");

    let run = project.join("s/subagents/workflows/wf_57c6a296-6f2");
    let a1 = run.join("agent-a1.jsonl");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(
        run.join("agent-a1.meta.json"),
        r#"{"label":"review api","phase":"review","model":"opus"}"#,
    )
    .unwrap();
    // The run's journal is bookkeeping, never read as a transcript.
    live.disk.append(
        &run.join("journal.jsonl"),
        b"{\"type\":\"started\",\"label\":\"review api\",\"phase\":\"review\"}\n",
    );
    // The main file keeps growing while the run's agents write.
    for i in 1..=5 {
        live.disk
            .append_lines(&a1, &[agent_line(&format!("a1-{i}"), "a1", "step")]);
        live.disk
            .append_lines(&session, &[user_line(&format!("m{}", i + 1), "main")]);
    }
    let deeper = project.join("s/subagents/workflows/wf_2/extra/agent-d1.jsonl");
    live.disk
        .append_lines(&deeper, &[agent_line("d1-1", "d1", "deep")]);

    let got = live.take(11).await;
    let mut by_uuid: HashMap<String, Source> = HashMap::new();
    for r in &got {
        for e in &r.events {
            by_uuid.insert(e.uuid.clone().unwrap(), e.source.clone());
        }
    }
    for i in 1..=5 {
        assert_eq!(
            by_uuid[&format!("a1-{i}")],
            Source::Subagent {
                agent_id: Some("a1".into()),
                description: Some("review api".into()),
                workflow: Some("wf_57c6a296-6f2".into()),
            }
        );
        assert_eq!(by_uuid[&format!("m{}", i + 1)], Source::Main);
    }
    assert_eq!(
        by_uuid["d1-1"],
        Source::Subagent {
            agent_id: Some("d1".into()),
            description: None,
            workflow: Some("wf_2".into()),
        }
    );
    assert!(got.iter().all(|r| !r.pos.file.ends_with("journal.jsonl")));
    live.assert_quiet().await;
    live.stop().await;
}

#[tokio::test]
async fn a_fifo_at_the_transcript_path_never_wedges_ingest_or_its_shutdown() {
    let (tmp, projects) = Live::new_dirs();
    let session = projects.join("-w/s.jsonl");
    mkfifo(&session);
    let disk = Disk::default();
    let opts = Opts {
        transcript: Some(session.clone()),
        ..Opts::default()
    };
    let mut live = Live::start(tmp, projects, disk, opts);
    let label = session.display().to_string();
    live.wait_for("the FIFO to be reported", |o| {
        o.seen()
            .contains(&Seen::FileSkipped("not_regular_file", label.clone()))
    })
    .await;
    // Reported once, not on every pass; and a regular file there is read.
    std::fs::remove_file(&session).unwrap();
    let want = lines("a", 2);
    live.disk.append_lines(&session, &want);
    let got = live.take(2).await;
    assert_eq!(live.texts(&got), want);
    let reports = live
        .obs
        .seen()
        .iter()
        .filter(|s| matches!(s, Seen::FileSkipped(..)))
        .count();
    assert_eq!(reports, 1);
    live.stop().await;
}

#[tokio::test]
async fn fifos_under_subagents_are_skipped_and_the_rest_still_flows() {
    let mut live = Live::start_after_main_line(Opts::default()).await;
    let project = live.project();
    let session = project.join("s.jsonl");
    let sub = project.join("s/subagents");
    // The meta file of a real agent file, and an agent file itself.
    mkfifo(&sub.join("agent-x.meta.json"));
    mkfifo(&sub.join("agent-y.jsonl"));
    live.disk
        .append_lines(&sub.join("agent-x.jsonl"), &[agent_line("x1", "x", "hi")]);
    live.disk
        .append_lines(&session, &[user_line("m2", "still flowing")]);
    let got = live.take(2).await;
    let uuids = event_uuids(&got);
    assert!(uuids.contains(&"x1".to_owned()) && uuids.contains(&"m2".to_owned()));
    let y = sub.join("agent-y.jsonl").display().to_string();
    live.wait_for("the FIFO agent file to be reported", |o| {
        o.seen()
            .contains(&Seen::FileSkipped("not_regular_file", y.clone()))
    })
    .await;
    live.stop().await;
}

#[tokio::test]
async fn thousands_of_subagent_files_stay_within_the_cap_and_lose_nothing() {
    const FILES: usize = 300;
    const CAP: usize = 8;
    let opts = Opts {
        subagent_max_open: CAP,
        read_chunk: 4096,
        queue_events: 4096,
        ..Opts::default()
    };
    let mut live = Live::start_after_main_line(opts).await;
    let project = live.project();
    let sub = project.join("s/subagents");
    let path = |i: usize| sub.join(format!("agent-{i:04}.jsonl"));
    for i in 0..FILES {
        live.disk
            .append_lines(&path(i), &[agent_line(&format!("{i}-a"), "x", "first")]);
    }
    let got = live.take(FILES).await;
    assert_eq!(event_uuids(&got).len(), FILES);
    // Parked files grow again: reopened at their offset, nothing twice.
    for i in (0..FILES).step_by(3) {
        live.disk
            .append_lines(&path(i), &[agent_line(&format!("{i}-b"), "x", "second")]);
    }
    let got = live.take(FILES.div_ceil(3)).await;
    let mut uuids = event_uuids(&got);
    uuids.sort();
    let mut want: Vec<String> = (0..FILES).step_by(3).map(|i| format!("{i}-b")).collect();
    want.sort();
    assert_eq!(uuids, want);
    live.assert_quiet().await;
    assert!(*live.obs.max_open.lock().unwrap() <= CAP);
    assert!(*live.obs.parked.lock().unwrap() > 0);
    let caps: Vec<Seen> = live
        .obs
        .seen()
        .into_iter()
        .filter(|s| matches!(s, Seen::CapReached(..)))
        .collect();
    assert!(
        !caps.is_empty() && caps.iter().all(|c| matches!(c, Seen::CapReached(CAP, _))),
        "{caps:?}"
    );
    live.stop().await;
}

#[tokio::test]
async fn a_complete_last_line_without_newline_is_posted_at_stop() {
    let (tmp, projects) = Live::new_dirs();
    let project = projects.join("-w");
    let session = project.join("s.jsonl");
    let torn_agent = project.join("s/subagents/agent-t.jsonl");
    let disk = Disk::default();
    let first = user_line("l1", "first");
    let last = user_line("l2", "the agent's last words");
    disk.append(&session, format!("{first}{}", last.trim_end()).as_bytes());
    // A subagent whose last line is really torn: never posted.
    disk.append(&torn_agent, b"{\"type\":\"user\",\"uuid\":\"t1\"");
    let mut live = Live::start(tmp, projects, disk, Opts::default());
    let got = live.take(1).await;
    assert_eq!(event_uuids(&got), vec!["l1".to_owned()]);
    live.assert_quiet().await;

    live.shutdown.trigger();
    let got = live.take(1).await;
    assert_eq!(event_uuids(&got), vec!["l2".to_owned()]);
    assert_eq!(live.disk.line_of(&got[0]), last.trim_end());
    assert_eq!(got[0].pos.end, (first.len() + last.len() - 1) as u64);
    let task = live.task.take().unwrap();
    tokio::time::timeout(DEADLINE, task)
        .await
        .expect("ingest stops promptly")
        .unwrap()
        .unwrap();
    // Nothing else: the torn subagent line stays unposted, uncounted.
    assert!(live.rx.recv().await.is_none());
    assert_eq!(live.obs.line_reports(), vec![]);
}

/// Parked subagent files (beyond `SUBAGENT_MAX_OPEN`) are read to their end
/// at shutdown too, their complete last line posted: the transcript goes
/// with the pod. (Before, only the files open at that moment were.)
#[tokio::test]
async fn parked_subagent_files_are_read_to_their_end_at_stop() {
    const FILES: usize = 4;
    let opts = Opts {
        subagent_max_open: 1,
        ..Opts::default()
    };
    let mut live = Live::start_after_main_line(opts).await;
    let sub = live.project().join("s/subagents");
    let path = |i: usize| sub.join(format!("agent-{i}.jsonl"));
    for i in 0..FILES {
        live.disk
            .append_lines(&path(i), &[agent_line(&format!("{i}-a"), "x", "first")]);
    }
    assert_eq!(event_uuids(&live.take(FILES).await).len(), FILES);
    live.wait_for("files parked", |o| {
        *o.parked.lock().unwrap() >= (FILES - 1) as u64
    })
    .await;
    // Each agent's last record, complete but without its newline.
    for i in 0..FILES {
        let last = agent_line(&format!("{i}-z"), "x", "last words");
        live.disk.append(&path(i), last.trim_end().as_bytes());
    }
    live.assert_quiet().await;
    live.shutdown.trigger();
    let mut uuids = event_uuids(&live.take(FILES).await);
    uuids.sort();
    let want: Vec<String> = (0..FILES).map(|i| format!("{i}-z")).collect();
    assert_eq!(uuids, want);
    let task = live.task.take().unwrap();
    tokio::time::timeout(DEADLINE, task)
        .await
        .expect("ingest stops promptly")
        .unwrap()
        .unwrap();
    assert!(*live.obs.max_open.lock().unwrap() <= 1);
}

#[tokio::test]
async fn a_wrong_shape_record_never_swallows_the_valid_one_with_its_uuid() {
    let (tmp, projects) = Live::new_dirs();
    let session = projects.join("-w/s.jsonl");
    let disk = Disk::default();
    let bad = "{\"type\":\"user\",\"uuid\":\"u1\",\"sessionId\":\"s\",\"message\":\"a string, not an object\"}\n";
    let good = user_line("u1", "the real record");
    disk.append(&session, format!("{bad}{good}").as_bytes());
    let mut live = Live::start(tmp, projects, disk, Opts::default());
    let got = live.take(2).await;
    assert!(got[0].events.is_empty());
    assert_eq!(event_uuids(&got), vec!["u1".to_owned()]);
    assert_eq!(
        live.obs
            .seen()
            .into_iter()
            .filter(|s| matches!(s, Seen::SkippedRecord(..)))
            .collect::<Vec<_>>(),
        vec![Seen::SkippedRecord(
            "message_shape",
            session.display().to_string(),
            0
        )]
    );
    live.stop().await;
}

/// Issue 18: the transcript goes with the pod, so at shutdown ingest reads
/// every followed file to its end, even while the queue is full, and closes
/// the queue once it has. (Before, the signal cut the send waiting on the
/// full queue and the rest of that read chunk was lost.)
#[tokio::test]
async fn shutdown_reads_every_file_to_its_end_through_a_full_queue() {
    let (tmp, projects) = Live::new_dirs();
    let session = projects.join("-w/s.jsonl");
    let agent = projects.join("-w/s/subagents/agent-a.jsonl");
    let disk = Disk::default();
    let lines: Vec<String> = (0..200)
        .map(|i| user_line(&format!("m{i}"), "main"))
        .collect();
    disk.append_lines(&session, &lines);
    disk.append_lines(&agent, &[user_line("a0", "agent")]);
    let opts = Opts {
        queue_events: 4,
        read_chunk: 64 * 1024,
        ..Opts::default()
    };
    let mut live = Live::start(tmp, projects, disk, opts);
    // The queue is full: ingest waits in a send, mid-chunk.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while live.rx.depth() < 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the queue never filled"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    live.shutdown.trigger();
    let mut got = Vec::new();
    while let Ok(Some(r)) = tokio::time::timeout(DEADLINE, live.rx.recv()).await {
        got.push(r);
    }
    let uuids = event_uuids(&got);
    let main: Vec<String> = uuids
        .iter()
        .filter(|u| u.starts_with('m'))
        .cloned()
        .collect();
    let want: Vec<String> = (0..200).map(|i| format!("m{i}")).collect();
    assert_eq!(main, want, "every line of the session, in order, once");
    assert!(
        uuids.contains(&"a0".to_owned()),
        "the subagent's line too: {uuids:?}"
    );
    let task = live.task.take().unwrap();
    tokio::time::timeout(DEADLINE, task)
        .await
        .expect("ingest stops once it read everything")
        .unwrap()
        .unwrap();
}
