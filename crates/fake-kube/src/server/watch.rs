//! Pod watch streams (`?watch=true`): newline-delimited watch events, as
//! the apiserver streams them.
//!
//! Each stream is a task holding a cursor: the resourceVersion up to which
//! it has delivered everything. It wakes on every change, replays the
//! history past its cursor through its filter, and sends bookmarks when
//! asked for them. A watch from a compacted resourceVersion, or an open one
//! whose undelivered changes were compacted, gets an `ERROR` event with a
//! `410 Expired` Status and ends: the real server's way to say "relist".

use std::collections::BTreeMap;
use std::io;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::pods::{parse_rv, ListQuery};
use super::App;
use crate::state::pods::ChangeKind;
use crate::state::{DropMode, State};
use crate::status::ApiError;

/// Lines buffered per stream before the task waits for the client.
const BUFFER: usize = 256;

/// The annotation on the bookmark that ends a streaming list's initial
/// events.
const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";

fn line(value: &Value) -> Bytes {
    let mut v = serde_json::to_vec(value).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

fn event_line(kind: ChangeKind, object: &impl serde::Serialize) -> Bytes {
    let t = match kind {
        ChangeKind::Added => "ADDED",
        ChangeKind::Modified => "MODIFIED",
        ChangeKind::Deleted => "DELETED",
    };
    line(&json!({"type": t, "object": object}))
}

/// A BOOKMARK carries only `kind`, `apiVersion` and the resourceVersion
/// (kube's `Bookmark` type needs the first two).
fn bookmark_line(rv: u64, annotations: &BTreeMap<&str, &str>) -> Bytes {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if !annotations.is_empty() {
        metadata["annotations"] = json!(annotations);
    }
    line(&json!({
        "type": "BOOKMARK",
        "object": {"kind": "Pod", "apiVersion": "v1", "metadata": metadata}
    }))
}

fn expired_line(s: &mut State, rv: u64) -> Bytes {
    s.stats.expired += 1;
    let status = ApiError::expired(format!(
        "too old resource version: {rv} ({})",
        s.oldest_valid_rv
    ))
    .to_status();
    line(&json!({"type": "ERROR", "object": status}))
}

/// The control generations a stream started with.
#[derive(Debug, Clone, Copy)]
struct Seen {
    drop: u64,
    expire: u64,
    bookmark: u64,
}

/// What a stream does next.
enum Step {
    Send(Vec<Bytes>),
    /// Send these, then end cleanly.
    Finish(Vec<Bytes>),
    Abort,
}

/// Starts a watch: validates its resourceVersion, computes the initial
/// events for "0"/unset (synthetic ADDED for every matching pod), and
/// spawns the stream task.
pub fn start(app: App, q: ListQuery) -> Response {
    let setup = app.with(|s| -> Result<_, ApiError> {
        s.stats.watches_started += 1;
        let seen = Seen {
            drop: s.watch.drop_generation,
            expire: s.watch.expire_generation,
            bookmark: s.watch.bookmark_generation,
        };
        let current = s.rv;
        let initial_state = |s: &State| -> Vec<Bytes> {
            s.pods
                .pods
                .values()
                .filter(|p| q.filter.matches(p))
                .map(|p| event_line(ChangeKind::Added, p))
                .collect()
        };
        match q.resource_version.as_deref() {
            None | Some("0") => {
                let mut lines = initial_state(s);
                if q.send_initial_events {
                    lines.push(bookmark_line(
                        current,
                        &BTreeMap::from([(INITIAL_EVENTS_END, "true")]),
                    ));
                }
                Ok((lines, current, seen, false))
            }
            Some(rv) => {
                let rv = parse_rv(rv)?;
                if q.send_initial_events {
                    let mut lines = initial_state(s);
                    lines.push(bookmark_line(
                        current,
                        &BTreeMap::from([(INITIAL_EVENTS_END, "true")]),
                    ));
                    return Ok((lines, current, seen, false));
                }
                if rv < s.oldest_valid_rv {
                    return Ok((vec![expired_line(s, rv)], rv, seen, true));
                }
                Ok((Vec::new(), rv, seen, false))
            }
        }
    });
    let (initial, cursor, seen, expired) = match setup {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    let (tx, rx) = mpsc::channel::<Result<Bytes, io::Error>>(BUFFER);
    let timeout = q.timeout_seconds.map_or_else(
        || app.with(|s| s.config.default_watch_timeout),
        Duration::from_secs,
    );
    tokio::spawn(run(app, q, cursor, seen, tx, initial, expired, timeout));
    let body = Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    let mut r = (StatusCode::OK, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Keeps `watches_open` true while the task lives.
struct OpenGuard(App);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0
            .with(|s| s.stats.watches_open = s.stats.watches_open.saturating_sub(1));
    }
}

#[allow(clippy::too_many_arguments)]
async fn run(
    app: App,
    q: ListQuery,
    mut cursor: u64,
    mut seen: Seen,
    tx: mpsc::Sender<Result<Bytes, io::Error>>,
    initial: Vec<Bytes>,
    expired: bool,
    timeout: Duration,
) {
    app.with(|s| s.stats.watches_open += 1);
    let _open = OpenGuard(app.clone());
    let mut changes = app.subscribe();
    changes.borrow_and_update();
    for l in initial {
        if tx.send(Ok(l)).await.is_err() {
            return;
        }
    }
    if expired {
        return;
    }
    let deadline = Instant::now() + timeout;
    // `interval` refuses a zero period.
    let every = app
        .with(|s| s.config.bookmark_interval)
        .max(Duration::from_millis(1));
    let mut bookmarks = tokio::time::interval_at(Instant::now() + every, every);
    let mut want_bookmark = false;
    loop {
        let step = app.with(|s| next_step(s, &q, &mut cursor, &mut seen, want_bookmark));
        want_bookmark = false;
        let (lines, finish) = match step {
            Step::Send(lines) => (lines, false),
            Step::Finish(lines) => (lines, true),
            Step::Abort => {
                let _ = tx
                    .send(Err(io::Error::other("watch aborted by fake-kube")))
                    .await;
                return;
            }
        };
        for l in lines {
            if tx.send(Ok(l)).await.is_err() {
                return;
            }
        }
        if finish {
            return;
        }
        tokio::select! {
            () = tx.closed() => return,
            () = tokio::time::sleep_until(deadline) => return,
            changed = changes.changed() => if changed.is_err() { return },
            _ = bookmarks.tick(), if q.bookmarks => want_bookmark = true,
        }
    }
}

fn next_step(
    s: &mut State,
    q: &ListQuery,
    cursor: &mut u64,
    seen: &mut Seen,
    want_bookmark: bool,
) -> Step {
    if s.watch.drop_generation != seen.drop {
        return match s.watch.drop_mode {
            DropMode::Close => Step::Finish(Vec::new()),
            DropMode::Abort => Step::Abort,
        };
    }
    if s.watch.expire_generation != seen.expire {
        return Step::Finish(vec![expired_line(s, *cursor)]);
    }
    if s.watch.paused {
        return Step::Send(Vec::new());
    }
    if *cursor < s.pods.compacted_through {
        return Step::Finish(vec![expired_line(s, *cursor)]);
    }
    let from = s.pods.history.partition_point(|c| c.rv <= *cursor);
    let mut lines: Vec<Bytes> = s
        .pods
        .history
        .range(from..)
        .filter_map(|c| q.filter.view(c))
        .map(|(kind, pod)| event_line(kind, &pod))
        .collect();
    *cursor = (*cursor).max(s.rv);
    let asked = s.watch.bookmark_generation != seen.bookmark;
    seen.bookmark = s.watch.bookmark_generation;
    if q.bookmarks && (want_bookmark || asked) {
        s.stats.bookmarks_sent += 1;
        lines.push(bookmark_line(*cursor, &BTreeMap::new()));
    }
    Step::Send(lines)
}
