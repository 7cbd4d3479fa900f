//! Operator input: `POST /v1/input` from bot-bridge → one JSON line in the
//! agent's input FIFO.
//!
//! Requests are authenticated with HMAC-SHA256 over `timestamp + "." + body`
//! (the secret comes from config or from bot-bridge at provisioning), must be
//! fresh (5-minute window), must name this run (`run_id`, when the watcher
//! knows it), are deduplicated by `id`, and are rate limited. The ids of
//! written inputs are journaled in `STATE_DIR/input-ids.log` for as long as
//! their signature could be replayed, so a restart does not accept one again.
//! Lines are written with a non-blocking open (no symlink followed, FIFOs
//! only). A line of at most `PIPE_BUF` bytes goes out in one atomic `write`;
//! a longer one (Discord lets `/input` carry 4000 characters, more than
//! `PIPE_BUF` once encoded) may go out in parts, and the writer finishes it
//! before anything else (it is the FIFO's only writer, so nothing
//! interleaves). A pipe with no room for even the first byte, or a missing
//! reader, is answered 503 instead of blocking the watcher.

use std::collections::{HashMap, VecDeque};
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use ops::Secret;
use serde::Serialize;

use crate::atomic_file::{StateFile, StateObserver};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// POSIX guarantees atomic pipe writes up to this size (Linux: 4096).
pub const PIPE_BUF: usize = 4096;
/// Longest line written to the FIFO: 4000 characters of `/input` text at up to
/// 6 bytes each once JSON-escaped, plus the envelope.
pub const MAX_LINE: usize = 32 * 1024;
/// Polls (of [`FINISH_POLL_MS`]) a line longer than `PIPE_BUF` waits for the
/// reader to make room for its rest before it is given up as torn.
const FINISH_POLLS: u32 = 50;
const FINISH_POLL_MS: u16 = 100;
pub use protocol::headers::{SIGNATURE as SIGNATURE_HEADER, TIMESTAMP as TIMESTAMP_HEADER};
/// The request body bot-bridge sends.
pub use protocol::InputRequest;
/// How old (or how far in the future) a signed timestamp may be.
pub use protocol::FRESHNESS_WINDOW as WINDOW;
/// Signing and verifying `sha256=<hex>` over `timestamp.body`.
pub use protocol::{sign, verify};

/// The line written to the FIFO.
#[derive(Debug, Serialize)]
struct InputLine<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    run_id: &'a str,
    user: &'a str,
    text: &'a str,
    received_at: String,
}

/// Telemetry of the input listener (its replay journal is a state file).
pub trait InputObserver: StateObserver + Send + Sync {
    fn outcome(&self, outcome: &'static str);
}

/// The signing secret; replaced when bot-bridge (re-)provisions the run.
pub type SharedSecret = Arc<RwLock<Option<Secret<String>>>>;

/// The run this watcher serves: `RUN_ID`, replaced by bot-bridge's run id
/// when it provisions the run. `None`: not known, inputs are not checked.
pub type SharedRunId = Arc<RwLock<Option<String>>>;

/// The replay journal's file in `STATE_DIR`.
pub const JOURNAL_FILE: &str = "input-ids.log";
/// Longest input id accepted (Discord's interaction ids are ~19 digits).
pub const MAX_ID_BYTES: usize = 128;

pub struct InputConfig {
    pub fifo: PathBuf,
    pub secret: SharedSecret,
    pub run_id: SharedRunId,
    /// Where the replay journal lives; `None` keeps ids in memory only.
    pub state_dir: Option<PathBuf>,
    /// Sustained inputs per second and burst.
    pub rate_per_second: f64,
    pub burst: f64,
    /// Inputs waiting for the writer.
    pub queue: usize,
}

struct Limiter {
    tokens: f64,
    last: Instant,
    rate: f64,
    burst: f64,
}

impl Limiter {
    fn allow(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Recently seen input ids, kept for the signature window so a replayed
/// request is recognised; bounded so a flood cannot grow it without limit.
struct Seen {
    order: VecDeque<(Instant, String)>,
    ids: HashMap<String, Instant>,
    cap: usize,
}

impl Seen {
    fn insert(&mut self, id: &str) -> bool {
        let now = Instant::now();
        while let Some((t, _)) = self.order.front() {
            if now.duration_since(*t) > WINDOW * 2 || self.order.len() >= self.cap {
                if let Some((_, old)) = self.order.pop_front() {
                    self.ids.remove(&old);
                }
            } else {
                break;
            }
        }
        if self.ids.contains_key(id) {
            return false;
        }
        self.ids.insert(id.to_owned(), now);
        self.order.push_back((now, id.to_owned()));
        true
    }
}

struct Job {
    line: Vec<u8>,
    /// Journaled once the line is written.
    id: String,
    done: oneshot::Sender<Result<(), WriteError>>,
}

/// `STATE_DIR/input-ids.log`: one `<unix seconds> <id>` line per written
/// input. Ids older than twice the signature window cannot be replayed (their
/// timestamp is refused), so only younger ones are kept: the file is
/// compacted when it holds [`IdJournal::COMPACT_AT`] lines, and the rate
/// limit bounds how many can be young at once.
struct IdJournal {
    path: PathBuf,
    lines: usize,
}

impl IdJournal {
    const COMPACT_AT: usize = if cfg!(test) { 64 } else { 4096 };

    /// Opens the journal in `dir`, returning it with the ids still young.
    fn open(dir: &Path) -> std::io::Result<(Self, Vec<String>)> {
        crate::atomic_file::create_dir(dir)?;
        let mut journal = Self {
            path: dir.join(JOURNAL_FILE),
            lines: 0,
        };
        let young = journal.young()?;
        journal.lines = young.len();
        Ok((journal, young.into_iter().map(|(_, id)| id).collect()))
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    /// The journaled ids still within twice the window, oldest first.
    fn young(&self) -> std::io::Result<Vec<(u64, String)>> {
        let text = match std::fs::read(&self.path) {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let oldest = Self::now().saturating_sub(2 * WINDOW.as_secs());
        Ok(text
            .lines()
            .filter_map(|l| {
                let (secs, id) = l.split_once(' ')?;
                let secs: u64 = secs.parse().ok()?;
                (secs >= oldest && !id.is_empty()).then(|| (secs, id.to_owned()))
            })
            .collect())
    }

    /// Journals `id` durably; compacts when due.
    fn record(&mut self, id: &str) -> std::io::Result<()> {
        let mut f = crate::atomic_file::open_append(&self.path)?;
        f.write_all(format!("{} {id}\n", Self::now()).as_bytes())?;
        f.sync_data()?;
        self.lines += 1;
        if self.lines >= Self::COMPACT_AT {
            let young = self.young()?;
            let mut text = String::with_capacity(young.len() * 32);
            for (secs, id) in &young {
                text.push_str(&format!("{secs} {id}\n"));
            }
            crate::atomic_file::replace(&self.path, text.as_bytes())?;
            self.lines = young.len();
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteError {
    /// No process has the FIFO open for reading (or it does not exist).
    NoReader,
    /// The pipe is full: the agent is not reading.
    Busy,
    /// The path is a symlink or not a FIFO: nothing is written to it.
    NotAFifo,
    Other,
}

#[derive(Clone)]
struct AppState {
    secret: SharedSecret,
    run_id: SharedRunId,
    limiter: Arc<Mutex<Limiter>>,
    seen: Arc<Mutex<Seen>>,
    jobs: mpsc::Sender<Job>,
    observer: Arc<dyn InputObserver>,
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    ops::http::error_response(status, code, message)
}

/// The input router and its writer task.
pub fn router(cfg: InputConfig, observer: Arc<dyn InputObserver>) -> Router {
    let (tx, rx) = mpsc::channel(cfg.queue.max(1));
    let mut seen = Seen {
        order: VecDeque::new(),
        ids: HashMap::new(),
        cap: 100_000,
    };
    let journal = cfg
        .state_dir
        .as_deref()
        .and_then(|dir| match IdJournal::open(dir) {
            Ok((journal, young)) => {
                for id in &young {
                    seen.insert(id);
                }
                if !young.is_empty() {
                    tracing::info!(inputs = young.len(), "remembering recent operator inputs");
                }
                Some(journal)
            }
            Err(e) => {
                observer.write_failed(StateFile::InputIds, &e);
                None
            }
        });
    let fifo = cfg.fifo.clone();
    let writer_observer = observer.clone();
    tokio::task::spawn_blocking(move || writer(fifo, journal, writer_observer, rx));
    let state = AppState {
        secret: cfg.secret,
        run_id: cfg.run_id,
        limiter: Arc::new(Mutex::new(Limiter {
            tokens: cfg.burst,
            last: Instant::now(),
            rate: cfg.rate_per_second,
            burst: cfg.burst,
        })),
        seen: Arc::new(Mutex::new(seen)),
        jobs: tx,
        observer,
    };
    Router::new()
        .route("/v1/input", post(handle))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// Largest request body: one input line's worth, with room for JSON escapes.
pub const MAX_BODY: usize = 64 * 1024;

async fn handle(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let r = handle_inner(&s, &headers, &body).await;
    let outcome = match r.status().as_u16() {
        202 => "accepted",
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        409 => "duplicate",
        413 => "too_large",
        429 => "rate_limited",
        _ => "unavailable",
    };
    s.observer.outcome(outcome);
    r
}

async fn handle_inner(s: &AppState, headers: &HeaderMap, body: &[u8]) -> Response {
    let secret = match s.secret.read() {
        Ok(g) => g.clone(),
        Err(_) => None,
    };
    let Some(secret) = secret else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_configured",
            "input secret not provisioned yet",
        );
    };
    let ts = headers
        .get(TIMESTAMP_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let sig = headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !verify(secret.expose().as_bytes(), ts, body, sig) {
        return error(
            StatusCode::UNAUTHORIZED,
            "bad_signature",
            "signature does not match",
        );
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if !protocol::is_fresh(ts, now) {
        return error(
            StatusCode::UNAUTHORIZED,
            "stale_timestamp",
            "timestamp outside the 5-minute window",
        );
    }
    let req: InputRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_body", &e.to_string()),
    };
    let this_run = s.run_id.read().ok().and_then(|g| g.clone());
    if this_run.is_some_and(|run| run != req.run_id) {
        // Signed with this run's secret yet for another run: a relay mix-up
        // or a replay across runs; either way not for this agent.
        return error(
            StatusCode::FORBIDDEN,
            "wrong_run",
            "input is for another run",
        );
    }
    if req.text.trim().is_empty() || req.id.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_body",
            "text and id must not be empty",
        );
    }
    if req.id.len() > MAX_ID_BYTES || req.id.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_body",
            "id must be one word of at most 128 bytes",
        );
    }
    let line = InputLine {
        kind: "operator_input",
        id: &req.id,
        run_id: &req.run_id,
        user: &req.user,
        text: &req.text,
        received_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
    };
    let mut bytes = match serde_json::to_vec(&line) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_body", &e.to_string()),
    };
    bytes.push(b'\n');
    if bytes.len() > MAX_LINE {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "input too long for one line",
        );
    }
    let allowed = s.limiter.lock().map(|mut l| l.allow()).unwrap_or(false);
    if !allowed {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many inputs; try again",
        );
    }
    let fresh_id = s
        .seen
        .lock()
        .map(|mut seen| seen.insert(&req.id))
        .unwrap_or(false);
    if !fresh_id {
        // Replays are acknowledged but never written twice.
        return (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({"status": "duplicate"})),
        )
            .into_response();
    }
    let (done, rx) = oneshot::channel();
    if s.jobs
        .try_send(Job {
            line: bytes,
            id: req.id.clone(),
            done,
        })
        .is_err()
    {
        forget(s, &req.id);
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "agent input queue full",
        );
    }
    match tokio::time::timeout(Duration::from_secs(5), rx).await {
        Ok(Ok(Ok(()))) => (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({"status": "accepted"})),
        )
            .into_response(),
        Ok(Ok(Err(WriteError::Busy))) => {
            forget(s, &req.id);
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "agent is not reading its input",
            )
        }
        Ok(Ok(Err(WriteError::NotAFifo))) => {
            forget(s, &req.id);
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_a_fifo",
                "the agent's input is not a FIFO; nothing was written",
            )
        }
        _ => {
            forget(s, &req.id);
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "agent input not available",
            )
        }
    }
}

/// An input that was not written may be retried with the same id.
fn forget(s: &AppState, id: &str) {
    if let Ok(mut seen) = s.seen.lock() {
        seen.ids.remove(id);
    }
}

/// How far a failed [`write_line`] got.
enum Written {
    /// Nothing of the line was written (safe to answer busy or retry).
    Nothing(std::io::Error),
    /// Part of a line longer than `PIPE_BUF` went out and the rest could not
    /// follow in time (or a regular file filled up): the reader sees it torn.
    Part,
}

/// Writes all of `line`, waiting (bounded) for room for the rest of a line
/// that went out in parts.
fn write_line(f: &mut std::fs::File, line: &[u8]) -> Result<(), Written> {
    use std::os::fd::AsFd;
    let mut written = 0;
    let mut polls = FINISH_POLLS;
    while written < line.len() {
        match f.write(&line[written..]) {
            Ok(0) => return Err(Written::Part),
            Ok(n) => written += n,
            Err(e) if written == 0 => return Err(Written::Nothing(e)),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && polls > 0 => {
                polls -= 1;
                let mut fds = [nix::poll::PollFd::new(
                    f.as_fd(),
                    nix::poll::PollFlags::POLLOUT,
                )];
                // An error or a timeout is answered by the next write.
                let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(FINISH_POLL_MS));
            }
            Err(_) => return Err(Written::Part),
        }
    }
    Ok(())
}

/// Opens the agent's FIFO for writing without blocking and without following
/// a symlink, and makes sure it is a FIFO: the agent's container shares the
/// volume, so the path may have been replaced by a symlink to, or by, a
/// regular file, where operator input must not be appended.
fn open_fifo(path: &Path) -> Result<std::fs::File, WriteError> {
    use nix::fcntl::OFlag;
    use std::os::unix::fs::FileTypeExt;
    let file = OpenOptions::new()
        .append(true)
        .custom_flags((OFlag::O_NONBLOCK | OFlag::O_NOFOLLOW).bits())
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(nix::libc::ENXIO) => WriteError::NoReader,
            Some(nix::libc::ELOOP) => WriteError::NotAFifo,
            _ if e.kind() == std::io::ErrorKind::NotFound => WriteError::NoReader,
            _ => WriteError::Other,
        })?;
    // `fstat` on the open descriptor: the path may change after the open.
    match file.metadata() {
        Ok(m) if m.file_type().is_fifo() => Ok(file),
        Ok(_) => Err(WriteError::NotAFifo),
        Err(_) => Err(WriteError::Other),
    }
}

/// The writer: owns the FIFO handle, one job at a time, never blocks on it.
fn writer(
    fifo: PathBuf,
    mut journal: Option<IdJournal>,
    observer: Arc<dyn InputObserver>,
    mut rx: mpsc::Receiver<Job>,
) {
    let mut file: Option<std::fs::File> = None;
    while let Some(job) = rx.blocking_recv() {
        let mut result = Err(WriteError::Other);
        for _ in 0..2 {
            if file.is_none() {
                match open_fifo(&fifo) {
                    Ok(f) => file = Some(f),
                    Err(e) => {
                        if e == WriteError::NotAFifo {
                            tracing::error!(
                                fifo = %fifo.display(),
                                "AGENT_INPUT_FIFO is not a FIFO (a symlink, a regular file or something else); operator input refused"
                            );
                        }
                        result = Err(e);
                        break;
                    }
                }
            }
            let Some(f) = file.as_mut() else { break };
            match write_line(f, &job.line) {
                Ok(()) => {
                    result = Ok(());
                    break;
                }
                Err(Written::Nothing(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    result = Err(WriteError::Busy);
                    break;
                }
                Err(Written::Nothing(_)) => {
                    // EPIPE: the reader went away; reopen once.
                    file = None;
                    result = Err(WriteError::NoReader);
                }
                Err(Written::Part) => {
                    result = Err(WriteError::Other);
                    break;
                }
            }
        }
        if result.is_ok() {
            // After the write: an input that failed may be retried with its
            // id. A crash between the two is the one window for a replay.
            if let Some(j) = journal.as_mut() {
                match j.record(&job.id) {
                    Ok(()) => observer.written(StateFile::InputIds),
                    Err(e) => observer.write_failed(StateFile::InputIds, &e),
                }
            }
        }
        let _ = job.done.send(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_error_answer_is_json() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = InputConfig {
            secret: Arc::new(RwLock::new(Some(Secret::new("k".into())))),
            fifo: dir.path().join("none.fifo"),
            run_id: Arc::new(RwLock::new(None)),
            state_dir: None,
            queue: 4,
            rate_per_second: 10.0,
            burst: 10.0,
        };
        // The stack production serves (app.rs): its layers answer errors too.
        let metrics = ops::Metrics::new("watcher", "test").unwrap();
        let layer = crate::app::http_layer(ops::http::HttpMetrics::new(&metrics).unwrap());
        let app = ops::http::instrument(router(cfg, Arc::new(Quiet)), &layer);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let stop = ops::Shutdown::new();
        tokio::spawn(ops::server::serve(listener, app, stop.clone()));
        let http = reqwest::Client::new();
        let oversize = || vec![b' '; MAX_BODY + 1];
        let cases = [
            (
                http.get(format!("{base}/v1/input")),
                405,
                "method_not_allowed",
            ),
            (http.post(format!("{base}/nope")), 404, "not_found"),
            // With a Content-Length: refused by the body limit before reading.
            (
                http.post(format!("{base}/v1/input")).body(oversize()),
                413,
                "payload_too_large",
            ),
            (
                http.post(format!("{base}/v1/input?{}", "a".repeat(9000))),
                414,
                "uri_too_long",
            ),
        ];
        for (req, status, code) in cases {
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), status);
            let v: serde_json::Value = resp.json().await.unwrap();
            assert_eq!(v["error"]["code"], code, "{v}");
        }
        stop.trigger();
    }

    #[test]
    fn signatures_verify_and_reject_tampering() {
        let sig = sign(b"k", "1700000000", b"{\"a\":1}");
        assert!(verify(b"k", "1700000000", b"{\"a\":1}", &sig));
        assert!(!verify(b"k", "1700000001", b"{\"a\":1}", &sig));
        assert!(!verify(b"k", "1700000000", b"{\"a\":2}", &sig));
        assert!(!verify(b"other", "1700000000", b"{\"a\":1}", &sig));
        assert!(!verify(b"k", "1700000000", b"{\"a\":1}", "sha256=zz"));
        assert!(!verify(b"k", "1700000000", b"{\"a\":1}", ""));
    }

    struct Quiet;
    impl InputObserver for Quiet {
        fn outcome(&self, _: &'static str) {}
    }
    impl StateObserver for Quiet {
        fn write_failed(&self, _: StateFile, _: &dyn std::fmt::Display) {}
        fn written(&self, _: StateFile) {}
    }

    const SECRET: &str = "input-secret";

    fn app(fifo: &Path) -> Router {
        app_in(fifo, None, None)
    }

    fn app_in(fifo: &Path, state: Option<&Path>, run: Option<&str>) -> Router {
        router(
            InputConfig {
                fifo: fifo.to_path_buf(),
                secret: Arc::new(RwLock::new(Some(Secret::new(SECRET.to_owned())))),
                run_id: Arc::new(RwLock::new(run.map(str::to_owned))),
                state_dir: state.map(Path::to_path_buf),
                rate_per_second: 100.0,
                burst: 100.0,
                queue: 4,
            },
            Arc::new(Quiet),
        )
    }

    fn signed(id: &str) -> axum::http::Request<axum::body::Body> {
        signed_for("r1", id)
    }

    fn signed_for(run: &str, id: &str) -> axum::http::Request<axum::body::Body> {
        let body =
            serde_json::json!({"run_id": run, "user": "op", "text": "hello", "id": id}).to_string();
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            .to_string();
        axum::http::Request::post("/v1/input")
            .header(TIMESTAMP_HEADER, &ts)
            .header(
                SIGNATURE_HEADER,
                sign(SECRET.as_bytes(), &ts, body.as_bytes()),
            )
            .body(axum::body::Body::from(body))
            .unwrap()
    }

    async fn post(app: &Router, id: &str) -> (StatusCode, serde_json::Value) {
        send(app, signed(id)).await
    }

    async fn send(
        app: &Router,
        req: axum::http::Request<axum::body::Body>,
    ) -> (StatusCode, serde_json::Value) {
        use tower::ServiceExt;
        let r = app.clone().oneshot(req).await.unwrap();
        let status = r.status();
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or_default())
    }

    #[tokio::test]
    async fn a_symlink_or_a_regular_file_is_refused_and_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target.txt");
        std::fs::write(&target, b"original\n").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        for path in [&link, &target] {
            let (status, body) = post(&app(path), "i1").await;
            assert_eq!(
                status,
                StatusCode::SERVICE_UNAVAILABLE,
                "{}",
                path.display()
            );
            assert_eq!(body["error"]["code"], "not_a_fifo");
        }
        assert_eq!(std::fs::read(&target).unwrap(), b"original\n");
    }

    #[tokio::test]
    async fn a_symlink_to_a_real_fifo_is_refused_too() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("in.fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&fifo, &link).unwrap();
        // A reader, so that only the symlink can be the reason for a refusal.
        let _reader = OpenOptions::new()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
            .open(&fifo)
            .unwrap();
        let (status, body) = post(&app(&link), "i1").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["error"]["code"], "not_a_fifo");
        let (status, _) = post(&app(&fifo), "i2").await;
        assert_eq!(status, StatusCode::ACCEPTED, "the FIFO itself works");
    }

    /// A FIFO with a reader, so that writes succeed; the reader sees the lines.
    fn fifo_with_reader(dir: &Path) -> (PathBuf, std::fs::File) {
        let fifo = dir.join("in.fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let reader = OpenOptions::new()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
            .open(&fifo)
            .unwrap();
        (fifo, reader)
    }

    fn lines_read(reader: &mut std::fs::File) -> usize {
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(reader, &mut buf);
        buf.iter().filter(|&&b| b == b'\n').count()
    }

    #[tokio::test]
    async fn an_input_is_not_accepted_again_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (fifo, mut reader) = fifo_with_reader(dir.path());
        let state = dir.path().join("state");
        let first = app_in(&fifo, Some(&state), None);
        let (status, body) = post(&first, "i1").await;
        assert_eq!(
            (status, &body["status"]),
            (StatusCode::ACCEPTED, &"accepted".into())
        );
        drop(first);
        // The same signed request against a restarted listener.
        let restarted = app_in(&fifo, Some(&state), None);
        let (status, body) = post(&restarted, "i1").await;
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_eq!(body["status"], "duplicate", "replayed after a restart");
        let (_, body) = post(&restarted, "i2").await;
        assert_eq!(body["status"], "accepted");
        assert_eq!(lines_read(&mut reader), 2, "i1 once, i2 once");
        let journal = state.join(JOURNAL_FILE);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&journal).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn the_journal_forgets_what_can_no_longer_be_replayed_and_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let old = IdJournal::now() - 3 * WINDOW.as_secs();
        std::fs::write(
            dir.path().join(JOURNAL_FILE),
            format!("{old} stale\ngarbage\n{} fresh\n", IdJournal::now()),
        )
        .unwrap();
        let (mut j, young) = IdJournal::open(dir.path()).unwrap();
        assert_eq!(young, ["fresh"]);
        for i in 0..IdJournal::COMPACT_AT + 10 {
            j.record(&format!("id{i}")).unwrap();
        }
        let text = std::fs::read_to_string(dir.path().join(JOURNAL_FILE)).unwrap();
        assert!(!text.contains("stale"));
        assert!(text.lines().count() <= IdJournal::COMPACT_AT + 11);
    }

    #[tokio::test]
    async fn an_input_for_another_run_is_forbidden() {
        let dir = tempfile::tempdir().unwrap();
        let (fifo, mut reader) = fifo_with_reader(dir.path());
        let app = app_in(&fifo, None, Some("run-a"));
        let (status, body) = send(&app, signed_for("run-b", "i1")).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(body["error"]["code"], "wrong_run");
        let (status, _) = send(&app, signed_for("run-a", "i1")).await;
        assert_eq!(status, StatusCode::ACCEPTED, "the same id, for this run");
        assert_eq!(lines_read(&mut reader), 1);
    }

    #[tokio::test]
    async fn ids_that_cannot_be_one_journal_word_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (fifo, _reader) = fifo_with_reader(dir.path());
        let app = app_in(&fifo, None, None);
        for id in ["a b", "a\nb", &"x".repeat(MAX_ID_BYTES + 1)] {
            let (status, _) = post(&app, id).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{id:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn seen_ids_are_bounded_and_expire() {
        let mut s = Seen {
            order: VecDeque::new(),
            ids: HashMap::new(),
            cap: 3,
        };
        assert!(s.insert("a"));
        assert!(!s.insert("a"));
        for id in ["b", "c", "d"] {
            assert!(s.insert(id));
        }
        assert!(s.ids.len() <= 3);
        tokio::time::advance(WINDOW * 3).await;
        assert!(s.insert("d"), "expired ids may come again");
    }
}
