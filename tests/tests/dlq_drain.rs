//! issue 18: the DLQ drains itself. A Discord outage longer than
//! `DELIVERY_MAX_ELAPSED` dead-letters what was being sent; once Discord is
//! back, every entry reaches the channel, in order, without anyone running
//! `watcher dlq replay`.

// Scenarios fail fast on anything unexpected; that is the point of a test.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use e2e::{
    append_chunked, count, eventually, metric_value, run_to_end, started_ops_addr, transcript,
    try_get_text, FakeDiscordProc, Proc,
};
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(90);
const LIMITS_ON: &[&str] = &["--clock-tolerance-ms", "0"];
const LIMITS_OFF: &[&str] = &["--no-rate-limits"];

/// Issue 18's case: a 3-minute outage (the fake ends it by itself), limits on.
#[tokio::test]
async fn dead_letters_of_a_3_minute_outage_arrive_after_recovery_without_a_command_limits_on() {
    dead_letters_of_an_outage_arrive_after_recovery_without_a_command(
        LIMITS_ON,
        Some(Duration::from_secs(180)),
    )
    .await;
}

/// A short outage (cleared once everything is dead-lettered), limits off.
#[tokio::test]
async fn dead_letters_of_an_outage_arrive_after_recovery_without_a_command_limits_off() {
    dead_letters_of_an_outage_arrive_after_recovery_without_a_command(LIMITS_OFF, None).await;
}

/// `outage`: how long Discord answers 503 from the first request; `None`:
/// until every line is dead-lettered.
async fn dead_letters_of_an_outage_arrive_after_recovery_without_a_command(
    fake_args: &[&str],
    outage: Option<Duration>,
) {
    const LINES: usize = 12;
    let fake = FakeDiscordProc::start(fake_args).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let file = dir.path().join("s.jsonl");
    std::fs::write(&file, "").unwrap();
    let mut env = e2e::webhook_watcher_env(&fake, &file, &state);
    env.push(("DELIVERY_MAX_ELAPSED", "2s".to_string()));
    env.push(("BATCH_SIZE", "2".to_string()));
    // Discord is down: every request fails with a 503 until the faults clear.
    match outage {
        Some(d) => {
            fake.inject(json!({"kind": "status", "status": 503, "for_ms": u64::try_from(d.as_millis()).unwrap()}))
                .await
        }
        None => {
            fake.inject(json!({"kind": "status", "status": 503, "count": 100_000}))
                .await
        }
    }
    let began = tokio::time::Instant::now();
    let mut w = Proc::start("watcher", &[], &env);
    let ops = started_ops_addr(&w).await;
    append_chunked(
        &file,
        transcript::prompts("dlq", 0..LINES).as_bytes(),
        512,
        7,
    );
    let metric = |name: &'static str| {
        let ops = ops.clone();
        async move {
            let m = try_get_text(&format!("http://{ops}/metrics")).await?;
            metric_value(&m, name)
        }
    };
    // The outage outlasts DELIVERY_MAX_ELAPSED: everything read is dead-lettered.
    eventually("every line dead-lettered", DEADLINE, || async {
        let m = try_get_text(&format!("http://{ops}/metrics")).await?;
        let read = metric_value(&m, "watcher_events_processed_total{kind=\"user_prompt\"}")?;
        let pending = metric_value(&m, "watcher_oldest_pending_age_seconds")?;
        let dead = metric_value(&m, "watcher_dlq_messages_total")?;
        (read >= LINES as f64 && pending == 0.0 && dead >= 2.0).then_some(())
    })
    .await;
    assert_eq!(metric("watcher_dlq_replayed_total").await, Some(0.0));
    let (code, list, err) = run_to_end("watcher", &["dlq", "list"], &env);
    assert_eq!(code, 0, "{err}");
    assert!(list.contains("retries_exhausted"), "{list}\n{err}");

    // Discord comes back; nobody runs a command.
    let recovered_within = match outage {
        Some(d) => {
            assert!(began.elapsed() < d, "dead-lettered only after the outage");
            d + DEADLINE
        }
        None => {
            fake.clear_faults().await;
            DEADLINE
        }
    };
    let text = fake
        .wait_markers("", "dlq", 0..LINES, recovered_within)
        .await;
    eprintln!(
        "outage {outage:?}: every dead letter delivered {:?} after the outage began",
        began.elapsed()
    );
    for i in 0..LINES {
        assert_eq!(count(&text, &format!("dlq-{i:04}")), 1, "dlq-{i:04} once");
    }
    // In order: each marker after the one before it.
    let positions: Vec<usize> = (0..LINES)
        .map(|i| text.find(&format!("dlq-{i:04}")).unwrap())
        .collect();
    assert!(
        positions.windows(2).all(|p| p[0] < p[1]),
        "dead letters keep their order: {positions:?}"
    );
    eventually("the DLQ empty and counted", DEADLINE, || async {
        let replayed = metric("watcher_dlq_replayed_total").await?;
        let (code, list, _) = run_to_end("watcher", &["dlq", "list"], &env);
        (code == 0 && replayed >= 1.0 && !list.contains("retries_exhausted")).then_some(())
    })
    .await;
    assert_eq!(
        metric("watcher_dlq_messages_total").await,
        metric("watcher_dlq_replayed_total").await,
        "every dead letter was redelivered"
    );
    w.sigterm();
    assert!(w.wait_exit(Duration::from_secs(10)).await.is_some());
}
