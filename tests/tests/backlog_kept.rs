//! issue 18 without bot-bridge: what a shutdown cannot deliver in its budget
//! is kept in `STATE_DIR/backlog.jsonl`, and a watcher started on the same
//! state delivers it first. Nothing is lost, at most one message repeats.

// Scenarios fail fast on anything unexpected; that is the point of a test.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tokio::time::Instant;

use e2e::{
    count, eventually, metric_value, started_ops_addr, transcript, try_get_text, FakeDiscordProc,
    Proc,
};
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(60);
const LIMITS_ON: &[&str] = &["--clock-tolerance-ms", "0"];
const LIMITS_OFF: &[&str] = &["--no-rate-limits"];

#[tokio::test]
async fn a_static_webhook_keeps_the_backlog_and_a_restart_delivers_it_first_limits_on() {
    a_static_webhook_keeps_the_backlog_and_a_restart_delivers_it_first(LIMITS_ON).await;
}

#[tokio::test]
async fn a_static_webhook_keeps_the_backlog_and_a_restart_delivers_it_first_limits_off() {
    a_static_webhook_keeps_the_backlog_and_a_restart_delivers_it_first(LIMITS_OFF).await;
}

async fn a_static_webhook_keeps_the_backlog_and_a_restart_delivers_it_first(fake_args: &[&str]) {
    const LINES: usize = 60;
    let fake = FakeDiscordProc::start(fake_args).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let file = dir.path().join("s.jsonl");
    std::fs::write(&file, "").unwrap();
    let mut env = e2e::webhook_watcher_env(&fake, &file, &state);
    env.push(("SHUTDOWN_TIMEOUT", "3s".to_string()));
    env.push(("BATCH_SIZE", "2".to_string()));
    // A slow Discord: a busy end cannot drain in the budget.
    fake.inject(json!({"kind": "slow", "delay_ms": 700, "count": 100_000}))
        .await;
    let mut w = Proc::start("watcher", &[], &env);
    let ops = started_ops_addr(&w).await;
    std::fs::write(&file, transcript::prompts("kept", 0..LINES)).unwrap();
    eventually("every line read and sending", DEADLINE, || async {
        let m = try_get_text(&format!("http://{ops}/metrics")).await?;
        let read = metric_value(&m, "watcher_events_processed_total{kind=\"user_prompt\"}")?;
        let sent = metric_value(&m, "watcher_messages_sent_total")?;
        (read >= LINES as f64 && sent >= 1.0).then_some(())
    })
    .await;
    let signal = Instant::now();
    w.sigterm();
    let status = w.wait_exit(Duration::from_secs(10)).await.unwrap();
    assert!(status.success(), "{}", w.output());
    assert!(
        signal.elapsed() <= Duration::from_millis(3500),
        "within the budget: {:?}",
        signal.elapsed()
    );
    assert!(
        w.output().contains("kept in STATE_DIR"),
        "one log line says where the rest went:\n{}",
        w.output()
    );
    let backlog = std::fs::read_to_string(state.join("backlog.jsonl")).unwrap();
    assert!(backlog.lines().count() >= 1, "{backlog}");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(state.join("backlog.jsonl"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    // The same state, Discord fast again: the backlog goes first.
    fake.clear_faults().await;
    let mut again = Proc::start("watcher", &[], &env);
    let text = fake.wait_markers("", "kept", 0..LINES, DEADLINE).await;
    let repeated: usize = (0..LINES)
        .map(|i| count(&text, &format!("kept-{i:04}")).saturating_sub(1))
        .sum();
    assert!(
        repeated <= 2,
        "at most one message (two lines) repeated: {repeated}"
    );
    assert_eq!(count(&text, "Run complete"), 1, "one summary");
    eventually("backlog.jsonl gone", DEADLINE, || async {
        (!state.join("backlog.jsonl").exists()).then_some(())
    })
    .await;
    again.sigterm();
    assert!(again.wait_exit(Duration::from_secs(10)).await.is_some());
}
