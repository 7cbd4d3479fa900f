//! The binary keeps the e2e harness's contract (tests/src/lib.rs
//! `FakeDiscordProc`): the JSON listening line on stdout, admin API, exit 0 on
//! SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use fake_support::testing;
use serde_json::{json, Value};

#[tokio::test]
async fn prints_the_listening_line_serves_and_exits_0_on_sigterm() {
    let (child, v) = testing::start(
        env!("CARGO_BIN_EXE_fake-discord"),
        [
            "--addr",
            "127.0.0.1:0",
            "--create-webhook",
            "--log-format",
            "json",
        ],
    )
    .await;
    let addr = v["listening"].as_str().unwrap();
    assert!(addr.starts_with("127.0.0.1:"));
    assert_eq!(v["api_base"], json!(format!("http://{addr}/api/v10")));
    let webhook_url = v["webhook_url"].as_str().unwrap();
    assert!(webhook_url.starts_with(&format!("http://{addr}/api/v10/webhooks/")));

    let http = reqwest::Client::new();
    let r = http
        .post(format!("{webhook_url}?wait=true"))
        .json(&json!({"content": "hi", "allowed_mentions": {"parse": []}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let messages: Vec<Value> = reqwest::get(format!("http://{addr}/_admin/messages"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(messages.len(), 1);
    let stats: Value = reqwest::get(format!("http://{addr}/_admin/stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["accepted"], 1);
    let r = http
        .post(format!("http://{addr}/_admin/faults"))
        .json(&json!({"kind": "status", "status": 503, "count": 1}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());

    testing::sigterm_exits_0(child).await;
}

#[tokio::test]
async fn help_lists_the_flags() {
    testing::assert_help_lists(
        env!("CARGO_BIN_EXE_fake-discord"),
        &[
            "--addr",
            "--create-webhook",
            "--no-rate-limits",
            "--webhook-limit",
            "--webhook-window-ms",
            "--channel-messages-per-minute",
            "--global-per-second",
            "--guild-id",
            "--bot-token",
        ],
    )
    .await;
}
