//! Ingest: discover → tail → decode → queue, with the checkpoint deciding
//! where each file resumes.
//!
//! One task follows the active session file and its subagent files. Each pass
//! looks for new files (at most once per poll interval), reads every followed
//! file to its end, and then sleeps until a file notification or the poll tick.
//! Every complete line becomes one [`Record`], even when it decodes to nothing
//! or fails to decode, so the checkpoint can move past it. `QueueTx::send`
//! waits while the queue is full, which is what stops reading under
//! backpressure: the file stays the buffer.
//!
//! Subagent files are bounded: at most `subagent_max_open` are open at once
//! (descriptors and read buffers). Every discovered file is tracked; when a
//! file that has something to read needs a slot and none is free, the open
//! follower idle for longest is *parked*: closed, its buffers freed, its
//! offset and identity kept. A parked file is looked at with one `stat` per
//! scan and reopened at its offset when it grows (from the top when another
//! file replaced it). Nothing is skipped; a busy file waits for a slot.
//!
//! At shutdown (the drain), ingest reads every followed file to its current
//! end, bounded by the backlog stage's share of the budget, then closes the
//! queue: the transcript goes with the pod. A complete record the writer
//! left without its newline (the agent's last line) is posted then, as
//! `watcher render` prints it.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ops::Backoff;
use tokio::time::Instant;

use crate::checkpoint::Checkpoint;
use crate::delivered::Delivered;
use crate::discover::{self, Lookup, SubagentScanner};
use crate::pipeline::Drain;
use crate::queue::{Closed, QueueTx, Record};
use crate::tail::{FileIdentity, Follower, Piece, Start, Step, TailConfig, Wake};
use crate::transcript::decode::{Decoder, DecoderConfig};
use crate::transcript::{LinePos, Source};

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
    /// At most this many subagent files are open at once (see the module docs).
    pub subagent_max_open: usize,
}

/// Telemetry of the ingest stage; implemented by `events::Telemetry`.
pub trait IngestObserver: Send + Sync {
    fn bytes_read(&self, n: u64);
    fn parse_error(&self, reason: &'static str, file: &str, offset: u64);
    /// A damaged line that decoded after a repair (NULs stripped, invalid
    /// UTF-8 or lone surrogates replaced, a record recovered behind a torn
    /// prefix): nothing was lost, but the writer is misbehaving.
    fn repaired(&self, reason: &'static str, file: &str, offset: u64);
    /// A record of a known kind dropped for its shape (valid JSON).
    fn skipped_record(&self, reason: &'static str, file: &str, offset: u64);
    /// A path that is not a regular file (a FIFO, a device …) was not opened;
    /// called once per path.
    fn file_skipped(&self, reason: &'static str, file: &str);
    /// How many subagent files are open now.
    fn subagent_files_open(&self, open: usize);
    /// An idle subagent file was closed to stay within the cap.
    fn subagent_parked(&self);
    /// The cap on open subagent files was reached (called once each time it
    /// is reached after having been below it).
    fn subagent_cap_reached(&self, cap: usize, tracked: usize);
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

/// Runs until the drain starts (shutdown), then reads every followed file to
/// its current end and returns; dropping `tx` on return closes the queue,
/// which tells the sink loop it has everything. Returns early (`Ok`) only
/// when the queue's receiver is gone.
///
/// The read to the end at shutdown is bounded by [`Drain::read_end`] (the
/// latest the backlog stage can end): what it reads is the sink's to send,
/// hand to bot-bridge or keep in `STATE_DIR`, since the transcript goes with
/// the pod. A send is never cut half-way: a record read from a file is on the
/// queue or the final read was given up at its bound.
pub async fn run(
    cfg: IngestConfig,
    tx: QueueTx,
    checkpoint: Option<Checkpoint>,
    delivered: Delivered,
    observer: Arc<dyn IngestObserver>,
    drain: Drain,
) -> Result<(), IngestError> {
    let mut ingest = Ingest::new(cfg, tx, checkpoint, &delivered, observer);
    drop(delivered);
    let read = async {
        ingest.run(&drain).await?;
        ingest.read_to_end().await
    };
    tokio::pin!(read);
    let deadline = tokio::select! {
        biased;
        res = &mut read => return match res {
            Ok(()) | Err(Closed) => Ok(()),
        },
        deadline = drain.started() => deadline,
    };
    // Shutdown: the same read goes on (the loop sees the drain between
    // passes), to the files' current ends, within the backlog's share.
    let until = drain.read_end(deadline);
    if tokio::time::timeout_at(until, read).await.is_err() {
        tracing::warn!("shutdown: could not read every followed file to its end within the backlog's share of the budget; the rest stays in the transcript");
    }
    Ok(())
}

/// A followed file.
struct FollowedFile {
    follower: Follower,
    source: Source,
    /// Told the observer about it (the main file is announced once it opens).
    announced: bool,
    /// Last read error, logged once until it changes.
    last_error: Option<String>,
    /// The path was found not to be a regular file, and that was reported
    /// (once, until the path holds something else).
    not_regular: bool,
    /// The last pump read it to its end.
    idle: bool,
    /// When bytes were last read from it: the longest idle is parked first.
    last_read: Instant,
    /// Parked (or not a regular file), and a scan saw its path change since:
    /// wants a slot to be read.
    wanted: bool,
    /// Scans left in which a missing `.meta.json` description is looked for.
    meta_attempts: u8,
}

/// How many scans look for a subagent's `.meta.json` when it is not there yet.
const META_ATTEMPTS: u8 = 20;

impl FollowedFile {
    fn new(follower: Follower, source: Source) -> Self {
        Self {
            follower,
            source,
            announced: false,
            last_error: None,
            not_regular: false,
            idle: false,
            last_read: Instant::now(),
            wanted: false,
            meta_attempts: META_ATTEMPTS,
        }
    }
}

/// Turns lines into records: the decoder (one for the whole run, so uuid
/// dedupe spans files and rotations), the queue and the observer.
struct LinePump {
    decoder: Decoder,
    tx: QueueTx,
    observer: Arc<dyn IngestObserver>,
    /// Reused between reads; holds at most one chunk's lines.
    pieces: Vec<Piece>,
}

impl LinePump {
    /// Reads `t` until it is idle or `max_steps` chunks were read; `true` when
    /// it reached idle.
    async fn pump(
        &mut self,
        t: &mut FollowedFile,
        max_steps: Option<usize>,
    ) -> Result<bool, Closed> {
        let mut steps = 0usize;
        loop {
            if max_steps.is_some_and(|m| steps >= m) {
                return Ok(false);
            }
            steps += 1;
            let step = match t.follower.step(&mut self.pieces) {
                Ok(Step::NotRegular) => {
                    if !t.not_regular {
                        t.not_regular = true;
                        self.observer
                            .file_skipped(crate::tail::open::NOT_REGULAR, t.follower.label());
                    }
                    return Ok(true);
                }
                Ok(s) => {
                    t.last_error = None;
                    t.not_regular = false;
                    s
                }
                Err(e) => {
                    let msg = e.to_string();
                    if t.last_error.as_deref() != Some(msg.as_str()) {
                        tracing::warn!(file = %t.follower.label(), error = %msg, "cannot read transcript; will retry");
                        t.last_error = Some(msg);
                    }
                    return Ok(true);
                }
            };
            match step {
                Step::Read(n) => {
                    if n > 0 {
                        self.observer.bytes_read(n);
                        t.last_read = Instant::now();
                    }
                    let identity = t.follower.identity();
                    let label = t.follower.label().clone();
                    let pieces = std::mem::take(&mut self.pieces);
                    for piece in &pieces {
                        self.emit(piece, &label, &identity, &t.source).await?;
                    }
                    self.pieces = pieces;
                    self.pieces.clear();
                }
                Step::Rotated(r) => self.observer.rotation(t.follower.label(), r.reason()),
                Step::Idle | Step::NotRegular => return Ok(true),
            }
        }
    }

    /// At shutdown: posts the complete record `t`'s writer left without a
    /// newline, if any (a torn one stays unposted, as it would have while
    /// running).
    async fn flush_final_line(&mut self, t: &mut FollowedFile) -> Result<(), Closed> {
        let Some(piece) = t.follower.take_final_line(Decoder::is_complete_record) else {
            return Ok(());
        };
        let identity = t.follower.identity();
        let label = t.follower.label().clone();
        self.emit(&piece, &label, &identity, &t.source).await
    }

    async fn emit(
        &mut self,
        piece: &Piece,
        label: &Arc<str>,
        identity: &FileIdentity,
        source: &Source,
    ) -> Result<(), Closed> {
        let pos = LinePos {
            file: label.clone(),
            start: piece.start(),
            end: piece.end(),
        };
        self.observer.record_seen();
        let raw_len = usize::try_from(pos.end - pos.start).unwrap_or(usize::MAX);
        let (events, bytes) = match piece {
            Piece::Oversize { start, end } => {
                self.observer.oversize_line(label, *start, end - start);
                // Nothing of it is held, so it costs the queue nothing.
                (Vec::new(), 0)
            }
            Piece::Line { bytes, .. } if bytes.is_empty() => (Vec::new(), raw_len),
            Piece::Line { bytes, .. } => {
                let events = match self.decoder.decode_line(bytes, source) {
                    Ok(line) => {
                        if let Some(r) = line.repair {
                            self.observer.repaired(r.reason(), label, pos.start);
                        }
                        if let Some(s) = line.skip {
                            self.observer.skipped_record(s.reason(), label, pos.start);
                        }
                        line.events
                    }
                    Err(e) => {
                        self.observer.parse_error(e.reason(), label, pos.start);
                        Vec::new()
                    }
                };
                for e in &events {
                    self.observer.event(e.kind.label());
                }
                (events, raw_len)
            }
        };
        self.tx
            .send(Record {
                pos,
                identity: identity.clone(),
                events,
                read_at: Instant::now(),
                bytes,
            })
            .await
    }
}

/// Ingest state across passes.
struct Ingest {
    cfg: IngestConfig,
    checkpoint: Option<Checkpoint>,
    lines: LinePump,
    wake: Wake,
    /// Sizes of the transcript files that existed at start-up: only these are
    /// subject to `START_AT`; a file that appears later is read from 0.
    startup: HashMap<PathBuf, u64>,
    /// Where followers that were dropped (old session) stopped, so a file that
    /// becomes active again resumes there instead of replaying.
    left_off: HashMap<PathBuf, (FileIdentity, u64)>,
    /// The session file (`TRANSCRIPT_PATH` or the discovered active one).
    main: Option<FollowedFile>,
    /// Project directory of the main file: where its subagents are looked for.
    project_dir: Option<PathBuf>,
    subagents: Vec<FollowedFile>,
    /// Position of each subagent file in `subagents`.
    subagent_index: HashMap<PathBuf, usize>,
    /// The cap on open subagent files was reached and logged; cleared once
    /// fewer are open again.
    cap_logged: bool,
    scanner: SubagentScanner,
    last_scan: Option<Instant>,
    last_waiting: Option<String>,
}

impl Ingest {
    fn new(
        mut cfg: IngestConfig,
        tx: QueueTx,
        checkpoint: Option<Checkpoint>,
        delivered: &Delivered,
        observer: Arc<dyn IngestObserver>,
    ) -> Self {
        cfg.projects_dir = absolute(&cfg.projects_dir);
        cfg.transcript_path = cfg.transcript_path.as_deref().map(absolute);
        let mut startup = HashMap::new();
        match &cfg.transcript_path {
            Some(p) => {
                if let Some(dir) = p.parent() {
                    discover::snapshot_project(dir, &mut startup);
                }
            }
            None => startup = discover::snapshot(&cfg.projects_dir),
        }
        let wake = Wake::new(cfg.tail.poll_interval);
        let mut decoder = Decoder::new(DecoderConfig {
            dedupe_capacity: cfg.dedupe_capacity,
        });
        // Records delivered before a restart are not posted again when a
        // rewritten file has to be read from the top (`crate::delivered`).
        for uuid in delivered.iter() {
            decoder.remember(uuid);
        }
        Self {
            lines: LinePump {
                decoder,
                tx,
                observer,
                pieces: Vec::new(),
            },
            cfg,
            checkpoint,
            wake,
            startup,
            left_off: HashMap::new(),
            main: None,
            project_dir: None,
            subagents: Vec::new(),
            subagent_index: HashMap::new(),
            cap_logged: false,
            scanner: SubagentScanner::default(),
            last_scan: None,
            last_waiting: None,
        }
    }

    fn observer(&self) -> &Arc<dyn IngestObserver> {
        &self.lines.observer
    }

    /// Follows the files until the drain starts (looked at between passes,
    /// so a pass's sends are never cut).
    async fn run(&mut self, drain: &Drain) -> Result<(), Closed> {
        let poll = self.cfg.tail.poll_interval;
        let backoff = Backoff::new(
            poll.max(Duration::from_millis(20)),
            Duration::from_secs(1).max(poll),
        );
        let mut waiting_attempt = 0u32;
        loop {
            if self.lines.tx.is_closed() {
                return Err(Closed);
            }
            if drain.deadline().is_some() {
                return Ok(());
            }
            let due = self.last_scan.is_none_or(|t| t.elapsed() >= poll);
            if due {
                self.last_scan = Some(Instant::now());
                self.scan().await?;
            }
            let all_idle = self.pump_all().await?;
            self.announce_main();
            if self.waiting() {
                tokio::select! {
                    () = self.wake.wait_at_most(backoff.delay(waiting_attempt)) => {}
                    _ = drain.started() => {}
                }
                waiting_attempt = waiting_attempt.saturating_add(1);
            } else {
                waiting_attempt = 0;
                if all_idle {
                    tokio::select! {
                        () = self.wake.wait() => {}
                        _ = drain.started() => {}
                    }
                } else {
                    // A busy file got its share; let other tasks run, then go on.
                    tokio::task::yield_now().await;
                }
            }
        }
    }

    /// No file is being read yet (readiness: "no transcript yet").
    fn waiting(&self) -> bool {
        self.main.as_ref().is_none_or(|m| !m.announced)
    }

    /// Reads every followed file; `true` when all of them reached idle.
    /// Subagent files are opened within `subagent_max_open` (module docs).
    async fn pump_all(&mut self) -> Result<bool, Closed> {
        const FAIR_SHARE: Option<usize> = Some(64);
        let mut idle = true;
        if let Some(main) = self.main.as_mut() {
            idle &= self.lines.pump(main, FAIR_SHARE).await?;
        }
        let cap = self.cfg.subagent_max_open.max(1);
        let mut open = self
            .subagents
            .iter()
            .filter(|t| t.follower.is_open())
            .count();
        // Open followers that read to their end, longest idle first: the ones
        // parked when a slot is needed.
        let mut parkable: Vec<usize> = (0..self.subagents.len())
            .filter(|&i| self.subagents[i].follower.is_open() && self.subagents[i].idle)
            .collect();
        parkable.sort_by_key(|&i| std::cmp::Reverse(self.subagents[i].last_read));
        let mut waiting = false;
        let mut at_cap = false;
        for i in 0..self.subagents.len() {
            let t = &self.subagents[i];
            // Parked, or not a regular file: only when a scan saw a change.
            if (t.follower.is_parked() || t.not_regular) && !t.wanted {
                continue;
            }
            // Only a file that is there needs a slot: a vanished one, or one
            // not created yet, is stepped without taking one (and parked at
            // once should it open over the cap).
            let present = || std::fs::metadata(t.follower.path()).is_ok_and(|m| m.is_file());
            if !t.follower.is_open() && open >= cap && present() {
                at_cap = true;
                // Needs a slot: free the longest idle one (never itself).
                match parkable.iter().rposition(|&j| j != i) {
                    Some(at) => {
                        let j = parkable.remove(at);
                        if self.subagents[j].follower.park() {
                            open -= 1;
                            self.lines.observer.subagent_parked();
                        }
                    }
                    None => {
                        waiting = true;
                        continue;
                    }
                }
            }
            let t = &mut self.subagents[i];
            let was_open = t.follower.is_open();
            if !was_open && t.meta_attempts > 0 {
                // About to open: its records carry the meta file's description.
                if let Source::Subagent {
                    description: d @ None,
                    ..
                } = &mut t.source
                {
                    t.meta_attempts -= 1;
                    *d = discover::meta_description(t.follower.path());
                }
            }
            t.wanted = false;
            t.idle = self.lines.pump(t, FAIR_SHARE).await?;
            idle &= t.idle;
            if !was_open && t.follower.is_open() {
                open += 1;
                if open > cap && t.idle && t.follower.park() {
                    open -= 1;
                    self.lines.observer.subagent_parked();
                }
            }
        }
        if at_cap {
            if !self.cap_logged {
                self.cap_logged = true;
                self.lines
                    .observer
                    .subagent_cap_reached(cap, self.subagents.len());
            }
        } else if open < cap {
            self.cap_logged = false;
        }
        self.lines.observer.subagent_files_open(open);
        // A file waiting for a slot is work left: come back without sleeping.
        Ok(idle && !waiting)
    }

    /// At shutdown: looks for files once more (a subagent started in the
    /// last poll interval), reads every followed file to its end, and posts
    /// each one's complete last line without a newline (bounded by the caller).
    async fn read_to_end(&mut self) -> Result<(), Closed> {
        self.scan().await?;
        self.flush_final_lines().await
    }

    /// Reads what is left of the open files and posts each one's complete
    /// last line without a newline.
    async fn flush_final_lines(&mut self) -> Result<(), Closed> {
        if let Some(mut main) = self.main.take() {
            let res = async {
                self.lines.pump(&mut main, None).await?;
                self.lines.flush_final_line(&mut main).await
            }
            .await;
            self.main = Some(main);
            res?;
        }
        let mut subagents = std::mem::take(&mut self.subagents);
        let mut res = Ok(());
        for t in subagents.iter_mut() {
            // A file closed for SUBAGENT_MAX_OPEN (parked, or never opened
            // while it waited for a slot) is opened at its offset, read to its
            // end and closed again: one file above the cap at a time.
            let was_open = t.follower.is_open();
            if t.follower.is_parked() && !t.follower.changed_since_parked() {
                continue;
            }
            res = self.lines.pump(t, None).await.map(drop);
            if res.is_ok() {
                res = self.lines.flush_final_line(t).await;
            }
            if !was_open && t.follower.park() {
                self.lines.observer.subagent_parked();
            }
            if res.is_err() {
                break;
            }
        }
        self.subagents = subagents;
        res
    }

    /// Tells the observer the main file is being followed, once it is open.
    fn announce_main(&mut self) {
        let Some(main) = self.main.as_mut() else {
            return;
        };
        if main.announced || !main.follower.is_open() {
            if !main.announced && self.cfg.transcript_path.is_some() {
                let detail = if main.not_regular {
                    format!("{} is not a regular file", main.follower.label())
                } else {
                    format!("{} does not exist yet", main.follower.label())
                };
                if self.last_waiting.as_ref() != Some(&detail) {
                    self.lines.observer.waiting_for_transcript(&detail);
                    self.last_waiting = Some(detail);
                }
            }
            return;
        }
        main.announced = true;
        self.last_waiting = None;
        self.lines.observer.following(main.follower.label());
    }

    /// Where a newly followed file starts: where an earlier follower of this
    /// very file stopped, else the checkpoint, else `START_AT` for a file that
    /// existed at start-up, else its beginning.
    fn start_for(&self, path: &Path) -> Start {
        if let Some((id, offset)) = self.left_off.get(path) {
            if id.same_file(path) {
                return Start::At(*offset);
            }
        }
        let label = path.to_string_lossy();
        if let Some(offset) = self
            .checkpoint
            .as_ref()
            .and_then(|c| c.resume_offset(&label))
        {
            return Start::At(offset);
        }
        match (self.startup.get(path), self.cfg.start_at) {
            (Some(&limit), StartAt::End) => Start::EndOfLines { limit },
            _ => Start::At(0),
        }
    }

    fn follow(&self, path: PathBuf, source: Source) -> FollowedFile {
        let start = self.start_for(&path);
        tracing::debug!(file = %path.display(), ?start, ?source, "following file");
        FollowedFile::new(Follower::new(path, start, &self.cfg.tail), source)
    }

    /// Looks for the session file, a newer session, and new subagent files.
    async fn scan(&mut self) -> Result<(), Closed> {
        if let Some(path) = self.cfg.transcript_path.clone() {
            if self.main.is_none() {
                self.project_dir = path.parent().map(Path::to_path_buf);
                self.main = Some(self.follow(path, Source::Main));
            }
        } else {
            self.scan_session().await?;
        }
        self.scan_subagents();
        self.watch_dirs();
        Ok(())
    }

    async fn scan_session(&mut self) -> Result<(), Closed> {
        // While following, a newer session shows up in the same project directory.
        if let (Some(dir), Some(current)) = (self.project_dir.clone(), self.main.as_ref()) {
            let files = discover::session_files(&dir);
            if let Some(next) = self.successor(files, current.follower.path()) {
                return self.switch_to(dir, next.path).await;
            }
            return Ok(());
        }
        match discover::find_session(&self.cfg.projects_dir, &self.cfg.workspace) {
            Lookup::Waiting(detail) => {
                if self.last_waiting.as_ref() != Some(&detail) {
                    self.observer().waiting_for_transcript(&detail);
                    self.last_waiting = Some(detail);
                }
            }
            Lookup::Session {
                project_dir,
                session,
            } => {
                self.project_dir = Some(project_dir);
                self.main = Some(self.follow(session.path, Source::Main));
            }
        }
        Ok(())
    }

    /// The session file to switch to from `current`, if any: one modified
    /// later, or, since file times are coarse and `/clear` writes the old
    /// file's last lines and the new file's first within one tick, one with
    /// the same mtime that appeared after start-up and was never followed. A
    /// file that existed at start-up must be strictly newer, so old sessions
    /// sharing a timestamp neither make the choice flap nor get replayed.
    fn successor(&self, files: Vec<discover::Found>, current: &Path) -> Option<discover::Found> {
        let current_mtime = std::fs::metadata(current).and_then(|m| m.modified()).ok();
        let candidates = files.into_iter().filter(|f| {
            f.path != current
                && match current_mtime {
                    None => true,
                    Some(m) => {
                        f.modified > m
                            || (f.modified == m
                                && !self.startup.contains_key(&f.path)
                                && !self.left_off.contains_key(&f.path))
                    }
                }
        });
        discover::newest(candidates.collect())
    }

    /// Finishes the old session (and its subagents) to EOF, then follows the new one.
    async fn switch_to(&mut self, project_dir: PathBuf, session: PathBuf) -> Result<(), Closed> {
        let old_main = self.main.take();
        let old_subagents = std::mem::take(&mut self.subagents);
        self.subagent_index.clear();
        for mut t in old_main.into_iter().chain(old_subagents) {
            self.lines.pump(&mut t, None).await?;
            if let Some(point) = t.follower.resume_point() {
                self.left_off.insert(t.follower.path().to_path_buf(), point);
            }
        }
        self.project_dir = Some(project_dir);
        let mut main = self.follow(session, Source::Main);
        // The new file exists (discovery saw it): announce the switch now.
        main.announced = true;
        self.observer().session_switched(main.follower.label());
        self.main = Some(main);
        Ok(())
    }

    fn scan_subagents(&mut self) {
        let (Some(dir), Some(main)) = (self.project_dir.as_ref(), self.main.as_ref()) else {
            return;
        };
        let found = self.scanner.scan(dir, main.follower.path());
        for f in found {
            if let Some(&i) = self.subagent_index.get(&f.path) {
                let t = &mut self.subagents[i];
                // The meta file may be written after the transcript; looked
                // for a bounded number of times, and only for open files.
                if t.follower.is_open() && t.meta_attempts > 0 {
                    if let Source::Subagent {
                        description: d @ None,
                        ..
                    } = &mut t.source
                    {
                        t.meta_attempts -= 1;
                        *d = discover::meta_description(&f.path);
                    }
                }
                continue;
            }
            let source = Source::Subagent {
                description: None,
                agent_id: Some(f.agent_id),
                workflow: f.workflow,
            };
            let t = self.follow(f.path.clone(), source);
            self.subagent_index.insert(f.path, self.subagents.len());
            self.subagents.push(t);
        }
        for t in &mut self.subagents {
            if t.follower.is_parked() && !t.wanted {
                t.wanted = t.follower.changed_since_parked();
            } else if t.not_regular && !t.wanted {
                t.wanted = std::fs::metadata(t.follower.path()).is_ok_and(|m| m.is_file());
            }
        }
    }

    /// Notifications for the directories where lines and files appear.
    fn watch_dirs(&mut self) {
        let mut dirs = HashSet::new();
        if self.cfg.transcript_path.is_none() {
            dirs.insert(self.cfg.projects_dir.clone());
            dirs.insert(
                self.cfg
                    .projects_dir
                    .join(discover::project_dir_name(&self.cfg.workspace)),
            );
        }
        if let Some(dir) = &self.project_dir {
            dirs.insert(dir.clone());
            if let Some(main) = &self.main {
                if let Some(sub) = discover::subagents_dir(dir, main.follower.path()) {
                    dirs.insert(sub.join(discover::WORKFLOWS_DIR));
                    dirs.insert(sub);
                }
            }
            // Nested folders (workflow runs) that hold followed files.
            for t in &self.subagents {
                if let Some(parent) = t.follower.path().parent() {
                    if !dirs.contains(parent) {
                        dirs.insert(parent.to_path_buf());
                    }
                }
            }
        }
        for d in &dirs {
            self.wake.watch_dir(d);
        }
        self.wake.retain(&dirs);
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}
