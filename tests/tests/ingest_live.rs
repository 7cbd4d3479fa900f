//! Ingest promises, checked against the real watcher binary following a live
//! transcript in a temp dir (console sink: what it prints is what it read).

// Scenarios fail fast on anything unexpected; that is the point of a test.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use e2e::transcript::{self, SESSION};
use e2e::{
    append_chunked, count, eventually, get_text, metric_value, run_to_end, started_ops_addr,
    watcher_env, FakeDiscordProc, Proc,
};
use serde_json::json;

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

// ------------------------------------------------------- transcript fidelity

/// A line of a workflow agent's file: an assistant text with its usage.
fn agent_text(uuid: &str, agent: &str, msg_id: &str, text: &str) -> String {
    let mut v: serde_json::Value =
        serde_json::from_str(&transcript::assistant(uuid, SESSION, msg_id, text, 10, 5)).unwrap();
    v["isSidechain"] = json!(true);
    v["agentId"] = json!(agent);
    format!("{v}\n")
}

/// A teammate's message as agent teams deliver it: a `user` record.
fn teammate(uuid: &str, from: &str, text: &str) -> String {
    transcript::prompt(
        uuid,
        SESSION,
        &format!(
            "Another Claude session sent a message:\n<teammate-message teammate_id=\"{from}\" color=\"yellow\">\n{text}\n</teammate-message>"
        ),
    )
}

/// Steering input typed mid-turn, recorded (as several CLI versions do) only
/// as a `queue-operation` `remove` carrying the text.
fn steering(text: &str) -> String {
    format!(
        "{}\n",
        json!({"type": "queue-operation", "operation": "remove", "reason": "absorbed_mid_turn",
               "timestamp": "2026-11-30T10:00:05.000Z", "sessionId": SESSION, "content": text})
    )
}

fn append(path: &Path, text: &str) {
    append_chunked(path, text.as_bytes(), 4096, 1);
}

/// The run's summary embed among the delivered messages.
async fn summary_embed(fake: &FakeDiscordProc) -> serde_json::Value {
    eventually("the summary", DEADLINE, || async {
        fake.messages().await.iter().find_map(|m| {
            m["payload"]["embeds"]
                .as_array()?
                .iter()
                .find(|e| {
                    e["title"]
                        .as_str()
                        .is_some_and(|t| t.contains("Run complete"))
                })
                .cloned()
        })
    })
    .await
}

#[tokio::test]
async fn a_live_session_with_a_workflow_run_teammates_steering_and_an_unterminated_last_line() {
    // Discord's rate limits on.
    let fake = FakeDiscordProc::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(format!("{SESSION}.jsonl"));
    append(
        &file,
        &transcript::prompt("p0", SESSION, "go-0000 start the review"),
    );
    let mut env = watcher_env(&file, &dir.path().join("state"));
    env.push(("DISCORD_WEBHOOK_URL", fake.webhook_url.clone().unwrap()));
    env.push(("SHUTDOWN_TIMEOUT", "20s".into()));
    let mut w = Proc::start("watcher", &[], &env);
    let ops = started_ops_addr(&w).await;
    fake.wait_markers("", "go", 0..1, DEADLINE).await;

    // A workflow run writes its agents' files while the main file grows.
    let run = dir
        .path()
        .join(SESSION)
        .join("subagents/workflows/wf_e2e-01");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(
        run.join("agent-aa1.meta.json"),
        r#"{"label":"review parser","phase":"review","model":"sonnet"}"#,
    )
    .unwrap();
    append(
        &run.join("journal.jsonl"),
        "{\"type\":\"started\",\"label\":\"review parser\",\"phase\":\"review\"}\n",
    );
    for i in 0..6 {
        append(
            &run.join("agent-aa1.jsonl"),
            &agent_text(
                &format!("w{i}"),
                "aa1",
                &format!("msg_w{i}"),
                &format!("wf-{i:04} checked part {i}"),
            ),
        );
        append(
            &file,
            &transcript::assistant(
                &format!("m{i}"),
                SESSION,
                &format!("msg_m{i}"),
                &format!("main-{i:04} still working"),
                10,
                5,
            ),
        );
    }
    append(
        &file,
        &teammate("t1", "zl-reviewer", "tm-0000 findings: 2 bugs"),
    );
    append(&file, &steering("steer-0000 also run the linter"));
    // A record of the wrong shape carrying the uuid of the valid one after it.
    append(
        &file,
        &format!(
            "{}\n",
            json!({"type": "user", "uuid": "dup", "sessionId": SESSION, "message": "dup-bad"})
        ),
    );
    append(
        &file,
        &transcript::prompt("dup", SESSION, "dup-0000 the real one"),
    );
    fake.wait_markers("", "wf", 0..6, DEADLINE).await;
    fake.wait_markers("", "main", 0..6, DEADLINE).await;
    fake.wait_markers("", "tm", 0..1, DEADLINE).await;
    fake.wait_markers("", "steer", 0..1, DEADLINE).await;
    fake.wait_markers("", "dup", 0..1, DEADLINE).await;
    let (_, m) = get_text(&format!("http://{ops}/metrics")).await;
    assert_eq!(
        metric_value(
            &m,
            "watcher_transcript_skipped_records_total{reason=\"message_shape\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        count(
            &w.output(),
            "dropped a transcript record of the wrong shape"
        ),
        1
    );

    // The agent's last record, complete but without its newline.
    let last = transcript::prompt("p-last", SESSION, "last-0000 the final words");
    append(&file, last.trim_end());
    eventually("the last line read", DEADLINE, || async {
        let (_, m) = get_text(&format!("http://{ops}/metrics")).await;
        let read = metric_value(&m, "watcher_transcript_bytes_read_total")?;
        let len = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        let written = len(&file) + len(&run.join("agent-aa1.jsonl"));
        (read as u64 >= written).then_some(())
    })
    .await;
    assert!(
        !fake.payload_text("").await.contains("last-0000"),
        "held while running"
    );
    w.sigterm();
    let status = w.wait_exit(Duration::from_secs(25)).await;
    assert!(status.is_some_and(|s| s.success()), "{}", w.output());
    fake.wait_markers("", "last", 0..1, DEADLINE).await;

    let messages = fake.messages().await;
    let embeds: Vec<&serde_json::Value> = messages
        .iter()
        .filter_map(|m| m["payload"]["embeds"].as_array())
        .flatten()
        .collect();
    let with = |marker: &str| -> Vec<&serde_json::Value> {
        embeds
            .iter()
            .copied()
            .filter(|e| e.to_string().contains(marker))
            .collect()
    };
    // Every subagent text, once, labelled with its agent and run.
    for i in 0..6 {
        let e = with(&format!("wf-{i:04}"));
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(
            e[0]["author"]["name"],
            json!("subagent: review parser · workflow wf_e2e-01")
        );
    }
    // The teammate message is its own kind, not a prompt.
    let tm = with("tm-0000");
    assert_eq!(tm.len(), 1);
    assert_eq!(tm[0]["title"], json!("🤝 from zl-reviewer"));
    // The steering input arrives once, as a prompt.
    let steer = with("steer-0000");
    assert_eq!(steer.len(), 1);
    assert!(steer[0]["title"].as_str().unwrap().contains("Prompt"));
    assert_eq!(with("last-0000").len(), 1);
    assert_eq!(with("dup-0000").len(), 1);
    assert!(with("dup-bad").is_empty());
    // Prompts: go, steering, dup, last line; the teammate message is counted apart.
    let summary = summary_embed(&fake).await;
    let activity = summary["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "Activity")
        .unwrap()["value"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        activity.starts_with("4 prompts · 1 teammate message"),
        "{activity}"
    );
}

#[tokio::test]
async fn a_fifo_at_the_transcript_path_or_under_subagents_never_wedges_the_watcher() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(format!("{SESSION}.jsonl"));
    nix::unistd::mkfifo(&file, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let w = console_watcher(
        &[("TRANSCRIPT_PATH", file.display().to_string())],
        &dir.path().join("state"),
    );
    let ops = started_ops_addr(&w).await;
    eventually("the FIFO counted", DEADLINE, || async {
        let (_, m) = get_text(&format!("http://{ops}/metrics")).await;
        let n = metric_value(
            &m,
            "watcher_transcript_files_skipped_total{reason=\"not_regular_file\"}",
        )?;
        (n >= 1.0).then_some(())
    })
    .await;
    // Still alive and answering; then a real session file takes its place,
    // and the agent creates FIFOs where the watcher looks for subagents.
    let (status, _) = get_text(&format!("http://{ops}/livez")).await;
    assert_eq!(status, 200);
    // …and says why nothing is read instead of looking healthy.
    eventually("not ready, naming the FIFO", DEADLINE, || async {
        let (status, body) = get_text(&format!("http://{ops}/readyz")).await;
        (status == 503 && body.contains("is not a regular file")).then_some(())
    })
    .await;
    std::fs::remove_file(&file).unwrap();
    append(&file, &transcript::prompts("fifo", 0..3));
    wait_printed(&w, "fifo", 0..3).await;
    let sub = dir.path().join(SESSION).join("subagents");
    std::fs::create_dir_all(&sub).unwrap();
    nix::unistd::mkfifo(
        &sub.join("agent-x.meta.json"),
        nix::sys::stat::Mode::S_IRWXU,
    )
    .unwrap();
    nix::unistd::mkfifo(&sub.join("agent-y.jsonl"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    append(
        &sub.join("agent-x.jsonl"),
        &transcript::prompts("sub", 0..2),
    );
    append(&file, &transcript::prompts("fifo", 3..6));
    wait_printed(&w, "sub", 0..2).await;
    wait_printed(&w, "fifo", 3..6).await;
    // SIGTERM still ends it, promptly.
    w.sigterm();
    let mut w = w;
    let status = w.wait_exit(Duration::from_secs(10)).await;
    assert!(status.is_some_and(|s| s.success()), "{}", w.output());
}

/// `VmRSS` of a process, in KiB, and how many descriptors it holds.
fn rss_kib_and_fds(pid: i32) -> (u64, usize) {
    let rss = e2e::rss_kib(pid).expect("VmRSS of a live process");
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    (rss, fds)
}

#[tokio::test]
async fn three_thousand_subagent_files_keep_memory_and_descriptors_bounded() {
    const FILES: usize = 3000;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(format!("{SESSION}.jsonl"));
    append(&file, &transcript::prompts("main", 0..1));
    let sub = dir.path().join(SESSION).join("subagents");
    std::fs::create_dir_all(&sub).unwrap();
    let w = console_watcher(
        &[
            ("TRANSCRIPT_PATH", file.display().to_string()),
            ("START_AT", "beginning".to_string()),
        ],
        &dir.path().join("state"),
    );
    let ops = started_ops_addr(&w).await;
    wait_printed(&w, "main", 0..1).await;
    let (rss_before, fds_before) = rss_kib_and_fds(w.pid());
    for i in 0..FILES {
        std::fs::write(
            sub.join(format!("agent-{i:04}.jsonl")),
            transcript::prompts(&format!("s{i:04}"), 0..1),
        )
        .unwrap();
    }
    eventually(
        "every subagent file read",
        Duration::from_secs(120),
        || async {
            let out = w.stdout().join("\n");
            (count(&out, "héllo wörld") > FILES).then_some(())
        },
    )
    .await;
    let (rss, fds) = rss_kib_and_fds(w.pid());
    eprintln!("3000 subagent files: RSS {rss_before} -> {rss} KiB, fds {fds_before} -> {fds}");
    assert!(fds < fds_before + 100, "{fds_before} -> {fds}");
    // The chart's limit is 64 MiB.
    assert!(rss < 48 * 1024, "RSS {rss} KiB");
    let (_, m) = get_text(&format!("http://{ops}/metrics")).await;
    let open = metric_value(&m, "watcher_subagent_files_open").unwrap();
    let parked = metric_value(&m, "watcher_subagent_files_parked_total").unwrap();
    eprintln!("open {open}, parked {parked}");
    assert!(open <= 64.0, "{open}");
    assert!(parked > 0.0);
    // Reaching the cap is logged (once each time it is reached, not per file).
    let warned = count(&w.output(), "SUBAGENT_MAX_OPEN reached");
    eprintln!("cap warnings: {warned}");
    assert!((1..100).contains(&warned), "cap warnings: {warned}");
    w.sigterm();
    let mut w = w;
    let status = w.wait_exit(Duration::from_secs(10)).await;
    assert!(status.is_some_and(|s| s.success()), "{}", w.output());
}

#[test]
fn render_takes_the_sessions_subagents_like_a_live_run() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(format!("{SESSION}.jsonl"));
    append(&file, &transcript::prompt("p0", SESSION, "go-0000"));
    append(
        &file,
        &transcript::assistant("m0", SESSION, "msg_m0", "main-0000", 10, 5),
    );
    // A record of the wrong shape is named on stderr.
    append(
        &file,
        &format!(
            "{}\n",
            json!({"type": "user", "uuid": "bad", "sessionId": SESSION, "message": "text"})
        ),
    );
    let run = dir.path().join(SESSION).join("subagents/workflows/wf_r1");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(
        run.join("agent-aa1.meta.json"),
        r#"{"label":"review parser"}"#,
    )
    .unwrap();
    append(
        &run.join("agent-aa1.jsonl"),
        &agent_text("w0", "aa1", "msg_w0", "wf-0000 checked"),
    );
    // Nothing the agent puts there can make render hang.
    nix::unistd::mkfifo(&run.join("agent-zz.jsonl"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let (code, out, err) = run_to_end("watcher", &["render", file.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("[review parser · wf_r1] 💭 wf-0000 checked"),
        "{out}"
    );
    // Counts and cost cover the subagent, as in a live run.
    assert!(out.contains("tokens in 20 out 10"), "{out}");
    assert!(
        err.contains("dropped a record of the wrong shape (message_shape)"),
        "{err}"
    );
    assert!(err.contains("agent-zz.jsonl: not a regular file"), "{err}");
}
