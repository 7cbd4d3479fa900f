//! Nothing lost when the pod ends (issue 18), both halves together: a real
//! watcher streaming through a real bot-bridge into fake-discord with
//! Discord's limits on (six times faster). A session's last 600 events are
//! written just before SIGTERM; the watcher reads them to the end, sends what
//! its budget allows, hands the rest to bot-bridge and exits within
//! `SHUTDOWN_TIMEOUT` (the default, 5 s); bot-bridge delivers the rest at the
//! channel's pace and completes the run. With bot-bridge down at shutdown the
//! rest is kept in `STATE_DIR/backlog.jsonl` and a restarted watcher delivers it.

// Scenarios fail fast on anything unexpected; that is the point of a test.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use e2e::{eventually, transcript, BridgeProc, FakeDiscordProc, Limits, Proc};
use serde_json::Value;
use tokio::time::Instant;

const DEADLINE: Duration = Duration::from_secs(60);
const API_TOKEN: &str = "api-token-SECRET-18e2";
const BOT_TOKEN: &str = "bot-token-SECRET-18b0";
/// Discord's limits, six times faster: 30 messages per 10 s per channel.
const SCALE: u32 = 6;
/// The watcher's `SHUTDOWN_TIMEOUT`: its default.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// Events written in the session's last seconds.
const EVENTS: usize = 600;

fn scaled() -> Limits {
    Limits::DISCORD.scaled(SCALE)
}

fn paced_env() -> Vec<(&'static str, String)> {
    let l = scaled();
    vec![
        ("CHANNEL_MESSAGES_PER_MINUTE", l.channel_limit.to_string()),
        (
            "CHANNEL_WINDOW",
            format!("{}ms", l.channel_window.as_millis()),
        ),
        ("RUST_LOG", "info".to_string()),
    ]
}

/// bot-bridge pacing at the scaled channel limit, its store in `db`.
async fn start_bridge(discord: &FakeDiscordProc, db: &Path) -> BridgeProc {
    let mut env = e2e::bridge_env(API_TOKEN, BOT_TOKEN, &discord.api_base, db);
    env.push(("RETENTION", "1h".to_string()));
    env.extend(paced_env());
    BridgeProc::start(&env).await
}

async fn run_status(bridge: &BridgeProc, run_id: &str) -> String {
    let v = bridge.run(run_id, API_TOKEN).await;
    v["status"].as_str().unwrap_or_default().to_owned()
}

/// A watcher following `dir/s.jsonl` through `bridge`, its state in
/// `dir/state`; returns it once provisioned, with its run id.
async fn start_watcher(dir: &Path, bridge: &BridgeProc) -> (Proc, String) {
    let mut env = e2e::watcher_env(&dir.join("s.jsonl"), &dir.join("state"));
    env.extend([
        ("BRIDGE_URL", format!("http://{}", bridge.api)),
        ("BRIDGE_TOKEN", API_TOKEN.to_string()),
        ("TASK_ID", "handoff-e2e".to_string()),
        ("ATTEMPT", "1".to_string()),
        ("SHORT_ID", "h18".to_string()),
        (
            "SHUTDOWN_TIMEOUT",
            format!("{}s", SHUTDOWN_TIMEOUT.as_secs()),
        ),
    ]);
    env.extend(paced_env());
    let watcher = Proc::start("watcher", &[], &env);
    let provisioned = watcher
        .wait_log("run provisioned by bot-bridge", DEADLINE)
        .await;
    let run_id = provisioned["run_id"].as_str().unwrap().to_owned();
    (watcher, run_id)
}

/// The `ev-NNNN` markers in the messages fake-discord accepted, in arrival
/// order (one per event), and the messages' texts.
async fn arrived(fake: &FakeDiscordProc) -> (Vec<u64>, Vec<String>) {
    let texts: Vec<String> = fake
        .messages()
        .await
        .iter()
        .map(|m| m["payload"].to_string())
        .collect();
    let mut markers = Vec::new();
    for t in &texts {
        let mut rest = t.as_str();
        while let Some(at) = rest.find("ev-") {
            let digits = rest.get(at + 3..at + 7).unwrap_or_default();
            if digits.len() == 4 && digits.bytes().all(|b| b.is_ascii_digit()) {
                markers.push(digits.parse().unwrap());
            }
            rest = &rest[at + 3..];
        }
    }
    (markers, texts)
}

/// Every marker of `0..EVENTS` arrived; the arrival order and texts.
async fn wait_all(fake: &FakeDiscordProc, timeout: Duration) -> (Vec<u64>, Vec<String>) {
    eventually(&format!("{EVENTS} events delivered"), timeout, || async {
        let (markers, texts) = arrived(fake).await;
        let mut seen = markers.clone();
        seen.sort_unstable();
        seen.dedup();
        (seen.len() == EVENTS).then_some((markers, texts))
    })
    .await
}

fn assert_one_at_a_time(stats: &Value) {
    for (hook, max) in stats["max_concurrent_executes_by_webhook"]
        .as_object()
        .unwrap()
    {
        assert!(max.as_u64().unwrap() <= 1, "{hook}: {max} in flight");
    }
}

/// Starts fake-discord (limits on), bot-bridge and a watcher whose session
/// has one prompt delivered; writes the session's last `EVENTS` events.
async fn busy_session(dir: &Path) -> (FakeDiscordProc, BridgeProc, Proc, String) {
    let args = scaled().fake_args("sliding");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let fake = FakeDiscordProc::start(&args).await;
    let bridge = start_bridge(&fake, &dir.join("bridge.db")).await;
    std::fs::write(dir.join("s.jsonl"), transcript::prompts("pre", 0..1)).unwrap();
    let (watcher, run_id) = start_watcher(dir, &bridge).await;
    fake.wait_markers("", "pre", 0..1, DEADLINE).await;
    // The session's last seconds: 600 events in one go, just before the end.
    e2e::append_chunked(
        &dir.join("s.jsonl"),
        transcript::prompts("ev", 0..EVENTS).as_bytes(),
        64 * 1024,
        18,
    );
    (fake, bridge, watcher, run_id)
}

/// SIGTERM right after the last events: every one of them and a summary
/// counting them reach the channel, in order, at most one repeated; the
/// watcher exits within its budget and the run completes at bot-bridge.
#[tokio::test]
async fn the_last_events_reach_the_channel_after_the_pod_ends() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, bridge, mut watcher, run_id) = busy_session(dir.path()).await;
    let signal = Instant::now();
    watcher.sigterm();
    let status = watcher
        .wait_exit(SHUTDOWN_TIMEOUT + Duration::from_secs(5))
        .await
        .expect("the watcher exits");
    let took = signal.elapsed();
    assert!(status.success(), "{status:?}\n{}", watcher.output());
    assert!(
        took <= SHUTDOWN_TIMEOUT + Duration::from_millis(500),
        "exited after {took:?}\n{}",
        watcher.output()
    );
    let output = watcher.output();
    assert!(
        output.contains("handed the rest and the summary to bot-bridge"),
        "{output}"
    );

    let (markers, _) = wait_all(&fake, Duration::from_secs(120)).await;
    let mut deduped = markers.clone();
    deduped.dedup();
    let want: Vec<u64> = (0..EVENTS as u64).collect();
    assert_eq!(deduped, want, "lost or out of order");
    let repeats = markers.len() - deduped.len();
    assert!(
        repeats <= 10,
        "at most one message (10 embeds) repeated: {repeats}"
    );
    // The summary, last, counts every prompt (the first one and the 600).
    eventually("the summary arrived", DEADLINE, || async {
        let (_, texts) = arrived(&fake).await;
        texts
            .last()
            .filter(|t| t.contains("Run complete"))
            .map(|_| ())
    })
    .await;
    let (_, texts_now) = arrived(&fake).await;
    let summary = texts_now.last().unwrap();
    assert!(summary.contains("601 prompts"), "{summary}");
    assert_eq!(
        texts_now
            .iter()
            .filter(|t| t.contains("Run complete"))
            .count(),
        1,
        "one summary"
    );
    eventually("the run completed at bot-bridge", DEADLINE, || async {
        (run_status(&bridge, &run_id).await == "completed").then_some(())
    })
    .await;
    let stats = fake.stats().await;
    assert_one_at_a_time(&stats);
    let messages = fake.messages().await;
    let at = |m: &Value| m["received_at_mono_ms"].as_u64().unwrap_or(0);
    let first = messages.first().map_or(0, at);
    let last = messages.last().map_or(0, at);
    let theoretical = scaled().theoretical(messages.len());
    eprintln!(
        "exit {took:?} (budget {SHUTDOWN_TIMEOUT:?}); {} events in {} messages, {repeats} markers repeated; channel got all in {:.1}s, theoretical {:.1}s; 429s {}",
        deduped.len(),
        messages.len(),
        last.saturating_sub(first) as f64 / 1000.0,
        theoretical.as_secs_f64(),
        stats["rate_limited_total"],
    );
    // bot-bridge continued the channel's pace from the watcher's last sends
    // (before: 3-5 channel 429s right after the hand-off).
    assert_eq!(stats["rate_limited_total"], 0, "{stats}");
    drop(bridge);
}

/// bot-bridge unreachable at shutdown: the rest is kept in
/// `STATE_DIR/backlog.jsonl`, and a watcher restarted on the same state
/// (bot-bridge up again) delivers it.
#[tokio::test]
async fn with_bot_bridge_down_the_rest_is_kept_and_delivered_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, mut bridge, mut watcher, _run_id) = busy_session(dir.path()).await;
    bridge.proc.kill9();
    let signal = Instant::now();
    watcher.sigterm();
    let status = watcher
        .wait_exit(SHUTDOWN_TIMEOUT + Duration::from_secs(5))
        .await
        .expect("the watcher exits");
    let took = signal.elapsed();
    assert!(status.success(), "{status:?}\n{}", watcher.output());
    assert!(
        took <= SHUTDOWN_TIMEOUT + Duration::from_millis(500),
        "{took:?}"
    );
    let backlog = dir.path().join("state/backlog.jsonl");
    let kept = std::fs::read_to_string(&backlog).unwrap_or_default();
    let kept_lines = kept.lines().count();
    assert!(kept_lines > 0, "nothing kept\n{}", watcher.output());

    let bridge = start_bridge(&fake, &dir.path().join("bridge.db")).await;
    let (restarted, _) = start_watcher(dir.path(), &bridge).await;
    let (markers, _) = wait_all(&fake, Duration::from_secs(120)).await;
    let mut sorted = markers.clone();
    sorted.sort_unstable();
    let mut unique = sorted.clone();
    unique.dedup();
    assert_eq!(unique.len(), EVENTS, "lost");
    assert!(
        sorted.len() - unique.len() <= 10,
        "at most one message repeated: {}",
        sorted.len() - unique.len()
    );
    eventually(
        "the kept backlog delivered and removed",
        DEADLINE,
        || async {
            std::fs::read_to_string(&backlog)
                .map_or(true, |s| s.trim().is_empty())
                .then_some(())
        },
    )
    .await;
    assert_one_at_a_time(&fake.stats().await);
    eprintln!(
        "bridge down: exit {took:?}; {kept_lines} messages kept, all {EVENTS} events delivered after the restart"
    );
    drop(restarted);
}
