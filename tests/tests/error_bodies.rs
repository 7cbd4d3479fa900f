//! Every error answer of the real binaries is the contract's JSON
//! (DESIGN.md §4: `{"error":{"code","message"}}`), also the ones the shared
//! middleware stack (`ops::http::instrument`) writes before a handler runs:
//! a body over the limit decided on its Content-Length, a request over the
//! handler timeout, a request target over 8 KiB, 404/405 on every port. The
//! one documented exception: a request head over 16 KiB, answered by hyper
//! itself (431, empty body) before any of our code runs.

// Scenarios fail fast on anything unexpected; that is the point of a test.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use e2e::{get_text, metric_value, started_ops_addr, Proc};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An answer read off the wire: status, lower-cased head, body.
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    /// The `error.code` of a contract JSON error body; panics otherwise.
    fn code(&self) -> String {
        assert!(
            self.head.contains("content-type: application/json"),
            "not JSON: {}\n{}",
            self.head,
            self.body
        );
        let v: Value = serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body));
        assert!(v["error"]["message"].is_string(), "{v}");
        v["error"]["code"].as_str().unwrap().to_owned()
    }
}

/// Sends `head` (request line and headers, without the blank line; a
/// `connection: close` is added) and `body` as they are, and reads the answer
/// until the server closes, within `within`.
async fn raw(addr: &str, head: &str, body: &[u8], within: Duration) -> Answer {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("{head}\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    s.write_all(body).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(within, s.read_to_end(&mut out))
        .await
        .unwrap_or_else(|_| panic!("no answer to {head:?} within {within:?}"))
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text:?}"));
    Answer {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_owned(),
    }
}

const QUICK: Duration = Duration::from_secs(10);
const API_TOKEN: &str = "api-token";

/// Errors every port of a binary answers the same way: an unknown path and a
/// wrong method, on its public and its ops port.
async fn routing_errors_are_json(public: &str, known: &str, ops: &str) {
    let a = raw(public, "GET /no/such/path HTTP/1.1", b"", QUICK).await;
    assert_eq!((a.status, a.code().as_str()), (404, "not_found"));
    let a = raw(public, &format!("PUT {known} HTTP/1.1"), b"", QUICK).await;
    assert_eq!((a.status, a.code().as_str()), (405, "method_not_allowed"));
    assert!(a.head.contains("\r\nallow: "), "Allow kept: {}", a.head);
    let a = raw(ops, "GET /no/such/path HTTP/1.1", b"", QUICK).await;
    assert_eq!((a.status, a.code().as_str()), (404, "not_found"));
    let a = raw(ops, "POST /livez HTTP/1.1", b"", QUICK).await;
    assert_eq!((a.status, a.code().as_str()), (405, "method_not_allowed"));
}

/// A request target over 8 KiB is our JSON 414; a head over 16 KiB is
/// hyper's 431 with an empty body (the documented exception).
async fn long_uris(public: &str, path: &str) {
    let long = format!("GET {path}?{} HTTP/1.1", "a".repeat(9000));
    let a = raw(
        public,
        &format!("{long}\r\nauthorization: Bearer {API_TOKEN}"),
        b"",
        QUICK,
    )
    .await;
    assert_eq!((a.status, a.code().as_str()), (414, "uri_too_long"));
    let huge = format!("GET {path}?{} HTTP/1.1", "a".repeat(17 * 1024));
    let a = raw(public, &huge, b"", QUICK).await;
    assert_eq!(a.status, 431, "{}", a.head);
    assert!(a.body.is_empty(), "hyper's own answer: {:?}", a.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_errors_from_every_layer_are_json() {
    let dir = tempfile::tempdir().unwrap();
    let (env, _fifo) = e2e::input_watcher_env(dir.path(), "input-secret");
    let watcher = Proc::start("watcher", &[], &env);
    let ops = started_ops_addr(&watcher).await;
    let input = watcher
        .wait_log("operator input listening", Duration::from_secs(20))
        .await["input_addr"]
        .as_str()
        .unwrap()
        .to_owned();

    // A body that stops short: the handler waits for it until the 10 s
    // request timeout (DESIGN.md §5) answers 408. Started first, it runs
    // while the other cases are checked.
    let stalled = {
        let input = input.clone();
        tokio::spawn(async move {
            raw(
                &input,
                "POST /v1/input HTTP/1.1\r\ncontent-length: 100",
                b"{\"run_id\"",
                Duration::from_secs(40),
            )
            .await
        })
    };

    // Over the 64 KiB body limit, decided on the Content-Length alone (the
    // body is never sent): before, tower-http's text "length limit exceeded".
    let a = raw(
        &input,
        "POST /v1/input HTTP/1.1\r\ncontent-length: 70000",
        b"",
        QUICK,
    )
    .await;
    assert_eq!((a.status, a.code().as_str()), (413, "payload_too_large"));
    routing_errors_are_json(&input, "/v1/input", &ops).await;
    long_uris(&input, "/v1/input").await;

    let a = stalled.await.unwrap();
    assert_eq!((a.status, a.code().as_str()), (408, "request_timeout"));

    // Still counted under the route with their status.
    let (_, metrics) = get_text(&format!("http://{ops}/metrics")).await;
    for (method, status) in [("POST", "408"), ("POST", "413"), ("GET", "414")] {
        let series = format!(
            "http_server_requests_total{{method=\"{method}\",route=\"/v1/input\",\
             service=\"watcher\",status=\"{status}\"}}"
        );
        assert_eq!(metric_value(&metrics, &series), Some(1.0), "{series}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bot_bridge_errors_from_every_layer_are_json() {
    let dir = tempfile::tempdir().unwrap();
    let bridge = Proc::start(
        "bot-bridge",
        &[],
        &e2e::bridge_env(
            API_TOKEN,
            "bot-token",
            "http://127.0.0.1:9/api/v10",
            &dir.path().join("b.db"),
        ),
    );
    let started = bridge.wait_log("started", Duration::from_secs(20)).await;
    let ops = started["ops_addr"].as_str().unwrap().to_owned();
    let api = started["api_addr"].as_str().unwrap().to_owned();

    // Over the stack's 16 MiB cap (the hand-off route's), decided on the
    // Content-Length alone: before, tower-http's text "length limit exceeded".
    let a = raw(
        &api,
        &format!(
            "POST /v1/runs/r/handoff HTTP/1.1\r\nauthorization: Bearer {API_TOKEN}\r\n\
             content-type: application/json\r\ncontent-length: {}",
            17 * 1024 * 1024
        ),
        b"",
        QUICK,
    )
    .await;
    assert_eq!((a.status, a.code().as_str()), (413, "payload_too_large"));
    // A handler's own error keeps its code.
    let a = raw(
        &api,
        &format!("GET /v1/runs/nope HTTP/1.1\r\nauthorization: Bearer {API_TOKEN}"),
        b"",
        QUICK,
    )
    .await;
    assert_eq!((a.status, a.code().as_str()), (404, "not_found"));
    routing_errors_are_json(&api, "/interactions", &ops).await;
    long_uris(&api, "/v1/runs").await;
}
