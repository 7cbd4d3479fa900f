//! The binary keeps the e2e harness's contract (tests/src/lib.rs
//! `FakeDiscordProc`): the JSON listening line on stdout, admin API, exit 0 on
//! SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

#[tokio::test]
async fn prints_the_listening_line_serves_and_exits_0_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fake-discord"))
        .args([
            "--addr",
            "127.0.0.1:0",
            "--create-webhook",
            "--log-format",
            "json",
        ])
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("listening line in time")
        .unwrap()
        .expect("a line");
    assert!(line.contains("listening"));
    let v: Value = serde_json::from_str(&line).unwrap();
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

    let pid = child.id().unwrap().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn help_lists_the_flags() {
    let out = Command::new(env!("CARGO_BIN_EXE_fake-discord"))
        .arg("--help")
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--addr",
        "--create-webhook",
        "--no-rate-limits",
        "--webhook-limit",
        "--webhook-window-ms",
        "--channel-messages-per-minute",
        "--global-per-second",
        "--guild-id",
        "--bot-token",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
}
