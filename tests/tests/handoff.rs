//! A watcher's hand-off is delivered by bot-bridge (issue 18): the real
//! bot-bridge binary against fake-discord with Discord's limits (scaled down
//! in time) on, and off. The hand-off is posted over HTTP as the watcher
//! would post it at shutdown.

// Scenarios fail fast on anything unexpected; that is the point of a test.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use e2e::{eventually, BridgeProc, FakeDiscordProc, Limits};
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(60);
const API_TOKEN: &str = "api-token-SECRET-4c1d";
const BOT_TOKEN: &str = "bot-token-SECRET-77e0";
const RUN_TOKEN_HEADER: &str = "x-agentmon-run-token";
/// Discord's limits, six times faster: 30 messages per 10 s per channel.
const SCALE: u32 = 6;

/// A run as its creator (the watcher) knows it.
struct Run {
    id: String,
    token: String,
    channel_id: String,
    /// `.../webhooks/{id}/{token}`: the token must never be logged.
    webhook_url: String,
}

/// bot-bridge pacing at the scaled channel limit (whether or not the fake
/// enforces it), its store in `db`, with `extra` settings.
async fn start_bridge_with(
    discord: &FakeDiscordProc,
    db: &Path,
    extra: &[(&'static str, String)],
) -> BridgeProc {
    let mut env = e2e::bridge_env(API_TOKEN, BOT_TOKEN, &discord.api_base, db);
    env.extend([
        ("RETENTION", "1h".to_string()),
        ("RUST_LOG", "info".to_string()),
    ]);
    let l = scaled();
    env.extend([
        ("CHANNEL_MESSAGES_PER_MINUTE", l.channel_limit.to_string()),
        (
            "CHANNEL_WINDOW",
            format!("{}ms", l.channel_window.as_millis()),
        ),
    ]);
    env.extend_from_slice(extra);
    BridgeProc::start(&env).await
}

async fn start_bridge(discord: &FakeDiscordProc, db: &Path) -> BridgeProc {
    start_bridge_with(discord, db, &[]).await
}

/// What these tests do with bot-bridge, on the harness's process.
trait HandoffApi {
    async fn create_run(&self, short_id: &str) -> Run;
    async fn create_run_with(&self, body: Value) -> Run;
    /// Posts a hand-off as the run's owner: status and body.
    async fn handoff(&self, run: &Run, body: &Value) -> (u16, Value);
    async fn status(&self, run: &Run) -> String;
    async fn wait_completed(&self, run: &Run, timeout: Duration);
    async fn metric(&self, series: &str) -> f64;
}

impl HandoffApi for BridgeProc {
    async fn create_run(&self, short_id: &str) -> Run {
        self.create_run_with(json!({"task_id": "handoff", "attempt": 1, "short_id": short_id}))
            .await
    }

    async fn create_run_with(&self, body: Value) -> Run {
        let v = self.post_run(API_TOKEN, &body).await;
        Run {
            id: v["run_id"].as_str().unwrap().to_owned(),
            token: v["run_token"].as_str().unwrap().to_owned(),
            channel_id: v["channel_id"].as_str().unwrap().to_owned(),
            webhook_url: v["webhook_url"].as_str().unwrap().to_owned(),
        }
    }

    async fn handoff(&self, run: &Run, body: &Value) -> (u16, Value) {
        let res = reqwest::Client::new()
            .post(format!("http://{}/v1/runs/{}/handoff", self.api, run.id))
            .bearer_auth(API_TOKEN)
            .header(RUN_TOKEN_HEADER, &run.token)
            .json(body)
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), res.json().await.unwrap())
    }

    async fn status(&self, run: &Run) -> String {
        let v = e2e::get_json_authed(
            &format!("http://{}/v1/runs/{}", self.api, run.id),
            API_TOKEN,
        )
        .await;
        v["status"].as_str().unwrap_or_default().to_owned()
    }

    async fn wait_completed(&self, run: &Run, timeout: Duration) {
        eventually("the run completed after its hand-off", timeout, || async {
            (self.status(run).await == "completed").then_some(())
        })
        .await;
    }

    async fn metric(&self, series: &str) -> f64 {
        let text = e2e::try_get_text(&format!("http://{}/metrics", self.ops))
            .await
            .unwrap_or_default();
        e2e::metric_value(&text, series).unwrap_or(-1.0)
    }
}

/// `messages` hand-off messages `from..from+n` with markers `ho-{seq:04}`.
fn messages(from: u64, n: u64) -> Vec<Value> {
    (from..from + n)
        .map(|seq| {
            json!({"seq": seq, "payload": {
                "embeds": [{"description": format!("ho-{seq:04}")}],
                "allowed_mentions": {"parse": []},
            }})
        })
        .collect()
}

/// The markers of the messages fake-discord accepted in `channel_id`, in
/// arrival order.
async fn arrived(fake: &FakeDiscordProc, channel_id: &str) -> Vec<u64> {
    fake.messages()
        .await
        .iter()
        .filter(|m| m["channel_id"] == channel_id)
        .filter_map(|m| {
            m["payload"]["embeds"][0]["description"]
                .as_str()?
                .strip_prefix("ho-")?
                .parse()
                .ok()
        })
        .collect()
}

async fn wait_arrived(fake: &FakeDiscordProc, channel_id: &str, n: usize, timeout: Duration) {
    eventually(
        &format!("{n} hand-off messages arrived"),
        timeout,
        || async { (arrived(fake, channel_id).await.len() >= n).then_some(()) },
    )
    .await;
}

/// Checks `seen` is `expected` in order, allowing at most `repeats` messages
/// to arrive twice in a row (a kill between Discord's answer and the mark).
fn assert_in_order(seen: &[u64], expected: &[u64], repeats: usize) {
    let mut deduped = seen.to_vec();
    deduped.dedup();
    assert_eq!(deduped, expected, "lost or out of order: {seen:?}");
    assert!(
        seen.len() - deduped.len() <= repeats,
        "{} repeated (at most {repeats}): {seen:?}",
        seen.len() - deduped.len()
    );
}

fn scaled() -> Limits {
    Limits::DISCORD.scaled(SCALE)
}

async fn fake_with(limits: Option<Limits>) -> FakeDiscordProc {
    match limits {
        Some(l) => {
            let args = l.fake_args("sliding");
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            FakeDiscordProc::start(&args).await
        }
        None => FakeDiscordProc::start(&["--no-rate-limits"]).await,
    }
}

/// 60 messages and `complete`: delivered in order at the channel's pace, the
/// run completed after the last; repeats of the hand-off add nothing.
async fn handoff_delivered_in_order_then_completed(limits: Option<Limits>) {
    let fake = fake_with(limits).await;
    let dir = tempfile::tempdir().unwrap();
    let bridge = start_bridge(&fake, &dir.path().join("bridge.db")).await;
    let run = bridge.create_run("order").await;
    let body = json!({
        "messages": messages(1, 60),
        "complete": {"summary": {"events": 60}},
    });
    let (status, v) = bridge.handoff(&run, &body).await;
    assert_eq!(status, 202, "{v}");
    assert_eq!(v["accepted"], 60, "{v}");
    // The watcher's retry (its answer was lost) adds nothing.
    let (status, v) = bridge.handoff(&run, &body).await;
    assert_eq!(status, 202, "{v}");
    assert_eq!(
        (v["accepted"].as_u64(), v["duplicates"].as_u64()),
        (Some(0), Some(60)),
        "{v}"
    );

    let windows = scaled().channel_window * 3;
    bridge.wait_completed(&run, DEADLINE + windows).await;
    let seen = arrived(&fake, &run.channel_id).await;
    let expected: Vec<u64> = (1..=60).collect();
    assert_in_order(&seen, &expected, 0);

    let stats = fake.stats().await;
    let l = scaled();
    {
        // Paced, not pushed through 429s: the second 30 waited for the window.
        assert_eq!(stats["rate_limited_total"], 0, "{stats}");
        let msgs = fake.messages().await;
        let at = |m: &Value| m["received_at_mono_ms"].as_u64().unwrap();
        let ours: Vec<&Value> = msgs
            .iter()
            .filter(|m| m["channel_id"] == run.channel_id.as_str())
            .collect();
        let took = Duration::from_millis(at(ours[59]) - at(ours[0]));
        // The 31st message waits a whole channel window after the first,
        // whether or not the fake enforces it (bot-bridge paces itself).
        let least = if limits.is_some() {
            l.theoretical(60)
        } else {
            l.channel_window
        };
        assert!(
            took >= least,
            "60 messages in {took:?}, faster than the channel's pace allows ({least:?})"
        );
        eprintln!("60 hand-off messages in {took:?} (at least {least:?})");
    }
    for (hook, max) in stats["max_concurrent_executes_by_webhook"]
        .as_object()
        .unwrap()
    {
        assert!(
            max.as_u64().unwrap() <= 1,
            "webhook {hook}: {max} in flight"
        );
    }
    // Completed: the webhook is revoked; a retry is answered 200, a new
    // message refused.
    let (status, v) = bridge.handoff(&run, &body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["accepted"], 0, "{v}");
    let late = json!({"messages": messages(61, 1)});
    let (status, v) = bridge.handoff(&run, &late).await;
    assert_eq!(status, 409, "{v}");
    assert_eq!(arrived(&fake, &run.channel_id).await.len(), 60);

    for (series, want) in [
        ("bridge_handoff_messages_total{outcome=\"accepted\"}", 60.0),
        (
            "bridge_handoff_messages_total{outcome=\"duplicate\"}",
            120.0,
        ),
        ("bridge_handoff_messages_total{outcome=\"delivered\"}", 60.0),
        ("bridge_handoff_messages_total{outcome=\"rejected\"}", 0.0),
    ] {
        assert_eq!(bridge.metric(series).await, want, "{series}");
    }
    eventually("the pending gauge back at 0", DEADLINE, || async {
        (bridge.metric("bridge_handoff_pending_messages").await == 0.0).then_some(())
    })
    .await;
    let summary = e2e::get_json_authed(
        &format!("http://{}/v1/runs/{}", bridge.api, run.id),
        API_TOKEN,
    )
    .await;
    assert_eq!(summary["summary"]["events"], 60, "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handoff_is_delivered_in_order_at_the_channel_pace_then_completes() {
    handoff_delivered_in_order_then_completed(Some(scaled())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handoff_is_delivered_in_order_then_completes_without_rate_limits() {
    handoff_delivered_in_order_then_completed(None).await;
}

/// bot-bridge is killed (-9) mid-drain and restarted on the same store:
/// nothing lost, nothing out of order, at most one message repeated.
async fn kill9_mid_drain_loses_nothing(limits: Option<Limits>) {
    let fake = fake_with(limits).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bridge.db");
    let mut bridge = start_bridge(&fake, &db).await;
    let run = bridge.create_run("kill").await;
    let body = json!({"messages": messages(1, 60), "complete": {"summary": {"events": 60}}});
    let (status, v) = bridge.handoff(&run, &body).await;
    assert_eq!(status, 202, "{v}");
    wait_arrived(&fake, &run.channel_id, 12, DEADLINE).await;
    bridge.proc.kill9();
    bridge.proc.wait_exit(DEADLINE).await;
    let before = arrived(&fake, &run.channel_id).await.len();
    assert!(before < 60, "the drain ended before the kill ({before})");

    let bridge = start_bridge(&fake, &db).await;
    let windows = scaled().channel_window * 4;
    bridge.wait_completed(&run, DEADLINE + windows).await;
    let seen = arrived(&fake, &run.channel_id).await;
    let expected: Vec<u64> = (1..=60).collect();
    assert_in_order(&seen, &expected, 1);
    eprintln!("killed after {before}, {} arrived in all", seen.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bot_bridge_killed_mid_drain_loses_nothing() {
    kill9_mid_drain_loses_nothing(Some(scaled())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bot_bridge_killed_mid_drain_loses_nothing_without_rate_limits() {
    kill9_mid_drain_loses_nothing(None).await;
}

/// Every request held 150 ms at Discord, and a second hand-off (a later
/// batch) arriving mid-drain: still one request in flight per webhook, and
/// the second batch after the first.
async fn one_request_in_flight_per_webhook(limits: Option<Limits>) {
    let fake = fake_with(limits).await;
    let dir = tempfile::tempdir().unwrap();
    let bridge = start_bridge(&fake, &dir.path().join("bridge.db")).await;
    let a = bridge.create_run("a").await;
    let b = bridge.create_run("b").await;
    fake.inject(json!({"kind": "slow", "delay_ms": 150, "for_ms": 600_000}))
        .await;
    for run in [&a, &b] {
        let (status, v) = bridge
            .handoff(run, &json!({"messages": messages(1, 10)}))
            .await;
        assert_eq!(status, 202, "{v}");
    }
    wait_arrived(&fake, &a.channel_id, 3, DEADLINE).await;
    let (status, v) = bridge
        .handoff(&a, &json!({"messages": messages(11, 10), "complete": {}}))
        .await;
    assert_eq!(status, 202, "{v}");
    let (status, v) = bridge.handoff(&b, &json!({"complete": {}})).await;
    assert_eq!(status, 202, "{v}");
    assert_eq!(v["accepted"], 0, "{v}");
    bridge.wait_completed(&a, DEADLINE).await;
    bridge.wait_completed(&b, DEADLINE).await;
    assert_in_order(
        &arrived(&fake, &a.channel_id).await,
        &(1..=20).collect::<Vec<_>>(),
        0,
    );
    assert_in_order(
        &arrived(&fake, &b.channel_id).await,
        &(1..=10).collect::<Vec<_>>(),
        0,
    );
    let stats = fake.stats().await;
    let most = stats["max_concurrent_executes_by_webhook"]
        .as_object()
        .unwrap();
    assert!(most.len() >= 2, "{stats}");
    for (hook, max) in most {
        assert_eq!(max.as_u64(), Some(1), "webhook {hook}: {max} in flight");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_two_requests_in_flight_on_one_webhook() {
    one_request_in_flight_per_webhook(Some(scaled())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_two_requests_in_flight_on_one_webhook_without_rate_limits() {
    one_request_in_flight_per_webhook(None).await;
}

/// A message Discord refuses (400: an embed title past 256 characters) is
/// dead-lettered and counted; the rest still arrive and the run completes.
async fn rejected_message_is_dead_lettered(limits: Option<Limits>) {
    let fake = fake_with(limits).await;
    let dir = tempfile::tempdir().unwrap();
    let bridge = start_bridge(&fake, &dir.path().join("bridge.db")).await;
    let run = bridge.create_run("dlq").await;
    let mut msgs = messages(1, 10);
    msgs[4]["payload"]["embeds"][0]["title"] = json!("t".repeat(300));
    let (status, v) = bridge
        .handoff(&run, &json!({"messages": msgs, "complete": {}}))
        .await;
    assert_eq!(status, 202, "{v}");
    bridge.wait_completed(&run, DEADLINE).await;
    assert_in_order(
        &arrived(&fake, &run.channel_id).await,
        &[1, 2, 3, 4, 6, 7, 8, 9, 10],
        0,
    );
    assert_eq!(
        bridge
            .metric("bridge_handoff_messages_total{outcome=\"rejected\"}")
            .await,
        1.0
    );
    assert_eq!(
        bridge
            .metric("bridge_handoff_messages_total{outcome=\"delivered\"}")
            .await,
        9.0
    );
    let log = bridge.proc.output();
    assert!(log.contains("dead-lettered"), "{log}");
    let webhook_token = run.webhook_url.rsplit('/').next().unwrap();
    assert!(webhook_token.len() > 10, "{}", run.webhook_url);
    for secret in [BOT_TOKEN, run.token.as_str(), webhook_token] {
        assert!(!log.contains(secret), "a secret in the log:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_message_is_dead_lettered_and_the_drain_goes_on() {
    rejected_message_is_dead_lettered(Some(scaled())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_message_is_dead_lettered_without_rate_limits() {
    rejected_message_is_dead_lettered(None).await;
}

/// Bad hand-offs are refused before anything is stored, naming the field;
/// another caller's hand-off is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_handoffs_are_refused_naming_the_field() {
    let fake = fake_with(None).await;
    let dir = tempfile::tempdir().unwrap();
    let bridge = start_bridge(&fake, &dir.path().join("bridge.db")).await;
    let run = bridge.create_run("bad").await;
    let mut twice = messages(1, 3);
    twice[2]["seq"] = json!(2);
    let cases = [
        (json!({"messages": twice}), 400, "seq 2"),
        (
            json!({"messages": [{"seq": 1, "payload": "text"}]}),
            400,
            "payload",
        ),
        (
            json!({"messages": [{"seq": 1, "payload": {"embeds": vec![json!({"description": "x"}); 11]}}]}),
            400,
            "embeds",
        ),
        (json!({"messages": messages(1, 1001)}), 413, "1000"),
        (json!({"mesages": []}), 400, "mesages"),
    ];
    for (body, want, names) in cases {
        let (status, v) = bridge.handoff(&run, &body).await;
        assert_eq!(status, want, "{v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(names), "{message} should name {names}");
    }
    let res = reqwest::Client::new()
        .post(format!("http://{}/v1/runs/{}/handoff", bridge.api, run.id))
        .bearer_auth(API_TOKEN)
        .header(RUN_TOKEN_HEADER, "another-callers-token-0123456789abcdef")
        .json(&json!({"messages": messages(1, 1)}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let missing = Run {
        id: "00000000-0000-0000-0000-000000000000".into(),
        token: run.token.clone(),
        channel_id: String::new(),
        webhook_url: String::new(),
    };
    let (status, _) = bridge.handoff(&missing, &json!({"messages": []})).await;
    assert_eq!(status, 404);
    assert_eq!(
        bridge
            .metric("bridge_handoff_messages_total{outcome=\"accepted\"}")
            .await,
        0.0
    );
}

/// The watcher heartbeated, handed off and exited: its silence is the normal
/// end of a pod, not a reason to finalise the run under its hand-off. The
/// run completes with the hand-off's summary once everything arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_watcher_after_its_handoff_is_not_finalised_by_the_reconciler() {
    let fake = fake_with(Some(scaled())).await;
    let dir = tempfile::tempdir().unwrap();
    let bridge = start_bridge_with(
        &fake,
        &dir.path().join("bridge.db"),
        &[("RUN_SILENCE_TIMEOUT", "2s".to_string())],
    )
    .await;
    let run = bridge
        .create_run_with(json!({
            "task_id": "handoff", "attempt": 1, "short_id": "silent", "heartbeats": true,
        }))
        .await;
    // 45 messages need two channel windows (10 s each): far past the silence.
    let body = json!({"messages": messages(1, 45), "complete": {"summary": {"events": 45}}});
    let (status, v) = bridge.handoff(&run, &body).await;
    assert_eq!(status, 202, "{v}");
    bridge
        .wait_completed(&run, DEADLINE + scaled().channel_window * 3)
        .await;
    assert_in_order(
        &arrived(&fake, &run.channel_id).await,
        &(1..=45).collect::<Vec<_>>(),
        0,
    );
    let v = e2e::get_json_authed(
        &format!("http://{}/v1/runs/{}", bridge.api, run.id),
        API_TOKEN,
    )
    .await;
    assert_eq!(v["summary"], json!({"events": 45}), "{v}");
    assert_eq!(
        bridge
            .metric("bridge_runs_finalized_total{reason=\"silent\"}")
            .await,
        0.0
    );
}

/// The run's webhook was deleted in Discord before the drain: the messages
/// stay pending (counted in the gauges), the stall is logged once, and
/// bot-bridge does not hammer Discord with 404s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_webhook_keeps_the_handoff_pending_without_spinning() {
    let fake = fake_with(None).await;
    let dir = tempfile::tempdir().unwrap();
    let bridge = start_bridge(&fake, &dir.path().join("bridge.db")).await;
    let run = bridge.create_run("gone").await;
    let mut parts = run.webhook_url.rsplit('/');
    let (_, webhook_id) = (parts.next(), parts.next().unwrap().to_owned());
    fake.inject(json!({"kind": "delete_webhook", "id": webhook_id}))
        .await;
    let body = json!({"messages": messages(1, 5), "complete": {}});
    let (status, v) = bridge.handoff(&run, &body).await;
    assert_eq!(status, 202, "{v}");
    bridge
        .proc
        .wait_log(
            "hand-off stalled: the run's webhook is gone; its messages stay pending",
            DEADLINE,
        )
        .await;
    // Several drainer scans later (every 2 s), the backlog is still there
    // and has aged; the run was tried once.
    eventually("the backlog aged 5 s", DEADLINE, || async {
        (bridge
            .metric("bridge_handoff_oldest_pending_age_seconds")
            .await
            >= 5.0)
            .then_some(())
    })
    .await;
    assert_eq!(bridge.metric("bridge_handoff_pending_messages").await, 5.0);
    assert_eq!(bridge.status(&run).await, "active");
    let stats = fake.stats().await;
    assert_eq!(stats["not_found"], 1, "{stats}");
    assert_eq!(
        e2e::count(&bridge.proc.output(), "hand-off stalled"),
        1,
        "logged once"
    );
}

/// Thread mode: a hand-off lands in the run's thread (not the parent
/// channel), in order, and the run's own webhook is revoked at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thread_mode_handoff_lands_in_the_runs_thread() {
    let fake = fake_with(Some(scaled())).await;
    let parent = fake
        .admin_post("channels", json!({"name": "agent-runs", "type": 0}))
        .await;
    let parent_id = parent["id"].as_str().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let bridge = start_bridge_with(
        &fake,
        &dir.path().join("bridge.db"),
        &[
            ("RUN_CONTAINER", "thread".to_string()),
            ("THREAD_PARENT_CHANNEL_ID", parent_id.clone()),
        ],
    )
    .await;
    let run = bridge.create_run("thread").await;
    assert_ne!(run.channel_id, parent_id);
    let body = json!({"messages": messages(1, 12), "complete": {}});
    let (status, v) = bridge.handoff(&run, &body).await;
    assert_eq!(status, 202, "{v}");
    bridge.wait_completed(&run, DEADLINE).await;
    let in_thread: Vec<u64> = fake
        .messages()
        .await
        .iter()
        .filter(|m| m["thread_id"] == run.channel_id.as_str())
        .filter_map(|m| {
            m["payload"]["embeds"][0]["description"]
                .as_str()?
                .strip_prefix("ho-")?
                .parse()
                .ok()
        })
        .collect();
    assert_in_order(&in_thread, &(1..=12).collect::<Vec<_>>(), 0);
    assert_eq!(
        fake.messages().await.len(),
        12,
        "nothing in the parent itself"
    );
    let stats = fake.stats().await;
    // The run's own webhook (not the fake's start-up one) is revoked.
    assert_eq!(
        stats["rest_requests"]["DELETE /webhooks/{webhook_id}"], 1,
        "{stats}"
    );
}
