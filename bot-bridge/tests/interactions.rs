//! Discord interactions end to end: signed requests into bot-bridge, signed
//! operator input out to a watcher (this test's own small axum server).

// Helpers outside #[test] fns fail fast too.
#![allow(clippy::unwrap_used)]

mod harness;

use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use ed25519_dalek::Signer;
use harness::Bridge;
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// (timestamp, signature, body) as the watcher received them.
type Received = (String, String, Vec<u8>);

async fn watcher(status: u16) -> (String, mpsc::UnboundedReceiver<Received>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/v1/input",
        post(move |headers: HeaderMap, body: Bytes| {
            let tx = tx.clone();
            async move {
                let h = |n: &str| {
                    headers
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned()
                };
                let _ = tx.send((
                    h("x-agentmon-timestamp"),
                    h("x-agentmon-signature"),
                    body.to_vec(),
                ));
                StatusCode::from_u16(status).unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), rx)
}

fn now() -> i64 {
    bot_bridge::runs::now_unix()
}

async fn interact(
    bridge: &Bridge,
    body: &Value,
    ts: i64,
    sign_with: &ed25519_dalek::SigningKey,
) -> (u16, Value) {
    let raw = serde_json::to_vec(body).unwrap();
    let mut msg = ts.to_string().into_bytes();
    msg.extend_from_slice(&raw);
    let sig = hex::encode(sign_with.sign(&msg).to_bytes());
    let resp = reqwest::Client::new()
        .post(format!("{}/interactions", bridge.base))
        .header("x-signature-ed25519", sig)
        .header("x-signature-timestamp", ts.to_string())
        .body(raw)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn input(channel_id: &str, text: &str) -> Value {
    json!({
        "id": "1300000000000000001",
        "type": 2,
        "application_id": harness::APPLICATION_ID,
        "token": "interaction-token-SECRET-i12",
        "channel_id": channel_id,
        "member": {"user": {"id": "42", "username": "operator"}},
        "data": {"name": "input", "type": 1, "options": [{"name": "text", "type": 3, "value": text}]},
    })
}

#[tokio::test]
async fn ping_gets_pong_only_with_a_valid_fresh_signature() {
    let bridge = Bridge::start().await;
    let key = harness::signing_key();
    let (status, body) = interact(&bridge, &json!({"type": 1}), now(), &key).await;
    assert_eq!((status, body), (200, json!({"type": 1})));
    let other = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
    let (status, body) = interact(&bridge, &json!({"type": 1}), now(), &other).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthorized");
    let (status, _) = interact(&bridge, &json!({"type": 1}), now() - 6 * 60, &key).await;
    assert_eq!(status, 401, "a stale timestamp must be refused");
    let (status, _) = interact(&bridge, &json!({"type": 1}), now() + 6 * 60, &key).await;
    assert_eq!(status, 401, "a future timestamp must be refused");
}

#[tokio::test]
async fn input_in_a_run_channel_reaches_the_watcher_signed() {
    let bridge = Bridge::start().await;
    let (url, mut rx) = watcher(202).await;
    let (_, run) = bridge
        .create_run(&json!({"task_id": "t", "attempt": 1, "short_id": "a", "input_url": url}))
        .await;
    let channel = run["channel_id"].as_str().unwrap();
    let (status, reply) = interact(
        &bridge,
        &input(channel, "please stop"),
        now(),
        &harness::signing_key(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(reply["type"], 4);
    assert_eq!(reply["data"]["flags"], 64);
    assert_eq!(reply["data"]["content"], "forwarded");

    let (ts, sig, body) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    let age = now() - ts.parse::<i64>().unwrap();
    assert!((0..=5).contains(&age), "timestamp {ts} is not now");
    let secret = run["input_secret"].as_str().unwrap().as_bytes();
    assert!(protocol::verify(secret, &ts, &body, &sig), "{sig}");
    let got: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(got["run_id"], run["run_id"]);
    assert_eq!(got["user"], "operator");
    assert_eq!(got["text"], "please stop");
    assert_eq!(got["id"], "1300000000000000001");
    bridge.assert_no_secret_leaked().await;
    assert!(!harness::captured_logs().contains("interaction-token-SECRET-i12"));
}

#[tokio::test]
async fn input_outside_a_run_channel_is_answered_ephemerally() {
    let bridge = Bridge::start().await;
    let (status, reply) = interact(
        &bridge,
        &input("31337", "hi"),
        now(),
        &harness::signing_key(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(reply["type"], 4);
    assert_eq!(reply["data"]["flags"], 64);
    assert_eq!(reply["data"]["content"], "not a run channel");
}

#[tokio::test]
async fn a_busy_or_finished_run_says_so() {
    let bridge = Bridge::start().await;
    let (url, _rx) = watcher(429).await;
    let (_, run) = bridge
        .create_run(&json!({"task_id": "t", "attempt": "2", "short_id": "b", "input_url": url}))
        .await;
    let channel = run["channel_id"].as_str().unwrap();
    let key = harness::signing_key();
    let (_, reply) = interact(&bridge, &input(channel, "x"), now(), &key).await;
    assert_eq!(reply["data"]["content"], "agent busy, try again");
    let run_id = run["run_id"].as_str().unwrap();
    bridge
        .post(&format!("/v1/runs/{run_id}/complete"), &json!({}))
        .await;
    let (_, reply) = interact(&bridge, &input(channel, "x"), now(), &key).await;
    assert_eq!(reply["data"]["content"], "run finished");
}

#[tokio::test]
async fn a_flood_of_unsigned_requests_logs_a_line_not_each() {
    let bridge = Bridge::start().await;
    let before = count_refusal_lines();
    let http = reqwest::Client::new();
    for _ in 0..200 {
        let r = http
            .post(format!("{}/interactions", bridge.base))
            .body(r#"{"type":1}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    // The first refusal (of this process, within the period) is logged; the
    // flood behind it is only counted.
    let logged = count_refusal_lines() - before;
    assert!(logged <= 1, "{logged} log lines for 200 unsigned requests");
}

fn count_refusal_lines() -> usize {
    harness::captured_logs()
        .lines()
        .filter(|l| {
            l.contains("interaction signature refused") || l.contains("\"kind\":\"interaction\"")
        })
        .count()
}
