//! A token taken from a Kubernetes Secret made with `--from-file` ends with a
//! newline. It used to be accepted at start-up and then never match; the
//! single trailing newline is now dropped (DESIGN.md §3 and §4).

// Scenarios fail fast on anything unexpected; that is the point of a test.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use e2e::Proc;

const DEADLINE: Duration = Duration::from_secs(20);

#[tokio::test]
async fn bot_bridge_api_token_with_a_trailing_newline_matches() {
    let dir = tempfile::tempdir().unwrap();
    let bridge = Proc::start(
        "bot-bridge",
        &[],
        &e2e::bridge_env(
            "api-token-from-a-file\n",
            "bot-token\n",
            "http://127.0.0.1:9/api/v10",
            &dir.path().join("b.db"),
        ),
    );
    let started = bridge.wait_log("started", DEADLINE).await;
    let api = started["api_addr"].as_str().unwrap();
    let r = reqwest::Client::new()
        .get(format!("http://{api}/v1/runs?status=active"))
        .bearer_auth("api-token-from-a-file")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
}

#[tokio::test]
async fn watcher_input_secret_with_a_trailing_newline_matches() {
    let dir = tempfile::tempdir().unwrap();
    let (mut env, fifo) = e2e::input_watcher_env(dir.path(), "input-secret\n");
    // A reader, so that an accepted input can be written.
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags_nonblock()
        .open(&fifo)
        .unwrap();
    env.push(("RUN_ID", "run-1".to_string()));
    let watcher = Proc::start("watcher", &[], &env);
    let input = watcher.wait_log("operator input listening", DEADLINE).await["input_addr"]
        .as_str()
        .unwrap()
        .to_owned();
    let body =
        serde_json::json!({"run_id": "run-1", "user": "op", "text": "hi", "id": "i-1"}).to_string();
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let r = reqwest::Client::new()
        .post(format!("http://{input}/v1/input"))
        .header("x-agentmon-timestamp", &ts)
        .header(
            "x-agentmon-signature",
            sign(b"input-secret", &ts, body.as_bytes()),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap_or_default());
    drop(reader);
}

fn sign(secret: &[u8], ts: &str, body: &[u8]) -> String {
    protocol::sign(secret, ts, body)
}

trait NonBlock {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}

impl NonBlock for std::fs::OpenOptions {
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
    }
}
