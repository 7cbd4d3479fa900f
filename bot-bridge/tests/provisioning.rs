//! bot-bridge against the strict fake Discord, in-process: the promises of
//! DESIGN.md §4 checked end to end through the HTTP API.

// Helpers outside #[test] fns fail fast too.
#![allow(clippy::unwrap_used)]

mod harness;

use std::time::Duration;

use harness::{Bridge, API_TOKEN, BOT_TOKEN};
use serde_json::{json, Value};

fn run_body(task: &str, short: &str) -> Value {
    json!({"task_id": task, "attempt": 1, "short_id": short})
}

#[tokio::test]
async fn creating_a_run_twice_returns_the_same_channel() {
    let bridge = Bridge::start().await;
    let (status, a) = bridge.create_run(&run_body("T-1", "ab12")).await;
    assert_eq!(status, 201, "{a}");
    let (status, b) = bridge.create_run(&run_body("T-1", "ab12")).await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(a["run_id"], b["run_id"]);
    assert_eq!(a["channel_id"], b["channel_id"]);
    assert_eq!(a["input_secret"], b["input_secret"]);
    let url = a["webhook_url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("{}/webhooks/", bridge.fake_api_base())),
        "{url}"
    );
    let channels = bridge.fake_channels();
    let run_channels: Vec<_> = channels.iter().filter(|c| c.kind == 0).collect();
    assert_eq!(run_channels.len(), 1, "{channels:?}");
    bridge.assert_no_secret_leaked().await;
}

#[tokio::test]
async fn channel_names_and_permissions_follow_the_rules() {
    let bridge = Bridge::start().await;
    let (_, run) = bridge.create_run(&run_body("Fix  The_Bug!!", "Xy9")).await;
    let channel = bridge.fake_channel(run["channel_id"].as_str().unwrap());
    assert_eq!(channel.name, "run-fix-the-bug-1-xy9");
    let parent = bridge.fake_channel(channel.parent_id.as_deref().unwrap());
    assert_eq!(parent.name, "Agent Runs");
    assert_eq!(parent.kind, 4);
    let everyone = channel
        .overwrites
        .iter()
        .find(|o| o.id == harness::GUILD_ID)
        .expect("an @everyone overwrite");
    let (view, send) = (1u64 << 10, 1u64 << 11);
    assert_eq!(everyone.allow & view, view);
    assert_eq!(everyone.deny & send, send);
}

#[tokio::test]
async fn completing_revokes_the_webhook_and_is_idempotent() {
    let bridge = Bridge::start().await;
    let (_, run) = bridge.create_run(&run_body("t", "a")).await;
    let run_id = run["run_id"].as_str().unwrap();
    assert_eq!(bridge.fake_webhook_count(), 1);
    for _ in 0..2 {
        let (status, done) = bridge
            .post(
                &format!("/v1/runs/{run_id}/complete"),
                &json!({"summary": {"cost_usd": 0.5}}),
            )
            .await;
        assert_eq!(status, 200, "{done}");
        assert_eq!(done["status"], "completed");
    }
    assert_eq!(bridge.fake_webhook_count(), 0);
    let (status, got) = bridge.get(&format!("/v1/runs/{run_id}")).await;
    assert_eq!(status, 200);
    assert_eq!(got["status"], "completed");
    assert_eq!(got["summary"]["cost_usd"], 0.5);
    bridge.assert_no_secret_leaked().await;
}

#[tokio::test]
async fn a_deleted_webhook_is_replaced_on_the_next_call() {
    let bridge = Bridge::start().await;
    let (_, a) = bridge.create_run(&run_body("t", "a")).await;
    bridge.fake_delete_all_webhooks().await;
    let (status, b) = bridge.create_run(&run_body("t", "a")).await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(a["channel_id"], b["channel_id"]);
    assert_ne!(a["webhook_url"], b["webhook_url"]);
    assert_eq!(bridge.fake_webhook_count(), 1);
}

#[tokio::test]
async fn retention_moves_completed_channels_to_the_archive() {
    let bridge = Bridge::start_with(|s| s.retention = Duration::from_secs(1)).await;
    let (_, run) = bridge.create_run(&run_body("t", "a")).await;
    let run_id = run["run_id"].as_str().unwrap();
    bridge
        .post(&format!("/v1/runs/{run_id}/complete"), &json!({}))
        .await;
    let due = bot_bridge::runs::now_unix() + 2;
    let report = bot_bridge::retention::tick(&bridge.state, due).await;
    assert_eq!(report.archived, 1, "{report:?}");
    let channel = bridge.fake_channel(run["channel_id"].as_str().unwrap());
    let parent = bridge.fake_channel(channel.parent_id.as_deref().unwrap());
    assert_eq!(parent.name, "Archived Runs");
    let (_, got) = bridge.get(&format!("/v1/runs/{run_id}")).await;
    assert_eq!(got["status"], "archived");
}

#[tokio::test]
async fn state_survives_a_restart() {
    let bridge = Bridge::start().await;
    let (_, run) = bridge.create_run(&run_body("t", "a")).await;
    let restarted = bridge.restart().await;
    let (status, again) = restarted.create_run(&run_body("t", "a")).await;
    assert_eq!(status, 200);
    assert_eq!(again["run_id"], run["run_id"]);
    assert_eq!(again["channel_id"], run["channel_id"]);
    let (_, list) = restarted.get("/v1/runs?status=active").await;
    assert_eq!(list["runs"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn the_51st_run_overflows_into_agent_runs_2() {
    let bridge = Bridge::start().await;
    let mut last = Value::Null;
    for i in 0..51 {
        let (status, run) = bridge.create_run(&run_body("t", &format!("s{i}"))).await;
        assert!(status == 201, "run {i}: {status} {run}");
        last = run;
    }
    let channel = bridge.fake_channel(last["channel_id"].as_str().unwrap());
    let parent = bridge.fake_channel(channel.parent_id.as_deref().unwrap());
    assert_eq!(parent.name, "Agent Runs 2");
}

#[tokio::test]
async fn the_api_refuses_missing_or_wrong_tokens_with_json() {
    let bridge = Bridge::start().await;
    let http = reqwest::Client::new();
    for token in [None, Some("wrong")] {
        let mut req = http
            .post(format!("{}/v1/runs", bridge.base))
            .json(&run_body("t", "a"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["code"], "unauthorized");
        assert!(v["error"]["message"].is_string());
    }
    assert!(!API_TOKEN.is_empty() && !BOT_TOKEN.is_empty());
}

#[tokio::test]
async fn get_responses_carry_no_secret() {
    let bridge = Bridge::start().await;
    let (_, run) = bridge.create_run(&run_body("t", "a")).await;
    let run_id = run["run_id"].as_str().unwrap();
    let webhook_token = run["webhook_url"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    let secret = run["input_secret"].as_str().unwrap().to_owned();
    for path in [
        format!("/v1/runs/{run_id}"),
        "/v1/runs".to_owned(),
        "/v1/runs?status=active".to_owned(),
    ] {
        let (status, body) = bridge.get(&path).await;
        assert_eq!(status, 200);
        let text = body.to_string();
        assert!(text.contains(run_id), "{text}");
        assert!(
            !text.contains(&webhook_token),
            "webhook token in {path}: {text}"
        );
        assert!(!text.contains(&secret), "input secret in {path}: {text}");
    }
    bridge.assert_no_secret_leaked().await;
}

/// A POST as another holder of `API_TOKEN`, with `run_token` or none.
async fn post_as(
    bridge: &Bridge,
    path: &str,
    run_token: Option<&str>,
    body: &Value,
) -> (u16, String) {
    let mut req = reqwest::Client::new()
        .post(format!("{}{path}", bridge.base))
        .bearer_auth(API_TOKEN)
        .json(body);
    if let Some(t) = run_token {
        req = req.header(bot_bridge::access::RUN_TOKEN_HEADER, t);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test]
async fn another_caller_cannot_take_over_a_run() {
    let bridge = Bridge::start().await;
    let mut body = run_body("T-9", "victim");
    body["input_url"] = json!("http://127.0.0.1:8081");
    let (status, mine) = bridge.create_run(&body).await;
    assert_eq!(status, 201, "{mine}");
    let run_id = mine["run_id"].as_str().unwrap();
    let webhook = mine["webhook_url"].as_str().unwrap();
    let secret = mine["input_secret"].as_str().unwrap();
    let mut takeover = body.clone();
    takeover["input_url"] = json!("http://127.0.0.1:47777");
    for token in [None, Some("intruder-token-0123456789abcdefghij")] {
        for (path, body) in [
            ("/v1/runs".to_owned(), &body),
            ("/v1/runs".to_owned(), &takeover),
            (format!("/v1/runs/{run_id}/complete"), &json!({})),
        ] {
            let (status, text) = post_as(&bridge, &path, token, body).await;
            assert_eq!(status, 403, "{path} {token:?}: {text}");
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["error"]["code"], "forbidden", "{text}");
            assert!(
                !text.contains(webhook) && !text.contains(secret),
                "secrets handed to another caller: {text}"
            );
        }
    }
    // The owner still gets its run, at its original input address.
    let (status, again) = bridge.create_run(&body).await;
    assert_eq!(status, 200, "{again}");
    let (_, view) = bridge.get(&format!("/v1/runs/{run_id}")).await;
    assert_eq!(view["input_url"], "http://127.0.0.1:8081");
    assert_eq!(view["status"], "active");
}

#[tokio::test]
async fn input_urls_that_could_reach_elsewhere_are_refused() {
    let bridge = Bridge::start().await;
    for (url, problem) in [
        ("http://127.0.0.1:47777/?confirm=yes&x=/v1/input", "query"),
        ("http://user:pw@127.0.0.1:8081", "credentials"),
        ("http://169.254.169.254", "not allowed"),
        ("http://127.0.0.1:47777/internal/admin/delete", "path"),
        ("http://127.0.0.1:8081#frag", "fragment"),
        ("file:///etc/passwd", "http"),
    ] {
        let mut body = run_body("T-10", "u");
        body["input_url"] = json!(url);
        let (status, v) = bridge.create_run(&body).await;
        assert_eq!(status, 400, "{url}: {v}");
        let message = v["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains(problem), "{url}: {message}");
        assert!(!message.contains("pw"), "credentials echoed: {message}");
    }
    assert!(
        bridge.fake_channels().iter().all(|c| c.kind != 0),
        "a run was created"
    );
}
