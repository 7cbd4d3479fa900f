//! A second SIGTERM ends a draining process at once (both binaries), with a
//! log line saying so; the first one still drains.

// Scenarios fail fast on anything unexpected; that is the point of a test.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use e2e::transcript::{prompt, SESSION};
use e2e::{FakeDiscordProc, Proc};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const DEADLINE: Duration = Duration::from_secs(20);

/// A server that accepts connections and never answers: a request to it
/// stays in flight until the client's own timeout. Each accepted connection
/// is announced on the channel (and held open).
async fn black_hole() -> (String, mpsc::UnboundedReceiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
            let _ = tx.send(());
        }
    });
    (addr, rx)
}

async fn second_sigterm_ends_it_at_once(mut proc: Proc) {
    proc.sigterm();
    proc.wait_log("shutdown requested", DEADLINE).await;
    assert!(
        proc.wait_exit(Duration::from_millis(500)).await.is_none(),
        "{} should still be draining:\n{}",
        proc.name,
        proc.output()
    );
    proc.sigterm();
    let status = proc
        .wait_exit(Duration::from_secs(3))
        .await
        .unwrap_or_else(|| {
            panic!(
                "{} ignored the second SIGTERM:\n{}",
                proc.name,
                proc.output()
            )
        });
    assert_eq!(status.code(), Some(143), "{}", proc.output());
    let line = proc
        .wait_log(
            "second signal during shutdown; exiting at once without finishing the drain",
            Duration::from_secs(1),
        )
        .await;
    assert_eq!(line["signal"], "SIGTERM");
}

#[tokio::test]
async fn a_second_sigterm_ends_a_draining_watcher_at_once() {
    let (hole, mut accepted) = black_hole().await;
    let dir = tempfile::tempdir().unwrap();
    let transcript = dir.path().join("session.jsonl");
    std::fs::write(&transcript, prompt("u1", SESSION, "hello")).unwrap();
    let mut env = e2e::watcher_env(&transcript, &dir.path().join("state"));
    env.extend([
        (
            "DISCORD_WEBHOOK_URL",
            format!("http://{hole}/api/webhooks/1/token"),
        ),
        ("SHUTDOWN_TIMEOUT", "60s".to_string()),
    ]);
    let watcher = Proc::start("watcher", &[], &env);
    tokio::time::timeout(DEADLINE, accepted.recv())
        .await
        .expect("the watcher is sending to the black hole");
    second_sigterm_ends_it_at_once(watcher).await;
}

#[tokio::test]
async fn a_second_sigterm_ends_a_draining_bot_bridge_at_once() {
    // Discord (the fake, its limits on) holds channel creation without
    // answering: a `POST /v1/runs` provisioning a channel stays in flight, so
    // the first SIGTERM has a request to drain. bot-bridge's own background
    // calls at start (channel listings, command registration) are answered, so
    // the fault is taken by provisioning and nothing else.
    let fake = FakeDiscordProc::start(&[]).await;
    fake.inject(serde_json::json!({
        "kind": "hang", "route": "POST /guilds/{guild_id}/channels", "count": 1
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = e2e::bridge_env(
        "api-token",
        "bot-token",
        &fake.api_base,
        &dir.path().join("b.db"),
    );
    env.push(("SHUTDOWN_TIMEOUT", "60s".to_string()));
    let bridge = Proc::start("bot-bridge", &[], &env);
    let started = bridge.wait_log("started", DEADLINE).await;
    let api = started["api_addr"].as_str().unwrap().to_owned();
    tokio::spawn(async move {
        let _ = reqwest::Client::new()
            .post(format!("http://{api}/v1/runs"))
            .bearer_auth("api-token")
            .json(&serde_json::json!({"task_id": "t", "attempt": 1, "short_id": "s"}))
            .send()
            .await;
    });
    e2e::eventually("provisioning held by Discord", DEADLINE, || async {
        (fake.faults_pending().await == 0).then_some(())
    })
    .await;
    second_sigterm_ends_it_at_once(bridge).await;
}
