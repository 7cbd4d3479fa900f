//! Delivery promises: the real watcher posting to the real fake-discord, which
//! enforces Discord's limits and rate limits and can inject faults.

// Scenarios fail fast on anything unexpected; that is the point of a test.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e::transcript::{self, SESSION};
use e2e::{
    append_chunked, count, eventually, get_text, metric_value, run_to_end, started_ops_addr,
    try_get_text, FakeDiscordProc, Proc, WebhookWatcher,
};
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(40);

/// fake-discord enforcing Discord's limits strictly (no clock tolerance): the
/// fault scenarios run against it as well as against a lenient fake, since a
/// limiter bug hides where nothing is limited.
const LIMITS_ON: &[&str] = &["--clock-tolerance-ms", "0"];
/// fake-discord enforcing no limit (headers still sent).
const LIMITS_OFF: &[&str] = &["--no-rate-limits"];

/// The run every watcher here reports as.
fn run_ids() -> [(&'static str, String); 3] {
    [
        ("TASK_ID", "task-42".to_string()),
        ("ATTEMPT", "1".to_string()),
        ("RUN_ID", "run-e2e".to_string()),
    ]
}

fn webhook_env(
    fake: &FakeDiscordProc,
    transcript: &Path,
    state: &Path,
) -> Vec<(&'static str, String)> {
    let mut env = e2e::webhook_watcher_env(fake, transcript, state);
    env.extend(run_ids());
    env
}

async fn wait_delivered(
    fake: &FakeDiscordProc,
    prefix: &str,
    range: std::ops::Range<usize>,
) -> String {
    fake.wait_markers("", prefix, range, DEADLINE).await
}

/// Every series of each metric in `series` (a name, or a name with labels)
/// is present in the scrape and 0.
fn assert_zero(metrics: &str, series: &[&str], why: &str) {
    for name in series {
        let lines: Vec<&str> = metrics.lines().filter(|l| l.starts_with(name)).collect();
        assert!(!lines.is_empty(), "{name} missing from the scrape");
        for line in lines {
            assert!(line.ends_with(" 0"), "{why}: {line}");
        }
    }
}

fn rate_limited_total(stats: &Value) -> u64 {
    stats["rate_limited"]
        .as_object()
        .map_or(0, |m| m.values().filter_map(Value::as_u64).sum())
}

/// Validates one recorded payload with twilight-validate, an oracle
/// independent of agentmon's own checks.
fn twilight_check(payload: &Value) {
    let embeds: Vec<twilight_model::channel::message::Embed> = payload
        .get("embeds")
        .map(|e| {
            // Discord fills in `type: "rich"` on its side; twilight's model wants it.
            let mut e = e.clone();
            for embed in e.as_array_mut().into_iter().flatten() {
                embed["type"] = json!("rich");
            }
            serde_json::from_value(e).expect("embeds parse as Discord embeds")
        })
        .unwrap_or_default();
    twilight_validate::message::embeds(&embeds)
        .unwrap_or_else(|e| panic!("twilight rejects embeds: {e}\n{payload}"));
    for embed in &embeds {
        twilight_validate::embed::embed(embed)
            .unwrap_or_else(|e| panic!("twilight rejects an embed: {e}\n{payload}"));
    }
    if let Some(content) = payload.get("content").and_then(Value::as_str) {
        twilight_validate::message::content(content).unwrap_or_else(|e| panic!("{e}"));
    }
    assert_eq!(
        payload["allowed_mentions"],
        json!({"parse": []}),
        "mentions disabled: {payload}"
    );
}

fn example_session() -> PathBuf {
    e2e::workspace_root().join("examples/session.jsonl")
}

fn summary_index(messages: &[Value]) -> Option<usize> {
    messages.iter().rposition(|m| {
        m["payload"]
            .to_string()
            .to_lowercase()
            .contains("run complete")
    })
}

#[tokio::test]
async fn a_session_arrives_complete_in_order_header_first_summary_last() {
    let fake = FakeDiscordProc::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.jsonl");
    let mut body = std::fs::read_to_string(example_session()).unwrap();
    body.push_str(&transcript::prompts("order", 0..25));
    std::fs::write(&file, &body).unwrap();
    let mut w = Proc::start(
        "watcher",
        &[],
        &webhook_env(&fake, &file, &dir.path().join("state")),
    );
    started_ops_addr(&w).await;
    let text = wait_delivered(&fake, "order", 0..25).await;
    let mut last = 0;
    for i in 0..25 {
        let at = text.find(&format!("order-{i:04}")).unwrap();
        assert!(at >= last, "order-{i:04} out of order");
        last = at;
        assert_eq!(
            count(&text, &format!("order-{i:04}")),
            1,
            "order-{i:04} once"
        );
    }
    w.sigterm();
    let status = w.wait_exit(Duration::from_secs(6)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "exit 0 within the budget:\n{}",
        w.output()
    );

    let messages = fake.messages().await;
    let first = messages[0]["payload"].to_string();
    assert!(
        first.contains("task-42") && first.contains("run-e2e"),
        "header first: {first}"
    );
    let summary = summary_index(&messages).expect("a summary was posted");
    assert_eq!(
        summary,
        messages.len() - 1,
        "the summary is the last message"
    );
    assert_eq!(
        messages
            .iter()
            .filter(|m| m["payload"]
                .to_string()
                .to_lowercase()
                .contains("run complete"))
            .count(),
        1,
        "exactly one summary"
    );
    let s = messages[summary]["payload"].to_string();
    // examples/session.jsonl's usage, counted once per API response.
    assert!(s.contains("Bash"), "tools by name in the summary: {s}");
    for m in &messages {
        twilight_check(&m["payload"]);
    }
    let stats = fake.stats().await;
    assert_eq!(
        rate_limited_total(&stats),
        0,
        "no 429 in steady state: {stats}"
    );
    assert_eq!(stats["missing_allowed_mentions"], 0, "{stats}");

    // A restart after completion never posts a second summary.
    let mut again = Proc::start(
        "watcher",
        &[],
        &webhook_env(&fake, &file, &dir.path().join("state")),
    );
    started_ops_addr(&again).await;
    again.sigterm();
    assert!(again.wait_exit(Duration::from_secs(6)).await.is_some());
    let after = fake.messages().await;
    assert_eq!(
        after.len(),
        messages.len(),
        "nothing re-posted after completion"
    );

    let token = fake
        .webhook_url
        .as_deref()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    for out in [w.output(), again.output()] {
        assert!(
            !out.contains(&token),
            "the webhook token leaked into the logs"
        );
    }
}

#[tokio::test]
async fn server_errors_slow_answers_and_resets_still_deliver_everything_limits_on() {
    server_errors_slow_answers_and_resets_still_deliver_everything(LIMITS_ON).await;
}

#[tokio::test]
async fn server_errors_slow_answers_and_resets_still_deliver_everything_limits_off() {
    server_errors_slow_answers_and_resets_still_deliver_everything(LIMITS_OFF).await;
}

async fn server_errors_slow_answers_and_resets_still_deliver_everything(fake_args: &[&str]) {
    let fake = FakeDiscordProc::start(fake_args).await;
    fake.inject(json!({"kind": "status", "status": 503, "count": 3}))
        .await;
    fake.inject(json!({"kind": "reset", "count": 2})).await;
    fake.inject(json!({"kind": "slow", "delay_ms": 1500, "count": 2}))
        .await;
    fake.inject(json!({"kind": "status", "status": 502, "count": 2}))
        .await;
    let WebhookWatcher {
        dir: _dir,
        file,
        proc: _w,
        ops,
    } = WebhookWatcher::start(&fake, &run_ids()).await;
    for chunk in 0..4 {
        append_chunked(
            &file,
            transcript::prompts("flaky", chunk * 10..chunk * 10 + 10).as_bytes(),
            256,
            chunk as u64,
        );
    }
    wait_delivered(&fake, "flaky", 0..40).await;
    let stats = fake.stats().await;
    let served: u64 = stats["faults_served"]
        .as_object()
        .map_or(0, |m| m.values().filter_map(Value::as_u64).sum());
    assert_eq!(served, 9, "every injected fault was hit: {stats}");
    let metrics = get_text(&format!("http://{ops}/metrics")).await.1;
    // 3 × 503 and 2 × 502 are retried as server errors, 2 resets as network.
    let retries = |reason: &str| {
        metric_value(
            &metrics,
            &format!("watcher_webhook_retries_total{{reason=\"{reason}\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert_eq!(retries("server_error"), 5.0, "{metrics}");
    assert_eq!(retries("network"), 2.0, "{metrics}");
    assert_zero(
        &metrics,
        &["watcher_dlq_messages_total"],
        "transient faults never dead-letter",
    );
}

#[tokio::test]
async fn webhook_404_dead_letters_and_replay_delivers_after_recovery_limits_on() {
    webhook_404_dead_letters_and_replay_delivers_after_recovery(LIMITS_ON).await;
}

#[tokio::test]
async fn webhook_404_dead_letters_and_replay_delivers_after_recovery_limits_off() {
    webhook_404_dead_letters_and_replay_delivers_after_recovery(LIMITS_OFF).await;
}

async fn webhook_404_dead_letters_and_replay_delivers_after_recovery(fake_args: &[&str]) {
    let fake = FakeDiscordProc::start(fake_args).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let file = dir.path().join("s.jsonl");
    std::fs::write(&file, "").unwrap();
    let env = webhook_env(&fake, &file, &state);
    fake.inject(json!({"kind": "not_found", "count": 1000}))
        .await;
    let mut w = Proc::start("watcher", &[], &env);
    let ops = started_ops_addr(&w).await;
    append_chunked(&file, transcript::prompts("lost", 0..12).as_bytes(), 512, 1);
    // Every line read and the webhook seen gone: the series exist from the
    // first scrape, so their values are what counts.
    eventually("all read, dead-lettered", DEADLINE, || async {
        let m = try_get_text(&format!("http://{ops}/metrics")).await?;
        let gone = metric_value(
            &m,
            "watcher_delivery_failures_total{reason=\"webhook_gone\"}",
        )?;
        let prompts = metric_value(&m, "watcher_events_processed_total{kind=\"user_prompt\"}")?;
        (gone >= 1.0 && prompts >= 12.0).then_some(())
    })
    .await;
    w.sigterm();
    assert!(w.wait_exit(Duration::from_secs(6)).await.is_some());

    let (code, list, err) = run_to_end("watcher", &["dlq", "list"], &env);
    assert_eq!(code, 0, "{err}");
    assert!(
        list.contains("webhook_gone"),
        "dlq list names the reason:\n{list}\n{err}"
    );

    // Discord is back: replay delivers what was dead-lettered, in order.
    fake.clear_faults().await;
    let (code, _, err) = run_to_end("watcher", &["dlq", "replay"], &env);
    assert_eq!(code, 0, "replay succeeds: {err}");
    let text = wait_delivered(&fake, "lost", 0..12).await;
    for i in 0..12 {
        assert_eq!(count(&text, &format!("lost-{i:04}")), 1);
    }
    let (code, list, err) = run_to_end("watcher", &["dlq", "list"], &env);
    assert_eq!(code, 0);
    assert!(
        !list.contains("webhook_gone"),
        "replayed entries are removed:\n{list}\n{err}"
    );
}

#[tokio::test]
async fn kill9_during_delivery_restart_delivers_the_rest_duplicating_at_most_one_batch_limits_on() {
    kill9_during_delivery_restart_delivers_the_rest_duplicating_at_most_one_batch(LIMITS_ON).await;
}

#[tokio::test]
async fn kill9_during_delivery_restart_delivers_the_rest_duplicating_at_most_one_batch_limits_off()
{
    kill9_during_delivery_restart_delivers_the_rest_duplicating_at_most_one_batch(LIMITS_OFF).await;
}

async fn kill9_during_delivery_restart_delivers_the_rest_duplicating_at_most_one_batch(
    fake_args: &[&str],
) {
    let fake = FakeDiscordProc::start(fake_args).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let file = dir.path().join("s.jsonl");
    std::fs::write(&file, transcript::prompts("crash", 0..80)).unwrap();
    let env = webhook_env(&fake, &file, &state);
    let mut w = Proc::start("watcher", &[], &env);
    eventually("some delivered", DEADLINE, || async {
        (fake.messages().await.len() >= 3).then_some(())
    })
    .await;
    w.kill9();
    let w2 = Proc::start("watcher", &[], &env);
    let text = wait_delivered(&fake, "crash", 0..80).await;
    let duplicated = (0..80)
        .filter(|i| count(&text, &format!("crash-{i:04}")) > 1)
        .count();
    assert!(
        duplicated <= 10,
        "at most the in-flight batch (10 embeds) repeats, got {duplicated}"
    );
    assert!((0..80).all(|i| count(&text, &format!("crash-{i:04}")) >= 1));
    drop(w2);
}

#[tokio::test]
async fn a_file_rewritten_shorter_while_stopped_is_reread_without_reposting() {
    // Limits off on both sides: 700 records are 70 messages, which Discord's
    // 30 a minute would stretch over minutes without testing anything more.
    let fake = FakeDiscordProc::start(&["--no-rate-limits"]).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.jsonl");
    let mut env = webhook_env(&fake, &file, &dir.path().join("state"));
    env.push(("CHANNEL_MESSAGES_PER_MINUTE", "100000".to_string()));
    // More records than the 512 uuids a checkpoint used to remember: all of
    // them must be known after the restart, not only the newest.
    const N: usize = 700;
    std::fs::write(&file, transcript::prompts("rw", 0..N)).unwrap();
    let mut w = Proc::start("watcher", &[], &env);
    wait_delivered(&fake, "rw", 0..N).await;
    w.sigterm();
    assert!(w.wait_exit(DEADLINE).await.is_some());

    // Rewritten in place (same inode, same first bytes), shorter than the
    // checkpointed offset (the CLI removing a record writes the rest back):
    // the watcher must read it again from the top.
    let rewritten = transcript::prompts("rw", 0..600) + &transcript::prompts("fresh", 0..2);
    assert!(rewritten.len() < transcript::prompts("rw", 0..N).len());
    std::fs::write(&file, rewritten).unwrap();
    let w2 = Proc::start("watcher", &[], &env);
    let text = wait_delivered(&fake, "fresh", 0..2).await;
    for i in 0..N {
        assert_eq!(
            count(&text, &format!("rw-{i:04}")),
            1,
            "rw-{i:04} posted once, not again after the rewrite"
        );
    }
    drop(w2);
}

#[tokio::test]
async fn shared_sample_transcripts_render_to_payloads_discord_accepts() {
    let Some(dir) = e2e::shared_transcripts() else {
        eprintln!("SKIP: ../shared/transcripts absent (present beside CI)");
        return;
    };
    let mut samples: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    samples.sort();
    assert!(!samples.is_empty());
    let fake = FakeDiscordProc::start(&["--no-rate-limits"]).await;
    let webhook = format!("{}?wait=true", fake.webhook_url.clone().unwrap());
    let http = reqwest::Client::new();
    for sample in samples {
        // `render --format json` prints exactly the payloads the sink would post.
        let (code, out, err) = run_to_end(
            "watcher",
            &["render", "--format", "json", sample.to_str().unwrap()],
            &[("PARITY_MODE", "true".to_string())],
        );
        assert_eq!(code, 0, "{}: {err}", sample.display());
        let payloads: Vec<Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let embeds: Vec<&Value> = payloads
            .iter()
            .flat_map(|p| p["embeds"].as_array().into_iter().flatten())
            .collect();
        assert!(
            embeds.len() >= 3,
            "{}: header, events, summary",
            sample.display()
        );
        let first = embeds[0].to_string().to_lowercase();
        let last = embeds[embeds.len() - 1].to_string().to_lowercase();
        assert!(
            first.contains("run started"),
            "{}: header first: {first}",
            sample.display()
        );
        assert!(
            last.contains("run complete"),
            "{}: summary last: {last}",
            sample.display()
        );
        for p in &payloads {
            twilight_check(p);
            // …and the strict fake, which validates like Discord, accepts them.
            let r = http.post(&webhook).json(p).send().await.unwrap();
            let status = r.status().as_u16();
            assert_eq!(
                status,
                200,
                "{}: {}\n{p}",
                sample.display(),
                r.text().await.unwrap_or_default()
            );
        }
    }
    let _ = SESSION;
}

#[tokio::test]
async fn two_large_tool_outputs_go_in_separate_messages_under_the_upload_limit() {
    // Each output is attached whole and fits Discord's 10 MiB upload limit
    // alone; together they do not, and the fake answers 413 to such a message.
    const OUTPUT_BYTES: usize = 6 << 20;
    let fake = FakeDiscordProc::start(&[]).await;
    // The first message (the header) is held, so that everything after it is
    // rendered and waiting when the next message is cut.
    fake.inject(json!({"kind": "slow", "delay_ms": 3000, "count": 1}))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.jsonl");
    std::fs::write(&file, "").unwrap();
    let mut env = webhook_env(&fake, &file, &dir.path().join("state"));
    // Room for both records at once, so that they meet in the batcher.
    env.push(("QUEUE_MAX_BYTES", "64MiB".to_string()));
    let w = Proc::start("watcher", &[], &env);
    let ops = started_ops_addr(&w).await;
    let row = "0123456789abcdef ".repeat(4) + "\n";
    let output: String = row.repeat(OUTPUT_BYTES / row.len());
    let mut lines = String::new();
    for i in 0..2 {
        let tool = format!("toolu_big{i}");
        lines += &transcript::bash(
            &format!("big-call-{i}"),
            SESSION,
            &format!("msg_big{i}"),
            &tool,
            "cat big.log",
        );
        lines +=
            &transcript::tool_result(&format!("big-result-{i}"), SESSION, &tool, &output, false);
    }
    lines += &transcript::prompts("after-big", 0..1);
    std::fs::write(&file, lines).unwrap();
    wait_delivered(&fake, "after-big", 0..1).await;

    let messages = fake.messages().await;
    let sizes: Vec<Vec<u64>> = messages
        .iter()
        .map(|m| {
            m["attachments"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a["size"].as_u64())
                .collect()
        })
        .filter(|s: &Vec<u64>| !s.is_empty())
        .collect();
    let big: Vec<u64> = sizes
        .iter()
        .flatten()
        .copied()
        .filter(|&n| n > (5 << 20))
        .collect();
    assert_eq!(big.len(), 2, "both outputs attached: {sizes:?}");
    let whole = output.trim_end().len() as u64;
    assert!(
        big.iter().all(|&n| n == whole),
        "each attached whole ({whole} bytes): {sizes:?}"
    );
    for per_message in &sizes {
        assert!(
            per_message.iter().sum::<u64>() <= 10 << 20,
            "one message over the upload limit: {sizes:?}"
        );
    }
    let metrics = get_text(&format!("http://{ops}/metrics")).await.1;
    assert_zero(
        &metrics,
        &[
            "watcher_delivery_failures_total",
            "watcher_dlq_messages_total",
            "watcher_truncations_total{field=\"files\"}",
        ],
        "nothing failed, dead-lettered or dropped from a message",
    );
}

#[tokio::test]
async fn readiness_fails_while_discord_fails_and_recovers_after_the_next_success_limits_on() {
    readiness_fails_while_discord_fails_and_recovers_after_the_next_success(LIMITS_ON).await;
}

#[tokio::test]
async fn readiness_fails_while_discord_fails_and_recovers_after_the_next_success_limits_off() {
    readiness_fails_while_discord_fails_and_recovers_after_the_next_success(LIMITS_OFF).await;
}

async fn readiness_fails_while_discord_fails_and_recovers_after_the_next_success(
    fake_args: &[&str],
) {
    let fake = FakeDiscordProc::start(fake_args).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.jsonl");
    std::fs::write(&file, "").unwrap();
    let mut env = webhook_env(&fake, &file, &dir.path().join("state"));
    env.push(("SINK_UNHEALTHY_AFTER", "1s".to_string()));
    let w = Proc::start("watcher", &[], &env);
    let ops = started_ops_addr(&w).await;
    let readyz = || async { get_text(&format!("http://{ops}/readyz")).await };
    append_chunked(&file, transcript::prompts("ready", 0..2).as_bytes(), 512, 1);
    wait_delivered(&fake, "ready", 0..2).await;
    assert_eq!(readyz().await.0, 200);

    fake.inject(json!({"kind": "status", "status": 503, "count": 100_000}))
        .await;
    append_chunked(&file, transcript::prompts("ready", 2..4).as_bytes(), 512, 2);
    let body = eventually("not ready while Discord fails", DEADLINE, || async {
        let (code, body) = readyz().await;
        (code == 503).then_some(body)
    })
    .await;
    assert!(body.contains("no successful delivery"), "{body}");
    let live = reqwest::get(format!("http://{ops}/livez")).await.unwrap();
    assert_eq!(
        live.status().as_u16(),
        200,
        "an outage never fails liveness"
    );

    fake.clear_faults().await;
    wait_delivered(&fake, "ready", 2..4).await;
    eventually("ready again after a success", DEADLINE, || async {
        (readyz().await.0 == 200).then_some(())
    })
    .await;
}
