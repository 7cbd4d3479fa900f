//! Ingest promises, checked against the real watcher binary following a live
//! transcript in a temp dir (console sink: what it prints is what it read).

// Scenarios fail fast on anything unexpected; that is the point of a test.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use e2e::transcript::{self, SESSION};
use e2e::{append_chunked, count, eventually, started_ops_addr, Proc};

const DEADLINE: Duration = Duration::from_secs(20);

fn console_watcher(extra: &[(&str, String)], state: &Path) -> Proc {
    let mut env = vec![
        ("OPS_ADDR", "127.0.0.1:0".to_string()),
        ("STATE_DIR", state.display().to_string()),
        ("POLL_INTERVAL_MS", "50".to_string()),
    ];
    env.extend(extra.iter().cloned());
    Proc::start("watcher", &[], &env)
}

/// Waits until every marker `{prefix}-{i:04}` of `range` has been printed.
async fn wait_printed(w: &Proc, prefix: &str, range: std::ops::Range<usize>) {
    eventually(&format!("{prefix} {range:?} printed"), DEADLINE, || {
        let out = w.stdout().join("\n");
        let r = range.clone();
        async move {
            r.clone()
                .all(|i| out.contains(&format!("{prefix}-{i:04}")))
                .then_some(())
        }
    })
    .await;
}

/// Each marker printed exactly once, and in file order.
fn assert_once_in_order(w: &Proc, prefix: &str, range: std::ops::Range<usize>) {
    let out = w.stdout().join("\n");
    let mut last = 0;
    for i in range {
        let m = format!("{prefix}-{i:04}");
        assert_eq!(count(&out, &m), 1, "{m} printed once:\n{out}");
        let at = out.find(&m).unwrap_or(0);
        assert!(at >= last, "{m} out of order:\n{out}");
        last = at;
    }
}

#[tokio::test]
async fn chunked_appends_split_lines_and_utf8_yet_every_record_prints_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.jsonl");
    std::fs::write(&file, "").unwrap();
    let w = console_watcher(
        &[("TRANSCRIPT_PATH", file.display().to_string())],
        &dir.path().join("state"),
    );
    started_ops_addr(&w).await;
    // Chunks of 1..=7 bytes cut through every line and most multi-byte chars.
    append_chunked(
        &file,
        transcript::prompts("chunk", 0..120).as_bytes(),
        7,
        42,
    );
    wait_printed(&w, "chunk", 0..120).await;
    assert_once_in_order(&w, "chunk", 0..120);
}

#[tokio::test]
async fn waits_for_the_session_file_then_follows_a_new_session_after_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let projects = dir.path().join("projects");
    std::fs::create_dir_all(&projects).unwrap();
    let w = console_watcher(
        &[
            ("CLAUDE_PROJECTS_DIR", projects.display().to_string()),
            ("WORKSPACE_PATH", "/work/my app.v2".to_string()),
        ],
        &dir.path().join("state"),
    );
    let ops = started_ops_addr(&w).await;
    let ready = reqwest::get(format!("http://{ops}/readyz")).await.unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    assert!(ready.text().await.unwrap().contains("no transcript yet"));

    // The CLI creates the project directory and the file on first append.
    let project = projects.join("-work-my-app-v2");
    std::fs::create_dir_all(&project).unwrap();
    let first = project.join(format!("{SESSION}.jsonl"));
    append_chunked(&first, transcript::prompts("one", 0..10).as_bytes(), 64, 1);
    wait_printed(&w, "one", 0..10).await;
    eventually("ready once following", DEADLINE, || async {
        let r = reqwest::get(format!("http://{ops}/readyz")).await.ok()?;
        (r.status().as_u16() == 200).then_some(())
    })
    .await;

    // `/clear`: the old file gets its last lines, then a new file starts.
    append_chunked(&first, transcript::prompts("one", 10..15).as_bytes(), 64, 2);
    let second = project.join("0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d.jsonl");
    append_chunked(&second, transcript::prompts("two", 0..10).as_bytes(), 64, 3);
    wait_printed(&w, "two", 0..10).await;
    wait_printed(&w, "one", 10..15).await;
    assert_once_in_order(&w, "one", 0..15);
    assert_once_in_order(&w, "two", 0..10);
    let out = w.stdout().join("\n");
    assert!(
        out.find("one-0014") < out.find("two-0000"),
        "the old session is finished before the new one:\n{out}"
    );
}

#[tokio::test]
async fn truncation_and_replacement_lose_nothing_and_repeat_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.jsonl");
    std::fs::write(&file, transcript::prompts("rot", 0..10)).unwrap();
    let w = console_watcher(
        &[
            ("TRANSCRIPT_PATH", file.display().to_string()),
            ("START_AT", "beginning".to_string()),
        ],
        &dir.path().join("state"),
    );
    wait_printed(&w, "rot", 0..10).await;

    // Truncate + write back (a record removed): the file shrinks.
    std::fs::write(&file, transcript::prompts("rot", 5..12)).unwrap();
    wait_printed(&w, "rot", 10..12).await;

    // Replace by rename (new inode) holding old and new records.
    let tmp = dir.path().join("s.jsonl.tmp");
    std::fs::write(&tmp, transcript::prompts("rot", 0..20)).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    wait_printed(&w, "rot", 12..20).await;
    // …and keep appending to the new file.
    append_chunked(&file, transcript::prompts("rot", 20..25).as_bytes(), 16, 9);
    wait_printed(&w, "rot", 20..25).await;
    assert_once_in_order(&w, "rot", 0..25);
}

#[tokio::test]
async fn start_at_end_skips_history_and_restart_resumes_from_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let file = dir.path().join("s.jsonl");
    std::fs::write(&file, transcript::prompts("old", 0..5)).unwrap();
    let env = [("TRANSCRIPT_PATH", file.display().to_string())];
    let w = console_watcher(&env, &state);
    started_ops_addr(&w).await;
    eventually("transcript followed", DEADLINE, || async {
        let out = w.output();
        out.contains("following transcript").then_some(())
    })
    .await;
    append_chunked(&file, transcript::prompts("new", 0..5).as_bytes(), 32, 5);
    wait_printed(&w, "new", 0..5).await;
    let out = w.stdout().join("\n");
    assert_eq!(count(&out, "old-"), 0, "START_AT=end skips history:\n{out}");
    w.sigterm();
    let mut w = w;
    let status = w.wait_exit(Duration::from_secs(5)).await;
    assert!(status.is_some_and(|s| s.success()), "{}", w.output());

    // Offline appends are picked up from the checkpoint, the rest not repeated.
    append_chunked(&file, transcript::prompts("more", 0..5).as_bytes(), 32, 6);
    let w2 = console_watcher(&env, &state);
    wait_printed(&w2, "more", 0..5).await;
    let out = w2.stdout().join("\n");
    assert_eq!(
        count(&out, "new-"),
        0,
        "acknowledged records are not repeated:\n{out}"
    );
    assert_once_in_order(&w2, "more", 0..5);
}
