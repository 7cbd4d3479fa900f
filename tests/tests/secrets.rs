//! Secrets given by env or config never appear in logs, `--help`, errors,
//! health bodies or metrics.

// Scenarios fail fast on anything unexpected; that is the point of a test.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use e2e::{get_text, run_to_end, started_ops_addr, FakeDiscordProc, Proc};

const BRIDGE_TOKEN: &str = "bridge-token-SECRET-b7c1";
const INPUT_SECRET: &str = "input-secret-SECRET-9f3a";

#[tokio::test]
async fn watcher_never_prints_its_secrets() {
    let fake = FakeDiscordProc::start(&[]).await;
    let webhook = fake.webhook_url.clone().unwrap();
    let token = webhook.rsplit('/').next().unwrap().to_owned();
    assert!(token.len() >= 8);
    let dir = tempfile::tempdir().unwrap();
    let transcript = dir.path().join("s.jsonl");
    std::fs::write(&transcript, "").unwrap();
    let env = vec![
        ("OPS_ADDR", "127.0.0.1:0".to_string()),
        ("TRANSCRIPT_PATH", transcript.display().to_string()),
        ("DISCORD_WEBHOOK_URL", webhook.clone()),
        ("BRIDGE_TOKEN", BRIDGE_TOKEN.to_string()),
        ("INPUT_SECRET", INPUT_SECRET.to_string()),
        ("INPUT_ADDR", "127.0.0.1:0".to_string()),
        (
            "AGENT_INPUT_FIFO",
            dir.path().join("input.fifo").display().to_string(),
        ),
        ("STATE_DIR", dir.path().join("state").display().to_string()),
        ("RUST_LOG", "debug".to_string()),
    ];
    let (_, help, _) = run_to_end("watcher", &["--help"], &env);
    let (_, cc_out, cc_err) = run_to_end("watcher", &["check-config"], &env);
    assert!(
        cc_out.contains("[redacted]"),
        "check-config shows the redaction: {cc_out}"
    );

    let mut watcher = Proc::start("watcher", &[], &env);
    let ops = started_ops_addr(&watcher).await;
    let health = get_text(&format!("http://{ops}/healthz")).await.1;
    let metrics = get_text(&format!("http://{ops}/metrics")).await.1;
    watcher.sigterm();
    assert!(watcher.wait_exit(Duration::from_secs(5)).await.is_some());
    let logs = watcher.output();
    assert!(logs.contains("****"), "webhook URLs print redacted: {logs}");
    for (what, text) in [
        ("--help", &help),
        ("check-config", &cc_out),
        ("check-config stderr", &cc_err),
        ("logs", &logs),
        ("/healthz", &health),
        ("/metrics", &metrics),
    ] {
        for secret in [token.as_str(), BRIDGE_TOKEN, INPUT_SECRET] {
            assert!(!text.contains(secret), "{what} leaks a secret:\n{text}");
        }
    }
}

#[tokio::test]
async fn bot_bridge_never_prints_its_secrets() {
    const BOT: &str = "bot-token-SECRET-55aa";
    const API: &str = "api-token-SECRET-66bb";
    let fake = FakeDiscordProc::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let env = vec![
        ("OPS_ADDR", "127.0.0.1:0".to_string()),
        ("API_ADDR", "127.0.0.1:0".to_string()),
        ("API_TOKEN", API.to_string()),
        ("DISCORD_BOT_TOKEN", BOT.to_string()),
        ("DISCORD_API_BASE", fake.api_base.clone()),
        ("GUILD_ID", "1".to_string()),
        (
            "DATABASE_URL",
            format!("sqlite://{}", dir.path().join("b.db").display()),
        ),
        ("RUST_LOG", "debug".to_string()),
    ];
    let (_, help, _) = run_to_end("bot-bridge", &["--help"], &env);
    let mut bridge = Proc::start("bot-bridge", &[], &env);
    let ops = started_ops_addr(&bridge).await;
    let health = get_text(&format!("http://{ops}/healthz")).await.1;
    bridge.sigterm();
    assert!(bridge.wait_exit(Duration::from_secs(5)).await.is_some());
    let logs = bridge.output();
    for (what, text) in [("--help", &help), ("logs", &logs), ("/healthz", &health)] {
        for secret in [BOT, API] {
            assert!(!text.contains(secret), "{what} leaks a secret:\n{text}");
        }
    }
}
