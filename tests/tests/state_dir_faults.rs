//! A full or read-only `STATE_DIR` shows in metrics and `/healthz`, and loses
//! nothing: a dead-letter that cannot be written is not counted as one and is
//! retried until it is; a checkpoint that cannot be written is counted.

// Scenarios fail fast on anything unexpected; that is the point of a test.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use e2e::{
    eventually, metric_value, run_to_end, started_ops_addr, transcript, FakeDiscordProc, Proc,
};
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(40);

async fn scrape(ops: &str) -> Option<(String, Value)> {
    let m = e2e::try_get_text(&format!("http://{ops}/metrics")).await?;
    let h: Value = reqwest::get(format!("http://{ops}/healthz"))
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    Some((m, h))
}

#[tokio::test]
async fn a_dead_letter_that_cannot_be_written_is_counted_as_an_error_and_kept_trying() {
    let fake = FakeDiscordProc::start(&[]).await;
    fake.inject(json!({"kind": "not_found", "count": 1000}))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let file = dir.path().join("s.jsonl");
    std::fs::write(&file, "").unwrap();
    let env = e2e::webhook_watcher_env(&fake, &file, &state);
    let w = Proc::start("watcher", &[], &env);
    let ops = started_ops_addr(&w).await;
    // The DLQ directory becomes unusable (root ignores modes: a file in its place).
    let dlq = state.join("dlq");
    eventually("the DLQ directory exists", DEADLINE, || async {
        dlq.is_dir().then_some(())
    })
    .await;
    std::fs::remove_dir(&dlq).unwrap();
    std::fs::write(&dlq, b"not a directory").unwrap();
    std::fs::write(&file, transcript::prompts("kept", 0..1)).unwrap();

    let (m, h) = eventually("the DLQ write failure is visible", DEADLINE, || async {
        let (m, h) = scrape(&ops).await?;
        let errors = metric_value(&m, "watcher_state_write_errors_total{file=\"dlq\"}")?;
        (errors >= 1.0).then_some((m, h))
    })
    .await;
    assert_eq!(
        metric_value(&m, "watcher_dlq_messages_total"),
        Some(0.0),
        "nothing was written to the DLQ, so nothing is counted there"
    );
    assert_eq!(h["checks"]["state"]["status"], "degraded", "{h}");
    assert!(
        h["checks"]["state"]["detail"]
            .as_str()
            .unwrap()
            .contains("dlq"),
        "{h}"
    );

    // The volume recovers: the retried write lands, and is counted then.
    std::fs::remove_file(&dlq).unwrap();
    std::fs::create_dir(&dlq).unwrap();
    eventually(
        "the entry is dead-lettered once written",
        DEADLINE,
        || async {
            let (m, h) = scrape(&ops).await?;
            let written = metric_value(&m, "watcher_dlq_messages_total")?;
            (written >= 1.0 && h["checks"]["state"]["status"] == "ok").then_some(())
        },
    )
    .await;
    w.sigterm();
    let (code, list, err) = run_to_end("watcher", &["dlq", "list"], &env);
    assert_eq!(code, 0, "{err}");
    assert!(list.contains("webhook_gone"), "{list}");
    let stored: String = std::fs::read_dir(&dlq)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert!(
        stored.contains("kept-0000"),
        "the message is in the DLQ:\n{stored}"
    );
}

#[tokio::test]
async fn a_checkpoint_that_cannot_be_written_is_counted_and_shown() {
    let fake = FakeDiscordProc::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    // The temp file of the atomic replace cannot be created.
    let blocker = state.join(".checkpoint.json.tmp");
    std::fs::create_dir(&blocker).unwrap();
    let file = dir.path().join("s.jsonl");
    std::fs::write(&file, transcript::prompts("cp", 0..3)).unwrap();
    let w = Proc::start(
        "watcher",
        &[],
        &e2e::webhook_watcher_env(&fake, &file, &state),
    );
    let ops = started_ops_addr(&w).await;
    let h = eventually("the checkpoint failure is visible", DEADLINE, || async {
        let (m, h) = scrape(&ops).await?;
        let errors = metric_value(&m, "watcher_state_write_errors_total{file=\"checkpoint\"}")?;
        (errors >= 1.0).then_some(h)
    })
    .await;
    assert_eq!(h["checks"]["state"]["status"], "degraded", "{h}");
    assert!(
        h["checks"]["state"]["detail"]
            .as_str()
            .unwrap()
            .contains("checkpoint"),
        "{h}"
    );
    std::fs::remove_dir(&blocker).unwrap();
    std::fs::write(&file, transcript::prompts("cp", 0..4)).unwrap();
    eventually("the state is writable again", DEADLINE, || async {
        let (_, h) = scrape(&ops).await?;
        (h["checks"]["state"]["status"] == "ok" && state.join("checkpoint.json").exists())
            .then_some(())
    })
    .await;
    w.sigterm();
}
