//! Operator input: `POST /v1/input` from bot-bridge → one JSON line in the
//! agent's input FIFO.
//!
//! Requests are authenticated with HMAC-SHA256 over `timestamp + "." + body`
//! (the secret comes from config or from bot-bridge at provisioning), must be
//! fresh (5-minute window), are deduplicated by `id`, and are rate limited.
//! Lines are written with a non-blocking open. A line of at most `PIPE_BUF`
//! bytes goes out in one atomic `write`; a longer one (Discord lets `/input`
//! carry 4000 characters, more than `PIPE_BUF` once encoded) may go out in
//! parts, and the writer finishes it before anything else (it is the FIFO's
//! only writer, so nothing interleaves). A pipe with no room for even the first
//! byte, or a missing reader, is answered 503 instead of blocking the watcher.

use std::collections::{HashMap, VecDeque};
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use hmac::{Hmac, Mac};
use ops::Secret;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
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
/// How old (or how far in the future) a signed timestamp may be.
pub const WINDOW: Duration = Duration::from_secs(300);
pub const TIMESTAMP_HEADER: &str = "x-agentmon-timestamp";
pub const SIGNATURE_HEADER: &str = "x-agentmon-signature";

/// The request body bot-bridge sends.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InputRequest {
    pub run_id: String,
    pub user: String,
    pub text: String,
    pub id: String,
}

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

/// Telemetry of the input listener.
pub trait InputObserver: Send + Sync {
    fn outcome(&self, outcome: &'static str);
}

/// The signing secret; replaced when bot-bridge (re-)provisions the run.
pub type SharedSecret = Arc<RwLock<Option<Secret<String>>>>;

pub struct InputConfig {
    pub fifo: PathBuf,
    pub secret: SharedSecret,
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
    done: oneshot::Sender<Result<(), WriteError>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteError {
    /// No process has the FIFO open for reading (or it does not exist).
    NoReader,
    /// The pipe is full: the agent is not reading.
    Busy,
    Other,
}

#[derive(Clone)]
struct AppState {
    secret: SharedSecret,
    limiter: Arc<Mutex<Limiter>>,
    seen: Arc<Mutex<Seen>>,
    jobs: mpsc::Sender<Job>,
    observer: Arc<dyn InputObserver>,
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

/// The input router and its writer task.
pub fn router(cfg: InputConfig, observer: Arc<dyn InputObserver>) -> Router {
    let (tx, rx) = mpsc::channel(cfg.queue.max(1));
    let fifo = cfg.fifo.clone();
    tokio::task::spawn_blocking(move || writer(fifo, rx));
    let state = AppState {
        secret: cfg.secret,
        limiter: Arc::new(Mutex::new(Limiter {
            tokens: cfg.burst,
            last: Instant::now(),
            rate: cfg.rate_per_second,
            burst: cfg.burst,
        })),
        seen: Arc::new(Mutex::new(Seen {
            order: VecDeque::new(),
            ids: HashMap::new(),
            cap: 100_000,
        })),
        jobs: tx,
        observer,
    };
    Router::new()
        .route("/v1/input", post(handle))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(json_errors))
        .with_state(state)
}

/// Largest request body: one input line's worth, with room for JSON escapes.
pub const MAX_BODY: usize = 64 * 1024;

/// Gives the errors axum writes itself (405, 413, a body that cannot be
/// read) the same `{"error":{"code","message"}}` body as the handler's.
async fn json_errors(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let code = match status.as_u16() {
        405 => "method_not_allowed",
        408 => "request_timeout",
        413 => "too_large",
        414 => "uri_too_long",
        s if s >= 500 => "unavailable",
        _ => "bad_request",
    };
    let message = status
        .canonical_reason()
        .unwrap_or("request failed")
        .to_ascii_lowercase();
    let mut out = error(status, code, &message);
    if let Some(allow) = resp.headers().get(http::header::ALLOW) {
        out.headers_mut().insert(http::header::ALLOW, allow.clone());
    }
    out
}

/// Verifies `sha256=<hex>` over `timestamp.body` in constant time.
pub fn verify(secret: &[u8], timestamp: &str, body: &[u8], signature: &str) -> bool {
    let Some(hex_sig) = signature.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

/// The signature header value for `body` (used by bot-bridge and tests).
pub fn sign(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap_or_else(|_| {
        // HMAC accepts keys of any length; this branch cannot be taken.
        Hmac::<Sha256>::new_from_slice(b"").expect("empty HMAC key")
    });
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn handle(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let r = handle_inner(&s, &headers, &body).await;
    let outcome = match r.status().as_u16() {
        202 => "accepted",
        400 => "bad_request",
        401 => "unauthorized",
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
    let fresh = ts
        .parse::<u64>()
        .is_ok_and(|t| t.abs_diff(now) <= WINDOW.as_secs());
    if !fresh {
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
    if req.text.trim().is_empty() || req.id.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_body",
            "text and id must not be empty",
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
            "too_large",
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
    if s.jobs.try_send(Job { line: bytes, done }).is_err() {
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

/// The writer: owns the FIFO handle, one job at a time, never blocks on it.
fn writer(fifo: PathBuf, mut rx: mpsc::Receiver<Job>) {
    let mut file: Option<std::fs::File> = None;
    while let Some(job) = rx.blocking_recv() {
        let mut result = Err(WriteError::Other);
        for _ in 0..2 {
            if file.is_none() {
                match OpenOptions::new()
                    .append(true)
                    .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
                    .open(&fifo)
                {
                    Ok(f) => file = Some(f),
                    Err(e) => {
                        result = Err(
                            if e.raw_os_error() == Some(nix::libc::ENXIO)
                                || e.kind() == std::io::ErrorKind::NotFound
                            {
                                WriteError::NoReader
                            } else {
                                WriteError::Other
                            },
                        );
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
        let _ = job.done.send(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoObserver;
    impl InputObserver for NoObserver {
        fn outcome(&self, _outcome: &'static str) {}
    }

    #[tokio::test]
    async fn every_error_answer_is_json() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = InputConfig {
            secret: Arc::new(RwLock::new(Some(Secret::new("k".into())))),
            fifo: dir.path().join("none.fifo"),
            queue: 4,
            rate_per_second: 10.0,
            burst: 10.0,
        };
        let app = router(cfg, Arc::new(NoObserver));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let http = reqwest::Client::new();
        let cases = [
            (
                http.get(format!("{base}/v1/input")),
                405,
                "method_not_allowed",
            ),
            (http.post(format!("{base}/nope")), 404, "not_found"),
            (
                http.post(format!("{base}/v1/input"))
                    .body(vec![b' '; MAX_BODY + 1]),
                413,
                "too_large",
            ),
        ];
        for (req, status, code) in cases {
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), status);
            let v: serde_json::Value = resp.json().await.unwrap();
            assert_eq!(v["error"]["code"], code, "{v}");
        }
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
